"""Reading the lineage log back, with or without a running cluster.

``open_log()`` connects to the same PostgreSQL the runtime writes to (the
embedded server under ``$EMBER_HOME``, started for the occasion if needed,
or ``EMBER_GCS_URL``) and answers: what is this task, what is this object,
what did it come from (``lineage``), and what did a job run (the listings of
``ember.lineage._listing``, as methods here).

The lineage walk reads one level of the graph at a time, a few batched
queries per level (``= ANY(%s)`` on primary keys and indexed columns), so its
cost follows the size of the answer and never the size of the log.

It must never write to the log: its connection is read-only.
"""

from __future__ import annotations

import datetime as dt
import pickle
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from ember import _settings
from ember.exceptions import EmberUserError
from ember.lineage import _listing
from ember.lineage._ids import EmptyLogError, UnknownIdError, hex_or_none, id_bytes
from ember.lineage._pg_connect import CONNECT_OPTIONS
from ember.lineage._schema_version import RUN_TIMES_VERSION, STRATEGY_VERSION, check_readable
from ember.lineage._states import ObjectState, ProcessKind, TaskState
from ember.scheduler._spec import describe_strategy
from ember.lineage._listing import (
    CREATION_ERROR_SQL,
    CREATION_STATE_SQL,
    KIND_ACTOR_CALL,
    KIND_ACTOR_CREATION,
    display_name,
)

# How far back ``lineage`` walks unless told: task generations, and tasks in all.
LINEAGE_DEPTH_DEFAULT = 20
LINEAGE_TASKS_MAX_DEFAULT = 1_000
LINEAGE_DEPTH_MAX = 10_000
# Objects up to this size travel inline and live with their owner, not in a
# store: a store's death loses none of them. Mirrors the runtime's
# ember.scheduler._owner.INLINE_BYTES_MAX (a unit test checks they agree).
INLINE_BYTES_MAX = 100 * 1024


__all__ = ["EmptyLogError", "Lineage", "LineageLog", "ObjectRecord", "TaskRecord", "UnknownIdError", "locate_log", "open_log"]


@dataclass(frozen=True)
class TaskRecord:
    task_id: str
    job_id: str
    kind: int
    function_name: str
    parent_task_id: str | None
    actor_id: str | None
    method: str | None
    num_returns: int
    max_retries: int
    args: Any  # the encoded arguments: (ArgKind, value | bytes | object id, ...)
    dependencies: list[str]
    # One dict per logged end of a run: attempt, state, node_id, error, finished_at.
    attempts: list[dict[str, Any]]
    actor_class: str | None = None
    actor_seq: int | None = None  # an actor call's place in its actor's order
    submitted_at: dt.datetime | None = None
    # A task with no logged end: the state derived for it (an actor's creation
    # from the workers started for it), and that creation's error.
    derived_state: TaskState = TaskState.SUBMITTED
    derived_error: str | None = None
    strategy: str = "DEFAULT"  # where it asked to run: DEFAULT, SPREAD, node:<id> [(soft)]

    @property
    def state(self) -> TaskState:
        return self.attempts[-1]["state"] if self.attempts else self.derived_state

    @property
    def display_name(self) -> str:
        """The function's name; ``Class.method`` for an actor call, ``Class.__init__`` for a creation."""
        return display_name(self.kind, self.function_name, self.method, self.actor_class)

    @property
    def attempt_count(self) -> int:
        """Attempts made, retries after a crash included (attempt numbers start at 0)."""
        return self.attempts[-1]["attempt"] + 1 if self.attempts else 1

    @property
    def rebuilt(self) -> int:
        """Times the task ran again after finishing, to rebuild lost results."""
        return max(len(self.attempts) - 1, 0)

    @property
    def error(self) -> str | None:
        return self.attempts[-1]["error"] if self.attempts else self.derived_error

    @property
    def duration_s(self) -> float | None:
        """Submission to the first logged end (queueing included; group commit makes it ~10 ms coarse)."""
        finished = self.attempts[0].get("finished_at") if self.attempts else None
        if finished is None or self.submitted_at is None:
            return None
        return max((finished - self.submitted_at).total_seconds(), 0.0)


@dataclass(frozen=True)
class ObjectRecord:
    object_id: str
    task_id: str
    job_id: str
    origin: str  # 'return', 'put' or 'argument' (a large by-value task argument)
    size: int | None
    has_durable_copy: bool
    state: ObjectState
    locations: list[str] = field(default_factory=list)
    node_id: str | None = None  # where the first copy was made
    created_at: dt.datetime | None = None
    # Why the copy on node_id is gone, if it went abnormally (its store or node
    # died after the object was made); None if it ended with a clean shutdown.
    lost: str | None = None
    node_ended: bool = False  # the node (and with it the copy) is gone, cleanly or not

    @property
    def inline(self) -> bool:
        """Small enough to have lived with its owner, not in a store."""
        return self.size is not None and self.size <= INLINE_BYTES_MAX


