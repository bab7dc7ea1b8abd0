"""A chaos run's record in the lineage log: what ``chaos run`` did, for the dashboard to show.

After the program ends, ``record_run`` writes one ``chaos_runs`` row (schema
v9): the command, seed and options, the schedule, every fault fired with its
wall-clock time and outcome, the tally, and the job the program ran (found by
its driver's pid, else as the first job that started during the run). The
dashboard's chaos page and ``chaos run --html`` read it back with the job's
own rows, through ``ember.lineage._dashboard_data``.

It must never change any other row of the log, and a log it cannot reach
costs the run a note, never its exit code.
"""

from __future__ import annotations

import datetime as dt
import json
import secrets
from typing import Any

from ember.chaos._run import RunResult

JOB_MATCH_SLACK_S = 2.0  # a job's logged start may lag the program's start by its ember.init()


__all__ = ["faults_of", "record_run"]


def faults_of(result: RunResult) -> list[dict[str, Any]]:
    """The faults fired, in order: when (epoch s and since the start), what, and what it hit."""
    faults = []
    for entry in result.timeline:
        if entry.get("what") != "fault":
            continue
        fault = entry.get("fault", {})
        faults.append({"at": entry.get("at_s"), "t_s": entry.get("t_s"), "kind": fault.get("kind"),
                       "target": fault.get("target"), "pause_s": fault.get("pause_s"),
                       "outcome": entry.get("outcome"), "pid": entry.get("pid"), "detail": entry.get("detail"),
                       "trigger": entry.get("trigger")})
    return faults


def record_run(result: RunResult, seed: int | None, options: dict[str, Any], gcs_url: str | None = None) -> str:
    """Write the run's row; returns its id (hex). Raises psycopg's errors when the log is unreachable."""
    import psycopg
    from psycopg.types.json import Jsonb

    from ember.lineage._reader import locate_log
    from ember.lineage._store import LineageStore

    conninfo, release = locate_log(gcs_url)
    try:
        LineageStore._check(conninfo, "the chaos run's record")  # the schema, created or brought up to date
        started = dt.datetime.fromtimestamp(result.started_at, dt.timezone.utc)
        ended = started + dt.timedelta(seconds=result.elapsed_s)
        run_id = secrets.token_bytes(16)
        with psycopg.connect(conninfo, autocommit=True) as conn:
            job_id = _job_of(conn, result.program_pid, started, ended)
            conn.execute(
                "INSERT INTO chaos_runs (run_id, job_id, command, seed, started_at, ended_at, exit_code, options, "
                "schedule, faults, tally, notes) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
                (run_id, job_id, json.dumps(result.command), seed, started, ended, result.exit_code, Jsonb(options),
                 Jsonb([p.to_json() for p in result.planned]), Jsonb(faults_of(result)),
                 Jsonb(result.tally.to_json()), Jsonb(result.notes)))
        return run_id.hex()
    finally:
        if release is not None:
            release()


def _job_of(conn: Any, pid: int | None, started: dt.datetime, ended: dt.datetime) -> bytes | None:
    window = (started - dt.timedelta(seconds=JOB_MATCH_SLACK_S), ended + dt.timedelta(seconds=JOB_MATCH_SLACK_S))
    row = None
    if pid is not None:
        row = conn.execute("SELECT job_id FROM jobs WHERE driver_pid = %s AND started_at BETWEEN %s AND %s "
                           "ORDER BY started_at LIMIT 1", (pid, *window)).fetchone()
    if row is None:
        row = conn.execute("SELECT job_id FROM jobs WHERE started_at BETWEEN %s AND %s ORDER BY started_at LIMIT 1",
                           window).fetchone()
    return row[0] if row else None
