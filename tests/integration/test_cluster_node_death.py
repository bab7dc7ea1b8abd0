"""A node killed mid-workload: the work it held is redone elsewhere and every result is right.

The node is SIGKILLed whole (daemon, store, scheduler, relay, workers) while
tasks run on it, objects it made are still wanted and an actor lives there.
Tasks forwarded to it go back to their owners when its connection drops;
objects only it held are rebuilt from lineage when a pull from it fails; the
actor starts on another node and replays its logged calls.
"""

from __future__ import annotations

import os
import signal
import time

import numpy as np
import pytest

import ember
import ember.chaos
from ember.chaos import LocalCluster
from tests.fix_cluster import Counter, poll_until

GET_TIMEOUT_S = 120.0

pytestmark = pytest.mark.usefixtures("private_runtime_dir")


@ember.remote
def total(array: np.ndarray) -> tuple[int, str]:
    return int(array.sum()), ember.get_runtime_context().get_node_id()


def test_a_node_killed_mid_workload_leaves_every_result_right() -> None:
    @ember.remote
    def work(i: int) -> np.ndarray:
        time.sleep(0.05)
        return np.full(200_000, i, dtype=np.int64)  # 1.6 MB: kept in the store of the node it ran on

    nodes = [{"num_cpus": 1}, {"num_cpus": 1, "resources": {"spare": 1}}, {"num_cpus": 1, "resources": {"spare": 1}}]
    with LocalCluster(nodes=nodes) as cluster:
        ember.init(address=cluster.address)
        try:
            refs = [work.options(resources={"spare": 0.01}).remote(i) for i in range(40)]
            sums = [total.remote(ref) for ref in refs]
            done, _ = ember.wait(sums, num_returns=2, timeout=GET_TIMEOUT_S)
            assert len(done) == 2, "the workload did not start"
            cluster.kill_node(cluster.nodes[2])
            assert [s for s, _ in ember.get(sums, timeout=GET_TIMEOUT_S)] == [200_000 * i for i in range(40)]
            arrays = ember.get(refs, timeout=GET_TIMEOUT_S)
            assert [int(a[0]) for a in arrays] == list(range(40))
            alive = {n["NodeID"] for n in ember.nodes() if n["Alive"]}
            assert cluster.nodes[2].node_id not in alive
        finally:
            ember.shutdown()


def test_an_actor_whose_node_is_killed_restarts_on_another_with_its_state() -> None:
    nodes = [{"num_cpus": 1}, {"num_cpus": 1, "resources": {"spare": 1}}, {"num_cpus": 1, "resources": {"spare": 1}}]
    with LocalCluster(nodes=nodes) as cluster:
        ember.init(address=cluster.address)
        try:
            counter = Counter.options(resources={"spare": 0.5}, max_restarts=1, max_task_retries=1).remote()
            assert ember.get([counter.add.remote(1) for _ in range(5)], timeout=GET_TIMEOUT_S) == [1, 2, 3, 4, 5]
            host = ember.get(counter.node.remote(), timeout=GET_TIMEOUT_S)
            victim = next(node for node in cluster.nodes if node.node_id == host)
            cluster.kill_node(victim)
            assert ember.get(counter.add.remote(100), timeout=GET_TIMEOUT_S) == 105
            survivors = {node.node_id for node in cluster.nodes[1:]} - {host}
            assert ember.get(counter.node.remote(), timeout=GET_TIMEOUT_S) in survivors
        finally:
            ember.shutdown()


