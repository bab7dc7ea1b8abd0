"""Lineage replay after a store dies: the node restarts it empty, owners rebuild what is read.

Every kill is by pid, of the store this module's cluster started.
"""

from __future__ import annotations

import os
import signal
import time

import numpy as np
import psycopg
import pytest

import ember
from ember.chaos import processes
from tests.fix_cluster import poll_until
from tests.fix_kill import kill_and_wait_for_the_next, live_pids, sigkill

BOUND_S = 60.0
ARRAY = 50_000  # float64s: 400 KB, well past the inline limit, so it lives in the store


@ember.remote
def zeros():
    return np.zeros(ARRAY)


@ember.remote
def inc(a):
    return a + 1


@ember.remote
def gated(path, value):
    """``value``, once the file at ``path`` exists (bounded: never outlives the test)."""
    deadline = time.monotonic() + BOUND_S
    while not os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.01)
    return value


def test_a_ten_deep_chain_is_rebuilt_after_its_store_dies(fault_cluster):
    chain = [zeros.remote()]
    for _ in range(10):
        chain.append(inc.remote(chain[-1]))
    assert ember.get(chain[-1], timeout=BOUND_S)[0] == 10
    small = ember.put("inline objects live with their owner")

    kill_and_wait_for_the_next("store")

    assert ember.get(chain[-1], timeout=BOUND_S)[0] == 10  # rebuilt through all ten links
    assert [ember.get(r, timeout=BOUND_S)[0] for r in chain] == list(range(11))
    assert ember.get(small) == "inline objects live with their owner"

    # Same task ids, next attempt, in the log (an attempt's end is logged lazily).
    deadline = time.monotonic() + BOUND_S
    with ember.lineage.open_log() as log:
        while True:
            attempts = log.task(chain[-1].task_id().hex()).attempts
            if len(attempts) == 2 or time.monotonic() > deadline:
                break
            time.sleep(0.02)
    assert [a["attempt"] for a in attempts] == [0, 1]
    assert {a["state"] for a in attempts} == {"FINISHED"}


def test_the_store_death_is_recorded_and_new_work_runs(fault_cluster):
    old, new = kill_and_wait_for_the_next("store")
    conninfo = fault_cluster.read_info()["gcs_conninfo"]

    # The restarted store serves new objects: tasks, large puts, and a task
    # waiting on another task's result through the store.
    big = ember.put(np.arange(ARRAY, dtype=np.float64))
    assert ember.get(ember.remote(lambda a: float(a.sum())).remote(big), timeout=BOUND_S) == float(
        np.arange(ARRAY).sum())
    assert ember.get(inc.remote(zeros.remote()), timeout=BOUND_S)[0] == 1

    deadline = time.monotonic() + BOUND_S
    rows: set = set()
    while time.monotonic() < deadline:
        with psycopg.connect(conninfo) as conn:
            rows = set(conn.execute(
                "SELECT pid, death_cause FROM workers WHERE cluster_id = %s AND kind = 'store'",
                (fault_cluster.name,)).fetchall())
        if {(old, f"pid {old} killed by SIGKILL"), (new, None)} <= rows:
            break
        time.sleep(0.05)
    assert {(old, f"pid {old} killed by SIGKILL"), (new, None)} <= rows


def test_a_large_put_comes_back_from_its_durable_copy(fault_cluster):
    values = np.random.default_rng(7).normal(size=ARRAY)
    big = ember.put(values)
    assert np.array_equal(ember.get(big), values)
    # The copy is written in the background: wait until it exists.
    deadline = time.monotonic() + BOUND_S
    from ember.lineage._postgres import ember_home

    path = ember_home() / "objects" / ember.get_runtime_context().get_job_id() / big.hex()
    while not path.exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert path.exists()
    kill_and_wait_for_the_next("store")
    assert np.array_equal(ember.get(big, timeout=BOUND_S), values)
    del big
    deadline = time.monotonic() + BOUND_S
    while path.exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not path.exists()  # freed with the object


def test_a_lost_put_without_a_copy_is_a_typed_error_naming_the_reason(fault_cluster, monkeypatch):
    monkeypatch.setenv("EMBER_PUT_COPIES", "off")
    big = ember.put(np.ones(ARRAY))
    assert ember.get(big)[0] == 1.0
    kill_and_wait_for_the_next("store")
    with pytest.raises(ember.exceptions.ObjectLostError, match="ember.put"):
        ember.get(big, timeout=BOUND_S)


def test_a_task_dispatched_after_the_store_died_gets_its_lost_input_rebuilt(fault_cluster):
    made = zeros.remote()
    assert ember.get(made, timeout=BOUND_S)[0] == 0
    kill_and_wait_for_the_next("store")
    # The driver still believes `made` is in the store, so the worker is sent a
    # reference to it, finds no copy, and asks the driver, which rebuilds it.
    assert ember.get(inc.remote(made), timeout=BOUND_S)[0] == 1


