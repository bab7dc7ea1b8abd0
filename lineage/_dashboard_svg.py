"""The dashboard's pictures, drawn on the server as SVG: a laid-out DAG, a timeline, a throughput chart.

``layout`` places a directed acyclic graph in layers (a node's layer is the
longest path to it), orders each layer by the mean position of its
neighbours (a few sweeps down and up, Sugiyama's barycentre heuristic) and
returns coordinates; ``dag_svg`` draws it with arrows and a link per node.
``timeline_svg`` draws one lane per node with a bar per run and a mark per
death; ``throughput_svg`` draws bars of work done over time with shaded
intervals (faults, say) laid over them.

Every label and title goes through ``esc``. It must never emit a ``style``
attribute, script or external reference (the pages' CSP forbids them), and
never read the log.
"""

from __future__ import annotations

import datetime as dt
import enum
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import assert_never

from ember.lineage._dashboard_html import esc

SWEEPS = 4
NODE_W = 168
NODE_H = 40
GAP_X = 24
GAP_Y = 56
PAD = 16
LANE_H = 26
CHART_W = 960
CHART_H = 220
LABEL_CHARS_MAX = 24
SUBLABEL_CHARS_MAX = 30  # in the smaller type under a label
BEHIND = "life"  # a timeline bar with this class is its lane's background, not a run


__all__ = ["DagNode", "Shade", "Shape", "TimelineBar", "dag_svg", "layout", "throughput_svg", "timeline_svg"]


class Shape(enum.StrEnum):
    TASK = "task"  # a box
    OBJECT = "object"  # a pill
    GROUP = "group"  # a stacked box: alike nodes collapsed


@dataclass
class DagNode:
    key: str
    label: str
    sublabel: str = ""
    shape: Shape = Shape.TASK
    classes: tuple[str, ...] = ()
    href: str | None = None
    title: str = ""
    x: float = 0.0
    y: float = 0.0
    layer: int = 0


def layout(nodes: dict[str, DagNode], edges: Sequence[tuple[str, str]]) -> tuple[float, float]:
    """Set each node's x and y (sources on top); returns the drawing's width and height."""
    preds: dict[str, list[str]] = {k: [] for k in nodes}
    succs: dict[str, list[str]] = {k: [] for k in nodes}
    for a, b in edges:
        succs[a].append(b)
        preds[b].append(a)
    order = _topological(nodes, preds, succs)
    for key in order:
        nodes[key].layer = max((nodes[p].layer + 1 for p in preds[key]), default=0)
    layers: dict[int, list[str]] = {}
    for key in order:
        layers.setdefault(nodes[key].layer, []).append(key)
    position = {k: float(i) for members in layers.values() for i, k in enumerate(members)}
    depth = len(layers)
    for sweep in range(SWEEPS):
        down = sweep % 2 == 0
        for layer in (range(1, depth) if down else range(depth - 2, -1, -1)):
            neighbours = preds if down else succs
            members = layers[layer]
            members.sort(key=lambda k: (sum(position[n] for n in neighbours[k]) / len(neighbours[k])
                                        if neighbours[k] else position[k]))
            for i, k in enumerate(members):
                position[k] = float(i)
    widest = max((len(m) for m in layers.values()), default=1)
    width = 2 * PAD + widest * (NODE_W + GAP_X) - GAP_X
    for layer, members in layers.items():
        offset = (width - (len(members) * (NODE_W + GAP_X) - GAP_X)) / 2
        for i, key in enumerate(members):
            nodes[key].x = offset + i * (NODE_W + GAP_X)
            nodes[key].y = PAD + layer * (NODE_H + GAP_Y)
    return width, 2 * PAD + depth * (NODE_H + GAP_Y) - GAP_Y


def _topological(nodes: dict[str, DagNode], preds: dict[str, list[str]], succs: dict[str, list[str]]) -> list[str]:
    waiting = {k: len(preds[k]) for k in nodes}
    ready = [k for k in nodes if waiting[k] == 0]
    order: list[str] = []
    while ready:
        key = ready.pop()
        order.append(key)
        for nxt in succs[key]:
            waiting[nxt] -= 1
            if waiting[nxt] == 0:
                ready.append(nxt)
    # A cycle cannot come from the log (an id is made before it is read); if one did, keep its nodes anyway.
    order += [k for k in nodes if k not in set(order)]
    return order


def _short(text: str, chars_max: int = LABEL_CHARS_MAX) -> str:
    return text if len(text) <= chars_max else text[:chars_max - 1] + "…"


