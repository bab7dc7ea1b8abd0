"""The pure parts of replay and rebuilds: the planner (offline and online) over plain data, the verdict,
content hashes."""

from __future__ import annotations

import pickle
from dataclasses import dataclass, field

import numpy as np
import pytest

from ember.lineage._replay import ReplayResult, Verdict, split_returns, verdict_of
from ember.lineage._replay_log import Recorded
from ember.lineage._replay_plan import (
    LOGGING_OFF,
    NOT_LOGGED,
    FunctionUnavailableError,
    KeptCopy,
    LineageTooLongError,
    NeedsClusterError,
    ObjectFacts,
    RebuildPlan,
    ReplayInputError,
    Restore,
    Source,
    StepKind,
    TaskFacts,
    choose_source,
    no_copy_reason,
    plan_rebuild,
    plan_replay,
)
from ember.store._content_hash import content_hash, value_hash
from ember.store._serialization import serialize, to_bytes


def _task(n: int) -> bytes:
    return n.to_bytes(16, "big")


def _result(n: int, index: int = 1) -> bytes:
    return _task(n) + index.to_bytes(4, "big")


@dataclass
class FakeLog:
    """The planner's questions answered from dictionaries; ``reads`` counts the questions (one per batch)."""

    inputs: dict[bytes, list[bytes]] = field(default_factory=dict)  # task -> object ids it reads
    objects: dict[bytes, ObjectFacts] = field(default_factory=dict)
    calls: dict[bytes, tuple[bytes, int]] = field(default_factory=dict)  # call task -> (actor, seq)
    creations: dict[bytes, bytes] = field(default_factory=dict)  # actor -> creation task
    checkpoints: dict[bytes, list[int]] = field(default_factory=dict)
    reads: list[tuple[str, int]] = field(default_factory=list)  # (question, ids asked)

    def object_facts(self, object_ids: list[bytes]) -> dict[bytes, ObjectFacts]:
        self.reads.append(("objects", len(object_ids)))
        return {oid: self.objects.get(oid) or ObjectFacts(oid, "return", False, False, False, True)
                for oid in object_ids}

    def task_inputs(self, task_ids: list[bytes]) -> dict[bytes, list[bytes]]:
        self.reads.append(("inputs", len(task_ids)))
        return {task_id: self.inputs.get(task_id, []) for task_id in task_ids}

    def task_roles(self, task_ids: list[bytes]) -> dict[bytes, tuple[str, bytes | None, int]]:
        self.reads.append(("roles", len(task_ids)))
        return {task_id: self._role(task_id) for task_id in task_ids}

    def _role(self, task_id: bytes) -> tuple[str, bytes | None, int]:
        if task_id in self.calls:
            return ("call", *self.calls[task_id])
        for actor, creation in self.creations.items():
            if creation == task_id:
                return "creation", actor, 0
        return "task", None, 0

    def actor_base(self, actor_id: bytes, before_seq: int) -> tuple[bytes, int]:
        return self.creations[actor_id], max((s for s in self.checkpoints.get(actor_id, []) if s < before_seq),
                                             default=0)

    def call_tasks(self, actor_id: bytes, seqs: list[int]) -> dict[int, bytes]:
        self.reads.append(("calls", len(seqs)))
        return {seq: next(t for t, place in self.calls.items() if place == (actor_id, seq)) for seq in seqs}


def _facts(oid: bytes, origin: str | None = "return", live=False, logged=False, copy=False, creator=True):
    return ObjectFacts(oid, origin, live, logged, copy, creator)


def test_sources_are_tried_cheapest_first():
    oid = _result(1)
    assert choose_source(_facts(oid, live=True, logged=True)) is Source.LIVE
    assert choose_source(_facts(oid, "put", logged=True, copy=True)) is Source.LOGGED_BYTES
    assert choose_source(_facts(oid, "argument", copy=True)) is Source.COPY_FILE
    assert choose_source(_facts(oid)) is Source.REPLAY


