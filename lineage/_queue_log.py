"""A node scheduler's queue, kept in PostgreSQL so that the scheduler that replaces it reads it back.

The scheduler records each task it holds (queued, or running on one of its
workers) as a row of ``scheduler_queue``, and deletes the row when the task
leaves it (done, failed, cancelled, handed to another node). When the
scheduler dies, the node starts another, which reads its node's rows back
(``ReplaySource.queue``): the specs come from the ``tasks`` rows their owners logged,
and the attempt each was on. Owners then confirm which of those they still
want; only what the log did not have travels again in full.

Rows go from a thread of their own, one statement per few milliseconds; a
task that comes and goes within one window costs the database nothing. The
table is UNLOGGED (no write-ahead log): it is the working state of live
processes, not history. PostgreSQL empties it only after a crash of its own,
and then owners resubmit everything, as they do for whatever the last window
had not written when the scheduler died.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterable
from typing import Any

import psycopg

from ember.lineage._binary_arrays import BinaryArray, EncodedDumper, encode_column
from ember.lineage._log_writer import BACKOFF_INITIAL_S, BACKOFF_MAX_S, LAZY_DELAY_S, close_quietly
from ember.lineage._pg_connect import CONNECT_OPTIONS

log = logging.getLogger("ember.lineage")

READ_WAIT_S = 10.0  # a restarted scheduler gives up reading its queue after this: owners resubmit in full

_DELETE = "DELETE FROM scheduler_queue WHERE node_id = %s AND task_id = ANY(%b::bytea[])"
_UPSERT = (
    "INSERT INTO scheduler_queue (node_id, scheduler_pid, task_id, attempt, owner, job_id) "
    "SELECT %s, %s, * FROM unnest(%b::bytea[], %b::integer[], %b::text[], %b::bytea[]) "
    "ON CONFLICT (node_id, task_id) DO UPDATE "
    "SET attempt = EXCLUDED.attempt, owner = EXCLUDED.owner, scheduler_pid = EXCLUDED.scheduler_pid"
)


class QueueLog:
    """Writes one scheduler's queue to ``scheduler_queue``; never blocks the scheduler on the database."""

    READ_WAIT_S = READ_WAIT_S

    def __init__(self, conninfo: str, node_id: str, interval_s: float = LAZY_DELAY_S,
                 pid: int | None = None) -> None:
        self._conninfo = conninfo
        self.node_id = node_id
        self.pid = os.getpid() if pid is None else pid
        self._interval_s = interval_s
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._upserts: dict[bytes, tuple[int, str, bytes]] = {}
        self._deletes: set[bytes] = set()
        self._stored: set[bytes] = set()  # task ids with a row, once what was taken out is written
        self._closing = False
        self.failed_writes = 0
        self._conn: Any = None
        self._thread = threading.Thread(target=self._run, name="ember-queue-log", daemon=True)

    @property
    def conninfo(self) -> str:
        return self._conninfo

    def start(self) -> None:
        self._thread.start()

    def adopt(self, task_ids: list[bytes]) -> None:
        """Rows a dead scheduler left: this one deletes them as their tasks leave."""
        with self._lock:
            self._stored.update(task_ids)

    def queued(self, task_id: bytes, attempt: int, owner: str, job_id: bytes) -> None:
        with self._lock:
            if self._deletes:
                self._deletes.discard(task_id)
            elif not self._upserts:
                self._wake.set()
            self._upserts[task_id] = (attempt, owner, job_id)

    def left(self, task_ids: Iterable[bytes]) -> None:
        """These tasks are no longer the scheduler's."""
        with self._lock:
            upserts, stored, deletes = self._upserts, self._stored, self._deletes
            if not upserts and not deletes:
                self._wake.set()
            for task_id in task_ids:
                upserts.pop(task_id, None)  # one that came and went within the window never reaches the table
                if task_id in stored:
                    deletes.add(task_id)

    def held(self) -> int:
        """Rows there are or will be (for tests and status)."""
        with self._lock:
            return len((self._stored - self._deletes) | self._upserts.keys())

    def close(self, drop: bool = False, timeout_s: float = 2.0) -> None:
        """Stop writing; ``drop``: the node stops for good, delete its rows (best effort)."""
        self._closing = True
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout_s)
        if drop:
            try:
                with psycopg.connect(self._conninfo, autocommit=True, connect_timeout=timeout_s, **CONNECT_OPTIONS) as conn:
                    conn.execute("DELETE FROM scheduler_queue WHERE node_id = %s", (self.node_id,))
            except psycopg.Error as exc:
                log.warning("could not delete the queue rows of node %s: %s", self.node_id, exc)
        close_quietly(self._conn)

    def _run(self) -> None:
        backoff_s = BACKOFF_INITIAL_S
        while not self._closing:
            self._wake.wait()
            time.sleep(self._interval_s)  # gathers a window's changes into one statement
            with self._lock:
                self._wake.clear()
                upserts, self._upserts = self._upserts, {}
                deletes, self._deletes = self._deletes, set()
                # As if written: a task leaving from now on must delete its row.
                self._stored.update(upserts)
                self._stored.difference_update(deletes)
            if not upserts and not deletes:
                continue
            try:
                self._write(upserts, deletes)
                backoff_s = BACKOFF_INITIAL_S
            except Exception as exc:
                self.failed_writes += 1
                if not isinstance(exc, psycopg.Error):
                    # Not the server: writing it again would fail again. A restart reads fewer rows.
                    log.exception("could not encode the scheduler's queue rows; %d changes dropped",
                                  len(upserts) + len(deletes))
                    continue
                log.warning("writing the scheduler's queue failed (retrying in %.2fs): %s", backoff_s, exc)
                close_quietly(self._conn)
                self._conn = None
                with self._lock:
                    # Put back what later changes did not supersede.
                    for task_id, row in upserts.items():
                        if task_id not in self._deletes and task_id not in self._upserts:
                            self._upserts[task_id] = row
                    for task_id in deletes:
                        if task_id in self._upserts:
                            self._stored.add(task_id)  # the row is still there: leaving again must delete it
                        else:
                            self._deletes.add(task_id)
                    self._wake.set()
                time.sleep(backoff_s)
                backoff_s = min(backoff_s * 2, BACKOFF_MAX_S)

    def _write(self, upserts: dict[bytes, tuple[int, str, bytes]], deletes: set[bytes]) -> None:
        if self._conn is None or self._conn.closed:
            self._conn = psycopg.connect(self._conninfo, autocommit=True, connect_timeout=5, **CONNECT_OPTIONS)
            self._conn.adapters.register_dumper(BinaryArray, EncodedDumper)
        # One statement, one round trip. The two sets are disjoint by construction
        # (a task that left and came back within the window is an upsert only).
        params: list = []
        parts = []
        if deletes:
            parts.append(_DELETE)
            params += [self.node_id, encode_column("bytea", list(deletes))]
        if upserts:
            ids = list(upserts)
            attempts, owners, jobs = zip(*upserts.values())
            parts.append(_UPSERT)
            params += [self.node_id, self.pid, encode_column("bytea", ids), encode_column("integer", attempts),
                       encode_column("text", owners), encode_column("bytea", jobs)]
        sql = f"WITH gone AS ({parts[0]}) {parts[1]}" if len(parts) == 2 else parts[0]
        self._conn.execute(sql, params, prepare=True)
