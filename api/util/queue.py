"""``ember.util.queue.Queue``: a first-in, first-out queue held by an actor, as Ray's ``ray.util.queue``.

The items live in one actor (``_QueueActor``) whose every call is an
ordinary actor call: logged in order, so an actor whose process dies is
restarted and replays them, and comes back holding exactly the items it held
(docs/fault-tolerance.md, "ember.util"). That is why the queue's actor is
created with ``max_restarts=-1`` and ``max_task_retries=-1`` unless
``actor_options`` says otherwise.

Blocking is done here, in the caller, never in the actor: the actor runs one
call at a time, so a ``get`` that waited inside it would stop every ``put``.
A blocking ``put``/``get`` asks with a non-blocking call and asks again after
a pause that grows from ``POLL_S_MIN`` to ``POLL_S_MAX``, until it succeeds
or its ``timeout`` passes; ``put_async``/``get_async`` do the same with
``await`` (one schedule of pauses, ``_pauses``, drives both). The actor must never block and never raise for a
full or empty queue: it answers, and the caller raises ``Full``/``Empty``.
"""

from __future__ import annotations

import asyncio
import queue as _stdlib_queue
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Iterator
from typing import Any

from ember._actor import ActorClass
from ember._runtime import get, kill, wait

__all__ = ["Empty", "Full", "POLL_S_MAX", "POLL_S_MIN", "Queue"]

POLL_S_MIN = 0.005  # the first pause of a blocked put/get before it asks the actor again
POLL_S_MAX = 0.1  # the longest pause: a blocked call notices a change within this much
_DEFAULT_ACTOR_OPTIONS = {"max_restarts": -1, "max_task_retries": -1}


class Empty(_stdlib_queue.Empty):
    """``get`` found the queue empty (at once, or for its whole timeout)."""


class Full(_stdlib_queue.Full):
    """``put`` found the queue full (at once, or for its whole timeout)."""


class _QueueActor:
    """The queue's items. Every method answers at once: it never blocks and never raises for full or empty."""

    def __init__(self, maxsize: int) -> None:
        self.maxsize = maxsize
        self.items: deque[Any] = deque()

    def qsize(self) -> int:
        return len(self.items)

    def _room(self) -> int | None:
        return None if self.maxsize <= 0 else self.maxsize - len(self.items)

    def try_put(self, item: Any) -> bool:
        room = self._room()
        if room is not None and room < 1:
            return False
        self.items.append(item)
        return True

    def try_put_batch(self, items: list[Any]) -> bool:
        room = self._room()
        if room is not None and room < len(items):
            return False  # all or nothing, as Ray's put_nowait_batch
        self.items.extend(items)
        return True

    def try_get(self) -> tuple[bool, Any]:
        if not self.items:
            return False, None
        return True, self.items.popleft()

    def try_get_batch(self, count: int) -> tuple[bool, list[Any]]:
        if count > len(self.items):
            return False, []
        return True, [self.items.popleft() for _ in range(count)]


def _pauses(block: bool, deadline: float | None) -> Iterator[float]:
    """The pauses between the attempts of a put/get: none without ``block``, growing, until ``deadline``."""
    pause_s = POLL_S_MIN
    while block:
        now = time.monotonic()
        if deadline is not None and now >= deadline:
            return
        yield pause_s if deadline is None else min(pause_s, deadline - now)
        pause_s = min(pause_s * 2, POLL_S_MAX)


def _check_timeout(block: bool, timeout: float | None) -> float | None:
    """The deadline of a blocking call (None: none); a bad timeout is the caller's error."""
    if not block or timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout < 0:
        raise ValueError(f"'timeout' must be a non-negative number, got {timeout!r}")
    return time.monotonic() + timeout


