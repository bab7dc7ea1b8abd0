"""Listings of the lineage log: a job's tasks, objects and actors, the nodes that ran it, the jobs.

What ``ember list`` prints and ``LineageLog.tasks()`` and its siblings
return: one immutable row per item, newest first, at most ``limit`` of them.
Each query reads a page through an index (``tasks.job_id``; the laterals on
``task_attempts`` by primary key), so a page of a 100,000-task job costs about
what a page of a small one does; a ``state`` filter reads every task of the
job once. Every state is a member of the enums of ``lineage/_states.py``,
which the writers use too. States not written by the runtime are derived
here, and said so: a task with no logged end is ``SUBMITTED``; an actor is
``ALIVE`` while a worker started for it is, ``RESTARTING`` once that one
ended while it has restarts left and its cluster runs, ``DEAD`` otherwise.

It must never write to the log.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from dataclasses import dataclass
from typing import Any, TypeVar

from ember.scheduler._spec import TaskKind, describe_strategy
from ember.exceptions import EmberUserError
from ember.lineage._ids import resolve_job
from ember.lineage._states import ActorState, JobState, NodeState, ObjectState, TaskState

LIMIT_DEFAULT = 50
LIMIT_MAX = 100_000
OFFSET_MAX = 100_000_000
KIND_ACTOR_CREATION = int(TaskKind.ACTOR_CREATION)  # as the tasks table's kind column holds them
KIND_ACTOR_CALL = int(TaskKind.ACTOR_CALL)
S = TypeVar("S", TaskState, ObjectState, ActorState, NodeState, JobState)


@dataclass(frozen=True)
class TaskRow:
    task_id: str
    job_id: str
    name: str  # the function, Class.method for an actor call, Class.__init__ for a creation
    state: TaskState
    attempts: int  # attempts made, retries after a crash included
    rebuilt: int  # times it ran again to rebuild lost results
    node_id: str | None  # where its latest logged run ended
    submitted_at: dt.datetime | None
    duration_s: float | None  # submission to the first logged end
    error: str | None  # the first line of the latest failure
    strategy: str = "DEFAULT"  # where it asked to run: DEFAULT, SPREAD, node:<id> [(soft)]


@dataclass(frozen=True)
class ObjectRow:
    object_id: str
    task_id: str
    job_id: str
    origin: str
    size: int | None
    node_id: str | None
    durable_copy: bool
    state: ObjectState
    created_at: dt.datetime | None


@dataclass(frozen=True)
class ActorRow:
    actor_id: str
    job_id: str
    class_name: str
    name: str | None
    state: ActorState
    restarts: int
    calls: int
    node_id: str | None
    death_cause: str | None
    created_at: dt.datetime | None


@dataclass(frozen=True)
class NodeRow:
    node_id: str
    cluster_id: str | None
    state: NodeState
    resources: dict[str, float]
    started_at: dt.datetime | None
    ended_at: dt.datetime | None
    death_cause: str | None


@dataclass(frozen=True)
class JobRow:
    job_id: str
    state: JobState
    entrypoint: str | None
    driver_pid: int | None
    cluster_id: str | None
    tasks: int
    started_at: dt.datetime | None
    ended_at: dt.datetime | None


def row_json(row: Any) -> dict[str, Any]:
    """A listing row as JSON-ready data: timestamps in ISO 8601."""
    return {k: v.isoformat() if isinstance(v, dt.datetime) else v for k, v in dataclasses.asdict(row).items()}


def check_state(state: str | None, states: type[S], what: str) -> S | None:
    """``state``, upper-cased, as a member of ``states``; an error listing them if it is none."""
    if state is None:
        return None
    try:
        return states(state.strip().upper())
    except ValueError:
        valid = ", ".join(s.value for s in states)
        raise EmberUserError(f"{state!r} is not a state of {what}; expected one of {valid}") from None


def check_limit(limit: int) -> int:
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= LIMIT_MAX:
        raise EmberUserError(f"limit={limit!r}: expected an int from 1 to {LIMIT_MAX:,}")
    return limit


def _scope(conn: Any, job: str | None, state: str | None, states: type[S], what: str,
           limit: int) -> tuple[bytes, S | None, int]:
    """A job listing's arguments, checked: the job's id, the state wanted, the limit."""
    return resolve_job(conn, job), check_state(state, states, what), check_limit(limit)


def first_line(text: str | None) -> str | None:
    """The line that says what went wrong: "task f raised ValueError('x')" becomes "ValueError('x')"."""
    if not text:
        return None
    line = text.strip().splitlines()[0]
    if line.startswith("task ") and " raised " in line:
        line = line.split(" raised ", 1)[1]
    return line


_LAST_ATTEMPT = ("(SELECT a.state FROM task_attempts a WHERE a.task_id = t.task_id "
                 "ORDER BY a.attempt DESC LIMIT 1)")
# An actor's creation has no logged end: it is FINISHED once a worker ran its
# constructor, FAILED if the constructor (or an argument of it) failed.
_CONSTRUCTOR_FAILED = "w.death_cause LIKE '%%its constructor%%'"
CREATION_STATE_SQL = (
    f"(SELECT CASE WHEN count(*) = 0 THEN '{TaskState.SUBMITTED}' WHEN bool_or({_CONSTRUCTOR_FAILED}) "
    f"THEN '{TaskState.FAILED}' ELSE '{TaskState.FINISHED}' END FROM workers w WHERE w.actor_id = t.actor_id)")
CREATION_ERROR_SQL = (
    "(SELECT w.death_cause FROM workers w WHERE w.actor_id = t.actor_id AND " + _CONSTRUCTOR_FAILED +
    " ORDER BY w.ended_at LIMIT 1)")
# A task's state as listed: its latest logged end, else SUBMITTED (creations: above). ``t`` is tasks.
TASK_STATE_SQL = ("COALESCE(" + _LAST_ATTEMPT + ", CASE WHEN t.kind = " + str(KIND_ACTOR_CREATION) +
                  f" THEN {CREATION_STATE_SQL} ELSE '{TaskState.SUBMITTED}' END)")


@dataclass(frozen=True)
class TaskFilter:
    """What ``ember list tasks`` and the dashboard's task view narrow a job's tasks to; all optional.

    ``function`` and ``error`` match a part of the name or of the latest error, case aside;
    ``node`` a prefix of the node id of the latest logged run; ``since``/``until`` bound submission.
    """

    state: str | None = None
    function: str | None = None
    node: str | None = None
    retried: bool = False  # more than one attempt
    rebuilt: bool = False  # ran again to rebuild lost results
    error: str | None = None
    since: dt.datetime | None = None
    until: dt.datetime | None = None


def _literal(text: str) -> str:
    """``text`` for a LIKE pattern, its wildcards taken literally."""
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _like(text: str) -> str:
    """``text`` as a LIKE pattern matching it anywhere."""
    return "%" + _literal(text) + "%"


def _task_where(wanted: str | None, f: TaskFilter) -> tuple[str, dict[str, Any]]:
    """The page query's extra conditions on ``t`` (tasks) for a filter, and their parameters."""
    clauses: list[str] = []
    params: dict[str, Any] = {}
    if wanted:
        clauses.append(f"{TASK_STATE_SQL} = %(state)s")
        params["state"] = wanted
    if f.function:
        clauses.append("(t.function_name ILIKE %(function)s OR t.method ILIKE %(function)s)")
        params["function"] = _like(f.function.strip())
    if f.node:
        clauses.append("(SELECT a.node_id FROM task_attempts a WHERE a.task_id = t.task_id "
                       "ORDER BY a.attempt DESC LIMIT 1) LIKE %(node)s")
        params["node"] = _literal(f.node.strip()) + "%"
    if f.retried:
        clauses.append("EXISTS (SELECT 1 FROM task_attempts a WHERE a.task_id = t.task_id AND a.attempt > 0)")
    if f.rebuilt:
        clauses.append("(SELECT count(*) FROM task_attempts a WHERE a.task_id = t.task_id) > 1")
    if f.error:
        clauses.append("(SELECT a.error FROM task_attempts a WHERE a.task_id = t.task_id "
                       "ORDER BY a.attempt DESC LIMIT 1) ILIKE %(error)s")
        params["error"] = _like(f.error.strip())
    if f.since is not None:
        clauses.append("t.submitted_at >= %(since)s")
        params["since"] = f.since
    if f.until is not None:
        clauses.append("t.submitted_at < %(until)s")
        params["until"] = f.until
    return "".join(" AND " + c for c in clauses), params


