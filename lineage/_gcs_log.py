"""What the runtime writes to the lineage log, row by row.

Each process that submits work (the driver, every worker) owns one of these:
task specs, attempts, object creations, actor creations and actor calls go
through its group-commit writer. ``seq`` values it returns tell the core
client when a row is durable, so nothing leaves a process before the lineage
that made it is committed. Rows nobody waits for yet go lazily, a batch
every few milliseconds; a process that is about to let something out waits
for them (``wait_committed``), which sends them at once.

It must never block a caller on the database except through
``wait_committed`` (and ``make_durable``, which is bounded by it).
"""

from __future__ import annotations

import json
import pickle
from collections.abc import Callable
from typing import Any

import psycopg.conninfo

from ember import _settings
from ember.exceptions import LineageLogFailedError, LineageLogUnavailableError
from ember.lineage._log_writer import LogWriter, Target
from ember.lineage._states import TaskState
from ember.scheduler._spec import strategy_record

OBJECT_COLUMNS = ("object_id", "task_id", "job_id", "origin", "size", "durable_copy", "durable_path", "node_id",
                  "content_hash", "owner")
# A task result's creation row can be declared before the task ends, so that a
# get waiting for it commits the row while the task runs (``GcsLog.declare``);
# the result's own row then fills in what only the result knows.
TARGETS = {
    "objects_declared": Target("objects", "ON CONFLICT DO NOTHING"),
    "objects_final": Target(
        "objects", "ON CONFLICT (object_id) DO UPDATE SET size = EXCLUDED.size, durable_path = EXCLUDED.durable_path, "
                   "node_id = EXCLUDED.node_id, content_hash = EXCLUDED.content_hash WHERE objects.size IS NULL",
        replaces="objects_declared"),
}
COLUMNS: dict[str, tuple[str, ...]] = {
    "jobs": ("job_id", "cluster_id", "driver_pid", "entrypoint", "namespace"),
    "runtime_envs": ("env_hash", "record"),
    "runtime_env_packages": ("package_hash", "size", "data"),
    "functions": ("function_id", "name", "payload"),
    "tasks": ("task_id", "job_id", "kind", "function_id", "function_name", "parent_task_id", "actor_id",
              "method", "args", "num_returns", "resources", "max_retries", "name", "owner",
              "strategy", "runtime_env"),
    "task_args": ("task_id", "object_id"),
    "task_attempts": ("task_id", "attempt", "node_id", "worker_id", "state", "error", "started_us", "worker_pid"),
    "objects": OBJECT_COLUMNS,
    "objects_declared": OBJECT_COLUMNS,
    "objects_final": OBJECT_COLUMNS,
    "content_hashes": ("object_id", "content_hash"),
    "actors": ("actor_id", "job_id", "creation_task_id", "class_name", "name", "max_restarts", "concurrency"),
    "actor_calls": ("actor_id", "seq", "task_id", "method", "args", "num_returns", "caller"),
    "checkpoints": ("actor_id", "seq", "data"),
    "actor_restarts": ("actor_id", "restart", "task_id", "seq"),
}
_NO_ARGS = pickle.dumps(([], None), protocol=5)
# Small puts keep their bytes in the log, so they can be rebuilt without lineage.
DURABLE_PUT_BYTES_MAX = 64 * 1024


