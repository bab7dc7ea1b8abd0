"""Placement groups' decision cores, with plain data: the GCS's planner and two-phase table
(lineage/_placement_groups.py), a node's bundles (scheduler/_bundles.py) and its queue's admission of
work in a bundle (scheduler/_node_queue.py)."""

from __future__ import annotations

import pytest

from ember.lineage._placement_groups import BundlePhase, Group, PlacementGroups, PlacementStrategy, bundle_key, plan
from ember.lineage._states import PlacementGroupState
from ember.scheduler._bundles import Bundles
from ember.scheduler._node_queue import Admission, NodeQueue
from ember.scheduler._resources import ResourcePool
from ember.scheduler._spec import (GROUP_REMOVED, Strategy, TaskSpec, bundle_shape, resource_shape,
                                   unbundled_shape)

G = "ab" * 16
NODES = {"a": {"CPU": 2.0}, "b": {"CPU": 2.0}, "c": {"CPU": 1.0}}


def group(bundles: list[dict[str, float]], strategy: PlacementStrategy, group_id: str = G, job: str = "01",
          detached: bool = False, name: str = "") -> Group:
    return Group(group_id, name, strategy, bundles, job, detached)


# -- the planner -------------------------------------------------------------------------------


def test_strict_spread_gives_each_bundle_a_node_of_its_own() -> None:
    chosen = plan([{"CPU": 1.0}] * 3, PlacementStrategy.STRICT_SPREAD, NODES, {})
    assert chosen is not None and sorted(chosen.values()) == ["a", "b", "c"]
    assert plan([{"CPU": 1.0}] * 4, PlacementStrategy.STRICT_SPREAD, NODES, {}) is None
    # A bundle too big for c: the search finds the assignment that still works.
    chosen = plan([{"CPU": 2.0}, {"CPU": 1.0}, {"CPU": 2.0}], PlacementStrategy.STRICT_SPREAD, NODES, {})
    assert chosen == {0: "a", 1: "c", 2: "b"}
    # Bundles already placed keep their nodes out of the others' way.
    assert plan([{"CPU": 1.0}] * 2, PlacementStrategy.STRICT_SPREAD, NODES, {0: "a"}) == {1: "b"}


def test_strict_pack_puts_every_bundle_on_one_node_or_none() -> None:
    assert plan([{"CPU": 1.0}] * 2, PlacementStrategy.STRICT_PACK, NODES, {}) == {0: "a", 1: "a"}
    assert plan([{"CPU": 1.0}] * 3, PlacementStrategy.STRICT_PACK, NODES, {}) is None
    assert plan([{"CPU": 1.0}] * 2, PlacementStrategy.STRICT_PACK, NODES, {0: "b"}) == {1: "b"}


def test_pack_packs_where_it_can_and_spreads_where_it_must() -> None:
    assert plan([{"CPU": 1.0}] * 2, PlacementStrategy.PACK, NODES, {}) == {0: "a", 1: "a"}
    chosen = plan([{"CPU": 1.0}] * 4, PlacementStrategy.PACK, NODES, {})
    assert chosen is not None and sorted(chosen.values()) == ["a", "a", "b", "b"]
    assert plan([{"CPU": 1.0}] * 6, PlacementStrategy.PACK, NODES, {}) is None


def test_spread_uses_as_many_nodes_as_it_can() -> None:
    chosen = plan([{"CPU": 1.0}] * 3, PlacementStrategy.SPREAD, NODES, {})
    assert chosen is not None and sorted(chosen.values()) == ["a", "b", "c"]
    chosen = plan([{"CPU": 1.0}] * 5, PlacementStrategy.SPREAD, NODES, {})
    assert chosen is not None and sorted(chosen.values()) == ["a", "a", "b", "b", "c"]


# -- the two phases ----------------------------------------------------------------------------


def _beat(table: PlacementGroups, node: str, held: dict[str, str], refused: tuple = ()) -> list[Group]:
    return table.report(node, held, refused)


