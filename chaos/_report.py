"""The record of a chaos run: a JSON report (the schedule, the timeline, the tally) and its summary.

A report holds everything ``chaos replay`` needs to run the same program
under the same schedule: the command, its working directory, the planned
faults with their triggers, and the duration. Reports are read back
defensively: a file that is not one, or from a newer format, gets a clear
error rather than a half-run.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ember.chaos._faults import InvalidFaultError
from ember.chaos._run import EXIT_LOST_DATA, EXIT_TIMEOUT, RunResult
from ember.chaos._schedule import Planned
from ember.exceptions import EmberUserError

FORMAT = "ember-chaos-report"
VERSION = 1


class ReportError(EmberUserError, ValueError):
    """A file given to ``chaos replay`` is not a chaos report this ember can read."""


@dataclass(frozen=True)
class Replayable:
    command: list[str]
    cwd: str
    planned: list[Planned]
    duration_s: float
    faults_max: int | None
    seed: int | None


def to_json(result: RunResult, seed: int | None, options: dict[str, Any], cwd: str) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "version": VERSION,
        "command": result.command,
        "cwd": cwd,
        "seed": seed,
        "options": options,
        "duration_s": result.duration_s,
        "faults_max": result.faults_max,
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(result.started_at)),
        "elapsed_s": round(result.elapsed_s, 3),
        "program_exit": result.program_exit,
        "exit_code": result.exit_code,
        "summary": result.tally.to_json(),
        "faults_not_fired": result.pending_faults,
        "lost": result.lost,
        "notes": result.notes,
        "schedule": [p.to_json() for p in result.planned],
        "timeline": result.timeline,
    }


def write(path: Path, report: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(report, indent=1) + "\n")
    tmp.replace(path)  # a reader never sees half a report


def read(path: Path) -> Replayable:
    try:
        data = json.loads(path.read_text())
    except OSError as exc:
        raise ReportError(f"cannot read the report {str(path)!r}: {exc.strerror or exc}") from exc
    except ValueError as exc:
        raise ReportError(f"{str(path)!r} is not JSON ({exc}); give the file `chaos run --report` wrote") from exc
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ReportError(f"{str(path)!r} is not a chaos report (no \"format\": \"{FORMAT}\")")
    if data.get("version", 0) > VERSION:
        raise ReportError(f"{str(path)!r} is a version {data['version']} report, written by a newer ember; "
                          f"this one reads up to version {VERSION}")
    try:
        command = [str(part) for part in data["command"]]
        planned = [Planned.from_json(p) for p in data["schedule"]]
        duration_s = float(data["duration_s"])
        faults_max = None if data.get("faults_max") is None else int(data["faults_max"])
    except (KeyError, TypeError, ValueError, InvalidFaultError) as exc:
        raise ReportError(f"{str(path)!r} is damaged: {exc}") from exc
    if not command:
        raise ReportError(f"{str(path)!r} has no command to run")
    return Replayable(command, str(data.get("cwd") or "."), planned, duration_s, faults_max, data.get("seed"))


def network_timeline(timeline: list[dict[str, Any]]) -> list[str]:
    """Each network fault of a run's timeline with its start and its heal (seconds since the start)."""
    healed = {e["net_id"]: e["t_s"] for e in timeline if e.get("what") == "fault_healed" and "net_id" in e}
    lines = []
    for entry in timeline:
        if entry.get("what") != "fault" or "net_id" not in entry and "duration_s" not in entry.get("fault", {}):
            continue
        fault = entry["fault"]
        label = fault["kind"] + (f" node-{fault['peer']} {fault['direction']}" if fault["kind"] == "partition" else "")
        if entry.get("outcome") != "hit":
            lines.append(f"{label}: at {entry['t_s']:.2f} s hit nothing ({entry.get('detail')})")
            continue
        end = healed.get(entry["net_id"])
        lines.append(f"{label}: {entry['t_s']:.2f} s to " + (f"{end:.2f} s" if end is not None else "the end (not healed)")
                     + f", {entry.get('detail')}")
    return lines


def summary(result: RunResult, seed: int | None, report_path: Path | None, rerun: str) -> str:
    tally = result.tally
    lines = [f"chaos run: {' '.join(result.command)}"]
    exit_text = ("killed after --timeout (hang)" if result.program_exit is None
                 else f"program exit {result.program_exit}")
    lines.append(f"  seed {seed if seed is not None else '-'} · {result.elapsed_s:.1f} s · {exit_text}"
                 + (f" · chaos exit {result.exit_code}" if result.exit_code != result.program_exit else ""))
    hit = sum(tally.faults.values())
    kinds = tally.faults_text(" · ") or "none"
    missed = sum(tally.missed.values())
    lines.append(f"  faults injected   {hit}: {kinds}"
                 + (f"  ({missed} found nothing to hit)" if missed else ""))
    lines.append(f"  tasks             {tally.tasks_finished:,} finished · {tally.task_reruns:,} re-run "
                 f"(retries and rebuilds) · {tally.tasks_failed:,} raised")
    lines.append(f"  rebuilt           {tally.rebuilds:,} tasks from lineage · {tally.copies_restored:,} objects "
                 "from durable copies (puts, actor results)")
    lines.append(f"  actors            {tally.actors_restarted:,} restarted · {tally.calls_replayed:,} calls replayed")
    started = " · ".join(f"{kind} {n}" for kind, n in sorted(tally.processes_started.items())) or "none reported"
    lines.append(f"  processes         {started} (started, restarts included)")
    lines.append(f"  objects lost      {tally.objects_lost}")
    for entry in result.lost[:5]:
        lines.append(f"    {entry.get('object')}: {entry.get('reason')}")
    for line in network_timeline(result.timeline):
        lines.append(f"  network fault     {line}")
    for note in result.notes:
        lines.append(f"  note              {note}")
    if result.exit_code == EXIT_LOST_DATA:
        lines.append("  => the program exited 0, but ember lost objects it could not rebuild (exit 3)")
    elif result.exit_code == EXIT_TIMEOUT:
        lines.append("  => the program hung (exit 124)")
    if report_path is not None:
        lines.append(f"  report            {report_path} (chaos replay {report_path})")
    lines.append(f"  run again         {rerun}")
    return "\n".join(lines)
