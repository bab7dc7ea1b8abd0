"""The node scheduler's decisions: which task runs on which worker, when to start a worker, what to spill.

``NodeQueue`` keeps one FIFO queue per resource shape (the sorted
``(name, amount)`` pairs of a request), the node's resource accounting, the
actors waiting for resources, and a plain record (``WorkerSlot``) of every
worker process the node has: what it holds, what it runs, whether it is
blocked. Its methods take ``now`` from the caller and return what to do as
plain data (``Assign``, ``Spawn``, ``Spill``), which the service
(``scheduler/_service.py``) carries out: messages to workers, processes
through the pool (``scheduler/_worker_pool.py``), batches to the global
scheduler. The rules it keeps:

- a queue's head goes to an idle worker when its shape's resources are
  free; with resources free and no idle worker, more workers start: as many
  as the free resources would run, up to ``STARTS_PER_CPU_MAX`` per CPU at
  once (one at a time for a runtime_env's), and up to
  ``WORKERS_PER_CPU_MAX`` x (CPUs + blocked workers) that are idle or run
  tasks holding no CPU;
- a full node with a long backlog (``BACKLOG_PER_WORKER`` tasks per worker)
  *pipelines*: a task waits on the least-loaded busy worker running the same
  shape, ``PIPELINE_DEPTH_BACKLOG`` deep, so a worker never waits a round
  trip; without such a backlog a task waits in its queue for the first
  worker to free;
- a node of a multi-node cluster spreads (Ray's hybrid policy, over the
  ``ClusterView`` of the other nodes' free resources): a queue's head that
  cannot start here now, or would start on a node utilised past
  ``SPREAD_THRESHOLD``, is spilled at once when another node has room for it
  (and is less utilised), before it is pipelined behind a busy worker;
- it also keeps ``SPILL_KEEP_PER_CPU`` tasks per CPU of each shape and spills
  the tail, except tasks the global scheduler placed here (they stay for
  good); a request no resource of the node fits is spilled, or refused on a
  node alone;
- actors wait in one FIFO and hold their resources for their whole life;
- task workers beyond the CPU count stop after ``IDLE_WORKER_TTL_S`` idle;
- a task with a ``runtime_env`` runs only on a worker started in that environment (its queue is keyed
  by shape and environment hash), and such workers stop after ``IDLE_WORKER_TTL_S`` idle whatever
  the count: workers of different environments never share a process; at the worker cap, an idle
  worker of another environment retires to make room.

It must never do I/O, read the clock, or touch a process or a connection:
it is tested with plain data (tests/unit/test_node_queue.py). What it cannot
see (whether a worker's connection has closed under it) it asks of the
``WorkerLinks`` it was given.
"""

from __future__ import annotations

import enum
from collections import deque
from dataclasses import dataclass
from typing import NamedTuple, Protocol, assert_never

from ember.scheduler._cluster_view import SPREAD_THRESHOLD, ClusterView, utilisation
from ember.scheduler._resources import EPSILON, ResourcePool, cpu_part, is_cpu
from ember.scheduler._infeasible import fixed_cluster_message
from ember.scheduler._spec import BUNDLE, GROUP_INFIX, Strategy, TaskSpec, group_of_resource, unbundled_shape

__all__ = [
    "Action", "Admission", "Assign", "NodeQueue", "QueueStatistics", "Spawn", "Spill", "WorkerLinks", "WorkerSlot",
]

SPILL_KEEP_PER_CPU = 4  # a multi-node cluster's node spills a shape's queue beyond this many tasks per CPU
PIPELINE_DEPTH_BACKLOG = 8  # tasks a busy worker may hold when the shape's queue is longer than
BACKLOG_PER_WORKER = 4  # ... this many per worker (the node full); without such a backlog, none queue behind it
STARTS_PER_CPU_MAX = 2  # workers of the cluster's own environment starting at once, per CPU
WORKERS_PER_CPU_MAX = 4  # task workers at most: this many per CPU (blocked workers count as CPUs)
IDLE_WORKER_TTL_S = 10.0  # a task worker beyond the CPU count stops after idling this long


class Assign(NamedTuple):
    """Send ``spec`` to run on ``worker`` (its exec connection)."""

    worker: int
    spec: TaskSpec