def test_a_hundred_deep_chain_is_rebuilt(fault_cluster):
    chain = [zeros.remote()]
    for _ in range(100):
        chain.append(inc.remote(chain[-1]))
    assert ember.get(chain[-1], timeout=BOUND_S)[0] == 100
    kill_and_wait_for_the_next("store")
    assert ember.get(chain[-1], timeout=BOUND_S)[0] == 100


def test_a_small_object_shared_with_borrowers_is_published_again(fault_cluster):
    small = ember.put({"answer": 42})  # inline: it lives in the driver, published to the store for borrowers

    @ember.remote
    def read(box):
        return ember.get(box[0])["answer"]

    assert ember.get(read.remote([small]), timeout=BOUND_S) == 42
    kill_and_wait_for_the_next("store")
    assert ember.get(read.remote([small]), timeout=BOUND_S) == 42


def test_a_killed_scheduler_is_restarted_and_queued_and_running_tasks_complete(fault_cluster):
    @ember.remote
    def work(x):
        time.sleep(0.01)
        return 2 * x

    @ember.remote
    def add(a, b):
        return a + b

    @ember.remote
    class Counter:
        def __init__(self):
            self.n = 0

        def add(self):
            self.n += 1
            return self.n

    counter = Counter.remote()
    assert ember.get(counter.add.remote(), timeout=BOUND_S) == 1
    refs = [work.remote(i) for i in range(200)]
    old, new = kill_and_wait_for_the_next("scheduler")
    while len(refs) > 1:  # a tree reduce over results from before and after the kill
        refs = [add.remote(refs[i], refs[i + 1]) if i + 1 < len(refs) else refs[i] for i in range(0, len(refs), 2)]
    assert ember.get(refs[0], timeout=BOUND_S) == sum(2 * i for i in range(200))

    # The actor's process died with the scheduler: a typed error naming why, not a hang.
    with pytest.raises(ember.exceptions.ActorDiedError, match="scheduler died"):
        ember.get(counter.add.remote(), timeout=BOUND_S)

    conninfo = fault_cluster.read_info()["gcs_conninfo"]
    deadline = time.monotonic() + BOUND_S
    while time.monotonic() < deadline:
        with psycopg.connect(conninfo) as conn:
            rows = set(conn.execute(
                "SELECT pid, death_cause FROM workers WHERE cluster_id = %s AND kind = 'scheduler'",
                (fault_cluster.name,)).fetchall())
            open_workers = {r[0] for r in conn.execute(
                "SELECT pid FROM workers WHERE cluster_id = %s AND kind = 'worker' AND ended_at IS NULL",
                (fault_cluster.name,)).fetchall()}
        live = {p.pid for p in processes() if p.kind == "worker"}
        if {(old, f"pid {old} killed by SIGKILL"), (new, None)} <= rows and open_workers <= live:
            break
        time.sleep(0.05)
    assert {(old, f"pid {old} killed by SIGKILL"), (new, None)} <= rows
    assert open_workers <= live  # the dead scheduler's workers are recorded as ended


def _queue_rows(session, refs) -> int:
    """Rows of the node scheduler's queue in the log for the tasks of ``refs`` whose specs are logged too.

    Only these: rows of an earlier test's tasks may still wait for an owner that died with a scheduler.
    """
    with psycopg.connect(session.read_info()["gcs_conninfo"]) as conn:
        return conn.execute(
            "SELECT count(*) FROM scheduler_queue q JOIN tasks t ON t.task_id = q.task_id "
            "WHERE q.task_id = ANY(%s)", ([r.task_id().binary() for r in refs],)).fetchone()[0]


def _two_gated_tasks_in_the_logged_queue(session, gate):
    refs = [gated.remote(str(gate), "ran") for _ in range(2)]
    assert poll_until(lambda: _queue_rows(session, refs) == 2, BOUND_S)  # the log could give both back
    return refs


def test_a_restarted_scheduler_reads_its_queue_back_from_the_log(fault_cluster, tmp_path):
    gate = tmp_path / "open"

    core = ember._runtime.require_core()
    before = core.resumed_from_log
    refs = [gated.remote(str(gate), 3 * i) for i in range(12)]  # 2 CPUs: two run, the rest wait in the queue

    def queue_rows() -> int:
        return _queue_rows(fault_cluster, refs)

    # The scheduler writes its queue, and owners their specs, a few ms after the fact.
    assert poll_until(lambda: queue_rows() == 12, BOUND_S), queue_rows()
    kill_and_wait_for_the_next("scheduler")
    gate.touch()

    assert ember.get(refs, timeout=BOUND_S) == [3 * i for i in range(12)]
    # The new scheduler queued all twelve from the rows it read: none was sent again.
    assert core.resumed_from_log - before == 12

    def attempts() -> list:
        with ember.lineage.open_log() as log:
            return [[a["attempt"] for a in log.task(r.task_id().hex()).attempts] for r in refs]

    # Each ran again as its next attempt (an attempt's end is logged lazily).
    assert poll_until(lambda: attempts() == [[1]] * 12, BOUND_S), attempts()
    assert poll_until(lambda: queue_rows() == 0, BOUND_S)  # rows go as their tasks leave


