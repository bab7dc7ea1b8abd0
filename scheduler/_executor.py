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
from collections import deque
from collections.abc import Iterator
from typing import Any

import cloudpickle

from ember.chaos import _agent
from ember.exceptions import (ActorDiedError, ActorRestartLoopError, ActorUnavailableError, EmberInternalError,
                              TaskCancelledError)
from ember.scheduler._accelerators import Devices
from ember.scheduler._actor_args import ActorArgCopies
from ember.scheduler._actor_lease import HELD_TOO_LONG, RUN, HeldCalls
from ember.scheduler._actor_concurrency import Concurrency, ConcurrentCalls
from ember.scheduler._actor_exit import RESTART_FROM_CONSTRUCTOR, TERMINATE_METHOD, TERMINATE_POLL_S, ActorExit
from ember.scheduler._actor_recovery import CLAIM_WAIT_S, read_replay, read_restore, save_checkpoint
from ember.scheduler._owner import Owner, OwnerState
from ember.scheduler import _messages
from ember.scheduler._ran_calls import RanCalls
from ember.scheduler._outcomes import (TERMINATED, UpstreamError, error_bytes, errors, failed_outcome, iterator_of,
                                      label, result_count, split_outcome, task_error)
from ember.scheduler._protocol import Connection, Op
from ember.scheduler._object_ref import ObjectRef, is_dynamic, stream_end
from ember.scheduler._results import ResultSender
from ember.scheduler._spec import READY_METHOD, STREAMING, ArgKind, CallCounts, TaskKind, TaskSpec, ready
from ember.store import ObjectKind, deserialize, serialize_error, to_bytes

log = logging.getLogger("ember.executor")

_ADOPT = -1  # inbox marker: start reading this call connection on the main thread

CHECKPOINT_INTERVAL = 100  # calls between checkpoints, unless the class sets checkpoint_interval


# Inline runs nest in a task's stack; deeper than this, a task blocks instead (the interpreter's frame limit).
INLINE_DEPTH_MAX = 24

