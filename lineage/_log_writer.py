"""Group commit of lineage records: many rows, one transaction every few milliseconds.

Callers append rows (a task spec, an attempt, an object creation) and get a
sequence number back at once; a writer thread copies everything appended
since its last commit into PostgreSQL, inside one transaction, and
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
import struct
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg

from ember import _settings
from ember.lineage._binary_arrays import BinaryArray, EncodedDumper, encode_column, supported
from ember.lineage._pg_connect import CONNECT_OPTIONS
from ember.lineage._schema_version import SchemaVersionError

log = logging.getLogger("ember.lineage")

FLUSH_INTERVAL_S = 0.002
# How long rows nobody waits for may sit before they are committed: the
# window in which an owner may have read a result whose lineage a SIGKILL
# would lose if nothing waited for them. EMBER_LOG_LAZY_S changes it (tests
# stretch it to show that the waits alone make lineage durable).
LAZY_DELAY_S = _settings.LOG_LAZY_S
BUSY_BATCH_ROWS = 64
# Below this, a table's rows join the batch's one INSERT statement, as binary
# arrays; from it, the table goes by COPY (measured alike from 200 rows up).
COPY_ROWS_MIN = 512
STATEMENTS_MAX = 64
ROWS_MAX = 200_000
BACKOFF_INITIAL_S = 0.05
BACKOFF_MAX_S = 2.0
OUTAGE_ALERT_S = 30.0


@dataclass(frozen=True)
class Target:
    """Where the rows of a logical table go: into ``table``, with ``conflict`` (an ``ON CONFLICT`` clause).

    Rows are keyed by their first column. A batch keeps the first row of
    each key (so an upsert never meets its own key twice in one statement),
    and drops the rows of ``replaces`` whose key a row of this table has:
    a later row that says everything the earlier one did, and more.
    """

    table: str
    conflict: str
    replaces: str | None = None


class LogWriter:
    """One connection, one thread, one transaction per batch."""

    def __init__(
        self,
        conninfo: str,
        columns: dict[str, Sequence[str]],
        on_outage: Callable[[float, BaseException], None] | None = None,
        on_commit: Callable[[int], None] | None = None,
        idempotent_tables: frozenset[str] = frozenset(),
        targets: Mapping[str, Target] | None = None,
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
        # Logical tables written into another table with a conflict clause of their own (never by COPY).
        self._targets = dict(targets or {})
        self._flush_interval_s = flush_interval_s
        settings = _settings.load()
        self._lazy_delay_s = settings.log_lazy_s
        self._sync_commit = settings.log_sync_commit
        self._rows_max = rows_max
        self._outage_alert_s = outage_alert_s
        self._clock = clock
        self._cv = threading.Condition()
        self._pending: list[tuple[str, tuple]] = []
        self._appended_seq = 0
        # The last row somebody waits for, or asked to commit now: up to it, rows leave at once; rows
        # after it (appended lazily) may wait LAZY_DELAY_S. A seq, not a flag: a waiter whose row is in
        # the batch in flight must not hurry the lazy rows appended meanwhile into a commit of their own.
        self._wanted_seq = 0
        self.committed_seq = 0
        self.rows_written = 0
        self.batches_written = 0
        self._closing = False
        # Why the writer thread stopped, if an error that trying again cannot mend stopped it (a bug, a
        # log whose tables differ from what this ember writes): waits then end at once, with it.
        self.failure: str | None = None
        self._conn: psycopg.Connection | None = None
        self._inserts: dict[tuple[str, bool], str] = {}  # (table, skip existing) -> this connection's INSERT
        self._types: dict[str, tuple[str, ...]] = {}  # table -> its columns' types, in ``columns``' order
        self._statements: dict[tuple, str] = {}  # the tables' (table, skip existing) keys -> one batch statement
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
            while len(self._pending) >= self._rows_max and not self._closing and self.failure is None:
                self._cv.wait(1.0)  # PostgreSQL is behind or away: hold the producer back
            was_empty = not self._pending
            self._pending.extend(rows)
            self._appended_seq += len(rows)
            # The writer sleeps either for any row (queue empty) or, holding
            # lazy rows, for a wanted one: wake it in both cases.
            if urgent:
                self._want_locked(self._appended_seq)
            elif was_empty:
                self._cv.notify_all()
            return self._appended_seq

    def _want_locked(self, seq: int) -> None:
        if seq > self._wanted_seq:
            self._wanted_seq = seq
            self._cv.notify_all()

    def wait_committed(self, seq: int, timeout_s: float | None = None) -> bool:
        """Block until row ``seq`` (and every row before it) is committed; False if ``timeout_s`` passed first.

        Whoever waits makes every queued row leave at once: one commit covers
        them all, so many waiters pay about one commit between them.
        """
        deadline = None if timeout_s is None else self._clock() + timeout_s
        with self._cv:
            if self.committed_seq < seq:
                self._want_locked(seq)  # somebody waits: the rows up to it leave now
            while self.committed_seq < seq:
                if self.failure is not None:
                    return False
                remaining = None if deadline is None else deadline - self._clock()
                if remaining is not None and remaining <= 0:
                    return False
                self._cv.wait(remaining if remaining is not None else 1.0)
            return True

    def expedite(self) -> None:
        """Commit what is queued now rather than after ``LAZY_DELAY_S``, without waiting for it."""
        with self._cv:
            if self._pending:
                self._want_locked(self._appended_seq)

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
        try:
            self._write_batches()
        except Exception as exc:  # noqa: BLE001 - not a database error: the same batch would fail again
            # A log made by another ember is the user's to mend, and its error says how; anything else is a bug.
            log.error("the lineage log writer stopped: %s", exc, exc_info=not isinstance(exc, SchemaVersionError))
            with self._cv:
                self.failure = f"{type(exc).__name__}: {exc}"
                self._cv.notify_all()
        finally:
            # Closed here too: a writer still retrying when close() stopped waiting for it may have
            # connected again after close() looked, and that connection must not outlive it.
            self._drop_connection()

    def _write_batches(self) -> None:
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
                if self._wanted_seq <= self.committed_seq and not self._closing:
                    # Only lazy rows: wait a while for company, or for a wanted row.
                    self._cv.wait(self._lazy_delay_s)
                if not self._pending and self._closing:
                    return
            if busy:
                time.sleep(self._flush_interval_s)
            with self._cv:
                batch, self._pending = self._pending, []
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
            # Keepalives and tcp_user_timeout (_pg_connect): a cut fails a write within seconds, and the
            # writer reconnects with backoff, using a healed network within BACKOFF_MAX_S.
            self._conn = psycopg.connect(self._conninfo, connect_timeout=5, autocommit=True, **CONNECT_OPTIONS)
            if not self._sync_commit:
                self._conn.execute("SET synchronous_commit = off")  # EMBER_LOG_SYNC_COMMIT=off
            self._conn.adapters.register_dumper(BinaryArray, EncodedDumper)
            self._inserts = {}
            self._types = {}
            self._statements = {}
        return self._conn

    def _drop_connection(self) -> None:
        close_quietly(self._conn)
        self._conn = None

    def _write(self, batch: list[tuple[str, tuple]]) -> None:
        by_table: dict[str, list[tuple]] = {}
        for table, row in batch:
            by_table.setdefault(table, []).append(row)
        if self._targets:
            self._merge_targeted(by_table)
        conn = self._connection()
        try:
            self._write_tables(conn, by_table, skip_existing=False)
        except psycopg.errors.UniqueViolation:
            # A row logged twice (a retried attempt racing its first log):
            # write the batch again, skipping what is already there.
            self._write_tables(conn, by_table, skip_existing=True)

    def _merge_targeted(self, by_table: dict[str, list[tuple]]) -> None:
        """Keep one row per key of each targeted table, and drop the rows a later one replaces."""
        for table, target in self._targets.items():
            rows = by_table.get(table)
            if not rows:
                continue
            first: dict[Any, tuple] = {}
            for row in rows:
                first.setdefault(row[0], row)
            by_table[table] = list(first.values())
            replaced = by_table.get(target.replaces) if target.replaces else None
            if replaced:
                kept = [row for row in replaced if row[0] not in first]
                if kept:
                    by_table[target.replaces] = kept  # type: ignore[index]
                else:
                    del by_table[target.replaces]  # type: ignore[arg-type]

    def _write_tables(self, conn: psycopg.Connection, by_table: dict[str, list[tuple]], skip_existing: bool) -> None:
        copies = {}
        inserts: list[tuple[tuple[str, bool], list]] = []
        for table, rows in by_table.items():
            skip = skip_existing or table in self._idempotent
            if len(rows) >= COPY_ROWS_MIN and not skip and table not in self._targets:
                copies[table] = rows
            else:
                # The table's part of the batch's one statement: its columns go
                # as binary arrays, so psycopg quotes nothing in Python and the
                # server plans it once per connection.
                self._insert_sql(conn, table, skip)
                inserts.append(((table, skip), self._arrays(table, rows)))
        try:
            if copies:
                with conn.transaction(), conn.cursor() as cur:
                    for table, rows in copies.items():
                        with cur.copy(f"COPY {table} ({', '.join(self._columns[table])}) FROM STDIN") as copy:
                            for row in rows:
                                copy.write_row(row)
                    if inserts:
                        cur.execute(*self._one_statement(inserts), prepare=True)
                return
            # Autocommit: the one statement is its own transaction, committed
            # (synchronous_commit on) before execute returns.
            conn.execute(*self._one_statement(inserts), prepare=True)
        except psycopg.Error:
            self._end_failed_transaction(conn)
            raise

    def _one_statement(self, inserts: list[tuple[tuple[str, bool], list]]) -> tuple[str, list]:
        """The tables' INSERTs as one statement, each but the last in a WITH clause, and its parameters.

        One statement is one round trip and one wait for the server, where a
        pipeline of BEGIN, an INSERT per table and COMMIT cost the writer
        about 0.2 ms of CPU per batch in psycopg's pipeline machinery.
        PostgreSQL runs every data-modifying WITH clause to completion, in
        the statement's one transaction: all the batch's rows commit, or none.
        """
        keys = tuple(key for key, _ in inserts)
        sql = self._statements.get(keys)
        if sql is None:
            *first, last = [self._inserts[key] for key in keys]
            sql = (f"WITH {', '.join(f'w{i} AS ({part})' for i, part in enumerate(first))} {last}"
                   if first else last)
            if len(self._statements) >= STATEMENTS_MAX:
                self._statements.clear()  # bounded: tables come in few combinations
            self._statements[keys] = sql
        return sql, [column for _, columns in inserts for column in columns]

    @staticmethod
    def _end_failed_transaction(conn: psycopg.Connection) -> None:
        """Roll back the failed block still open on the server; a broken connection is closed."""
        if conn.closed:
            return
        try:
            if conn.info.pipeline_status != psycopg.pq.PipelineStatus.OFF:
                conn.close()  # it cannot take a ROLLBACK: the writer reconnects
            elif conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
                conn.execute("ROLLBACK")
        except psycopg.Error:
            conn.close()

    def _arrays(self, table: str, rows: list[tuple]) -> list:
        """The rows' columns as binary arrays, encoded here (``_binary_arrays``); psycopg's own
        encoding for a column of a type it does not cover, or of values it does not expect."""
        columns = []
        for type_name, column in zip(self._types[table], zip(*rows)):
            encoded = None
            if supported(type_name):
                try:
                    encoded = encode_column(type_name, column)
                except (TypeError, AttributeError, struct.error):
                    encoded = None  # e.g. a value of another Python type: psycopg adapts it (or says why not)
            columns.append(encoded if encoded is not None else list(column))
        return columns

    def _insert_sql(self, conn: psycopg.Connection, table: str, skip_existing: bool) -> str:
        key = (table, skip_existing)
        sql = self._inserts.get(key)
        if sql is None:
            cols = self._columns[table]
            target = self._targets.get(table)
            into = target.table if target is not None else table
            types = dict(conn.execute(
                "SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute "
                "WHERE attrelid = %s::regclass AND attnum > 0 AND NOT attisdropped", (into,)).fetchall())
            missing = [c for c in cols if c not in types]
            if missing:
                raise SchemaVersionError(
                    f"the log's table {into} has no column {', '.join(missing)}, which this ember writes: the log "
                    "was made by another build of ember at the same schema version; point EMBER_GCS_URL (or "
                    "EMBER_HOME) at another database")
            self._types[table] = tuple(types[c] for c in cols)
            arrays = ", ".join(f"%b::{types[c]}[]" for c in cols)
            conflict = target.conflict if target is not None else "ON CONFLICT DO NOTHING" if skip_existing else ""
            sql = self._inserts[key] = (f"INSERT INTO {into} ({', '.join(cols)}) SELECT * FROM unnest({arrays})"
                                        + (f" {conflict}" if conflict else ""))
        return sql


def close_quietly(conn: psycopg.Connection | None) -> None:
    """Close a connection that may already be broken."""
    if conn is not None:
        try:
            conn.close()
        except psycopg.Error:
            pass
