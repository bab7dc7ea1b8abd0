"""The Owner: builds the owner's parts, starts and closes them, and carries out what they decide.

It holds what is shared for real (the lock, the object table, the pending
tasks, ``OwnerState``) and the paths that touch every part: submitting a
task, taking its result in (``_finish``), applying the decisions of
``_tasks`` (retry, resubmit, fail), refcounts. Every other concern is a
part of its own module, built in ``__init__`` with its collaborators:
cancelling (``_cancel``), the node's scheduler and store connections and
their loss (``_node_links``), streaming generators (``_streams``), and so on.

It must never run user code (the executor does), never block a reader
thread (handlers only update tables and queue messages), and never open a
connection in ``__init__`` (``start`` does).
"""
from __future__ import annotations

import logging
import operator
import os
import sys
import threading
from collections.abc import Sequence
from typing import Any, assert_never

from ember.exceptions import (
    InvalidOptionError,
    ClusterUnavailableError,
    ForeignObjectRefError,
    InfeasibleResourceError,
)
from ember.lineage._states import ProcessKind
from ember.scheduler._owner._actors import ActorCalls, _ActorState
from ember.scheduler._owner._links import Links
from ember.scheduler._owner._writes import ObjectWriter
from ember.scheduler._owner._submit import SpecEncoder
from ember.scheduler._owner._durable import LineageGate
from ember.scheduler._owner._restart import SchedulerRestart, TaskHooks
from ember.scheduler._infeasible import actor_died_error
from ember.scheduler._object_ref import ObjectRef
from ember.scheduler._owner._reconstruct import Reconstruction
from ember.scheduler._owner._streams import Streams
from ember.scheduler._owner._cancel import Cancels
from ember.scheduler._owner._node_links import NodeLinks
from ember.scheduler._owner._locations import LOCATION_OPS, Locations
from ember.scheduler._owner._dispatch import Handler, MessageTable, off_the_reader
from ember.scheduler._owner._waiting import Waiting
from ember.scheduler._owner._objects import ObjectEntry, ObjectState, ObjectTable, OwnerState
from ember.scheduler._owner._tasks import (
    Claim,
    Fail,
    Finish,
    Ignore,
    PendingTask,
    Resubmit,
    Warn,
    after_failure_report,
    after_result,
    error_in_results,
)
from ember.scheduler._actor_exit import TERMINATE_METHOD
from ember.scheduler._actor_handles import HANDLES
from ember.scheduler._address import through_relay
from ember.scheduler._listener import set_local_relay
from ember.scheduler._protocol import Connection, ConnectionClosed, Op
from ember.scheduler._session import RELAY_INFO_KEY, Session, session_info
from ember.scheduler._spec import (
    IDS,
    DYNAMIC,
    STREAMING,
    TaskKind,
    FailureCause,
    TaskSpec,
)
from ember.store import ObjectFiles
from ember.store import (
    is_error,
    serialize_error,
    to_bytes,
)

__all__ = ["INFEASIBLE_KEPT_MAX", "Owner"]

log = logging.getLogger("ember.core")

_OWNER = operator.attrgetter("_owner")
INFEASIBLE_KEPT_MAX = 1024  # tasks failed as infeasible that ``wait`` still recognises (the newest)