def test_a_group_is_created_after_every_node_prepares_then_commits() -> None:
    table = PlacementGroups()
    g = group([{"CPU": 1.0}] * 2, PlacementStrategy.STRICT_SPREAD)
    table.add(g)
    assert table.schedule(NODES) == [g]
    a, b = g.nodes
    assert table.desired(a) == {bundle_key(G, 0): {"resources": {"CPU": 1.0}, "phase": BundlePhase.PREPARE}}
    _beat(table, a, {bundle_key(G, 0): BundlePhase.PREPARE})
    assert g.phase == [BundlePhase.PREPARE] * 2  # b has not prepared: nobody commits
    _beat(table, b, {bundle_key(G, 1): BundlePhase.PREPARE})
    assert g.phase == [BundlePhase.COMMIT] * 2 and g.state is PlacementGroupState.PENDING
    _beat(table, a, {bundle_key(G, 0): BundlePhase.COMMIT})
    assert g.state is PlacementGroupState.PENDING
    _beat(table, b, {bundle_key(G, 1): BundlePhase.COMMIT})
    assert g.state is PlacementGroupState.CREATED


def test_a_refusal_aborts_the_round_and_the_group_is_placed_again() -> None:
    table = PlacementGroups()
    g = group([{"CPU": 1.0}] * 2, PlacementStrategy.STRICT_SPREAD)
    table.add(g)
    table.schedule(NODES)
    a, b = g.nodes
    _beat(table, a, {bundle_key(G, 0): BundlePhase.PREPARE})
    _beat(table, b, {}, refused=(bundle_key(G, 1),))
    assert g.nodes == [None, None] and g.state is PlacementGroupState.PENDING
    assert table.desired(a) == {}  # a releases what it prepared
    assert "refused" in g.why_pending
    assert table.schedule(NODES) == [g] and None not in g.nodes


def test_pending_reservations_count_against_a_nodes_room() -> None:
    table = PlacementGroups()
    first, second = group([{"CPU": 2.0}], PlacementStrategy.PACK), group([{"CPU": 2.0}] * 2,
                                                                        PlacementStrategy.STRICT_SPREAD, "cd" * 16)
    table.add(first)
    table.schedule(NODES)
    table.add(second)
    assert table.schedule(NODES) == []  # a is promised to first, not reported yet; c is too small
    assert second.state is PlacementGroupState.PENDING and "no set" in second.why_pending


def test_a_dead_nodes_bundles_go_elsewhere_and_the_rest_stay() -> None:
    table = PlacementGroups()
    g = group([{"CPU": 1.0}] * 2, PlacementStrategy.STRICT_SPREAD)
    table.add(g)
    table.schedule(NODES)
    a, b = g.nodes
    for node, i in ((a, 0), (b, 1)):
        _beat(table, node, {bundle_key(G, i): BundlePhase.PREPARE})
    for node, i in ((a, 0), (b, 1)):
        _beat(table, node, {bundle_key(G, i): BundlePhase.COMMIT})
    assert g.state is PlacementGroupState.CREATED
    table.node_dead(b)
    assert g.state is PlacementGroupState.RESCHEDULING and g.nodes == [a, None]
    living = {n: r for n, r in NODES.items() if n != b}
    table.schedule(living)
    (moved,) = [n for n in g.nodes[1:]]
    assert moved not in (a, b)
    _beat(table, moved, {bundle_key(G, 1): BundlePhase.PREPARE})
    assert g.phase == [BundlePhase.COMMIT] * 2
    _beat(table, moved, {bundle_key(G, 1): BundlePhase.COMMIT})
    assert g.state is PlacementGroupState.CREATED


