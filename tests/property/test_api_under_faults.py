"""The public API under every fault ``ember.chaos`` injects, checked against a fault-free model.

A hypothesis state machine does what a program does with ``import ember``:
puts, tasks over earlier refs (top-level and nested in a list, small ints and
128 KiB arrays that live in the shared-memory store, large values passed by
value), tasks in a ``runtime_env`` of their own (variables and a module
shipped through the log: a rerun must run in it to compute the same value), tasks that submit tasks of their own and block on them (run inline
by their worker when none has started), actors with restarts, calls to an async actor (which awaits the refs
it is given, its calls running together) and to a threaded actor, generator
tasks whose values are read while they run, actors that end themselves with
``exit_actor()``, actors whose last handle is dropped, tasks in a placement
group's bundle (one group per example, made first, removed at its end),
``get`` and ``wait``. A plain Python model
computes every value the same code gives without ember, and each actor's
state as its calls applied in submission order.

Faults injected, through ``ember.chaos.inject`` on one local cluster this
module starts, and what must recover:

- kill (SIGKILL by pid) a worker, the fork server, the store, the scheduler, the GCS service:
  tasks are retried, lost objects rebuilt, actors restarted with their state,
  the services restarted;
- pause (SIGSTOP, SIGCONT 0.2 to 1 s later) of each of them: work resumes;
- restart of the embedded PostgreSQL: log writers reconnect, nothing is lost.

Each example draws a plan: every one of those eleven faults once, in an order
and with gaps (in operations) it chooses; the soak adds repeats. The nemesis
fires between operations, never on a timer, so a plan replays. The example's
final check reads every ref and every actor again and waits until every kind
of process is back; the ci run asserts every kind of fault really hit.

Invariants: every value read equals the model (arrays exactly), the
example's placement group is CREATED again after every fault (its bundle
reserved anew by a restarted scheduler, reloaded by a restarted GCS), and its
creation row is already committed to the lineage log when ``get`` or ``wait``
hands it out (durable before visible, the caller included); every ``get``
is bounded and a ``GetTimeoutError`` is a hang; ``wait`` returns exactly
``num_returns`` ready refs out of those given; an actor's state is its model's.
No typed error is legitimate, with one exception the design names: a large
put (or large by-value argument) whose store was killed before its durable
copy was written may raise ``ObjectLostError`` saying so. Budgets make that
true: each fault costs a task or an actor at most one attempt, and retries
and restarts are sized to the number of faults a plan holds.

Run:
    .venv/bin/python -m pytest tests/property -x -q          # ci profile: fixed seed, 15 to 75 s
    HYPOTHESIS_PROFILE=soak EMBER_SOAK_S=600 .venv/bin/python -m pytest tests/property -x -s

The soak runs batches of random examples until EMBER_SOAK_S seconds (default
600) have passed, keeps going after a failing example, then prints a tally
(faults by kind, operations checked, wrong results, hangs, lost objects) and
the failing plans, and fails if there were any.
"""

from __future__ import annotations

import asyncio
import atexit
import functools
import itertools
import os
import shutil
import tempfile
import time
from pathlib import Path
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import psutil
import pytest
from hypothesis import HealthCheck, Phase, note, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    initialize,
    precondition,
    rule,
    run_state_machine_as_test,
)

import ember
from ember.chaos import Fault, FaultKind, Injected, Outcome, Target, inject, live_pids, paused_pids, resume_all
from ember.exceptions import EmberError, GetTimeoutError, ObjectLostError
from ember.util import metrics, placement_group, placement_group_table, remove_placement_group
from ember.util.scheduling_strategies import PlacementGroupSchedulingStrategy
from tests.fix_cluster import poll_until, run_script

GET_BOUND_S = 60.0  # recovery after a scheduler kill takes seconds on two cores
HIT_BOUND_S = 30.0  # a killed process is back well within this, so a fault always finds its target
WHOLE_BOUND_S = 30.0
ARRAY_LEN = 16_384  # int64s, 128 KiB: past the 100 KiB inline limit, so such objects live in the store
MODULUS = 1_000_003  # keeps every value small and every fold order-sensitive
SEEDS = st.integers(0, 999)
PAUSES_S = (0.2, 0.5, 1.0)
GAP_MAX = 3  # operations between two faults
ACTORS_MAX = 2
GROUP_BUNDLE = {"CPU": 0.5}  # the example's placement group: one bundle, a quarter of the cluster's CPUs
LIFETIME_OPS_MAX = 3  # actors an example ends (exit_actor) or frees (dropped): each starts a process
PROCESS_TARGETS = (Target.WORKER, Target.FORK_SERVER, Target.STORE, Target.SCHEDULER, Target.GCS)
FAULT_KINDS = tuple((kind, target) for kind in (FaultKind.KILL, FaultKind.PAUSE) for target in PROCESS_TARGETS) + (
    (FaultKind.RESTART_POSTGRES, Target.POSTGRES),)

SOAK = settings.get_current_profile_name() == "soak"
SOAK_S = float(os.environ.get("EMBER_SOAK_S", "600"))
EXTRA_FAULTS = 6 if SOAK else 0  # repeats on top of one of each kind
FAULTS_MAX = len(FAULT_KINDS) + EXTRA_FAULTS
RETRIES = FAULTS_MAX  # a fault costs a task attempt or an actor restart at most once
CI_TIMEOUT_S = 300
SETTINGS = settings(
    settings.default,  # the loaded profile: ci is derandomized
    max_examples=5 if SOAK else 3,  # per batch in the soak; the whole run in ci
    # Room for the whole plan: eight initialize steps, then gaps of up to GAP_MAX operations per fault.
    stateful_step_count=8 + GAP_MAX * FAULTS_MAX + 3,
    deadline=None,
    database=None if not SOAK else settings.default.database,
    phases=[Phase.explicit, Phase.reuse, Phase.generate],  # a shrink replays faults for minutes
    suppress_health_check=list(HealthCheck),
)


