"""Placement groups on one node (``ember.init()``): reserve, run in a bundle, refuse, wait, remove.

The multi-node behaviour (STRICT_SPREAD, STRICT_PACK, a node's death, a
driver's end) is in test_cluster_placement_groups.py.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

import ember
from ember.exceptions import (ActorPlacementGroupRemoved, InvalidOptionError, PlacementGroupAlreadyExistsError,
                              PlacementGroupNotFoundError, TaskPlacementGroupRemoved, TaskUnschedulableError)
from ember.util import (get_current_placement_group, get_placement_group, placement_group, placement_group_table,
                        remove_placement_group)
from ember.util.placement_group import PlacementGroup
from ember.util.scheduling_strategies import PlacementGroupSchedulingStrategy
from tests.fix_cluster import poll_until

GET_TIMEOUT_S = 60.0
STATE_TIMEOUT_S = 30.0


@pytest.fixture(scope="module")
def four_cpus() -> Iterator[None]:
    ember.init(num_cpus=4, num_gpus=2)
    try:
        yield
    finally:
        ember.shutdown()


def in_group(pg: PlacementGroup, index: int = -1, capture: bool = False) -> dict:
    return {"scheduling_strategy": PlacementGroupSchedulingStrategy(pg, index, capture)}


def state_of(pg: PlacementGroup) -> str:
    return placement_group_table(pg)["state"]


def free_cpus() -> float:
    return ember.available_resources().get("CPU", 0.0)


@ember.remote(num_cpus=1)
def where() -> tuple[str | None, list[str]]:
    context = ember.get_runtime_context()
    return context.get_placement_group_id(), sorted(context.get_assigned_resources())


@ember.remote(num_cpus=0)
def child_group() -> str | None:
    return ember.get_runtime_context().get_placement_group_id()


@ember.remote(num_cpus=0)
def parent() -> tuple[str | None, str | None]:
    current = get_current_placement_group()
    return (current.id.hex() if current is not None else None), ember.get(child_group.remote(),
                                                                          timeout=GET_TIMEOUT_S)


@ember.remote(num_cpus=2)
def greedy() -> str:
    return "ran"


@ember.remote(num_cpus=0)
def greedy_parent() -> str:
    try:
        return ember.get(greedy.remote(), timeout=GET_TIMEOUT_S)  # captured: 2 CPUs in a bundle of 1
    except TaskUnschedulableError as exc:
        return f"{type(exc).__name__}: {exc}"


@ember.remote
class Holder:
    def group(self) -> str | None:
        return ember.get_runtime_context().get_placement_group_id()


def test_a_group_reserves_its_bundles_and_tasks_run_on_them(four_cpus: None) -> None:
    pg = placement_group([{"CPU": 1}, {"CPU": 2}], strategy="PACK", name="reserved")
    assert ember.get(pg.ready(), timeout=GET_TIMEOUT_S) == pg
    assert pg.wait(10) and state_of(pg) == "CREATED"
    assert pg.bundle_specs == [{"CPU": 1.0}, {"CPU": 2.0}] and pg.bundle_count == 2
    assert free_cpus() == 1.0  # reserved out of the node's pool, whether used or not
    group, resources = ember.get(where.options(**in_group(pg, 1)).remote(), timeout=GET_TIMEOUT_S)
    assert group == pg.id.hex()
    assert f"CPU_group_1_{pg.id.hex()}" in resources and "CPU" not in resources
    # The group's three CPUs run three tasks at once, beside the node's one free CPU.
    assert len(ember.get([where.options(**in_group(pg)).remote() for _ in range(6)], timeout=GET_TIMEOUT_S)) == 6
    assert get_placement_group("reserved") == pg
    with pytest.raises(PlacementGroupAlreadyExistsError, match="reserved"):
        placement_group([{"CPU": 1}], name="reserved")
    remove_placement_group(pg)
    assert poll_until(lambda: free_cpus() == 4.0, STATE_TIMEOUT_S), "removing the group did not free its CPUs"
    assert state_of(pg) == "REMOVED"
    with pytest.raises(PlacementGroupNotFoundError):
        get_placement_group("reserved")


def test_a_task_too_big_for_its_bundle_is_refused_at_submit(four_cpus: None) -> None:
    pg = placement_group([{"CPU": 1}, {"CPU": 1}])
    assert pg.wait(10)
    with pytest.raises(InvalidOptionError, match="does not fit in bundle 0"):
        where.options(num_cpus=2, **in_group(pg, 0)).remote()
    with pytest.raises(InvalidOptionError, match="does not fit in any of its bundles"):
        where.options(num_cpus=2, **in_group(pg)).remote()
    with pytest.raises(InvalidOptionError, match="placement_group_bundle_index"):
        PlacementGroupSchedulingStrategy(pg, 2)
    remove_placement_group(pg)


def test_bad_groups_are_refused_naming_the_fix(four_cpus: None) -> None:
    for bundles, match in (([], "non-empty list"), ([{"CPU": 0}], "cannot be empty"), ([{"CPU": -1}], ">= 0"),
                           (["CPU"], "must be a dict")):
        with pytest.raises(InvalidOptionError, match=match):
            placement_group(bundles)
    with pytest.raises(InvalidOptionError, match="STRICT_SPREAD"):
        placement_group([{"CPU": 1}], strategy="TIGHT")
    with pytest.raises(InvalidOptionError, match="lifetime"):
        placement_group([{"CPU": 1}], lifetime="forever")


def test_a_group_that_does_not_fit_stays_pending_until_room_appears(four_cpus: None) -> None:
    hog = placement_group([{"CPU": 3}])
    assert hog.wait(10)
    waiting = placement_group([{"CPU": 1}, {"CPU": 1}], strategy="STRICT_PACK")
    ready = waiting.ready()
    assert not waiting.wait(1)
    assert state_of(waiting) == "PENDING"
    assert placement_group_table()[waiting.id.hex()]["stats"]["why_pending"]
    assert ember.wait([ready], timeout=0.5)[0] == []
    remove_placement_group(hog)
    try:
        assert ember.get(ready, timeout=GET_TIMEOUT_S) == waiting
        # The bundle ran the ready task as soon as its node committed it; the GCS hears of the commit
        # at that node's next heartbeat.
        assert poll_until(lambda: state_of(waiting) == "CREATED", STATE_TIMEOUT_S)
    finally:
        remove_placement_group(waiting)


def test_removing_a_group_ends_its_actors_and_its_waiting_tasks(four_cpus: None) -> None:
    pg = placement_group([{"CPU": 1}])
    assert pg.wait(10)
    actor = Holder.options(num_cpus=1, **in_group(pg, 0)).remote()
    assert ember.get(actor.group.remote(), timeout=GET_TIMEOUT_S) == pg.id.hex()
    queued = where.options(**in_group(pg, 0)).remote()  # the actor holds the bundle's CPU: it waits
    assert ember.wait([queued], timeout=0.5)[0] == []
    remove_placement_group(pg)  # its node hears it at its next heartbeat
    assert poll_until(lambda: free_cpus() == 4.0, STATE_TIMEOUT_S), "removing the group did not free its CPU"
    with pytest.raises(ActorPlacementGroupRemoved, match=pg.id.hex()):
        ember.get(actor.group.remote(), timeout=GET_TIMEOUT_S)
    with pytest.raises(TaskPlacementGroupRemoved, match=pg.id.hex()):
        ember.get(queued, timeout=GET_TIMEOUT_S)
    with pytest.raises(TaskPlacementGroupRemoved):
        ember.get(where.options(**in_group(pg, 0)).remote(), timeout=GET_TIMEOUT_S)


def test_child_tasks_are_captured_only_when_asked(four_cpus: None) -> None:
    pg = placement_group([{"CPU": 1}])
    assert pg.wait(10)
    assert ember.get(parent.options(**in_group(pg, capture=True)).remote(), timeout=GET_TIMEOUT_S) == (
        pg.id.hex(), pg.id.hex())
    assert ember.get(parent.options(**in_group(pg)).remote(), timeout=GET_TIMEOUT_S) == (pg.id.hex(), None)
    assert get_current_placement_group() is None  # a driver is in no group
    # A captured child too big for the group's bundle fails at get, typed, naming what the bundle holds.
    refused = ember.get(greedy_parent.options(**in_group(pg, capture=True)).remote(), timeout=GET_TIMEOUT_S)
    assert refused.startswith("TaskUnschedulableError") and "more than its bundles" in refused, refused
    # Ray's older options mean the same strategy.
    legacy = where.options(placement_group=pg, placement_group_bundle_index=0).remote()
    assert ember.get(legacy, timeout=GET_TIMEOUT_S)[0] == pg.id.hex()
    remove_placement_group(pg)


def test_the_table_lists_a_group_with_rays_fields(four_cpus: None) -> None:
    pg = placement_group([{"CPU": 1}], strategy="SPREAD", name="listed")
    assert pg.wait(10)
    entry = placement_group_table()[pg.id.hex()]
    assert entry["name"] == "listed" and entry["strategy"] == "SPREAD" and entry["bundles"] == {0: {"CPU": 1.0}}
    assert entry["bundles_to_node_id"] == {0: ember.get_runtime_context().get_node_id()}
    remove_placement_group(pg)
    assert state_of(pg) == "REMOVED"


@ember.remote(num_gpus=1)
class GpuHolder:
    def devices(self) -> tuple[str | None, list]:
        import os

        return os.environ.get("CUDA_VISIBLE_DEVICES"), [str(d) for d in ember.get_gpu_ids()]


def test_gpu_holders_in_a_bundle_get_distinct_devices_of_the_bundle(four_cpus):
    pg = placement_group([{"CPU": 1, "GPU": 2}])
    assert pg.wait(STATE_TIMEOUT_S)
    holders = [GpuHolder.options(**in_group(pg, 0)).remote() for _ in range(2)]
    seen = ember.get([h.devices.remote() for h in holders], timeout=GET_TIMEOUT_S)
    assert sorted(env for env, _ in seen) == ["0", "1"]  # each its own device of the bundle's two
    assert all([env] == ids for env, ids in seen)
    remove_placement_group(pg)
