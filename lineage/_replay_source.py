"""What reconstruction reads back from the log: a task's spec as it was submitted.

Owners rebuild lost objects from here rather than from memory, so lineage has
no size cap and survives the process that first ran it. Reads happen outside
the runtime's locks, on a connection of their own; the planner's questions
(specs, durable copies) are read for a batch of ids per query.

It must never write to the log: its connection is read-only.
"""

from __future__ import annotations

import logging
import pickle
import threading
import time
from dataclasses import dataclass
from typing import Any

from ember.lineage._pg_connect import CONNECT_OPTIONS
from ember.lineage._states import TaskState


KEPT_ORIGINS = ("put", "argument")  # objects no task can recompute: they come back from a durable copy


log = logging.getLogger("ember.lineage")

UNREACHABLE_WAIT_S = 30.0  # as long as a PostgreSQL restart or short outage may take
RETRY_S = 0.2
READ_BATCH_IDS_MAX = 10_000  # ids named in one query; a larger batch is read in several


def _batches(ids: list[bytes]) -> list[list[bytes]]:
    unique = list(dict.fromkeys(ids))
    return [unique[i:i + READ_BATCH_IDS_MAX] for i in range(0, len(unique), READ_BATCH_IDS_MAX)]


@dataclass(frozen=True)
class LoggedTask:
    task_id: bytes
    kind: int
    job_id: bytes
    function_id: bytes | None
    function_name: str
    args: list
    kwargs: dict | None
    num_returns: int
    resources: dict[str, float]
    max_retries: int
    parent_task_id: bytes | None
    actor_id: bytes | None
    method: str | None
    last_attempt: int  # the highest attempt the log knows of (0 if none ended)
    name: str | None = None  # options(name=...)
    strategy: dict | None = None  # its scheduling strategy's record (schema v11)
    owner_addr: str | None = None  # the address of the process that submitted it (its results' owner)
    runtime_env: tuple[str, str] | None = None  # (hash, canonical JSON) of its runtime_env (schema v14)

    def spec(self, owner: str, attempt: int) -> Any:
        """The task to run again, as attempt ``attempt`` owned by ``owner`` (a normal task's ``TaskSpec``)."""
        from ember.scheduler._spec import TaskKind, TaskSpec, resource_shape, strategy_of_record

        return TaskSpec(self.task_id, TaskKind.NORMAL, self.job_id, owner, self.function_id or b"",
                        self.function_name, self.args, self.kwargs, self.num_returns,
                        resource_shape(self.resources), self.max_retries, attempt, self.parent_task_id,
                        name=self.name, strategy=strategy_of_record(self.strategy), runtime_env=self.runtime_env)


@dataclass(frozen=True)
class QueuedTask:
    """A task a dead node scheduler held (``lineage/_queue_log.py``): its spec as the log has it, the attempt
    it was on and its owner."""

    task: LoggedTask
    attempt: int
    owner: str


@dataclass(frozen=True)
class OwnerFacts:
    """What the log knows of an object's owner: the owner of its task while a node scheduler holds the task,
    the caller of the actor call that makes it, how many results its task has if the task is logged, and
    whether the object itself (a put's, or a finished task's result) is."""

    queued_owner: str | None
    actor_caller: str | None
    num_returns: int | None
    object_logged: bool
    submitter: str | None = None  # the process that submitted its task (schema v10), its results' owner
    putter: str | None = None  # the process that put it (schema v10)

    @property
    def known(self) -> bool:
        return self.object_logged or self.num_returns is not None

    @property
    def live_owner(self) -> str | None:
        """The address of an owner the log names, which may still be alive (None: adopt it)."""
        return self.queued_owner or self.actor_caller or self.submitter or self.putter


# A task's row as ``_logged_task`` reads it, from ``tasks t``.
_TASK_COLUMNS = (
    "t.kind, t.job_id, t.function_id, t.function_name, t.args, t.num_returns, t.resources, t.max_retries, "
    "t.parent_task_id, t.actor_id, t.method, (SELECT max(attempt) FROM task_attempts a WHERE a.task_id = t.task_id), "
    "t.name, t.strategy, t.owner, "
)
_ENV_COLUMNS = "t.runtime_env, (SELECT e.record FROM runtime_envs e WHERE e.env_hash = t.runtime_env)"
_NO_ENV_COLUMNS = "NULL, NULL"  # a log older than v14: every task ran in the cluster's own environment


