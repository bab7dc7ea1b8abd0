"""`chaos run` and `chaos replay` on real programs: faults fire on logical events, and replay fires them again.

Each test runs the CLI as a user would, in a child process, on a small
ember program in a temporary folder. The CLI kills only processes of the
cluster that program starts (they report to it with the run's token); every
test leaves no process behind, checked by pid.

Faults injected here: SIGKILL of the worker running a chosen task as it
starts, of the object store after every N finished tasks, and of a whole
node of a three-node cluster. What must recover: the task is retried, the
store's (or the node's) objects are rebuilt from lineage, and the program's
own assertion on its result passes.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from collections import Counter
from pathlib import Path

import psutil
import pytest

from ember.chaos._controller import Controller
from ember.scheduler import local_nodes

RUN_BOUND_S = 240.0
TEST_MARK, MARK = "CHAOS_TEST_MARK", f"{os.getpid()}-{os.urandom(4).hex()}"  # in every process a run starts

PROGRAM = textwrap.dedent("""
    import time
    import numpy as np
    import ember
    from ember.chaos import processes

    ember.init(num_cpus=2)
    first_store = [p.pid for p in processes() if p.kind == "store"]

    @ember.remote
    def leaf(i):
        return np.full(50_000, float(i))  # 400 KB: lives in the store

    @ember.remote
    def add(a, b):
        return a + b

    leaves = [leaf.remote(i) for i in range(30)]
    x = leaves[0]
    for i in range(1, 30):
        x = add.remote(x, leaves[i])
    total = ember.get(x, timeout=120)
    assert total.sum() == sum(range(30)) * 50_000, total.sum()
    # Wait (bounded) for the store the schedule killed to be back: what it
    # held is gone, and reading the leaves again rebuilds them from lineage.
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and [p.pid for p in processes() if p.kind == "store"] in ([], first_store):
        time.sleep(0.05)
    again = ember.get(leaves, timeout=120)
    assert [a[0] for a in again] == [float(i) for i in range(30)]
    print("result ok")
""")

def chaos(*args: str, cwd: Path, timeout_s: float = RUN_BOUND_S,
          env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ember.chaos._cli", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout_s, env={**(os.environ if env is None else env), TEST_MARK: MARK})


@pytest.fixture
def program(tmp_path: Path) -> Path:
    path = tmp_path / "program.py"
    path.write_text(PROGRAM)
    return path


def _faults(report: dict) -> list[tuple]:
    return [(json.dumps(e["trigger"], sort_keys=True), e["fault"]["kind"], e["fault"]["target"], e["outcome"])
            for e in report["timeline"] if e["what"] == "fault"]


def test_a_run_fires_on_task_events_and_its_replay_fires_the_same(program: Path, tmp_path: Path):
    before = {p.pid for p in psutil.process_iter()}
    run = chaos("run", "--on-start", "add:4", "--kill", "store", "--every-tasks", "20", "--max-faults", "3", "--seed", "7",
                "--report", "first.json", "--", sys.executable, str(program), cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert "result ok" in run.stdout
    first = json.loads((tmp_path / "first.json").read_text())
    fired = _faults(first)
    assert (json.dumps({"on_start": "add", "nth": 4}, sort_keys=True), "kill", "worker", "hit") in fired
    assert (json.dumps({"after_tasks": 20}, sort_keys=True), "kill", "store", "hit") in fired
    summary = first["summary"]
    assert summary["faults"]["kill worker"] == 1 and summary["faults"]["kill store"] >= 1
    assert summary["task_reruns"] >= 1  # the killed add ran again
    assert summary["objects_lost"] == 0 and first["exit_code"] == 0
    assert summary["processes_started"]["store"] >= 2  # the store came back
    assert summary["rebuilds"] >= 1  # ... empty: the leaves were rebuilt from lineage
    assert "faults injected" in run.stderr and "objects lost      0" in run.stderr

    replay = chaos("replay", "first.json", "--report", "second.json", cwd=tmp_path)
    assert replay.returncode == 0, replay.stderr
    second = json.loads((tmp_path / "second.json").read_text())
    assert second["schedule"] == first["schedule"]
    # Task-count and task-start triggers replay exactly: the same faults at the same logical points.
    # (Whether a store kill finds a store, or one still restarting, is up to timing; and which of two
    # points comes first, the 40th finished task or the 4th start of add, is up to the schedule.)
    assert Counter(f[:3] for f in fired) <= Counter(f[:3] for f in _faults(second))
    _assert_no_leftovers(before)


def _ran_under_chaos(pid: int) -> bool:
    """A process of a program this test's `chaos run` started: it inherited the controller's socket and the
    test's mark (other test sessions on the machine run chaos too)."""
    try:
        environ = psutil.Process(pid).environ()
    except psutil.Error:
        return False
    return "EMBER_CHAOS_SOCKET" in environ and environ.get(TEST_MARK) == MARK


