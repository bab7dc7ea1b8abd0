"""The dashboard's lineage graph: what an object or task came from (up) or what was made from it (down).

Up is ``LineageLog.lineage`` (the walk ``ember lineage`` prints), down is
``_dashboard_data.descendants``; either ``Lineage`` becomes a laid-out DAG
(``_dashboard_svg``). Tasks are boxes marked by state, by retries and by
rebuilds; objects are pills, lost ones highlighted; an actor's calls are
chained in their logged order (the walk links each call to the one before
it). Where more than ``GROUP_MAX`` tasks of one function (or objects they
made) stand at the same distance from the root, they collapse into one node
that links to the job's tasks of that function: a fan-in of 50,000 leaves
draws as one box.

It must never write to the log, and never draw more than the walk's task
budget allows.
"""

from __future__ import annotations

import enum
from collections import Counter, deque
from typing import assert_never

from ember.lineage._dashboard_data import descendants
from ember.lineage._dashboard_html import Page, Query, esc, facts, href, object_link, task_link
from ember.lineage._dashboard_svg import DagNode, Shape, dag_svg
from ember.lineage._reader import Lineage, LineageLog, ObjectRecord, TaskRecord
from ember.lineage._render import human_size, lineage_json, object_place, short_id
from ember.lineage._states import ObjectState

GROUP_MAX = 6  # more alike nodes than this at one distance collapse into one
DEPTH_DEFAULT = 3
DEPTH_MAX = 50
GRAPH_TASKS_DEFAULT = 300
GRAPH_TASKS_MAX = 2_000


class Direction(enum.StrEnum):
    UP = "up"  # what it came from: ``ember lineage``'s walk
    DOWN = "down"  # what was made from it


__all__ = ["graph_nodes", "lineage_page"]


def lineage_page(log: LineageLog, ident: str, q: Query) -> Page:
    direction = Direction(q.choice("dir", tuple(Direction), Direction.UP))
    depth = q.integer("depth", DEPTH_DEFAULT, 1, DEPTH_MAX)
    tasks_max = q.integer("max_tasks", GRAPH_TASKS_DEFAULT, 1, GRAPH_TASKS_MAX)
    ident = ident.lower()
    match direction:
        case Direction.UP:
            graph, other, verb = log.lineage(ident, depth=depth, tasks_max=tasks_max), Direction.DOWN, "came from"
        case Direction.DOWN:
            graph, other, verb = descendants(log, ident, depth, tasks_max), Direction.UP, "was made from it"
        case _:
            assert_never(direction)
    nodes, edges = graph_nodes(graph)
    options = "".join(f'<option{" selected" if d is direction else ""}>{d.value}</option>' for d in Direction)
    controls = (f'<form class="filters" method="get" action="/lineage/{esc(ident)}">'
                f'<label>direction <select name="dir">{options}</select></label>'
                f'<label>generations <input name="depth" type="number" min="1" max="{DEPTH_MAX}" value="{depth}">'
                f'</label><label>tasks at most <input name="max_tasks" type="number" min="1" '
                f'max="{GRAPH_TASKS_MAX}" value="{tasks_max}"></label><button>show</button></form>')
    summary = facts([
        ("root", (task_link if len(ident) == 32 else object_link)(ident)),
        ("shows", esc(f"what it {verb}: {len(graph.tasks)} tasks, {len(graph.objects)} objects, {depth} "
                      f"generation(s) {direction}")),
        ("complete", "yes" if graph.complete else
         esc(f"no: {len(graph.cut)} id(s) not followed (raise the generations or the task budget)")),
        ("other way", f'<a href="{href(f"/lineage/{ident}", dir=other, depth=depth)}">{esc(other)}</a>'),
    ])
    legend = ('<p class="legend"><span class="k task">task</span><span class="k object">object</span>'
              '<span class="k retried">retried</span><span class="k rebuilt">rebuilt</span>'
              '<span class="k lost">lost</span><span class="k s-failed">failed</span>'
              '<span class="k group">collapsed by function</span></p>')
    body = controls + summary + legend + f'<div class="scroll">{dag_svg(nodes, edges)}</div>'
    data = {**lineage_json(graph), "direction": direction.value,
            "drawn": {"nodes": [{"key": n.key, "label": n.label, "shape": n.shape.value, "classes": list(n.classes)}
                                for n in nodes.values()], "edges": [{"from": a, "to": b} for a, b in edges]}}
    job = next(iter(graph.tasks.values())).job_id if graph.tasks else None
    crumbs = [("jobs", "/")] + ([(f"job {job}", f"/job/{job}")] if job else [])
    return Page(f"lineage of {short_id(ident)}", body, data, crumbs=crumbs)


def graph_nodes(graph: Lineage) -> tuple[dict[str, DagNode], list[tuple[str, str]]]:
    """The lineage as drawable nodes and edges (sources first), alike nodes collapsed by function."""
    nodes: dict[str, DagNode] = {}
    cut = set(graph.cut)
    for task in graph.tasks.values():
        nodes[task.task_id] = _task_node(task, task.task_id in cut)
    for obj in graph.objects.values():
        nodes[obj.object_id] = _object_node(obj, graph, obj.object_id in cut)
    for missing in graph.missing:
        nodes[missing] = DagNode(missing, short_id(missing), "creation not logged", Shape.OBJECT, ("missing",))
    nodes[graph.root].classes += ("root",)
    edges = [(a, b) for a, b in graph.edges if a in nodes and b in nodes]
    return _collapse(graph, nodes, edges)