def _logged_task(task_id: bytes, row: tuple) -> LoggedTask:
    (kind, job_id, function_id, function_name, args, num_returns, resources, max_retries, parent, actor, method,
     last_attempt, name, strategy, owner, env_hash, env_text) = row
    decoded_args, kwargs = pickle.loads(args)
    return LoggedTask(task_id, kind, job_id, function_id, function_name, decoded_args, kwargs, num_returns,
                      resources or {}, max_retries, parent, actor, method, last_attempt or 0, name,
                      strategy, owner, None if env_hash is None else (env_hash, env_text))


class ReplaySource:
    env_columns = _ENV_COLUMNS  # the runtime's log is always of this ember's version

    def __init__(self, conninfo: str, wait_s: float = UNREACHABLE_WAIT_S) -> None:
        self._conninfo = conninfo
        self._wait_s = wait_s
        self._conn: Any = None
        self._lock = threading.Lock()
        self._closed = False

    def query(self, sql: str, params: tuple | dict[str, Any]) -> list[tuple]:
        """One read of the log's, waiting out a server restart (``_query``)."""
        return self._query(sql, params)

    def _query(self, sql: str, params: tuple | dict[str, Any]) -> list[tuple]:
        """Run a read, reconnecting while the server restarts, for up to ``wait_s`` (``UNREACHABLE_WAIT_S``).

        Its callers are recovery (rebuilds, actor replays), which a
        PostgreSQL restart at the same moment must delay, not fail.
        """
        import psycopg

        from ember.lineage._log_writer import close_quietly

        deadline = time.monotonic() + self._wait_s
        with self._lock:
            if self._closed:
                # Never a connection again once closed: nobody would close that one.
                raise psycopg.OperationalError("this reader of the lineage log was closed")
            while True:
                try:
                    if self._conn is None or self._conn.closed:
                        self._conn = psycopg.connect(self._conninfo, autocommit=True, connect_timeout=10, **CONNECT_OPTIONS)
                        # It only reads: the server holds it to that (read_only is a no-op in autocommit).
                        self._conn.execute("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY")
                    return self._conn.execute(sql, params).fetchall()
                except psycopg.OperationalError as exc:
                    close_quietly(self._conn)
                    self._conn = None
                    if time.monotonic() > deadline:
                        raise
                    log.warning("the lineage log is unreachable, reading it again shortly: %s", exc)
                    time.sleep(RETRY_S)

    def task(self, task_id: bytes) -> LoggedTask | None:
        return self.tasks([task_id]).get(task_id)

    def tasks(self, task_ids: list[bytes]) -> dict[bytes, LoggedTask]:
        """The logged specs of those of the tasks the log has, one query per ``READ_BATCH_IDS_MAX`` ids."""
        found: dict[bytes, LoggedTask] = {}
        for batch in _batches(task_ids):
            for task_id, *row in self._query(
                    f"SELECT t.task_id, {_TASK_COLUMNS}{self.env_columns} FROM tasks t WHERE t.task_id = ANY(%s)", (batch,)):
                found[bytes(task_id)] = _logged_task(bytes(task_id), tuple(row))
        return found

    def queue(self, node_id: str, reader_pid: int) -> tuple[list[QueuedTask], list[bytes]]:
        """The tasks node ``node_id``'s dead schedulers held, oldest first, and the ids of rows whose spec is
        not logged. Rows of the reader itself (``reader_pid``: tasks it took in before reading) are not its
        to take up."""
        rows = self._query(
            f"SELECT q.task_id, q.attempt, q.owner, t.task_id IS NOT NULL, {_TASK_COLUMNS}{self.env_columns} "
            "FROM scheduler_queue q LEFT JOIN tasks t ON t.task_id = q.task_id AND t.kind = 1 "
            "WHERE q.node_id = %s AND q.scheduler_pid <> %s ORDER BY q.queued_at", (node_id, reader_pid))
        found, unlogged = [], []
        for task_id, attempt, owner, logged, *task in rows:
            if logged:
                found.append(QueuedTask(_logged_task(task_id, tuple(task)), attempt, owner))
            else:
                unlogged.append(task_id)  # its owner's lazy log had not committed the spec: the owner sends it
        return found, unlogged

    def actor_calls(self, actor_id: bytes, after_seq: int = 0) -> list[tuple[int, bytes, str, list, dict | None, int]]:
        """The calls an actor ran, in order: (seq, task id, method, encoded args, kwargs, num_returns)."""
        # A row its caller logged carries no arguments: they are in the call's spec.
        rows = self._query(
            "SELECT c.seq, c.task_id, c.method, COALESCE(c.args, t.args), c.num_returns FROM actor_calls c "
            "LEFT JOIN tasks t ON t.task_id = c.task_id WHERE c.actor_id = %s AND c.seq > %s "
            "ORDER BY c.seq", (actor_id, after_seq))
        calls = []
        for seq, task_id, method, args, num_returns in rows:
            decoded, kwargs = pickle.loads(args)
            calls.append((seq, task_id, method, decoded, kwargs, num_returns))
        return calls

    def finished(self, task_ids: list[bytes]) -> set[bytes]:
        """Those of ``task_ids`` with an attempt logged as ended (their caller took a result in)."""
        found: set[bytes] = set()
        for batch in _batches(task_ids):
            rows = self._query("SELECT DISTINCT task_id FROM task_attempts WHERE task_id = ANY(%s) "
                               f"AND state IN ('{TaskState.FINISHED}', '{TaskState.FAILED}')", (batch,))
            found.update(bytes(r[0]) for r in rows)
        return found

    def restart_marks(self, actor_id: bytes) -> dict[tuple[bytes, int], int]:
        """How many restarts ran each unfinished call again, by (call's task id, its place in the order)."""
        rows = self._query("SELECT task_id, seq, count(*) FROM actor_restarts WHERE actor_id = %s "
                           "GROUP BY task_id, seq", (actor_id,))
        return {(bytes(task_id), seq): count for task_id, seq, count in rows}

    def last_caller(self, actor_id: bytes) -> str | None:
        """The address of the process that made the actor's last logged call."""
        rows = self._query("SELECT caller FROM actor_calls WHERE actor_id = %s ORDER BY seq DESC LIMIT 1",
                           (actor_id,))
        return rows[0][0] if rows else None

    def latest_checkpoint(self, actor_id: bytes) -> tuple[int, bytes] | None:
        rows = self._query("SELECT seq, data FROM checkpoints WHERE actor_id = %s ORDER BY seq DESC LIMIT 1",
                           (actor_id,))
        return (rows[0][0], bytes(rows[0][1])) if rows else None

    def calls_through(self, actor_id: bytes, seq: int, limit: int) -> set[bytes]:
        """Task ids of the last ``limit`` calls up to ``seq``: they ran, their results are not replayed."""
        rows = self._query("SELECT task_id FROM actor_calls WHERE actor_id = %s AND seq <= %s "
                           "ORDER BY seq DESC LIMIT %s", (actor_id, seq, limit))
        return {bytes(r[0]) for r in rows}

    def kept_copies(self, object_ids: list[bytes]) -> dict[bytes, tuple[bool, bytes | None, str | None]]:
        """For those of the objects the log has: (is it a put or a large by-value argument, its bytes if the
        log keeps them, its durable copy's file if any); one query per ``READ_BATCH_IDS_MAX`` ids."""
        found: dict[bytes, tuple[bool, bytes | None, str | None]] = {}
        for batch in _batches(object_ids):
            for object_id, origin, data, path in self._query(
                    "SELECT object_id, origin, durable_copy, durable_path FROM objects WHERE object_id = ANY(%s)",
                    (batch,)):
                found[bytes(object_id)] = (origin in KEPT_ORIGINS, bytes(data) if data is not None else None, path)
        return found

    def owner_facts(self, object_id: bytes, task_id: bytes) -> OwnerFacts:
        """What the log says of who owns an object (``ObjectRef(id)``): see ``OwnerFacts``."""
        rows = self._query(
            "SELECT (SELECT q.owner FROM scheduler_queue q WHERE q.task_id = %(t)s LIMIT 1), "
            "(SELECT c.caller FROM actor_calls c WHERE c.task_id = %(t)s), "
            "(SELECT t.num_returns FROM tasks t WHERE t.task_id = %(t)s), "
            "EXISTS (SELECT 1 FROM objects o WHERE o.object_id = %(o)s), "
            "(SELECT t.owner FROM tasks t WHERE t.task_id = %(t)s), "
            "(SELECT o.owner FROM objects o WHERE o.object_id = %(o)s)",
            {"t": task_id, "o": object_id})
        queued_owner, caller, num_returns, object_logged, submitter, putter = rows[0]
        return OwnerFacts(queued_owner, caller, num_returns, bool(object_logged), submitter, putter)

    def close(self) -> None:
        from ember.lineage._log_writer import close_quietly

        with self._lock:
            self._closed = True
            close_quietly(self._conn)
            self._conn = None
