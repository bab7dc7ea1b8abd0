"""``LocalCluster(network=True)``: real network namespaces, one address per node, the GCS and PostgreSQL.

Each test builds real namespaces, veth pairs and a bridge with ``ip`` (root,
as CI runs), and checks them from inside: a task's process is in its node's
namespace, sees its node's address, and cannot reach the GCS on its own
loopback. What a cluster made is gone after shutdown, and after its owner
is SIGKILLed a later start sweeps it (processes inside included); a
namespace of someone else's, even one named like ours, is never touched.
Not root: a typed refusal naming what is missing.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import ember
from ember.chaos import LocalCluster, NetworkUnavailableError
from ember.chaos import _network
from ember.chaos._cluster import _is_zombie
from ember.scheduler._procutil import process_start_ticks

BOUND_S = 60.0
REPO = Path(__file__).resolve().parents[2]


def _namespaces() -> set[str]:
    return set(os.listdir(_network.NETNS_DIR)) if _network.NETNS_DIR.is_dir() else set()


def _links() -> set[str]:
    return set(os.listdir("/sys/class/net"))


@ember.remote(num_cpus=1)
def where() -> tuple[str, str, str]:
    """(this node's address, this process's network namespace, what connecting to the GCS port on loopback did)."""
    probe = socket.socket()
    probe.settimeout(2.0)
    try:
        probe.connect(("127.0.0.1", 6380))
        loopback = "reached"
    except OSError as exc:
        loopback = type(exc).__name__
    finally:
        probe.close()
    return ember.util.get_node_ip_address(), os.readlink("/proc/self/ns/net"), loopback


def _netns_inode(namespace: str) -> str:
    return f"net:[{os.stat(_network.NETNS_DIR / namespace).st_ino}]"


def test_each_node_runs_in_its_own_namespace_and_reaches_others_only_over_their_addresses() -> None:
    before_ns, before_links = _namespaces(), _links()
    with LocalCluster(nodes=[{"num_cpus": 1}, {"num_cpus": 1}], network=True) as cluster:
        network = cluster.network
        assert network is not None
        made = {e.namespace for e in network.endpoints.values()}
        assert made <= _namespaces() and len(made) == 4  # pg, gcs, n0, n1
        addresses = {role: e.address for role, e in network.endpoints.items()}
        assert len(set(addresses.values())) == 4
        assert cluster.address == f"{addresses['gcs']}:{cluster.port}"
        assert [cluster.node_address(n) for n in cluster.nodes] == [addresses["n0"], addresses["n1"]]
        # PostgreSQL listens on its own address (and nowhere a node's loopback reaches).
        assert cluster.postgres.tcp_url.split("@")[1].startswith(f"{addresses['pg']}:")
        ember.init(address=cluster.address)
        try:
            seen = ember.get([where.remote() for _ in range(6)], timeout=BOUND_S)
            by_address = {address: (netns, loopback) for address, netns, loopback in seen}
            for role in ("n0", "n1"):
                if addresses[role] in by_address:
                    netns, loopback = by_address[addresses[role]]
                    assert netns == _netns_inode(network.endpoints[role].namespace)
            # Every task ran on a node (the GCS's head has no CPUs), none could reach the GCS on loopback.
            assert set(by_address) <= {addresses["n0"], addresses["n1"]}
            assert {loopback for _, loopback in by_address.values()} == {"ConnectionRefusedError"}
            # A node's daemon is in its namespace, and it reaches the GCS over the GCS's address only.
            for node, role in zip(cluster.nodes, ("n0", "n1")):
                assert os.readlink(f"/proc/{node.pid}/ns/net") == _netns_inode(network.endpoints[role].namespace)
            inside = network.exec_prefix("n0")
            gcs_host, gcs_port = cluster.address.split(":")
            reach = "import socket,sys; socket.create_connection((sys.argv[1], int(sys.argv[2])), 2).close()"
            assert subprocess.run([*inside, sys.executable, "-c", reach, gcs_host, gcs_port],
                                  timeout=BOUND_S).returncode == 0
            assert subprocess.run([*inside, sys.executable, "-c", reach, "127.0.0.1", gcs_port],
                                  capture_output=True, timeout=BOUND_S).returncode != 0
        finally:
            ember.shutdown()
    assert _namespaces() == before_ns
    assert _links() == before_links
    assert not (_network.RECORDS_DIR / f"{network.tag}.json").exists()


_CRASHING_OWNER = textwrap.dedent("""
    import sys
    from ember.chaos import LocalCluster
    cluster = LocalCluster(nodes=[{"num_cpus": 1}], network=True)
    print(cluster.network.tag, cluster.nodes[0].pid, cluster.postgres.server_pid(), flush=True)
    sys.stdin.read()  # until killed
