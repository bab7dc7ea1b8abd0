"""The actors a node scheduler knows: their states, who follows them, their names.

``NodeActors`` keeps one record per actor this node places, or follows for
its processes (placed on another node of the cluster, its states relayed
here by the spiller's connections). An actor goes PENDING -> ALIVE
(-> RESTARTING -> ALIVE)* -> DEAD (``ActorState``, the enum the log's readers
use too); every change is published to its
subscribers as ``ACTOR_STATE``. It decides whether a dead actor process
comes back (``max_restarts``), and answers name claims and lookups.

Where an actor runs is not decided here: an actor to start waits in the
queue core's FIFO (``scheduler/_node_queue.py``), and the ``Spawn`` actions
that places it are returned to the service (``scheduler/_service.py``),
which starts the process and tells this table (``placed_on``). It must
never start a process or decide placement itself, and never touch a
worker's tasks; it stops an actor's process only through the worker pool.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ember.lineage._states import ActorState
from ember.scheduler._actor_concurrency import concurrency_in_meta
from ember.scheduler._actor_lease import RUN, Lease
from ember.scheduler._actor_exit import restart_from_in_meta
from ember.scheduler._infeasible import CANNOT_SCHEDULE, actor_cannot_start
from ember.scheduler._gcs_link import GcsLink
from ember.scheduler._node_queue import Action, Admission, NodeQueue
from ember.scheduler._protocol import Connection, Op, Outbox
from ember.scheduler._spec import TaskSpec
from ember.scheduler._spill import Spiller
from ember.scheduler._worker_pool import WorkerPool, WorkerProcess

__all__ = ["NodeActors"]


class _Actor:
    __slots__ = ("spec", "state", "address", "worker", "reason", "subscribers", "detached", "meta", "name",
                 "restarts", "host", "last_death", "generation")

    def __init__(self) -> None:
        self.spec: TaskSpec | None = None
        self.state: ActorState = ActorState.PENDING  # PENDING -> ALIVE (-> RESTARTING -> ALIVE)* -> DEAD
        self.restarts = 0
        self.address: str | None = None
        self.worker: int | None = None  # the slot of the worker process it runs (or starts) in
        self.reason: str | None = None
        self.subscribers: set[Connection] = set()
        self.detached = False
        self.meta: Any = None
        self.name: str | None = None
        self.host: str | None = None  # the node it runs on, when another: its states are relayed from there
        self.last_death: str | None = None  # how its previous process ended ("pid 7 exited with code 0")
        # Its restart count when it was placed on this node: raised only by the node that placed it
        # (``create`` with ``restarts``), not by a restart of its process here. The GCS fences an
        # instance whose actor has one of a higher generation (``lineage/_actor_fence.py``).
        self.generation = 0


class NodeActors:
    """The actor table of one node scheduler (used under the scheduler's lock)."""

    def __init__(self, queue: NodeQueue, workers: WorkerPool, gcs: GcsLink, spiller: Spiller | None,
                 outbox: Outbox, functions: dict[bytes, bytes], clock: Callable[[], float],
                 lease: Lease | None = None) -> None:
        self._queue = queue
        self._workers = workers
        self._gcs = gcs
        self._spiller = spiller
        self._outbox = outbox
        self._functions = functions  # function id -> its code, shared with the service that registers them
        self._clock = clock
        self._lease = lease  # a cluster node's: its actors hold calls while the GCS does not answer it
        self._actors: dict[bytes, _Actor] = {}
        self._names: dict[str, bytes] = {}

    def _actor(self, actor_id: bytes) -> _Actor:
        actor = self._actors.get(actor_id)
        if actor is None:
            actor = self._actors[actor_id] = _Actor()
        return actor

    # -- names -----------------------------------------------------------------------------

    def state_of(self, actor_id: bytes) -> ActorState | None:
        """The actor's state here; None for one this node has never heard of."""
        actor = self._actors.get(actor_id)
        return None if actor is None else actor.state

    def is_dead(self, actor_id: bytes) -> bool:
        return self.state_of(actor_id) == ActorState.DEAD

    def claim_name(self, name: str, actor_id: bytes, meta: Any) -> str | None:
        """Take ``name`` for ``actor_id``; why not (None: taken)."""
        existing = self._names.get(name)
        holder = self._actors.get(existing) if existing is not None else None
        if holder is not None and holder.state != ActorState.DEAD:
            return f"an actor named {name!r} already exists"
        self._names[name] = actor_id
        actor = self._actor(actor_id)
        actor.name = name
        actor.meta = meta
        return None

    def unclaim_name(self, name: str, actor_id: bytes) -> None:
        """Undo a claim here that the cluster refused (another node's actor has the name)."""
        if self._names.get(name) == actor_id:
            del self._names[name]

    def named(self, name: str) -> Any:
        """(actor id, metadata) of the live actor called ``name`` here, or None."""
        actor_id = self._names.get(name)
        if actor_id is None:
            return None
        actor = self._actors.get(actor_id)
        if actor is None or actor.state == ActorState.DEAD:
            return None
        return (actor_id, actor.meta)

    def live_names(self) -> set[str]:
        """The names of this node's live named actors."""
        return {name for name, actor_id in self._names.items()
                if (actor := self._actors.get(actor_id)) is not None and actor.state != ActorState.DEAD}

    # -- life on this node -----------------------------------------------------------------

    def create(self, spec: TaskSpec, detached: bool, meta: Any, restarts: int = 0) -> list[Action]:
        """Place a new actor; ``restarts`` > 0 brings back one that died with an earlier scheduler."""
        actor_id: bytes = spec.actor_id  # type: ignore[assignment]
        actor = self._actor(actor_id)
        actor.spec = spec
        actor.detached = detached
        actor.meta = meta
        if restarts and actor.state == ActorState.PENDING:
            actor.restarts = restarts
            actor.state = ActorState.RESTARTING  # its constructor runs, then its logged calls are replayed
            actor.reason = "restarting after its node's scheduler died"
        if actor.state == ActorState.DEAD:
            return []  # killed before it was placed
        if actor.worker is not None or self._queue.actor_pending(actor_id):
            # Running or starting here already: a creation sent again, by a scheduler that
            # restarted on its owner's node while the actor lived on here. Placing it again
            # would start a second instance, and hold its resources twice.
            self._publish(actor_id)
            return []
        actor.restarts = max(actor.restarts, restarts)  # a record following it here may have counted fewer
        actor.generation = actor.restarts  # placed here now, by the placer's count
        # No longer followed on the node it ran on: a state relayed from there (its old instance fenced
        # there says "restarting") must not override this node's own instance.
        actor.host = None
        if spec.strategy is not None and not self._queue.is_placed(actor_id):
            admitted = self._queue.admit_strategy(spec.strategy, actor_id, spec.resources)
            if admitted is Admission.SPILL:
                self._spiller.offer_actor(spec, detached, meta, actor.restarts)  # type: ignore[union-attr]
                return []
            if admitted is Admission.UNMET:
                self.dead(actor_id, CANNOT_SCHEDULE + self._queue.unmet_detail(spec.strategy, spec.resources))
                return []
            if admitted is Admission.QUEUED:  # it waits here for its placement group's bundle
                self._queue.want_actor(actor_id, spec.resources, spec.runtime_env)
                return self._queue.place_actors(self._clock())
        pool = self._queue.resources
        if self._spiller is not None and not self._queue.is_placed(actor_id) and not pool.can_acquire(spec.resources):
            # Not startable here now: the global scheduler may have a node that is free.
            self._spiller.offer_actor(spec, detached, meta, actor.restarts)
            return []
        if not pool.feasible(spec.resources):
            self.dead(actor_id, actor_cannot_start(spec.resources, pool.total))
            return []
        self._queue.want_actor(actor_id, spec.resources, spec.runtime_env)
        return self._queue.place_actors(self._clock())

    def generation_of(self, actor_id: bytes | None) -> int:
        """The generation of the actor's instance here (0 for one this node does not place, or no actor)."""
        actor = self._actors.get(actor_id) if actor_id is not None else None
        return 0 if actor is None else actor.generation

    def placed_on(self, actor_id: bytes, worker: int) -> None:
        """The worker process started for the actor (a ``Spawn`` the service carried out)."""
        self._actors[actor_id].worker = worker

    def start_on(self, w: WorkerProcess) -> None:
        """Its process connected: run the constructor (and replay its logged calls, on a restart)."""
        actor = self._actors[w.actor_id]  # type: ignore[index]
        spec = actor.spec
        assert spec is not None
        self._outbox.send(w.exec_conn, (Op.BECOME_ACTOR, spec, self._functions.get(spec.function_id),
                                        actor.restarts, self._queue.gpus_of(w.key), concurrency_in_meta(actor.meta),
                                        restart_from_in_meta(actor.meta), actor.last_death))
        if self._lease is not None and self._lease.mode != RUN:
            self._outbox.send(w.exec_conn, (Op.HOLD_CALLS, self._lease.mode))

    def ready(self, actor_id: bytes, address: str) -> None:
        actor = self._actor(actor_id)
        if actor.state == ActorState.DEAD:
            return
        actor.state = ActorState.ALIVE
        actor.address = address
        self._publish(actor_id)

    def process_died(self, actor_id: bytes, worker: int, detail: str) -> list[Action]:
        """The process ``worker`` hosting the actor died (or never started): restart it while its budget lasts."""
        actor = self._actors.get(actor_id)
        # Only the actor's current process: one that failed to start was replaced already.
        if actor is None or actor.state == ActorState.DEAD or actor.worker != worker:
            return []
        limit = actor.spec.max_retries if actor.spec is not None else 0
        if actor.restarts >= limit:
            reason = f"its worker process died ({detail})"
            if limit:
                reason += f" and it is out of restarts (max_restarts={limit})"
            self.dead(actor_id, reason)
            return []
        # It comes back: constructor, then its logged calls replayed.
        assert actor.spec is not None  # a budget above 0 comes from its spec
        actor.restarts += 1
        actor.last_death = detail  # the new process tells a crash of its own from a kill (``_restart_loop``)
        actor.state = ActorState.RESTARTING
        actor.address = None
        actor.worker = None
        actor.reason = f"restarting after its worker process died ({detail})"
        self._publish(actor_id)
        self._queue.want_actor(actor_id, actor.spec.resources, actor.spec.runtime_env)
        return self._queue.place_actors(self._clock())

    def dead(self, actor_id: bytes, reason: str) -> None:
        """The actor is gone for good: its process stopped, its resources and name freed."""
        actor = self._actor(actor_id)
        if actor.state == ActorState.DEAD:
            return
        actor.state = ActorState.DEAD
        actor.reason = reason
        self._queue.forget_actor(actor_id)  # if it still waited for resources
        if actor.worker is not None:
            now = self._clock()
            # SIGTERM first: the worker flushes its lineage rows (the actor's
            # call order) and exits; the tick SIGKILLs it if it does not.
            w = self._workers.stop(actor.worker, now)
            if w is not None:
                if w.worker_id is not None:
                    self._gcs.died(w.worker_id, f"actor stopped: {reason}")
                self._queue.worker_gone(w.key, now)
        if actor.name is not None and self._names.get(actor.name) == actor_id:
            del self._names[actor.name]
            if self._spiller is not None:
                self._spiller.release_name(actor.name, actor_id)
        self._publish(actor_id)

    def fence(self, actor_id: bytes, worker: int, reason: str) -> None:
        """The actor's process ``worker`` here is a superseded instance (the actor was restarted on another
        node while this one was cut off): SIGKILL it (it must not run on, nor flush anything), and follow
        the actor where it runs now, as one this node did not place: its subscribers hear "restarting",
        then where it is alive (never "dead", which would end the actor that lives on elsewhere). The
        process's death, reported as any, restarts nothing: the actor is not here."""
        w = self._workers.get(worker)
        if w is not None and w.worker_id is not None:
            self._gcs.died(w.worker_id, f"fenced: {reason}")
        self._workers.kill(worker)
        actor = self._actors.get(actor_id)
        if actor is None or actor.worker != worker:
            return  # not the actor's process here (an older one that outlived a new placement here): only it goes
        self._queue.forget_actor(actor_id)
        if actor.name is not None and self._names.get(actor.name) == actor_id:
            del self._names[actor.name]  # here only: the name is the live instance's, elsewhere
        actor.spec, actor.worker, actor.host, actor.address = None, None, None, None
        actor.state, actor.reason = ActorState.RESTARTING, f"its instance here was superseded: {reason}"
        self._publish(actor_id)
        if self._spiller is not None:
            self._spiller.find_actor(actor_id)  # callers here, and nodes following it from here, go there

    # -- the GCS's answers: the fence, and the lease on calls (scheduler/_actor_lease.py) ----------

    def gcs_answered(self, stale: list[str]) -> None:
        """The GCS answered this node, naming its actor processes (ids, hex) that are superseded instances:
        kill them, then let the calls held here run."""
        superseded = set(stale)
        for w in list(self._workers):
            if w.actor_id is not None and w.worker_id is not None and w.worker_id.hex() in superseded:
                self.fence(w.actor_id, w.key, "a later instance of its actor runs on another node")
        if self._lease is not None:
            self._hold_calls(self._lease.answered(self._clock()))

    def lease_tick(self, now: float) -> None:
        if self._lease is not None:
            self._hold_calls(self._lease.tick(now))

    def _hold_calls(self, mode: int | None) -> None:
        if mode is None:
            return
        for w in self._workers:
            if w.actor_id is not None and w.exec_conn is not None:
                self._outbox.send(w.exec_conn, (Op.HOLD_CALLS, mode))

    def kill(self, actor_id: bytes, reason: str) -> None:
        actor = self._actors.get(actor_id)
        if actor is not None and actor.host is not None and self._spiller is not None:
            self._spiller.kill_actor(actor_id, actor.host)
        self.dead(actor_id, reason)

    def kill_to_restart(self, actor_id: bytes) -> list[Action]:
        """``ember.kill(handle, no_restart=False)``: its process is killed, and it restarts while restarts remain."""
        actor = self._actors.get(actor_id)
        if actor is None or actor.state == ActorState.DEAD:
            return []
        if actor.host is not None and self._spiller is not None:
            self._spiller.kill_actor(actor_id, actor.host, no_restart=False)  # its host node restarts it
            return []
        limit = actor.spec.max_retries if actor.spec is not None else 0
        if actor.restarts >= limit or actor.worker is None:
            reason = "killed by ember.kill(no_restart=False)"
            if limit:
                reason += f", and it is out of restarts (max_restarts={limit})"
            self.kill(actor_id, reason)
            return []
        # Its process dies as any crash does: the reaper's report restarts it (``process_died``).
        w = self._workers.get(actor.worker)
        if w is not None and w.worker_id is not None:
            self._gcs.died(w.worker_id, "killed by ember.kill(no_restart=False); it restarts")  # the cause logged
        self._workers.kill(actor.worker)
        return []

    def owner_gone(self, address: str) -> None:
        """The process at ``address`` disconnected: the actors it created die with it, unless detached."""
        for actor_id, actor in list(self._actors.items()):
            if actor.spec is not None and actor.spec.owner_addr == address and not actor.detached:
                self.kill(actor_id, "its owner exited")

    # -- subscribers -----------------------------------------------------------------------

    def subscribe(self, conn: Connection, actor_id: bytes) -> None:
        actor = self._actor(actor_id)
        actor.subscribers.add(conn)
        if (actor.spec is None and actor.host is None and actor.state == ActorState.PENDING
                and self._spiller is not None):
            self._spiller.find_actor(actor_id)  # placed by another node: follow it from where it runs
        if actor.state != ActorState.PENDING:
            self._outbox.send(conn, _state_msg(actor_id, actor))

    def unsubscribe(self, conn: Connection) -> None:
        for actor in self._actors.values():
            actor.subscribers.discard(conn)

    def _publish(self, actor_id: bytes) -> None:
        actor = self._actors[actor_id]
        msg = _state_msg(actor_id, actor)
        for conn in actor.subscribers:
            self._outbox.send(conn, msg)

    # -- actors on other nodes (their states relayed here by the spiller's connections) ------

    def hosted_elsewhere(self, actor_id: bytes, node_id: str) -> None:
        self._actor(actor_id).host = node_id

    def relayed_state(self, actor_id: bytes, alive: bool, address: str | None, reason: str | None,
                      restarting: bool, restarts: int) -> None:
        actor = self._actors.get(actor_id)
        if actor is None or actor.state == ActorState.DEAD or actor.host is None:
            return
        if not alive and not restarting:
            self.dead(actor_id, reason or "it died on its node")
            return
        actor.state = ActorState.ALIVE if alive else ActorState.RESTARTING
        actor.address, actor.reason, actor.restarts = address, reason, max(actor.restarts, restarts)
        self._publish(actor_id)

    def host_lost(self, node_id: str, detail: str) -> None:
        """The node hosting some actors here is gone: restart those placed from here, look again for the rest."""
        spiller = self._spiller
        assert spiller is not None, "only a node of a multi-node cluster hosts actors elsewhere"
        for actor_id, actor in list(self._actors.items()):
            if actor.host != node_id or actor.state == ActorState.DEAD:
                continue
            actor.host, actor.address = None, None
            spec = actor.spec
            if spec is None:  # only followed here: the node that placed it restarts it
                actor.state, actor.reason = ActorState.RESTARTING, f"restarting: {detail}"
                self._publish(actor_id)
                spiller.find_actor(actor_id)
            elif actor.restarts >= spec.max_retries:
                reason = f"{detail}" + (f", and it is out of restarts (max_restarts={spec.max_retries})"
                                        if spec.max_retries else "")
                self.dead(actor_id, reason)
            else:
                # Placed again; its constructor runs there, then its logged calls are replayed.
                actor.restarts += 1
                actor.state, actor.reason = ActorState.RESTARTING, f"restarting on another node: {detail}"
                self._publish(actor_id)
                spiller.offer_actor(spec, actor.detached, actor.meta, actor.restarts)

    def unfound(self, actor_id: bytes, reason: str) -> None:
        """No node hosts an actor this node only followed: its subscribers learn it is dead."""
        actor = self._actors.get(actor_id)
        if actor is not None and actor.spec is None and actor.host is None and actor.subscribers:
            self.dead(actor_id, reason)


def _state_msg(actor_id: bytes, actor: _Actor) -> tuple:
    return (Op.ACTOR_STATE, actor_id, actor.state == ActorState.ALIVE, actor.address, actor.reason,
            actor.state == ActorState.RESTARTING, actor.restarts)
