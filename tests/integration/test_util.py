"""``ember.util`` as Ray programs use it: ActorPool, Queue, multiprocessing.Pool, as_completed, map_unordered,
list_named_actors; and ``except ray.exceptions.RayError`` catching what a real cluster raises.

One 2-CPU cluster for the module; every wait is bounded by ``BOUND_S``.
"""

from __future__ import annotations

import threading
import time

import pytest

import ember
import ember as ray
from ember.util import ActorPool, as_completed, list_named_actors, map_unordered
from ember.util.multiprocessing import Pool
from ember.util.queue import Empty, Full, Queue

BOUND_S = 60.0


@ember.remote
class Doubler:
    def double(self, x):
        return 2 * x

    def slow_double(self, x):
        time.sleep(0.05 * (x % 3))
        return 2 * x

    def fail(self, x):
        raise ValueError(f"bad {x}")


@ember.remote
def square(x):
    time.sleep(0.01 * (x % 4))
    return x * x


@pytest.fixture(scope="module", autouse=True)
def _cluster(fault_cluster):
    yield


# -- exceptions ----------------------------------------------------------------------------------------------


def test_ray_error_catches_a_task_error_and_a_timeout():
    @ember.remote
    def boom():
        raise KeyError("k")

    with pytest.raises(ray.exceptions.RayError) as caught:
        ember.get(boom.remote(), timeout=BOUND_S)
    assert isinstance(caught.value, KeyError) and isinstance(caught.value, ray.exceptions.RayTaskError)

    @ember.remote
    def slow():
        time.sleep(5)

    with pytest.raises(ray.exceptions.RayError):
        ember.get(slow.remote(), timeout=0.05)


def test_ray_actor_error_catches_a_killed_actors_call():
    actor = Doubler.remote()
    assert ember.get(actor.double.remote(1), timeout=BOUND_S) == 2
    ember.kill(actor)
    with pytest.raises(ray.exceptions.RayActorError):
        ember.get(actor.double.remote(2), timeout=BOUND_S)


# -- ActorPool -----------------------------------------------------------------------------------------------


def test_actor_pool_map_keeps_order_and_map_unordered_keeps_every_value():
    pool = ActorPool([Doubler.remote(), Doubler.remote()])
    assert list(pool.map(lambda a, v: a.slow_double.remote(v), range(10))) == [2 * v for v in range(10)]
    assert sorted(pool.map_unordered(lambda a, v: a.slow_double.remote(v), range(10))) == [2 * v for v in range(10)]


def test_actor_pool_submit_get_next_and_idle_bookkeeping():
    a, b = Doubler.remote(), Doubler.remote()
    pool = ActorPool([a, b])
    assert pool.has_free() and not pool.has_next()
    for v in (1, 2, 3):  # the third waits for an actor
        pool.submit(lambda actor, v: actor.double.remote(v), v)
    assert not pool.has_free() and pool.has_next()
    assert [pool.get_next(timeout=BOUND_S) for _ in range(3)] == [2, 4, 6]
    with pytest.raises(StopIteration):
        pool.get_next()
    idle = pool.pop_idle()
    assert idle in (a, b) and pool.has_free()
    with pytest.raises(ValueError):
        pool.push(pool.pop_idle() or a)  # back in, then again: already a member
        pool.push(a if idle is b else b)
    pool.push(idle)
    pool.submit(lambda actor, v: actor.double.remote(v), 7)
    assert pool.get_next_unordered(timeout=BOUND_S) == 14


def test_actor_pool_get_next_timeout_and_errors():
    @ember.remote
    class Sleeper:
        def sleep(self, s):
            time.sleep(s)
            return s

    pool = ActorPool([Sleeper.remote()])
    pool.submit(lambda a, v: a.sleep.remote(v), 2.0)
    with pytest.raises(TimeoutError):
        pool.get_next(timeout=0.05)
    assert pool.get_next(timeout=0.05, ignore_if_timedout=True) is None
    assert pool.get_next(timeout=BOUND_S) == 2.0
    failing = ActorPool([Doubler.remote()])
    failing.submit(lambda a, v: a.fail.remote(v), 1)
    with pytest.raises(ValueError, match="bad 1"):
        failing.get_next()
    assert failing.has_free()  # the actor came back to the pool
    with pytest.raises(TypeError):
        ActorPool([object()])


# -- Queue ---------------------------------------------------------------------------------------------------


