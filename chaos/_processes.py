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


def processes() -> list[ProcessRecord]:
    """Every live ember process of the cluster this process is connected to."""
    raw = require_core().call_scheduler(Op.PROCESSES)
    return [ProcessRecord(p["kind"], p["node_id"], p["pid"], p.get("actor_id")) for p in raw]