def dag_svg(nodes: dict[str, DagNode], edges: Sequence[tuple[str, str]]) -> str:
    """The graph, laid out, as an ``<svg>`` element: each node a link with a tooltip, each edge an arrow."""
    width, height = layout(nodes, edges)
    out = [f'<svg class="dag" width="{width:.0f}" height="{height:.0f}" '
           f'viewBox="0 0 {width:.0f} {height:.0f}" role="img">',
           '<defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" markerHeight="7" '
           'orient="auto-start-reverse"><path d="M 0 0 L 10 5 L 0 10 z" fill="#667"/></marker></defs>']
    for a, b in edges:
        src, dst = nodes[a], nodes[b]
        x1, y1 = src.x + NODE_W / 2, src.y + NODE_H
        x2, y2 = dst.x + NODE_W / 2, dst.y
        mid = (y1 + y2) / 2
        out.append(f'<path class="edge" data-from="{esc(a)}" data-to="{esc(b)}" '
                   f'd="M {x1:.1f} {y1:.1f} C {x1:.1f} {mid:.1f} {x2:.1f} {mid:.1f} {x2:.1f} {y2:.1f}" '
                   'fill="none" stroke="#889" stroke-width="1.4" marker-end="url(#arrow)"/>')
    for node in nodes.values():
        classes = " ".join(("node", node.shape, *node.classes))
        box = _box(node)
        text = (f'<text x="{node.x + NODE_W / 2:.1f}" y="{node.y + 17:.1f}" text-anchor="middle">'
                f"{esc(_short(node.label))}</text>"
                f'<text class="sub" x="{node.x + NODE_W / 2:.1f}" y="{node.y + 32:.1f}" text-anchor="middle">'
                f"{esc(_short(node.sublabel, SUBLABEL_CHARS_MAX))}</text>")
        inner = f"<title>{esc(node.title or node.label)}</title>{box}{text}"
        if node.href:
            inner = f'<a href="{esc(node.href)}">{inner}</a>'
        out.append(f'<g class="{esc(classes)}" data-id="{esc(node.key)}">{inner}</g>')
    out.append("</svg>")
    return "".join(out)


def _box(node: DagNode) -> str:
    match node.shape:
        case Shape.TASK:
            return f'<rect x="{node.x:.1f}" y="{node.y:.1f}" width="{NODE_W}" height="{NODE_H}" rx="6"/>'
        case Shape.OBJECT:
            return (f'<rect x="{node.x:.1f}" y="{node.y:.1f}" width="{NODE_W}" height="{NODE_H}" '
                    f'rx="{NODE_H / 2:.0f}"/>')
        case Shape.GROUP:
            return (f'<rect class="behind" x="{node.x + 5:.1f}" y="{node.y - 5:.1f}" width="{NODE_W}" '
                    f'height="{NODE_H}" rx="6"/><rect x="{node.x:.1f}" y="{node.y:.1f}" width="{NODE_W}" '
                    f'height="{NODE_H}" rx="6"/>')
    assert_never(node.shape)


@dataclass(frozen=True)
class TimelineBar:
    lane: str
    start: dt.datetime
    end: dt.datetime
    label: str
    classes: tuple[str, ...] = ()
    href: str | None = None


@dataclass(frozen=True)
class Mark:
    lane: str
    at: dt.datetime
    label: str
    classes: tuple[str, ...] = ()


def _x(at: dt.datetime, t0: dt.datetime, span_s: float, left: float, width: float) -> float:
    return left + (at - t0).total_seconds() / span_s * width


def _axis(span_s: float, left: float, width: float, top: float, bottom: float) -> list[str]:
    """Vertical grid lines marked in seconds from the left edge, about eight of them."""
    step = next((s for s in (0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1800, 3600, 7200)
                 if span_s / s <= 8), 3600 * max(1, int(span_s / 3600 / 8) + 1))
    out, tick = [], 0.0
    while tick <= span_s + 1e-9:
        x = left + tick / span_s * width
        out.append(f'<line class="grid" x1="{x:.1f}" y1="{top:.1f}" x2="{x:.1f}" y2="{bottom:.1f}"/>'
                   f'<text class="tick" x="{x:.1f}" y="{bottom + 14:.1f}" text-anchor="middle">{tick:g} s</text>')
        tick += step
    return out


