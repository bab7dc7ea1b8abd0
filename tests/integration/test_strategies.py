"""Scheduling strategies on one node (``ember.init()``): affinity, SPREAD, the typed errors, and the log.

The three-node half (SPREAD over nodes, affinity to a dead node) is in
test_cluster_strategies.py.
"""

from __future__ import annotations

import pytest

import ember
from ember.exceptions import ActorUnschedulableError, TaskUnschedulableError
from ember.util.scheduling_strategies import NodeAffinitySchedulingStrategy

pytestmark = pytest.mark.usefixtures("cluster")

GET_TIMEOUT_S = 60.0
UNKNOWN_NODE = "f" * 32


@ember.remote
def where() -> str:
    return ember.get_runtime_context().get_node_id()


@ember.remote
class Here:
    def node(self) -> str:
        return ember.get_runtime_context().get_node_id()


def test_affinity_to_this_node_and_spread_run_here():
    me = ember.get_runtime_context().get_node_id()
    runs = [where.options(scheduling_strategy=NodeAffinitySchedulingStrategy(me, soft=soft)).remote()
            for soft in (False, True)]
    runs.append(where.options(scheduling_strategy="SPREAD").remote())
    assert ember.get(runs, timeout=GET_TIMEOUT_S) == [me] * 3
    actor = Here.options(scheduling_strategy=NodeAffinitySchedulingStrategy(me, soft=False)).remote()
    assert ember.get(actor.node.remote(), timeout=GET_TIMEOUT_S) == me


def test_hard_affinity_to_an_unknown_node_fails_typed_and_soft_runs_here():
    me = ember.get_runtime_context().get_node_id()
    hard = where.options(scheduling_strategy=NodeAffinitySchedulingStrategy(UNKNOWN_NODE, soft=False)).remote()
    with pytest.raises(TaskUnschedulableError, match=f"names node {UNKNOWN_NODE}, which is not a live node"):
        ember.get(hard, timeout=GET_TIMEOUT_S)
    soft = where.options(scheduling_strategy=NodeAffinitySchedulingStrategy(UNKNOWN_NODE, soft=True)).remote()
    assert ember.get(soft, timeout=GET_TIMEOUT_S) == me


def test_an_actor_with_hard_affinity_to_an_unknown_node_never_starts():
    actor = Here.options(scheduling_strategy=NodeAffinitySchedulingStrategy(UNKNOWN_NODE, soft=False)).remote()
    with pytest.raises(ActorUnschedulableError, match="cannot be scheduled"):
        ember.get(actor.node.remote(), timeout=GET_TIMEOUT_S)


def test_hard_affinity_to_this_node_that_is_too_small_fails_typed():
    me = ember.get_runtime_context().get_node_id()
    big = where.options(num_cpus=64, scheduling_strategy=NodeAffinitySchedulingStrategy(me, soft=False)).remote()
    with pytest.raises(TaskUnschedulableError, match="can never give"):
        ember.get(big, timeout=GET_TIMEOUT_S)


def test_the_strategy_is_logged_with_the_task_and_listed():
    me = ember.get_runtime_context().get_node_id()
    pinned = where.options(scheduling_strategy=NodeAffinitySchedulingStrategy(me, soft=True)).remote()
    spread = where.options(scheduling_strategy="SPREAD").remote()
    plain = where.remote()
    ember.get([pinned, spread, plain], timeout=GET_TIMEOUT_S)
    job = ember.get_runtime_context().get_job_id()
    with ember.lineage.open_log() as log:
        rows = {r.task_id: r.strategy for r in log.tasks(job=job, limit=1000)}
        assert rows[pinned.task_id().hex()] == f"node:{me} (soft)"
        assert rows[spread.task_id().hex()] == "SPREAD"
        assert rows[plain.task_id().hex()] == "DEFAULT"
        assert log.task(spread.task_id().hex()).strategy == "SPREAD"
        assert "strategy SPREAD" in log.lineage(spread.hex()).to_tree()
