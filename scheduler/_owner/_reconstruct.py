"""Lineage replay in the owner: rebuilding objects whose every copy is gone.

When an object this process owns has no copy left (its store died and came
back empty), the task that made it runs again: same task id, next attempt,
the spec read back from the lineage log. Its own inputs that are gone too
are rebuilt first, recursively, as deep as the lineage goes; dependents wait
for them through the ordinary dependency parking.

Objects outlive their owner: a process waiting on a borrowed object whose
owner has died adopts it. It rebuilds the object the same way, as the new
owner of the replay, and publishes the result to the node's store, where
every other holder of the ref reads it. Inputs of the replayed task that were
owned by a dead process and are gone are adopted too.

What to rebuild is decided by ``plan_rebuild`` (``lineage/_replay_plan.py``,
the planner ``ember replay`` uses too); this module answers its questions
(``_OwnerFacts``: this process's tables, its node's store, the log, a
generation at a time) and carries the plan out: copies put back, reruns
installed inputs first, objects that cannot come back failed with the reason.

It must never walk lineage itself, and never read the log or probe an owner
under the core lock: reads happen outside it, the plan is installed under it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any, assert_never

from ember.chaos import _agent
from ember.exceptions import (
    ObjectLostError,
    ObjectReconstructionFailedError,
    ObjectReconstructionFailedLineageEvictedError,
    OwnerDiedError,
)
from ember.lineage import (
    KeptCopy,
    LineageTooLongError,
    Lost,
    LostWhy,
    RebuildPlan,
    Rerun,
    Restore,
    TaskFacts,
    no_copy_reason,
    plan_rebuild,
)
from ember.lineage import UNREACHABLE_WAIT_S, LoggedTask, ReplaySource
from ember.scheduler._address import is_relayed
from ember.scheduler._object_ref import ObjectRef
from ember.scheduler._session import log_conninfo
from ember.scheduler._spec import STREAMING, ArgKind, TaskKind, TaskSpec, task_of
from ember.store import publish_layout_bytes
from ember.scheduler._owner._objects import CopyLost, ObjectEntry, ObjectState
from ember.scheduler._owner._links import Links
from ember.scheduler._owner._liveness import Liveness
from ember.scheduler._owner._objects import ObjectTable
from ember.scheduler._owner._submit import SpecEncoder
from ember.scheduler._owner._tasks import PendingTask
from ember.scheduler._owner._writes import ObjectWriter
from ember.scheduler._session import Session
from ember.store import ObjectFiles

__all__ = ["COPY_WAIT_S", "OWNER_PROBE_REMOTE_S", "Reconstruction", "lost_error"]

log = logging.getLogger("ember.core")

# A restore waits this long for this process's own copy of the object, still
# queued behind others (a store that died right after a large put).
COPY_WAIT_S = 60.0
OWNER_PROBE_REMOTE_S = 3.0  # a live owner on another node answers through its relay within this


class Reconstruction:
    """Rebuilds lost objects this process owns (or adopts) by running their tasks again from the log."""

    def __init__(self, address: str, relay: str | None, session: Session, lock: Any, table: ObjectTable,
                 tasks: dict[bytes, PendingTask], files: ObjectFiles, links: Links, writes: ObjectWriter,
                 specs: SpecEncoder, endpoint_of: Callable[[str], str | None],
                 dispatch: Callable[[PendingTask], None], settled: Callable[[], None]) -> None:
        self.address = address
        self.relay = relay
        self.session = session
        self._lock = lock
        self._objects = table.entries
        self._tasks = tasks
        self.files = files
        self.links = links
        self.writes = writes
        self.specs = specs
        self._endpoint = endpoint_of  # the relay endpoint of the node of the process at an address
        self._dispatch = dispatch  # the owner sends a task whose inputs are ready
        self._settled = settled  # outside the lock, after a plan is installed: wake waiters, send what it queued
        self.gcs: Any = None  # the lineage log (GcsLog), set when the owner starts with one
        self._replay: ReplaySource | None = None  # the log's reader for rebuilds, made on the first one
        # Rebuilds run on threads of their own: two first ones at once must share one reader, or the
        # other's connection is dropped unclosed (a ResourceWarning in a node-death test, CI).
        self._replay_lock = threading.Lock()
        self._replay_closed = False
        # Owners found unreachable (their objects are adopted): for good on this node, for a while across nodes.
        self.liveness = Liveness(self._probe, self._refused_here)
        self._adopting: set[bytes] = set()

    def close(self) -> None:
        with self._replay_lock:
            self._replay_closed = True
            source = self._replay
        if source is not None:
            source.close()  # else its PostgreSQL connection outlives the cluster

    def replay_source(self) -> Any:
        with self._replay_lock:
            source = self._replay
            if source is None:
                conninfo = log_conninfo(self.session)
                if conninfo is None:
                    return None
                source = self._replay = ReplaySource(conninfo)
                if self._replay_closed:
                    source.close()  # closed already: its reads refuse, and it never connects
        return source

    def lost(self, oid: bytes) -> bool:
        """Owned, said to be in the store, and no copy is there (call under the lock)."""
        entry = self._objects.get(oid)
        if entry is None:
            return not self.files.exists(oid)
        if entry.state != ObjectState.READY_STORE:
            return False
        if entry.where is not None:  # in another node's store: lost once a pull from there failed
            return entry.where == CopyLost.LOST
        return not self.files.exists(oid)

    def owner_alive(self, address: str) -> bool:
        """Whether the process at ``address`` takes connections now (``_liveness``: one that refused on this
        node never comes back; one on another node may have been cut off, and is probed again later)."""
        return address == self.address or self.liveness.alive(address)

    def _remote(self, address: str) -> bool:
        return is_relayed(address) and self._endpoint(address) != self.relay

    def _probe(self, address: str) -> None:
        # One attempt: a live owner listens from before anyone can name
        # its objects, and a dead one's socket refuses at once. On another
        # node the relay needs a moment to open the stream; a dead node's
        # relay refuses, or is not there, for all of it.
        self.links.peer(address, timeout_s=OWNER_PROBE_REMOTE_S if self._remote(address) else 0.0)

    def _refused_here(self, address: str, exc: Exception) -> bool:
        """A probe's failure that proves the process dead: its socket on this node is gone or refuses."""
        return not self._remote(address) and isinstance(exc.__cause__ or exc, (FileNotFoundError,
                                                                               ConnectionRefusedError))

    def adopt(self, oids: list[bytes]) -> None:
        """Rebuild objects whose owner is dead, as their new owner (on a thread of its own)."""
        with self._lock:
            fresh = [oid for oid in oids if oid not in self._adopting]
            self._adopting.update(fresh)
        if not fresh:
            return

        def run() -> None:
            try:
                self.reconstruct(fresh)
            finally:
                with self._lock:
                    self._adopting.difference_update(fresh)

        threading.Thread(target=run, name="ember-adopt", daemon=True).start()

    def lost_refs(self, refs: list[ObjectRef]) -> list[bytes]:
        with self._lock:
            return [r._id for r in refs if r._owner == self.address and r._id in self._objects and self.lost(r._id)]

    def rebuild_inputs_of_pending(self) -> None:
        """After a store came back empty: rebuild now the lost inputs of tasks still to run.

        Left to the readers, each task of a chain would find its input gone
        only when it runs, and wait before asking: recovery one step at a time.
        """
        with self._lock:
            lost = {value._id for pt in self._tasks.values()
                    for value in (*pt.raw_args, *pt.raw_kwargs.values())
                    if type(value) is ObjectRef and value._owner == self.address and self.lost(value._id)}
        if lost:
            self.reconstruct(sorted(lost))

    def reconstruct(self, lost: list[bytes]) -> None:
        """Run again the tasks that made ``lost`` (owned objects), after their own lost inputs.

        Reading the log waits out a PostgreSQL restart (``ReplaySource``);
        callers are never reader threads.
        """
        import psycopg

        gcs = self.gcs
        if gcs is not None:
            # The specs of tasks that finished a moment ago may still be
            # queued here (rows go lazily): read back from the log, they
            # would be missing. Commit them first.
            gcs.writer.flush(UNREACHABLE_WAIT_S)
        try:
            self._reconstruct(lost)
        except psycopg.Error as exc:  # a longer outage: whoever waits asks again within a second
            log.error("cannot rebuild %d object(s): the lineage log is unreachable: %s", len(lost), exc)

    def _reconstruct(self, lost: list[bytes]) -> None:
        facts = _OwnerFacts(self, self.replay_source())
        try:
            plan = plan_rebuild(lost, facts, self.address)
        except LineageTooLongError as exc:
            plan = RebuildPlan((), (), tuple(Lost(oid, str(exc), LostWhy.TOO_LONG) for oid in lost))
        with self._lock:
            adopted = {gone.object_id for gone in plan.lost if gone.object_id in self._adopting}
        failures = {gone.object_id: lost_error(gone, gone.object_id in adopted) for gone in plan.lost}
        restored = 0
        for restore in plan.restores:
            error = self._restore_copy(restore)
            if error is not None:
                failures[restore.object_id] = error
            else:
                restored += 1
        specs = [(facts.spec(rerun), rerun) for rerun in plan.reruns]
        with self._lock:
            for oid, error in failures.items():
                self._fail_lost(oid, error)
            # Inputs first (the plan's order), so each dependent finds its inputs pending.
            for spec, rerun in specs:
                self._install_replay(spec, rerun.inputs)
        self._settled()
        if _agent.AGENT is not None:
            _agent.AGENT.note("rebuild", tasks=len(specs), copies=restored)

    def _restore_copy(self, restore: Restore) -> ObjectLostError | None:
        """Put a lost put or actor result back from its durable copy; the error if the copy is not there."""
        from ember.store import read_copy

        oid, inline, path = restore.object_id, restore.inline, restore.path
        copies = self.writes.copies
        if inline is None and path and copies is not None:
            copies.wait_written(oid, COPY_WAIT_S)  # this process's copy may still be queued
        data = inline if inline is not None else read_copy(path) if path else None
        if data is None:
            # Small puts travel inline and never reach the store, so this was
            # a large one: copies off, too large, or lost before it was made.
            with self._lock:
                adopted = oid in self._adopting
            return lost_error(Lost(oid, no_copy_reason(restore.by_actor), LostWhy.NO_COPY), adopted)
        from ember.scheduler._protocol import Op

        try:
            publish_layout_bytes(self.files.shm_dir, oid, data)
        except OSError as exc:
            # A store restarting under the write clears its folder: whoever
            # waits asks again once it is back, and this runs again.
            log.warning("could not put %s back into the store yet: %s", oid.hex(), exc)
            return None
        self.links.store.send((Op.SEALED, oid, len(data), self.address))
        log.info("restored put %s from its durable copy", oid.hex())
        return None

    def _fail_lost(self, oid: bytes, error: ObjectLostError) -> None:
        from ember.store import serialize_error, to_bytes

        if _agent.AGENT is not None:
            _agent.AGENT.note("lost", object=oid.hex(), reason=error.reason)
        entry = self._objects.get(oid)
        if entry is None:
            # Adopted, or an input of a replay: other processes read the
            # reason where they would read the value.
            entry = self._objects[oid] = ObjectEntry.shared_pending()
        entry.data = to_bytes(serialize_error(error), oid)
        entry.state = ObjectState.READY_INLINE
        if entry.shared:
            self.writes.publish(oid, entry.data)

    def _install_replay(self, spec: TaskSpec, inputs: tuple[bytes, ...]) -> None:
        if spec.task_id in self._tasks:
            return  # another thread's plan got here first
        log.info("rebuilding %s from lineage (attempt %d)", spec.describe(), spec.attempt)
        wanted = spec.return_ids()
        if spec.num_returns == STREAMING:
            # A generator runs again for the values of it that are lost: those wait for it again;
            # the ones still held are not taken twice (``Streams.on_item``).
            wanted += [oid for oid, entry in self._objects.items()
                       if task_of(oid) == spec.task_id and entry.state is ObjectState.READY_STORE and self.lost(oid)]
        for oid in wanted:
            entry = self._objects.get(oid)
            if entry is None:
                # An input of another replay, or adopted: read by other processes.
                entry = self._objects[oid] = ObjectEntry.shared_pending()
            entry.state, entry.data = ObjectState.PENDING, None
        deps = tuple(ObjectRef(dep, self.address) for dep in inputs)
        pt = PendingTask(spec, deps, {}, False)
        pt.replay = True
        self._tasks[spec.task_id] = pt
        self.specs.count_missing(pt)
        if pt.missing == 0:
            self._dispatch(pt)


