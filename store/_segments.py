"""Object files: one file per sealed object in a shared-memory directory, on disk when memory is full.

A writer lays an object out (see ``_serialization``) in a temporary file and
renames it to ``<object id hex>``, so a reader sees the whole object or
nothing. Readers map the file read-only and hold a shared ``flock`` for as
long as the mapping lives (the mapping owns a dup of the descriptor), which is
how ``try_reclaim`` knows whether a file may be recycled for another object.

This module must never publish a partly written file, never hand a reader a
file that was recycled for another object (the header's object id is checked
under the shared lock), never recycle or rewrite a file a reader still maps,
and never fail a write that fits on disk because shared memory is full.

Writes go through ``pwritev`` rather than a writable mapping: a full tmpfs then
fails with ENOSPC instead of SIGBUS, and copying into page-cache pages through
the kernel skips the per-page faults of a fresh mapping (about 2.5x faster
here). Arrow objects, whose IPC stream is produced straight into the
destination, are written through a mapping after ``posix_fallocate`` has
reserved every page, so they cannot SIGBUS either.

The caller (the store) serialises operations on one object id: writing,
spilling and reclaiming the same id concurrently is not supported.
"""

from __future__ import annotations

import errno
import fcntl
import itertools
import mmap
import os
import threading
import time
from pathlib import Path

from ember.exceptions import EmberInternalError, ObjectTooLargeError

from ember.store._serialization import (
    HEADER_BYTES,
    OBJECT_ID_BYTES_MAX,
    OBJECT_ID_OFFSET,
    SerializedObject,
    layout_pieces,
    read_header,
    with_object_id,
    write_into,
)

__all__ = ["ObjectFiles", "prefault_segment", "publish_layout_bytes"]

_TMP_PREFIX = ".tmp-"
_FILE_MODE = 0o600
# ENOSPC is a full tmpfs; EDQUOT a quota; both mean "try the next directory".
_NO_ROOM_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
_IOV_MAX = os.sysconf("SC_IOV_MAX") if "SC_IOV_MAX" in os.sysconf_names else 1024
# A reader waits for an exclusive lock only while try_reclaim checks a file or
# a writer fills a recycled segment that reader opened by its old name.
_READER_LOCK_WAIT_S = 30.0
# A writer waits only for stale readers that see the zeroed id and unmap at once.
_SEGMENT_LOCK_WAIT_S = 5.0
_LOCK_POLL_S = 0.0005
_COPY_CHUNK_BYTES = 64 * 1024 * 1024
_PREFAULT_CHUNK_BYTES = 16 * 1024 * 1024

_sequence = itertools.count()


