"""The owner's writes to the node's store: puts, large by-value arguments, and inline objects published.

An object nothing can recompute (a put, a large argument sent by value) is
written here and logged with a durable copy (``PutCopies``) when the lineage
log is on; a small one stays inline in the object table. An inline object
someone else must read is published to the store as a file (``publish``).
The durable copies of large actor results are adopted here too.

It decides nothing about tasks, and must never log a task's spec (submission
does) or send anything but ``SEALED`` and ``ALLOC_SEGMENT`` to the store.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ember.scheduler._object_ref import ObjectRef
from ember.scheduler._owner._links import Links
from ember.scheduler._owner._objects import INLINE_BYTES_MAX, ObjectEntry, ObjectState, ObjectTable
from ember.scheduler._protocol import Op
from ember.scheduler._spec import IDS, TaskKind, TaskSpec, object_id
from ember.store import PutCopies, copy_wanted
from ember.store import ObjectFiles, publish_layout_bytes
from ember.store import serialize, to_bytes

__all__ = ["SEGMENT_REQUEST_BYTES_MIN", "ObjectWriter"]

log = logging.getLogger("ember.core")

SEGMENT_REQUEST_BYTES_MIN = 8 << 20  # from here on, ask the store for a pre-faulted segment
SEGMENT_REQUEST_TIMEOUT_S = 5.0
COPY_WRITE_WAIT_S = 60.0  # a ref to a kept object waits this long for its durable copy to leave a worker


class ObjectWriter:
    """Writes objects this process owns into its node's store, and keeps their durable copies."""

    def __init__(self, address: str, files: ObjectFiles, table: ObjectTable, lock: Any, links: Links,
                 job_of: Callable[[], bytes]) -> None:
        self._address = address
        self._files = files
        self._table = table
        self._lock = lock
        self._links = links
        self._job_of = job_of  # the job a put belongs to: the running task's, else this process's
        self.gcs: Any = None  # the lineage log (GcsLog), set when the owner starts with one
        self.copies: PutCopies | None = None  # durable copies of large puts, made on first need

    def put(self, value: Any) -> ObjectRef:
        oid = object_id(IDS.task_id(), 0)
        entry = ObjectEntry()
        obj = serialize(value)
        view = None
        if obj.total_size <= INLINE_BYTES_MAX:
            entry.data = to_bytes(obj, oid)
            entry.state = ObjectState.READY_INLINE
        else:
            view = self._write_kept(oid, obj)
            entry.state = ObjectState.READY_STORE
            entry.size = obj.total_size
        if self.gcs is not None:
            size = len(entry.data) if entry.data is not None else obj.total_size
            entry.log_seq = self._log_kept_object(oid, size, entry.data, "put", view)
        with self._lock:
            self._table.entries[oid] = entry
        return ObjectRef(oid, self._address)

    def put_serialized(self, obj: Any) -> bytes:
        """Put a large by-value argument (under the owner's lock); its object id."""
        oid = object_id(IDS.task_id(), 0)
        view = self._write_kept(oid, obj)
        entry = ObjectEntry(ObjectState.READY_STORE)
        entry.size = obj.total_size
        entry.shared = True  # referenced from a spec: keep it while the job runs
        self._table.entries[oid] = entry
        if self.gcs is not None:
            # A replay of the task needs it after it is freed.
            self._log_kept_object(oid, obj.total_size, None, "argument", view)
        return oid

    def publish(self, oid: bytes, data: bytes | None) -> None:
        """Write an inline object to the node store so borrowers can read it."""
        assert data is not None
        if not self._files.exists(oid):
            publish_layout_bytes(self._files.shm_dir, oid, data)
        self._links.store.send((Op.SEALED, oid, len(data), self._address))

    def _log_kept_object(self, oid: bytes, size: int, inline: bytes | None, origin: str,
                         view: memoryview | None = None) -> int:
        """Log an object nothing can recompute (a put, a large by-value argument), keeping a durable copy."""
        gcs = self.gcs
        assert gcs is not None
        durable = inline if inline is not None and size <= gcs.DURABLE_PUT_BYTES_MAX else None
        job_id = self._job_of()
        copy_path = None
        if inline is None and copy_wanted(size):
            copy_path = str(self.put_copies().schedule(oid, job_id, view))
        return gcs.obj(oid, oid[:16], job_id, origin, size, durable, copy_path, self._address)

    def copy_actor_result(self, spec: TaskSpec, oid: bytes, data: bytes | None, size: int,
                          failed: bool) -> str | None:
        """The durable copy of an actor call's result in the store, which the actor wrote; its file, or None.

        Running the call again would not give the same value (the actor has
        moved on), so a result lost with its store is put back from this
        copy, as a put is. Small results travel inline and live on here.
        This process deletes the copy when it frees the object.
        """
        if spec.kind != TaskKind.ACTOR_CALL or data is not None or failed:
            return None
        if not copy_wanted(size):
            return None
        return str(self.put_copies().adopt(oid, spec.job_id))

    def await_copy(self, oid: bytes) -> None:
        """Return once the durable copy of ``oid`` (if one was scheduled here) is written, or the wait is over."""
        copies = self.copies
        if copies is not None and not copies.wait_written(oid, COPY_WRITE_WAIT_S):
            log.warning("the durable copy of object %s is not written after %.0f s; its ref leaves without it",
                        oid.hex(), COPY_WRITE_WAIT_S)

    def put_copies(self) -> PutCopies:
        if self.copies is None:
            from ember.lineage import ember_home

            self.copies = PutCopies(ember_home(), self._files.open)
        return self.copies

    def _write_kept(self, oid: bytes, obj: Any) -> memoryview | None:
        """Write an object nothing can recompute, mapped at once if it gets a durable copy.

        The copy reads that mapping: a store that restarts empty clears the
        folder, not the pages this process maps.
        """
        self.write_to_store(oid, obj)
        if self.gcs is None or not copy_wanted(obj.total_size):
            return None
        view = self._files.open(oid)
        if view is None:  # cleared between the write and the open: write it again
            self.write_to_store(oid, obj)
            view = self._files.open(oid)
        return view

    def write_to_store(self, oid: bytes, obj: Any) -> None:
        segment = None
        if obj.total_size >= SEGMENT_REQUEST_BYTES_MIN:
            try:
                path = self._links.store.call(Op.ALLOC_SEGMENT, obj.total_size, timeout_s=SEGMENT_REQUEST_TIMEOUT_S)
                segment = None if path is None else Path(path)
            except Exception:  # no segment: write a fresh file, slower but correct
                segment = None
        try:
            self._files.write(oid, obj, segment)
        except FileNotFoundError:
            # A store restarting empty cleared the folder under the write
            # (the half-written file or the segment): write it again, afresh.
            self._files.write(oid, obj, None)
        self._links.store.send((Op.SEALED, oid, obj.total_size, self._address))
