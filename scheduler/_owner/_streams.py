"""Streaming generator tasks from the owner's side: the values they yield, by index, while they run.

A streaming task (``num_returns`` is ``STREAMING``) returns one object, its
*end*: the number of values it yielded, or the error that ended it. Each
value it yields is an object of its own (``item_id(task, index)``), sent by
the worker as it is made (``Op.STREAM_ITEM``), logged here as an object of
the task by index, and read through the same gate as any result: only once
its row is committed.

An ``ObjectRefGenerator`` asks for the index it is at (``want``): the
entry is made pending if the value has not come yet, so ``get`` and
``wait`` can wait for it. When the task ends, every pending index at or past
the number of values it yielded is resolved, so no wait outlives the stream:
with the task's error (the first one past a failure), or as past the end.

A value that has come once is never taken in again: a run of the task again
(a retry, or a rebuild of a lost value) yields the same values, and only
the missing ones are taken (``on_item``), so nothing read is published twice.

``Streams`` is a part of the owner: its tables are guarded by the owner's
lock, and it must never send or block while holding it (freeing store copies
is queued on the store connection, which never blocks).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from ember.exceptions import ObjectLostError
from ember.scheduler._object_ref import ObjectRef
from ember.scheduler._owner._links import Links
from ember.scheduler._owner._objects import ObjectEntry, ObjectState, ObjectTable
from ember.scheduler._protocol import Op
from ember.scheduler._spec import TaskSpec, item_id, object_id, task_of
from ember.store import deserialize, is_error, serialize_error, to_bytes

__all__ = ["END_OF_STREAM", "Streams"]


class _EndOfStream(Exception):
    """The value of an index past a stream's end: a generator stops there, never hands it out."""


END_OF_STREAM = to_bytes(serialize_error(_EndOfStream("the generator task yielded no value at this index")), b"")


class _Stream:
    __slots__ = ("arrived", "end", "failed", "wanted", "dropped", "dynamic")

    def __init__(self, dynamic: bool) -> None:
        # num_returns="dynamic": no generator reads it; its end's value holds the refs of its values, so
        # what nobody took a ref to is freed when the last ref to its end goes (``on_end_released``).
        self.dynamic = dynamic
        self.arrived: set[int] = set()  # indexes whose value has come (from any attempt)
        self.end: int | None = None  # once the task ended: how many indexes hold a value (a failure's included)
        self.failed = False
        self.wanted: set[int] = set()  # indexes a generator waits on before their value came
        self.dropped = False  # its generator is gone: values that come now are freed


