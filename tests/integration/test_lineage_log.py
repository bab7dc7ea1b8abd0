"""The lineage log's foundations on a real embedded PostgreSQL: server, schema, group commit."""

import contextlib
import os
import subprocess
import sys
import textwrap
import threading

import psycopg
import pytest
import sqlalchemy as sa

from ember.lineage import _schema
from ember.lineage._log_writer import COPY_ROWS_MIN, LogWriter

TASK_COLUMNS = ("task_id", "job_id", "kind", "function_name", "args", "num_returns", "max_retries")


@pytest.fixture(scope="module")
def engine(postgres):
    eng = sa.create_engine("postgresql+psycopg://", connect_args={
        "host": str(postgres.socket_dir), "user": "postgres", "dbname": "ember"})
    _schema.ensure_schema(eng)
    yield eng
    eng.dispose()


def _count(engine, table, job_id):
    with engine.connect() as conn:
        return conn.execute(sa.text(f"SELECT count(*) FROM {table} WHERE job_id = :j"), {"j": job_id}).scalar()


def test_server_listens_on_a_unix_socket_only(postgres):
    with psycopg.connect(postgres.conninfo) as conn:
        assert conn.execute("SHOW listen_addresses").fetchone()[0] == ""
    assert oct(os.stat(postgres.socket_dir).st_mode & 0o777) == "0o700"


def test_group_commit_writes_many_rows_in_few_transactions(postgres, engine):
    writer = LogWriter(postgres.conninfo, {"tasks": TASK_COLUMNS})
    job = os.urandom(4)
    last = 0
    for i in range(10_000):
        last = writer.append("tasks", (os.urandom(16), job, 1, "f", b"\x80\x05]\x94.", 1, 3))
    assert writer.wait_committed(last, timeout_s=60)
    stats = writer.statistics()
    writer.close()
    assert _count(engine, "tasks", job) == 10_000
    assert stats["batches_written"] < 1_000  # one transaction per batch, never one per row


def test_wait_committed_means_durable(postgres, engine):
    writer = LogWriter(postgres.conninfo, {"tasks": TASK_COLUMNS})
    job = os.urandom(4)
    seq = writer.append("tasks", (os.urandom(16), job, 1, "g", b"", 1, 0))
    assert writer.wait_committed(seq, timeout_s=30)
    assert _count(engine, "tasks", job) == 1  # visible to another connection: committed
    writer.close()


def test_a_row_logged_twice_does_not_lose_the_batch(postgres, engine):
    writer = LogWriter(postgres.conninfo, {"tasks": TASK_COLUMNS})
    job = os.urandom(4)
    task_id = os.urandom(16)
    writer.append("tasks", (task_id, job, 1, "h", b"", 1, 0))
    writer.flush(30)
    writer.append("tasks", (task_id, job, 1, "h", b"", 1, 0))
    seq = writer.append("tasks", (os.urandom(16), job, 1, "h", b"", 1, 0))
    assert writer.wait_committed(seq, timeout_s=30)
    writer.close()
    assert _count(engine, "tasks", job) == 2


def test_a_row_logged_twice_in_a_large_batch_keeps_the_rest_and_the_defaults(postgres, engine):
    # Past COPY_ROWS_MIN rows the batch goes by COPY; its retry inserts
    # skipping the repeat, and must keep the columns' defaults.
    columns = ("object_id", "task_id", "job_id", "origin", "size")
    writer = LogWriter(postgres.conninfo, {"objects": columns})
    job = os.urandom(4)
    first = os.urandom(20)
    writer.append("objects", (first, os.urandom(16), job, "return", 1))
    writer.flush(30)
    rows = [("objects", (first, os.urandom(16), job, "return", 1))]
    rows += [("objects", (os.urandom(20), os.urandom(16), job, "return", 1)) for _ in range(COPY_ROWS_MIN + 8)]
    assert writer.wait_committed(writer.append_rows(rows), timeout_s=30)
    writer.close()
    with engine.connect() as conn:
        states = conn.execute(sa.text("SELECT state, count(*) FROM objects WHERE job_id = :j GROUP BY state"),
                              {"j": job}).all()
    assert states == [("CREATED", COPY_ROWS_MIN + 9)]


