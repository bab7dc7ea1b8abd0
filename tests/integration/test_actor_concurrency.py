"""Async and threaded actors, and concurrency groups: calls run together, up to each group's size.

Each test would hang (bounded by its ``get`` timeout, then fail) or count a
wrong peak if calls ran one at a time, or more of them at once than allowed.
"""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time

import pytest

import ember
from ember.exceptions import EmberTaskError, InvalidOptionError, TaskCancelledError
from tests.fix_kill import wait_gone

BOUND_S = 60.0
WAIT_S = 30.0  # how long a call waits for its partners before it gives up (and the test fails)


class _Peak:
    """Counts calls in a method at once (threads or coroutines), and the most there ever were."""

    def __init__(self) -> None:
        self.now = 0
        self.peak = 0
        self.lock = threading.Lock()

    def enter(self) -> None:
        with self.lock:
            self.now += 1
            self.peak = max(self.peak, self.now)

    def leave(self) -> None:
        with self.lock:
            self.now -= 1

    def hold(self, seconds: float) -> int:
        """Stay in for ``seconds`` (on a thread); the peak seen so far."""
        self.enter()
        time.sleep(seconds)
        self.leave()
        return self.peak


@ember.remote
class Rendezvous:
    """An async actor whose calls each wait until ``n`` of them have started."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.started = 0
        self.all_in = asyncio.Event()
        self.peak = _Peak()

    async def meet(self) -> int:
        self.peak.enter()
        self.started += 1
        if self.started >= self.n:
            self.all_in.set()
        await asyncio.wait_for(self.all_in.wait(), WAIT_S)
        self.peak.leave()
        return self.started

    async def pause(self, seconds: float) -> int:
        self.peak.enter()
        await asyncio.sleep(seconds)
        self.peak.leave()
        return self.peak.peak

    def peak_seen(self) -> int:  # a plain method of an async actor: runs on its event loop
        return self.peak.peak

    async def fail(self) -> None:
        await asyncio.sleep(0)
        raise KeyError("async trouble")

    async def forever(self) -> None:
        await asyncio.sleep(3600)

    async def my_task_id(self, delay_s: float) -> str:
        await asyncio.sleep(delay_s)  # others run meanwhile: each call still sees its own task
        return ember.get_runtime_context().get_task_id()


@ember.remote
def double(x: int) -> int:
    return 2 * x


@ember.remote
class Awaiter:
    async def await_a_ref(self, x: int) -> int:
        return await double.remote(x)

    async def blocking_get(self, x: int) -> int:
        return ember.get(double.remote(x), timeout=BOUND_S)

    async def gather(self, n: int) -> list:
        return list(await asyncio.gather(*[double.remote(i) for i in range(n)]))


@ember.remote(max_concurrency=4)
class Threaded:
    def __init__(self, parties: int) -> None:
        self.barrier = threading.Barrier(parties, timeout=WAIT_S)
        self.peak = _Peak()

    def meet(self, i: int) -> int:
        self.barrier.wait()
        return i

    def pause(self, seconds: float) -> int:
        return self.peak.hold(seconds)

    def thread_name(self) -> str:
        return threading.current_thread().name


@ember.remote(concurrency_groups={"io": 2})
class Grouped:
    def __init__(self) -> None:
        self.io_peak = _Peak()
        self.default_peak = _Peak()
        self.barrier = threading.Barrier(2, timeout=WAIT_S)

    @ember.method(concurrency_group="io")
    def io(self, seconds: float) -> int:
        return self.io_peak.hold(seconds)

    def compute(self, seconds: float) -> int:
        return self.default_peak.hold(seconds)

    def meet(self) -> str:
        self.barrier.wait()
        return threading.current_thread().name

    def peaks(self) -> tuple[int, int]:
        return self.io_peak.peak, self.default_peak.peak


def test_calls_of_an_async_actor_run_together_on_one_loop(fault_cluster):
    actor = Rendezvous.remote(8)
    assert ember.get([actor.meet.remote() for _ in range(8)], timeout=BOUND_S) == [8] * 8
    assert ember.get(actor.peak_seen.remote(), timeout=BOUND_S) == 8


def test_an_async_actor_runs_up_to_max_concurrency_calls_at_once(fault_cluster):
    actor = Rendezvous.options(max_concurrency=2).remote(99)
    peaks = ember.get([actor.pause.remote(0.2) for _ in range(6)], timeout=BOUND_S)
    assert max(peaks) == 2


def test_an_async_actor_errors_and_cancels_like_a_task(fault_cluster):
    actor = Rendezvous.remote(1)
    with pytest.raises(KeyError):
        ember.get(actor.fail.remote(), timeout=BOUND_S)
    stuck = actor.forever.remote()
    assert ember.wait([stuck], timeout=0.5)[0] == []
    ember.cancel(stuck)
    with pytest.raises((TaskCancelledError, EmberTaskError)):
        ember.get(stuck, timeout=BOUND_S)
    assert ember.get(actor.meet.remote(), timeout=BOUND_S) >= 1  # the actor lives on


def test_each_concurrent_call_sees_its_own_task(fault_cluster):
    actor = Rendezvous.remote(1)
    refs = [actor.my_task_id.remote(0.05 * (i % 3)) for i in range(6)]
    assert ember.get(refs, timeout=BOUND_S) == [ref.task_id().hex() for ref in refs]


def test_refs_are_awaited_and_got_inside_async_methods(fault_cluster):
    actor = Awaiter.remote()
    assert ember.get(actor.await_a_ref.remote(4), timeout=BOUND_S) == 8
    assert ember.get(actor.blocking_get.remote(5), timeout=BOUND_S) == 10
    assert ember.get(actor.gather.remote(5), timeout=BOUND_S) == [0, 2, 4, 6, 8]


def test_a_threaded_actor_runs_max_concurrency_calls_at_once(fault_cluster):
    actor = Threaded.remote(4)
    assert ember.get([actor.meet.remote(i) for i in range(4)], timeout=BOUND_S) == [0, 1, 2, 3]
    capped = Threaded.options(max_concurrency=3).remote(1)
    assert max(ember.get([capped.pause.remote(0.2) for _ in range(9)], timeout=BOUND_S)) == 3
    assert ember.get(actor.thread_name.remote(), timeout=BOUND_S).startswith("ember-actor-")


def test_concurrency_groups_limit_each_group_on_its_own(fault_cluster):
    actor = Grouped.remote()
    io = [actor.io.remote(0.2) for _ in range(6)]
    compute = [actor.compute.remote(0.1) for _ in range(3)]
    ember.get(io + compute, timeout=BOUND_S)
    assert ember.get(actor.peaks.remote(), timeout=BOUND_S) == (2, 1)  # io: 2 at once; the default group: 1
    # A call moved to the io group: two of them meet, which the default group's one thread never could.
    names = ember.get([actor.meet.options(concurrency_group="io").remote() for _ in range(2)], timeout=BOUND_S)
    assert all(name.startswith("ember-actor-io") for name in names)


def test_an_undeclared_concurrency_group_is_refused_by_name(fault_cluster):
    actor = Grouped.remote()
    with pytest.raises(InvalidOptionError, match="no concurrency group 'nope'"):
        actor.io.options(concurrency_group="nope")
    with pytest.raises(InvalidOptionError, match="does not declare"):
        @ember.remote
        class Undeclared:
            @ember.method(concurrency_group="io")
            def f(self) -> None:
                pass
    with pytest.raises(InvalidOptionError, match="max_concurrency"):
        Threaded.options(max_concurrency=0)


@ember.remote
class Tally:
    """An async actor with checkpoint hooks: what a restart restores, and what it cannot."""

    checkpoint_interval = 3

    def __init__(self) -> None:
        self.total = 0

    async def add(self, k: int) -> int:
        await asyncio.sleep(0)
        self.total += k
        return self.total

    def value(self) -> int:
        return self.total

    def pid(self) -> int:
        return os.getpid()

    def save_checkpoint(self) -> int:
        return self.total

    def load_checkpoint(self, total: int) -> None:
        self.total = total


def test_a_restarted_concurrent_actor_comes_back_from_its_checkpoint_only(fault_cluster):
    from ember.scheduler._session import log_conninfo
    import psycopg

    tally = Tally.options(max_restarts=1, max_task_retries=-1).remote()
    for k in (1, 2, 3):  # one at a time: quiescent after each, so the third call checkpoints (total 6)
        ember.get(tally.add.remote(k), timeout=BOUND_S)
    assert ember.get(tally.add.remote(10), timeout=BOUND_S) == 16  # after the checkpoint: not replayed
    pid = ember.get(tally.pid.remote(), timeout=BOUND_S)
    os.kill(pid, signal.SIGKILL)
    wait_gone(pid)
    assert ember.get(tally.value.remote(), timeout=BOUND_S) == 6
    assert ember.get(tally.add.remote(1), timeout=BOUND_S) == 7
    with psycopg.connect(log_conninfo(fault_cluster)) as conn:
        seqs = [row[0] for row in conn.execute(
            "SELECT seq FROM actor_calls WHERE actor_id = %s ORDER BY seq", (tally._actor_id,))]
    assert seqs == sorted(set(seqs)) and len(seqs) >= 7  # every start logged once, in its own place


def test_replay_says_why_a_concurrent_actors_call_is_not_replayed(fault_cluster):
    from ember.lineage import ReplayInputError, replay_task

    actor = Grouped.remote()
    ref = actor.io.remote(0.0)
    assert ember.get(ref, timeout=BOUND_S) == 1
    with pytest.raises(ReplayInputError, match=r"ran its calls concurrently \(threaded 1, io=2\)"):
        replay_task(ref.task_id().hex())


@ember.remote(max_concurrency=2)
class Breakable:
    """A threaded actor that can break ember's own step before its next call starts (a fault injected
    into the runtime, not the method)."""

    def break_the_next_start(self) -> None:
        from ember.scheduler import _context

        executor = _context.PROCESS.owner.executor
        begin = executor._begin_concurrent

        def fail_once(spec):
            executor._begin_concurrent = begin
            raise RuntimeError("the start of the call broke")

        executor._begin_concurrent = fail_once

    def ping(self) -> str:
        return "pong"


def test_a_failure_of_ember_around_a_concurrent_call_reaches_its_caller(fault_cluster):
    from ember.exceptions import EmberInternalError

    actor = Breakable.remote()
    ember.get(actor.break_the_next_start.remote(), timeout=BOUND_S)
    with pytest.raises(EmberInternalError, match="the start of the call broke"):
        ember.get(actor.ping.remote(), timeout=BOUND_S)  # once it hung until the timeout
    assert ember.get(actor.ping.remote(), timeout=BOUND_S) == "pong"  # the actor goes on
