"""A job's runs as a Chrome trace (``ember.timeline``, ``ember timeline``): the durable log, in Perfetto.

The runs are the dashboard's timeline data (``_dashboard_data.timeline_runs``,
read page after page, so there is no cap on the number of tasks), laid out
one lane per worker: a trace "process" per node, a "thread" per worker pid
under it. Each run is a complete event ("ph": "X") from its start to its end,
named after its task and carrying its task id and attempt; a rebuild (a run
after an earlier attempt had finished, to rebuild lost results) is in
category ``rebuild`` and drawn yellow, a retry in ``retry``, a failed run red.
Deaths of processes and nodes (not clean shutdowns) are instant events in the
lane of the process that died.

Everything comes from the log, so a trace can be written after the cluster
is gone. It must never write to the log.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from ember.lineage._dashboard_data import RUNS_MAX, Death, Run, deaths, timeline_runs
from ember.lineage._reader import LineageLog
from ember.lineage._states import ProcessKind, TaskState

__all__ = ["chrome_trace"]

_NO_WORKER_TID = 0  # the lane of a node's runs whose worker the log does not name


def _us(at: dt.datetime) -> int:
    return int(at.timestamp() * 1_000_000)


def _all_runs(log: LineageLog, job_id: bytes) -> list[Run]:
    runs: list[Run] = []
    while True:  # ends at the first short page; a page is bounded by RUNS_MAX
        page = timeline_runs(log, job_id, len(runs), RUNS_MAX)
        runs.extend(page)
        if len(page) < RUNS_MAX:
            return runs


class _Lanes:
    """Trace pids for nodes and tids for workers, with the metadata events that name them."""

    def __init__(self) -> None:
        self.nodes: dict[str | None, int] = {}
        self.threads: set[tuple[int, int]] = set()
        self.events: list[dict[str, Any]] = []

    def lane(self, node_id: str | None, worker_pid: int | None) -> tuple[int, int]:
        pid = self.nodes.get(node_id)
        if pid is None:
            pid = self.nodes[node_id] = len(self.nodes) + 1
            self.events.append({"name": "process_name", "ph": "M", "pid": pid,
                                "args": {"name": f"node {node_id}" if node_id else "node (not logged)"}})
        tid = worker_pid or _NO_WORKER_TID
        if (pid, tid) not in self.threads:
            self.threads.add((pid, tid))
            name = f"worker {worker_pid}" if worker_pid else "runs with no worker logged"
            self.events.append({"name": "thread_name", "ph": "M", "pid": pid, "tid": tid, "args": {"name": name}})
        return pid, tid


def _run_event(run: Run, lanes: _Lanes) -> dict[str, Any] | None:
    if run.began_at is None or run.ended_at is None:
        return None
    pid, tid = lanes.lane(run.node_id, run.worker_pid)
    start = _us(run.began_at)
    category = "rebuild" if run.rebuild else "retry" if run.attempt > 0 else "task"
    event: dict[str, Any] = {
        "name": f"{run.name} (rebuild)" if run.rebuild else run.name,
        "cat": category, "ph": "X", "ts": start, "dur": max(0, _us(run.ended_at) - start), "pid": pid, "tid": tid,
        "args": {"task_id": run.task_id, "attempt": run.attempt, "state": run.state, "rebuild": run.rebuild,
                 "start_logged": run.began_logged, **({"error": run.error} if run.error else {})},
    }
    colour = "terrible" if run.state == TaskState.FAILED else "yellow" if run.rebuild else "olive" if run.attempt else None
    if colour is not None:
        event["cname"] = colour
    return event


def _death_event(death: Death, lanes: _Lanes) -> dict[str, Any]:
    pid, tid = lanes.lane(death.node_id, death.pid if death.kind == ProcessKind.WORKER else None)
    return {"name": f"{death.kind} died", "cat": "death", "ph": "i", "s": "t" if death.kind == ProcessKind.WORKER else "p",
            "ts": _us(death.at), "pid": pid, "tid": tid,
            "args": {"kind": death.kind, "pid": death.pid, "cause": death.cause}}


def chrome_trace(log: LineageLog, job: str | None = None) -> list[dict[str, Any]]:
    """The Chrome trace events of ``job``'s runs (a job id or unique prefix; default the latest job)."""
    row = log.job(job)
    runs = _all_runs(log, bytes.fromhex(row.job_id))
    lanes = _Lanes()
    events = [event for run in runs if (event := _run_event(run, lanes)) is not None]
    starts = [run.began_at for run in runs if run.began_at]
    ends = [run.ended_at for run in runs if run.ended_at]
    if starts and ends:
        events += [_death_event(d, lanes) for d in deaths(log, row.cluster_id, min(starts), max(ends))]
    return lanes.events + events
