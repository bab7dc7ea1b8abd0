"""Nemesis schedules: which fault fires when, as plain data and a state machine over events.

A schedule is a list of ``Planned`` faults, each with its ``Trigger``: a time
since the program started, the Nth finished task, or the Nth start of a
task of a named function. ``plan`` draws one from a seed and the options of
``chaos run``; a report stores the list, so ``chaos replay`` fires the same
faults at the same logical points without drawing again. ``Nemesis`` is the
decision core: the controller feeds it the clock and the cluster's events
and applies what it returns. It does no IO, so it is tested without
processes.

It must never decide anything from a source of randomness other than the
``random.Random`` it is given.
"""

from __future__ import annotations

import enum
import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ember.chaos._faults import Fault, InvalidFaultError, Target
from ember.chaos._netfaults import Direction, NetFault, NetFaultKind, Peer

PLANNED_MAX = 1_000  # a schedule longer than this is a load test, not a replayable run
PAUSE_S_MIN, PAUSE_S_MAX = 0.2, 2.0


class TriggerKind(enum.StrEnum):
    AT = "at"  # seconds after the program started
    AFTER_TASKS = "after_tasks"  # when the Nth task (any function) finishes
    ON_START = "on_start"  # when the Nth task of a function starts, before it runs


@dataclass(frozen=True)
class Trigger:
    kind: TriggerKind
    at_s: float = 0.0
    count: int = 0
    function: str = ""

    def to_json(self) -> dict[str, Any]:
        match self.kind:
            case TriggerKind.AT:
                return {"at_s": round(self.at_s, 6)}
            case TriggerKind.AFTER_TASKS:
                return {"after_tasks": self.count}
            case TriggerKind.ON_START:
                return {"on_start": self.function, "nth": self.count}
        raise AssertionError(self.kind)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Trigger:
        if "at_s" in data:
            return cls(TriggerKind.AT, at_s=float(data["at_s"]))
        if "after_tasks" in data:
            return cls(TriggerKind.AFTER_TASKS, count=int(data["after_tasks"]))
        if "on_start" in data:
            return cls(TriggerKind.ON_START, count=int(data.get("nth", 1)), function=str(data["on_start"]))
        raise InvalidFaultError(f"a trigger needs 'at_s', 'after_tasks' or 'on_start'; got keys {sorted(data)}")

    def describe(self) -> str:
        match self.kind:
            case TriggerKind.AT:
                return f"at {self.at_s:.2f}s"
            case TriggerKind.AFTER_TASKS:
                return f"after task {self.count:,} finished"
            case TriggerKind.ON_START:
                return f"as task {self.count} of {self.function} started"
        raise AssertionError(self.kind)


@dataclass(frozen=True)
class Planned:
    trigger: Trigger
    fault: Fault | NetFault

    def to_json(self) -> dict[str, Any]:
        return {"trigger": self.trigger.to_json(), "fault": self.fault.to_json()}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Planned:
        fault = data["fault"]
        network = isinstance(fault, Mapping) and fault.get("kind") in set(NetFaultKind)
        return cls(Trigger.from_json(data["trigger"]), NetFault.from_json(fault) if network else Fault.from_json(fault))


@dataclass(frozen=True)
class Options:
    """What ``chaos run`` was asked for; ``plan`` turns it into a schedule."""

    kill: tuple[Target, ...] = ()
    pause: tuple[Target, ...] = ()
    restart_postgres: bool = False
    every_s: float | None = None  # a fault every so many seconds ...
    rate_per_s: float | None = None  # ... or at random, this many per second on average
    every_tasks: int | None = None  # a fault after every so many finished tasks
    on_start: tuple[tuple[str, int], ...] = ()  # (function, nth start): hit the worker running it
    duration_s: float = 60.0  # no fault fires after this
    seed: int = 0
    faults_max: int | None = None  # no fault fires after this many
    partition: tuple[tuple[Peer, Direction], ...] = ()  # network faults (a LocalCluster(network=True))
    delay_ms: tuple[int, int] | None = None  # (delay, jitter)
    loss_percent: float | None = None
    net_duration_s: float = 5.0  # how long each network fault lasts

    def menu(self) -> list[tuple[str, Any]]:
        """The faults a clock or task-count trigger chooses among."""
        items: list[tuple[str, Any]] = [("kill", t) for t in self.kill]
        items += [("pause", t) for t in self.pause]
        if self.restart_postgres:
            items.append(("restart_postgres", None))
        items += [("partition", p) for p in self.partition]
        if self.delay_ms is not None:
            items.append(("delay", self.delay_ms))
        if self.loss_percent is not None:
            items.append(("loss", self.loss_percent))
        return items


