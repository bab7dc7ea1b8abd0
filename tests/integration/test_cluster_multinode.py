"""Work across nodes: tasks spread over three nodes, objects read where they were not made, a node killed.

Each node is a real node daemon (``LocalCluster``) with its own store,
scheduler, relay and transfer service; tasks move between them over gRPC,
objects by chunked gRPC streaming, and a killed node is SIGKILLed whole.
The runtime folder is private to this module.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

import numpy as np
import pytest

import ember
import ember.chaos
from ember.chaos import LocalCluster
from ember.exceptions import AlreadyInitializedError, TaskCancelledError
from tests.fix_cluster import Counter, driver_of, poll_until, run_script

GET_TIMEOUT_S = 120.0


pytestmark = pytest.mark.usefixtures("private_runtime_dir")


@pytest.fixture(scope="module")
def three_nodes() -> Iterator[LocalCluster]:
    """Three one-CPU nodes; node k also has the resource ``node{k}``, to pin tasks to it, and nodes 2
    and 3 have ``spare``, which the driver's node (1) does not."""
    nodes = [{"num_cpus": 1, "resources": {f"node{k}": 1} | ({"spare": 1} if k > 1 else {})} for k in (1, 2, 3)]
    with driver_of(nodes) as cluster:
        yield cluster


@ember.remote
def where(x: int = 0) -> tuple[int, str]:
    return x, ember.get_runtime_context().get_node_id()


@ember.remote
def slow(x: int) -> tuple[int, str]:
    time.sleep(0.02)
    return x, ember.get_runtime_context().get_node_id()


@ember.remote
def sleeper(seconds: float) -> None:
    time.sleep(seconds)


@ember.remote
def filled(n: int, value: int) -> np.ndarray:
    return np.full(n, value, dtype=np.int64)


@ember.remote
def total(array: np.ndarray) -> tuple[int, str]:
    return int(array.sum()), ember.get_runtime_context().get_node_id()


def on(k: int) -> dict:
    return {"resources": {f"node{k}": 0.01}}


def test_each_task_runs_on_the_node_that_has_what_it_asks_for(three_nodes: LocalCluster) -> None:
    ids = [node.node_id for node in three_nodes.nodes]
    results = ember.get([where.options(**on(k)).remote(k) for k in (1, 2, 3, 3, 2, 1)], timeout=GET_TIMEOUT_S)
    assert results == [(1, ids[0]), (2, ids[1]), (3, ids[2]), (3, ids[2]), (2, ids[1]), (1, ids[0])]


def test_a_backlog_on_one_node_spreads_over_all_three(three_nodes: LocalCluster) -> None:
    results = ember.get([slow.remote(i) for i in range(120)], timeout=GET_TIMEOUT_S)
    assert [x for x, _ in results] == list(range(120))
    assert {node for _, node in results} == {node.node_id for node in three_nodes.nodes}


def test_a_task_goes_at_once_to_a_node_with_a_free_cpu(three_nodes: LocalCluster) -> None:
    # Issue 23: twelve 0.2 s tasks from the driver on node 1; each node has one CPU. Queued behind
    # node 1's worker (4 per CPU are kept before any spill), they would all run there; Ray's hybrid
    # policy sends a task to a node that has room now.
    @ember.remote
    def nap(x: int) -> tuple[int, str]:
        time.sleep(0.2)
        return x, ember.get_runtime_context().get_node_id()

    results = ember.get([nap.remote(i) for i in range(12)], timeout=GET_TIMEOUT_S)
    assert [x for x, _ in results] == list(range(12))
    assert {node for _, node in results} == {node.node_id for node in three_nodes.nodes}


def test_an_object_made_on_one_node_is_read_on_another(three_nodes: LocalCluster) -> None:
    ids = [node.node_id for node in three_nodes.nodes]
    big = filled.options(**on(2)).remote(2_000_000, 3)  # 16 MB: in node 2's store
    small = filled.options(**on(2)).remote(10, 5)  # inline at its owner, the driver
    assert ember.get(total.options(**on(3)).remote(big), timeout=GET_TIMEOUT_S) == (6_000_000, ids[2])
    assert ember.get(total.options(**on(3)).remote(small), timeout=GET_TIMEOUT_S) == (50, ids[2])
    assert int(ember.get(big, timeout=GET_TIMEOUT_S).sum()) == 6_000_000  # the driver's node pulls it too


