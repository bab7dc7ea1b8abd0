"""A node that outlives the command that started it: what ``ember start`` runs.

``ember start --head`` runs one of these as the cluster's head (the GCS
service on ``host:port``, the lineage log, a store and a scheduler);
``ember start --address HOST:PORT`` runs one that joins that cluster (a store
and a scheduler that register with its GCS). The daemon is the parent of its
node's processes: they die with it (parent-death signal), and its
supervisor restarts the ones that die alone, as a driver's does.

It records itself for ``ember stop``, ``ember status`` and
``ember.init(address=...)`` (``_local_nodes``) once the node serves, and on
SIGTERM stops the node, deletes its session and its record, and exits.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
import time
from typing import Any

from ember import _settings
from ember.exceptions import ClusterStartError, EmberUserError
from ember.lineage._states import ProcessKind
from ember.scheduler import _local_nodes
from ember.chaos import _agent
from ember.scheduler._node import JoinTarget, bring_up, node_ip, node_resources
from ember.scheduler._session import open_session

log = logging.getLogger("ember.node")

GCS_READY_TIMEOUT_S = 30.0
GCS_POLL_S = 0.05
CLUSTER_TOKEN_ENV = _settings.variable("cluster_token")  # hex; for a node on another machine than the head


def cluster_token(address: str) -> bytes:
    """The token of the cluster at ``address``: from ``EMBER_CLUSTER_TOKEN``, or from its head on this machine."""
    text = _settings.load().cluster_token
    if text:
        try:
            return bytes.fromhex(text.strip())
        except ValueError:
            raise EmberUserError(f"{CLUSTER_TOKEN_ENV} is not hex; copy it as `ember start --head` printed it") \
                from None
    for node in _local_nodes.local_nodes():
        if node.head and node.gcs_address == address:
            return node.session.token()
    raise EmberUserError(
        f"no token for the cluster at {address}: its head does not run on this machine; set {CLUSTER_TOKEN_ENV} "
        "to the token `ember start --head` printed (it is in the head's session folder, file `token`)")


def wait_for_gcs(address: str, token: bytes, timeout_s: float = GCS_READY_TIMEOUT_S) -> dict[str, Any]:
    """The GCS's ``Info`` once it answers and has loaded the cluster's state (bounded)."""
    return _poll_gcs(address, token, "Info", lambda info: info if info.get("loaded") else None, 2.0, timeout_s,
                     f"the GCS at {address} did not answer within {timeout_s:.0f}s")


def _wait_registered(address: str, token: bytes, node_id: str, timeout_s: float = GCS_READY_TIMEOUT_S) -> None:
    """Wait (bounded) until the cluster's GCS knows this node: from then on the node is part of the cluster."""
    # The service answers Nodes once it has loaded the cluster's state (bounded on its side).
    def registered(reply: dict[str, Any]) -> bool:
        return any(n["node_id"] == node_id and n["alive"] for n in reply["nodes"])

    _poll_gcs(address, token, "Nodes", registered, 6.0, timeout_s,
              f"node {node_id} did not register with the GCS at {address} within {timeout_s:.0f}s")


def _poll_gcs(address: str, token: bytes, method: str, ready: Any, call_timeout_s: float, timeout_s: float,
              failure: str) -> Any:
    """Call ``method`` until ``ready(reply)`` is truthy (and return that), within ``timeout_s``; else raise
    ClusterStartError saying ``failure``. A refused token fails at once."""
    from ember.lineage._rpc import GcsUnreachable, client_for

    client = client_for(address, token)
    deadline = time.monotonic() + timeout_s
    last: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            found = ready(client.call(method, {}, timeout_s=max(0.1, min(call_timeout_s, deadline - time.monotonic()))))
            if found:
                return found
        except PermissionError as exc:
            raise ClusterStartError(f"the GCS at {address} refused this node's token: {exc}") from exc
        except GcsUnreachable as exc:
            last = exc
        time.sleep(GCS_POLL_S)
    raise ClusterStartError(failure + (f": {last}" if last else ""))


