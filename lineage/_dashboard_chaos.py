"""The dashboard's chaos pages, and ``chaos run --html``'s self-contained report: the same page, one file.

A run's page shows the job's tasks finished per second over the run, each
fault a shaded interval coloured by its kind (from the fault to the moment
the job recovered from it), and a table of the faults with the time each
took to recover from. "Recovered" is measured, and said so on the page: the
end of the first second, at or after the fault, in which the job finished
at least ``RECOVERED_SHARE`` of its usual rate (the median of its busy
seconds outside any fault).

It must never write to the log, and the standalone report must never refer
to anything outside itself (no link, script, font or image from elsewhere).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
import statistics
from typing import Any

from ember.lineage import _dashboard_data as data
from ember.lineage._dashboard_html import Page, Query, esc, facts, frame, link, pager, table, when
from ember.lineage._dashboard_svg import Shade, throughput_svg
from ember.lineage._listing import row_json
from ember.lineage._states import JobState
from ember.lineage._reader import LineageLog

RECOVERED_SHARE = 0.5
SHADE_MIN_S = 0.5  # a fault whose job never slowed still shows
COLOURS = {"kill-worker": "#e8a33d", "kill-store": "#d9534f", "kill-scheduler": "#8e6bbf", "kill-gcs": "#3c8dbc",
           "kill-node": "#6b6b6b", "pause-worker": "#5cb85c", "pause-store": "#4cae4c", "pause-scheduler": "#3d8b3d",
           "pause-gcs": "#2d6a2d", "restart_postgres": "#17a2b8"}


__all__ = ["chaos_page", "chaos_runs_page", "recoveries", "standalone_report"]


def chaos_runs_page(log: LineageLog, q: Query) -> Page:
    offset, limit = q.paging()
    job = q.text("job")
    job_id = bytes.fromhex(log.job(job).job_id) if job else None
    runs = data.chaos_runs(log, job_id, offset, limit)
    cells = [[link(f"/chaos/{r.run_id}", r.run_id[:12], "id"), when(r.started_at), esc(_took(r)),
              link(f"/job/{r.job_id}", r.job_id, "id") if r.job_id else "-",
              esc(sum(1 for f in r.faults if f.get("outcome") == "hit")), esc(r.exit_code),
              esc(" ".join(r.command)[:80])] for r in runs]
    body = (table(["run", "started", "took", "job", "faults hit", "exit", "command"], cells)
            + pager("/chaos", {"job": job}, offset, limit, len(runs)))
    return Page("chaos runs", body, [_run_json(r) for r in runs], any(r.ended_at is None for r in runs),
                [("jobs", "/")])


def _took(run: data.ChaosRun) -> str:
    return "running" if run.ended_at is None else f"{(run.ended_at - run.started_at).total_seconds():.1f} s"


def _run_json(run: data.ChaosRun) -> dict[str, Any]:
    return row_json(run)


def _kind(fault: dict[str, Any]) -> str:
    kind = str(fault.get("kind") or "?")
    return kind if kind == "restart_postgres" else f"{kind}-{fault.get('target')}"


def recoveries(run: data.ChaosRun, bucket_s: float, counts: list[int]) -> list[dict[str, Any]]:
    """Each fault that hit, with its kind, start, own duration and time to recover (None: not within the run)."""
    hits = [f for f in run.faults if f.get("outcome") == "hit" and f.get("at") is not None]
    start = run.started_at.timestamp()
    spans = [(float(f["at"]) - start, float(f["at"]) - start + float(f.get("pause_s") or 0.0)) for f in hits]
    quiet = [c for i, c in enumerate(counts)
             if c and not any(a <= i * bucket_s + bucket_s and i * bucket_s <= b + bucket_s for a, b in spans)]
    usual = statistics.median(quiet or [c for c in counts if c] or [0])
    out = []
    for fault, (at_s, own_end_s) in zip(hits, spans):
        recovered_s = None
        first = max(math.ceil(own_end_s / bucket_s - 1e-9), 0)  # the first whole bucket after the fault
        for i in range(first, len(counts)):
            if usual and counts[i] >= RECOVERED_SHARE * usual:
                recovered_s = max((i + 1) * bucket_s - at_s, 0.0)
                break
        out.append({"kind": _kind(fault), "at_s": round(at_s, 3), "duration_s": round(own_end_s - at_s, 3),
                    "recovered_after_s": None if recovered_s is None else round(recovered_s, 3),
                    "pid": fault.get("pid"), "detail": fault.get("detail")})
    return out


def chaos_page(log: LineageLog, run_id: str, q: Query | None = None, links: bool = True) -> Page:
    run = data.chaos_run(log, run_id.lower())
    job = log.job(run.job_id) if run.job_id else None
    live = run.ended_at is None or (job is not None and job.state == JobState.RUNNING)
    end = run.ended_at or dt.datetime.now(dt.timezone.utc)
    if job is not None and job.ended_at and job.ended_at > end:
        end = job.ended_at
    bucket_s, counts = (data.throughput(log, bytes.fromhex(run.job_id), run.started_at, end) if run.job_id
                        else (1.0, [0] * max(int((end - run.started_at).total_seconds()) + 1, 1)))
    recovered = recoveries(run, bucket_s, counts)
    run_s = len(counts) * bucket_s
    shades = [Shade(r["at_s"], r["at_s"] + max(r["duration_s"], SHADE_MIN_S,
                                               run_s - r["at_s"] if r["recovered_after_s"] is None
                                               else r["recovered_after_s"]),
                    r["kind"], f"{r['kind'].replace('-', ' ')} at {r['at_s']:.2f} s · recovered after "
                    + (f"{r['recovered_after_s']:.1f} s" if r["recovered_after_s"] is not None else "— (not in the run)"),
                    COLOURS.get(r["kind"], "#e8a33d"), {"at": f"{r['at_s']:.3f}"}) for r in recovered]
    kinds = sorted({r["kind"] for r in recovered})
    legend = '<p class="legend">' + "".join(
        f'<span class="k fault-{esc(k)}">{esc(k.replace("-", " "))}</span>' for k in kinds) + "</p>"
    job_cell = ((link(f"/job/{run.job_id}", run.job_id) if links else esc(run.job_id)) if run.job_id
                else "none found (the program started no job the log knows)")
    tally = run.tally
    summary = facts([
        ("command", f"<code>{esc(' '.join(run.command))}</code>"), ("job", job_cell),
        ("started", when(run.started_at)), ("took", esc(_took(run))),
        ("seed", esc(run.seed)), ("exit", esc(run.exit_code if run.ended_at else "(running)")),
        ("faults", esc(", ".join(f"{k} {n}" for k, n in sorted(tally.get("faults", {}).items())) or "none hit")),
        ("tasks", esc(f"{tally.get('tasks_finished', 0):,} finished · {tally.get('task_reruns', 0):,} re-run · "
                      f"{tally.get('tasks_failed', 0):,} raised")),
        ("rebuilt", esc(f"{tally.get('rebuilds', 0):,} tasks · {tally.get('copies_restored', 0):,} copies restored")),
        ("actors", esc(f"{tally.get('actors_restarted', 0):,} restarted · {tally.get('calls_replayed', 0):,} "
                       "calls replayed")),
        ("objects lost", esc(tally.get("objects_lost", 0))),
    ])
    rows = [[esc(f"{r['at_s']:.2f} s"), f'<span class="k fault-{esc(r["kind"])}">{esc(r["kind"])}</span>',
             esc(r["pid"] or "-"), esc(f"{r['duration_s']:.2f} s" if r["duration_s"] else "-"),
             esc(f"{r['recovered_after_s']:.1f} s" if r["recovered_after_s"] is not None else "not within the run"),
             esc(r["detail"] or "")] for r in recovered]
    missed = [f for f in run.faults if f.get("outcome") != "hit"]
    body = (summary + f"<h2>tasks finished per {'second' if bucket_s == 1 else f'{bucket_s:g} s'}</h2>" + legend
            + f'<div class="scroll">{throughput_svg(counts, bucket_s, shades)}</div>'
            + f'<p class="hint">Each shaded interval runs from a fault to the end of the first whole second after it in '
              f"which the job finished at least {RECOVERED_SHARE:.0%} of its usual rate again (its median busy second "
              f"outside faults).</p>"
            + "<h2>faults</h2>" + table(["at", "kind", "pid", "lasted", "time to recover", "detail"], rows, "faults")
            + (f"<p>{len(missed)} more fired with nothing to hit.</p>" if missed else "")
            + "".join(f'<p class="note">{esc(n)}</p>' for n in run.notes))
    json_data = {**_run_json(run), "bucket_s": bucket_s, "finished_per_bucket": counts, "recoveries": recovered}
    crumbs = [("jobs", "/"), ("chaos runs", "/chaos")] if links else []
    return Page(f"chaos run {run.run_id[:12]}", body, json_data, live, crumbs)


def standalone_report(log: LineageLog, run_id: str) -> str:
    """The chaos page as one HTML file that opens with no network and no server."""
    page = chaos_page(log, run_id, None, links=False)
    return frame(dataclasses.replace(page, live=False), standalone=True)
