"""The lease on a cluster node's actor calls (scheduler/_actor_lease.py): when calls are held, refused, run."""

from __future__ import annotations

from ember.scheduler._actor_lease import HOLD, HOLD_AFTER_S, REFUSE, RUN, HeldCalls, Lease
from ember.scheduler._relay import KEEPALIVE_TIMEOUT_S

HOLD_MAX_S = 10.0


def test_calls_run_until_the_gcs_has_been_silent_for_the_hold_time_then_wait_until_it_answers() -> None:
    lease = Lease(HOLD_MAX_S)
    assert lease.tick(0.0) is None and lease.mode == RUN  # never answered: nothing of the node's runs yet
    assert lease.answered(1.0) is None
    assert lease.tick(1.0 + HOLD_AFTER_S) is None  # not past it
    assert lease.tick(1.0 + HOLD_AFTER_S + 0.01) == HOLD
    assert lease.tick(1.0 + HOLD_AFTER_S + 0.5) is None  # said once
    assert lease.answered(1.0 + HOLD_AFTER_S + 1.0) == RUN
    assert lease.tick(1.0 + HOLD_AFTER_S + 1.5) is None


def test_a_hold_past_its_bound_refuses_calls_until_the_gcs_answers() -> None:
    lease = Lease(HOLD_MAX_S)
    lease.answered(0.0)
    assert lease.tick(HOLD_AFTER_S + 0.1) == HOLD
    assert lease.tick(HOLD_AFTER_S + HOLD_MAX_S + 0.1) == REFUSE
    assert lease.tick(HOLD_AFTER_S + HOLD_MAX_S + 5.0) is None
    assert lease.answered(100.0) == RUN


def test_calls_are_held_before_any_owner_can_have_restarted_an_actor_elsewhere() -> None:
    assert HOLD_AFTER_S < KEEPALIVE_TIMEOUT_S


def test_held_calls_run_in_the_order_they_came_when_the_gcs_answers() -> None:
    held = HeldCalls()
    assert not held.keep("c1", "call 1")  # not held: it runs
    assert held.set(HOLD) == []
    assert held.keep("c1", "call 1") and held.keep("c2", "call 2")
    assert held.set(RUN) == [("c1", "call 1"), ("c2", "call 2")]
    assert not held.keep("c1", "call 3")


def test_held_calls_are_handed_back_to_be_refused_past_the_bound_and_later_ones_are_not_kept() -> None:
    held = HeldCalls()
    held.set(HOLD)
    held.keep("c1", "call 1")
    assert held.set(REFUSE) == [("c1", "call 1")]
    assert held.mode == REFUSE
    assert not held.keep("c1", "call 2")  # refused by the caller of keep, at once
    assert held.set(RUN) == []
