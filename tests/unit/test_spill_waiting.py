"""The spill queue's tasks that no live node can run (``scheduler/_spill.py``): they wait, warned, cancellable.

A fake node scheduler and a scripted global scheduler (``Place`` answers)
stand in for the processes; the clock is passed in. No process, no socket.
"""

from __future__ import annotations

import os
import threading
from typing import Any

from ember.scheduler._spec import FailureCause
from ember.scheduler._spec import TaskKind, TaskSpec
from ember.scheduler._relay import KEEPALIVE_S, KEEPALIVE_TIMEOUT_S
from ember.scheduler._spill import UNPLACED_RETRY_S, Spiller

ME = "node-me"
TOTALS = {"CPU": 1.0, "node:127.0.0.1": 1.0}


class FakeScheduler:
    """What the spiller calls on its node scheduler, recorded."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self.node_id = ME
        self.input_bytes: dict[bytes, dict] = {}
        self.failed: list[tuple[bytes, str]] = []
        self.warned: list[tuple[bytes, str]] = []
        self.kept: list[bytes] = []
        self.cancels: list[bytes] = []

    def fail_to_owner(self, spec: TaskSpec, cause: str, detail: str, attempt: int | None = None) -> None:
        self.failed.append((spec.task_id, cause))

    def warn_owner(self, spec: TaskSpec, text: str) -> None:
        self.warned.append((spec.task_id, text))

    def keep_here(self, items: list) -> None:
        self.kept += [spec.task_id for spec, _ in items]

    def _cancel(self, task_id: bytes, force: bool, recursive: bool) -> None:
        self.cancels.append(task_id)

    def actor_is_dead(self, actor_id: bytes) -> bool:
        return False

    def unplaceable(self, spec: TaskSpec, detail: str) -> None:
        self.failed.append((spec.task_id, FailureCause.INFEASIBLE))

    def flush(self) -> None:
        pass


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _spec(cpus: float = 2.0, owner: str = "owner-a") -> TaskSpec:
    return TaskSpec(os.urandom(16), TaskKind.NORMAL, b"job1", owner, b"f" * 16, "f", [], None, 1,
                    (("CPU", cpus),), 0)


def _spiller(answers: list[Any]) -> tuple[Spiller, FakeScheduler, Clock]:
    """A spiller whose global scheduler answers ``answers`` in turn: a node id for each task, or None."""
    scheduler, clock = FakeScheduler(), Clock()
    spiller = Spiller(scheduler, "unix:/nonexistent", b"token", {}, clock=clock)

    def place(method: str, request: dict) -> dict:
        answer = answers.pop(0)
        if callable(answer):
            answer = answer()
        return {"placements": [answer] * len(request["tasks"]), "addresses": {},
                "totals": TOTALS, "nodes": 1}

    spiller._gcs_call = place  # type: ignore[method-assign]
    return spiller, scheduler, clock


def _offer(spiller: Spiller, specs: list[TaskSpec]) -> None:
    # Straight into the queue: the spill thread's wake-up is not this test's to race with.
    spiller._queue.extend((spec, None) for spec in specs)


def test_a_task_no_node_can_run_waits_and_its_owner_is_warned_once_a_minute() -> None:
    spiller, scheduler, clock = _spiller([None, None, None, ME])
    specs = [_spec(), _spec()]
    _offer(spiller, specs)
    assert spiller._place_next_batch()
    assert scheduler.failed == [] and len(spiller._unplaced) == 2  # waiting, not failed
    assert len(scheduler.warned) == 1  # one warning for the owner's two tasks of one shape
    assert "asks for {'CPU': 2.0}" in scheduler.warned[0][1] and "over 1 node(s)" in scheduler.warned[0][1]

    spiller._requeue_unplaced()
    assert len(spiller._unplaced) == 2  # asked again only after UNPLACED_RETRY_S
    clock.now += UNPLACED_RETRY_S
    spiller._requeue_unplaced()
    assert spiller._place_next_batch()
    assert len(scheduler.warned) == 1  # still waiting, within the minute: no new warning

    clock.now += 60.0
    spiller._requeue_unplaced()
    assert spiller._place_next_batch()
    assert len(scheduler.warned) == 2  # a minute on, it is named again

    clock.now += UNPLACED_RETRY_S
    spiller._requeue_unplaced()
    assert spiller._place_next_batch()  # a node that can run them joined (here: this one)
    assert scheduler.kept == [spec.task_id for spec in specs] and not spiller._unplaced


def test_a_waiting_task_is_cancelled_where_it_waits() -> None:
    spiller, scheduler, _ = _spiller([None])
    spec = _spec()
    _offer(spiller, [spec])
    spiller._place_next_batch()
    with scheduler._lock:
        assert spiller.cancel(spec.task_id, False, True)
    assert scheduler.failed == [(spec.task_id, FailureCause.CANCELLED)] and not spiller._unplaced


def test_a_task_cancelled_while_it_is_being_placed_is_not_lost() -> None:
    spec = _spec()
    spiller: Spiller

    def cancel_meanwhile() -> None:
        with scheduler._lock:  # as the scheduler's reader thread would, during the GCS call
            assert spiller.cancel(spec.task_id, False, True)
        return None

    spiller, scheduler, _ = _spiller([cancel_meanwhile])
    _offer(spiller, [spec])
    spiller._place_next_batch()
    assert scheduler.failed == [(spec.task_id, FailureCause.CANCELLED)]
    assert not spiller._unplaced and not spiller._cancelled and not spiller._in_flight


def test_a_task_cancelled_after_its_placement_came_back_is_cancelled_where_it_went() -> None:
    spec = _spec()
    spiller: Spiller

    def kept_then_cancelled(items: list) -> None:
        FakeScheduler.keep_here(scheduler, items)
        assert spiller.cancel(spec.task_id, False, True)  # under the lock, as keep_here is

    spiller, scheduler, _ = _spiller([ME])
    scheduler.keep_here = kept_then_cancelled  # type: ignore[method-assign]
    _offer(spiller, [spec])
    spiller._place_next_batch()
    assert scheduler.kept == [spec.task_id] and scheduler.cancels == [spec.task_id]


class _Peer:
    def __init__(self, node_id: str) -> None:
        self.peer = {"node_id": node_id}


def test_a_node_dying_soon_after_a_forwarded_task_finished_has_its_owner_check_the_result():
    # Issue 23's chaos run: a node killed just after a task's completion reached the forwarding node,
    # but before the task's result reached its owner, left the owner waiting for ever.
    spiller, scheduler, clock = _spiller([])
    rechecked: list[bytes] = []
    scheduler.recheck_with_owner = lambda spec, detail: rechecked.append(spec.task_id)  # type: ignore[attr-defined]
    scheduler.host_lost = lambda node_id, detail: None  # type: ignore[attr-defined]
    running, finished, long_ago, elsewhere = _spec(), _spec(), _spec(), _spec()
    for spec, node in ((running, "b"), (finished, "b"), (long_ago, "b"), (elsewhere, "c")):
        spiller.forwarded[spec.task_id] = (node, spec)
    spiller.done([long_ago.task_id])
    clock.now += 60.0  # long before the death: its result had all the time it needed
    spiller.done([finished.task_id, elsewhere.task_id])
    clock.now += 0.5
    spiller._peer_closed(_Peer("b"))  # type: ignore[arg-type]
    assert scheduler.failed == [(running.task_id, FailureCause.WORKER_DIED)]
    assert rechecked == [finished.task_id]  # the owner ignores it if the result came; else it runs it again
    assert list(spiller._recently_done) == [elsewhere.task_id]


def test_a_completion_before_a_cut_noticed_only_by_the_keepalive_has_its_owner_check_the_result():
    # Issue 27: a node cut off just after a forwarded task's completion reached this node (its result, on
    # another connection, lost in the cut) and its worker killed before it could send the result again.
    # The connection to that node closes here only when the keepalive gives up, up to
    # KEEPALIVE_S + KEEPALIVE_TIMEOUT_S after the cut: a window of 5 s let the owner wait for ever.
    spiller, scheduler, clock = _spiller([])
    rechecked: list[bytes] = []
    scheduler.recheck_with_owner = lambda spec, detail: rechecked.append(spec.task_id)  # type: ignore[attr-defined]
    scheduler.host_lost = lambda node_id, detail: None  # type: ignore[attr-defined]
    finished = _spec()
    spiller.forwarded[finished.task_id] = ("b", finished)
    spiller.done([finished.task_id])
    clock.now += KEEPALIVE_S + KEEPALIVE_TIMEOUT_S  # the cut began at once; the keepalive noticed it last
    spiller._peer_closed(_Peer("b"))  # type: ignore[arg-type]
    assert rechecked == [finished.task_id]
