"""Concurrent actors: how many calls run at once, in which group, on which threads or event loops.

An actor is *concurrent* when one of its methods is ``async def`` (an async
actor), when it is created with ``max_concurrency`` > 1 (a threaded actor),
or when it declares ``concurrency_groups``. Its calls then run together,
up to each group's size, instead of one at a time:

- a threaded actor runs each group's calls on a pool of that many threads;
- an async actor runs each group on an event loop of its own, in a thread of
  its own, with at most the group's size of calls started and not finished.

The executor's main thread keeps reading callers' connections and hands each
call to ``ConcurrentCalls.submit``; the call then runs, and sends its own
result, on its group's thread.

``Concurrency`` is the plain description that travels with the actor's
handle metadata (``to_wire``/``from_wire``) and decides a call's group.

This module must never run a call on the caller's thread (the executor's
main thread reads every caller) and never start more calls of a group at
once than the group's size.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections.abc import Awaitable, Callable
from typing import Any

from ember.scheduler._protocol import Connection
from ember.scheduler._spec import TaskSpec

__all__ = ["ASYNC_MAX_CONCURRENCY_DEFAULT", "DEFAULT_GROUP", "LOOP_START_TIMEOUT_S", "Concurrency",
           "ConcurrentCalls", "concurrency_in_meta"]

ASYNC_MAX_CONCURRENCY_DEFAULT = 1000  # Ray's default for an async actor's default group
DEFAULT_GROUP = "_ember_default"  # the group of methods given none (not a name a user may declare)
LOOP_START_TIMEOUT_S = 10.0  # a group's event loop thread is running within this long, or the actor fails

log = logging.getLogger("ember.actor")


class Concurrency:
    """An actor's concurrency: async or threaded, the default group's size, the named groups."""

    __slots__ = ("is_async", "max_concurrency", "groups", "method_groups")

    def __init__(self, is_async: bool, max_concurrency: int, groups: dict[str, int],
                 method_groups: dict[str, str]) -> None:
        assert max_concurrency >= 1 and all(size >= 1 for size in groups.values()), (max_concurrency, groups)
        self.is_async = is_async
        self.max_concurrency = max_concurrency
        self.groups = groups  # name -> the most calls of the group that run at once
        self.method_groups = method_groups  # method -> its group (``@ember.method(concurrency_group=...)``)

    def to_wire(self) -> tuple:
        return (self.is_async, self.max_concurrency, tuple(sorted(self.groups.items())),
                tuple(sorted(self.method_groups.items())))

    @classmethod
    def from_wire(cls, wire: tuple) -> "Concurrency":
        is_async, max_concurrency, groups, method_groups = wire
        return cls(bool(is_async), int(max_concurrency), dict(groups), dict(method_groups))

    def sizes(self) -> dict[str, int]:
        """Every group's size, the default group's included."""
        return {DEFAULT_GROUP: self.max_concurrency, **self.groups}

    def group_of(self, method: str | None, chosen: str | None) -> str:
        """The group a call runs in: the one its call chose, else its method's, else the default."""
        if type(chosen) is str and chosen in self.groups:
            return chosen
        return self.method_groups.get(method or "", DEFAULT_GROUP)

    def describe(self) -> str:
        """For people (the log's ``actors.concurrency``, ``ember list actors``): e.g. ``async 1000, io=2``."""
        kind = "async" if self.is_async else "threaded"
        groups = "".join(f", {name}={size}" for name, size in sorted(self.groups.items()))
        return f"{kind} {self.max_concurrency}{groups}"


def concurrency_in_meta(meta: Any) -> tuple | None:
    """The wire form of a concurrent actor's ``Concurrency`` in its handle metadata, or None.

    The metadata is ``(class name, {method: num_returns}, max_task_retries)``, with the
    concurrency's wire form as a fourth item when the actor is concurrent.
    """
    if isinstance(meta, tuple) and len(meta) > 3 and isinstance(meta[3], tuple):
        return meta[3]
    return None


class _Group:
    """One group of an async actor: its event loop, the thread that runs it, and its limit."""

    def __init__(self, name: str, size: int) -> None:
        self.name = name
        self.size = size
        self.loop = asyncio.new_event_loop()
        self.semaphore: asyncio.Semaphore | None = None  # made on the loop's own thread
        # call task id -> its asyncio task: held, so a running call is never garbage collected
        self.tasks: dict[bytes, asyncio.Task] = {}
        self.thread = threading.Thread(target=self._run, name=f"ember-actor-loop-{name}", daemon=True)
        self._started = threading.Event()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.semaphore = asyncio.Semaphore(self.size)
        self.loop.call_soon(self._started.set)
        self.loop.run_forever()

    def start(self) -> None:
        self.thread.start()
        if not self._started.wait(LOOP_START_TIMEOUT_S):
            raise RuntimeError(f"the event loop of concurrency group {self.name!r} did not start "
                               f"within {LOOP_START_TIMEOUT_S:g} s")