class Queue:
    """A FIFO queue that tasks and actors share: pass it to them like any value.

    ``maxsize`` <= 0 means unbounded. ``actor_options`` go to the queue
    actor's ``.options(...)`` (resources, a name), over the defaults
    ``max_restarts=-1, max_task_retries=-1`` that let it outlive its process.
    """

    def __init__(self, maxsize: int = 0, actor_options: dict[str, Any] | None = None) -> None:
        if isinstance(maxsize, bool) or not isinstance(maxsize, int):
            raise TypeError(f"maxsize must be an int, got {maxsize!r} (type={type(maxsize).__name__})")
        if actor_options is not None and not isinstance(actor_options, dict):
            raise TypeError(f"actor_options must be a dict of actor options, got a {type(actor_options).__name__}")
        self.maxsize = maxsize
        options = {**_DEFAULT_ACTOR_OPTIONS, **(actor_options or {})}
        self.actor: Any = ActorClass(_QueueActor, options).remote(maxsize)

    def _live_actor(self) -> Any:
        if self.actor is None:
            raise RuntimeError("this queue was shut down (Queue.shutdown())")
        return self.actor

    # -- sizes ---------------------------------------------------------------------------

    def __len__(self) -> int:
        return self.size()

    def size(self) -> int:
        """The number of items in the queue now."""
        return get(self._live_actor().qsize.remote())

    def qsize(self) -> int:
        return self.size()

    def empty(self) -> bool:
        return self.size() == 0

    def full(self) -> bool:
        return self.maxsize > 0 and self.size() >= self.maxsize

    # -- put -----------------------------------------------------------------------------

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        """Add ``item``; if the queue is full, wait (``block``) up to ``timeout`` seconds, else raise ``Full``."""
        deadline = _check_timeout(block, timeout)
        if not self._poll(lambda: get(self._live_actor().try_put.remote(item)), block, deadline):
            raise Full(f"the queue is full ({self.maxsize} items)")

    async def put_async(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        """``put`` for asyncio code: awaits instead of blocking the thread."""
        deadline = _check_timeout(block, timeout)

        async def try_put() -> bool:
            return await self._live_actor().try_put.remote(item)

        if not await self._poll_async(try_put, block, deadline):
            raise Full(f"the queue is full ({self.maxsize} items)")

    def put_nowait(self, item: Any) -> None:
        self.put(item, block=False)

    def put_nowait_batch(self, items: Iterable[Any]) -> None:
        """Add every item at once, or none: ``Full`` if they do not all fit now."""
        if not isinstance(items, Iterable):
            raise TypeError(f"items must be an iterable, got a {type(items).__name__}")
        batch = list(items)
        if not get(self._live_actor().try_put_batch.remote(batch)):
            raise Full(f"cannot add {len(batch)} items to a queue of maxsize {self.maxsize}")

    # -- get -----------------------------------------------------------------------------

    def get(self, block: bool = True, timeout: float | None = None) -> Any:
        """Take the oldest item; if the queue is empty, wait (``block``) up to ``timeout`` seconds, else raise ``Empty``."""
        deadline = _check_timeout(block, timeout)
        taken: list[Any] = []

        def try_get() -> bool:
            found, item = get(self._live_actor().try_get.remote())
            if found:
                taken.append(item)
            return found

        if not self._poll(try_get, block, deadline):
            raise Empty("the queue is empty")
        return taken[0]

    async def get_async(self, block: bool = True, timeout: float | None = None) -> Any:
        """``get`` for asyncio code: awaits instead of blocking the thread."""
        deadline = _check_timeout(block, timeout)
        taken: list[Any] = []

        async def try_get() -> bool:
            found, item = await self._live_actor().try_get.remote()
            if found:
                taken.append(item)
            return found

        if not await self._poll_async(try_get, block, deadline):
            raise Empty("the queue is empty")
        return taken[0]

    def get_nowait(self) -> Any:
        return self.get(block=False)

    def get_nowait_batch(self, num_items: int) -> list[Any]:
        """Take the ``num_items`` oldest items at once, or none: ``Empty`` if there are fewer now."""
        if isinstance(num_items, bool) or not isinstance(num_items, int):
            raise TypeError(f"num_items must be an int, got {num_items!r} (type={type(num_items).__name__})")
        if num_items < 0:
            raise ValueError(f"num_items must be non-negative, got {num_items}")
        found, items = get(self._live_actor().try_get_batch.remote(num_items))
        if not found:
            raise Empty(f"cannot get {num_items} items from the queue")
        return items

    @staticmethod
    def _poll(attempt: Callable[[], bool], block: bool, deadline: float | None) -> bool:
        """``attempt()`` until it succeeds (True), once without ``block``, or until ``deadline`` (False)."""
        if attempt():
            return True
        for pause_s in _pauses(block, deadline):
            time.sleep(pause_s)
            if attempt():
                return True
        return False

    @staticmethod
    async def _poll_async(attempt: Callable[[], Awaitable[bool]], block: bool, deadline: float | None) -> bool:
        """``_poll`` with ``await``: the event loop runs on during the pauses."""
        if await attempt():
            return True
        for pause_s in _pauses(block, deadline):
            await asyncio.sleep(pause_s)
            if await attempt():
                return True
        return False

    # -- the end -------------------------------------------------------------------------

    def shutdown(self, force: bool = False, grace_period_s: float = 5) -> None:
        """End the queue's actor; its items go with it.

        Without ``force``, the calls this process already sent finish first
        (waited for up to ``grace_period_s``); then the actor is killed.
        """
        if self.actor is None:
            return
        if not force:
            wait([self.actor.qsize.remote()], timeout=grace_period_s)  # behind every call sent before
        kill(self.actor, no_restart=True)
        self.actor = None

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_queue, (self.maxsize, self.actor))


def _rebuild_queue(maxsize: int, actor: Any) -> Queue:
    """A queue handed to a task or an actor: the same actor, no new one."""
    queue = Queue.__new__(Queue)
    queue.maxsize = maxsize
    queue.actor = actor
    return queue