def plan(options: Options) -> list[Planned]:
    """Draw a schedule from ``options.seed``: the same options give the same list."""
    rng = random.Random(options.seed)
    menu = options.menu()
    planned = [Planned(Trigger(TriggerKind.ON_START, count=nth, function=function), Fault.kill(Target.WORKER))
               for function, nth in options.on_start]
    if menu:
        for at_s in _times(options, rng):
            planned.append(Planned(Trigger(TriggerKind.AT, at_s=at_s), _draw(menu, rng, options.net_duration_s)))
        if options.every_tasks:
            for k in range(1, PLANNED_MAX + 1):
                planned.append(Planned(Trigger(TriggerKind.AFTER_TASKS, count=k * options.every_tasks),
                                       _draw(menu, rng, options.net_duration_s)))
    return planned[:PLANNED_MAX]


def _times(options: Options, rng: random.Random) -> Iterable[float]:
    at_s = 0.0
    for _ in range(PLANNED_MAX):
        if options.every_s:
            at_s += options.every_s
        elif options.rate_per_s:
            at_s += rng.expovariate(options.rate_per_s)
        else:
            return
        if at_s > options.duration_s:
            return
        yield at_s


def _draw(menu: Sequence[tuple[str, Any]], rng: random.Random, net_duration_s: float) -> Fault | NetFault:
    action, what = menu[rng.randrange(len(menu))]
    pick = rng.randrange(1_000_000)  # reduced modulo the live processes (or nodes) of that kind when it fires
    match action:
        case "kill":
            return Fault.kill(what, pick)
        case "pause":
            return Fault.pause(what, round(rng.uniform(PAUSE_S_MIN, PAUSE_S_MAX), 2), pick)
        case "restart_postgres":
            return Fault.restart_postgres()
        case "partition":
            peer, direction = what
            return NetFault.partition(peer, net_duration_s, direction, pick, rng.randrange(1_000_000))
        case "delay":
            return NetFault.delay(what[0], net_duration_s, what[1], pick)
        case "loss":
            return NetFault.loss(what, net_duration_s, pick)
    raise AssertionError(action)


@dataclass
class Nemesis:
    """Which planned faults are due, given the clock and the events seen so far."""

    planned: list[Planned]
    duration_s: float
    faults_max: int | None = None
    fired: int = 0
    tasks_finished: int = 0
    starts: dict[str, int] = field(default_factory=dict)
    _by_time: list[Planned] = field(init=False)
    _by_count: list[Planned] = field(init=False)
    _by_start: dict[tuple[str, int], list[Planned]] = field(init=False)

    def __post_init__(self) -> None:
        self._by_time = sorted((p for p in self.planned if p.trigger.kind is TriggerKind.AT),
                               key=lambda p: p.trigger.at_s, reverse=True)
        self._by_count = sorted((p for p in self.planned if p.trigger.kind is TriggerKind.AFTER_TASKS),
                                key=lambda p: p.trigger.count, reverse=True)
        self._by_start = {}
        for p in self.planned:
            if p.trigger.kind is TriggerKind.ON_START:
                self._by_start.setdefault((p.trigger.function, p.trigger.count), []).append(p)

    @property
    def watched_functions(self) -> frozenset[str]:
        """Functions whose task starts must wait for the controller's answer."""
        return frozenset(function for function, _ in self._by_start)

    def next_at_s(self) -> float | None:
        return self._by_time[-1].trigger.at_s if self._by_time else None

    def on_clock(self, elapsed_s: float) -> list[Planned]:
        due = []
        while self._by_time and self._by_time[-1].trigger.at_s <= elapsed_s:
            due.append(self._by_time.pop())
        return self._within(due, elapsed_s)

    def on_finish(self, elapsed_s: float) -> list[Planned]:
        self.tasks_finished += 1
        due = []
        while self._by_count and self._by_count[-1].trigger.count <= self.tasks_finished:
            due.append(self._by_count.pop())
        return self._within(due, elapsed_s)

    def on_start(self, function: str, elapsed_s: float) -> list[Planned]:
        nth = self.starts[function] = self.starts.get(function, 0) + 1
        return self._within(self._by_start.pop((function, nth), []), elapsed_s)

    def pending(self) -> int:
        return len(self._by_time) + len(self._by_count) + sum(len(v) for v in self._by_start.values())

    def _within(self, due: list[Planned], elapsed_s: float) -> list[Planned]:
        if elapsed_s > self.duration_s:
            return []
        if self.faults_max is not None:
            due = due[:max(0, self.faults_max - self.fired)]
        self.fired += len(due)
        return due