# -- the computation: the same code runs in tasks and in the model ------------------------


def _value(seed: int, large: bool) -> Any:
    # Recording an application metric (its series written to the node's session folder each second) must
    # never fail or hold up a task, whatever is killed or paused around it.
    metrics.Counter("chaos_values", description="Values made.", tag_keys=("large",)).inc(tags={"large": str(large)})
    if large:
        return (np.arange(ARRAY_LEN, dtype=np.int64) * 7 + seed) % MODULUS
    return seed % MODULUS


def _combine(a: Any, b: Any) -> Any:
    return (a * 3 + b) % MODULUS


def _digest(x: Any) -> int:
    return int(x) if isinstance(x, int) else int(np.sum(x) % MODULUS)


def _fold_nested(box: list[ember.ObjectRef]) -> Any:
    return functools.reduce(_combine, ember.get(box, timeout=GET_BOUND_S))


def _spawn_and_fold(seeds: list[int], large: bool) -> Any:
    """Submits tasks of its own and blocks on them: nested blocking (its worker may run them inline)."""
    return functools.reduce(_combine, ember.get([value_task.remote(s, large) for s in seeds], timeout=GET_BOUND_S))


class LedgerState:
    """An actor's state and the model of it: an order-sensitive fold of the calls."""

    def __init__(self, start: int) -> None:
        self.total = start % MODULUS
        self.calls = 0

    def add(self, x: Any) -> int:
        self.total = (self.total * 31 + _digest(x)) % MODULUS
        self.calls += 1
        return self.total

    def state(self) -> tuple[int, int]:
        return self.calls, self.total


class AsyncCombiner:
    """An async actor: its calls run together on one event loop, and await the refs they are given."""

    async def combine(self, a: Any, box: list[ember.ObjectRef]) -> Any:
        values = await asyncio.gather(*box)  # nested refs, awaited here while other calls run
        await asyncio.sleep(0)
        return functools.reduce(_combine, [a, *values])


class ThreadedCombiner:
    """A threaded actor: up to ``max_concurrency`` calls at once on its threads. Its calls are sent
    again after a crash by the method's own ``max_task_retries`` (the actor's is 0)."""

    @ember.method(max_task_retries=RETRIES)
    def combine(self, a: Any, b: Any) -> Any:
        return _combine(a, b)


def _values(seed: int, count: int, large: bool) -> Any:
    """A generator task: ``count`` values, each made and read while it runs."""
    for i in range(count):
        yield _value(seed + i, large)


class Broke(Exception):
    """What a generator that fails partway raises: its values before it are kept (``partial_stream``)."""


def _values_then_raise(seed: int, made: int, large: bool) -> Any:
    """A num_returns=k generator that yields ``made`` (< k) values, then raises Broke."""
    yield from _values(seed, made, large)
    raise Broke(f"after {made}")


class Leaver:
    """An actor that ends itself with exit_actor()."""

    def ping(self) -> str:
        return "pong"

    def echo(self, x: int) -> int:
        return x

    def leave(self) -> None:
        ember.actor.exit_actor()


def _echo_through(actor: Any, x: int) -> int:
    """A task that calls an actor whose handle it was given (its creator may hold none)."""
    return ember.get(actor.echo.remote(x), timeout=GET_BOUND_S)


echo_through_task = ember.remote(max_retries=RETRIES)(_echo_through)


# A runtime_env whose variable and module the task's value depends on: shipped through the log, set up
# on each worker that runs it (a retry, a rebuild, a restarted scheduler's queue all run it there).
_ENV_DIR = tempfile.mkdtemp(prefix="ember-chaos-env-")
atexit.register(shutil.rmtree, _ENV_DIR, True)
Path(_ENV_DIR, "chaos_env_offset.py").write_text(
    "import os\n\nOFFSET = 17\n\n\ndef setup():\n    os.environ['EMBER_CHAOS_HOOKED'] = '3'\n")
# Its setup hook runs in every worker of the environment, a worker started after a kill too.
ENV = {"env_vars": {"EMBER_CHAOS_SCALE": "5"}, "py_modules": [str(Path(_ENV_DIR, "chaos_env_offset.py"))],
       "worker_process_setup_hook": "chaos_env_offset.setup"}
ENV_ADDEND = 5 + 17 + 3


def _combine_in_env(a: Any) -> Any:
    import chaos_env_offset  # type: ignore[import-not-found]

    return _combine(a, int(os.environ["EMBER_CHAOS_SCALE"]) + chaos_env_offset.OFFSET
                    + int(os.environ["EMBER_CHAOS_HOOKED"]))


value_task = ember.remote(max_retries=RETRIES)(_value)
env_task = ember.remote(max_retries=RETRIES, runtime_env=ENV)(_combine_in_env)
stream_task = ember.remote(max_retries=RETRIES)(_values)
partial_stream_task = ember.remote(max_retries=RETRIES)(_values_then_raise)
combine_task = ember.remote(max_retries=RETRIES)(_combine)
grouped_task = ember.remote(max_retries=RETRIES, num_cpus=0.25)(_value)  # run in the example's group
fold_task = ember.remote(max_retries=RETRIES)(_fold_nested)
spawn_task = ember.remote(max_retries=RETRIES)(_spawn_and_fold)
Ledger = ember.remote(max_restarts=RETRIES, max_task_retries=RETRIES)(LedgerState)
# Concurrent actors come back from their constructor only (their calls have no order to replay):
# their calls' results depend on their arguments alone, so a restart must not change any of them.
LeavingActor = ember.remote(max_restarts=RETRIES, max_task_retries=RETRIES)(Leaver)
AsyncActor = ember.remote(max_restarts=RETRIES, max_task_retries=RETRIES)(AsyncCombiner)
ThreadedActor = ember.remote(max_restarts=RETRIES, max_concurrency=4)(ThreadedCombiner)


