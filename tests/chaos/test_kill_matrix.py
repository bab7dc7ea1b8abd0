"""Every kind of ember process SIGKILLed mid-workload; every result equals the failure-free one.

The workload mixes what users run: task chains over objects large enough to
live in the store, a tree reduce, the seeds' parameter server driven by the
driver, and an actor counter (restartable, calls retried). Objects made and
read before the kill are read again after it. The kill fires on a logical
event (halfway through submitting), never on a timer, so a failure replays.

Faults injected, and what must recover:
- worker: a busy task worker and the actor's process: tasks retried, the
  actor restarted with its state replayed from its logged calls;
- store: objects in it lost: rebuilt from lineage, large puts from their copy;
- scheduler: queue and workers lost: owners resubmit, actors are re-created
  and replay their calls, orphaned objects are adopted and rebuilt;
- gcs: the service restarts from PostgreSQL; the task path never waits on it.

Every kill is by pid, of a process of the cluster this module started.
"""

from __future__ import annotations

import numpy as np
import pytest

import ember
from ember.chaos import processes
from tests.fix_kill import kill_and_wait_for_the_next, sigkill

BOUND_S = 90.0
ARRAY = 50_000  # float64s, 400 KB: past the inline limit, so objects live in the store
CHAIN_DEPTH = 12
LEAVES = 32
PS_ROUNDS = 6
COUNTER_CALLS = 40
FIB_N, FIB_VALUE = 12, 144  # fib(12): 465 nested tasks


@ember.remote
def start(seed):
    return np.full(ARRAY, float(seed))


@ember.remote
def inc(a):
    return a + 1


@ember.remote
def leaf(i):
    return i * i


@ember.remote
def add(a, b):
    return a + b


@ember.remote
def gradient(params, worker_index):
    # The seeds' worker computes ones; a per-worker scale keeps the sum checkable.
    return np.ones_like(params) * (worker_index + 1)


@ember.remote
def fib(n):
    """Nested tasks that block in get on two of their own (run inline by the waiting worker)."""
    if n < 2:
        return n
    return sum(ember.get([fib.remote(n - 1), fib.remote(n - 2)], timeout=BOUND_S))


@ember.remote(max_restarts=3, max_task_retries=3)
class ParameterServer:
    def __init__(self, dim):
        self.params = np.zeros(dim)

    def get_params(self):
        return self.params

    def update_params(self, grad):
        self.params += grad


@ember.remote(max_restarts=3, max_task_retries=3)
class Counter:
    def __init__(self):
        self.n = 0

    def add(self, k):
        self.n += k
        return self.n


def _kill(kind):
    if kind == "worker":
        # A task worker (busy or idle) and every actor's process.
        workers = [p for p in processes() if p.kind == "worker"]
        sigkill([p.pid for p in workers if p.actor_id is None][:1] + [p.pid for p in workers if p.actor_id])
    else:
        kill_and_wait_for_the_next(kind)


def _tree_sum(refs):
    while len(refs) > 1:
        refs = [add.remote(refs[i], refs[i + 1]) if i + 1 < len(refs) else refs[i] for i in range(0, len(refs), 2)]
    return refs[0]


@pytest.mark.parametrize("kind", ["worker", "forkserver", "store", "scheduler", "gcs"])
def test_a_kill_mid_workload_leaves_every_result_right(fault_cluster, kind):
    # Made and read before the kill, read again after it.
    before_chain = [start.remote(1)]
    for _ in range(CHAIN_DEPTH):
        before_chain.append(inc.remote(before_chain[-1]))
    before_put = ember.put(np.arange(ARRAY, dtype=np.float64))
    assert ember.get(before_chain[-1], timeout=BOUND_S)[0] == 1 + CHAIN_DEPTH

    ps = ParameterServer.remote(10)
    counter = Counter.remote()
    counted = [counter.add.remote(1) for _ in range(COUNTER_CALLS // 2)]
    assert ember.get(counted[-1], timeout=BOUND_S) == COUNTER_CALLS // 2

    # Submitted around the kill: half before, half after.
    chain = [start.remote(100)]
    for _ in range(CHAIN_DEPTH // 2):
        chain.append(inc.remote(chain[-1]))
    leaves = [leaf.remote(i) for i in range(LEAVES // 2)]
    nested = [fib.remote(FIB_N)]  # 465 tasks, running while the kill comes
    for _ in range(PS_ROUNDS // 2):
        params = ps.get_params.remote()
        for g in ember.get([gradient.remote(params, w) for w in range(2)], timeout=BOUND_S):
            ps.update_params.remote(g)

    _kill(kind)

    for _ in range(CHAIN_DEPTH - CHAIN_DEPTH // 2):
        chain.append(inc.remote(chain[-1]))
    leaves += [leaf.remote(i) for i in range(LEAVES // 2, LEAVES)]
    nested.append(fib.remote(FIB_N))
    for _ in range(PS_ROUNDS - PS_ROUNDS // 2):
        params = ps.get_params.remote()
        for g in ember.get([gradient.remote(params, w) for w in range(2)], timeout=BOUND_S):
            ps.update_params.remote(g)
    counted += [counter.add.remote(1) for _ in range(COUNTER_CALLS - COUNTER_CALLS // 2)]

    np.testing.assert_array_equal(ember.get(chain[-1], timeout=BOUND_S), np.full(ARRAY, 100.0 + CHAIN_DEPTH))
    assert ember.get(_tree_sum(leaves), timeout=BOUND_S) == sum(i * i for i in range(LEAVES))
    assert ember.get(nested, timeout=BOUND_S) == [FIB_VALUE, FIB_VALUE]
    # Two workers of scale 1 and 2 each round.
    np.testing.assert_array_equal(ember.get(ps.get_params.remote(), timeout=BOUND_S), np.full(10, 3.0 * PS_ROUNDS))
    assert ember.get(counted, timeout=BOUND_S) == list(range(1, COUNTER_CALLS + 1))
    for depth, ref in enumerate(before_chain):
        np.testing.assert_array_equal(ember.get(ref, timeout=BOUND_S), np.full(ARRAY, 1.0 + depth))
    np.testing.assert_array_equal(ember.get(before_put, timeout=BOUND_S), np.arange(ARRAY, dtype=np.float64))
