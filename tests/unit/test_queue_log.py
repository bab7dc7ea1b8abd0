"""A scheduler's queue in the log: what it writes, what a successor reads back. Real PostgreSQL."""

from __future__ import annotations

import os

import psycopg
import pytest

from ember.lineage._gcs_log import GcsLog
from ember.lineage._queue_log import QueueLog
from ember.lineage._replay_source import ReplaySource
from ember.lineage._store import LineageStore
from ember.scheduler._spec import ArgKind, TaskKind, TaskSpec
from tests.fix_cluster import poll_until

BOUND_S = 30.0


@pytest.fixture(scope="module")
def conninfo(postgres) -> str:
    LineageStore._check(postgres.conninfo, "the test's server")  # creates the schema
    return postgres.conninfo


def _rows(conninfo: str, node: str) -> dict[bytes, tuple[int, str]]:
    with psycopg.connect(conninfo) as conn:
        return {bytes(t): (a, o) for t, a, o in conn.execute(
            "SELECT task_id, attempt, owner FROM scheduler_queue WHERE node_id = %s", (node,)).fetchall()}


def _spec(i: int, job: bytes) -> TaskSpec:
    return TaskSpec(os.urandom(8) + i.to_bytes(8, "big"), TaskKind.NORMAL, job, "/owner", b"f" * 16, "mod.fn",
                    [(ArgKind.VALUE, i)], None, 1, (("CPU", 1.0),), 3)


def test_rows_follow_the_tasks_a_scheduler_holds(conninfo):
    node = os.urandom(8).hex()
    log = QueueLog(conninfo, node, interval_s=0.001)
    log.start()
    try:
        a, b, c = (os.urandom(16) for _ in range(3))
        log.queued(a, 0, "/o1", b"j")
        log.queued(b, 0, "/o1", b"j")
        assert poll_until(lambda: _rows(conninfo, node) == {a: (0, "/o1"), b: (0, "/o1")}, BOUND_S), \
            _rows(conninfo, node)
        log.left([a])
        log.queued(b, 1, "/o1", b"j")  # a retry of the same task: its row says which attempt
        log.queued(c, 0, "/o2", b"j")
        log.left([c])  # came and went within one window
        assert poll_until(lambda: _rows(conninfo, node) == {b: (1, "/o1")}, BOUND_S), _rows(conninfo, node)
        assert log.held() == 1
    finally:
        log.close(drop=True)
    assert _rows(conninfo, node) == {}  # a node that stops for good leaves nothing behind


def test_a_successor_reads_the_queue_with_its_specs_and_deletes_what_nobody_claims(conninfo):
    node = os.urandom(8).hex()
    job = os.urandom(16)
    logged, unlogged = _spec(1, job), _spec(2, job)
    gcs = GcsLog(conninfo)
    try:
        gcs.task(logged, [])  # the owner logged one spec; the other had not reached the log
        assert gcs.writer.flush(BOUND_S)
    finally:
        gcs.close()
    first = QueueLog(conninfo, node, interval_s=0.001, pid=1001)
    first.start()
    first.queued(logged.task_id, 0, "/owner", job)
    first.queued(unlogged.task_id, 0, "/owner", job)
    assert poll_until(lambda: len(_rows(conninfo, node)) == 2, BOUND_S)
    first.close()  # as if killed: its rows stay

    source = ReplaySource(conninfo)
    assert source.queue(node, 1001) == ([], [])  # a scheduler's own rows are not its to take up
    found, missing = source.queue(node, 1002)
    assert missing == [unlogged.task_id]
    [queued] = found
    assert (queued.attempt, queued.owner) == (0, "/owner")
    again = queued.task.spec("/owner", 1)  # the spec the successor queues: the logged one, the next attempt
    for name in ("task_id", "job_id", "function_id", "function_name", "args", "kwargs", "num_returns", "resources",
                 "max_retries"):
        assert getattr(again, name) == getattr(logged, name), name
    assert again.attempt == 1

    second = QueueLog(conninfo, node, interval_s=0.001, pid=1002)
    second.start()
    try:
        second.adopt([logged.task_id, unlogged.task_id])
        second.left([unlogged.task_id])
        second.queued(logged.task_id, 1, "/owner", job)  # claimed: runs again as attempt 1
        assert poll_until(lambda: _rows(conninfo, node) == {logged.task_id: (1, "/owner")}, BOUND_S), \
            _rows(conninfo, node)
        assert source.queue(node, 1002) == ([], [])  # now the second one's row
        second.left([logged.task_id])
        assert poll_until(lambda: _rows(conninfo, node) == {}, BOUND_S), _rows(conninfo, node)
    finally:
        second.close()
        source.close()


def test_rows_wait_out_an_unreachable_server_and_are_not_lost(conninfo):
    node = os.urandom(8).hex()
    log = QueueLog("host=/nonexistent-ember-socket-dir dbname=ember user=postgres", node, interval_s=0.001)
    log.start()
    task = os.urandom(16)
    log.queued(task, 0, "/o", b"j")
    assert poll_until(lambda: log.failed_writes >= 2, BOUND_S)
    assert log.held() == 1
    log._conninfo = conninfo  # the server is back
    try:
        assert poll_until(lambda: _rows(conninfo, node) == {task: (0, "/o")}, BOUND_S), _rows(conninfo, node)
    finally:
        log.close(drop=True)


def test_a_task_queued_again_while_its_delete_failed_still_has_its_row_deleted_when_it_leaves(conninfo, monkeypatch):
    from ember.lineage import _queue_log

    monkeypatch.setattr(_queue_log, "BACKOFF_INITIAL_S", 2.0)  # room to leave again before the retry
    node = os.urandom(8).hex()
    log = QueueLog(conninfo, node, interval_s=0.001)
    write = log._write
    task = os.urandom(16)

    def fail_once(upserts, deletes):
        log._write = write
        log.queued(task, 1, "/o", b"j")  # queued again while the failing delete is in flight
        raise psycopg.OperationalError("the server went away")

    log.start()
    try:
        log.queued(task, 0, "/o", b"j")
        assert poll_until(lambda: _rows(conninfo, node) == {task: (0, "/o")}, BOUND_S), _rows(conninfo, node)
        log._write = fail_once
        log.left([task])
        assert poll_until(lambda: log.failed_writes == 1 and log._wake.is_set(), BOUND_S)  # put back, waiting
        log.left([task])  # and gone again before the retry
        assert poll_until(lambda: log.held() == 0 and _rows(conninfo, node) == {}, BOUND_S), _rows(conninfo, node)
    finally:
        log.close(drop=True)
