"""Tasks that block in `get` on tasks of their own: the waiting worker runs them itself, inline."""

from __future__ import annotations

import os
import time

import pytest

import ember
from ember.exceptions import TaskCancelledError
from tests.fix_cluster import poll_until
from tests.fix_kill import live_pids

BOUND_S = 120.0


@ember.remote
def fib(n):
    if n < 2:
        return n
    return sum(ember.get([fib.remote(n - 1), fib.remote(n - 2)], timeout=BOUND_S))


@ember.remote
def ran_where():
    return os.getpid()


@ember.remote
def parent_and_children(n):
    return os.getpid(), ember.get([ran_where.remote() for _ in range(n)], timeout=BOUND_S)


@ember.remote
def sleepy(path, bound_s):
    deadline = time.monotonic() + bound_s
    while not os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.01)
    return "done"


@ember.remote
def waits_for_sleepy(path):
    return ember.get(sleepy.remote(path, 60.0), timeout=BOUND_S)


@pytest.fixture(scope="module")
def two_cpus():
    ember.init(num_cpus=2)
    try:
        yield
    finally:
        ember.shutdown()


def test_nested_tasks_run_in_the_worker_that_waits_for_them_and_are_logged_as_any(two_cpus):
    workers_before = len(live_pids("worker"))
    ref = fib.remote(10)  # 177 tasks, each but the leaves blocking on two of its own
    assert ember.get(ref, timeout=BOUND_S) == 55
    # Blocking alone lends each waiting task's CPU to a new worker: 63 new ones here. Run inline,
    # only the children another idle worker took first leave their parent waiting: about 9.
    assert len(live_pids("worker")) <= workers_before + 20
    # Holding both CPUs, it leaves its tasks nowhere to start: it runs them itself.
    parent, children = ember.get(parent_and_children.options(num_cpus=2).remote(3), timeout=BOUND_S)
    assert set(children) == {parent}
    job = ember.get_runtime_context().get_job_id()

    def logged_states() -> set[str] | None:
        with ember.lineage.open_log() as log:
            fibs = [t for t in log.tasks(job=job, limit=1000) if t.name.endswith("fib")]
        states = {t.state for t in fibs}
        return states if len(fibs) == 177 and states == {"FINISHED"} else None

    # Each worker commits its own rows within moments (lazily: nobody waits for them).
    assert poll_until(logged_states, 30.0, poll_s=0.2) == {"FINISHED"}


def test_cancelling_the_waiting_task_ends_the_task_it_runs_inline_too(two_cpus, tmp_path):
    release = tmp_path / "release"
    ref = waits_for_sleepy.remote(str(release))
    time.sleep(0.5)  # it has started, and runs sleepy in its wait
    ember.cancel(ref)
    try:
        with pytest.raises(TaskCancelledError):
            ember.get(ref, timeout=BOUND_S)
    finally:
        release.touch()
    assert ember.get(ran_where.remote(), timeout=BOUND_S) > 0  # the node runs on
