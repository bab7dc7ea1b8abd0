"""The dashboard's pages over one job and its parts: jobs, a job, its tasks, a task, an object, its timeline,
actors and nodes.

Each page function takes the open log, the ids in the path and the query
string, and returns a ``Page``: markup for people and data for the JSON twin
(``?format=json``). The data comes from the same calls ``ember list`` makes
(``LineageLog.jobs/tasks/actors/nodes``, ``row_json``) and the same records
``ember lineage`` reads (``LineageLog.task/object``); what they have no twin
of is read through ``_dashboard_data``. Every list is a page: ``offset`` and
``limit`` go to SQL.

A page of a job that is still running is ``live``: the served frame then
refreshes it (``dashboard_assets/live.js``).

It must never write to the log, and never put text from the log in markup
unescaped.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from ember.lineage import _dashboard_data as data
from ember.lineage._dashboard_html import (
    Page,
    Query,
    cut,
    esc,
    facts,
    link,
    object_link,
    pager,
    state_badge,
    table,
    task_link,
    when,
)
from ember.lineage._dashboard_svg import BEHIND, Mark, TimelineBar, timeline_svg
from ember.lineage._listing import TaskFilter, check_state, row_json
from ember.lineage._states import JobState, ObjectState, ProcessKind, TaskState
from ember.lineage._reader import LineageLog, ObjectRecord, TaskRecord
from ember.lineage._render import arg_items, human_duration, human_size, object_place, short_id

ERROR_CELL_CHARS_MAX = 80


__all__ = ["actor_page", "actors_page", "job_page", "jobs_page", "nodes_page", "object_page", "task_page",
           "tasks_page", "timeline_page"]


def _job_crumbs(job_id: str) -> list[tuple[str, str]]:
    return [("jobs", "/"), (f"job {job_id}", f"/job/{job_id}")]


def _took(start: Any, end: Any) -> str:
    return human_duration((end - start).total_seconds()) or "-" if start and end else "-"


def _short(text: str | None, chars_max: int = ERROR_CELL_CHARS_MAX) -> str:
    if not text:
        return "-"
    return esc(text if len(text) <= chars_max else text[:chars_max - 1] + "…")


# -- jobs ----------------------------------------------------------------------------------


def jobs_page(log: LineageLog, q: Query) -> Page:
    offset, limit = q.paging()
    state = check_state(q.text("state"), JobState, "jobs")
    rows = log.jobs(state=state, limit=limit, offset=offset)
    stats = log.job_stats([r.job_id for r in rows])
    cells = []
    for r in rows:
        s = stats[r.job_id]
        chaos = link("/chaos", f"{s.chaos_runs} run(s)", job=r.job_id) if s.chaos_runs else "-"
        cells.append([link(f"/job/{r.job_id}", r.job_id, "id"), state_badge(r.state), when(r.started_at),
                      esc(_took(r.started_at, r.ended_at)), f"{r.tasks:,}", f"{s.failures:,}", f"{s.reruns:,}",
                      chaos, _short(r.entrypoint, 50)])
    body = table(["job", "state", "started", "duration", "tasks", "failed", "re-runs", "chaos", "entrypoint"],
                 cells) + pager("/", {"state": state}, offset, limit, len(rows))
    live = any(r.state == JobState.RUNNING for r in rows)
    return Page("jobs", body, [{**row_json(r), **dataclasses.asdict(stats[r.job_id])} for r in rows], live)


def job_page(log: LineageLog, job: str, q: Query) -> Page:
    r = log.job(job)
    s = log.job_stats([r.job_id])[r.job_id]
    nav = " · ".join([link(f"/job/{r.job_id}/tasks", "tasks"),
                      link(f"/job/{r.job_id}/tasks", "failed tasks", state=TaskState.FAILED),
                      link(f"/job/{r.job_id}/tasks", "rebuilt tasks", rebuilt=True),
                      link(f"/job/{r.job_id}/timeline", "timeline"), link(f"/job/{r.job_id}/actors", "actors"),
                      link(f"/job/{r.job_id}/nodes", "nodes"), link("/chaos", "chaos runs", job=r.job_id)])
    body = facts([("state", state_badge(r.state)), ("entrypoint", _short(r.entrypoint, 200)),
                  ("started", when(r.started_at)), ("ended", when(r.ended_at)),
                  ("duration", esc(_took(r.started_at, r.ended_at))), ("tasks", f"{r.tasks:,}"),
                  ("failed", f"{s.failures:,}"), ("re-runs", f"{s.reruns:,} (retries and rebuilds)"),
                  ("chaos runs", f"{s.chaos_runs}"), ("driver pid", esc(r.driver_pid)),
                  ("cluster", esc(r.cluster_id))]) + f'<p class="nav">{nav}</p>'
    return Page(f"job {r.job_id}", body, {**row_json(r), **dataclasses.asdict(s)},
                r.state == JobState.RUNNING, [("jobs", "/")])


# -- tasks ---------------------------------------------------------------------------------


def task_filter(q: Query) -> TaskFilter:
    """The tasks view's filters, from the URL (so a filtered view is a link to share)."""
    return TaskFilter(state=check_state(q.text("state"), TaskState, "tasks"), function=q.text("function"),
                      node=q.text("node"), retried=q.flag("retried"), rebuilt=q.flag("rebuilt"),
                      error=q.text("error"), since=q.time("since"), until=q.time("until"))