def test_queue_put_get_sizes_and_errors():
    q = Queue(maxsize=2)
    assert q.empty() and not q.full() and len(q) == 0
    q.put(1)
    q.put_nowait(2)
    assert q.full() and q.size() == 2 and q.qsize() == 2
    with pytest.raises(Full):
        q.put_nowait(3)
    started = time.monotonic()
    with pytest.raises(Full):
        q.put(3, timeout=0.2)
    assert time.monotonic() - started >= 0.2
    assert q.get() == 1 and q.get_nowait() == 2
    with pytest.raises(Empty):
        q.get_nowait()
    with pytest.raises(Empty):
        q.get(timeout=0.1)
    with pytest.raises(ValueError):
        q.get(timeout=-1)
    import queue as stdlib_queue

    assert issubclass(Empty, stdlib_queue.Empty) and issubclass(Full, stdlib_queue.Full)


def test_queue_batches_are_all_or_nothing():
    q = Queue(maxsize=3)
    q.put_nowait_batch([1, 2])
    with pytest.raises(Full):
        q.put_nowait_batch([3, 4])
    assert q.size() == 2
    with pytest.raises(Empty):
        q.get_nowait_batch(3)
    assert q.get_nowait_batch(2) == [1, 2]
    assert q.get_nowait_batch(0) == []
    with pytest.raises(ValueError):
        q.get_nowait_batch(-1)


def test_a_blocked_get_returns_when_a_task_puts():
    q = Queue()

    @ember.remote
    def producer(queue, items):
        time.sleep(0.3)
        for item in items:
            queue.put(item)
        return len(items)

    ref = producer.remote(q, list(range(5)))
    assert [q.get(timeout=BOUND_S) for _ in range(5)] == list(range(5))
    assert ember.get(ref, timeout=BOUND_S) == 5


def test_a_queue_passes_to_an_actor_and_shuts_down():
    q = Queue()

    @ember.remote
    class Consumer:
        def drain(self, queue, count):
            return [queue.get(timeout=BOUND_S) for _ in range(count)]

    consumer = Consumer.remote()
    q.put_nowait_batch(["a", "b", "c"])
    assert ember.get(consumer.drain.remote(q, 3), timeout=BOUND_S) == ["a", "b", "c"]
    q.shutdown()
    with pytest.raises(RuntimeError, match="shut down"):
        q.put(1)
    q.shutdown()  # twice is fine


# -- multiprocessing.Pool ------------------------------------------------------------------------------------


def _inc(x):
    return x + 1


def _add(x, y):
    return x + y


def _raise(x):
    raise ValueError(f"no {x}")


_SEEN = []


def _remember(value):
    _SEEN.append(value)


def test_pool_map_starmap_apply_and_imap():
    with Pool(processes=2) as pool:
        assert pool.map(_inc, range(20)) == list(range(1, 21))
        assert pool.map(_inc, range(5), chunksize=2) == [1, 2, 3, 4, 5]
        assert pool.starmap(_add, [(1, 2), (3, 4)]) == [3, 7]
        assert pool.apply(_add, (2, 3)) == 5
        assert pool.apply(_add, (2,), {"y": 10}) == 12
        assert list(pool.imap(_inc, range(7), chunksize=2)) == list(range(1, 8))
        assert sorted(pool.imap_unordered(_inc, range(7))) == list(range(1, 8))
        result = pool.map_async(_inc, [1, 2])
        result.wait(timeout=BOUND_S)
        assert result.ready() and result.successful() and result.get(timeout=BOUND_S) == [2, 3]
        assert pool.apply_async(_add, (1, 1)).get(timeout=BOUND_S) == 2
        with pytest.raises(ValueError, match="no 3"):
            pool.map(_raise, [3])
        failed = pool.apply_async(_raise, (4,))
        failed.wait(timeout=BOUND_S)
        assert not failed.successful()
    with pytest.raises(ValueError, match="not running"):
        pool.map(_inc, [1])


def test_pool_initializer_callbacks_close_and_join():
    errors = []
    done = threading.Event()
    pool = Pool(processes=1, initializer=_remember, initargs=("init",))
    pool.apply_async(_inc, (1,), callback=lambda v: (_SEEN.append(v), done.set()))
    pool.apply_async(_raise, (2,), error_callback=lambda e: (errors.append(e), done.set()))
    pool.close()
    with pytest.raises(ValueError):
        pool.apply(_inc, (1,))
    pool.join()
    deadline = time.monotonic() + BOUND_S
    while (2 not in _SEEN or not errors) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert 2 in _SEEN and isinstance(errors[0], ValueError)
    with pytest.raises(ValueError, match="still running"):
        Pool(processes=1).join()


def test_pool_refuses_what_it_does_not_carry_out():
    with pytest.raises(ember.exceptions.InvalidOptionError, match="maxtasksperchild"):
        Pool(processes=1, maxtasksperchild=3)
    with pytest.raises(ember.exceptions.InvalidOptionError, match="context"):
        Pool(processes=1, context="spawn")
    with pytest.raises(ValueError):
        Pool(processes=0)


