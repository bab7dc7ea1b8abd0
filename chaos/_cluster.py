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
"""

from __future__ import annotations

import json
import time
from typing import Any

from ember.scheduler import free_port, local_nodes
from ember.scheduler._procutil import process_start_ticks

STOP_TIMEOUT_S = 15.0
GONE_TIMEOUT_S = 10.0
POLL_S = 0.05
_READY_MARKERS = ("gcs.ready", "store.ready", "scheduler.ready")


class LocalCluster:
    """A cluster of ``len(nodes)`` nodes on this machine; each dict holds a node's
    ``num_cpus``, ``num_gpus``, ``resources``, ``object_store_memory``."""

    def __init__(self, nodes: list[dict[str, Any]] | None = None, port: int | None = None) -> None:
        self.port = port or free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.nodes: list[local_nodes.LocalNode] = []
        try:
            for i, sizes in enumerate(nodes or [{}]):
                self.add_node(head=i == 0, **sizes)
        except BaseException:
            self.shutdown()
            raise

    def add_node(self, head: bool = False, bind: str | None = None, **sizes: Any) -> local_nodes.LocalNode:
        """Start a node; ``bind``: the loopback address it serves on (another of 127/8 for a node with an
        address of its own, as ``node:<ip>`` resources see it; the head keeps 127.0.0.1)."""
        argv = ["--resources-json", json.dumps(sizes)]
        argv += ["--head", "--port", str(self.port)] if head else ["--address", self.address]
        if bind is not None and not head:
            argv += ["--bind", bind]
        node = local_nodes.start_daemon(argv, self.address)
        self.nodes.append(node)
        return node

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
        """Stop every node this cluster started, joined nodes first."""
        for node in sorted(self.nodes, key=lambda n: n.head):
            self.stop_node(node)  # a node already gone only loses its record

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