def tasks_page(log: LineageLog, job: str, q: Query) -> Page:
    offset, limit = q.paging()
    f = task_filter(q)
    r = log.job(job)
    rows = log.tasks(job=r.job_id, limit=limit, where=f, offset=offset)
    cells = [[task_link(t.task_id, short_id(t.task_id)), esc(t.name), state_badge(t.state), str(t.attempts),
              str(t.rebuilt), esc(t.node_id[:8] if t.node_id else "-"), esc(human_duration(t.duration_s) or "-"),
              when(t.submitted_at), _short(t.error), f'<code class="copy">ember replay {esc(t.task_id)} --pdb</code>']
             for t in rows]
    params = {"state": f.state, "function": f.function, "node": f.node, "retried": f.retried,
              "rebuilt": f.rebuilt, "error": f.error, "since": q.text("since"), "until": q.text("until"),
              "limit": limit if limit != 50 else None}
    body = (_filter_form(r.job_id, f, q) +
            table(["task", "function", "state", "attempts", "rebuilt", "node", "duration", "submitted", "error",
                   "debug it"], cells, "tasks") +
            pager(f"/job/{r.job_id}/tasks", params, offset, limit, len(rows)))
    return Page(f"tasks of job {r.job_id}", body, [row_json(t) for t in rows], r.state == JobState.RUNNING,
                _job_crumbs(r.job_id))


def _filter_form(job_id: str, f: TaskFilter, q: Query) -> str:
    states = "".join(f'<option{" selected" if f.state == s.value else ""}>{esc(s.value)}</option>'
                     for s in TaskState)

    def box(name: str, label: str, value: Any) -> str:
        return f'<label>{esc(label)} <input name="{name}" value="{esc(value or "")}"></label>'

    def check(name: str, label: str, on: bool) -> str:
        return f'<label><input type="checkbox" name="{name}" value="1"{" checked" if on else ""}> {esc(label)}</label>'

    return (f'<form class="filters" method="get" action="/job/{esc(job_id)}/tasks">'
            f'<label>state <select name="state"><option value="">any</option>{states}</select></label>'
            + box("function", "function", f.function) + box("node", "node", f.node)
            + box("error", "error text", f.error) + box("since", "submitted from", q.text("since"))
            + box("until", "until", q.text("until"))
            + check("retried", "attempts > 1", f.retried) + check("rebuilt", "rebuilt", f.rebuilt)
            + '<button>filter</button></form>')


def task_page(log: LineageLog, task_id: str, q: Query) -> Page:
    t = log.task(task_id.lower())
    args = "".join(f"<li>{esc(name) + '=' if name else ''}"
                   f"{object_link(ref, shown) if ref else '<code>' + esc(shown) + '</code>'}</li>"
                   for name, shown, ref in arg_items(t.args)) or "<li>(none)</li>"
    spec = facts([
        ("function", esc(t.display_name)), ("state", state_badge(t.state)), ("job", link(f"/job/{t.job_id}", t.job_id)),
        ("submitted", when(t.submitted_at)), ("parent task", task_link(t.parent_task_id)),
        ("actor", link(f"/actor/{t.actor_id}", t.actor_id) if t.actor_id else "-"),
        ("call in actor order", esc(t.actor_seq if t.actor_seq is not None else "-")),
        ("returns", esc(t.num_returns)), ("max retries", esc(t.max_retries)),
        ("attempts", f"{t.attempt_count} ({t.rebuilt} rebuild(s))"),
        ("lineage", link(f"/lineage/{t.task_id}", "up", dir="up") + " · " +
         link(f"/lineage/{t.task_id}", "down", dir="down")),
        ("debug it", f'<code class="copy">ember replay {esc(t.task_id)} --pdb</code>'),
    ])
    results = sorted(data.results_of(log, [bytes.fromhex(t.task_id)]))
    runs = [[esc(a["attempt"]), state_badge(a["state"]), esc((a["node_id"] or "-")[:8]),
             when(a.get("finished_at")), _run_kind(t, i),
             f'<pre class="traceback">{esc(cut(a["error"]))}</pre>' if a.get("error") else "-"]
            for i, a in enumerate(t.attempts)]
    body = (spec + "<h2>arguments</h2><ul class=\"args\">" + args + "</ul>"
            + "<h2>results</h2><ul>" + ("".join(f"<li>{object_link(o)}</li>" for o in results) or "<li>(none logged)</li>")
            + "</ul>"
            + "<h2>attempts</h2>" + table(["attempt", "state", "node", "ended", "why it ran", "error"], runs)
            + ('<h2>error</h2><pre class="traceback">' + esc(cut(t.derived_error)) + "</pre>"
               if t.derived_error and not t.attempts else ""))
    return Page(f"task {t.display_name}", body, _task_json(t), t.state == TaskState.SUBMITTED,
                _job_crumbs(t.job_id))