def test_an_object_whose_node_died_is_read_from_a_copy_on_another_node() -> None:
    @ember.remote
    def noise() -> np.ndarray:
        return np.random.default_rng().random(1_000_000)  # 8 MB; another run would give other numbers

    @ember.remote
    def checksum(array: np.ndarray) -> float:
        return float(array.sum())

    nodes = [{"num_cpus": 1}, {"num_cpus": 1, "resources": {"a": 1}}, {"num_cpus": 1, "resources": {"b": 1}}]
    with LocalCluster(nodes=nodes) as cluster:
        ember.init(address=cluster.address)
        try:
            made = noise.options(resources={"a": 0.01}).remote()  # on node 2
            seen = ember.get(checksum.options(resources={"b": 0.01}).remote(made), timeout=GET_TIMEOUT_S)
            cluster.kill_node(cluster.nodes[1])  # node 3 holds the only copy now
            assert float(ember.get(made, timeout=GET_TIMEOUT_S).sum()) == seen  # the same numbers: not made again
        finally:
            ember.shutdown()


def test_an_object_lost_with_another_nodes_store_is_rebuilt_when_read_there() -> None:
    @ember.remote
    def made(i: int) -> np.ndarray:
        return np.full(200_000, i, dtype=np.int64)  # 1.6 MB: in the store of the node it ran on

    nodes = [{"num_cpus": 1}, {"num_cpus": 1, "resources": {"a": 1}}]
    with LocalCluster(nodes=nodes) as cluster:
        ember.init(address=cluster.address)
        try:
            ref = made.options(resources={"a": 0.01}).remote(7)  # on node 2, owned by this driver
            # Read there first (a wait here would pull a copy to this node, which would then serve it).
            assert ember.get(total.options(resources={"a": 0.01}).remote(ref), timeout=GET_TIMEOUT_S)[0] == 1_400_000
            def node2_store() -> int | None:
                return next((p.pid for p in ember.chaos.processes()
                             if p.kind == "store" and p.node_id == cluster.nodes[1].node_id), None)

            old = node2_store()
            os.kill(old, signal.SIGKILL)  # node 2's supervisor starts an empty store
            assert poll_until(lambda: node2_store() not in (None, old), 30.0), "node 2's store did not come back"
            # Read on node 2 itself: its owner says "here", where it no longer is.
            assert ember.get(total.options(resources={"a": 0.01}).remote(ref), timeout=GET_TIMEOUT_S)[0] == 1_400_000
        finally:
            ember.shutdown()


def test_an_actor_on_another_node_outlives_a_restart_of_its_owners_scheduler_as_one_instance() -> None:
    nodes = [{"num_cpus": 1}, {"num_cpus": 1, "resources": {"two": 1}}]
    with LocalCluster(nodes=nodes) as cluster:
        ember.init(address=cluster.address)
        try:
            counter = Counter.options(resources={"two": 0.5}, max_restarts=2).remote()
            assert ember.get([counter.add.remote(1) for _ in range(3)], timeout=GET_TIMEOUT_S) == [1, 2, 3]
            actor_pids = {p.pid for p in ember.chaos.processes() if p.actor_id is not None}
            own = next(p.pid for p in ember.chaos.processes()
                       if p.kind == "scheduler" and p.node_id == cluster.nodes[0].node_id)
            os.kill(own, signal.SIGKILL)  # the driver creates its actors again through the new one
            assert poll_until(lambda: _restarted_scheduler(cluster.nodes[0].node_id, own), 60.0)
            # The actor lived on, on node 2: the same instance answers, with its state.
            assert ember.get(counter.add.remote(1), timeout=GET_TIMEOUT_S) == 4
            assert {p.pid for p in ember.chaos.processes() if p.actor_id is not None} == actor_pids
            # Its resources are held once: the other half of node 2's "two" is still free.
            half = ember.remote(lambda: "ran").options(resources={"two": 0.5})
            assert ember.get(half.remote(), timeout=GET_TIMEOUT_S) == "ran"
        finally:
            ember.shutdown()


def _restarted_scheduler(node_id: str, old_pid: int) -> bool:
    try:
        return any(p.kind == "scheduler" and p.node_id == node_id and p.pid != old_pid
                   for p in ember.chaos.processes())
    except ember.exceptions.ClusterUnavailableError:
        return False  # asked while it restarts