@pytest.mark.parametrize("facts, message", [
    (_facts(_result(1), "put", creator=False), "no copy of it is left"),
    (_facts(_result(1), None, creator=False), "pruned"),
    (_facts(_result(1), "return", creator=False), "not in the lineage log"),
])
def test_an_object_with_no_source_says_why(facts, message):
    with pytest.raises(ReplayInputError, match=message):
        choose_source(facts)


def test_a_chain_plans_its_ancestors_first_each_once():
    # 3 reads 1 and 2; 2 reads 1; 1 reads a small put kept in the log.
    put = _task(9) + bytes(4)
    log = FakeLog(inputs={_task(1): [put], _task(2): [_result(1)], _task(3): [_result(1), _result(2)]},
                  objects={put: _facts(put, "put", logged=True, creator=False)})
    steps = plan_replay(log, _task(3))
    assert [(s.kind, s.task_id or s.object_id) for s in steps] == [
        (StepKind.FETCH, put), (StepKind.RUN, _task(1)), (StepKind.RUN, _task(2)), (StepKind.RUN, _task(3))]
    assert steps[0].source is Source.LOGGED_BYTES


def test_objects_already_at_hand_are_not_planned_again():
    log = FakeLog(inputs={_task(2): [_result(1)]})
    assert [s.task_id for s in plan_replay(log, _task(2), done_objects={_result(1)})] == [_task(2)]


def test_an_actor_call_replays_the_actor_from_its_newest_checkpoint_before_it():
    actor = b"A" * 16
    log = FakeLog(calls={_task(10 + seq): (actor, seq) for seq in range(1, 6)}, creations={actor: _task(1)},
                  checkpoints={actor: [2, 5]}, inputs={_task(13): [_result(20)]})
    steps = plan_replay(log, _task(14))
    assert [(s.kind, s.seq) for s in steps] == [
        (StepKind.START_ACTOR, 2), (StepKind.RUN, 0), (StepKind.CALL, 3), (StepKind.CALL, 4)]
    assert steps[1].task_id == _task(20)  # call 3's argument is made before call 3 runs


def test_a_job_replay_continues_an_actor_where_it_stopped():
    actor = b"A" * 16
    log = FakeLog(calls={_task(11): (actor, 1), _task(12): (actor, 2)}, creations={actor: _task(1)})
    progress: dict[bytes, int] = {}
    assert [s.kind for s in plan_replay(log, _task(1), actor_progress=progress)] == [StepKind.START_ACTOR]
    assert [s.seq for s in plan_replay(log, _task(12), actor_progress=progress)] == [1, 2]
    assert plan_replay(log, _task(11), actor_progress=progress) == []  # ran already


def test_a_plan_is_bounded():
    log = FakeLog(inputs={_task(n): [_result(n - 1)] for n in range(2, 50)})
    with pytest.raises(LineageTooLongError, match="more than 10 objects and tasks"):
        plan_replay(log, _task(49), nodes_max=10)
    assert issubclass(LineageTooLongError, ReplayInputError)  # a job replay skips the task, as before
    log = FakeLog(inputs={_task(n): [_result(n - 1)] for n in range(2, 3000)})
    steps = plan_replay(log, _task(2999))  # a long chain does not recurse on the Python stack
    assert [s.task_id for s in steps] == [_task(n) for n in range(1, 3000)]


def test_a_replay_reads_the_log_a_generation_at_a_time():
    # 5 reads 3 and 4, which both read 1 and 2: three generations of tasks, each read in one batch.
    log = FakeLog(inputs={_task(5): [_result(3), _result(4)], _task(3): [_result(1), _result(2)],
                          _task(4): [_result(1), _result(2)]})
    steps = plan_replay(log, _task(5))
    assert [s.task_id for s in steps] == [_task(1), _task(2), _task(3), _task(4), _task(5)]
    # The root's role and inputs, then per generation of objects: their facts, their tasks' roles and inputs.
    assert log.reads == [("roles", 1), ("inputs", 1), ("objects", 2), ("roles", 2), ("inputs", 2),
                         ("objects", 2), ("roles", 2), ("inputs", 2)]


