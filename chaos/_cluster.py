"""Several nodes on one machine, for tests and chaos: ``LocalCluster``.

Each node is a real node daemon, as ``ember start`` runs it, with its own
session, store and scheduler (the first also runs the GCS service and the
lineage log). Any node can be stopped or killed whole (SIGKILL to its daemon:
its store, scheduler and GCS die with it by the parent-death signal, and its
workers with the scheduler). Processes are only ever signalled by the pids
this cluster started, checked against their start times.

    with LocalCluster(nodes=[{"num_cpus": 1}] * 3) as cluster:
        ember.init(address=cluster.address)
        ...
        cluster.kill_node(cluster.nodes[2])

With ``network=True`` (root only) the cluster runs on a network of its own
(``_network``): PostgreSQL, the GCS and each node in a network namespace
with an address of its own, reached only over a bridge. The GCS runs on a
head node with no CPUs (``cluster.head``), so every task and actor runs on
one of ``cluster.nodes``, each a node apart from the GCS; the log is a
PostgreSQL of the cluster's own, over TCP. ``net_faults`` cuts, slows and
thins the links between them (``_netfaults``).
"""

from __future__ import annotations

import json
import os
import secrets
import tempfile
import time
from pathlib import Path
from typing import Any

from ember.scheduler import free_port, local_nodes
from ember.scheduler._procutil import process_start_ticks

STOP_TIMEOUT_S = 15.0
GONE_TIMEOUT_S = 10.0
POLL_S = 0.05
_READY_MARKERS = ("gcs.ready", "store.ready", "scheduler.ready")
NETWORK_GCS_PORT = 6380
NETWORK_PG_PORT = 5432


