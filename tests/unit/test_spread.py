"""Ray's hybrid policy with plain data: the node queue's spread over its cluster view, and the global placement.

No processes: a ``NodeQueue`` fed a ``ClusterView`` as the heartbeat's answer
would, and a ``GcsService`` whose nodes are set by hand.
"""

from __future__ import annotations

from ember.lineage import _gcs_service
from ember.lineage._cluster_table import ClusterTable
from ember.lineage._gcs_service import GcsService
from ember.scheduler._cluster_view import SPREAD_THRESHOLD, ClusterView, utilisation
from ember.scheduler._node_queue import Assign, NodeQueue, Spill
from tests.unit.test_node_queue import CPU1, Links, spec, start_workers


def view_of(**free_cpus: float) -> dict:
    return {name: {"total": {"CPU": 1.0}, "available": {"CPU": free}} for name, free in free_cpus.items()}


def spilled(actions: list) -> list[int]:
    return [int.from_bytes(s.task_id, "big") for a in actions if isinstance(a, Spill) for s in a.specs]


def test_utilisation_is_the_most_used_resource():
    assert utilisation({"CPU": 4.0, "GPU": 2.0}, {"CPU": 3.0, "GPU": 0.0}) == 1.0
    assert utilisation({"CPU": 4.0}, {"CPU": 3.0}) == 0.25
    assert utilisation({}, {}) == 0.0


def test_the_view_takes_each_task_off_the_least_utilised_node_until_none_has_room():
    view = ClusterView()
    view.update({"a": {"total": {"CPU": 2.0}, "available": {"CPU": 1.0}},
                 "b": {"total": {"CPU": 2.0}, "available": {"CPU": 2.0}}})
    assert view.take(CPU1)  # b (idle) first
    assert view.take(CPU1) and view.take(CPU1)  # then a and b, at 0.5 each
    assert not view.take(CPU1) and not view.has_room(CPU1)
    view.update(view_of(a=1.0))  # the next heartbeat's answer replaces it
    assert view.has_room(CPU1)


def test_a_malformed_view_entry_is_left_out():
    view = ClusterView()
    view.update({"a": {"total": "junk"}, "b": {"total": {"CPU": 1}, "available": {"CPU": 1}}})
    assert view.nodes() == 1


def test_a_full_node_spills_its_queue_head_at_once_to_nodes_with_room_and_queues_the_rest():
    queue = NodeQueue({"CPU": 1}, Links(), spills=True)
    [worker] = start_workers(queue, 1)
    for n in range(1, 13):
        queue.enqueue(spec(n))
    queue.view.update(view_of(b=1.0, c=1.0))  # type: ignore[union-attr]
    actions = queue.dispatch(now=0.0)
    assert [t for _, t in [(a.worker, int.from_bytes(a.spec.task_id, "big"))
                           for a in actions if isinstance(a, Assign)]][:1] == [1]
    assert spilled(actions)[:2] == [2, 3]  # one for each node with a free CPU, before any pipelining
    # Nobody else has room: the rest pipeline and queue here (and only the backlog's tail spills).
    assert 4 not in spilled(actions)


def test_a_node_with_room_below_the_threshold_keeps_its_tasks():
    queue = NodeQueue({"CPU": 4}, Links(), spills=True)
    start_workers(queue, 4)
    queue.view.update(view_of(b=1.0))  # type: ignore[union-attr]
    queue.enqueue(spec(1))
    assert spilled(queue.dispatch(now=0.0)) == []


def test_a_node_past_the_threshold_sends_to_a_less_utilised_node_with_room():
    queue = NodeQueue({"CPU": 4}, Links(), spills=True)
    start_workers(queue, 4)
    queue.view.update({"b": {"total": {"CPU": 4.0}, "available": {"CPU": 4.0}}})  # type: ignore[union-attr]
    for n in range(1, 5):
        queue.enqueue(spec(n))
    actions = queue.dispatch(now=0.0)
    # Two run here (utilisation 0, then 0.25); at 0.5 (the threshold) the next go to b, idle, while it is
    # less utilised than this node.
    assert SPREAD_THRESHOLD == 0.5
    assert len([a for a in actions if isinstance(a, Assign)]) == 2
    assert spilled(actions) == [3, 4]