def test_an_actors_calls_run_in_order_whichever_is_reached_first():
    # Task 30 reads call 2's result and call 4's: calls 1..4 run once, in order, after the constructor.
    actor = b"A" * 16
    log = FakeLog(calls={_task(10 + seq): (actor, seq) for seq in range(1, 5)}, creations={actor: _task(1)},
                  inputs={_task(30): [_result(12), _result(14)]})
    steps = plan_replay(log, _task(30))
    assert [(s.kind, s.seq) for s in steps] == [
        (StepKind.START_ACTOR, 0), (StepKind.CALL, 1), (StepKind.CALL, 2), (StepKind.CALL, 3), (StepKind.CALL, 4),
        (StepKind.RUN, 0)]


@pytest.mark.parametrize("state, then, failed, now, verdict", [
    ("FINISHED", (b"a",), False, (b"a",), Verdict.MATCHES),
    ("FINISHED", (b"a",), False, (b"b",), Verdict.DIFFERS),
    ("FINISHED", (None,), False, (b"b",), Verdict.NO_RECORDED_HASH),
    ("FINISHED", (b"a", None), False, (b"b", b"c"), Verdict.DIFFERS),
    ("FAILED", (None,), True, (), Verdict.FAILED_AS_RECORDED),
    ("FINISHED", (b"a",), True, (), Verdict.FAILED_UNLIKE_LOG),
    ("FAILED", (None,), False, (b"a",), Verdict.FINISHED_UNLIKE_LOG),
    (None, (None,), False, (b"a",), Verdict.NOT_RECORDED),
    ("CANCELLED", (None,), True, (), Verdict.NOT_RECORDED),
])
def test_the_verdict_compares_outcome_then_hashes(state, then, failed, now, verdict):
    assert verdict_of(Recorded(state, None, {}), then, failed, now) is verdict


def test_the_explanation_names_the_hashes_it_rests_on():
    result = ReplayResult("t", "f", (1,), None, None, Recorded("FINISHED", None, {}), (b"\x01",), (b"\x02",),
                          Verdict.DIFFERS)
    assert result.explain().endswith("(recorded 01, replayed 02)") and result.verdict.differs


def test_returns_are_split_as_a_worker_splits_them():
    assert split_returns(1, (1, 2), "f") == [(1, 2)]
    assert split_returns(0, 5, "f") == [None]
    assert split_returns(2, (1, 2), "f") == [1, 2]
    with pytest.raises(ValueError, match="num_returns=2 but returned 3"):
        split_returns(2, (1, 2, 3), "f")


def test_content_hash_ignores_the_object_id_and_follows_the_value():
    array = np.arange(1000)
    obj = serialize(array)
    assert content_hash(to_bytes(obj, b"x" * 20)) == content_hash(to_bytes(obj, b"")) == value_hash(array)
    assert value_hash(np.arange(1000)) == value_hash(array)
    assert value_hash(np.arange(1, 1001)) != value_hash(array)
    assert value_hash(1) != value_hash(1.0) and len(value_hash("x")) == 17 and value_hash("x")[:1] == b"\x01"
    # Like an older log's 16-byte SHA-256 hash: made the same way, with the same properties.
    legacy = bytes(16)
    assert content_hash(to_bytes(obj, b"x" * 20), like=legacy) == value_hash(array, like=legacy)
    assert len(value_hash(array, like=legacy)) == 16 and value_hash(array, like=legacy) != value_hash(array)[:16]
    assert value_hash(1, like=legacy) != value_hash(1.0, like=legacy)


