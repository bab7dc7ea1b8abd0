"""What a replay reads from the lineage log and from disk: specs, code, outcomes, object copies.

``ReplayReads`` answers the planner's questions (``ReplayFacts`` in
``_replay_plan.py``), a generation of ids per query, and fetches what the
plan names: a task's logged spec and code, its recorded outcome (state,
error text, content hashes), an object's bytes from a live cluster's store on
this machine, from the log, or from its durable copy on disk.

It must never write to the log, nor create or change files of a cluster,
live or gone.
"""

from __future__ import annotations

from dataclasses import dataclass
import types
from pathlib import Path
from typing import Any

from ember.lineage._ids import UnknownIdError, resolve_job
from ember.lineage._replay_plan import FunctionUnavailableError, ObjectFacts, ReplayInputError, Source
from ember.lineage._replay_source import _NO_ENV_COLUMNS, KEPT_ORIGINS, LoggedTask, ReplaySource
from ember.lineage._schema_version import CONCURRENCY_VERSION, RUNTIME_ENV_VERSION, check_readable
from ember.lineage._states import TaskState

_DYNAMIC_CODE = "<dynamic-code>"  # cloudpickle's file name for code it pickles by value
_FIRST_INDEX = (0).to_bytes(4, "big")
_LAST_INDEX = (0xFFFFFFFF).to_bytes(4, "big")


@dataclass(frozen=True)
class Recorded:
    """A task's outcome as the log has it: the last attempt's state and error, and each result's hash."""

    state: TaskState | None  # None: no attempt ended in the log
    error: str | None
    hashes: dict[bytes, bytes | None]  # result object id -> content hash (None: not recorded)


