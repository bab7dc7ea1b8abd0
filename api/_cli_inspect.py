"""``ember list`` and ``ember lineage``: the lineage log for people (tables, trees) and programs (JSON, dot).

Both read the log through ``ember.lineage.open_log`` and need no running
cluster. A user's mistake (an unknown id, a bad state, an ambiguous job
prefix) ends with one line saying what was expected and a non-zero exit, never
a traceback. Colours only on a terminal; JSON and dot never carry any.

It must never write to the log.
"""

from __future__ import annotations

import datetime as dt
import json
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import click

from ember.exceptions import EmberUserError

KINDS = ("tasks", "objects", "actors", "nodes", "jobs")
ERROR_CHARS_MAX = 60
_GCS_URL_HELP = "PostgreSQL URL of the log (default: EMBER_GCS_URL, else the embedded one under $EMBER_HOME)."


@contextmanager
def _opened_log(gcs_url: str | None) -> Iterator[Any]:
    """The log, with user mistakes turned into a one-line error and exit status 1."""
    from ember.lineage import open_log
    from ember.lineage import SchemaVersionError

    try:
        with open_log(gcs_url) as log:
            yield log
    except (EmberUserError, SchemaVersionError) as exc:
        raise click.ClickException(str(exc)) from None


@click.command("list", help="List a job's tasks, objects or actors, its cluster's nodes, or the jobs, newest first.")
@click.argument("what", type=click.Choice(KINDS))
@click.option("--job", default=None, help="Job id or unique prefix (default: the latest job).")
@click.option("--state", default=None, help="Only rows in this state (e.g. FAILED); case does not matter.")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 100_000), help="Rows at most.")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
@click.option("--function", default=None, help="Tasks: only those whose function (or method) name contains this.")
@click.option("--node", default=None, help="Tasks: only those whose latest run ended on a node id starting so.")
@click.option("--retried", is_flag=True, help="Tasks: only those with more than one attempt.")
@click.option("--rebuilt", is_flag=True, help="Tasks: only those run again to rebuild lost results.")
@click.option("--error", "error_text", default=None, help="Tasks: only those whose latest error contains this.")
@click.option("--gcs-url", default=None, help=_GCS_URL_HELP)
def list_command(what: str, job: str | None, state: str | None, limit: int, fmt: str, function: str | None,
                 node: str | None, retried: bool, rebuilt: bool, error_text: str | None, gcs_url: str | None) -> None:
    from ember.lineage import TaskFilter, row_json

    if what == "jobs" and job is not None:
        raise click.UsageError("--job does not apply to `ember list jobs`")
    where = TaskFilter(function=function, node=node, retried=retried, rebuilt=rebuilt, error=error_text)
    if what != "tasks" and where != TaskFilter():
        raise click.UsageError("--function, --node, --retried, --rebuilt and --error apply to `ember list tasks`")
    with _opened_log(gcs_url) as log:
        if what == "jobs":
            rows, header = log.jobs(state=state, limit=limit), None
        elif what == "tasks":
            rows, header = log.tasks(job=job, state=state, limit=limit, where=where), log.job(job)
        else:
            rows = getattr(log, what)(job=job, state=state, limit=limit)
            header = log.job(job)
    if fmt == "json":
        click.echo(json.dumps([row_json(r) for r in rows], indent=2, ensure_ascii=False))
        return
    color = sys.stdout.isatty()
    if header is not None:
        shown = f"{len(rows)} {what if len(rows) != 1 else what[:-1]}" + (f" in state {state.upper()}" if state else "")
        click.echo(f"job {header.job_id} ({header.entrypoint or '?'}, {header.state}, {header.tasks:,} tasks): "
                   f"{shown}, newest first" + (f" (--limit {limit})" if len(rows) == limit else ""))
    columns, cells = _TABLES[what]
    click.echo(_table(columns, [cells(r) for r in rows], color), color=color)


@click.command("lineage", help="Show what an object or task came from: a tree, Graphviz dot, or JSON.")
@click.argument("ident", metavar="ID")
@click.option("--depth", default=20, show_default=True, type=click.IntRange(1, 10_000),
              help="Task generations to walk back.")
@click.option("--max-tasks", default=1_000, show_default=True, type=click.IntRange(1, 1_000_000),
              help="Tasks to read at most.")
@click.option("--format", "fmt", type=click.Choice(["tree", "dot", "json"]), default="tree", show_default=True)
@click.option("--gcs-url", default=None, help=_GCS_URL_HELP)
def lineage_command(ident: str, depth: int, max_tasks: int, fmt: str, gcs_url: str | None) -> None:
    with _opened_log(gcs_url) as log:
        graph = log.lineage(ident.strip().lower(), depth=depth, tasks_max=max_tasks)
    if fmt == "json":
        click.echo(json.dumps(graph.to_json(), indent=2, ensure_ascii=False))
    elif fmt == "dot":
        click.echo(graph.to_dot(), nl=False)
    else:
        color = sys.stdout.isatty()
        click.echo(graph.to_tree(color=color), color=color)


