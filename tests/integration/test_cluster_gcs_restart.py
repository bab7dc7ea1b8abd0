"""The GCS service of a multi-node cluster SIGKILLed and restarted: it still knows where actors run and their names.

Schedulers that did not place an actor find it through the GCS service
(``LocateActor``), and names are cluster-wide (``ClaimName``/``LookupName``).
A restarted service loads both back from PostgreSQL: the processes table
says where each live actor's process runs, and ``actor_names`` holds the
names. The test asks from a node that never saw the actor before the kill.
"""

from __future__ import annotations

import os
import signal

import pytest

import ember
import ember.chaos
from ember.chaos import LocalCluster
from tests.fix_cluster import Counter, poll_until

GET_TIMEOUT_S = 120.0

pytestmark = pytest.mark.usefixtures("private_runtime_dir")


@ember.remote
def add_by_name(name: str, k: int) -> tuple[int, str]:
    counter = ember.get_actor(name)
    return ember.get(counter.add.remote(k)), ember.get_runtime_context().get_node_id()


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
            # A new claim of the name is still refused, and the actor still answers to it here.
            with pytest.raises(ValueError, match="tally"):
                Counter.options(name="tally").remote()
            assert ember.get(ember.get_actor("tally").add.remote(100), timeout=GET_TIMEOUT_S) == 111
        finally:
            ember.shutdown()
