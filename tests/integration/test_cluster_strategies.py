"""Scheduling strategies on three nodes: SPREAD over the nodes, node affinity, and affinity to a node killed.

Each node is a real node daemon (``LocalCluster``); the driver runs on node 1.
The last test kills node 3 and checks what Ray promises for it: hard
affinity to a dead node fails with ``TaskUnschedulableError`` (an actor's
with ``ActorUnschedulableError``), soft affinity runs elsewhere.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

import ember
from ember.chaos import LocalCluster
from ember.exceptions import ActorUnschedulableError, TaskUnschedulableError
from ember.util.scheduling_strategies import NodeAffinitySchedulingStrategy
from tests.fix_cluster import Counter, driver_of, poll_until

GET_TIMEOUT_S = 120.0

pytestmark = pytest.mark.usefixtures("private_runtime_dir")


@pytest.fixture(scope="module")
def three_nodes() -> Iterator[LocalCluster]:
    with driver_of([{"num_cpus": 2}] * 3) as cluster:
        yield cluster


@ember.remote
def nap(seconds: float) -> str:
    time.sleep(seconds)
    return ember.get_runtime_context().get_node_id()


def pinned(node_id: str, soft: bool = False) -> dict:
    return {"scheduling_strategy": NodeAffinitySchedulingStrategy(node_id, soft=soft)}


def test_spread_puts_tasks_and_actors_on_every_node(three_nodes: LocalCluster) -> None:
    # One task at a time, each on an idle cluster: by default each would run on the driver's node.
    ids = {node.node_id for node in three_nodes.nodes}
    assert {ember.get(nap.remote(0), timeout=GET_TIMEOUT_S) for _ in range(3)} == {three_nodes.nodes[0].node_id}
    ran = {ember.get(nap.options(scheduling_strategy="SPREAD").remote(0), timeout=GET_TIMEOUT_S) for _ in range(3)}
    assert ran == ids
    # Actors that need no CPU would all start on the driver's node too.
    actors = [Counter.options(scheduling_strategy="SPREAD").remote() for _ in range(3)]
    assert set(ember.get([a.node.remote() for a in actors], timeout=GET_TIMEOUT_S)) == ids
    for actor in actors:
        ember.kill(actor)


def test_affinity_runs_on_the_node_named_even_when_another_is_idle(three_nodes: LocalCluster) -> None:
    third = three_nodes.nodes[2].node_id
    runs = [nap.options(**pinned(third)).remote(0.05) for _ in range(6)]  # 2 CPUs there: they queue there
    assert ember.get(runs, timeout=GET_TIMEOUT_S) == [third] * 6
    second = three_nodes.nodes[1].node_id
    assert ember.get(nap.options(**pinned(second, soft=True)).remote(0), timeout=GET_TIMEOUT_S) == second
    actor = Counter.options(**pinned(third)).remote()
    assert ember.get(actor.node.remote(), timeout=GET_TIMEOUT_S) == third
    ember.kill(actor)


@ember.remote
def mark_and_nap(marker: str, seconds: float) -> str:
    open(marker, "w").close()
    time.sleep(seconds)
    return ember.get_runtime_context().get_node_id()


def test_affinity_to_a_killed_node_fails_typed_when_hard_and_runs_elsewhere_when_soft(
        three_nodes: LocalCluster, tmp_path) -> None:
    victim = three_nodes.nodes[2]
    living = {node.node_id for node in three_nodes.nodes[:2]}
    survivor = Counter.options(**pinned(victim.node_id), max_restarts=1).remote()
    assert ember.get(survivor.node.remote(), timeout=GET_TIMEOUT_S) == victim.node_id
    marker = tmp_path / "started"
    running = mark_and_nap.options(**pinned(victim.node_id)).remote(str(marker), 60.0)
    assert poll_until(marker.exists, 60.0), "the pinned task never started on its node"
    three_nodes.kill_node(victim)
    # Its retry (max_retries) asks for the same node, which is dead by then, or soon.
    with pytest.raises(TaskUnschedulableError, match=f"names node {victim.node_id}, which is dead"):
        ember.get(running, timeout=GET_TIMEOUT_S)
    hard = nap.options(**pinned(victim.node_id)).remote(0)
    soft = nap.options(**pinned(victim.node_id, soft=True)).remote(0)
    with pytest.raises(TaskUnschedulableError, match=f"names node {victim.node_id}, which is dead"):
        ember.get(hard, timeout=GET_TIMEOUT_S)
    assert ember.get(soft, timeout=GET_TIMEOUT_S) in living
    late = Counter.options(**pinned(victim.node_id)).remote()
    with pytest.raises(ActorUnschedulableError, match="which is dead"):
        ember.get(late.node.remote(), timeout=GET_TIMEOUT_S)
    # The actor that lived there cannot restart where its affinity allows: it is dead, saying why.
    with pytest.raises(ActorUnschedulableError, match="which is dead"):
        ember.get(survivor.node.remote(), timeout=GET_TIMEOUT_S)
