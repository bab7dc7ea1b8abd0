"""Scheduling strategies with plain data: what the node queue admits, what the global scheduler places or refuses.

No processes: ``NodeQueue`` and ``GcsService`` objects, as in test_spread.py.
"""

from __future__ import annotations

import pytest

from ember.lineage._rpc import BadRequest
from ember.scheduler._messages import spec_problem
from ember.scheduler._node_queue import Admission, NodeQueue
from ember.scheduler._spec import GROUP_REMOVED, Strategy, describe_strategy, strategy_of_record, strategy_record
from tests.unit.test_node_queue import CPU1, GPU1, Links, spec
from tests.unit.test_spread import gcs

SPREAD = (Strategy.SPREAD.value,)


def on(node_id: str, soft: bool = False) -> tuple:
    return (Strategy.NODE_AFFINITY.value, node_id, soft)


def with_strategy(n: int, strategy: tuple | None, shape: tuple = CPU1):
    task = spec(n, shape)
    task.strategy = strategy
    return task


def queue(spills: bool) -> NodeQueue:
    return NodeQueue({"CPU": 1}, Links(), spills=spills, node_id="here")


@pytest.mark.parametrize("strategy", [None, SPREAD, on("here"), on("there"), on("there", soft=True)])
def test_strategy_records_round_trip_for_the_log(strategy):
    assert strategy_of_record(strategy_record(strategy)) == strategy
    assert spec_problem(with_strategy(1, strategy)) is None


def test_a_malformed_strategy_is_named_by_the_message_check():
    assert "strategy" in spec_problem(with_strategy(1, ("NODE_AFFINITY", b"x", False)))  # type: ignore[arg-type]
    assert "strategy" in spec_problem(with_strategy(1, ("PACK",)))  # type: ignore[arg-type]


def test_describe_strategy_for_people():
    assert describe_strategy(None) == "DEFAULT"
    assert describe_strategy(strategy_record(SPREAD)) == "SPREAD"
    assert describe_strategy(strategy_record(on("ab12", soft=True))) == "node:ab12 (soft)"


def test_in_a_cluster_spread_and_affinity_elsewhere_go_to_the_global_scheduler():
    q = queue(spills=True)
    assert q.enqueue(with_strategy(1, SPREAD)) is Admission.SPILL
    assert q.enqueue(with_strategy(2, on("there"))) is Admission.SPILL
    assert q.enqueue(with_strategy(3, on("there", soft=True))) is Admission.SPILL
    placed = with_strategy(4, SPREAD)
    q.keep_placed(placed.task_id)  # the global scheduler chose this node: it stays
    assert q.enqueue(placed) is Admission.QUEUED


def test_affinity_to_this_node_stays_here_for_good():
    q = queue(spills=True)
    pinned = with_strategy(1, on("here"))
    assert q.enqueue(pinned) is Admission.QUEUED
    assert q.is_placed(pinned.task_id)  # never spread, never spilled as excess
    # Too small for it: hard affinity is unmet, soft falls back to the default policy (spilled).
    assert q.enqueue(with_strategy(2, on("here"), GPU1)) is Admission.UNMET
    assert q.enqueue(with_strategy(3, on("here", soft=True), GPU1)) is Admission.SPILL


def test_a_node_alone_runs_spread_here_and_refuses_hard_affinity_to_another_node():
    q = queue(spills=False)
    assert q.enqueue(with_strategy(1, SPREAD)) is Admission.QUEUED
    assert q.enqueue(with_strategy(2, on("there", soft=True))) is Admission.QUEUED
    assert q.enqueue(with_strategy(3, on("there"))) is Admission.UNMET
    assert "node there, which is not a live node" in q.unmet_detail(on("there"), CPU1)


def place(service, strategy: tuple | None, resources: dict | None = None) -> tuple[str | None, str | None]:
    task = {"resources": resources or {"CPU": 1.0}}
    if strategy is not None:
        task["strategy"] = strategy_record(strategy)
    reply = service.place({"node_id": "a", "tasks": [task]})
    return reply["placements"][0], reply["refused"].get("0")


def test_spread_takes_the_nodes_in_turn_those_with_room_first():
    service = gcs(("a", 1, 1), ("b", 1, 1), ("c", 1, 0))
    turns = [place(service, SPREAD)[0] for _ in range(4)]
    assert turns[:2] == ["a", "b"]  # c has no room: skipped while others have
    assert set(turns[2:]) <= {"a", "b", "c"}  # nobody has room now: the next in turn


def test_hard_affinity_goes_to_its_node_even_when_full_and_is_refused_when_it_is_dead_or_unknown():
    service = gcs(("a", 1, 1), ("b", 1, 0))
    assert place(service, on("b")) == ("b", None)  # it waits there for its CPU
    service._nodes["b"].alive = False
    service._nodes["b"].death_cause = "missed heartbeats for 1.0s"
    node, why = place(service, on("b"))
    assert node is None and "is dead (missed heartbeats" in why and "soft=True" in why
    node, why = place(service, on("nowhere"))
    assert node is None and "not a node of this cluster" in why
    node, why = place(service, on("a"), {"CPU": 1.0, "GPU": 1.0})
    assert node is None and "can never give" in why


