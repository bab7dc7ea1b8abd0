"""The executor: the part of a worker process that runs user code.

Tasks and actor calls arrive on reader threads and are queued; the main
thread runs them one at a time and sends each result straight to the task's
owner. When user code blocks in ``get``, the executor hands its queued tasks
back to the scheduler and tells it the CPU is free, so nested tasks cannot
deadlock the pool.

It must never hold the owner's lock while running user code.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import os
import select
import selectors
import signal
import threading
import time
import traceback
import weakref
from collections import deque
from collections.abc import Iterator
from typing import Any

import cloudpickle

from ember.chaos import _agent
from ember.exceptions import (ActorDiedError, ActorRestartLoopError, EmberInternalError, EmberTaskError,
                              LineageLogUnavailableError, RuntimeEnvSetupError, SerializationError,
                              TaskCancelledError)
from ember.scheduler._accelerators import Devices
from ember.scheduler._actor_args import ActorArgCopies
from ember.scheduler._actor_concurrency import Concurrency, ConcurrentCalls
from ember.scheduler._actor_exit import RESTART_FROM_CONSTRUCTOR, TERMINATE_METHOD, TERMINATE_POLL_S, ActorExit
from ember.scheduler._owner._links import PEER_CONNECT_TIMEOUT_S
from ember.scheduler._owner import INLINE_BYTES_MAX, Owner, OwnerState
from ember.scheduler import _messages
from ember.scheduler._protocol import Connection, Op
from ember.scheduler._restart_loop import decide, ended_by_itself
from ember.scheduler._object_ref import ObjectRef, is_dynamic, stream_end
from ember.scheduler._spec import STREAMING, ArgKind, CallLimited, TaskKind, TaskSpec, item_id
from ember.store import LateHashes, content_hash
from ember.store import copy_wanted
from ember.store import ObjectKind, deserialize, serialize, serialize_error, to_bytes

log = logging.getLogger("ember.executor")

DONE_BATCH_MAX = 16
_ADOPT = -1  # inbox marker: start reading this call connection on the main thread

CHECKPOINT_INTERVAL = 100  # calls between checkpoints, unless the class sets checkpoint_interval
COVERED_CALLS_MAX = 10_000  # calls before a checkpoint whose resending is recognised
CALLER_FLUSH_WAIT_S = 10.0  # a restarting actor waits this long for its last caller's log (a stopped caller)


class _UpstreamError(Exception):
    """An argument's object is an error: the task fails with that same error."""

    def __init__(self, data: Any) -> None:
        self.data = data


# Inline runs nest in a task's stack; deeper than this, a task blocks instead (the interpreter's frame limit).
INLINE_DEPTH_MAX = 24