def list_tasks(conn: Any, job: str | None, state: str | None, limit: int,
               where: TaskFilter | None = None, offset: int = 0, strategy_sql: str = "NULL::jsonb") -> list[TaskRow]:
    """A page of a job's tasks, newest first: ``limit`` rows after skipping ``offset`` that match ``where``."""
    job_id, wanted, limit = _scope(conn, job, state or (where.state if where else None), TaskState, "tasks",
                                   limit)
    offset = check_offset(offset)
    conditions, params = _task_where(wanted, where or TaskFilter())
    # The page is chosen first (through tasks.job_id), then only its rows
    # read their attempts: a page costs the same in a job of any size.
    rows = conn.execute(
        "WITH page AS (SELECT t.task_id FROM tasks t WHERE t.job_id = %(job)s " + conditions +
        " ORDER BY t.submitted_at DESC, t.task_id DESC LIMIT %(limit)s OFFSET %(offset)s) "
        "SELECT t.task_id, t.job_id, t.kind, t.function_name, t.method, ac.class_name, t.submitted_at, "
        "last.attempt, " + TASK_STATE_SQL + ", last.node_id, COALESCE(last.error, CASE WHEN t.kind = " +
        str(KIND_ACTOR_CREATION) + " THEN " + CREATION_ERROR_SQL + " END), runs.n, runs.first_end, " +
        strategy_sql + " "
        "FROM page JOIN tasks t ON t.task_id = page.task_id "
        "LEFT JOIN actors ac ON ac.actor_id = t.actor_id "
        "LEFT JOIN LATERAL (SELECT a.attempt, a.state, a.node_id, a.error FROM task_attempts a "
        "  WHERE a.task_id = t.task_id ORDER BY a.attempt DESC LIMIT 1) last ON true "
        "LEFT JOIN LATERAL (SELECT count(*) AS n, min(a.finished_at) AS first_end FROM task_attempts a "
        "  WHERE a.task_id = t.task_id) runs ON true "
        "ORDER BY t.submitted_at DESC, t.task_id DESC",
        {"job": job_id, "limit": limit, "offset": offset, **params}).fetchall()
    return [_task_row(row) for row in rows]


