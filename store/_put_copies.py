"""Durable copies of large ``ember.put`` objects, so a put can outlive its store.

Large by-value task arguments get the same copy: like a put, they cannot be
recomputed, and a replayed task needs them long after the task first ran.

A task's result can be rebuilt by running the task again; a put cannot, so
the owner keeps a copy of each large put in a file under
``$EMBER_HOME/objects/<job>/``, written by a background thread after the put
returns (a put stays as fast as a memory copy). Small puts need no file:
they travel inline and their bytes are in the lineage log.

A copy exists from the moment its file appears (written to a temporary name,
then renamed). It is deleted when the object is freed or the job shuts down.

Copies never fill the disk: one that would leave less free than the reserve
(``EMBER_COPY_DISK_RESERVE_BYTES``, default 5% of the disk and at least
1 GiB) is not written, with a warning; the object then has no copy, as one
over ``EMBER_PUT_COPY_MAX_BYTES`` has none (``disk_room``). PostgreSQL, the
spill folder and the rest of the machine share that disk.
``EMBER_PUT_COPIES=off`` turns copies off; ``EMBER_PUT_COPY_MAX_BYTES``
(default 4 GiB) skips larger puts. Without a copy, a put lost with its store
raises ObjectLostError saying so.
"""

from __future__ import annotations

import logging
import os
import queue
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path

from ember import _settings

log = logging.getLogger("ember.store")

COPY_MAX_BYTES_DEFAULT = _settings.PUT_COPY_MAX_BYTES
DISK_RESERVE_FRACTION = 0.05  # of the disk's size, left free by copies unless EMBER_COPY_DISK_RESERVE_BYTES says
DISK_RESERVE_MIN_BYTES = 1 << 30
NO_ROOM_WARN_EVERY_S = 60.0  # a copy skipped for lack of room is said once a minute at most, with the count


class NoRoomForCopy(OSError):
    """A copy that would eat into the disk's reserve: not written."""


def disk_room(directory: Path, size: int) -> bool:
    """Whether ``size`` more bytes under ``directory`` (or its nearest existing parent) leave the reserve free."""
    existing = directory
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    usage = shutil.disk_usage(existing)
    reserve = _settings.load().copy_disk_reserve_bytes
    if reserve is None:
        reserve = max(int(usage.total * DISK_RESERVE_FRACTION), DISK_RESERVE_MIN_BYTES)
    return usage.free - size >= reserve


