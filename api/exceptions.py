"""Every error ember raises, under one root.

Three families, so a caller can tell whose fault it is:

- user errors (``EmberUserError``): the program asked for something impossible
  or malformed; the message names the problem and the fix;
- operating errors (``EmberOperationError``): something failed under the
  program: a worker died, an object was lost, a wait timed out;
- internal errors (``EmberInternalError``): a bug in ember itself.

``EmberTaskError`` wraps an exception raised by user code in a task.

Ray's names are here too, so ``except ray.exceptions.RayError`` works under
``import ember as ray``: ``RayError`` is ``EmberError`` itself (the root of
every error ember raises), and the classes Ray programs catch
(``RaySystemError``, ``ObjectStoreFullError``, ``OutOfMemoryError``,
``ObjectReconstructionFailedError`` and its subclasses, ``OwnerDiedError``,
``ActorUnavailableError``) sit where ember raises the matching error, as bases
of ember's own classes where both exist.

Every exception here pickles (they cross process boundaries) and no
constructor does I/O.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "RuntimeEnvSetupError",
    "EmberError",
    "EmberUserError",
    "EmberOperationError",
    "EmberInternalError",
    "EmberTaskError",
    "RayError",
    "RaySystemError",
    "RayTaskError",
    "SerializationError",
    "InfeasibleResourceError",
    "InvalidOptionError",
    "NotAnObjectRefError",
    "ForeignObjectRefError",
    "UnknownObjectRefError",
    "ObjectTooLargeError",
    "ObjectStoreFullError",
    "OutOfMemoryError",
    "NotInitializedError",
    "ObjectLostError",
    "OwnerDiedError",
    "ObjectReconstructionFailedError",
    "ObjectReconstructionFailedMaxAttemptsExceededError",
    "ObjectReconstructionFailedLineageEvictedError",
    "ObjectTransferError",
    "ActorDiedError",
    "ActorRestartLoopError",
    "InfeasibleActorError",
    "ActorUnschedulableError",
    "TaskUnschedulableError",
    "RayActorError",
    "ActorUnavailableError",
    "ActorAlreadyExistsError",
    "ActorHandleNotFoundError",
    "PlacementGroupAlreadyExistsError",
    "TaskPlacementGroupRemoved",
    "ActorPlacementGroupRemoved",
    "PlacementGroupNotFoundError",
    "WorkerCrashedError",
    "GetTimeoutError",
    "TaskCancelledError",
    "ClusterStartError",
    "ClusterUnavailableError",
    "LineageLogUnavailableError",
    "LineageLogFailedError",
    "AlreadyInitializedError",
    "InvalidAddressError",
]


class EmberError(Exception):
    """Root of every error ember raises."""


class EmberUserError(EmberError):
    """The program used ember in a way that cannot work; the message says how to fix it."""


class EmberOperationError(EmberError):
    """Something failed under the program (a process died, a wait timed out)."""


class EmberInternalError(EmberError):
    """A bug in ember. Please report it with the message and traceback."""


class RaySystemError(EmberOperationError):
    """Ray's name for a failure of the system under the program: ember's cluster could not be started or reached.

    Base of ``ClusterStartError``, ``ClusterUnavailableError`` and
    ``LineageLogUnavailableError``, so Ray code that catches it catches them.
    """


class ObjectStoreFullError(EmberOperationError):
    """Ray's name for an object that does not fit in the object store.

    ember spills to disk before it refuses a put, so the error it raises is
    ``ObjectTooLargeError`` (a subclass): the object fits in neither the free
    shared memory nor the free spill disk.
    """


class RuntimeEnvSetupError(EmberOperationError):
    """A task's or actor's ``runtime_env`` could not be set up on its node (a package not in the log, pip
    failed): the task fails with it, unrun, and the worker that tried is retired (a next try starts afresh)."""


class OutOfMemoryError(EmberOperationError):
    """Ray's error for a task its memory monitor killed.

    ember has no memory monitor: it never raises this class. It is defined so
    that Ray programs' ``except ray.exceptions.OutOfMemoryError`` clauses
    run; a worker the kernel's OOM killer ends is a ``WorkerCrashedError``
    naming the signal.
    """


class SerializationError(EmberUserError, TypeError):
    """A value could not be pickled or unpickled to cross a process boundary."""


class InvalidOptionError(EmberUserError, ValueError):
    """An option given to ``remote``/``options``/``init`` is unknown or ill-typed."""


class NotAnObjectRefError(EmberUserError, TypeError):
    """``get``/``wait``/``cancel`` was given something that is not an ObjectRef."""


class ForeignObjectRefError(EmberUserError, ValueError):
    """An ObjectRef made by another cluster session (one since shut down) was used in this one."""


class UnknownObjectRefError(EmberUserError, ValueError):
    """``ObjectRef(id)`` of an id this cluster's lineage log has no object or task for."""

    def __init__(self, object_id_hex: str = "", reason: str = "") -> None:
        self.object_id_hex = object_id_hex
        self.reason = reason
        super().__init__(f"no object {object_id_hex} in this cluster: {reason}")

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.object_id_hex, self.reason))