@pytest.mark.parametrize("cls", [ReplayInputError, LineageTooLongError, FunctionUnavailableError,
                                 NeedsClusterError])
def test_replay_errors_pickle(cls):
    error = pickle.loads(pickle.dumps(cls("why and how to fix it")))
    assert type(error) is cls and str(error) == "why and how to fix it"


# -- online: what an owner rebuilds for objects a live cluster lost ---------------------------------------------

ME, OTHER, DEAD = "me", "a live owner", "a dead owner"


@dataclass
class FakeOwner:
    """An owner's questions answered from dictionaries; ``reads`` records each question and the ids asked."""

    tasks: dict[bytes, TaskFacts] = field(default_factory=dict)  # the log's specs
    copies: dict[bytes, KeptCopy] = field(default_factory=dict)  # the log's object rows
    lost_ids: set[bytes] = field(default_factory=set)  # own objects with no copy left
    store: set[bytes] = field(default_factory=set)  # other owners' objects in this node's store
    dead: set[str] = field(default_factory=lambda: {DEAD})
    running_ids: set[bytes] = field(default_factory=set)
    lineage_logged: bool = True
    reads: list[tuple[str, list]] = field(default_factory=list)

    def running(self, task_ids):
        self.reads.append(("running", list(task_ids)))
        return self.running_ids & set(task_ids)

    def logged_tasks(self, task_ids):
        self.reads.append(("tasks", list(task_ids)))
        return {t: self.tasks[t] for t in task_ids if t in self.tasks}

    def kept_copies(self, object_ids):
        self.reads.append(("copies", list(object_ids)))
        return {oid: self.copies[oid] for oid in object_ids if oid in self.copies}

    def lost(self, object_ids):
        self.reads.append(("lost", list(object_ids)))
        return self.lost_ids & set(object_ids)

    def in_store(self, object_ids):
        self.reads.append(("in_store", list(object_ids)))
        return self.store & set(object_ids)

    def dead_owners(self, addresses):
        self.reads.append(("dead_owners", list(addresses)))
        return self.dead & set(addresses)

    def queries(self, question: str) -> list[list]:
        return [ids for asked, ids in self.reads if asked == question]


def _logged(n: int, *inputs: tuple[bytes, str], last_attempt: int = 0, runs_again: bool = True) -> TaskFacts:
    return TaskFacts(_task(n), runs_again, last_attempt, tuple(inputs))


def _reruns(plan) -> list[tuple[bytes, int]]:
    return [(r.task_id, r.attempt) for r in plan.reruns]


def test_a_lost_chain_reruns_every_link_inputs_first_as_the_next_attempt():
    owner = FakeOwner(tasks={_task(1): _logged(1), _task(2): _logged(2, (_result(1), ME), last_attempt=2),
                             _task(3): _logged(3, (_result(2), ME))},
                      lost_ids={_result(1), _result(2), _result(3)})
    plan = plan_rebuild([_result(3)], owner, ME)
    assert _reruns(plan) == [(_task(1), 1), (_task(2), 3), (_task(3), 1)]
    assert plan.reruns[1].inputs == (_result(1),) and not plan.reruns[1].adopted
    assert plan.restores == () and plan.lost == ()
    # One read of the log per generation, never one per task.
    assert owner.queries("tasks") == [[_task(3)], [_task(2)], [_task(1)]]


def test_a_diamond_reruns_its_shared_ancestor_once_before_both_sides():
    # 4 reads 2 and 3, which both read 1.
    owner = FakeOwner(tasks={_task(1): _logged(1), _task(2): _logged(2, (_result(1), ME)),
                             _task(3): _logged(3, (_result(1), ME)),
                             _task(4): _logged(4, (_result(2), ME), (_result(3), ME))},
                      lost_ids={_result(n) for n in range(1, 5)})
    plan = plan_rebuild([_result(4)], owner, ME)
    order = [task_id for task_id, _ in _reruns(plan)]
    assert sorted(order) == [_task(n) for n in range(1, 5)]
    assert order[0] == _task(1) and order[-1] == _task(4)
    assert owner.queries("tasks") == [[_task(4)], [_task(2), _task(3)], [_task(1)]]
    assert owner.queries("lost") == [[_result(2), _result(3)], [_result(1)]]


