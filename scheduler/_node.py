"""Starting and stopping one node's processes: the GCS service, the object store and the scheduler.

The scheduler starts the workers; this module starts the long-lived
processes, waits (bounded) until they listen, keeps them under a supervisor
that restarts the GCS service when it dies, and stops them by pid. The head
node is the one that runs the GCS service; a node that joins a cluster
(``ember start --address``) uses the head's.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import socket
import subprocess
import threading
import time
import uuid
from pathlib import Path
from dataclasses import dataclass, field
from typing import Any

from ember.exceptions import ClusterStartError
from ember.lineage._states import ProcessKind
from ember.scheduler import _procutil
from ember.scheduler._accelerators import node_gpus
from ember.scheduler._address import join_host_port
from ember.scheduler._tls import tls_info
from ember.scheduler._gcs_link import UNREGISTER_TIMEOUT_S, process_id
from ember.scheduler._session import Session
from ember.scheduler._supervisor import Supervisor

log = logging.getLogger("ember.node")

NODE_START_TIMEOUT_S = 30.0
REPORT_TIMEOUT_S = 30.0
STOP_GRACE_S = 3.0
# The scheduler stops its workers (each asked, then killed after WORKER_STOP_GRACE_S) and then says
# goodbye to the GCS (up to UNREGISTER_TIMEOUT_S): it is given the time for both before SIGKILL.
SCHEDULER_STOP_GRACE_S = _procutil.WORKER_STOP_GRACE_S + UNREGISTER_TIMEOUT_S + 2.0


@dataclass
class Node:
    session: Session
    node_id: str
    resources: dict[str, float]
    supervisor: Supervisor
    stopped: bool = field(default=False)

    @property
    def gcs(self) -> subprocess.Popen:
        return self.supervisor.proc(ProcessKind.GCS)

    @property
    def store(self) -> subprocess.Popen:
        return self.supervisor.proc(ProcessKind.STORE)

    @property
    def scheduler(self) -> subprocess.Popen:
        return self.supervisor.proc(ProcessKind.SCHEDULER)

    def stop(self) -> None:
        if self.stopped:
            return
        self.stopped = True
        procs = {kind: self._proc_or_none(kind) for kind in (ProcessKind.SCHEDULER, ProcessKind.STORE, ProcessKind.GCS)}
        self.supervisor.stop()
        # The scheduler kills its workers on SIGTERM and says goodbye to the
        # GCS; then the store goes, then the GCS.
        for kind, proc in procs.items():
            if proc is not None:
                _procutil.terminate(proc)
                _procutil.reap(proc, SCHEDULER_STOP_GRACE_S if kind is ProcessKind.SCHEDULER else STOP_GRACE_S)

    def _proc_or_none(self, kind: ProcessKind) -> subprocess.Popen | None:
        try:
            return self.supervisor.proc(kind)
        except KeyError:
            return None


def _output(output_dir: Path | None, name: str) -> Path | None:
    """Where a node process's stdout and stderr go: ``output_dir/<name>.out``, or None (the driver's)."""
    return None if output_dir is None else output_dir / f"{name}.out"


def _spawn_gcs(session: Session, node_id: str, previous: str | None = None,
               output_dir: Path | None = None) -> tuple[subprocess.Popen, str]:
    process_id = os.urandom(16).hex()
    args = [str(session.dir), "--process-id", process_id, "--node-id", node_id]
    if previous:
        args += ["--previous", previous]
    return _procutil.spawn_python("ember.lineage._gcs_service", args, session.log_dir,
                                  output=_output(output_dir, "gcs")), process_id


def _gcs_restarter(session: Session, node_id: str, process_id: str,
                   output_dir: Path | None = None):  # type: ignore[no-untyped-def]
    current = {"id": process_id}

    def restart(cause: str) -> subprocess.Popen:
        proc, current["id"] = _spawn_gcs(session, node_id, f"{current['id']}:{cause}", output_dir)
        return proc

    return restart


def _spawn_store(session: Session, object_store_bytes: int, transfer_bind: str | None,
                 restart: bool = False, output_dir: Path | None = None) -> subprocess.Popen:
    args = [str(session.dir), "--capacity-bytes", str(object_store_bytes)] + (["--restart"] if restart else [])
    if transfer_bind is not None:
        args += ["--transfer-bind", transfer_bind]
    return _procutil.spawn_python("ember.store._service", args, session.log_dir, output=_output(output_dir, "store"))


def _store_restarter(session: Session, node_id: str, object_store_bytes: int, first: subprocess.Popen,
                     transfer_bind: str | None, output_dir: Path | None = None):  # type: ignore[no-untyped-def]
    current = {"pid": first.pid}

    def restart(cause: str) -> subprocess.Popen:
        proc = _spawn_store(session, object_store_bytes, transfer_bind, restart=True, output_dir=output_dir)
        old, current["pid"] = current["pid"], proc.pid
        _report(session, node_id, [
            {"type": "died", "process_id": process_id(node_id, old).hex(), "cause": cause},
            {"type": "started", "process_id": process_id(node_id, proc.pid).hex(), "kind": ProcessKind.STORE,
             "pid": proc.pid},
        ])
        return proc

    return restart


def _report(session: Session, node_id: str, events: list[dict]) -> None:
    """Record process events with the GCS, in the background (it may be restarting too)."""
    def send() -> None:
        from ember.lineage._rpc import GcsUnreachable, client_for

        try:
            client_for(session.gcs_address, session.token()).call(
                "ProcessEvents", {"node_id": node_id, "events": events}, timeout_s=REPORT_TIMEOUT_S)
        except (GcsUnreachable, PermissionError) as exc:
            log.warning("could not record %s with the GCS: %s", events, exc)

    threading.Thread(target=send, name="ember-node-report", daemon=True).start()


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on ``host`` that nothing listens on now."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def start_node(session: Session, resources: dict[str, float], object_store_bytes: int,
               run_gcs: bool = True, bind_host: str | None = None, output_dir: Path | None = None) -> Node:
    """Start a node's processes; ``run_gcs``: this is the head (a node that joins a cluster uses its GCS).

    ``output_dir``: their stdout and stderr go to files there (``scheduler.out`` holds its workers'
    too, which inherit it), not to this process's (``init(log_to_driver=False)``).

    ``bind_host``: the node is part of a multi-node cluster, and serves its
    relay and its objects to other nodes on that host. The ports are chosen
    once: a restarted scheduler or store takes the same one, since every
    address of a process on this node names the relay's. The first scheduler
    binds the relay to any free port (port 0, never a port picked here and
    possibly taken by the time it binds) and records it in the session info.
    """
    node_id = uuid.uuid4().hex
    relay_bind = transfer_bind = None
    if bind_host is not None:
        relay_bind = join_host_port(bind_host, 0)
        transfer_bind = join_host_port(bind_host, free_port(bind_host))
    supervisor = Supervisor()
    if run_gcs:
        gcs, gcs_process_id = _spawn_gcs(session, node_id, output_dir=output_dir)
        supervisor.watch(ProcessKind.GCS, gcs, _gcs_restarter(session, node_id, gcs_process_id, output_dir),
                         ready_marker=session.sockets / "gcs.ready")
    store = _spawn_store(session, object_store_bytes, transfer_bind, output_dir=output_dir)

    def spawn_scheduler(restart: bool = False) -> subprocess.Popen:
        return _procutil.spawn_python(
            "ember.scheduler._service",
            [str(session.dir), "--resources", json.dumps(resources), "--node-id", node_id,
             "--store-pid", str(store.pid)] + (["--restart"] if restart else [])
            + (["--relay-bind", relay_bind, "--transfer-address", transfer_bind] if relay_bind else []),
            session.log_dir, output=_output(output_dir, "scheduler"),
        )

    scheduler = spawn_scheduler()
    # A dead store is replaced by an empty one: owners rebuild lost objects
    # from lineage.
    supervisor.watch(ProcessKind.STORE, store,
                     _store_restarter(session, node_id, object_store_bytes, store, transfer_bind, output_dir),
                     ready_marker=session.sockets / "store.ready")
    # A dead scheduler takes its workers with it; the new one starts fresh
    # workers and owners resubmit what was queued or running.
    supervisor.watch(ProcessKind.SCHEDULER, scheduler, lambda cause: spawn_scheduler(restart=True),
                     on_death=lambda pid, cause: _report(session, node_id, [
                         {"type": "died", "process_id": process_id(node_id, pid).hex(), "cause": cause}]),
                     ready_marker=session.sockets / "scheduler.ready")
    node = Node(session, node_id, resources, supervisor)
    deadline = time.monotonic() + NODE_START_TIMEOUT_S
    # The GCS service is not waited for: the scheduler registers with it in
    # the background and everyone who calls it retries while it comes up.
    for name, proc in ((ProcessKind.STORE, store), (ProcessKind.SCHEDULER, scheduler)):
        marker = session.sockets / f"{name}.ready"
        while not marker.exists():
            code = proc.poll()
            if code is not None or time.monotonic() > deadline:
                node.stop()
                reason = f"exited with code {code}" if code is not None else f"not ready after {NODE_START_TIMEOUT_S:.0f}s"
                logs = ", ".join(sorted(os.listdir(session.log_dir))) or "none"
                raise ClusterStartError(
                    f"the {name} process {reason}; its log is in {session.log_dir} (files: {logs})"
                )
            time.sleep(0.005)
    if relay_bind is not None:
        relay_bind = session.relay_endpoint()  # where the first scheduler bound it: restarts take the same
    return node


def memory_bytes() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        return 8 << 30


def default_store_bytes() -> int:
    shm_free = 0
    try:
        st = os.statvfs("/dev/shm")
        shm_free = st.f_bavail * st.f_frsize
    except OSError:
        pass
    budget = int(memory_bytes() * 0.3)
    return min(budget, int(shm_free * 0.8)) if shm_free else budget


LOCAL_NODE_IP = "127.0.0.1"  # the address of a node no other node reaches (a cluster of one program's own)
NODE_RESOURCE_PREFIX = "node:"  # as in Ray: every node has ``node:<its IP>: 1.0``, to pin tasks to it


def node_ip(bind_host: str | None) -> str:
    """The IP address other nodes reach a node at that serves on ``bind_host`` (None: no other node does)."""
    if not bind_host:
        return LOCAL_NODE_IP
    try:
        ip = ipaddress.ip_address(bind_host.strip("[]"))
    except ValueError:
        return socket.gethostbyname(bind_host)  # a host name: the address it stands for
    if not ip.is_unspecified:
        return str(ip)
    # Every interface: the address of the one that routes outward (a UDP connect sends nothing).
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("10.254.254.254", 1))
            return str(probe.getsockname()[0])
        except OSError:
            return LOCAL_NODE_IP


def node_resources(num_cpus: float | None, num_gpus: float | None, resources: dict[str, float] | None,
                   object_store_memory: int | None,
                   ip: str = LOCAL_NODE_IP) -> tuple[dict[str, float], int]:
    """A node's resource totals and its store's budget in bytes, from what the user asked for.

    ``ip``: the node's address, which names its own resource ``node:<ip>`` (Ray's).
    """
    totals: dict[str, float] = {"CPU": float(num_cpus if num_cpus is not None else (os.cpu_count() or 1))}
    gpus = node_gpus(num_gpus, os.environ)  # not given: as many as CUDA_VISIBLE_DEVICES or nvidia-smi has
    if gpus:
        totals["GPU"] = float(gpus)
    for name, amount in (resources or {}).items():
        totals[name] = float(amount)
    store_bytes = int(object_store_memory or default_store_bytes())
    totals["memory"] = float(memory_bytes())
    totals["object_store_memory"] = float(store_bytes)
    totals[NODE_RESOURCE_PREFIX + ip] = 1.0
    return totals, store_bytes


@dataclass(frozen=True)
class JoinTarget:
    """The cluster a node joins: its GCS address, its token, and what its GCS said of itself."""

    gcs_address: str
    token: bytes
    conninfo: str | None
    cluster_id: str


def bring_up(totals: dict[str, float], store_bytes: int, gcs_url: str | None = None,
             gcs_address: str | None = None, join: JoinTarget | None = None,
             bind_host: str | None = None, log_to_driver: bool = True) -> tuple[Session, Node, Any]:
    """Create a session and start a node in it: ``(session, node, lineage store or None)``.

    ``log_to_driver`` False: the node's processes and their workers write their output to files
    in the session's log folder instead of this process's stdout and stderr.

    Without ``join`` the node is a head: it starts the GCS service (on
    ``gcs_address``, ``host:port``, if given, else a Unix socket in the
    session) and brings the lineage log up. With ``join`` it uses that
    cluster's GCS and log. On failure nothing is left running; a start
    failure keeps the logs its error points at.
    """
    from ember.lineage import LineageStore
    from ember.scheduler._session import create_session, remove_stale_sessions

    remove_stale_sessions()
    session = create_session(join.token if join is not None else None)
    log_store = LineageStore(gcs_url) if join is None else None
    try:
        # Workers read where the log is when they start; PostgreSQL comes
        # up while the node's processes do.
        if join is None:
            info = {"gcs_conninfo": log_store.planned_conninfo(), "cluster_id": session.name}
            if gcs_address:
                info["gcs_address"] = gcs_address
        else:
            info = {"gcs_conninfo": join.conninfo, "cluster_id": join.cluster_id, "gcs_address": join.gcs_address}
        info.update(tls_info())  # drivers connecting through this node speak TLS as it does
        session.write_info(info)
        if log_store is not None:
            log_store.start()
        node = start_node(session, totals, store_bytes, run_gcs=join is None, bind_host=bind_host,
                          output_dir=None if log_to_driver else session.log_dir)
        if log_store is not None:
            try:
                log_store.ready()
            except BaseException:
                node.stop()
                raise
    except ClusterStartError:
        if log_store is not None:
            log_store.release()
        session.remove_runtime_files()  # keep the logs the error message points at
        raise
    except BaseException:
        if log_store is not None:
            log_store.release()
        session.remove()
        raise
    return session, node, log_store
