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
import signal
import time
from collections.abc import Callable
from typing import Any

import psycopg
import pytest

import ember
from ember.chaos import processes
from ember.chaos._cluster import _is_zombie
from ember.chaos import NetFault
from ember.scheduler._actor_lease import HOLD_AFTER_S
from ember.scheduler._procutil import process_start_ticks
from tests.chaos.network_soak import connected

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


def _unless_refused(call: Callable[[], Any]) -> Any:
    """``call()``'s value, or None if the actor's node refused it (ActorUnavailableError: it did not run)."""
    try:
        return ember.get(call(), timeout=BOUND_S)
    except ember.exceptions.ActorUnavailableError:
        return None


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
    with connected(slots) as cluster:
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


def test_a_gcs_restarted_during_a_cut_fences_the_old_instance_from_the_generations_in_the_log() -> None:
    # Issue 27, point 3: the GCS that declared the node dead is gone when the node comes back; the new one
    # never suspected the node, and knows the actor's instances only from the log. Before generations it
    # let the old instance live beside the owner's restart.
    sizes = [{"num_cpus": 1, "resources": {"counted": 1}}, {"num_cpus": 1, "resources": {"counted": 1}}]
    with connected(sizes) as cluster:
        actor = Counter.options(resources={"counted": 1}).remote()
        n, address, old_pid = ember.get(actor.inc.remote(), timeout=BOUND_S)
        victim = next(node for node in cluster.nodes if cluster.node_address(node) == address)
        survivor = next(node for node in cluster.nodes if node is not victim)
        marker = cluster.head.session.sockets / "gcs.ready"
        cut = cluster.net_fault(NetFault.partition("gcs", 60.0), victim)
        try:
            _wait_for(lambda: _node_dead(victim.node_id), "the cut node is declared dead")
            n, address, new_pid = ember.get(actor.inc.remote(), timeout=BOUND_S)  # the owner's restart
            assert (n, address) == (2, cluster.node_address(survivor))
            gcs_pid = int(marker.read_text())
            os.kill(gcs_pid, signal.SIGKILL)  # the cluster's own GCS service, by the pid it wrote
            _wait_for(lambda: marker.exists() and marker.read_text().strip() not in ("", str(gcs_pid)),
                      "the head started a new GCS service")
            _wait_for(lambda: _node_alive(survivor.node_id), "the new GCS service answers")
        finally:
            cluster.heal(cut)
        _wait_for(lambda: _node_alive(victim.node_id), "the healed node registers with the new GCS service")
        _wait_for(lambda: process_start_ticks(old_pid) is None or _is_zombie(old_pid), "the old instance is gone")
        instances = [p for p in processes() if p.actor_id == actor._actor_id.hex()]
        assert [p.pid for p in instances] == [new_pid]
        assert ember.get(actor.inc.remote(), timeout=BOUND_S)[0] == 3


@ember.remote(resources={"caller": 1})
class Caller:
    """A caller of an actor, on a node apart from the actor's owner (the driver, beside the GCS)."""

    def __init__(self, actor: Any) -> None:
        self.actor = actor

    def inc(self) -> tuple[int, str, int]:
        return ember.get(self.actor.inc.remote(), timeout=BOUND_S)


def test_a_node_cut_from_the_gcs_holds_its_actors_calls_so_an_old_instance_never_runs_one() -> None:
    # Issue 27, point 3: a caller on the cut node's side of a cut from the GCS (and the owner beside it)
    # still reaches the actor's old instance there. Once the node has not heard from the GCS for
    # HOLD_AFTER_S, its actors hold their calls; the owner restarts the actor elsewhere; on the heal the
    # old instance is fenced first, and the held call runs on the new one. Before the hold, the old instance
    # ran it on its old state (and again after the heal, until the node's first heartbeat).
    sizes = [{"num_cpus": 1, "resources": {"counted": 1}}, {"num_cpus": 1, "resources": {"caller": 1}},
             {"num_cpus": 1, "resources": {"counted": 1}}]
    with connected(sizes) as cluster:
        actor = Counter.options(resources={"counted": 1}).remote()
        n, address, old_pid = ember.get(actor.inc.remote(), timeout=BOUND_S)
        assert n == 1
        caller = Caller.remote(actor)
        assert ember.get(caller.inc.remote(), timeout=BOUND_S)[:3:2] == (2, old_pid)
        victim = next(node for node in cluster.nodes if cluster.node_address(node) == address)
        cut = cluster.net_fault(NetFault.partition("gcs", 60.0), victim)
        try:
            _wait_for(lambda: _node_dead(victim.node_id), "the cut node is declared dead")
            time.sleep(HOLD_AFTER_S + 2.0)  # the node's own clock: it holds calls from HOLD_AFTER_S on
            held = caller.inc.remote()  # reaches the old instance: the caller's node is not cut from it
            n, address, new_pid = ember.get(actor.inc.remote(), timeout=BOUND_S)  # the owner's restart
            assert address != cluster.node_address(victim) and new_pid != old_pid
            assert n == 3  # the held call never ran on the old instance (nor was logged there)
            ready, _ = ember.wait([held], timeout=0)
            assert not ready
        finally:
            cluster.heal(cut)
        _wait_for(lambda: process_start_ticks(old_pid) is None or _is_zombie(old_pid), "the old instance is gone")
        assert ember.get(held, timeout=BOUND_S) == (4, address, new_pid)  # it ran on the new instance
        assert ember.get(actor.inc.remote(), timeout=BOUND_S)[0] == 5