def test_a_newer_log_is_refused_with_a_clear_error(engine):
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE ember_meta SET value = '999' WHERE key = 'schema_version'"))
    try:
        with pytest.raises(_schema.SchemaVersionError, match="newer ember"):
            _schema.ensure_schema(engine)
    finally:
        with engine.begin() as conn:
            conn.execute(sa.text(f"UPDATE ember_meta SET value = '{_schema.SCHEMA_VERSION}'"))
    assert _schema.ensure_schema(engine) == _schema.SCHEMA_VERSION


def test_two_processes_starting_at_once_share_one_server(ember_home, postgres):
    code = textwrap.dedent(f"""
        from pathlib import Path
        from ember.lineage._postgres import EmbeddedPostgres
        pg = EmbeddedPostgres(Path({str(ember_home)!r}))
        pg.start()
        print(pg.server_pid(), flush=True)
        pg.release()
    """)
    procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True) for _ in range(2)]
    pids = {p.communicate(timeout=120)[0].strip() for p in procs}
    assert all(p.returncode == 0 for p in procs)
    assert pids == {str(postgres.server_pid())}  # the fixture's server, reused, still running
    with psycopg.connect(postgres.conninfo) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_history_outlives_a_server_restart(ember_home):
    from ember.lineage._postgres import EmbeddedPostgres

    home = ember_home / "restart"
    home.mkdir(mode=0o755)
    pg = EmbeddedPostgres(home)
    pg.start()
    with psycopg.connect(pg.conninfo, autocommit=True) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS kept (v int)")
        conn.execute("INSERT INTO kept VALUES (42)")
    pg.release()
    assert pg.server_pid() is None  # the last user stopped it
    pg.start()
    with psycopg.connect(pg.conninfo) as conn:
        assert conn.execute("SELECT v FROM kept").fetchone() == (42,)
    pg.release()


