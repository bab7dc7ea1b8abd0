"""Network faults between the namespaces of a network cluster: partitions, delays and packet loss.

A ``NetFault`` is plain data (JSON round trip, a ``repr`` that is valid
Python), as ``Fault`` is, plus how long it lasts. ``apply`` puts one into a
node's network namespace and returns the ``Applied`` fault that ``heal``
takes out again:

- partition: nftables rules in the node's namespace that drop what goes to
  the peer's address (``out``), what comes from it (``in``), or both; the
  peer is the GCS's node, PostgreSQL, or another node;
- loss: nftables rules that drop PERCENT of the node's packets each way
  (``numgen random``: the kernel draws, per packet);
- delay: the node's outgoing packets (the egress of its link) held MS, plus
  a uniform draw in ±JITTER. Where the kernel has the netem qdisc, ``tc
  netem`` on the link; where it has not (this CI's kernel), an iptables
  rule in the namespace sends those packets to an NFQUEUE, and a delay
  process of the fault's own, started in the namespace, holds each one's
  verdict for its delay (``_netdelay``, ``_nfqueue``). That process dying
  ends the delay early and never cuts the node: ``--queue-bypass`` lets
  packets through when no one listens, and the heal removes the rule
  regardless. A kernel with neither is refused before any run starts, with
  ``NetFaultUnavailableError`` naming what is missing (``require_delay``).

Each fault is a table (nftables), the root qdisc (netem) or an iptables
chain and a process (NFQUEUE) of its own, so a heal removes exactly what its
fault added and faults overlap freely, except two delays of one node (the
newer applies; under netem a heal removes both, under NFQUEUE only its own).
What must recover is in docs/fault-tolerance.md, a section per fault.

It must never change a namespace it is not given by a cluster that made it
(``LocalCluster.net_fault``), or by the ``chaos run`` controller for a node
daemon that said hello with its run's token and is the program's.
"""

from __future__ import annotations

import enum
import itertools
import os
import re
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, assert_never

from ember.chaos import _netdelay
from ember.chaos._faults import InvalidFaultError, _member
from ember.chaos._network import INSIDE_LINK, TOOLS, NetworkCommandError, check_prerequisites, run
from ember.exceptions import EmberUserError
from ember.lineage._states import ProcessKind

NET_FAULT_S_MAX = 600.0
DELAY_MS_MAX = 10_000
TABLE_PREFIX = "ember_fault_"
_tables = itertools.count(1)


class NetFaultKind(enum.StrEnum):
    PARTITION = "partition"
    DELAY = "delay"
    LOSS = "loss"


class Peer(enum.StrEnum):
    """What a partitioned node is cut from."""

    GCS = "gcs"  # the GCS's node (the head: the GCS service, its scheduler and store)
    POSTGRES = "postgres"  # the cluster's PostgreSQL, its lineage log
    NODE = "node"  # another node of the cluster


class Direction(enum.StrEnum):
    BOTH = "both"
    OUT = "out"  # the node's packets to the peer are dropped; the peer's still arrive
    IN = "in"  # the peer's packets to the node are dropped; the node's still leave


class NetFaultUnavailableError(EmberUserError):
    """This machine cannot inject that network fault (a delay: no netem qdisc, and no NFQUEUE or no
    ``iptables-nft``); the message names what is missing."""


class Injection(enum.StrEnum):
    """How a fault in place was made, so its heal removes that."""

    NFTABLES = "nftables"  # partition, loss: a table of the fault's own
    NETEM = "netem"  # delay: the link's root qdisc
    NFQUEUE = "nfqueue"  # delay: an iptables chain of its own and the delay process


