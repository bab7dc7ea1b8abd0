"""``ember.timeline`` and ``ember timeline``: a Chrome trace of a job's runs, from the durable log.

A lane per worker (trace pid: the node, tid: the worker's pid), each run with
its task id and attempt, rebuilds marked; written again by the CLI after the
cluster is gone. The store kill that makes the rebuild is by pid, of the
store this test's cluster started.
"""

from __future__ import annotations

import json
import os

import numpy as np
from click.testing import CliRunner

import ember
from ember._cli import main
from ember.chaos import processes
from tests.fix_kill import kill_and_wait_for_the_next

BOUND_S = 60.0
ARRAY = 50_000  # float64s, 400 KB: lives in the store, so a store kill loses it


@ember.remote
def zeros():
    return np.zeros(ARRAY)


@ember.remote
def inc(a):
    return a + 1


@ember.remote
def pid_of(_):
    return os.getpid()


@ember.remote
class Counter:
    def __init__(self):
        self.n = 0

    def add(self):
        self.n += 1
        return self.n


def _runs(events):
    return [e for e in events if e["ph"] == "X"]


def _check_perfetto_shape(events):
    """What the trace-event format needs for Perfetto and chrome://tracing to load it."""
    json.dumps(events)
    for e in events:
        assert e["ph"] in ("X", "M", "i") and isinstance(e["pid"], int) and isinstance(e["name"], str)
        if e["ph"] != "M":
            assert isinstance(e["ts"], int) and isinstance(e["tid"], int)
        if e["ph"] == "X":
            assert isinstance(e["dur"], int) and e["dur"] >= 0


def test_a_jobs_timeline_has_every_run_in_its_workers_lane_and_marks_rebuilds(tmp_path):
    ember.init(num_cpus=2)
    try:
        job_id = ember.get_runtime_context().get_job_id()
        chain = [zeros.remote()]
        for _ in range(3):
            chain.append(inc.remote(chain[-1]))
        assert ember.get(chain[-1], timeout=BOUND_S)[0] == 3
        worker_pids = set(ember.get([pid_of.remote(i) for i in range(6)], timeout=BOUND_S))
        counter = Counter.remote()
        assert ember.get([counter.add.remote() for _ in range(3)], timeout=BOUND_S) == [1, 2, 3]
        kill_and_wait_for_the_next("store")
        assert ember.get(chain[-1], timeout=BOUND_S)[0] == 3  # rebuilt: four runs again
        actor_pid = next(p.pid for p in processes() if p.actor_id == counter._actor_id.hex())

        path = tmp_path / "trace.json"
        assert ember.timeline(str(path)) is None
        events = json.loads(path.read_text())
        assert events == ember.timeline()
    finally:
        ember.shutdown()
    _check_perfetto_shape(events)
    runs = _runs(events)
    # Every run: 4 chain links twice, 6 pid_of, the actor's creation and 3 calls.
    by_name: dict[str, list] = {}
    for run in runs:
        by_name.setdefault(run["name"].removesuffix(" (rebuild)"), []).append(run)
    assert len(by_name["zeros"]) == 2 and len(by_name["inc"]) == 6 and len(by_name["pid_of"]) == 6
    assert len(by_name["Counter.add"]) == 3
    rebuilds = [r for r in runs if r["cat"] == "rebuild"]
    assert len(rebuilds) == 4 and all(r["args"]["attempt"] >= 1 and r["cname"] == "yellow" for r in rebuilds)
    assert all(r["name"].endswith("(rebuild)") for r in rebuilds)
    # Lanes are workers: each pid_of ran in the lane of the pid it returned; the actor's calls in its own.
    lanes = {(e["pid"], e["tid"]): e["args"]["name"] for e in events if e["name"] == "thread_name"}
    assert {r["tid"] for r in by_name["pid_of"]} == worker_pids
    assert {r["tid"] for r in by_name["Counter.add"]} == {actor_pid}
    assert all(lanes[(r["pid"], r["tid"])] == f"worker {r['tid']}" for r in runs if r["tid"])
    assert {r["args"]["task_id"] for r in runs} >= {ref.task_id().hex() for ref in chain}

    # After the cluster is gone: the CLI writes the same runs from the log.
    cli_path = tmp_path / "cli.json"
    result = CliRunner().invoke(main, ["timeline", "--job", job_id, "-o", str(cli_path)])
    assert result.exit_code == 0, result.output
    assert _runs(json.loads(cli_path.read_text())) == runs
    assert ember.timeline(job_id=job_id) == events  # not connected: read from the log


def test_the_cli_refuses_an_unknown_job_in_one_line():
    result = CliRunner().invoke(main, ["timeline", "--job", "ffffffff"])
    assert result.exit_code != 0 and "ffffffff" in result.output and "Traceback" not in result.output