# -- the tally a soak prints ---------------------------------------------------------------


@dataclass
class Tally:
    examples: int = 0
    faults: Counter[str] = field(default_factory=Counter)
    faults_missed: Counter[str] = field(default_factory=Counter)
    operations_checked: int = 0
    concurrent_calls: int = 0  # calls made to the async and threaded actors
    streams: int = 0  # generator tasks read while they ran
    partial_streams: int = 0  # num_returns=k generators that raised after some of their values
    env_tasks: int = 0  # tasks in a runtime_env of their own
    exits: int = 0  # actors that ended themselves with exit_actor()
    drops: int = 0  # actors whose last handle was dropped
    grouped: int = 0  # tasks run in a placement group's bundle
    wrong_results: int = 0
    hangs: int = 0
    lost_objects: int = 0
    lost_as_designed: int = 0  # large puts lost before their durable copy
    other_errors: int = 0
    failing_examples: list[str] = field(default_factory=list)

    def report(self) -> str:
        faults = ", ".join(f"{k}: {n}" for k, n in sorted(self.faults.items())) or "none"
        missed = ", ".join(f"{k}: {n}" for k, n in sorted(self.faults_missed.items())) or "none"
        return (f"examples {self.examples}; faults injected {sum(self.faults.values())} ({faults}); "
                f"faults that found no target {missed}; operations checked {self.operations_checked} "
                f"({self.concurrent_calls} calls to concurrent actors, {self.streams} generator tasks, "
                f"{self.partial_streams} generators that raised partway, "
                f"{self.exits} exit_actor() ends, {self.drops} actors dropped, {self.grouped} tasks in a placement "
                f"group, {self.env_tasks} in a runtime_env); "
                f"wrong results {self.wrong_results}; hangs {self.hangs}; lost objects {self.lost_objects} "
                f"(+{self.lost_as_designed} as designed); other errors {self.other_errors}; "
                f"failing examples {len(self.failing_examples)}")


TALLY = Tally()


def _label(fault: Fault) -> str:
    return f"{fault.kind} {fault.target}"


# -- what the machine keeps ------------------------------------------------------------------


@dataclass(eq=False)
class Tracked:
    """A ref and the value the model says it has."""

    name: str
    ref: ember.ObjectRef
    expected: Any
    how: str
    # Store kills counted when each large put or by-value argument in its lineage was made.
    copies_made_at: frozenset[int] = frozenset()

    def __repr__(self) -> str:
        return self.name


@dataclass(eq=False)
class TrackedActor:
    name: str
    handle: Any
    model: LedgerState

    def __repr__(self) -> str:
        return self.name


@st.composite
def fault_plans(draw: st.DrawFn) -> list[tuple[int, Fault]]:
    """Every fault kind once (plus repeats in the soak), each after a gap of 0..GAP_MAX operations."""
    kinds = draw(st.permutations(FAULT_KINDS)) + draw(st.lists(st.sampled_from(FAULT_KINDS), max_size=EXTRA_FAULTS))
    plan = []
    for kind, target in kinds:
        gap = draw(st.integers(0, GAP_MAX))
        pick = draw(st.integers(0, 3))
        if kind is FaultKind.KILL:
            plan.append((gap, Fault.kill(target, pick)))
        elif kind is FaultKind.PAUSE:
            plan.append((gap, Fault.pause(target, draw(st.sampled_from(PAUSES_S)), pick)))
        else:
            plan.append((gap, Fault.restart_postgres()))
    return plan


class PropertyFailure(AssertionError):
    pass


class Skipped:
    """What an operation adds to its bundle once the example has failed: distinct, so draws stay the same."""

    def __repr__(self) -> str:
        return "skipped"


def operation(method: Any) -> Any:
    """A rule body: the nemesis fires first; after a failure it is skipped, so the example still draws the same.

    Hypothesis replays a failing example to report it and insists that the
    replay draws what the first run drew; a failure that comes one operation
    earlier on replay (timing) must not change the draws.
    """
    @functools.wraps(method)
    def run(self: ApiUnderFaults, *args: Any, **kwargs: Any) -> Any:
        if self.failure is not None:
            return Skipped()
        try:
            self._unexpected_errors_fail(ApiUnderFaults._nemesis)
            return self._unexpected_errors_fail(method, *args, **kwargs)
        except PropertyFailure as failure:
            self.failure = failure
            note(f"failed at operation {self.operations}: {failure}")
            return Skipped()
    return run