def test_inputs_with_a_copy_or_on_their_way_are_not_rerun_and_dependents_still_wait_for_them():
    # 5 reads 1 (still in the store), 2 (lost) and 3 (lost, its task already running again).
    owner = FakeOwner(tasks={_task(n): _logged(n) for n in (1, 2, 3)} | {
        _task(5): _logged(5, (_result(1), ME), (_result(2), ME), (_result(3), ME))},
        lost_ids={_result(2), _result(3), _result(5)}, running_ids={_task(3)})
    plan = plan_rebuild([_result(5)], owner, ME)
    assert _reruns(plan) == [(_task(2), 1), (_task(5), 1)]
    # The rerun names all three as its inputs: it waits for those still pending (3, and 2 once installed).
    assert plan.reruns[-1].inputs == (_result(1), _result(2), _result(3))


def test_lost_objects_sharing_inputs_and_tasks_plan_each_task_once():
    # 2 and 3 both read 1; 4 has two results, both lost.
    owner = FakeOwner(tasks={_task(1): _logged(1), _task(2): _logged(2, (_result(1), ME)),
                             _task(3): _logged(3, (_result(1), ME)), _task(4): _logged(4, (_result(1), ME))},
                      lost_ids={_result(1), _result(2), _result(3), _result(4, 1), _result(4, 2)})
    plan = plan_rebuild([_result(2), _result(3), _result(4, 1), _result(4, 2)], owner, ME)
    order = [task_id for task_id, _ in _reruns(plan)]
    assert order[0] == _task(1) and sorted(order[1:]) == [_task(2), _task(3), _task(4)]


def test_a_task_already_running_again_is_left_to_finish():
    owner = FakeOwner(tasks={_task(1): _logged(1)}, running_ids={_task(1)})
    assert plan_rebuild([_result(1)], owner, ME) == RebuildPlan((), (), ())
    assert owner.queries("tasks") == []


def test_puts_and_actor_results_come_back_from_their_copies_or_are_lost_saying_why():
    small, large, uncopied, pruned = _task(20) + bytes(4), _task(21) + bytes(4), _task(22) + bytes(4), _result(23)
    actor_copied, actor_uncopied = _result(30), _result(31)
    owner = FakeOwner(
        tasks={_task(30): _logged(30, runs_again=False), _task(31): _logged(31, runs_again=False)},
        copies={small: KeptCopy(small, True, inline=b"bytes"), large: KeptCopy(large, True, path="/copies/x"),
                uncopied: KeptCopy(uncopied, True), actor_copied: KeptCopy(actor_copied, False, path="/copies/y")})
    plan = plan_rebuild([small, large, uncopied, pruned, actor_copied, actor_uncopied], owner, ME)
    assert plan.reruns == ()
    assert plan.restores == (Restore(small, b"bytes", None, False), Restore(large, None, "/copies/x", False),
                             Restore(actor_copied, None, "/copies/y", True))
    assert {gone.object_id: gone.reason for gone in plan.lost} == {
        uncopied: no_copy_reason(by_actor=False), pruned: NOT_LOGGED, actor_uncopied: no_copy_reason(by_actor=True)}
    assert "ember.put" in no_copy_reason(False) and "actor call" in no_copy_reason(True)
    assert len(owner.queries("copies")) == 1  # one read for every object of the generation


