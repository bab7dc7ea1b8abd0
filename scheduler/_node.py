"""Starting and stopping one node's processes: the GCS service, the object store and the scheduler.

The scheduler starts the workers; this module starts the long-lived
processes, waits (bounded) until they listen, keeps them under a supervisor
that restarts the GCS service when it dies, and stops them by pid. The head
node (the only node so far) is the one that runs the GCS service.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import threading
import time
import uuid
from dataclasses import dataclass, field

from ember.exceptions import ClusterStartError
from ember.scheduler import _procutil
from ember.scheduler._gcs_link import process_id
from ember.scheduler._session import Session
from ember.scheduler._supervisor import Supervisor

log = logging.getLogger("ember.node")

NODE_START_TIMEOUT_S = 30.0
REPORT_TIMEOUT_S = 30.0
STOP_GRACE_S = 3.0


@dataclass
class Node:
    session: Session
    node_id: str
    resources: dict[str, float]
    supervisor: Supervisor
    stopped: bool = field(default=False)

    @property
    def gcs(self) -> subprocess.Popen:
        return self.supervisor.proc("gcs")

    @property
    def store(self) -> subprocess.Popen:
        return self.supervisor.proc("store")

    @property
    def scheduler(self) -> subprocess.Popen:
        return self.supervisor.proc("scheduler")

    def stop(self) -> None:
        if self.stopped:
            return
        self.stopped = True
        procs = {name: self._proc_or_none(name) for name in ("scheduler", "store", "gcs")}
        self.supervisor.stop()
        # The scheduler kills its workers on SIGTERM and says goodbye to the
        # GCS; then the store goes, then the GCS.
        for proc in procs.values():
            if proc is not None:
                _procutil.terminate(proc)
                _procutil.reap(proc, STOP_GRACE_S)

    def _proc_or_none(self, name: str) -> subprocess.Popen | None:
        try:
            return self.supervisor.proc(name)
        except KeyError:
            return None


def _spawn_gcs(session: Session, node_id: str, previous: str | None = None) -> tuple[subprocess.Popen, str]:
    process_id = os.urandom(16).hex()
    args = [str(session.dir), "--process-id", process_id, "--node-id", node_id]
    if previous:
        args += ["--previous", previous]
    return _procutil.spawn_python("ember.lineage._gcs_service", args, session.log_dir), process_id


def _gcs_restarter(session: Session, node_id: str, process_id: str):  # type: ignore[no-untyped-def]
    current = {"id": process_id}

    def restart(cause: str) -> subprocess.Popen:
        proc, current["id"] = _spawn_gcs(session, node_id, f"{current['id']}:{cause}")
        return proc

    return restart


def _spawn_store(session: Session, object_store_bytes: int, restart: bool = False) -> subprocess.Popen:
    args = [str(session.dir), "--capacity-bytes", str(object_store_bytes)] + (["--restart"] if restart else [])
    return _procutil.spawn_python("ember.store._service", args, session.log_dir)


def _store_restarter(session: Session, node_id: str, object_store_bytes: int, first: subprocess.Popen):  # type: ignore[no-untyped-def]
    current = {"pid": first.pid}

    def restart(cause: str) -> subprocess.Popen:
        proc = _spawn_store(session, object_store_bytes, restart=True)
        old, current["pid"] = current["pid"], proc.pid
        _report(session, node_id, [
            {"type": "died", "process_id": process_id(node_id, old).hex(), "cause": cause},
            {"type": "started", "process_id": process_id(node_id, proc.pid).hex(), "kind": "store", "pid": proc.pid},
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


def start_node(session: Session, resources: dict[str, float], object_store_bytes: int) -> Node:
    node_id = uuid.uuid4().hex
    supervisor = Supervisor()
    gcs, gcs_process_id = _spawn_gcs(session, node_id)
    supervisor.watch("gcs", gcs, _gcs_restarter(session, node_id, gcs_process_id),
                     ready_marker=session.sockets / "gcs.ready")
    store = _spawn_store(session, object_store_bytes)
    def spawn_scheduler(restart: bool = False) -> subprocess.Popen:
        return _procutil.spawn_python(
            "ember.scheduler._service",
            [str(session.dir), "--resources", json.dumps(resources), "--node-id", node_id,
             "--store-pid", str(store.pid)] + (["--restart"] if restart else []),
            session.log_dir,
        )

    scheduler = spawn_scheduler()
    # A dead store is replaced by an empty one: owners rebuild lost objects
    # from lineage.
    supervisor.watch("store", store, _store_restarter(session, node_id, object_store_bytes, store),
                     ready_marker=session.sockets / "store.ready")
    # A dead scheduler takes its workers with it; the new one starts fresh
    # workers and owners resubmit what was queued or running.
    supervisor.watch("scheduler", scheduler, lambda cause: spawn_scheduler(restart=True),
                     on_death=lambda pid, cause: _report(session, node_id, [
                         {"type": "died", "process_id": process_id(node_id, pid).hex(), "cause": cause}]),
                     ready_marker=session.sockets / "scheduler.ready")
    node = Node(session, node_id, resources, supervisor)
    deadline = time.monotonic() + NODE_START_TIMEOUT_S
    # The GCS service is not waited for: the scheduler registers with it in
    # the background and everyone who calls it retries while it comes up.
    for name, proc in (("store", store), ("scheduler", scheduler)):
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
    return node