def test_a_task_cancelled_as_the_scheduler_dies_is_not_run_again(fault_cluster, tmp_path):
    gate = tmp_path / "open"
    ref, kept = _two_gated_tasks_in_the_logged_queue(fault_cluster, gate)  # the log could give both back
    [scheduler] = live_pids("scheduler")
    os.kill(scheduler, signal.SIGSTOP)  # the cancel below reaches it, and dies with it unread
    ember.cancel(ref)
    sigkill([scheduler])
    assert poll_until(lambda: live_pids("scheduler") not in ([], [scheduler]), BOUND_S)  # its replacement
    gate.touch()

    with pytest.raises(ember.exceptions.TaskCancelledError):
        ember.get(ref, timeout=BOUND_S)
    assert ember.get(kept, timeout=BOUND_S) == "ran"


def test_a_task_cancelled_while_the_new_scheduler_reads_its_queue_is_not_run(fault_cluster, tmp_path):
    gate = tmp_path / "open"
    ref, kept = _two_gated_tasks_in_the_logged_queue(fault_cluster, gate)
    with psycopg.connect(fault_cluster.read_info()["gcs_conninfo"]) as blocker:
        # Holds the new scheduler's read of its queue (bounded by its statement timeout) until the commit.
        blocker.execute("LOCK TABLE scheduler_queue IN ACCESS EXCLUSIVE MODE")
        kill_and_wait_for_the_next("scheduler")  # listed by the new one: the driver is connected
        ember.cancel(ref)
        live_pids("scheduler")  # a round trip behind the cancel: the scheduler has taken it in
    gate.touch()

    with pytest.raises(ember.exceptions.TaskCancelledError):
        ember.get(ref, timeout=BOUND_S)
    assert ember.get(kept, timeout=BOUND_S) == "ran"


def test_workers_killed_mid_workload_leave_every_result_right(fault_cluster):
    @ember.remote
    def work(x):
        time.sleep(0.02)
        return np.full(ARRAY // 10, x, dtype=np.float64)  # 40 KB: inline results

    @ember.remote
    def total(*parts):
        return float(sum(p.sum() for p in parts))

    refs = [work.remote(i) for i in range(60)]
    expected = float(sum(i * (ARRAY // 10) for i in range(60)))
    killed = 0
    deadline = time.monotonic() + BOUND_S
    while killed < 3 and time.monotonic() < deadline:  # kill whichever workers are running, by pid
        busy = [p.pid for p in processes() if p.kind == "worker" and p.actor_id is None]
        if busy:
            os.kill(busy[0], signal.SIGKILL)
            killed += 1
        time.sleep(0.15)
    assert killed == 3
    groups = [total.remote(*refs[i:i + 10]) for i in range(0, 60, 10)]
    assert sum(ember.get(groups, timeout=BOUND_S)) == expected


@ember.remote
def double(a):
    return a * 2


def test_a_task_whose_large_argument_was_passed_by_value_is_rebuilt(fault_cluster):
    ref = double.remote(np.arange(ARRAY, dtype=np.float64))  # the argument goes to the store, freed after the task
    expected = ember.get(ref, timeout=BOUND_S).copy()
    conninfo = fault_cluster.read_info()["gcs_conninfo"]
    deadline = time.monotonic() + BOUND_S
    copied = False
    while not copied and time.monotonic() < deadline:  # its durable copy is written in the background
        with psycopg.connect(conninfo) as conn:
            paths = [r[0] for r in conn.execute(
                "SELECT o.durable_path FROM objects o JOIN task_args a ON a.object_id = o.object_id "
                "WHERE a.task_id = %s AND o.origin = 'argument'", (ref.task_id().binary(),)).fetchall()]
        copied = bool(paths) and all(p and os.path.exists(p) for p in paths)
        time.sleep(0.02)
    assert copied, "the argument's durable copy was never written"
    kill_and_wait_for_the_next("store")
    np.testing.assert_array_equal(ember.get(ref, timeout=BOUND_S), expected)


def test_rebuilds_that_start_at_once_share_one_reader_of_the_log(fault_cluster):
    # Regression (CI): the first rebuilds after a node died ran on threads of their own, each made a
    # reader of the log, and all but one were dropped with their connections open (ResourceWarning).
    import threading

    from ember.scheduler._context import require_core

    rebuild = require_core().rebuild
    if rebuild._replay is not None:
        rebuild._replay.close()  # an earlier test's rebuilds connected it: closed, not dropped open
    for _ in range(20):
        rebuild._replay = None  # as before the first rebuild
        start = threading.Barrier(8)
        found = []

        def first_rebuild():
            start.wait(BOUND_S)
            found.append(rebuild.replay_source())

        threads = [threading.Thread(target=first_rebuild) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(BOUND_S)
        assert len(found) == 8 and len({id(source) for source in found}) == 1
    # The last one stays the owner's (never connected by this test), closed at its shutdown as any.