def test_the_exit_code_is_the_programs(tmp_path: Path):
    (tmp_path / "fails.py").write_text("import ember\nember.init(num_cpus=1)\nraise SystemExit(5)\n")
    run = chaos("run", "--kill", "worker", "--every", "30", "--", sys.executable, "fails.py", cwd=tmp_path)
    assert run.returncode == 5, run.stderr
    assert "program exit 5" in run.stderr


def test_a_program_past_its_timeout_is_killed_and_reported_as_a_hang(tmp_path: Path):
    (tmp_path / "hangs.py").write_text(textwrap.dedent("""
        import threading, ember
        ember.init(num_cpus=1)
        print("up", flush=True)
        threading.Event().wait()  # hangs, as the test needs
    """))
    run = chaos("run", "--kill", "worker", "--every", "30", "--timeout", "8", "--quiet", "--",
                sys.executable, "hangs.py", cwd=tmp_path)
    assert run.returncode == 124, run.stderr
    assert "hang" in run.stderr


def test_replay_refuses_a_file_that_is_not_a_report(tmp_path: Path):
    (tmp_path / "other.json").write_text('{"hello": 1}')
    run = chaos("replay", "other.json", cwd=tmp_path)
    assert run.returncode == 1
    assert "is not a chaos report" in run.stderr
    (tmp_path / "broken.json").write_text("{")
    assert "is not JSON" in chaos("replay", "broken.json", cwd=tmp_path).stderr


def test_bad_options_say_what_to_write(tmp_path: Path):
    run = chaos("run", "--kill", "workers", "--", "true", cwd=tmp_path)
    assert run.returncode == 2 and "'workers' is not a process kind" in run.stderr
    run = chaos("run", "--every", "1", "--rate", "2", "--", "true", cwd=tmp_path)
    assert run.returncode == 2 and "not both" in run.stderr
    run = chaos("run", "--on-start", "f:x", "--", "true", cwd=tmp_path)
    assert run.returncode == 2 and "FUNCTION:N" in run.stderr
    helptext = chaos("run", "--help", cwd=tmp_path).stdout
    for option in ("--kill", "--pause", "--restart-postgres", "--every", "--rate", "--every-tasks", "--on-start",
                   "--seed", "--duration", "--timeout", "--report"):
        assert option in helptext


def test_the_controller_refuses_a_process_without_the_token():
    controller = Controller([], duration_s=1.0)
    controller.start(os.getpid())
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(10)
            sock.connect(controller.environment()["EMBER_CHAOS_SOCKET"])
            sock.sendall(b'{"hello": "worker", "token": "guess", "pid": 1}\n')
            assert b"refused" in sock.makefile("rb").readline()
        assert controller.members() == []
    finally:
        controller.stop()


NODE_PROGRAM = textwrap.dedent("""
    import time
    import numpy as np
    import ember
    from ember.chaos import LocalCluster

    nodes = [{"num_cpus": 1}, {"num_cpus": 1, "resources": {"spare": 1}}, {"num_cpus": 1, "resources": {"spare": 1}}]
    with LocalCluster(nodes=nodes) as cluster:
        ember.init(address=cluster.address)

        @ember.remote
        def work(i):
            time.sleep(0.02)
            return np.full(100_000, i)  # 800 KB: in the store of the node it ran on

        @ember.remote
        def total(a):
            return int(a.sum())

        refs = [work.options(resources={"spare": 0.01}).remote(i) for i in range(80)]
        sums = ember.get([total.remote(r) for r in refs], timeout=120)
        assert sums == [100_000 * i for i in range(80)], sums
        # The GCS declares a killed node dead within a few seconds: wait for it (bounded).
        deadline = time.monotonic() + 30
        while sum(1 for n in ember.nodes() if n["Alive"]) > 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        print("result ok", sum(1 for n in ember.nodes() if n["Alive"]), "nodes alive")
        ember.shutdown()
""")