@dataclass(frozen=True)
class Lineage:
    """Ancestors of one id: tasks and objects, with edges object -> task, task -> object
    and, for actor calls, task -> task (the call or constructor before it on the same actor)."""

    root: str
    tasks: dict[str, TaskRecord]
    objects: dict[str, ObjectRecord]
    edges: list[tuple[str, str]]  # (from, to)
    depth: int = LINEAGE_DEPTH_DEFAULT
    # Ids whose own inputs were not followed: the walk stopped at ``depth`` or
    # at its task budget there. Empty when the graph is complete.
    cut: tuple[str, ...] = ()
    missing: tuple[str, ...] = ()  # objects tasks read that the log never recorded as created

    @property
    def complete(self) -> bool:
        return not self.cut

    def to_json(self) -> dict[str, Any]:
        from ember.lineage._render import lineage_json

        return lineage_json(self)

    def to_dot(self) -> str:
        from ember.lineage._render import lineage_dot

        return lineage_dot(self)

    def to_tree(self, color: bool = False) -> str:
        from ember.lineage._render import lineage_tree

        return lineage_tree(self, color=color)


class LineageLog:
    """A read-only view of the lineage log."""

    def __init__(self, conninfo: str, release: Any = None) -> None:
        import psycopg

        self._conn = psycopg.connect(conninfo, autocommit=True, **CONNECT_OPTIONS)
        self._release = release
        try:
            # Enforced by the server: psycopg's read_only does nothing in autocommit mode.
            self._conn.execute("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY")
            self.version = check_readable(lambda sql: self._conn.execute(sql).fetchall())
        except BaseException:
            self._conn.close()
            raise

    def run_columns(self, alias: str = "") -> str:
        """SQL for an attempt's start (a timestamp) and worker pid, on ``task_attempts`` as ``alias``.

        A log older than v9 has neither: NULLs.
        """
        if self.version >= RUN_TIMES_VERSION:
            prefix = f"{alias}." if alias else ""
            return f"to_timestamp({prefix}started_us / 1e6), {prefix}worker_pid"
        return "NULL::timestamptz, NULL::int"

    def strategy_column(self) -> str:
        """SQL for a task's scheduling strategy record, on ``tasks`` as ``t`` (NULL in a log older than v11)."""
        return "t.strategy" if self.version >= STRATEGY_VERSION else "NULL::jsonb"

    def close(self) -> None:
        self._conn.close()
        if self._release is not None:
            self._release()
            self._release = None

    def __enter__(self) -> "LineageLog":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- one record -------------------------------------------------------------------

    def task(self, task_id_hex: str) -> TaskRecord:
        found = self._tasks([id_bytes(task_id_hex)])
        if not found:
            raise UnknownIdError(f"no task {task_id_hex} in the lineage log")
        return next(iter(found.values()))

    def object(self, object_id_hex: str) -> ObjectRecord:
        found = self._objects([id_bytes(object_id_hex)])
        if not found:
            raise UnknownIdError(f"no object {object_id_hex} in the lineage log")
        return next(iter(found.values()))

    # -- listings (ember list) -------------------------------------------------------------

    def job(self, job: str | None = None) -> _listing.JobRow:
        """One job, by full id or unique prefix; with none, the latest."""
        return _listing.job_row(self._conn, job)

    def tasks(self, job: str | None = None, state: str | None = None,
              limit: int = _listing.LIMIT_DEFAULT, where: _listing.TaskFilter | None = None,
              offset: int = 0) -> list[_listing.TaskRow]:
        """A job's tasks, newest first (``job``: a job id or a unique prefix; default the latest job).

        ``where`` narrows them (function, node, retried, rebuilt, error text, time range);
        ``offset`` skips that many, for the next page.
        """
        return _listing.list_tasks(self._conn, job, state, limit, where, offset, self.strategy_column())

    def objects(self, job: str | None = None, state: str | None = None,
                limit: int = _listing.LIMIT_DEFAULT) -> list[_listing.ObjectRow]:
        """A job's objects (results and puts), newest first."""
        return _listing.list_objects(self._conn, job, state, limit)

    def actors(self, job: str | None = None, state: str | None = None,
               limit: int = _listing.LIMIT_DEFAULT, offset: int = 0) -> list[_listing.ActorRow]:
        """A job's actors, newest first."""
        return _listing.list_actors(self._conn, job, state, limit, offset)

    def nodes(self, job: str | None = None, state: str | None = None,
              limit: int = _listing.LIMIT_DEFAULT, offset: int = 0) -> list[_listing.NodeRow]:
        """The nodes of the cluster that ran a job (default the latest job), newest first."""
        return _listing.list_nodes(self._conn, job, state, limit, offset)

    def jobs(self, state: str | None = None, limit: int = _listing.LIMIT_DEFAULT,
             offset: int = 0) -> list[_listing.JobRow]:
        """Jobs, newest first (``offset``: skip that many, for the next page)."""
        return _listing.list_jobs(self._conn, state, limit, offset)

    def job_stats(self, job_ids: list[str]) -> dict[str, _listing.JobStats]:
        """Failures, re-runs and chaos runs of each of these jobs (full ids)."""
        return _listing.job_stats(self._conn, job_ids)

    def query(self, sql: str, params: Any = None) -> list[tuple]:
        """Rows of one read-only statement: the dashboard's views that ``ember list`` has no twin of."""
        return self._conn.execute(sql, params).fetchall()

    # -- lineage --------------------------------------------------------------------------

    def lineage(self, id_hex: str, depth: int = LINEAGE_DEPTH_DEFAULT,
                tasks_max: int = LINEAGE_TASKS_MAX_DEFAULT) -> Lineage:
        """Everything ``id_hex`` (a task or an object) came from, a generation of tasks at a time.

        ``depth`` counts task generations back from the root (the task that
        made a root object is the first); ``tasks_max`` bounds the tasks read
        in all. Where either stops the walk, ``Lineage.cut`` names the ids
        whose inputs were not followed.
        """
        if not 1 <= depth <= LINEAGE_DEPTH_MAX:
            raise EmberUserError(f"lineage(depth={depth!r}): expected an int from 1 to {LINEAGE_DEPTH_MAX}")
        if tasks_max < 1:
            raise EmberUserError(f"lineage(tasks_max={tasks_max!r}): expected a positive int")
        root = id_bytes(id_hex)
        walk = _Walk(self, depth, tasks_max)
        # Every read of the walk is a handful of keys: an index lookup always
        # wins, but a table bulk-filled moments ago has no statistics yet
        # and the planner would scan it whole. Only this session is told so.
        self._conn.execute("SET enable_seqscan = off")
        try:
            if len(root) == 20:
                if not walk.read_objects([root]):
                    raise UnknownIdError(f"no object {id_hex} in the lineage log")
            elif not walk.read_tasks([root], generation=1):
                raise UnknownIdError(f"no task {id_hex} in the lineage log")
            walk.run()
        finally:
            self._conn.execute("RESET enable_seqscan")
        known = walk.tasks.keys() | walk.objects.keys() | set(walk.missing)
        edges = [(a, b) for a, b in dict.fromkeys(walk.edges) if a in known and b in known]
        return Lineage(root.hex(), walk.tasks, walk.objects, edges, depth, tuple(walk.cut), tuple(walk.missing))

    # -- batched reads, shared by the single-record reads and the walk ---------------

    def _tasks(self, task_ids: list[bytes]) -> dict[str, TaskRecord]:
        rows = self._conn.execute(
            "SELECT t.task_id, t.job_id, t.kind, t.function_name, t.parent_task_id, t.actor_id, t.method, "
            "t.num_returns, t.max_retries, t.args, t.submitted_at, a.class_name, c.seq, "
            "CASE WHEN t.kind = %(creation)s THEN " + CREATION_STATE_SQL + " END, "
            "CASE WHEN t.kind = %(creation)s THEN " + CREATION_ERROR_SQL + " END, " + self.strategy_column() + " "
            "FROM tasks t LEFT JOIN actors a ON a.actor_id = t.actor_id "
            "LEFT JOIN actor_calls c ON c.task_id = t.task_id WHERE t.task_id = ANY(%(ids)s)",
            {"ids": task_ids, "creation": KIND_ACTOR_CREATION}).fetchall()
        if not rows:
            return {}
        found = [r[0] for r in rows]
        deps: dict[bytes, list[str]] = {}
        for task_id, object_id in self._conn.execute(
                "SELECT task_id, object_id FROM task_args WHERE task_id = ANY(%s) ORDER BY task_id, object_id",
                (found,)):
            deps.setdefault(task_id, []).append(object_id.hex())
        attempts: dict[bytes, list[dict[str, Any]]] = {}
        for task_id, attempt, state, node_id, error, finished_at, started_at, worker_pid in self._conn.execute(
                "SELECT task_id, attempt, state, node_id, error, finished_at, " + self.run_columns() +
                " FROM task_attempts WHERE task_id = ANY(%s) ORDER BY task_id, attempt", (found,)):
            attempts.setdefault(task_id, []).append(
                {"attempt": attempt, "state": TaskState(state), "node_id": node_id, "error": error,
                 "finished_at": finished_at, "started_at": started_at, "worker_pid": worker_pid})
        return {
            row[0].hex(): TaskRecord(
                row[0].hex(), row[1].hex(), row[2], row[3], hex_or_none(row[4]), hex_or_none(row[5]), row[6],
                row[7], row[8], _decode_args(row[9]), deps.get(row[0], []), attempts.get(row[0], []),
                actor_class=row[11], actor_seq=row[12], submitted_at=row[10],
                derived_state=TaskState(row[13] or TaskState.SUBMITTED), derived_error=row[14],
                strategy=describe_strategy(row[15]),
            )
            for row in rows
        }

    def _objects(self, object_ids: list[bytes]) -> dict[str, ObjectRecord]:
        rows = self._conn.execute(
            "SELECT object_id, task_id, job_id, origin, size, "
            "durable_copy IS NOT NULL OR durable_path IS NOT NULL, state, node_id, created_at "
            "FROM objects WHERE object_id = ANY(%s)", (object_ids,)).fetchall()
        if not rows:
            return {}
        moves: dict[bytes, list[tuple[str, bool]]] = {}
        for object_id, node_id, removed in self._conn.execute(
                "SELECT object_id, node_id, removed_at IS NOT NULL FROM object_locations WHERE object_id = ANY(%s)",
                ([r[0] for r in rows],)):
            moves.setdefault(object_id, []).append((node_id, removed))
        fates = self._node_fates({r[7] for r in rows if r[7]})
        found = {}
        for oid, task_id, job_id, origin, size, durable, logged_state, node_id, created_at in rows:
            # The node that made the object holds the first copy (until it is
            # lost); object_locations holds the copies made or lost since.
            state = ObjectState(logged_state)
            locations = [node_id] if node_id and state != ObjectState.LOST else []
            for moved_node, removed in moves.get(oid, ()):
                if removed and moved_node in locations:
                    locations.remove(moved_node)
                elif not removed and moved_node not in locations:
                    locations.append(moved_node)
            ended, deaths = fates.get(node_id, (False, []))
            in_store = size is None or size > INLINE_BYTES_MAX
            lost = next((cause for when, cause in deaths
                         if (in_store or cause.startswith("node")) and (created_at is None or when >= created_at)),
                        None)
            found[oid.hex()] = ObjectRecord(oid.hex(), task_id.hex(), job_id.hex(), origin, size, durable, state,
                                            locations, node_id, created_at, lost, ended)
        return found

    def _node_fates(self, node_ids: Iterable[str]) -> dict[str, tuple[bool, list[tuple[dt.datetime, str]]]]:
        """Per node: has it ended, and when and why its store or the node itself died abnormally."""
        ids = sorted(node_ids)
        if not ids:
            return {}
        fates: dict[str, tuple[bool, list[tuple[dt.datetime, str]]]] = {}
        for node_id, ended_at, cause in self._conn.execute(
                "SELECT node_id, ended_at, death_cause FROM nodes WHERE node_id = ANY(%s)", (ids,)):
            deaths = [(ended_at, f"node died: {cause}")] if ended_at and not _clean_end(cause) else []
            fates[node_id] = (ended_at is not None, deaths)
        for node_id, ended_at, cause in self._conn.execute(
                "SELECT node_id, ended_at, death_cause FROM workers WHERE node_id = ANY(%s) AND kind = %s "
                "AND ended_at IS NOT NULL ORDER BY ended_at", (ids, ProcessKind.STORE)):
            if not _clean_end(cause):
                ended, deaths = fates.setdefault(node_id, (False, []))
                deaths.append((ended_at, f"store died: {cause}"))
        for _, deaths in fates.values():
            deaths.sort()
        return fates