class GcsLog:
    DURABLE_PUT_BYTES_MAX = DURABLE_PUT_BYTES_MAX

    def __init__(
        self,
        conninfo: str,
        on_commit: Callable[[int], None] | None = None,
        on_outage: Callable[[float, BaseException], None] | None = None,
        node_id: str | None = None,
    ) -> None:
        self.node_id = node_id
        self.url = describe_conninfo(conninfo)
        settings = _settings.load()
        self.commit_wait_s = settings.log_commit_wait_s
        self.writer = LogWriter(
            conninfo, COLUMNS, on_commit=on_commit, on_outage=on_outage,
            outage_alert_s=settings.gcs_outage_alert_s,
            # Every process registers the functions it uses, and a job may be
            # logged again; an actor call's place in its order may be logged
            # by the actor and by its caller alike. Other tables' rare repeats (a
            # retried attempt) take the writer's slower skip-existing path
            # only when they happen.
            idempotent_tables=frozenset({"functions", "jobs", "actor_calls", "content_hashes", "runtime_envs",
                                         "runtime_env_packages"}),
            targets=TARGETS,
        )
        self._functions: set[bytes] = set()
        self._shapes: dict[tuple, str] = {}

    @property
    def committed_seq(self) -> int:
        return self.writer.committed_seq

    def wait_committed(self, seq: int, timeout_s: float | None = None) -> bool:
        return self.writer.wait_committed(seq, timeout_s)

    def make_durable(self, seq: int, what: str) -> None:
        """Return once row ``seq`` and every row before it are committed, at most ``commit_wait_s`` later.

        Invariant 1, durable before visible: called before ``what`` (a value,
        a ref) is let out. Past the limit it raises LineageLogUnavailableError
        instead, and ``what`` must not be let out; the rows stay queued and
        commit when the log is back.
        """
        if seq > self.writer.committed_seq and not self.writer.wait_committed(seq, self.commit_wait_s):
            if self.writer.failure is not None:
                raise LineageLogFailedError(self.url, self.writer.failure, what)
            raise LineageLogUnavailableError(self.url, self.commit_wait_s, what)
        assert self.writer.committed_seq >= seq, "invariant 1: durable before visible"

    def close(self) -> None:
        self.writer.close()

    def job(self, job_id: bytes, cluster_id: str, pid: int, entrypoint: str, namespace: str | None = None) -> int:
        return self.writer.append("jobs", (job_id, cluster_id, pid, entrypoint, namespace))

    def runtime_env(self, env_hash: str, text: str, packages: dict[str, bytes]) -> int:
        """An environment's record and the packages it names (content-addressed: a repeat is skipped)."""
        rows = [("runtime_env_packages", (digest, len(data), data)) for digest, data in packages.items()]
        rows.append(("runtime_envs", (env_hash, text)))
        return self.writer.append_rows(rows, urgent=True)

    def function(self, function_id: bytes, name: str, payload: bytes) -> None:
        if function_id not in self._functions:
            self._functions.add(function_id)
            self.writer.append("functions", (function_id, name, payload))

    def task(self, spec: Any, dependencies: list[bytes]) -> int:
        args = pickle.dumps((spec.args, spec.kwargs), protocol=5) if spec.args or spec.kwargs else _NO_ARGS
        rows = [("tasks", (
            spec.task_id, spec.job_id, int(spec.kind), spec.function_id or None, spec.function_name,
            spec.parent_task_id, spec.actor_id, spec.method, args, spec.num_returns,
            self._resources_json(spec.resources), spec.max_retries, spec.name, spec.owner_addr,
            None if spec.strategy is None else json.dumps(strategy_record(spec.strategy)),
            None if spec.runtime_env is None else spec.runtime_env[0],
        ))]
        rows += [("task_args", (spec.task_id, oid)) for oid in dependencies]
        # Lazy: the owner may read the result before this commits; whatever
        # lets the result or a ref to it out of the process waits for it.
        return self.writer.append_rows(rows, urgent=False)

    def _resources_json(self, shape: tuple) -> str:
        # Tasks come in few resource shapes: each is turned into JSON text once,
        # which the writer sends as jsonb as it is (see _binary_arrays).
        found = self._shapes.get(shape)
        if found is None:
            found = self._shapes[shape] = json.dumps(dict(shape))
        return found

    def declare(self, task_id: bytes, job_id: bytes, return_ids: list[bytes]) -> int:
        """The creation rows of a running task's results, before it ends (the ``finished`` rows complete them).

        Not urgent: whoever declares commits them at once (``writer.expedite``),
        so they are durable by the time the result comes back.
        """
        return self.writer.append_rows(
            [("objects_declared", (oid, task_id, job_id, "return", None, None, None, None, None, None))
             for oid in return_ids], urgent=False)

    def finished(self, task_id: bytes, attempt: int, job_id: bytes, failed: bool,
                 objects: list[tuple[bytes, int, str | None]], error: bytes | None = None,
                 hashes: list[bytes | None] | None = None, run: tuple[int, int, str | None] = (0, 0, None),
                 declared: bool = False) -> int:
        """An attempt's end and the objects it made (id, size, durable copy's file): one append, nobody waits for it.

        ``error`` is the serialized error a failed attempt returned; its text
        goes in the row (read only on failure: the common path pays nothing).
        ``hashes``: the results' content hashes, as their worker sent them. ``run``: when the
        run began (epoch microseconds), the worker's pid and its node, as it sent them (0 or None: not known).
        ``declared``: the objects' rows were declared (``declare``); these complete them.
        """
        state, text = error_row(error) if failed else (TaskState.FINISHED, None)
        started_us, worker_pid, worker_node = run
        # The node the attempt ran on (its worker's); this one's when the worker did not say (it never ran).
        rows = [("task_attempts", (task_id, attempt, worker_node or self.node_id, None, state, text, started_us or None,
                                   worker_pid or None))]
        if hashes is None or failed or len(hashes) != len(objects):
            hashes = [None] * len(objects)  # no hash is honest; a wrong one would not be
        table = "objects_final" if declared else "objects"
        rows += [(table, (oid, task_id, job_id, "return", size, None, path, self.node_id, digest, None))
                 for (oid, size, path), digest in zip(objects, hashes)]
        return self.writer.append_rows(rows, urgent=False)

    def yielded(self, task_id: bytes, job_id: bytes, object_id: bytes, size: int, digest: bytes | None) -> int:
        """A value a streaming generator task yielded, logged as its object by index (``object_id``)."""
        return self.writer.append("objects", (object_id, task_id, job_id, "return", size, None, None, self.node_id,
                                              digest, None), urgent=False)

    def obj(self, object_id: bytes, task_id: bytes, job_id: bytes, origin: str, size: int,
            durable_copy: bytes | None = None, durable_path: str | None = None, owner: str | None = None) -> int:
        """A put's (or a by-value argument's) creation; ``owner``: the address of the process that made it."""
        # A put is waited for only when its ref leaves the process: not urgent either.
        return self.writer.append("objects", (object_id, task_id, job_id, origin, size, durable_copy, durable_path,
                                              self.node_id, None, owner),
                                  urgent=False)

    def content_hash(self, object_id: bytes, digest: bytes) -> int:
        """A store result's content hash, computed after the result was sent (``store/_content_hash.py``)."""
        return self.writer.append("content_hashes", (object_id, digest), urgent=False)

    def actor(self, actor_id: bytes, job_id: bytes, creation_task_id: bytes, class_name: str,
              name: str | None, max_restarts: int, concurrency: str | None = None) -> int:
        """An actor's creation; ``concurrency``: how a concurrent actor runs its calls (None: one at a time)."""
        return self.writer.append("actors", (actor_id, job_id, creation_task_id, class_name, name, max_restarts,
                                             concurrency))

    def actor_restart(self, actor_id: bytes, restart: int, task_id: bytes, seq: int) -> int:
        """Restart ``restart`` of the actor runs again its unfinished call ``task_id``, at place ``seq``."""
        return self.writer.append("actor_restarts", (actor_id, restart, task_id, seq))

    def checkpoint(self, actor_id: bytes, seq: int, data: bytes) -> int:
        """An actor's saved state after its call ``seq``; replay starts after the newest one."""
        return self.writer.append("checkpoints", (actor_id, seq, data), urgent=False)

    def actor_call(self, actor_id: bytes, seq: int, spec: Any, with_args: bool = True) -> int:
        """A call's place in its actor's order: logged by the actor as it starts the call, and
        by the caller when the actor restarts or the result leaves the caller
        before the actor's row was durable.

        The caller leaves the arguments out (``with_args=False``): its own
        log has them in the call's spec row, which commits no later than this one.
        """
        args = None
        if with_args:
            args = pickle.dumps((spec.args, spec.kwargs), protocol=5) if spec.args or spec.kwargs else _NO_ARGS
        return self.writer.append("actor_calls", (actor_id, seq, spec.task_id, spec.method, args, spec.num_returns,
                                                  spec.owner_addr), urgent=False)