""")


def test_what_a_killed_owner_left_is_swept_at_the_next_start_and_nothing_else() -> None:
    # A namespace named as ours but whose owner (this test) is alive, and one of another scheme: both stay.
    alive_lookalike = f"ember-{os.getpid()}-zzzzz-n0"
    foreign = f"not-ember-{os.getpid()}"
    for name in (alive_lookalike, foreign):
        _network.run(["ip", "netns", "add", name])
    with subprocess.Popen([sys.executable, "-c", _CRASHING_OWNER], stdin=subprocess.PIPE,
                          stdout=subprocess.PIPE, text=True, cwd=REPO) as owner:
        _sweep_after_owner(owner, alive_lookalike, foreign)


def _sweep_after_owner(owner: subprocess.Popen, alive_lookalike: str, foreign: str) -> None:
    try:
        tag, node_pid, pg_pid = owner.stdout.readline().split()  # type: ignore[union-attr]
        record = json.loads((_network.RECORDS_DIR / f"{tag}.json").read_text())
        left = set(record["namespaces"])
        assert left <= _namespaces()
        owner.kill()
        owner.wait(BOUND_S)
        # The owner's node daemon and its PostgreSQL outlive it, in namespaces nobody owns now.
        assert process_start_ticks(int(node_pid)) is not None and process_start_ticks(int(pg_pid)) is not None
        assert tag in _network.sweep()
        assert not (left & _namespaces())
        assert not any(link.startswith(f"em{tag}") for link in _links())
        assert not any(Path(folder).exists() for folder in record["folders"])
        deadline = time.monotonic() + BOUND_S
        while time.monotonic() < deadline and not all(_is_zombie(int(pid)) for pid in (node_pid, pg_pid)):
            time.sleep(0.05)
        assert _is_zombie(int(node_pid)) and _is_zombie(int(pg_pid))
        assert {alive_lookalike, foreign} <= _namespaces()
    finally:
        if owner.poll() is None:
            owner.kill()
            owner.wait(BOUND_S)
        _network.sweep()
        for name in (alive_lookalike, foreign):
            _network.run(["ip", "netns", "delete", name], check=False)


def test_a_cluster_that_fails_to_start_takes_its_network_down() -> None:
    before_ns = _namespaces()
    with pytest.raises(Exception):
        LocalCluster(nodes=[{"num_cpus": "not a number"}], network=True)
    assert _namespaces() == before_ns


def test_not_root_is_refused_naming_what_is_missing() -> None:
    with pytest.raises(NetworkUnavailableError, match="needs root.*uid 1000"):
        _network.check_prerequisites(euid=1000)
    with pytest.raises(NetworkUnavailableError, match=r"/usr/sbin/nft.*apt-get install -y nftables"):
        _network.check_prerequisites(euid=0, exists=lambda path: path != "/usr/sbin/nft")
    # A real process without root (it drops to nobody once ember is imported: the checkout may be closed to
    # nobody) gets the same refusal from LocalCluster itself.
    code = ("import os\nfrom ember.chaos import LocalCluster\nos.setgid(65534)\nos.setuid(65534)\n"
            "LocalCluster(nodes=[{}], network=True)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=BOUND_S,
                          cwd=REPO)
    assert done.returncode != 0
    assert "NetworkUnavailableError" in done.stderr and "needs root" in done.stderr, done.stderr