class ReplayReads(ReplaySource):
    """Reads for one replay session, cached: specs and code are immutable once logged."""

    def __init__(self, conninfo: str) -> None:
        super().__init__(conninfo)
        self._version = check_readable(lambda sql: self._query(sql, ()))
        if self._version < RUNTIME_ENV_VERSION:
            self.env_columns = _NO_ENV_COLUMNS
        self._specs: dict[bytes, LoggedTask] = {}
        self._functions: dict[bytes, Any] = {}
        self._clusters: dict[bytes, str | None] = {}

    # -- tasks and code -------------------------------------------------------------

    def spec(self, task_id: bytes) -> LoggedTask:
        return self.specs([task_id])[task_id]

    def package(self, digest: str) -> bytes | None:
        """A runtime_env package's bytes (the ``fetch`` of ``_env_setup.prepare_env``)."""
        rows = self._query("SELECT data FROM runtime_env_packages WHERE package_hash = %s", (digest,))
        return bytes(rows[0][0]) if rows else None

    def code(self, function_id: bytes | None, task_id: bytes) -> Any:
        """The logged function or class, loaded; FunctionUnavailableError says why it cannot be."""
        import cloudpickle

        if function_id is None:
            raise FunctionUnavailableError(f"task {task_id.hex()} has no function in the lineage log")
        found = self._functions.get(function_id)
        if found is not None:
            return found
        rows = self._query("SELECT name, payload FROM functions WHERE function_id = %s", (function_id,))
        if not rows:
            raise FunctionUnavailableError(
                f"the code of task {task_id.hex()} is not in the lineage log (pruned?); it cannot be replayed")
        name, payload = rows[0]
        try:
            found = cloudpickle.loads(payload)
        except Exception as exc:
            raise FunctionUnavailableError(
                f"the code of task {task_id.hex()} ({name}) cannot be loaded here: {type(exc).__name__}: {exc}. "
                "Functions from your own modules are logged by reference: run the replay where those modules "
                "import (the directory and virtualenv the job ran from), or install them"
            ) from exc
        _point_at_source(found, self._source_path(found, task_id))
        self._functions[function_id] = found
        return found

    def _source_path(self, code: Any, task_id: bytes) -> str | None:
        """The file the code came from: its module's, or for ``__main__`` the job's script."""
        import importlib.util

        module = getattr(code, "__module__", None)
        if module and module != "__main__":
            try:
                spec = importlib.util.find_spec(module)
            except (ImportError, ValueError):
                return None
            return spec.origin if spec is not None else None
        rows = self._query("SELECT entrypoint FROM jobs WHERE job_id = %s", (self.spec(task_id).job_id,))
        script = (rows[0][0] or "").split(" ")[0] if rows else ""
        return str(Path(script).resolve()) if script.endswith(".py") and Path(script).is_file() else None

    def specs(self, task_ids: list[bytes]) -> dict[bytes, LoggedTask]:
        """The logged specs of the tasks, read in one query for those not read before; UnknownIdError if one
        is not in the log."""
        missing = [t for t in dict.fromkeys(task_ids) if t not in self._specs]
        if missing:
            self._specs.update(self.tasks(missing))
        for task_id in task_ids:
            if task_id not in self._specs:
                raise UnknownIdError(f"no task {task_id.hex()} in the lineage log")
        return {task_id: self._specs[task_id] for task_id in task_ids}

    def task_inputs(self, task_ids: list[bytes]) -> dict[bytes, list[bytes]]:
        from ember.scheduler._spec import ArgKind

        found = {}
        for task_id, spec in self.specs(task_ids).items():
            encoded = [*spec.args, *(spec.kwargs or {}).values()]
            found[task_id] = [arg[1] for arg in encoded if arg[0] == ArgKind.REF]
        return found

    def task_roles(self, task_ids: list[bytes]) -> dict[bytes, tuple[str, bytes | None, int]]:
        from ember.scheduler._spec import TaskKind

        specs = self.specs(task_ids)
        calls = [task_id for task_id, spec in specs.items() if spec.kind == TaskKind.ACTOR_CALL]
        places = {bytes(task_id): (bytes(actor_id), seq) for task_id, actor_id, seq in self._query(
            "SELECT task_id, actor_id, seq FROM actor_calls WHERE task_id = ANY(%s)", (calls,))} if calls else {}
        roles: dict[bytes, tuple[str, bytes | None, int]] = {}
        for task_id, spec in specs.items():
            if spec.kind == TaskKind.ACTOR_CALL:
                if task_id not in places:
                    raise ReplayInputError(
                        f"actor call {task_id.hex()} ({spec.function_name}.{spec.method}) has no place in its "
                        "actor's logged order: the actor never ran it, so it cannot be replayed")
                roles[task_id] = ("call", *places[task_id])
            elif spec.kind == TaskKind.ACTOR_CREATION:
                roles[task_id] = ("creation", spec.actor_id, 0)
            else:
                roles[task_id] = ("task", None, 0)
        return roles

    def actor_base(self, actor_id: bytes, before_seq: int) -> tuple[bytes, int]:
        concurrency = "NULL" if self._version < CONCURRENCY_VERSION else "concurrency"
        rows = self._query(f"SELECT creation_task_id, class_name, {concurrency} FROM actors WHERE actor_id = %s",
                           (actor_id,))
        if not rows:
            raise ReplayInputError(f"actor {actor_id.hex()} is not in the lineage log (pruned?)")
        if rows[0][2] is not None:
            raise ReplayInputError(
                f"actor {rows[0][1]} ({actor_id.hex()}) ran its calls concurrently ({rows[0][2]}): they have no "
                "single order to run them again in, one after another, so its calls are not replayed (a "
                "restart of it, too, comes back from its constructor and newest checkpoint only)")
        creation = bytes(rows[0][0])
        cls = self.code(self.spec(creation).function_id, creation)
        if not (callable(getattr(cls, "save_checkpoint", None)) and callable(getattr(cls, "load_checkpoint", None))):
            return creation, 0
        rows = self._query("SELECT max(seq) FROM checkpoints WHERE actor_id = %s AND seq < %s",
                           (actor_id, before_seq))
        return creation, (rows[0][0] or 0) if rows else 0

    def checkpoint(self, actor_id: bytes, seq: int) -> bytes:
        rows = self._query("SELECT data FROM checkpoints WHERE actor_id = %s AND seq = %s", (actor_id, seq))
        return bytes(rows[0][0])

    def call_tasks(self, actor_id: bytes, seqs: list[int]) -> dict[int, bytes]:
        found = {seq: bytes(task_id) for seq, task_id in self._query(
            "SELECT seq, task_id FROM actor_calls WHERE actor_id = %s AND seq = ANY(%s)", (actor_id, list(seqs)))}
        for seq in seqs:
            if seq not in found:
                raise ReplayInputError(
                    f"call {seq} of actor {actor_id.hex()} is not in the lineage log: the actor cannot be rebuilt "
                    "up to the call replayed")
        return found

    def recorded(self, task_id: bytes, result_ids: list[bytes]) -> Recorded:
        rows = self._query("SELECT state, error FROM task_attempts WHERE task_id = %s ORDER BY attempt DESC LIMIT 1",
                           (task_id,))
        state, error = rows[0] if rows else (None, None)
        hashes: dict[bytes, bytes | None] = dict.fromkeys(result_ids)
        for oid, digest in self._query(
                "SELECT o.object_id, COALESCE(o.content_hash, h.content_hash) FROM objects o "
                "LEFT JOIN content_hashes h ON h.object_id = o.object_id "
                "WHERE o.object_id BETWEEN %s AND %s", (task_id + _FIRST_INDEX, task_id + _LAST_INDEX)):
            if bytes(oid) in hashes and digest is not None:
                hashes[bytes(oid)] = bytes(digest)
        return Recorded(None if state is None else TaskState(state), error, hashes)

    def job_tasks(self, job: str | None) -> tuple[bytes, list[bytes]]:
        """A job's id (a unique prefix will do; None: the latest job) and its tasks, actor
        creations and calls, in the order they were logged."""
        self._query("SELECT 1", ())  # connected, through an outage if need be
        job_id = resolve_job(self._conn, job)
        return job_id, [bytes(r[0]) for r in self._query(
            "SELECT task_id FROM tasks WHERE job_id = %s ORDER BY submitted_at, task_id", (job_id,))]

    # -- objects ----------------------------------------------------------------------

    def object_facts(self, object_ids: list[bytes]) -> dict[bytes, ObjectFacts]:
        rows = {bytes(r[0]): r[1:] for r in self._query(
            "SELECT object_id, origin, durable_copy IS NOT NULL, durable_path, job_id FROM objects "
            "WHERE object_id = ANY(%s)", (list(object_ids),))}
        made = [oid for oid in object_ids if rows.get(oid, (None,))[0] not in KEPT_ORIGINS]
        creators = self.tasks([oid[:16] for oid in made if oid[:16] not in self._specs]) if made else {}
        self._specs.update(creators)
        found = {}
        for object_id in object_ids:
            origin, logged_bytes, path, job_id = rows.get(object_id, (None, False, None, None))
            creator = self._specs.get(object_id[:16]) if origin not in KEPT_ORIGINS else None
            if creator is not None:
                job_id = job_id or creator.job_id
            found[object_id] = ObjectFacts(
                object_id, origin,
                live=job_id is not None and self._live_path(bytes(job_id), object_id) is not None,
                logged_bytes=bool(logged_bytes),
                copy_file=bool(path) and Path(path).is_file(),
                creator_logged=creator is not None,
            )
        return found

    def object_bytes(self, object_id: bytes, source: Source) -> bytes:
        """An object's layout from ``source``; ReplayInputError if it went away since it was planned."""
        data: bytes | None = None
        if source is Source.LIVE:
            rows = self._query("SELECT job_id FROM objects WHERE object_id = %s", (object_id,))
            job_id = bytes(rows[0][0]) if rows else self.spec(object_id[:16]).job_id
            path = self._live_path(job_id, object_id)
            data = _read_object_file(path, object_id) if path is not None else None
        elif source in (Source.LOGGED_BYTES, Source.COPY_FILE):
            rows = self._query("SELECT durable_copy, durable_path FROM objects WHERE object_id = %s", (object_id,))
            if rows and source is Source.LOGGED_BYTES:
                data = bytes(rows[0][0]) if rows[0][0] is not None else None
            elif rows and rows[0][1]:
                data = _read_object_file(Path(rows[0][1]), object_id)
        if data is None:
            raise ReplayInputError(f"object {object_id.hex()} was in {source.value} a moment ago, and is gone")
        return data

    def _live_path(self, job_id: bytes, object_id: bytes) -> Path | None:
        """The file holding ``object_id`` in the store of the job's cluster, if it still runs on this machine."""
        from ember.scheduler._session import runtime_root, open_session

        if job_id not in self._clusters:
            rows = self._query("SELECT cluster_id FROM jobs WHERE job_id = %s", (job_id,))
            self._clusters[job_id] = rows[0][0] if rows else None
        cluster = self._clusters[job_id]
        if not cluster:
            return None
        session = open_session(runtime_root() / cluster)
        if not session.info_path.exists():
            return None  # the cluster is gone (a live one keeps its session file)
        for directory in (session.shm_dir, session.spill_dir):
            path = directory / object_id.hex()
            if path.is_file():
                return path
        return None


def _point_at_source(code: Any, path: str | None) -> None:
    """Give code loaded by value its file name back (cloudpickle drops it), so pdb and tracebacks show source."""
    if path is None:
        return
    functions = [code] if isinstance(code, types.FunctionType) else [
        getattr(member, "__func__", member) for member in vars(code).values()] if isinstance(code, type) else []
    for function in functions:
        if isinstance(function, types.FunctionType) and function.__code__.co_filename == _DYNAMIC_CODE:
            function.__code__ = _renamed(function.__code__, path)


def _renamed(code: types.CodeType, path: str) -> types.CodeType:
    consts = tuple(_renamed(c, path) if isinstance(c, types.CodeType) else c for c in code.co_consts)
    return code.replace(co_filename=path, co_consts=consts)


def _read_object_file(path: Path, object_id: bytes) -> bytes | None:
    """A store file's or durable copy's bytes, if it still holds ``object_id`` (a store may reuse its file)."""
    from ember.store import read_header

    try:
        data = path.read_bytes()
        found, _, _ = read_header(data)
    except Exception:  # noqa: BLE001 - gone, or reused and half rewritten: not this object
        return None
    return data if found in (object_id, b"") else None

