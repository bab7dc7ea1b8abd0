"""Network faults on a real network cluster: packets really dropped, one way or both, and healed.

Datagrams are sent between the namespaces of a ``LocalCluster(network=True)``
by processes started inside them, and counted where they arrive: a partition
drops all of them the way it cuts and none the other way, a loss about its
share, and a heal restores them. A delay (``tc netem``, or where the kernel
has no netem an NFQUEUE and a delay process in the node's namespace) makes
a TCP connect from the node at least as slow as the delay (the one bound on
time asserted: the delay itself guarantees it), and its heal takes out the
rule and the process; a delay process that dies ends the delay, never cuts
the node. ``chaos run`` with network faults, on a program that starts its
own network cluster: every fault hits a node, heals after its duration, and
the timeline has both ends; the program's values are right.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from ember.chaos import LocalCluster, NetworkCommandError
from ember.chaos import NetFault
from ember.chaos import _netdelay
from ember.chaos._netfaults import Injection, require_delay
from ember.chaos._network import namespace_pids

BOUND_S = 60.0
CONNECT_TIMEOUT_S = 20.0
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


_CONNECT = """
import socket, sys, time
started = time.monotonic()
socket.create_connection((sys.argv[1], int(sys.argv[2])), float(sys.argv[3])).close()
print(time.monotonic() - started)
"""


def _connect_s(cluster: LocalCluster, role: str = "n0", count: int = 1) -> list[float]:
    """How long each of ``count`` TCP connects from ``role``'s namespace to the GCS took: a round trip (the
    node's SYN out through its link, the SYN-ACK back). A connect that never completes fails the test."""
    network = cluster.network
    assert network is not None
    host, port = cluster.address.split(":")
    return [float(subprocess.run([*network.exec_prefix(role), sys.executable, "-c", _CONNECT, host, port,
                                  str(CONNECT_TIMEOUT_S)], capture_output=True, text=True, check=True,
                                 timeout=BOUND_S).stdout) for _ in range(count)]


def _net_namespace_inode(path: str) -> int:
    return os.stat(path).st_ino


def test_a_delay_holds_the_nodes_packets_and_its_heal_takes_out_all_it_added(net_cluster: LocalCluster) -> None:
    network = net_cluster.network
    assert network is not None
    how = require_delay()  # netem, or NFQUEUE where the kernel has no netem; NetFaultUnavailableError if neither
    inside = network.exec_prefix("n0")
    before = _connect_s(net_cluster, count=3)
    figures = {}
    for delay_ms, jitter_ms in ((200, 0), (300, 50)):
        delayed = net_cluster.net_fault(NetFault.delay(delay_ms, 5.0, jitter_ms=jitter_ms), net_cluster.nodes[0])
        try:
            assert delayed.how is how
            if how is Injection.NFQUEUE:
                process = delayed.delay.process
                assert process.poll() is None and "_nfqueue.py" in Path(f"/proc/{process.pid}/cmdline").read_text()
                # It runs in the node's namespace, and the node's outgoing packets go to its queue.
                assert _net_namespace_inode(f"/proc/{process.pid}/ns/net") == _net_namespace_inode(
                    f"/run/netns/{network.endpoints['n0'].namespace}")
                assert f"-j {delayed.delay.chain}" in _netdelay.rules(inside)
                assert f"--queue-num {delayed.delay.queue} --queue-bypass" in _netdelay.rules(inside)
            during = _connect_s(net_cluster, count=5)
        finally:
            net_cluster.heal(delayed)
        if how is Injection.NFQUEUE:
            assert process.poll() == 0  # stopped by its pid (SIGTERM: it let what it held go, then exited)
            assert process.pid not in namespace_pids(network.endpoints["n0"].namespace)
            assert "ember_fault_" not in _netdelay.rules(inside) and "NFQUEUE" not in _netdelay.rules(inside)
        figures[f"{delay_ms}:{jitter_ms}"] = during
        # The delay's own lower bound: the SYN is held at least delay - jitter on its way out.
        assert min(during) >= (delay_ms - jitter_ms) / 1000, during
    after = _connect_s(net_cluster, count=3)
    print(f"delay by {how}: connect to the GCS before {_ms(before)}, during {dict((k, _ms(v)) for k, v in figures.items())}, "
          f"after the heal {_ms(after)}")


