"""A chaos run's record in the lineage log: what ``chaos run`` did, for the dashboard to show, live and after.

``LiveRecord`` writes one ``chaos_runs`` row (schema v9) as the run goes:
every couple of seconds (``chaos._run.OBSERVE_S``) the faults fired so far
and the tally, with ``ended_at`` still NULL, so the dashboard's chaos page
follows the run; at the end the whole record: the command, seed and options,
the schedule, every fault with its wall-clock time and outcome, the tally,
the exit, and the job the program ran (found by its driver's pid, else as
the first job that started during the run). The dashboard's chaos page and
``chaos run --html`` read it back with the job's own rows, through
``ember.lineage._dashboard_data``.

It must never change any other row of the log, and a log it cannot reach
costs the run a note, never its exit code.
"""

from __future__ import annotations

import datetime as dt
import json
import secrets
from typing import Any

from ember.chaos._run import RunResult, Snapshot

JOB_MATCH_SLACK_S = 2.0  # a job's logged start may lag the program's start by its ember.init()


__all__ = ["LiveRecord", "faults_of"]


def faults_of(timeline: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The faults fired, in order: when (epoch s and since the start), what, and what it hit."""
    faults = []
    for entry in timeline:
        if entry.get("what") != "fault":
            continue
        fault = entry.get("fault", {})
        faults.append({"at": entry.get("at_s"), "t_s": entry.get("t_s"), "kind": fault.get("kind"),
                       "target": fault.get("target"),
                       # How long it lasted of itself: a pause's stop, a network fault's duration.
                       "pause_s": fault.get("pause_s") or fault.get("duration_s"),
                       "outcome": entry.get("outcome"), "pid": entry.get("pid"), "detail": entry.get("detail"),
                       "trigger": entry.get("trigger")})
    return faults


class LiveRecord:
    """One run's row: ``observe`` while it runs (errors swallowed: the run goes on), ``finish`` at its end."""

    def __init__(self, command: list[str], seed: int | None, options: dict[str, Any], schedule: list[dict[str, Any]],
                 gcs_url: str | None = None) -> None:
        self.run_id = secrets.token_bytes(16)
        self._fixed = (json.dumps(command), seed, options, schedule)
        self._gcs_url = gcs_url
        self._conninfo: str | None = None
        self._release: Any = None
        self.failure: str | None = None  # why the last write failed, if it did

    def observe(self, snapshot: Snapshot) -> None:
        import psycopg

        from ember.exceptions import EmberError

        try:
            self._write(snapshot.program_pid, snapshot.started_at, None, None, snapshot.timeline, snapshot.tally,
                        [])
        except (psycopg.Error, EmberError, OSError) as exc:
            self.failure = str(exc)  # a later write may get through (a restarted PostgreSQL, say)

    def finish(self, result: RunResult) -> str:
        """Write the run's end; returns its id (hex). Raises psycopg's errors when the log is unreachable."""
        try:
            self._write(result.program_pid, result.started_at, result.elapsed_s, result.exit_code, result.timeline,
                        result.tally.to_json(), result.notes)
        finally:
            self.close()
        return self.run_id.hex()

    def close(self) -> None:
        if self._release is not None:
            self._release()
            self._release = None

    def _write(self, pid: int | None, started_s: float, elapsed_s: float | None, exit_code: int | None,
               timeline: list[dict[str, Any]], tally: dict[str, Any], notes: list[str]) -> None:
        import psycopg
        from psycopg.types.json import Jsonb

        from ember.lineage import CONNECT_OPTIONS

        conninfo = self._open()
        started = dt.datetime.fromtimestamp(started_s, dt.timezone.utc)
        ended = started + dt.timedelta(seconds=elapsed_s) if elapsed_s is not None else None
        command, seed, options, schedule = self._fixed
        with psycopg.connect(conninfo, autocommit=True, **CONNECT_OPTIONS) as conn:
            job_id = _job_of(conn, pid, started, ended)
            conn.execute(
                "INSERT INTO chaos_runs (run_id, job_id, command, seed, started_at, ended_at, exit_code, options, "
                "schedule, faults, tally, notes) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) "
                "ON CONFLICT (run_id) DO UPDATE SET job_id = COALESCE(EXCLUDED.job_id, chaos_runs.job_id), "
                "ended_at = EXCLUDED.ended_at, exit_code = EXCLUDED.exit_code, faults = EXCLUDED.faults, "
                "tally = EXCLUDED.tally, notes = EXCLUDED.notes",
                (self.run_id, job_id, command, seed, started, ended, exit_code, Jsonb(options), Jsonb(schedule),
                 Jsonb(faults_of(timeline)), Jsonb(tally), Jsonb(notes)))

    def _open(self) -> str:
        """The log's conninfo: found (the embedded server held) and its schema brought up to date, once."""
        if self._conninfo is None:
            from ember.lineage import LineageStore, locate_log

            conninfo, release = locate_log(self._gcs_url)
            try:
                LineageStore._check(conninfo, "the chaos run's record")  # creates or upgrades the schema
            except BaseException:
                if release is not None:
                    release()
                raise
            self._conninfo, self._release = conninfo, release
        return self._conninfo


def _job_of(conn: Any, pid: int | None, started: dt.datetime, ended: dt.datetime | None) -> bytes | None:
    slack = dt.timedelta(seconds=JOB_MATCH_SLACK_S)
    window = (started - slack, (ended or dt.datetime.now(dt.timezone.utc)) + slack)
    row = None
    if pid is not None:
        row = conn.execute("SELECT job_id FROM jobs WHERE driver_pid = %s AND started_at BETWEEN %s AND %s "
                           "ORDER BY started_at LIMIT 1", (pid, *window)).fetchone()
    if row is None and ended is not None:  # while it runs, only its own driver's job will do
        row = conn.execute("SELECT job_id FROM jobs WHERE started_at BETWEEN %s AND %s ORDER BY started_at LIMIT 1",
                           window).fetchone()
    return row[0] if row else None