class ApiUnderFaults(RuleBasedStateMachine):
    refs = Bundle("refs")
    actors = Bundle("actors")

    def __init__(self) -> None:
        super().__init__()
        self.plan: deque[tuple[int, Fault]] = deque()
        self.operations_since_fault = 0
        self.store_kills = 0
        self.tracked: list[Tracked] = []
        self.actor_list: list[TrackedActor] = []
        self.actors_created = 0
        self.concurrent: dict[str, Any] = {}  # "async" / "threaded" -> the example's actor of that kind
        self.lifetime_ops = 0  # actors ended by exit_actor() or freed by dropping, this example
        self.timeline: list[Injected] = []
        self.failure: PropertyFailure | None = None
        self.operations = 0
        self.names = itertools.count()
        self.group: Any = None  # the example's placement group
        TALLY.examples += 1

    # -- the nemesis -----------------------------------------------------------------------

    @initialize(plan=fault_plans())
    def draw_plan(self, plan: list[tuple[int, Fault]]) -> None:
        self.plan = deque(plan)

    # A ref and an actor from the start: every rule can run at the first step, so
    # hypothesis rarely draws a rule it must reject (a rejected example is wasted).
    @initialize(target=refs, seed=SEEDS, large=st.booleans())
    def first_put(self, seed: int, large: bool) -> Tracked | Skipped:
        return self.put(seed, large)

    @initialize(target=actors, start=SEEDS)
    def first_actor(self, start: int) -> TrackedActor | Skipped:
        return self.create_actor(start)

    # One of each kind issue 22 added, in every example (few examples run in ci: a draw could miss
    # one); the rules draw more of them later. Each is an operation: faults fire between them too.
    @initialize(target=refs, seed=SEEDS, count=st.integers(1, 3), large=st.booleans())
    def first_stream(self, seed: int, count: int, large: bool) -> Tracked | Skipped:
        return self.stream(seed, count, large)

    @initialize(target=refs, seed=SEEDS)
    def first_dropped_actor(self, seed: int) -> Tracked | Skipped:
        return self.drop_an_actor(seed)

    @initialize()
    def first_exit(self) -> None:
        self.exit_an_actor()

    @initialize(target=refs, seed=SEEDS)
    def first_concurrent_calls(self, seed: int) -> Tracked | Skipped:
        made = self.put(seed, False)
        if isinstance(made, Skipped):
            return made
        self.call_async_actor(made, [made])
        return self.call_threaded_actor(made, made)

    @initialize(target=refs, seed=SEEDS, large=st.booleans())
    def first_group(self, seed: int, large: bool) -> Tracked | Skipped:
        return self.make_group(seed, large)

    @operation
    def make_group(self, seed: int, large: bool) -> Tracked:
        self.group = placement_group([GROUP_BUNDLE], strategy="STRICT_PACK")
        note(f"placement group {self.group.id.hex()} = placement_group([{GROUP_BUNDLE}])")
        return self.submit_in_group(seed, large)

    @precondition(lambda self: self.group is not None)
    @rule(target=refs, seed=SEEDS, large=st.booleans())
    def grouped(self, seed: int, large: bool) -> Tracked | Skipped:
        return self._grouped(seed, large)

    @operation
    def _grouped(self, seed: int, large: bool) -> Tracked:
        return self.submit_in_group(seed, large)

    def submit_in_group(self, seed: int, large: bool) -> Tracked:
        TALLY.grouped += 1
        in_bundle = PlacementGroupSchedulingStrategy(self.group, 0)
        return self._track(grouped_task.options(scheduling_strategy=in_bundle).remote(seed, large),
                           _value(seed, large), f"value.options(<in its group>).remote({seed}, {large})")

    @initialize(target=refs, seed=SEEDS, large=st.booleans())
    def first_env_task(self, seed: int, large: bool) -> Tracked | Skipped:
        made = self.put(seed, large)
        return made if isinstance(made, Skipped) else self.submit_in_env(made)

    def _nemesis(self) -> None:
        """Fire the faults due before this operation."""
        while self.plan and self.plan[0][0] <= self.operations_since_fault:
            self._inject(self.plan.popleft()[1])
            self.operations_since_fault = 0
        self.operations_since_fault += 1
        self.operations += 1

    def _inject(self, fault: Fault) -> None:
        # A kind of process may be between a kill and its restart: wait for it, bounded.
        deadline = time.monotonic() + HIT_BOUND_S
        record = inject(fault)
        while record.outcome is not Outcome.HIT and time.monotonic() < deadline:
            time.sleep(0.05)
            record = inject(fault)
        self.timeline.append(record)
        note(f"injected {record.fault!r} at {record.at_s:.3f}: {record.outcome} pid {record.pid} {record.detail}")
        if record.outcome is not Outcome.HIT:
            TALLY.faults_missed[_label(fault)] += 1
            self._fail(f"{fault!r} found no live {fault.target} within {HIT_BOUND_S:g}s: {record.detail}")
        TALLY.faults[_label(fault)] += 1
        if fault.kind is FaultKind.KILL and fault.target is Target.STORE:
            self.store_kills += 1

    # -- operations ------------------------------------------------------------------------

    def _track(self, ref: ember.ObjectRef, expected: Any, how: str, copies: frozenset[int] = frozenset()) -> Tracked:
        tracked = Tracked(f"r{next(self.names)}", ref, expected, how, copies)
        self.tracked.append(tracked)
        note(f"{tracked.name} = {how}")
        return tracked

    @rule(target=refs, seed=SEEDS, large=st.booleans())
    @operation
    def put(self, seed: int, large: bool) -> Tracked:
        value = _value(seed, large)
        copies = frozenset({self.store_kills}) if large else frozenset()
        return self._track(ember.put(value), value, f"put(value({seed}, {large}))", copies)

    @rule(target=refs, seed=SEEDS, large=st.booleans())
    @operation
    def submit_value(self, seed: int, large: bool) -> Tracked:
        return self._track(value_task.remote(seed, large), _value(seed, large), f"value.remote({seed}, {large})")

    @rule(target=refs, a=refs, b=refs)
    @operation
    def submit_combine(self, a: Tracked, b: Tracked) -> Tracked:
        return self._track(combine_task.remote(a.ref, b.ref), _combine(a.expected, b.expected),
                           f"combine.remote({a}, {b})", a.copies_made_at | b.copies_made_at)

    @rule(target=refs, a=refs, seed=SEEDS)
    @operation
    def submit_combine_by_value(self, a: Tracked, seed: int) -> Tracked:
        large = _value(seed, True)
        return self._track(combine_task.remote(a.ref, large), _combine(a.expected, large),
                           f"combine.remote({a}, value({seed}, True))", a.copies_made_at | {self.store_kills})

    @rule(target=refs, a=refs)
    @operation
    def submit_in_env(self, a: Tracked) -> Tracked:
        TALLY.env_tasks += 1
        return self._track(env_task.remote(a.ref), _combine(a.expected, ENV_ADDEND), f"in_env.remote({a})",
                           a.copies_made_at)

    @rule(target=refs, box=st.lists(refs, min_size=1, max_size=3))
    @operation
    def submit_nested(self, box: list[Tracked]) -> Tracked:
        expected = functools.reduce(_combine, [t.expected for t in box])
        copies = frozenset().union(*(t.copies_made_at for t in box))
        return self._track(fold_task.remote([t.ref for t in box]), expected, f"fold.remote({box})", copies)

    @rule(target=refs, seeds=st.lists(SEEDS, min_size=1, max_size=3), large=st.booleans())
    @operation
    def submit_spawning(self, seeds: list[int], large: bool) -> Tracked:
        expected = functools.reduce(_combine, [_value(s, large) for s in seeds])
        return self._track(spawn_task.remote(seeds, large), expected, f"spawn_and_fold.remote({seeds}, {large})")

    @precondition(lambda self: self.actors_created < ACTORS_MAX)
    @rule(target=actors, start=SEEDS)
    def create_actor(self, start: int) -> TrackedActor | Skipped:
        self.actors_created += 1  # counted even when skipped: the precondition must not depend on a failure
        return self._create_actor(start)

    @operation
    def _create_actor(self, start: int) -> TrackedActor:
        actor = TrackedActor(f"a{next(self.names)}", Ledger.remote(start), LedgerState(start))
        self.actor_list.append(actor)
        note(f"{actor.name} = Ledger.remote({start})")
        return actor

    @rule(target=refs, actor=actors, arg=st.one_of(SEEDS, refs))
    @operation
    def call_actor(self, actor: TrackedActor, arg: int | Tracked) -> Tracked:
        if isinstance(arg, Tracked) and arg.copies_made_at:
            # Not a ref whose lineage holds a put the design lets a store kill lose:
            # the model could not tell whether the call ran. (A filter would discard examples.)
            arg = _digest(arg.expected)
        if isinstance(arg, Tracked):
            ref, how, expected = actor.handle.add.remote(arg.ref), f"{actor}.add.remote({arg})", arg.expected
        else:
            ref, how, expected = actor.handle.add.remote(arg), f"{actor}.add.remote({arg})", arg
        return self._track(ref, actor.model.add(expected), how)

    def _concurrent_actor(self, kind: str) -> Any:
        TALLY.concurrent_calls += 1
        if kind not in self.concurrent:
            self.concurrent[kind] = (AsyncActor if kind == "async" else ThreadedActor).remote()
            note(f"{kind} actor created")
        return self.concurrent[kind]

    @rule(target=refs, a=refs, box=st.lists(refs, min_size=1, max_size=2))
    @operation
    def call_async_actor(self, a: Tracked, box: list[Tracked]) -> Tracked:
        ref = self._concurrent_actor("async").combine.remote(a.ref, [t.ref for t in box])
        expected = functools.reduce(_combine, [a.expected, *(t.expected for t in box)])
        copies = a.copies_made_at.union(*(t.copies_made_at for t in box))
        return self._track(ref, expected, f"async.combine.remote({a}, {box})", copies)

    @rule(target=refs, a=refs, b=refs)
    @operation
    def call_threaded_actor(self, a: Tracked, b: Tracked) -> Tracked:
        ref = self._concurrent_actor("threaded").combine.remote(a.ref, b.ref)
        return self._track(ref, _combine(a.expected, b.expected), f"threaded.combine.remote({a}, {b})",
                           a.copies_made_at | b.copies_made_at)

    @rule(target=refs, seed=SEEDS, count=st.integers(1, 3), large=st.booleans())
    @operation
    def stream(self, seed: int, count: int, large: bool) -> Tracked:
        """A generator task, each value read as it comes; its values stay tracked for later reads."""
        gen = stream_task.remote(seed, count, large)
        tracked = []
        for i in range(count + 1):
            try:
                ref = gen._next(GET_BOUND_S)
            except StopIteration:
                if i < count:
                    self._wrong(f"stream({seed}, {count}, {large}) stopped after {i} values")
                break
            except EmberError as exc:
                self._classify(f"next(stream({seed}, {count}, {large})) at value {i}", [], exc)
                break
            if i == count:
                self._wrong(f"stream({seed}, {count}, {large}) yielded more than {count} values")
            tracked.append(self._track(ref, _value(seed + i, large), f"stream({seed}, {count}, {large})[{i}]"))
            self._check_values(tracked[-1:])
        TALLY.streams += 1
        return tracked[-1]

    @rule(target=refs, seed=SEEDS, made=st.integers(1, 2), extra=st.integers(1, 2), large=st.booleans())
    @operation
    def partial_stream(self, seed: int, made: int, extra: int, large: bool) -> Tracked:
        """A num_returns=k generator that raises after ``made`` values: those stay, the rest are its error."""
        how = f"values_then_raise.options(num_returns={made + extra}).remote({seed}, {made}, {large})"
        refs = partial_stream_task.options(num_returns=made + extra).remote(seed, made, large)
        tracked = [self._track(ref, _value(seed + i, large), f"{how}[{i}]") for i, ref in enumerate(refs[:made])]
        self._check_values(tracked)
        for i, ref in enumerate(refs[made:], start=made):
            try:
                value = ember.get(ref, timeout=GET_BOUND_S)
            except Broke:
                TALLY.operations_checked += 1
                continue
            except EmberError as exc:
                self._classify(f"get({how}[{i}])", [], exc)
                continue
            self._wrong(f"{how}[{i}] read {_short(value)}, the model says it raises Broke")
        TALLY.partial_streams += 1
        return tracked[-1]

    @rule(target=refs, seed=SEEDS, count=st.integers(1, 3), large=st.booleans())
    @operation
    def dynamic_stream(self, seed: int, count: int, large: bool) -> Tracked:
        """A num_returns="dynamic" generator task: one ref, whose value holds the refs of all its values."""
        how = f"stream.options(num_returns='dynamic').remote({seed}, {count}, {large})"
        try:
            refs = list(ember.get(stream_task.options(num_returns="dynamic").remote(seed, count, large),
                                  timeout=GET_BOUND_S))
        except EmberError as exc:
            self._classify(f"get({how})", [], exc)
            raise  # _classify has failed the example already
        if len(refs) != count:
            self._wrong(f"{how} gave {len(refs)} refs")
        tracked = [self._track(ref, _value(seed + i, large), f"{how}[{i}]") for i, ref in enumerate(refs)]
        self._check_values(tracked)
        TALLY.streams += 1
        return tracked[-1]

    @precondition(lambda self: self.lifetime_ops < LIFETIME_OPS_MAX)
    @rule(target=refs, seed=SEEDS)
    @operation
    def drop_an_actor(self, seed: int) -> Tracked:
        """An actor whose only handle is dropped right after a call: the call still runs, then it is freed."""
        actor = LeavingActor.remote()
        ref = actor.echo.remote(seed)
        del actor  # its last handle: it ends after that call (__ray_terminate__ behind it)
        TALLY.drops += 1
        self.lifetime_ops += 1
        return self._track(ref, seed, f"dropped_actor.echo({seed})")

    @precondition(lambda self: self.lifetime_ops < LIFETIME_OPS_MAX)
    @rule(target=refs, seed=SEEDS)
    @operation
    def lend_an_actor(self, seed: int) -> Tracked:
        """An actor whose only handle goes to a task: it lives while the task uses it, then it is freed."""
        ref = echo_through_task.remote(LeavingActor.remote(), seed)  # the creator keeps no handle
        TALLY.drops += 1
        self.lifetime_ops += 1
        return self._track(ref, seed, f"echo_through.remote(lent_actor, {seed})")

    @precondition(lambda self: self.lifetime_ops < LIFETIME_OPS_MAX)
    @rule()
    @operation
    def exit_an_actor(self) -> None:
        """An actor that calls exit_actor(): the calls before it ran, it and those after fail naming the exit."""
        actor = LeavingActor.remote()
        before, leave, after = actor.ping.remote(), actor.leave.remote(), actor.ping.remote()
        pong = None
        try:
            pong = ember.get(before, timeout=GET_BOUND_S)
        except EmberError as exc:
            self._classify("Leaver.ping before exit_actor()", [], exc)
        if pong != "pong":
            self._wrong(f"Leaver.ping read {pong!r}")
        for what, ref in (("the exit_actor() call", leave), ("a call after exit_actor()", after)):
            try:
                got = ember.get(ref, timeout=GET_BOUND_S)
            except ember.exceptions.ActorDiedError as exc:
                if "exit_actor() was called in Leaver.leave" not in exc.reason:
                    self._wrong(f"{what} raised ActorDiedError({exc.reason!r}), not naming the exit")
            except EmberError as exc:
                self._classify(what, [], exc)
            else:
                self._wrong(f"{what} returned {got!r} on an actor that ended itself")
            TALLY.operations_checked += 1
        TALLY.exits += 1
        self.lifetime_ops += 1

    @rule(chosen=st.lists(refs, min_size=1, max_size=4, unique_by=id))
    @operation
    def get(self, chosen: list[Tracked]) -> None:
        self._check_values(chosen)

    @rule(chosen=st.lists(refs, min_size=1, max_size=4, unique_by=id), num_returns=st.integers(1, 4))
    @operation
    def wait(self, chosen: list[Tracked], num_returns: int) -> None:
        num_returns = min(num_returns, len(chosen))
        try:
            ready, not_ready = ember.wait([t.ref for t in chosen], num_returns=num_returns, timeout=GET_BOUND_S)
        except EmberError as exc:
            self._classify(f"wait({chosen}, num_returns={num_returns})", chosen, exc)
            return
        given = {t.ref.hex() for t in chosen}
        got = [r.hex() for r in ready + not_ready]
        if sorted(got) != sorted(given):
            self._wrong(f"wait({chosen}) split {got} but was given {sorted(given)}")
        if len(ready) < num_returns:
            TALLY.hangs += 1
            self._fail(f"hang: wait({chosen}, num_returns={num_returns}) had {len(ready)} ready after {GET_BOUND_S:g}s")
        if len(ready) > num_returns:
            self._wrong(f"wait({chosen}, num_returns={num_returns}) returned {len(ready)} ready")
        TALLY.operations_checked += 1
        ready_ids = {r.hex() for r in ready}
        self._check_values([t for t in chosen if t.ref.hex() in ready_ids])

    @rule(actor=actors)
    @operation
    def check_actor(self, actor: TrackedActor) -> None:
        self._check_actor(actor)

    # -- checks ----------------------------------------------------------------------------

    def _check_values(self, chosen: list[Tracked]) -> None:
        what = f"get({chosen}, timeout={GET_BOUND_S:g})"
        try:
            values = ember.get([t.ref for t in chosen], timeout=GET_BOUND_S)
        except EmberError as exc:
            self._classify(what, chosen, exc)
            return
        # Read right after get returned: nothing but get's own wait can have committed them yet.
        # The driver's own puts are not waited for (it had those values before it put them).
        missing = _not_in_log([t.ref for t in chosen if not t.ref.hex().endswith("00000000")])
        for tracked, value in zip(chosen, values, strict=True):
            if not _equal(value, tracked.expected):
                self._wrong(f"{tracked} = {tracked.how} read {_short(value)}, the model says {_short(tracked.expected)}")
            if tracked.ref.hex() in missing:
                self._wrong(f"{tracked} = {tracked.how} was read before its creation row was committed")
            TALLY.operations_checked += 1

    def _check_actor(self, actor: TrackedActor) -> None:
        what = f"{actor}.state.remote()"
        try:
            state = ember.get(actor.handle.state.remote(), timeout=GET_BOUND_S)
        except EmberError as exc:
            self._classify(what, [], exc)
            return
        if tuple(state) != actor.model.state():
            self._wrong(f"{what} read (calls, total) = {tuple(state)}, the model says {actor.model.state()}")
        TALLY.operations_checked += 1

    def _classify(self, what: str, chosen: list[Tracked], exc: EmberError) -> None:
        """Count a typed error and fail, unless it is the one loss the design allows."""
        if isinstance(exc, GetTimeoutError):
            TALLY.hangs += 1
            self._fail(f"hang: {what} raised {type(exc).__name__}", exc)
        if isinstance(exc, ObjectLostError):
            if "no durable copy" in str(exc) and any(self._copy_may_be_lost(t) for t in chosen):
                TALLY.lost_as_designed += 1
                note(f"{what}: lost as designed: {exc}")
                return
            TALLY.lost_objects += 1
            self._fail(f"lost: {what} raised {type(exc).__name__}: {exc}", exc)
        TALLY.other_errors += 1
        self._fail(f"{what} raised {type(exc).__name__}: {exc}", exc)

    def _unexpected_errors_fail(self, method: Any, *args: Any, **kwargs: Any) -> Any:
        """Run an operation; a typed error from a submission, a put or a fault is a failure of the property."""
        try:
            return method(self, *args, **kwargs)
        except EmberError as exc:
            TALLY.other_errors += 1
            self._fail(f"{method.__name__.lstrip('_')} raised {type(exc).__name__}: {exc}", exc)

    def _copy_may_be_lost(self, tracked: Tracked) -> bool:
        return any(made_at < self.store_kills for made_at in tracked.copies_made_at)

    def _wrong(self, message: str) -> None:
        TALLY.wrong_results += 1
        self._fail(f"wrong result: {message}")

    def _fail(self, message: str, cause: BaseException | None = None) -> None:
        timeline = "; ".join(f"{r.fault!r} -> {r.outcome} pid {r.pid}" for r in self.timeline) or "no fault yet"
        raise PropertyFailure(f"{message}\n  faults so far: {timeline}") from cause

    # -- the end of an example ---------------------------------------------------------------

    def teardown(self) -> None:
        try:
            if self.failure is None:
                self._unexpected_errors_fail(ApiUnderFaults._final_check)
        except PropertyFailure as failure:
            self.failure = failure
        finally:
            resume_all()
            for actor in self.actor_list:
                _kill_actor(actor.handle)
            for handle in self.concurrent.values():
                _kill_actor(handle)
            whole = _wait_whole()
            if self.group is not None:
                remove_placement_group(self.group)
        if self.failure is not None:
            raise self.failure
        if whole is not None:
            raise PropertyFailure(whole)

    def _final_check(self) -> None:
        """Every ref and actor is read again, after all the example's faults."""
        for tracked in self.tracked:  # one by one, so a failure names its ref
            self._check_values([tracked])
        for actor in self.actor_list:
            self._check_actor(actor)
        if self.group is not None:
            created = poll_until(lambda: placement_group_table(self.group).get("state") == "CREATED", GET_BOUND_S)
            if not created:
                self._fail(f"the example's placement group is not CREATED after its faults: "
                           f"{placement_group_table(self.group)}")


