"""What a run of a task or an actor call comes to, as the values sent to its owner.

Plain functions of a spec and a value or an exception: how many results a run
sends, how a user's exception becomes the error its caller raises, how one
returned value splits into ``num_returns`` results. The executor, its result
sender and an actor's replay share them.
"""

from __future__ import annotations

import asyncio
import sys
import traceback
import types
from typing import Any

import cloudpickle

from ember.exceptions import (ActorDiedError, EmberTaskError, RuntimeEnvSetupError, SerializationError,
                              TaskCancelledError)
from ember.scheduler._actor_exit import ActorExit
from ember.scheduler._spec import STREAMING, TaskKind, TaskSpec
from ember.store import serialize_error, to_bytes

TERMINATED = "it was terminated by __ray_terminate__, after the calls sent before it"


class UpstreamError(Exception):
    """An argument's object is an error: the task fails with that same error."""

    def __init__(self, data: Any) -> None:
        self.data = data


def task_error(spec: TaskSpec, exc: BaseException) -> BaseException:
    """The error a caller raises for a run of ``spec`` that raised ``exc``."""
    if isinstance(exc, (SerializationError, RuntimeEnvSetupError)):
        return exc  # not the task's own: it never ran
    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    name = spec.function_name if spec.kind != TaskKind.ACTOR_CALL else f"{spec.function_name}.{spec.method}"
    # A task error raised by a nested get keeps its original cause, so the
    # caller's error is still an instance of what the innermost task raised.
    cause: BaseException | None = exc.cause if isinstance(exc, EmberTaskError) and exc.cause is not None else exc
    try:
        cloudpickle.dumps(cause)
    except Exception:
        cause = None
    return EmberTaskError(name, tb, cause, repr(exc))


def result_count(spec: TaskSpec) -> int:
    """How many results a run of ``spec`` sends (a stream sends one: its end)."""
    return 1 if spec.num_returns == STREAMING else spec.num_returns


def iterator_of(spec: TaskSpec, value: Any) -> Any:
    """The iterator of a streaming task's returned generator; a TypeError naming the task if it is none."""
    try:
        return iter(value)
    except TypeError:
        raise TypeError(f"{spec.describe()} streams its values (num_returns=\"streaming\") but returned a "
                        f"{type(value).__name__}, not a generator") from None


def failed_outcome(spec: TaskSpec, exc: BaseException, actor_name: str = "") -> list:
    """The results of a run that raised ``exc``: one error per return."""
    if isinstance(exc, ActorExit):
        data = error_bytes(ActorDiedError(actor_name, exc.reason))
    elif isinstance(exc, UpstreamError):
        data = exc.data  # an argument's error: the call fails with that same error
    elif isinstance(exc, asyncio.CancelledError):
        data = error_bytes(TaskCancelledError(spec.task_id.hex()))
    else:
        data = error_bytes(task_error(spec, exc))
    return [data] * result_count(spec)


def errors(spec: TaskSpec, error: BaseException) -> list:
    """``error`` as every result of a run of ``spec``."""
    return [error_bytes(error)] * result_count(spec)


def error_bytes(error: BaseException) -> bytes:
    return to_bytes(serialize_error(error), b"")


class RaisedResult:
    """One result of a run that made some of its results and raised before the rest: the error, serialized
    (``error_bytes``). A run's outcome holding one is a failed run's (``split_outcome``)."""

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data


class SentResult:
    """One result of a run as it was sent: its inline bytes, or None for one in the object store, and its
    size. An actor keeps these of its last calls (``_ran_calls``), never the values themselves, and a
    result sent again goes as it went the first time."""

    __slots__ = ("data", "size")

    def __init__(self, data: bytes | None, size: int) -> None:
        self.data = data
        self.size = size


def split_outcome(spec: TaskSpec, value: Any) -> tuple[list, bool]:
    """``split``'s results, and whether the run failed: some are errors (``RaisedResult``) among its values."""
    outcome = split(spec, value)
    # Only a generator's results can hold errors among values: one type check on the common path.
    return outcome, type(value) is types.GeneratorType and any(isinstance(result, RaisedResult) for result in outcome)


def split(spec: TaskSpec, value: Any) -> list:
    """A run's returned value as its ``num_returns`` results."""
    n = spec.num_returns
    if n == 1 or n == STREAMING:  # a stream's one result: how many values it yielded
        return [value]
    if n == 0:
        return [None]
    if isinstance(value, types.GeneratorType):
        return _yielded(spec, value, n)
    try:
        values = list(value)
    except TypeError:
        raise ValueError(
            f"{spec.describe()} declares num_returns={n} but returned a non-iterable {type(value).__name__}"
        ) from None
    if len(values) != n:
        raise ValueError(f"{spec.describe()} declares num_returns={n} but returned {len(values)} values")
    return values


def _yielded(spec: TaskSpec, generator: Any, n: int) -> list:
    """A generator's values as the ``n`` results of its task, each kept as it was yielded (as Ray does).

    Raising after some values keeps them and makes the error the rest of the
    results; ending early makes the rest a ValueError. Raising, or yielding
    more, after the ``n``-th value keeps all ``n``, and the error is only
    written to stderr: the results are made. Raising before any value fails
    the run as a whole (the caller retries it if ``retry_exceptions`` says so).
    """
    values: list = []
    try:
        for value in generator:
            if len(values) == n:
                raise ValueError(f"{spec.describe()} declares num_returns={n} but its generator yielded more values")
            values.append(value)
    except Exception as exc:
        if not values:
            raise
        if len(values) == n:
            print(f"ember: {spec.describe()} raised after all its {n} results were made, so its callers do not see "
                  f"it: {exc!r}", file=sys.stderr, flush=True)
            return values
        return values + [RaisedResult(error_bytes(task_error(spec, exc)))] * (n - len(values))
    if len(values) < n:
        error = ValueError(f"{spec.describe()} declares num_returns={n} but its generator yielded {len(values)} values")
        return values + [RaisedResult(error_bytes(task_error(spec, error)))] * (n - len(values))
    return values


def label(spec: TaskSpec) -> str:
    """The name ``chaos run --on-start`` matches: ``f``, ``Class.method``, or ``Class`` for a constructor."""
    return f"{spec.function_name}.{spec.method}" if spec.kind == TaskKind.ACTOR_CALL else spec.function_name
