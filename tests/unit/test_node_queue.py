"""The node scheduler's queue core with plain data: no processes, no sockets, the clock passed in."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from ember.scheduler._node_queue import (
    IDLE_WORKER_TTL_S,
    PIPELINE_DEPTH_BACKLOG,
    STARTS_PER_CPU_MAX,
    SPILL_KEEP_PER_CPU,
    WORKERS_PER_CPU_MAX,
    Admission,
    Assign,
    NodeQueue,
    Spawn,
    Spill,
)
from ember.scheduler._spec import TaskKind, TaskSpec, resource_shape

CPU1 = resource_shape({"CPU": 1})
GPU1 = resource_shape({"CPU": 1, "GPU": 1})


@dataclass
class Links:
    """The workers' connections, as the pool would report them."""

    closed: set[int] = field(default_factory=set)

    def open(self, worker: int) -> bool:
        return worker not in self.closed


def spec(n: int, shape: tuple = CPU1, actor: bool = False) -> TaskSpec:
    task_id = n.to_bytes(16, "big")
    kind = TaskKind.ACTOR_CREATION if actor else TaskKind.NORMAL
    return TaskSpec(task_id, kind, b"job", "/owner", b"f" * 16, "f", [], None, 1, shape, 0,
                    actor_id=task_id if actor else None)


def node(cpus: float = 2, spills: bool = False, **more: float) -> tuple[NodeQueue, Links]:
    links = Links()
    return NodeQueue({"CPU": cpus, **more}, links, spills=spills), links


def start_workers(queue: NodeQueue, count: int, now: float = 0.0) -> list[int]:
    """Workers started and connected, as the service does at start."""
    keys = [queue.new_slot(None, now).key for _ in range(count)]
    for key in keys:
        queue.linked(key, connected=True, ready=True)
    return keys


# Seven tasks for one worker: a backlog (more than BACKLOG_PER_WORKER queued), so tasks 2 and 3 queue
# behind the running task 1 (the queue is a backlog while it holds more than four).
BACKLOG = range(1, 8)


def assigned(actions: list) -> list[tuple[int, int]]:
    return [(a.worker, int.from_bytes(a.spec.task_id, "big")) for a in actions if isinstance(a, Assign)]


def test_a_task_goes_to_an_idle_worker_and_holds_its_resources():
    queue, _ = node(cpus=2)
    w1, w2 = start_workers(queue, 2)
    assert queue.enqueue(spec(1)) is Admission.QUEUED
    assert assigned(queue.dispatch(now=1.0)) == [(w1, 1)]
    assert queue.resources.available["CPU"] == 1.0
    queue.task_done(w1, [spec(1).task_id], now=2.0)
    assert queue.resources.available["CPU"] == 2.0
    assert queue.slot(w1).idle_since == 2.0


def test_fifo_per_shape_and_as_many_starts_as_the_free_resources_would_run():
    queue, _ = node(cpus=2)
    for n in range(1, 4):
        queue.enqueue(spec(n))
    actions = queue.dispatch(now=0.0)
    spawns = [a for a in actions if isinstance(a, Spawn)]
    assert len(spawns) == 2 and {s.actor_id for s in spawns} == {None}  # two CPUs: two of the three run
    assert queue.dispatch(now=0.0) == []  # still starting: no more
    queue.linked(spawns[0].worker, connected=True, ready=True)
    actions = queue.dispatch(now=0.1)
    assert assigned(actions)[0] == (spawns[0].worker, 1)


def test_starts_at_once_are_bounded_per_cpu_and_a_runtime_envs_go_one_at_a_time():
    small = (("CPU", 0.2),)
    queue, _ = node(cpus=2)
    for n in range(1, 11):
        queue.enqueue(spec(n, small))  # all ten would run at once
    spawns = [a for a in queue.dispatch(now=0.0) if isinstance(a, Spawn)]
    assert len(spawns) == 2 * STARTS_PER_CPU_MAX
    env = ("e" * 64, '{"env_vars": {"A": "1"}}')
    queue, _ = node(cpus=2)
    for n in range(1, 4):
        queued = spec(n)
        queued.runtime_env = env
        queue.enqueue(queued)
    spawns = [a for a in queue.dispatch(now=0.0) if isinstance(a, Spawn)]
    assert len(spawns) == 1 and spawns[0].runtime_env == env


