"""Verdicts on other processes' lives (``scheduler/_owner/_liveness.py``), with a scripted probe and clock."""

from __future__ import annotations

from ember.scheduler._owner._liveness import GONE_AFTER_S, RECHECK_S, VERDICTS_MAX, Liveness


class Probe:
    """Raises for the addresses in ``down`` (ConnectionRefusedError for those in ``refused``); counts calls."""

    def __init__(self) -> None:
        self.down: set[str] = set()
        self.refused: set[str] = set()
        self.calls: list[str] = []

    def __call__(self, address: str) -> None:
        self.calls.append(address)
        if address in self.refused:
            raise ConnectionRefusedError(address)
        if address in self.down:
            raise ConnectionError(f"{address} did not answer")


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _liveness() -> tuple[Liveness, Probe, Clock]:
    probe, clock = Probe(), Clock()
    return Liveness(probe, lambda address, exc: isinstance(exc, ConnectionRefusedError), clock), probe, clock


def test_an_owner_cut_off_for_a_while_is_alive_again_once_it_answers():
    liveness, probe, clock = _liveness()
    probe.down.add("b")
    assert not liveness.alive("b")
    clock.now += RECHECK_S / 2
    assert not liveness.alive("b") and probe.calls == ["b"]  # the verdict holds a while: no probe
    probe.down.clear()  # healed
    clock.now += RECHECK_S
    assert liveness.alive("b") and probe.calls == ["b", "b"]
    assert liveness.alive("b")  # and stays so while it answers


def test_a_refusal_that_proves_death_is_final():
    liveness, probe, clock = _liveness()
    probe.refused.add("a")
    assert not liveness.alive("a")
    clock.now += 100 * RECHECK_S
    assert not liveness.alive("a") and liveness.gone("a") and probe.calls == ["a"]


def test_gone_only_once_out_of_reach_past_the_keepalive_window():
    liveness, probe, clock = _liveness()
    probe.down.add("b")
    assert not liveness.gone("b")  # out of reach, not yet gone: a borrower is kept
    while clock.now - 100.0 < GONE_AFTER_S - RECHECK_S:
        clock.now += RECHECK_S
        assert not liveness.gone("b")
    clock.now += 2 * RECHECK_S
    assert liveness.gone("b")
    probe.down.clear()
    clock.now += RECHECK_S
    assert not liveness.gone("b") and liveness.alive("b")  # it answered after all: alive again


def test_a_run_of_failures_starts_again_after_an_answer():
    liveness, probe, clock = _liveness()
    probe.down.add("b")
    assert not liveness.alive("b")
    clock.now += GONE_AFTER_S
    probe.down.clear()
    assert liveness.alive("b")
    probe.down.add("b")
    clock.now += RECHECK_S
    assert not liveness.gone("b")  # a new cut: counted from its own first failure


def test_verdicts_are_bounded():
    liveness, probe, clock = _liveness()
    addresses = [f"p{i}" for i in range(VERDICTS_MAX + 1)]
    probe.down.update(addresses)
    for address in addresses:
        liveness.alive(address)
    assert liveness.statistics() == {"unreachable": VERDICTS_MAX}
    assert not liveness.alive(addresses[0]) and probe.calls.count(addresses[0]) == 2  # forgotten: probed again