# -- as_completed, map_unordered, list_named_actors ----------------------------------------------------------


def test_as_completed_and_map_unordered():
    refs = [square.remote(i) for i in range(12)]
    assert sorted(as_completed(refs, chunk_size=5)) == [i * i for i in range(12)]
    yielded = list(as_completed(refs, yield_obj_refs=True))
    assert sorted(yielded, key=lambda r: r.hex()) == sorted(refs, key=lambda r: r.hex())
    assert sorted(map_unordered(square, range(12), backpressure_size=3, chunk_size=2)) == [i * i for i in range(12)]
    assert sorted(map_unordered(square, range(4), backpressure_size=None)) == [0, 1, 4, 9]
    with pytest.raises(ValueError):
        list(as_completed(refs, chunk_size=0))
    with pytest.raises(ValueError):
        list(as_completed(refs, num_returns=2))
    with pytest.raises(ValueError):
        list(map_unordered(square, [1], backpressure_size=0))


def test_list_named_actors():
    before = set(list_named_actors())
    actor = Doubler.options(name="util-test-doubler").remote()
    ember.get(actor.double.remote(1), timeout=BOUND_S)
    assert set(list_named_actors()) == before | {"util-test-doubler"}
    assert {"namespace": ember.get_runtime_context().namespace, "name": "util-test-doubler"} in list_named_actors(True)
    ember.kill(actor)
    assert "util-test-doubler" not in list_named_actors()


def test_queue_put_async_and_get_async():
    import asyncio

    q = Queue(maxsize=1)

    async def main():
        await q.put_async("a")
        with pytest.raises(Full):
            await q.put_async("b", block=False)
        with pytest.raises(Full):
            await q.put_async("b", timeout=0.1)
        assert await q.get_async() == "a"
        with pytest.raises(Empty):
            await q.get_async(block=False)
        with pytest.raises(ValueError):
            await q.get_async(timeout=-1)
        # A blocked get_async lets the loop run the put that ends its wait.
        waiter = asyncio.ensure_future(q.get_async(timeout=BOUND_S))
        await asyncio.sleep(0.2)
        await q.put_async("c")
        return await waiter

    assert asyncio.run(main()) == "c"


def test_get_node_ip_address_in_the_driver_and_in_a_task():
    @ember.remote
    def where():
        return ember.util.get_node_ip_address()

    ip = ember.util.get_node_ip_address()
    assert f"node:{ip}" in ember.cluster_resources() and ember.get(where.remote(), timeout=BOUND_S) == ip


def test_namespaces_separate_named_actors():
    from ember.exceptions import ActorAlreadyExistsError, ActorHandleNotFoundError

    a = Doubler.options(name="shared-name", namespace="team-a").remote()
    b = Doubler.options(name="shared-name", namespace="team-b").remote()
    plain = Doubler.options(name="shared-name").remote()  # the job's own (anonymous) namespace
    mine = ember.get_runtime_context().namespace
    assert len({a, b, plain}) == 3
    assert ember.get_actor("shared-name", namespace="team-a") == a
    assert ember.get_actor("shared-name", namespace="team-b") == b
    assert ember.get_actor("shared-name") == plain == ember.get_actor("shared-name", namespace=mine)
    with pytest.raises(ActorHandleNotFoundError, match="in namespace 'default'"):
        ember.get_actor("shared-name", namespace="default")  # not the job's: "default" is a namespace like any
    with pytest.raises(ActorAlreadyExistsError, match="namespace='team-a'"):
        Doubler.options(name="shared-name", namespace="team-a").remote()
    assert Doubler.options(name="shared-name", namespace="team-a", get_if_exists=True).remote() == a
    with pytest.raises(ActorHandleNotFoundError, match="in namespace 'team-c'"):
        ember.get_actor("shared-name", namespace="team-c")

    @ember.remote
    def lookup(namespace):
        return ember.get_actor("shared-name", namespace=namespace)

    assert ember.get(lookup.remote("team-b"), timeout=BOUND_S) == b  # from a task: the namespace it names
    assert "shared-name" in list_named_actors()
    everything = list_named_actors(all_namespaces=True)
    for namespace in ("team-a", "team-b", mine):
        assert {"namespace": namespace, "name": "shared-name"} in everything

    @ember.remote
    class Named:
        def name(self):
            return ember.get_runtime_context().get_actor_name()

    named = Named.options(name="inner", namespace="team-a").remote()
    assert ember.get(named.name.remote(), timeout=BOUND_S) == "inner"  # the name, not the namespace's key
    for actor in (a, b, plain, named):
        ember.kill(actor)
