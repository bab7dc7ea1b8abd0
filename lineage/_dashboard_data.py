"""The dashboard's reads that ``ember list`` and ``ember lineage`` have no twin of.

Descendants of an object or task (the lineage walk runs up; this one runs
down), a job's runs for its timeline, process and node deaths, actors'
lives, chaos runs and a job's throughput. Everything else the dashboard shows
comes from ``LineageLog``'s listings and records, the queries the CLI uses.

Every read is bounded in SQL: a page of rows (``LIMIT``/``OFFSET``), a
number of buckets, a number of generations and tasks; each reads through an
index (``tasks.job_id``, primary keys, ``task_args.object_id``), so its cost
follows the size of the answer, not of the log.

It must never write to the log.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from typing import Any

from ember.lineage._ids import UnknownIdError, id_bytes
from ember.lineage._listing import display_name
from ember.lineage._reader import Lineage, LineageLog
from ember.lineage._states import ProcessKind, TaskState

RUNS_MAX = 2_000  # runs one timeline page draws
DEATHS_MAX = 500
PROCESSES_MAX = 200  # lanes a timeline draws for a cluster's processes
BUCKETS_MAX = 600  # a throughput chart's bars
DESCENDANT_TASKS_MAX = 1_000
_LAST_BYTE = b"\xff" * 4  # an object id is its task's id and a 4-byte index


__all__ = ["ActorLife", "ChaosRun", "Death", "Process", "Run", "actor_calls", "actor_lives", "actor_row", "chaos_run", "chaos_runs",
           "deaths", "descendants", "processes", "results_of", "throughput", "timeline_runs"]


def _has_table(log: LineageLog, name: str) -> bool:
    return log.query("SELECT to_regclass(%s)", (name,))[0][0] is not None


# -- down the graph ------------------------------------------------------------------------


def descendants(log: LineageLog, id_hex: str, depth: int, tasks_max: int = DESCENDANT_TASKS_MAX) -> Lineage:
    """What was made from ``id_hex``: the tasks that read it, their results, and so on ``depth`` generations."""
    root = id_bytes(id_hex)
    tasks: dict[str, Any] = {}
    objects: dict[str, Any] = {}
    edges: list[tuple[str, str]] = []
    cut: list[str] = []
    if len(root) == 20:
        objects.update(log._objects([root]))
        if not objects:
            raise UnknownIdError(f"no object {id_hex} in the lineage log")
        frontier_objects = [root]
        frontier_tasks: list[bytes] = []
    else:
        tasks.update(log._tasks([root]))
        if not tasks:
            raise UnknownIdError(f"no task {id_hex} in the lineage log")
        frontier_objects, frontier_tasks = [], [root]
    for generation in range(depth + 1):
        if frontier_tasks:
            made = results_of(log, frontier_tasks)
            objects.update(made)
            edges += [(o.task_id, oid) for oid, o in made.items()]
            frontier_objects += [bytes.fromhex(oid) for oid in made]
            frontier_tasks = []
        if generation == depth or not frontier_objects:
            cut += [o.hex() for o in frontier_objects] if generation == depth else []
            break
        readers = log.query("SELECT object_id, task_id FROM task_args WHERE object_id = ANY(%s) "
                            "ORDER BY object_id, task_id LIMIT %s", (frontier_objects, tasks_max + 1))
        frontier_objects = []
        wanted = []
        for object_id, task_id in readers:
            edges.append((object_id.hex(), task_id.hex()))
            if task_id.hex() not in tasks and task_id not in wanted:
                wanted.append(task_id)
        room = max(tasks_max - len(tasks), 0)
        if len(wanted) > room:
            cut += [t.hex() for t in wanted[room:]]
            wanted = wanted[:room]
        found = log._tasks(wanted) if wanted else {}
        tasks.update(found)
        frontier_tasks = [bytes.fromhex(t) for t in found]
    known = tasks.keys() | objects.keys()
    kept = [(a, b) for a, b in dict.fromkeys(edges) if a in known and b in known]
    return Lineage(root.hex(), tasks, objects, kept, depth, tuple(dict.fromkeys(cut)))


def results_of(log: LineageLog, task_ids: list[bytes]) -> dict[str, Any]:
    """The objects these tasks returned: a primary-key range of ``objects`` per task."""
    rows = log.query("SELECT o.object_id FROM unnest(%s::bytea[]) AS t(id) JOIN objects o "
                     "ON o.object_id > t.id AND o.object_id <= t.id || %s::bytea AND o.origin = 'return' LIMIT %s",
                     (task_ids, _LAST_BYTE, DESCENDANT_TASKS_MAX * 4))
    return log._objects([r[0] for r in rows]) if rows else {}


# -- a job's runs, for its timeline ------------------------------------------------------------


@dataclass(frozen=True)
class Run:
    task_id: str
    name: str
    attempt: int
    state: TaskState
    node_id: str | None
    # When it began, by its worker's clock (logged since v9). Where a log has no start (an
    # older log, a run that never reached a worker): the task's submission for a first run,
    # else its end less the first run's time, never before the end of the attempt before it.
    began_at: dt.datetime | None
    ended_at: dt.datetime | None
    rebuild: bool  # ran after an earlier attempt had finished: a rebuild of lost results
    error: str | None
    worker_pid: int | None = None
    began_logged: bool = False  # began_at is the logged start, not an estimate


def timeline_runs(log: LineageLog, job_id: bytes, offset: int, limit: int) -> list[Run]:
    """A page of a job's logged runs (attempts), in the order they ended."""
    rows = log.query(
        "WITH page AS (SELECT a.task_id, a.attempt FROM tasks t JOIN task_attempts a ON a.task_id = t.task_id "
        "WHERE t.job_id = %(job)s ORDER BY a.finished_at, a.task_id, a.attempt LIMIT %(limit)s OFFSET %(offset)s) "
        "SELECT t.task_id, t.kind, t.function_name, t.method, ac.class_name, a.attempt, a.state, a.node_id, "
        "t.submitted_at, a.finished_at, prev.state, prev.finished_at, a.error, "
        "(SELECT f.finished_at FROM task_attempts f WHERE f.task_id = a.task_id AND f.attempt = 0), "
        + log.run_columns("a") + " "
        "FROM page JOIN task_attempts a ON a.task_id = page.task_id AND a.attempt = page.attempt "
        "JOIN tasks t ON t.task_id = a.task_id LEFT JOIN actors ac ON ac.actor_id = t.actor_id "
        "LEFT JOIN LATERAL (SELECT p.state, p.finished_at FROM task_attempts p WHERE p.task_id = a.task_id "
        "AND p.attempt < a.attempt ORDER BY p.attempt DESC LIMIT 1) prev ON true "
        "ORDER BY a.finished_at, a.task_id, a.attempt",
        {"job": job_id, "limit": min(limit, RUNS_MAX), "offset": offset})
    runs = []
    for (task_id, kind, function, method, class_name, attempt, state, node_id, submitted, finished, prev_state,
         prev_end, error, first_end, started, worker_pid) in rows:
        began = started or submitted
        if started is None and prev_end is not None and finished is not None:
            took = (first_end - submitted) if first_end and submitted else dt.timedelta(0)
            began = max(prev_end, finished - took)
        runs.append(Run(task_id.hex(), display_name(kind, function, method, class_name), attempt, TaskState(state),
                        node_id, began, finished, prev_state == TaskState.FINISHED, error, worker_pid,
                        started is not None))
    return runs