@dataclass(frozen=True)
class NetFault:
    """A network fault on one node (``pick`` among the cluster's nodes in namespaces) for ``duration_s``."""

    kind: NetFaultKind
    duration_s: float
    pick: int = 0
    peer: Peer = Peer.GCS  # partition
    peer_pick: int = 0  # partition from a node: which of the other nodes
    direction: Direction = Direction.BOTH  # partition
    delay_ms: int = 0  # delay
    jitter_ms: int = 0  # delay
    loss_percent: float = 0.0  # loss

    def __post_init__(self) -> None:
        for name, enum_type in (("kind", NetFaultKind), ("peer", Peer), ("direction", Direction)):
            object.__setattr__(self, name, _member(enum_type, name, getattr(self, name)))
        _check(self)

    @property
    def target(self) -> ProcessKind:
        return ProcessKind.NODE

    @classmethod
    def partition(cls, peer: Peer | str, duration_s: float, direction: Direction | str = Direction.BOTH,
                  pick: int = 0, peer_pick: int = 0) -> NetFault:
        return cls(NetFaultKind.PARTITION, duration_s, pick, _member(Peer, "peer", peer), peer_pick,
                   _member(Direction, "direction", direction))

    @classmethod
    def delay(cls, delay_ms: int, duration_s: float, jitter_ms: int = 0, pick: int = 0) -> NetFault:
        return cls(NetFaultKind.DELAY, duration_s, pick, delay_ms=delay_ms, jitter_ms=jitter_ms)

    @classmethod
    def loss(cls, loss_percent: float, duration_s: float, pick: int = 0) -> NetFault:
        return cls(NetFaultKind.LOSS, duration_s, pick, loss_percent=loss_percent)

    def label(self) -> str:
        """What the tally counts it under: ``partition node-gcs both``, ``delay node``, ``loss node``."""
        match self.kind:
            case NetFaultKind.PARTITION:
                return f"partition node-{self.peer} {self.direction}"
            case NetFaultKind.DELAY | NetFaultKind.LOSS:
                return f"{self.kind} node"
            case _ as unreachable:
                assert_never(unreachable)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": str(self.kind), "target": str(ProcessKind.NODE), "pick": self.pick,
                               "duration_s": self.duration_s}
        match self.kind:
            case NetFaultKind.PARTITION:
                out.update(peer=str(self.peer), peer_pick=self.peer_pick, direction=str(self.direction))
            case NetFaultKind.DELAY:
                out.update(delay_ms=self.delay_ms, jitter_ms=self.jitter_ms)
            case NetFaultKind.LOSS:
                out.update(loss_percent=self.loss_percent)
            case _ as unreachable:
                assert_never(unreachable)
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> NetFault:
        known = {"kind", "target", "pick", "duration_s", "peer", "peer_pick", "direction", "delay_ms", "jitter_ms",
                 "loss_percent"}
        if not isinstance(data, Mapping) or set(data) - known or "kind" not in data or "duration_s" not in data:
            raise InvalidFaultError(f"a network fault needs 'kind' and 'duration_s' (and may have "
                                    f"{', '.join(sorted(known - {'kind', 'duration_s'}))}); got {data!r}")
        if data.get("target", ProcessKind.NODE) != ProcessKind.NODE:
            raise InvalidFaultError(f"a network fault's target is 'node', not {data['target']!r}")
        return cls(data["kind"], data["duration_s"], data.get("pick", 0), data.get("peer", Peer.GCS),
                   data.get("peer_pick", 0), data.get("direction", Direction.BOTH), data.get("delay_ms", 0),
                   data.get("jitter_ms", 0), data.get("loss_percent", 0.0))

    def __repr__(self) -> str:
        match self.kind:
            case NetFaultKind.PARTITION:
                return (f"NetFault.partition({str(self.peer)!r}, {self.duration_s!r}, {str(self.direction)!r}, "
                        f"pick={self.pick}, peer_pick={self.peer_pick})")
            case NetFaultKind.DELAY:
                return f"NetFault.delay({self.delay_ms}, {self.duration_s!r}, jitter_ms={self.jitter_ms}, pick={self.pick})"
            case NetFaultKind.LOSS:
                return f"NetFault.loss({self.loss_percent!r}, {self.duration_s!r}, pick={self.pick})"
            case _ as unreachable:
                assert_never(unreachable)

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text(repr(self))


def _number(name: str, value: Any, low: float, high: float, whole: bool = False) -> None:
    kinds = (int,) if whole else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or not low <= value <= high:
        raise InvalidFaultError(f"Expected {'an int' if whole else 'a number'} in [{low:g}, {high:g}] but got "
                                f"{name}={value!r} (type={type(value).__name__})")


def _check(fault: NetFault) -> None:
    _number("duration_s", fault.duration_s, 0.0, NET_FAULT_S_MAX)
    if fault.duration_s <= 0:
        raise InvalidFaultError(f"Expected duration_s > 0 but got duration_s={fault.duration_s!r}")
    _number("pick", fault.pick, 0, 2 ** 63, whole=True)
    _number("peer_pick", fault.peer_pick, 0, 2 ** 63, whole=True)
    _number("delay_ms", fault.delay_ms, 0, DELAY_MS_MAX, whole=True)
    _number("jitter_ms", fault.jitter_ms, 0, DELAY_MS_MAX, whole=True)
    _number("loss_percent", fault.loss_percent, 0.0, 100.0)
    if fault.kind is NetFaultKind.DELAY and fault.delay_ms <= 0:
        raise InvalidFaultError(f"a delay needs delay_ms > 0 (got {fault.delay_ms!r})")
    if fault.kind is NetFaultKind.LOSS and fault.loss_percent <= 0:
        raise InvalidFaultError(f"a loss needs loss_percent > 0 (got {fault.loss_percent!r})")


