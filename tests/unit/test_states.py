"""One definition of each state and process kind (lineage/_states.py), used by the log's writers, its readers
and the runtime alike: what the writers produce parses with the enums the readers use, and no module spells a
state, or compares a process kind, as a bare string of its own."""

from __future__ import annotations

import ast
import itertools
import pickle
import re
from pathlib import Path

import pytest

import ember.chaos
import ember.lineage
from ember.exceptions import TaskCancelledError
from ember.lineage import _gcs_log, _listing
from ember.lineage._states import (ActorState, JobState, NodeState, ObjectState, PlacementGroupState, ProcessKind,
                                   TaskState)
from ember.scheduler import _node_actors, _procutil
from ember.scheduler._node_queue import NodeQueue, Spawn
from ember.scheduler._protocol import Outbox
from ember.scheduler._spec import TaskKind, TaskSpec, resource_shape
from ember.scheduler._worker_pool import WorkerPool
from ember.store import serialize_error, to_bytes

ROOT = Path(__file__).resolve().parents[2]
PACKAGE_FOLDERS = ("api", "store", "lineage", "scheduler", "chaos")
STATE_ENUMS = (TaskState, ObjectState, ActorState, NodeState, JobState, PlacementGroupState)
STATES = frozenset(s.value for enum_ in STATE_ENUMS for s in enum_)
KINDS = frozenset(k.value for k in ProcessKind)
# Text that spells a state's word but is no state: `ember list` tables' column headings.
NOT_STATES = {("api/_cli_inspect.py", "SUBMITTED"), ("api/_cli_inspect.py", "CREATED")}
SQL_WORD = re.compile(r"'([A-Z][A-Z_]{2,})'")  # a quoted upper-case word in SQL text: a state, if anything


def _bare_spellings(path: Path, root: Path = ROOT) -> list[str]:
    """Where ``path`` writes a state, or compares or records a process kind, as a string literal."""
    found = []
    rel = path.relative_to(root).as_posix()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            if node.value in STATES and (rel, node.value) not in NOT_STATES:
                found.append(f"{rel}:{node.lineno}: {node.value!r}")
            found += [f"{rel}:{node.lineno}: '{word}' in SQL" for word in SQL_WORD.findall(node.value)]
        elif isinstance(node, ast.Compare):
            sides = [node.left, *node.comparators]
            found += [f"{rel}:{node.lineno}: compares with {side.value!r}" for side in sides
                      if isinstance(side, ast.Constant) and side.value in KINDS]
        elif isinstance(node, ast.Dict):
            found += [f"{rel}:{node.lineno}: records kind {value.value!r}" for key, value in zip(node.keys, node.values)
                      if isinstance(key, ast.Constant) and key.value == "kind"
                      and isinstance(value, ast.Constant) and value.value in KINDS]
    return found


def test_no_module_spells_a_state_or_a_process_kind_itself():
    sources = [p for folder in PACKAGE_FOLDERS for p in sorted((ROOT / folder).rglob("*.py"))
               if p != ROOT / "lineage" / "_states.py"]
    assert len(sources) > 50
    assert [where for path in sources for where in _bare_spellings(path)] == []


def test_the_check_finds_a_bare_state_a_word_that_is_no_state_and_a_bare_kind(tmp_path):
    path = tmp_path / "_example.py"
    path.write_text('state = "FINISHED"\n'
                    'sql = "UPDATE jobs SET state = \'DONE\' WHERE state = %s"\n'
                    'same = kind == "worker"\n'
                    'event = {"kind": "store", "state": TaskState.FAILED}\n')
    assert [f.split(": ", 1)[1] for f in _bare_spellings(path, tmp_path)] == [
        "'FINISHED'", "'DONE' in SQL", "compares with 'worker'", "records kind 'store'"]


def test_readers_writers_and_the_runtime_share_the_enum_objects():
    assert _listing.TaskState is _gcs_log.TaskState is ember.lineage.TaskState is TaskState
    assert _listing.ActorState is _node_actors.ActorState is ember.lineage.ActorState is ActorState
    assert (_listing.ObjectState, _listing.NodeState, _listing.JobState) == (ObjectState, NodeState, JobState)
    assert ember.chaos.Target is ProcessKind  # a fault's target is a process kind


@pytest.mark.parametrize("states", STATE_ENUMS)
def test_every_state_is_one_the_listings_accept(states):
    for state in states:
        assert _listing.check_state(state.value.lower(), states, "things") is state


def test_states_and_kinds_are_their_old_text_and_travel_as_plain_strings():
    # The text PostgreSQL has always held: old logs read, no schema change.
    assert [s.value for s in TaskState] == ["SUBMITTED", "FINISHED", "FAILED", "CANCELLED"]
    assert [s.value for s in ActorState] == ["PENDING", "ALIVE", "RESTARTING", "DEAD"]
    assert {k.value for k in ProcessKind} >= {"driver", "worker", "scheduler", "store", "gcs", "node"}
    for member in itertools.chain(ProcessKind, *STATE_ENUMS):
        copy = pickle.loads(pickle.dumps(member))
        assert type(copy) is str and copy == member and f"{member}" == member.value