class _OwnerFacts:
    """The planner's questions (``RebuildFacts``) answered by this process's tables, its node's store and the log.

    Each answers a whole generation: one query of the log, one turn of the core lock.
    """

    def __init__(self, core: Reconstruction, source: ReplaySource | None) -> None:
        self._core = core
        self._source = source
        self._logged: dict[bytes, LoggedTask] = {}

    @property
    def lineage_logged(self) -> bool:
        return self._source is not None

    def running(self, task_ids: list[bytes]) -> set[bytes]:
        with self._core._lock:
            return {task_id for task_id in task_ids if task_id in self._core._tasks}

    def logged_tasks(self, task_ids: list[bytes]) -> dict[bytes, TaskFacts]:
        assert self._source is not None, "the planner reads the log only when lineage is logged"
        found = self._source.tasks(task_ids)
        self._logged.update(found)
        return {task_id: _task_facts(logged) for task_id, logged in found.items()}

    def kept_copies(self, object_ids: list[bytes]) -> dict[bytes, KeptCopy]:
        assert self._source is not None, "the planner reads the log only when lineage is logged"
        return {oid: KeptCopy(oid, kept, inline, path)
                for oid, (kept, inline, path) in self._source.kept_copies(object_ids).items()}

    def lost(self, object_ids: list[bytes]) -> set[bytes]:
        with self._core._lock:
            return {oid for oid in object_ids if self._core.lost(oid)}

    def in_store(self, object_ids: list[bytes]) -> set[bytes]:
        return {oid for oid in object_ids if self._core.files.exists(oid)}

    def dead_owners(self, addresses: list[str]) -> set[str]:
        return {address for address in addresses if not self._core.owner_alive(address)}

    def spec(self, rerun: Rerun) -> TaskSpec:
        """The task to run again, owned by this process, its adopted inputs named as this process's."""
        spec = self._logged[rerun.task_id].spec(self._core.address, rerun.attempt)
        if rerun.adopted:
            def adopt(encoded: tuple) -> tuple:
                if encoded[0] == ArgKind.REF and encoded[1] in rerun.adopted:
                    return (ArgKind.REF, encoded[1], self._core.address)
                return encoded

            spec.args = [adopt(a) for a in spec.args]
            if spec.kwargs:
                spec.kwargs = {k: adopt(v) for k, v in spec.kwargs.items()}
        return spec


def _task_facts(logged: LoggedTask) -> TaskFacts:
    encoded = [*logged.args, *(logged.kwargs or {}).values()]
    return TaskFacts(logged.task_id, logged.kind == TaskKind.NORMAL, logged.last_attempt,
                     tuple((a[1], a[2]) for a in encoded if a[0] == ArgKind.REF))


def lost_error(gone: Lost, adopted: bool) -> ObjectLostError:
    """The error readers of an object that cannot come back get: Ray's class for the reason.

    ``adopted``: this process rebuilds the object because its owner died. An
    object of a dead owner that only a durable copy could bring back, with no
    copy there, is the one case where the owner's death truly loses it.
    """
    oid_hex = gone.object_id.hex()
    match gone.why:
        case LostWhy.NO_COPY:
            return OwnerDiedError(oid_hex, gone.reason) if adopted else ObjectLostError(oid_hex, gone.reason)
        case LostWhy.NOT_LOGGED:
            return ObjectReconstructionFailedLineageEvictedError(oid_hex, gone.reason)
        case LostWhy.TOO_LONG | LostWhy.LOGGING_OFF:
            return ObjectReconstructionFailedError(oid_hex, gone.reason)
        case _:
            assert_never(gone.why)