def describe_conninfo(conninfo: str) -> str:
    """A log's connection string as a person may see it: any password left out."""
    try:
        params = psycopg.conninfo.conninfo_to_dict(conninfo)
    except psycopg.ProgrammingError:
        return "(a malformed connection string)"
    params.pop("password", None)
    return psycopg.conninfo.make_conninfo(**{k: str(v) for k, v in params.items()})


# A failed attempt's error text is kept whole up to this; longer, its head
# (what was raised) and its tail (the innermost frames) are kept.
ERROR_TEXT_CHARS_MAX = 8_000


def error_row(error: bytes | None) -> tuple[TaskState, str | None]:
    """The state and error text of a failed attempt's row, from the error object it returned."""
    from ember.exceptions import TaskCancelledError
    from ember.store import deserialize

    if error is None:
        return TaskState.FAILED, None
    try:
        _, value = deserialize(error)
    except Exception as exc:  # an error whose cause cannot be unpickled here: say so, keep going
        return TaskState.FAILED, f"(the error could not be read: {type(exc).__name__}: {exc})"
    state = TaskState.CANCELLED if isinstance(value, TaskCancelledError) else TaskState.FAILED
    text = str(value) if isinstance(value, BaseException) else repr(value)
    if len(text) > ERROR_TEXT_CHARS_MAX:
        head = ERROR_TEXT_CHARS_MAX // 4
        text = text[:head] + "\n[...]\n" + text[len(text) - (ERROR_TEXT_CHARS_MAX - head):]
    return state, text