def display_name(kind: int, function_name: str, method: str | None, class_name: str | None) -> str:
    """The function's name; ``Class.method`` for an actor call, ``Class.__init__`` for a creation."""
    if kind == KIND_ACTOR_CALL:
        return f"{class_name or 'actor'}.{method}"
    if kind == KIND_ACTOR_CREATION:
        return f"{function_name}.__init__"
    return function_name


def _task_row(row: tuple) -> TaskRow:
    (task_id, job_id, kind, function_name, method, class_name, submitted_at,
     attempt, state, node_id, error, runs, first_end, strategy) = row
    name = display_name(kind, function_name, method, class_name)
    duration = (first_end - submitted_at).total_seconds() if first_end and submitted_at else None
    return TaskRow(task_id.hex(), job_id.hex(), name, TaskState(state or TaskState.SUBMITTED),
                   (attempt or 0) + 1, max((runs or 0) - 1, 0), node_id, submitted_at,
                   max(duration, 0.0) if duration is not None else None, first_line(error),
                   describe_strategy(strategy))


def list_objects(conn: Any, job: str | None, state: str | None, limit: int) -> list[ObjectRow]:
    job_id, wanted, limit = _scope(conn, job, state, ObjectState, "objects", limit)
    rows = conn.execute(
        "SELECT object_id, task_id, job_id, origin, size, node_id, "
        "durable_copy IS NOT NULL OR durable_path IS NOT NULL, state, created_at FROM objects "
        "WHERE job_id = %(job)s" + (" AND state = %(state)s" if wanted else "") +
        " ORDER BY created_at DESC, object_id DESC LIMIT %(limit)s",
        {"job": job_id, "state": wanted, "limit": limit}).fetchall()
    return [ObjectRow(object_id.hex(), task_id.hex(), job_bytes.hex(), origin, size, node_id, durable,
                      ObjectState(state), created_at)
            for object_id, task_id, job_bytes, origin, size, node_id, durable, state, created_at in rows]


