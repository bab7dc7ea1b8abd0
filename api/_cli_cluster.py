"""``ember start``, ``ember stop`` and ``ember status``: clusters that outlive a program.

``start`` runs a node daemon (``ember.scheduler._node_daemon``) in a session
of its own, waits (bounded) until its node serves, and says how to join and
connect; ``stop`` signals the daemons this machine runs, by the pid their
records name; ``status`` asks the cluster's GCS for its nodes and what they
have free. A user's mistake ends with one line and exit status 1.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import click

from ember._cli_inspect import _table
from ember.exceptions import ClusterStartError, EmberUserError
from ember.lineage._states import NodeState, PlacementGroupState
from ember.scheduler import node_gpus

START_TIMEOUT_S = 90.0  # the head brings PostgreSQL up too
STOP_TIMEOUT_S = 15.0


def _local_nodes() -> Any:
    from ember.scheduler import local_nodes

    return local_nodes


@click.command("start", help="Start a node on this machine: the head of a new cluster (--head), or one that joins "
                             "a cluster (--address HOST:PORT). It runs until `ember stop`.")
@click.option("--head", is_flag=True, help="Start a new cluster: its GCS service and lineage log, and a node.")
@click.option("--address", default=None, help="Join the cluster whose head printed this HOST:PORT.")
@click.option("--port", default=6380, show_default=True, type=click.IntRange(1, 65535),
              help="With --head: the GCS service's port.")
@click.option("--bind", default="127.0.0.1", show_default=True,
              help="The address this node serves other nodes on: its relay and object transfers, and with "
                   "--head the GCS service (loopback unless you say otherwise).")
@click.option("--num-cpus", type=click.FloatRange(min=0), default=None, help="CPUs to offer (default: all).")
@click.option("--num-gpus", type=click.IntRange(min=0), default=None,
              help="GPUs to offer (default: as many as CUDA_VISIBLE_DEVICES names, else nvidia-smi lists).")
@click.option("--resources", default=None, help='Custom resources as JSON, e.g. \'{"accelerator": 2}\'.')
@click.option("--object-store-memory", type=click.IntRange(min=1), default=None, help="Store budget in bytes.")
@click.option("--tls-cert", type=click.Path(exists=True, dir_okay=False), default=None,
              help="PEM certificate this node's TCP servers present (with --tls-key and --tls-ca: TLS on).")
@click.option("--tls-key", type=click.Path(exists=True, dir_okay=False), default=None, help="PEM key of --tls-cert.")
@click.option("--tls-ca", type=click.Path(exists=True, dir_okay=False), default=None,
              help="PEM certificate authority that signed every node's certificate.")
@click.option("--tls-server-name", default=None,
              help="The name in the nodes' certificates, when one certificate serves every node.")
@click.option("--dashboard", "with_dashboard", is_flag=True,
              help="With --head: also serve `ember dashboard` on loopback; it ends with the node.")
@click.option("--dashboard-port", default=8265, show_default=True, type=click.IntRange(0, 65535),
              help="With --dashboard: its port (0: any free one).")
def start_command(head: bool, address: str | None, port: int, bind: str, num_cpus: float | None,
                  num_gpus: int | None, resources: str | None, object_store_memory: int | None,
                  tls_cert: str | None, tls_key: str | None, tls_ca: str | None, tls_server_name: str | None,
                  with_dashboard: bool, dashboard_port: int) -> None:
    if head == (address is not None):
        raise click.UsageError("give either --head (a new cluster) or --address HOST:PORT (join one)")
    if with_dashboard and not head:
        raise click.UsageError("--dashboard goes with --head (the dashboard reads the cluster's log)")
    from ember.scheduler import _tls  # loads gRPC: only for `start`

    _use_tls(tls_cert, tls_key, tls_ca, tls_server_name)
    if not _tls.is_loopback(bind) and _tls.tls_files() is None:
        click.echo(f"warning: this node serves {bind} WITHOUT TLS: the cluster token and all data cross the "
                   "network in the clear; use --tls-cert/--tls-key/--tls-ca (docs/security.md)", err=True)
    custom = _parse_resources(resources)
    try:
        node_gpus(num_gpus, os.environ, detect=lambda: 0)  # refused here, before a node starts, if it cannot be
    except EmberUserError as exc:
        raise click.UsageError(str(exc)) from None
    sizes = {"num_cpus": num_cpus, "num_gpus": num_gpus, "resources": custom,
             "object_store_memory": object_store_memory}
    argv = ["--resources-json", json.dumps(sizes), "--bind", bind]
    if head:
        argv += ["--head", "--port", str(port)]
        wanted = f"{bind}:{port}"
    else:
        try:
            wanted = _local_nodes().normalize_address(address)  # type: ignore[arg-type]
        except EmberUserError as exc:
            raise click.ClickException(str(exc)) from None
        argv += ["--address", wanted]
    node = start_daemon(argv, wanted)
    _say_started(node)
    if with_dashboard:
        from ember._cli_dashboard import start_beside

        click.echo("Dashboard (open this URL; it holds the token):")
        click.echo(start_beside(node, dashboard_port))


def _use_tls(cert: str | None, key: str | None, ca: str | None, server_name: str | None) -> None:
    """Hand the TLS flags to the node's daemon (and through it to every process of the node)."""
    from ember.scheduler import _tls

    given = {_tls.CERT_ENV: cert, _tls.KEY_ENV: key, _tls.CA_ENV: ca}
    if any(given.values()):
        for name, path in given.items():
            if path is not None:
                os.environ[name] = os.path.abspath(path)
        if server_name:
            os.environ[_tls.SERVER_NAME_ENV] = server_name
    try:
        _tls.tls_files()
    except _tls.TlsConfigError as exc:
        raise click.UsageError(f"{exc} (the flags are --tls-cert, --tls-key, --tls-ca)") from None