class ObjectFiles:
    """Sealed objects as files named ``id.hex()`` in ``shm_dir``, or in ``spill_dir`` when spilled."""

    def __init__(self, shm_dir: Path, spill_dir: Path) -> None:
        self.shm_dir = Path(shm_dir)
        self.spill_dir = Path(spill_dir)
        self.shm_dir.mkdir(parents=True, exist_ok=True)
        self.spill_dir.mkdir(parents=True, exist_ok=True)

    def write(self, object_id: bytes, obj: SerializedObject, segment: Path | None = None) -> Path:
        """Publish ``obj`` under ``object_id`` and return its path.

        ``segment``, if given, is a pre-faulted free file to fill instead of a new one.
        """
        _check_id(object_id)
        if segment is not None:
            path = self._write_segment(object_id, obj, Path(segment))
            if path is not None:
                return path
        size = obj.total_size
        shm_free = _free_bytes(self.shm_dir)
        if shm_free >= size:
            try:
                return self._write_new(self.shm_dir, object_id, obj)
            except OSError as exc:
                if exc.errno not in _NO_ROOM_ERRNOS:
                    raise
        else:
            spill_free = _free_bytes(self.spill_dir)
            if spill_free < size:
                # Refused before a byte is written: a half-written spill file
                # would only fill the disk for everyone else.
                raise self._too_large(size, shm_free, spill_free)
        return self._write_new(self.spill_dir, object_id, obj)

    def create_incoming(self, object_id: bytes, total_bytes: int, segment: Path | None = None) -> tuple[int, Path]:
        """A temporary file with all ``total_bytes`` reserved, for an object that arrives in pieces.

        Returns ``(fd, path)``: ``segment`` (a free file of at least
        ``total_bytes``, cut to size) when given and still free, else a new
        file in shared memory if it has room, else on the spill disk. Writes
        into a recycled segment skip allocating and zeroing every page (half
        the cost of a new file, measured on tmpfs). Nobody can map it by the
        object's id until ``publish_incoming``; the caller closes ``fd`` and
        unlinks ``path`` if it gives up.
        """
        _check_id(object_id)
        if total_bytes < HEADER_BYTES:
            raise ValueError(f"an object has at least {HEADER_BYTES} bytes, got {total_bytes}")
        if segment is not None:
            claimed = self._claim_segment(Path(segment), object_id, total_bytes)
            if claimed is not None:
                fd, tmp = claimed
                try:
                    os.ftruncate(fd, total_bytes)
                except BaseException:
                    os.close(fd)
                    _unlink_quietly(tmp)
                    raise
                return claimed
        free = {directory: _free_bytes(directory) for directory in (self.shm_dir, self.spill_dir)}
        for directory, free_bytes in free.items():
            if free_bytes < total_bytes:
                continue
            tmp = self._tmp_path(directory, object_id)
            fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, _FILE_MODE)
            try:
                # Reserved now, so a full filesystem fails before a byte travels, not half way.
                os.posix_fallocate(fd, 0, total_bytes)
            except OSError as exc:
                os.close(fd)
                _unlink_quietly(tmp)
                if exc.errno in _NO_ROOM_ERRNOS:
                    continue
                raise
            return fd, tmp
        raise self._too_large(total_bytes, free[self.shm_dir], free[self.spill_dir])

    def publish_incoming(self, tmp: Path, object_id: bytes) -> Path:
        """Check a complete file from ``create_incoming`` and give it the object's name; returns the path.

        The header must be whole (magic, version, CRC), name ``object_id`` and
        give the file's exact size. If a copy is already published, that one
        is kept (``publish_once``) and ``tmp`` is dropped.
        """
        _check_id(object_id)
        tmp = Path(tmp)
        fd = os.open(tmp, os.O_RDONLY | os.O_CLOEXEC)
        try:
            found_id, _kind, total_size = read_header(os.pread(fd, HEADER_BYTES, 0))
            file_bytes = os.fstat(fd).st_size
        finally:
            os.close(fd)
        if found_id != object_id or total_size != file_bytes:
            raise EmberInternalError(
                f"{tmp} holds object {found_id.hex()} of {total_size} bytes in a {file_bytes}-byte file; "
                f"expected object {object_id.hex()} filling it"
            )
        final = tmp.parent / object_id.hex()
        publish_once(tmp, final)
        return final

    def _too_large(self, size: int, shm_free: int, spill_free: int) -> ObjectTooLargeError:
        return ObjectTooLargeError(
            f"an object of {size:,} bytes fits neither in shared memory ({shm_free:,} bytes free in "
            f"{self.shm_dir}) nor on the spill disk ({spill_free:,} bytes free in {self.spill_dir}); "
            "an object is kept whole in one of them. Split it into smaller objects, or free space"
        )

    def open(self, object_id: bytes) -> memoryview | None:
        """A read-only view of exactly the object's bytes, or None if no file holds it.

        The view (and every slice or array made from it) keeps the mapping, and
        with it the shared lock, alive.
        """
        _check_id(object_id)
        name = object_id.hex()
        for directory in (self.shm_dir, self.spill_dir):
            view = _open_mapped(directory / name, object_id)
            if view is not None:
                return view
        return None

    def exists(self, object_id: bytes) -> bool:
        return self.path_of(object_id) is not None

    def path_of(self, object_id: bytes) -> Path | None:
        _check_id(object_id)
        name = object_id.hex()
        for directory in (self.shm_dir, self.spill_dir):
            path = directory / name
            if path.exists():
                return path
        return None

    def size_of(self, object_id: bytes) -> int | None:
        """The object's size in bytes (its file may be a larger recycled segment)."""
        _check_id(object_id)
        name = object_id.hex()
        for directory in (self.shm_dir, self.spill_dir):
            try:
                fd = os.open(directory / name, os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                continue
            try:
                found_id, _kind, total_size = read_header(os.pread(fd, HEADER_BYTES, 0))
            finally:
                os.close(fd)
            if found_id == object_id:
                return total_size
        return None

    def try_reclaim(self, object_id: bytes, free_dir: Path) -> Path | None:
        """Recycle the object's shm file into ``free_dir`` if no reader maps it, else just unlink it.

        Returns the recycled file's new path, or None if it was unlinked or absent.
        """
        _check_id(object_id)
        path = self.shm_dir / object_id.hex()
        try:
            fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                # A reader maps it: the pages stay theirs until they unmap.
                _unlink_quietly(path)
                return None
            found_id, _kind, _total_size = read_header(os.pread(fd, HEADER_BYTES, 0))
            if found_id != object_id or os.stat(path).st_ino != os.fstat(fd).st_ino:
                raise EmberInternalError(f"{path} changed while being reclaimed (a concurrent write of the same id?)")
            # Zeroed before the rename: a reader that opened the old name and is
            # waiting for our lock must find a mismatch, not this object.
            os.pwrite(fd, bytes(OBJECT_ID_BYTES_MAX), OBJECT_ID_OFFSET)
            target = Path(free_dir) / f"segment-{os.getpid()}-{next(_sequence)}-{os.urandom(4).hex()}"
            os.rename(path, target)
            return target
        finally:
            os.close(fd)  # releases the exclusive lock

    def delete(self, object_id: bytes) -> None:
        _check_id(object_id)
        name = object_id.hex()
        _unlink_quietly(self.shm_dir / name)
        _unlink_quietly(self.spill_dir / name)

    def spill(self, object_id: bytes) -> Path | None:
        """Move the object from shm to the spill dir; readers that map it keep their mapping."""
        _check_id(object_id)
        shm_path = self.shm_dir / object_id.hex()
        view = _open_mapped(shm_path, object_id)
        if view is None:
            return None
        try:
            tmp = self._tmp_path(self.spill_dir, object_id)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, _FILE_MODE)
            try:
                for start in range(0, len(view), _COPY_CHUNK_BYTES):
                    _pwritev_all(fd, [view[start : start + _COPY_CHUNK_BYTES]], start)
                os.close(fd)
                final = self.spill_dir / object_id.hex()
                os.rename(tmp, final)
            except BaseException:
                _close_quietly(fd)
                _unlink_quietly(tmp)
                raise
        finally:
            view.release()
        _unlink_quietly(shm_path)
        return final

    def clear(self) -> None:
        """Remove every object file (and leftover temporary file) in both directories."""
        for directory in (self.shm_dir, self.spill_dir):
            with os.scandir(directory) as entries:
                for entry in entries:
                    if entry.is_file(follow_symlinks=False) and (
                        entry.name.startswith(_TMP_PREFIX) or _is_object_name(entry.name)
                    ):
                        _unlink_quietly(Path(entry.path))

    def _write_new(self, directory: Path, object_id: bytes, obj: SerializedObject) -> Path:
        tmp = self._tmp_path(directory, object_id)
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, _FILE_MODE)
        try:
            if obj.writes_in_place:
                # Reserve every page now: a full filesystem must fail here, not SIGBUS in the copy.
                os.posix_fallocate(fd, 0, obj.total_size)
            return _fill_and_publish(fd, tmp, directory, object_id, obj)
        except BaseException:
            _unlink_quietly(tmp)
            raise
        finally:
            os.close(fd)

    def _write_segment(self, object_id: bytes, obj: SerializedObject, segment: Path) -> Path | None:
        claimed = self._claim_segment(segment, object_id, obj.total_size)
        if claimed is None:
            return None
        fd, tmp = claimed
        try:
            return _fill_and_publish(fd, tmp, self.shm_dir, object_id, obj)
        except BaseException:
            _unlink_quietly(tmp)
            raise
        finally:
            os.close(fd)

    def _claim_segment(self, segment: Path, object_id: bytes, size: int) -> tuple[int, Path] | None:
        """Take the free file ``segment`` for ``object_id``: ``(fd, temporary path)``, the fd holding
        the exclusive lock; None if another writer took it first or a stale reader still maps it."""
        try:
            segment_bytes = segment.stat().st_size
        except FileNotFoundError:
            return None  # taken by another writer, or cleared by a restarted store
        if segment_bytes < size:
            raise ValueError(f"segment {segment} has {segment_bytes} bytes, the object needs {size}")
        tmp = self._tmp_path(self.shm_dir, object_id)
        try:
            os.rename(segment, tmp)  # claims it: a second writer's rename fails
        except FileNotFoundError:
            return None
        fd = os.open(tmp, os.O_RDWR | os.O_CLOEXEC)
        try:
            if not _lock(fd, fcntl.LOCK_EX, _SEGMENT_LOCK_WAIT_S):
                _unlink_quietly(tmp)  # someone still maps it; let their mapping keep the pages
                os.close(fd)
                return None
        except BaseException:
            os.close(fd)
            _unlink_quietly(tmp)
            raise
        return fd, tmp

    @staticmethod
    def _tmp_path(directory: Path, object_id: bytes) -> Path:
        # The sequence number keeps two threads of one process apart.
        return directory / f"{_TMP_PREFIX}{object_id.hex()}-{os.getpid()}-{next(_sequence)}"


