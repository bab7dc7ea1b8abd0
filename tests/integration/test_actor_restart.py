"""Actors come back with their state: restart, constructor, replay of the logged calls.

Every kill is by pid, of an actor process this module's cluster started.
"""

from __future__ import annotations

import os
import signal
import time

import numpy as np
import pytest

import ember
from tests.fix_kill import kill_and_wait_for_the_next

BOUND_S = 60.0


@ember.remote
class Counter:
    def __init__(self, start=0):
        self.n = start
        self.history = []

    def add(self, k):
        self.n += k
        self.history.append(k)
        return self.n

    def state(self):
        return self.n, len(self.history)

    def pid(self):
        return os.getpid()


def _kill(actor):
    pid = ember.get(actor.pid.remote(), timeout=BOUND_S)
    os.kill(pid, signal.SIGKILL)
    return pid


def test_an_actor_with_a_thousand_logged_calls_comes_back_to_the_same_state(fault_cluster):
    counter = Counter.options(max_restarts=1, max_task_retries=-1).remote(5)
    results = ember.get([counter.add.remote(i % 7) for i in range(1000)], timeout=BOUND_S)
    before = ember.get(counter.state.remote(), timeout=BOUND_S)
    old = _kill(counter)
    assert ember.get(counter.state.remote(), timeout=BOUND_S) == before  # constructor, then 1,000 calls replayed
    assert ember.get(counter.pid.remote(), timeout=BOUND_S) != old
    assert ember.get(counter.add.remote(1), timeout=BOUND_S) == results[-1] + 1


def test_calls_in_flight_across_a_restart_each_take_effect_exactly_once(fault_cluster):
    counter = Counter.options(max_restarts=1, max_task_retries=-1).remote()
    pid = ember.get(counter.pid.remote(), timeout=BOUND_S)
    refs = [counter.add.remote(1) for _ in range(300)]
    ember.get(refs[50], timeout=BOUND_S)
    os.kill(pid, signal.SIGKILL)  # some calls done, some running or queued, some not sent yet
    refs += [counter.add.remote(1) for _ in range(100)]
    # Replayed calls answer with their replayed results, the rest run once:
    # the running total goes up by exactly one per call.
    assert ember.get(refs, timeout=BOUND_S) == list(range(1, 401))


def test_without_task_retries_calls_in_flight_fail_naming_why(fault_cluster):
    counter = Counter.options(max_restarts=1).remote()
    assert ember.get(counter.add.remote(1), timeout=BOUND_S) == 1
    _kill(counter)
    time.sleep(0.2)  # the restart has begun; this call goes to the new process
    deadline = time.monotonic() + BOUND_S
    while time.monotonic() < deadline:
        try:
            assert ember.get(counter.add.remote(1), timeout=BOUND_S) == 2
            break
        except ember.exceptions.ActorDiedError as exc:
            assert "max_task_retries=0" in str(exc)  # sent to the old process before it was seen dead


def test_an_actor_out_of_restarts_raises_actor_died_with_the_reason(fault_cluster):
    counter = Counter.options(max_restarts=1, max_task_retries=-1).remote()
    _kill(counter)
    assert ember.get(counter.add.remote(1), timeout=BOUND_S) == 1
    _kill(counter)
    with pytest.raises(ember.exceptions.ActorDiedError, match="out of restarts"):
        ember.get(counter.add.remote(1), timeout=BOUND_S)


def test_an_actor_without_restarts_dies_as_before(fault_cluster):
    counter = Counter.remote()
    _kill(counter)
    with pytest.raises(ember.exceptions.ActorDiedError, match="died"):
        ember.get(counter.add.remote(1), timeout=BOUND_S)


@ember.remote
class Ledger:
    """Keeps a checkpoint every 100 calls; counts the calls its current process ran."""

    checkpoint_interval = 100

    def __init__(self):
        self.total = 0
        self.entries = []
        self.ran_here = 0

    def add(self, k):
        self.total += k
        self.entries.append(k)
        self.ran_here += 1
        return self.total

    def save_checkpoint(self):
        return {"total": self.total, "entries": list(self.entries)}

    def load_checkpoint(self, state):
        self.total, self.entries = state["total"], state["entries"]

    def state(self):
        return self.total, len(self.entries), self.ran_here

    def pid(self):
        return os.getpid()


def test_an_actor_with_a_checkpoint_replays_only_the_calls_after_it(fault_cluster):
    ledger = Ledger.options(max_restarts=1, max_task_retries=-1).remote()
    ember.get([ledger.add.remote(i % 5) for i in range(1000)], timeout=BOUND_S)
    total, entries, _ = ember.get(ledger.state.remote(), timeout=BOUND_S)
    time.sleep(0.2)  # checkpoints are written lazily
    _kill(ledger)
    after = ember.get(ledger.state.remote(), timeout=BOUND_S)
    assert after[:2] == (total, entries)  # the same state...
    assert after[2] < 100  # ...from a checkpoint plus fewer than 100 replayed calls, not 1,000


@ember.remote
def gradient(params):
    return params * 0 + 1.0


@ember.remote
class Params:
    """The seeds' parameter server, with parameters large enough to live in the store."""

    def __init__(self, dim):
        self.params = np.zeros(dim)
        self.steps = 0

    def get(self):
        return self.params

    def apply(self, grad):
        self.params -= grad
        self.steps += 1
        return self.steps

    def pid(self):
        return os.getpid()