def timeline_svg(lanes: list[str], bars: list[TimelineBar], marks: list[Mark], t0: dt.datetime,
                 t1: dt.datetime) -> str:
    """A lane per name in ``lanes``; a bar per run, a mark per death, on one time axis.

    Bars classed ``BEHIND`` fill their lane's height under its runs (a process's life).
    """
    span_s = max((t1 - t0).total_seconds(), 0.001)
    left, width = 150.0, float(CHART_W)
    # Bars of one lane that overlap go on sub-rows, so every run can be seen.
    rows: dict[str, list[dt.datetime]] = {lane: [] for lane in lanes}
    placed = []
    behind = [b for b in bars if BEHIND in b.classes]
    for bar in sorted((b for b in bars if BEHIND not in b.classes), key=lambda b: b.start):
        ends = rows.setdefault(bar.lane, [])
        row = next((i for i, end in enumerate(ends) if end <= bar.start), len(ends))
        if row == len(ends):
            ends.append(bar.end)
        else:
            ends[row] = bar.end
        placed.append((bar, row))
    tops: dict[str, float] = {}
    y = 10.0
    for lane in rows:
        tops[lane] = y
        y += max(len(rows[lane]), 1) * (LANE_H - 8) + 14
    height = y + 24
    out = [f'<svg class="timeline" width="{left + width + 20:.0f}" '
           f'height="{height:.0f}" viewBox="0 0 {left + width + 20:.0f} {height:.0f}">']
    out += _axis(span_s, left, width, 4, y)
    for lane, top in tops.items():
        out.append(f'<text class="lane" x="4" y="{top + 13:.1f}">{esc(_short(lane))}</text>'
                   f'<line class="lane-sep" x1="0" y1="{top - 3:.1f}" x2="{left + width:.1f}" y2="{top - 3:.1f}"/>')
    for bar in behind:  # a lane's background (a process's life): its whole height, under its runs
        if bar.lane not in tops:
            continue
        x = _x(bar.start, t0, span_s, left, width)
        w = max(_x(bar.end, t0, span_s, left, width) - x, 1.5)
        h = max(len(rows[bar.lane]), 1) * (LANE_H - 8) - 4
        out.append(f'<rect class="{esc(" ".join(("run", *bar.classes)))}" x="{x:.1f}" y="{tops[bar.lane]:.1f}" '
                   f'width="{w:.1f}" height="{h:.1f}"><title>{esc(bar.label)}</title></rect>')
    for bar, row in placed:
        x = _x(bar.start, t0, span_s, left, width)
        w = max(_x(bar.end, t0, span_s, left, width) - x, 1.5)
        top = tops[bar.lane] + row * (LANE_H - 8)
        rect = (f'<rect class="{esc(" ".join(("run", *bar.classes)))}" x="{x:.1f}" y="{top:.1f}" '
                f'width="{w:.1f}" height="{LANE_H - 12}"><title>{esc(bar.label)}</title></rect>')
        out.append(f'<a href="{esc(bar.href)}">{rect}</a>' if bar.href else rect)
    for mark in marks:
        if mark.lane not in tops:
            continue
        x = _x(mark.at, t0, span_s, left, width)
        top = tops[mark.lane] - 3
        bottom = top + max(len(rows[mark.lane]), 1) * (LANE_H - 8) + 8
        out.append(f'<g class="{esc(" ".join(("death", *mark.classes)))}"><title>{esc(mark.label)}</title>'
                   f'<line x1="{x:.1f}" y1="{top:.1f}" x2="{x:.1f}" y2="{bottom:.1f}"/>'
                   f'<path d="M {x - 5:.1f} {top:.1f} L {x + 5:.1f} {top:.1f} L {x:.1f} {top + 7:.1f} z"/></g>')
    out.append("</svg>")
    return "".join(out)


@dataclass(frozen=True)
class Shade:
    start_s: float
    end_s: float
    kind: str  # the CSS class suffix, e.g. 'kill-store'
    label: str
    colour: str = "#e8a33d"
    extra: dict[str, str] = field(default_factory=dict)


def throughput_svg(counts: list[int], bucket_s: float, shades: list[Shade], unit: str = "tasks/s") -> str:
    """Bars of ``counts`` per bucket (as a rate per second), with ``shades`` laid over them."""
    span_s = max(len(counts) * bucket_s, bucket_s)
    left, width, top, bottom = 50.0, float(CHART_W), 10.0, float(CHART_H)
    peak = max((c / bucket_s for c in counts), default=0.0) or 1.0
    out = [f'<svg class="throughput" width="{left + width + 20:.0f}" '
           f'height="{bottom + 30:.0f}" viewBox="0 0 {left + width + 20:.0f} {bottom + 30:.0f}">']
    out += _axis(span_s, left, width, top, bottom)
    bar_w = width / max(len(counts), 1)
    for i, count in enumerate(counts):
        if not count:
            continue
        rate = count / bucket_s
        h = rate / peak * (bottom - top)
        out.append(f'<rect class="bar" x="{left + i * bar_w:.1f}" y="{bottom - h:.1f}" '
                   f'width="{max(bar_w - 0.5, 0.8):.1f}" height="{h:.1f}"><title>{i * bucket_s:g} s: '
                   f"{rate:,.1f} {esc(unit)}</title></rect>")
    for shade in shades:  # over the bars, see-through: a fault that hit a busy second still shows
        x = left + max(shade.start_s, 0) / span_s * width
        w = max((min(shade.end_s, span_s) - max(shade.start_s, 0)) / span_s * width, 2.0)
        data = "".join(f' data-{esc(k)}="{esc(v)}"' for k, v in shade.extra.items())
        out.append(f'<rect class="fault fault-{esc(shade.kind)}"{data} x="{x:.1f}" y="{top:.1f}" width="{w:.1f}" '
                   f'height="{bottom - top:.1f}" fill="{esc(shade.colour)}" fill-opacity="0.35">'
                   f"<title>{esc(shade.label)}</title></rect>")
    out.append(f'<text class="tick" x="{left - 6:.1f}" y="{top + 10:.1f}" text-anchor="end">{peak:,.0f}</text>'
               f'<text class="tick" x="{left - 6:.1f}" y="{bottom:.1f}" text-anchor="end">0</text>'
               f'<text class="tick" x="4" y="{(top + bottom) / 2:.1f}">{esc(unit)}</text>'
               f'<line class="axis" x1="{left:.1f}" y1="{bottom:.1f}" x2="{left + width:.1f}" y2="{bottom:.1f}"/>')
    out.append("</svg>")
    return "".join(out)