def _parse_resources(text: str | None) -> dict[str, float] | None:
    if text is None:
        return None
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise click.BadParameter(f"--resources is not JSON ({exc}); write e.g. '{{\"accelerator\": 2}}'") from None
    if not isinstance(value, dict) or not all(
            isinstance(k, str) and isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0
            for k, v in value.items()):
        raise click.BadParameter("--resources must be a JSON object of resource names to non-negative numbers")
    return {k: float(v) for k, v in value.items()}


def start_daemon(argv: list[str], address: str) -> Any:
    try:
        return _local_nodes().start_daemon(argv, address, START_TIMEOUT_S)
    except ClusterStartError as exc:
        raise click.ClickException(str(exc)) from None


def _say_started(node: Any) -> None:
    role = "head of a new cluster" if node.head else "joined the cluster"
    click.echo(f"ember node {node.node_id[:8]} started: {role} at {node.gcs_address} (pid {node.pid})")
    click.echo(f"  session: {node.session_dir}")
    if node.head:
        click.echo("To add a node on this machine:   ember start --address " + node.gcs_address)
        click.echo("On another machine, also set:    EMBER_CLUSTER_TOKEN=<`ember status --show-token` here>")
    click.echo(f'To connect a program:            ember.init(address="{node.gcs_address}")  (or "auto")')
    click.echo("To stop the nodes on this machine: ember stop")


@click.command("stop", help="Stop the nodes `ember start` runs on this machine (joined nodes first, then heads).")
@click.option("--timeout", "timeout_s", default=STOP_TIMEOUT_S, show_default=True, type=click.FloatRange(min=0),
              help="Seconds to wait for each node before killing it.")
def stop_command(timeout_s: float) -> None:
    nodes = sorted(_local_nodes().local_nodes(), key=lambda n: n.head)
    if not nodes:
        click.echo("no ember node runs on this machine")
        return
    for node in nodes:
        how = _local_nodes().stop_node(node, timeout_s)
        click.echo(f"stopped node {node.node_id[:8]} ({'head' if node.head else 'node'} of {node.gcs_address}, "
                   f"pid {node.pid}){'' if how == 'stopped' else ': ' + how}")


