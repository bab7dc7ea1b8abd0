from ember.scheduler._resources import ResourcePool, cpu_part
from ember.scheduler._spec import resource_shape


def test_acquire_release_and_feasibility():
    pool = ResourcePool({"CPU": 2, "GPU": 1})
    shape = resource_shape({"CPU": 1, "GPU": 0.5})
    assert pool.feasible(shape)
    assert not pool.feasible(resource_shape({"GPU": 2}))
    assert pool.missing(resource_shape({"GPU": 2, "TPU": 1})) == {"GPU": 2.0, "TPU": 1.0}
    pool.acquire(shape)
    pool.acquire(shape)
    assert not pool.can_acquire(resource_shape({"CPU": 1}))
    pool.release(shape)
    assert pool.can_acquire(shape)


def test_blocked_worker_gives_back_cpu_and_may_oversubscribe():
    pool = ResourcePool({"CPU": 1})
    shape = resource_shape({"CPU": 1})
    pool.acquire(shape)
    pool.release(cpu_part(shape))
    pool.acquire(shape)  # a nested task runs while its parent is blocked
    pool.acquire(cpu_part(shape), force=True)  # the parent resumes
    _, available = pool.snapshot()
    assert available["CPU"] == 0.0
    assert pool.available["CPU"] == -1.0


def test_zero_amounts_are_dropped_from_shapes():
    assert resource_shape({"CPU": 0, "GPU": 1}) == (("GPU", 1.0),)
