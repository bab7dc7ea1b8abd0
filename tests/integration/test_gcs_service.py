"""The GCS service: a real gRPC process that owns node registration, heartbeats and process records.

Every kill here is by pid, of a process this module's cluster started.
"""

from __future__ import annotations

import os
import signal
import time

import psycopg
import pytest

import ember
from ember.chaos import processes
from ember.lineage._rpc import GcsClient
from tests.fix_cluster import run_script

BOUND_S = 30.0


@pytest.fixture(scope="module")
def gcs_cluster():
    ember.init(num_cpus=2)
    try:
        yield ember._runtime._session
    finally:
        ember.shutdown()


def _rows(session, sql, *params):
    with psycopg.connect(session.read_info()["gcs_conninfo"]) as conn:
        return conn.execute(sql, params).fetchall()


def _wait_for(predicate, what):
    deadline = time.monotonic() + BOUND_S
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"not within {BOUND_S}s: {what}")


def _gcs_pid():
    found = [p.pid for p in processes() if p.kind == "gcs"]
    return found[0] if found else None


def test_the_gcs_is_a_process_of_its_own_listed_by_chaos(gcs_cluster):
    pid = _wait_for(_gcs_pid, "the GCS service answers")
    kinds = {p.kind for p in processes()}
    assert {"gcs", "scheduler", "store", "worker"} <= kinds
    assert pid not in {p.pid for p in processes() if p.kind != "gcs"}
    (node,) = ember.nodes()
    assert node["Alive"] and node["NodeID"] == ember.get_runtime_context().get_node_id()


def test_calls_without_the_cluster_token_are_refused(gcs_cluster):
    stranger = GcsClient(gcs_cluster.gcs_address, os.urandom(32))
    try:
        with pytest.raises(PermissionError, match="token"):
            stranger.try_call("Nodes")
    finally:
        stranger.close()


def test_process_starts_and_deaths_are_recorded_with_the_cause(gcs_cluster):
    @ember.remote
    class Holder:
        def pid(self):
            return os.getpid()

    holder = Holder.remote()
    pid = ember.get(holder.pid.remote(), timeout=BOUND_S)
    sql = "SELECT kind, death_cause FROM workers WHERE cluster_id = %s AND pid = %s AND actor_id IS NOT NULL"
    _wait_for(lambda: _rows(gcs_cluster, sql, gcs_cluster.name, pid), "the actor's worker is recorded")
    os.kill(pid, signal.SIGKILL)
    rows = _wait_for(
        lambda: [r for r in _rows(gcs_cluster, sql, gcs_cluster.name, pid) if r[1]], "the worker's death is recorded"
    )
    assert rows == [("worker", f"pid {pid} killed by SIGKILL")]


def test_a_killed_gcs_is_restarted_and_the_workload_completes(gcs_cluster):
    @ember.remote
    def step(x):
        time.sleep(0.005)
        return x + 1

    @ember.remote
    class Counter:
        def __init__(self):
            self.n = 0

        def add(self, k):
            self.n += k
            return self.n

    counter = Counter.remote()
    old = _wait_for(_gcs_pid, "the GCS service answers")
    refs = [step.remote(i) for i in range(300)]
    calls = [counter.add.remote(1) for _ in range(100)]
    os.kill(old, signal.SIGKILL)
    refs += [step.remote(i) for i in range(300, 400)]
    calls += [counter.add.remote(1) for _ in range(100)]

    assert ember.get(refs, timeout=BOUND_S) == [i + 1 for i in range(400)]
    assert ember.get(calls, timeout=BOUND_S) == list(range(1, 201))
    new = _wait_for(lambda: (p := _gcs_pid()) != old and p, "a new GCS service answers")
    assert new != old
    (node,) = ember.nodes()
    assert node["Alive"]

    # The old instance's death and the new one's start are in the log, and the
    # records committed before the kill are all still there.
    gcs_rows = _wait_for(lambda: set(_rows(
        gcs_cluster, "SELECT pid, death_cause FROM workers WHERE cluster_id = %s AND kind = 'gcs'",
        gcs_cluster.name)) >= {(old, f"pid {old} killed by SIGKILL"), (new, None)}, "both GCS instances are recorded")
    assert gcs_rows
    live_workers = {p.pid for p in processes() if p.kind == "worker"}
    recorded = _wait_for(lambda: {r[0] for r in _rows(
        gcs_cluster, "SELECT pid FROM workers WHERE cluster_id = %s AND kind = 'worker' AND ended_at IS NULL",
        gcs_cluster.name)} >= live_workers and live_workers, "every live worker is recorded")
    assert recorded


def test_a_restarted_scheduler_registering_with_a_restarted_gcs_keeps_its_workers_open(gcs_cluster):
    @ember.remote
    def one():
        return 1

    old_scheduler = next(p.pid for p in processes() if p.kind == "scheduler")
    os.kill(old_scheduler, signal.SIGKILL)  # the new scheduler registers as a restarted one: its workers died
    _wait_for(lambda: ember.get(one.remote(), timeout=BOUND_S) == 1, "the restarted scheduler runs tasks")
    old_gcs = _wait_for(_gcs_pid, "the GCS service answers")
    os.kill(old_gcs, signal.SIGKILL)  # the scheduler registers again, with the new service
    _wait_for(lambda: (p := _gcs_pid()) != old_gcs and p, "a new GCS service answers")
    assert ember.get(one.remote(), timeout=BOUND_S) == 1
    # The new service has the node's registration: whatever it records for it has been written.
    gcs = GcsClient(gcs_cluster.gcs_address, gcs_cluster.token())
    _wait_for(lambda: all(n["registered"] for n in gcs.call("Nodes")["nodes"]), "the node registers again")
    live = {p.pid for p in processes() if p.kind in ("worker", "scheduler")}
    open_pids = {r[0] for r in _rows(gcs_cluster, "SELECT pid FROM workers WHERE cluster_id = %s "
                                                  "AND ended_at IS NULL", gcs_cluster.name)}
    # Registering again is not a second scheduler death: the live processes stay open in the log.
    assert live <= open_pids