# -- applying ---------------------------------------------------------------------------


def peer_address(fault: NetFault, net: Mapping[str, str], other_nodes: list[str]) -> str | None:
    """What a partition of the node at ``net`` (its ``EMBER_CHAOS_NET`` place) drops: an nftables address
    or set; None for a fault that is not a partition. ``other_nodes``: the other nodes' addresses, in order.

    Drivers run beside the GCS (the root namespace, on the bridge's address): a node cut from the GCS
    is cut from them too, as a node cut from a head is from the drivers on it.
    """
    if fault.kind is not NetFaultKind.PARTITION:
        return None
    match fault.peer:
        case Peer.GCS:
            return f"{{ {net['gcs']}, {net['host']} }}"
        case Peer.POSTGRES:
            return net["pg"]
        case Peer.NODE:
            if not other_nodes:
                raise InvalidFaultError("a partition from another node needs a cluster of two nodes or more")
            return other_nodes[fault.peer_pick % len(other_nodes)]
        case _ as unreachable:
            assert_never(unreachable)


@dataclass(frozen=True)
class Applied:
    """A fault in place: what ``heal`` removes."""

    fault: NetFault
    inside: tuple[str, ...]  # the command prefix that runs in the node's namespace
    how: Injection
    table: str | None  # the nftables table (partition, loss)
    detail: str
    delay: _netdelay.DelayProcess | None = field(default=None, compare=False)  # NFQUEUE
    link: str = INSIDE_LINK  # the link a delay is on (netem's qdisc, the NFQUEUE rule's -o)


def apply(fault: NetFault, inside: list[str], peer_address: str | None = None) -> Applied:
    """Put ``fault`` into the namespace ``inside`` runs commands in; ``peer_address`` for a partition."""
    match fault.kind:
        case NetFaultKind.PARTITION:
            assert peer_address is not None, "a partition needs its peer's address"
            table = f"{TABLE_PREFIX}{next(_tables)}"
            drop_out = f"add rule inet {table} output ip daddr {peer_address} drop"
            drop_in = f"add rule inet {table} input ip saddr {peer_address} drop"
            rules = {Direction.BOTH: [drop_out, drop_in], Direction.OUT: [drop_out], Direction.IN: [drop_in]}
            _nft(inside, table, rules[fault.direction])
            return Applied(fault, tuple(inside), Injection.NFTABLES, table,
                           f"{fault.direction} from {fault.peer} {peer_address}")
        case NetFaultKind.LOSS:
            table = f"{TABLE_PREFIX}{next(_tables)}"
            percent = round(fault.loss_percent * 100)  # in hundredths: numgen draws a whole number
            rules = [f"add rule inet {table} {chain} {iface} {INSIDE_LINK} numgen random mod 10000 < {percent} drop"
                     for chain, iface in (("output", "oifname"), ("input", "iifname"))]
            _nft(inside, table, rules)
            return Applied(fault, tuple(inside), Injection.NFTABLES, table, f"{fault.loss_percent:g}% each way")
        case NetFaultKind.DELAY:
            return _delay(fault, inside)
        case _ as unreachable:
            assert_never(unreachable)


def heal(applied: Applied) -> None:
    """Take ``applied`` out; a namespace already gone (its node's cluster ended) is nothing to heal."""
    match applied.how:
        case Injection.NFTABLES:
            assert applied.table is not None, "an nftables fault has its table"
            run([*applied.inside, TOOLS["nft"], "delete", "table", "inet", applied.table], check=False)
        case Injection.NETEM:
            run([*applied.inside, TOOLS["tc"], "qdisc", "del", "dev", applied.link, "root"], check=False)
        case Injection.NFQUEUE:
            assert applied.delay is not None, "an NFQUEUE delay has its process"
            _netdelay.stop(applied.inside, applied.delay)
        case _ as unreachable:
            assert_never(unreachable)


def _delay(fault: NetFault, inside: list[str], link: str = INSIDE_LINK) -> Applied:
    """netem where the kernel has it, else an NFQUEUE and a delay process (the same delay, the same link)."""
    return _netem(fault, inside, link) or _nfqueue(fault, inside, link)


def _said(fault: NetFault) -> str:
    return f"{fault.delay_ms} ms ± {fault.jitter_ms} ms out of the node"


