"""ObjectRefGenerator: the refs a streaming generator task yields, in order, each as soon as it is made.

``for ref in gen.remote(...)`` (or ``async for``) hands out one ref per
value the task yields, while the task still runs; ``ember.get`` of a ref
waits only for that value. An exception the task raised mid-stream is the
value of the ref after the last good one. After the last value, iteration
stops.

Only the process that submitted the task can read its generator (it owns
the values): a generator does not pickle. This module must never block the
owner's lock while it waits (it waits through ``Owner.wait``).
"""

from __future__ import annotations

import asyncio
from typing import Any

from ember.exceptions import GetTimeoutError
from ember.scheduler import _context
from ember.scheduler._object_ref import ObjectRef

__all__ = ["ObjectRefGenerator"]


class ObjectRefGenerator:
    """An iterator of ObjectRefs over the values of a streaming generator task."""

    __slots__ = ("_end", "_task_id", "_index", "_owner", "_probe", "__weakref__")

    def __init__(self, end: ObjectRef) -> None:
        self._end = end  # the task's end object: how many values it yielded, or its error
        self._task_id = end.task_id().binary()
        self._index = 0  # the next value to hand out
        self._owner = _context.require_core()
        # The ref to the next value, held from when it is first asked for until it is handed out:
        # a value nobody holds a ref to is freed when its last ref goes.
        self._probe: ObjectRef | None = None

    def __iter__(self) -> "ObjectRefGenerator":
        return self

    def __next__(self) -> ObjectRef:
        return self._next(None)

    def _next(self, timeout_s: float | None) -> ObjectRef:
        """The ref of the next value, once it is made (``timeout_s``: at most that long)."""
        came = self._owner.streams.came(self._task_id, self._index)  # made already: no wait at all
        if came is not None:
            ref, past_end = came
        else:
            ref = self.probe()
            ready, _ = self._owner.wait([ref], 1, timeout_s)
            if not ready:
                raise GetTimeoutError(f"the next value of {self!r} was not made within {timeout_s}s")
            past_end = self._owner.streams.ended_before(self._task_id, self._index)
        if past_end:
            raise StopIteration
        self._index += 1
        self._probe = None  # the caller's now
        return ref

    def probe(self) -> ObjectRef:
        """A ref that is ready once the next value is made, or the stream has ended (for ``ember.wait``)."""
        if self._probe is None:
            self._probe = self._owner.streams.ref_to(self._task_id, self._index)
        return self._probe

    def __aiter__(self) -> "ObjectRefGenerator":
        return self

    async def __anext__(self) -> ObjectRef:
        # The wait runs on a thread: the event loop goes on meanwhile.
        found = await asyncio.get_running_loop().run_in_executor(None, self._next_or_none)
        if found is None:
            raise StopAsyncIteration
        return found

    def _next_or_none(self) -> ObjectRef | None:
        try:
            return self._next(None)
        except StopIteration:
            return None

    def completed(self) -> ObjectRef:
        """A ref ready when the task has ended; its value is how many values it yielded (or its error)."""
        return self._end

    def task_id(self) -> Any:
        return self._end.task_id()

    def __del__(self) -> None:
        owner = _context.PROCESS.owner
        if owner is self._owner:
            try:
                owner.streams.generator_gone(self._task_id)
            except Exception:  # interpreter shutdown: nothing left to free
                pass

    def __reduce__(self) -> tuple[Any, ...]:
        raise TypeError("an ObjectRefGenerator cannot be passed to another process: only the process that "
                        "submitted the task reads its values; pass the refs it yields instead")

    def __repr__(self) -> str:
        return f"ObjectRefGenerator({self._task_id.hex()}, next={self._index})"