def test_wait_without_fetch_local_finds_an_object_made_elsewhere_without_copying_it(
        three_nodes: LocalCluster) -> None:
    from ember import _runtime

    files = _runtime.core().files  # the driver's node's store (node 1)
    far = filled.options(**on(2)).remote(2_000_000, 7)  # 16 MB: made in node 2's store
    ready, not_ready = ember.wait([far], fetch_local=False, timeout=GET_TIMEOUT_S)
    assert ready == [far] and not_ready == []
    assert not files.exists(far.binary())  # found where it was made, not copied here (as Ray's fetch_local)

    @ember.remote
    def look(refs: list, fetch_local: bool) -> tuple[bool, bool]:
        # A borrower on node 3: ready once the owner said where the object is.
        ready, _ = ember.wait(refs, fetch_local=fetch_local, timeout=GET_TIMEOUT_S)
        return bool(ready), _runtime.core().files.exists(refs[0].binary())

    assert ember.get(look.options(**on(3)).remote([far], False), timeout=GET_TIMEOUT_S)[0]
    assert ember.get(look.options(**on(3)).remote([far], True), timeout=GET_TIMEOUT_S) == (True, True)
    ready, _ = ember.wait([far], timeout=GET_TIMEOUT_S)  # fetch_local=True, the default: copied here first
    assert ready == [far] and files.exists(far.binary())
    assert int(ember.get(far, timeout=GET_TIMEOUT_S).sum()) == 14_000_000


def test_an_object_a_task_put_on_one_node_is_read_by_tasks_on_the_others(three_nodes: LocalCluster) -> None:
    @ember.remote
    def put_there() -> list:
        return [ember.put(np.arange(1_000_000, dtype=np.int64))]  # owned by this worker, on node 3

    @ember.remote
    def read(refs: list) -> int:
        return int(ember.get(refs[0]).sum())

    boxed = put_there.options(**on(3)).remote()
    expected = int(np.arange(1_000_000, dtype=np.int64).sum())
    assert ember.get([read.options(**on(k)).remote(boxed) for k in (1, 2)], timeout=GET_TIMEOUT_S) == [expected] * 2


def test_the_global_scheduler_places_a_task_where_its_large_input_is(three_nodes: LocalCluster) -> None:
    ids = [node.node_id for node in three_nodes.nodes]
    big = filled.options(**on(3)).remote(2_000_000, 1)  # 16 MB in node 3's store
    ember.wait([big], timeout=GET_TIMEOUT_S)
    # Node 3 busy, node 2 idle: by load alone, node 2 would get the tasks that read ``big``.
    busy = sleeper.options(**on(3)).remote(1.0)
    assert poll_until(lambda: ember.available_resources().get("node3", 1.0) < 1.0, 30.0), "node 3 never got busy"
    # Two readers: node 3's load is then 3 tasks per CPU (the sleeper and both), under the global
    # scheduler's locality slack (4.0) by one. With three it was exactly at the slack: anything more
    # counted on node 3 sent the last reader away, as the policy says it should. Seen once, in a
    # fresh-check while other tests ran beside it; what the extra count was is not pinned down.
    reading = [total.options(resources={"spare": 0.01}).remote(big) for _ in range(2)]
    assert ember.get(reading, timeout=GET_TIMEOUT_S) == [(2_000_000, ids[2])] * 2
    ember.get(busy, timeout=GET_TIMEOUT_S)


def test_a_task_no_node_can_run_waits_for_one_as_in_ray(three_nodes: LocalCluster) -> None:
    # A node that has it may join (issue 19): it waits, its owner is warned (test_first_contact_cluster.py).
    ref = where.options(resources={"nowhere": 1}).remote()
    assert ember.wait([ref], timeout=1.0) == ([], [ref])
    ember.cancel(ref)
    with pytest.raises(TaskCancelledError):
        ember.get(ref, timeout=GET_TIMEOUT_S)


def test_a_second_init_in_a_connected_driver_is_refused(three_nodes: LocalCluster) -> None:
    with pytest.raises(AlreadyInitializedError, match="shutdown"):
        ember.init(address=three_nodes.address)
    assert ember.init(address=three_nodes.address, ignore_reinit_error=True)["node_id"] == three_nodes.nodes[0].node_id


@ember.remote
def add_from_a_task(counter: object, k: int) -> tuple[int, str]:
    return ember.get(counter.add.remote(k)), ember.get_runtime_context().get_node_id()  # type: ignore[attr-defined]