# An actor's state, from the workers started for it (``lives``: how many; ``last``: the latest):
# none yet; the latest still running; the latest ended but the actor comes back (restarts left, the
# end was not a stop of the actor itself, and its cluster still runs); or gone for good.
_RESTARTS_LEFT = "lives.n - 1 < a.max_restarts"
_NOT_STOPPED = ("last.death_cause NOT LIKE 'actor stopped:%%' AND last.death_cause NOT LIKE '%%its constructor%%' "
                "AND EXISTS (SELECT 1 FROM nodes n WHERE n.cluster_id = last.cluster_id AND n.ended_at IS NULL)")
ACTOR_STATE_SQL = (f"(CASE WHEN lives.n = 0 THEN '{ActorState.PENDING}' "
                   f"WHEN last.ended_at IS NULL THEN '{ActorState.ALIVE}' "
                   f"WHEN {_RESTARTS_LEFT} AND {_NOT_STOPPED} THEN '{ActorState.RESTARTING}' "
                   f"ELSE '{ActorState.DEAD}' END)")


def list_actors(conn: Any, job: str | None, state: str | None, limit: int, offset: int = 0) -> list[ActorRow]:
    job_id, wanted, limit = _scope(conn, job, state, ActorState, "actors", limit)
    rows = conn.execute(
        "SELECT a.actor_id, a.job_id, a.class_name, a.name, a.created_at, "
        "(SELECT count(*) FROM actor_calls c WHERE c.actor_id = a.actor_id), lives.n, last.node_id, "
        "last.death_cause, " + ACTOR_STATE_SQL + " FROM actors a "
        "LEFT JOIN LATERAL (SELECT count(*) AS n FROM workers w WHERE w.actor_id = a.actor_id) lives ON true "
        "LEFT JOIN LATERAL (SELECT w.node_id, w.cluster_id, w.ended_at, w.death_cause FROM workers w "
        "  WHERE w.actor_id = a.actor_id ORDER BY w.started_at DESC LIMIT 1) last ON true "
        "WHERE a.job_id = %s" + (f" AND {ACTOR_STATE_SQL} = %s" if wanted else "") +
        " ORDER BY a.created_at DESC, a.actor_id DESC LIMIT %s OFFSET %s",
        (job_id, *([wanted] if wanted else []), limit, check_offset(offset))).fetchall()
    return [ActorRow(actor_id.hex(), job_bytes.hex(), class_name, name, ActorState(state), max(lives - 1, 0), calls,
                     node_id, cause, created_at)
            for actor_id, job_bytes, class_name, name, created_at, calls, lives, node_id, cause, state in rows]


def check_offset(offset: int) -> int:
    if isinstance(offset, bool) or not isinstance(offset, int) or not 0 <= offset <= OFFSET_MAX:
        raise EmberUserError(f"offset={offset!r}: expected an int from 0 to {OFFSET_MAX:,}")
    return offset


