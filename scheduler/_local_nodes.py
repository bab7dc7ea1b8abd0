"""The nodes ``ember start`` runs on this machine: one record file each.

``ember stop`` and ``ember status`` read them, and ``ember.init(address=...)``
finds through them the node on this machine whose scheduler and store a
driver connects to. A record names the node's daemon by pid and by its
start time, so a pid the kernel has handed to another process is never
taken for the node (and never signalled).

Records live in the user's private runtime folder (0700), beside the
sessions; a record whose daemon is gone is deleted when read.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from ember import _settings
from ember.exceptions import ClusterStartError, EmberUserError, InvalidAddressError
from ember.scheduler._address import join_host_port, split_host_port
from ember.scheduler._procutil import process_start_ticks
from ember.scheduler._tls import adopt_tls
from ember.scheduler._session import Session, open_session, runtime_root

DEFAULT_PORT = 6380
START_TIMEOUT_S = 90.0  # a head brings PostgreSQL up too
POLL_S = 0.05
LOG_TAIL_LINES = 20


@dataclass(frozen=True)
class LocalNode:
    node_id: str
    pid: int  # the node daemon's
    pid_start_ticks: int  # its start time in clock ticks since boot: tells it from a reused pid
    session_dir: str
    gcs_address: str  # the cluster's address, host:port
    head: bool
    resources: dict

    @property
    def session(self) -> Session:
        return open_session(self.session_dir)

    def alive(self) -> bool:
        return process_start_ticks(self.pid) == self.pid_start_ticks


def nodes_dir() -> Path:
    path = runtime_root() / "nodes"
    path.mkdir(mode=0o700, exist_ok=True)
    return path


def record(node: LocalNode) -> None:
    path = nodes_dir() / f"{node.node_id}.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(asdict(node)))
    os.replace(tmp, path)


def forget(node_id: str) -> None:
    try:
        (nodes_dir() / f"{node_id}.json").unlink()
    except FileNotFoundError:
        pass


def local_nodes() -> list[LocalNode]:
    """The live nodes started on this machine, heads first; records of dead ones are deleted."""
    found = []
    for path in sorted(nodes_dir().glob("*.json")):
        try:
            node = LocalNode(**json.loads(path.read_text()))
        except (OSError, ValueError, TypeError):
            continue  # being written, or not ours
        if node.alive():
            found.append(node)
        else:
            path.unlink(missing_ok=True)
    return sorted(found, key=lambda n: (not n.head, n.gcs_address, n.node_id))


def normalize_address(address: str) -> str:
    """``host:port`` with ``localhost`` spelled as the loopback address; a typed error for anything else."""
    try:
        host, port = split_host_port(address, "cluster address")
    except InvalidAddressError:
        host, port = "", 0
    if not port:
        raise EmberUserError(
            f"{address!r} is not a cluster address; expected HOST:PORT, as `ember start --head` prints it "
            "(or \"auto\" for the cluster whose node runs on this machine)")
    return join_host_port("127.0.0.1" if host == "localhost" else host, port)


def find(address: str) -> LocalNode:
    """The node on this machine that a driver connecting to ``address`` (or ``"auto"``) uses."""
    if address == "auto":
        address = _settings.load().address or "auto"
    nodes = local_nodes()
    if address == "auto":
        clusters = sorted({n.gcs_address for n in nodes})
        if len(clusters) > 1:
            raise EmberUserError(
                f"address=\"auto\" is ambiguous: nodes of {len(clusters)} clusters run on this machine "
                f"({', '.join(clusters)}); pass one of them as address=")
        if not clusters:
            raise EmberUserError(
                "address=\"auto\": no ember node runs on this machine; start one with `ember start --head`, "
                "or call ember.init() with no address for a cluster of this program's own")
        address = clusters[0]
    wanted = normalize_address(address)
    for node in nodes:
        if node.gcs_address == wanted:
            adopt_tls(node.session)  # a cluster that speaks TLS is reached with its node's settings
            return node
    raise EmberUserError(
        f"no node of the cluster at {wanted} runs on this machine; a driver connects through a node on its "
        f"own machine: run `ember start --address {wanted}` here first"
        + (f" (nodes here belong to {', '.join(sorted({n.gcs_address for n in nodes}))})" if nodes else ""))


def start_daemon(argv: list[str], address: str, timeout_s: float = START_TIMEOUT_S,
                 launch_prefix: tuple[str, ...] = (), env: dict[str, str] | None = None) -> LocalNode:
    """Run a node daemon (``_node_daemon`` with ``argv``) and wait until its node serves; its record.

    ``launch_prefix`` goes before the command (``ip netns exec NAME``: the node runs in that network
    namespace); ``env`` is added to this process's environment for it.

    Raises ClusterStartError, with the end of the daemon's log, if it exits
    or does not serve within ``timeout_s`` (then it is killed).
    """
    log_path = nodes_dir() / f"daemon-{time.strftime('%Y%m%d-%H%M%S')}-{os.urandom(3).hex()}.log"
    try:
        forked = subprocess.run([*launch_prefix, sys.executable, "-m", "ember.scheduler._node_daemon", *argv,
                                 "--log-file", str(log_path)],
                                stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout_s,
                                env={**os.environ, **env} if env else None)
        pid = int(forked.stdout.strip())
    except (subprocess.TimeoutExpired, ValueError) as exc:
        raise ClusterStartError(f"the node daemon did not start: {exc}") from exc
    started = process_start_ticks(pid)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for node in local_nodes():
            if node.pid == pid:
                return node
        if process_start_ticks(pid) != started:
            raise ClusterStartError(f"the node did not start; its log ({log_path}):\n{_tail(log_path)}")
        time.sleep(POLL_S)
    if process_start_ticks(pid) == started:
        os.kill(pid, signal.SIGKILL)
    raise ClusterStartError(f"the node for {address} did not serve within {timeout_s:.0f}s; its log ({log_path}):\n"
                            f"{_tail(log_path)}")


def _tail(path: Path) -> str:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return "(no log)"
    return "\n".join(lines[-LOG_TAIL_LINES:]) or "(empty log)"


def stop_node(node: LocalNode, timeout_s: float) -> str:
    """SIGTERM a node's daemon (it stops its node and cleans up), SIGKILL after ``timeout_s``; what happened."""
    if not node.alive():
        forget(node.node_id)
        return "already gone"
    os.kill(node.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while node.alive():
        if time.monotonic() > deadline:
            kill_node(node)
            return f"killed after {timeout_s:.0f}s"
        time.sleep(POLL_S)
    return "stopped"


def kill_node(node: LocalNode) -> bool:
    """SIGKILL a node's daemon: its store, scheduler (and GCS) die with it, and its workers with the scheduler.

    The pid is checked against the daemon's start time first, so a reused pid
    is never signalled. Returns whether it was still alive.
    """
    forget(node.node_id)
    if not node.alive():
        return False
    try:
        os.kill(node.pid, signal.SIGKILL)
    except ProcessLookupError:
        return False
    return True
