"""How a worker's results leave it: to their owners, in order, never ahead of their lineage.

The executor runs user code; the ``ResultSender`` it holds sends what that
code made. A task's result goes to its owner once the rows it rests on are
committed; an actor call's result may be held until the actor's own rows
are durable, and the log writer's thread releases it (``release_held``), so
the actor runs on meanwhile. A streaming task's values leave one by one, as
its generator yields them.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import weakref
from collections import deque
from collections.abc import Container
from typing import TYPE_CHECKING, Any

from ember.exceptions import LineageLogUnavailableError, SerializationError
from ember.scheduler._actor_args import ActorArgCopies
from ember.scheduler._object_ref import stream_end
from ember.scheduler._outcomes import RaisedResult, SentResult, error_bytes, errors, iterator_of, task_error
from ember.scheduler._owner import INLINE_BYTES_MAX
from ember.scheduler._protocol import Connection, Op
from ember.scheduler._spec import TaskKind, TaskSpec, item_id
from ember.store import LateHashes, content_hash, copy_wanted, serialize, to_bytes

if TYPE_CHECKING:
    from ember.scheduler._owner import Owner

log = logging.getLogger("ember.executor")

DONE_BATCH_MAX = 16  # completions told to the scheduler in one message, at most


class ResultSender:
    """Sends a worker's results and streamed values, and keeps what that takes.

    It owns: the completions not yet told to the scheduler, an actor's
    call-order rows not known durable, the results held for them, the
    callers' connections results went to, and the hasher of large results.
    """

    def __init__(self, core: Owner) -> None:
        self.core = core
        self._done: list[bytes] = []
        self.last_caller: str | None = None  # the process whose call the actor ran last
        # (log seq, place) of call-order rows not known durable yet, oldest
        # first; ``durable_call_seq`` is the last place known durable. Results
        # tell callers the latter, so they can forget what they kept.
        self.order_rows: deque[tuple[int, int]] = deque()
        self.durable_call_seq = 0
        self._hasher: LateHashes | None = None  # hashes store results after they are sent
        # Actor results waiting, in order, for rows to be durable (see
        # ``send``); the log's writer thread sends them, so the actor runs on.
        self._held: deque[tuple[int, Connection, tuple]] = deque()
        self._held_lock = threading.Lock()
        # The callers' connections results were sent on: flushed before the actor ends, adopted
        # or not (a result batched behind a queued call would otherwise die with the process).
        self._callers: weakref.WeakSet[Connection] = weakref.WeakSet()

    # -- results ------------------------------------------------------------------------

    def send(self, conn: Connection | None, spec: TaskSpec, outcome: list, failed: bool, *, call_seq: int,
             started_us: int, inline: bool, concurrent: bool, more: bool, log_mark: int,
             arg_copies: ActorArgCopies | None) -> tuple[list[SentResult], bool]:
        """Send a task's outcome to its owner, and return it as sent (and whether it failed); ``call_seq``: an actor call's place in the actor's order;
        ``started_us``: when its run began (epoch microseconds; 0 if it did not run here); ``concurrent``:
        a call of an actor that runs calls together; ``more``: more work waits behind this one;
        ``log_mark``: the rows logged before the task's own.

        An actor call's result leaves before its order row is durable when the
        call's caller also made the call before it: the caller keeps the
        calls the result says are not durable yet, and a restarted actor has
        the caller of its last logged call log and commit them (see
        ``_actor_recovery``). When the caller changes, the row must be durable
        first, so a call another caller saw never rests on rows only a dead
        process had.
        """
        core = self.core
        # What the task submitted leaves before its result does: whoever sees
        # the task finish may rely on its calls having been sent, and on the
        # lineage it logged being durable.
        core.flush()
        gcs = core.gcs
        # Rows the task logged itself; a late hash of an earlier result (logged
        # by the hashing thread meanwhile) is nobody's lineage and waits for no one.
        must_commit = not concurrent and gcs is not None and self.own_log_rows() > log_mark
        hold = False
        if concurrent:
            # Calls of a concurrent actor interleave: the result of one that ran waits for every
            # row logged before it is sent (its place in the start order, what it logged itself).
            hold = gcs is not None and bool(call_seq or self._held)
        elif spec.kind == TaskKind.ACTOR_CALL:
            switched = call_seq and spec.owner_addr != self.last_caller
            if call_seq:
                self.last_caller = spec.owner_addr
            hold = gcs is not None and bool(must_commit or switched or self._held)
        if must_commit and not hold and not inline:  # an inline result stays here: the outer task's waits cover it
            try:
                gcs.make_durable(gcs.writer.appended_seq, f"the result of {spec.describe()}")  # type: ignore[union-attr]
            except LineageLogUnavailableError as exc:
                # Nothing the task made leaves without its lineage: its caller gets the error instead.
                outcome, failed = errors(spec, exc), True
        results = []
        # A failed run's outcome is its errors, serialized; but a generator that raised partway made values
        # before its errors (``RaisedResult``), and those go as any value does.
        all_errors = failed and not any(isinstance(value, RaisedResult) for value in outcome)
        for oid, value in zip(spec.return_ids(), outcome):
            if isinstance(value, SentResult):  # sent before: as it went then (its store copy, if any, kept)
                results.append((oid, value.data, value.size))
                continue
            if all_errors or isinstance(value, RaisedResult):
                data = value.data if isinstance(value, RaisedResult) else value
                results.append((oid, data, len(data)))
                continue
            try:
                obj = serialize(value)
            except SerializationError as exc:
                failed = True
                data = error_bytes(exc)
                results.append((oid, data, len(data)))
                continue
            if obj.total_size <= INLINE_BYTES_MAX:
                data = to_bytes(obj, oid)
                results.append((oid, data, len(data)))
            else:
                core.writes.write_to_store(oid, obj)
                results.append((oid, None, obj.total_size))
                if spec.kind == TaskKind.ACTOR_CALL and arg_copies is not None and copy_wanted(obj.total_size):
                    view = core.files.open(oid)
                    if view is not None:
                        arg_copies.keep_result(oid, view)
        # What each result was, for replay to compare against: inline ones
        # now (about a microsecond when small), store ones after the send.
        hashes = [content_hash(data) if data is not None else None for _, data, _ in results] \
            if gcs is not None and not failed else None
        msg = (Op.TASK_RESULT, spec.task_id, spec.attempt, results, failed, call_seq,
               call_seq if hold else self.durable_through(), hashes, started_us,
               os.getpid() if started_us else 0, core.node_id if started_us else None)
        # With more work queued behind this task, results and completions
        # leave in batches (the writer thread flushes them within a moment);
        # with none, at once, since someone is likely waiting. An actor's
        # results go by the connection's own rule instead (``Connection.send``):
        # at once after a quiet spell (a synchronous caller, who waits for each),
        # gathered during a burst. Its queue is empty after most calls of a
        # burst too (it runs them as fast as they come), and one frame per
        # result there cost its caller a read and a wake-up each (+26% calls/s).
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
                conn.send(msg)  # type: ignore[union-attr]
        elif inline:
            core.take_result(msg)  # this process owns it, and the scheduler no longer counts it
        else:
            core.links.send_to(spec.owner_addr, msg, flush=not more, keep=True)
            self._done.append(spec.task_id)
            if not more or len(self._done) >= DONE_BATCH_MAX:
                core.scheduler.send_now((Op.TASKS_DONE, self.take_done()))
        core.store.flush()
        if hashes is not None:
            for oid, data, size in results:
                if data is None:
                    self.late_hashes().schedule(oid, size)
        return [SentResult(data, size) for _, data, size in results], failed

    def take_done(self) -> list[bytes]:
        """The completions not yet told to the scheduler; forgotten here."""
        done, self._done = self._done, []
        return done

    def own_log_rows(self) -> int:
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

    def late_hashes(self) -> LateHashes:
        if self._hasher is None:
            gcs = self.core.gcs
            self._hasher = LateHashes(self.core.files.open, gcs.content_hash)
        return self._hasher

    def durable_through(self) -> int:
        """The last place in the actor's order whose row is known durable."""
        gcs = self.core.gcs
        rows = self.order_rows
        if gcs is not None:
            committed = gcs.writer.committed_seq
            while rows and rows[0][0] <= committed:
                self.durable_call_seq = rows.popleft()[1]
        return self.durable_call_seq

    def release_held(self, committed_seq: int) -> None:
        """Send, in order, the held results whose rows are now durable (any thread)."""
        with self._held_lock:
            ready = []
            while self._held and self._held[0][0] <= committed_seq:
                ready.append(self._held.popleft())
            for _, conn, msg in ready:  # under the lock: results leave in the order they were made
                conn.send(msg)

    def deliver_all(self, actor: str) -> None:
        """Before an actor ends: every result it made reaches its caller (held ones once durable)."""
        core = self.core
        core.flush()
        gcs = core.gcs
        if gcs is not None:
            try:
                gcs.make_durable(gcs.writer.appended_seq, "the results the actor made before its end")
            except LineageLogUnavailableError as exc:
                log.error("actor %s ends with results still held: %s", actor, exc)
            self.release_held(gcs.writer.committed_seq)
        for conn in list(self._callers):
            conn.flush()  # results batched behind the calls queued after them leave now

    # -- streaming generators: each value sent to the owner as it is made -----------------

    def stream(self, conn: Connection, spec: TaskSpec, value: Any, dynamic: bool,
               cancelled: Container[bytes]) -> Any:
        """Run a streaming task's generator, sending each value it yields; its end (``stream_end``).

        An exception the generator raises is its last value: the reader's
        ``get`` of the next ref raises it, and the task itself ends well (with
        ``num_returns="dynamic"`` too, ``dynamic``: as Ray's doc says, "the
        exception is stored in the final ObjectRef"). ``cancelled``: the task
        ids cancelled here.
        """
        iterator = iterator_of(spec, value)
        sent = 0
        while True:
            try:
                item = next(iterator)
            except StopIteration:
                return stream_end(spec.task_id, spec.owner_addr, sent, dynamic)
            except KeyboardInterrupt:
                if spec.task_id in cancelled:
                    raise  # cancelled: the task ends as cancelled
                return self._stream_failed(conn, spec, sent, KeyboardInterrupt(), dynamic)
            except Exception as exc:  # noqa: BLE001 - user code: its exception is the stream's last value
                return self._stream_failed(conn, spec, sent, exc, dynamic)
            self.send_item(conn, spec, sent, item)
            sent += 1

    async def stream_async(self, conn: Connection, spec: TaskSpec, value: Any, dynamic: bool) -> Any:
        """``stream`` for an async generator method of an async actor."""
        sent = 0
        iterator = value.__aiter__()
        while True:
            try:
                item = await iterator.__anext__()
            except StopAsyncIteration:
                return stream_end(spec.task_id, spec.owner_addr, sent, dynamic)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - user code: its exception is the stream's last value
                return self._stream_failed(conn, spec, sent, exc, dynamic)
            self.send_item(conn, spec, sent, item)
            sent += 1

    def _stream_failed(self, conn: Connection, spec: TaskSpec, sent: int, exc: BaseException, dynamic: bool) -> Any:
        """The generator raised after ``sent`` values: its error is the stream's last value (the stream's
        end returned, counting it)."""
        self.send_item(conn, spec, sent, error_bytes(task_error(spec, exc)), True)
        return stream_end(spec.task_id, spec.owner_addr, sent + 1, dynamic)

    def send_item(self, conn: Connection, spec: TaskSpec, index: int, value: Any, is_error: bool = False) -> None:
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
                obj, data = None, error_bytes(exc)
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
            core.links.send_to(spec.owner_addr, msg, flush=True, keep=True)
        core.store.flush()