def _not_in_log(refs: list[ember.ObjectRef]) -> set[str]:
    """The ids among ``refs`` with no creation row in the lineage log (read now, PostgreSQL restarts waited out)."""
    import psycopg

    if not refs:
        return set()
    conninfo = ember._runtime._session.read_info()["gcs_conninfo"]

    def read() -> tuple[set[str]] | None:
        try:
            with psycopg.connect(conninfo, connect_timeout=5) as conn:
                rows = conn.execute("SELECT object_id FROM objects WHERE object_id = ANY(%s)",
                                    ([r.binary() for r in refs],)).fetchall()
        except psycopg.OperationalError:
            return None  # the server is restarting (a fault): ask again
        return ({r.hex() for r in refs} - {row[0].hex() for row in rows},)  # truthy even when empty

    found = poll_until(read, WHOLE_BOUND_S, poll_s=0.2)
    if found is None:
        raise AssertionError(f"the lineage log was unreachable for {WHOLE_BOUND_S:g}s")
    return found[0]


def _equal(value: Any, expected: Any) -> bool:
    if isinstance(expected, np.ndarray):
        return isinstance(value, np.ndarray) and np.array_equal(value, expected)
    return type(value) is type(expected) and value == expected


def _short(value: Any) -> str:
    if isinstance(value, np.ndarray):
        return f"array(shape={value.shape}, head={value[:3].tolist()}, sum={int(np.sum(value))})"
    return repr(value)