def test_a_replay_reads_store_arguments_freed_long_before(fault_cluster):
    # Each gradient is freed once applied; the replay needs every one of them.
    ps = Params.options(max_restarts=1, max_task_retries=-1).remote(50_000)
    for step in range(5):
        assert ember.get(ps.apply.remote(gradient.remote(ps.get.remote())), timeout=BOUND_S) == step + 1
    _kill(ps)
    assert ember.get(ps.apply.remote(gradient.remote(ps.get.remote())), timeout=BOUND_S) == 6
    assert float(ember.get(ps.get.remote(), timeout=BOUND_S)[0]) == -6.0


def test_an_actor_result_lost_with_its_store_comes_back_from_its_copy(fault_cluster):
    ps = Params.options(max_restarts=1).remote(50_000)
    ember.get(ps.apply.remote(np.ones(50_000)), timeout=BOUND_S)
    params = ps.get.remote()
    ember.wait([params], timeout=BOUND_S)
    kill_and_wait_for_the_next("store")
    assert float(ember.get(gradient.remote(params), timeout=BOUND_S)[0]) == 1.0  # the task read the copy
    assert float(ember.get(params, timeout=BOUND_S)[0]) == -1.0


def test_an_actor_restarting_while_postgres_is_down_comes_back_once_it_is_up(fault_cluster):
    # Found by the soak: the replay's read of the log failed, and the actor
    # was declared dead ("its constructor raised OperationalError").
    from ember.chaos._faults import _embedded_log_server

    counter = Counter.options(max_restarts=1, max_task_retries=-1).remote()
    assert ember.get([counter.add.remote(1) for _ in range(20)], timeout=BOUND_S)[-1] == 20
    server = _embedded_log_server()
    pid = ember.get(counter.pid.remote(), timeout=BOUND_S)
    log_dir = fault_cluster.log_dir
    server.stop_for_outage()
    try:
        os.kill(pid, signal.SIGKILL)
        # Until the restarted actor has met the outage (its log says so).
        deadline = time.monotonic() + BOUND_S
        while time.monotonic() < deadline and not any(
                "lineage log is unreachable" in log.read_text(errors="replace") for log in log_dir.glob("worker-*.log")):
            time.sleep(0.05)
    finally:
        server.end_outage()
    assert ember.get(counter.state.remote(), timeout=BOUND_S) == (20, 20)


def test_a_stray_connection_of_the_owner_closing_kills_none_of_its_actors(fault_cluster):
    """A driver that gave up on a paused scheduler and connected again has not exited: the scheduler
    declares an owner gone only once no connection of it is left, after a grace."""
    import time

    from ember.scheduler._context import PROCESS
    from ember.scheduler._listener import connect

    @ember.remote
    class Keeper:
        def ping(self):
            return "pong"

    keeper = Keeper.remote()
    assert ember.get(keeper.ping.remote(), timeout=60) == "pong"
    session = ember._runtime._session
    hello = {"kind": "driver", "pid": os.getpid(), "address": PROCESS.owner.address}
    stray = connect(str(session.scheduler_socket), session.token(), hello, lambda c, m: None, name="stray")
    stray.close()
    time.sleep(3.0)  # past the scheduler's grace for a gone owner (2 s) and a tick
    assert ember.get(keeper.ping.remote(), timeout=60) == "pong"


@ember.remote(max_restarts=3)  # the actor's max_task_retries: 0
class Gated:
    def block(self, started):
        with open(started, "w"):
            pass
        time.sleep(1.0)
        return "blocked"

    def pid(self):
        return os.getpid()

    @ember.method(max_task_retries=1)
    def retried(self):
        return ember.get_runtime_context().get_task_name()

    def plain(self):
        return ember.get_runtime_context().get_task_name()


def _queued_behind_a_kill(actor, call, started):
    """Send ``call`` behind a running one, and SIGKILL the actor while that one runs: ``call`` was
    sent to the old process and had not started, so its place was never logged (no replay answers it)."""
    pid = ember.get(actor.pid.remote(), timeout=BOUND_S)
    first = actor.block.remote(str(started))
    queued = call()
    deadline = time.monotonic() + BOUND_S
    while not started.exists():
        assert time.monotonic() < deadline, "the first call never started"
        time.sleep(0.01)
    os.kill(pid, signal.SIGKILL)
    try:
        ember.get(first, timeout=BOUND_S)  # replayed if its place was durable before the kill
    except ember.exceptions.ActorDiedError as exc:
        assert "max_task_retries=0" in str(exc)  # not logged yet: not run again (the actor's own limit)
    return queued


def test_a_methods_max_task_retries_and_name_override_the_actors(fault_cluster, tmp_path):
    actor = Gated.remote()
    # @ember.method(max_task_retries=1): sent again to the restarted actor, and run there.
    queued = _queued_behind_a_kill(actor, actor.retried.remote, tmp_path / "1")
    assert ember.get(queued, timeout=BOUND_S) == "Gated.retried"
    # The actor's own max_task_retries=0: it fails, naming why.
    queued = _queued_behind_a_kill(actor, actor.plain.remote, tmp_path / "2")
    with pytest.raises(ember.exceptions.ActorDiedError, match="max_task_retries=0"):
        ember.get(queued, timeout=BOUND_S)
    # .options(max_task_retries=..., name=...) on one call.
    queued = _queued_behind_a_kill(actor, actor.plain.options(max_task_retries=-1, name="plain-again").remote,
                                   tmp_path / "3")
    assert ember.get(queued, timeout=BOUND_S) == "plain-again"


def test_retry_exceptions_on_an_actor_method_is_refused_naming_why(fault_cluster):
    with pytest.raises(ember.exceptions.InvalidOptionError, match="logged order"):
        ember.method(retry_exceptions=True)
    with pytest.raises(ember.exceptions.InvalidOptionError, match="logged order"):
        Gated.remote().plain.options(retry_exceptions=[ValueError])
    ember.method(retry_exceptions=False)  # Ray's default: accepted, and it is what ember does