class ObjectTooLargeError(EmberUserError, ObjectStoreFullError):
    """An object is larger than the node's shared memory and spill disk can hold, free space counted."""


class InfeasibleResourceError(EmberUserError):
    """A task or actor asks for resources that no node in the cluster has."""


class NotInitializedError(EmberUserError, RuntimeError):
    """An API that needs a running cluster was called before ``ember.init()``."""


class ClusterStartError(RaySystemError, RuntimeError):
    """``ember.init()`` could not start or reach the cluster's processes."""


class ClusterUnavailableError(RaySystemError, ConnectionError):
    """The cluster's scheduler cannot be reached (it stopped, or this process was cut off)."""


class LineageLogUnavailableError(RaySystemError, ConnectionError):
    """The lineage log could not commit in time, so a value whose lineage is not durable was held back.

    Durable before visible: ember hands out no value (to ``get``, ``wait``,
    another process) before the rows that can rebuild it are committed. The
    value is not lost; the call can be made again once the log is back.
    """

    def __init__(self, url: str = "", waited_s: float = 0.0, what: str = "a value") -> None:
        self.url = url
        self.waited_s = waited_s
        self.what = what
        super().__init__(
            f"the lineage log at {url} did not commit within {waited_s:g}s, so {what} is held back: "
            "ember hands out no value whose lineage is not durable. Nothing committed is lost; check that "
            "PostgreSQL is up (EMBER_GCS_URL, or the embedded server under $EMBER_HOME) and call again once "
            "it is back. EMBER_LOG_COMMIT_WAIT_S sets how long a call waits for the log"
        )

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.url, self.waited_s, self.what))


class LineageLogFailedError(LineageLogUnavailableError):
    """The lineage log's writer stopped on an error that trying again cannot mend (a log whose tables do
    not match this ember's, say): nothing more commits, so values are held back at once, with the cause."""

    def __init__(self, url: str = "", cause: str = "", what: str = "a value") -> None:
        self.url = url
        self.cause = cause
        self.waited_s = 0.0
        self.what = what
        super(LineageLogUnavailableError, self).__init__(
            f"the lineage log at {url} stopped taking rows ({cause}), so {what} is held back: ember hands "
                  "out no value whose lineage is not durable. What was committed before is kept; start ember "
                  "again with a log it can write (EMBER_GCS_URL, or EMBER_HOME for the embedded server)")

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.url, self.cause, self.what))


class ActorAlreadyExistsError(EmberUserError, ValueError):
    """An actor is created with a name a live actor has already (``ValueError``, as Ray's)."""


class ActorHandleNotFoundError(EmberUserError, ValueError):
    """``get_actor`` of a name no live actor has (``ValueError``, as Ray's)."""


class PlacementGroupAlreadyExistsError(EmberUserError, ValueError):
    """A placement group is created with a name a live group has already (``ValueError``, as Ray's)."""


class PlacementGroupNotFoundError(EmberUserError, ValueError):
    """``get_placement_group`` of a name no live group has (``ValueError``, as Ray's)."""


class AlreadyInitializedError(EmberUserError, RuntimeError):
    """``ember.init()`` was called again in a process that is already connected."""


class InvalidAddressError(EmberUserError, ValueError):
    """An address is malformed, or names something a node will not let a peer reach (its message says which)."""


class GetTimeoutError(EmberOperationError, TimeoutError):
    """``ember.get(..., timeout=)`` ran out of time before the value was ready."""


