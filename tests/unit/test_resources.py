from ember.scheduler._resources import ResourcePool, cpu_part
from ember.scheduler._spec import resource_shape


def test_acquire_release_and_feasibility():
    pool = ResourcePool({"CPU": 2, "GPU": 1})
    shape = resource_shape({"CPU": 1, "GPU": 0.5})
    assert pool.feasible(shape)
    assert not pool.feasible(resource_shape({"GPU": 2}))
    assert pool.missing(resource_shape({"GPU": 2, "TPU": 1})) == {"GPU": 2.0, "TPU": 1.0}
    pool.acquire(shape)
    held = pool.acquire(shape)
    assert not pool.can_acquire(resource_shape({"CPU": 1}))
    pool.release(shape, held)
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


def test_whole_gpu_requests_take_whole_free_devices_and_give_them_back():
    pool = ResourcePool({"CPU": 8, "GPU": 3})
    one, two = resource_shape({"GPU": 1}), resource_shape({"GPU": 2})
    assert pool.acquire(one) == (0,)
    assert pool.acquire(two) == (1, 2)
    assert not pool.can_acquire(one)
    pool.release(two, (1, 2))
    assert pool.acquire(one) == (1,)  # distinct from the device still held
    assert pool.gpus_in_use() == [1.0, 1.0, 0.0]


def test_fractions_share_the_fullest_device_they_fit_on():
    pool = ResourcePool({"GPU": 2})
    half, quarter, whole = resource_shape({"GPU": 0.5}), resource_shape({"GPU": 0.25}), resource_shape({"GPU": 1})
    assert pool.acquire(half) == (0,)
    assert pool.acquire(quarter) == (0,)  # packs onto device 0 (0.5 free), not the idle device 1
    assert pool.acquire(whole) == (1,)
    assert pool.acquire(quarter) == (0,)
    assert not pool.can_acquire(quarter)  # the totals would say 0.0 free anyway
    pool.release(whole, (1,))
    # 1.0 free in total but split: a whole GPU needs a wholly free device.
    pool.release(half, (0,))
    assert pool.can_acquire(whole) and pool.acquire(whole) == (1,)
    assert not pool.can_acquire(whole) and pool.available["GPU"] == 0.5


def test_tasks_in_a_bundle_take_the_bundles_gpu_devices_by_the_nodes_rule():
    from ember.scheduler._spec import bundle_resources, bundle_shape

    pool = ResourcePool({"CPU": 4.0, "GPU": 3.0})
    pool.acquire((("GPU", 1.0),))  # device 0 is held outside any group
    reserved = pool.acquire((("GPU", 2.0),))
    assert reserved == (1, 2)
    pool.add(bundle_resources("g", 0, {"GPU": 2.0}), reserved)
    one = bundle_shape((("GPU", 1.0),), "g", 0)
    first, second = pool.acquire(one), pool.acquire(one)
    assert {first, second} == {(1,), (2,)}  # distinct, and the bundle's own
    assert not pool.can_acquire(one)
    pool.release(one, first)
    assert pool.acquire(bundle_shape((("GPU", 0.5),), "g", -1)) == first  # any bundle: the free device
    assert pool.acquire(bundle_shape((("GPU", 0.5),), "g", -1)) == first  # fractions share it
    pool.remove(bundle_resources("g", 0, {"GPU": 2.0}))
    assert not pool.can_acquire(one)