def test_removal_and_a_jobs_end_release_every_bundle_but_detached_groups() -> None:
    table = PlacementGroups()
    mine, kept = group([{"CPU": 1.0}], PlacementStrategy.PACK), group([{"CPU": 1.0}], PlacementStrategy.PACK,
                                                                    "cd" * 16, detached=True, name="kept")
    table.add(mine)
    table.add(kept)
    table.schedule(NODES)
    assert table.remove_job("01") == [mine]
    assert mine.state is PlacementGroupState.REMOVED and mine.nodes == [None]
    assert kept.state is PlacementGroupState.PENDING and table.named("kept") is kept
    with pytest.raises(ValueError, match="kept"):
        table.add(group([{"CPU": 1.0}], PlacementStrategy.PACK, "ef" * 16, name="kept"))
    assert table.remove(kept.group_id) is kept and table.remove(kept.group_id) is None


def test_a_record_round_trips_through_the_log() -> None:
    g = group([{"CPU": 1.0, "GPU": 1.0}], PlacementStrategy.STRICT_PACK, name="n")
    g.nodes, g.phase, g.state = ["a"], [BundlePhase.COMMIT], PlacementGroupState.CREATED
    import json

    back = Group.from_record(json.loads(json.dumps(g.record())), 1)
    assert (back.group_id, back.name, back.strategy, back.bundles, back.nodes, back.phase, back.state) == (
        g.group_id, "n", PlacementStrategy.STRICT_PACK, [{"CPU": 1.0, "GPU": 1.0}], ["a"], [BundlePhase.COMMIT],
        PlacementGroupState.CREATED)


def test_where_a_task_in_a_bundle_goes() -> None:
    table = PlacementGroups()
    g = group([{"CPU": 1.0}, {"CPU": 2.0}], PlacementStrategy.STRICT_SPREAD)
    table.add(g)
    assert table.where(G, 0, {"CPU": 1.0}, {}) == (None, None)  # not committed: it waits
    table.schedule(NODES)
    g.held = [BundlePhase.COMMIT, BundlePhase.COMMIT]
    free = {g.nodes[1]: {f"CPU_group_{G}": 2.0}}
    assert table.where(G, -1, {"CPU": 2.0}, free) == (g.nodes[1], None)
    assert table.where(G, 0, {"CPU": 1.0}, free) == (g.nodes[0], None)
    node, why = table.where(G, 0, {"CPU": 2.0}, free)
    assert node is None and "more than bundle 0" in why
    table.remove(G)
    node, why = table.where(G, 0, {"CPU": 1.0}, free)
    assert node is None and why.startswith(GROUP_REMOVED)


# -- a node's bundles ----------------------------------------------------------------------------


def test_a_node_prepares_commits_and_releases_its_bundles() -> None:
    pool = ResourcePool({"CPU": 2.0})
    bundles = Bundles(pool)
    key = bundle_key(G, 0)
    bundles.reconcile({key: {"resources": {"CPU": 1.0}, "phase": "prepare"}})
    assert pool.available == {"CPU": 1.0} and bundles.report() == {"held": {key: "prepare"}, "refused": []}
    changes = bundles.reconcile({key: {"resources": {"CPU": 1.0}, "phase": "commit"}})
    assert changes.committed and pool.available[f"CPU_group_0_{G}"] == 1.0 and pool.available[f"CPU_group_{G}"] == 1.0
    shape = bundle_shape(resource_shape({"CPU": 1.0}), G, 0)
    assert pool.can_acquire(shape) and unbundled_shape(shape, G) == {"CPU": 1.0}
    pool.acquire(shape)
    changes = bundles.reconcile({})  # removed while a task holds its CPU
    assert changes.released_groups == {G} and pool.total == {"CPU": 2.0} and pool.available["CPU"] == 2.0
    pool.release(shape)  # the task's worker ends later: the group's resources are gone, nothing comes back
    assert pool.available == {"CPU": 2.0}