class _NoRoomWarning:
    """Says that copies are skipped, at most once per ``NO_ROOM_WARN_EVERY_S``, with how many since."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last = 0.0
        self._skipped = 0

    def skipped(self, what: str) -> None:
        with self._lock:
            self._skipped += 1
            now = time.monotonic()
            if self._last and now - self._last < NO_ROOM_WARN_EVERY_S:
                return
            self._last, count, self._skipped = now, self._skipped, 0
        log.warning("no durable copy of %s (%d skipped lately): the disk under $EMBER_HOME is down to its reserve "
                    "(EMBER_COPY_DISK_RESERVE_BYTES); an object without a copy that is lost with its store "
                    "raises ObjectLostError", what, count)


NO_ROOM = _NoRoomWarning()


def copies_enabled() -> bool:
    return _settings.load().put_copies


def copy_wanted(size: int) -> bool:
    """Whether an object of ``size`` bytes nothing can recompute gets a durable copy (the one policy).

    Asked only of objects too large to travel inline, so reading the settings here costs nothing that counts.
    """
    settings = _settings.load()
    return settings.put_copies and size <= settings.put_copy_max_bytes


class PutCopies:
    def __init__(self, root: Path, open_object: Callable[[bytes], memoryview | None]) -> None:
        self.root = root / "objects"
        self._open_object = open_object
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._paths: dict[bytes, Path] = {}  # scheduled or written, not yet discarded
        self._views: dict[bytes, memoryview] = {}  # objects opened when scheduled, until copied
        self._removed_jobs: set[Path] = set()  # copies still being written there are dropped quietly
        self._lock = threading.Lock()
        # Scheduled copies not yet written (or dropped): a restore waits for its copy's turn.
        self._unwritten: set[bytes] = set()
        self._written = threading.Condition(self._lock)
        self._thread: threading.Thread | None = None

    def job_dir(self, job_id: bytes) -> Path:
        return job_dir(self.root.parent, job_id)

    def schedule(self, oid: bytes, job_id: bytes, view: memoryview | None = None) -> Path:
        """Copy object ``oid`` (sealed in the local store) in the background; returns where it will be.

        The object is opened now (or ``view``, opened by the writer right
        after writing it, is used), and the copy reads through that mapping:
        a store that dies and comes back empty before the copy's turn removes
        the file, not the pages this process still maps.
        """
        path = self.adopt(oid, job_id)
        if view is None:
            view = self._open_object(oid)
        with self._lock:
            if view is not None:
                self._views[oid] = view
            self._unwritten.add(oid)
        self._start()
        self._queue.put(oid)
        return path

    def wait_written(self, oid: bytes, timeout_s: float) -> bool:
        """Wait until ``oid``'s scheduled copy is written (or dropped); False if still pending after ``timeout_s``.

        A store that dies right after a put leaves its copy queued behind
        others: reading the file before its turn would find nothing.
        """
        with self._written:
            return self._written.wait_for(lambda: oid not in self._unwritten, timeout_s)

    def adopt(self, oid: bytes, job_id: bytes) -> Path:
        """Take charge of the copy another process wrote for ``oid`` (an actor, of its result): delete it on free."""
        path = self.job_dir(job_id) / oid.hex()
        with self._lock:
            self._paths[oid] = path
        return path

    def _start(self) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="ember-put-copies", daemon=True)
                self._thread.start()

    def after_copies(self, action: Callable[[], None]) -> None:
        """Run ``action`` on the copying thread once every copy scheduled so far is written."""
        self._start()
        self._queue.put(action)

    def discard(self, oid: bytes) -> None:
        with self._lock:
            path = self._paths.pop(oid, None)
            self._views.pop(oid, None)
        if path is not None:
            path.unlink(missing_ok=True)

    def remove_job(self, job_id: bytes) -> None:
        with self._lock:
            self._removed_jobs.add(self.job_dir(job_id))
        shutil.rmtree(self.job_dir(job_id), ignore_errors=True)

    def _run(self) -> None:
        while True:
            oid = self._queue.get()
            if callable(oid):
                try:
                    oid()
                except Exception:
                    log.exception("an action after durable copies failed")
                continue
            with self._lock:
                path = self._paths.get(oid)
                if path is None:
                    self._views.pop(oid, None)
            try:
                if path is not None:  # else freed before its turn came
                    self._copy(oid, path)
            except NoRoomForCopy:
                with self._lock:
                    self._paths.pop(oid, None)  # nothing to delete on free
                NO_ROOM.skipped(f"put {oid.hex()}")
            except OSError as exc:
                with self._lock:
                    job_over = path.parent in self._removed_jobs  # type: ignore[union-attr]
                if not job_over:  # else the job ended mid-copy: nobody can need it
                    log.warning("no durable copy of put %s: %s", oid.hex(), exc)
            finally:
                with self._written:
                    self._unwritten.discard(oid)
                    self._written.notify_all()

    def _copy(self, oid: bytes, final: Path) -> None:
        with self._lock:
            view = self._views.pop(oid, None)
        if view is None:
            view = self._open_object(oid)
        if view is None:
            return  # freed (or lost) before its turn came
        if not disk_room(final.parent, len(view)):
            raise NoRoomForCopy(f"no room for {len(view)} bytes")
        make_private_parents(final)
        tmp = final.with_name(f".tmp-{final.name}")
        with open(tmp, "wb") as f:
            f.write(view)
            f.flush()
            os.fdatasync(f.fileno())
        del view
        with self._lock:
            still_wanted = self._paths.get(oid) == final
        if still_wanted:
            os.rename(tmp, final)
        else:
            tmp.unlink(missing_ok=True)


def job_dir(home: Path, job_id: bytes) -> Path:
    """Where a job's durable copies live under ``$EMBER_HOME``."""
    return home / "objects" / job_id.hex()


def make_private_parents(path: Path) -> None:
    """Create the missing folders above a copy readable by this user only: copies are the user's data."""
    missing = []
    for directory in path.parents:
        if directory.is_dir():
            break
        missing.append(directory)
    for directory in reversed(missing):
        directory.mkdir(mode=0o700, exist_ok=True)


def write_copy(path: Path, data: memoryview | bytes) -> None:
    """Write a copy for another process to read after this one dies: page cache, no fsync.

    It must outlive a process, not the machine: a machine lost is a node
    lost, and its copies with it. NoRoomForCopy, and nothing written, when
    it would eat into the disk's reserve (``disk_room``).
    """
    if not disk_room(path.parent, len(data)):
        raise NoRoomForCopy(f"no room for {len(data)} bytes under {path.parent}")
    make_private_parents(path)
    tmp = path.with_name(f".tmp-{path.name}-{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
    os.rename(tmp, path)  # a reader never sees half a copy


def read_copy(path: str | Path) -> bytes | None:
    try:
        return Path(path).read_bytes()
    except OSError:
        return None