def test_a_task_the_global_scheduler_placed_here_is_never_spread_again():
    queue = NodeQueue({"CPU": 1}, Links(), spills=True)
    start_workers(queue, 1)
    queue.view.update(view_of(b=1.0))  # type: ignore[union-attr]
    for n in (1, 2):
        queue.keep_placed(spec(n).task_id)
        queue.enqueue(spec(n))
    assert spilled(queue.dispatch(now=0.0)) == []


def test_a_lone_node_has_no_view():
    queue = NodeQueue({"CPU": 1}, Links(), spills=False)
    assert queue.view is None


# -- the global scheduler --------------------------------------------------------------------


def gcs(*nodes: tuple[str, float, float]) -> GcsService:
    service = GcsService(ClusterTable(None, "c1"), "p1", None, "n1")
    for node_id, total, free in nodes:
        node = service._nodes[node_id] = _gcs_service._Node(node_id, f"grpc://127.0.0.{len(service._nodes) + 1}:1/s",
                                                            {"CPU": total})
        node.available = {"CPU": free}
        node.registered = True
    service.loaded.set()
    return service


def place(service: GcsService, requester: str, count: int, inputs: dict | None = None) -> list[str]:
    tasks = [{"resources": {"CPU": 1.0}, "inputs": inputs or {}} for _ in range(count)]
    return service.place({"node_id": requester, "tasks": tasks})["placements"]


def test_the_global_scheduler_places_on_nodes_with_room_then_on_the_least_loaded():
    service = gcs(("a", 1, 0), ("b", 1, 1), ("c", 4, 1))
    service._nodes["a"].queued = 3
    # b and c have a CPU free each (b idle first), then nobody has room: the least loaded (tasks per
    # CPU, placed ones counted) takes each of the rest, where it queues; never a (4 per CPU).
    placements = place(service, "a", 4)
    assert sorted(placements[:2]) == ["b", "c"]
    assert placements[2:] == ["b", "c"]  # b and c at 1.0 (b first), then b at 2.0 against c's 1.0


def test_the_requester_that_spilled_counts_as_having_no_room():
    service = gcs(("a", 2, 2), ("b", 2, 1))  # a's last heartbeat is stale: it spilled, so it is full
    assert place(service, "a", 1) == ["b"]


def test_large_inputs_draw_a_task_to_their_node_when_it_has_room():
    service = gcs(("a", 1, 0), ("b", 1, 1), ("c", 4, 4))
    holder = service._nodes["b"].endpoint
    assert place(service, "a", 1, inputs={holder: 8 << 20}) == ["b"]  # c is idler; b holds 8 MiB of inputs
    assert place(service, "a", 1, inputs={holder: 1024}) == ["c"]  # small inputs do not draw


def test_the_heartbeat_answers_with_the_other_nodes_free_resources_less_what_was_placed_since():
    service = gcs(("a", 1, 1), ("b", 2, 2))
    place(service, "a", 1)  # to b
    view = service.heartbeat({"node_id": "a", "available": {"CPU": 1.0}})["view"]
    assert view == {"b": {"total": {"CPU": 2}, "available": {"CPU": 1.0}}}


def test_large_inputs_draw_a_task_to_their_busy_node_unless_it_is_much_busier():
    service = gcs(("a", 1, 0), ("b", 1, 0), ("c", 1, 1))
    holder = service._nodes["b"].endpoint
    assert place(service, "a", 1, inputs={holder: 8 << 20}) == ["b"]  # b busy (load 1), c idle: still b
    service._nodes["b"].queued = 8  # far busier than c now
    assert place(service, "a", 1, inputs={holder: 8 << 20}) == ["c"]