class Executor:
    def __init__(self, core: Owner) -> None:
        self.core = core
        self.results = ResultSender(core)  # how results and streamed values leave
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
        self._call_seq = 0
        self._call_counts = CallCounts()  # runs here of each function that has max_calls
        self._retiring = False  # ran a function max_calls times: every task sent from now on goes back
        # Why this worker's runtime_env could not be set up (``_worker_main``): every task it is given
        # fails with it, unrun, and it retires after the first.
        self.env_error: BaseException | None = None
        self._log_mark = 0  # rows logged before the running task's own (its call-order row excluded)
        # A restarted actor's replayed calls by task id: a caller sending one again gets this outcome.
        self._replayed: dict[bytes, tuple[list, bool]] = {}
        self._ran = RanCalls()  # the calls run last: one sent again after a broken connection is answered
        self._held = HeldCalls()  # calls its node holds while the GCS does not answer it (_actor_lease.py)
        # Replayed calls no caller took a result of yet: their callers send them again. An actor whose
        # replay ran the call that ended it waits for them before it ends (``_end_when_claimed``).
        self._unclaimed: set[bytes] = set()
        # Calls folded into the checkpoint a restart began from: they ran, their results cannot come again.
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
        self.devices = Devices(os.environ)  # the GPUs what runs here holds (CUDA_VISIBLE_DEVICES)
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
            self.core.cancels.cancel_children(task_id, force)  # sent before this task stops: they are its to end
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
            self._send_result(None, spec, [error_bytes(TaskCancelledError(spec.task_id.hex()))] * spec.num_returns,
                              True, inline=True)
            raise
        finally:
            self._outer.pop()
            core.current_task, self._running, self._log_mark = saved

    def on_scheduler_lost(self) -> None:
        # Without its scheduler this worker can do nothing useful; a new one will start fresh workers.
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
        elif op == Op.HOLD_CALLS:
            for conn, spec in self._held.set(msg[1]):
                self._run_task(conn, spec)  # in the order they came (or refused, when held too long)
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

                raise UpstreamError(to_bytes(serialize_error(ObjectLostError(ref.hex(), "not in the store")), b""))
            if copies is not None and not replay:
                copies.keep(ref._id, data)
        obj_kind, value = deserialize(data)
        if obj_kind == ObjectKind.ERROR:
            raise UpstreamError(bytes(data))  # a view onto the store cannot travel in the result
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
        if spec.kind == TaskKind.ACTOR_CALL and self._held.mode != RUN:  # its node lost the GCS a while ago
            if not self._held.keep(conn, spec):
                self._send_error(conn, spec, ActorUnavailableError(self._actor_name, HELD_TOO_LONG))
            return
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
            _agent.AGENT.task_started(label(spec), spec.task_id, spec.attempt)
        outcome: list | None = None
        failed = False
        call_seq = 0
        try:
            try:
                if spec.kind == TaskKind.ACTOR_CALL:
                    fn = self._method(spec)
                    if self._arg_copies is not None:
                        self._arg_copies.require_room(spec)  # before the call takes a place in the order
                    self._call_seq += 1
                    call_seq = self._call_seq
                    if core.gcs is not None:
                        # The order calls ran in, for replay after a restart.
                        row = core.gcs.actor_call(spec.actor_id, call_seq, spec)
                        self.results.order_rows.append((row, call_seq))
                        if spec.attempt > 0:
                            # Sent again after a restart: logged for sure before it runs, so that if it
                            # kills the actor again the next restart finds it (``_restart_loop``).
                            core.gcs.make_durable(row, f"the place of {spec.describe()}")
                if core.gcs is not None:
                    self._log_mark = self.results.own_log_rows()
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
                    # Runs the generator: cancellable, like the call.
                    value = self.results.stream(conn, spec, value, self._is_dynamic(spec), self._cancelled)
            finally:
                self._running = None
            outcome, failed = split_outcome(spec, value)  # failed: a generator raised after some results
            if self._checkpoint_every and spec.kind == TaskKind.ACTOR_CALL \
                    and self._call_seq % self._checkpoint_every == 0:
                self._save_checkpoint()
        except UpstreamError as up:
            failed = True
            outcome = [up.data] * result_count(spec)
        except KeyboardInterrupt:
            if spec.task_id not in self._cancelled:
                raise
            failed = True
            outcome = [error_bytes(TaskCancelledError(spec.task_id.hex()))] * result_count(spec)
        except ActorExit as exc:
            failed = True
            outcome = failed_outcome(spec, exc, self._actor_name)
            self._exit_reason = exc.reason  # calls after it fail from now on
        except BaseException as exc:
            failed = True
            outcome = [error_bytes(task_error(spec, exc))] * result_count(spec)
        finally:
            core.current_task = None
        sent = self._send_result(conn, spec, outcome, failed, call_seq, started_us, inline)
        if spec.kind == TaskKind.ACTOR_CALL:
            self._ran.ran(spec.task_id, *sent)  # as sent: a large result stays in the store, not in memory here
        if _agent.AGENT is not None:
            _agent.AGENT.task_finished(label(spec), spec.task_id, spec.attempt, failed)
        if spec.kind == TaskKind.NORMAL and not self._retiring and (self.env_error is not None or self._call_counts.ran(
                spec.function_id, self._functions.get(spec.function_id))):
            self._retire()  # ran its max_calls-th time here, or cannot set up its runtime_env
        if self._exit_reason is not None and spec.kind == TaskKind.ACTOR_CALL:
            self._end_actor()

    def _retire(self) -> None:
        """Take no more tasks: hand back what waits, and stop once the scheduler has them."""
        with self._cv:
            self._retiring = True
            returned = [m[1].task_id for _, m in self._inbox if m[0] == Op.EXECUTE]
            self._inbox = deque(item for item in self._inbox if item[1][0] != Op.EXECUTE)
        done = self.results.take_done()
        if done:
            self.core.scheduler.send((Op.TASKS_DONE, done))  # before the retirement, on the same connection
        self.core.scheduler.send_now((Op.RETIRE, returned))

    def _admit(self, conn: Connection | None, spec: TaskSpec, inline: bool = False) -> bool:
        """Whether ``spec`` is to run here now; if not, its outcome is sent (cancelled, replayed, too late)."""
        if spec.kind == TaskKind.ACTOR_CALL and spec.attempt > 0:
            replayed = self._replayed.pop(spec.task_id, None)
            if replayed is not None:
                # Its row is durable already: the caller need not log it, and the order of calls the
                # actor runs from now on is untouched. Before the exit check: it ran before the exit.
                self._send_result(conn, spec, *replayed)  # ran in the replay: the same outcome, not a second run
                self._claimed(spec.task_id)
                return False
        if spec.kind == TaskKind.ACTOR_CALL and (ran := self._ran.outcome(spec.task_id)) is not None:
            self._send_result(conn, spec, *ran)  # sent again by a caller whose connection broke: not run twice
            return False
        if self._exit_reason is not None and spec.kind == TaskKind.ACTOR_CALL:
            self._send_error(conn, spec, ActorDiedError(self._actor_name, self._exit_reason))
            return False
        if spec.task_id in self._cancelled:
            self._send_error(conn, spec, TaskCancelledError(spec.task_id.hex()), inline)
            return False
        if spec.kind == TaskKind.ACTOR_CALL and spec.attempt > 0:
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

    def _more_queued(self) -> bool:
        inbox = self._inbox
        return bool(inbox) and inbox[0][1][0] != _ADOPT

    def _send_error(self, conn: Connection | None, spec: TaskSpec, error: BaseException, inline: bool = False) -> None:
        self._send_result(conn, spec, errors(spec, error), True, inline=inline)

    def _send_result(self, conn: Connection | None, spec: TaskSpec, outcome: list, failed: bool,
                     call_seq: int = 0, started_us: int = 0, inline: bool = False) -> tuple[list, bool]:
        """Send a run's outcome through ``self.results`` (``ResultSender.send``), with what it needs from here;
        the outcome as sent."""
        concurrent = self._calls is not None and spec.kind == TaskKind.ACTOR_CALL
        more = self._calls.running > 1 if concurrent else self._more_queued()  # type: ignore[union-attr]
        return self.results.send(conn, spec, outcome, failed, call_seq=call_seq, started_us=started_us, inline=inline,
                          concurrent=concurrent, more=more, log_mark=self._log_mark, arg_copies=self._arg_copies)

    def _save_checkpoint(self) -> None:
        save_checkpoint(self.core, self._instance, self._actor_name, self._actor_id, self._call_seq)

    def _replay_calls(self, actor_id: bytes, restart: int, death: str | None) -> None:
        """Restore the newest checkpoint, then run again, in order, every call logged after it.

        A call that killed the actor at this very state before is not run again (``_restart_loop``).
        """
        plan = read_replay(self.core, actor_id, bool(self._checkpoint_every), death)
        if plan is None:
            return
        decision, calls = plan.decision, plan.calls
        if decision.mark is not None:
            # Durable before the call runs again: if it kills this process too, the next restart knows.
            gcs = self.core.gcs
            gcs.make_durable(gcs.actor_restart(actor_id, restart, *decision.mark), "a restart's mark")
        start = "its constructor"
        if plan.checkpoint is not None:
            after, data = plan.checkpoint
            self._instance.load_checkpoint(cloudpickle.loads(data))  # type: ignore[union-attr]
            self._covered = plan.covered  # type: ignore[assignment]
            self._call_seq = self.results.durable_call_seq = after
            start = f"its checkpoint after call {after}"
        for seq, task_id, method, args, kwargs, num_returns in decision.replay:
            call = TaskSpec(task_id, TaskKind.ACTOR_CALL, b"", "", b"", self._actor_name, args, kwargs,
                            num_returns, (), 0, 0, None, actor_id, method)
            self._replayed[task_id] = self._call(call)
            self._call_seq = self.results.durable_call_seq = seq
        self._unclaimed = {call[1] for call in decision.replay} - plan.finished
        for seq, task_id, method, _, _, num_returns in calls:
            if task_id in decision.poisoned:
                error = ActorRestartLoopError(
                    self._actor_name, f"{self._actor_name}.{method} (task {task_id.hex()})",
                    f"{start}, then the logged calls before call {seq} replayed", restart)
                self._replayed[task_id] = ([error_bytes(error)] * max(num_returns, 1), True)
        self._call_seq = self.results.durable_call_seq = max(self._call_seq, calls[-1][0] if calls else 0)
        if decision.newly_poisoned is not None:
            log.warning("actor %s: call %s killed it again at the same state (place %d): it fails with "
                        "ActorRestartLoopError instead of running again", actor_id.hex(),
                        decision.newly_poisoned[0].hex(), decision.newly_poisoned[1])
        log.info("actor %s replayed %d logged calls", actor_id.hex(), len(decision.replay))
        if _agent.AGENT is not None:
            _agent.AGENT.note("actor_restarted", actor=actor_id.hex(), replayed=len(decision.replay),
                              looping_calls=len(decision.poisoned))

    def _call(self, spec: TaskSpec) -> tuple[list, bool]:
        """Run one actor method as replay does: its outcome, nothing sent or logged."""
        try:
            copies = self._arg_copies
            args = [self._arg(a, copies, replay=True) for a in spec.args]
            kwargs = {k: self._arg(v, copies, replay=True) for k, v in spec.kwargs.items()} if spec.kwargs else {}
            value = self._method(spec)(*args, **kwargs)
            if spec.num_returns == STREAMING:
                # Its effects again; its values were read.
                value = stream_end(spec.task_id, spec.owner_addr, sum(1 for _ in iterator_of(spec, value)),
                                   self._is_dynamic(spec))
            return split_outcome(spec, value)
        except UpstreamError as up:
            return [up.data] * result_count(spec), True
        except ActorExit as exc:
            # It ended itself in its last life, and died before the scheduler heard: it ends again
            # once it is up (``_become_actor``), and the calls after it fail naming the exit.
            self._exit_reason = exc.reason
            return failed_outcome(spec, exc, self._actor_name), True
        except BaseException as exc:
            return [error_bytes(task_error(spec, exc))] * result_count(spec), True

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
            _agent.AGENT.task_started(label(spec), spec.task_id, spec.attempt)
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
                    value = self.results.stream(conn, spec, value, self._is_dynamic(spec), self._cancelled)
                outcome, failed = split_outcome(spec, value)
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
                    value = await self.results.stream_async(conn, spec, value, self._is_dynamic(spec))
                elif spec.num_returns == STREAMING:
                    value = self.results.stream(conn, spec, value, self._is_dynamic(spec), self._cancelled)
                elif inspect.isawaitable(value):
                    value = await value
                outcome, failed = split_outcome(spec, value)
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
            _agent.AGENT.task_finished(label(spec), spec.task_id, spec.attempt, failed)
        if self._exit_reason is not None:
            self._end_actor()

    def _failed_concurrent(self, spec: TaskSpec, exc: BaseException) -> list:
        if isinstance(exc, ActorExit):
            self._exit_reason = exc.reason  # calls not started yet fail from now on
        return failed_outcome(spec, exc, self._actor_name)

    # -- an actor ending itself ----------------------------------------------------------

    def _is_dynamic(self, spec: TaskSpec) -> bool:
        """Whether a streaming task was called with ``num_returns="dynamic"`` (its function says so)."""
        if spec.kind == TaskKind.ACTOR_CALL:
            return is_dynamic(getattr(type(self._instance), spec.method or "", None))
        return is_dynamic(self._functions.get(spec.function_id))

    def _method(self, spec: TaskSpec) -> Any:
        if spec.method == READY_METHOD:
            return ready
        if spec.method == TERMINATE_METHOD:
            if self._calls is not None and self._calls.concurrency.is_async:
                return self._terminate_async
            return self._terminate
        return getattr(self._instance, spec.method)  # type: ignore[arg-type]

    def _terminate(self) -> None:
        """``__ray_terminate__``: the calls before it are done (a concurrent actor's: waited for)."""
        while self._calls is not None and self._calls.running > 1:
            time.sleep(TERMINATE_POLL_S)
        raise ActorExit(TERMINATED)

    async def _terminate_async(self) -> None:
        while self._calls is not None and self._calls.running > 1:
            await asyncio.sleep(TERMINATE_POLL_S)
        raise ActorExit(TERMINATED)

    def _end_actor(self) -> None:
        """The actor ended itself: the scheduler marks it dead for good (no restart) and stops this process."""
        with self._order_lock:
            if self._ended:
                return
            self._ended = True
        log.info("actor %s ends: %s", (self._actor_id or b"").hex(), self._exit_reason)
        self.results.deliver_all((self._actor_id or b"").hex())
        self.core.scheduler.send_now((Op.ACTOR_FAILED, self._actor_id, None, self._exit_reason))

    def _restore_without_replay(self, actor_id: bytes, use_checkpoint: bool, why: str) -> None:
        """A restart from the constructor (and the newest checkpoint, if ``use_checkpoint``) only.

        A concurrent actor's calls ran together, in no order a replay could
        repeat; an actor created with ``restart_from="constructor"`` asked
        for Ray's restart. The calls logged after that start are not run
        again, and what they did to its state is gone. Said here, in the log
        line and the chaos note, never restored silently wrong
        (docs/fault-tolerance.md).
        """
        restore = read_restore(self.core, actor_id, use_checkpoint and bool(self._checkpoint_every))
        if restore is None:
            return
        after, lost = restore.after, restore.lost
        if restore.checkpoint is not None:
            self._instance.load_checkpoint(cloudpickle.loads(restore.checkpoint[1]))  # type: ignore[union-attr]
            self._covered = restore.covered
        # New calls take places after every logged one: a place is never logged twice.
        self._call_seq = self.results.durable_call_seq = max(after, lost[-1][0] if lost else 0)
        self._checkpoint_seq = after
        start = f"its checkpoint after call {after}" if restore.checkpoint is not None else "its constructor"
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
                    self.results.late_hashes()  # made once here, not raced for by the calls' threads
            if restarts and core.gcs is not None:
                if restart_from == RESTART_FROM_CONSTRUCTOR:
                    self._restore_without_replay(spec.actor_id, False, "restart_from=\"constructor\"")  # type: ignore[arg-type]
                elif self._calls is not None:
                    self._restore_without_replay(spec.actor_id, True, "it runs calls concurrently")  # type: ignore[arg-type]
                else:
                    self._replay_calls(spec.actor_id, restarts, death)  # type: ignore[arg-type]
        except UpstreamError as up:
            core.scheduler.send_now((Op.ACTOR_FAILED, spec.actor_id, up.data, "an argument of its constructor failed"))
            return
        except BaseException as exc:
            error = task_error(spec, exc)
            reason = f"its constructor raised {exc!r}:\n{getattr(error, 'traceback_str', '')}"
            core.scheduler.send_now((Op.ACTOR_FAILED, spec.actor_id, error_bytes(error), reason))
            return
        finally:
            core.current_task = None
        core.scheduler.send_now((Op.ACTOR_READY, spec.actor_id, core.address))
        if self._exit_reason is not None:
            self._end_when_claimed()  # its replay ran the call that ended it

    def _end_when_claimed(self) -> None:
        """The replay ran the call that ended the actor: it ends once the callers of the calls replayed
        before it took their outcomes (their results died with the last process), or after ``CLAIM_WAIT_S``."""
        self._unclaimed &= self._replayed.keys()
        if not self._unclaimed:
            self._end_actor()
            return
        timer = threading.Timer(CLAIM_WAIT_S, self._end_actor)
        timer.daemon = True
        timer.start()

    def _claimed(self, task_id: bytes) -> None:
        """A replayed call's caller took its outcome: the last one lets an ended actor go."""
        if task_id in self._unclaimed:
            self._unclaimed.discard(task_id)
            if not self._unclaimed and self._exit_reason is not None:
                self._end_actor()