@contextlib.contextmanager
def _log_database(postgres, name):
    """A database of its own on the test server, with today's schema: (its engine, its conninfo); dropped after."""
    admin = dict(host=str(postgres.socket_dir), user="postgres")
    with psycopg.connect(**admin, dbname="ember", autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    engine = sa.create_engine("postgresql+psycopg://", connect_args={**admin, "dbname": name})
    try:
        _schema.ensure_schema(engine)
        yield engine, f"host={postgres.socket_dir} user=postgres dbname={name}"
    finally:
        engine.dispose()
        with psycopg.connect(**admin, dbname="ember", autocommit=True) as conn:
            conn.execute(f"DROP DATABASE {name}")


def test_an_older_log_is_migrated_forward_keeping_its_rows(postgres):
    with _log_database(postgres, f"ember_v1_{os.getpid()}") as (old, _):
        with old.begin() as conn:  # make it the log version 1 wrote
            for table, column in (("nodes", "cluster_id"), ("nodes", "last_heartbeat_at"),
                                  ("workers", "cluster_id"), ("workers", "actor_id"), ("objects", "node_id")):
                conn.execute(sa.text(f"ALTER TABLE {table} DROP COLUMN {column}"))
            conn.execute(sa.text("UPDATE ember_meta SET value = '1' WHERE key = 'schema_version'"))
            conn.execute(sa.text("INSERT INTO nodes (node_id, address) VALUES ('n1', 'old')"))
        assert _schema.ensure_schema(old) == _schema.SCHEMA_VERSION
        with old.connect() as conn:
            assert conn.execute(sa.text("SELECT node_id, address, cluster_id FROM nodes")).all() == [("n1", "old", None)]
            assert conn.execute(sa.text("SELECT value FROM ember_meta")).scalar() == str(_schema.SCHEMA_VERSION)
            conn.execute(sa.text("SELECT node_id FROM objects LIMIT 0"))


def test_a_log_older_than_runtime_envs_is_read_for_replay(postgres):
    # Regression: replay's reader named a constant it never imported, so any log from before v14
    # (no runtime_env column) failed with NameError instead of being read.
    from ember.lineage._replay_log import ReplayReads

    with _log_database(postgres, f"ember_v13_{os.getpid()}") as (old, conninfo):
        with old.begin() as conn:  # make it the log version 13 wrote
            conn.execute(sa.text("ALTER TABLE tasks DROP COLUMN runtime_env"))
            conn.execute(sa.text("UPDATE ember_meta SET value = '13' WHERE key = 'schema_version'"))
        reads = ReplayReads(conninfo)
        try:
            assert reads.tasks([b"\x01" * 16]) == {}  # the query runs: no column it lacks is named
        finally:
            reads.close()


def test_an_urgent_row_wakes_the_writer_after_a_waiter_raced_a_batch_in_flight(postgres, engine):
    # Regression: a waiter for a batch being written marked the queue urgent
    # while it was empty; the next urgent row then never woke the writer.
    class SlowFirstBatch(LogWriter):
        slow = True

        def _write(self, batch):
            if self.slow:
                self.slow = False
                in_flight.set()
                threading.Event().wait(0.3)
            super()._write(batch)

    in_flight = threading.Event()
    writer = SlowFirstBatch(postgres.conninfo, {"tasks": TASK_COLUMNS})
    job = os.urandom(4)
    first = writer.append("tasks", (os.urandom(16), job, 1, "w", b"", 1, 0))
    assert in_flight.wait(10)
    assert writer.wait_committed(first, timeout_s=10)  # waits while its batch is in flight
    second = writer.append("tasks", (os.urandom(16), job, 1, "w", b"", 1, 0))
    assert writer.wait_committed(second, timeout_s=10)
    writer.close()


def _object_sizes(engine, job):
    with engine.connect() as conn:
        return dict(conn.execute(sa.text("SELECT object_id, size FROM objects WHERE job_id = :j"), {"j": job}).all())


def test_declared_creation_rows_are_completed_by_the_results_rows_in_any_batch(postgres, engine):
    from ember.lineage._gcs_log import COLUMNS, TARGETS

    writer = LogWriter(postgres.conninfo, COLUMNS, targets=TARGETS)
    job = os.urandom(4)
    task = os.urandom(16)
    early, same_batch, twice = (task + bytes([i, 0, 0, 0]) for i in range(3))

    def declared(oid):
        return ("objects_declared", (oid, task, job, "return", None, None, None, None, None, None))

    def final(oid, size):
        return ("objects_final", (oid, task, job, "return", size, None, None, "node-a", None, None))

    # Declared in a batch of its own: committed with no size, then completed.
    assert writer.wait_committed(writer.append_rows([declared(early)]), timeout_s=30)
    assert _object_sizes(engine, job) == {early: None}
    # Declared and completed in one batch (a fast task): the result's row wins;
    # a result reported twice keeps its first row, as a retried attempt's repeat does.
    seq = writer.append_rows([final(early, 10), declared(same_batch), final(same_batch, 20), declared(twice),
                              final(twice, 30), final(twice, 31)])
    assert writer.wait_committed(seq, timeout_s=30)
    # A completed row is never rewritten.
    assert writer.wait_committed(writer.append_rows([final(early, 99), declared(early)]), timeout_s=30)
    writer.close()
    assert _object_sizes(engine, job) == {early: 10, same_batch: 20, twice: 30}


def test_a_log_whose_tables_lack_a_column_fails_the_wait_at_once_naming_it(postgres):
    # Regression: a log made by another build at the same schema version had no tasks.strategy; the
    # writer thread died on a KeyError, and every get then waited the whole commit limit for a log
    # said to be unreachable.
    from ember.exceptions import LineageLogFailedError
    from ember.lineage._gcs_log import COLUMNS, GcsLog

    with _log_database(postgres, f"ember_odd_{os.getpid()}") as (odd, conninfo):
        with odd.begin() as conn:
            conn.execute(sa.text("ALTER TABLE tasks DROP COLUMN strategy"))
        log = GcsLog(conninfo)
        try:
            job = os.urandom(16)
            log.make_durable(log.job(job, "c", os.getpid(), "test"), "the job")  # committed before
            row = (os.urandom(16), job, 0, None, "f", None, None, None, b"", 1, None, 0, None, None, None, None)
            assert len(row) == len(COLUMNS["tasks"])
            seq = log.writer.append("tasks", row)
            with pytest.raises(LineageLogFailedError, match="has no column strategy") as failed:
                log.make_durable(seq, "the value of a task")
            assert "the value of a task is held back" in str(failed.value)
            assert log.writer.failure is not None
        finally:
            log.close()  # its flush ends at once too: the writer has stopped
        with odd.connect() as conn:
            assert conn.execute(sa.text("SELECT count(*) FROM jobs WHERE job_id = :j"), {"j": job}).scalar() == 1
