"""What an actor answers a call sent again (scheduler/_ran_calls.py), over plain data."""

from __future__ import annotations

from ember.scheduler._ran_calls import RAN_CALLS_KEPT, RanCalls


def test_a_call_that_ran_is_answered_with_its_outcome_and_others_run() -> None:
    ran = RanCalls()
    ran.ran(b"call-1", [b"two"], False)
    ran.ran(b"call-2", [b"error"], True)
    assert ran.outcome(b"call-1") == ([b"two"], False)
    assert ran.outcome(b"call-2") == ([b"error"], True)
    assert ran.outcome(b"call-3") is None  # never ran here: it runs


def test_only_the_last_calls_are_kept() -> None:
    ran = RanCalls()
    for i in range(RAN_CALLS_KEPT + 3):
        ran.ran(i.to_bytes(4, "big"), [i], False)
    assert len(ran) == RAN_CALLS_KEPT
    assert ran.outcome((0).to_bytes(4, "big")) is None
    assert ran.outcome((RAN_CALLS_KEPT + 2).to_bytes(4, "big")) == ([RAN_CALLS_KEPT + 2], False)