class Spawn(NamedTuple):
    """Start a worker process for the new slot ``worker``; ``actor_id``: it is to become that actor;
    ``runtime_env``: the environment it is to run in (a spec's ``runtime_env``; None: the cluster's)."""

    worker: int
    actor_id: bytes | None
    runtime_env: tuple[str, str] | None = None


class Spill(NamedTuple):
    """Hand these tasks to the global scheduler: they are no longer this node's."""

    specs: list[TaskSpec]


Action = Assign | Spawn | Spill


class Admission(enum.Enum):
    """What ``NodeQueue.enqueue`` did with a task."""

    QUEUED = "queued"  # (from admit_strategy: queued here even though its resources are not here yet)
    SPILL = "spill"  # no resource of this node fits it: the global scheduler may find one that does
    INFEASIBLE = "infeasible"  # no resource of this node fits it, and there is nowhere else to send it
    UNMET = "unmet"  # its scheduling strategy cannot be met here, and there is nowhere else to send it


class WorkerLinks(Protocol):
    """What the queue asks about a worker's connections (the pool answers; tests answer from a set)."""

    def open(self, worker: int) -> bool:
        """False once the worker's control connection has closed (its death is about to be reported)."""
        ...


class WorkerSlot:
    """The queue's record of one worker process: what it holds, not the process itself."""

    __slots__ = ("key", "actor_id", "connected", "ready", "assigned", "shape", "gpus", "blocked", "idle_since",
                 "retiring", "env")

    def __init__(self, key: int, actor_id: bytes | None, now: float, env: str | None = None) -> None:
        self.key = key
        self.actor_id = actor_id
        self.env = env  # the hash of the runtime_env it was started in; None: the cluster's own
        self.connected = False  # its control connection is up
        self.ready = False  # its control and exec connections are both up
        self.assigned: dict[bytes, TaskSpec] = {}  # running first, then pipelined behind it
        self.shape: tuple = ()  # the resources it holds
        self.gpus: tuple[int, ...] = ()  # the GPU devices among them (its CUDA_VISIBLE_DEVICES)
        self.blocked = False  # its task waits in get/wait: its CPUs are given back meanwhile
        self.idle_since = now
        self.retiring = False  # it ran a function max_calls times: it takes no more, and stops once idle


@dataclass(frozen=True)
class QueueStatistics:
    """A snapshot of the queue, for tests and status."""

    queued: int
    queued_by_shape: dict[tuple, int]
    pending_actors: int
    workers: int
    starting: int
    idle: int
    busy: int
    blocked: int
    available: dict[str, float]