class LocalCluster:
    """A cluster of ``len(nodes)`` nodes on this machine; each dict holds a node's
    ``num_cpus``, ``num_gpus``, ``resources``, ``object_store_memory``.

    Without ``network``, ``nodes[0]`` is the head (it runs the GCS) and all share the loopback. With
    ``network=True`` every one of ``nodes`` runs in a network namespace of its own, and the GCS on a
    head node of its own (``head``, no CPUs), PostgreSQL in another; see the module's docstring.
    """

    def __init__(self, nodes: list[dict[str, Any]] | None = None, port: int | None = None,
                 network: bool = False) -> None:
        from ember.chaos._network import Network

        self.nodes: list[local_nodes.LocalNode] = []
        self.head: local_nodes.LocalNode | None = None
        self.network: Network | None = None
        self._postgres: Any = None
        self._node_roles: dict[str, str] = {}  # node id -> its endpoint's role in the network
        self._net_faults: list[Any] = []  # applied and not healed
        try:
            if network:
                self.network = Network(["pg", "gcs"])
                self.port = port or NETWORK_GCS_PORT
                self.address = f"{self.network.endpoints['gcs'].address}:{self.port}"
                self._start_postgres()
                self.head = self._start(head=True, role="gcs", sizes={"num_cpus": 0})
                for sizes in nodes or [{}]:
                    self.add_node(**sizes)
            else:
                self.port = port or free_port()
                self.address = f"127.0.0.1:{self.port}"
                for i, sizes in enumerate(nodes or [{}]):
                    self.add_node(head=i == 0, **sizes)
                self.head = self.nodes[0]
        except BaseException:
            self.shutdown()
            raise

    def add_node(self, head: bool = False, bind: str | None = None, **sizes: Any) -> local_nodes.LocalNode:
        """Start a node; ``bind``: the loopback address it serves on (another of 127/8 for a node with an
        address of its own, as ``node:<ip>`` resources see it; the head keeps 127.0.0.1). On a network
        cluster each node gets a namespace and address of its own, and ``bind`` is not given."""
        if self.network is not None:
            if head or bind is not None:
                raise ValueError("on a network cluster the head is the GCS's node, and every node binds to the "
                                 "address of its own namespace: give neither head nor bind")
            role = f"n{len(self.nodes)}"
            self.network.add(role)
            node = self._start(head=False, role=role, sizes=sizes)
        else:
            node = self._start(head=head, role=None, sizes=sizes, bind=bind)
        self.nodes.append(node)
        return node

    def node_address(self, node: local_nodes.LocalNode) -> str:
        """The address ``node`` serves other nodes at (its namespace's, on a network cluster)."""
        if self.network is None:
            return "127.0.0.1"
        return self.network.endpoints[self.role_of(node)].address

    def role_of(self, node: local_nodes.LocalNode) -> str:
        """``node``'s endpoint in the network: "gcs" for the head, "n0", "n1", ... for ``nodes``."""
        return self._node_roles[node.node_id]

    def _start(self, head: bool, role: str | None, sizes: dict[str, Any],
               bind: str | None = None) -> local_nodes.LocalNode:
        argv = ["--resources-json", json.dumps(sizes)]
        argv += ["--head", "--port", str(self.port)] if head else ["--address", self.address]
        prefix: tuple[str, ...] = ()
        env: dict[str, str] | None = None
        if self.network is not None and role is not None:
            bind = self.network.endpoints[role].address
            prefix = tuple(self.network.exec_prefix(role))
            env = {"EMBER_GCS_URL": self._postgres.tcp_url, "EMBER_CHAOS_NET": json.dumps(self._net_place(role))}
        if bind is not None and (not head or self.network is not None):
            argv += ["--bind", bind]
        node = local_nodes.start_daemon(argv, self.address, launch_prefix=prefix, env=env)
        if role is not None:
            self._node_roles[node.node_id] = role
        return node

    def _net_place(self, role: str) -> dict[str, str]:
        """A node's place in the network, as its ``EMBER_CHAOS_NET`` tells `chaos run`."""
        assert self.network is not None
        endpoints = self.network.endpoints
        return {"role": role, "address": endpoints[role].address, "gcs": endpoints["gcs"].address,
                "pg": endpoints["pg"].address, "host": self.network.host_address}

    def _start_postgres(self) -> None:
        from ember.lineage import EmbeddedPostgres, TcpListen

        assert self.network is not None
        home = Path(tempfile.mkdtemp(prefix=f"{self.network.prefix}-pg-", dir="/tmp"))
        os.chmod(home, 0o755)  # the server runs as its own user, which must reach its data
        self.network.own_folder(home)
        endpoint = self.network.endpoints["pg"]
        tcp = TcpListen(endpoint.address, NETWORK_PG_PORT, str(self.network.subnet), secrets.token_hex(16),
                        tuple(self.network.exec_prefix("pg")))
        self._postgres = EmbeddedPostgres(home, tcp)
        self._postgres.start()

    def net_fault(self, fault: Any, node: local_nodes.LocalNode | None = None) -> Any:
        """Put a network fault (``NetFault``) on ``node`` (default: ``fault.pick`` among ``nodes``) now;
        the ``Applied`` fault, for ``heal``. Only on a network cluster. ``fault.duration_s`` is for a
        schedule to keep; here the fault lasts until healed (or the cluster ends)."""
        from ember.chaos import _netfaults

        if self.network is None:
            raise ValueError("network faults need LocalCluster(network=True)")
        node = node if node is not None else self.nodes[fault.pick % len(self.nodes)]
        others = [self.node_address(n) for n in self.nodes if n is not node]
        peer_address = _netfaults.peer_address(fault, self._net_place(self.role_of(node)), others)
        applied = _netfaults.apply(fault, self.network.exec_prefix(self.role_of(node)), peer_address)
        self._net_faults.append(applied)
        return applied

    def heal(self, applied: Any) -> None:
        """Take a fault ``net_fault`` put in out again."""
        from ember.chaos import _netfaults

        _netfaults.heal(applied)
        if applied in self._net_faults:
            self._net_faults.remove(applied)

    @property
    def postgres(self) -> Any:
        """The cluster's own PostgreSQL (``EmbeddedPostgres``), on a network cluster; else None."""
        return self._postgres

    def node_pids(self, node: local_nodes.LocalNode) -> list[int]:
        """The pids of ``node``'s daemon, GCS, store and scheduler that are alive now (not its workers)."""
        pids = [node.pid] if node.alive() else []
        for marker in _READY_MARKERS:
            try:
                pid = int((node.session.sockets / marker).read_text())
            except (OSError, ValueError):
                continue
            if process_start_ticks(pid) is not None:
                pids.append(pid)
        return pids

    def kill_node(self, node: local_nodes.LocalNode, timeout_s: float = GONE_TIMEOUT_S) -> None:
        """SIGKILL ``node`` whole and wait (bounded) until its daemon, store, scheduler and GCS are gone."""
        pids = self.node_pids(node)
        local_nodes.kill_node(node)
        deadline = time.monotonic() + timeout_s
        while any(process_start_ticks(pid) is not None and not _is_zombie(pid) for pid in pids):
            if time.monotonic() > deadline:
                raise TimeoutError(f"node {node.node_id[:8]}'s processes {pids} outlived its daemon by {timeout_s}s")
            time.sleep(POLL_S)

    def stop_node(self, node: local_nodes.LocalNode) -> str:
        return local_nodes.stop_node(node, STOP_TIMEOUT_S)

    def shutdown(self) -> None:
        """Stop every node this cluster started, joined nodes first; then its PostgreSQL and network."""
        for applied in list(self._net_faults):
            self.heal(applied)  # a node stopping says goodbye to the GCS over a healed network
        try:
            started = [*self.nodes] + ([self.head] if self.head is not None and self.head not in self.nodes else [])
            for node in sorted(started, key=lambda n: n.head):
                self.stop_node(node)  # a node already gone only loses its record
        finally:
            try:
                if self._postgres is not None:
                    self._postgres.release()
            finally:
                if self.network is not None:
                    self.network.remove()

    def __enter__(self) -> "LocalCluster":
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()


def _is_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True