def test_soft_affinity_to_a_dead_node_falls_back_to_the_default_policy():
    service = gcs(("a", 1, 0), ("b", 1, 1))
    service._nodes["a"].alive = False
    assert place(service, on("a", soft=True)) == ("b", None)


def test_a_malformed_strategy_in_a_place_request_is_refused_whole():
    service = gcs(("a", 1, 1))
    with pytest.raises(BadRequest, match="strategy"):
        service.place({"node_id": "a", "tasks": [{"resources": {}, "strategy": {"kind": "PACK"}}]})
    with pytest.raises(BadRequest, match="soft"):
        service.place({"node_id": "a", "tasks": [{"resources": {}, "strategy": {"kind": "NODE_AFFINITY",
                                                                                "node_id": "a", "soft": 1}}]})


GROUP = "ab" * 16


def in_group(index: int = -1, capture: bool = False) -> tuple:
    return (Strategy.PLACEMENT_GROUP.value, GROUP, index, capture)


@pytest.mark.parametrize("strategy", [in_group(), in_group(1, True)])
def test_placement_group_strategies_round_trip_and_are_described(strategy):
    assert strategy_of_record(strategy_record(strategy)) == strategy
    assert spec_problem(with_strategy(1, strategy)) is None
    assert describe_strategy(strategy_record(strategy)) == f"group:{GROUP}" + ("[1]" if strategy[2] == 1 else "")
    assert "strategy" in spec_problem(with_strategy(1, (Strategy.PLACEMENT_GROUP.value, GROUP, -2, False)))


def _beat(service, node_id: str, held: dict, available: dict) -> dict:
    return service.heartbeat({"node_id": node_id, "bundles": held, "refused": [], "available": available})


def test_the_gcs_reserves_a_group_in_two_phases_over_heartbeats_and_places_its_tasks():
    service = gcs(("a", 2, 2), ("b", 2, 2))
    service.create_placement_group({"group_id": GROUP, "name": "g", "strategy": "STRICT_SPREAD",
                                    "bundles": [{"CPU": 1}, {"CPU": 1}], "job_id": "01", "detached": False})
    record = service.get_placement_group({"group_id": GROUP})["group"]
    assert record["state"] == "PENDING" and sorted(record["bundles_to_node_id"].values()) == ["a", "b"]
    placed = {node: i for i, node in record["bundles_to_node_id"].items()}
    key = {node: f"{GROUP}:{i}" for node, i in placed.items()}
    for node in ("a", "b"):
        assert _beat(service, node, {}, {"CPU": 2})["bundles"][key[node]]["phase"] == "prepare"
    assert _beat(service, "a", {key["a"]: "prepare"}, {"CPU": 1})["bundles"][key["a"]]["phase"] == "prepare"
    assert _beat(service, "b", {key["b"]: "prepare"}, {"CPU": 1})["bundles"][key["b"]]["phase"] == "commit"
    # Not committed anywhere yet: a task in the group waits.
    shape = {f"CPU_group_{GROUP}": 1.0, f"bundle_group_{GROUP}": 0.001}
    assert place(service, in_group(), shape) == (None, None)
    committed = {f"CPU_group_{GROUP}": 1.0, f"bundle_group_{GROUP}": 1000.0}
    for node in ("a", "b"):
        _beat(service, node, {key[node]: "commit"}, {"CPU": 1, **committed})
    assert service.get_placement_group({"name": "g"})["group"]["state"] == "CREATED"
    assert place(service, in_group(), shape)[0] in ("a", "b")
    node, why = place(service, in_group(), {f"CPU_group_{GROUP}": 2.0})
    assert node is None and "more than any bundle" in why
    # b was thought dead and its bundle taken off it (no room left to place it again): b must let it go
    # and its work follow it, but nothing of the group is gone.
    with service._lock:
        service._nodes["b"].available = {"CPU": 0}
        service._groups_of_dead_node("b")
    reply = _beat(service, "b", {key["b"]: "commit"}, {"CPU": 0})
    assert key["b"] not in reply["bundles"] and reply["gone"] == []
    service.remove_placement_group({"group_id": GROUP})
    reply = _beat(service, "a", {key["a"]: "commit"}, {"CPU": 1, **committed})
    assert reply["bundles"] == {} and reply["gone"] == [GROUP]  # removed: a ends its work
    node, why = place(service, in_group(), shape)
    assert node is None and why.startswith(GROUP_REMOVED)


def test_a_restarted_gcs_not_yet_loaded_tells_nodes_nothing_about_their_bundles():
    service = gcs(("a", 2, 2))
    service.loaded.clear()
    reply = service.heartbeat({"node_id": "a", "bundles": {f"{GROUP}:0": "commit"}, "awaiting": [GROUP]})
    assert "bundles" not in reply and reply["gone"] == []  # the node keeps what it holds; nothing is gone