def list_nodes(conn: Any, job: str | None, state: str | None, limit: int, offset: int = 0) -> list[NodeRow]:
    job_id, wanted, limit = _scope(conn, job, state, NodeState, "nodes", limit)
    alive = {None: "", NodeState.ALIVE: " AND n.ended_at IS NULL", NodeState.DEAD: " AND n.ended_at IS NOT NULL"}
    rows = conn.execute(
        "SELECT n.node_id, n.cluster_id, n.resources, n.started_at, n.ended_at, n.death_cause FROM nodes n "
        "JOIN jobs j ON j.cluster_id = n.cluster_id WHERE j.job_id = %s" + alive[wanted] +
        " ORDER BY n.started_at DESC, n.node_id DESC LIMIT %s OFFSET %s", (job_id, limit, check_offset(offset))
    ).fetchall()
    return [NodeRow(node_id, cluster_id, NodeState.DEAD if ended_at else NodeState.ALIVE,
                    dict(resources or {}), started_at, ended_at, cause)
            for node_id, cluster_id, resources, started_at, ended_at, cause in rows]


_JOB_COLUMNS = ("SELECT j.job_id, j.state, j.entrypoint, j.driver_pid, j.cluster_id, "
                "(SELECT count(*) FROM tasks t WHERE t.job_id = j.job_id), j.started_at, j.ended_at FROM jobs j")


def list_jobs(conn: Any, state: str | None, limit: int, offset: int = 0) -> list[JobRow]:
    wanted = check_state(state, JobState, "jobs")
    limit = check_limit(limit)
    rows = conn.execute(
        _JOB_COLUMNS + (" WHERE j.state = %(state)s" if wanted else "") +
        " ORDER BY j.started_at DESC, j.job_id DESC LIMIT %(limit)s OFFSET %(offset)s",
        {"state": wanted, "limit": limit, "offset": check_offset(offset)}).fetchall()
    return [_job_row(r) for r in rows]


def job_row(conn: Any, job: str | None) -> JobRow:
    return _job_row(conn.execute(_JOB_COLUMNS + " WHERE j.job_id = %s", (resolve_job(conn, job),)).fetchone())


def _job_row(row: tuple) -> JobRow:
    return JobRow(row[0].hex(), JobState(row[1]), *row[2:])


@dataclass(frozen=True)
class JobStats:
    """What a job's tasks came to: tasks whose latest attempt failed, runs after the first, chaos runs over it."""

    job_id: str
    failures: int
    reruns: int  # retries after a crash and rebuilds of lost results
    chaos_runs: int


def job_stats(conn: Any, job_ids: list[str]) -> dict[str, JobStats]:
    """Per job of ``job_ids`` (a page of jobs): one pass over those jobs' attempts, through tasks.job_id."""
    if not job_ids:
        return {}
    ids = [bytes.fromhex(j) for j in job_ids]
    counts = {job: (failed, reruns) for job, failed, reruns in conn.execute(
        f"SELECT t.job_id, count(DISTINCT a.task_id) FILTER (WHERE a.state = '{TaskState.FAILED}' AND NOT EXISTS "
        "(SELECT 1 FROM task_attempts b WHERE b.task_id = a.task_id AND b.attempt > a.attempt)), "
        "count(*) - count(DISTINCT a.task_id) FROM tasks t JOIN task_attempts a ON a.task_id = t.task_id "
        "WHERE t.job_id = ANY(%s) GROUP BY t.job_id", (ids,))}
    chaos: dict[bytes, int] = {}
    if conn.execute("SELECT to_regclass('chaos_runs')").fetchone()[0] is not None:
        chaos = dict(conn.execute("SELECT job_id, count(*) FROM chaos_runs WHERE job_id = ANY(%s) GROUP BY job_id",
                                  (ids,)).fetchall())
    return {job.hex(): JobStats(job.hex(), *counts.get(job, (0, 0)), chaos.get(job, 0)) for job in ids}
