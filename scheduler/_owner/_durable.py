"""Durable before visible: the owner's gate between a value and anyone who would see it (invariant 1).

A value leaves this process's hands only once the lineage it rests on is
committed to the log: a ref being pickled (``on_ref_shared``) waits for it
(in a worker, for a large put's durable copy too, as nothing can recompute it),
and so do ``get`` and ``wait`` in this very process (``await_lineage``). A
borrowed ref's lineage is its owner's to commit: the borrower asks it
(``Op.LINEAGE_DURABLE``) and remembers the answer; this process answers the
same question for its own objects (``on_lineage_wanted``). The order rows of
actor calls that only the actor may have logged are logged here first
(``log_unconfirmed``), and flushed for a restarted actor (``flush_log_for``).

It must never hand out a value, never commit under the owner's lock (a
commit waits for the log's writer thread), and never answer True for
lineage that is not committed.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

from ember.exceptions import LineageLogUnavailableError
from ember.scheduler._object_ref import ObjectRef
from ember.scheduler._owner._links import Links, grouped
from ember.scheduler._owner._objects import ObjectState, ObjectTable
from ember.scheduler._owner._tasks import PendingTask
from ember.scheduler._protocol import Connection, ConnectionClosed, Op
from ember.scheduler._spec import TaskKind

__all__ = ["DURABLE_BORROWED_MAX", "OWNER_ANSWER_MARGIN_S", "LineageGate"]

PUT_INDEX = bytes(4)  # the return index of a put's object id: it is no task's result
# A borrower waits for an owner's answer this much longer than the owner waits for its log.
OWNER_ANSWER_MARGIN_S = 5.0
DURABLE_BORROWED_MAX = 100_000  # borrowed ids known durable, remembered so as to ask once
DECLARE_REFS_MAX = 64  # a get of more refs than this commits once, after their results are in


class LineageGate:
    """Holds values back until their lineage is durable; answers borrowers' questions about owned ones."""

    def __init__(self, address: str, lock: Any, table: ObjectTable, tasks: dict[bytes, PendingTask],
                 actors: dict[bytes, Any], links: Links, owner_alive: Callable[[str], bool],
                 log_before_dispatch: Callable[[PendingTask], None],
                 pending_lineage: Callable[[PendingTask, Callable[[PendingTask], bool]], list[PendingTask]],
                 publish: Callable[[bytes, bytes | None], None],
                 await_copy: Callable[[bytes], None] | None = None) -> None:
        self._address = address
        self._lock = lock
        self._objects = table.entries
        self._tasks = tasks
        self._actors = actors  # actor id -> its call state (``_actors._ActorState``): the unconfirmed order rows
        self._links = links
        self._owner_alive = owner_alive
        self._log_before_dispatch = log_before_dispatch  # submission: log a pending task's spec (and its inputs')
        self._pending_lineage = pending_lineage  # submission: a pending task and the pending tasks it reads from
        self._publish = publish
        # A worker's kept objects (large puts, by-value arguments): wait for the durable copy before a ref
        # leaves, as for a row. None in a driver, whose objects end with it.
        self._await_copy = await_copy
        self.gcs: Any = None  # the lineage log (GcsLog), set when the owner starts with one
        self._durable_borrowed: set[bytes] = set()  # borrowed objects whose owners said their lineage is durable

    def on_ref_shared(self, ref: ObjectRef) -> None:
        """A ref is being pickled: it may be read by other processes from now on."""
        if ref._owner != self._address:
            return
        if self.gcs is not None:
            with self._lock:
                entry = self._objects.get(ref._id)
                if entry is not None and entry.state == ObjectState.PENDING and not entry.log_seq:
                    pt = self._tasks.get(ref._id[:16])
                    if pt is not None and not pt.log_seq and not pt.replay:
                        self._log_before_dispatch(pt)
                seq = self.lineage_seq_locked(ref._id)
            # Nobody else may name an object before its lineage is durable.
            self.gcs.make_durable(seq, f"a ref to object {ref.hex()}")
            if self._await_copy is not None:
                self._await_copy(ref._id)  # a put's lineage is its copy: this process may die next
        with self._lock:
            entry = self._objects.get(ref._id)
            if entry is None or entry.shared:
                return
            entry.shared = True
            if entry.state == ObjectState.READY_INLINE:
                self._publish(ref._id, entry.data)

    def lineage_seq_locked(self, oid: bytes) -> int:
        """The last log row the value of owned object ``oid`` rests on: its task's spec, the specs of its
        ancestors logged here before it, its creation row (0: none, or not owned here)."""
        entry = self._objects.get(oid)
        if entry is None:
            return 0
        if entry.order is not None:
            # An actor call's result: its place in the actor's order, which only the actor may have logged.
            entry.log_seq = max(entry.log_seq, self.log_unconfirmed(*entry.order))
            entry.order = None
        return entry.log_seq

    def durable_locked(self, oid: bytes, entry: Any) -> bool:
        """Whether the value of owned object ``oid`` may be handed out here with no wait: its lineage rows
        are committed, and no call order only its actor may have logged is pending (under the lock)."""
        if entry.order is not None:
            return False
        return self.gcs is None or oid.endswith(PUT_INDEX) or entry.log_seq <= self.gcs.committed_seq

    def declare_pending(self, refs: Sequence[ObjectRef]) -> None:
        """A get is about to wait for ``refs``: commit the lineage of the pending ones now, while they run.

        Each pending task owned here that a ref's value rests on has its
        spec logged (if its inputs held it back) and its results' creation
        rows declared; the writer commits them at once, and the value's wait
        for its lineage (``await_lineage``) then finds it durable rather than
        paying a commit after the result is in. Actor calls are left out
        (their place in the actor's order is known only once they ran), and
        so are big gets, whose one commit after the results is cheap per value.
        """
        gcs = self.gcs
        if gcs is None or len(refs) > DECLARE_REFS_MAX:
            return
        seq = 0
        with self._lock:
            for ref in refs:
                if ref._owner != self._address:
                    continue
                entry = self._objects.get(ref._id)
                pt = self._tasks.get(ref._id[:16])
                if (entry is None or entry.state != ObjectState.PENDING or pt is None or pt.declared
                        or pt.spec.kind != TaskKind.NORMAL):
                    continue
                if not pt.log_seq and not pt.replay:
                    self._log_before_dispatch(pt)
                for task in self._pending_lineage(pt, lambda task: task.declared):
                    seq = max(seq, self._declare_locked(task))
        if seq > gcs.committed_seq:
            gcs.writer.expedite()

    def _declare_locked(self, pt: PendingTask) -> int:
        spec = pt.spec
        if spec.kind != TaskKind.NORMAL or not pt.log_seq:
            return 0
        oids = spec.return_ids()
        seq = self.gcs.declare(spec.task_id, spec.job_id, oids)
        pt.declared = True
        for oid in oids:
            entry = self._objects.get(oid)
            if entry is not None:
                entry.log_seq = max(entry.log_seq, seq)
        return seq

    def await_lineage(self, refs: Sequence[ObjectRef]) -> None:
        """Return once the lineage of every ready ref among ``refs`` is durable (invariant 1, to this
        process too): ``get`` and ``wait`` hand out nothing before. Owned refs wait for this process's
        log; borrowed ones for their owners' answers. LineageLogUnavailableError past the log's limit."""
        gcs = self.gcs
        if gcs is None:
            return
        seq = 0
        borrowed: list[ObjectRef] = []
        with self._lock:
            for ref in refs:
                if ref._owner == self._address:
                    if ref._id.endswith(PUT_INDEX):
                        continue  # this process's own put: it had the value before it put it
                    seq = max(seq, self.lineage_seq_locked(ref._id))
                elif ref._id not in self._durable_borrowed:
                    borrowed.append(ref)
        if seq > gcs.committed_seq:
            what = f"the value of {refs[0].hex()}" if len(refs) == 1 else f"the values of {len(refs)} objects"
            gcs.make_durable(seq, what)
        if borrowed:
            self._confirm_borrowed_lineage(borrowed)

    def _confirm_borrowed_lineage(self, refs: list[ObjectRef]) -> None:
        """Ask each live owner to commit the lineage of its objects among ``refs`` and say so.

        A dead owner cannot: whatever of its rows was not committed died with
        it, and the spec of each of its objects was committed before the ref
        left it. Confirmed ids are remembered (a bounded set), so a borrower
        asks once per object.
        """
        gcs = self.gcs
        for owner, oids in grouped((ref._owner, ref._id) for ref in refs).items():
            if not self._owner_alive(owner):
                continue
            try:
                durable = self._links.peer(owner).call(Op.LINEAGE_DURABLE, oids,
                                                 timeout_s=gcs.commit_wait_s + OWNER_ANSWER_MARGIN_S)
            except (ConnectionClosed, OSError):
                continue  # it died meanwhile: as above
            except FutureTimeout:
                durable = False
            if not durable:
                raise LineageLogUnavailableError(
                    gcs.url, gcs.commit_wait_s, f"the value of {oids[0].hex()} (its owner {owner} could not commit "
                                                "its lineage in time)")
            with self._lock:
                self._durable_borrowed.update(oids)
                if len(self._durable_borrowed) > DURABLE_BORROWED_MAX:
                    self._durable_borrowed.clear()  # bounded: at worst a borrower asks again

    def on_lineage_wanted(self, conn: Connection, req_id: int, oids: list[bytes]) -> None:
        """A borrower's question: answer True once the lineage of ``oids`` (owned here) is durable."""
        with self._lock:
            seq = max((self.lineage_seq_locked(oid) for oid in oids), default=0)
        gcs = self.gcs
        if gcs is None or seq <= gcs.committed_seq:
            conn.reply(req_id, True)
            return

        def answer() -> None:
            durable = gcs.wait_committed(seq, gcs.commit_wait_s)
            try:
                conn.reply(req_id, durable)
                conn.flush()
            except ConnectionClosed:
                pass

        # Off the reader thread: the commit may take a while.
        threading.Thread(target=answer, name="ember-lineage-wanted", daemon=True).start()

    def log_unconfirmed(self, actor_id: bytes, through: int | None = None) -> int:
        """Log the order rows of calls to ``actor_id`` the actor may not have made durable; returns the last seq."""
        state = self._actors.get(actor_id)
        gcs = self.gcs
        if state is None or gcs is None:
            return 0
        last = 0
        while state.unconfirmed and (through is None or state.unconfirmed[0][0] <= through):
            place, spec = state.unconfirmed.popleft()
            last = gcs.actor_call(actor_id, place, spec, with_args=False)
        return last

    def flush_log_for(self, conn: Connection, req_id: int, actor_id: bytes) -> None:
        with self._lock:
            self.log_unconfirmed(actor_id)
        committed = self.gcs.writer.flush(self.gcs.commit_wait_s) if self.gcs is not None else True
        try:
            conn.reply(req_id, committed)
            conn.flush()
        except ConnectionClosed:
            pass
