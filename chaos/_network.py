"""Network namespaces for a test cluster: a bridge, and one namespace with an address of its own per endpoint.

``Network`` builds, for ``LocalCluster(network=True)``, one Linux network
namespace per endpoint (PostgreSQL, the GCS's node, each node), each joined
by a veth pair to one bridge in the root namespace, on a /24 of its own.
Processes started under ``exec_prefix(role)`` see only their namespace's
loopback and address: they reach the others only over the bridge, where
``_netfaults`` can cut, slow or thin their traffic.

Everything it makes is named ``ember-<pid>-<tag>-<role>`` (namespaces) or
``em<tag>...`` (links), and listed in a record under ``RECORDS_DIR`` written
*before* anything is made. ``sweep()`` (run at every start) removes what a
record lists when the process that wrote it is gone (a test that crashed):
first the processes left inside its namespaces (started there by that
cluster alone), then the namespaces, links and PostgreSQL folder.

It must never touch a namespace, link or process that a live record of
another process lists, nor one no record of ours names.
"""

from __future__ import annotations

import fcntl
import ipaddress
import json
import os
import random
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ember.exceptions import EmberOperationError, EmberUserError
from ember.scheduler._procutil import process_start_ticks

RECORDS_DIR = Path("/run/ember-netns")
NETNS_DIR = Path("/run/netns")
SUBNET_BASE = "10.231.0.0/16"  # one /24 of it per network
COMMAND_TIMEOUT_S = 20.0
PROCESS_GONE_TIMEOUT_S = 10.0
POLL_S = 0.05
ENDPOINTS_MAX = 200  # addresses .2 to .201 of the /24
INSIDE_LINK = "eth0"  # the endpoint's side of its veth pair, inside its namespace
TOOLS = {"ip": "/usr/sbin/ip", "nft": "/usr/sbin/nft", "tc": "/usr/sbin/tc"}
TOOL_PACKAGES = {"ip": "iproute2", "nft": "nftables", "tc": "iproute2"}


class NetworkUnavailableError(EmberUserError):
    """Network namespaces cannot be made here: not root, a tool missing, or the kernel refuses; the message
    names what is missing and how to get it."""


class NetworkCommandError(EmberOperationError):
    """A command that changes a test network (``ip``, ``nft``, ``tc``) failed; the message has its output."""


@dataclass(frozen=True)
class Endpoint:
    role: str  # "pg", "gcs", "n0", "n1", ...
    namespace: str
    address: str
    host_link: str  # the veth end on the bridge, in the root namespace


@dataclass
class _Record:
    tag: str
    pid: int
    start_ticks: int
    subnet: str
    bridge: str
    namespaces: list[str] = field(default_factory=list)
    links: list[str] = field(default_factory=list)
    folders: list[str] = field(default_factory=list)  # deleted by the sweep (PostgreSQL's data)

    def owner_alive(self) -> bool:
        return process_start_ticks(self.pid) == self.start_ticks


def check_prerequisites(euid: int | None = None, exists=os.path.exists) -> None:  # type: ignore[no-untyped-def]
    """Raise NetworkUnavailableError naming what is missing to build namespaces here (root, ip, nft, tc)."""
    euid = os.geteuid() if euid is None else euid
    if euid != 0:
        raise NetworkUnavailableError(
            f"LocalCluster(network=True) makes network namespaces (`ip netns add`), which needs root; this "
            f"process runs as uid {euid}. Run the tests as root (CI does), or use LocalCluster without network=True")
    missing = [name for name, path in TOOLS.items() if not exists(path)]
    if missing:
        packages = sorted({TOOL_PACKAGES[name] for name in missing})
        raise NetworkUnavailableError(
            f"LocalCluster(network=True) needs {', '.join(TOOLS[m] for m in missing)}, not installed here; "
            f"install it with `apt-get install -y {' '.join(packages)}` (the README's test command does)")


def run(argv: list[str], timeout_s: float = COMMAND_TIMEOUT_S, check: bool = True) -> str:
    """Run one network command; NetworkCommandError with its output if it fails (when ``check``)."""
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise NetworkCommandError(f"`{' '.join(argv)}` could not run: {exc}") from exc
    if check and done.returncode != 0:
        raise NetworkCommandError(f"`{' '.join(argv)}` failed (exit {done.returncode}): "
                                  f"{(done.stderr or done.stdout).strip()}")
    return done.stdout


