"""An actor's call order survives its process even when only the caller had logged it.

Rows nobody waits for are stretched here to sit for a minute, so the calls a
killed actor ran are, for certain, durable only in its callers' logs (or
only where a change of caller forced a commit).
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator

import numpy as np
import psycopg
import pytest

import ember
from tests.fix_kill import kill_and_wait_for_the_next, wait_gone
from tests.integration.test_actor_restart import Counter

BOUND_S = 60.0


@pytest.fixture(scope="module")
def slow_log_cluster() -> Iterator[object]:
    saved = os.environ.get("EMBER_LOG_LAZY_S")
    os.environ["EMBER_LOG_LAZY_S"] = "60"
    try:
        ember.init(num_cpus=2)
        try:
            yield ember._runtime._session
        finally:
            ember.shutdown()
    finally:
        if saved is None:
            os.environ.pop("EMBER_LOG_LAZY_S", None)
        else:
            os.environ["EMBER_LOG_LAZY_S"] = saved


@ember.remote
def add_from_a_task(counter, k):
    return ember.get(counter.add.remote(k))


def _committed_calls(actor_id: bytes) -> int:
    from ember.scheduler._session import log_conninfo

    with psycopg.connect(log_conninfo(ember._runtime._session)) as conn:
        return conn.execute("SELECT count(*) FROM actor_calls WHERE actor_id = %s", (actor_id,)).fetchone()[0]


def _kill(counter) -> None:
    pid = ember.get(counter.pid.remote(), timeout=BOUND_S)
    os.kill(pid, signal.SIGKILL)
    wait_gone(pid)


@ember.remote
class Tally:
    """Counts, and writes each count to a file: the test sees the calls ran without reading their results."""

    def __init__(self, path):
        self.path = path
        self.n = 0

    def add(self, k):
        self.n += k
        with open(self.path, "a") as f:
            f.write(f"{self.n}\n")
        return self.n

    def pid(self):
        return os.getpid()


def test_calls_only_the_caller_logged_are_replayed_after_the_actor_dies(slow_log_cluster, tmp_path):
    from tests.fix_cluster import poll_until

    ran = tmp_path / "ran"
    tally = Tally.options(max_restarts=1, max_task_retries=-1).remote(str(ran))
    pid = ember.get(tally.pid.remote(), timeout=BOUND_S)
    calls = [tally.add.remote(1) for _ in range(5)]  # their results reach the driver; nobody reads them
    assert poll_until(lambda: ran.exists() and len(ran.read_text().split()) == 5, BOUND_S)
    # The premise: no get made the driver commit these calls' places, and the actor's own rows wait a minute.
    assert _committed_calls(tally._actor_id) <= 1  # the pid call's place, which its get committed
    os.kill(pid, signal.SIGKILL)
    wait_gone(pid)
    # The restart asks the driver, its last caller, to commit the rows it kept; the replay runs the five again.
    assert ember.get(tally.add.remote(1), timeout=BOUND_S) == 6
    assert ember.get(calls, timeout=BOUND_S) == [1, 2, 3, 4, 5]


def test_a_get_commits_the_calls_order_before_it_returns(slow_log_cluster):
    counter = Counter.options(max_restarts=1, max_task_retries=-1).remote()
    assert [ember.get(counter.add.remote(1), timeout=BOUND_S) for _ in range(5)] == [1, 2, 3, 4, 5]
    # Durable before visible, the caller included: each get committed its call's place in the order.
    assert _committed_calls(counter._actor_id) == 5
    _kill(counter)
    assert ember.get(counter.add.remote(1), timeout=BOUND_S) == 6


def test_calls_from_several_callers_keep_their_order_across_a_restart(slow_log_cluster):
    counter = Counter.options(max_restarts=1, max_task_retries=-1).remote()
    assert ember.get(counter.add.remote(1), timeout=BOUND_S) == 1
    assert ember.get(add_from_a_task.remote(counter, 10), timeout=BOUND_S) == 11  # another caller: a commit
    assert [ember.get(counter.add.remote(100), timeout=BOUND_S) for _ in range(3)] == [111, 211, 311]
    _kill(counter)
    assert ember.get(add_from_a_task.remote(counter, 1000), timeout=BOUND_S) == 1311
    assert ember.get(counter.add.remote(1), timeout=BOUND_S) == 1312


@ember.remote
def array_of(value):
    return np.full(50_000, float(value))  # 400 KB: in the store


def test_an_owner_rebuilds_what_it_read_before_its_rows_were_committed(slow_log_cluster):
    # Found by a chaos run: the store died within the rows' lazy delay, and the
    # rebuild found no spec in the log ("its creating task is not in the lineage log").
    ember.get(array_of.remote(0), timeout=60)  # the function's registration (a row committed at once) is behind us
    ref = array_of.remote(7)
    assert float(ember.get(ref, timeout=60)[0]) == 7.0  # read at once; the spec row is still queued
    kill_and_wait_for_the_next("store")
    assert float(ember.get(ref, timeout=60)[0]) == 7.0
