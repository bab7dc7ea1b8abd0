"""Reading the lineage log back, with or without a running cluster.

``open_log()`` connects to the same PostgreSQL the runtime writes to (the
embedded server under ``$EMBER_HOME``, started for the occasion if needed,
or ``EMBER_GCS_URL``) and answers three questions: what is this task, what is
this object, and what did it come from.

It must never write to the log.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass, field
from typing import Any

from ember.exceptions import EmberUserError

LINEAGE_DEPTH_MAX = 10_000


class UnknownIdError(EmberUserError, KeyError):
    """The id names no task or object in this lineage log."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "unknown id"


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
    attempts: list[dict[str, Any]]

    @property
    def state(self) -> str:
        return self.attempts[-1]["state"] if self.attempts else "SUBMITTED"


@dataclass(frozen=True)
class ObjectRecord:
    object_id: str
    task_id: str
    job_id: str
    origin: str  # 'return', 'put' or 'argument' (a large by-value task argument)
    size: int | None
    has_durable_copy: bool
    state: str
    locations: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Lineage:
    """Ancestors of one id: tasks and objects, with edges object -> task and task -> object."""

    root: str
    tasks: dict[str, TaskRecord]
    objects: dict[str, ObjectRecord]
    edges: list[tuple[str, str]]  # (from, to): an object feeds a task, a task creates an object


class LineageLog:
    """A read-only view of the lineage log."""

    def __init__(self, conninfo: str, release: Any = None) -> None:
        import psycopg

        self._conn = psycopg.connect(conninfo, autocommit=True)
        self._conn.read_only = True
        self._release = release

    def close(self) -> None:
        self._conn.close()
        if self._release is not None:
            self._release()
            self._release = None

    def __enter__(self) -> "LineageLog":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def task(self, task_id_hex: str) -> TaskRecord:
        task_id = _id_bytes(task_id_hex)
        row = self._conn.execute(
            "SELECT task_id, job_id, kind, function_name, parent_task_id, actor_id, method, num_returns, "
            "max_retries, args FROM tasks WHERE task_id = %s", (task_id,)).fetchone()
        if row is None:
            raise UnknownIdError(f"no task {task_id_hex} in the lineage log")
        deps = [r[0].hex() for r in self._conn.execute(
            "SELECT object_id FROM task_args WHERE task_id = %s ORDER BY object_id", (task_id,))]
        attempts = [
            {"attempt": a, "state": s, "node_id": n, "error": e}
            for a, s, n, e in self._conn.execute(
                "SELECT attempt, state, node_id, error FROM task_attempts WHERE task_id = %s ORDER BY attempt",
                (task_id,))
        ]
        return TaskRecord(
            row[0].hex(), row[1].hex(), row[2], row[3], _hex(row[4]), _hex(row[5]), row[6], row[7], row[8],
            pickle.loads(row[9]) if row[9] else None, deps, attempts,
        )

    def object(self, object_id_hex: str) -> ObjectRecord:
        object_id = _id_bytes(object_id_hex)
        row = self._conn.execute(
            "SELECT object_id, task_id, job_id, origin, size, durable_copy IS NOT NULL OR durable_path IS NOT NULL, "
            "state, node_id "
            "FROM objects WHERE object_id = %s", (object_id,)).fetchone()
        if row is None:
            raise UnknownIdError(f"no object {object_id_hex} in the lineage log")
        # The node that made the object holds the first copy (until it is
        # lost); object_locations holds the copies made or lost since.
        locations = [row[7]] if row[7] and row[6] != "LOST" else []
        for node_id, removed in self._conn.execute(
                "SELECT node_id, removed_at IS NOT NULL FROM object_locations WHERE object_id = %s", (object_id,)):
            if removed and node_id in locations:
                locations.remove(node_id)
            elif not removed and node_id not in locations:
                locations.append(node_id)
        return ObjectRecord(row[0].hex(), row[1].hex(), row[2].hex(), row[3], row[4], row[5], row[6], locations)

    def lineage(self, id_hex: str, depth: int = LINEAGE_DEPTH_MAX) -> Lineage:
        """Everything ``id_hex`` (a task or an object) came from, breadth first, up to ``depth`` steps."""
        tasks: dict[str, TaskRecord] = {}
        objects: dict[str, ObjectRecord] = {}
        edges: list[tuple[str, str]] = []
        frontier: list[tuple[str, str]] = [("object" if len(id_hex) == 40 else "task", id_hex)]
        if not self._exists(*frontier[0]):
            raise UnknownIdError(f"no task or object {id_hex} in the lineage log")
        for _ in range(depth):
            if not frontier:
                break
            next_frontier: list[tuple[str, str]] = []
            for kind, ident in frontier:
                if kind == "object":
                    if ident in objects:
                        continue
                    try:
                        obj = self.object(ident)
                    except UnknownIdError:
                        # An object a task read but never logged as created here
                        # (its creating task's results were lost with their owner).
                        continue
                    objects[ident] = obj
                    edges.append((obj.task_id, ident))
                    if obj.origin == "return":
                        next_frontier.append(("task", obj.task_id))
                else:
                    if ident in tasks:
                        continue
                    try:
                        task = self.task(ident)
                    except UnknownIdError:
                        continue
                    tasks[ident] = task
                    for dep in task.dependencies:
                        edges.append((dep, ident))
                        next_frontier.append(("object", dep))
            frontier = next_frontier
        return Lineage(id_hex, tasks, objects, edges)

    def _exists(self, kind: str, ident: str) -> bool:
        table, column = ("objects", "object_id") if kind == "object" else ("tasks", "task_id")
        return self._conn.execute(
            f"SELECT 1 FROM {table} WHERE {column} = %s", (_id_bytes(ident),)).fetchone() is not None


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
    import os

    from ember.lineage._postgres import EmbeddedPostgres

    url = gcs_url or os.environ.get("EMBER_GCS_URL")
    if url:
        return url, None
    server = EmbeddedPostgres()
    server.start()
    return server.conninfo, server.release


def _id_bytes(id_hex: str) -> bytes:
    try:
        raw = bytes.fromhex(id_hex)
    except (TypeError, ValueError):
        raise UnknownIdError(f"{id_hex!r} is not a task or object id (hex expected)") from None
    if len(raw) not in (16, 20):
        raise UnknownIdError(f"{id_hex!r} is not a task id (32 hex digits) or an object id (40)")
    return raw


def _hex(value: bytes | None) -> str | None:
    return value.hex() if value is not None else None