class Owner:
    """The owner every process that takes part in a cluster runs (driver or worker)."""

    def __init__(self, session: Session, kind: ProcessKind, job_id: bytes, node_id: str) -> None:
        self.state = OwnerState()  # closed, why, the running task, the store's generation: read by several parts
        self.session = session
        self.kind = kind
        self.job_id = job_id
        self.node_id = node_id
        self.worker_id = os.urandom(16)
        socket_path = str(session.worker_socket(kind, self.worker_id))
        self.address = socket_path
        # Every owner on this node listens in this session's socket folder.
        self._owners_prefix = str(session.sockets) + os.sep
        info = session_info(session)
        # In a multi-node cluster every process is named by an address through
        # its node's relay, which peers on other nodes can reach.
        self.relay: str | None = info.get(RELAY_INFO_KEY)
        if self.relay is not None:
            self.address = through_relay(self.relay, socket_path)
            self._owners_prefix = through_relay(self.relay, session.sockets) + "/"
        self._token = session.token()
        self.files = ObjectFiles(session.shm_dir, session.spill_dir)
        self._lock = threading.RLock()
        # Waiters in get/wait each park on an Event of their own, set after the
        # lock is released: a Condition would wake them only to block again
        # on the lock the notifying reader thread still holds.
        self._waiters: set[Any] = set()  # threading.Event, or a PipeWaiter for a thread reading a connection itself
        self._changed = False
        self.objects = ObjectTable()
        self._objects = self.objects.entries
        self._tasks: dict[bytes, PendingTask] = {}
        self._dep_waiters: dict[bytes, list[PendingTask]] = {}
        self._actors: dict[bytes, _ActorState] = {}
        self._created_actors: dict[bytes, tuple[TaskSpec, tuple]] = {}
        self._subscribed: set[bytes] = set()
        self._store_ready: set[bytes] = set()
        # Kept to register again with a restarted scheduler.
        self._registered_functions: dict[bytes, tuple[bytes, str]] = {}
        self.infeasible: dict[bytes, InfeasibleResourceError] = {}  # task id -> why no node can ever run it
        self.gcs: Any = None  # ember.lineage._gcs_log.GcsLog when the lineage log is on
        self._conninfo: str | None = info.get("gcs_conninfo")
        # The runtime_env this process runs in, as a spec carries it (``RuntimeEnv.wire``): a driver's
        # ``init(runtime_env=...)``, a worker's the one it was started in. What its submissions inherit.
        self.runtime_env: tuple[str, str] | None = None
        self._logged_envs: set[str] = set()
        self._socket_path = socket_path
        self.links = Links(kind, self.address, self.worker_id, self._token, self._lock, self._handle,
                           self._on_peer_closed, self._send_follow_ups)
        if kind == ProcessKind.DRIVER:
            # Its scheduler ends the job's placement groups (not detached) when it goes for good.
            self.links.hello["job_id"] = job_id
        self.writes = ObjectWriter(self.address, self.files, self.objects, self._lock, self.links, self._job_of)
        self.locations = Locations(self.address, self.relay, session, self._lock, self.objects, self._subscribed,
                                   self._store_ready, self.files, self.links, self.writes, self._set_changed,
                                   self._rebuild_lost, lambda: self.closed)
        self.specs = SpecEncoder(self.address, self.objects, self._tasks, self._dep_waiters, self.links, self.writes)
        self.actors = ActorCalls(kind, self._lock, self._actors, self._created_actors, self.links, self.specs,
                                 self._fail_task, self._handle, self._on_peer_closed, self._send_follow_ups,
                                 self._wake_waiters, lambda: self.closed)
        self.rebuild = Reconstruction(self.address, self.relay, session, self._lock, self.objects, self._tasks,
                                      self.files, self.links, self.writes, self.specs, self.locations.endpoint, self._dispatch,
                                      self._after_rebuild)
        self.lineage = LineageGate(self.address, self._lock, self.objects, self._tasks, self._actors, self.links,
                                   self.rebuild.owner_alive, self.specs.log_before_dispatch,
                                   self.specs.pending_lineage, self.writes.publish,
                                   None if self.kind == ProcessKind.DRIVER else self.writes.await_copy)
        hooks = TaskHooks(self.actors.recreate_actors, self._resubmit, self._fail_task, self._dispatch,
                          self.locations.input_bytes if self.relay is not None else None, self._set_changed, self._after_restart)
        self.node = NodeLinks(kind, session.store_socket, self._lock, self.state, self.links, self._subscribed,
                              self._store_ready, self._set_changed, self._wake_waiters,
                              self.rebuild.rebuild_inputs_of_pending, lambda: self.restart.run(), lambda: self.executor)
        self.restart = SchedulerRestart(self.links, self._lock, session.scheduler_socket, self._tasks,
                                        self._registered_functions, self._created_actors, hooks,
                                        lambda: self.closed, self.node.on_scheduler_closed)
        self.cancels = Cancels(self._lock, self._tasks, self._actors, self.links, self._fail_task, self._wake_waiters)
        self.streams = Streams(self.address, self._lock, self.objects, self.links, self._set_changed)
        self._messages = self._message_table()  # incoming op -> handler; holds the executor once attached
        self.waiting = Waiting(self.address, self.relay, self._lock, self.state, self.objects, self._tasks, self._actors,
                               self._subscribed, self._store_ready, self._waiters, self.files, self.links, self.writes,
                               self.locations, self.rebuild, self.lineage, self._messages, self.check_refs, self.flush)

    def start(self) -> "Owner":
        """Open the lineage log, listen, and connect to this node's scheduler and store; returns self.

        Making this process's owner the one ``ObjectRef`` reaches is the caller's
        step (``_context.set_core``).
        """
        session = self.session
        links = self.links
        if self.relay is not None:
            set_local_relay(self.relay)
        if self._conninfo:
            from ember.lineage import GcsLog  # psycopg is imported only when logging

            self.gcs = GcsLog(self._conninfo, on_commit=self._on_commit_signal,
                              on_outage=self._on_log_outage, node_id=self.node_id)
            self.writes.gcs = self.specs.gcs = self.lineage.gcs = self.restart.gcs = self.rebuild.gcs = self.gcs
            self.streams.gcs = self.gcs
        links.listen(self._socket_path, self._on_peer)
        links.scheduler = links.connect(session.scheduler_socket, self.node.on_scheduler_closed, "scheduler")
        store = links.connect(session.store_socket, self.node.on_store_closed, "store")
        with self._lock:
            links.store = store
        if store.closed:
            # The store died while this process connected: its close was
            # ignored (not yet ours). Reconnect to the one the node restarts.
            self.node.on_store_closed(store)
        if self.kind == ProcessKind.WORKER:
            links.exec_conn = links.connect(session.scheduler_socket, None, "scheduler-exec",
                                            hello={"purpose": "exec"}, reader=False)
        HANDLES.attach(self)
        return self

    def _job_of(self) -> bytes:
        current = self.current_task
        return current.job_id if current is not None else self.job_id

    @property
    def closed(self) -> bool:
        return self.state.closed

    @closed.setter
    def closed(self, value: bool) -> None:
        self.state.closed = value

    @property
    def closed_reason(self) -> str:
        return self.state.closed_reason

    @closed_reason.setter
    def closed_reason(self, value: str) -> None:
        self.state.closed_reason = value

    @property
    def current_task(self) -> TaskSpec | None:
        """The task this process's executor runs now (set by the executor; None between tasks)."""
        return self.state.current_task

    @current_task.setter
    def current_task(self, spec: TaskSpec | None) -> None:
        self.state.current_task = spec

    @property
    def store_generation(self) -> int:
        return self.state.store_generation

    def get(self, refs: list[ObjectRef], timeout: float | None) -> list[Any]:
        return self.waiting.get(refs, timeout)

    def wait(self, refs: list[ObjectRef], num_returns: int, timeout: float | None,
             fetch_local: bool = True) -> tuple[list[ObjectRef], list[ObjectRef]]:
        return self.waiting.wait(refs, num_returns, timeout, fetch_local)

    @property
    def scheduler(self) -> Connection:
        """The connection to this node's scheduler (replaced when a restarted one takes over)."""
        return self.links.scheduler

    @property
    def store(self) -> Connection:
        """The connection to this node's object store (replaced when a restarted one takes over)."""
        return self.links.store

    @property
    def exec_conn(self) -> Connection | None:
        """A worker's connection its tasks come on, read by the executor's main thread."""
        return self.links.exec_conn

    # -- lifecycle -----------------------------------------------------------

    def stop_listening(self) -> None:
        """Close this process's listener and remove its socket file."""
        self.links.stop_listening()

    def close(self) -> None:
        self.closed = True
        self.closed_reason = "the cluster shut down"
        HANDLES.forget_all()  # the cluster ends the actors created here, and the creators of the others count
        if self.gcs is not None:
            self.gcs.close()
            if self.kind == ProcessKind.DRIVER:
                # The job is over: no ref to its puts can be used again.
                self.writes.put_copies().remove_job(self.job_id)
        if self.kind == ProcessKind.DRIVER and self.relay is not None:
            # The cluster outlives this job: what it owns in stores goes with it (as in Ray,
            # objects share their owner's fate).
            self.locations.free_owned_objects()
        self.links.stop_listening()
        self.rebuild.close()
        self.links.close()
        with self._lock:
            self._changed = True
        self._wake_waiters()  # a get or wait in another thread sees the close and returns

    def _send_follow_ups(self) -> None:
        # A result that releases dependent tasks queues their submissions on a
        # reader thread; send them now rather than after the writer's delay.
        self.scheduler.flush(block=False)
        for state in list(self._actors.values()):
            conn = state.conn
            if conn is not None and conn.has_unsent:
                conn.flush(block=False)

    def flush(self) -> None:
        self.scheduler.flush()
        self.store.flush()
        for state in list(self._actors.values()):
            if state.conn is not None:
                state.conn.flush()

    # -- reference counting --------------------------------------------------

    def incref(self, oid: bytes) -> None:
        with self._lock:
            self.objects.incref(oid)
            self._drain_deferred_decrefs()

    def decref(self, oid: bytes) -> None:
        """A ref was dropped. Never waits for the lock: the garbage collector calls this
        from whichever thread it interrupts, the log's writer included, while
        another thread may hold the lock waiting for that very writer."""
        if not self._lock.acquire(blocking=False):
            self.objects.deferred.append(oid)  # dropped at the next incref or decref
            return
        try:
            self._decref_locked(oid)
            self._drain_deferred_decrefs()
        finally:
            self._lock.release()

    def _drain_deferred_decrefs(self) -> None:
        deferred = self.objects.deferred
        while deferred:
            self._decref_locked(deferred.popleft())

    def _decref_locked(self, oid: bytes) -> None:
        entry = self.objects.release(oid, self.streams.active and self.streams.held_by_end(oid))
        if self.streams.active:
            self.streams.on_end_released(oid)
        if entry is not None and entry.state is ObjectState.READY_STORE:
            self.store.send((Op.FREE, [oid]))  # a copy pulled here, if it is on another node
            if entry.where is not None or entry.copies:
                self.locations.free_remote(oid, entry)
            if self.writes.copies is not None:
                self.writes.copies.discard(oid)

    def on_ref_shared(self, ref: ObjectRef) -> None:
        """A ref is being pickled: it may be read by other processes from now on."""
        self.lineage.on_ref_shared(ref)

    def await_lineage(self, refs: Sequence[ObjectRef]) -> None:
        self.lineage.await_lineage(refs)

    def put(self, value: Any) -> ObjectRef:
        return self.writes.put(value)

    # -- submission ----------------------------------------------------------

    def register_function(self, function_id: bytes, payload: bytes, name: str) -> None:
        if function_id in self._registered_functions:
            return
        self._registered_functions[function_id] = (payload, name)
        self.scheduler.send((Op.REGISTER_FUNCTION, function_id, payload, name))
        if self.gcs is not None:
            self.gcs.function(function_id, name, payload)

    @property
    def conninfo(self) -> str | None:
        """Where the lineage log is (None: no log)."""
        return self._conninfo

    def register_runtime_env(self, env_hash: str, text: str, packages: dict[str, bytes]) -> None:
        """Log an environment and its packages, durably, before any task that runs in it is submitted:
        a worker of any node fetches them from the log as it starts."""
        if env_hash in self._logged_envs:
            return
        if self.gcs is None:
            if packages:
                raise InvalidOptionError("runtime_env working_dir and py_modules reach the nodes through the "
                                         "lineage log, which is off here (EMBER_LINEAGE=off): turn it on")
        else:
            seq = self.gcs.runtime_env(env_hash, text, packages)
            self.gcs.make_durable(seq, f"runtime_env {env_hash}")
        self._logged_envs.add(env_hash)

    def function_payload(self, function_id: bytes) -> bytes:
        """The pickled function this process registered under ``function_id``."""
        return self._registered_functions[function_id][0]

    def submit(
        self,
        kind: int,
        function_id: bytes,
        function_name: str,
        args: tuple,
        kwargs: dict,
        num_returns: int,
        resources: tuple,
        max_retries: int,
        retry_exceptions: Any = False,
        actor_id: bytes | None = None,
        method: str | None = None,
        name: str | None = None,
        extra: tuple = (),
        strategy: tuple | None = None,
        concurrency_group: str | None = None,
        runtime_env: tuple[str, str] | None = None,
    ) -> list[ObjectRef]:
        self.check_refs([v for v in (*args, *kwargs.values()) if type(v) is ObjectRef])
        dynamic = num_returns == DYNAMIC
        if dynamic:
            num_returns = STREAMING  # it streams like any generator; only its end's value differs
        current = self.current_task
        parent = current.task_id if current is not None else None
        job_id = current.job_id if current is not None else self.job_id
        if runtime_env is None and kind != TaskKind.ACTOR_CALL:
            runtime_env = self.runtime_env  # inherited, as in Ray: a call runs in its actor's process
        spec = TaskSpec(
            IDS.task_id(), kind, job_id, self.address, function_id, function_name, (), None,
            num_returns, resources, max_retries, 0, parent, actor_id, method, 0, name, strategy, concurrency_group,
            runtime_env,
        )
        pt = PendingTask(spec, args, kwargs, retry_exceptions)
        pt.extra = extra
        refs = []
        with self._lock:
            for oid in spec.return_ids() if kind != TaskKind.ACTOR_CREATION else ():
                self._objects[oid] = ObjectEntry()
                refs.append(ObjectRef(oid, self.address))
            self._tasks[spec.task_id] = pt
            if num_returns == STREAMING:
                self.streams.open(spec.task_id, dynamic)
            self.specs.count_missing(pt)
            if kind == TaskKind.ACTOR_CALL:
                state = self.actors.state_of(actor_id, function_name)  # type: ignore[arg-type]
                if state.dead_reason is not None:
                    self._fail_task(pt, actor_died_error(state.desc, state.dead_reason))
                    return refs
                state.queue.append(pt)
                self.actors.pump(state)
                return refs
            try:
                if pt.missing == 0:
                    self._dispatch(pt)
                elif self.gcs is not None and kind == TaskKind.NORMAL:
                    # Logged now, not when its inputs are ready: a chain's
                    # specs commit together instead of one commit per link.
                    self.specs.encode_early(pt)
            except BaseException:
                # e.g. an argument does not pickle: the caller gets the error now.
                self._tasks.pop(spec.task_id, None)
                for ref in refs:
                    self._objects.pop(ref._id, None)
                raise
        return refs

    def _dispatch(self, pt: PendingTask) -> None:
        must_log = self.specs.encode_spec(pt)
        spec = pt.spec
        if spec.kind == TaskKind.ACTOR_CREATION:
            if must_log:
                self.specs.log_spec(pt)
            self._tasks.pop(spec.task_id, None)
            self.scheduler.send((Op.CREATE_ACTOR, spec, *pt.extra))
            if spec.max_retries:
                # Kept to start it again should the scheduler die; watched so
                # restarts it has used are counted here.
                self._created_actors[spec.actor_id] = (spec, pt.extra)
                self.actors.state_of(spec.actor_id, spec.function_name)  # type: ignore[arg-type]
        else:
            hints = self.locations.input_bytes(spec) if self.relay is not None else None
            self.scheduler.send((Op.SUBMIT, spec, hints) if hints else (Op.SUBMIT, spec))
            if must_log:
                self.specs.log_spec(pt)
                pt.as_logged = True

    # -- peers ---------------------------------------------------------------

    def _on_peer(self, conn: Connection) -> None:
        if conn.peer.get("purpose") == "actor-call":
            # Calls to this actor: the executor's main thread reads them itself.
            with self._lock:
                executor = self.executor
            if executor is not None:
                executor.adopt_call_connection(conn)
            return
        self.links.keep_incoming(conn)

    def _on_peer_closed(self, conn: Connection) -> None:
        with self._lock:
            self.links.forget(conn)
            for state in self._actors.values():
                if state.conn is conn:
                    state.conn = None
                    if state.dead_reason is not None:
                        self.actors.fail_inflight(state)
                    elif not self.closed:
                        self.actors.ask_fate(state)
        self._wake_waiters()  # calls failed just now

    def _set_changed(self) -> None:
        self._changed = True

    def _rebuild_lost(self, oid: bytes) -> None:
        threading.Thread(target=self.rebuild.reconstruct, args=([oid],), name="ember-rebuild", daemon=True).start()

    def _after_rebuild(self) -> None:
        self._changed = True
        self._wake_waiters()
        self._send_follow_ups()

    def _after_restart(self) -> None:
        self._wake_waiters()
        self._send_follow_ups()

    @property
    def resumed_from_log(self) -> int:
        """Tasks a restarted scheduler took from its log, not sent again."""
        return self.restart.resumed_from_log

    # -- actor handles (``_actor_handles``): the ends and notices it asks for ------------------

    def terminate_actor(self, actor_id: bytes, class_name: str) -> None:
        """End an actor created here that no process holds a handle to, after the calls sent to it."""
        self.submit(TaskKind.ACTOR_CALL, b"", class_name, (), {}, 1, (), 0, actor_id=actor_id,
                    method=TERMINATE_METHOD)

    def tell_actor_creator(self, creator: str, actor_id: bytes, change: int, wait_s: float | None) -> None:
        """Tell an actor's creator that this process holds handles to it, no longer does, or let one
        escape; with ``wait_s``, wait that long for its answer."""
        answer = self.links.peer(creator).request(Op.ACTOR_HANDLES, actor_id, change, self.address)
        if wait_s is not None:
            answer.result(timeout=wait_s)

    def process_gone(self, address: str) -> bool:
        """Whether the process at ``address`` is dead for good as far as this one can tell (``_liveness``)."""
        return address != self.address and self.rebuild.liveness.gone(address)

    # -- incoming messages -----------------------------------------------------

    def _wake_waiters(self) -> None:
        with self._lock:
            if not self._changed:
                return
            self._changed = False
            waiters = list(self._waiters)
        for event in waiters:
            event.set()

    def _handle(self, conn: Connection, msg: tuple) -> None:
        self._messages.dispatch(conn, msg)
        if self._changed:
            self._wake_waiters()

    def _message_table(self) -> MessageTable:
        """Which method takes each op that comes to this process (the rest are its executor's)."""
        handlers: dict[int, Handler] = {
            Op.TASK_RESULT: self._on_result_message,
            Op.STREAM_ITEM: self._on_stream_item,
            Op.OBJECT_READY: self._on_object_ready,
            Op.ACTOR_STATE: lambda conn, msg: self.actors.on_actor_state(*msg[1:7]),
            Op.TASK_FAILED: lambda conn, msg: self._on_task_failed(msg[1], msg[2], msg[3], msg[4]),
            Op.OBJECT_WANTED: lambda conn, msg: self.waiting.on_object_wanted(msg[1]),
            Op.LINEAGE_DURABLE: lambda conn, msg: self.lineage.on_lineage_wanted(conn, msg[1], msg[2]),
            Op.ACTOR_HANDLES: lambda conn, msg: conn.reply(msg[1], HANDLES.on_message(msg[2], msg[3], msg[4])),
            # A restarted actor asks for the calls this process saw it run: answered
            # off the reader thread, since a commit may take a while.
            Op.FLUSH_LOG: off_the_reader(self.lineage.flush_log_for, "ember-flush-log"),
        }
        for op in LOCATION_OPS:
            handlers[op] = self.locations.on_message
        return MessageTable(self.kind, handlers, self._from_own_scheduler, self._lock)

    def _from_own_scheduler(self, conn: Connection) -> bool:
        return conn is self.scheduler or conn is self.exec_conn

    def _on_result_message(self, conn: Connection, msg: tuple) -> None:
        if self.relay is None:
            self._on_result(*msg[1:])
        else:
            self._on_result(*msg[1:], where=self.locations.remote_peer(conn))

    def take_result(self, msg: tuple) -> None:
        """The result of a task this process ran itself, inline (``Executor.run_inline``): its own, from here."""
        self._on_result(*msg[1:])

    def _on_stream_item(self, conn: Connection, msg: tuple) -> None:
        task_id, attempt, index, oid, data, size, digest = msg[1:]
        where = self.locations.remote_peer(conn) if self.relay is not None and data is None else None
        with self._lock:
            pt = self._tasks.get(task_id)
            spec = pt.spec if pt is not None and pt.spec.attempt == attempt else None
            entry = self.streams.on_item(spec, task_id, index, oid, data, size, digest, where)
            if entry is not None:
                # A value a rebuild waited for: the tasks it is an input of go on.
                ready: list[PendingTask] = []
                self._made(oid, entry, data, ready)
                self._dispatch_ready(ready)

    def _on_object_ready(self, conn: Connection, msg: tuple) -> None:
        with self._lock:
            self._store_ready.add(msg[1])
            self._changed = True

    @property
    def executor(self) -> Any:
        return self._messages.executor

    def attach_executor(self, executor: Any) -> None:
        self._messages.attach_executor(executor)

    def _on_result(self, task_id: bytes, attempt: int, results: list, failed: bool, call_seq: int = 0,
                   durable_seq: int = 0, hashes: list | None = None, started_us: int = 0, worker_pid: int = 0,
                   worker_node: str | None = None, where: str | None = None) -> None:
        """A task's outcome; for an actor call, ``call_seq`` is its place in the actor's order
        (0 if none) and ``durable_seq`` the last place whose row the actor has committed;
        ``started_us``, ``worker_pid`` and ``worker_node``: when, in which process and on which node
        the run began (0 or None if unknown), for the log; ``where``: the address of the process that
        ran it, if on another node.

        The owner takes the result in at once, before its rows may be
        committed: nothing hands the value out before they are (``LineageGate``:
        ``get`` and ``wait`` here, ``on_ref_shared`` for other processes).
        """
        with self._lock:
            pt = self._tasks.get(task_id)
            action = after_result(pt, attempt, failed, lambda: error_in_results(results))
            match action:
                case Ignore():
                    return  # a stale attempt: the object already has its value
                case Resubmit():
                    self._resubmit(pt)  # type: ignore[arg-type]
                case Finish():
                    self._finish(pt, results, call_seq, durable_seq, hashes, where,  # type: ignore[arg-type]
                                 (started_us, worker_pid, worker_node))
                case _:
                    assert_never(action)

    def _on_log_outage(self, outage_s: float, error: BaseException) -> None:
        # Told once per outage, on the writer's thread: results keep waiting
        # for their lineage, and nothing already committed is at risk.
        message = (
            f"ember: the lineage log has been unreachable for {outage_s:.0f}s ({error}); tasks wait "
            "for it and nothing already committed is lost; check the PostgreSQL server "
            "(EMBER_GCS_URL, or the embedded one under $EMBER_HOME)"
        )
        log.error(message)
        if self.kind == ProcessKind.DRIVER:
            print(message, file=sys.stderr, flush=True)

    def _on_commit_signal(self, committed_seq: int) -> None:
        # On the writer's thread: held actor results leave at once (they need no core lock).
        executor = self.executor
        if executor is not None:
            executor.results.release_held(committed_seq)

    def _resubmit(self, pt: PendingTask) -> None:
        spec = pt.spec
        spec.attempt += 1
        if spec.kind == TaskKind.ACTOR_CALL:
            state = self._actors[spec.actor_id]  # type: ignore[index]
            state.inflight.pop(spec.task_id, None)
            state.queue.appendleft(pt)
            self.actors.pump(state)
        else:
            self._dispatch(pt)

    def _finish(self, pt: PendingTask, results: list, call_seq: int = 0, durable_seq: int = 0,
                hashes: list | None = None, where: str | None = None,
                run: tuple[int, int, str | None] = (0, 0, None)) -> None:
        spec = pt.spec
        self._tasks.pop(spec.task_id, None)
        order = None
        logged = self.gcs is not None and (pt.log_seq or pt.replay)
        declared = pt.declared  # the results' creation rows are logged: what follows completes them
        if logged:
            error = next((data for _, data, _ in results if data is not None and is_error(data)), None)
            failed = error is not None
            created_seq = self.gcs.finished(spec.task_id, spec.attempt, spec.job_id, failed,
                                            [(oid, size, self.writes.copy_actor_result(spec, oid, data, size, failed))
                                             for oid, data, size in results], error=error, hashes=hashes, run=run,
                                            declared=declared)
        if spec.kind == TaskKind.ACTOR_CALL:
            state = self._actors.get(spec.actor_id)  # type: ignore[arg-type]
            if state is not None:
                state.inflight.pop(spec.task_id, None)
                if logged and call_seq:
                    unconfirmed = state.unconfirmed
                    while unconfirmed and unconfirmed[0][0] <= durable_seq:
                        unconfirmed.popleft()
                    if call_seq > durable_seq:
                        # The actor's row of this call's place may die with it: kept
                        # here, to be logged if the actor restarts or the result leaves.
                        unconfirmed.append((call_seq, spec))
                        order = (spec.actor_id, call_seq)
        ready: list[PendingTask] = []
        for oid, data, size in results:
            entry = self._objects.get(oid)
            if entry is None or entry.dropped:
                self._objects.pop(oid, None)
                if data is None:
                    self.store.send((Op.FREE, [oid]))
                continue
            entry.order = order  # a ref to it leaves only once the call's place in the order is durable
            if logged and not declared:
                entry.log_seq = max(entry.log_seq, created_seq)  # its creation row, after its spec
            entry.set_ready(data, size, where)
            self._made(oid, entry, data, ready)
        if spec.num_returns == STREAMING:
            self.streams.on_end(spec, results[0])  # generators waiting past its last value stop
        if spec.kind != TaskKind.ACTOR_CREATION:
            # An actor's constructor arguments stay: a restart needs them.
            self.specs.free_arg_objects(pt)
        pt.raw_args = ()
        pt.raw_kwargs = {}
        self._changed = True
        self._dispatch_ready(ready)

    def _made(self, oid: bytes, entry: ObjectEntry, data: bytes | None, ready: list[PendingTask]) -> None:
        """An owned object's value came (under the lock): who waits for it hears; tasks it was the last
        missing input of go into ``ready``."""
        if data is not None and entry.shared:
            self.writes.publish(oid, data)
        if self.locations.locate_waiters:
            self.locations.answer_locates(oid, entry)
        for waiter in self._dep_waiters.pop(oid, ()):
            waiter.missing -= 1
            if waiter.missing == 0:
                ready.append(waiter)

    def _dispatch_ready(self, ready: list[PendingTask]) -> None:
        for waiter in ready:
            if waiter.cancelled:
                continue
            if waiter.spec.kind == TaskKind.ACTOR_CALL:
                self.actors.pump(self._actors[waiter.spec.actor_id])  # type: ignore[index]
            else:
                try:
                    self._dispatch(waiter)
                except BaseException as exc:
                    if waiter.spec.kind == TaskKind.ACTOR_CREATION:
                        self._tasks.pop(waiter.spec.task_id, None)
                        self.scheduler.send((Op.KILL_ACTOR, waiter.spec.actor_id, True))
                        self.actors.on_actor_state(waiter.spec.actor_id, False, None,  # type: ignore[arg-type]
                                             f"its constructor arguments could not be sent: {exc}")
                    else:
                        self._fail_task(waiter, exc)

    def _fail_task(self, pt: PendingTask, error: BaseException) -> None:
        data = to_bytes(serialize_error(error), b"")
        self._finish(pt, [(oid, data, len(data)) for oid in pt.spec.return_ids()])

    def _on_task_failed(self, task_id: bytes, attempt: int, cause_name: str, detail: str) -> None:
        cause = FailureCause(cause_name)
        if cause is FailureCause.UNSCHEDULABLE:
            log.warning("%s", detail)  # the scheduler says how often: once, then every minute while it waits
            return
        with self._lock:
            pt = self._tasks.get(task_id)
            action = after_failure_report(pt, attempt, cause, detail)
            match action:
                case Ignore() | Warn():
                    return
                case Resubmit():
                    self._resubmit(pt)  # type: ignore[arg-type]
                case Fail(error, infeasible):
                    if infeasible:
                        self.infeasible[task_id] = error  # type: ignore[assignment]  # ``wait`` raises it too
                        while len(self.infeasible) > INFEASIBLE_KEPT_MAX:
                            del self.infeasible[next(iter(self.infeasible))]
                    self._fail_task(pt, error)  # type: ignore[arg-type]
                case Finish() | Claim():
                    raise AssertionError(f"{action} is no answer to a failure report")
                case _:
                    assert_never(action)

    # -- cancel ------------------------------------------------------------------

    def kill_actor(self, actor_id: bytes, no_restart: bool) -> None:
        """Kill an actor; calls from this process fail from now on, whatever is in flight."""
        self.actors.kill_actor(actor_id, no_restart)

    def cancel(self, ref: ObjectRef, force: bool, recursive: bool = True) -> None:
        """Cancel the task that makes ``ref``; ``recursive``: the tasks it submitted too, wherever it runs."""
        self.cancels.cancel(ref.task_id().binary(), force, recursive)

    # -- introspection -------------------------------------------------------------

    def check_refs(self, refs: list[ObjectRef]) -> None:
        """Raise for a ref made by another cluster session: its owner can never answer here."""
        for owner in set(map(_OWNER, refs)):  # few owners, however many refs
            if owner != self.address and not owner.startswith(self._owners_prefix) and not (
                    self.relay is not None and self.locations.in_this_cluster(owner)):
                ref = next(r for r in refs if r._owner == owner)
                raise ForeignObjectRefError(
                    f"ObjectRef {ref.hex()} belongs to another ember cluster session (its owner {owner} is "
                    "not part of this one): refs do not outlive ember.shutdown(). Get its value before "
                    "shutting down, or compute it again in this session"
                )

    def call_scheduler(self, op: int, *payload: Any, timeout_s: float = 30.0) -> Any:
        try:
            return self.scheduler.call(op, *payload, timeout_s=timeout_s)
        except ConnectionClosed as exc:
            raise ClusterUnavailableError(
                f"the cluster's scheduler is unreachable ({exc}); was ember.shutdown() called, "
                "or did the cluster stop?"
            ) from exc