class Executor:
    def __init__(self, core: Owner) -> None:
        self.core = core
        self._inbox: deque[tuple[Connection, tuple]] = deque()
        self._cv = threading.Condition()
        self._functions: dict[bytes, Any] = {}
        self._payloads: dict[bytes, bytes] = {}
        self._instance: Any = None
        self._actor_id: bytes | None = None
        self._actor_name = ""
        # What ember.get_runtime_context() reports in an actor's process.
        self.actor_spec: TaskSpec | None = None  # its creation
        self.actor_class: type | None = None
        self.actor_restarts = 0  # 0: the first start; n: the n-th restart
        self._arg_copies: ActorArgCopies | None = None  # a logging actor's copies of the store objects it read
        self._blocked = False
        self._running: bytes | None = None
        # Tasks whose run an inline run is nested in (``run_inline``), outermost first: cancelling one interrupts.
        self._outer: list[bytes] = []
        self._cancelled: set[bytes] = set()
        self._stop = False
        self._done: list[bytes] = []
        self._call_seq = 0
        self._call_counts: dict[bytes, int] = {}  # runs here of each function that has max_calls
        self._retiring = False  # ran a function max_calls times: every task sent from now on goes back
        # Why this worker's runtime_env could not be set up (``_worker_main``): every task it is given
        # fails with it, unrun, and it retires after the first.
        self.env_error: BaseException | None = None
        self._log_mark = 0  # rows logged before the running task's own (its call-order row excluded)
        self._last_caller: str | None = None  # the process whose call the actor ran last
        # (log seq, place) of call-order rows not known durable yet, oldest
        # first; ``_durable_call_seq`` is the last place known durable. Results
        # tell callers the latter, so they can forget what they kept.
        self._order_rows: deque[tuple[int, int]] = deque()
        self._durable_call_seq = 0
        # A restarted actor's replayed calls, by task id: a caller that sends
        # one again gets this outcome instead of running it twice.
        self._replayed: dict[bytes, tuple[list, bool]] = {}
        # Calls folded into the checkpoint a restart began from: they ran, and
        # their results cannot be produced again.
        self._covered: set[bytes] = set()
        self._checkpoint_every = 0  # calls between checkpoints; 0: the class keeps none
        # A concurrent actor's calls run on its groups' threads or event loops (None: one at a
        # time, here). Its calls take their places in the start order, and it checkpoints,
        # under ``_order_lock``; ``_blocked_calls`` counts its calls blocked in ``get``.
        self._calls: ConcurrentCalls | None = None
        self._order_lock = threading.Lock()
        self._checkpoint_seq = 0
        self._blocked_calls = 0
        self._exit_reason: str | None = None  # the actor ended itself (exit_actor, __ray_terminate__): why
        self._ended = False  # ... and the scheduler was told
        self._hasher: LateHashes | None = None  # hashes store results after they are sent
        self.devices = Devices(os.environ)  # the GPUs what runs here holds (CUDA_VISIBLE_DEVICES)
        # Actor results waiting, in order, for rows to be durable (see
        # _send_result); the log's writer thread sends them, so the actor runs on.
        self._held: deque[tuple[int, Connection, tuple]] = deque()
        self._held_lock = threading.Lock()
        # The callers' connections results were sent on: flushed before the actor ends, adopted
        # or not (a result batched behind a queued call would otherwise die with the process).
        self._callers: weakref.WeakSet[Connection] = weakref.WeakSet()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        # The main thread waits here for tasks (on the exec connection), for
        # calls (on adopted caller connections) and for the inbox (wake pipe).
        self._selector: selectors.BaseSelector = selectors.DefaultSelector()
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        self._main = threading.get_ident()
        if core.exec_conn is not None:
            self._selector.register(core.exec_conn.fileno(), selectors.EVENT_READ, core.exec_conn)
        core.attach_executor(self)

    # -- called from reader threads ------------------------------------------------

    def deliver(self, conn: Connection, msg: tuple) -> None:
        op = msg[0]
        if op == Op.EXECUTE:
            spec, payload = msg[1], msg[2]
            if payload is not None:
                self._payloads[spec.function_id] = payload
            if self._blocked or self._retiring:
                # Never let a task wait behind a blocked one, nor come to a worker about to stop: give it back.
                self.core.scheduler.send((Op.RETURN_TASKS, [spec.task_id]))
                return
        elif op == Op.CANCEL_RUNNING or op == Op.CANCEL_CALL:
            self._cancel(msg[1], msg[2] if len(msg) > 2 else False, msg[3] if len(msg) > 3 else False)
            return
        with self._cv:
            self._inbox.append((conn, msg))
        if threading.get_ident() != self._main:
            try:
                os.write(self._wake_w, b"x")
            except BlockingIOError:
                pass  # the pipe is full: the main thread is awake anyway

    def adopt_call_connection(self, conn: Connection) -> None:
        """Take over reading a caller's connection (called on its reader thread)."""
        conn._handler = self._deliver_call  # frames already read go through the inbox
        conn.adopter = lambda c: self.deliver(c, (_ADOPT,))

    def _deliver_call(self, conn: Connection, msg: tuple) -> None:
        problem = _messages.problem(msg, _messages.CALL_OPS)
        if problem is not None:
            _messages.refuse(conn, msg, problem, f"actor worker {os.getpid()}")
            return
        self.deliver(conn, msg)

    def _adopt(self, conn: Connection) -> None:
        conn._handler = self._call_inline
        conn.adopter = None
        self._selector.register(conn.fileno(), selectors.EVENT_READ, conn)

    def _call_inline(self, conn: Connection, msg: tuple) -> None:
        problem = _messages.problem(msg, _messages.CALL_OPS)
        if problem is not None:
            _messages.refuse(conn, msg, problem, f"actor worker {os.getpid()}")
            return
        if msg[0] == Op.CANCEL_CALL:
            self._cancel(msg[1], False, False)  # a call: never recursive, never forced
            return
        self._run_task(conn, msg[1])

    def _cancel(self, task_id: bytes, recursive: bool, force: bool) -> None:
        if recursive:
            self.core.cancel_children(task_id, force)  # sent before this task stops: they are its to end
        if force:
            os.kill(os.getpid(), signal.SIGKILL)  # as the scheduler would: the run ends now, retries the rest
        with self._cv:
            self._cancelled.add(task_id)
            # A running task is interrupted; a running call of a plain actor is not (as in Ray):
            # the interrupt could land anywhere in the actor's state. A queued call never runs.
            if (self._running == task_id or task_id in self._outer) and self._actor_id is None:
                os.kill(os.getpid(), signal.SIGINT)
        if self._calls is not None:
            self._calls.cancel(task_id)  # an async call stops at its next await; a thread runs on

    def on_blocked(self) -> None:
        if self._calls is not None:
            # Calls of a concurrent actor block and unblock on their own: its CPUs are lent out
            # while any one of them waits, and taken back when the last stops waiting.
            with self._order_lock:
                self._blocked_calls += 1
                if self._blocked_calls > 1:
                    return
            self.core.scheduler.send_now((Op.BLOCKED, []))
            return
        self.drain_exec()
        with self._cv:
            self._blocked = True
            returned = [m[1].task_id for _, m in self._inbox if m[0] == Op.EXECUTE]
            self._inbox = deque(item for item in self._inbox if item[1][0] != Op.EXECUTE)
        self.core.scheduler.send_now((Op.BLOCKED, returned))

    def drain_exec(self) -> None:
        """Read what already waits on the exec connection (called while blocked in get).

        Tasks sent before the scheduler knew this worker was blocked must go
        back to it, or they would wait behind the blocked one.
        """
        conn = self.core.exec_conn
        if conn is None or threading.get_ident() != self._main:
            return
        while select.select([conn.fileno()], [], [], 0)[0]:
            if not conn.receive():
                return

    def on_unblocked(self) -> None:
        if self._calls is not None:
            with self._order_lock:
                self._blocked_calls -= 1
                if self._blocked_calls > 0:
                    return
            self.core.scheduler.send((Op.UNBLOCKED,))
            return
        with self._cv:
            self._blocked = False
        self.core.scheduler.send((Op.UNBLOCKED,))

    def can_run_inline(self) -> bool:
        """Whether the running task may run tasks it waits for itself (``run_inline``): a task worker
        (an actor's order is its calls'), not blocked, not nested too deep for the stack."""
        return self._actor_id is None and not self._blocked and len(self._outer) < INLINE_DEPTH_MAX

    def run_inline(self, spec: TaskSpec) -> None:
        """Run a task the running task waits for, nested in that wait, on the resources it holds.

        The scheduler handed it over (``Op.TAKE_BACK``): it is this process's
        own, queued and not started. It runs as it would on another worker,
        the same task id and attempt, its result delivered to this process's
        owner without a socket, its attempt logged as any. An interrupt meant
        for an outer task ends it as cancelled, then goes on outwards.
        """
        core = self.core
        saved = (core.current_task, self._running, self._log_mark)
        self._outer.append(saved[1])  # type: ignore[arg-type]
        try:
            self._run_task(None, spec, inline=True)
        except BaseException:
            self._send_result(None, spec, [_error_bytes(TaskCancelledError(spec.task_id.hex()))] * spec.num_returns,
                              True, inline=True)
            raise
        finally:
            self._outer.pop()
            core.current_task, self._running, self._log_mark = saved

    def on_scheduler_lost(self) -> None:
        # Without its scheduler this worker can do nothing useful; a new one
        # will start fresh workers.
        os._exit(0)

    # -- main thread -------------------------------------------------------------------

    def run_forever(self) -> None:
        while not self._stop:
            self._poll()

    def _poll(self, timeout_s: float | None = None) -> None:
        # The main thread reads the exec connection and its callers'
        # connections itself: a task or a call costs no hand-off between threads.
        while True:
            with self._cv:
                if not self._inbox:
                    break
                conn, msg = self._inbox.popleft()
            self._process(conn, msg)
        for key, _ in self._selector.select(timeout_s):
            conn = key.data
            if conn is None:
                try:
                    os.read(self._wake_r, 4096)
                except BlockingIOError:
                    pass
                continue
            error: BaseException | None = None
            try:
                alive = conn.receive()
            except Exception as exc:  # junk or a bug in a call's plumbing: the caller goes, the actor stays
                alive, error = False, conn._reading_failed(exc)
            if not alive:
                self._selector.unregister(key.fd)
                conn.fail(error)
                if conn is self.core.exec_conn:
                    self.on_scheduler_lost()

    def _process(self, conn: Connection, msg: tuple) -> None:
        op = msg[0]
        if op == _ADOPT:
            self._adopt(conn)
        elif op == Op.EXECUTE and len(msg) > 3:
            with self.devices.holding(msg[3]):  # it holds GPUs
                self._run_task(conn, msg[1])
        elif op == Op.EXECUTE or op == Op.ACTOR_CALL:
            self._run_task(conn, msg[1])
        elif op == Op.BECOME_ACTOR:
            self.devices.keep(msg[4] if len(msg) > 4 else (), dict(msg[1].resources))
            self._become_actor(msg[1], msg[2], msg[3] if len(msg) > 3 else 0, *msg[5:])
        else:
            log.warning("executor ignored message %r", op)

    def _function(self, spec: TaskSpec) -> Any:
        fn = self._functions.get(spec.function_id)
        if fn is None:
            payload = self._payloads.get(spec.function_id)
            if payload is None:  # a task run inline whose function this process registered but never ran
                payload = self.core.function_payload(spec.function_id)
            fn = cloudpickle.loads(payload)
            self._functions[spec.function_id] = fn
        return fn

    def _arg(self, encoded: tuple, copies: ActorArgCopies | None = None, replay: bool = False) -> Any:
        """An argument's value; ``copies``: an actor's copies, kept (a call) or read first (a replay)."""
        kind = encoded[0]
        if kind == ArgKind.VALUE:
            return encoded[1]
        if kind == ArgKind.INLINE:
            data = encoded[1]
        else:
            ref = ObjectRef(encoded[1], encoded[2])
            data = copies.read(ref._id) if replay and copies is not None else None
            if data is None:
                data = self.core.waiting.open_ready(ref)  # waits out a store that dies under it
            if data is None:
                from ember.exceptions import ObjectLostError

                raise _UpstreamError(to_bytes(serialize_error(ObjectLostError(ref.hex(), "not in the store")), b""))
            if copies is not None and not replay:
                copies.keep(ref._id, data)
        obj_kind, value = deserialize(data)
        if obj_kind == ObjectKind.ERROR:
            raise _UpstreamError(bytes(data))  # a view onto the store cannot travel in the result
        return value

    def _wait_for_args(self, spec: TaskSpec) -> None:
        """Wait for every argument in the store at once.

        One by one, each argument lost with a store would be asked for only
        after the wait for the one before it: a rebuild per second, in turn.
        """
        encoded = [*spec.args, *spec.kwargs.values()] if spec.kwargs else spec.args
        refs = [a for a in encoded if a[0] == ArgKind.REF]
        if len(refs) > 1:
            self.core.waiting.wait_ready([ObjectRef(a[1], a[2]) for a in refs], len(refs), None)

    def _run_task(self, conn: Connection | None, spec: TaskSpec, inline: bool = False) -> None:
        if self._calls is not None and spec.kind == TaskKind.ACTOR_CALL:
            self._calls.submit(conn, spec)  # runs on its group's threads or event loop
            return
        if not self._admit(conn, spec, inline):
            return
        core = self.core
        started_us = time.time_ns() // 1000  # logged with the attempt: the timeline's start of this run
        core.current_task = spec
        self._running = spec.task_id
        if _agent.AGENT is not None:
            _agent.AGENT.task_started(_label(spec), spec.task_id, spec.attempt)
        outcome: list | None = None
        failed = False
        call_seq = 0
        try:
            try:
                if spec.kind == TaskKind.ACTOR_CALL:
                    fn = self._method(spec)
                    self._call_seq += 1
                    call_seq = self._call_seq
                    if core.gcs is not None:
                        # The order calls ran in, for replay after a restart.
                        row = core.gcs.actor_call(spec.actor_id, call_seq, spec)
                        self._order_rows.append((row, call_seq))
                        if spec.attempt > 0:
                            # Sent again after a restart: logged for sure before it runs, so that if it
                            # kills the actor again the next restart finds it (``_restart_loop``).
                            core.gcs.make_durable(row, f"the place of {spec.describe()}")
                if core.gcs is not None:
                    self._log_mark = self._own_log_rows()
                if self.env_error is not None:
                    raise self.env_error
                if spec.kind != TaskKind.ACTOR_CALL:
                    fn = self._function(spec)
                self._wait_for_args(spec)
                copies = self._arg_copies if spec.kind == TaskKind.ACTOR_CALL else None
                args = [self._arg(a, copies) for a in spec.args]
                kwargs = {k: self._arg(v, copies) for k, v in spec.kwargs.items()} if spec.kwargs else {}
                value = fn(*args, **kwargs)
                if spec.num_returns == STREAMING:
                    value = self._stream(conn, spec, value)  # runs the generator: cancellable, like the call
            finally:
                self._running = None
            outcome = self._split(spec, value)
            if self._checkpoint_every and spec.kind == TaskKind.ACTOR_CALL \
                    and self._call_seq % self._checkpoint_every == 0:
                self._save_checkpoint()
        except _UpstreamError as up:
            failed = True
            outcome = [up.data] * _result_count(spec)
        except KeyboardInterrupt:
            if spec.task_id not in self._cancelled:
                raise
            failed = True
            outcome = [_error_bytes(TaskCancelledError(spec.task_id.hex()))] * _result_count(spec)
        except ActorExit as exc:
            failed = True
            outcome = _failed_outcome(spec, exc, self._actor_name)
            self._exit_reason = exc.reason  # calls after it fail from now on
        except BaseException as exc:
            failed = True
            outcome = [_error_bytes(_task_error(spec, exc))] * _result_count(spec)
        finally:
            core.current_task = None
        self._send_result(conn, spec, outcome, failed, call_seq, started_us, inline)
        if _agent.AGENT is not None:
            _agent.AGENT.task_finished(_label(spec), spec.task_id, spec.attempt, failed)
        if spec.kind == TaskKind.NORMAL:
            self._count_call(spec.function_id)
            if self.env_error is not None and not self._retiring:
                self._retire()
        if self._exit_reason is not None and spec.kind == TaskKind.ACTOR_CALL:
            self._end_actor()

    def _count_call(self, function_id: bytes) -> None:
        """After the ``max_calls``-th run here of a function that has them: hand back what waits, and retire."""
        fn = self._functions.get(function_id)
        if not isinstance(fn, CallLimited):
            return
        calls = self._call_counts[function_id] = self._call_counts.get(function_id, 0) + 1
        if calls < fn.max_calls or self._retiring:
            return
        self._retire()

    def _retire(self) -> None:
        """Take no more tasks: hand back what waits, and stop once the scheduler has them."""
        with self._cv:
            self._retiring = True
            returned = [m[1].task_id for _, m in self._inbox if m[0] == Op.EXECUTE]
            self._inbox = deque(item for item in self._inbox if item[1][0] != Op.EXECUTE)
        done, self._done = self._done, []
        if done:
            self.core.scheduler.send((Op.TASKS_DONE, done))  # before the retirement, on the same connection
        self.core.scheduler.send_now((Op.RETIRE, returned))

    def _admit(self, conn: Connection | None, spec: TaskSpec, inline: bool = False) -> bool:
        """Whether ``spec`` is to run here now; if not, its outcome is sent (cancelled, replayed, too late)."""
        if self._exit_reason is not None and spec.kind == TaskKind.ACTOR_CALL:
            self._send_error(conn, spec, ActorDiedError(self._actor_name, self._exit_reason))
            return False
        if spec.task_id in self._cancelled:
            self._send_error(conn, spec, TaskCancelledError(spec.task_id.hex()), inline)
            return False
        if spec.kind == TaskKind.ACTOR_CALL and spec.attempt > 0:
            replayed = self._replayed.pop(spec.task_id, None)
            if replayed is not None:
                # Its row is durable already: the caller need not log it, and
                # the order of calls the actor runs from now on is untouched.
                self._send_result(conn, spec, *replayed)  # ran in the replay: the same outcome, not a second run
                return False
            if spec.task_id in self._covered:
                self._send_error(conn, spec, ActorDiedError(
                    self._actor_name, "this call ran before the checkpoint the actor restarted from, and its "
                                      "result was lost with the actor's process"))
                return False
            if spec.attempt > spec.max_retries:
                self._send_error(conn, spec, ActorDiedError(
                    self._actor_name, f"it restarted while this call was in flight, and the call may not be "
                                      f"retried (max_task_retries={spec.max_retries})"))
                return False
        return True

    # -- streaming generators: each value sent to the owner as it is made -----------------

    def _stream(self, conn: Connection, spec: TaskSpec, value: Any) -> int:
        """Run a streaming task's generator, sending each value it yields; the number of values sent.

        An exception the generator raises is its last value: the reader's
        ``get`` of the next ref raises it, and the task itself ends well.
        """
        iterator = _iterator_of(spec, value)
        dynamic = self._is_dynamic(spec)
        sent = 0
        while True:
            try:
                item = next(iterator)
            except StopIteration:
                return stream_end(spec.task_id, spec.owner_addr, sent, dynamic)
            except KeyboardInterrupt:
                if spec.task_id in self._cancelled:
                    raise  # cancelled: the task ends as cancelled
                return self._stream_failed(conn, spec, sent, KeyboardInterrupt(), dynamic)
            except Exception as exc:  # noqa: BLE001 - user code: its exception is the stream's last value
                return self._stream_failed(conn, spec, sent, exc, dynamic)
            self._send_item(conn, spec, sent, item)
            sent += 1

    def _stream_failed(self, conn: Connection, spec: TaskSpec, sent: int, exc: BaseException, dynamic: bool) -> int:
        """The generator raised after ``sent`` values: its error is the stream's last value (its count
        returned), or, with Ray's "dynamic", the task fails as a whole."""
        if dynamic:
            raise exc
        self._send_item(conn, spec, sent, _error_bytes(_task_error(spec, exc)), True)
        return sent + 1

    def _is_dynamic(self, spec: TaskSpec) -> bool:
        """Whether a streaming task was called with ``num_returns="dynamic"`` (its function says so)."""
        if spec.kind == TaskKind.ACTOR_CALL:
            return is_dynamic(getattr(type(self._instance), spec.method or "", None))
        return is_dynamic(self._functions.get(spec.function_id))

    async def _stream_async(self, conn: Connection, spec: TaskSpec, value: Any) -> int:
        """``_stream`` for an async generator method of an async actor."""
        sent = 0
        iterator = value.__aiter__()
        dynamic = self._is_dynamic(spec)
        while True:
            try:
                item = await iterator.__anext__()
            except StopAsyncIteration:
                return stream_end(spec.task_id, spec.owner_addr, sent, dynamic)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - user code: its exception is the stream's last value
                return self._stream_failed(conn, spec, sent, exc, dynamic)
            self._send_item(conn, spec, sent, item)
            sent += 1

    def _send_item(self, conn: Connection, spec: TaskSpec, index: int, value: Any, is_error: bool = False) -> None:
        """Send value ``index`` of a streaming task to its owner now (stored first, if large).

        What the task logged so far (an actor call's place in its order, the
        tasks it submitted) is committed before the value leaves: the value
        rests on it, and its reader may see it the next instant.
        """
        core = self.core
        oid = item_id(spec.task_id, index)
        data: bytes | None
        if is_error:
            data = value
        else:
            try:
                obj = serialize(value)
            except SerializationError as exc:
                obj, data = None, _error_bytes(exc)
            else:
                data = to_bytes(obj, oid) if obj.total_size <= INLINE_BYTES_MAX else None
            if data is None and obj is not None:
                core.writes.write_to_store(oid, obj)
        size = len(data) if data is not None else obj.total_size  # type: ignore[union-attr]
        gcs = core.gcs
        if gcs is not None and gcs.writer.appended_seq > gcs.committed_seq:
            core.flush()
            gcs.make_durable(gcs.writer.appended_seq, f"value {index} of {spec.describe()}")
        digest = content_hash(data) if gcs is not None and data is not None else None
        msg = (Op.STREAM_ITEM, spec.task_id, spec.attempt, index, oid, data, size, digest)
        if spec.kind == TaskKind.ACTOR_CALL:
            conn.send_now(msg)
        else:
            core.links.send_to(spec.owner_addr, msg, flush=True)
        core.store.flush()

    def _split(self, spec: TaskSpec, value: Any) -> list:
        n = spec.num_returns
        if n == 1 or n == STREAMING:  # a stream's one result: how many values it yielded
            return [value]
        if n == 0:
            return [None]
        try:
            values = list(value)
        except TypeError:
            raise ValueError(
                f"{spec.describe()} declares num_returns={n} but returned a non-iterable {type(value).__name__}"
            ) from None
        if len(values) != n:
            raise ValueError(f"{spec.describe()} declares num_returns={n} but returned {len(values)} values")
        return values

    def _send_result(self, conn: Connection | None, spec: TaskSpec, outcome: list, failed: bool,
                     call_seq: int = 0, started_us: int = 0, inline: bool = False) -> None:
        """Send a task's outcome to its owner; ``call_seq``: an actor call's place in the actor's order;
        ``started_us``: when its run began (epoch microseconds; 0 if it did not run here).

        An actor call's result leaves before its order row is durable when the
        call's caller also made the call before it: the caller keeps the
        calls the result says are not durable yet, and a restarted actor has
        the caller of its last logged call log and commit them (see
        ``_replay_calls``). When the caller changes, the row must be durable
        first, so a call another caller saw never rests on rows only a dead
        process had.
        """
        core = self.core
        # What the task submitted leaves before its result does: whoever sees
        # the task finish may rely on its calls having been sent, and on the
        # lineage it logged being durable.
        core.flush()
        gcs = core.gcs
        concurrent = self._calls is not None and spec.kind == TaskKind.ACTOR_CALL
        more = self._calls.running > 1 if concurrent else self._more_queued()  # type: ignore[union-attr]
        # Rows the task logged itself; a late hash of an earlier result (logged
        # by the hashing thread meanwhile) is nobody's lineage and waits for no one.
        must_commit = not concurrent and gcs is not None and self._own_log_rows() > self._log_mark
        hold = False
        if concurrent:
            # Calls of a concurrent actor interleave: the result of one that ran waits for every
            # row logged before it is sent (its place in the start order, what it logged itself).
            hold = gcs is not None and bool(call_seq or self._held)
        elif spec.kind == TaskKind.ACTOR_CALL:
            switched = call_seq and spec.owner_addr != self._last_caller
            if call_seq:
                self._last_caller = spec.owner_addr
            hold = gcs is not None and bool(must_commit or switched or self._held)
        if must_commit and not hold and not inline:  # an inline result stays here: the outer task's waits cover it
            try:
                gcs.make_durable(gcs.writer.appended_seq, f"the result of {spec.describe()}")  # type: ignore[union-attr]
            except LineageLogUnavailableError as exc:
                # Nothing the task made leaves without its lineage: its caller gets the error instead.
                outcome, failed = [_error_bytes(exc)] * _result_count(spec), True
        results = []
        for oid, value in zip(spec.return_ids(), outcome):
            if failed:
                data = value
                results.append((oid, data, len(data)))
                continue
            try:
                obj = serialize(value)
            except SerializationError as exc:
                failed = True
                data = _error_bytes(exc)
                results.append((oid, data, len(data)))
                continue
            if obj.total_size <= INLINE_BYTES_MAX:
                data = to_bytes(obj, oid)
                results.append((oid, data, len(data)))
            else:
                core.writes.write_to_store(oid, obj)
                results.append((oid, None, obj.total_size))
                if spec.kind == TaskKind.ACTOR_CALL and self._arg_copies is not None \
                        and copy_wanted(obj.total_size):
                    view = core.files.open(oid)
                    if view is not None:
                        self._arg_copies.keep_result(oid, view)
        # What each result was, for replay to compare against: inline ones
        # now (about a microsecond when small), store ones after the send.
        hashes = [content_hash(data) if data is not None else None for _, data, _ in results] \
            if gcs is not None and not failed else None
        msg = (Op.TASK_RESULT, spec.task_id, spec.attempt, results, failed, call_seq,
               call_seq if hold else self._durable_through(), hashes, started_us,
               os.getpid() if started_us else 0, core.node_id if started_us else None)
        # With more work queued behind this task, results and completions
        # leave in batches (the writer thread flushes them within a moment);
        # with none, at once, since someone is likely waiting.
        if spec.kind == TaskKind.ACTOR_CALL:
            if conn is not None:
                self._callers.add(conn)
            if hold:
                writer = gcs.writer  # type: ignore[union-attr]  # only a logging actor holds results
                with self._held_lock:
                    self._held.append((writer.appended_seq, conn, msg))
                writer.expedite()  # somebody waits for these rows now
                self.release_held(writer.committed_seq)  # they may be durable already
            else:
                conn.send(msg) if more else conn.send_now(msg)
        elif inline:
            core.take_result(msg)  # this process owns it, and the scheduler no longer counts it
        else:
            core.links.send_to(spec.owner_addr, msg, flush=not more)
            self._done.append(spec.task_id)
            if not more or len(self._done) >= DONE_BATCH_MAX:
                done, self._done = self._done, []
                core.scheduler.send_now((Op.TASKS_DONE, done))
        core.store.flush()
        if hashes is not None:
            for oid, data, size in results:
                if data is None:
                    self._late_hashes().schedule(oid, size)

    def _own_log_rows(self) -> int:
        """Rows this process appended to its log, less the late hashes (nobody's lineage).

        Read as one pair under the hasher's lock, which it holds across each
        append and its count: a late row is in both numbers or in neither.
        """
        writer = self.core.gcs.writer
        hasher = self._hasher
        if hasher is None:
            return writer.appended_seq
        with hasher.rows_lock:
            return writer.appended_seq - hasher.rows_logged

    def _late_hashes(self) -> LateHashes:
        if self._hasher is None:
            gcs = self.core.gcs
            self._hasher = LateHashes(self.core.files.open, gcs.content_hash)
        return self._hasher

    def _durable_through(self) -> int:
        """The last place in the actor's order whose row is known durable."""
        gcs = self.core.gcs
        rows = self._order_rows
        if gcs is not None:
            committed = gcs.writer.committed_seq
            while rows and rows[0][0] <= committed:
                self._durable_call_seq = rows.popleft()[1]
        return self._durable_call_seq

    def _more_queued(self) -> bool:
        inbox = self._inbox
        return bool(inbox) and inbox[0][1][0] != _ADOPT

    def _send_error(self, conn: Connection | None, spec: TaskSpec, error: BaseException, inline: bool = False) -> None:
        data = _error_bytes(error)
        self._send_result(conn, spec, [data] * _result_count(spec), True, inline=inline)

    def release_held(self, committed_seq: int) -> None:
        """Send, in order, the held results whose rows are now durable (any thread)."""
        with self._held_lock:
            ready = []
            while self._held and self._held[0][0] <= committed_seq:
                ready.append(self._held.popleft())
            for _, conn, msg in ready:  # under the lock: results leave in the order they were made
                conn.send(msg)

    def _save_checkpoint(self) -> None:
        # Saved after the call it follows: replay starts after it. A failure
        # to save is not the call's failure; replay just starts further back.
        if self.core.gcs is None:
            return
        try:
            data = cloudpickle.dumps(self._instance.save_checkpoint())  # type: ignore[union-attr]
        except Exception:
            log.exception("actor %s: save_checkpoint() failed; replay will start from an older one",
                          self._actor_name)
            return
        self.core.gcs.checkpoint(self._actor_id, self._call_seq, data)

    def _replay_calls(self, actor_id: bytes, restart: int, death: str | None) -> None:
        """Restore the newest checkpoint, then run again, in order, every call logged after it.

        A call that killed the actor at this very state before is not run again (``_restart_loop``).
        """
        from ember.lineage import ReplaySource
        from ember.scheduler._session import log_conninfo

        conninfo = log_conninfo(self.core.session)
        if conninfo is None:
            return
        source = ReplaySource(conninfo)  # its reads wait out a PostgreSQL restart
        try:
            checkpoint, covered, calls = self._read_replay(source, actor_id)
            last = calls[-1] if calls else None
            decision = decide(calls, source.finished([last[1]]) if last is not None else set(),
                              source.restart_marks(actor_id), ended_by_itself(death))
        finally:
            source.close()
        if decision.mark is not None:
            # Durable before the call runs again: if it kills this process too, the next restart knows.
            gcs = self.core.gcs
            gcs.make_durable(gcs.actor_restart(actor_id, restart, *decision.mark), "a restart's mark")
        start = "its constructor"
        if checkpoint is not None:
            after, data = checkpoint
            self._instance.load_checkpoint(cloudpickle.loads(data))  # type: ignore[union-attr]
            self._covered = covered
            self._call_seq = self._durable_call_seq = after
            start = f"its checkpoint after call {after}"
        for seq, task_id, method, args, kwargs, num_returns in decision.replay:
            call = TaskSpec(task_id, TaskKind.ACTOR_CALL, b"", "", b"", self._actor_name, args, kwargs,
                            num_returns, (), 0, 0, None, actor_id, method)
            self._replayed[task_id] = self._call(call)
            self._call_seq = self._durable_call_seq = seq
        for seq, task_id, method, _, _, num_returns in calls:
            if task_id in decision.poisoned:
                error = ActorRestartLoopError(
                    self._actor_name, f"{self._actor_name}.{method} (task {task_id.hex()})",
                    f"{start}, then the logged calls before call {seq} replayed", restart)
                self._replayed[task_id] = ([_error_bytes(error)] * max(num_returns, 1), True)
        self._call_seq = self._durable_call_seq = max(self._call_seq, calls[-1][0] if calls else 0)
        if decision.newly_poisoned is not None:
            log.warning("actor %s: call %s killed it again at the same state (place %d): it fails with "
                        "ActorRestartLoopError instead of running again", actor_id.hex(),
                        decision.newly_poisoned[0].hex(), decision.newly_poisoned[1])
        log.info("actor %s replayed %d logged calls", actor_id.hex(), len(decision.replay))
        if _agent.AGENT is not None:
            _agent.AGENT.note("actor_restarted", actor=actor_id.hex(), replayed=len(decision.replay),
                              looping_calls=len(decision.poisoned))

    def _read_replay(self, source: Any, actor_id: bytes) -> tuple[tuple | None, Any, list]:
        """From the log: the newest checkpoint (or None), the calls it covers, and the calls after it."""
        after = 0
        covered = None
        checkpoint = source.latest_checkpoint(actor_id) if self._checkpoint_every else None
        if checkpoint is not None:
            after = checkpoint[0]
            covered = source.calls_through(actor_id, after, COVERED_CALLS_MAX)
        calls = source.actor_calls(actor_id, after)
        # Calls whose results reached a caller may be logged only by that
        # caller so far: all of them were made by the caller of the last
        # logged call (see _send_result). Have it commit them, then read on.
        if self._flush_last_caller(source.last_caller(actor_id)):
            last = calls[-1][0] if calls else after
            calls += source.actor_calls(actor_id, last)
        return checkpoint, covered, calls

    def _flush_last_caller(self, caller: str | None) -> bool:
        """Ask the process at ``caller`` to commit its log; False if it is gone or did not answer."""
        if not caller:
            return False
        core = self.core
        try:
            conn = core.links.peer(caller, timeout_s=PEER_CONNECT_TIMEOUT_S)
            return bool(conn.call(Op.FLUSH_LOG, self._actor_id, timeout_s=CALLER_FLUSH_WAIT_S))
        except Exception as exc:  # noqa: BLE001 - a dead or stuck caller: what it alone saw died with it
            log.info("actor %s: its last caller %s did not commit its log (%s); replaying what is logged",
                     (self._actor_id or b"").hex(), caller, exc)
            return False

    def _call(self, spec: TaskSpec) -> tuple[list, bool]:
        """Run one actor method as replay does: its outcome, nothing sent or logged."""
        try:
            copies = self._arg_copies
            args = [self._arg(a, copies, replay=True) for a in spec.args]
            kwargs = {k: self._arg(v, copies, replay=True) for k, v in spec.kwargs.items()} if spec.kwargs else {}
            value = self._method(spec)(*args, **kwargs)
            if spec.num_returns == STREAMING:
                # Its effects again; its values were read.
                value = stream_end(spec.task_id, spec.owner_addr, sum(1 for _ in _iterator_of(spec, value)),
                                   self._is_dynamic(spec))
            return self._split(spec, value), False
        except _UpstreamError as up:
            return [up.data] * _result_count(spec), True
        except ActorExit as exc:
            # It ended itself in its last life, and died before the scheduler heard: it ends again
            # once it is up (``_become_actor``), and the calls after it fail naming the exit.
            self._exit_reason = exc.reason
            return _failed_outcome(spec, exc, self._actor_name), True
        except BaseException as exc:
            return [_error_bytes(_task_error(spec, exc))] * _result_count(spec), True

    # -- concurrent actors: each call on a thread or event loop of its group ------------

    def _begin_concurrent(self, spec: TaskSpec) -> tuple[int, int]:
        """An admitted call starts: (its place in the actor's start order, when it started in epoch µs)."""
        started_us = time.time_ns() // 1000
        gcs = self.core.gcs
        with self._order_lock:
            self._call_seq += 1
            call_seq = self._call_seq
            if gcs is not None:
                gcs.actor_call(spec.actor_id, call_seq, spec)  # the start order, for the log and replay tools
        if _agent.AGENT is not None:
            _agent.AGENT.task_started(_label(spec), spec.task_id, spec.attempt)
        return call_seq, started_us

    def _invoke(self, spec: TaskSpec) -> Any:
        """Call the method of ``spec`` with its arguments; a coroutine for an ``async def``."""
        fn = self._method(spec)
        self._wait_for_args(spec)
        # No copies of the arguments: they serve only a replay, which a concurrent actor never does
        # (and its calls' threads would race writing them: a soak found FileNotFoundError).
        args = [self._arg(a) for a in spec.args]
        kwargs = {k: self._arg(v) for k, v in spec.kwargs.items()} if spec.kwargs else {}
        return fn(*args, **kwargs)

    def run_concurrent_call(self, conn: Connection, spec: TaskSpec) -> None:
        """Run one call of a threaded actor to its end, and send its result (on a thread of its group)."""
        with self._failure_reported(conn, spec):
            if not self._admit(conn, spec):
                return
            call_seq, started_us = self._begin_concurrent(spec)
            token = OwnerState.enter_concurrent_call(spec)
            try:
                value = self._invoke(spec)
                if spec.num_returns == STREAMING:
                    value = self._stream(conn, spec, value)
                outcome, failed = self._split(spec, value), False
            except BaseException as exc:  # noqa: BLE001 - user code: its exception is the call's outcome
                outcome, failed = self._failed_concurrent(spec, exc), True
            finally:
                OwnerState.leave_concurrent_call(token)
            self._end_concurrent(conn, spec, outcome, failed, call_seq, started_us)

    async def run_concurrent_call_async(self, conn: Connection, spec: TaskSpec) -> None:
        """Run one call of an async actor to its end, and send its result (on its group's event loop)."""
        with self._failure_reported(conn, spec):
            if not self._admit(conn, spec):
                return
            call_seq, started_us = self._begin_concurrent(spec)
            token = OwnerState.enter_concurrent_call(spec)  # this asyncio task's context only
            try:
                value = self._invoke(spec)
                if spec.num_returns == STREAMING and hasattr(type(value), "__aiter__"):
                    value = await self._stream_async(conn, spec, value)
                elif spec.num_returns == STREAMING:
                    value = self._stream(conn, spec, value)
                elif inspect.isawaitable(value):
                    value = await value
                outcome, failed = self._split(spec, value), False
            except BaseException as exc:  # noqa: BLE001 - user code: its exception is the call's outcome
                outcome, failed = self._failed_concurrent(spec, exc), True
            finally:
                OwnerState.leave_concurrent_call(token)
            self._end_concurrent(conn, spec, outcome, failed, call_seq, started_us)

    @contextlib.contextmanager
    def _failure_reported(self, conn: Connection, spec: TaskSpec) -> Iterator[None]:
        """A failure of ember's own around a concurrent call (not the method's: that is its outcome) goes
        to the caller as the call's error, rather than dying in a pool thread while the caller waits."""
        try:
            yield
        except BaseException as exc:  # noqa: BLE001 - whatever it is, the caller hears of it
            log.exception("actor %s: ember failed around %s", self._actor_name, spec.describe())
            try:
                self._send_error(conn, spec, EmberInternalError(
                    f"ember failed around {spec.describe()}: {exc!r} (the actor goes on; see its worker's log)"))
            except Exception:  # noqa: BLE001 - the caller's connection is gone too: nobody waits
                log.exception("actor %s: the failure could not reach the caller", self._actor_name)

    def _end_concurrent(self, conn: Connection, spec: TaskSpec, outcome: list, failed: bool, call_seq: int,
                        started_us: int) -> None:
        calls = self._calls
        assert calls is not None
        if self._checkpoint_every:
            with self._order_lock:
                # Only when no other call runs: then the checkpoint holds exactly the effects of
                # the calls started before it (places up to ``_call_seq``), and replay starts after it.
                if calls.running == 1 and self._call_seq - self._checkpoint_seq >= self._checkpoint_every:
                    self._checkpoint_seq = self._call_seq
                    self._save_checkpoint()
        self._send_result(conn, spec, outcome, failed, call_seq, started_us)
        if _agent.AGENT is not None:
            _agent.AGENT.task_finished(_label(spec), spec.task_id, spec.attempt, failed)
        if self._exit_reason is not None:
            self._end_actor()

    def _failed_concurrent(self, spec: TaskSpec, exc: BaseException) -> list:
        if isinstance(exc, ActorExit):
            self._exit_reason = exc.reason  # calls not started yet fail from now on
        return _failed_outcome(spec, exc, self._actor_name)

    # -- an actor ending itself ----------------------------------------------------------

    def _method(self, spec: TaskSpec) -> Any:
        if spec.method == TERMINATE_METHOD:
            if self._calls is not None and self._calls.concurrency.is_async:
                return self._terminate_async
            return self._terminate
        return getattr(self._instance, spec.method)  # type: ignore[arg-type]

    def _terminate(self) -> None:
        """``__ray_terminate__``: the calls before it are done (a concurrent actor's: waited for)."""
        while self._calls is not None and self._calls.running > 1:
            time.sleep(TERMINATE_POLL_S)
        raise ActorExit(_TERMINATED)

    async def _terminate_async(self) -> None:
        while self._calls is not None and self._calls.running > 1:
            await asyncio.sleep(TERMINATE_POLL_S)
        raise ActorExit(_TERMINATED)

    def _end_actor(self) -> None:
        """The actor ended itself: the scheduler marks it dead for good (no restart) and stops this process."""
        with self._order_lock:
            if self._ended:
                return
            self._ended = True
        log.info("actor %s ends: %s", (self._actor_id or b"").hex(), self._exit_reason)
        self._deliver_all()
        self.core.scheduler.send_now((Op.ACTOR_FAILED, self._actor_id, None, self._exit_reason))

    def _deliver_all(self) -> None:
        """Before the actor ends: every result it made reaches its caller (held ones once durable)."""
        core = self.core
        core.flush()
        gcs = core.gcs
        if gcs is not None:
            try:
                gcs.make_durable(gcs.writer.appended_seq, "the results the actor made before its end")
            except LineageLogUnavailableError as exc:
                log.error("actor %s ends with results still held: %s", (self._actor_id or b"").hex(), exc)
            self.release_held(gcs.writer.committed_seq)
        for conn in list(self._callers):
            conn.flush()  # results batched behind the calls queued after them leave now

    def _restore_without_replay(self, actor_id: bytes, use_checkpoint: bool, why: str) -> None:
        """A restart from the constructor (and the newest checkpoint, if ``use_checkpoint``) only.

        A concurrent actor's calls ran together, in no order a replay could
        repeat; an actor created with ``restart_from="constructor"`` asked
        for Ray's restart. The calls logged after that start are not run
        again, and what they did to its state is gone. Said here, in the log
        line and the chaos note, never restored silently wrong
        (docs/fault-tolerance.md).
        """
        from ember.lineage import ReplaySource
        from ember.scheduler._session import log_conninfo

        conninfo = log_conninfo(self.core.session)
        if conninfo is None:
            return
        source = ReplaySource(conninfo)
        try:
            checkpoint = source.latest_checkpoint(actor_id) if use_checkpoint and self._checkpoint_every else None
            after = checkpoint[0] if checkpoint is not None else 0
            covered = source.calls_through(actor_id, after, COVERED_CALLS_MAX) if checkpoint is not None else set()
            lost = source.actor_calls(actor_id, after)
        finally:
            source.close()
        if checkpoint is not None:
            self._instance.load_checkpoint(cloudpickle.loads(checkpoint[1]))  # type: ignore[union-attr]
            self._covered = covered
        # New calls take places after every logged one: a place is never logged twice.
        self._call_seq = self._durable_call_seq = max(after, lost[-1][0] if lost else 0)
        self._checkpoint_seq = after
        start = f"its checkpoint after call {after}" if checkpoint is not None else "its constructor"
        log.warning("actor %s restarted from %s only (%s): the %d calls logged after that are not replayed, and "
                    "their effects on its state are lost", actor_id.hex(), start, why, len(lost))
        if _agent.AGENT is not None:
            _agent.AGENT.note("actor_restarted", actor=actor_id.hex(), replayed=0, not_replayed=len(lost),
                              restored_from=start)

    def _become_actor(self, spec: TaskSpec, payload: bytes, restarts: int = 0, concurrency: tuple | None = None,
                      restart_from: str | None = None, death: str | None = None) -> None:
        """Run the constructor; on a restart, restore the state (``restart_from``: "constructor" for
        Ray's restart from the constructor only); ``death``: how the previous process ended."""
        core = self.core
        core.current_task = spec
        self._actor_id = spec.actor_id
        self._actor_name = spec.function_name
        self.actor_spec, self.actor_restarts = spec, restarts
        if core.gcs is not None:
            from ember.lineage import ember_home

            self._arg_copies = ActorArgCopies(ember_home(), spec.job_id, spec.actor_id)  # type: ignore[arg-type]
        try:
            if self.env_error is not None:
                raise self.env_error
            cls = self.actor_class = cloudpickle.loads(payload)
            args = [self._arg(a) for a in spec.args]
            kwargs = {k: self._arg(v) for k, v in spec.kwargs.items()} if spec.kwargs else {}
            self._instance = cls(*args, **kwargs)
            if callable(getattr(cls, "save_checkpoint", None)) and callable(getattr(cls, "load_checkpoint", None)):
                self._checkpoint_every = max(1, int(getattr(cls, "checkpoint_interval", CHECKPOINT_INTERVAL)))
            if concurrency is not None:
                self._calls = ConcurrentCalls(Concurrency.from_wire(concurrency), self.run_concurrent_call,
                                              self.run_concurrent_call_async)
                if core.gcs is not None:
                    self._late_hashes()  # made once here, not raced for by the calls' threads
            if restarts and core.gcs is not None:
                if restart_from == RESTART_FROM_CONSTRUCTOR:
                    self._restore_without_replay(spec.actor_id, False, "restart_from=\"constructor\"")  # type: ignore[arg-type]
                elif self._calls is not None:
                    self._restore_without_replay(spec.actor_id, True, "it runs calls concurrently")  # type: ignore[arg-type]
                else:
                    self._replay_calls(spec.actor_id, restarts, death)  # type: ignore[arg-type]
        except _UpstreamError as up:
            core.scheduler.send_now((Op.ACTOR_FAILED, spec.actor_id, up.data, "an argument of its constructor failed"))
            return
        except BaseException as exc:
            error = _task_error(spec, exc)
            reason = f"its constructor raised {exc!r}:\n{getattr(error, 'traceback_str', '')}"
            core.scheduler.send_now((Op.ACTOR_FAILED, spec.actor_id, _error_bytes(error), reason))
            return
        finally:
            core.current_task = None
        core.scheduler.send_now((Op.ACTOR_READY, spec.actor_id, core.address))
        if self._exit_reason is not None:
            self._end_actor()  # its replay ran the call that ended it


