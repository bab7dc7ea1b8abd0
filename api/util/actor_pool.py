"""``ActorPool``: a fixed set of actors that a stream of work is spread over, as Ray's ``ray.util.ActorPool``.

The pool is plain bookkeeping in the caller's process: which actors are idle,
which call each busy one runs (by its submission index), what waits for an
actor. It makes calls and reads results only through the actor handles and
``ember.get``/``ember.wait``, so a pool survives what its actors survive: an
actor created with ``max_restarts`` and ``max_task_retries`` comes back with
its state after its process dies, and the call the pool is waiting on
returns its value all the same (docs/fault-tolerance.md, "ember.util").

It must never lose a submitted value: every ``submit`` ends as exactly one
result from ``get_next``/``get_next_unordered`` (or its error, raised there).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from ember._actor import ActorHandle
from ember._runtime import get, wait
from ember.scheduler import ObjectRef

__all__ = ["ActorPool"]

Submit = Callable[[Any, Any], Any]  # (actor, value) -> the ref of the call fn made on it


def _key(future: Any) -> Any:
    """A call's ref as a dict key (a call with num_returns > 1 gives a list of refs)."""
    return tuple(future) if isinstance(future, list) else future


def _wait_target(future: Any) -> ObjectRef:
    return future[0] if isinstance(future, list) else future


class ActorPool:
    """Spread work over ``actors``: ``submit``/``map`` a function ``fn(actor, value)`` that calls an actor method.

    ``fn`` must return what ``actor.method.remote(...)`` returned. Results come
    back in submission order (``get_next``, ``map``) or as they finish
    (``get_next_unordered``, ``map_unordered``).
    """

    def __init__(self, actors: Iterable[ActorHandle]) -> None:
        self._idle: list[Any] = list(actors)
        for actor in self._idle:
            if not isinstance(actor, ActorHandle):
                raise TypeError(f"ActorPool takes actor handles (Cls.remote(...)), got a {type(actor).__name__}")
        self._busy: dict[Any, tuple[int, Any]] = {}  # a call's ref -> (its submission index, the actor)
        self._by_index: dict[int, Any] = {}  # submission index -> the call's ref
        self._next_index = 0  # the index of the next submit that gets an actor
        self._next_return = 0  # get_next's next index
        self._waiting: deque[tuple[Submit, Any]] = deque()  # submits with no idle actor yet

    # -- submitting ----------------------------------------------------------------------

    def submit(self, fn: Submit, value: Any) -> None:
        """Run ``fn(actor, value)`` on an idle actor now, or on the first one to become idle."""
        if not self._idle:
            self._waiting.append((fn, value))
            return
        actor = self._idle.pop()
        future = fn(actor, value)
        if not isinstance(_wait_target(future), ObjectRef):
            self._idle.append(actor)
            raise TypeError(f"the function given to ActorPool must return actor.method.remote(...)'s ref, "
                            f"got a {type(future).__name__}")
        self._busy[_key(future)] = (self._next_index, actor)
        self._by_index[self._next_index] = future
        self._next_index += 1

    def map(self, fn: Submit, values: Iterable[Any]) -> Iterator[Any]:
        """Submit ``fn(actor, v)`` for every value; yield the results in the order of ``values``."""
        return self._map(fn, values, self.get_next)

    def map_unordered(self, fn: Submit, values: Iterable[Any]) -> Iterator[Any]:
        """Submit ``fn(actor, v)`` for every value; yield the results as they finish."""
        return self._map(fn, values, self.get_next_unordered)

    def _map(self, fn: Submit, values: Iterable[Any], next_result: Callable[[], Any]) -> Iterator[Any]:
        self._drop_unread()
        for value in values:
            self.submit(fn, value)
        while self.has_next():
            yield next_result()

    def _drop_unread(self) -> None:
        """What an earlier map left unread is discarded once ready, as in Ray: a new map starts clean."""
        while self.has_next():
            try:
                self.get_next(timeout=0, ignore_if_timedout=True)
            except TimeoutError:
                pass

    # -- results -------------------------------------------------------------------------

    def has_next(self) -> bool:
        """Whether a submitted call has a result still to be read."""
        return bool(self._busy)

    def get_next(self, timeout: float | None = None, ignore_if_timedout: bool = False) -> Any:
        """The result of the next call in submission order.

        Raises ``StopIteration`` when nothing is pending, ``TimeoutError`` (or
        returns None, with ``ignore_if_timedout``) when it is not ready within
        ``timeout`` seconds, and the call's error if it failed.
        """
        if not self.has_next():
            raise StopIteration("no more results to get")
        if self._next_return >= self._next_index:
            raise ValueError("get_next() cannot be called after get_next_unordered() left results out of order")
        future = self._by_index[self._next_return]
        if timeout is not None:
            ready, _ = wait([_wait_target(future)], timeout=timeout)
            if not ready:
                if ignore_if_timedout:
                    return None
                raise TimeoutError(f"the next result was not ready within {timeout}s")
        del self._by_index[self._next_return]
        self._next_return += 1
        _, actor = self._busy.pop(_key(future))
        self._return_actor(actor)
        return get(future)

    def get_next_unordered(self, timeout: float | None = None, ignore_if_timedout: bool = False) -> Any:
        """The result of whichever pending call finishes first (errors and timeouts as ``get_next``)."""
        if not self.has_next():
            raise StopIteration("no more results to get")
        targets = {_wait_target(future): future for future in self._by_index.values()}
        ready, _ = wait(list(targets), num_returns=1, timeout=timeout)
        if not ready:
            if ignore_if_timedout:
                return None
            raise TimeoutError(f"no result was ready within {timeout}s")
        future = targets[ready[0]]
        index, actor = self._busy.pop(_key(future))
        del self._by_index[index]
        self._next_return = max(self._next_return, index + 1)
        self._return_actor(actor)
        return get(future)

    # -- actors --------------------------------------------------------------------------

    def _return_actor(self, actor: Any) -> None:
        self._idle.append(actor)
        if self._waiting:
            self.submit(*self._waiting.popleft())

    def has_free(self) -> bool:
        """Whether an actor is idle and no submit is waiting for one."""
        return bool(self._idle) and not self._waiting

    def pop_idle(self) -> Any:
        """Take an idle actor out of the pool (None if none is free)."""
        return self._idle.pop() if self.has_free() else None

    def push(self, actor: ActorHandle) -> None:
        """Add an actor to the pool; it takes a waiting submit at once, if there is one."""
        busy = [a for _, a in self._busy.values()]
        if actor in self._idle or actor in busy:
            raise ValueError("the actor already belongs to this ActorPool")
        if not isinstance(actor, ActorHandle):
            raise TypeError(f"ActorPool takes actor handles (Cls.remote(...)), got a {type(actor).__name__}")
        self._return_actor(actor)
