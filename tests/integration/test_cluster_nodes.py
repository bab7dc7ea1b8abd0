"""Clusters that outlive a program: `ember start/stop/status`, `init(address=...)`, `LocalCluster`.

Every node here is a real node daemon with its own session, store and
scheduler, in a runtime folder private to this module (so `ember stop` can
never touch a node the tests did not start).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator

import pytest

import ember
from ember.chaos._cluster import LocalCluster
from ember.scheduler._node import free_port
from ember.exceptions import EmberUserError
from ember.scheduler import local_nodes
from tests.fix_cluster import poll_until

DEATH_DETECTED_S = 15.0
CLI_TIMEOUT_S = 120.0


pytestmark = pytest.mark.usefixtures("private_runtime_dir")


@pytest.fixture(scope="module")
def two_nodes() -> Iterator[LocalCluster]:
    with LocalCluster(nodes=[{"num_cpus": 1}, {"num_cpus": 1, "resources": {"special": 2}}]) as cluster:
        yield cluster


def _ember(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ember._cli", *args], capture_output=True, text=True,
                          timeout=CLI_TIMEOUT_S, env=dict(os.environ))


def test_a_driver_connects_to_a_running_cluster_and_leaves_it_running(two_nodes: LocalCluster) -> None:
    head = two_nodes.nodes[0]
    info = ember.init(address=two_nodes.address)
    try:
        assert info["node_id"] == head.node_id

        @ember.remote
        def where(x: int) -> tuple[int, str]:
            return x * 2, ember.get_runtime_context().get_node_id()

        results = ember.get([where.remote(i) for i in range(4)], timeout=60)
        assert [r[0] for r in results] == [0, 2, 4, 6]
        # On the driver's node, or (Ray's hybrid policy) on the other when the head's one CPU is busy.
        assert {r[1] for r in results} <= {n.node_id for n in two_nodes.nodes}
        assert ember.get_runtime_context().get_node_id() == head.node_id
        totals = ember.cluster_resources()
        assert totals["CPU"] == 2.0 and totals["special"] == 2.0
        listed = ember.nodes()
        assert {n["NodeID"] for n in listed if n["Alive"]} == {n.node_id for n in two_nodes.nodes}
        rays_keys = {"NodeID", "Alive", "alive", "Resources", "NodeManagerAddress", "NodeManagerHostname",
                     "NodeManagerPort", "NodeName", "ObjectStoreSocketName", "RayletSocketName", "MetricsExportPort",
                     "Labels", "DeathReason", "DeathReasonMessage"}
        for node in listed:
            assert rays_keys <= set(node), rays_keys - set(node)
            assert node["NodeManagerPort"] > 0 and node["DeathReason"] == 0  # alive: Ray's UNSPECIFIED
            assert node["Labels"] == {"ray.io/node-id": node["NodeID"]}
    finally:
        ember.shutdown()
    assert all(node.alive() for node in two_nodes.nodes)
    ember.init(address="auto")  # the one cluster on this machine
    try:
        assert ember.get(ember.put("again"), timeout=30) == "again"
    finally:
        ember.shutdown()


def test_connecting_to_no_cluster_or_with_sizes_says_what_to_do(two_nodes: LocalCluster) -> None:
    with pytest.raises(EmberUserError, match="ember start --address 127.0.0.1:1"):
        ember.init(address="127.0.0.1:1")
    with pytest.raises(EmberUserError, match="not a cluster address"):
        ember.init(address="nowhere")
    with pytest.raises(EmberUserError, match="leave out num_cpus"):
        ember.init(address=two_nodes.address, num_cpus=4)
    assert not ember.is_initialized()


def test_status_shows_the_nodes_and_what_they_use(two_nodes: LocalCluster) -> None:
    done = _ember("status", "--address", two_nodes.address, "--format", "json")
    assert done.returncode == 0, done.stderr
    status = json.loads(done.stdout)
    by_id = {n["node_id"]: n for n in status["nodes"]}
    assert set(by_id) == {n.node_id for n in two_nodes.nodes}
    assert by_id[two_nodes.nodes[1].node_id]["resources"]["special"] == 2.0
    table = _ember("status", "--address", two_nodes.address)
    assert table.returncode == 0 and "2 node(s) alive" in table.stdout and "special 0/2" in table.stdout


def test_a_killed_node_is_declared_dead_and_its_processes_are_gone(two_nodes: LocalCluster) -> None:
    extra = two_nodes.add_node(num_cpus=1)
    pids = two_nodes.node_pids(extra)
    assert len(pids) == 3  # daemon, store, scheduler
    two_nodes.kill_node(extra)
    ember.init(address=two_nodes.address)
    try:
        dead = poll_until(lambda: not {n["NodeID"]: n for n in ember.nodes()}[extra.node_id]["Alive"],
                          DEATH_DETECTED_S, 0.1)
        assert dead, f"node {extra.node_id} still alive {DEATH_DETECTED_S}s after its kill"
        gone = {n["NodeID"]: n for n in ember.nodes()}[extra.node_id]
        assert gone["DeathReason"] == 2 and gone["DeathReasonMessage"]  # Ray's UNEXPECTED_TERMINATION, and why
        assert ember.cluster_resources()["CPU"] == 2.0  # the dead node's CPU is no longer counted
    finally:
        ember.shutdown()
    assert extra not in local_nodes.local_nodes()


def test_the_cli_starts_joins_and_stops_a_cluster() -> None:
    port = free_port()
    head = _ember("start", "--head", "--port", str(port), "--num-cpus", "1")
    try:
        assert head.returncode == 0, head.stdout + head.stderr
        assert f"127.0.0.1:{port}" in head.stdout and "ember start --address" in head.stdout
        joined = _ember("start", "--address", f"localhost:{port}", "--num-cpus", "1", "--num-gpus", "2")
        assert joined.returncode == 0, joined.stdout + joined.stderr
        status = _ember("status", "--address", f"127.0.0.1:{port}")
        assert status.returncode == 0 and "GPU USED" in status.stdout, status.stdout + status.stderr
        assert any(" 0/2 " in line for line in status.stdout.splitlines()), status.stdout  # the joined node's GPUs
        fraction = _ember("start", "--address", f"localhost:{port}", "--num-gpus", "1.5")
        assert fraction.returncode != 0 and "1.5" in fraction.stderr
        mine = [n for n in local_nodes.local_nodes() if n.gcs_address == f"127.0.0.1:{port}"]
        assert sorted(n.head for n in mine) == [False, True]
        bad = _ember("start", "--address", "127.0.0.1:1")
        assert bad.returncode != 0 and "Error" in bad.stderr
    finally:
        stopped = _ember("stop")
    assert stopped.returncode == 0 and stopped.stdout.count("stopped node") >= 2, stopped.stdout
    assert not [n for n in local_nodes.local_nodes() if n.gcs_address == f"127.0.0.1:{port}"]