@dataclass(frozen=True)
class Death:
    kind: ProcessKind  # NODE, or the kind of a process that died: WORKER, STORE, SCHEDULER, GCS
    node_id: str | None
    pid: int | None
    at: dt.datetime
    cause: str


def deaths(log: LineageLog, cluster_id: str | None, since: dt.datetime | None,
           until: dt.datetime | None) -> list[Death]:
    """Nodes and processes of a cluster that ended other than by a clean shutdown, in a span of time."""
    if cluster_id is None:
        return []
    span = {"cluster": cluster_id, "since": since or dt.datetime.min.replace(tzinfo=dt.timezone.utc),
            "until": until or dt.datetime.max.replace(tzinfo=dt.timezone.utc), "limit": DEATHS_MAX}
    rows = log.query(
        f"(SELECT '{ProcessKind.NODE}', node_id, NULL::int, ended_at, death_cause FROM nodes "
        "WHERE cluster_id = %(cluster)s "
        " AND ended_at BETWEEN %(since)s AND %(until)s AND death_cause NOT LIKE '%%shut down' LIMIT %(limit)s) "
        "UNION ALL (SELECT kind, node_id, pid, ended_at, death_cause FROM workers WHERE cluster_id = %(cluster)s "
        " AND ended_at BETWEEN %(since)s AND %(until)s AND death_cause IS NOT NULL "
        " AND death_cause NOT LIKE '%%shut down' ORDER BY ended_at LIMIT %(limit)s)", span)
    return sorted((Death(ProcessKind(kind), node, pid, at, cause or "?") for kind, node, pid, at, cause in rows),
                  key=lambda d: d.at)


