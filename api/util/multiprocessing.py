"""``ember.util.multiprocessing.Pool``: Python's ``multiprocessing.Pool`` on ember actors, as Ray's.

A pool is ``processes`` actors (``_PoolActor``), each a worker process that
ran the ``initializer`` once. Work is cut into chunks; each chunk is one
actor call, dealt round-robin, so the chunks of one ``map`` run in parallel
and their results come back in order. Every call is an ordinary actor call:
logged, and replayed on a restarted actor, so a pool created with the
default options (``max_restarts=-1, max_task_retries=-1``) gives every result
even when its worker processes are killed (docs/fault-tolerance.md,
"ember.util"). The functions a pool runs are assumed deterministic, as
every task is.

It must never drop a chunk: every item submitted ends in exactly one result
or in the error ``get`` raises. Options of Python's or Ray's pool that ember
does not carry out (``maxtasksperchild``, ``context``) are refused with
``InvalidOptionError``, never ignored.
"""

from __future__ import annotations

import itertools
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from ember._actor import ActorClass
from ember._runtime import cluster_resources, get, init, is_initialized, kill, wait
from ember.exceptions import InvalidOptionError
from ember.scheduler import ObjectRef

__all__ = ["AsyncResult", "IMapIterator", "Pool"]

_DEFAULT_ACTOR_OPTIONS = {"max_restarts": -1, "max_task_retries": -1}
CHUNKS_PER_PROCESS = 4  # map's default chunksize cuts the work into this many chunks per process
IMAP_CHUNKS_IN_FLIGHT_PER_PROCESS = 2  # imap keeps at most this many chunks per process submitted ahead
OUTSTANDING_MAX = 1024  # past this many calls remembered for join, the finished ones are forgotten

Chunk = list[tuple[tuple[Any, ...], dict[str, Any]]]  # (args, kwargs) of each item


class _PoolActor:
    """One process of a pool: runs the initializer once, then chunks of calls."""

    def __init__(self, initializer: Callable[..., Any] | None, initargs: tuple[Any, ...]) -> None:
        if initializer is not None:
            initializer(*initargs)

    def run_chunk(self, func: Callable[..., Any], chunk: Chunk) -> list[Any]:
        return [func(*args, **kwargs) for args, kwargs in chunk]


class AsyncResult:
    """The result of ``apply_async``/``map_async``/``starmap_async``, as ``multiprocessing.pool.AsyncResult``."""

    def __init__(self, refs: list[ObjectRef], single: bool, callback: Callable[[Any], Any] | None = None,
                 error_callback: Callable[[BaseException], Any] | None = None) -> None:
        self._refs = refs
        self._single = single
        if callback is not None or error_callback is not None:
            # As multiprocessing: the callback runs on a thread of the pool's, once the result is in.
            threading.Thread(target=self._run_callbacks, args=(callback, error_callback),
                             name="ember-pool-callback", daemon=True).start()

    def _run_callbacks(self, callback: Callable[[Any], Any] | None,
                       error_callback: Callable[[BaseException], Any] | None) -> None:
        try:
            value = self.get()
        except Exception as exc:
            if error_callback is not None:
                error_callback(exc)
            return
        if callback is not None:
            callback(value)

    def get(self, timeout: float | None = None) -> Any:
        """The result (a list, for a map), waiting up to ``timeout`` seconds (``GetTimeoutError``, a TimeoutError)."""
        chunks = get(self._refs, timeout=timeout)
        values = [value for chunk in chunks for value in chunk]
        return values[0] if self._single else values

    def wait(self, timeout: float | None = None) -> None:
        """Wait until the result is ready, or ``timeout`` seconds."""
        if self._refs:
            wait(self._refs, num_returns=len(self._refs), timeout=timeout)

    def ready(self) -> bool:
        if not self._refs:
            return True
        done, _ = wait(self._refs, num_returns=len(self._refs), timeout=0)
        return len(done) == len(self._refs)

    def successful(self) -> bool:
        """Whether the call returned without raising; ``ValueError`` if it is not ready yet."""
        if not self.ready():
            raise ValueError(f"{self!r} is not ready")
        try:
            get(self._refs)
        except Exception:
            return False
        return True


