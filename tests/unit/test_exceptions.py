import pickle

import pytest

from ember import exceptions as ex

INSTANCES = [
    ex.EmberError("x"),
    ex.SerializationError("cannot pickle"),
    ex.InvalidOptionError("bad"),
    ex.InfeasibleResourceError("too many GPUs"),
    ex.NotAnObjectRefError("not a ref"),
    ex.ForeignObjectRefError("from another cluster"),
    ex.ObjectTooLargeError("too large"),
    ex.GetTimeoutError("late"),
    ex.TaskCancelledError("ab12"),
    ex.WorkerCrashedError("f (task 01)", 4, "pid 1 killed by SIGKILL"),
    ex.ObjectLostError("cd34", "store died"),
    ex.OwnerDiedError("cd34", "owner died"),
    ex.ObjectTransferError("cd34", "127.0.0.1:5000: does not have it"),
    ex.ActorDiedError("Counter", "killed by ember.kill()"),
    ex.ActorRestartLoopError("Counter", "Counter.add (task 01)", "after call 10, replayed", 2),
    ex.InfeasibleActorError("Counter", "it cannot start: it asks for {'tpu': 1.0}"),
    ex.TaskUnschedulableError("f (task 01)", "node ab12 is dead, and soft=False"),
    ex.ActorUnschedulableError("Counter", "it cannot be scheduled: node ab12 is dead, and soft=False"),
    ex.UnknownObjectRefError("cd34", "the lineage log has no task or put that made it"),
    ex.EmberTaskError("f", "Traceback...", ValueError("boom"), "ValueError('boom')"),
    ex.InvalidAddressError("grpc://h:0/s: port 0"),
    ex.LineageLogUnavailableError("postgresql://postgres@/ember?host=/tmp/x", 2.0, "the value of f"),
    ex.RaySystemError("the scheduler is gone"),
    ex.ObjectStoreFullError("full"),
    ex.OutOfMemoryError("killed"),
    ex.ObjectReconstructionFailedError("cd34", "lineage too long"),
    ex.ObjectReconstructionFailedMaxAttemptsExceededError("cd34", "attempts used"),
    ex.ObjectReconstructionFailedLineageEvictedError("cd34", "pruned"),
    ex.RayActorError("Counter", "gone"),
    ex.ActorUnavailableError("Counter", "restarting"),
    ex.ActorAlreadyExistsError("an actor named 'a' already exists"),
    ex.ActorHandleNotFoundError("no live actor named 'a'"),
    ex.PlacementGroupAlreadyExistsError("a placement group named 'g' already exists"),
    ex.PlacementGroupNotFoundError("no live placement group named 'g'"),
    ex.TaskPlacementGroupRemoved("f (task 01)", "placement group ab12 was removed"),
    ex.ActorPlacementGroupRemoved("Counter", "it cannot be scheduled: placement group ab12 was removed"),
]


@pytest.mark.parametrize("error", INSTANCES, ids=lambda e: type(e).__name__)
def test_every_error_pickles(error):
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is type(error)
    assert str(copy) == str(error)


def test_task_error_is_instance_of_cause():
    err = ex.EmberTaskError("f", "tb", KeyError("k"), "KeyError('k')").as_instanceof_cause()
    assert isinstance(err, KeyError)
    assert isinstance(err, ex.EmberTaskError)
    assert "tb" in str(err)
    again = pickle.loads(pickle.dumps(err))
    assert isinstance(again, ex.EmberTaskError)
    assert isinstance(again.as_instanceof_cause(), KeyError)


def test_families():
    assert issubclass(ex.GetTimeoutError, ex.EmberOperationError)
    assert issubclass(ex.InvalidOptionError, ex.EmberUserError)
    for misuse in (ex.NotAnObjectRefError, ex.ForeignObjectRefError, ex.ObjectTooLargeError):
        assert issubclass(misuse, ex.EmberUserError)
    assert issubclass(ex.NotAnObjectRefError, TypeError)  # what Ray-era code catches
    assert issubclass(ex.WorkerCrashedError, ex.EmberError)
    assert ex.RayTaskError is ex.EmberTaskError


def test_every_ember_error_is_a_ray_error():
    """``except ray.exceptions.RayError`` catches whatever ember raises (issue 25)."""
    assert ex.RayError is ex.EmberError
    for name in ex.__all__:
        error_class = getattr(ex, name)
        assert issubclass(error_class, ex.RayError), name


def test_rays_exception_tree():
    """The classes Ray programs catch are bases of the ember errors raised in their place."""
    assert issubclass(ex.ObjectTooLargeError, ex.ObjectStoreFullError)
    assert issubclass(ex.ObjectTooLargeError, ex.EmberUserError)
    for system in (ex.ClusterStartError, ex.ClusterUnavailableError, ex.LineageLogUnavailableError):
        assert issubclass(system, ex.RaySystemError)
    assert issubclass(ex.OwnerDiedError, ex.ObjectLostError)
    assert issubclass(ex.ObjectReconstructionFailedError, ex.ObjectLostError)
    for sub in (ex.ObjectReconstructionFailedMaxAttemptsExceededError, ex.ObjectReconstructionFailedLineageEvictedError):
        assert issubclass(sub, ex.ObjectReconstructionFailedError)
    for actor_error in (ex.ActorDiedError, ex.ActorUnavailableError, ex.InfeasibleActorError):
        assert issubclass(actor_error, ex.RayActorError)
    assert not issubclass(ex.ActorUnavailableError, ex.ActorDiedError)
    assert "unavailable" in str(ex.ActorUnavailableError("A", "restarting"))
    assert issubclass(ex.OutOfMemoryError, ex.EmberOperationError)
    for name_error in (ex.ActorAlreadyExistsError, ex.ActorHandleNotFoundError):
        assert issubclass(name_error, ValueError) and issubclass(name_error, ex.EmberUserError)


def test_an_object_that_cannot_come_back_gets_rays_class_for_its_reason():
    from ember.lineage import Lost, LostWhy
    from ember.scheduler._owner._reconstruct import lost_error

    oid = bytes(20)
    expected = {
        (LostWhy.NO_COPY, False): ex.ObjectLostError,
        (LostWhy.NO_COPY, True): ex.OwnerDiedError,  # a dead owner's put with no durable copy
        (LostWhy.NOT_LOGGED, False): ex.ObjectReconstructionFailedLineageEvictedError,
        (LostWhy.TOO_LONG, False): ex.ObjectReconstructionFailedError,
        (LostWhy.LOGGING_OFF, True): ex.ObjectReconstructionFailedError,
    }
    for (why, adopted), error_class in expected.items():
        error = lost_error(Lost(oid, "because", why), adopted)
        assert type(error) is error_class, (why, adopted)
        assert error.reason == "because" and error.object_id_hex == oid.hex()
