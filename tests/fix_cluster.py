"""Cluster fixtures: a real local cluster (real processes, real shared memory)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from contextlib import contextmanager

import psutil
import pytest

import ember


@pytest.fixture(scope="module")
def cluster() -> Iterator[None]:
    """A 4-CPU local cluster shared by one test module, stopped afterwards."""
    ember.init(num_cpus=4, num_gpus=2, resources={"accelerator": 1})
    try:
        yield
    finally:
        ember.shutdown()


@pytest.fixture(scope="module")
def fault_cluster() -> Iterator[object]:
    """A 2-CPU local cluster for one test module whose tests kill its processes; yields its session."""
    ember.init(num_cpus=2)
    try:
        yield ember._runtime._session
    finally:
        ember.shutdown()


@contextmanager
def driver_of(nodes: list[dict]) -> Iterator[object]:
    """A LocalCluster of ``nodes`` (ember.chaos) with this process connected to it as its driver; both end after."""
    from ember.chaos import LocalCluster

    with LocalCluster(nodes=nodes) as started:
        ember.init(address=started.address)
        try:
            yield started
        finally:
            ember.shutdown()


def descendants() -> set[int]:
    return {p.pid for p in psutil.Process(os.getpid()).children(recursive=True)}


def run_script(code: str, timeout_s: float = 120.0) -> subprocess.CompletedProcess:
    """Run a driver program in a fresh interpreter (for exit and signal tests)."""
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True, text=True, timeout=timeout_s,
    )


def poll_until(predicate, timeout_s: float, poll_s: float = 0.01):
    """Call ``predicate`` until it returns something truthy or ``timeout_s`` passes; its last value.

    A bounded wait: callers assert on the value (the state they waited for),
    never on how long it took.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(poll_s)


@pytest.fixture(scope="module")
def private_runtime_dir() -> Iterator[str]:
    """A runtime folder of the module's own for nodes it starts (so stopping "every node" there
    can never touch a node the tests did not start); its nodes are stopped afterwards."""
    from ember.scheduler import local_nodes

    old = os.environ.get("EMBER_RUNTIME_DIR")
    path = tempfile.mkdtemp(prefix="ember-rt-", dir="/tmp")  # short: socket paths have a length limit
    os.environ["EMBER_RUNTIME_DIR"] = path
    try:
        yield path
    finally:
        for node in local_nodes.local_nodes():  # only nodes of this module live here
            local_nodes.stop_node(node, 10.0)
        if old is None:
            del os.environ["EMBER_RUNTIME_DIR"]
        else:
            os.environ["EMBER_RUNTIME_DIR"] = old
        shutil.rmtree(path, ignore_errors=True)


@ember.remote
class Counter:
    """An actor with state to lose: tests check it comes back (restarts, replay, other nodes)."""

    def __init__(self) -> None:
        self.n = 0

    def add(self, k: int) -> int:
        self.n += k
        return self.n

    def node(self) -> str:
        return ember.get_runtime_context().get_node_id()