class IMapIterator:
    """What ``imap``/``imap_unordered`` return: results one at a time, ``next(timeout)`` as multiprocessing's."""

    def __init__(self, pool: "Pool", func: Callable[..., Any], chunks: Iterator[Chunk], ordered: bool) -> None:
        self._pool = pool
        self._func = func
        self._chunks = chunks
        self._ordered = ordered
        self._in_flight: deque[ObjectRef] = deque()
        self._ready: deque[Any] = deque()  # values of chunks already read, not yet handed out
        self._in_flight_max = max(1, len(pool._actors) * IMAP_CHUNKS_IN_FLIGHT_PER_PROCESS)
        self._fill()

    def _fill(self) -> None:
        while len(self._in_flight) < self._in_flight_max:
            chunk = next(self._chunks, None)
            if chunk is None:
                return
            self._in_flight.append(self._pool._submit_chunk(self._func, chunk))

    def __iter__(self) -> "IMapIterator":
        return self

    def __next__(self) -> Any:
        return self.next()

    def next(self, timeout: float | None = None) -> Any:
        """The next result; ``StopIteration`` at the end, ``GetTimeoutError`` after ``timeout`` seconds."""
        if not self._ready:
            if not self._in_flight:
                raise StopIteration
            if self._ordered:
                ref = self._in_flight[0]
            else:
                done, _ = wait(list(self._in_flight), num_returns=1, timeout=timeout)
                ref = done[0] if done else self._in_flight[0]
            values = get(ref, timeout=timeout)
            self._in_flight.remove(ref)
            self._ready.extend(values)
            self._fill()
        return self._ready.popleft()


