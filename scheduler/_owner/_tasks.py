"""Pending tasks and the decisions about them: plain data in, an action out (sans-IO).

A ``PendingTask`` is what the owner keeps of a task it submitted and whose
result it has not taken in yet. When something happens to one (a result, a
failure the node scheduler reports, the scheduler dying under it) the
functions here say what to do about it, as an action:

- ``Ignore``: the report is about an attempt that is over (a stale attempt);
- ``Warn``: nothing to do but tell the user (``detail``);
- ``Finish``: take the result in;
- ``Resubmit``: run it again, as its next attempt;
- ``Claim``: ask the restarted scheduler to take it from its logged queue, as its next attempt;
- ``Fail``: finish it with ``error`` (``infeasible``: ``wait`` raises it too).

The owner carries the action out (``Owner._apply``). This module must never
send a message, touch the object table or read the clock: every input is an
argument, so the rules are tested with plain data (``tests/unit/test_owner_tasks.py``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from ember.exceptions import (
    ActorDiedError,
    EmberTaskError,
    InfeasibleResourceError,
    TaskUnschedulableError,
    TaskCancelledError,
    TaskPlacementGroupRemoved,
    WorkerCrashedError,
)
from ember.scheduler._spec import GROUP_REMOVED, FailureCause, TaskKind, TaskSpec
from ember.store import deserialize, is_error

__all__ = [
    "Action", "Claim", "Fail", "Finish", "Ignore", "PendingTask", "Resubmit", "Warn",
    "after_failure_report", "after_result", "after_scheduler_died", "error_in_results",
]

SCHEDULER_DIED_DETAIL = "its node's scheduler died while it was queued or running"


class PendingTask:
    """A task this process submitted whose result is not in yet."""

    __slots__ = ("spec", "raw_args", "raw_kwargs", "missing", "retry_exceptions", "cancelled", "extra", "arg_objects",
                 "log_seq", "replay", "encoded", "as_logged", "declared", "actor_leases")

    def __init__(self, spec: TaskSpec, raw_args: tuple, raw_kwargs: dict, retry_exceptions: Any) -> None:
        self.spec = spec
        self.raw_args = raw_args
        self.raw_kwargs = raw_kwargs
        self.missing = 0  # inputs owned here still pending
        self.retry_exceptions = retry_exceptions  # False, True, or exception types to retry on
        self.cancelled = False
        self.extra: tuple = ()  # actor creation: (detached, handle metadata)
        self.arg_objects: list[bytes] | tuple = ()  # large by-value arguments put in the store for this task
        self.log_seq = 0  # the spec's row in the lineage log; results wait for it to be durable
        self.replay = False  # run again from its logged spec: arguments already encoded, spec already durable
        self.encoded = False  # arguments encoded (and logged) before its inputs were ready
        self.as_logged = False  # sent exactly as its logged spec: a restarted scheduler can take it from the log
        self.declared = False  # its results' creation rows logged before it ended (``LineageGate.declare_pending``)
        self.actor_leases: list[bytes] | tuple = ()  # actors whose handles are in its arguments (``_actor_handles``)


@dataclasses.dataclass(frozen=True, slots=True)
class Ignore:
    """A report about an attempt that is over (or a task already finished)."""


@dataclasses.dataclass(frozen=True, slots=True)
class Warn:
    detail: str


@dataclasses.dataclass(frozen=True, slots=True)
class Finish:
    """Take the result in as it is."""


@dataclasses.dataclass(frozen=True, slots=True)
class Resubmit:
    """Run it again, as its next attempt."""


@dataclasses.dataclass(frozen=True, slots=True)
class Claim:
    """Ask the restarted scheduler to queue it again from its log, as its next attempt."""


@dataclasses.dataclass(frozen=True, slots=True)
class Fail:
    error: BaseException
    infeasible: bool = False  # no node can ever run it: ``wait`` raises the error too


Action = Ignore | Warn | Finish | Resubmit | Claim | Fail


def after_result(pt: PendingTask | None, attempt: int, failed: bool,
                 error_of: Callable[[], BaseException | None]) -> Ignore | Finish | Resubmit:
    """A result came in for ``attempt``; ``error_of()`` reads the error a failed run raised (None if unreadable).

    A failed run is retried when ``retry_exceptions`` allows it (True, or the
    error's cause is an instance of one of its types) and retries are left;
    an actor's constructor never is (the actor's restarts are its retries).
    """
    if pt is None or pt.spec.attempt != attempt:
        return Ignore()
    if not failed or pt.cancelled:
        return Finish()
    rule = pt.retry_exceptions
    spec = pt.spec
    if not rule or spec.attempt >= spec.max_retries or spec.kind == TaskKind.ACTOR_CREATION:
        return Finish()
    error = error_of()
    if error is None:
        return Finish()
    cause = error.cause if isinstance(error, EmberTaskError) else error
    if rule is not True and not isinstance(cause, tuple(rule)):
        return Finish()
    return Resubmit()


def after_failure_report(pt: PendingTask | None, attempt: int, cause: FailureCause, detail: str) -> Action:
    """The node scheduler gave ``attempt`` back, for ``cause`` (``Op.TASK_FAILED``)."""
    if cause is FailureCause.UNSCHEDULABLE:
        return Warn(detail)  # not a failure: it waits for a node that can run it
    if pt is None or pt.spec.attempt != attempt:
        return Ignore()
    spec = pt.spec
    if cause is FailureCause.WORKER_DIED and not pt.cancelled:
        if spec.attempt < spec.max_retries:
            return Resubmit()
        return Fail(WorkerCrashedError(spec.describe(), spec.attempt + 1, detail))
    if cause is FailureCause.CANCELLED or pt.cancelled:
        return Fail(TaskCancelledError(spec.task_id.hex()))
    if cause is FailureCause.INFEASIBLE:
        return Fail(InfeasibleResourceError(f"{spec.describe()}: {detail}"), infeasible=True)
    if cause is FailureCause.STRATEGY_UNMET:
        if detail.startswith(GROUP_REMOVED):
            return Fail(TaskPlacementGroupRemoved(spec.describe(), detail))
        return Fail(TaskUnschedulableError(spec.describe(), detail))
    return Fail(ActorDiedError(spec.function_name, detail))


def after_scheduler_died(pt: PendingTask) -> Fail | Claim | Resubmit:
    """The node scheduler that had ``pt`` (queued or running) died, and another took its place.

    A cancelled task must not run again (its cancel may have died too); one
    with retries left (or a replay) runs as its next attempt, taken from the
    new scheduler's logged queue when it was sent exactly as logged.
    """
    spec = pt.spec
    if pt.cancelled:
        return Fail(TaskCancelledError(spec.task_id.hex()))
    if spec.attempt < spec.max_retries or pt.replay:
        return Claim() if pt.as_logged else Resubmit()
    return Fail(WorkerCrashedError(spec.describe(), spec.attempt + 1, SCHEDULER_DIED_DETAIL))


def error_in_results(results: list) -> BaseException | None:
    """The error a failed run raised, read from its first result that is one (errors travel inline; a
    generator that raised partway has values before them). None if there is none."""
    data = next((data for _, data, _ in results if data is not None and is_error(data)), None)
    return None if data is None else deserialize(data)[1]
