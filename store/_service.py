"""The node's object store process: directory, wake-ups, memory pressure.

Objects live in files on shared memory that writers create and readers map
directly; this process is not on the data path. It records what is sealed,
wakes processes waiting for an object, frees what owners release (recycling
the memory as pre-faulted segments when nobody maps it), and spills the
oldest objects to disk when shared memory passes its budget.

When it dies the node's objects are considered lost: a restarted store
starts empty.

Given ``--transfer-bind HOST:PORT`` it also serves its objects to other
nodes' stores (``_transfer``) and writes the address it bound to
``transfer_address_path(session)`` before it says it is ready; without the
option nothing listens beyond the session's Unix socket. A process of the
node that needs an object another node holds asks for it (``Op.PULL``); the
store fetches it (``_fetch``) and seals it here.

It must never unpickle object contents.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ember.chaos import _agent
from ember.lineage._states import ProcessKind
from ember.scheduler import _messages
from ember.scheduler._listener import Listener
from ember.scheduler._protocol import Connection, Op, Outbox
from ember.scheduler._session import Session, open_session
from ember.scheduler import _procutil
from ember.store._segments import ObjectFiles, prefault_segment

if TYPE_CHECKING:
    from ember.store._transfer import TransferServer

log = logging.getLogger("ember.store")

FREE_SEGMENTS_MAX = 8
SEGMENTS_READY = 1  # pre-faulted segments kept ready for the most recent large size
SEGMENT_POOL_BYTES_MAX = 2 << 30


class Store:
    def __init__(self, session: Session, capacity_bytes: int) -> None:
        self.session = session
        self.capacity_bytes = capacity_bytes
        self.files = ObjectFiles(session.shm_dir, session.spill_dir)
        self._lock = threading.Lock()
        self._objects: OrderedDict[bytes, int] = OrderedDict()  # seal order, for spilling
        self._in_shm_bytes = 0
        self._spilled: set[bytes] = set()
        self._waiters: dict[bytes, set[Connection]] = {}
        self._free_segments: list[tuple[int, Path]] = []  # (size, path)
        self._outbox = Outbox()
        self._wanted_segment = 0
        self._refill = threading.Event()
        self.stats = {"sealed": 0, "freed": 0, "spilled": 0, "recycled": 0}
        self.transfer: TransferServer | None = None
        self._fetcher: Any = None  # store._fetch.Fetcher, made on the first pull from another node
        self.files.clear()
        self.listener = Listener(
            session.store_socket, session.token(), lambda conn: None, self._handle, self._on_close,
            name="store", batch_end=self._flush_dirty,
        )

    def start(self) -> None:
        self.listener.start()
        threading.Thread(target=self._segment_filler, name="ember-store-prefault", daemon=True).start()

    def _flush_dirty(self) -> None:
        self._outbox.flush()

    def _on_close(self, conn: Connection) -> None:
        with self._lock:
            for waiters in self._waiters.values():
                waiters.discard(conn)

    def _handle(self, conn: Connection, msg: tuple) -> None:
        problem = _messages.problem(msg, _messages.STORE_OPS)
        if problem is None and msg[0] == Op.SEALED:
            problem = self._seal_problem(msg[1], msg[2])
        elif problem is None and msg[0] == Op.ALLOC_SEGMENT:
            if msg[2] < 0:
                problem = f"a segment of {msg[2]} bytes"
            elif msg[2] > self.capacity_bytes:
                # An object larger than the store: it goes to the spill disk. No segment,
                # and none prepared (the filler would prefault more than the store holds).
                conn.reply(msg[1], None)
                return
        if problem is not None:
            _messages.refuse(conn, msg, problem, "store")
            return
        op = msg[0]
        with self._lock:
            if op == Op.SEALED:
                self._sealed(msg[1], msg[2])
            elif op == Op.SUBSCRIBE:
                self._subscribe(conn, msg[1])
            elif op == Op.FREE:
                for oid in msg[1]:
                    self._free(oid)
            elif op == Op.ALLOC_SEGMENT:
                conn.reply(msg[1], self._alloc_segment(msg[2]))
            elif op == Op.STORE_STATS:
                conn.reply(msg[1], self.statistics())
            elif op == Op.PULL:
                self._pull(conn, msg[1], msg[2])

    def _seal_problem(self, oid: bytes, size: int) -> str | None:
        # The writer publishes the file before it says so: a seal with no file
        # (or another size) is a bug or junk, and would corrupt the accounting
        # that decides what to spill.
        found = self.files.size_of(oid)
        if found is None:
            return f"a seal of object {oid.hex()}, which has no file in this store"
        if found != size:
            return f"a seal of object {oid.hex()} as {size} bytes; its file holds {found}"
        return None

    def _sealed(self, oid: bytes, size: int) -> None:
        if oid not in self._objects:
            self._objects[oid] = size
            self._in_shm_bytes += size
            self.stats["sealed"] += 1
        for conn in self._waiters.pop(oid, ()):
            self._outbox.send(conn, (Op.OBJECT_READY, oid))
        if self._in_shm_bytes > self.capacity_bytes:
            self._spill_until_under()

    def _subscribe(self, conn: Connection, oid: bytes) -> None:
        if oid in self._objects or self.files.exists(oid):
            conn.queue((Op.OBJECT_READY, oid))
            return
        self._waiters.setdefault(oid, set()).add(conn)

    def _pull(self, conn: Connection, oid: bytes, relay_endpoints: list) -> None:
        """Fetch ``oid`` from another node for ``conn``, which is told when it is ready (or why not)."""
        self._subscribe(conn, oid)
        if oid not in self._waiters:
            return  # here already
        if self._fetcher is None:
            from ember.store._fetch import Fetcher

            self._fetcher = Fetcher(self.session, self.files, self._fetched, self._fetch_failed, self._segment_for_pull)
        self._fetcher.request(oid, relay_endpoints)

    def _segment_for_pull(self, size: int) -> Path | None:
        """A recycled segment for an object arriving from another node (called on the fetch thread).
        None prepares none: prefaulting one while the pull writes would slow both."""
        if size > self.capacity_bytes:
            return None
        with self._lock:
            path = self._alloc_segment(size, prepare=False)
        return Path(path) if path is not None else None

    def _fetched(self, oid: bytes, size: int) -> None:
        with self._lock:
            self._sealed(oid, size)
        self._flush_dirty()

    def _fetch_failed(self, oid: bytes, why: str) -> None:
        log.warning("could not fetch object %s: %s", oid.hex(), why)
        with self._lock:
            for conn in self._waiters.pop(oid, ()):
                self._outbox.send(conn, (Op.PULL_FAILED, oid, why[:2000]))
        self._flush_dirty()

    def _free(self, oid: bytes) -> None:
        size = self._objects.pop(oid, None)
        if size is None:
            self.files.delete(oid)
            return
        self.stats["freed"] += 1
        if oid in self._spilled:
            self._spilled.discard(oid)
            self.files.delete(oid)
            return
        self._in_shm_bytes -= size
        pooled = sum(s for s, _ in self._free_segments)
        if size >= (8 << 20) and len(self._free_segments) < FREE_SEGMENTS_MAX and pooled + size <= SEGMENT_POOL_BYTES_MAX:
            path = self.files.try_reclaim(oid, self.session.free_dir)
            if path is not None:
                self._free_segments.append((size, path))
                self.stats["recycled"] += 1
                return
        self.files.delete(oid)

    def _alloc_segment(self, size: int, prepare: bool = True) -> str | None:
        best = None
        for i, (seg_size, _) in enumerate(self._free_segments):
            if seg_size >= size and seg_size <= size * 2 and (best is None or seg_size < self._free_segments[best][0]):
                best = i
        if best is None:
            # Nothing fits: prepare one, so the next put of this size writes
            # into pre-faulted memory. Only on a miss: freed objects come back
            # as segments, and prefaulting while a put copies slows both.
            if prepare:
                self._wanted_segment = size
                self._refill.set()
            return None
        _, path = self._free_segments.pop(best)
        return str(path)

    def _segment_filler(self) -> None:
        while True:
            self._refill.wait()
            self._refill.clear()
            while True:
                with self._lock:
                    size = self._wanted_segment
                    pooled = sum(s for s, _ in self._free_segments)
                    ready = sum(1 for s, _ in self._free_segments if size <= s <= 2 * size)
                    if (size <= 0 or ready >= SEGMENTS_READY or pooled + size > SEGMENT_POOL_BYTES_MAX
                            or self._in_shm_bytes + pooled + size > self.capacity_bytes):
                        break
                path = self.session.free_dir / f"seg-{time.monotonic_ns()}"
                try:
                    prefault_segment(path, size)
                except OSError as exc:
                    log.warning("could not prefault a %d-byte segment: %s", size, exc)
                    break
                with self._lock:
                    self._free_segments.append((size, path))

    def _spill_until_under(self) -> None:
        for oid, size in list(self._objects.items()):
            if self._in_shm_bytes <= self.capacity_bytes * 0.8:
                return
            if oid in self._spilled:
                continue
            if self.files.spill(oid) is not None:
                self._spilled.add(oid)
                self._in_shm_bytes -= size
                self.stats["spilled"] += 1

    def statistics(self) -> dict:
        return {
            **self.stats,
            "objects": len(self._objects),
            "shm_bytes": self._in_shm_bytes,
            "spilled_objects": len(self._spilled),
            "capacity_bytes": self.capacity_bytes,
            "free_segments": len(self._free_segments),
            "transfer_address": None if self.transfer is None else self.transfer.address,
        }


def transfer_address_path(session: Session) -> Path:
    """The file in which a store started with ``--transfer-bind`` names the address it serves on."""
    return session.sockets / "store.transfer"


def _serve_transfers(store: Store, bind: str) -> None:
    # Imported here: a store that serves no transfers does not load gRPC.
    from ember.store._transfer import TransferServer

    store.transfer = TransferServer(store.files, store.session.token(), bind)
    path = transfer_address_path(store.session)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(store.transfer.address)
    os.replace(tmp, path)  # whole, for whoever reads it the moment the store is ready


def _bind_address(text: str) -> str:
    from ember.store._transfer import parse_bind_address

    try:
        parse_bind_address(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="ember-store")
    parser.add_argument("session")
    parser.add_argument("--capacity-bytes", type=int, required=True)
    parser.add_argument("--restart", action="store_true",
                        help="replace a store that died: start empty, its objects are lost")
    parser.add_argument("--transfer-bind", metavar="HOST:PORT", type=_bind_address,
                        help="serve this store's objects to other nodes' stores at HOST:PORT (gRPC, cluster "
                             "token required); port 0 picks a free one, HOST defaults to 127.0.0.1")
    args = parser.parse_args(argv)
    _procutil.die_with_parent()
    _procutil.setup_logging(args.session, ProcessKind.STORE)
    session = open_session(args.session)
    store = Store(session, args.capacity_bytes)
    if args.restart:
        # The objects died with the store that held them (as they would with
        # its memory); owners rebuild what is needed from lineage.
        store.files.clear()
        for leftover in session.free_dir.glob("seg-*"):
            leftover.unlink(missing_ok=True)
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    if args.transfer_bind is not None:
        # Chunks of 1 MiB stream through this process in both directions (limits: see _procutil).
        _procutil.keep_freed_buffers(mmap_threshold_bytes=4 << 20, trim_threshold_bytes=32 << 20)
        _serve_transfers(store, args.transfer_bind)
    store.start()
    _agent.start(ProcessKind.STORE)
    _procutil.announce_ready(session.sockets / "store.ready")
    threading.Event().wait()


if __name__ == "__main__":
    main(sys.argv[1:])
