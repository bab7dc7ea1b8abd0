"""The live processes of the connected cluster, as chaos and tests see them."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from ember.lineage._states import ProcessKind
from ember.scheduler import Op, require_core


@dataclass(frozen=True)
class ProcessRecord:
    kind: ProcessKind  # GCS, SCHEDULER, STORE, WORKER, or NODE (a node daemon of a multi-node cluster)
    node_id: str
    pid: int
    actor_id: str | None = None
    # False for a node whose death would end the caller's run: the head (it holds the GCS
    # service) and the caller's own node. Chaos never kills those.
    killable: bool = True


GCS_INFO_TIMEOUT_S = 1.0
NODE_ASK_TIMEOUT_S = 5.0


def processes() -> list[ProcessRecord]:
    """Every live ember process of the cluster this process is connected to, on every node.

    The GCS service is listed when it answers within a second; while it is
    down (being restarted) it is missing from the list, and so are the
    processes of other nodes, which the GCS names. A node that does not
    answer in time (it is dying) is left out.
    """
    from ember.lineage._rpc import GcsUnreachable, client_for

    core = require_core()
    raw = core.call_scheduler(Op.PROCESSES)
    gcs = client_for(core.session.gcs_address, core.session.token())
    try:
        info = gcs.try_call("Info", timeout_s=GCS_INFO_TIMEOUT_S)
        nodes = gcs.try_call("Nodes", timeout_s=GCS_INFO_TIMEOUT_S)["nodes"] if core.relay is not None else []
    except GcsUnreachable:
        return _records(raw, core.node_id, None)
    for node in nodes:
        if node["alive"] and node["node_id"] != core.node_id:
            raw += _ask_node(core, node["address"])
    return [ProcessRecord(ProcessKind.GCS, info["node_id"], int(info["gcs_pid"]))] + \
        _records(raw, core.node_id, info["node_id"])


def _records(raw: list[dict], own_node: str, head: str | None) -> list[ProcessRecord]:
    return [ProcessRecord(ProcessKind(p["kind"]), p["node_id"], p["pid"], p.get("actor_id"),
                          killable=p["kind"] != ProcessKind.NODE or p["node_id"] not in (own_node, head)) for p in raw]


def _ask_node(core: Any, address: str) -> list[dict]:
    """Another node's processes, from its scheduler (through its relay); [] if it does not answer."""
    from ember.scheduler._listener import connect

    # A hello without this process's address: a scheduler takes the close of a connection that
    # names an owner for that owner's exit, and would stop the actors it made.
    hello = {"kind": "processes", "pid": os.getpid()}
    try:
        conn = connect(address, core._token, hello, lambda conn, msg: None, None, "processes",
                       timeout_s=NODE_ASK_TIMEOUT_S)
    except Exception:
        return []
    try:
        return conn.call(Op.PROCESSES, timeout_s=NODE_ASK_TIMEOUT_S)
    except Exception:
        return []
    finally:
        conn.close()
