"""Showing a ``Lineage``: a tree for the terminal, Graphviz dot, and JSON for tools.

The tree puts the asked-for id at the top and what it came from below it: a
task line says what ran (function, or ``Class.method`` for an actor call, with
its arguments shortened: values abbreviated, objects as short ids), its state,
its attempts and rebuilds, how long it took and its error; an object line
says how big it is, where its copy was and whether it was lost or has a
durable copy. A node reached twice is printed once, then named "shown above".
Colours only when asked for (the CLI asks on a terminal); JSON and dot never
carry any.

It must never read the log: everything it shows is in the ``Lineage``.
"""

from __future__ import annotations

import json
import reprlib
from collections.abc import Callable
from typing import Any

import click

from ember.lineage._ids import OBJECT_ID_HEX, TASK_ID_HEX
from ember.lineage._listing import first_line
from ember.lineage._reader import Lineage, ObjectRecord, TaskRecord
from ember.lineage._states import ActorState, JobState, NodeState, ObjectState, TaskState

ARGS_CHARS_MAX = 60
ARG_CHARS_MAX = 24
INLINE_DECODE_BYTES_MAX = 4096  # larger inline arguments are shown by size, not decoded
_ARG_VALUE, _ARG_INLINE, _ARG_REF = 0, 1, 2  # ember.scheduler ArgKind
# Every state's colour on a terminal, for trees here and for ``ember list``'s tables.
STATE_COLOURS: dict[str, str] = {
    TaskState.FINISHED: "green", TaskState.FAILED: "red", TaskState.CANCELLED: "yellow", TaskState.SUBMITTED: "yellow",
    ObjectState.CREATED: "green", ObjectState.LOST: "red",
    ActorState.PENDING: "yellow", ActorState.ALIVE: "green", ActorState.RESTARTING: "yellow", ActorState.DEAD: "red",
    NodeState.ALIVE: "green", NodeState.DEAD: "red",
    JobState.RUNNING: "cyan", JobState.FINISHED: "green", JobState.ABANDONED: "red",
}
_SHORT = reprlib.Repr()
_SHORT.maxstring = _SHORT.maxother = ARG_CHARS_MAX
_SHORT.maxlist = _SHORT.maxtuple = 4
_SHORT.maxdict = 3


def short_id(id_hex: str) -> str:
    """A task id as its process prefix and counter (``6a44c597…000006``); an object adds ``:index``."""
    if len(id_hex) == OBJECT_ID_HEX:
        return f"{short_id(id_hex[:TASK_ID_HEX])}:{int(id_hex[TASK_ID_HEX:], 16)}"
    if len(id_hex) == TASK_ID_HEX:
        return f"{id_hex[:8]}…{id_hex[-6:]}"
    return id_hex


def human_size(size: int | None) -> str:
    if size is None:
        return "? B"
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{int(value)} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def human_duration(seconds: float | None) -> str | None:
    if seconds is None:
        return None
    if seconds < 0.01:
        return "<10 ms"  # what the log can tell: rows are committed in batches ~10 ms apart
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 120:
        return f"{seconds:.1f} s"
    return f"{seconds / 60:.1f} min"


def format_args(encoded: Any) -> str:
    """A task's encoded arguments, shortened: ``(6a44c597…000003:1, 100, scale=0.5)``."""
    if not encoded:
        return "()"
    text = ", ".join(f"{name}={shown}" if name else shown for name, shown, _ in arg_items(encoded))
    if len(text) > ARGS_CHARS_MAX:
        text = text[:ARGS_CHARS_MAX - 1] + "…"
    return f"({text})"


def arg_items(encoded: Any) -> list[tuple[str | None, str, str | None]]:
    """Each argument as (keyword or None, shortened text, the object id it refers to or None)."""
    if not encoded:
        return []
    args, kwargs = encoded
    named = [(None, a) for a in args or ()] + list((kwargs or {}).items())
    return [(name, *_format_arg(a)) for name, a in named]


def _format_arg(arg: Any) -> tuple[str, str | None]:
    try:
        kind = arg[0]
        if kind == _ARG_VALUE:
            return _SHORT.repr(arg[1]), None
        if kind == _ARG_REF:
            ref = bytes(arg[1]).hex()
            return short_id(ref), ref
        if kind == _ARG_INLINE:
            return _format_inline(bytes(arg[1]))
    except (TypeError, IndexError, ValueError):
        pass
    return "?", None


def _format_inline(data: bytes) -> tuple[str, str | None]:
    # An object resolved into the call (a ref whose value was ready) names
    # itself in its header; a by-value argument names nothing.
    from ember.store import deserialize
    from ember.store import read_header

    try:
        object_id, _, _ = read_header(data)
        if object_id and any(object_id):
            return short_id(object_id.hex()), object_id.hex()
        if len(data) > INLINE_DECODE_BYTES_MAX:
            return f"<{human_size(len(data))}>", None
        return _SHORT.repr(deserialize(data)[1]), None
    except Exception:  # a value whose class is not importable here: its size says enough
        return f"<{human_size(len(data))}>", None