def test_a_node_refuses_a_bundle_it_has_no_room_for_and_says_so_once() -> None:
    pool = ResourcePool({"CPU": 1.0})
    bundles = Bundles(pool)
    key = bundle_key(G, 0)
    bundles.reconcile({key: {"resources": {"CPU": 2.0}, "phase": "prepare"}})
    assert bundles.report() == {"held": {}, "refused": [key]}
    assert bundles.report() == {"held": {}, "refused": []}
    assert pool.available == {"CPU": 1.0}


# -- the queue -----------------------------------------------------------------------------------


class _Links:
    def open(self, worker: int) -> bool:
        return True


def _spec(task_id: bytes, index: int, cpus: float = 1.0) -> TaskSpec:
    shape = bundle_shape(resource_shape({"CPU": cpus}), G, index)
    return TaskSpec(task_id, 1, b"j", "owner", b"f", "f", [], {}, 1, shape, 3,
                    strategy=(Strategy.PLACEMENT_GROUP.value, G, index, False))


def test_work_in_a_bundle_waits_for_it_on_a_node_alone_and_runs_once_committed() -> None:
    queue = NodeQueue({"CPU": 2.0}, _Links(), spills=False, node_id="n")
    assert queue.enqueue(_spec(b"t" * 16, 0)) is Admission.QUEUED
    assert queue.awaiting_groups() == {G}
    bundles = Bundles(queue.resources)
    bundles.reconcile({bundle_key(G, 0): {"resources": {"CPU": 1.0}, "phase": "commit"}})
    assert queue.awaiting_groups() == set()
    slot = queue.new_slot(None, 0.0)
    queue.linked(slot.key, True, True)
    assert [type(a).__name__ for a in queue.dispatch(0.0)] == ["Assign"]
    assert queue.group_holders(G) == [slot.key]
    # Too big for its bundle, once the group is here: unmet, saying what the bundle holds.
    big = _spec(b"u" * 16, 0, cpus=2.0)
    assert queue.enqueue(big) is Admission.UNMET
    assert "more than bundle 0" in queue.unmet_detail(big.strategy, big.resources)


def test_work_in_a_bundle_elsewhere_goes_to_the_global_scheduler_and_a_gone_groups_is_taken_out() -> None:
    spilling = NodeQueue({"CPU": 2.0}, _Links(), spills=True, node_id="n")
    assert spilling.enqueue(_spec(b"t" * 16, 0)) is Admission.SPILL
    alone = NodeQueue({"CPU": 2.0}, _Links(), spills=False, node_id="n")
    alone.enqueue(_spec(b"t" * 16, 0))
    specs, actors = alone.take_group(G)
    assert [s.task_id for s in specs] == [b"t" * 16] and actors == [] and alone.queued() == 0


def test_a_blocked_task_lends_its_bundles_cpus_as_it_lends_the_nodes() -> None:
    queue = NodeQueue({"CPU": 2.0}, _Links(), spills=False, node_id="n")
    Bundles(queue.resources).reconcile({bundle_key(G, 0): {"resources": {"CPU": 1.0}, "phase": "commit"}})
    first, second = queue.new_slot(None, 0.0), queue.new_slot(None, 0.0)
    for slot in (first, second):
        queue.linked(slot.key, True, True)
    queue.enqueue(_spec(b"t" * 16, 0))
    queue.enqueue(_spec(b"u" * 16, 0))
    # The bundle's one CPU: the second waits in its queue (no backlog: nothing queues behind a worker).
    assert [a.worker for a in queue.dispatch(0.0)] == [first.key]
    queue.blocked(first.key, [])  # the first waits in get
    assert [a.worker for a in queue.dispatch(0.0)] == [second.key]  # the bundle's CPU is lent meanwhile
    queue.unblocked(first.key)
    assert queue.resources.available[f"CPU_group_0_{G}"] == -1.0  # back, past the total: as for a node's CPUs
    queue.task_done(second.key, [b"u" * 16], 1.0)
    queue.task_done(first.key, [b"t" * 16], 1.0)
    assert queue.resources.available[f"CPU_group_0_{G}"] == 1.0 and queue.resources.available["CPU"] == 1.0