def test_calls_held_past_the_bound_are_refused_with_actor_unavailable_error_not_left_waiting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EMBER_ACTOR_HOLD_MAX_S", "1")  # the nodes started from here inherit it
    sizes = [{"num_cpus": 1, "resources": {"counted": 1}}, {"num_cpus": 1, "resources": {"caller": 1}}]
    with connected(sizes) as cluster:
        actor = Counter.options(resources={"counted": 1}).remote()
        address = ember.get(actor.inc.remote(), timeout=BOUND_S)[1]
        caller = Caller.remote(actor)
        assert ember.get(caller.inc.remote(), timeout=BOUND_S)[0] == 2
        victim = next(node for node in cluster.nodes if cluster.node_address(node) == address)
        cut = cluster.net_fault(NetFault.partition("gcs", 60.0), victim)
        try:
            _wait_for(lambda: _node_dead(victim.node_id), "the cut node is declared dead")
            time.sleep(HOLD_AFTER_S + 0.5)  # the node's own clock: it holds calls from HOLD_AFTER_S on
            with pytest.raises(ember.exceptions.ActorUnavailableError, match="did not run, and may be sent again"):
                ember.get(caller.inc.remote(), timeout=BOUND_S)
        finally:
            cluster.heal(cut)
        # Healed: calls run again (on this instance, or on the owner's restart elsewhere if its keepalive
        # gave the node up meanwhile), and the refused call never ran. The GCS counts the node alive as it
        # takes its registration, a moment before the node's scheduler has its answer and tells the actor
        # to run calls again: a call in that moment is still refused, unrun, and is sent again, as the
        # error says a caller may.
        _wait_for(lambda: _node_alive(victim.node_id), "the healed node is alive again")
        assert _wait_for(lambda: _unless_refused(caller.inc.remote), "a call runs after the heal")[0] == 3


@ember.remote(resources={"keeper": 1})
class Keeper:
    """An actor's owner on a node of its own: a cut between its node and the actor's is a node-node cut."""

    def __init__(self) -> None:
        self.counter = Counter.options(resources={"counted": 1}).remote()

    def inc(self) -> tuple[int, str, int]:
        return ember.get(self.counter.inc.remote(), timeout=BOUND_S)

    def counter_id(self) -> str:
        return self.counter._actor_id.hex()


def test_a_node_node_cut_fences_the_old_instance_by_its_generation_though_no_node_was_declared_dead() -> None:
    # Issue 27, point 3: the owner's node loses the actor's node over a cut between the two, and places the
    # actor again one generation up; the GCS hears all three nodes all along, so nobody is declared dead.
    # Before generations, the old instance lived on beside the new one until its node ended.
    sizes = [{"num_cpus": 1, "resources": {"keeper": 1}}, {"num_cpus": 1, "resources": {"counted": 1}},
             {"num_cpus": 1, "resources": {"counted": 1}}]
    with connected(sizes) as cluster:
        keeper = Keeper.remote()
        n, address, old_pid = ember.get(keeper.inc.remote(), timeout=BOUND_S)
        assert n == 1
        counter_id = ember.get(keeper.counter_id.remote(), timeout=BOUND_S)
        owner_node = cluster.nodes[0]
        victim = next(node for node in cluster.nodes if cluster.node_address(node) == address)
        others = [cluster.node_address(node) for node in cluster.nodes if node is not victim]
        cut = cluster.net_fault(NetFault.partition("node", 30.0, peer_pick=others.index(
            cluster.node_address(owner_node))), victim)
        try:
            # The owner's node gives up on the victim (its relay keepalive, 15 s), and the actor comes
            # back on the third node with its state; the victim's old instance is fenced meanwhile.
            n, address, new_pid = ember.get(keeper.inc.remote(), timeout=BOUND_S)
            assert n == 2 and address not in (cluster.node_address(victim), cluster.node_address(owner_node))
            _wait_for(lambda: process_start_ticks(old_pid) is None or _is_zombie(old_pid),
                      "the old instance is fenced while the cut lasts")
            assert all(n["Alive"] for n in ember.nodes() if n["NodeID"] != cluster.head.node_id)
        finally:
            cluster.heal(cut)
        instances = [p for p in processes() if p.actor_id == counter_id]
        assert [p.pid for p in instances] == [new_pid]  # one live instance: no split brain
        assert ember.get(keeper.inc.remote(), timeout=BOUND_S)[0] == 3
        with psycopg.connect(cluster.postgres.tcp_url) as conn:
            rows = conn.execute("SELECT pid, generation, death_cause FROM workers WHERE actor_id = %s "
                                "ORDER BY started_at", (bytes.fromhex(counter_id),)).fetchall()
        assert [(pid, generation) for pid, generation, _ in rows] == [(old_pid, 0), (new_pid, 1)]
        assert "fenced" in rows[0][2]


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


def test_a_node_cut_from_postgres_waits_bounded_fails_typed_and_loses_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EMBER_LOG_COMMIT_WAIT_S", str(COMMIT_WAIT_S))  # the nodes started from here inherit it
    with connected([{"num_cpus": 2}, {"num_cpus": 2}]) as cluster:
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