def task_summary(task: TaskRecord) -> dict[str, Any]:
    """What a task line shows, as data (the JSON view uses it too)."""
    return {
        "call": f"{task.display_name}{format_args(task.args)}",
        "state": task.state,
        "attempts": task.attempt_count,
        "rebuilt": task.rebuilt,
        "duration": human_duration(task.duration_s),
        "error": first_line(task.error),
        "node": task.attempts[-1]["node_id"] if task.attempts else None,
    }


def object_place(obj: ObjectRecord, rebuilt: bool = False) -> str:
    """Where the object's copy is, or was, or that it was lost (and ``rebuilt`` after)."""
    if obj.lost:
        return f"LOST ({obj.lost})" + (", then rebuilt" if rebuilt else "")
    nodes = obj.locations if obj.locations and not obj.node_ended else [obj.node_id] if obj.node_id else []
    if not nodes:
        return "location not logged"
    where = "inline, owner on node " if obj.inline else "in the store of node "
    return where + ", ".join(n[:8] for n in nodes) + (" (node ended)" if obj.node_ended else "")


# -- tree ------------------------------------------------------------------------------


def lineage_tree(graph: Lineage, color: bool = False) -> str:
    """The lineage as an indented tree, root first; ``color`` adds ANSI colours."""
    style: Callable[..., str] = (lambda text, **kw: click.style(text, **kw)) if color else (lambda text, **kw: text)
    children: dict[str, list[str]] = {}
    for source, target in graph.edges:
        if source not in children.setdefault(target, []):
            children[target].append(source)
    cut, missing = set(graph.cut), set(graph.missing)
    lines: list[str] = []
    shown: set[str] = set()

    def node_line(ident: str) -> str:
        if ident in graph.tasks:
            return _task_line(graph.tasks[ident], style)
        if ident in graph.objects:
            return _object_line(graph.objects[ident], style, _rebuilt_after(graph, graph.objects[ident]))
        if ident in missing:
            return f"object {short_id(ident)}  " + style("not in the log (its creation was never recorded)",
                                                         fg="red")
        return f"task {short_id(ident)}  " + style("not read", dim=True)

    # Iterative depth-first walk: deep chains must not hit Python's recursion
    # limit. An entry is (id, its line's prefix, its children's prefix), or
    # (None, prefix, text) for a note line.
    stack: list[tuple[str | None, str, str]] = [(graph.root, "", "")]
    while stack:
        ident, prefix, rest = stack.pop()
        if ident is None:
            lines.append(prefix + rest)
            continue
        if ident in shown:
            lines.append(prefix + f"{_kind(ident)} {short_id(ident)}  " + style("(shown above)", dim=True))
            continue
        shown.add(ident)
        lines.append(prefix + node_line(ident))
        entries: list[tuple[str | None, str]] = [(kid, "") for kid in children.get(ident, ())]
        if ident in cut:
            what = "the calls before it on its actor" if len(ident) == TASK_ID_HEX else "what made it"
            entries.append((None, style(f"… {what}: not followed (depth {graph.depth} or the task budget)",
                                        dim=True)))
        for index in reversed(range(len(entries))):
            kid, note = entries[index]
            branch, more = ("└── ", "    ") if index == len(entries) - 1 else ("├── ", "│   ")
            stack.append((kid, rest + branch, note if kid is None else rest + more))
    if not graph.complete:
        lines.append(style(f"(graph cut: {len(graph.cut)} input(s) not followed; raise --depth or --max-tasks "
                           "to see further)", dim=True))
    return "\n".join(lines)


def _kind(ident: str) -> str:
    return "object" if len(ident) == OBJECT_ID_HEX else "task"


def _task_line(task: TaskRecord, style: Callable[..., str]) -> str:
    summary = task_summary(task)
    parts = [style(summary["call"], bold=True), f"task {short_id(task.task_id)}",
             style(task.state, fg=STATE_COLOURS.get(task.state))]
    if task.attempt_count > 1:
        parts.append(f"{task.attempt_count} attempts")
    if task.rebuilt:
        parts.append(style(f"rebuilt {task.rebuilt} time{'s' if task.rebuilt > 1 else ''}", fg="yellow"))
    if summary["duration"]:
        parts.append(summary["duration"])
    if task.actor_seq is not None:
        parts.append(f"actor call #{task.actor_seq}")
    if task.strategy != "DEFAULT":
        parts.append(f"strategy {task.strategy}")
    if summary["error"]:
        parts.append(style(summary["error"], fg="red"))
    return "  ".join(parts)