def test_a_full_node_without_a_backlog_keeps_tasks_for_the_first_worker_to_free():
    queue, _ = node(cpus=2)
    w1, w2 = start_workers(queue, 2)
    for n in range(1, 6):
        queue.enqueue(spec(n))
    assert assigned(queue.dispatch(now=0.0)) == [(w1, 1), (w2, 2)]  # nothing queues behind a busy worker
    assert queue.queued() == 3
    queue.task_done(w2, [spec(2).task_id], now=1.0)
    assert assigned(queue.dispatch(now=1.0)) == [(w2, 3)]  # whichever frees first takes the next


def test_a_node_full_only_until_a_completion_arrives_does_not_hold_a_task_behind_a_busy_one():
    # Regression: ten sleep(1) tasks of 0.2 CPU on a free 2-CPU node, submitted right after nested
    # tasks whose last completion had not reached the scheduler yet: the node looked full for the
    # tenth, which was pipelined behind a running sleep and took 2 s instead of 1.
    sleep = (("CPU", 0.2),)
    queue, _ = node(cpus=2)
    workers = start_workers(queue, 10)
    queue.enqueue(spec(100, sleep))
    assert assigned(queue.dispatch(now=0.0)) == [(workers[0], 100)]  # finished; its completion in flight
    for n in range(1, 11):
        queue.enqueue(spec(n, sleep))
    got = assigned(queue.dispatch(now=0.1))
    assert [n for _, n in got] == list(range(1, 10)) and len({w for w, _ in got}) == 9
    assert queue.queued() == 1  # the tenth waits here, not behind a running sleep
    queue.task_done(workers[0], [spec(100).task_id], now=0.2)
    assert assigned(queue.dispatch(now=0.2)) == [(workers[0], 10)]


def test_a_long_backlog_pipelines_deeper():
    queue, _ = node(cpus=1)
    (w1,) = start_workers(queue, 1)
    for n in range(1, 21):
        queue.enqueue(spec(n))
    queue.dispatch(now=0.0)
    assert len(queue.slot(w1).assigned) == PIPELINE_DEPTH_BACKLOG


def test_a_worker_whose_connection_closed_gets_nothing():
    queue, links = node(cpus=2)
    w1, w2 = start_workers(queue, 2)
    links.closed.add(w1)
    queue.enqueue(spec(1))
    assert assigned(queue.dispatch(now=0.0)) == [(w2, 1)]


def test_blocked_worker_lends_its_cpu_and_hands_back_what_waits_behind():
    queue, _ = node(cpus=1)
    (w1,) = start_workers(queue, 1)
    for n in BACKLOG:  # a backlog: tasks queue behind the running one
        queue.enqueue(spec(n))
    queue.dispatch(now=0.0)
    assert list(queue.slot(w1).assigned) == [spec(1).task_id, spec(2).task_id, spec(3).task_id]
    queue.blocked(w1, [spec(2).task_id, spec(3).task_id])
    assert queue.resources.available["CPU"] == 1.0
    assert queue.statistics().queued == len(BACKLOG) - 1  # tasks 2 and 3 are back at the front
    actions = queue.dispatch(now=0.0)
    assert [type(a) for a in actions] == [Spawn]  # a new worker for it; the blocked one takes nothing
    queue.unblocked(w1)
    assert queue.resources.available["CPU"] == 0.0  # back, even if that oversubscribes the node
    queue.task_done(w1, [spec(1).task_id], now=1.0)
    assert queue.resources.available["CPU"] == 1.0


def test_a_running_task_takes_back_its_queued_tasks_that_fit_in_what_it_holds():
    queue, _ = node(cpus=1, GPU=1)
    (w1,) = start_workers(queue, 1)
    queue.enqueue(spec(1))
    queue.dispatch(now=0.0)
    for n, shape in ((2, CPU1), (3, GPU1), (4, CPU1)):
        queue.enqueue(spec(n, shape))
    # Asked in its own order; the GPU task does not fit in the one CPU the running task holds.
    asked = [spec(4).task_id, spec(3).task_id, spec(2).task_id, spec(9).task_id]
    assert queue.take_back(w1, asked) == [spec(4).task_id, spec(2).task_id]
    assert queue.statistics().queued == 1  # the GPU task waits, as before
    assert queue.resources.available["CPU"] == 0.0  # the taken ones run on what the running task holds
    assert queue.take_back(w1, [spec(2).task_id]) == []  # taken once
    queue.enqueue(spec(6, shape=()))
    assert queue.take_back(w1, [spec(6).task_id]) == []  # it needs nothing the node lacks: it runs beside
    queue.blocked(w1, [])
    queue.enqueue(spec(5))
    assert queue.take_back(w1, [spec(5).task_id]) == []  # a blocked worker lent its CPU out: nothing to run on