def prefault_segment(path: Path, size: int) -> None:
    """Create a ``size``-byte file whose pages are allocated and resident, ready for ``write(segment=)``."""
    if size <= 0:
        raise ValueError(f"segment size must be positive, got {size}")
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, _FILE_MODE)
    try:
        try:
            os.posix_fallocate(fd, 0, size)  # on tmpfs this allocates and zeroes every page
        except OSError as exc:
            if exc.errno != errno.EOPNOTSUPP:
                raise
            zeros = bytes(min(size, _PREFAULT_CHUNK_BYTES))
            for start in range(0, size, len(zeros)):
                _pwritev_all(fd, [zeros[: min(len(zeros), size - start)]], start)
    except BaseException:
        _unlink_quietly(Path(path))
        raise
    finally:
        os.close(fd)


def _free_bytes(directory: Path) -> int:
    """Bytes an unprivileged writer may still put in ``directory``'s filesystem."""
    stats = os.statvfs(directory)
    return stats.f_bavail * stats.f_frsize


def _fill_and_publish(fd: int, tmp: Path, directory: Path, object_id: bytes, obj: SerializedObject) -> Path:
    """Write the object into ``tmp`` and give it its final name: readers see all of it or nothing."""
    _fill(fd, obj, object_id)
    final = directory / object_id.hex()
    publish_once(tmp, final)
    return final