KILL_ACTOR_TRIES = 20


def _kill_actor(handle: Any) -> None:
    """Free an example's actor process; the scheduler may be restarting, so try a few times."""
    for _ in range(KILL_ACTOR_TRIES):
        try:
            ember.kill(handle)
            return
        except ember.exceptions.ClusterUnavailableError:
            time.sleep(0.1)


def _wait_whole() -> str | None:
    """Each example starts on a whole cluster: every kind of service process listed again; else why not."""
    deadline = time.monotonic() + WHOLE_BOUND_S
    missing: list[str] = []
    while time.monotonic() < deadline:
        missing = [str(t) for t in (Target.SCHEDULER, Target.STORE, Target.GCS) if not live_pids(t)]
        if not missing:
            return None
        time.sleep(0.05)
    try:
        listed = f"processes() lists {ember.chaos.processes()}"
    except Exception as exc:  # why the list could not be read is the useful part
        listed = f"processes() raised {type(exc).__name__}: {exc}"
    return f"the cluster's {', '.join(missing)} did not come back within {WHOLE_BOUND_S:g}s; {listed}"


# -- running -----------------------------------------------------------------------------------


@pytest.fixture
def tally(fault_cluster: Any) -> Any:
    """The module's tally, printed at the end; no process is left paused for the cluster's shutdown."""
    try:
        yield TALLY
    finally:
        resume_all()
        print(f"\napi under faults: {TALLY.report()}")
        for report in TALLY.failing_examples:
            print(f"\n--- failing example ---\n{report}")