class TaskCancelledError(EmberOperationError):
    """The task that would create this object was cancelled with ``ember.cancel``."""

    def __init__(self, task_id_hex: str = "", reason: str = "cancelled by ember.cancel()") -> None:
        self.task_id_hex = task_id_hex
        self.reason = reason
        super().__init__(f"task {task_id_hex} was cancelled: {reason}")

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.task_id_hex, self.reason))


class WorkerCrashedError(EmberOperationError):
    """The worker process running the task died, and no retries were left."""

    def __init__(self, task_desc: str = "", attempts: int = 0, cause: str = "") -> None:
        self.task_desc = task_desc
        self.attempts = attempts
        self.cause = cause
        super().__init__(
            f"the worker running {task_desc} died ({cause or 'unexpected exit'}) "
            f"after {attempts} attempt(s); retries exhausted (raise max_retries to retry more)"
        )

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.task_desc, self.attempts, self.cause))


class ObjectLostError(EmberOperationError):
    """Every copy of an object is gone and it cannot be rebuilt."""

    def __init__(self, object_id_hex: str = "", reason: str = "") -> None:
        self.object_id_hex = object_id_hex
        self.reason = reason
        super().__init__(f"object {object_id_hex} is lost: {reason}")

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.object_id_hex, self.reason))


class OwnerDiedError(ObjectLostError):
    """The object's owner died, and the object cannot come back without it.

    ember adopts the objects of a dead owner and rebuilds them from the
    lineage log, so this is raised only for what nothing can rebuild: a put
    (or a by-value argument) of a dead process of which no durable copy was
    kept.
    """


class ObjectReconstructionFailedError(ObjectLostError):
    """Every copy of an object is gone and replaying its lineage cannot bring it back (the reason says why)."""


class ObjectReconstructionFailedMaxAttemptsExceededError(ObjectReconstructionFailedError):
    """The object's task would have to run again, but it has used the attempts its ``max_retries`` allows."""


class ObjectReconstructionFailedLineageEvictedError(ObjectReconstructionFailedError):
    """The object's creating task is no longer in the lineage log (``ember prune`` removed it)."""


class ObjectTransferError(EmberOperationError):
    """No store that was asked for an object's bytes delivered them whole; ``reason`` says what each did."""

    def __init__(self, object_id_hex: str = "", reason: str = "") -> None:
        self.object_id_hex = object_id_hex
        self.reason = reason
        super().__init__(
            f"object {object_id_hex} could not be pulled from another node: {reason}. If its copies are gone, "
            "it is rebuilt from lineage; if the stores run, check that they are reachable and share this "
            "cluster's token"
        )

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.object_id_hex, self.reason))


class RayActorError(EmberOperationError):
    """Ray's base of the errors of a call on an actor that cannot run it: the actor died, or is unavailable."""

    def __init__(self, actor_desc: str = "", reason: str = "") -> None:
        self.actor_desc = actor_desc
        self.reason = reason
        super().__init__(self._message())

    def _message(self) -> str:
        return f"actor {self.actor_desc} is dead: {self.reason}"

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.actor_desc, self.reason))


class ActorDiedError(RayActorError):
    """The actor is dead and will not come back (killed, or out of restarts)."""


class InfeasibleActorError(ActorDiedError, InfeasibleResourceError):
    """The actor never started: it asks for more than any node of its cluster has, and no node can join.

    Both an ``ActorDiedError`` (what Ray code catches for a dead actor) and an
    ``InfeasibleResourceError`` (what it is: the request is the program's to fix).
    """


class TaskUnschedulableError(EmberOperationError):
    """The task's scheduling strategy cannot be met, and it does not allow another node.

    ``NodeAffinitySchedulingStrategy(node_id, soft=False)`` to a node that is
    dead, unknown to the cluster, or too small for the request (Ray's error of
    the same name).
    """

    def __init__(self, task_desc: str = "", reason: str = "") -> None:
        self.task_desc = task_desc
        self.reason = reason
        super().__init__(f"the task {task_desc} is not schedulable: {reason}")

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.task_desc, self.reason))


class ActorUnschedulableError(ActorDiedError):
    """The actor never started: its scheduling strategy cannot be met (hard affinity to a dead or unknown node).

    An ``ActorDiedError`` too, as every actor that will not run.
    """


class TaskPlacementGroupRemoved(TaskUnschedulableError):
    """The task's placement group was removed before it could run, or while it ran (Ray's error of the same name)."""


