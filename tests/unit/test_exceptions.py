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
    ex.UnknownObjectRefError("cd34", "the lineage log has no task or put that made it"),
    ex.EmberTaskError("f", "Traceback...", ValueError("boom"), "ValueError('boom')"),
    ex.InvalidAddressError("grpc://h:0/s: port 0"),
    ex.LineageLogUnavailableError("postgresql://postgres@/ember?host=/tmp/x", 2.0, "the value of f"),
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
