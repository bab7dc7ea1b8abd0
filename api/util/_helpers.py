"""``as_completed`` and ``map_unordered``: results as their tasks finish, as Ray 2.60 has them.

Both are loops over ``ember.wait`` and ``ember.get``; they keep no state of
their own beyond the refs still pending, so every guarantee of ``get`` (the
value is durable before it is seen, lost objects are rebuilt) holds for what
they yield. They must never hold more than ``backpressure_size`` tasks of
``map_unordered`` in flight.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from ember._runtime import get, wait
from ember.scheduler import ObjectRef

__all__ = ["DEFAULT_BACKPRESSURE_SIZE", "DEFAULT_CHUNK_SIZE", "as_completed", "map_unordered"]

DEFAULT_CHUNK_SIZE = 10  # refs waited for at a time, as Ray's
DEFAULT_BACKPRESSURE_SIZE = 100  # tasks in flight before map_unordered waits, as Ray's


def _check_chunk_size(chunk_size: Any, wait_options: dict[str, Any]) -> None:
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be an int >= 1, got {chunk_size!r} (type={type(chunk_size).__name__})")
    if "num_returns" in wait_options:
        raise ValueError("pass chunk_size instead of num_returns: it is the num_returns of each ember.wait")


def _one_batch(refs: list[ObjectRef], chunk_size: int, yield_obj_refs: bool,
               wait_options: dict[str, Any]) -> tuple[list[Any], list[ObjectRef]]:
    """Wait for up to ``chunk_size`` of ``refs``: (their values or refs, the refs still pending)."""
    ready, pending = wait(refs, num_returns=min(chunk_size, len(refs)), **wait_options)
    return (list(ready) if yield_obj_refs else get(ready)), pending


def as_completed(refs: Sequence[ObjectRef], *, chunk_size: int = DEFAULT_CHUNK_SIZE, yield_obj_refs: bool = False,
                 **wait_options: Any) -> Iterator[Any]:
    """Yield the values of ``refs`` (or the refs, with ``yield_obj_refs``) a batch of ``chunk_size`` at a time.

    ``wait_options`` go to each ``ember.wait`` (``timeout``, ``fetch_local``).
    A batch whose wait times out is empty and the loop waits again, as in Ray.
    """
    _check_chunk_size(chunk_size, wait_options)
    pending = list(refs)
    while pending:
        results, pending = _one_batch(pending, chunk_size, yield_obj_refs, wait_options)
        yield from results


def map_unordered(fn: Any, items: Iterable[Any], *, backpressure_size: int | None = DEFAULT_BACKPRESSURE_SIZE,
                  chunk_size: int = DEFAULT_CHUNK_SIZE, yield_obj_refs: bool = False,
                  **wait_options: Any) -> Iterator[Any]:
    """``fn.remote(item)`` for each item, yielding results as they finish, at most ``backpressure_size`` in flight.

    ``backpressure_size=None`` submits every item before waiting.
    """
    if backpressure_size is not None and (isinstance(backpressure_size, bool) or not isinstance(backpressure_size, int)
                                          or backpressure_size < 1):
        raise ValueError(f"backpressure_size must be a positive int or None, got {backpressure_size!r}")
    _check_chunk_size(chunk_size, wait_options)
    if not callable(getattr(fn, "remote", None)):
        raise TypeError(f"map_unordered expects a remote function (@ember.remote), got a {type(fn).__name__}")
    in_flight: list[ObjectRef] = []
    for item in items:
        in_flight.append(fn.remote(item))
        if backpressure_size is not None and len(in_flight) >= backpressure_size:
            results, in_flight = _one_batch(in_flight, chunk_size, yield_obj_refs, wait_options)
            yield from results
    yield from as_completed(in_flight, chunk_size=chunk_size, yield_obj_refs=yield_obj_refs, **wait_options)