def _join_target(address: str) -> JoinTarget:
    token = cluster_token(address)
    info = wait_for_gcs(address, token)
    conninfo = info.get("gcs_conninfo")
    socket_dir = _unix_socket_dir(conninfo)
    if socket_dir is not None and not os.path.isdir(socket_dir):
        raise ClusterStartError(
            f"the cluster at {address} keeps its lineage log in an embedded PostgreSQL that only its own machine "
            "reaches; start the head and every node with EMBER_GCS_URL=postgresql://... naming a server all "
            "nodes reach")
    return JoinTarget(address, token, conninfo, info.get("cluster_id") or "")


def _unix_socket_dir(conninfo: str | None) -> str | None:
    for part in (conninfo or "").split():
        key, _, value = part.partition("=")
        if key == "host" and value.startswith("/"):
            return value
    return None


def _detach(log_file: str) -> None:
    """Fork the daemon off and print its pid: the starter waits only for this, and the daemon's
    parent becomes init, which reaps it whenever it ends (a killed one never lingers as a zombie)."""
    pid = os.fork()  # before any thread starts
    if pid:
        print(pid, flush=True)
        os._exit(0)
    os.setsid()
    fd = os.open(log_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="ember-node")
    parser.add_argument("--head", action="store_true")
    parser.add_argument("--address", default=None, help="the cluster to join (host:port)")
    parser.add_argument("--bind", default="127.0.0.1",
                        help="the node serves other nodes here (the head's GCS, every node's relay and transfers)")
    parser.add_argument("--port", type=int, default=_local_nodes.DEFAULT_PORT)
    parser.add_argument("--resources-json", required=True, help="num_cpus, num_gpus, resources, object_store_memory")
    parser.add_argument("--log-file", required=True)
    args = parser.parse_args(argv)
    _detach(args.log_file)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    sizes = json.loads(args.resources_json)
    totals, store_bytes = node_resources(sizes.get("num_cpus"), sizes.get("num_gpus"), sizes.get("resources"),
                                         sizes.get("object_store_memory"), ip=node_ip(args.bind))
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    try:
        if args.head:
            gcs_address = f"{args.bind}:{args.port}"
            session, node, log_store = bring_up(totals, store_bytes, gcs_address=gcs_address, bind_host=args.bind)
        else:
            gcs_address = _local_nodes.normalize_address(args.address)
            session, node, log_store = bring_up(totals, store_bytes, join=_join_target(gcs_address),
                                                bind_host=args.bind)
        try:
            _wait_registered(gcs_address, session.token(), node.node_id)
        except BaseException:
            node.stop()
            if log_store is not None:
                log_store.release()
            session.remove()
            raise
    except (ClusterStartError, EmberUserError) as exc:
        print(f"ember node: {exc}", file=sys.stderr, flush=True)
        sys.exit(1)
    _local_nodes.record(_local_nodes.LocalNode(
        node.node_id, os.getpid(), _local_nodes.process_start_ticks(os.getpid()) or 0, str(session.dir),
        gcs_address, bool(args.head), totals))
    # Under `chaos run`: a node it may kill (and, on a network cluster, cut, slow or thin: its place in the network).
    net = _settings.load().chaos_net
    _agent.start(ProcessKind.NODE, node.node_id, head=bool(args.head), **({"net": json.loads(net)} if net else {}))
    log.info("node %s of the cluster at %s serves (session %s)", node.node_id, gcs_address, session.dir)
    while not stop.wait(1.0):
        pass
    log.info("node %s stopping", node.node_id)
    _local_nodes.forget(node.node_id)
    node.stop()
    if log_store is not None:
        log_store.release()
    open_session(session.dir).remove()


if __name__ == "__main__":
    main(sys.argv[1:])
