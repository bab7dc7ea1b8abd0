"""Inspecting a job after its cluster is gone: ``ember list``, ``ember lineage`` and the Python API.

One job runs on a real cluster (a put, a chain, an actor fed by the chain, a
failing task, an actor whose constructor fails, and a chain of store-resident
arrays rebuilt after its store is SIGKILLed); the cluster is shut down; then
everything is read back from the log alone and checked field by field.
"""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
from click.testing import CliRunner

import ember
from ember._cli import main
from tests.fix_kill import kill_and_wait_for_the_next

BOUND_S = 60.0
ARRAY = 50_000  # float64s: 400 KB, lives in the store


@pytest.fixture(scope="module")
def job() -> dict:
    ember.init(num_cpus=2)
    try:
        @ember.remote
        def add(a, b):
            return a + b

        @ember.remote
        def boom(x):
            raise ValueError(f"boom {x}")

        @ember.remote
        def zeros():
            return np.zeros(ARRAY)

        @ember.remote
        def inc(a):
            return a + 1

        @ember.remote
        class Counter:
            def __init__(self, start):
                self.n = start

            def incr(self, k):
                self.n += k
                return self.n

        @ember.remote
        class Broken:
            def __init__(self):
                raise RuntimeError("no constructor for you")

            def ping(self):
                return 1

        seed = ember.put(100)
        first = add.remote(1, 2)
        second = add.remote(first, 3)
        counter = Counter.remote(10)
        call1 = counter.incr.remote(second)
        call2 = counter.incr.remote(1)
        final = add.remote(call2, seed)  # a top-level ref: resolved, so an edge from the put
        assert ember.get(final, timeout=BOUND_S) == 117  # 10 + 6 + 1, + 100
        failed = boom.remote(7)
        with pytest.raises(ValueError):
            ember.get(failed, timeout=BOUND_S)
        broken = Broken.remote()
        with pytest.raises(ember.exceptions.EmberError):
            ember.get(broken.ping.remote(), timeout=BOUND_S)
        chain = [zeros.remote()]
        for _ in range(3):
            chain.append(inc.remote(chain[-1]))
        assert ember.get(chain[-1], timeout=BOUND_S)[0] == 3
        kill_and_wait_for_the_next("store")
        assert ember.get(chain[-1], timeout=BOUND_S)[0] == 3  # rebuilt through the chain
        job_id = ember.get_runtime_context().get_job_id()
        ids = {
            "job": job_id, "seed": seed.hex(), "first": first.hex(), "second": second.hex(),
            "call1": call1.hex(), "call2": call2.hex(), "final": final.hex(), "failed": failed.hex(),
            "chain": [r.hex() for r in chain], "counter_creation": None,
        }
        # The rebuilt attempts are logged lazily: wait (bounded) until the log has them.
        deadline = time.monotonic() + BOUND_S
        with ember.lineage.open_log() as log:
            while len(log.task(chain[-1].task_id().hex()).attempts) < 2 and time.monotonic() < deadline:
                time.sleep(0.05)
    finally:
        ember.shutdown()
    return ids


def _task(ref_hex: str) -> str:
    return ref_hex[:32]


def test_tasks_are_listed_newest_first_with_state_attempts_and_error(job):
    with ember.lineage.open_log() as log:
        rows = log.tasks(job=job["job"], limit=100)
        by_id = {r.task_id: r for r in rows}
        assert all(r.job_id == job["job"] for r in rows)
        submitted = [r.submitted_at for r in rows]
        assert submitted == sorted(submitted, reverse=True)
        boom = by_id[_task(job["failed"])]
        assert (boom.name.endswith("boom"), boom.state, boom.error) == (True, "FAILED", "ValueError('boom 7')")
        first = by_id[_task(job["first"])]
        assert first.state == "FINISHED" and first.attempts == 1 and first.rebuilt == 0
        assert first.duration_s is not None and first.duration_s >= 0
        assert by_id[_task(job["call1"])].name.endswith("Counter.incr")  # qualified where it was defined
        creations = sorted(r.name.rsplit(".", 2)[-2] for r in rows if r.name.endswith(".__init__"))
        assert creations == ["Broken", "Counter"]
        broken = next(r for r in rows if r.name.endswith("Broken.__init__"))
        assert broken.state == "FAILED" and "no constructor for you" in broken.error
        assert next(r for r in rows if r.name.endswith("Counter.__init__")).state == "FINISHED"
        rebuilt = [by_id[_task(ref)] for ref in job["chain"]]
        assert all(r.rebuilt == 1 and r.attempts == 2 for r in rebuilt)
        failed_only = log.tasks(job=job["job"], state="failed")
        assert {r.task_id for r in failed_only} == {_task(job["failed"]), broken.task_id}
        assert len(log.tasks(job=job["job"], limit=2)) == 2