def test_workers_running_tasks_that_hold_cpu_do_not_count_toward_the_cap():
    queue, _ = node(cpus=1)
    tenth = resource_shape({"CPU": 0.1})
    for key in start_workers(queue, WORKERS_PER_CPU_MAX):  # each runs a task holding a tenth of the CPU
        queue.slot(key).assigned[spec(100 + key).task_id] = spec(100 + key, shape=tenth)
        queue.slot(key).shape = tenth
        queue.resources.acquire(tenth)
    queue.enqueue(spec(1, shape=tenth))  # the CPU has room for it: only a worker is missing
    assert sum(isinstance(a, Spawn) for a in queue.dispatch(now=0.0)) == 1


@pytest.mark.parametrize("workers, spawns", [(WORKERS_PER_CPU_MAX - 1, 1), (WORKERS_PER_CPU_MAX, 0)])
def test_task_workers_are_capped_per_cpu(workers, spawns):
    queue, _ = node(cpus=1)
    for key in start_workers(queue, workers):  # each busy with work that holds no CPU
        queue.slot(key).assigned[spec(100 + key).task_id] = spec(100 + key, shape=())
    queue.enqueue(spec(1))
    assert sum(isinstance(a, Spawn) for a in queue.dispatch(now=0.0)) == spawns


def test_a_dead_worker_frees_its_resources_and_returns_its_tasks_to_fail():
    queue, _ = node(cpus=1)
    (w1,) = start_workers(queue, 1)
    for n in BACKLOG:
        queue.enqueue(spec(n))
    queue.dispatch(now=0.0)
    lost = queue.worker_gone(w1, now=1.0)
    assert [s.task_id for s in lost] == [spec(1).task_id, spec(2).task_id, spec(3).task_id]
    assert queue.resources.available["CPU"] == 1.0
    assert queue.worker_gone(w1, now=1.0) == []  # twice: nothing more, nothing released twice
    assert queue.resources.available["CPU"] == 1.0


def test_cancel_takes_a_queued_task_out_or_names_its_worker():
    queue, _ = node(cpus=1)
    (w1,) = start_workers(queue, 1)
    queue.enqueue(spec(1))
    queue.dispatch(now=0.0)
    for n in range(2, 10):  # the node is full and pipelining is bounded: some stay queued
        queue.enqueue(spec(n))
    assert queue.cancel_queued(spec(9).task_id).task_id == spec(9).task_id
    assert queue.cancel_queued(spec(1).task_id) is None
    assert queue.holder(spec(1).task_id) == w1
    assert queue.holder(spec(42).task_id) is None


def test_infeasible_request_is_refused_on_a_lone_node_and_spilled_in_a_cluster():
    alone, _ = node(cpus=2)
    assert alone.enqueue(spec(1, GPU1)) is Admission.INFEASIBLE
    assert "GPU" in alone.infeasible_detail(spec(1, GPU1))
    clustered, _ = node(cpus=2, spills=True)
    assert clustered.enqueue(spec(1, GPU1)) is Admission.SPILL
    clustered.keep_placed(spec(2, GPU1).task_id)  # placed here by the global scheduler: never spilled back
    assert clustered.enqueue(spec(2, GPU1)) is Admission.INFEASIBLE


def test_a_cluster_node_keeps_what_its_cpus_drain_soon_and_spills_the_tail():
    queue, _ = node(cpus=1, spills=True)
    keep = SPILL_KEEP_PER_CPU * 1
    for n in range(1, keep + 6):
        queue.enqueue(spec(n))
    queue.keep_placed(spec(keep + 5).task_id)  # the newest was placed here: it stays
    actions = queue.dispatch(now=0.0)
    spills = [a for a in actions if isinstance(a, Spill)]
    assert len(spills) == 1
    spilled = [int.from_bytes(s.task_id, "big") for s in spills[0].specs]
    assert spilled == list(range(keep + 1, keep + 5))  # oldest first, placed one kept
    assert queue.queued() == keep + 1