def test_an_actor_runs_on_the_node_it_needs_and_takes_calls_from_every_node(three_nodes: LocalCluster) -> None:
    ids = [node.node_id for node in three_nodes.nodes]
    counter = Counter.options(**on(2)).remote()
    assert ember.get([counter.add.remote(1) for _ in range(3)], timeout=GET_TIMEOUT_S) == [1, 2, 3]
    assert ember.get(counter.node.remote(), timeout=GET_TIMEOUT_S) == ids[1]
    # From a task on node 3, whose scheduler learns from the GCS where the actor runs.
    assert ember.get(add_from_a_task.options(**on(3)).remote(counter, 10), timeout=GET_TIMEOUT_S) == (13, ids[2])
    ember.kill(counter)
    with pytest.raises(ember.exceptions.ActorDiedError):
        ember.get(counter.add.remote(1), timeout=GET_TIMEOUT_S)


def test_listing_the_processes_leaves_the_drivers_actors_on_other_nodes_running(three_nodes: LocalCluster) -> None:
    counter = Counter.options(**on(2)).remote()
    assert ember.get(counter.add.remote(1), timeout=GET_TIMEOUT_S) == 1
    listed = {p.node_id for p in ember.chaos.processes() if p.kind == "scheduler"}
    assert listed == {node.node_id for node in three_nodes.nodes}
    # Asking node 2 for its processes opened and closed a connection there: not the driver's exit.
    assert ember.get(counter.add.remote(1), timeout=GET_TIMEOUT_S) == 2
    ember.kill(counter)


def test_a_drivers_objects_on_other_nodes_are_freed_when_it_disconnects(three_nodes: LocalCluster) -> None:
    done = run_script(f"""
        import numpy as np, ember
        ember.init(address={three_nodes.address!r})

        @ember.remote(resources={{"node2": 0.01}})
        def big():
            return np.ones(1_000_000)

        ref = big.remote()
        ember.get(ref)  # pulled to the driver's node too
        print(ref.hex())
        ember.shutdown()
    """)
    assert done.returncode == 0, done.stderr
    oid = done.stdout.split()[-1]
    stores = [three_nodes.nodes[0].session.shm_dir, three_nodes.nodes[1].session.shm_dir]
    assert poll_until(lambda: not any((store / oid).exists() for store in stores), 30.0), \
        f"object {oid} outlived its driver in {[str(s) for s in stores if (s / oid).exists()]}"


def test_an_actor_name_holds_across_the_cluster(three_nodes: LocalCluster) -> None:
    counter = Counter.options(name="shared-counter", **on(2)).remote()
    assert ember.get(counter.add.remote(1), timeout=GET_TIMEOUT_S) == 1

    @ember.remote
    def add_by_name(k: int) -> int:
        return ember.get(ember.get_actor("shared-counter").add.remote(k))

    # Node 3's scheduler never saw the name: it asks the GCS.
    assert ember.get(add_by_name.options(**on(3)).remote(10), timeout=GET_TIMEOUT_S) == 11

    @ember.remote
    def claim_again() -> str:
        try:
            Counter.options(name="shared-counter").remote()
        except ValueError as exc:
            return str(exc)
        return "claimed"

    assert "already exists" in ember.get(claim_again.options(**on(3)).remote(), timeout=GET_TIMEOUT_S)

    @ember.remote
    def names() -> list[str]:
        return ember.util.list_named_actors()

    # Listed from a node that does not host it (node 3 asks the GCS), and from the driver's.
    assert "shared-counter" in ember.get(names.options(**on(3)).remote(), timeout=GET_TIMEOUT_S)
    assert "shared-counter" in ember.util.list_named_actors()
    ember.kill(counter)

    @ember.remote
    def name_free() -> bool:
        try:
            ember.get_actor("shared-counter")
        except ValueError:
            return True
        return False

    assert poll_until(lambda: ember.get(name_free.options(**on(3)).remote(), timeout=GET_TIMEOUT_S), 30.0)
    assert poll_until(lambda: "shared-counter" not in ember.util.list_named_actors(), 30.0)


def test_a_ref_of_another_cluster_is_refused_by_name(three_nodes: LocalCluster) -> None:
    from ember.scheduler._object_ref import ObjectRef

    stranger = ObjectRef(os.urandom(20), "grpc://127.0.0.1:9/tmp/ember-elsewhere/s/driver-0123456789abcdef")
    with pytest.raises(ember.exceptions.ForeignObjectRefError, match="another ember cluster"):
        ember.get(stranger, timeout=GET_TIMEOUT_S)
    ours = filled.options(**on(2)).remote(10, 1)  # a ref of this cluster, owned here
    assert ember.get(ours, timeout=GET_TIMEOUT_S).sum() == 10
