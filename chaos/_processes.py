"""The live processes of the connected cluster, as chaos and tests see them."""

from __future__ import annotations

from dataclasses import dataclass

from ember.scheduler import Op, require_core


@dataclass(frozen=True)
class ProcessRecord:
    kind: str  # 'gcs', 'scheduler', 'store' or 'worker'
    node_id: str
    pid: int
    actor_id: str | None = None


GCS_INFO_TIMEOUT_S = 1.0


def processes() -> list[ProcessRecord]:
    """Every live ember process of the cluster this process is connected to.

    The GCS service is listed when it answers within a second; while it is
    down (being restarted) it is missing from the list.
    """
    from ember.lineage._rpc import GcsUnreachable, client_for

    core = require_core()
    raw = core.call_scheduler(Op.PROCESSES)
    records = [ProcessRecord(p["kind"], p["node_id"], p["pid"], p.get("actor_id")) for p in raw]
    try:
        info = client_for(core.session.gcs_address, core.session.token()).try_call(
            "Info", timeout_s=GCS_INFO_TIMEOUT_S)
    except GcsUnreachable:
        return records
    return [ProcessRecord("gcs", info["node_id"], int(info["gcs_pid"]))] + records
