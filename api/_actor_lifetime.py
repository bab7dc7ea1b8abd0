"""Freeing actors whose handles are all gone: the creator's count of its own handles.

A non-detached, unnamed actor whose handles never left the process that
created it ends once the last of them is dropped there, after the calls
already sent to it: the creator sends ``__ray_terminate__`` on its behalf,
which queues behind those calls like any call, and the actor's process,
resources and slot are freed.

What it cannot see it never guesses: once a handle is pickled (passed to a
task, an actor, ``put``), other processes may hold it, so the actor lives
until its creator exits (its fate, as before). A named actor can be looked
up from anywhere (``get_actor``) and a detached one outlives its creator:
both are never freed here.

It must never take the owner's lock from ``__del__`` (the garbage collector
runs it on whichever thread it interrupts): the end is sent from a thread
of its own.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

__all__ = ["LOCAL_HANDLES", "LocalHandles"]


class _Count:
    __slots__ = ("live", "escaped")

    def __init__(self) -> None:
        self.live = 0
        self.escaped = False


class LocalHandles:
    """The actors this process created that it may free, and how many handles to each it holds."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[bytes, _Count] = {}

    def track(self, actor_id: bytes) -> None:
        """A freeable actor was created here (before its first handle is counted)."""
        with self._lock:
            self._counts[actor_id] = _Count()

    def added(self, actor_id: bytes) -> None:
        count = self._counts.get(actor_id)
        if count is not None:
            with self._lock:
                count.live += 1

    def escaped(self, actor_id: bytes) -> None:
        """A handle was pickled: other processes may hold it, so it is never freed from here."""
        with self._lock:
            self._counts.pop(actor_id, None)

    def dropped(self, actor_id: bytes, class_name: str, end: Callable[[bytes, str], None]) -> None:
        """A handle was garbage collected; the last one has ``end(actor_id, class_name)`` run on a thread of its own."""
        count = self._counts.get(actor_id)
        if count is None:
            return
        with self._lock:
            count.live -= 1
            if count.live > 0:
                return
            del self._counts[actor_id]
        threading.Thread(target=end, args=(actor_id, class_name), name="ember-actor-free", daemon=True).start()

    def forget_all(self) -> None:
        """At shutdown: the cluster ends every actor anyway."""
        with self._lock:
            self._counts.clear()


LOCAL_HANDLES = LocalHandles()  # this process's: actors it created, freed when its last handle to one goes