class ActorPlacementGroupRemoved(ActorUnschedulableError):
    """The actor's placement group was removed: it was stopped, or never started (Ray's error of the same name)."""


class ActorRestartLoopError(EmberUserError):
    """A call killed its actor's process again at the same replayed state: it fails instead of burning restarts.

    ``call_desc`` names the call (``Class.method (task id)``), ``state_desc`` the state it killed the actor
    in (what the restart replayed), ``restarts`` the restarts it had cost. The actor lives on without it.
    """

    def __init__(self, actor_desc: str = "", call_desc: str = "", state_desc: str = "", restarts: int = 0) -> None:
        self.actor_desc = actor_desc
        self.call_desc = call_desc
        self.state_desc = state_desc
        self.restarts = restarts
        super().__init__(
            f"call {call_desc} killed actor {actor_desc}'s process again at the same state ({state_desc}), "
            f"after {restarts} restart(s) it caused: it fails instead of killing the actor on every restart. "
            "The call dies on the state the actor's replay restores; if the actor should restart from its "
            "constructor instead (as in Ray), create it with restart_from=\"constructor\"")

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.actor_desc, self.call_desc, self.state_desc, self.restarts))


class ActorUnavailableError(RayActorError):
    """Ray's error for an actor that cannot take calls right now; the call did not run.

    A call on a restarting actor waits for the restart (its calls are logged
    and replayed), and one that cannot be run again raises ``ActorDiedError``.
    ember raises this one in a cluster only: for a call that reached an actor
    whose node has not heard from the GCS for longer than the calls' hold
    allows (``EMBER_ACTOR_HOLD_MAX_S``, 60 s; docs/fault-tolerance.md,
    "The lease on actor calls"). The call did not run, so sending it again
    is safe.
    """

    def _message(self) -> str:
        return f"actor {self.actor_desc} is unavailable: {self.reason}"


class EmberTaskError(EmberError):
    """User code raised inside a task or actor method.

    ``cause`` is the original exception (or ``None`` if it could not be
    pickled), ``traceback_str`` the remote traceback. At ``get`` the error is
    raised as an instance of both this class and the cause's type, so
    ``except ValueError`` catches a remote ``ValueError``.
    """

    def __init__(
        self,
        function_name: str = "",
        traceback_str: str = "",
        cause: BaseException | None = None,
        cause_repr: str = "",
    ) -> None:
        self.function_name = function_name
        self.traceback_str = traceback_str
        self.cause = cause
        self.cause_repr = cause_repr or repr(cause)
        super().__init__(self._message())

    def _message(self) -> str:
        return (
            f"task {self.function_name} raised {self.cause_repr}\n\n"
            f"remote traceback:\n{self.traceback_str.rstrip()}"
        )

    def __str__(self) -> str:
        return self._message()

    def __reduce__(self) -> tuple[Any, ...]:
        return (EmberTaskError, (self.function_name, self.traceback_str, self.cause, self.cause_repr))

    def as_instanceof_cause(self) -> "EmberTaskError":
        """This error as an instance of a class deriving from both this one and the cause's."""
        cause_cls = type(self.cause) if self.cause is not None else None
        if cause_cls is None or isinstance(self, cause_cls) or cause_cls is BaseException:
            return self
        try:
            derived = _derived_class(cause_cls)
            err = derived.__new__(derived)
            EmberTaskError.__init__(err, self.function_name, self.traceback_str, self.cause, self.cause_repr)
            err.args = self.cause.args  # type: ignore[union-attr]
            return err
        except TypeError:
            # Some exception types (final C types, odd metaclasses) cannot be subclassed.
            return self


_DERIVED: dict[type, type] = {}


def _derived_class(cause_cls: type) -> type:
    derived = _DERIVED.get(cause_cls)
    if derived is None:

        def __reduce__(self: EmberTaskError) -> tuple[Any, ...]:
            return (EmberTaskError, (self.function_name, self.traceback_str, self.cause, self.cause_repr))

        derived = type(
            f"EmberTaskError({cause_cls.__name__})",
            (EmberTaskError, cause_cls),
            {"__reduce__": __reduce__, "__str__": EmberTaskError.__str__, "__module__": __name__},
        )
        _DERIVED[cause_cls] = derived
    return derived


# Names Ray users already catch.
RayError = EmberError
RayTaskError = EmberTaskError
