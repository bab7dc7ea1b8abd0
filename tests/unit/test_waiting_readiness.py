"""``_Readiness``: which of a wait's refs it hands back, and which it looks at to decide.

Plain data: a ref is any hashable, ``ready`` a set lookup that records what it was asked.
"""

from __future__ import annotations

from ember.scheduler._owner._waiting import _Readiness


class Probe:
    def __init__(self, ready: set[str]) -> None:
        self.ready = ready
        self.asked: list[str] = []

    def __call__(self, ref: str) -> bool:
        self.asked.append(ref)
        return ref in self.ready


def test_a_wait_for_some_flags_the_first_ready_refs_in_order_and_stops_looking():
    refs = ["a", "b", "c", "d", "e"]
    probe = Probe({"a", "c", "d", "e"})
    readiness = _Readiness(refs, 2)
    assert readiness.update(probe)
    assert readiness.flags == [True, False, True, False, False]  # d and e are ready, but not handed back
    assert probe.asked == ["a", "b", "c"]  # nothing past the second ready ref is looked at


def test_a_wait_for_all_looks_at_every_ref():
    refs = ["a", "b", "c"]
    probe = Probe({"a", "b", "c"})
    readiness = _Readiness(refs, 3)
    assert readiness.update(probe)
    assert readiness.flags == [True, True, True]
    assert probe.asked == refs


def test_too_few_ready_keeps_the_pending_ones_and_a_later_pass_looks_only_at_them():
    refs = ["a", "b", "c", "d"]
    probe = Probe({"b"})
    readiness = _Readiness(refs, 2)
    assert not readiness.update(probe)
    assert readiness.flags == [False, True, False, False]
    assert readiness.pending == [0, 2, 3]
    probe.ready.add("d")
    probe.asked.clear()
    assert readiness.update(probe)
    # The pending ones, then the last pass over the list at one moment, up to the second ready ref.
    assert probe.asked == ["a", "c", "d", "a", "b", "c", "d"]
    assert readiness.flags == [False, True, False, True]


def test_a_ref_that_turned_pending_again_is_not_handed_back():
    refs = ["a", "b", "c"]
    probe = Probe({"a"})
    readiness = _Readiness(refs, 2)
    assert not readiness.update(probe)
    probe.ready = {"b"}  # b came, and a's copy was lost meanwhile (it is being rebuilt)
    assert not readiness.update(probe)
    assert readiness.flags == [False, True, False]
    assert readiness.pending == [0, 2]