def _serialized(error: BaseException) -> bytes:
    return to_bytes(serialize_error(error), b"")


class _Rows:
    def __init__(self) -> None:
        self.rows: list[tuple[str, tuple]] = []

    def append_rows(self, rows: list[tuple[str, tuple]], urgent: bool = True) -> int:
        self.rows += rows
        return len(self.rows)


@pytest.mark.parametrize("failed, error, expected", [
    (False, None, TaskState.FINISHED),
    (True, None, TaskState.FAILED),
    (True, _serialized(ValueError("boom")), TaskState.FAILED),
    (True, _serialized(TaskCancelledError("ab" * 16)), TaskState.CANCELLED),
    (True, b"not a serialized error", TaskState.FAILED),
])
def test_every_attempt_state_the_writer_logs_is_a_task_state(failed, error, expected):
    log = _gcs_log.GcsLog.__new__(_gcs_log.GcsLog)  # no connection: its writer is a list of rows
    log.node_id, log.writer = "node", _Rows()
    log.finished(b"t" * 16, 0, b"job", failed, [], error)
    ((table, row),) = log.writer.rows
    state = row[_gcs_log.COLUMNS["task_attempts"].index("state")]
    assert table == "task_attempts" and type(state) is TaskState and state is expected
    assert _listing.check_state(state, TaskState, "tasks") is state


class _Proc:
    pids = itertools.count(60_000)

    def __init__(self) -> None:
        self.pid, self.returncode = next(self.pids), None

    def poll(self) -> int | None:
        return self.returncode

    def kill(self) -> None:
        self.returncode = -9

    terminate = kill


class _Gcs:
    def died(self, worker_id: bytes, detail: str) -> None:
        pass


def test_an_actor_goes_through_every_actor_state_and_no_other(monkeypatch):
    monkeypatch.setattr(_procutil, "spawn_python", lambda module, args, log_dir, env=None: _Proc())
    pool = WorkerPool(Path("/nonexistent"), "node", Path("/nonexistent"))
    queue = NodeQueue({"CPU": 1}, pool, spills=False)
    actors = _node_actors.NodeActors(queue, pool, _Gcs(), None, Outbox(), {}, clock=lambda: 0.0)  # type: ignore[arg-type]
    actor_id = b"a" * 16
    spec = TaskSpec(actor_id, TaskKind.ACTOR_CREATION, b"job", "/owner", b"f" * 16, "A", [], None, 0,
                    resource_shape({"CPU": 1}), 1, actor_id=actor_id)
    seen = [actors.state_of(actor_id)]

    def place(actions: list) -> int:
        (spawn,) = actions
        assert isinstance(spawn, Spawn)
        pool.spawn(spawn.worker, actor_id, now=0.0)
        actors.placed_on(actor_id, spawn.worker)
        seen.append(actors.state_of(actor_id))
        return spawn.worker

    first = place(actors.create(spec, detached=False, meta=None))
    actors.ready(actor_id, "/a1")
    seen.append(actors.state_of(actor_id))
    queue.worker_gone(first, now=1.0)
    place(actors.process_died(actor_id, first, "killed by SIGKILL"))
    actors.ready(actor_id, "/a2")
    seen.append(actors.state_of(actor_id))
    actors.kill(actor_id, "killed by ember.kill()")
    seen.append(actors.state_of(actor_id))
    assert seen == [None, ActorState.PENDING, ActorState.ALIVE, ActorState.RESTARTING, ActorState.ALIVE,
                    ActorState.DEAD]
    assert all(type(state) is ActorState for state in seen[1:])


def test_the_gcs_service_records_only_process_kinds_and_job_ends_of_the_enums():
    from ember.lineage._gcs_service import _check_events, _job_end
    from ember.lineage._rpc import BadRequest

    started = {"type": "started", "process_id": "ab" * 16, "pid": 7}
    for kind in (ProcessKind.WORKER, ProcessKind.STORE, ProcessKind.SCHEDULER, ProcessKind.GCS):
        _check_events({"events": [{**started, "kind": str(kind)}]})
    for kind in ("workers", "driver", "postgres"):  # a typo; processes the workers table does not hold
        with pytest.raises(BadRequest, match="is not one of worker, store, scheduler, gcs"):
            _check_events({"events": [{**started, "kind": kind}]})
    assert _job_end("FINISHED") is JobState.FINISHED and _job_end("ABANDONED") is JobState.ABANDONED
    for state in ("DONE", "RUNNING", "finished"):
        with pytest.raises(BadRequest, match="is not a job's end"):
            _job_end(state)