def _task_error(spec: TaskSpec, exc: BaseException) -> BaseException:
    if isinstance(exc, (SerializationError, RuntimeEnvSetupError)):
        return exc  # not the task's own: it never ran
    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    name = spec.function_name if spec.kind != TaskKind.ACTOR_CALL else f"{spec.function_name}.{spec.method}"
    # A task error raised by a nested get keeps its original cause, so the
    # caller's error is still an instance of what the innermost task raised.
    cause: BaseException | None = exc.cause if isinstance(exc, EmberTaskError) and exc.cause is not None else exc
    try:
        cloudpickle.dumps(cause)
    except Exception:
        cause = None
    return EmberTaskError(name, tb, cause, repr(exc))


def _result_count(spec: TaskSpec) -> int:
    """How many results a run of ``spec`` sends (a stream sends one: its end)."""
    return 1 if spec.num_returns == STREAMING else spec.num_returns


def _iterator_of(spec: TaskSpec, value: Any) -> Any:
    try:
        return iter(value)
    except TypeError:
        raise TypeError(f"{spec.describe()} streams its values (num_returns=\"streaming\") but returned a "
                        f"{type(value).__name__}, not a generator") from None


_TERMINATED = "it was terminated by __ray_terminate__, after the calls sent before it"


def _failed_outcome(spec: TaskSpec, exc: BaseException, actor_name: str = "") -> list:
    """The results of a call that raised ``exc``: one error per return."""
    if isinstance(exc, ActorExit):
        data = _error_bytes(ActorDiedError(actor_name, exc.reason))
    elif isinstance(exc, _UpstreamError):
        data = exc.data  # an argument's error: the call fails with that same error
    elif isinstance(exc, asyncio.CancelledError):
        data = _error_bytes(TaskCancelledError(spec.task_id.hex()))
    else:
        data = _error_bytes(_task_error(spec, exc))
    return [data] * _result_count(spec)


def _error_bytes(error: BaseException) -> bytes:
    return to_bytes(serialize_error(error), b"")


def _label(spec: TaskSpec) -> str:
    """The name ``chaos run --on-start`` matches: ``f``, ``Class.method``, or ``Class`` for a constructor."""
    return f"{spec.function_name}.{spec.method}" if spec.kind == TaskKind.ACTOR_CALL else spec.function_name