class _Threads:
    """One group of a threaded actor: ``size`` threads taking its calls from one queue, in arrival order.

    Lighter than a ``ThreadPoolExecutor`` (no future per call, no pool bookkeeping): a no-op call's
    hand-off is a put and a get on a ``SimpleQueue``. Started at once; its threads live as long as
    the actor's process.
    """

    def __init__(self, name: str, size: int, run: Callable[[Connection, TaskSpec], None]) -> None:
        self._calls: queue.SimpleQueue[tuple[Connection, TaskSpec]] = queue.SimpleQueue()
        self._run = run
        for i in range(size):
            threading.Thread(target=self._serve, name=f"ember-actor-{name}_{i}", daemon=True).start()

    def submit(self, conn: Connection, spec: TaskSpec) -> None:
        self._calls.put((conn, spec))

    def _serve(self) -> None:
        while True:
            conn, spec = self._calls.get()
            try:
                self._run(conn, spec)
            except BaseException:  # noqa: BLE001 - reported to its caller by the runner; the thread goes on
                log.exception("a call of this actor failed outside its runner")


class ConcurrentCalls:
    """Runs a concurrent actor's calls on its groups' threads or event loops.

    ``run`` runs one call to its end and sends its result (a threaded actor);
    ``run_async`` does the same as a coroutine (an async actor). Either is
    handed the caller's connection and the call's spec.
    """

    def __init__(self, concurrency: Concurrency, run: Callable[[Connection, TaskSpec], None],
                 run_async: Callable[[Connection, TaskSpec], Awaitable[None]]) -> None:
        self.concurrency = concurrency
        self._run = run
        self._run_async = run_async
        self._lock = threading.Lock()
        self.running = 0  # calls started and not finished, over every group
        self.started = 0
        self._pools: dict[str, _Threads] = {}
        self._groups: dict[str, _Group] = {}
        for name, size in concurrency.sizes().items():
            if concurrency.is_async:
                group = _Group(name, size)
                group.start()
                self._groups[name] = group
            else:
                self._pools[name] = _Threads(name, size, self._run_counted)

    def submit(self, conn: Connection, spec: TaskSpec) -> None:
        """Start ``spec`` in its group (called on the executor's main thread; never blocks on the call)."""
        name = self.concurrency.group_of(spec.method, spec.concurrency_group)
        if self.concurrency.is_async:
            group = self._groups.get(name) or self._groups[DEFAULT_GROUP]
            group.loop.call_soon_threadsafe(self._start_task, group, conn, spec)
        else:
            pool = self._pools.get(name) or self._pools[DEFAULT_GROUP]
            pool.submit(conn, spec)

    def _run_counted(self, conn: Connection, spec: TaskSpec) -> None:
        self._count(1)
        try:
            self._run(conn, spec)
        finally:
            self._count(-1)

    def _start_task(self, group: _Group, conn: Connection, spec: TaskSpec) -> None:
        task = group.loop.create_task(self._run_in_group(group, conn, spec))
        group.tasks[spec.task_id] = task
        task.add_done_callback(lambda _: group.tasks.pop(spec.task_id, None))

    async def _run_in_group(self, group: _Group, conn: Connection, spec: TaskSpec) -> None:
        assert group.semaphore is not None
        async with group.semaphore:
            self._count(1)
            try:
                await self._run_async(conn, spec)
            finally:
                self._count(-1)

    def _count(self, delta: int) -> None:
        with self._lock:
            self.running += delta
            if delta > 0:
                self.started += 1

    def cancel(self, task_id: bytes) -> bool:
        """Cancel an async call that is running or waiting for its group; False if none is."""
        for group in self._groups.values():
            task = group.tasks.get(task_id)
            if task is not None:
                group.loop.call_soon_threadsafe(task.cancel)
                return True
        return False

    def statistics(self) -> dict[str, Any]:
        with self._lock:
            return {"running": self.running, "started": self.started,
                    "groups": dict(self.concurrency.sizes()), "async": self.concurrency.is_async}