def _soak(deadline: float) -> None:
    """Batches of random examples until the deadline; a failing batch is recorded and the soak goes on."""
    while time.monotonic() < deadline:
        try:
            run_state_machine_as_test(ApiUnderFaults, settings=SETTINGS)
        except Exception as exc:  # hypothesis's report of one failing example
            notes = "\n".join(getattr(exc, "__notes__", []))
            # A flaky example's report is a group: what failed the first time is inside it.
            causes = "".join(f"\n  first run: {type(e).__name__}: {e}" for e in getattr(exc, "exceptions", ()))
            TALLY.failing_examples.append(f"{type(exc).__name__}: {exc}{causes}\n{notes}")


@pytest.mark.timeout(SOAK_S + 900 if SOAK else CI_TIMEOUT_S)
def test_api_under_faults(tally: Tally) -> None:
    if not SOAK:
        run_state_machine_as_test(ApiUnderFaults, settings=SETTINGS)
        # A coverage mark: every fault kind really hit a process in the ci examples.
        assert set(tally.faults) == {f"{k} {t}" for k, t in FAULT_KINDS}, tally.report()
        assert tally.concurrent_calls > 0, tally.report()  # and calls to concurrent actors were among them
        assert tally.streams > 0, tally.report()  # and generator tasks read while they ran
        assert tally.partial_streams > 0, tally.report()  # and generators that raised after some values
        assert tally.exits > 0, tally.report()  # and actors that ended themselves
        assert tally.drops > 0, tally.report()  # and actors freed when their handle went
        assert tally.grouped > 0, tally.report()  # and tasks in a placement group's bundle
        assert tally.env_tasks > 0, tally.report()  # and tasks in a runtime_env
        return
    _soak(time.monotonic() + SOAK_S)
    assert not tally.failing_examples, tally.report()


