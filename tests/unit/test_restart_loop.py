"""The restart-loop decision over plain data (``scheduler/_restart_loop.py``)."""

from ember.scheduler._restart_loop import decide, ended_by_itself

A, B, C = b"a" * 16, b"b" * 16, b"c" * 16
CALLS = [(1, A), (2, B), (3, C)]


def test_an_unfinished_last_call_is_marked_and_replayed():
    decision = decide(CALLS, set(), {}, self_inflicted=True)
    assert decision.replay == tuple(CALLS) and decision.mark == (C, 3) and not decision.poisoned


def test_a_finished_last_call_is_neither_marked_nor_suspected():
    decision = decide(CALLS, {C}, {(C, 3): 1}, self_inflicted=True)
    assert decision.replay == tuple(CALLS) and decision.mark is None and decision.newly_poisoned is None


def test_the_same_call_at_the_same_place_after_a_crash_of_its_own_is_poisoned():
    decision = decide(CALLS, set(), {(C, 3): 1}, self_inflicted=True)
    assert decision.replay == tuple(CALLS[:2])
    assert decision.newly_poisoned == (C, 3) and decision.mark == (C, 3) and decision.poisoned == {C}


def test_a_kill_from_outside_is_never_taken_for_a_loop():
    decision = decide(CALLS, set(), {(C, 3): 1}, self_inflicted=False)
    assert decision.replay == tuple(CALLS) and decision.newly_poisoned is None and decision.mark == (C, 3)


def test_a_poisoned_call_stays_out_of_every_later_replay():
    decision = decide([*CALLS, (4, b"d" * 16)], {b"d" * 16}, {(C, 3): 2}, self_inflicted=True)
    assert [call[1] for call in decision.replay] == [A, B, b"d" * 16] and decision.poisoned == {C}


def test_how_a_process_ended_tells_its_own_crash_from_a_kill():
    assert ended_by_itself("pid 7 exited with code 0")
    assert ended_by_itself("pid 7 killed by SIGSEGV")
    assert not ended_by_itself("pid 7 killed by SIGKILL")
    assert not ended_by_itself(None)