def test_a_silent_node_is_declared_dead_with_the_cause_and_comes_back(gcs_cluster):
    (scheduler,) = [p.pid for p in processes() if p.kind == "scheduler"]
    node_id = ember.get_runtime_context().get_node_id()
    os.kill(scheduler, signal.SIGSTOP)
    try:
        dead = _wait_for(lambda: [n for n in ember.nodes() if not n["Alive"]], "the node is declared dead")
        assert "missed heartbeats" in dead[0]["DeathCause"]
        cause = _wait_for(lambda: _rows(gcs_cluster, "SELECT death_cause FROM nodes WHERE node_id = %s "
                                        "AND ended_at IS NOT NULL", node_id), "the death is in the log")
        assert "missed heartbeats" in cause[0][0]
    finally:
        os.kill(scheduler, signal.SIGCONT)
    _wait_for(lambda: all(n["Alive"] for n in ember.nodes()), "the node is alive again")
    (row,) = _rows(gcs_cluster, "SELECT ended_at, death_cause FROM nodes WHERE node_id = %s", node_id)
    assert row[0] is None and "then it came back" in row[1]
    # Its processes, ended with it in the log, are open again: they lived all along.
    live = {p.pid for p in processes() if p.kind == "worker"}
    open_pids = {r[0] for r in _rows(gcs_cluster, "SELECT pid FROM workers WHERE node_id = %s AND ended_at IS NULL",
                                     node_id)}
    assert live <= open_pids

    @ember.remote
    def ping():
        return "pong"

    assert ember.get(ping.remote(), timeout=BOUND_S) == "pong"


def test_shutdown_records_the_end_of_the_node_and_its_processes(gcs_cluster):
    # Another driver on the machine, while this module's cluster keeps the log's server up.
    out = run_script("""
        import ember
        ember.init(num_cpus=1)
        assert ember.nodes()
        context = ember.get_runtime_context()
        print(context.get_node_id(), context.get_job_id())
        ember.shutdown()
    """)
    assert out.returncode == 0, out.stderr
    node_id, job_id = out.stdout.split()[-2:]
    assert _rows(gcs_cluster, "SELECT state, ended_at IS NOT NULL FROM jobs WHERE job_id = %s",
                 bytes.fromhex(job_id)) == [("FINISHED", True)]
    assert _rows(gcs_cluster, "SELECT death_cause FROM nodes WHERE node_id = %s AND ended_at IS NOT NULL",
                 node_id) == [("shut down",)]
    assert _rows(gcs_cluster, "SELECT kind, pid FROM workers WHERE node_id = %s AND ended_at IS NULL",
                 node_id) == []


def test_an_event_the_gcs_refuses_is_dropped_and_its_node_stays_known(gcs_cluster):
    from ember.scheduler._gcs_link import GcsLink

    # A node whose queue holds an event the service refuses (its bug, or junk):
    # retrying it would be refused forever, and the node never be known.
    node_id = os.urandom(16).hex()
    link = GcsLink(str(gcs_cluster.gcs_address), gcs_cluster.token(), node_id, "test-node", {"CPU": 1.0})
    link._push({"type": "started", "process_id": "not hex", "kind": "worker", "pid": 1})
    link.started(os.urandom(16), "worker", 4242)
    link.start()
    try:
        client = GcsClient(str(gcs_cluster.gcs_address), gcs_cluster.token())
        _wait_for(lambda: any(n["node_id"] == node_id and n["alive"] for n in client.call("Nodes")["nodes"]),
                  "the node is registered despite the refused event")
        _wait_for(lambda: not link._pending(), "the node's events are all answered")
    finally:
        link.stop("test over")


def test_a_restarted_registration_sent_again_spares_the_new_schedulers_processes(gcs_cluster):
    # Its first answer lost (a slow service under load), a restarted scheduler registers again: the
    # workers it started meanwhile must stay open in the log (CI once saw a live worker closed).
    client = GcsClient(str(gcs_cluster.gcs_address), gcs_cluster.token())
    node_id, old, new = os.urandom(16).hex(), os.urandom(16), os.urandom(16)
    started = [{"type": "started", "process_id": p.hex(), "kind": "worker", "pid": pid, "actor_id": None}
               for p, pid in ((old, 4001), (new, 4002))]
    base = {"node_id": node_id, "address": "test-node", "resources": {"CPU": 1.0}}
    client.call("Register", {**base, "events": started[:1]})  # the scheduler that dies, and its worker
    try:
        for _ in range(2):  # the restarted one's registration, and the same again
            client.call("Register", {**base, "events": started[1:], "restarted": True, "own": [new.hex()]})
        open_ids = {r[0] for r in _rows(gcs_cluster, "SELECT worker_id FROM workers WHERE node_id = %s "
                                                     "AND ended_at IS NULL", node_id)}
        assert open_ids == {new}
    finally:
        client.call("Unregister", {"node_id": node_id, "cause": "test over"})
