"""Rendering a Lineage (tree, dot, JSON) from hand-built records: no database, no processes."""

from __future__ import annotations

import datetime as dt
import json

import pytest

from ember.lineage import Lineage, ObjectRecord, TaskRecord
from ember.exceptions import EmberUserError
from ember.lineage._listing import TaskState, check_state, first_line
from ember.lineage._render import format_args, human_duration, human_size, short_id

T0 = dt.datetime(2026, 11, 30, 12, 0, 0, tzinfo=dt.timezone.utc)
PREFIX = "6a44c5973223b516"


def tid(n: int) -> str:
    return f"{PREFIX}{n:016x}"


def oid(n: int, index: int = 1) -> str:
    return f"{tid(n)}{index:08x}"


def task(n: int, name: str = "add", args=((), None), deps=(), runs=1, state="FINISHED", error=None,
         kind=1, method=None, actor_class=None, actor_seq=None) -> TaskRecord:
    attempts = [{"attempt": i, "state": state, "node_id": "e3be4a73c24f", "error": error,
                 "finished_at": T0 + dt.timedelta(milliseconds=12 + i)} for i in range(runs)]
    return TaskRecord(tid(n), "a6fdcbeb", kind, name, None, "ac" * 16 if kind == 3 else None, method, 1, 3,
                      args, list(deps), attempts, actor_class=actor_class, actor_seq=actor_seq, submitted_at=T0)


def obj(n: int, index: int = 1, origin="return", size=61, lost=None, durable=False, ended=True) -> ObjectRecord:
    return ObjectRecord(oid(n, index), tid(n), "a6fdcbeb", origin, size, durable, "CREATED",
                        ["e3be4a73c24f"], "e3be4a73c24f", T0, lost, ended)


def chain_graph() -> Lineage:
    """final = add(incr(x), 5) where x = add(1, 2) and incr is the second call on a Counter."""
    ref = lambda n: (2, bytes.fromhex(oid(n)), "/owner")  # noqa: E731
    tasks = {
        tid(4): task(4, args=([ref(3), (0, 5)], None), deps=[oid(3)]),
        tid(3): task(3, "Counter", args=([ref(1)], None), deps=[oid(1)], kind=3, method="incr",
                     actor_class="Counter", actor_seq=2, runs=2),
        tid(2): task(2, "Counter", kind=2),
        tid(1): task(1, args=([(0, 1), (0, 2)], {"scale": (0, "x" * 100)}), state="FAILED",
                     error="task add raised ValueError('no')\n\nremote traceback:\n..."),
    }
    objects = {oid(4): obj(4), oid(3): obj(3, lost="store died: pid 7 killed by SIGKILL"),
               oid(1): obj(1, durable=True)}
    edges = [(tid(4), oid(4)), (oid(3), tid(4)), (tid(3), oid(3)), (oid(1), tid(3)), (tid(2), tid(3)),
             (tid(1), oid(1))]
    return Lineage(oid(4), tasks, objects, edges)


def test_short_ids_keep_the_process_prefix_and_the_counter():
    assert short_id(tid(6)) == "6a44c597…000006"
    assert short_id(oid(6, 1)) == "6a44c597…000006:1"
    assert short_id("abc") == "abc"


def test_sizes_and_durations_read_well():
    assert [human_size(s) for s in (None, 61, 2048, 5 * 1024 ** 3)] == ["? B", "61 B", "2.0 KiB", "5.0 GiB"]
    assert [human_duration(s) for s in (None, 0.0123, 3.21, 600)] == [None, "12 ms", "3.2 s", "10.0 min"]


def test_arguments_are_shortened_and_refs_become_short_ids():
    encoded = ([(2, bytes.fromhex(oid(3)), "/o"), (0, 100), (0, "y" * 200)], {"k": (0, [1, 2, 3, 4, 5, 6])})
    text = format_args(encoded)
    assert text.startswith("(6a44c597…000003:1, 100, 'yyyyyyyy") and text.endswith("…)")
    assert len(text) <= 62
    assert format_args(([], {"k": (0, [1, 2, 3, 4, 5, 6])})) == "(k=[1, 2, 3, 4, ...])"
    assert format_args(None) == "()"
    assert format_args(([(1, b"not an ember object")], None)) == "(<19 B>)"  # undecodable inline: its size


def test_the_tree_puts_the_root_first_and_says_everything_a_line_should():
    lines = chain_graph().to_tree().splitlines()
    assert lines == [
        "object 6a44c597…000004:1  61 B  inline, owner on node e3be4a73 (node ended)",
        "└── add(6a44c597…000003:1, 5)  task 6a44c597…000004  FINISHED  12 ms",
        "    └── object 6a44c597…000003:1  61 B  LOST (store died: pid 7 killed by SIGKILL), then rebuilt",
        "        └── Counter.incr(6a44c597…000001:1)  task 6a44c597…000003  FINISHED  2 attempts  "
        "rebuilt 1 time  12 ms  actor call #2",
        "            ├── object 6a44c597…000001:1  61 B  inline, owner on node e3be4a73 (node ended)  durable copy",
        "            │   └── add(1, 2, scale='xxxxxxxxx...xxxxxxxxxx')  task 6a44c597…000001  FAILED  12 ms  "
        "ValueError('no')",
        "            └── Counter.__init__()  task 6a44c597…000002  FINISHED  12 ms",
    ]


