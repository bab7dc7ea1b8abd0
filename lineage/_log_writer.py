"""Group commit of lineage records: many rows, one transaction every few milliseconds.

Callers append rows (a task spec, an attempt, an object creation) and get a
sequence number back at once; a writer thread copies everything appended
since its last commit into PostgreSQL with COPY, inside one transaction, and
then advances ``committed_seq``. A caller that must not let a value be seen
before its lineage is durable waits for its sequence number
(``wait_committed``): that is invariant 1, "durable before visible".

When PostgreSQL goes away, rows stay queued (up to ``rows_max``; appenders
then wait) and the writer retries with backoff; ``on_outage`` is told once
an outage outlasts ``outage_alert_s``. Nothing committed is ever rewritten.

It must never commit per row, and never drop a row it has acknowledged with
a sequence number.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import psycopg

log = logging.getLogger("ember.lineage")

FLUSH_INTERVAL_S = 0.002
LAZY_DELAY_S = 0.05
COPY_ROWS_MIN = 32  # below this, pipelined INSERTs beat COPY's extra round trips
ROWS_MAX = 200_000
BACKOFF_INITIAL_S = 0.05
BACKOFF_MAX_S = 2.0
OUTAGE_ALERT_S = 30.0


class LogWriter:
    """One connection, one thread, one transaction per batch."""

    def __init__(
        self,
        conninfo: str,
        columns: dict[str, Sequence[str]],
        on_outage: Callable[[float, BaseException], None] | None = None,
        on_commit: Callable[[int], None] | None = None,
        idempotent_tables: frozenset[str] = frozenset(),
        flush_interval_s: float = FLUSH_INTERVAL_S,
        rows_max: int = ROWS_MAX,
        outage_alert_s: float = OUTAGE_ALERT_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._conninfo = conninfo
        self._columns = {table: tuple(cols) for table, cols in columns.items()}
        self._on_outage = on_outage
        self._on_commit = on_commit
        # Rows of these tables may be written again by design (a function
        # registered by every process): they skip what exists, never COPY.
        self._idempotent = idempotent_tables
        self._flush_interval_s = flush_interval_s
        self._rows_max = rows_max
        self._outage_alert_s = outage_alert_s
        self._clock = clock
        self._cv = threading.Condition()
        self._pending: list[tuple[str, tuple]] = []
        self._appended_seq = 0
        self._urgent = False
        self.committed_seq = 0
        self.rows_written = 0
        self.batches_written = 0
        self._closing = False
        self._conn: psycopg.Connection | None = None
        self._thread = threading.Thread(target=self._run, name="ember-log-writer", daemon=True)
        self._thread.start()

    # -- callers ---------------------------------------------------------------------

    def append(self, table: str, row: tuple, urgent: bool = True) -> int:
        """Queue one row; returns the sequence number that ``wait_committed`` takes.

        Rows nobody waits for (``urgent=False``: attempts, object sizes) ride
        along with the next urgent batch, or leave after ``LAZY_DELAY_S``, so
        the writer is not in the middle of committing them when a spec that
        somebody waits for arrives.
        """
        if table not in self._columns:
            raise KeyError(f"unknown lineage table {table!r}")
        with self._cv:
            while len(self._pending) >= self._rows_max and not self._closing:
                self._cv.wait(1.0)  # PostgreSQL is behind or away: hold the producer back
            self._pending.append((table, row))
            self._appended_seq += 1
            if urgent:
                if not self._urgent:
                    self._urgent = True
                    self._cv.notify_all()
            elif len(self._pending) == 1:
                self._cv.notify_all()
            return self._appended_seq

    def wait_committed(self, seq: int, timeout_s: float | None = None) -> bool:
        """Block until row ``seq`` (and every row before it) is committed."""
        deadline = None if timeout_s is None else self._clock() + timeout_s
        with self._cv:
            if self.committed_seq < seq and not self._urgent:
                self._urgent = True  # somebody waits: lazy rows leave now
                self._cv.notify_all()
            while self.committed_seq < seq:
                remaining = None if deadline is None else deadline - self._clock()
                if remaining is not None and remaining <= 0:
                    return False
                self._cv.wait(remaining if remaining is not None else 1.0)
            return True

    @property
    def appended_seq(self) -> int:
        return self._appended_seq

    def flush(self, timeout_s: float | None = None) -> bool:
        with self._cv:
            seq = self._appended_seq
            if self._pending and not self._urgent:
                self._urgent = True
                self._cv.notify_all()
        return self.wait_committed(seq, timeout_s)

    def close(self, timeout_s: float = 10.0) -> None:
        self.flush(timeout_s)
        with self._cv:
            self._closing = True
            self._cv.notify_all()
        self._thread.join(timeout_s)
        if self._conn is not None:
            self._conn.close()

    def statistics(self) -> dict[str, Any]:
        with self._cv:
            return {
                "appended": self._appended_seq,
                "committed": self.committed_seq,
                "pending": len(self._pending),
                "rows_written": self.rows_written,
                "batches_written": self.batches_written,
            }

    # -- the writer thread ---------------------------------------------------------------

    def _run(self) -> None:
        backoff_s = BACKOFF_INITIAL_S
        outage_since: float | None = None
        alerted = False
        while True:
            with self._cv:
                quiet = not self._pending
                while not self._pending and not self._closing:
                    self._cv.wait()
                if not self._urgent and not self._closing:
                    # Only lazy rows: wait a while for company, or for an urgent row.
                    self._cv.wait(LAZY_DELAY_S)
                if not self._pending and self._closing:
                    return
            if not quiet:
                time.sleep(self._flush_interval_s)  # busy: let a batch gather
            with self._cv:
                batch, self._pending = self._pending, []
                self._urgent = False
                batch_seq = self._appended_seq
            try:
                self._write(batch)
            except psycopg.Error as exc:
                # Put the rows back in front, in order, and retry: acknowledged
                # rows are never dropped.
                with self._cv:
                    self._pending[:0] = batch
                now = self._clock()
                outage_since = outage_since if outage_since is not None else now
                if not alerted and now - outage_since >= self._outage_alert_s and self._on_outage:
                    alerted = True
                    self._on_outage(now - outage_since, exc)
                log.warning("lineage log write failed (retrying in %.2fs): %s", backoff_s, exc)
                self._drop_connection()
                if self._closing and now - outage_since > self._outage_alert_s:
                    return
                time.sleep(backoff_s)
                backoff_s = min(backoff_s * 2, BACKOFF_MAX_S)
                continue
            backoff_s = BACKOFF_INITIAL_S
            outage_since, alerted = None, False
            with self._cv:
                self.committed_seq = batch_seq
                self.rows_written += len(batch)
                self.batches_written += 1
                self._cv.notify_all()
            if self._on_commit is not None:
                self._on_commit(batch_seq)

    def _connection(self) -> psycopg.Connection:
        if self._conn is None or self._conn.closed:
            self._conn = psycopg.connect(self._conninfo, connect_timeout=5)
        return self._conn

    def _drop_connection(self) -> None:
        close_quietly(self._conn)
        self._conn = None

    def _write(self, batch: list[tuple[str, tuple]]) -> None:
        by_table: dict[str, list[tuple]] = {}
        for table, row in batch:
            by_table.setdefault(table, []).append(row)
        conn = self._connection()
        try:
            with conn.transaction():
                with conn.cursor() as cur:
                    for table, rows in by_table.items():
                        if table in self._idempotent:
                            self._insert_new(cur, table, rows)
                        elif len(rows) < COPY_ROWS_MIN:
                            self._insert(cur, table, rows)
                        else:
                            self._copy(cur, table, rows)
        except psycopg.errors.UniqueViolation:
            # A row logged twice (a retried attempt racing its first log):
            # write the batch again, skipping what is already there.
            with conn.transaction():
                with conn.cursor() as cur:
                    for table, rows in by_table.items():
                        self._insert_new(cur, table, rows)

    def _copy(self, cur: psycopg.Cursor, table: str, rows: list[tuple]) -> None:
        cols = ", ".join(self._columns[table])
        with cur.copy(f"COPY {table} ({cols}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)

    def _insert(self, cur: psycopg.Cursor, table: str, rows: list[tuple]) -> None:
        cols = self._columns[table]
        marks = ", ".join(["%s"] * len(cols))
        cur.executemany(f"INSERT INTO {table} ({', '.join(cols)}) VALUES ({marks})", rows)

    def _insert_new(self, cur: psycopg.Cursor, table: str, rows: list[tuple]) -> None:
        cols = self._columns[table]
        marks = ", ".join(["%s"] * len(cols))
        cur.executemany(
            f"INSERT INTO {table} ({', '.join(cols)}) VALUES ({marks}) ON CONFLICT DO NOTHING", rows
        )


def close_quietly(conn: psycopg.Connection | None) -> None:
    """Close a connection that may already be broken."""
    if conn is not None:
        try:
            conn.close()
        except psycopg.Error:
            pass
