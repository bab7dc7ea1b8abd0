"""The dashboard's rendering, without a log or a browser: escaping, layout, collapsing, recovery times, tokens."""

from __future__ import annotations

import datetime as dt
import re

import pytest

from ember.lineage._dashboard_chaos import recoveries
from ember.lineage._dashboard_data import ChaosRun
from ember.lineage._dashboard_graph import GROUP_MAX, graph_nodes
from ember.lineage._dashboard_html import BadRequest, Page, Query, frame
from ember.lineage._dashboard_server import Dashboard
from ember.lineage._dashboard_svg import NODE_W, DagNode, Shade, Shape, dag_svg, layout, throughput_svg
from ember.lineage._reader import Lineage, ObjectRecord, TaskRecord

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)


def _task(n: int, name: str = "f", deps: tuple[str, ...] = (), attempts: int = 1) -> TaskRecord:
    runs = [{"attempt": i, "state": "FINISHED", "node_id": "n1", "error": None, "finished_at": T0}
            for i in range(attempts)]
    return TaskRecord(f"{n:032x}", "ab" * 4, 1, name, None, None, None, 1, 3, None, list(deps), runs)


def _object(n: int, lost: bool = False) -> ObjectRecord:
    return ObjectRecord(f"{n:032x}00000001", f"{n:032x}", "ab" * 4, "return", 10, False, "CREATED", ["n1"], "n1",
                        T0, "store died: killed" if lost else None)


def test_labels_from_the_log_are_escaped_and_nothing_points_elsewhere():
    nodes = {"a": DagNode("a", "<script>alert(1)</script>", "x\"y", href="/task/a?x=1&y=2", title="<b>")}
    svg = dag_svg(nodes, [])
    assert "<script>" not in svg and "&lt;script&gt;" in svg and "&amp;y=2" in svg
    assert "style=" not in svg and "http" not in svg
    page = frame(Page("<i>", svg, {}))
    assert "<title>&lt;i&gt; · ember</title>" in page
    assert not re.search(r"<script>|style=|https?://", page)  # the CSP allows neither inline code nor styles


def test_a_standalone_page_inlines_its_stylesheet_and_has_no_script():
    page = frame(Page("run", "<p>x</p>", {}, live=True), standalone=True)
    assert "<style>" in page and "<script" not in page and "/static/" not in page and "data-live" not in page


def test_layout_puts_each_generation_below_the_last_and_no_two_nodes_on_each_other():
    nodes = {k: DagNode(k, k) for k in "abcde"}
    edges = [("a", "b"), ("a", "c"), ("b", "d"), ("c", "d"), ("d", "e")]
    layout(nodes, edges)
    assert nodes["a"].y < nodes["b"].y == nodes["c"].y < nodes["d"].y < nodes["e"].y
    assert abs(nodes["b"].x - nodes["c"].x) >= NODE_W


def test_a_large_fan_in_collapses_by_function_and_keeps_its_edges():
    leaves = [_task(i, "leaf") for i in range(1, 41)]
    objects = [_object(i, lost=i == 3) for i in range(1, 41)]
    root = _task(99, "combine", deps=tuple(o.object_id for o in objects), attempts=2)
    edges = [(t.task_id, o.object_id) for t, o in zip(leaves, objects)] + [(o.object_id, root.task_id) for o in objects]
    graph = Lineage(root.task_id, {t.task_id: t for t in [*leaves, root]}, {o.object_id: o for o in objects}, edges)
    nodes, drawn = graph_nodes(graph)
    assert len(nodes) == 3  # 40 leaves, 40 objects, the root
    groups = [n for n in nodes.values() if n.shape is Shape.GROUP]
    assert sorted(n.label for n in groups) == ["40 objects", "40 × leaf"]
    assert any("lost" in n.classes for n in groups)  # a lost member marks its group
    assert len(drawn) == 2 and all(b != a for a, b in drawn)
    assert "rebuilt" in nodes[root.task_id].classes and len(groups) + 1 <= GROUP_MAX


def test_recovery_is_the_first_second_back_at_half_the_usual_rate():
    counts = [10, 10, 10, 0, 0, 2, 9, 10, 10]
    fault = {"at": T0.timestamp() + 3.2, "kind": "kill", "target": "store", "outcome": "hit", "pid": 7}
    run = ChaosRun("00" * 16, None, ["x"], 1, T0, T0 + dt.timedelta(seconds=9), 0, {}, [fault], {}, [])
    (found,) = recoveries(run, 1.0, counts)
    assert found["kind"] == "kill-store" and found["at_s"] == 3.2
    assert found["recovered_after_s"] == pytest.approx(3.8)  # the end of second 6, the first with >= 5
    svg = throughput_svg(counts, 1.0, [Shade(3.2, 7.0, "kill-store", "kill store")])
    assert svg.count('class="fault fault-kill-store"') == 1 and svg.count('class="bar"') == 7


def test_bad_query_values_are_the_users_mistake():
    q = Query({"limit": ["0"], "since": ["yesterday"], "retried": ["maybe"], "offset": ["x"]})
    for read in (q.paging, lambda: q.time("since"), lambda: q.flag("retried")):
        with pytest.raises(BadRequest):
            read()
    assert Query({"since": ["2026-01-01T00:00:00Z"]}).time("since") == T0


def test_the_token_is_required_from_the_url_a_cookie_or_a_bearer_header():
    dashboard = Dashboard("postgresql://unused", token="s3cret")
    assert dashboard.check({}, None, None) == 401
    assert dashboard.check({"token": ["nope"]}, None, None) == 403
    assert dashboard.check({"token": ["s3cret"]}, None, None) == 200
    assert dashboard.check({}, "ember_dashboard=s3cret", None) == 200
    assert dashboard.check({}, "ember_dashboard=other", None) == 403
    assert dashboard.check({}, None, "Bearer s3cret") == 200


def test_a_dropped_connection_is_reopened_once_and_a_bug_is_a_500_without_a_traceback(monkeypatch, capsys):
    import psycopg

    from ember.lineage import _dashboard_server as server

    opened: list[str] = []

    class FakeLog:
        def __init__(self, conninfo: str) -> None:
            opened.append(conninfo)

        def close(self) -> None:
            pass

    calls = {"n": 0}

    def flaky(log: object, q: Query) -> Page:
        calls["n"] += 1
        if calls["n"] == 1:
            raise psycopg.OperationalError("server closed the connection unexpectedly")
        return Page("ok", "<p>fine</p>", {"ok": True})

    def broken(log: object, q: Query) -> Page:
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(server, "LineageLog", FakeLog)
    dashboard = Dashboard("postgresql://somewhere")
    assert dashboard._render(flaky, (), Query({}), True) == (200, "application/json", b'{"ok": true}')
    assert opened == ["postgresql://somewhere"] * 2  # the first connection dropped, a second opened
    status, _, body = dashboard._render(broken, (), Query({}), False)
    assert status == 500 and b"ZeroDivisionError" in body and b"Traceback" not in body
    assert "Traceback" in capsys.readouterr().err  # for whoever runs the dashboard
