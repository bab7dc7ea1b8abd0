"""A ported Ray program's first contact (issue 19), on clusters of ``ember start`` nodes, which can grow.

A first use of the API joins the cluster ``EMBER_ADDRESS`` names; every
node carries ``node:<the address it serves on>``; a task no live node can
run waits for one to join, as in Ray, and its owner is warned. Each node is a
real node daemon (``LocalCluster``) in a runtime folder private to this
module; the nodes a test adds are stopped by the test.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator

import pytest

import ember
from ember import exceptions as ex
from ember.chaos import LocalCluster
from tests.fix_cluster import driver_of, poll_until

pytestmark = pytest.mark.usefixtures("private_runtime_dir")

GET_TIMEOUT_S = 120.0
WARNING_TIMEOUT_S = 30.0
SCRIPT_TIMEOUT_S = 120.0
WAITS_S = 2.0  # how long a test lets an unschedulable task wait before it changes the cluster


@pytest.fixture(scope="module")
def one_node() -> Iterator[LocalCluster]:
    """A one-CPU head on 127.0.0.1; this driver is connected to it."""
    with driver_of([{"num_cpus": 1}]) as cluster:
        yield cluster


@ember.remote
def node_id() -> str:
    return ember.get_runtime_context().get_node_id()


def test_the_first_use_of_the_api_joins_the_cluster_ember_address_names(one_node: LocalCluster) -> None:
    code = textwrap.dedent("""
        import ember
        print(ember.get(ember.put(1)), ember.get_runtime_context().get_node_id())
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=SCRIPT_TIMEOUT_S,
                            env=dict(os.environ, EMBER_ADDRESS=one_node.address))
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["1", one_node.nodes[0].node_id]
    said = [line for line in result.stderr.splitlines() if line.startswith("ember:")]
    assert len(said) == 1 and f"connected to the cluster at {one_node.address}" in said[0], said
    assert one_node.nodes[0].alive()  # a joined cluster outlives the program


def test_a_task_no_node_can_run_waits_with_a_warning_until_a_node_that_can_joins(
        one_node: LocalCluster, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="ember.core")
    ref = node_id.options(num_cpus=2).remote()  # never raises because of resources
    ready, _ = ember.wait([ref], timeout=WAITS_S)
    assert ready == []  # it waits, as in Ray
    assert poll_until(lambda: _warnings(caplog), WARNING_TIMEOUT_S), "the owner was never told why it waits"
    (warning,) = _warnings(caplog)  # once, not once per retry
    assert "asks for {'CPU': 2.0}" in warning and "the cluster has {'CPU': 1.0" in warning
    assert "'node:127.0.0.1': 1.0" in warning and "ember start --address" in warning
    bigger = one_node.add_node(bind="127.0.0.2", num_cpus=2)
    try:
        assert ember.get(ref, timeout=GET_TIMEOUT_S) == bigger.node_id
        assert len(_warnings(caplog)) == 1
        # The new node's own resource, as in Ray: a fraction of it pins a task there.
        assert ember.cluster_resources()["node:127.0.0.2"] == 1.0
        pinned = node_id.options(resources={"node:127.0.0.2": 0.01}).remote()
        assert ember.get(pinned, timeout=GET_TIMEOUT_S) == bigger.node_id
        # The log says where each attempt ran: the worker's node, not the driver's.
        with ember.lineage.open_log() as log:
            assert log.task(pinned.task_id().hex()).attempts[-1]["node_id"] == bigger.node_id
        addresses = {n["NodeID"]: n["NodeManagerAddress"] for n in ember.nodes() if n["Alive"]}
        assert addresses == {one_node.nodes[0].node_id: "127.0.0.1", bigger.node_id: "127.0.0.2"}
    finally:
        one_node.stop_node(bigger)


def test_a_waiting_task_can_be_cancelled(one_node: LocalCluster) -> None:
    ref = node_id.options(resources={"nowhere": 1}).remote()
    ready, _ = ember.wait([ref], timeout=WAITS_S)
    assert ready == []
    ember.cancel(ref)
    with pytest.raises(ex.TaskCancelledError):
        ember.get(ref, timeout=GET_TIMEOUT_S)


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "cannot be scheduled right now" in r.getMessage()]