def _run_kind(t: TaskRecord, index: int) -> str:
    if index == 0:
        return "first run"
    before = t.attempts[index - 1]["state"]
    return "rebuild (results lost)" if before == TaskState.FINISHED else "retry"


def _task_json(t: TaskRecord) -> dict[str, Any]:
    out = {k: v for k, v in dataclasses.asdict(t).items() if k != "args"}
    out["args"] = [{"name": n, "shown": s, "object_id": ref} for n, s, ref in arg_items(t.args)]
    out["name"], out["state"] = t.display_name, t.state
    return row_json_dict(out)


def row_json_dict(value: Any) -> Any:
    """Timestamps in nested data as ISO 8601."""
    if isinstance(value, dict):
        return {k: row_json_dict(v) for k, v in value.items()}
    if isinstance(value, list):
        return [row_json_dict(v) for v in value]
    return value.isoformat() if hasattr(value, "isoformat") else value


# -- objects -------------------------------------------------------------------------------


def rebuild_verdict(obj: ObjectRecord, creator: TaskRecord | None) -> str:
    """Why the object could, or could not, be made again if its copies went."""
    if obj.origin == "return":
        if creator is None:
            return "no: its creating task is not in the log"
        if creator.actor_id is not None:
            return ("yes, from its durable copy (an actor's result is kept in the log)" if obj.has_durable_copy
                    else "only by replaying its actor's calls in order (no durable copy)")
        return f"yes: by running {creator.display_name} again (same task id, next attempt) once its inputs are back"
    if obj.has_durable_copy:
        return f"yes: from its durable copy in the log ({obj.origin})"
    return f"no: a {obj.origin} has no lineage, and no durable copy was kept"


def object_page(log: LineageLog, object_id: str, q: Query) -> Page:
    o = log.object(object_id.lower())
    creator = None
    try:
        creator = log.task(o.task_id)
    except KeyError:
        pass
    maker = task_link(o.task_id, f"{creator.display_name} ({short_id(o.task_id)})" if creator else o.task_id)
    rebuilt = creator is not None and creator.rebuilt > 0
    body = facts([
        ("created by", maker + (f" ({esc(o.origin)})" if o.origin != "return" else "")),
        ("job", link(f"/job/{o.job_id}", o.job_id)), ("size", esc(human_size(o.size))),
        ("state", state_badge(ObjectState.LOST if o.lost and not rebuilt else o.state)),
        ("created", when(o.created_at)), ("first copy on node", esc(o.node_id or "-")),
        ("copies now", esc(", ".join(n[:8] for n in o.locations) or "none known")),
        ("where", esc(object_place(o, rebuilt))), ("durable copy", "yes" if o.has_durable_copy else "no"),
        ("rebuildable", esc(rebuild_verdict(o, creator))),
        ("lineage", link(f"/lineage/{o.object_id}", "up", dir="up") + " · "
         + link(f"/lineage/{o.object_id}", "down", dir="down")),
    ])
    json_data = {**row_json_dict(dataclasses.asdict(o)), "rebuildable": rebuild_verdict(o, creator)}
    return Page(f"object {short_id(o.object_id)}", body, json_data, crumbs=_job_crumbs(o.job_id))


# -- timeline ------------------------------------------------------------------------------