def publish_once(tmp: Path, final: Path) -> bool:
    """Give the complete file ``tmp`` the name ``final`` unless a copy is already there.

    The first copy of an object id wins and later ones are dropped: a late
    attempt, or two processes rebuilding one lost object, can never show
    two readers two values. Returns whether this copy was the one kept.
    """
    try:
        os.link(tmp, final)
        return True
    except FileExistsError:
        return False
    finally:
        _unlink_quietly(tmp)


def _fill(fd: int, obj: SerializedObject, object_id: bytes) -> None:
    if obj.writes_in_place:
        with mmap.mmap(fd, obj.total_size, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ | mmap.PROT_WRITE) as mapping:
            view = memoryview(mapping)
            try:
                write_into(obj, view, object_id)
            finally:
                view.release()
        return
    pieces = [piece for piece in layout_pieces(obj, object_id) if len(piece)]
    position = 0
    for start in range(0, len(pieces), _IOV_MAX):
        batch = pieces[start : start + _IOV_MAX]
        _pwritev_all(fd, batch, position)
        position += sum(len(piece) for piece in batch)


def _pwritev_all(fd: int, pieces: list[bytes | memoryview], offset: int) -> None:
    """Write ``pieces`` consecutively at ``offset``, resuming after short writes (Linux caps one at ~2 GiB)."""
    views = [memoryview(piece) for piece in pieces]
    index = 0
    while index < len(views):
        written = os.pwritev(fd, views[index:], offset)
        if written <= 0:
            raise OSError(errno.EIO, f"pwritev wrote {written} bytes")
        offset += written
        while index < len(views) and written >= len(views[index]):
            written -= len(views[index])
            index += 1
        if written:
            views[index] = views[index][written:]


def _open_mapped(path: Path, object_id: bytes) -> memoryview | None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        if not _lock(fd, fcntl.LOCK_SH, _READER_LOCK_WAIT_S):
            raise EmberInternalError(f"{path} stayed exclusively locked for {_READER_LOCK_WAIT_S} s")
        file_bytes = os.fstat(fd).st_size
        if file_bytes < HEADER_BYTES:
            raise EmberInternalError(f"object file {path} has {file_bytes} bytes, less than a header")
        # The mapping dups fd, so the shared lock lives exactly as long as it.
        mapping = mmap.mmap(fd, 0, access=mmap.ACCESS_READ)
    finally:
        os.close(fd)
    view = memoryview(mapping)
    found_id, _kind, total_size = read_header(view)
    if found_id != object_id:
        view.release()
        mapping.close()  # recycled under us: drop the lock now so its new writer need not wait
        return None
    if total_size > file_bytes:
        raise EmberInternalError(f"object file {path} has {file_bytes} bytes, its header says {total_size}")
    whole = view[:total_size]
    view.release()
    return whole


def _lock(fd: int, operation: int, wait_s: float) -> bool:
    """Take ``flock(operation)``, polling up to ``wait_s``; False if it stayed unavailable."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            fcntl.flock(fd, operation | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(_LOCK_POLL_S)


def _check_id(object_id: bytes) -> None:
    if not isinstance(object_id, bytes) or not 0 < len(object_id) <= OBJECT_ID_BYTES_MAX:
        raise ValueError(f"object ids are 1 to {OBJECT_ID_BYTES_MAX} bytes, got {object_id!r}")


def _is_object_name(name: str) -> bool:
    if not 0 < len(name) <= 2 * OBJECT_ID_BYTES_MAX or len(name) % 2:
        return False
    return all(c in "0123456789abcdef" for c in name)


def _unlink_quietly(path: Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _close_quietly(fd: int) -> None:
    try:
        os.close(fd)
    except OSError:
        pass


def publish_layout_bytes(directory: Path, oid: bytes, data: bytes) -> None:
    """Publish an inline object (already in store layout) as a store file named ``oid``."""
    laid_out = with_object_id(data, oid)  # raises for bytes that are not an object's layout, before any file
    tmp = directory / f".pub-{oid.hex()}-{os.getpid()}-{threading.get_ident()}"
    with open(tmp, "wb") as f:
        f.write(laid_out)
    publish_once(tmp, directory / oid.hex())