# -- the primitives' own promises, which the property relies on ----------------------------

RESUME_BOUND_S = 10.0


def _stopped(pid: int) -> bool:
    return psutil.Process(pid).status() == psutil.STATUS_STOPPED


def _wait_running(pid: int) -> None:
    running = poll_until(lambda: not _stopped(pid), RESUME_BOUND_S)
    assert running, f"pid {pid} still stopped {RESUME_BOUND_S:g}s after its pause"


def _wait_stopped(pid: int, within_s: float) -> None:
    # SIGSTOP takes effect when the target next runs: on a loaded machine, a
    # moment after the signal was sent.
    assert poll_until(lambda: _stopped(pid), within_s, 0.005), f"pid {pid} not stopped {within_s:g}s after SIGSTOP"


def test_a_pause_ends_by_its_timer_or_by_resume_all(fault_cluster):
    short = inject(Fault.pause("store", 2.0))
    assert short.outcome is Outcome.HIT
    _wait_stopped(short.pid, 1.5)
    _wait_running(short.pid)

    long = inject(Fault.pause("gcs", 60.0))
    assert long.outcome is Outcome.HIT
    _wait_stopped(long.pid, RESUME_BOUND_S)
    assert paused_pids() == [long.pid]
    assert resume_all() == [long.pid]
    _wait_running(long.pid)
    assert paused_pids() == []


def test_chaos_restarts_no_postgres_it_was_given_by_url(fault_cluster):
    # The suite's own embedded server, named by URL: to the cluster, a server someone else runs.
    result = run_script("""
        import os
        from ember.lineage._postgres import EmbeddedPostgres
        os.environ["EMBER_GCS_URL"] = EmbeddedPostgres().url
        import ember
        from ember.chaos import Fault, PostgresNotRestartableError, inject
        ember.init(num_cpus=1)
        try:
            inject(Fault.restart_postgres())
        except PostgresNotRestartableError as exc:
            print("refused:", exc)
        finally:
            ember.shutdown()
    """)
    assert result.returncode == 0, result.stderr
    assert "refused: the cluster's lineage log is at 'postgresql://" in result.stdout