@dataclass(frozen=True)
class Process:
    """An ember process of a cluster (worker, store, scheduler, GCS), as the GCS service logged it."""

    kind: ProcessKind
    node_id: str | None
    pid: int | None
    started_at: dt.datetime | None
    ended_at: dt.datetime | None
    death_cause: str | None
    actor_class: str | None  # the actor a worker was started for


def processes(log: LineageLog, cluster_id: str | None, since: dt.datetime, until: dt.datetime) -> list[Process]:
    """The processes of a cluster alive at some time between ``since`` and ``until``, by node, then start."""
    if cluster_id is None:
        return []
    rows = log.query(
        "SELECT w.kind, w.node_id, w.pid, w.started_at, w.ended_at, w.death_cause, a.class_name FROM workers w "
        "LEFT JOIN actors a ON a.actor_id = w.actor_id WHERE w.cluster_id = %s AND w.started_at <= %s "
        "AND (w.ended_at IS NULL OR w.ended_at >= %s) AND w.node_id IS NOT NULL "
        "ORDER BY w.node_id, w.started_at LIMIT %s", (cluster_id, until, since, PROCESSES_MAX))
    return [Process(ProcessKind(row[0]), *row[1:]) for row in rows]


# -- actors --------------------------------------------------------------------------------


@dataclass(frozen=True)
class ActorLife:
    """One process an actor lived in: where, from when to when, why it ended, calls it replayed on start."""

    node_id: str | None
    pid: int | None
    started_at: dt.datetime | None
    ended_at: dt.datetime | None
    death_cause: str | None
    replayed: int


def actor_lives(log: LineageLog, actor_id_hex: str, lives_max: int = 200) -> list[ActorLife]:
    """Each process an actor ran in, in order; a restart replays the calls logged since its last checkpoint."""
    actor_id = id_bytes_any(actor_id_hex)
    rows = log.query(
        "SELECT w.node_id, w.pid, w.started_at, w.ended_at, w.death_cause, "
        "(SELECT count(*) FROM actor_calls c JOIN tasks t ON t.task_id = c.task_id WHERE c.actor_id = w.actor_id "
        " AND t.submitted_at < w.started_at AND c.seq > COALESCE((SELECT max(k.seq) FROM checkpoints k "
        " WHERE k.actor_id = w.actor_id AND k.created_at < w.started_at), -1)) "
        "FROM workers w WHERE w.actor_id = %s ORDER BY w.started_at LIMIT %s", (actor_id, lives_max))
    # The first process ran the constructor only: nothing was logged before it to replay.
    return [ActorLife(node_id, pid, started, ended, cause, replayed if i else 0)
            for i, (node_id, pid, started, ended, cause, replayed) in enumerate(rows)]


def actor_calls(log: LineageLog, actor_id_hex: str, offset: int, limit: int) -> list[tuple]:
    """A page of an actor's calls in their order: seq, task id, method, state of the latest attempt, runs."""
    rows = log.query(
        "SELECT c.seq, c.task_id, c.method, (SELECT a.state FROM task_attempts a WHERE a.task_id = c.task_id "
        "ORDER BY a.attempt DESC LIMIT 1), (SELECT count(*) FROM task_attempts a WHERE a.task_id = c.task_id) "
        "FROM actor_calls c WHERE c.actor_id = %s ORDER BY c.seq LIMIT %s OFFSET %s",
        (id_bytes_any(actor_id_hex), limit, offset))
    return [(seq, task_id, method, TaskState(state or TaskState.SUBMITTED), runs)
            for seq, task_id, method, state, runs in rows]


