"""Bottom-up scheduling across nodes: a node scheduler's spill to the global scheduler, and what it forwarded.

A node runs what it can. A task it cannot run (no node resource fits it)
or should not wait for (its queue is longer than its CPUs drain soon) goes
to the spill queue; a thread of its own sends batches to the global
scheduler (``Place`` on the GCS service), which picks a node for each by
resources, load and where its inputs are. The task then goes to that node's
scheduler over a relayed connection (``Op.SUBMIT``, with the function's
code first); placed back here, it joins the local queue for good.

The node that forwarded a task speaks for its owner there: the other node
reports completions (``Op.FORWARDED_DONE``) and failures (``Op.TASK_FAILED``)
on the same connection. When that connection closes (the other node died,
or its scheduler did) every task forwarded there and not known done is
failed to its owner as a worker death, and the owner retries it as its
``max_retries`` allows.

It must never hold the scheduler's lock while it calls the GCS or opens a
connection: both can take seconds when a node is dying.
"""

from __future__ import annotations

import logging
import os
import threading
from collections import deque
from typing import Any

from ember.scheduler._listener import connect
from ember.scheduler._protocol import Connection, Op
from ember.scheduler._spec import TaskSpec

log = logging.getLogger("ember.scheduler")

SPILL_BATCH_MAX = 256
RETRY_S = 0.25  # after the GCS or a node could not be reached
PLACE_TIMEOUT_S = 5.0
PEER_CONNECT_TIMEOUT_S = 5.0
WORKER_DIED = "worker_died"  # FailureCause.WORKER_DIED (the core's), without importing it here
INFEASIBLE = "infeasible"


class Spiller:
    """The spill queue of one node scheduler, and the tasks it forwarded to other nodes."""

    def __init__(self, scheduler: Any, gcs_address: str, token: bytes, hello: dict[str, Any]) -> None:
        self._scheduler = scheduler  # ember.scheduler._service.Scheduler; its lock guards the tables below
        self._gcs_address = gcs_address
        self._token = token
        self._hello = hello
        self._queue: deque[TaskSpec] = deque()
        self._wake = threading.Event()
        self._peers: dict[str, Connection] = {}  # node id -> connection to its scheduler
        self._functions_sent: dict[str, set[bytes]] = {}
        self.forwarded: dict[bytes, tuple[str, TaskSpec]] = {}  # task id -> (node id, spec)
        threading.Thread(target=self._run, name="ember-spill", daemon=True).start()

    def offer(self, specs: list[TaskSpec]) -> None:
        """Queue tasks for the global scheduler (under the scheduler's lock)."""
        self._queue.extend(specs)
        self._wake.set()

    def queued(self) -> int:
        return len(self._queue)

    # -- the spill thread ------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            self._wake.wait()
            self._wake.clear()
            while self._queue:
                with self._scheduler._lock:
                    batch = [self._queue.popleft() for _ in range(min(SPILL_BATCH_MAX, len(self._queue)))]
                if not self._place(batch):
                    with self._scheduler._lock:
                        self._queue.extendleft(reversed(batch))
                    threading.Event().wait(RETRY_S)

    def _place(self, batch: list[TaskSpec]) -> bool:
        """Place ``batch`` and hand each task to its node; False if the GCS could not answer."""
        from ember.lineage._rpc import GcsUnreachable, client_for

        request = {"node_id": self._scheduler.node_id,
                   "tasks": [{"resources": dict(spec.resources)} for spec in batch]}
        try:
            reply = client_for(self._gcs_address, self._token).call("Place", request, timeout_s=PLACE_TIMEOUT_S)
        except (GcsUnreachable, PermissionError) as exc:
            log.warning("the global scheduler is unreachable; %d task(s) wait to be placed: %s", len(batch), exc)
            return False
        placements, addresses = reply["placements"], reply["addresses"]
        by_node: dict[str, list[TaskSpec]] = {}
        for spec, node_id in zip(batch, placements):
            by_node.setdefault(node_id or "", []).append(spec)
        me = self._scheduler.node_id
        unplaced: list[TaskSpec] = []
        for node_id, specs in by_node.items():
            if node_id == me:
                with self._scheduler._lock:
                    self._scheduler.keep_here(specs)
            elif not node_id:
                with self._scheduler._lock:
                    for spec in specs:
                        self._scheduler.fail_to_owner(spec, INFEASIBLE, "no live node of the cluster has "
                                                      f"{dict(spec.resources)}")
            elif not self._forward(node_id, addresses.get(node_id), specs):
                unplaced += specs
        self._scheduler.flush()
        if unplaced:
            # The node died or is unreachable: placed again once the GCS knows it.
            threading.Event().wait(RETRY_S)
            with self._scheduler._lock:
                self._queue.extend(unplaced)
        return True

    def _forward(self, node_id: str, address: str | None, specs: list[TaskSpec]) -> bool:
        conn = self._peers.get(node_id)
        if conn is None or conn.closed:
            if address is None:
                return False
            try:
                conn = connect(address, self._token, self._hello, self._scheduler._handle,
                               self._peer_closed, f"scheduler:{node_id[:8]}", timeout_s=PEER_CONNECT_TIMEOUT_S)
            except Exception as exc:
                log.warning("cannot reach node %s's scheduler to forward %d task(s): %s", node_id, len(specs), exc)
                return False
            conn.peer = {"node_id": node_id}
            with self._scheduler._lock:
                self._peers[node_id] = conn
                self._functions_sent[node_id] = set()
        with self._scheduler._lock:
            sent = self._functions_sent[node_id]
            for spec in specs:
                if spec.function_id not in sent:
                    payload = self._scheduler.function_payload(spec.function_id)
                    if payload is not None:
                        conn.queue((Op.REGISTER_FUNCTION, spec.function_id, payload, ""))
                    sent.add(spec.function_id)
                conn.queue((Op.SUBMIT, spec))
                self.forwarded[spec.task_id] = (node_id, spec)
        conn.flush()
        return True

    # -- what the other nodes say ----------------------------------------------------------

    def done(self, task_ids: list[bytes]) -> None:
        for task_id in task_ids:
            self.forwarded.pop(task_id, None)

    def failed(self, task_id: bytes, attempt: int, cause: str, detail: str) -> None:
        """Another node failed a task forwarded there: its owner hears it from here."""
        entry = self.forwarded.pop(task_id, None)
        if entry is not None:
            self._scheduler.fail_to_owner(entry[1], cause, detail, attempt)

    def cancel(self, task_id: bytes, force: bool) -> bool:
        entry = self.forwarded.get(task_id)
        conn = self._peers.get(entry[0]) if entry is not None else None
        if conn is None:
            return False
        conn.send((Op.CANCEL, task_id, force))
        return True

    def _peer_closed(self, conn: Connection) -> None:
        node_id = conn.peer.get("node_id")
        with self._scheduler._lock:
            if self._peers.get(node_id) is conn:
                del self._peers[node_id]
            lost = [spec for task_id, (where, spec) in list(self.forwarded.items()) if where == node_id]
            for spec in lost:
                del self.forwarded[spec.task_id]
                self._scheduler.fail_to_owner(spec, WORKER_DIED, f"its node {node_id} died or lost its scheduler")
        if lost:
            log.warning("node %s is gone: %d task(s) forwarded there go back to their owners", node_id, len(lost))
        self._scheduler.flush()


def scheduler_hello(node_id: str) -> dict[str, Any]:
    """How a scheduler introduces itself to another node's (no address: it owns nothing there)."""
    return {"kind": "scheduler", "pid": os.getpid(), "node_id": node_id}