class _Walk:
    """One lineage walk: alternately a level of objects and a generation of tasks."""

    def __init__(self, log: LineageLog, depth: int, tasks_max: int) -> None:
        self.log = log
        self.depth = depth
        self.tasks_max = tasks_max
        self.tasks: dict[str, TaskRecord] = {}
        self.objects: dict[str, ObjectRecord] = {}
        self.edges: list[tuple[str, str]] = []
        self.cut: list[str] = []
        self.missing: list[str] = []
        # What the next rounds read: objects with the generation of the task
        # that read them (0 for a root object), tasks with their generation
        # and the id that led to them (named in ``cut`` if they are not read).
        self._pending_objects: dict[bytes, int] = {}
        self._pending_tasks: dict[bytes, tuple[int, str]] = {}

    def read_objects(self, object_ids: list[bytes], generation: int = 0) -> bool:
        wanted = {oid: generation for oid in object_ids}
        return self._read_objects(wanted)

    def _read_objects(self, wanted: dict[bytes, int]) -> bool:
        found = self.log._objects(list(wanted))
        for oid, generation in wanted.items():
            record = found.get(oid.hex())
            if record is None:
                self.missing.append(oid.hex())  # read by a task, its creation never logged
                continue
            self.objects[record.object_id] = record
            if record.origin == "return":
                self.edges.append((record.task_id, record.object_id))
                if record.task_id not in self.tasks:
                    self._pending_tasks.setdefault(bytes.fromhex(record.task_id), (generation + 1, record.object_id))
        return bool(found)

    def read_tasks(self, task_ids: list[bytes], generation: int) -> bool:
        found = self.log._tasks(task_ids)
        for task_id, record in found.items():
            self.tasks[task_id] = record
            for dep in record.dependencies:
                self.edges.append((dep, task_id))
                if dep not in self.objects:
                    self._pending_objects.setdefault(bytes.fromhex(dep), generation)
        self._link_actor_predecessors([r for r in found.values() if r.kind == KIND_ACTOR_CALL], generation)
        return bool(found)

    def run(self) -> None:
        for _ in range(2 * LINEAGE_DEPTH_MAX + 2):  # a round reads one generation; the depth bounds the rounds
            if self._pending_objects:
                objects, self._pending_objects = self._pending_objects, {}
                self._read_objects({oid: g for oid, g in objects.items() if oid.hex() not in self.objects})
            pending = {tid: gv for tid, gv in self._pending_tasks.items() if tid.hex() not in self.tasks}
            self._pending_tasks = {}
            if not pending:
                if not self._pending_objects:
                    return
                continue
            room = max(self.tasks_max - len(self.tasks), 0)
            allowed = sorted(tid for tid, (g, _) in pending.items() if g <= self.depth)
            taken = allowed[:room]
            taken_set = set(taken)
            self.cut += sorted(via for tid, (_, via) in pending.items() if tid not in taken_set)
            by_generation: dict[int, list[bytes]] = {}
            for tid in taken:
                by_generation.setdefault(pending[tid][0], []).append(tid)
            for generation, ids in sorted(by_generation.items()):
                self.read_tasks(ids, generation)

    def _link_actor_predecessors(self, calls: list[TaskRecord], generation: int) -> None:
        """Each call's state came from the call before it on its actor, or from the constructor."""
        if not calls:
            return
        rows = self.log._conn.execute(
            "SELECT t.task_id, (SELECT p.task_id FROM actor_calls p WHERE p.actor_id = c.actor_id "
            "AND p.seq < c.seq ORDER BY p.seq DESC LIMIT 1), a.creation_task_id "
            "FROM tasks t LEFT JOIN actor_calls c ON c.task_id = t.task_id "
            "LEFT JOIN actors a ON a.actor_id = t.actor_id WHERE t.task_id = ANY(%s)",
            ([bytes.fromhex(c.task_id) for c in calls],)).fetchall()
        for task_id, previous, creation in rows:
            before = previous or creation
            if before is None:
                continue
            self.edges.append((before.hex(), task_id.hex()))
            if before.hex() not in self.tasks:
                self._pending_tasks.setdefault(before, (generation + 1, task_id.hex()))


def _clean_end(cause: str | None) -> bool:
    return cause is None or cause.endswith("shut down")


def _decode_args(blob: bytes | None) -> Any:
    # The outer pickle holds plain values, object ids and serialized bytes
    # only (the spec's encoding); what the bytes hold is decoded on display.
    return pickle.loads(blob) if blob else None


def open_log(gcs_url: str | None = None) -> LineageLog:
    """A read-only view of the lineage log; no cluster needs to be running."""
    conninfo, release = locate_log(gcs_url)
    try:
        return LineageLog(conninfo, release=release)
    except BaseException:
        if release is not None:
            release()
        raise


def locate_log(gcs_url: str | None = None) -> tuple[str, Any]:
    """The log's conninfo and what to call when done with it (starts the embedded server if needed)."""

    from ember.lineage._postgres import EmbeddedPostgres

    url = gcs_url or _settings.load().gcs_url
    if url:
        return url, None
    server = EmbeddedPostgres()
    server.start()
    return server.conninfo, server.release
