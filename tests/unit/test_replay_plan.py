"""The pure parts of replay: where inputs come from, the plan's order, the verdict, content hashes."""

from __future__ import annotations

import pickle
from dataclasses import dataclass, field

import numpy as np
import pytest

from ember.lineage._replay import ReplayResult, Verdict, split_returns, verdict_of
from ember.lineage._replay_log import Recorded
from ember.lineage._replay_plan import (
    FunctionUnavailableError,
    NeedsClusterError,
    ObjectFacts,
    ReplayInputError,
    Source,
    StepKind,
    choose_source,
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
    """The planner's questions answered from dictionaries."""

    inputs: dict[bytes, list[bytes]] = field(default_factory=dict)  # task -> object ids it reads
    objects: dict[bytes, ObjectFacts] = field(default_factory=dict)
    calls: dict[bytes, tuple[bytes, int]] = field(default_factory=dict)  # call task -> (actor, seq)
    creations: dict[bytes, bytes] = field(default_factory=dict)  # actor -> creation task
    checkpoints: dict[bytes, list[int]] = field(default_factory=dict)

    def object_facts(self, object_id: bytes) -> ObjectFacts:
        return self.objects.get(object_id) or ObjectFacts(object_id, "return", False, False, False, True)

    def task_inputs(self, task_id: bytes) -> list[bytes]:
        return self.inputs.get(task_id, [])

    def task_role(self, task_id: bytes) -> tuple[str, bytes | None, int]:
        if task_id in self.calls:
            return ("call", *self.calls[task_id])
        for actor, creation in self.creations.items():
            if creation == task_id:
                return "creation", actor, 0
        return "task", None, 0

    def actor_base(self, actor_id: bytes, before_seq: int) -> tuple[bytes, int]:
        return self.creations[actor_id], max((s for s in self.checkpoints.get(actor_id, []) if s < before_seq),
                                             default=0)

    def call_task(self, actor_id: bytes, seq: int) -> bytes:
        return next(t for t, place in self.calls.items() if place == (actor_id, seq))


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
    with pytest.raises(ReplayInputError, match="more than 10 steps"):
        plan_replay(log, _task(49), steps_max=10)
    assert len(plan_replay(log, _task(49))) == 49  # a long chain does not recurse on the Python stack


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


@pytest.mark.parametrize("cls", [ReplayInputError, FunctionUnavailableError, NeedsClusterError])
def test_replay_errors_pickle(cls):
    error = pickle.loads(pickle.dumps(cls("why and how to fix it")))
    assert type(error) is cls and str(error) == "why and how to fix it"
