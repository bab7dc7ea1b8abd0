"""Deciding what to rebuild from lineage: one planner for the owner's rebuilds and for ``ember replay``.

Both are the same walk. An object that is needed comes from the first place
that still has it, or from running its creating task again, whose own inputs
are found the same way, as deep as the lineage goes. The walk goes one
generation at a time (the objects needed, the tasks that made them, their
inputs, ...) and asks for the facts of a whole generation at once, so a plan
reads the log once per generation and kind of fact, not once per task. The
plan lists every input before the tasks that read it.

- ``plan_rebuild``, online (the owner, ``scheduler/_owner/_reconstruct.py``): for
  objects a live cluster lost, which tasks run again (same task id, next
  attempt), which of their inputs this process adopts because their owner
  died, which puts and actor results come back from their durable copies, and
  which objects are lost for good, with the reason.
- ``plan_replay``, offline (``lineage/_replay.py``): the steps that run one
  logged task again in this process: fetch an input, run a task, start an
  actor (its constructor, then its newest checkpoint) and run its calls in order.

Facts come through two small Protocols (``RebuildFacts``, ``ReplayFacts``)
that answer for a batch of ids at a time; this module does no I/O of its own,
so it is tested with plain dictionaries (tests/unit/test_replay_plan.py).

It must never plan a task before the steps that make its inputs, never visit
more than ``LINEAGE_NODES_MAX`` objects and tasks in one plan (it raises
``LineageTooLongError`` instead), and never import ``ember.scheduler``: the
runtime drives it, not the other way round.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

from ember.exceptions import EmberOperationError, EmberUserError

# A bound on one plan: the objects and tasks its walk may visit. A longer lineage is not rebuilt in one go.
LINEAGE_NODES_MAX = 200_000


class ReplayInputError(EmberOperationError):
    """An argument of the replayed task can be neither fetched nor rebuilt from the log."""


class LineageTooLongError(ReplayInputError):
    """Rebuilding takes more objects and tasks than one plan may visit (``LINEAGE_NODES_MAX``)."""


class FunctionUnavailableError(EmberUserError):
    """The logged code of a task cannot be loaded in this process (a module is missing)."""


class NeedsClusterError(EmberUserError):
    """A task being rebuilt calls ember (``.remote``, ``get``, ``put``) and no cluster is running here."""


class NotReplayableError(EmberUserError):
    """The id names something that has no result to replay on its own (an actor's creation)."""


# -- the walk both planners share ----------------------------------------------------------------------------

# A node of the lineage graph: a tuple whose first item names its kind ("object", "task", ...).
Node = tuple


def walk(roots: Iterable[Node], expand: Callable[[list[Node]], dict[Node, list[Node]]],
         nodes_max: int) -> dict[Node, list[Node]]:
    """Every node reachable from ``roots``, and what each needs first, one generation per ``expand`` call.

    ``expand`` gets a whole generation (the nodes first reached by the one
    before) and answers, for each, the nodes it needs first (none: a leaf).
    Each node is expanded once. Raises LineageTooLongError before expanding
    a generation that would take the walk past ``nodes_max`` nodes.
    """
    needs: dict[Node, list[Node]] = {}
    generation = list(dict.fromkeys(roots))
    seen = set(generation)
    while generation:
        if len(seen) > nodes_max:
            raise LineageTooLongError(
                f"rebuilding this takes more than {nodes_max} objects and tasks of lineage (LINEAGE_NODES_MAX): "
                "it is not rebuilt in one go; rebuild (or replay) something nearer the start of the chain first")
        expanded = expand(generation)
        following: list[Node] = []
        for node in generation:
            children = expanded.get(node, [])
            needs[node] = children
            for child in children:
                if child not in seen:
                    seen.add(child)
                    following.append(child)
        generation = following
    return needs


def dependency_order(roots: Iterable[Node], needs: dict[Node, list[Node]]) -> list[Node]:
    """The nodes reachable from ``roots``, each after every node it needs, each once (depth-first post-order).

    Iterative: a lineage thousands deep is no deeper on the Python stack.
    """
    order: list[Node] = []
    entered: set[Node] = set()
    stack: list[tuple[Node, bool]] = [(root, False) for root in reversed(list(dict.fromkeys(roots)))]
    while stack:
        node, children_done = stack.pop()
        if children_done:
            order.append(node)
            continue
        if node in entered:
            continue
        entered.add(node)
        stack.append((node, True))
        stack.extend((child, False) for child in reversed(needs.get(node, [])) if child not in entered)
    return order


def _unique(items: Iterable) -> list:
    return list(dict.fromkeys(items))


# -- online: what the owner rebuilds for objects a live cluster lost -----------------------------------------

LOGGING_OFF = "no copy is left and lineage logging is off"
NOT_LOGGED = "its creating task is not in the lineage log (lineage pruned?)"
PUT_WITHOUT_COPY = ("it was made by ember.put (or passed to a task by value) and no durable copy of it was kept "
                    "(EMBER_PUT_COPIES, EMBER_PUT_COPY_MAX_BYTES)")
ACTOR_RESULT_WITHOUT_COPY = ("it was made by an actor call, and no durable copy of it was kept (EMBER_PUT_COPIES, "
                             "EMBER_PUT_COPY_MAX_BYTES), or its store died before the copy was written; an actor "
                             "call is not run again")


def no_copy_reason(by_actor: bool) -> str:
    """Why an object that only a durable copy could bring back is lost, when the copy is not there."""
    return ACTOR_RESULT_WITHOUT_COPY if by_actor else PUT_WITHOUT_COPY


@dataclass(frozen=True)
class TaskFacts:
    """A task as the lineage log has it, as far as a rebuild needs to know."""

    task_id: bytes
    runs_again: bool  # a plain task; an actor's call or creation is not run again to rebuild its result
    last_attempt: int  # the highest attempt the log knows of
    inputs: tuple[tuple[bytes, str], ...] = ()  # (object id, owner's address) of each argument by reference


@dataclass(frozen=True)
class KeptCopy:
    """What the log says of an object no task can recompute."""

    object_id: bytes
    kept: bool  # a put or a large by-value argument (its log row's origin)
    inline: bytes | None = None  # its bytes, kept in the log (small puts)
    path: str | None = None  # its durable copy's file (this process may still be writing it)


class RebuildFacts(Protocol):
    """What the owner knows, asked for a batch of ids at a time (one log query per batch)."""

    @property
    def lineage_logged(self) -> bool:
        """Whether this cluster logs lineage at all."""
        ...

    def running(self, task_ids: list[bytes]) -> set[bytes]:
        """Those of the tasks this process is running (again) already: their results are on the way."""
        ...

    def logged_tasks(self, task_ids: list[bytes]) -> dict[bytes, TaskFacts]:
        """The tasks the log has a spec for (absent: not logged, as a put's own id is not)."""
        ...

    def kept_copies(self, object_ids: list[bytes]) -> dict[bytes, KeptCopy]:
        """The log's word on the objects' durable copies (absent: the log has no row for it)."""
        ...

    def lost(self, object_ids: list[bytes]) -> set[bytes]:
        """Those of the objects (this process's own) of which no copy is left and none is on its way."""
        ...

    def in_store(self, object_ids: list[bytes]) -> set[bytes]:
        """Those of the objects (other processes') that this node's store holds."""
        ...

    def dead_owners(self, addresses: list[str]) -> set[str]:
        """Those of the processes that are dead (an address never comes back)."""
        ...


@dataclass(frozen=True)
class Rerun:
    """A task to run again as ``attempt``, owned by this process."""

    task_id: bytes
    attempt: int
    adopted: frozenset[bytes]  # inputs whose owner died and that are gone: this process owns them now
    inputs: tuple[bytes, ...]  # inputs this process owns (adopted ones included), in argument order


@dataclass(frozen=True)
class Restore:
    """An object to put back from its durable copy: bytes the log keeps, else the copy's file."""

    object_id: bytes
    inline: bytes | None
    path: str | None
    by_actor: bool  # an actor call's result (a put or by-value argument otherwise)


class LostWhy(enum.Enum):
    """Why an object cannot come back: the kind of error its readers get."""

    LOGGING_OFF = "lineage logging is off"
    NOT_LOGGED = "its creating task is not in the log"
    NO_COPY = "only a durable copy could bring it back, and none is there"
    TOO_LONG = "its lineage is longer than one plan may walk"


@dataclass(frozen=True)
class Lost:
    """An object that cannot come back, and why (``why`` for programs, ``reason`` for people)."""

    object_id: bytes
    reason: str
    why: LostWhy


@dataclass(frozen=True)
class RebuildPlan:
    reruns: tuple[Rerun, ...]  # each after the reruns that make its inputs
    restores: tuple[Restore, ...]
    lost: tuple[Lost, ...]


class _RebuildPlanner:
    def __init__(self, facts: RebuildFacts, owner: str) -> None:
        self.facts = facts
        self.owner = owner
        self.tasks: dict[bytes, TaskFacts] = {}  # tasks found to run again
        self.reruns: dict[bytes, Rerun] = {}
        self.restores: list[Restore] = []
        self.lost: list[Lost] = []

    def expand(self, generation: list[Node]) -> dict[Node, list[Node]]:
        needs = self.expand_objects([node[1] for node in generation if node[0] == "object"])
        needs.update(self.expand_tasks([node[1] for node in generation if node[0] == "task"]))
        return needs

    def expand_objects(self, object_ids: list[bytes]) -> dict[Node, list[Node]]:
        """Each object: running already, made by a task run again, or a leaf (restored or lost)."""
        if not object_ids:
            return {}
        creators = [t for t in _unique(oid[:16] for oid in object_ids) if t not in self.tasks]
        running = self.facts.running(creators) if creators else set()
        asked = [t for t in creators if t not in running]
        logged = self.facts.logged_tasks(asked) if asked and self.facts.lineage_logged else {}
        self.tasks.update((t, found) for t, found in logged.items() if found.runs_again)
        leaves = [oid for oid in object_ids if oid[:16] not in running and oid[:16] not in self.tasks]
        copies = self.facts.kept_copies(leaves) if leaves and self.facts.lineage_logged else {}
        needs: dict[Node, list[Node]] = {}
        for oid in object_ids:
            task_id = oid[:16]
            if task_id in self.tasks:
                needs[("object", oid)] = [("task", task_id)]
            elif task_id not in running:  # running already: its results are on the way
                self.leaf(oid, logged.get(task_id), copies.get(oid))
        return needs

    def leaf(self, object_id: bytes, task: TaskFacts | None, copy: KeptCopy | None) -> None:
        """An object no rerun gives back: a put or an actor's result comes back from its copy, if any."""
        if not self.facts.lineage_logged:
            self.lost.append(Lost(object_id, LOGGING_OFF, LostWhy.LOGGING_OFF))
            return
        by_actor = task is not None
        if not by_actor and (copy is None or not copy.kept):
            self.lost.append(Lost(object_id, NOT_LOGGED, LostWhy.NOT_LOGGED))
        elif copy is None or (copy.inline is None and not copy.path):
            self.lost.append(Lost(object_id, no_copy_reason(by_actor), LostWhy.NO_COPY))
        else:
            self.restores.append(Restore(object_id, copy.inline, copy.path, by_actor))

    def expand_tasks(self, task_ids: list[bytes]) -> dict[Node, list[Node]]:
        """Each task's inputs: those of dead owners that are gone are adopted; the lost ones are needed first."""
        if not task_ids:
            return {}
        foreign = _unique((oid, owner) for t in task_ids for oid, owner in self.tasks[t].inputs if owner != self.owner)
        present = self.facts.in_store(_unique(oid for oid, _ in foreign)) if foreign else set()
        owners = _unique(owner for oid, owner in foreign if oid not in present)
        dead = self.facts.dead_owners(owners) if owners else set()
        owned_by_task: dict[bytes, list[bytes]] = {}
        for task_id in task_ids:
            task = self.tasks[task_id]
            adopted = frozenset(oid for oid, owner in task.inputs
                                if owner != self.owner and oid not in present and owner in dead)
            owned = [oid for oid, owner in task.inputs if owner == self.owner or oid in adopted]
            owned_by_task[task_id] = owned
            self.reruns[task_id] = Rerun(task_id, task.last_attempt + 1, adopted, tuple(owned))
        everything = _unique(oid for owned in owned_by_task.values() for oid in owned)
        lost = self.facts.lost(everything) if everything else set()
        return {("task", t): [("object", oid) for oid in _unique(owned) if oid in lost]
                for t, owned in owned_by_task.items()}


def plan_rebuild(lost: list[bytes], facts: RebuildFacts, owner: str,
                 nodes_max: int = LINEAGE_NODES_MAX) -> RebuildPlan:
    """What brings back ``lost`` (objects ``owner`` owns, or adopts, of which no copy is left).

    Tasks already running are left to finish; the others that made a lost
    object run again, after those that make their own lost inputs. Raises
    LineageTooLongError past ``nodes_max`` objects and tasks, and whatever
    ``facts`` raises (an unreachable log).
    """
    planner = _RebuildPlanner(facts, owner)
    roots = [("object", oid) for oid in lost]
    order = dependency_order(roots, walk(roots, planner.expand, nodes_max))
    reruns = tuple(planner.reruns[node[1]] for node in order if node[0] == "task")
    return RebuildPlan(reruns, tuple(planner.restores), tuple(planner.lost))


# -- offline: the steps ``ember replay`` runs in this process -------------------------------------------------


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
    """The log's answers for a replay, a batch of ids at a time."""

    def object_facts(self, object_ids: list[bytes]) -> dict[bytes, ObjectFacts]: ...

    def task_inputs(self, task_ids: list[bytes]) -> dict[bytes, list[bytes]]:
        """For each task, the object ids its logged arguments name by reference, in order."""
        ...

    def task_roles(self, task_ids: list[bytes]) -> dict[bytes, tuple[str, bytes | None, int]]:
        """For each: ``("task", None, 0)``, ``("call", actor id, place in its order)`` or ``("creation", actor id, 0)``."""
        ...

    def actor_base(self, actor_id: bytes, before_seq: int) -> tuple[bytes, int]:
        """(creation task id, seq of the checkpoint to restore, 0 for none) to reach call ``before_seq``."""
        ...

    def call_tasks(self, actor_id: bytes, seqs: list[int]) -> dict[int, bytes]:
        """The task ids of the actor's calls at ``seqs``."""
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


class _ReplayPlanner:
    """Nodes: ("object", id), ("task", id), ("call", actor, seq): the actor has run its calls through seq,
    ("run_call", actor, seq): run that call, ("creation", actor), ("start", actor, creation task, checkpoint)."""

    def __init__(self, facts: ReplayFacts, done_objects: set[bytes], actor_progress: dict[bytes, int]) -> None:
        self.facts = facts
        self.done_objects = done_objects  # available before this plan (a job replay's earlier steps)
        self.actor_progress = actor_progress  # actor -> last call planned (or run); absent: not started
        self.floors = dict(actor_progress)  # actor -> the call its rebuild in this plan goes on from
        self.starts: dict[bytes, Node] = {}  # actors this plan starts, with their start node
        self.sources: dict[bytes, Source] = {}  # objects fetched, and from where
        self.call_task_ids: dict[tuple[bytes, int], bytes] = {}

    def root(self, task_id: bytes, role: tuple[str, bytes | None, int]) -> Node:
        """The plan node that runs ``task_id``."""
        kind, actor_id, seq = role
        if kind == "call":
            return ("call", actor_id, seq)
        if kind == "creation":
            return ("creation", actor_id)
        return ("task", task_id)

    def start(self, actor_id: bytes, before_seq: int) -> list[Node]:
        """The start node of an actor not started yet, for reaching call ``before_seq``."""
        if actor_id in self.actor_progress:
            return []
        creation_task, checkpoint = self.facts.actor_base(actor_id, before_seq)
        self.starts[actor_id] = ("start", actor_id, creation_task, checkpoint)
        self.floors[actor_id] = checkpoint
        self.actor_progress[actor_id] = checkpoint
        return [self.starts[actor_id]]

    def expand(self, generation: list[Node]) -> dict[Node, list[Node]]:
        needs: dict[Node, list[Node]] = {}
        # In the order reached: an actor's first call reached picks the checkpoint it starts from.
        for node in generation:
            if node[0] == "call":
                needs[node] = self.expand_call(node[1], node[2])
            elif node[0] == "creation":
                needs[node] = self.start(node[1], 0)
        needs.update(self.expand_objects([node[1] for node in generation if node[0] == "object"]))
        runs = [node for node in generation if node[0] == "run_call"]
        for actor_id in _unique(node[1] for node in runs):
            seqs = [node[2] for node in runs if node[1] == actor_id]
            found = self.facts.call_tasks(actor_id, seqs)
            self.call_task_ids.update(((actor_id, seq), found[seq]) for seq in seqs)
        readers = {node: (node[1] if node[0] == "task" else node[2] if node[0] == "start"
                          else self.call_task_ids[(node[1], node[2])])
                   for node in generation if node[0] in ("task", "start", "run_call")}
        inputs = self.facts.task_inputs(_unique(readers.values())) if readers else {}
        for node, task_id in readers.items():
            before = [self.previous_call(node[1], node[2])] if node[0] == "run_call" else []
            needs[node] = [*(p for p in before if p is not None), *(("object", oid) for oid in inputs[task_id])]
        return needs

    def expand_call(self, actor_id: bytes, seq: int) -> list[Node]:
        """The actor must have run its calls through ``seq``."""
        progress = self.actor_progress.get(actor_id)
        if progress is not None and progress >= seq:
            if actor_id in self.starts and seq <= self.starts[actor_id][3]:
                raise ReplayInputError(
                    f"an argument was made by call {seq} of actor {actor_id.hex()}, which the actor's "
                    "checkpoint restored for this replay covers: its result is not rebuilt"
                )
            return []  # planned already: its results come with it
        started = self.start(actor_id, seq)
        self.actor_progress[actor_id] = seq
        return [*started, ("run_call", actor_id, seq)]

    def previous_call(self, actor_id: bytes, seq: int) -> Node | None:
        """What call ``seq`` runs after: the call before it, the actor's start, or nothing (run already)."""
        if seq - 1 > self.floors[actor_id]:
            return ("run_call", actor_id, seq - 1)
        return self.starts.get(actor_id)

    def expand_objects(self, object_ids: list[bytes]) -> dict[Node, list[Node]]:
        wanted = [oid for oid in object_ids if oid not in self.done_objects]
        facts = self.facts.object_facts(wanted) if wanted else {}
        rerun: list[bytes] = []
        for oid in wanted:
            source = choose_source(facts[oid])
            if source is Source.REPLAY:
                rerun.append(oid)
            else:
                self.sources[oid] = source
        roles = self.facts.task_roles(_unique(oid[:16] for oid in rerun)) if rerun else {}
        return {("object", oid): [self.root(oid[:16], roles[oid[:16]])] for oid in rerun}

    def step(self, node: Node) -> Step | None:
        """The step a node stands for, if any."""
        match node[0]:
            case "task":
                return Step(StepKind.RUN, task_id=node[1])
            case "run_call":
                return Step(StepKind.CALL, task_id=self.call_task_ids[(node[1], node[2])], actor_id=node[1],
                            seq=node[2])
            case "start":
                return Step(StepKind.START_ACTOR, task_id=node[2], actor_id=node[1], seq=node[3])
            case "object" if node[1] in self.sources:
                return Step(StepKind.FETCH, object_id=node[1], source=self.sources[node[1]])
        return None


def plan_replay(
    facts: ReplayFacts,
    task_id: bytes,
    done_objects: set[bytes] | None = None,
    actor_progress: dict[bytes, int] | None = None,
    nodes_max: int = LINEAGE_NODES_MAX,
) -> list[Step]:
    """The steps that run ``task_id`` again, its missing inputs first; the last step is the task itself.

    ``done_objects``: objects already at hand; ``actor_progress``: actors
    already rebuilt, with the last call each has run (updated in place).
    A task already planned or run (in ``actor_progress``, for an actor call)
    gives no steps.
    """
    planner = _ReplayPlanner(facts, set(done_objects or ()),
                             actor_progress if actor_progress is not None else {})
    root = planner.root(task_id, facts.task_roles([task_id])[task_id])
    order = dependency_order([root], walk([root], planner.expand, nodes_max))
    return [step for step in map(planner.step, order) if step is not None]