def _run_on_own_nodes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *args: str) -> subprocess.CompletedProcess:
    """``chaos run *args`` whose program starts its nodes in a runtime folder of its own; every node
    it leaves is stopped after, even when the program was killed on --timeout (node daemons detach)."""
    runtime = tempfile.mkdtemp(prefix="ember-rt-", dir="/tmp")  # the program's nodes, and nobody else's
    try:
        return chaos("run", *args, cwd=tmp_path, env={**os.environ, "EMBER_RUNTIME_DIR": runtime})
    finally:
        monkeypatch.setenv("EMBER_RUNTIME_DIR", runtime)
        for node in local_nodes.local_nodes():
            local_nodes.stop_node(node, 10.0)
        shutil.rmtree(runtime, ignore_errors=True)


def test_a_run_kills_a_whole_node_and_the_program_still_gets_its_results(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch):
    (tmp_path / "nodes.py").write_text(NODE_PROGRAM)
    before = {p.pid for p in psutil.process_iter()}
    run = _run_on_own_nodes(tmp_path, monkeypatch, "--kill", "node", "--every-tasks", "30", "--max-faults", "1",
                            "--seed", "3", "--timeout", "90", "--report", "run.json", "--", sys.executable, "nodes.py")
    assert run.returncode == 0, run.stderr
    assert "result ok 2 nodes alive" in run.stdout  # the head and the driver's node are never chosen
    report = json.loads((tmp_path / "run.json").read_text())
    assert (json.dumps({"after_tasks": 30}, sort_keys=True), "kill", "node", "hit") in _faults(report)
    assert report["summary"]["processes_started"]["node"] == 3
    _assert_no_leftovers(before)


def test_a_node_killed_under_scheduling_strategies_leaves_values_right_and_hard_affinity_typed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    workload = Path(__file__).with_name("strategies_workload.py")
    before = {p.pid for p in psutil.process_iter()}
    run = _run_on_own_nodes(tmp_path, monkeypatch, "--kill", "node", "--every-tasks", "40", "--max-faults", "1",
                            "--seed", "3", "--timeout", "90", "--report", "run.json", "--", sys.executable,
                            str(workload), "--rounds", "3")
    assert run.returncode == 0, run.stdout + run.stderr
    tally = json.loads(run.stdout.splitlines()[-1])
    assert tally["wrong"] == 0 and tally["rounds"] == 3 and tally["nodes_alive_at_end"] == 2, tally
    # Rounds after the kill asked for the dead node by hard affinity: each got the typed error.
    assert tally["hard_affinity_to_dead_node"] > 0, tally
    report = json.loads((tmp_path / "run.json").read_text())
    assert (json.dumps({"after_tasks": 40}, sort_keys=True), "kill", "node", "hit") in _faults(report)
    _assert_no_leftovers(before)


def test_a_node_killed_under_placement_groups_replaces_their_bundles_and_leaves_values_right(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    workload = Path(__file__).with_name("groups_workload.py")
    before = {p.pid for p in psutil.process_iter()}
    run = _run_on_own_nodes(tmp_path, monkeypatch, "--kill", "node", "--every-tasks", "30", "--max-faults", "1",
                            "--seed", "11", "--timeout", "150", "--report", "run.json", "--", sys.executable,
                            str(workload), "--rounds", "3")
    assert run.returncode == 0, run.stdout + run.stderr
    tally = json.loads(run.stdout.splitlines()[-1])
    assert tally["wrong"] == 0 and tally["rounds"] == 3 and tally["nodes_alive_at_end"] == 2, tally
    # The dead node held a bundle of the SPREAD group (one on each node): it was placed again, and
    # every task in a bundle returned its value; hard affinity to the dead node got the typed error.
    assert tally["bundles_placed_again"] >= 1 and tally["in_groups"] == 3 * 13, tally
    assert tally["hard_affinity_to_dead_node"] > 0, tally
    report = json.loads((tmp_path / "run.json").read_text())
    assert (json.dumps({"after_tasks": 30}, sort_keys=True), "kill", "node", "hit") in _faults(report)
    _assert_no_leftovers(before)


LEFTOVER_WAIT_S = 30.0


def _assert_no_leftovers(before: set[int]) -> None:
    """No process the run started is left. Workers end a moment after their node or program does (a
    grace, then SIGKILL), later still on a loaded machine: wait for them, bounded."""
    deadline = time.monotonic() + LEFTOVER_WAIT_S
    while (left := [pid for pid in {p.pid for p in psutil.process_iter()} - before if _ran_under_chaos(pid)]) \
            and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not left, [_describe(pid) for pid in left]


def _describe(pid: int) -> str:
    try:
        return f"{pid}: {' '.join(psutil.Process(pid).cmdline())[:120]}"
    except psutil.Error:
        return f"{pid}: gone"
