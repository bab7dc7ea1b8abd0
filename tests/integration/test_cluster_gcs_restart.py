"""The GCS service of a multi-node cluster SIGKILLed and restarted: it still knows where actors run and their names.

Schedulers that did not place an actor find it through the GCS service
(``LocateActor``), and names are cluster-wide (``ClaimName``/``LookupName``).
A restarted service loads both back from PostgreSQL: the processes table
says where each live actor's process runs, and ``actor_names`` holds the
names. The test asks from a node that never saw the actor before the kill.
Nodes register again with the new service, so it learns again what the
table does not keep (where each store serves objects), and objects still
move between nodes.
"""

from __future__ import annotations

import os
import signal

import numpy as np
import pytest

import ember
import ember.chaos
from ember.chaos import LocalCluster
from ember.lineage._rpc import client_for
from tests.fix_cluster import Counter, poll_until

GET_TIMEOUT_S = 120.0

pytestmark = pytest.mark.usefixtures("private_runtime_dir")


@ember.remote
def add_by_name(name: str, k: int) -> tuple[int, str]:
    counter = ember.get_actor(name)
    return ember.get(counter.add.remote(k)), ember.get_runtime_context().get_node_id()


@ember.remote
def filled(n: int) -> np.ndarray:
    return np.ones(n, dtype=np.int64)


@ember.remote
def total(array: np.ndarray) -> tuple[int, str]:
    return int(array.sum()), ember.get_runtime_context().get_node_id()


def _gcs_nodes() -> list[dict]:
    session = ember._runtime.require_core().session
    return client_for(session.gcs_address, session.token()).call("Nodes")["nodes"]


def _gcs_pid() -> int | None:
    return next((p.pid for p in ember.chaos.processes() if p.kind == "gcs"), None)


def test_a_restarted_gcs_still_knows_where_actors_run_and_their_names() -> None:
    nodes = [{"num_cpus": 1}, {"num_cpus": 1, "resources": {"two": 1}}, {"num_cpus": 1, "resources": {"three": 1}}]
    with LocalCluster(nodes=nodes) as cluster:
        ember.init(address=cluster.address)
        try:
            counter = Counter.options(name="tally", resources={"two": 0.5}).remote()
            assert ember.get(counter.add.remote(1), timeout=GET_TIMEOUT_S) == 1
            old = _gcs_pid()
            assert old is not None
            os.kill(old, signal.SIGKILL)  # the head's supervisor starts another
            new = poll_until(lambda: (pid := _gcs_pid()) not in (None, old) and pid, 60.0)
            assert new, "the GCS service did not come back"
            # Node 3's scheduler neither placed the actor nor heard its name: it asks the new service.
            third = cluster.nodes[2].node_id
            assert ember.get(add_by_name.options(resources={"three": 0.5}).remote("tally", 10),
                             timeout=GET_TIMEOUT_S) == (11, third)
            # Every node registered again, with what the table does not keep: where its store
            # serves objects. An object made on node 2 now is read on node 3, whose store asks.
            assert poll_until(lambda: all(n["transfer"] for n in _gcs_nodes() if n["alive"]), 30.0)
            made = filled.options(resources={"two": 0.01}).remote(1_000_000)  # 8 MB: moves by transfer
            assert ember.get(total.options(resources={"three": 0.01}).remote(made), timeout=GET_TIMEOUT_S) == (
                1_000_000, third)
            # A new claim of the name is still refused, and the actor still answers to it here.
            with pytest.raises(ValueError, match="tally"):
                Counter.options(name="tally").remote()
            assert ember.get(ember.get_actor("tally").add.remote(100), timeout=GET_TIMEOUT_S) == 111
        finally:
            ember.shutdown()
