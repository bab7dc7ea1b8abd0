"""Starting and stopping one node's processes: the object store and the scheduler.

The scheduler starts the workers; this module starts the two long-lived
processes, waits (bounded) until both listen, and stops them by pid.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import uuid
from dataclasses import dataclass, field

from ember.exceptions import ClusterStartError
from ember.scheduler import _procutil
from ember.scheduler._session import Session

NODE_START_TIMEOUT_S = 30.0
STOP_GRACE_S = 3.0


@dataclass
class Node:
    session: Session
    node_id: str
    resources: dict[str, float]
    store: subprocess.Popen
    scheduler: subprocess.Popen
    stopped: bool = field(default=False)

    def stop(self) -> None:
        if self.stopped:
            return
        self.stopped = True
        # The scheduler kills its workers on SIGTERM; then the store goes.
        _procutil.terminate(self.scheduler)
        _procutil.reap(self.scheduler, STOP_GRACE_S)
        _procutil.terminate(self.store)
        _procutil.reap(self.store, STOP_GRACE_S)


def start_node(session: Session, resources: dict[str, float], object_store_bytes: int) -> Node:
    node_id = uuid.uuid4().hex
    store = _procutil.spawn_python(
        "ember.store._service",
        [str(session.dir), "--capacity-bytes", str(object_store_bytes)],
        session.log_dir,
    )
    scheduler = _procutil.spawn_python(
        "ember.scheduler._service",
        [str(session.dir), "--resources", json.dumps(resources), "--node-id", node_id,
         "--store-pid", str(store.pid)],
        session.log_dir,
    )
    node = Node(session, node_id, resources, store, scheduler)
    deadline = time.monotonic() + NODE_START_TIMEOUT_S
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
