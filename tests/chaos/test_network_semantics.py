"""What ember does when the network splits (docs/fault-tolerance.md, "Network faults"), on real namespaces.

- A node cut from the GCS (and the drivers beside it) past the failure
  detector's limit is declared dead; tasks run on the other node, its actor
  restarts there with its state; when the cut heals, the node is back in
  service and the actor's old instance on it is fenced (killed): one live
  instance, never two, and the old one's end says why in the log.
- A node cut from PostgreSQL: what its processes must make durable waits,
  bounded, and then fails with LineageLogUnavailableError; nothing committed
  is lost, and once healed the node's writes go through at once.

Every wait is bounded; every process and namespace is the cluster's own.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest

import ember
from ember.chaos import LocalCluster, processes
from ember.chaos._cluster import _is_zombie
from ember.chaos import NetFault
from ember.scheduler._procutil import process_start_ticks

BOUND_S = 60.0
COMMIT_WAIT_S = 3  # the log's commit bound for the PostgreSQL test's cluster (EMBER_LOG_COMMIT_WAIT_S)


def _wait_for(check: Callable[[], Any], what: str, timeout_s: float = BOUND_S) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.1)
    raise AssertionError(f"not within {timeout_s:g}s: {what}")


@ember.remote(max_restarts=2, max_task_retries=-1)
class Counter:
    def __init__(self) -> None:
        self.n = 0

    def inc(self) -> tuple[int, str, int]:
        self.n += 1
        return self.n, ember.util.get_node_ip_address(), os.getpid()


@ember.remote(max_retries=3)
def square(x: int) -> tuple[int, str]:
    return x * x, ember.util.get_node_ip_address()


def _node_alive(node_id: str) -> dict | None:
    return next((n for n in ember.nodes() if n["NodeID"] == node_id and n["Alive"]), None)


def _node_dead(node_id: str) -> dict | None:
    return next((n for n in ember.nodes() if n["NodeID"] == node_id and not n["Alive"]), None)


def test_a_node_cut_from_the_gcs_is_declared_dead_rebuilt_elsewhere_and_fenced_when_it_heals() -> None:
    slots = [{"num_cpus": 2, "resources": {"slot": 1}}, {"num_cpus": 2, "resources": {"slot": 1}}]
    with LocalCluster(nodes=slots, network=True) as cluster:
        ember.init(address=cluster.address)
        try:
            actor = Counter.options(resources={"slot": 1}).remote()
            n, address, old_pid = ember.get(actor.inc.remote(), timeout=BOUND_S)
            assert n == 1
            victim = next(node for node in cluster.nodes if cluster.node_address(node) == address)
            survivor = next(node for node in cluster.nodes if node is not victim)
            cut = cluster.net_fault(NetFault.partition("gcs", 30.0), victim)
            try:
                dead = _wait_for(lambda: _node_dead(victim.node_id), "the cut node is declared dead")
                assert "missed heartbeats" in dead["DeathCause"]
                # Work goes on on the other node: tasks, and the actor, restarted there with its state.
                values = ember.get([square.remote(i) for i in range(8)], timeout=BOUND_S)
                assert [v for v, _ in values] == [i * i for i in range(8)]
                assert {a for _, a in values} == {cluster.node_address(survivor)}
                n, address, new_pid = ember.get(actor.inc.remote(), timeout=BOUND_S)
                assert (n, address) == (2, cluster.node_address(survivor))
                # The old instance still runs on the cut node: nothing has told it yet.
                assert process_start_ticks(old_pid) is not None
            finally:
                cluster.heal(cut)
            # Healed: the node is back in service, and its superseded instance is fenced.
            _wait_for(lambda: _node_alive(victim.node_id), "the healed node is alive again")
            _wait_for(lambda: process_start_ticks(old_pid) is None or _is_zombie(old_pid), "the old instance is gone")
            instances = [p for p in processes() if p.actor_id == actor._actor_id.hex()]
            assert [p.pid for p in instances] == [new_pid]  # one live instance: no split brain
            assert ember.get(actor.inc.remote(), timeout=BOUND_S)[0] == 3
            pinned = square.options(resources={f"node:{cluster.node_address(victim)}": 0.01})
            assert ember.get(pinned.remote(9), timeout=BOUND_S) == (81, cluster.node_address(victim))
            with psycopg.connect(cluster.postgres.tcp_url) as conn:
                (cause,) = conn.execute("SELECT death_cause FROM workers WHERE pid = %s AND node_id = %s",
                                        (old_pid, victim.node_id)).fetchone()
            assert "fenced" in cause
        finally:
            ember.shutdown()


@ember.remote
def inner(x: int) -> int:
    return x + 1


@ember.remote(max_retries=0)
def outer(x: int) -> tuple[str, Any]:
    """A task that owns a task of its own: its lineage is written from its node."""
    try:
        return "value", ember.get(inner.remote(x), timeout=BOUND_S)
    except ember.exceptions.LineageLogUnavailableError as exc:
        return "held back", str(exc)


@pytest.fixture
def short_commit_wait() -> Iterator[None]:
    variable = "EMBER_LOG_COMMIT_WAIT_S"
    before = os.environ.get(variable)
    os.environ[variable] = str(COMMIT_WAIT_S)  # the nodes started from here inherit it
    try:
        yield
    finally:
        if before is None:
            del os.environ[variable]
        else:
            os.environ[variable] = before


def test_a_node_cut_from_postgres_waits_bounded_fails_typed_and_loses_nothing(short_commit_wait: None) -> None:
    with LocalCluster(nodes=[{"num_cpus": 2}, {"num_cpus": 2}], network=True) as cluster:
        ember.init(address=cluster.address)
        try:
            victim = cluster.nodes[0]
            pinned = outer.options(resources={f"node:{cluster.node_address(victim)}": 0.01})
            assert ember.get(pinned.remote(1), timeout=BOUND_S) == ("value", 2)
            with psycopg.connect(cluster.postgres.tcp_url) as conn:
                (tasks_before,) = conn.execute("SELECT count(*) FROM tasks").fetchone()
            cut = cluster.net_fault(NetFault.partition("postgres", 30.0), victim)
            try:
                # The task's own result is held back at its node: the caller gets the typed error, in time.
                with pytest.raises(ember.exceptions.LineageLogUnavailableError,
                                   match=f"did not commit within {COMMIT_WAIT_S}s.*Nothing committed is lost"):
                    ember.get(pinned.remote(5), timeout=BOUND_S)
                # The other node, not cut, works on.
                other = outer.options(resources={f"node:{cluster.node_address(cluster.nodes[1])}": 0.01})
                assert ember.get(other.remote(7), timeout=BOUND_S) == ("value", 8)
            finally:
                cluster.heal(cut)
            assert ember.get(pinned.remote(10), timeout=BOUND_S) == ("value", 11)
            with psycopg.connect(cluster.postgres.tcp_url) as conn:
                (tasks_after,) = conn.execute("SELECT count(*) FROM tasks").fetchone()
            assert tasks_after >= tasks_before + 3  # what was committed stayed; the held-back rows came in
        finally:
            ember.shutdown()