def _netem(fault: NetFault, inside: list[str], link: str) -> Applied | None:
    """The delay as netem on ``link``'s root qdisc; None where the kernel has no netem."""
    netem = ["delay", f"{fault.delay_ms}ms"] + ([f"{fault.jitter_ms}ms"] if fault.jitter_ms else [])
    try:
        _tc(inside, ["qdisc", "replace", "dev", link, "root", "netem", *netem])
    except NetFaultUnavailableError:
        return None
    return Applied(fault, tuple(inside), Injection.NETEM, None, f"{_said(fault)} (netem)", link=link)


def _nfqueue(fault: NetFault, inside: list[str], link: str) -> Applied:
    """The delay as an NFQUEUE and a delay process; NetFaultUnavailableError without iptables-nft."""
    if not os.path.exists(_netdelay.IPTABLES):
        raise NetFaultUnavailableError(f"{_NO_NETEM}; and {_NO_IPTABLES}")
    number = next(_tables)
    delay = _netdelay.start(inside, f"{TABLE_PREFIX}{number}", number, fault.delay_ms, fault.jitter_ms,
                            seed=number, link=link)
    return Applied(fault, tuple(inside), Injection.NFQUEUE, None,
                   f"{_said(fault)} (NFQUEUE {number}, delay process {delay.pid})", delay, link)


def _nft(inside: list[str], table: str, rules: list[str]) -> None:
    # One nft transaction: the table appears with all its rules, or not at all.
    script = "\n".join([f"add table inet {table}",
                        f"add chain inet {table} output {{ type filter hook output priority -10 ; }}",
                        f"add chain inet {table} input {{ type filter hook input priority -10 ; }}", *rules])
    try:
        done = subprocess.run([*inside, TOOLS["nft"], "-f", "-"], input=script, capture_output=True, text=True,
                              timeout=20.0)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise NetworkCommandError(f"nft ({' '.join(inside)}) could not run: {exc}") from exc
    if done.returncode != 0:
        raise NetworkCommandError(f"nft ({' '.join(inside)}) refused a fault's rules: {done.stderr.strip()}")


def _tc(inside: list[str], argv: list[str]) -> None:
    try:
        run([*inside, TOOLS["tc"], *argv])
    except NetworkCommandError as exc:
        if re.search(r"qdisc kind is unknown", str(exc)):
            raise NetFaultUnavailableError(_NO_NETEM) from exc
        raise


_NO_NETEM = ("this kernel has no netem qdisc (`tc qdisc add ... netem` answers \"Specified qdisc kind is "
             "unknown\"): load it with `modprobe sch_netem` on the host (a container shares the host's kernel) or "
             "use a kernel built with CONFIG_NET_SCH_NETEM")
_NO_IPTABLES = (f"the NFQUEUE delay needs {_netdelay.IPTABLES}, not installed here: install it with `apt-get "
                f"install -y {_netdelay.IPTABLES_PACKAGE}` (the README's test command does)")
_NO_NFQUEUE = ("the NFQUEUE delay could not be made ({}): it needs a kernel with CONFIG_NETFILTER_NETLINK_QUEUE "
               "and the xtables NFQUEUE target (CONFIG_NETFILTER_XT_TARGET_NFQUEUE, CONFIG_NFT_COMPAT)")


def require_delay() -> Injection:
    """How a delay is made on this machine (a throwaway namespace is asked: netem, else NFQUEUE); raise
    NetFaultUnavailableError naming what is missing if neither works, so a run never starts with a fault
    it cannot fire. --partition and --loss need only nftables."""
    check_prerequisites()
    probe = f"ember-delay-probe-{os.getpid()}"
    run([TOOLS["ip"], "netns", "add", probe])
    inside = [TOOLS["ip"], "netns", "exec", probe]
    try:
        run([*inside, TOOLS["ip"], "link", "set", "lo", "up"])
        fault = NetFault.delay(1, 1.0)
        applied = _netem(fault, inside, "lo")
        if applied is None:
            try:
                applied = _nfqueue(fault, inside, "lo")
            except NetworkCommandError as exc:
                raise NetFaultUnavailableError(f"{_NO_NETEM}; and {_NO_NFQUEUE.format(exc)}") from exc
        heal(applied)
        return applied.how
    finally:
        run([TOOLS["ip"], "netns", "delete", probe], check=False)


__all__ = ["Applied", "Direction", "Injection", "NetFault", "NetFaultKind", "NetFaultUnavailableError", "Peer",
           "apply", "heal", "peer_address", "require_delay"]