def id_bytes_any(id_hex: str) -> bytes:
    """An actor's (or any other) id in hex, as bytes; ``UnknownIdError`` if it is not hex."""
    try:
        return bytes.fromhex(id_hex)
    except ValueError:
        raise UnknownIdError(f"{id_hex!r} is not an id (hex expected)") from None


def actor_row(log: LineageLog, actor_id_hex: str) -> tuple:
    rows = log.query("SELECT a.actor_id, a.job_id, a.class_name, a.name, a.max_restarts, a.creation_task_id, "
                     "a.created_at FROM actors a WHERE a.actor_id = %s", (id_bytes_any(actor_id_hex),))
    if not rows:
        raise UnknownIdError(f"no actor {actor_id_hex} in the lineage log")
    return rows[0]


# -- chaos runs ----------------------------------------------------------------------------


@dataclass(frozen=True)
class ChaosRun:
    """A run of ``chaos run`` as ``chaos/_record.py`` logged it (while it runs: the faults so far)."""

    run_id: str
    job_id: str | None
    command: list[str]
    seed: int | None
    started_at: dt.datetime
    ended_at: dt.datetime | None  # None while it runs
    exit_code: int | None
    options: dict[str, Any]
    faults: list[dict[str, Any]]
    tally: dict[str, Any]
    notes: list[str]


_CHAOS_COLUMNS = ("SELECT run_id, job_id, command, seed, started_at, ended_at, exit_code, options, faults, tally, "
                  "notes FROM chaos_runs")


def _chaos_run(row: tuple) -> ChaosRun:
    run_id, job_id, command, seed, started, ended, code, options, faults, tally, notes = row
    return ChaosRun(run_id.hex(), job_id.hex() if job_id else None, json.loads(command), seed, started, ended, code,
                    options or {}, faults or [], tally or {}, notes or [])


def chaos_runs(log: LineageLog, job_id: bytes | None, offset: int, limit: int) -> list[ChaosRun]:
    """A page of chaos runs, newest first (of one job, if given)."""
    if not _has_table(log, "chaos_runs"):
        return []
    where = " WHERE job_id = %(job)s" if job_id is not None else ""
    return [_chaos_run(r) for r in log.query(
        _CHAOS_COLUMNS + where + " ORDER BY started_at DESC, run_id DESC LIMIT %(limit)s OFFSET %(offset)s",
        {"job": job_id, "limit": limit, "offset": offset})]


def chaos_run(log: LineageLog, run_id_hex: str) -> ChaosRun:
    rows = log.query(_CHAOS_COLUMNS + " WHERE run_id = %s", (id_bytes_any(run_id_hex),)) \
        if _has_table(log, "chaos_runs") else []
    if not rows:
        raise UnknownIdError(f"no chaos run {run_id_hex} in the lineage log")
    return _chaos_run(rows[0])


def throughput(log: LineageLog, job_id: bytes, start: dt.datetime, end: dt.datetime) -> tuple[float, list[int]]:
    """Tasks finished per bucket of a job between two times: (bucket seconds, count per bucket)."""
    span_s = max((end - start).total_seconds(), 1.0)
    bucket_s = max(1.0, float(int(span_s / BUCKETS_MAX) + 1)) if span_s > BUCKETS_MAX else 1.0
    buckets = int(span_s // bucket_s) + 1
    counts = [0] * buckets
    for index, n in log.query(
            "SELECT floor(extract(epoch FROM a.finished_at - %(start)s) / %(bucket)s)::int AS b, count(*) "
            "FROM tasks t JOIN task_attempts a ON a.task_id = t.task_id WHERE t.job_id = %(job)s "
            "AND a.state = %(finished)s AND a.finished_at >= %(start)s AND a.finished_at <= %(end)s "
            "GROUP BY b ORDER BY b LIMIT %(buckets)s",
            {"start": start, "end": end, "bucket": bucket_s, "job": job_id, "buckets": buckets,
             "finished": TaskState.FINISHED}):
        if 0 <= index < buckets:
            counts[index] = n
    return bucket_s, counts

