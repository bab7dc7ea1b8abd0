"""Network faults on a real network cluster: packets really dropped, one way or both, and healed.

Datagrams are sent between the namespaces of a ``LocalCluster(network=True)``
by processes started inside them, and counted where they arrive: a partition
drops all of them the way it cuts and none the other way, a loss about its
share, and a heal restores them. A delay is ``tc netem``: where the kernel
has it the round trip grows by the delay, where it does not the fault is
refused with a typed error naming the missing module (this test says which
of the two it checked). ``chaos run`` with network faults, on a program
that starts its own network cluster: every fault hits a node, heals after
its duration, and the timeline has both ends; the program's values are right.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ember.chaos import LocalCluster, NetworkCommandError
from ember.chaos import NetFault, NetFaultUnavailableError
from ember.chaos._netfaults import require_netem

BOUND_S = 60.0
PORT = 9977
SENT = 400
REPO = Path(__file__).resolve().parents[2]

_RECEIVE = """
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], int(sys.argv[2])))
s.settimeout(0.1)
print("ready", flush=True)
got, deadline = 0, time.monotonic() + float(sys.argv[3])
while time.monotonic() < deadline:
    try:
        s.recv(64)
        got += 1
    except OSError:
        pass
print(got, flush=True)
"""
_SEND = """
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for _ in range(int(sys.argv[3])):
    try:
        s.sendto(b"x", (sys.argv[1], int(sys.argv[2])))
    except PermissionError:
        pass  # dropped on the way out: the sender's own firewall says so
    time.sleep(0.001)
