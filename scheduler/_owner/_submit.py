"""Submission's encoding: a task's arguments made ready to send, and its spec logged before anyone can see a result.

Arguments go by value when small and plain, inline when small and pickled,
and by reference otherwise: an owned object held inline travels inline, a
large by-value argument is put in the store first (``ObjectWriter``) and
freed after the task. A task whose inputs are still pending is encoded
early (its inputs by reference) and logged at once, so a chain's specs
commit together; a ref to a pending result that leaves this process has its
whole pending lineage logged first (``log_before_dispatch``).

It must never send a task (``Owner._dispatch`` does, then logs right after,
under the lock), and never log a spec twice (``PendingTask.log_seq``).
Called under the owner's lock.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ember.scheduler._actor_concurrency import Concurrency, concurrency_in_meta
from ember.scheduler._actor_handles import HANDLES, leasing
from ember.scheduler._object_ref import ObjectRef
from ember.scheduler._owner._links import Links
from ember.scheduler._owner._objects import INLINE_BYTES_MAX, ObjectState, ObjectTable
from ember.scheduler._owner._tasks import PendingTask
from ember.scheduler._owner._writes import ObjectWriter
from ember.scheduler._protocol import Op
from ember.scheduler._spec import PLAIN_BYTES_MAX, PLAIN_TYPES, ArgKind, TaskKind
from ember.store import serialize, to_bytes

__all__ = ["SpecEncoder"]


class SpecEncoder:
    """Encodes the arguments of this process's tasks and logs their specs (under the owner's lock)."""

    def __init__(self, address: str, table: ObjectTable, tasks: dict[bytes, PendingTask],
                 dep_waiters: dict[bytes, list[PendingTask]], links: Links, writes: ObjectWriter) -> None:
        self._address = address
        self._objects = table.entries
        self._tasks = tasks
        self._dep_waiters = dep_waiters  # owned pending object -> the tasks waiting for it
        self._links = links
        self._writes = writes
        self.gcs: Any = None  # the lineage log (GcsLog), set when the owner starts with one

    def count_missing(self, pt: PendingTask) -> None:
        for value in (*pt.raw_args, *pt.raw_kwargs.values()):
            if type(value) is ObjectRef and value._owner == self._address:
                entry = self._objects.get(value._id)
                if entry is not None and entry.state == ObjectState.PENDING:
                    pt.missing += 1
                    self._dep_waiters.setdefault(value._id, []).append(pt)

    def _encode(self, value: Any, pt: "PendingTask | None" = None) -> tuple:
        t = type(value)
        if t in PLAIN_TYPES and (t is not str and t is not bytes or len(value) <= PLAIN_BYTES_MAX):
            return (ArgKind.VALUE, value)
        if t is ObjectRef:
            if value._owner == self._address:
                entry = self._objects.get(value._id)
                if entry is not None and entry.state == ObjectState.READY_INLINE:
                    return (ArgKind.INLINE, entry.data)
            return (ArgKind.REF, value._id, value._owner)
        if pt is None:
            obj = serialize(value)
        else:
            with leasing(pt):  # actor handles in it are held until the task needs its arguments no more
                obj = serialize(value)
        if obj.total_size > INLINE_BYTES_MAX:
            oid = self._writes.put_serialized(obj)
            if pt is not None:
                if not pt.arg_objects:
                    pt.arg_objects = []  # most tasks have none: no list each
                pt.arg_objects.append(oid)
            return (ArgKind.REF, oid, self._address)
        return (ArgKind.INLINE, to_bytes(obj, b""))

    def _inline_owned(self, encoded: tuple) -> tuple:
        if encoded[0] == ArgKind.REF and encoded[2] == self._address:
            entry = self._objects.get(encoded[1])
            if entry is not None and entry.state == ObjectState.READY_INLINE:
                return (ArgKind.INLINE, entry.data)
        return encoded

    def encode_spec(self, pt: PendingTask) -> bool:
        """Encode the arguments for sending; returns whether the spec still has to be logged.

        Callers send the task first and log it right after, still under the
        core lock: its result cannot be taken in (and a ref to it cannot be
        shared) before the row is queued, and queueing it does not hold up
        the send.
        """
        if pt.replay or pt.encoded:
            # Arguments encoded before their inputs were ready name them by
            # reference; those this process holds inline travel by value.
            spec = pt.spec
            spec.args = [self._inline_owned(a) for a in spec.args]
            if spec.kwargs:
                spec.kwargs = {k: self._inline_owned(v) for k, v in spec.kwargs.items()}
            return False
        spec = pt.spec
        pt.as_logged = False
        self.free_arg_objects(pt)  # a retry encodes again
        spec.args = [self._encode(a, pt) for a in pt.raw_args] if pt.raw_args else ()
        spec.kwargs = {k: self._encode(v, pt) for k, v in pt.raw_kwargs.items()} if pt.raw_kwargs else None
        return self.gcs is not None and not pt.log_seq

    def log_before_dispatch(self, pt: PendingTask) -> None:
        """Log the spec of a task still waiting for its inputs: a ref to its result is leaving.

        The inputs are logged by reference; dispatch encodes the arguments
        again, when their values are known, and does not log a second row.
        """
        # Its pending inputs' own tasks are in the same state: their specs go
        # first, so the whole lineage of what leaves is durable.
        for task in self.pending_lineage(pt, lambda task: bool(task.log_seq)):
            self.encode_early(task)

    def pending_lineage(self, pt: PendingTask, done: Callable[[PendingTask], bool]) -> list[PendingTask]:
        """``pt`` and the pending tasks owned here whose results it reads, inputs first; a task that is
        ``done`` (or a replay: logged long ago) is left out, with what only it leads to."""
        order, stack = [], [pt]
        while stack:
            task = stack.pop()
            if task.replay or done(task) or task in order:
                continue
            order.append(task)
            for value in (*task.raw_args, *task.raw_kwargs.values()):
                if type(value) is ObjectRef and value._owner == self._address:
                    upstream = self._tasks.get(value._id[:16])
                    if upstream is not None:
                        stack.append(upstream)
        order.reverse()
        return order

    def encode_early(self, pt: PendingTask) -> None:
        """Encode and log a task whose inputs are pending: they are named by reference."""
        spec = pt.spec
        spec.args = [self._encode(a, pt) for a in pt.raw_args] if pt.raw_args else ()
        spec.kwargs = {k: self._encode(v, pt) for k, v in pt.raw_kwargs.items()} if pt.raw_kwargs else None
        pt.encoded = True
        self.log_spec(pt)

    def log_spec(self, pt: PendingTask) -> None:
        spec = pt.spec
        gcs = self.gcs
        assert gcs is not None
        dependencies = [v._id for v in (*pt.raw_args, *pt.raw_kwargs.values()) if type(v) is ObjectRef]
        dependencies += pt.arg_objects
        if spec.kind == TaskKind.ACTOR_CREATION:
            wire = concurrency_in_meta(pt.extra[1]) if len(pt.extra) > 1 else None
            gcs.actor(spec.actor_id, spec.job_id, spec.task_id, spec.function_name, spec.name,
                      min(spec.max_retries, 2**31 - 1),
                      Concurrency.from_wire(wire).describe() if wire is not None else None)
        pt.log_seq = gcs.task(spec, dependencies)
        for oid in spec.return_ids():
            entry = self._objects.get(oid)
            if entry is not None:
                entry.log_seq = pt.log_seq

    def free_arg_objects(self, pt: PendingTask) -> None:
        if pt.actor_leases:
            leases, pt.actor_leases = pt.actor_leases, ()
            HANDLES.leases_done(leases)
        if pt.arg_objects:
            oids, pt.arg_objects = pt.arg_objects, ()
            for oid in oids:
                self._objects.pop(oid, None)
            if self._writes.copies is not None:
                # Freed from memory once their durable copies are written.
                self._writes.copies.after_copies(lambda: self._links.store.send((Op.FREE, oids)))
            else:
                self._links.store.send((Op.FREE, oids))