class Streams:
    """The streaming tasks this process submitted, and the values they yielded so far."""

    def __init__(self, address: str, lock: Any, objects: ObjectTable, links: Links,
                 set_changed: Callable[[], None]) -> None:
        self._address = address  # the owner's: every value's ref names it
        self._lock = lock
        self._objects = objects
        self._entries = objects.entries
        self._links = links
        self._set_changed = set_changed
        self._streams: dict[bytes, _Stream] = {}
        self.gcs: Any = None  # the lineage log, once the owner opened it

    def open(self, task_id: bytes, dynamic: bool = False) -> None:
        """A streaming task was submitted (under the lock)."""
        self._streams[task_id] = _Stream(dynamic)

    @property
    def active(self) -> bool:
        return bool(self._streams)

    def held_by_end(self, oid: bytes) -> bool:
        """Whether ``oid`` is a value of a dynamic task whose end is still held (under the lock): its end's
        value names it, so a ref to it can be made again (``get`` of the end once more) while the end lives."""
        stream = self._streams.get(task_of(oid))
        return stream is not None and stream.dynamic and not stream.dropped and oid != object_id(task_of(oid), 1)

    def on_end_released(self, oid: bytes) -> None:
        """The last ref here to ``oid`` went (under the lock): if it is a dynamic task's end that was
        never passed on, the values nobody took a ref to are freed, now and as they come."""
        task_id = task_of(oid)
        stream = self._streams.get(task_id)
        if stream is None or not stream.dynamic or oid != object_id(task_id, 1) \
                or self._objects.refcounts.get(oid, 0) > 0:
            return
        entry = self._entries.get(oid)
        if entry is None or not entry.shared:  # passed on: its refs may be read anywhere, as it is
            self.drop(task_id)

    def on_item(self, spec: TaskSpec | None, task_id: bytes, index: int, oid: bytes, data: bytes | None,
                size: int, digest: bytes | None, where: str | None) -> ObjectEntry | None:
        """A value the task yielded (under the lock). ``spec``: the task's, if it is still pending here.

        Returns its entry if it was taken in (None: not wanted, or had already come)."""
        stream = self._streams.get(task_id)
        entry = self._entries.get(oid)
        if entry is None and (stream is None or stream.dropped or spec is None or oid != item_id(task_id, index)):
            if data is None:
                self._links.store.send((Op.FREE, [oid]))  # nobody will read it: its store copy goes
            return None
        if spec is None or (entry is not None and entry.state is not ObjectState.PENDING):
            return None  # a stale attempt's, or delivered already: the same value, not published twice
        if entry is None:
            entry = self._entries[oid] = ObjectEntry()
        if stream is not None:
            stream.arrived.add(index)
            stream.wanted.discard(index)
        if self.gcs is not None:
            entry.log_seq = self.gcs.yielded(task_id, spec.job_id, oid, size, digest)
        entry.set_ready(data, size, where)
        self._set_changed()
        return entry

    # -- what an ObjectRefGenerator asks (each takes the owner's lock) ---------------------

    def ref_to(self, task_id: bytes, index: int) -> ObjectRef:
        """A ref to value ``index`` of a streaming task this process submitted (pending until it comes)."""
        with self._lock:
            return ObjectRef(self.want(task_id, index), self._address)

    def came(self, task_id: bytes, index: int) -> tuple[ObjectRef, bool] | None:
        """Value ``index`` if it has come, or the stream has ended: (its ref, past the end?); None: not yet."""
        with self._lock:
            oid = self.want(task_id, index)
            if self._entries[oid].state is ObjectState.PENDING:
                return None
            return ObjectRef(oid, self._address), self.past_end(task_id, index)

    def ended_before(self, task_id: bytes, index: int) -> bool:
        """``past_end``, for a caller that does not hold the lock."""
        with self._lock:
            return self.past_end(task_id, index)

    def generator_gone(self, task_id: bytes) -> None:
        """The generator of a streaming task is gone: what it did not hand out is freed (``drop``)."""
        if not self._lock.acquire(blocking=False):
            # Called by the garbage collector, from whichever thread it interrupts (see ``Owner.decref``).
            threading.Thread(target=self.generator_gone, args=(task_id,), daemon=True).start()
            return
        try:
            self.drop(task_id)
        finally:
            self._lock.release()

    # -- under the lock --------------------------------------------------------------------

    def want(self, task_id: bytes, index: int) -> bytes:
        """The object id of value ``index``, with an entry to wait on (under the lock)."""
        oid = item_id(task_id, index)
        stream = self._streams.get(task_id)
        if oid not in self._entries:
            entry = self._entries[oid] = ObjectEntry()
            if stream is None or stream.end is not None:
                self._resolve(oid, entry, stream, index)  # ended (or unknown here): never coming
            else:
                stream.wanted.add(index)
        return oid

    def past_end(self, task_id: bytes, index: int) -> bool:
        """Whether the task ended with fewer than ``index + 1`` values: a generator stops there."""
        stream = self._streams.get(task_id)
        return stream is None or (stream.end is not None and index >= stream.end)

    def on_end(self, spec: TaskSpec, end: tuple) -> None:
        """The task ended (``_finish``, under the lock): ``end`` is its end object's (id, bytes, size)."""
        stream = self._streams.get(spec.task_id)
        if stream is None or stream.end is not None:
            return
        data = end[1]
        if data is not None and is_error(data):
            # The run failed as a whole: its error is the value after the last one that came.
            stream.failed = True
            stream.end = (max(stream.arrived) + 1 if stream.arrived else 0) + 1
            failure = data
        else:
            # A dynamic task's end holds its values' refs (not read here); an attempt sends every value
            # before its end, so all of them have come.
            stream.end = int(deserialize(data)[1]) if data is not None and not stream.dynamic \
                else len(stream.arrived)
            failure = None
        for index in sorted(stream.wanted):
            oid = item_id(spec.task_id, index)
            entry = self._entries.get(oid)
            if entry is not None and entry.state is ObjectState.PENDING:
                self._resolve(oid, entry, stream, index, failure)
        stream.wanted.clear()
        if stream.dropped:
            self._free_unheld(spec.task_id, stream)
            del self._streams[spec.task_id]
        self._set_changed()

    def _resolve(self, oid: bytes, entry: ObjectEntry, stream: _Stream | None, index: int,
                 failure: bytes | None = None) -> None:
        """A waited-for index the ended task will never send: past its end, its failure, or lost."""
        entry.state = ObjectState.READY_INLINE
        if stream is None or stream.end is None or index >= stream.end:
            entry.data = END_OF_STREAM
        elif stream.failed and index == stream.end - 1 and failure is not None:
            entry.data = failure
        else:
            # Only a bug gets here: an attempt sends its values before its end, on one connection.
            entry.data = to_bytes(serialize_error(ObjectLostError(
                oid.hex(), f"value {index} of the generator task never reached its owner")), b"")

    def drop(self, task_id: bytes) -> None:
        """Its generator is gone (under the lock): values nobody holds a ref to are freed, now and
        as they come; the stream is forgotten once the task has ended too."""
        stream = self._streams.get(task_id)
        if stream is None:
            return
        stream.dropped = True
        self._free_unheld(task_id, stream)
        if stream.end is not None:
            del self._streams[task_id]

    def _free_unheld(self, task_id: bytes, stream: _Stream) -> None:
        refcounts = self._objects.refcounts
        freed = []
        for index in [*stream.arrived, *stream.wanted]:
            oid = item_id(task_id, index)
            entry = self._entries.get(oid)
            if entry is None or refcounts.get(oid, 0) > 0 or entry.shared:
                continue
            if entry.state is ObjectState.PENDING:
                entry.dropped = True  # forgotten when it is resolved
                continue
            del self._entries[oid]
            if entry.state is ObjectState.READY_STORE:
                freed.append(oid)
        if freed:
            self._links.store.send((Op.FREE, freed))
