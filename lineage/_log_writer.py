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
import os
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import psycopg

log = logging.getLogger("ember.lineage")

FLUSH_INTERVAL_S = 0.002
# How long rows nobody waits for may sit before they are committed: the
# window in which an owner may have read a result whose lineage a SIGKILL
# would lose. EMBER_LOG_LAZY_S changes it (tests stretch it to make that
# window certain).
LAZY_DELAY_S = 0.01
BUSY_BATCH_ROWS = 64
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
        self._lazy_delay_s = float(os.environ.get("EMBER_LOG_LAZY_S", LAZY_DELAY_S))
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
        self._staged: set[str] = set()  # tables whose staging table the connection has
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
        return self.append_rows([(table, row)], urgent)

    def append_rows(self, rows: list[tuple[str, tuple]], urgent: bool = True) -> int:
        """Queue several rows at once (one lock round); returns the last one's sequence number."""
        for table, _ in rows:
            if table not in self._columns:
                raise KeyError(f"unknown lineage table {table!r}")
        with self._cv:
            while len(self._pending) >= self._rows_max and not self._closing:
                self._cv.wait(1.0)  # PostgreSQL is behind or away: hold the producer back
            was_empty = not self._pending
            self._pending.extend(rows)
            self._appended_seq += len(rows)
            # The writer sleeps either for any row (queue empty) or, holding
            # lazy rows, for an urgent one: wake it in both cases. ``_urgent``
            # may already be set with nothing queued (a waiter for a batch in
            # flight), so it alone does not say the writer is awake.
            if (urgent and not self._urgent) or was_empty:
                self._urgent = self._urgent or urgent
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

    def expedite(self) -> None:
        """Commit what is queued now rather than after ``LAZY_DELAY_S``, without waiting for it."""
        with self._cv:
            if self._pending and not self._urgent:
                self._urgent = True
                self._cv.notify_all()

    @property
    def appended_seq(self) -> int:
        return self._appended_seq

    def flush(self, timeout_s: float | None = None) -> bool:
        seq = self._appended_seq
        self.expedite()
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
        last_batch_rows = 0
        while True:
            with self._cv:
                # Under a steady stream, a short pause gathers a bigger batch
                # (fewer commits); a lone waiter (a synchronous get) never pays it.
                busy = last_batch_rows >= BUSY_BATCH_ROWS
                while not self._pending and not self._closing:
                    self._cv.wait()
                if not self._urgent and not self._closing:
                    # Only lazy rows: wait a while for company, or for an urgent row.
                    self._cv.wait(self._lazy_delay_s)
                if not self._pending and self._closing:
                    return
            if busy:
                time.sleep(self._flush_interval_s)
            with self._cv:
                batch, self._pending = self._pending, []
                self._urgent = False
                batch_seq = self._appended_seq
            last_batch_rows = len(batch)
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
            self._staged = set()
            # Autocommit with client-side binding: a small batch goes as one
            # "BEGIN; INSERT ...; COMMIT" message, one round trip to the server.
            self._conn = psycopg.connect(self._conninfo, connect_timeout=5, autocommit=True,
                                         cursor_factory=psycopg.ClientCursor)
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
            self._write_tables(conn, by_table, skip_existing=False)
        except psycopg.errors.UniqueViolation:
            # A row logged twice (a retried attempt racing its first log):
            # write the batch again, skipping what is already there.
            self._write_tables(conn, by_table, skip_existing=True)

    def _write_tables(self, conn: psycopg.Connection, by_table: dict[str, list[tuple]], skip_existing: bool) -> None:
        statements: list[str] = []
        params: list[Any] = []
        big = {}
        for table, rows in by_table.items():
            skip = skip_existing or table in self._idempotent
            if len(rows) >= COPY_ROWS_MIN:
                big[table] = (rows, skip)
                continue
            cols = self._columns[table]
            row_marks = "(" + ", ".join(["%s"] * len(cols)) + ")"
            statements.append(
                f"INSERT INTO {table} ({', '.join(cols)}) VALUES {', '.join([row_marks] * len(rows))}"
                + (" ON CONFLICT DO NOTHING" if skip else "")
            )
            for row in rows:
                params.extend(row)
        with conn.cursor() as cur:
            if not big:
                self._in_one_round_trip(conn, cur, statements, params)
                return
            with conn.transaction():
                for table, (rows, skip) in big.items():
                    self._copy(cur, table, rows, skip)
                if statements:
                    cur.execute("; ".join(statements), params)

    @staticmethod
    def _in_one_round_trip(conn: psycopg.Connection, cur: psycopg.Cursor, statements: list[str],
                           params: list[Any]) -> None:
        try:
            cur.execute("BEGIN; " + "; ".join(statements) + "; COMMIT", params)
        except psycopg.Error:
            if not conn.closed and conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
                conn.execute("ROLLBACK")  # the failed block is still open on the server
            raise

    def _copy(self, cur: psycopg.Cursor, table: str, rows: list[tuple], skip_existing: bool) -> None:
        cols = ", ".join(self._columns[table])
        # COPY cannot skip rows that exist: those go through a staging table
        # of this connection's, emptied at each commit.
        target = f"ember_stage_{table}" if skip_existing else table
        if skip_existing and table not in self._staged:
            cur.execute(f"CREATE TEMP TABLE IF NOT EXISTS {target} (LIKE {table} INCLUDING DEFAULTS) "
                        "ON COMMIT DELETE ROWS")
            self._staged.add(table)
        with cur.copy(f"COPY {target} ({cols}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)
        if skip_existing:
            cur.execute(f"INSERT INTO {table} ({cols}) SELECT {cols} FROM {target} ON CONFLICT DO NOTHING")


def close_quietly(conn: psycopg.Connection | None) -> None:
    """Close a connection that may already be broken."""
    if conn is not None:
        try:
            conn.close()
        except psycopg.Error:
            pass
