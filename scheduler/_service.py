"""The node scheduler process: the service that drives the queue core, the worker pool and the actor table.

Submitters send task specs here. The queue core (``scheduler/_node_queue.py``)
decides where each runs, given the clock's reading; this module carries out
what it returns: ``EXECUTE`` to a worker, a worker process started through
the pool (``scheduler/_worker_pool.py``), a batch spilled to the global
scheduler (``scheduler/_spill.py``). Actor states, subscribers and names
live in the actor table (``scheduler/_node_actors.py``). This module owns
the sockets and the message dispatch, the timer, the queue kept in the log
(``lineage/_queue_log.py``) and the taking up of a dead predecessor's queue,
and ``main``. Results do not pass through here: workers send them straight
to the owner.

It must never run user code and never unpickle user values: specs carry
encoded arguments it passes along untouched. It must never make a queue or
placement decision of its own: those belong to the queue core.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, assert_never

from ember import _settings
from ember.chaos import _agent
from ember.lineage._states import ProcessKind
from ember.scheduler._actor_lease import Lease
from ember.scheduler._bundles import Bundles
from ember.scheduler._gcs_link import GcsLink, process_id
from ember.scheduler._infeasible import CANNOT_SCHEDULE
from ember.scheduler import _messages
from ember.scheduler._address import through_relay
from ember.scheduler._listener import Listener, set_local_relay
from ember.scheduler._node_actors import NodeActors
from ember.scheduler._node_queue import Action, Admission, Assign, NodeQueue, Spawn, Spill
from ember.scheduler._spill import Spiller, scheduler_hello
from ember.scheduler._protocol import Connection, Op, Outbox
from ember.scheduler._session import Session, log_conninfo, open_session
from ember.scheduler._spec import GROUP_REMOVED, FailureCause, TaskKind, TaskSpec
from ember.scheduler import _procutil
from ember.scheduler._fork_server import FORK_READY_WAIT_S
from ember.scheduler._worker_pool import WORKER_START_FAILURES_MAX, WorkerPool, WorkerProcess

__all__ = ["Scheduler", "main"]

log = logging.getLogger("ember.scheduler")

TICK_S = 0.5
OWNER_GONE_GRACE_S = 2.0  # an owner's actors die this long after its last connection closed, unless it is back
# How long a dead scheduler's queue, read back from the log, waits for owners to claim its tasks:
# as long as an owner keeps trying to reconnect (the core's RECONNECT_TIMEOUT_S).
RECOVERED_KEEP_S = 30.0
# A force-cancelled worker (recursive) ends itself once it has cancelled what it submitted; past this, it is killed.
FORCE_CANCEL_GRACE_S = 1.0


class Scheduler:
    """One node's scheduler service: connections, messages and timers around the queue core and the pool."""

    def __init__(self, session: Session, resources: dict[str, float], node_id: str, store_pid: int,
                 transfer_address: str | None = None, fork_workers: bool = False) -> None:
        """``fork_workers``: workers come from a fork server (this process is a child subreaper)."""
        self.session = session
        self.node_id = node_id
        self.store_pid = store_pid
        self._lock = threading.RLock()
        self._functions: dict[bytes, bytes] = {}
        self._clients: dict[str, Connection] = {}
        self._by_address: dict[str, set[Connection]] = {}  # every open connection of each process, by address
        # Owners whose last connection closed: their actors die if they have not connected again by then.
        self._owners_gone: dict[str, float] = {}
        self._driver_jobs: dict[str, bytes] = {}  # a connected driver's address -> its job id
        self._outbox = Outbox()
        self._stopping = False
        self._origins: dict[bytes, Connection] = {}  # task id -> the scheduler that forwarded it here
        self.input_bytes: dict[bytes, dict[str, int]] = {}  # task id -> its inputs' bytes by node, till placed
        relay = session.relay_endpoint()
        self.address = str(session.scheduler_socket)
        self.spiller: Spiller | None = None
        if relay is not None:
            # A node of a multi-node cluster: others reach this scheduler through the relay,
            # and tasks it should not run here go to the global scheduler.
            set_local_relay(relay)
            self.address = through_relay(relay, session.scheduler_socket)
            self.spiller = Spiller(self, session.gcs_address, session.token(), scheduler_hello(node_id))
        # The parts this service drives; each owns its state.
        self.workers = WorkerPool(session.dir, node_id, session.log_dir, fork=fork_workers)
        self.queue = NodeQueue(resources, self.workers, spills=self.spiller is not None, node_id=node_id)
        # The queue, kept in the log for the scheduler that would replace this one.
        self.queue_log: Any = None
        conninfo = log_conninfo(session)
        if conninfo:
            from ember.lineage import QueueLog  # psycopg is imported only when logging

            self.queue_log = QueueLog(conninfo, node_id)
        self._recovered: dict[bytes, Any] = {}  # task id -> QueuedTask: a dead predecessor's queue, till claimed
        self._recovered_until = 0.0
        self._recovery = threading.Event()  # set once the predecessor's queue is read (or given up on)
        self._recovery_deadline = 0.0
        self._resumes_waiting: list[tuple[Connection, int, list]] = []
        self._cancelled_early: set[bytes] = set()  # cancelled while the predecessor's queue was being read
        self.bundles = Bundles(self.queue.resources)  # placement group bundles reserved here
        self.gcs = GcsLink(session.gcs_address, session.token(), node_id, self.address, resources,
                           available=lambda: self.queue.resources.snapshot()[1], queued=self._queued,
                           transfer=transfer_address, on_view=self._cluster_view,
                           bundles=self._bundle_report, on_bundles=self._on_bundles,
                           on_answer=lambda stale: self._locked(self.actors.gcs_answered, stale))
        lease = Lease(_settings.load().actor_hold_max_s) if self.spiller is not None else None
        self.actors = NodeActors(self.queue, self.workers, self.gcs, self.spiller, self._outbox, self._functions,
                                 clock=time.monotonic, lease=lease)
        self.listener = Listener(
            session.scheduler_socket, session.token(), self._on_connect, self._handle, self._on_close,
            name="scheduler", batch_end=self._flush_dirty,
        )

    # -- plumbing --------------------------------------------------------------------

    def start(self, recover: bool = False) -> None:
        """``recover``: this replaces a dead scheduler; take up the queue it left in the log."""
        self.workers.start()  # the fork server's imports overlap the rest of the start
        if self.queue_log is not None:
            self.queue_log.start()
        if recover and self.queue_log is not None:
            from ember.lineage import QueueLog

            self._recovery_deadline = time.monotonic() + QueueLog.READ_WAIT_S + 1.0
            threading.Thread(target=self._read_queue, name="ember-queue-read", daemon=True).start()
        else:
            self._recovery.set()
        self.gcs.started(process_id(self.node_id, os.getpid()), ProcessKind.SCHEDULER, os.getpid())
        store_pid = self._current_store_pid() or self.store_pid
        self.gcs.started(process_id(self.node_id, store_pid), ProcessKind.STORE, store_pid)
        self.gcs.start()
        self.listener.start()
        # The first workers come from the fork server, imports done; until it is up, spawns start interpreters.
        self.workers.wait_ready(FORK_READY_WAIT_S)
        with self._lock:
            self._apply(self.queue.prestart(time.monotonic()))
        threading.Thread(target=self._tick_loop, name="ember-sched-tick", daemon=True).start()

    def _cluster_view(self, nodes: dict[str, Any]) -> None:
        """The other nodes' free resources, from the GCS: queued tasks may go to one that has room now."""
        with self._lock:
            if self.queue.view is None:
                return
            self.queue.view.update(nodes)
            self._dispatch()
        self._flush_dirty()

    def _bundle_report(self) -> dict[str, Any]:
        """For the heartbeat: the bundles held here, and the groups queued work waits for."""
        with self._lock:
            report = self.bundles.report()
            report["awaiting"] = sorted(self.queue.awaiting_groups())
        return report

    def _locked(self, fn: Callable[..., None], *args: Any) -> None:
        """Run ``fn`` under the lock (a callback on another thread), then send what it queued."""
        with self._lock:
            fn(*args)
        self._flush_dirty()

    def _on_bundles(self, desired: dict[str, Any], gone: list[str]) -> bool:
        """The GCS's bundles for this node: reserve, commit, release; fail work of groups that are gone."""
        with self._lock:
            changes = self.bundles.reconcile(desired)
            for group_id in set(gone):
                self._end_group_work(group_id)
            for group_id in changes.released_groups - set(gone):
                self._follow_moved_group(group_id)
            if changes.committed or changes.released_groups:
                self._apply(self.queue.place_actors(time.monotonic()))
                self._dispatch()
        self._flush_dirty()
        return changes.changed

    def _end_group_work(self, group_id: str) -> None:
        """A placement group was removed: its tasks and actors here end, as Ray kills them (under the lock)."""
        why = f"{GROUP_REMOVED}{group_id}"
        specs, actor_ids = self.queue.take_group(group_id)
        for spec in specs:
            self.strategy_unmet(spec, why)
        for actor_id in actor_ids:
            self.actors.dead(actor_id, CANNOT_SCHEDULE + why)
        for key in self.queue.group_holders(group_id):
            slot = self.queue.slot(key)
            if slot is not None and slot.actor_id is not None:
                self.actors.kill(slot.actor_id, CANNOT_SCHEDULE + why)
            else:
                self.workers.kill(key)  # its tasks fail over to their owners, whose retry finds the group gone

    def _follow_moved_group(self, group_id: str) -> None:
        """A group's bundles left this node but the group lives (the GCS thought the node dead and placed
        them elsewhere): its work here follows them (under the lock). Running tasks are stopped and retried
        by their owners; actors restart as their max_restarts allow; queued tasks are placed again."""
        specs, _ = self.queue.take_group(group_id)
        for spec in specs:
            self.queue.settled(spec.task_id)
            if self.spiller is not None:
                self._left(spec.task_id)
                self.spiller.offer([spec])  # the global scheduler knows where the bundle is now
            else:
                self.queue.enqueue(spec)  # a node alone: the bundle comes back here
        for key in self.queue.group_holders(group_id):
            self.workers.kill(key)

    def _send(self, conn: Connection | None, msg: tuple) -> None:
        self._outbox.send(conn, msg)

    def _flush_dirty(self) -> None:
        self._outbox.flush()

    def _dispatch(self) -> None:
        """Let the queue core place what it can, and carry out what it decided."""
        actions = self.queue.dispatch(time.monotonic())
        if actions:
            self._apply(actions)

    def _apply(self, actions: list[Action]) -> None:
        for action in actions:
            if type(action) is Assign:  # nearly every action, once per task: the short way
                key, spec = action
                w = self.workers.get(key)
                assert w is not None, f"a task assigned to worker slot {key}, which has no process"
                if self.input_bytes:
                    self.input_bytes.pop(spec.task_id, None)
                payload = None
                if spec.function_id not in w.functions:
                    payload = self._functions.get(spec.function_id)
                    w.functions.add(spec.function_id)
                gpus = self.queue.gpus_of(key)
                msg = (Op.EXECUTE, spec, payload, gpus) if gpus else (Op.EXECUTE, spec, payload)
                self._outbox.send(w.exec_conn, msg)
                continue
            match action:
                case Spawn(worker=key, actor_id=actor_id, runtime_env=runtime_env):
                    now = time.monotonic()
                    if self._stopping:  # a tick or a message racing the shutdown: no process outlives it
                        self.queue.worker_gone(key, now)
                        continue
                    try:
                        self.workers.spawn(key, actor_id, now, runtime_env)
                    except BaseException:
                        self.queue.worker_gone(key, now)  # no process: the slot must not count as starting
                        raise
                    if actor_id is not None:
                        self.actors.placed_on(actor_id, key)
                case Spill(specs=specs):
                    self._left(*(spec.task_id for spec in specs))
                    self.spiller.offer(specs)  # type: ignore[union-attr]
                case Assign():
                    raise AssertionError("taken above")
                case _:
                    assert_never(action)

    def _on_connect(self, conn: Connection) -> None:
        with self._lock:
            peer = conn.peer
            if peer.get("kind") == ProcessKind.WORKER:
                w = self.workers.attach(conn)
                if w is not None:
                    if w.conn is conn:
                        self.gcs.started(w.worker_id, ProcessKind.WORKER, w.proc.pid, w.actor_id,
                                         self.actors.generation_of(w.actor_id))
                    self.queue.linked(w.key, w.conn is not None, w.ready)
                    if w.ready and w.actor_id is not None:
                        self.actors.start_on(w)
                if peer.get("purpose") == "exec":
                    return
            if peer.get("kind") == ProcessKind.DRIVER and peer.get("job_id") and peer.get("address"):
                self._driver_jobs[peer["address"]] = peer["job_id"]
            if peer.get("address"):
                self._clients[peer["address"]] = conn
                self._by_address.setdefault(peer["address"], set()).add(conn)
                self._owners_gone.pop(peer["address"], None)
            self._dispatch()
        self._flush_dirty()

    def _on_close(self, conn: Connection) -> None:
        if conn.peer.get("purpose") == "exec":
            return  # its control connection closes too and reports the death
        with self._lock:
            if conn.peer.get("kind") == ProcessKind.SCHEDULER and self._origins:
                # The node that forwarded these is gone: their failures, if any, go nowhere now.
                for task_id in [t for t, origin in self._origins.items() if origin is conn]:
                    del self._origins[task_id]
            address = conn.peer.get("address")
            others = self._by_address.get(address, set()) if address else set()
            others.discard(conn)
            if address and self._clients.get(address) is conn:
                if others:
                    self._clients[address] = next(iter(others))  # another of its connections answers for it
                else:
                    del self._clients[address]
            if address and not others:
                self._by_address.pop(address, None)
            self.actors.unsubscribe(conn)
            died = self.workers.died(conn)
            if died is not None:
                self._worker_died(*died)
            elif address and not self._stopping and address not in self._clients:
                # Not at once: a driver that gave up on this scheduler while it was paused, and
                # connects again, has not exited.
                self._owners_gone.setdefault(address, time.monotonic() + OWNER_GONE_GRACE_S)
            self._dispatch()
        self._flush_dirty()

    # -- message handling --------------------------------------------------------------

    def _handle(self, conn: Connection, msg: tuple) -> None:
        problem = _messages.problem(msg, _messages.SCHEDULER_OPS)
        if problem is None and msg[0] in (Op.ACTOR_READY, Op.ACTOR_FAILED):
            problem = self._not_host(conn, msg[1])
        if problem is not None:
            _messages.refuse(conn, msg, problem, "scheduler")
            return
        op = msg[0]
        with self._lock:
            if op == Op.SUBMIT:
                if conn.peer.get("kind") == ProcessKind.SCHEDULER:
                    # Forwarded by another node: its scheduler speaks for the owner.
                    self._origins[msg[1].task_id] = conn
                    self.queue.keep_placed(msg[1].task_id)
                elif len(msg) > 2 and self.spiller is not None:
                    self.input_bytes[msg[1].task_id] = msg[2]  # for the global scheduler, should it spill
                self._enqueue(msg[1])
                self._dispatch()
            elif op == Op.TASKS_DONE:
                self._task_done(conn, msg[1])
            elif op == Op.RETIRE:
                w = self.workers.by_conn(conn)
                if w is not None:
                    self.queue.retiring(w.key, msg[1])
                    self._retire_done()
                    self._dispatch()
            elif op == Op.FORWARDED_DONE and self.spiller is not None:
                self.spiller.done(msg[1])
            elif op == Op.TASK_FAILED and self.spiller is not None:
                self.spiller.failed(msg[1], msg[2], msg[3], msg[4])
            elif op == Op.REGISTER_FUNCTION:
                self._functions[msg[1]] = msg[2]
            elif op == Op.BLOCKED:
                self._blocked(conn, msg[1])
            elif op == Op.UNBLOCKED:
                w = self.workers.by_conn(conn)
                if w is not None:
                    self.queue.unblocked(w.key)
            elif op == Op.RETURN_TASKS:
                self._return_tasks(conn, msg[1])
                self._dispatch()
            elif op == Op.CREATE_ACTOR:
                if conn.peer.get("kind") == ProcessKind.SCHEDULER:
                    self.queue.keep_placed(msg[1].actor_id)  # placed here by the global scheduler
                self._apply(self.actors.create(msg[1], msg[2], msg[3], msg[4] if len(msg) > 4 else 0))
            elif op == Op.ACTOR_STATE and conn.peer.get("node_id"):
                self.actors.relayed_state(*msg[1:])
            elif op == Op.ACTOR_READY:
                self.actors.ready(msg[1], msg[2])
            elif op == Op.ACTOR_FAILED:
                self.actors.dead(msg[1], msg[3])
            elif op == Op.LOOKUP_ACTOR:
                self.actors.subscribe(conn, msg[2])
            elif op == Op.KILL_ACTOR:
                if msg[2]:
                    self.actors.kill(msg[1], "killed by ember.kill()")
                else:
                    self._apply(self.actors.kill_to_restart(msg[1]))
            elif op == Op.CLAIM_NAME:
                error = self.actors.claim_name(msg[2], msg[3], msg[4])
                if error is None and self.spiller is not None:
                    self.spiller.claim_name(conn, msg[1], msg[2], msg[3], msg[4])  # answered once the GCS has it
                else:
                    conn.reply(msg[1], error)
            elif op == Op.GET_NAMED_ACTOR:
                found = self.actors.named(msg[2])
                if found is None and self.spiller is not None:
                    self.spiller.lookup_name(conn, msg[1], msg[2])  # maybe named on another node
                else:
                    conn.reply(msg[1], found)
            elif op == Op.LIST_NAMED_ACTORS:
                names = self.actors.live_names()
                if self.spiller is not None:
                    self.spiller.list_names(conn, msg[1], names)  # and those of the other nodes
                else:
                    conn.reply(msg[1], sorted(names))
            elif op == Op.CANCEL:
                self._cancel(msg[1], msg[2], msg[3] if len(msg) > 3 else True)
            elif op == Op.RESUME:
                if self._recovery.is_set():
                    conn.reply(msg[1], self._resume(conn, msg[2]))
                else:
                    self._resumes_waiting.append((conn, msg[1], msg[2]))  # answered once the queue is read
            elif op == Op.TAKE_BACK:
                w = self.workers.by_conn(conn)
                taken = self.queue.take_back(w.key, msg[2]) if w is not None else []
                self._left(*taken)
                conn.reply(msg[1], taken)
            elif op == Op.RESOURCES:
                conn.reply(msg[1], self.queue.resources.snapshot())
            elif op == Op.PROCESSES:
                conn.reply(msg[1], self.processes())
            elif op == Op.SHUTDOWN:
                self.stop()

    def _not_host(self, conn: Connection, actor_id: bytes) -> str | None:
        """Why ``conn`` may not report on ``actor_id``'s start (None if it hosts it)."""
        with self._lock:
            w = self.workers.by_conn(conn)
        if w is None or w.actor_id != actor_id:
            return f"a report on actor {actor_id.hex()}, which that peer's process does not host"
        return None

    # -- tasks -------------------------------------------------------------------------

    def _enqueue(self, spec: TaskSpec) -> None:
        """Queue a task sent here (by its owner, another node, or the log of a dead predecessor)."""
        admitted = self.queue.enqueue(spec)
        if admitted is Admission.QUEUED:  # nearly every task: the short way
            if self._recovered:
                self._recovered.pop(spec.task_id, None)  # sent again in full: held here now, not to be claimed
            if self.queue_log is not None:
                self.queue_log.queued(spec.task_id, spec.attempt, spec.owner_addr, spec.job_id)
            return
        match admitted:
            case Admission.QUEUED:
                raise AssertionError("taken above")
            case Admission.SPILL:
                self._left(spec.task_id)
                self.spiller.offer([spec])  # type: ignore[union-attr]
            case Admission.INFEASIBLE:
                self.fail_to_owner(spec, FailureCause.INFEASIBLE, self.queue.infeasible_detail(spec))
            case Admission.UNMET:
                self.fail_to_owner(spec, FailureCause.STRATEGY_UNMET,
                                   self.queue.unmet_detail(spec.strategy, spec.resources))  # type: ignore[arg-type]
            case _ as unreachable:
                assert_never(unreachable)

    def _left(self, *task_ids: bytes) -> None:
        """These tasks are no longer this scheduler's (done, failed, cancelled, sent to another node)."""
        if self.queue_log is not None:
            self.queue_log.left(task_ids)

    def keep_here(self, items: list[tuple[TaskSpec, tuple | None]]) -> None:
        """Tasks and actors the global scheduler placed on this node (under the lock)."""
        for spec, actor in items:
            if actor is None:
                self.queue.keep_placed(spec.task_id)
                self._enqueue(spec)
            else:
                self.queue.keep_placed(spec.actor_id)  # type: ignore[arg-type]
                self._apply(self.actors.create(spec, *actor))
        self._dispatch()

    def strategy_unmet(self, spec: TaskSpec, detail: str) -> None:
        """The global scheduler found the task's or actor's strategy cannot be met (under the lock)."""
        if spec.kind == TaskKind.ACTOR_CREATION:
            self.actors.dead(spec.actor_id, CANNOT_SCHEDULE + detail)  # type: ignore[arg-type]
        else:
            self.fail_to_owner(spec, FailureCause.STRATEGY_UNMET, detail)

    def unplaceable(self, spec: TaskSpec, detail: str) -> None:
        if spec.kind == TaskKind.ACTOR_CREATION:
            self.actors.dead(spec.actor_id, f"it cannot be placed: {detail}")  # type: ignore[arg-type]
        else:
            self.fail_to_owner(spec, FailureCause.INFEASIBLE, detail)

    # -- what the spiller reports (its threads hold the lock) ------------------------------

    def hosted_elsewhere(self, actor_id: bytes, node_id: str) -> None:
        self.actors.hosted_elsewhere(actor_id, node_id)

    def host_lost(self, node_id: str, detail: str) -> None:
        self.actors.host_lost(node_id, detail)

    def actor_unfound(self, actor_id: bytes, reason: str) -> None:
        self.actors.unfound(actor_id, reason)

    def unclaim_name(self, name: str, actor_id: bytes) -> None:
        self.actors.unclaim_name(name, actor_id)

    def fail_to_owner(self, spec: TaskSpec, cause: str, detail: str, attempt: int | None = None) -> None:
        """Tell a task's owner it failed: directly, or through the node that forwarded it here."""
        self._left(spec.task_id)
        self.queue.settled(spec.task_id)
        origin = self._origins.pop(spec.task_id, None)
        self._send(origin or self._clients.get(spec.owner_addr),
                   (Op.TASK_FAILED, spec.task_id, spec.attempt if attempt is None else attempt, cause, detail))

    def recheck_with_owner(self, spec: TaskSpec, detail: str) -> None:
        """A forwarded task reported done, whose node died soon after: its owner hears it as a worker death,
        which it ignores if the result reached it (under the lock)."""
        self._send(self._clients.get(spec.owner_addr), (Op.TASK_FAILED, spec.task_id, spec.attempt,
                                                        FailureCause.WORKER_DIED, detail))

    def warn_owner(self, spec: TaskSpec, text: str) -> None:
        """Tell a task's owner why it waits (not its end); only an owner that sent it here hears it."""
        if spec.task_id not in self._origins:  # a forwarding node would take any TASK_FAILED for the end
            self._send(self._clients.get(spec.owner_addr),
                       (Op.TASK_FAILED, spec.task_id, spec.attempt, FailureCause.UNSCHEDULABLE, text))

    def actor_is_dead(self, actor_id: bytes) -> bool:
        return self.actors.is_dead(actor_id)

    def function_payload(self, function_id: bytes) -> bytes | None:
        return self._functions.get(function_id)

    def flush(self) -> None:
        self._flush_dirty()

    def _queued(self) -> int:
        with self._lock:
            return self.queue.queued()

    def _task_done(self, conn: Connection, task_ids: list[bytes]) -> None:
        w = self.workers.by_conn(conn)
        if w is None:
            return
        self._left(*task_ids)
        origins = self._origins
        if origins:
            for task_id in task_ids:
                origin = origins.pop(task_id, None)
                if origin is not None:
                    self._send(origin, (Op.FORWARDED_DONE, [task_id]))
        self.queue.task_done(w.key, task_ids, time.monotonic())
        self._retire_done()
        self._dispatch()

    def _retire_done(self) -> None:
        """Stop the workers that ran a function ``max_calls`` times, or that made room for another runtime_env's
        worker, once nothing is assigned to them."""
        for key in self.queue.retired(time.monotonic()):
            w = self.workers.retire(key)
            if w is not None and w.worker_id is not None:
                self.gcs.died(w.worker_id, "retired (max_calls, or room for another runtime_env's worker)")

    def _blocked(self, conn: Connection, returned: list[bytes]) -> None:
        w = self.workers.by_conn(conn)
        if w is None:
            return
        self.queue.blocked(w.key, returned)
        self._dispatch()

    def _return_tasks(self, conn: Connection, task_ids: list[bytes]) -> None:
        w = self.workers.by_conn(conn)
        if w is not None:
            self.queue.return_tasks(w.key, task_ids)
            self._retire_done()  # a retiring worker's last tasks came back: it can stop

    def _cancel(self, task_id: bytes, force: bool, recursive: bool) -> None:
        spec = self.queue.cancel_queued(task_id)
        if spec is not None:
            self.fail_to_owner(spec, FailureCause.CANCELLED, "")
            return
        if self.spiller is not None and self.spiller.cancel(task_id, force, recursive):
            return
        key = self.queue.holder(task_id)
        w = self.workers.get(key) if key is not None else None
        if w is not None:
            if force and recursive:
                # The worker cancels the tasks it submitted, then kills itself; if it cannot (stuck
                # outside Python), it is killed here after FORCE_CANCEL_GRACE_S.
                self._send(w.conn, (Op.CANCEL_RUNNING, task_id, True, True))
                self.workers.kill_after(w.key, time.monotonic() + FORCE_CANCEL_GRACE_S)
            elif force:
                self.workers.kill(w.key)
            else:
                self._send(w.conn, (Op.CANCEL_RUNNING, task_id, recursive, False))
            return
        # Its owner may yet claim it from the dead scheduler's queue: it must not run.
        if not self._recovery.is_set():
            self._cancelled_early.add(task_id)
        elif task_id in self._recovered:
            self._drop_recovered([task_id], "cancelled")

    # -- taking up a dead scheduler's queue -------------------------------------------------

    def _read_queue(self) -> None:
        """Read the queue the dead scheduler of this node left in the log; its tasks wait for their owners' claim."""
        from ember.lineage import QueueLog, ReplaySource

        source = ReplaySource(self.queue_log.conninfo, wait_s=QueueLog.READ_WAIT_S)
        try:
            found, unlogged = source.queue(self.node_id, os.getpid())
        except Exception as exc:
            log.warning("could not read the dead scheduler's queue from the log (%s): owners send it again", exc)
            found, unlogged = [], []
        finally:
            source.close()
        with self._lock:
            self.queue_log.adopt([q.task.task_id for q in found] + unlogged)
            if self._recovery.is_set():
                # Too late: owners were told nothing was taken, and sent everything again.
                self.queue_log.left([q.task.task_id for q in found] + unlogged)
                return
            self.queue_log.left(unlogged)  # their specs had not reached the log: owners send them in full
            self._recovered = {q.task.task_id: q for q in found}
            self._drop_recovered([t for t in self._cancelled_early if t in self._recovered], "cancelled")
            log.info("read the dead scheduler's queue from the log: %d tasks (%d more without a logged spec)",
                     len(found), len(unlogged))
            self._end_recovery()
        self._flush_dirty()

    def _end_recovery(self) -> None:
        """The predecessor's queue is read, or given up on: answer the owners waiting to claim from it."""
        self._recovered_until = time.monotonic() + RECOVERED_KEEP_S
        self._recovery.set()
        self._cancelled_early.clear()
        waiting, self._resumes_waiting = self._resumes_waiting, []
        for conn, req_id, items in waiting:
            self._send(conn, (Op.REPLY, req_id, None, self._resume(conn, items)))

    def _resume(self, conn: Connection, items: list) -> list[bytes]:
        """Queue again, from the log and oldest first, the tasks an owner still wants; returns their ids
        (the owner sends the rest in full).

        Each runs as the attempt the owner names (the next one). What else the
        log kept for this owner it no longer wants (finished or cancelled
        meanwhile): dropped.
        """
        owner = conn.peer.get("address")
        wanted = {task_id: (attempt, hints) for task_id, attempt, hints in items}
        taken, unwanted = [], []
        for task_id, q in list(self._recovered.items()):
            if q.owner != owner:
                continue
            if task_id not in wanted or q.task.function_id not in self._functions:
                unwanted.append(task_id)
                continue
            del self._recovered[task_id]
            attempt, hints = wanted[task_id]
            spec = q.task.spec(q.owner, attempt)
            if hints and self.spiller is not None:
                self.input_bytes[task_id] = hints
            self._enqueue(spec)
            taken.append(task_id)
        self._drop_recovered(unwanted, "their owner no longer wants them, or sends them again")
        self._dispatch()
        return taken

    def _drop_recovered(self, task_ids: list[bytes], why: str) -> None:
        if task_ids:
            log.info("dropping %d tasks of the dead scheduler's queue: %s", len(task_ids), why)
        for task_id in task_ids:
            del self._recovered[task_id]
        self._left(*task_ids)

    # -- worker lifecycle ----------------------------------------------------------------

    def _worker_died(self, w: WorkerProcess, detail: str) -> None:
        """A worker's control connection closed: fail what it held, restart the actor it ran."""
        if w.worker_id is not None:
            self.gcs.died(w.worker_id, detail)
        for spec in self.queue.worker_gone(w.key, time.monotonic()):
            self.fail_to_owner(spec, FailureCause.WORKER_DIED, detail)
        if w.actor_id is not None:
            self._apply(self.actors.process_died(w.actor_id, w.key, detail))

    def _tick_loop(self) -> None:
        while not self._stopping:
            time.sleep(TICK_S)
            with self._lock:
                self._tick(time.monotonic())
            self._flush_dirty()

    def _tick(self, now: float) -> None:
        if self._stopping:
            return  # stop() reaps the workers and the fork server: none is replaced now
        self.workers.kill_due(now)
        self.actors.lease_tick(now)
        for w, how in self.workers.reap(now):
            self.queue.worker_gone(w.key, now)  # it held no task: it never connected to take one
            if w.actor_id is not None:
                # Killed while starting (chaos does that) or crashing at
                # start: either way a restart, while the budget lasts.
                self._apply(self.actors.process_died(w.actor_id, w.key, f"it failed to start: {how}"))
        for address, deadline in list(self._owners_gone.items()):
            if now > deadline:
                del self._owners_gone[address]
                if address not in self._clients:
                    self.actors.owner_gone(address)
                    job_id = self._driver_jobs.pop(address, None)
                    if job_id is not None:
                        self.gcs.creator_gone(job_id)  # its placement groups that are not detached go
        if not self._recovery.is_set() and now > self._recovery_deadline:
            log.warning("the dead scheduler's queue could not be read in time: owners send their tasks again")
            self._end_recovery()
        if self._recovered and now > self._recovered_until:
            self._drop_recovered(list(self._recovered), "no owner claimed them")
        if self.workers.start_failures >= WORKER_START_FAILURES_MAX:
            self._fail_all_queued("workers keep failing to start; see the logs in " + str(self.session.log_dir))
        for key in self.queue.idle_expired(now):
            w = self.workers.retire(key)
            if w is not None and w.worker_id is not None:
                self.gcs.died(w.worker_id, "stopped after idling")
        self._dispatch()
        self._retire_done()  # and those the dispatch retired to make room for another environment's

    def _fail_all_queued(self, detail: str) -> None:
        for spec in self.queue.drain_queued():
            self.fail_to_owner(spec, FailureCause.WORKER_DIED, detail)
        self.workers.start_failures = 0

    # -- introspection and shutdown ---------------------------------------------------

    def processes(self) -> list[dict[str, Any]]:
        procs = [{"kind": ProcessKind.SCHEDULER, "node_id": self.node_id, "pid": os.getpid()}]
        if self.spiller is not None:
            # A node of a multi-node cluster: its daemon started this scheduler, and killing it kills the node.
            procs.append({"kind": ProcessKind.NODE, "node_id": self.node_id, "pid": os.getppid()})
        store_pid = self._current_store_pid()
        if store_pid is not None:  # missing while a new store starts, as the GCS service is
            procs.append({"kind": ProcessKind.STORE, "node_id": self.node_id, "pid": store_pid})
        fork_server = self.workers.forks.pid if self.workers.forks is not None else None
        if fork_server is not None:
            procs.append({"kind": ProcessKind.FORK_SERVER, "node_id": self.node_id, "pid": fork_server})
        for w in self.workers:
            slot = self.queue.slot(w.key)
            state = "starting" if w.conn is None else ("busy" if slot is not None and slot.assigned else "idle")
            procs.append({"kind": ProcessKind.WORKER, "node_id": self.node_id, "pid": w.proc.pid,
                          "actor_id": w.actor_id.hex() if w.actor_id else None, "state": state})
        return procs

    def _current_store_pid(self) -> int | None:
        """The live store's pid, from the file it writes once ready; None while a new one starts.

        Never the pid this scheduler was started with once that store has
        died: a caller killing "the store" would signal a stale pid.
        """
        try:
            return int((self.session.sockets / "store.ready").read_text())
        except (OSError, ValueError):
            return None

    def stop(self) -> None:
        self._stopping = True
        with self._lock:
            pass  # a tick or a message in flight ends first: from here on nothing starts a process
        self.workers.stop_all()  # workers flush their lineage rows, then exit
        self.gcs.stop("shut down")
        if self.queue_log is not None:
            self.queue_log.close(drop=True)  # its workers are gone: nothing here runs again
        self.listener.close()
        os._exit(0)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="ember-scheduler")
    parser.add_argument("session")
    parser.add_argument("--resources", required=True)
    parser.add_argument("--node-id", required=True)
    parser.add_argument("--store-pid", type=int, required=True)
    parser.add_argument("--restart", action="store_true", help="replace a scheduler that died (and its workers)")
    parser.add_argument("--relay-bind", metavar="HOST:PORT", default=None,
                        help="host the node relay (peers on other nodes reach this node's sockets through it) "
                             "on HOST:PORT (port 0: any free one); its address goes into the session info")
    parser.add_argument("--transfer-address", metavar="HOST:PORT", default=None,
                        help="where the node's store serves its objects to other nodes (told to the GCS)")
    args = parser.parse_args(argv)
    _procutil.die_with_parent()
    _procutil.setup_logging(args.session, ProcessKind.SCHEDULER)
    session = open_session(args.session)
    if args.relay_bind is not None:
        from ember.scheduler._relay import host_relay  # only a relay host loads gRPC's server

        # Up before any worker starts: each names itself by an address through it.
        # Held by this frame, which never returns: a collected gRPC server stops.
        relay, _ = host_relay(session, args.relay_bind)
    # Forked workers are re-parented to this process: it must adopt orphans to be their parent.
    fork_workers = _settings.load().worker_fork and _procutil.become_subreaper()
    scheduler = Scheduler(session, json.loads(args.resources), args.node_id, args.store_pid, args.transfer_address,
                          fork_workers)
    scheduler.gcs.restarted = args.restart
    signal.signal(signal.SIGTERM, lambda *_: scheduler.stop())
    scheduler.start(recover=args.restart)
    _agent.start(ProcessKind.SCHEDULER, args.node_id)
    _procutil.announce_ready(session.sockets / "scheduler.ready")  # the pid: the supervisor tells a kill from a crash loop
    threading.Event().wait()


if __name__ == "__main__":
    main(sys.argv[1:])