def test_a_lone_node_never_spills():
    queue, _ = node(cpus=1)
    for n in range(1, 100):
        queue.enqueue(spec(n))
    assert not any(isinstance(a, Spill) for a in queue.dispatch(now=0.0))


def test_actors_wait_in_order_and_hold_their_resources_for_life():
    queue, _ = node(cpus=1)
    queue.want_actor(b"a" * 16, CPU1)
    queue.want_actor(b"b" * 16, CPU1)
    actions = queue.place_actors(now=0.0)
    assert [(type(a), a.actor_id) for a in actions] == [(Spawn, b"a" * 16)]
    assert queue.actor_pending(b"b" * 16) and not queue.actor_pending(b"a" * 16)
    queue.forget_actor(b"b" * 16)  # it died before it was placed
    assert not queue.actor_pending(b"b" * 16)
    actor_worker = actions[0].worker
    queue.linked(actor_worker, connected=True, ready=True)
    queue.enqueue(spec(1))
    assert assigned(queue.dispatch(now=0.0)) == []  # an actor's worker never takes tasks
    queue.worker_gone(actor_worker, now=1.0)
    assert queue.resources.available["CPU"] == 1.0


def test_idle_workers_beyond_the_cpu_count_stop_after_their_ttl():
    queue, _ = node(cpus=1)
    keys = start_workers(queue, 3, now=0.0)
    assert queue.idle_expired(now=IDLE_WORKER_TTL_S / 2) == []
    expired = queue.idle_expired(now=IDLE_WORKER_TTL_S + 1)
    assert expired == keys[:2]  # down to one per CPU
    assert queue.statistics().workers == 1


def test_drain_fails_everything_queued():
    queue, _ = node(cpus=1)
    for n in range(1, 4):
        queue.enqueue(spec(n))
    assert [int.from_bytes(s.task_id, "big") for s in queue.drain_queued()] == [1, 2, 3]
    assert queue.queued() == 0


@pytest.mark.parametrize("cpus", [1, 2, 4])
def test_resources_balance_after_any_mix_of_done_blocked_and_dead(cpus):
    queue, _ = node(cpus=cpus)
    keys = start_workers(queue, cpus)
    for n in range(1, 4 * cpus + 1):
        queue.enqueue(spec(n))
    queue.dispatch(now=0.0)
    for i, key in enumerate(keys):
        held = list(queue.slot(key).assigned)
        if i % 3 == 0:
            queue.blocked(key, held[1:])
            queue.unblocked(key)
            queue.task_done(key, held[:1], now=1.0)
        elif i % 3 == 1:
            queue.worker_gone(key, now=1.0)
        else:
            queue.task_done(key, held, now=1.0)
    for key in keys:
        if queue.slot(key) is not None and queue.slot(key).assigned:
            queue.task_done(key, list(queue.slot(key).assigned), now=2.0)
    assert queue.resources.available["CPU"] == float(cpus)


def test_a_retiring_worker_takes_no_more_and_is_stopped_once_idle():
    queue, _ = node(cpus=1)
    first, = start_workers(queue, 1)
    for n in BACKLOG:
        queue.enqueue(spec(n))
    assert assigned(queue.dispatch(0.0)) == [(first, 1), (first, 2), (first, 3)]  # one running, two behind
    queue.task_done(first, [(1).to_bytes(16, "big")], 1.0)
    queue.retiring(first, [(2).to_bytes(16, "big"), (3).to_bytes(16, "big")])  # max_calls: 2 and 3 come back
    assert queue.retired(1.0) == [first]
    assert queue.statistics().available["CPU"] == 1.0 and queue.statistics().workers == 0
    actions = queue.dispatch(2.0)
    assert [type(a) for a in actions] == [Spawn]  # 2 and 3 wait for a new worker, not the retired one
    second, = [a.worker for a in actions]
    queue.linked(second, connected=True, ready=True)
    assert assigned(queue.dispatch(3.0)) == [(second, 2), (second, 3)]