class NodeQueue:
    """One node's task queues, resources, pending actors and worker records."""

    def __init__(self, resources: dict[str, float], links: WorkerLinks, spills: bool, node_id: str = "") -> None:
        """``spills``: a node of a multi-node cluster, with a global scheduler to spill to."""
        self.node_id = node_id
        self.resources = ResourcePool(resources)
        # The other nodes' free resources (a node alone has none to spread to).
        self.view: ClusterView | None = ClusterView() if spills else None
        self.cpu_soft_limit = max(1, int(resources.get("CPU", 1)))
        self._links = links
        self._spills = spills
        # Keyed by (resource shape, runtime_env as the spec carries it, None for most).
        self._queues: dict[tuple, deque[TaskSpec]] = {}
        self._slots: dict[int, WorkerSlot] = {}  # in start order: the first idle one is taken first
        self._next_key = 1
        # (actor id, its resources, its runtime_env), FIFO
        self._pending_actors: deque[tuple[bytes, tuple, tuple[str, str] | None]] = deque()
        self._placed: set[bytes] = set()  # tasks and actors the global scheduler placed here: never spilled again

    # -- tasks in --------------------------------------------------------------------------

    def enqueue(self, spec: TaskSpec, front: bool = False) -> Admission:
        """Queue ``spec``; ``front``: a task a worker handed back, held here already."""
        admitted = None
        if spec.strategy is not None and spec.task_id not in self._placed:
            admitted = self.admit_strategy(spec.strategy, spec.task_id, spec.resources)
            if admitted is not None and admitted is not Admission.QUEUED:
                return admitted
        if admitted is None and not self.resources.feasible(spec.resources):
            if self._spills and spec.task_id not in self._placed:
                return Admission.SPILL
            return Admission.INFEASIBLE
        key = (spec.resources, spec.runtime_env)
        queue = self._queues.get(key)
        if queue is None:
            queue = self._queues[key] = deque()
        if front:
            queue.appendleft(spec)
        else:
            queue.append(spec)
        return Admission.QUEUED

    def admit_strategy(self, strategy: tuple, task_or_actor_id: bytes, shape: tuple) -> Admission | None:
        """What a task's or actor's scheduling strategy makes of it here (None: as the default policy would).

        ``SPREAD`` goes to the global scheduler, which spreads; node affinity to this node stays here
        for good, affinity to another goes to the global scheduler, which knows that node. A node alone
        is the whole cluster: affinity to another node is unmet (soft: the default policy).
        """
        kind = Strategy(strategy[0])
        match kind:
            case Strategy.SPREAD:
                return Admission.SPILL if self._spills else None
            case Strategy.NODE_AFFINITY:
                node_id, soft = strategy[1], strategy[2]
                if node_id == self.node_id:
                    if self.resources.feasible(shape):
                        self._placed.add(task_or_actor_id)  # only here: never spread nor spilled
                        return None
                    if soft:
                        return None  # the default policy: spilled in a cluster, infeasible alone
                    return Admission.UNMET
                if self._spills:
                    return Admission.SPILL
                return None if soft else Admission.UNMET
            case Strategy.PLACEMENT_GROUP:
                if self.resources.feasible(shape):
                    self._placed.add(task_or_actor_id)  # its bundle is here: it runs here
                    return None
                if self._spills:
                    return Admission.SPILL  # the global scheduler knows where its bundle is, or that it is gone
                if f"{BUNDLE}{GROUP_INFIX}{strategy[1]}" in self.resources.total:
                    return Admission.UNMET  # its group is placed (all here), and its bundle is too small
                return Admission.QUEUED  # its group is not placed yet: it waits here for its bundle
            case _:
                assert_never(kind)

    def unmet_detail(self, strategy: tuple, shape: tuple) -> str:
        """Why a strategy ``admit_strategy`` found unmet cannot be met on this node alone."""
        if strategy[0] == Strategy.PLACEMENT_GROUP:
            group, index = strategy[1], strategy[2]
            suffix = f"{GROUP_INFIX}{index}_{group}" if index >= 0 else f"{GROUP_INFIX}{group}"
            holds = {n[:-len(suffix)]: a for n, a in self.resources.total.items()
                     if n.endswith(suffix) and not n.startswith(BUNDLE + GROUP_INFIX)}
            where = f"bundle {index}" if index >= 0 else "its bundles (together, on this node)"
            return (f"it asks for {unbundled_shape(shape, group)}, more than {where} of placement group {group} "
                    f"hold(s): {holds}; ask for less, or make the group's bundles bigger")
        if strategy[1] == self.node_id:
            return (f"its node affinity (soft=False) names this node, {self.node_id}, which can never give "
                    f"{dict(shape)}: it has {self.resources.total}")
        return (f"its node affinity (soft=False) names node {strategy[1]}, which is not a live node of this "
                f"cluster (its only node is {self.node_id}); pass soft=True to run it elsewhere")

    def keep_placed(self, task_or_actor_id: bytes) -> None:
        """The global scheduler placed this task or actor here: it is never spilled again."""
        self._placed.add(task_or_actor_id)

    def is_placed(self, task_or_actor_id: bytes) -> bool:
        return task_or_actor_id in self._placed

    def settled(self, task_id: bytes) -> None:
        """The task left this node (failed, cancelled): no longer one the global scheduler placed here."""
        self._placed.discard(task_id)

    def infeasible_detail(self, spec: TaskSpec) -> str:
        return fixed_cluster_message(spec.resources, self.resources.total)

    def cancel_queued(self, task_id: bytes) -> TaskSpec | None:
        """Take a queued (not yet assigned) task out; None if no queue holds it."""
        for queue in self._queues.values():
            for spec in queue:
                if spec.task_id == task_id:
                    queue.remove(spec)
                    return spec
        return None

    def holder(self, task_id: bytes) -> int | None:
        """The worker a task is assigned to (running or pipelined), if any."""
        for slot in self._slots.values():
            if task_id in slot.assigned:
                return slot.key
        return None

    def drain_queued(self) -> list[TaskSpec]:
        """Every queued task, taken out (workers cannot start: their owners are told)."""
        drained: list[TaskSpec] = []
        for queue in self._queues.values():
            drained.extend(queue)
            queue.clear()
        return drained

    def queued(self) -> int:
        return sum(len(q) for q in self._queues.values())

    # -- decisions ---------------------------------------------------------------------------

    def dispatch(self, now: float) -> list[Action]:
        """Place what can be placed: queue heads on workers, the spill tail, pending actors."""
        actions: list[Action] = []
        spread: list[TaskSpec] = []
        for (shape, env), queue in self._queues.items():
            while queue:
                if self.view is not None and self._spreads(shape, queue[0]):
                    spread.append(queue.popleft())
                    continue
                slot = self._place(shape, env, queue, actions, now)
                if slot is None:
                    break
                spec = queue.popleft()
                slot.assigned[spec.task_id] = spec
                actions.append(Assign(slot.key, spec))
            if self._spills and len(queue) > self.spill_keep:
                self._spill_excess(queue, actions)
        if spread:
            actions.append(Spill(spread))
        if self._pending_actors:
            self._place_actors(actions, now)
        return actions

    def prestart(self, now: float) -> list[Action]:
        """The workers a node starts with, before any task: one task worker per whole CPU."""
        return [Spawn(self.new_slot(None, now).key, None) for _ in range(self.cpu_soft_limit)]

    def place_actors(self, now: float) -> list[Action]:
        """Start workers for the actors at the head of the FIFO whose resources are free."""
        actions: list[Action] = []
        self._place_actors(actions, now)
        return actions

    @property
    def spill_keep(self) -> int:
        """Tasks of one shape a node keeps queued before it spills the rest: what its CPUs drain soon."""
        return SPILL_KEEP_PER_CPU * self.cpu_soft_limit

    def _spill_excess(self, queue: deque[TaskSpec], actions: list[Action]) -> None:
        """Spill the tail of ``queue`` beyond what this node keeps, except what was placed here."""
        excess: list[TaskSpec] = []
        kept: list[TaskSpec] = []
        while len(queue) > self.spill_keep:
            spec = queue.pop()
            (kept if spec.task_id in self._placed else excess).append(spec)
        if kept:
            queue.extend(reversed(kept))  # placed here by the global scheduler: they stay
        if excess:
            excess.reverse()
            actions.append(Spill(excess))

    def _spreads(self, shape: tuple, spec: TaskSpec) -> bool:
        """Whether the hybrid policy sends ``spec`` to another node now (taken off the view if so)."""
        assert self.view is not None
        if spec.task_id in self._placed or not self.view.nodes():
            return False
        if not self.resources.can_acquire(shape):
            return self.view.take(shape)  # full here: any node with room now
        local = utilisation(self.resources.total, self.resources.available)
        if local < SPREAD_THRESHOLD:
            return False
        return self.view.take(shape, below=local)  # busy here: a less utilised node with room

    def _place(self, shape: tuple, env: tuple[str, str] | None, queue: deque[TaskSpec], actions: list[Action],
               now: float) -> WorkerSlot | None:
        env_hash = None if env is None else env[0]
        if self.resources.can_acquire(shape):
            idle = self._idle_worker(env_hash)
            if idle is not None:
                idle.gpus = self.resources.acquire(shape)
                idle.shape = shape
                return idle
            self._maybe_spawn(actions, now, env, self._would_start(shape, len(queue)))
            return None
        # The node is full. With a long backlog, queue more behind running tasks of the same shape, so
        # workers never wait for a round trip. Without one the task waits here for the first worker to
        # free: behind a busy worker it would wait for that worker's task, whichever frees first (and a
        # node that looks full only until a finished task's completion arrives would hold it a whole
        # task long: ten sleep(1) tasks on free slots took 2 s after a burst of nested tasks).
        if len(queue) <= BACKLOG_PER_WORKER * len(self._slots):
            return None
        depth = PIPELINE_DEPTH_BACKLOG
        best = None
        for slot in self._slots.values():
            if (slot.actor_id is None and slot.ready and not slot.blocked and slot.assigned and not slot.retiring
                    and slot.shape == shape and slot.env == env_hash and len(slot.assigned) < depth):
                if best is None or len(slot.assigned) < len(best.assigned):
                    best = slot
        return best

    def _idle_worker(self, env_hash: str | None) -> WorkerSlot | None:
        for slot in self._slots.values():
            if (slot.actor_id is None and slot.ready and not slot.assigned and not slot.retiring
                    and slot.env == env_hash and self._links.open(slot.key)):
                return slot
        return None

    def _would_start(self, shape: tuple, queued: int) -> int:
        """How many of ``queued`` tasks of ``shape`` the free resources would start at once."""
        free = dict(self.resources.available)
        fit = 0
        while fit < queued and all(free.get(name, 0.0) + EPSILON >= amount for name, amount in shape):
            for name, amount in shape:
                free[name] = free.get(name, 0.0) - amount
            fit += 1
            if not shape:
                return queued  # holds nothing: only the worker cap bounds it
        return fit

    def _maybe_spawn(self, actions: list[Action], now: float, env: tuple[str, str] | None = None,
                     wanted: int = 1) -> None:
        # The cap is for workers the CPUs do not bound: idle ones, and those running tasks that hold no
        # CPU. A worker running a task that holds some (ten tasks of num_cpus=0.2 on two CPUs) is bounded
        # by the CPU accounting already.
        # Workers of the cluster's own environment start together, as many as the free resources would
        # run (``wanted``), up to ``STARTS_PER_CPU_MAX`` per CPU: one at a time, ten tasks of 0.2 CPU
        # waited for nine starts in a row. A runtime_env's start one at a time (a pip environment's may
        # take minutes, and its first sets the environment up for the rest).
        starting = capped = blocked = 0
        env_hash = None if env is None else env[0]
        for slot in self._slots.values():
            if slot.actor_id is None:
                if not slot.connected and slot.env == env_hash:
                    starting += 1
                if not (slot.assigned and any(name == "CPU" and amount > 0 for name, amount in slot.shape)):
                    capped += 1
            if slot.blocked:
                blocked += 1
        limit = 1 if env is not None else min(max(wanted, 1), self.cpu_soft_limit * STARTS_PER_CPU_MAX)
        cap = max(self.cpu_soft_limit + blocked, 1) * WORKERS_PER_CPU_MAX
        while starting < limit:
            if capped >= cap and not self._evict(env_hash):
                return
            actions.append(Spawn(self.new_slot(None, now, env_hash).key, None, env))
            starting += 1
            capped += 1

    def _evict(self, env_hash: str | None) -> bool:
        """At the cap, an idle worker of another environment retires to make room (another runtime_env's
        first, the oldest first); whether one did. The service stops it (``retired``)."""
        idle = [slot for slot in self._slots.values()
                if slot.actor_id is None and slot.connected and not slot.assigned and not slot.retiring
                and slot.env != env_hash]
        if not idle:
            return False
        victim = min(idle, key=lambda slot: (slot.env is None, slot.idle_since))
        victim.retiring = True
        return True

    def _place_actors(self, actions: list[Action], now: float) -> None:
        pending = self._pending_actors
        for actor_id, shape, env in list(pending):
            if not self.resources.can_acquire(shape):
                if self.resources.feasible(shape):
                    return  # first come, first served
                continue  # it waits for its placement group's bundle: the others need not
            pending.remove((actor_id, shape, env))
            gpus = self.resources.acquire(shape)
            slot = self.new_slot(actor_id, now, None if env is None else env[0])
            slot.shape, slot.gpus = shape, gpus
            actions.append(Spawn(slot.key, actor_id, env))

    # -- actors ------------------------------------------------------------------------------

    def want_actor(self, actor_id: bytes, shape: tuple, runtime_env: tuple[str, str] | None = None) -> None:
        """Queue an actor for a worker of its own (started in ``runtime_env``), once ``shape`` can be held
        for its whole life."""
        self._pending_actors.append((actor_id, shape, runtime_env))

    def actor_pending(self, actor_id: bytes) -> bool:
        return any(pending[0] == actor_id for pending in self._pending_actors)

    def forget_actor(self, actor_id: bytes) -> None:
        """The actor died before it was placed: it no longer waits."""
        if self.actor_pending(actor_id):
            self._pending_actors = deque(p for p in self._pending_actors if p[0] != actor_id)

    # -- placement groups --------------------------------------------------------------------

    def group_holders(self, group_id: str) -> list[int]:
        """The workers holding resources of placement group ``group_id``."""
        return [slot.key for slot in self._slots.values()
                if any(group_of_resource(name) == group_id for name, _ in slot.shape)]

    def awaiting_groups(self) -> set[str]:
        """Placement groups that queued tasks and pending actors wait for (their bundles are not here)."""
        shapes = [shape for (shape, _), queue in self._queues.items() if queue] + \
            [pending[1] for pending in self._pending_actors]
        return {group for shape in shapes if not self.resources.feasible(shape)
                for group in (group_of_resource(name) for name, _ in shape) if group is not None}

    def take_group(self, group_id: str) -> tuple[list[TaskSpec], list[bytes]]:
        """The queued tasks and pending actors of a placement group that is gone, taken out."""
        specs: list[TaskSpec] = []
        for (shape, _), queue in self._queues.items():
            if any(group_of_resource(name) == group_id for name, _ in shape):
                specs.extend(queue)
                queue.clear()
        actors = [a for a, shape, _ in self._pending_actors
                  if any(group_of_resource(n) == group_id for n, _ in shape)]
        return specs, actors

    # -- workers -----------------------------------------------------------------------------

    def new_slot(self, actor_id: bytes | None, now: float, env_hash: str | None = None) -> WorkerSlot:
        """Record a worker about to be started (the caller starts its process)."""
        slot = WorkerSlot(self._next_key, actor_id, now, env_hash)
        self._next_key += 1
        self._slots[slot.key] = slot
        return slot

    def slot(self, worker: int) -> WorkerSlot | None:
        return self._slots.get(worker)

    def gpus_of(self, worker: int) -> tuple[int, ...]:
        """The GPU devices the worker holds (its task's or its actor's)."""
        slot = self._slots.get(worker)
        return slot.gpus if slot is not None else ()

    def linked(self, worker: int, connected: bool, ready: bool) -> None:
        """``connected``: the worker's control connection is up; ``ready``: its exec connection too."""
        slot = self._slots.get(worker)
        if slot is not None:
            slot.connected = connected
            slot.ready = ready

    def task_done(self, worker: int, task_ids: list[bytes], now: float) -> None:
        slot = self._slots.get(worker)
        if slot is None:
            return
        assigned, placed = slot.assigned, self._placed
        for task_id in task_ids:
            assigned.pop(task_id, None)
            if placed:
                placed.discard(task_id)
        if not assigned:
            self._release(slot, now)

    def return_tasks(self, worker: int, task_ids: list[bytes]) -> None:
        """Tasks a worker hands back unstarted go back to the front of their queues, in order."""
        slot = self._slots.get(worker)
        if slot is None:
            return
        for task_id in reversed(task_ids):
            spec = slot.assigned.pop(task_id, None)
            if spec is not None:
                admitted = self.enqueue(spec, front=True)
                assert admitted is Admission.QUEUED, f"a task that ran here no longer fits: {admitted}"

    def take_back(self, worker: int, task_ids: list[bytes]) -> list[bytes]:
        """Queued tasks that a worker's running task waits for, handed to that worker to run itself.

        It runs them on the resources its task holds, which it would lend out
        while blocked anyway, so only tasks whose resources fit in those are
        taken, and only from a task worker that is running a task and not
        blocked. A task the node has room for now is left to run beside it
        (it waits for a worker, not for resources): taken, it would wait for
        its siblings instead. Returns the ids taken, in the order asked; they
        leave the queue.
        """
        slot = self._slots.get(worker)
        if slot is None or slot.actor_id is not None or slot.blocked or not slot.assigned:
            return []
        held = dict(slot.shape)
        wanted = set(task_ids)
        found: dict[bytes, TaskSpec] = {}
        for (shape, env), queue in self._queues.items():
            if (None if env is None else env[0]) != slot.env:
                continue  # another environment's: never run in this process
            if self.resources.can_acquire(shape) or not all(held.get(name, 0.0) + EPSILON >= amount
                                                            for name, amount in shape):
                continue
            for spec in [s for s in queue if s.task_id in wanted]:
                queue.remove(spec)
                found[spec.task_id] = spec
                if self._placed:
                    self._placed.discard(spec.task_id)
        return [task_id for task_id in task_ids if task_id in found]

    def retiring(self, worker: int, returned: list[bytes]) -> None:
        """The worker ran a function ``max_calls`` times: it takes no more tasks; those it hands back requeue."""
        slot = self._slots.get(worker)
        if slot is None:
            return
        self.return_tasks(worker, returned)
        slot.retiring = True

    def retired(self, now: float) -> list[int]:
        """Retiring workers with nothing assigned: their resources freed, forgotten here, to stop."""
        done = [slot for slot in self._slots.values() if slot.retiring and not slot.assigned]
        for slot in done:
            if slot.shape:  # it handed its last tasks back rather than finishing them
                self._release(slot, now)
            del self._slots[slot.key]
        return [slot.key for slot in done]

    def blocked(self, worker: int, returned: list[bytes]) -> None:
        """The worker's task waits: the tasks behind it go back, and its CPUs are lent out meanwhile."""
        slot = self._slots.get(worker)
        if slot is None:
            return
        self.return_tasks(worker, returned)
        if not slot.blocked and slot.assigned:
            slot.blocked = True
            self.resources.release(cpu_part(slot.shape))

    def unblocked(self, worker: int) -> None:
        """Its CPUs back, even past the node's total: refusing would deadlock nested tasks."""
        slot = self._slots.get(worker)
        if slot is not None and slot.blocked:
            slot.blocked = False
            self.resources.acquire(cpu_part(slot.shape), force=True)

    def worker_gone(self, worker: int, now: float) -> list[TaskSpec]:
        """The worker died or stopped: its resources are free; returns the tasks it held (to fail)."""
        slot = self._slots.pop(worker, None)
        if slot is None:
            return []
        lost = list(slot.assigned.values())
        if slot.assigned or slot.actor_id is not None:
            self._release(slot, now)
        slot.assigned = {}
        return lost

    def idle_expired(self, now: float) -> list[int]:
        """Task workers beyond the CPU count idle past ``IDLE_WORKER_TTL_S``: forgotten here, to stop."""
        # The floor of one worker per CPU is of the cluster's own environment; a runtime_env's go when idle.
        task_workers = sum(1 for s in self._slots.values() if s.actor_id is None and s.env is None)
        expired: list[int] = []
        for slot in list(self._slots.values()):
            if slot.actor_id is not None or not slot.connected or slot.assigned:
                continue
            if task_workers <= self.cpu_soft_limit and slot.env is None:
                continue
            if now - slot.idle_since > IDLE_WORKER_TTL_S:
                del self._slots[slot.key]
                expired.append(slot.key)
                task_workers -= slot.env is None
        return expired

    def _release(self, slot: WorkerSlot, now: float) -> None:
        shape = slot.shape
        if slot.blocked:
            shape = tuple((n, a) for n, a in shape if not is_cpu(n))
            slot.blocked = False
        self.resources.release(shape, slot.gpus)
        slot.shape, slot.gpus = (), ()
        slot.idle_since = now

    # -- introspection -----------------------------------------------------------------------

    def _queued_by_shape(self) -> dict[tuple, int]:
        counts: dict[tuple, int] = {}
        for (shape, _), queue in self._queues.items():
            if queue:
                counts[shape] = counts.get(shape, 0) + len(queue)
        return counts

    def statistics(self) -> QueueStatistics:
        slots = list(self._slots.values())
        return QueueStatistics(
            queued=self.queued(),
            queued_by_shape=self._queued_by_shape(),
            pending_actors=len(self._pending_actors),
            workers=len(slots),
            starting=sum(1 for s in slots if not s.connected),
            idle=sum(1 for s in slots if s.connected and not s.assigned and s.actor_id is None),
            busy=sum(1 for s in slots if s.assigned),
            blocked=sum(1 for s in slots if s.blocked),
            available=self.resources.snapshot()[1],
        )