def _task_node(task: TaskRecord, cut: bool) -> DagNode:
    classes = [f"s-{task.state.lower()}"]
    notes = [task.state.lower()]
    retries = task.attempt_count - 1 - task.rebuilt
    if task.attempt_count > 1 and retries > 0:
        classes.append("retried")
        notes.append(f"{task.attempt_count} attempts")
    if task.rebuilt:
        classes.append("rebuilt")
        notes.append(f"rebuilt {task.rebuilt}×")
    if task.actor_seq is not None:
        notes.insert(0, f"call #{task.actor_seq}")
        classes.append("actor-call")
    if cut:
        classes.append("cut")
    title = f"{task.display_name} · task {task.task_id} · {' · '.join(notes)}"
    if task.error:
        title += f"\n{task.error.strip().splitlines()[-1]}"
    return DagNode(task.task_id, task.display_name, " · ".join(notes), Shape.TASK, tuple(classes),
                   f"/task/{task.task_id}", title)


def _object_node(obj: ObjectRecord, graph: Lineage, cut: bool) -> DagNode:
    lost = bool(obj.lost) or obj.state == ObjectState.LOST
    maker = graph.tasks.get(obj.task_id)
    rebuilt = maker is not None and maker.rebuilt > 0
    classes: tuple[str, ...] = ("lost",) if lost else ()
    if cut:
        classes += ("cut",)
    sub = human_size(obj.size) + (" · LOST" if lost else "") + (" · rebuilt" if lost and rebuilt else "")
    return DagNode(obj.object_id, short_id(obj.object_id), sub, Shape.OBJECT, classes, f"/object/{obj.object_id}",
                   f"object {obj.object_id} ({obj.origin}) · {object_place(obj, rebuilt)}")


def _distances(root: str, edges: list[tuple[str, str]]) -> dict[str, int]:
    """Steps from the root along the edges in either direction (the walk's own generations)."""
    around: dict[str, list[str]] = {}
    for a, b in edges:
        around.setdefault(a, []).append(b)
        around.setdefault(b, []).append(a)
    seen = {root: 0}
    queue = deque([root])
    while queue:
        key = queue.popleft()
        for nxt in around.get(key, ()):
            if nxt not in seen:
                seen[nxt] = seen[key] + 1
                queue.append(nxt)
    return seen


def _collapse(graph: Lineage, nodes: dict[str, DagNode],
              edges: list[tuple[str, str]]) -> tuple[dict[str, DagNode], list[tuple[str, str]]]:
    distance = _distances(graph.root, edges)

    def family(key: str) -> tuple[Shape, str, int]:
        if key in graph.tasks:
            return (Shape.TASK, graph.tasks[key].display_name, distance.get(key, -1))
        maker = graph.tasks.get(graph.objects[key].task_id) if key in graph.objects else None
        return (Shape.OBJECT, maker.display_name if maker else "", distance.get(key, -1))

    groups = Counter(family(k) for k in nodes if k != graph.root)
    big = {f for f, n in groups.items() if n > GROUP_MAX}
    if not big:
        return nodes, edges
    members: dict[tuple[Shape, str, int], list[str]] = {}
    merged: dict[str, str] = {}
    for key in list(nodes):
        fam = family(key)
        if key != graph.root and fam in big:
            members.setdefault(fam, []).append(key)
            merged[key] = f"group:{fam[0].value}:{fam[1]}:{fam[2]}"
    job = next(iter(graph.tasks.values())).job_id if graph.tasks else None
    for fam, keys in members.items():
        shape, name, _ = fam
        flagged = Counter(c for k in keys for c in nodes[k].classes if c in ("lost", "rebuilt", "retried", "s-failed"))
        label = f"{len(keys):,} × {name or 'objects'}" if shape is Shape.TASK else f"{len(keys):,} objects"
        sub = ", ".join(f"{n} {c.removeprefix('s-')}" for c, n in sorted(flagged.items())) or (
            f"made by {name}" if shape is Shape.OBJECT and name else "collapsed")
        link = href(f"/job/{job}/tasks", function=name) if job and name else None
        group_key = merged[keys[0]]
        nodes[group_key] = DagNode(group_key, label, sub, Shape.GROUP, tuple(flagged), link and _unescape(link),
                                   f"{len(keys):,} {shape.value}s of {name or 'one kind'}, collapsed")
        for key in keys:
            del nodes[key]
    kept = list(dict.fromkeys((merged.get(a, a), merged.get(b, b)) for a, b in edges))
    return nodes, [(a, b) for a, b in kept if a != b]


def _unescape(text: str) -> str:
    """``href`` escapes for markup; the SVG drawer escapes again, so it gets the plain link."""
    import html

    return html.unescape(text)


