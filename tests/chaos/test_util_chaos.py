"""``ember.util`` under SIGKILL: an ActorPool map, a Queue between tasks and a Pool map keep every value.

Faults injected, each on a logical event (after so many results were read),
never on a timer, so a failure replays:

- the ActorPool's actor processes (each once) and the store, mid-``map``:
  the actors (``max_restarts=-1, max_task_retries=-1``) are restarted and
  replay their logged calls; the calls in flight are sent again and answered
  once. Every result equals the failure-free one, in order;
- the Queue's actor process (twice), the store, and a producer task's
  worker, while producer tasks put and the driver gets: the queue actor comes
  back holding exactly its items (its calls are logged and replayed, a
  replayed call's result is not published twice), and large items (past the
  inline limit, so their arguments live in the store) come back from the
  actor's durable copies.

- a multiprocessing.Pool's processes (each once) and the store, mid-``map``:
  its actors come back and replay the chunks they had; every result arrives.

What must hold: no value is lost. A producer task killed after some of its
puts is retried and puts those again (a task runs at least once), so the
queue test allows duplicates of the killed producer's items and of nothing
else. Every kill is by pid, of a process of the cluster this module started.
"""

from __future__ import annotations

import time
from collections import Counter

import numpy as np

import ember
from ember.chaos import processes
from ember.util import ActorPool
from ember.util.queue import Queue
from tests.fix_kill import actor_pid, kill_and_wait_for_the_next, sigkill

BOUND_S = 90.0
POOL_VALUES = 40
PRODUCERS = 4
ITEMS_PER_PRODUCER = 12
LARGE = 20_000  # float64s, 160 KB: past the inline limit


@ember.remote(max_restarts=-1, max_task_retries=-1)
class Squarer:
    def __init__(self):
        self.calls = 0

    def square(self, x):
        self.calls += 1
        time.sleep(0.02)
        return x * x, self.calls


def test_an_actor_pool_map_keeps_every_value_while_its_actors_and_the_store_are_killed(fault_cluster):
    actors = [Squarer.remote(), Squarer.remote()]
    pool = ActorPool(actors)
    first_pids = [actor_pid(actor) for actor in actors]
    kills = {5: lambda: sigkill([actor_pid(actors[0])]),
             15: lambda: kill_and_wait_for_the_next("store"),
             25: lambda: sigkill([actor_pid(actors[1])])}
    results = []
    for value in pool.map(lambda actor, v: actor.square.remote(v), range(POOL_VALUES)):
        results.append(value)
        if len(results) in kills:
            kills[len(results)]()
    assert [square for square, _ in results] == [v * v for v in range(POOL_VALUES)]
    # Each actor's count of calls is its replayed state: every call counted once, none twice.
    counts = ember.get([actor.square.remote(0) for actor in actors], timeout=BOUND_S)
    assert sum(calls for _, calls in counts) == POOL_VALUES + len(actors)
    assert all(actor_pid(actor) != pid for actor, pid in zip(actors, first_pids))  # both really restarted


@ember.remote(max_retries=-1)
def produce(queue, producer, count):
    for index in range(count):
        payload = np.full(LARGE, float(index)) if index % 4 == 0 else None
        queue.put((producer, index, payload), timeout=BOUND_S)
        time.sleep(0.02)
    return count


def _kill_a_producer(queue_actor_id: str) -> int:
    workers = [p for p in processes() if p.kind == "worker" and p.actor_id is None]
    if workers:
        sigkill([workers[0].pid])
    return len(workers)


def test_a_queue_between_tasks_keeps_every_value_while_workers_and_the_store_are_killed(fault_cluster):
    queue = Queue()
    queue_actor = queue.actor
    producers = [produce.remote(queue, p, ITEMS_PER_PRODUCER) for p in range(PRODUCERS)]
    expected = {(p, i) for p in range(PRODUCERS) for i in range(ITEMS_PER_PRODUCER)}
    kills = {4: lambda: sigkill([actor_pid(queue_actor)]),
             12: lambda: kill_and_wait_for_the_next("store"),
             20: lambda: _kill_a_producer(queue_actor._actor_id.hex()),
             28: lambda: sigkill([actor_pid(queue_actor)])}
    first_pid = actor_pid(queue_actor)
    received: Counter = Counter()
    deadline = time.monotonic() + BOUND_S
    while set(received) != expected:
        assert time.monotonic() < deadline, f"missing {sorted(expected - set(received))[:10]}"
        producer, index, payload = queue.get(timeout=BOUND_S)
        if index % 4 == 0:
            np.testing.assert_array_equal(payload, np.full(LARGE, float(index)))
        else:
            assert payload is None
        received[(producer, index)] += 1
        if sum(received.values()) in kills:
            kills[sum(received.values())]()
    assert ember.get(producers, timeout=BOUND_S) == [ITEMS_PER_PRODUCER] * PRODUCERS
    # What a retried producer put again is still to be read; nothing else is.
    while True:
        try:
            producer, index, _ = queue.get(timeout=0.5)
        except ember.util.queue.Empty:
            break
        received[(producer, index)] += 1
    duplicated = {key[0] for key, times in received.items() if times > 1}
    assert len(duplicated) <= 1, f"items of producers {duplicated} arrived twice; only a killed one may repeat"
    assert queue.size() == 0
    assert actor_pid(queue_actor) != first_pid  # the queue's actor really came back


def _slow_square(x):
    time.sleep(0.02)
    return x * x


def test_a_pool_map_keeps_every_value_while_its_processes_are_killed(fault_cluster):
    from ember.util.multiprocessing import Pool

    with Pool(processes=2) as pool:
        first = pool._actors
        pids = [actor_pid(actor) for actor in first]
        result = pool.map_async(_slow_square, range(POOL_VALUES), chunksize=2)
        sigkill(pids[:1])  # a pool process dies with chunks queued on it
        kill_and_wait_for_the_next("store")
        sigkill([actor_pid(first[1])])
        assert result.get(timeout=BOUND_S) == [v * v for v in range(POOL_VALUES)]
        assert all(actor_pid(actor) not in pids for actor in first)  # both came back as new processes
