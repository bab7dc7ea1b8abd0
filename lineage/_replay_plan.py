"""Deciding what a replay must rebuild: a plan of steps over facts from the log.

Replaying one task needs its arguments. An argument named by object id comes
from the first of: a copy still in a live cluster's store on this machine,
the bytes the log keeps (small puts), a put's durable copy on disk, or running
its creating task again, whose own arguments are found the same way. An
object made by an actor call needs the actor rebuilt: its constructor (and
its newest checkpoint before that call, for classes that keep them) and its
logged calls in order.

``plan_replay`` turns this into an ordered list of ``Step`` s over a
``ReplayFacts`` object that answers questions about the log; it does no I/O
of its own, so it is tested with plain dictionaries (tests/unit/test_replay_plan.py).
``lineage/_replay.py`` reads the facts and runs the steps.

It must never plan a step whose inputs are not planned before it, and never
plan more than ``STEPS_MAX`` steps.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Protocol

from ember.exceptions import EmberOperationError, EmberUserError

STEPS_MAX = 100_000  # a bound on one plan: a lineage deeper than this is not replayed


class ReplayInputError(EmberOperationError):
    """An argument of the replayed task can be neither fetched nor rebuilt from the log."""


class FunctionUnavailableError(EmberUserError):
    """The logged code of a task cannot be loaded in this process (a module is missing)."""


class NeedsClusterError(EmberUserError):
    """A task being rebuilt calls ember (``.remote``, ``get``, ``put``) and no cluster is running here."""


class NotReplayableError(EmberUserError):
    """The id names something that has no result to replay on its own (an actor's creation)."""


class Source(enum.Enum):
    """Where an object's value comes from in a replay."""

    LIVE = "a live cluster's store"
    LOGGED_BYTES = "the bytes the log keeps"
    COPY_FILE = "its durable copy on disk"
    REPLAY = "replaying the task that made it"


@dataclass(frozen=True)
class ObjectFacts:
    object_id: bytes
    origin: str | None  # 'return', 'put', 'argument'; None: the log has no row for it
    live: bool  # a live cluster's store on this machine holds a copy
    logged_bytes: bool  # the log keeps its bytes (a small put)
    copy_file: bool  # its durable copy's file exists
    creator_logged: bool  # its creating task's spec is in the log


class ReplayFacts(Protocol):
    def object_facts(self, object_id: bytes) -> ObjectFacts: ...

    def task_inputs(self, task_id: bytes) -> list[bytes]:
        """The object ids the task's logged arguments name by reference, in order."""
        ...

    def task_role(self, task_id: bytes) -> tuple[str, bytes | None, int]:
        """``("task", None, 0)``, ``("call", actor id, place in its order)`` or ``("creation", actor id, 0)``."""
        ...

    def actor_base(self, actor_id: bytes, before_seq: int) -> tuple[bytes, int]:
        """(creation task id, seq of the checkpoint to restore, 0 for none) to reach call ``before_seq``."""
        ...

    def call_task(self, actor_id: bytes, seq: int) -> bytes:
        """The task id of the actor's call at ``seq``."""
        ...


class StepKind(enum.Enum):
    FETCH = "fetch"  # read an object from ``source``
    RUN = "run"  # run a task (function) again
    START_ACTOR = "start actor"  # run the constructor, then restore the checkpoint if any
    CALL = "call"  # run an actor call again, on the rebuilt actor


@dataclass(frozen=True)
class Step:
    kind: StepKind
    task_id: bytes | None = None  # RUN, START_ACTOR (the creation task), CALL
    object_id: bytes | None = None  # FETCH
    source: Source | None = None  # FETCH
    actor_id: bytes | None = None  # START_ACTOR, CALL
    seq: int = 0  # CALL: its place; START_ACTOR: the checkpoint restored (0: none)


def choose_source(facts: ObjectFacts) -> Source:
    """Where to take an object from, cheapest first; raises ReplayInputError when nowhere."""
    oid = facts.object_id.hex()
    if facts.live:
        return Source.LIVE
    if facts.logged_bytes:
        return Source.LOGGED_BYTES
    if facts.copy_file:
        return Source.COPY_FILE
    if facts.origin in ("put", "argument"):
        what = "an ember.put" if facts.origin == "put" else "a large by-value argument"
        raise ReplayInputError(
            f"object {oid} was {what} and no copy of it is left: the log keeps the bytes of puts up to 64 KiB, "
            "and larger ones' durable copies are deleted when their job ends; replay it while the job runs, "
            "or pass smaller values"
        )
    if facts.creator_logged:
        return Source.REPLAY
    if facts.origin is None:
        raise ReplayInputError(
            f"object {oid} is not in the lineage log: its job was pruned (ember prune), or its owner died "
            "before logging it; it cannot be rebuilt"
        )
    raise ReplayInputError(
        f"object {oid} was made by task {facts.object_id[:16].hex()}, whose spec is not in the lineage log "
        "(pruned with its job?); it cannot be rebuilt"
    )


class _Planner:
    def __init__(self, facts: ReplayFacts, done_objects: set[bytes], actor_progress: dict[bytes, int],
                 steps_max: int) -> None:
        self.facts = facts
        self.done_objects = done_objects  # available before this plan (a job replay's earlier steps)
        self.actor_progress = actor_progress  # actor -> last call planned (or run); absent: not started
        self.steps_max = steps_max
        self.steps: list[Step] = []
        self.planned_tasks: set[bytes] = set()
        self.planned_objects: set[bytes] = set()
        self.actor_checkpoints: dict[bytes, int] = {}  # actor -> the checkpoint its rebuild starts from

    def emit(self, step: Step) -> None:
        if len(self.steps) >= self.steps_max:
            raise ReplayInputError(
                f"rebuilding the arguments takes more than {self.steps_max} steps; replay a task nearer the "
                "end of the chain, or raise steps_max"
            )
        self.steps.append(step)

    def run(self, root: tuple) -> None:
        # Iterative depth-first post-order: a long chain is no deeper on the Python stack.
        stack: list[tuple[tuple, bool]] = [(root, False)]
        while stack:
            node, expanded = stack.pop()
            if expanded:
                self.finish(node)
                continue
            children = self.expand(node)
            if children is None:
                continue
            stack.append((node, True))
            stack.extend((child, False) for child in reversed(children))

    def expand(self, node: tuple) -> list[tuple] | None:
        """The nodes that must be planned before ``node``; None if it needs no step."""
        kind = node[0]
        if kind == "object":
            oid = node[1]
            if oid in self.done_objects or oid in self.planned_objects:
                return None
            self.planned_objects.add(oid)
            facts = self.facts.object_facts(oid)
            source = choose_source(facts)
            if source is not Source.REPLAY:
                self.emit(Step(StepKind.FETCH, object_id=oid, source=source))
                return None
            return [self.root(oid[:16])]
        if kind == "task":
            if node[1] in self.planned_tasks:
                return None
            self.planned_tasks.add(node[1])
            return [("object", oid) for oid in self.facts.task_inputs(node[1])]
        if kind == "call":  # the actor must have run its calls through this one
            actor_id, seq = node[1], node[2]
            progress = self.actor_progress.get(actor_id)
            if progress is not None and progress >= seq:
                if seq <= self.actor_checkpoints.get(actor_id, 0):
                    raise ReplayInputError(
                        f"an argument was made by call {seq} of actor {actor_id.hex()}, which the actor's "
                        "checkpoint restored for this replay covers: its result is not rebuilt"
                    )
                return None  # planned already: its results come with it
            children: list[tuple] = []
            if progress is None:
                children.append(self.start_node(actor_id, seq))
                progress = children[0][3]
            self.actor_progress[actor_id] = seq
            return children + [("run_call", actor_id, later) for later in range(progress + 1, seq + 1)]
        if kind == "run_call":  # one call, after the one before it
            call_task = self.facts.call_task(node[1], node[2])
            self.planned_tasks.add(call_task)
            return [("object", oid) for oid in self.facts.task_inputs(call_task)]
        if kind == "start":
            return [("object", oid) for oid in self.facts.task_inputs(node[2])]
        if kind == "creation":  # a job replay reaches an actor's creation: start it unless started
            if node[1] in self.actor_progress:
                return None
            start = self.start_node(node[1], 0)
            self.actor_progress[node[1]] = 0
            return [start]
        raise AssertionError(f"unknown plan node {node!r}")

    def root(self, task_id: bytes) -> tuple:
        """The plan node that runs ``task_id``."""
        role, actor_id, seq = self.facts.task_role(task_id)
        if role == "call":
            return ("call", actor_id, seq)
        if role == "creation":
            return ("creation", actor_id)
        return ("task", task_id)

    def start_node(self, actor_id: bytes, before_seq: int) -> tuple:
        creation_task, checkpoint = self.facts.actor_base(actor_id, before_seq)
        self.actor_checkpoints[actor_id] = checkpoint
        return ("start", actor_id, creation_task, checkpoint)

    def finish(self, node: tuple) -> None:
        kind = node[0]
        if kind == "task":
            self.emit(Step(StepKind.RUN, task_id=node[1]))
        elif kind == "run_call":
            self.emit(Step(StepKind.CALL, task_id=self.facts.call_task(node[1], node[2]), actor_id=node[1],
                           seq=node[2]))
        elif kind == "start":
            self.emit(Step(StepKind.START_ACTOR, task_id=node[2], actor_id=node[1], seq=node[3]))


def plan_replay(
    facts: ReplayFacts,
    task_id: bytes,
    done_objects: set[bytes] | None = None,
    actor_progress: dict[bytes, int] | None = None,
    steps_max: int = STEPS_MAX,
) -> list[Step]:
    """The steps that run ``task_id`` again, its missing inputs first; the last step is the task itself.

    ``done_objects``: objects already at hand; ``actor_progress``: actors
    already rebuilt, with the last call each has run (updated in place).
    A task already planned or run (in ``actor_progress``, for an actor call)
    gives no steps.
    """
    planner = _Planner(facts, set(done_objects or ()), actor_progress if actor_progress is not None else {},
                       steps_max)
    planner.run(planner.root(task_id))
    return planner.steps
