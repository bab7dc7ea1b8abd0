"""Nemesis schedules without processes: drawn from a seed, fired by the clock and by events."""

import pytest

from ember.chaos._faults import Fault, FaultKind, Target
from ember.chaos._schedule import PLANNED_MAX, Nemesis, Options, Planned, Trigger, TriggerKind, plan

KILL_ALL = (Target.WORKER, Target.STORE, Target.SCHEDULER, Target.GCS)


def test_the_same_seed_draws_the_same_schedule_and_another_seed_another():
    options = Options(kill=KILL_ALL, pause=(Target.WORKER,), restart_postgres=True, rate_per_s=2.0,
                      duration_s=30.0, seed=11)
    first, again = plan(options), plan(options)
    assert first == again
    other = plan(Options(**{**options.__dict__, "seed": 12}))
    assert [p.to_json() for p in other] != [p.to_json() for p in first]
    kinds = {(p.fault.kind, p.fault.target) for p in first}
    assert (FaultKind.RESTART_POSTGRES, Target.POSTGRES) in kinds and (FaultKind.PAUSE, Target.WORKER) in kinds


def test_a_clock_schedule_stays_inside_the_duration():
    every = plan(Options(kill=(Target.WORKER,), every_s=1.5, duration_s=10.0))
    assert [p.trigger.at_s for p in every] == [1.5, 3.0, 4.5, 6.0, 7.5, 9.0]
    random_times = [p.trigger.at_s for p in plan(Options(kill=(Target.STORE,), rate_per_s=3.0, duration_s=20.0))]
    assert random_times == sorted(random_times) and 0 < random_times[0] and random_times[-1] <= 20.0
    assert 20 <= len(random_times) <= 100  # about 60 on average


def test_task_starts_are_planned_even_beside_a_long_task_count_schedule():
    planned = plan(Options(kill=(Target.STORE,), every_tasks=10, on_start=(("f", 3), ("Counter.add", 1))))
    assert len(planned) == PLANNED_MAX
    starts = [p for p in planned if p.trigger.kind is TriggerKind.ON_START]
    assert [(p.trigger.function, p.trigger.count) for p in starts] == [("f", 3), ("Counter.add", 1)]
    assert all(p.fault == Fault.kill(Target.WORKER) for p in starts)


def test_planned_faults_round_trip_through_json():
    planned = plan(Options(kill=KILL_ALL, pause=KILL_ALL, restart_postgres=True, every_s=0.5, every_tasks=7,
                           on_start=(("g", 2),), duration_s=5.0, seed=3))
    assert [Planned.from_json(p.to_json()) for p in planned] == planned


def test_the_nemesis_fires_on_the_clock_on_the_nth_finish_and_on_the_nth_start():
    kill = Fault.kill(Target.WORKER)
    store = Fault.kill(Target.STORE)
    nemesis = Nemesis([
        Planned(Trigger(TriggerKind.AT, at_s=2.0), store),
        Planned(Trigger(TriggerKind.AT, at_s=1.0), kill),
        Planned(Trigger(TriggerKind.AFTER_TASKS, count=3), store),
        Planned(Trigger(TriggerKind.ON_START, count=2, function="f"), kill),
    ], duration_s=10.0)
    assert nemesis.watched_functions == {"f"}
    assert nemesis.next_at_s() == 1.0
    assert nemesis.on_clock(0.5) == []
    assert [p.trigger.at_s for p in nemesis.on_clock(2.5)] == [1.0, 2.0]
    assert nemesis.next_at_s() is None
    assert nemesis.on_finish(3.0) == [] and nemesis.on_finish(3.0) == []
    assert [p.fault for p in nemesis.on_finish(3.0)] == [store]
    assert nemesis.on_start("g", 3.0) == [] and nemesis.on_start("f", 3.0) == []
    assert [p.fault for p in nemesis.on_start("f", 3.0)] == [kill]
    assert nemesis.on_start("f", 3.0) == []
    assert nemesis.pending() == 0


def test_nothing_fires_after_the_duration():
    nemesis = Nemesis([Planned(Trigger(TriggerKind.AFTER_TASKS, count=1), Fault.kill(Target.STORE))], duration_s=5.0)
    assert nemesis.on_finish(6.0) == []


@pytest.mark.parametrize("data", [{}, {"at": 1}, {"on_start": "f", "nth": "x"}])
def test_a_bad_trigger_is_refused_with_what_it_needs(data):
    with pytest.raises((ValueError, TypeError)):
        Trigger.from_json(data)