def test_a_dead_delay_process_ends_the_delay_and_cuts_nothing(net_cluster: LocalCluster) -> None:
    if require_delay() is not Injection.NFQUEUE:
        print("this kernel has netem: no delay process to kill")
        return
    network = net_cluster.network
    assert network is not None
    delayed = net_cluster.net_fault(NetFault.delay(2000, 30.0), net_cluster.nodes[1])
    try:
        assert min(_connect_s(net_cluster, "n1")) >= 2.0
        os.kill(delayed.delay.pid, signal.SIGKILL)  # ours: the fault started it
        delayed.delay.process.wait(BOUND_S)
        # With no one on the queue, --queue-bypass lets packets through: the connect completes (a black hole
        # would time it out), and the rule is still there until the heal.
        _connect_s(net_cluster, "n1")
        assert f"-j {delayed.delay.chain}" in _netdelay.rules(network.exec_prefix("n1"))
    finally:
        net_cluster.heal(delayed)
    assert "NFQUEUE" not in _netdelay.rules(network.exec_prefix("n1"))


def _ms(figures: list[float]) -> str:
    return "/".join(f"{s * 1000:.1f}" for s in figures) + " ms"


def test_a_fault_in_a_namespace_that_is_not_there_is_a_typed_error() -> None:
    from ember.chaos._netfaults import apply

    with pytest.raises(NetworkCommandError, match="ember-no-such-namespace"):
        apply(NetFault.loss(5.0, 1.0), ["ip", "netns", "exec", "ember-no-such-namespace"])


def _chaos_run(tmp_path: Path, options: list[str], duration_s: int, seconds: int) -> tuple[
        subprocess.CompletedProcess[str], dict, list[dict], dict[int, float]]:
    """``chaos run`` with network ``options`` on the network workload: the run, its report, the faults that
    hit, and when each ``net_id`` healed. The program's values are right."""
    report = tmp_path / "run.json"
    done = subprocess.run(
        [sys.executable, "-m", "ember.chaos._cli", "run", *options, "--every", "2", "--net-duration", "1.5",
         "--duration", str(duration_s), "--seed", "5", "--timeout", "240", "--report", str(report), "--quiet", "--",
         sys.executable, str(REPO / "tests/chaos/network_workload.py"), "--seconds", str(seconds)],
        capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "wrong 0" in done.stdout
    data = json.loads(report.read_text())
    faults = [e for e in data["timeline"] if e["what"] == "fault" and e["outcome"] == "hit"]
    healed = {e["net_id"]: e["t_s"] for e in data["timeline"] if e["what"] == "fault_healed"}
    for fault in faults:
        assert fault["net_id"] in healed  # every fault that hit was healed, within the run
        assert healed[fault["net_id"]] >= fault["t_s"] + 1.5  # it lasted its duration (how soon after is load's)
    return done, data, faults, healed


def test_chaos_run_fires_network_faults_with_their_start_and_heal(tmp_path: Path) -> None:
    done, data, faults, _ = _chaos_run(tmp_path, ["--partition", "gcs,node:out,postgres:in", "--loss", "30"], 15, 12)
    assert len(faults) >= 3, data["timeline"]
    assert all(fault["fault"]["kind"] in ("partition", "loss") for fault in faults)
    assert "network fault     " in done.stderr and " to " in done.stderr
    # The schedule is data: a replay reads the same network faults back.
    from ember.chaos._report import read

    replayable = read(tmp_path / "run.json")
    assert [p.fault.to_json() for p in replayable.planned] == [p["fault"] for p in data["schedule"]]


def test_chaos_run_fires_delays_with_their_start_and_heal(tmp_path: Path) -> None:
    done, data, faults, _ = _chaos_run(tmp_path, ["--delay", "150:50"], 12, 10)
    assert len(faults) >= 2, data["timeline"]
    for fault in faults:
        assert fault["fault"] == {**fault["fault"], "kind": "delay", "delay_ms": 150, "jitter_ms": 50}
        assert "150 ms ± 50 ms out of the node" in fault["detail"]
        assert "NFQUEUE" in fault["detail"] or "netem" in fault["detail"]  # which one made it
    assert "network fault     delay: " in done.stderr
    print(done.stdout + done.stderr)