@click.command("status", help="Show the cluster's nodes, their resources and what is free.")
@click.option("--address", default=None, help="The cluster (default: the one whose node runs on this machine).")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
@click.option("--show-token", is_flag=True, help="Also print the cluster token (hex), for nodes on other machines.")
def status_command(address: str | None, fmt: str, show_token: bool) -> None:
    from ember.lineage._rpc import GcsUnreachable, client_for

    try:
        local = _local_nodes().find(address or "auto")
    except EmberUserError as exc:
        raise click.ClickException(str(exc)) from None
    token = local.session.token()
    try:
        reply = client_for(local.gcs_address, token).call("Nodes", {}, timeout_s=5.0)
    except (GcsUnreachable, PermissionError) as exc:
        raise click.ClickException(f"the GCS at {local.gcs_address} did not answer: {exc}") from None
    nodes = sorted(reply.get("nodes", []), key=lambda n: (not n["alive"], n["node_id"]))
    try:
        groups = client_for(local.gcs_address, token).call("PlacementGroupTable", {}, timeout_s=5.0)["groups"]
    except (GcsUnreachable, PermissionError) as exc:
        raise click.ClickException(f"the GCS at {local.gcs_address} did not answer: {exc}") from None
    if fmt == "json":
        click.echo(json.dumps({"address": local.gcs_address, "nodes": nodes, "placement_groups": groups,
                               **({"token": token.hex()} if show_token else {})}, indent=2))
        return
    alive = [n for n in nodes if n["alive"]]
    click.echo(f"cluster at {local.gcs_address}: {len(alive)} node(s) alive, {len(nodes) - len(alive)} dead")
    rows = [[n["node_id"][:8], NodeState.ALIVE if n["alive"] else NodeState.DEAD, _usage(n, "CPU"), _usage(n, "GPU"),
             _custom(n), n.get("death_cause") or "-"] for n in nodes]
    click.echo(_table(["NODE", "STATE", "CPU USED", "GPU USED", "OTHER", "DEATH"], rows, sys.stdout.isatty()))
    _echo_groups(groups)
    if show_token:
        click.echo(f"token: {token.hex()}")


_BUILT_IN = {"CPU", "GPU", "memory", "object_store_memory"}


def _echo_groups(groups: list[dict]) -> None:
    """The placement groups not removed: state, strategy, bundles and their nodes, why one waits."""
    live = [g for g in groups if g["state"] != PlacementGroupState.REMOVED]
    removed = len(groups) - len(live)
    click.echo(f"placement groups: {len(live)}" + (f" ({removed} removed not shown)" if removed else ""))
    if not live:
        return
    rows = []
    for g in live:
        bundles = g["bundles"]
        placed = g["bundles_to_node_id"]
        where = ", ".join(f"{i}:{placed[str(i)][:8] if str(i) in placed else '-'}" for i in range(len(bundles)))
        shapes = ", ".join(" ".join(f"{k} {v:g}" for k, v in sorted(bundles[str(i)].items()))
                           for i in range(len(bundles)))
        rows.append([g["placement_group_id"][:8], g["name"] or "-", g["state"], g["strategy"], shapes, where,
                     g["stats"].get("why_pending") or "-"])
    click.echo(_table(["GROUP", "NAME", "STATE", "STRATEGY", "BUNDLES", "NODES", "WHY PENDING"], rows,
                      sys.stdout.isatty()))


def _usage(node: dict, name: str) -> str:
    total = node.get("resources", {}).get(name)
    if not total:
        return "-"
    free = node.get("available", {}).get(name, total)
    return f"{total - free:g}/{total:g}"


def _custom(node: dict) -> str:
    return ", ".join(f"{k} {_usage(node, k)}" for k in sorted(node.get("resources", {})) if k not in _BUILT_IN) or "-"