def _rebuilt_after(graph: Lineage, obj: ObjectRecord) -> bool:
    maker = graph.tasks.get(obj.task_id)
    return maker is not None and maker.rebuilt > 0


def _object_line(obj: ObjectRecord, style: Callable[..., str], rebuilt: bool) -> str:
    label = {"return": "object", "put": "put", "argument": "argument"}.get(obj.origin, obj.origin)
    place = object_place(obj, rebuilt)
    parts = [f"{label} {short_id(obj.object_id)}", human_size(obj.size),
             style(place, fg="red", bold=True) if obj.lost else place]
    if obj.has_durable_copy:
        parts.append(style("durable copy", fg="green"))
    return "  ".join(parts)


# -- dot and JSON ----------------------------------------------------------------------------


def lineage_dot(graph: Lineage) -> str:
    """Graphviz dot: boxes for tasks, ellipses for objects, edges in the direction data flowed."""
    lines = ["digraph lineage {", "  rankdir=BT;", '  node [fontname="monospace", fontsize=10];']
    for task in graph.tasks.values():
        summary = task_summary(task)
        label = [summary["call"], f"{short_id(task.task_id)}  {task.state}"]
        if task.rebuilt:
            label.append(f"rebuilt {task.rebuilt}x")
        if summary["error"]:
            label.append(summary["error"])
        colour = "red" if task.state == TaskState.FAILED else "black"
        lines.append(f"  {_dot_id(task.task_id)} [shape=box, color={colour}, label={_dot_label(label)}];")
    for obj in graph.objects.values():
        label = [f"{obj.origin} {short_id(obj.object_id)}", human_size(obj.size),
                 object_place(obj, _rebuilt_after(graph, obj))]
        if obj.has_durable_copy:
            label.append("durable copy")
        lines.append(f"  {_dot_id(obj.object_id)} [shape=ellipse, color={'red' if obj.lost else 'black'}, "
                     f"label={_dot_label(label)}];")
    for ident in graph.missing:
        lines.append(f"  {_dot_id(ident)} [shape=ellipse, style=dashed, "
                     f"label={_dot_label([short_id(ident), 'not in the log'])}];")
    for ident in graph.cut:
        lines.append(f"  {_dot_id(ident)}_cut [shape=plaintext, label=\"…\"];")
        lines.append(f"  {_dot_id(ident)}_cut -> {_dot_id(ident)} [style=dotted];")
    for source, target in graph.edges:
        style = " [style=dashed]" if len(source) == len(target) == TASK_ID_HEX else ""
        if _known(graph, source) and _known(graph, target):
            lines.append(f"  {_dot_id(source)} -> {_dot_id(target)}{style};")
    lines.append("}")
    return "\n".join(lines) + "\n"


def _known(graph: Lineage, ident: str) -> bool:
    return ident in graph.tasks or ident in graph.objects or ident in graph.missing


def _dot_id(ident: str) -> str:
    return ("t" if len(ident) == TASK_ID_HEX else "o") + ident


def _dot_label(lines: list[str]) -> str:
    return json.dumps("\n".join(lines), ensure_ascii=False)


def lineage_json(graph: Lineage) -> dict[str, Any]:
    """The lineage as JSON-ready data: full ids, every field, timestamps in ISO 8601."""
    def when(value: Any) -> str | None:
        return value.isoformat() if value is not None else None

    tasks = []
    for task in graph.tasks.values():
        summary = task_summary(task)
        tasks.append({
            "task_id": task.task_id, "job_id": task.job_id, "name": task.display_name, "call": summary["call"],
            "state": task.state, "attempts": task.attempt_count, "rebuilt": task.rebuilt,
            "duration_s": task.duration_s, "error": task.error, "actor_id": task.actor_id,
            "actor_seq": task.actor_seq, "parent_task_id": task.parent_task_id, "inputs": task.dependencies,
            "submitted_at": when(task.submitted_at), "strategy": task.strategy,
            "runs": [{**run, "finished_at": when(run.get("finished_at")), "started_at": when(run.get("started_at"))}
                     for run in task.attempts],
        })
    objects = [{
        "object_id": obj.object_id, "task_id": obj.task_id, "job_id": obj.job_id, "origin": obj.origin,
        "size": obj.size, "node_id": obj.node_id, "locations": obj.locations, "lost": obj.lost,
        "node_ended": obj.node_ended, "durable_copy": obj.has_durable_copy, "created_at": when(obj.created_at),
    } for obj in graph.objects.values()]
    return {
        "root": graph.root, "depth": graph.depth, "complete": graph.complete, "cut": list(graph.cut),
        "missing": list(graph.missing), "tasks": tasks, "objects": objects,
        "edges": [{"from": source, "to": target} for source, target in graph.edges],
    }
