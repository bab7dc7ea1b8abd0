"""Content hashes of serialized objects: what a task's result was, in 17 bytes.

The lineage log records, for each task result, a hash of its serialized form,
so a replay long after the run can say whether it produced the same value.
The hash covers the object's kind and its whole layout after the fixed header
(buffer table, pickle stream, padding, out-of-band buffers): everything but
the object id, which differs between the run and the replay. Two equal values
hash alike when they pickle alike; a value whose pickle depends on the process
(a set of strings, ordered by the process's hash seed) may not.

A hash is a fingerprint for that comparison, not a seal against forgery: an
algorithm byte (``XXH3_128``), then XXH3's 128-bit digest, about 25 GB/s here
(SHA-256 ran at 1.4 GB/s, and hashing a 400 MB result took a core for 0.3 s,
while the result was being pulled to another node). Logs written before hold
16 bytes, SHA-256's first half, with no algorithm byte; ``value_hash`` can
still make one of those for a replay to compare (``like=``).

Cost policy (``docs/lineage.md``): a result that travels inline (up to
``INLINE_BYTES_MAX``, 100 KiB) is hashed by its worker before it is sent, about
0.4 us for a small value and 2-3 us at 100 KiB. A larger result, in the store, is
hashed by its worker after the result has been sent, on a thread of its own
(``LateHashes``), and logged a few milliseconds later; results above
``EMBER_RESULT_HASH_MAX_BYTES`` (default 1 GiB), or past the backlog bound, are
not hashed, and a replay says so rather than pretending.

This module must never hash on a task's critical path anything larger than an
inline object, and never block the thread that queues work for it.
"""

from __future__ import annotations

import hashlib
import logging
import queue
import threading
from collections.abc import Callable
from typing import Any

import xxhash

from ember import _settings
from ember.store._serialization import HEADER_BYTES, serialize, to_bytes

log = logging.getLogger("ember.store")

XXH3_128 = b"\x01"  # the algorithm byte that starts every hash made now
CONTENT_HASH_BYTES = 1 + 16
LEGACY_SHA256_BYTES = 16  # the hashes of older logs: SHA-256's first 16 bytes, no algorithm byte
_KIND_OFFSET = 6  # magic (4 bytes), format version (2), kind (1): see _serialization's header
LATE_HASH_MAX_BYTES_DEFAULT = _settings.RESULT_HASH_MAX_BYTES
LATE_HASH_BACKLOG_BYTES_MAX = 2 << 30  # queued but not yet hashed: past this, results go unhashed
LATE_HASH_QUEUE_MAX = 1024


def content_hash(layout: Any, like: bytes | None = None) -> bytes:
    """The hash of one object's layout (bytes, or a view of a store file).

    ``like``: a hash from the log; the new one is made with the same algorithm, so the two compare.
    """
    view = memoryview(layout)
    if like is not None and len(like) == LEGACY_SHA256_BYTES:
        digest = hashlib.sha256(view[_KIND_OFFSET:_KIND_OFFSET + 1])
        digest.update(view[HEADER_BYTES:])
        return digest.digest()[:LEGACY_SHA256_BYTES]
    hasher = xxhash.xxh3_128(view[_KIND_OFFSET:_KIND_OFFSET + 1])
    hasher.update(view[HEADER_BYTES:])  # xxhash lets go of the GIL while it hashes
    return XXH3_128 + hasher.digest()


def value_hash(value: Any, like: bytes | None = None) -> bytes:
    """The hash ``value`` would get as a task's result (serialized exactly as a worker does)."""
    return content_hash(to_bytes(serialize(value), b""), like)


def late_hash_max_bytes() -> int:
    """EMBER_RESULT_HASH_MAX_BYTES (read per store result, once it is written; ``ember.init`` checked it)."""
    return _settings.load().result_hash_max_bytes


class LateHashes:
    """Hashes results in the store on a thread of its own, then hands each to ``record(object_id, hash)``.

    ``open_object`` maps the object when it is queued, so the hash reads the
    bytes the task wrote even if the object is freed meanwhile. xxhash
    releases the GIL while it hashes, so the worker's main thread runs on.
    """

    def __init__(self, open_object: Callable[[bytes], memoryview | None],
                 record: Callable[[bytes, bytes], None]) -> None:
        self._open_object = open_object
        self._record = record
        self._queue: queue.Queue = queue.Queue(LATE_HASH_QUEUE_MAX)
        self._backlog_bytes = 0
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self.skipped = 0  # results left unhashed (too large, or the backlog was full)
        # Hashes handed to ``record``; the append and its count happen under
        # ``rows_lock``, so a reader of both sees a late row in each or in neither.
        self.rows_logged = 0
        self.rows_lock = threading.Lock()

    def schedule(self, object_id: bytes, size: int) -> bool:
        """Queue one store object for hashing; False (and counted) if the policy leaves it unhashed."""
        with self._lock:
            if size > late_hash_max_bytes() or self._backlog_bytes + size > LATE_HASH_BACKLOG_BYTES_MAX:
                self.skipped += 1
                return False
            view = self._open_object(object_id)
            if view is None:
                self.skipped += 1
                return False
            try:
                self._queue.put_nowait((object_id, view, size))
            except queue.Full:
                self.skipped += 1
                return False
            self._backlog_bytes += size
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="ember-result-hash", daemon=True)
                self._thread.start()
        return True

    def _run(self) -> None:
        while True:
            object_id, view, size = self._queue.get()
            digest = None
            try:
                digest = content_hash(view)
            except Exception:  # noqa: BLE001 - one object that cannot be hashed must not stop the thread
                log.exception("could not hash %s", object_id.hex())
                self.skipped += 1
            finally:
                del view  # unmaps the object once nothing else holds it
            with self._lock:
                self._backlog_bytes -= size
            if digest is None:
                continue
            try:
                with self.rows_lock:
                    self._record(object_id, digest)
                    self.rows_logged += 1
            except Exception:  # noqa: BLE001 - a hash not logged is a hash missing, never a task's failure
                log.exception("could not log the content hash of %s", object_id.hex())
