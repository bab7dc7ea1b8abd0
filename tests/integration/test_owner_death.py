"""Objects outlive their owner: refs whose creating process died are still readable.

The owner here is a task worker that submits tasks (or makes puts) and hands
the refs back nested in its result. Each test SIGKILLs that worker, by the pid
it reported itself, and reads the refs from the driver; where the store dies
too, nothing of the objects is left anywhere but in the lineage log.
"""

from __future__ import annotations

import os
import time

import numpy as np

import ember
from tests.fix_kill import kill_and_wait_for_the_next, sigkill

BOUND_S = 60.0
ARRAY = 50_000  # float64s: 400 KB, so it lives in the store, not inline
# 40 MB: its durable copy takes long enough to write that a ref leaving before it is written would be lost
BIG_PUT = 5_000_000


@ember.remote
def slow_square(x, delay_s):
    time.sleep(delay_s)
    return x * x


@ember.remote
def add(a, b):
    return a + b


@ember.remote
def big(seed):
    return np.full(ARRAY, float(seed))


@ember.remote
def spawn_squares(n, delay_s):
    """Owns the refs it returns: their results arrive here, if this process is still alive."""
    return os.getpid(), [slow_square.remote(i, delay_s) for i in range(n)]


@ember.remote
def spawn_chain(delay_s):
    a = slow_square.remote(3, delay_s)
    b = add.remote(a, 1)
    c = add.remote(b, a)
    return os.getpid(), [c]


@ember.remote
def spawn_big_and_puts():
    return os.getpid(), [big.remote(7), ember.put(np.arange(BIG_PUT)), ember.put({"small": 42})]


def test_results_arriving_after_their_owner_died_are_rebuilt(fault_cluster):
    pid, refs = ember.get(spawn_squares.remote(4, 0.5), timeout=BOUND_S)
    sigkill([pid])  # the squares finish after this: their results have nowhere to go
    assert ember.get(refs, timeout=BOUND_S) == [0, 1, 4, 9]


def test_a_chain_whose_owner_died_is_rebuilt_through_its_inputs(fault_cluster):
    pid, [c] = ember.get(spawn_chain.remote(0.5), timeout=BOUND_S)
    sigkill([pid])
    assert ember.get(c, timeout=BOUND_S) == 19  # (9 + 1) + 9


def test_objects_and_puts_of_a_dead_owner_survive_the_store_too(fault_cluster):
    pid, refs = ember.get(spawn_big_and_puts.remote(), timeout=BOUND_S)
    expected = ember.get(refs, timeout=BOUND_S)
    sigkill([pid])
    kill_and_wait_for_the_next("store")
    again = ember.get(refs, timeout=BOUND_S)
    np.testing.assert_array_equal(again[0], expected[0])
    np.testing.assert_array_equal(again[1], expected[1])
    assert again[2] == {"small": 42}


def test_a_task_reading_an_orphaned_ref_gets_it_rebuilt(fault_cluster):
    pid, refs = ember.get(spawn_squares.remote(3, 0.5), timeout=BOUND_S)
    sigkill([pid])

    @ember.remote
    def total(boxed):
        return sum(ember.get(boxed[0], timeout=BOUND_S))

    assert ember.get(total.remote([refs]), timeout=BOUND_S) == 0 + 1 + 4


@ember.remote
def noisy():
    return np.random.default_rng().random(ARRAY)  # not deterministic: each run differs


@ember.remote
def spawn_noisy():
    return os.getpid(), [noisy.remote()]


def test_two_adopters_of_one_object_read_one_value(fault_cluster):
    pid, refs = ember.get(spawn_noisy.remote(), timeout=BOUND_S)
    ember.get(refs, timeout=BOUND_S)
    sigkill([pid])
    kill_and_wait_for_the_next("store")

    @ember.remote
    def read_in_a_task(boxed):
        return ember.get(boxed[0], timeout=BOUND_S)

    # The driver and a task both find the owner dead and both rebuild; the
    # first copy published is the one everybody reads.
    in_task = read_in_a_task.remote(refs)
    in_driver = ember.get(refs[0], timeout=BOUND_S)
    np.testing.assert_array_equal(ember.get(in_task, timeout=BOUND_S), in_driver)
    np.testing.assert_array_equal(ember.get(refs[0], timeout=BOUND_S), in_driver)