def test_objects_actors_nodes_and_jobs_are_listed(job):
    with ember.lineage.open_log() as log:
        objects = {o.object_id: o for o in log.objects(job=job["job"], limit=100)}
        seed = objects[job["seed"]]
        assert (seed.origin, seed.durable_copy) == ("put", True)
        assert objects[job["final"]].origin == "return" and objects[job["final"]].size > 0
        actors = {a.class_name.split(".")[-1]: a for a in log.actors(job=job["job"])}
        assert (actors["Counter"].state, actors["Counter"].calls, actors["Counter"].restarts) == ("DEAD", 2, 0)
        assert "constructor" in actors["Broken"].death_cause
        nodes = log.nodes(job=job["job"])
        assert [(n.state, n.death_cause) for n in nodes] == [("DEAD", "shut down")]
        assert nodes[0].resources["CPU"] == 2
        row = next(j for j in log.jobs(limit=100) if j.job_id == job["job"])
        assert row.state == "FINISHED" and row.tasks == len(log.tasks(job=job["job"], limit=100))
        assert log.job(job["job"][:5]).job_id == job["job"]  # a unique prefix
        with pytest.raises(ember.exceptions.EmberUserError, match="not a state of tasks.*FINISHED"):
            log.tasks(job=job["job"], state="DONE")
        with pytest.raises(ember.lineage.UnknownIdError, match="no job"):
            log.tasks(job="ffffffff")


def test_lineage_walks_through_actor_calls_to_the_put_and_the_chain(job):
    with ember.lineage.open_log() as log:
        graph = log.lineage(job["final"])
    names = sorted(t.display_name.split(".<locals>.")[-1] for t in graph.tasks.values())
    assert names == ["Counter.__init__", "Counter.incr", "Counter.incr", "add", "add", "add"]
    assert graph.complete and not graph.missing
    call1, call2 = _task(job["call1"]), _task(job["call2"])
    assert (call1, call2) in graph.edges  # the call before it on the actor
    assert (job["second"], call1) in graph.edges and (job["seed"], _task(job["final"])) in graph.edges
    creation = next(t for t in graph.tasks.values() if t.display_name.endswith("Counter.__init__"))
    assert (creation.task_id, call1) in graph.edges
    assert graph.objects[job["seed"]].has_durable_copy
    data = graph.to_json()
    assert data["root"] == job["final"] and data["complete"] is True
    assert {t["task_id"] for t in data["tasks"]} == set(graph.tasks)
    by_id = {t["task_id"]: t for t in data["tasks"]}
    assert by_id[call2]["actor_seq"] == 2 and by_id[call2]["call"].endswith("Counter.incr(1)")
    assert by_id[_task(job["first"])]["call"].endswith("(1, 2)")
    tree = graph.to_tree()
    assert tree.splitlines()[0].startswith("object ") and "Counter.incr(1)" in tree and "\x1b[" not in tree
    assert graph.to_dot().startswith("digraph lineage {")

    with ember.lineage.open_log() as log:
        shallow = log.lineage(job["final"], depth=1)
    assert not shallow.complete and len(shallow.tasks) == 1
    assert set(shallow.cut) == {job["call2"]}


def test_lineage_shows_rebuilds_and_the_lost_copy(job):
    with ember.lineage.open_log() as log:
        graph = log.lineage(job["chain"][-1])
    assert len(graph.tasks) == 4 and all(t.rebuilt == 1 for t in graph.tasks.values())
    lost = graph.objects[job["chain"][0]].lost
    assert lost is not None and lost.startswith("store died: ")
    assert "rebuilt 1 time" in graph.to_tree() and "LOST (store died" in graph.to_tree()


def test_the_cli_prints_what_the_api_returns(job):
    from ember.lineage._listing import row_json

    runner = CliRunner()
    out = runner.invoke(main, ["list", "tasks", "--job", job["job"], "--format", "json", "--limit", "100"])
    assert out.exit_code == 0, out.output
    with ember.lineage.open_log() as log:
        assert json.loads(out.output) == [row_json(r) for r in log.tasks(job=job["job"], limit=100)]
        graph = log.lineage(job["final"]).to_json()
    out = runner.invoke(main, ["lineage", job["final"], "--format", "json"])
    assert out.exit_code == 0 and json.loads(out.output) == graph
    table = runner.invoke(main, ["list", "tasks", "--job", job["job"][:6], "--state", "FAILED"])
    assert table.exit_code == 0
    lines = table.output.splitlines()
    assert lines[0].startswith(f"job {job['job']} ") and lines[1].split()[:3] == ["TASK_ID", "NAME", "STATE"]
    assert any(_task(job["failed"]) in line and "ValueError('boom 7')" in line for line in lines[2:])
    tree = runner.invoke(main, ["lineage", job["chain"][-1]])
    assert tree.exit_code == 0 and "rebuilt 1 time" in tree.output and "\x1b[" not in tree.output
    dot = runner.invoke(main, ["lineage", job["final"], "--format", "dot"])
    assert dot.exit_code == 0 and dot.output.startswith("digraph")


@pytest.mark.parametrize("argv, message", [
    (["list", "tasks", "--state", "nope"], "'nope' is not a state of tasks; expected one of SUBMITTED"),
    (["list", "tasks", "--job", "xyz"], "'xyz' is not a job id"),
    (["list", "jobs", "--job", "ab"], "--job does not apply"),
    (["lineage", "1234"], "is not a task id (32 hex digits) or an object id (40)"),
    (["lineage", "ab" * 16], f"no task {'ab' * 16} in the lineage log"),
])
def test_user_mistakes_are_one_line_errors(job, argv, message):
    out = CliRunner().invoke(main, argv)
    assert out.exit_code != 0 and message in out.output
    assert "Traceback" not in out.output and not isinstance(out.exception, ember.exceptions.EmberError)