# -- tables --------------------------------------------------------------------------------


def _table(columns: Sequence[str], rows: list[list[str]], color: bool) -> str:
    from ember.lineage import STATE_COLOURS  # loaded on use: `ember status` need not load the log's readers

    widths = [max([len(c)] + [len(r[i]) for r in rows]) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths)).rstrip()]
    state_at = columns.index("STATE") if "STATE" in columns else -1
    for row in rows:
        cells = [cell.ljust(w) for cell, w in zip(row, widths)]
        if color and state_at >= 0:
            cells[state_at] = click.style(cells[state_at], fg=STATE_COLOURS.get(row[state_at]))
        lines.append("  ".join(cells).rstrip())
    if not rows:
        lines.append("(none)")
    return "\n".join(lines)


def _when(value: dt.datetime | None) -> str:
    return value.astimezone().strftime("%Y-%m-%d %H:%M:%S") if value is not None else "-"


def _short(text: str | None, limit: int = ERROR_CHARS_MAX) -> str:
    if not text:
        return "-"
    return text if len(text) <= limit else text[:limit - 1] + "…"


def _node(node_id: str | None) -> str:
    return node_id[:8] if node_id else "-"


def _task_cells(r: Any) -> list[str]:
    from ember.lineage import human_duration

    return [r.task_id, _short(r.name, 40), r.state, str(r.attempts), str(r.rebuilt), _node(r.node_id),
            _short(r.strategy, 24), human_duration(r.duration_s) or "-", _when(r.submitted_at), _short(r.error)]


def _object_cells(r: Any) -> list[str]:
    from ember.lineage import human_size

    return [r.object_id, r.origin, human_size(r.size), _node(r.node_id), "yes" if r.durable_copy else "-",
            r.state, _when(r.created_at)]


def _actor_cells(r: Any) -> list[str]:
    return [r.actor_id, r.class_name, r.name or "-", r.state, str(r.restarts), str(r.calls), _node(r.node_id),
            _short(r.death_cause)]


def _node_cells(r: Any) -> list[str]:
    cpus = r.resources.get("CPU")
    return [r.node_id, r.state, f"{cpus:g}" if cpus is not None else "-", _when(r.started_at), _when(r.ended_at),
            _short(r.death_cause)]


def _job_cells(r: Any) -> list[str]:
    from ember.lineage import human_duration

    took = (r.ended_at - r.started_at).total_seconds() if r.ended_at and r.started_at else None
    return [r.job_id, r.state, f"{r.tasks:,}", _short(r.entrypoint, 40), _when(r.started_at),
            human_duration(took) or "-"]


_TABLES: dict[str, tuple[tuple[str, ...], Callable[[Any], list[str]]]] = {
    "tasks": (("TASK_ID", "NAME", "STATE", "ATTEMPTS", "REBUILT", "NODE", "STRATEGY", "DURATION", "SUBMITTED",
               "ERROR"),
              _task_cells),
    "objects": (("OBJECT_ID", "ORIGIN", "SIZE", "NODE", "DURABLE", "STATE", "CREATED"), _object_cells),
    "actors": (("ACTOR_ID", "CLASS", "NAME", "STATE", "RESTARTS", "CALLS", "NODE", "DEATH_CAUSE"), _actor_cells),
    "nodes": (("NODE_ID", "STATE", "CPUS", "STARTED", "ENDED", "DEATH_CAUSE"), _node_cells),
    "jobs": (("JOB_ID", "STATE", "TASKS", "ENTRYPOINT", "STARTED", "DURATION"), _job_cells),
}


@click.command("timeline", help="Write a job's runs as a Chrome trace (load it in ui.perfetto.dev or chrome://tracing).")
@click.option("--job", default=None, help="Job id or unique prefix (default: the latest job).")
@click.option("-o", "--output", "output", default="-", show_default=True, type=click.Path(dir_okay=False, allow_dash=True),
              help="File to write the trace to; '-' is stdout.")
@click.option("--gcs-url", default=None, help=_GCS_URL_HELP)
def timeline_command(job: str | None, output: str, gcs_url: str | None) -> None:
    from ember.lineage import chrome_trace

    with _opened_log(gcs_url) as log:
        events = chrome_trace(log, job)
    text = json.dumps(events)
    if output == "-":
        click.echo(text)
        return
    with open(output, "w", encoding="utf-8") as out:
        out.write(text)
    runs = sum(1 for e in events if e.get("ph") == "X")
    lanes = sum(1 for e in events if e.get("name") == "thread_name")
    click.echo(f"wrote {runs:,} runs in {lanes} lanes to {output}", err=True)