def test_with_lineage_logging_off_nothing_is_read_and_everything_lost_says_so():
    owner = FakeOwner(lineage_logged=False, tasks={_task(1): _logged(1)})
    plan = plan_rebuild([_result(1), _task(20) + bytes(4)], owner, ME)
    assert [gone.reason for gone in plan.lost] == [LOGGING_OFF, LOGGING_OFF]
    assert owner.queries("tasks") == owner.queries("copies") == []


def test_a_lost_put_feeding_a_rerun_is_restored_and_the_rerun_waits_for_it():
    put = _task(20) + bytes(4)
    owner = FakeOwner(tasks={_task(2): _logged(2, (put, ME))}, copies={put: KeptCopy(put, True, path="/p")},
                      lost_ids={put, _result(2)})
    plan = plan_rebuild([_result(2)], owner, ME)
    assert _reruns(plan) == [(_task(2), 1)] and plan.reruns[0].inputs == (put,)
    assert plan.restores == (Restore(put, None, "/p", False),)


def test_inputs_of_a_dead_owner_gone_from_the_store_are_adopted_and_rebuilt():
    # 3 reads: 1, owned by a dead process and gone; 2, of the dead owner but still in the store;
    # 4, of a live owner and gone (its owner rebuilds it); a put of the dead owner, gone.
    put = _task(20) + bytes(4)
    owner = FakeOwner(
        tasks={_task(1): _logged(1, (put, DEAD)), _task(3): _logged(3, (_result(1), DEAD), (_result(2), DEAD),
                                                                    (_result(4), OTHER))},
        copies={put: KeptCopy(put, True, inline=b"put")}, store={_result(2)},
        lost_ids={_result(3), _result(1), put})
    plan = plan_rebuild([_result(3)], owner, ME)
    assert _reruns(plan) == [(_task(1), 1), (_task(3), 1)]
    first, last = plan.reruns
    assert last.adopted == {_result(1)} and last.inputs == (_result(1),)
    assert first.adopted == {put} and plan.restores == (Restore(put, b"put", None, False),)
    # Only owners of inputs missing from the store are probed, each once per generation.
    assert owner.queries("dead_owners") == [[DEAD, OTHER], [DEAD]]


def test_an_adopted_object_is_rebuilt_like_an_owned_one():
    # A borrower adopts 2 (its owner died): it reruns 2, and 1 too, which 2 reads and which is gone.
    owner = FakeOwner(tasks={_task(1): _logged(1), _task(2): _logged(2, (_result(1), DEAD))},
                      lost_ids={_result(1)})
    plan = plan_rebuild([_result(2)], owner, ME)
    assert _reruns(plan) == [(_task(1), 1), (_task(2), 1)] and plan.reruns[1].adopted == {_result(1)}


def test_a_rebuild_is_bounded_and_reads_nothing_past_its_bound():
    owner = FakeOwner(tasks={_task(n): _logged(n, (_result(n - 1), ME)) for n in range(2, 100)} | {
        _task(1): _logged(1)}, lost_ids={_result(n) for n in range(1, 100)})
    with pytest.raises(LineageTooLongError, match="more than 10 objects and tasks"):
        plan_rebuild([_result(99)], owner, ME, nodes_max=10)
    assert len(owner.queries("tasks")) == 5  # ten nodes visited: five objects, five tasks
    # A chain far deeper than Python's stack is planned, one generation per link.
    deep = FakeOwner(tasks={_task(n): _logged(n, (_result(n - 1), ME)) for n in range(2, 5000)} | {
        _task(1): _logged(1)}, lost_ids={_result(n) for n in range(1, 5000)})
    assert [t for t, _ in _reruns(plan_rebuild([_result(4999)], deep, ME))] == [_task(n) for n in range(1, 5000)]


def test_the_planner_imports_nothing_from_the_runtime():
    import ast
    from pathlib import Path

    import ember.lineage._replay_plan as planner

    tree = ast.parse(Path(planner.__file__).read_text())
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)} | {
        alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    assert not {name for name in imported if name and name.startswith(("ember.scheduler", "ember.store"))}