class Pool:
    """A pool of ``processes`` worker processes (actors) for ``map``, ``imap``, ``apply`` and their variants.

    ``initializer(*initargs)`` runs once in each. ``ray_remote_args`` go to
    the actors' ``.options(...)``, over ``max_restarts=-1,
    max_task_retries=-1``. Not initialized yet: it joins ``ray_address``, or
    starts a local cluster of ``processes`` CPUs.
    """

    def __init__(self, processes: int | None = None, initializer: Callable[..., Any] | None = None,
                 initargs: Iterable[Any] | None = None, maxtasksperchild: int | None = None, context: Any = None,
                 ray_address: str | None = None, ray_remote_args: dict[str, Any] | None = None) -> None:
        if maxtasksperchild is not None:
            raise InvalidOptionError(
                f"Pool(maxtasksperchild={maxtasksperchild!r}) is not supported: an ember pool keeps its processes "
                "for its whole life; supported are processes, initializer, initargs, ray_address, ray_remote_args")
        if context is not None:
            raise InvalidOptionError(
                "Pool(context=...) is not supported: a pool's processes are ember workers, whose start method "
                "cannot be chosen; leave it out")
        if initializer is not None and not callable(initializer):
            raise TypeError(f"initializer must be callable, got a {type(initializer).__name__}")
        if ray_remote_args is not None and not isinstance(ray_remote_args, dict):
            raise TypeError(f"ray_remote_args must be a dict of actor options, got a {type(ray_remote_args).__name__}")
        if processes is not None and (isinstance(processes, bool) or not isinstance(processes, int)):
            raise TypeError(f"processes must be an int, got {processes!r}")
        if not is_initialized():
            if ray_address is not None and ray_address != "local":
                init(address=ray_address)
            else:
                init(num_cpus=processes)
        if processes is None:
            processes = int(cluster_resources().get("CPU", 1))
        if processes <= 0:
            raise ValueError(f"a pool needs at least one process, got processes={processes}")
        actor_class = ActorClass(_PoolActor, {**_DEFAULT_ACTOR_OPTIONS, **(ray_remote_args or {})})
        self._actors = [actor_class.remote(initializer, tuple(initargs or ())) for _ in range(processes)]
        self._next_actor = itertools.cycle(range(processes))
        self._outstanding: list[ObjectRef] = []  # calls since the last join, for join to wait on
        self._closed = False
        self._terminated = False

    # -- plumbing ------------------------------------------------------------------------

    def _check_running(self) -> None:
        if self._closed:
            raise ValueError("Pool not running")

    def _submit_chunk(self, func: Callable[..., Any], chunk: Chunk) -> ObjectRef:
        actor = self._actors[next(self._next_actor)]
        ref = actor.run_chunk.remote(func, chunk)
        if len(self._outstanding) >= OUTSTANDING_MAX:
            _, self._outstanding = wait(self._outstanding, num_returns=len(self._outstanding), timeout=0)
        self._outstanding.append(ref)
        return ref

    def _chunks(self, items: Iterable[Any], chunksize: int, star: bool) -> Iterator[Chunk]:
        if isinstance(chunksize, bool) or not isinstance(chunksize, int) or chunksize < 1:
            raise ValueError(f"chunksize must be an int >= 1, got {chunksize!r}")
        chunk: Chunk = []
        for item in items:
            chunk.append((tuple(item) if star else (item,), {}))
            if len(chunk) == chunksize:
                yield chunk
                chunk = []
        if chunk:
            yield chunk

    def _map_refs(self, func: Callable[..., Any], iterable: Iterable[Any], chunksize: int | None,
                  star: bool) -> list[ObjectRef]:
        self._check_running()
        items = list(iterable)
        if chunksize is None:
            chunksize = max(1, -(-len(items) // (len(self._actors) * CHUNKS_PER_PROCESS)))
        return [self._submit_chunk(func, chunk) for chunk in self._chunks(items, chunksize, star)]

    # -- one call ------------------------------------------------------------------------

    def apply(self, func: Callable[..., Any], args: tuple[Any, ...] = (), kwds: dict[str, Any] | None = None) -> Any:
        """``func(*args, **kwds)`` in one of the pool's processes; its result."""
        return self.apply_async(func, args, kwds).get()

    def apply_async(self, func: Callable[..., Any], args: tuple[Any, ...] = (), kwds: dict[str, Any] | None = None,
                    callback: Callable[[Any], Any] | None = None,
                    error_callback: Callable[[BaseException], Any] | None = None) -> AsyncResult:
        self._check_running()
        ref = self._submit_chunk(func, [(tuple(args), dict(kwds or {}))])
        return AsyncResult([ref], True, callback, error_callback)

    # -- many calls ----------------------------------------------------------------------

    def map(self, func: Callable[..., Any], iterable: Iterable[Any], chunksize: int | None = None) -> list[Any]:
        """``[func(x) for x in iterable]``, run in parallel chunks; the first error raises."""
        return self.map_async(func, iterable, chunksize).get()

    def map_async(self, func: Callable[..., Any], iterable: Iterable[Any], chunksize: int | None = None,
                  callback: Callable[[Any], Any] | None = None,
                  error_callback: Callable[[BaseException], Any] | None = None) -> AsyncResult:
        return AsyncResult(self._map_refs(func, iterable, chunksize, False), False, callback, error_callback)

    def starmap(self, func: Callable[..., Any], iterable: Iterable[Iterable[Any]],
                chunksize: int | None = None) -> list[Any]:
        """``[func(*args) for args in iterable]``, run in parallel chunks."""
        return self.starmap_async(func, iterable, chunksize).get()

    def starmap_async(self, func: Callable[..., Any], iterable: Iterable[Iterable[Any]], chunksize: int | None = None,
                      callback: Callable[[Any], Any] | None = None,
                      error_callback: Callable[[BaseException], Any] | None = None) -> AsyncResult:
        return AsyncResult(self._map_refs(func, iterable, chunksize, True), False, callback, error_callback)

    def imap(self, func: Callable[..., Any], iterable: Iterable[Any], chunksize: int = 1) -> IMapIterator:
        """``func(x)`` for each item, results in order, as they are read; a bounded number of chunks ahead."""
        self._check_running()
        return IMapIterator(self, func, self._chunks(iterable, chunksize, False), ordered=True)

    def imap_unordered(self, func: Callable[..., Any], iterable: Iterable[Any], chunksize: int = 1) -> IMapIterator:
        """As ``imap``, results in the order their chunks finish."""
        self._check_running()
        return IMapIterator(self, func, self._chunks(iterable, chunksize, False), ordered=False)

    # -- the end -------------------------------------------------------------------------

    def close(self) -> None:
        """No more work may be submitted; what was submitted still runs (``join`` waits for it)."""
        self._closed = True

    def terminate(self) -> None:
        """Stop at once: the processes are killed, unfinished results raise ``ActorDiedError``."""
        self._closed = True
        if not self._terminated:
            self._terminated = True
            for actor in self._actors:
                kill(actor, no_restart=True)

    def join(self) -> None:
        """Wait for the work submitted to a closed pool, then end its processes."""
        if not self._closed:
            raise ValueError("Pool is still running: call close() or terminate() first")
        if self._outstanding and not self._terminated:
            wait(self._outstanding, num_returns=len(self._outstanding))
        self._outstanding.clear()
        self.terminate()

    def __enter__(self) -> "Pool":
        self._check_running()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.terminate()  # as multiprocessing's pool: leaving the block stops the processes