def test_colours_only_when_asked():
    graph = chain_graph()
    assert "\x1b[" not in graph.to_tree() and "\x1b[" not in graph.to_dot()
    assert "\x1b[" not in json.dumps(graph.to_json())
    assert "\x1b[31m" in graph.to_tree(color=True)  # FAILED and LOST in red


def test_a_node_reached_twice_is_printed_once():
    shared = obj(1)
    tasks = {tid(3): task(3, deps=[oid(1), oid(2)]), tid(2): task(2, deps=[oid(1)]), tid(1): task(1)}
    graph = Lineage(tid(3), tasks, {oid(1): shared, oid(2): obj(2)},
                    [(oid(1), tid(3)), (oid(2), tid(3)), (tid(2), oid(2)), (oid(1), tid(2)), (tid(1), oid(1))])
    tree = graph.to_tree()
    assert tree.count("task 6a44c597…000001") == 1
    assert "object 6a44c597…000001:1  (shown above)" in tree


def test_a_cut_graph_says_where_and_why():
    tasks = {tid(2): task(2, deps=[oid(1)], kind=3, method="m", actor_class="A", actor_seq=5)}
    graph = Lineage(tid(2), tasks, {oid(1): obj(1)}, [(oid(1), tid(2))], depth=1, cut=(oid(1), tid(2)))
    tree = graph.to_tree().splitlines()
    assert tree[1:] == [
        "├── object 6a44c597…000001:1  61 B  inline, owner on node e3be4a73 (node ended)",
        "│   └── … what made it: not followed (depth 1 or the task budget)",
        "└── … the calls before it on its actor: not followed (depth 1 or the task budget)",
        "(graph cut: 2 input(s) not followed; raise --depth or --max-tasks to see further)",
    ]
    assert graph.to_json()["complete"] is False and graph.to_json()["cut"] == [oid(1), tid(2)]
    assert f"o{oid(1)}_cut -> o{oid(1)} [style=dotted];" in graph.to_dot()


def test_a_deep_chain_renders_without_recursion():
    depth = 5_000
    tasks = {tid(n): task(n, deps=[oid(n - 1)] if n > 1 else []) for n in range(1, depth + 1)}
    objects = {oid(n): obj(n) for n in range(1, depth + 1)}
    edges = [(tid(n), oid(n)) for n in range(1, depth + 1)] + [(oid(n - 1), tid(n)) for n in range(2, depth + 1)]
    tree = Lineage(oid(depth), tasks, objects, edges).to_tree()
    assert len(tree.splitlines()) == 2 * depth


def test_dot_and_json_carry_full_ids_and_every_edge():
    graph = chain_graph()
    dot = graph.to_dot()
    assert dot.startswith("digraph lineage {") and dot.rstrip().endswith("}")
    assert f"t{tid(2)} -> t{tid(3)} [style=dashed];" in dot  # the actor's order
    assert f"o{oid(3)} -> t{tid(4)};" in dot
    assert "\\u2026" not in dot  # Graphviz reads UTF-8, not JSON escapes
    data = json.loads(json.dumps(graph.to_json()))
    assert data["root"] == oid(4) and data["complete"] is True
    assert {"from": tid(2), "to": tid(3)} in data["edges"] and len(data["edges"]) == 6
    incr = next(t for t in data["tasks"] if t["task_id"] == tid(3))
    assert (incr["name"], incr["attempts"], incr["rebuilt"], incr["actor_seq"]) == ("Counter.incr", 2, 1, 2)
    assert incr["runs"][1]["finished_at"] == "2026-11-30T12:00:00.013000+00:00"
    lost = next(o for o in data["objects"] if o["object_id"] == oid(3))
    assert lost["lost"].startswith("store died")


def test_states_are_checked_with_the_valid_ones_listed():
    assert check_state("failed", TaskState, "tasks") == "FAILED"
    assert check_state(None, TaskState, "tasks") is None
    with pytest.raises(EmberUserError, match="expected one of SUBMITTED, FINISHED, FAILED, CANCELLED"):
        check_state("DONE", TaskState, "tasks")


def test_the_error_line_is_what_was_raised():
    assert first_line("task f raised ValueError('x')\n\nremote traceback:\n...") == "ValueError('x')"
    assert first_line("WorkerCrashedError: gone") == "WorkerCrashedError: gone"
    assert first_line(None) is None


def test_the_reader_knows_which_objects_lived_inline():
    from ember.lineage._reader import INLINE_BYTES_MAX
    from ember.scheduler._owner import INLINE_BYTES_MAX as RUNTIME_INLINE_BYTES_MAX

    assert INLINE_BYTES_MAX == RUNTIME_INLINE_BYTES_MAX
    assert obj(1, size=INLINE_BYTES_MAX).inline and not obj(1, size=INLINE_BYTES_MAX + 1).inline
    from ember.lineage._render import object_place

    assert object_place(obj(5, size=500_000)) == "in the store of node e3be4a73 (node ended)"
    assert object_place(obj(5, size=500_000, ended=False)) == "in the store of node e3be4a73"