def timeline_page(log: LineageLog, job: str, q: Query) -> Page:
    offset = q.integer("offset", 0, 0, 100_000_000)
    limit = q.integer("limit", data.RUNS_MAX, 1, data.RUNS_MAX)
    r = log.job(job)
    runs = data.timeline_runs(log, bytes.fromhex(r.job_id), offset, limit)
    starts = [x.began_at for x in runs if x.began_at] + ([r.started_at] if not offset and r.started_at else [])
    ends = [x.ended_at for x in runs if x.ended_at]
    t0 = min(starts, default=r.started_at)
    t1 = max(ends + ([r.ended_at] if r.ended_at and len(runs) < limit else []), default=t0)
    deaths = data.deaths(log, r.cluster_id, t0, t1) if t0 else []
    procs = data.processes(log, r.cluster_id, t0, t1) if t0 else []
    lanes, bars, marks = _lanes(runs, procs, deaths, t0, t1)
    picture = timeline_svg(lanes, bars, marks, t0, t1) if t0 and runs else "<p>(no run logged yet)</p>"
    legend = ('<p class="legend"><span class="k s-finished">run</span><span class="k retry">retry</span>'
              '<span class="k rebuild">rebuild</span><span class="k s-failed">failed</span>'
              '<span class="k life">a process alive</span><span class="k death">process or node death</span></p>'
              '<p class="hint">A lane per node, and under it a lane per process of the node (its store, '
              "scheduler, workers and actors' workers) with the process's life behind the runs its worker "
              "logged, from each run's start to its end. A run whose start or worker the log lacks (an older "
              "log; a run that never reached a worker) sits in its node's lane, from the task's submission "
              "(a first run) or from its end less the first run's time (a later one), drawn dashed.</p>")
    death_rows = [[when(d.at), esc(d.kind), esc(d.pid or "-"), esc((d.node_id or "-")[:8]), esc(d.cause)]
                  for d in deaths]
    body = (legend + f'<div class="scroll">{picture}</div>'
            + pager(f"/job/{r.job_id}/timeline", {"limit": limit if limit != data.RUNS_MAX else None},
                    offset, limit, len(runs))
            + "<h2>deaths</h2>" + table(["at", "what", "pid", "node", "cause"], death_rows))
    json_data = {"runs": [row_json(x) for x in runs], "deaths": [row_json(d) for d in deaths],
                 "processes": [row_json(p) for p in procs]}
    return Page(f"timeline of job {r.job_id}", body, json_data, r.state == JobState.RUNNING,
                _job_crumbs(r.job_id))


def _lanes(runs: list[data.Run], procs: list[data.Process], deaths: list[data.Death], t0: Any,
           t1: Any) -> tuple[list[str], list[TimelineBar], list[Mark]]:
    """A lane per node (its runs) and under it one per process of the node (its life); deaths as marks."""
    def node_lane(node_id: str | None) -> str:
        return f"node {node_id[:8]}" if node_id else "node ?"

    def proc_lane(p: Any) -> str:
        return f"  {p.actor_class + ' actor' if p.actor_class else p.kind} {p.pid}"

    nodes = sorted({node_lane(x.node_id) for x in runs} | {node_lane(p.node_id) for p in procs})
    by_node: dict[str, list[str]] = {n: [] for n in nodes}
    for p in procs:
        by_node[node_lane(p.node_id)].append(proc_lane(p))
    lanes = [lane for n in nodes for lane in [n, *dict.fromkeys(by_node[n])]]
    # A run's worker is its (node, pid): each attempt is logged with the node its worker ran on.
    worker_lanes = {(p.node_id, p.pid): proc_lane(p) for p in procs if p.kind == ProcessKind.WORKER}

    def run_lane(x: data.Run) -> str:
        fallback = node_lane(x.node_id)
        return worker_lanes.get((x.node_id, x.worker_pid), fallback) if x.worker_pid else fallback

    bars = [TimelineBar(run_lane(x), x.began_at or x.ended_at, x.ended_at,
                        f"{x.name} · attempt {x.attempt} · {x.state}" + (" · rebuild" if x.rebuild else "")
                        + ("" if x.began_logged else " · start estimated")
                        + (f" · {x.error.strip().splitlines()[-1]}" if x.error else ""),
                        tuple(c for c, on in (("rebuild", x.rebuild), ("retry", x.attempt > 0 and not x.rebuild),
                                               (f"s-{x.state.lower()}", True), ("estimated", not x.began_logged))
                              if on), f"/task/{x.task_id}")
            for x in runs if x.ended_at]
    bars += [TimelineBar(proc_lane(p), max(p.started_at, t0), min(p.ended_at or t1, t1),
                         f"{p.kind} {p.pid}: {p.started_at:%H:%M:%S.%f} to "
                         + (f"{p.ended_at:%H:%M:%S.%f} ({p.death_cause or 'ended'})" if p.ended_at else "now"),
                         (BEHIND, f"k-{p.kind}")) for p in procs if p.started_at and t0 and t1]
    pids = {(p.node_id, p.pid): proc_lane(p) for p in procs}
    marks = [Mark(pids.get((d.node_id, d.pid), node_lane(d.node_id)), d.at,
                  f"{d.kind} {d.pid or ''} died: {d.cause}", (f"d-{d.kind}",)) for d in deaths if d.node_id]
    return lanes, bars, marks