"""


@pytest.fixture(scope="module")
def net_cluster() -> Iterator[LocalCluster]:
    with LocalCluster(nodes=[{"num_cpus": 1}, {"num_cpus": 1}], network=True) as cluster:
        yield cluster


def _datagrams(cluster: LocalCluster, source: str, target: str, count: int = SENT) -> int:
    """How many of ``count`` datagrams from ``source``'s namespace arrive in ``target``'s."""
    network = cluster.network
    assert network is not None
    address = network.endpoints[target].address
    with subprocess.Popen([*network.exec_prefix(target), sys.executable, "-c", _RECEIVE, address, str(PORT),
                           str(count * 0.001 + 2.0)], stdout=subprocess.PIPE, text=True) as receiver:
        try:
            assert receiver.stdout is not None and receiver.stdout.readline().strip() == "ready"
            subprocess.run([*network.exec_prefix(source), sys.executable, "-c", _SEND, address, str(PORT),
                            str(count)], check=True, timeout=BOUND_S)
            out, _ = receiver.communicate(timeout=BOUND_S)
        finally:
            if receiver.poll() is None:
                receiver.kill()
    return int(out.strip())


def test_a_partition_drops_what_it_cuts_and_nothing_else_until_healed(net_cluster: LocalCluster) -> None:
    n0, n1 = net_cluster.nodes
    assert _datagrams(net_cluster, "n0", "n1", 50) == 50
    out = net_cluster.net_fault(NetFault.partition("node", 5.0, "out"), n0)
    try:
        assert _datagrams(net_cluster, "n0", "n1", 50) == 0  # n0's packets to n1 are dropped ...
        assert _datagrams(net_cluster, "n1", "n0", 50) == 50  # ... n1's to n0 still arrive
    finally:
        net_cluster.heal(out)
    both = net_cluster.net_fault(NetFault.partition("gcs", 5.0, "both"), n0)
    try:
        assert _datagrams(net_cluster, "n0", "gcs", 50) == 0
        assert _datagrams(net_cluster, "gcs", "n0", 50) == 0
        assert _datagrams(net_cluster, "n1", "gcs", 50) == 50  # the other node is not cut
        assert _datagrams(net_cluster, "n0", "n1", 50) == 50  # nor is n0 from its peer
    finally:
        net_cluster.heal(both)
    cut_in = net_cluster.net_fault(NetFault.partition("postgres", 5.0, "in"), n1)
    try:
        assert _datagrams(net_cluster, "pg", "n1", 50) == 0
        assert _datagrams(net_cluster, "n1", "pg", 50) == 50
    finally:
        net_cluster.heal(cut_in)
    assert _datagrams(net_cluster, "n0", "gcs", 50) == 50
    assert _datagrams(net_cluster, "pg", "n1", 50) == 50


def test_a_loss_drops_about_its_share_each_way(net_cluster: LocalCluster) -> None:
    lossy = net_cluster.net_fault(NetFault.loss(50.0, 5.0), net_cluster.nodes[0])
    try:
        # 400 datagrams at 50%: the count is binomial, 200 +- 10; outside 100..300 is astronomically unlikely.
        assert 100 < _datagrams(net_cluster, "n0", "n1") < 300
        assert 100 < _datagrams(net_cluster, "n1", "n0") < 300
    finally:
        net_cluster.heal(lossy)
    assert _datagrams(net_cluster, "n0", "n1", 50) == 50


def test_a_delay_is_netem_or_a_typed_refusal_naming_the_module(net_cluster: LocalCluster) -> None:
    try:
        require_netem()
    except NetFaultUnavailableError as exc:
        assert "sch_netem" in str(exc) and "modprobe" in str(exc)
        with pytest.raises(NetFaultUnavailableError):
            net_cluster.net_fault(NetFault.delay(100, 5.0), net_cluster.nodes[0])
        print("this kernel has no netem: the refusal was checked")
        return
    network = net_cluster.network
    assert network is not None
    ping = ("import socket,sys,time\nt=time.monotonic()\nsocket.create_connection((sys.argv[1], int(sys.argv[2])), 5)"
            ".close()\nprint(time.monotonic()-t)")
    target = net_cluster.address.split(":")
    delayed = net_cluster.net_fault(NetFault.delay(200, 5.0), net_cluster.nodes[0])
    try:
        took = float(subprocess.run([*network.exec_prefix("n0"), sys.executable, "-c", ping, *target],
                                    capture_output=True, text=True, check=True, timeout=BOUND_S).stdout)
    finally:
        net_cluster.heal(delayed)
    assert took >= 0.2  # a connect is a round trip: the SYN left through the delay


def test_a_fault_in_a_namespace_that_is_not_there_is_a_typed_error() -> None:
    from ember.chaos._netfaults import apply

    with pytest.raises(NetworkCommandError, match="ember-no-such-namespace"):
        apply(NetFault.loss(5.0, 1.0), ["ip", "netns", "exec", "ember-no-such-namespace"])


def test_chaos_run_fires_network_faults_with_their_start_and_heal(tmp_path: Path) -> None:
    report = tmp_path / "run.json"
    done = subprocess.run(
        [sys.executable, "-m", "ember.chaos._cli", "run", "--partition", "gcs,node:out,postgres:in", "--loss", "30",
         "--every", "2", "--net-duration", "1.5", "--duration", "15", "--seed", "5", "--timeout", "240",
         "--report", str(report), "--quiet", "--", sys.executable, str(REPO / "tests/chaos/network_workload.py"),
         "--seconds", "12"],
        capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "wrong 0" in done.stdout
    data = json.loads(report.read_text())
    faults = [e for e in data["timeline"] if e["what"] == "fault" and e["outcome"] == "hit"]
    healed = {e["net_id"]: e["t_s"] for e in data["timeline"] if e["what"] == "fault_healed"}
    assert len(faults) >= 3, data["timeline"]
    for fault in faults:
        assert fault["fault"]["kind"] in ("partition", "loss")
        assert fault["net_id"] in healed  # every fault that hit was healed, within the run
        assert healed[fault["net_id"]] >= fault["t_s"] + 1.5  # it lasted its duration (how soon after is load's)
    assert "network fault     " in done.stderr and " to " in done.stderr
    # The schedule is data: a replay reads the same network faults back.
    from ember.chaos._report import read

    replayable = read(report)
    assert [p.fault.to_json() for p in replayable.planned] == [p["fault"] for p in data["schedule"]]
