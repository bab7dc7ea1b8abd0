"""The worker pool and the actor table with fake processes and connections: no process is started."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from ember.scheduler import _procutil
from ember.scheduler._node_actors import NodeActors
from ember.scheduler._node_queue import NodeQueue, Spawn
from ember.scheduler._protocol import Op, Outbox
from ember.scheduler._spec import TaskKind, TaskSpec, resource_shape
from ember.scheduler._worker_pool import WORKER_START_TIMEOUT_S, WORKER_STOP_GRACE_S, WorkerPool

_PIDS = itertools.count(50_000)
CPU1 = resource_shape({"CPU": 1})


class FakeProc:
    def __init__(self) -> None:
        self.pid = next(_PIDS)
        self.returncode: int | None = None
        self.signals: list[str] = []

    def poll(self) -> int | None:
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if self.returncode is None:
            self.returncode = -9
        return self.returncode

    def kill(self) -> None:
        self.signals.append("kill")
        self.returncode = -9

    def terminate(self) -> None:
        self.signals.append("term")


class FakeConn:
    def __init__(self, peer: dict) -> None:
        self.peer = peer
        self.closed = False
        self.sent: list[tuple] = []

    def queue(self, msg: tuple) -> None:
        self.sent.append(msg)

    def flush(self, block: bool = True) -> None:
        pass


class FakeGcs:
    def __init__(self) -> None:
        self.deaths: list[tuple[bytes, str]] = []

    def died(self, worker_id: bytes, detail: str) -> None:
        self.deaths.append((worker_id, detail))


@pytest.fixture
def pool(monkeypatch: pytest.MonkeyPatch) -> WorkerPool:
    monkeypatch.setattr(_procutil, "spawn_python", lambda module, args, log_dir, env=None: FakeProc())
    return WorkerPool(Path("/nonexistent"), "node", Path("/nonexistent"))


def connect(pool: WorkerPool, key: int, exec_too: bool = True) -> tuple[FakeConn, FakeConn | None]:
    proc = pool.get(key).proc  # type: ignore[union-attr]
    peer = {"kind": "worker", "pid": proc.pid, "address": f"/w{key}", "worker_id": bytes([key]) * 16}
    control = FakeConn(peer)
    pool.attach(control)  # type: ignore[arg-type]
    exec_conn = None
    if exec_too:
        exec_conn = FakeConn({**peer, "purpose": "exec"})
        pool.attach(exec_conn)  # type: ignore[arg-type]
    return control, exec_conn


def test_connections_are_matched_to_their_worker_by_pid(pool: WorkerPool) -> None:
    w = pool.spawn(1, None, now=0.0)
    control, _ = connect(pool, 1, exec_too=False)
    assert pool.by_conn(control) is w and not w.ready and pool.open(1)  # type: ignore[arg-type]
    connect_exec = FakeConn({"kind": "worker", "pid": w.proc.pid, "purpose": "exec"})
    pool.attach(connect_exec)  # type: ignore[arg-type]
    assert w.ready
    assert pool.attach(FakeConn({"kind": "worker", "pid": 1})) is None  # type: ignore[arg-type]
    control.closed = True
    assert not pool.open(1)


def test_a_worker_that_never_connects_is_a_failed_start_and_connecting_resets_the_count(pool: WorkerPool) -> None:
    pool.spawn(1, None, now=0.0)
    pool.spawn(2, None, now=0.0)
    assert pool.reap(now=WORKER_START_TIMEOUT_S / 2) == []
    connect(pool, 2)
    failed = pool.reap(now=WORKER_START_TIMEOUT_S + 1)
    assert [w.key for w, _ in failed] == [1] and pool.start_failures == 1
    assert failed[0][0].proc.signals == ["kill"]
    assert pool.statistics().start_failures == 1
    pool.spawn(3, None, now=100.0)
    assert pool.statistics().starting == 1
    connect(pool, 3)
    assert pool.start_failures == 0
    assert pool.statistics().workers == 2 and pool.statistics().starting == 0


def test_a_stopped_worker_is_killed_after_its_grace(pool: WorkerPool) -> None:
    w = pool.spawn(1, b"a" * 16, now=0.0)
    control, _ = connect(pool, 1)
    assert pool.stop(1, now=10.0) is w and w.proc.signals == ["term"]
    assert pool.by_conn(control) is None and pool.get(1) is None  # type: ignore[arg-type]
    pool.reap(now=10.0 + WORKER_STOP_GRACE_S / 2)
    assert w.proc.signals == ["term"]
    pool.reap(now=10.0 + WORKER_STOP_GRACE_S + 1)
    assert w.proc.signals == ["term", "kill"]


def test_a_dead_workers_close_reports_how_it_ended(pool: WorkerPool) -> None:
    w = pool.spawn(1, None, now=0.0)
    control, _ = connect(pool, 1)
    w.proc.returncode = 3  # type: ignore[attr-defined]
    died = pool.died(control)  # type: ignore[arg-type]
    assert died is not None and died[0] is w and "exited with code 3" in died[1]
    assert pool.died(control) is None  # type: ignore[arg-type]


def _actor_spec(max_restarts: int) -> TaskSpec:
    actor_id = b"a" * 16
    return TaskSpec(actor_id, TaskKind.ACTOR_CREATION, b"job", "/owner", b"f" * 16, "A", [], None, 0, CPU1,
                    max_restarts, actor_id=actor_id)


def test_an_actor_restarts_once_per_death_of_its_current_process(pool: WorkerPool) -> None:
    queue = NodeQueue({"CPU": 1}, pool, spills=False)
    gcs = FakeGcs()
    actors = NodeActors(queue, pool, gcs, None, Outbox(), {}, clock=lambda: 0.0)  # type: ignore[arg-type]
    subscriber = FakeConn({"kind": "driver"})
    actors.subscribe(subscriber, b"a" * 16)  # type: ignore[arg-type]

    def carry_out(actions: list) -> int:
        (spawn,) = actions
        assert isinstance(spawn, Spawn) and spawn.actor_id == b"a" * 16
        pool.spawn(spawn.worker, spawn.actor_id, now=0.0)
        actors.placed_on(spawn.actor_id, spawn.worker)
        return spawn.worker

    first = carry_out(actors.create(_actor_spec(max_restarts=1), detached=False, meta=None))
    queue.worker_gone(first, now=1.0)
    second = carry_out(actors.process_died(b"a" * 16, first, "it failed to start"))
    assert actors.process_died(b"a" * 16, first, "its close, reported late") == []  # not its process any more
    states = [m for m in subscriber.sent if m[0] == Op.ACTOR_STATE]
    assert [m[5] for m in states] == [True]  # restarting, once
    queue.worker_gone(second, now=2.0)
    assert actors.process_died(b"a" * 16, second, "killed") == []  # out of restarts: dead
    _, _, alive, _, reason, restarting, restarts = subscriber.sent[-1]
    assert (alive, restarting, restarts) == (False, False, 1) and "out of restarts" in reason
    assert queue.resources.available["CPU"] == 1.0


def _placed(pool: WorkerPool, actions: list) -> int:
    (spawn,) = actions
    assert isinstance(spawn, Spawn)
    pool.spawn(spawn.worker, spawn.actor_id, now=0.0)
    return spawn.worker


def test_an_actor_keeps_its_generation_through_restarts_of_its_process_here(pool: WorkerPool) -> None:
    # The fence's generation is the placer's count when it placed the actor here; a restart of the
    # actor's process on this node does not raise it (only a placer does: lineage/_actor_fence.py).
    queue = NodeQueue({"CPU": 1}, pool, spills=False)
    actors = NodeActors(queue, pool, FakeGcs(), None, Outbox(), {}, clock=lambda: 0.0)  # type: ignore[arg-type]
    actor_id = b"a" * 16
    first = _placed(pool, actors.create(_actor_spec(max_restarts=5), detached=False, meta=None, restarts=2))
    assert actors.generation_of(actor_id) == 2
    actors.placed_on(actor_id, first)
    queue.worker_gone(first, now=1.0)
    assert _placed(pool, actors.process_died(actor_id, first, "killed")) != first  # restarted here
    assert actors.generation_of(actor_id) == 2


def test_regression_an_actor_placed_here_ignores_states_relayed_from_the_node_it_ran_on_before(
        pool: WorkerPool) -> None:
    # The network property test (issue 27's hold) hung: a node followed an actor on node x, then got the
    # owner's restart of it (x was cut off); when x came back and fenced its old instance, x's "restarting"
    # was relayed here and turned this node's live instance into a restarting one, for good.
    queue = NodeQueue({"CPU": 1}, pool, spills=False)
    actors = NodeActors(queue, pool, FakeGcs(), None, Outbox(), {}, clock=lambda: 0.0)  # type: ignore[arg-type]
    actor_id = b"a" * 16
    subscriber = FakeConn({"kind": "worker"})
    actors.subscribe(subscriber, actor_id)  # type: ignore[arg-type]
    actors.hosted_elsewhere(actor_id, "x")
    actors.relayed_state(actor_id, True, "/old", None, False, 0)
    worker = _placed(pool, actors.create(_actor_spec(max_restarts=5), detached=False, meta=None, restarts=1))
    actors.placed_on(actor_id, worker)
    actors.ready(actor_id, "/new")
    actors.relayed_state(actor_id, False, None, "its instance here was superseded", True, 1)  # from x
    _, _, alive, address, _, restarting, _ = subscriber.sent[-1]
    assert (alive, address, restarting) == (True, "/new", False)


def test_a_fenced_instance_leaves_its_subscribers_restarting_not_dead(pool: WorkerPool) -> None:
    queue = NodeQueue({"CPU": 1}, pool, spills=False)
    gcs = FakeGcs()
    actors = NodeActors(queue, pool, gcs, None, Outbox(), {}, clock=lambda: 0.0)  # type: ignore[arg-type]
    actor_id = b"a" * 16
    subscriber = FakeConn({"kind": "worker"})
    actors.subscribe(subscriber, actor_id)  # type: ignore[arg-type]
    worker = _placed(pool, actors.create(_actor_spec(max_restarts=5), detached=False, meta=None))
    actors.placed_on(actor_id, worker)
    connect(pool, worker)
    actors.ready(actor_id, "/old")
    actors.gcs_answered([(bytes([worker]) * 16).hex()])  # the worker id connect() gave it
    _, _, alive, address, reason, restarting, _ = subscriber.sent[-1]
    assert (alive, address, restarting) == (False, None, True) and "superseded" in reason
    assert pool.get(worker).proc.signals == ["kill"]  # type: ignore[union-attr]
    assert [d for _, d in gcs.deaths] == ["fenced: a later instance of its actor runs on another node"]
    assert actors.process_died(actor_id, worker, "killed") == []  # its death restarts nothing here