# -- actors and nodes ----------------------------------------------------------------------


def actors_page(log: LineageLog, job: str, q: Query) -> Page:
    offset, limit = q.paging()
    r = log.job(job)
    rows = log.actors(job=r.job_id, limit=limit, offset=offset)
    cells = [[link(f"/actor/{a.actor_id}", a.actor_id, "id"), esc(a.class_name), esc(a.name or "-"),
              state_badge(a.state), str(a.restarts), f"{a.calls:,}", esc((a.node_id or "-")[:8]),
              _short(a.death_cause)] for a in rows]
    body = (table(["actor", "class", "name", "state", "restarts", "calls", "node", "death cause"], cells)
            + pager(f"/job/{r.job_id}/actors", {}, offset, limit, len(rows)))
    return Page(f"actors of job {r.job_id}", body, [row_json(a) for a in rows], r.state == JobState.RUNNING,
                _job_crumbs(r.job_id))


def actor_page(log: LineageLog, actor_id: str, q: Query) -> Page:
    offset, limit = q.paging()
    actor_bytes, job_id, class_name, name, max_restarts, creation, created_at = data.actor_row(log, actor_id)
    lives = data.actor_lives(log, actor_id)
    calls = data.actor_calls(log, actor_id, offset, limit)
    life_rows = [[str(i), "start" if i == 0 else "restart", esc((x.node_id or "-")[:8]), esc(x.pid or "-"),
                  when(x.started_at), when(x.ended_at), esc(x.death_cause or ("-" if x.ended_at is None else "?")),
                  f"{x.replayed:,}" if i else "-"] for i, x in enumerate(lives)]
    call_rows = [[esc(seq), task_link(t.hex(), short_id(t.hex())), esc(method or "?"), state_badge(state), str(n)]
                 for seq, t, method, state, n in calls]
    body = (facts([("class", esc(class_name)), ("name", esc(name or "-")), ("job", link(f"/job/{job_id.hex()}", job_id.hex())),
                   ("created", when(created_at)), ("constructor", task_link(creation.hex())),
                   ("max restarts", esc(max_restarts)), ("restarts", str(max(len(lives) - 1, 0)))])
            + "<h2>lifecycle</h2>" + table(["life", "how", "node", "pid", "started", "ended", "cause of its end",
                                            "calls replayed"], life_rows)
            + "<h2>calls, in order</h2>" + table(["seq", "task", "method", "state", "runs"], call_rows)
            + pager(f"/actor/{actor_id}", {}, offset, limit, len(calls)))
    json_data = {"actor_id": actor_bytes.hex(), "job_id": job_id.hex(), "class_name": class_name, "name": name,
                 "lives": [row_json(x) for x in lives],
                 "calls": [{"seq": s, "task_id": t.hex(), "method": m, "state": st, "runs": n}
                           for s, t, m, st, n in calls]}
    return Page(f"actor {class_name}", body, json_data, any(x.ended_at is None for x in lives),
                _job_crumbs(job_id.hex()))


def nodes_page(log: LineageLog, job: str, q: Query) -> Page:
    offset, limit = q.paging()
    r = log.job(job)
    rows = log.nodes(job=r.job_id, limit=limit, offset=offset)
    deaths = data.deaths(log, r.cluster_id, None, None)
    by_node: dict[str, list[data.Death]] = {}
    for d in deaths:
        if d.kind != ProcessKind.NODE and d.node_id:
            by_node.setdefault(d.node_id, []).append(d)
    cells = [[esc(n.node_id), state_badge(n.state), when(n.started_at), when(n.ended_at),
              esc(_took(n.started_at, n.ended_at) if n.ended_at else "running"), _short(n.death_cause),
              esc(", ".join(f"{d.kind} {d.pid}" for d in by_node.get(n.node_id, [])[:10]) or "-")] for n in rows]
    body = (table(["node", "state", "started", "ended", "lifetime", "death cause", "processes that died"], cells)
            + pager(f"/job/{r.job_id}/nodes", {}, offset, limit, len(rows)))
    return Page(f"nodes of job {r.job_id}", body, [row_json(n) for n in rows], r.state == JobState.RUNNING,
                _job_crumbs(r.job_id))