class Network:
    """A bridge and one namespace per endpoint; ``remove()`` takes it all down (also on a failed start)."""

    def __init__(self, roles: list[str]) -> None:
        check_prerequisites()
        sweep()
        self.endpoints: dict[str, Endpoint] = {}
        self._removed = False
        with _records_locked():
            self.tag = _free_tag()
            self.subnet = _free_subnet()
            self._record = _Record(self.tag, os.getpid(), process_start_ticks(os.getpid()) or 0,
                                   str(self.subnet), f"em{self.tag}br")
            _write(self._record)  # before anything is made: a crash from here on is swept
        try:
            self._make_bridge()
            for role in roles:
                self.add(role)
        except BaseException:
            self.remove()
            raise

    @property
    def host_address(self) -> str:
        """The root namespace's address on the bridge (where a driver outside every namespace is)."""
        return str(self.subnet.network_address + 1)

    @property
    def prefix(self) -> str:
        return f"ember-{self._record.pid}-{self.tag}"

    def exec_prefix(self, role: str) -> list[str]:
        """Run a command inside ``role``'s namespace: put this before its argv."""
        return [TOOLS["ip"], "netns", "exec", self.endpoints[role].namespace]

    def add(self, role: str) -> Endpoint:
        """A namespace for ``role`` with the next address, joined to the bridge."""
        assert role not in self.endpoints, f"endpoint {role!r} exists"
        index = len(self.endpoints)
        if index >= ENDPOINTS_MAX:
            raise EmberUserError(f"a test network has at most {ENDPOINTS_MAX} endpoints")
        endpoint = Endpoint(role, f"{self.prefix}-{role}", str(self.subnet.network_address + 2 + index),
                            f"em{self.tag}{index}")
        peer = f"em{self.tag}{index}p"
        with _records_locked():
            self._record.namespaces.append(endpoint.namespace)
            self._record.links.append(endpoint.host_link)
            _write(self._record)
        ip = TOOLS["ip"]
        run([ip, "netns", "add", endpoint.namespace])
        inside = [ip, "-n", endpoint.namespace]
        run([ip, "link", "add", "name", endpoint.host_link, "type", "veth", "peer", "name", peer])
        run([ip, "link", "set", peer, "netns", endpoint.namespace])
        run([*inside, "link", "set", peer, "name", INSIDE_LINK])
        run([*inside, "addr", "add", f"{endpoint.address}/{self.subnet.prefixlen}", "dev", INSIDE_LINK])
        run([*inside, "link", "set", INSIDE_LINK, "up"])
        run([*inside, "link", "set", "lo", "up"])
        run([ip, "link", "set", endpoint.host_link, "master", self._record.bridge])
        run([ip, "link", "set", endpoint.host_link, "up"])
        self.endpoints[role] = endpoint
        return endpoint

    def own_folder(self, path: Path) -> None:
        """Have ``path`` deleted with the network, by ``remove`` or by a later sweep."""
        with _records_locked():
            self._record.folders.append(str(path))
            _write(self._record)

    def remove(self) -> None:
        """Kill what still runs in its namespaces, delete them, the links and folders, and the record."""
        if self._removed:
            return
        self._removed = True
        with _records_locked():
            _take_down(self._record)

    def _make_bridge(self) -> None:
        ip, bridge = TOOLS["ip"], self._record.bridge
        run([ip, "link", "add", "name", bridge, "type", "bridge"])
        run([ip, "addr", "add", f"{self.host_address}/{self.subnet.prefixlen}", "dev", bridge])
        run([ip, "link", "set", bridge, "up"])


def sweep() -> list[str]:
    """Take down every network whose owning process is gone; the tags of those taken down."""
    if not RECORDS_DIR.is_dir():
        return []
    swept = []
    with _records_locked():
        for record in _records():
            if not record.owner_alive():
                _take_down(record)
                swept.append(record.tag)
    return swept


def namespace_pids(namespace: str) -> list[int]:
    """The pids of the processes in ``namespace`` (``ip netns pids``); [] if it is gone."""
    out = run([TOOLS["ip"], "netns", "pids", namespace], check=False)
    return [int(word) for word in out.split() if word.isdigit()]


def _take_down(record: _Record) -> None:
    for namespace in record.namespaces:
        if (NETNS_DIR / namespace).exists():
            _kill_inside(namespace)
            run([TOOLS["ip"], "netns", "delete", namespace], check=False)
    for link in [*record.links, record.bridge]:
        if Path(f"/sys/class/net/{link}").exists():
            run([TOOLS["ip"], "link", "delete", link], check=False)
    for folder in record.folders:
        shutil.rmtree(folder, ignore_errors=True)
    (RECORDS_DIR / f"{record.tag}.json").unlink(missing_ok=True)


def _kill_inside(namespace: str) -> None:
    """SIGKILL every process in ``namespace`` (a namespace of ours: only our cluster started them) and wait,
    bounded, until they are gone: a namespace is only deleted empty."""
    pids = namespace_pids(namespace)
    for pid in pids:
        try:
            os.kill(pid, signal.SIGCONT)  # a paused one dies all the same, but leaves no stopped zombie
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + PROCESS_GONE_TIMEOUT_S
    while namespace_pids(namespace) and time.monotonic() < deadline:
        time.sleep(POLL_S)


@contextmanager
def _records_locked() -> Iterator[None]:
    RECORDS_DIR.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(RECORDS_DIR / "lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _records() -> list[_Record]:
    found = []
    for path in sorted(RECORDS_DIR.glob("*.json")):
        try:
            found.append(_Record(**json.loads(path.read_text())))
        except (OSError, ValueError, TypeError):
            continue  # half-written or not ours: never acted on
    return found


def _write(record: _Record) -> None:
    path = RECORDS_DIR / f"{record.tag}.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(asdict(record)))
    os.replace(tmp, path)


def _free_tag() -> str:
    taken = {r.tag for r in _records()}
    rng = random.SystemRandom()
    while True:
        tag = f"{rng.randrange(16 ** 5):05x}"
        if tag not in taken and not Path(f"/sys/class/net/em{tag}br").exists():
            return tag


def _free_subnet() -> ipaddress.IPv4Network:
    """A /24 of SUBNET_BASE that no record and no address of the root namespace uses."""
    used = {ipaddress.ip_network(r.subnet) for r in _records()}
    for line in run([TOOLS["ip"], "-4", "-o", "addr", "show"]).splitlines():
        words = line.split()
        if "inet" in words:
            used.add(ipaddress.ip_interface(words[words.index("inet") + 1]).network)
    candidates = [net for net in ipaddress.ip_network(SUBNET_BASE).subnets(new_prefix=24)
                  if not any(net.overlaps(u) for u in used)]
    if not candidates:
        raise NetworkUnavailableError(f"every /24 of {SUBNET_BASE} is in use on this machine; "
                                      "stop other test clusters or free one")
    return random.SystemRandom().choice(candidates)


__all__ = ["Endpoint", "Network", "NetworkCommandError", "NetworkUnavailableError", "check_prerequisites",
           "namespace_pids", "sweep"]
