"""Regression tests for the gets that hung under network faults (issue 27), on real namespaces.

Each test builds, on purpose and in a fixed order, the situation a soak or
the recovery benchmark stumbled into, and checks that the ``get`` returns
the right value within its bound (a ``GetTimeoutError`` is the old hang).

Every wait is bounded; every process and namespace is the cluster's own.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import ember
from ember._runtime import core
from ember.chaos import LocalCluster
from ember.chaos import NetFault
from tests.chaos.network_soak import Counter_
from tests.waits import wait_for

BOUND_S = 60.0


@ember.remote(max_retries=0)
def pid_here() -> int:
    return os.getpid()


@ember.remote(max_retries=0)
def after_gate(folder: str) -> int:
    """Say it runs, wait (bounded) for the gate, then return this worker's pid."""
    Path(folder, "running").touch()
    deadline = time.monotonic() + 2 * BOUND_S
    while not Path(folder, "gate").exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    Path(folder, "leaving").touch()
    return os.getpid()


@ember.remote(max_retries=0)
def read_after_gate(folder: str, boxed: list) -> Any:
    """Say it runs, wait (bounded) for the gate, then read the object in ``boxed`` (a ref passed as a ref)."""
    Path(folder, "running").touch()
    deadline = time.monotonic() + 2 * BOUND_S
    while not Path(folder, "gate").exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    Path(folder, "asking").touch()
    return ember.get(boxed[0], timeout=BOUND_S)


def _cut_and_close_the_workers_connection(cluster: LocalCluster, node: Any, worker_pid: int, folder: Path,
                                          marker: str) -> None:
    """Cut ``node`` from the GCS and the drivers; meanwhile close this driver's end of the worker's connection
    to it (as this end's relay does when its keepalive gives up first: the worker cannot hear it yet), open
    the gate, and wait for the worker to write ``marker`` before it sends into the cut; then heal."""
    owner = core()
    from_worker = wait_for(lambda: [c for c in list(owner.links.peers.values())
                                    if c.peer.get("pid") == worker_pid and not c.closed],
                           "the worker's connection to this driver", BOUND_S)
    cut = cluster.net_fault(NetFault.partition("gcs", 3.0), node)  # the drivers are beside the GCS
    try:
        for conn in from_worker:
            conn.close()
        (folder / "gate").touch()
        wait_for(lambda: (folder / marker).exists(), f"the gated task's {marker!r}", BOUND_S)
    finally:
        cluster.heal(cut)


@pytest.fixture
def one_node() -> Iterator[tuple[LocalCluster, Any, dict[str, Any], int]]:
    """A cluster of one node in a namespace of its own (besides the GCS's), this process its driver, and the
    node's one task worker connected to it (it ran a task for it): (cluster, node, options pinning a task
    there, the worker's pid)."""
    with LocalCluster(nodes=[{"num_cpus": 1}], network=True) as cluster:
        ember.init(address=cluster.address)
        try:
            node = cluster.nodes[0]
            pinned = {"resources": {f"node:{cluster.node_address(node)}": 0.01}}
            yield cluster, node, pinned, ember.get(pid_here.options(**pinned).remote(), timeout=BOUND_S)
        finally:
            ember.shutdown()


def test_a_result_sent_on_a_connection_its_owner_closed_during_a_cut_comes_back(
        one_node: tuple[LocalCluster, Any, dict[str, Any], int], tmp_path: Path) -> None:
    """A worker's connection to its owner, closed at the owner's end while the network was cut (as the
    owner's relay does when its keepalive gives up first), still looks open at the worker's end: the
    result it sends there is written into a stream nobody reads, and was lost for good (the bench's
    hang: a task on a just-healed node never came back). It must be sent again on a new connection."""
    cluster, node, pinned, worker_pid = one_node
    ref = after_gate.options(**pinned).remote(str(tmp_path))
    wait_for(lambda: (tmp_path / "running").exists(), "the gated task runs", BOUND_S)
    _cut_and_close_the_workers_connection(cluster, node, worker_pid, tmp_path, "leaving")
    assert ember.get(ref, timeout=BOUND_S) == worker_pid


def test_a_borrower_whose_question_to_the_owner_was_lost_asks_again(
        one_node: tuple[LocalCluster, Any, dict[str, Any], int], tmp_path: Path) -> None:
    """A worker asks an object's owner where the object is once (``LOCATE``); asked on a connection the
    owner's end had closed during a cut, the question was lost, and the worker waited for an answer
    forever (the soak's hang after a short one-way cut from the GCS: its periodic ask only checked for a
    lost copy, and the owner, holding the object, had nothing to do). It must ask again."""
    cluster, node, pinned, worker_pid = one_node
    value = ember.put("owned by the driver")
    ref = read_after_gate.options(**pinned).remote(str(tmp_path), [value])
    wait_for(lambda: (tmp_path / "running").exists(), "the gated task runs", BOUND_S)
    _cut_and_close_the_workers_connection(cluster, node, worker_pid, tmp_path, "asking")
    assert ember.get(ref, timeout=BOUND_S) == "owned by the driver"


def test_a_call_in_flight_on_an_actor_connection_that_broke_runs_once_and_comes_back(
        one_node: tuple[LocalCluster, Any, dict[str, Any], int]) -> None:
    """A call in flight on the driver's connection to a live actor, when that connection broke (here its
    end closed during a cut, as its relay does when its keepalive gives up first): the call reaches the
    actor after the heal and runs, but its result comes back on a stream that is gone. The driver
    reconnected to the actor and sent only its queued calls, so the get waited forever (the soak's hang
    on an actor call, and the next calls' values came out short of it). It must be sent again, and the
    actor must answer it with the outcome it had, not run it twice."""
    cluster, node, pinned, _ = one_node
    actor = Counter_.options(**pinned).remote()
    assert ember.get(actor.add.remote(1), timeout=BOUND_S) == 1
    state = core()._actors[actor._actor_id]
    cut = cluster.net_fault(NetFault.partition("gcs", 3.0), node)  # the drivers are beside the GCS
    try:
        ref = actor.add.remote(1)
        wait_for(lambda: state.inflight and state.conn is not None, "the call is sent", BOUND_S)
        state.conn.flush()
        state.conn.close()
    finally:
        cluster.heal(cut)
    assert ember.get(ref, timeout=BOUND_S) == 2
    assert ember.get(actor.add.remote(1), timeout=BOUND_S) == 3  # it ran once
