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
``max_retries`` allows. So are those reported done in the last
``DONE_RECHECK_S``: a worker sends its result to the owner and its
completion to its scheduler on different paths, and a node killed between
the two leaves a completion here whose result never reached the owner. An
owner that has the result ignores the report; one that does not runs the
task again, rather than waiting for it forever. The window is the relay's
``DEAD_PEER_WINDOW_S``: when the network to the node is cut, its connection
closes here only when the keepalive gives up (up to 15 s after the cut), and
a result lost in the cut was sent just before it.

A task no live node can run waits here, as in Ray: the cluster may gain a
node that can (``ember start --address``). It asks the global scheduler
again every ``UNPLACED_RETRY_S``, and its owner is warned (``Op.TASK_FAILED``
with ``FailureCause.UNSCHEDULABLE``, which is no failure) once, then every
minute while it waits (``_infeasible.WaitWarnings``).

An actor its node cannot start now is placed the same way (``Op.CREATE_ACTOR``
to the chosen node); this node subscribes to its states there and relays
them to its own subscribers, and restarts it elsewhere if that node dies.
A scheduler asked about an actor it did not place finds its node through
the GCS (``LocateActor``) and follows it from there.

It must never hold the scheduler's lock while it calls the GCS or opens a
connection: both can take seconds when a node is dying.
"""

from __future__ import annotations

import base64
import logging
import os
import pickle
import threading
import time
from collections import deque
from typing import Any, Callable

from ember.lineage._states import ProcessKind
from ember.scheduler._spec import FailureCause
from ember.scheduler._infeasible import WaitWarnings, waiting_message
from ember.scheduler._listener import connect
from ember.scheduler._protocol import Connection, Op
from ember.scheduler._relay import DEAD_PEER_WINDOW_S
from ember.scheduler._spec import Strategy, TaskSpec, strategy_record

log = logging.getLogger("ember.scheduler")

SPILL_BATCH_MAX = 256
RETRY_S = 0.25  # after the GCS or a node could not be reached
PLACE_TIMEOUT_S = 5.0
PEER_CONNECT_TIMEOUT_S = 5.0
AVOID_LOST_NODE_S = 10.0  # longer than the GCS takes to declare a silent node dead
FIND_ACTOR_TIMEOUT_S = 60.0  # an actor this node did not place: how long to look for the node hosting it
UNPLACED_RETRY_S = 1.0  # tasks no live node can run ask the global scheduler again this often (a node may join)
UNPLACED_MAX = 100_000  # tasks and actors waiting for such a node; more fail at once, saying so
# A forwarded task reported done is failed back to its owner (who ignores it if it has the result) when
# the connection to its node closes this soon after. A cut is noticed only by the keepalive, up to
# KEEPALIVE_S + KEEPALIVE_TIMEOUT_S after it began: a shorter window missed a result lost in the cut.
DONE_RECHECK_S = DEAD_PEER_WINDOW_S
DONE_RECHECK_MAX = 100_000  # such tasks kept at most (the oldest go first)


class Spiller:
    """The spill queue of one node scheduler, and the tasks it forwarded to other nodes."""

    def __init__(self, scheduler: Any, gcs_address: str, token: bytes, hello: dict[str, Any],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._scheduler = scheduler  # ember.scheduler._service.Scheduler; its lock guards the tables below
        self._gcs_address = gcs_address
        self._token = token
        self._hello = hello
        # (spec, None) for a task; (spec, (detached, meta, restarts)) for an actor to create.
        self._queue: deque[tuple[TaskSpec, tuple | None]] = deque()
        self._wake = threading.Event()
        self._peers: dict[str, Connection] = {}  # node id -> connection to its scheduler
        self._functions_sent: dict[str, set[bytes]] = {}
        self.forwarded: dict[bytes, tuple[str, TaskSpec]] = {}  # task id -> (node id, spec)
        # Forwarded tasks reported done lately, oldest first: task id -> (node id, spec, when).
        self._recently_done: dict[bytes, tuple[str, TaskSpec, float]] = {}
        self._finding: set[bytes] = set()  # actors whose node is being looked up
        # Nodes whose connection dropped, and when: not placed on while the GCS may still think them alive.
        self._lost_nodes: dict[str, float] = {}
        # Tasks and actors no live node can run: they wait for one to join (under the scheduler's lock).
        self._unplaced: deque[tuple[TaskSpec, tuple | None]] = deque()
        self._retry_at = 0.0
        self._warnings = WaitWarnings()
        self._clock = clock  # for the waits of unplaceable tasks and their warnings
        # Tasks of the batch being placed (outside the lock), and those of them cancelled meanwhile.
        self._in_flight: set[bytes] = set()
        self._cancelled: set[bytes] = set()
        threading.Thread(target=self._run, name="ember-spill", daemon=True).start()

    def offer(self, specs: list[TaskSpec]) -> None:
        """Queue tasks for the global scheduler (under the scheduler's lock)."""
        self._queue.extend((spec, None) for spec in specs)
        self._wake.set()

    def offer_actor(self, spec: TaskSpec, detached: bool, meta: Any, restarts: int) -> None:
        """Queue an actor to create for the global scheduler to place (under the scheduler's lock)."""
        self._queue.append((spec, (detached, meta, restarts)))
        self._wake.set()

    # -- the spill thread ------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            self._wake.wait(UNPLACED_RETRY_S if self._unplaced else None)
            self._wake.clear()
            self._requeue_unplaced()
            while self._queue:
                if not self._place_next_batch():
                    threading.Event().wait(RETRY_S)

    def _place_next_batch(self) -> bool:
        """Place the next batch of the spill queue; False if the GCS could not answer (the batch waits)."""
        with self._scheduler._lock:
            batch = [self._queue.popleft() for _ in range(min(SPILL_BATCH_MAX, len(self._queue)))]
            self._in_flight = {spec.task_id for spec, actor in batch if actor is None}
        placed = self._place(batch)
        with self._scheduler._lock:
            if not placed:
                self._queue.extendleft(reversed(self._drop_cancelled(batch)))
            # Cancelled after their placement came back: wherever they went now, cancel them there.
            late, self._cancelled, self._in_flight = self._cancelled, set(), set()
            for task_id in late:
                self._scheduler._cancel(task_id, False, True)
        if late:
            self._scheduler.flush()
        return placed

    def _requeue_unplaced(self) -> None:
        """Offer again the tasks and actors that wait for a node (a node that can run them may have joined)."""
        with self._scheduler._lock:
            if self._unplaced and self._clock() >= self._retry_at:
                # An actor killed while it waited stays out.
                self._queue.extend(item for item in self._unplaced
                                   if item[1] is None or not self._scheduler.actor_is_dead(item[0].actor_id))
                self._unplaced.clear()

    def _place(self, batch: list[tuple[TaskSpec, tuple | None]]) -> bool:
        """Place ``batch`` and hand each task or actor to its node; False if the GCS could not answer."""
        now = time.monotonic()
        for node_id, lost_at in list(self._lost_nodes.items()):
            if now - lost_at > AVOID_LOST_NODE_S:
                del self._lost_nodes[node_id]
        with self._scheduler._lock:
            inputs = [self._scheduler.input_bytes.pop(spec.task_id, {}) for spec, _ in batch]
        tasks = [{"resources": dict(spec.resources), "inputs": where} for (spec, _), where in zip(batch, inputs)]
        for task, (spec, _) in zip(tasks, batch):
            if spec.strategy is not None:
                task["strategy"] = strategy_record(spec.strategy)
        request = {"node_id": self._scheduler.node_id, "avoid": list(self._lost_nodes), "tasks": tasks}
        reply = self._gcs_call("Place", request)
        if reply is None:
            return False  # the global scheduler is unreachable: the batch waits
        placements, addresses, refused = reply["placements"], reply["addresses"], reply.get("refused") or {}
        by_node: dict[str, list[tuple[TaskSpec, tuple | None]]] = {}
        with self._scheduler._lock:
            kept = set(map(id, self._drop_cancelled(batch)))
            for i, item in enumerate(batch):
                why = refused.get(str(i))
                if why is not None and id(item) in kept:
                    kept.discard(id(item))
                    self._scheduler.strategy_unmet(item[0], why)  # hard node affinity to a dead node
        for item, node_id in zip(batch, placements):
            if id(item) in kept:
                by_node.setdefault(node_id or "", []).append(item)
        me = self._scheduler.node_id
        unplaced: list[tuple[TaskSpec, tuple | None]] = []
        for node_id, items in by_node.items():
            if node_id == me:
                with self._scheduler._lock:
                    self._scheduler.keep_here(items)
            elif not node_id:
                self._wait_for_node(items, reply.get("totals") or {}, reply.get("nodes") or 0)
            elif not self._forward(node_id, addresses.get(node_id), items):
                self._lost_nodes[node_id] = time.monotonic()  # unreachable: placed elsewhere meanwhile
                unplaced += items
        self._scheduler.flush()
        if unplaced:
            # The node died or is unreachable: placed again once the GCS knows it.
            threading.Event().wait(RETRY_S)
            with self._scheduler._lock:
                self._queue.extend(unplaced)
        return True

    def _drop_cancelled(self, items: list[tuple[TaskSpec, tuple | None]]) -> list[tuple[TaskSpec, tuple | None]]:
        """``items`` but the tasks cancelled while they were being placed, whose owners hear it (under the lock)."""
        if not self._cancelled:
            return items
        kept = []
        for spec, actor in items:
            if actor is None and spec.task_id in self._cancelled:
                self._cancelled.discard(spec.task_id)
                self._scheduler.fail_to_owner(spec, FailureCause.CANCELLED, "")
            else:
                kept.append((spec, actor))
        return kept

    def _wait_for_node(self, items: list[tuple[TaskSpec, tuple | None]], totals: dict[str, float],
                       nodes: int) -> None:
        """Keep tasks and actors no live node can run until one joins; warn their owners when it is due."""
        now = self._clock()
        with self._scheduler._lock:
            for spec, actor in items:
                if actor is not None and self._scheduler.actor_is_dead(spec.actor_id):
                    continue  # killed while it waited
                if len(self._unplaced) >= UNPLACED_MAX:
                    self._scheduler.unplaceable(spec, f"no live node of the cluster has {dict(spec.resources)}, "
                                                      f"and {UNPLACED_MAX} tasks wait for one already")
                    continue
                self._unplaced.append((spec, actor))
                in_group = spec.strategy is not None and spec.strategy[0] == Strategy.PLACEMENT_GROUP
                # One in a placement group waits for its bundle to be committed: not for a node to join.
                if not in_group and self._warnings.due(spec.owner_addr, spec.resources, now):
                    what = (f"actor {spec.function_name} (actor {spec.actor_id.hex()})"  # type: ignore[union-attr]
                            if actor is not None else spec.describe())
                    self._scheduler.warn_owner(spec, waiting_message(what, spec.resources, totals, nodes))
            self._retry_at = now + UNPLACED_RETRY_S

    def _peer(self, node_id: str, address: str | None) -> Connection | None:
        """The connection to ``node_id``'s scheduler, opened if need be (never under the lock)."""
        conn = self._peers.get(node_id)
        if conn is not None and not conn.closed:
            return conn
        if address is None:
            return None
        try:
            conn = connect(address, self._token, self._hello, self._scheduler._handle,
                           self._peer_closed, f"scheduler:{node_id[:8]}", timeout_s=PEER_CONNECT_TIMEOUT_S)
        except Exception as exc:
            log.warning("cannot reach node %s's scheduler: %s", node_id, exc)
            return None
        conn.peer = {"node_id": node_id}
        with self._scheduler._lock:
            self._peers[node_id] = conn
            self._functions_sent[node_id] = set()
        return conn

    def _forward(self, node_id: str, address: str | None, items: list[tuple[TaskSpec, tuple | None]]) -> bool:
        conn = self._peer(node_id, address)
        if conn is None:
            return False
        with self._scheduler._lock:
            if conn.closed:
                # Closed since it was opened: its close handler may have run already, and would
                # never hand these back to their owners. They are placed again.
                return False
            sent = self._functions_sent[node_id]
            for spec, actor in items:
                if spec.function_id not in sent:
                    payload = self._scheduler.function_payload(spec.function_id)
                    if payload is not None:
                        conn.queue((Op.REGISTER_FUNCTION, spec.function_id, payload, ""))
                    sent.add(spec.function_id)
                if actor is None:
                    conn.queue((Op.SUBMIT, spec))
                    self.forwarded[spec.task_id] = (node_id, spec)
                else:
                    conn.queue((Op.CREATE_ACTOR, spec, *actor))
                    conn.queue((Op.LOOKUP_ACTOR, 0, spec.actor_id))  # its states come back on this connection
                    self._scheduler.hosted_elsewhere(spec.actor_id, node_id)
        conn.flush()
        return True

    # -- actors on other nodes -------------------------------------------------------------

    def find_actor(self, actor_id: bytes) -> None:
        """Learn which node hosts an actor this node did not place, and follow its states from there."""
        if actor_id in self._finding:
            return
        self._finding.add(actor_id)
        threading.Thread(target=self._find_actor, args=(actor_id,), name="ember-find-actor", daemon=True).start()

    def _find_actor(self, actor_id: bytes) -> None:
        deadline = time.monotonic() + FIND_ACTOR_TIMEOUT_S
        try:
            while time.monotonic() < deadline:
                found = self._gcs_call("LocateActor", {"actor_id": actor_id.hex()}) or {}
                node_id = found.get("node_id")
                if node_id == self._scheduler.node_id:
                    return  # created here meanwhile: its record here is the real one
                conn = self._peer(node_id, found.get("address")) if node_id else None
                if conn is not None:
                    with self._scheduler._lock:
                        self._scheduler.hosted_elsewhere(actor_id, node_id)
                    conn.send_now((Op.LOOKUP_ACTOR, 0, actor_id))
                    return
                threading.Event().wait(RETRY_S)
            with self._scheduler._lock:
                self._scheduler.actor_unfound(actor_id, f"no live node of the cluster hosts it "
                                                        f"(looked for {FIND_ACTOR_TIMEOUT_S:.0f}s)")
            self._scheduler.flush()
        finally:
            with self._scheduler._lock:
                self._finding.discard(actor_id)

    # -- actor names, cluster-wide (kept by the GCS service) ---------------------------------

    def claim_name(self, conn: Connection, req_id: int, name: str, actor_id: bytes, meta: Any) -> None:
        """Claim ``name`` with the GCS too, then answer the request (None, or why not)."""
        def claim() -> None:
            reply = self._gcs_call("ClaimName", {"name": name, "actor_id": actor_id.hex(),
                                                 "meta": base64.b64encode(pickle.dumps(meta)).decode()})
            error = reply.get("error") if reply is not None else \
                "the GCS service is unreachable, so a name cannot be claimed for the whole cluster; try again"
            if error is not None:
                with self._scheduler._lock:
                    self._scheduler.unclaim_name(name, actor_id)
            _answer(conn, req_id, error)

        threading.Thread(target=claim, name="ember-claim-name", daemon=True).start()

    def lookup_name(self, conn: Connection, req_id: int, name: str) -> None:
        """Answer a lookup of a name this node does not know from the GCS: (actor id, metadata) or None."""
        def lookup() -> None:
            reply = self._gcs_call("LookupName", {"name": name}) or {}
            found = None
            if reply.get("actor_id"):
                # Metadata another scheduler of this cluster pickled (token-checked all the way).
                found = (bytes.fromhex(reply["actor_id"]), pickle.loads(base64.b64decode(reply["meta"])))
            _answer(conn, req_id, found)

        threading.Thread(target=lookup, name="ember-lookup-name", daemon=True).start()

    def list_names(self, conn: Connection, req_id: int, local: set[str]) -> None:
        """Answer with the names of the cluster's live named actors: ``local`` (this node's) and the GCS's."""
        def list_names() -> None:
            reply = self._gcs_call("ListNames", {}) or {}
            _answer(conn, req_id, sorted(local | set(reply.get("names", []))))

        threading.Thread(target=list_names, name="ember-list-names", daemon=True).start()

    def release_name(self, name: str, actor_id: bytes) -> None:
        threading.Thread(target=self._gcs_call, args=("ReleaseName", {"name": name, "actor_id": actor_id.hex()}),
                         name="ember-release-name", daemon=True).start()

    def _gcs_call(self, method: str, request: dict[str, Any]) -> dict[str, Any] | None:
        """One call to the GCS service (it retries while the service restarts); None if unreachable."""
        from ember.lineage._rpc import GcsUnreachable, client_for

        try:
            return client_for(self._gcs_address, self._token).call(method, request, timeout_s=PLACE_TIMEOUT_S)
        except (GcsUnreachable, PermissionError) as exc:
            log.warning("the GCS service did not answer %s: %s", method, exc)
            return None

    def kill_actor(self, actor_id: bytes, node_id: str, no_restart: bool = True) -> None:
        conn = self._peers.get(node_id)
        if conn is not None:
            conn.send((Op.KILL_ACTOR, actor_id, no_restart))

    # -- what the other nodes say ----------------------------------------------------------

    def done(self, task_ids: list[bytes]) -> None:
        """Forwarded tasks another node ran to the end (under the scheduler's lock)."""
        now = self._clock()
        recent = self._recently_done
        for task_id in task_ids:
            entry = self.forwarded.pop(task_id, None)
            if entry is not None:
                recent[task_id] = (entry[0], entry[1], now)
        while recent:
            oldest = next(iter(recent))
            if now - recent[oldest][2] <= DONE_RECHECK_S and len(recent) <= DONE_RECHECK_MAX:
                break
            del recent[oldest]

    def failed(self, task_id: bytes, attempt: int, cause: str, detail: str) -> None:
        """Another node failed a task forwarded there: its owner hears it from here."""
        entry = self.forwarded.pop(task_id, None)
        if entry is not None:
            self._scheduler.fail_to_owner(entry[1], cause, detail, attempt)

    def cancel(self, task_id: bytes, force: bool, recursive: bool) -> bool:
        """Cancel a task this node sent on, or holds while no node can run it (under the scheduler's lock)."""
        for waiting in (self._unplaced, self._queue):
            for item in waiting:
                if item[0].task_id == task_id and item[1] is None:
                    waiting.remove(item)
                    self._scheduler.fail_to_owner(item[0], FailureCause.CANCELLED, "")
                    return True
        if task_id in self._in_flight:
            self._cancelled.add(task_id)  # failed to its owner once its placement comes back
            return True
        entry = self.forwarded.get(task_id)
        conn = self._peers.get(entry[0]) if entry is not None else None
        if conn is None:
            return False
        conn.send((Op.CANCEL, task_id, force, recursive))
        return True

    def _peer_closed(self, conn: Connection) -> None:
        node_id = conn.peer.get("node_id")
        detail = f"its node {node_id} died or lost its scheduler"
        with self._scheduler._lock:
            if self._peers.get(node_id) is conn:
                del self._peers[node_id]
            self._lost_nodes[node_id] = time.monotonic()
            lost = [spec for task_id, (where, spec) in list(self.forwarded.items()) if where == node_id]
            for spec in lost:
                del self.forwarded[spec.task_id]
                self._scheduler.fail_to_owner(spec, FailureCause.WORKER_DIED, detail)
            # Done there lately: the result may have died on its way to the owner (who ignores this if not).
            now = self._clock()
            for task_id, (where, spec, done_at) in list(self._recently_done.items()):
                if where == node_id and now - done_at <= DONE_RECHECK_S:
                    del self._recently_done[task_id]
                    self._scheduler.recheck_with_owner(spec, detail)
            self._scheduler.host_lost(node_id, detail)
        if lost:
            log.warning("node %s is gone: %d task(s) forwarded there go back to their owners", node_id, len(lost))
        self._scheduler.flush()


def scheduler_hello(node_id: str) -> dict[str, Any]:
    """How a scheduler introduces itself to another node's (no address: it owns nothing there)."""
    return {"kind": ProcessKind.SCHEDULER, "pid": os.getpid(), "node_id": node_id}


def _answer(conn: Connection, req_id: int, value: Any) -> None:
    try:
        conn.reply(req_id, value)
        conn.flush()
    except Exception:  # the asker went away meanwhile
        pass