def test_a_retiring_worker_still_running_keeps_its_resources_until_done():
    queue, _ = node(cpus=1)
    first, = start_workers(queue, 1)
    queue.enqueue(spec(1))
    queue.dispatch(0.0)
    queue.retiring(first, [])
    assert queue.retired(0.5) == [] and queue.statistics().available.get("CPU", 0.0) == 0.0
    queue.task_done(first, [(1).to_bytes(16, "big")], 1.0)
    assert queue.retired(1.0) == [first] and queue.statistics().available["CPU"] == 1.0


ENV_A = ("a" * 32, '{"env_vars":{"A":"1"}}')
ENV_B = ("b" * 32, '{"env_vars":{"B":"1"}}')


def env_spec(n: int, env: tuple[str, str] | None, actor: bool = False) -> TaskSpec:
    made = spec(n, actor=actor)
    made.runtime_env = env
    return made


def test_a_runtime_env_task_runs_only_on_a_worker_started_in_it():
    queue, _ = node(cpus=3)
    plain = start_workers(queue, 3)
    queue.enqueue(env_spec(1, ENV_A))
    actions = queue.dispatch(now=1.0)
    spawns = [a for a in actions if isinstance(a, Spawn)]
    assert not assigned(actions) and [(s.actor_id, s.runtime_env) for s in spawns] == [(None, ENV_A)]
    queue.enqueue(env_spec(2, ENV_B))
    # One start at a time per environment, not per node: B's worker starts while A's does.
    assert [a.runtime_env for a in queue.dispatch(now=1.1) if isinstance(a, Spawn)] == [ENV_B]
    a_worker, b_worker = spawns[0].worker, spawns[0].worker + 1
    for key in (a_worker, b_worker):
        queue.linked(key, connected=True, ready=True)
    queue.enqueue(spec(3))
    assert sorted(assigned(queue.dispatch(now=2.0))) == sorted([(a_worker, 1), (b_worker, 2), (plain[0], 3)])
    queue.task_done(a_worker, [env_spec(1, ENV_A).task_id], now=3.0)
    queue.enqueue(env_spec(4, ENV_B))  # B's worker is busy, A's idle: another of B's starts
    actions = queue.dispatch(now=3.0)
    assert not assigned(actions) and [a.runtime_env for a in actions if isinstance(a, Spawn)] == [ENV_B]


def test_a_worker_takes_back_only_its_own_environments_tasks():
    queue, _ = node(cpus=1)
    (worker,) = start_workers(queue, 1)
    queue.enqueue(spec(1))
    queue.dispatch(now=0.0)
    queue.enqueue(spec(2))
    queue.enqueue(env_spec(3, ENV_A))
    taken = queue.take_back(worker, [spec(2).task_id, spec(3).task_id])
    assert taken == [spec(2).task_id]  # the env task is never run inline by a worker of another environment


def test_at_the_cap_an_idle_worker_of_another_environment_makes_room():
    queue, _ = node(cpus=1)
    cap = WORKERS_PER_CPU_MAX
    keys = start_workers(queue, cap)
    for key, env in zip(keys[1:], (ENV_A, ENV_B, ENV_A)):
        queue.slot(key).env = env[0]
    queue.enqueue(env_spec(1, ("c" * 32, "{}")))
    actions = queue.dispatch(now=5.0)
    assert [a.runtime_env[0] for a in actions if isinstance(a, Spawn)] == ["c" * 32]
    retired = queue.retired(now=5.0)
    assert len(retired) == 1 and queue.slot(keys[0]) is not None  # an env'd one, not the plain one


def test_idle_runtime_env_workers_stop_after_their_ttl_whatever_the_count():
    queue, _ = node(cpus=2)
    plain = start_workers(queue, 2)
    (env_worker,) = start_workers(queue, 1)
    queue.slot(env_worker).env = ENV_A[0]
    assert queue.idle_expired(now=IDLE_WORKER_TTL_S + 1) == [env_worker]
    assert all(queue.slot(key) is not None for key in plain)


def test_an_actor_is_started_in_its_runtime_env():
    queue, _ = node(cpus=1)
    queue.want_actor(b"x" * 16, CPU1, ENV_A)
    (started,) = queue.place_actors(now=0.0)
    assert started.runtime_env == ENV_A and queue.slot(started.worker).env == ENV_A[0]
