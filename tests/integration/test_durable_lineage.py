"""Invariant 1, durable before visible, through the public API and a real PostgreSQL."""

import json
import os
import signal
import subprocess
import sys
import textwrap

import psycopg
import pytest

from ember.lineage import UnknownIdError, open_log
from ember.lineage._postgres import EmbeddedPostgres

DRIVER = textwrap.dedent("""
    import json, os, signal, sys
    import ember
    ember.init(num_cpus=2)

    @ember.remote
    class Keeper:
        def hold(self, refs):
            self.refs = refs
            return len(refs)

    @ember.remote
    def inc(x):
        return x + 1

    @ember.remote
    def total(xs):
        return sum(ember.get(xs))

    @ember.remote
    def spawn(n):
        return sum(ember.get([inc.remote(i) for i in range(n)]))  # tasks submitted by a task

    # Functions and the actor are registered first: those rows commit at once,
    # and are not what makes the workload's lineage durable.
    keeper = Keeper.remote()
    assert ember.get([inc.remote(0), total.remote([]), spawn.remote(0), keeper.hold.remote([])]) == [1, 0, 0, 0]

    base = ember.put(10)
    chain = inc.remote(base)
    for _ in range(4):
        chain = inc.remote(chain)
    fan = total.remote([inc.remote(i) for i in range(3)])  # refs nested in an argument
    nested = spawn.remote(3)
    value = ember.get([chain, fan, nested])
    # The refs leave the driver (nested in an argument): their lineage must be durable first.
    assert ember.get(keeper.hold.remote([chain, fan, nested])) == 3
    print(json.dumps({"value": value, "chain": chain.hex(), "fan": fan.hex(), "nested": nested.hex(),
                      "chain_task": chain.task_id().hex(), "put": base.hex(),
                      "job": ember.get_runtime_context().get_job_id()}), flush=True)
    os.kill(os.getpid(), signal.SIGKILL)  # no shutdown, no atexit: only what was committed survives
""")

# One driver per shape: it gets a value, prints it, and SIGKILLs itself at
# once. Lazy rows wait a minute (EMBER_LOG_LAZY_S), so only the wait that
# ``get`` itself makes can have committed the lineage before the kill.
SHAPES_DRIVER = textwrap.dedent("""
    import json, os, signal, sys, time
    import ember
    ember.init(num_cpus=2)

    @ember.remote
    def inc(x):
        return x + 1

    @ember.remote
    def add(a, b):
        return a + b

    @ember.remote
    def count(n):
        yield from range(n)

    @ember.remote
    class Counter:
        def __init__(self):
            self.total = 0

        def add(self, n):
            self.total += n
            return self.total

    shape = sys.argv[1]
    if shape == "chain":
        ref = inc.remote(0)
        for _ in range(9):
            ref = inc.remote(ref)
        tasks = 10
    elif shape == "tree":
        level = [inc.remote(i) for i in range(8)]
        while len(level) > 1:
            level = [add.remote(level[i], level[i + 1]) for i in range(0, len(level), 2)]
        ref, tasks = level[0], 15
    elif shape == "actor":
        counter = Counter.remote()
        counter.add.remote(1)
        ref, tasks = counter.add.remote(2), 3  # the call, the call before it, the constructor
    elif shape == "generator":
        gen = count.remote(5)
        # Every value comes before any is taken (``came`` commits nothing): the get below finds its
        # value in this process already, with its lineage still queued for a minute.
        while gen._owner.streams.came(gen._task_id, 5) is None:
            time.sleep(0.005)
        ref, tasks = list(gen)[-1], 1
    else:
        ref, tasks = inc.remote(ember.put(41)), 1
    value = ember.get(ref)
    print(json.dumps({"value": value, "object": ref.hex(), "tasks": tasks}), flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
""")
EXPECTED_VALUES = {"chain": 10, "tree": 36, "actor": 3, "put": 42, "generator": 4}
RUNS_PER_SHAPE = 5


@pytest.fixture(scope="module")
def log_server(ember_home):
    server = EmbeddedPostgres(ember_home)
    server.start()
    yield server
    server.release()


def test_sigkilled_driver_leaves_the_whole_lineage_of_what_it_let_out(ember_home, log_server):
    # Rows nobody waits for would sit for a minute: only the waits that
    # letting a ref out of the driver forces can have committed them.
    env = {**os.environ, "EMBER_HOME": str(ember_home), "EMBER_LOG_LAZY_S": "60"}
    proc = subprocess.run([sys.executable, "-c", DRIVER], capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    seen = json.loads(proc.stdout.strip().splitlines()[-1])
    assert seen["value"] == [15, 6, 6]
    with psycopg.connect(log_server.conninfo) as conn:
        def one(sql, *args):
            return conn.execute(sql, args).fetchone()

        # walk the chain back through task_args: every link and the put it started from
        task_id = bytes.fromhex(seen["chain_task"])
        links = 0
        while True:
            row = one("SELECT function_name, job_id FROM tasks WHERE task_id = %s", task_id)
            assert row is not None, f"task {task_id.hex()} of a value the driver saw is not in the log"
            assert row[0].endswith("inc") and row[1].hex() == seen["job"]
            links += 1
            dep = one("SELECT object_id FROM task_args WHERE task_id = %s", task_id)
            assert dep is not None
            if dep[0].hex() == seen["put"]:
                break
            task_id = dep[0][:16]
        assert links == 5
        put = one("SELECT origin, durable_copy IS NOT NULL FROM objects WHERE object_id = %s",
                  bytes.fromhex(seen["put"]))
        assert put == ("put", True)
        fan_task = bytes.fromhex(seen["fan"])[:16]
        assert one("SELECT function_name FROM tasks WHERE task_id = %s", fan_task)[0].endswith("total")
        children = conn.execute("SELECT count(*) FROM tasks WHERE parent_task_id = %s", (fan_task,)).fetchone()
        assert children[0] == 0  # the three inc tasks were submitted by the driver, not by total
        assert conn.execute("SELECT count(*) FROM functions WHERE name LIKE %s", ("%inc",)).fetchone()[0] >= 1
        # the worker's own submissions were durable before its result reached the driver
        nested_task = bytes.fromhex(seen["nested"])[:16]
        assert conn.execute("SELECT count(*) FROM tasks WHERE parent_task_id = %s",
                            (nested_task,)).fetchone()[0] == 3


@pytest.mark.parametrize("shape", sorted(EXPECTED_VALUES))
def test_a_value_the_driver_printed_keeps_its_whole_lineage_through_an_instant_sigkill(
        ember_home, log_server, shape):
    env = {**os.environ, "EMBER_HOME": str(ember_home), "EMBER_LOG_LAZY_S": "60"}
    misses = []
    for run in range(RUNS_PER_SHAPE):
        proc = subprocess.run([sys.executable, "-c", SHAPES_DRIVER, shape], capture_output=True, text=True,
                              timeout=120, env=env)
        assert proc.returncode == -signal.SIGKILL, proc.stderr
        seen = json.loads(proc.stdout.strip().splitlines()[-1])
        assert seen["value"] == EXPECTED_VALUES[shape]
        with open_log(log_server.conninfo) as log:
            try:
                graph = log.lineage(seen["object"])
            except UnknownIdError as exc:
                misses.append(f"run {run}: {exc}")
                continue
        if len(graph.tasks) != seen["tasks"] or graph.missing or not graph.complete:
            misses.append(f"run {run}: {len(graph.tasks)} of {seen['tasks']} tasks, missing {graph.missing}")
        if shape == "put":
            origins = sorted(o.origin for o in graph.objects.values())
            if origins != ["put", "return"]:
                misses.append(f"run {run}: objects {origins}")
    assert misses == []


def test_unreachable_postgres_is_a_clear_error(monkeypatch):
    import ember

    monkeypatch.setenv("EMBER_GCS_URL", "host=/nonexistent-ember-socket-dir user=postgres dbname=ember")
    with pytest.raises(ember.exceptions.ClusterStartError, match="nonexistent-ember-socket-dir"):
        ember.init(num_cpus=1)
    assert not ember.is_initialized()


def test_open_log_reads_lineage_after_the_cluster_is_gone(ember_home, log_server, monkeypatch):
    import ember

    monkeypatch.setenv("EMBER_HOME", str(ember_home))
    ember.init(num_cpus=2)
    try:
        @ember.remote
        def double(x):
            return 2 * x

        @ember.remote
        def fail():
            raise ValueError("logged failure")

        seed = ember.put(21)
        result = double.remote(double.remote(seed))
        assert ember.get(result) == 84
        failed = fail.remote()
        with pytest.raises(ValueError):
            ember.get(failed)
        ids = (result.hex(), result.task_id().hex(), seed.hex(), failed.task_id().hex())
    finally:
        ember.shutdown()

    with ember.lineage.open_log() as log:
        task = log.task(ids[1])
        assert task.function_name.endswith("double") and task.state == "FINISHED"
        assert log.task(ids[3]).state == "FAILED"
        obj = log.object(ids[0])
        assert obj.origin == "return" and obj.task_id == ids[1]
        assert log.object(ids[2]).origin == "put"
        graph = log.lineage(ids[0])
        assert len(graph.tasks) == 2 and ids[2] in graph.objects
        assert (ids[2], next(t for t in graph.tasks if t != ids[1])) in graph.edges
        with pytest.raises(ember.lineage.UnknownIdError):
            log.task("00" * 16)
        with pytest.raises(ember.lineage.UnknownIdError, match="hex"):
            log.object("not-an-id")


def test_postgres_restart_mid_workload_loses_nothing(ember_home, log_server, monkeypatch):
    import ember

    monkeypatch.setenv("EMBER_HOME", str(ember_home))
    ember.init(num_cpus=2)
    try:
        @ember.remote
        def square(x):
            return x * x

        first = [square.remote(i) for i in range(200)]
        assert ember.get(first, timeout=60) == [i * i for i in range(200)]
        log_server.restart()  # every connection drops; the writers reconnect and retry
        second = [square.remote(i) for i in range(200, 400)]
        assert ember.get(second, timeout=120) == [i * i for i in range(200, 400)]
        ids = [r.task_id().binary() for r in first + second]
    finally:
        ember.shutdown()
    with psycopg.connect(log_server.conninfo) as conn:
        found = conn.execute("SELECT count(*) FROM tasks WHERE task_id = ANY(%s)", (ids,)).fetchone()[0]
    assert found == 400


def test_gcs_url_points_ember_at_a_separately_started_server(log_server):
    # log_server runs from its own home; ember's default embedded server lives
    # under the suite's EMBER_HOME. Everything must land in the one named by URL.
    import ember

    ember.init(num_cpus=1, gcs_url=log_server.conninfo)
    try:
        @ember.remote
        def triple(x):
            return 3 * x

        ref = triple.remote(ember.put(5))
        assert ember.get(ref) == 15
        assert ember.nodes()[0]["Alive"]
        job = bytes.fromhex(ember.get_runtime_context().get_job_id())
        node_id = ember.get_runtime_context().get_node_id()
    finally:
        ember.shutdown()
    with psycopg.connect(log_server.conninfo) as conn:
        assert conn.execute("SELECT function_name FROM tasks WHERE task_id = %s",
                            (ref.task_id().binary(),)).fetchone()[0].endswith("triple")
        assert conn.execute("SELECT state FROM jobs WHERE job_id = %s", (job,)).fetchone() == ("FINISHED",)
        assert conn.execute("SELECT death_cause FROM nodes WHERE node_id = %s", (node_id,)).fetchone() == ("shut down",)


def test_a_result_whose_lineage_cannot_commit_is_held_back_with_a_typed_error(
        ember_home, log_server, monkeypatch, tmp_path):
    import ember
    from ember.exceptions import LineageLogUnavailableError

    monkeypatch.setenv("EMBER_HOME", str(ember_home))
    monkeypatch.setenv("EMBER_LOG_COMMIT_WAIT_S", "2")
    gate = tmp_path / "open"
    ember.init(num_cpus=3)  # two gated tasks and one to warm up
    try:
        @ember.remote
        def gated(path, value):
            import os
            import time

            deadline = time.monotonic() + 60
            while not os.path.exists(path) and time.monotonic() < deadline:
                time.sleep(0.01)
            return value

        @ember.remote
        def logs_a_put(path):
            import os
            import time

            deadline = time.monotonic() + 60
            while not os.path.exists(path) and time.monotonic() < deadline:
                time.sleep(0.01)
            return ember.get(ember.put(5))  # the worker's own put: its row must commit before the result leaves

        pending = gated.remote(str(gate), 7)
        nested = logs_a_put.remote(str(gate))
        ember.get(gated.remote(str(tmp_path), 0), timeout=60)  # the specs are durable; the cluster is warm
        log_server.stop_for_outage()
        try:
            gate.touch()  # both finish while PostgreSQL is down
            with pytest.raises(LineageLogUnavailableError) as raised:
                ember.get(pending, timeout=60)
            assert "2s" in str(raised.value) and str(log_server.socket_dir) in str(raised.value)
            with pytest.raises(LineageLogUnavailableError):
                ember.wait([pending], timeout=5)  # wait hands out no ready ref without its lineage either
            with pytest.raises(LineageLogUnavailableError):
                ember.get(nested, timeout=60)  # held back by the worker that ran it
        finally:
            log_server.end_outage()
        assert ember.get(pending, timeout=60) == 7  # the value was kept, and its rows commit now
        assert ember.wait([pending], timeout=5) == ([pending], [])
        job = bytes.fromhex(ember.get_runtime_context().get_job_id())
    finally:
        ember.shutdown()
    with psycopg.connect(log_server.conninfo) as conn:
        assert conn.execute("SELECT origin FROM objects WHERE object_id = %s", (pending.binary(),)).fetchone() \
            == ("return",)
        assert conn.execute("SELECT state FROM jobs WHERE job_id = %s", (job,)).fetchone() == ("FINISHED",)


def test_a_borrower_reads_a_value_only_once_its_owner_committed_its_creation(ember_home, log_server, monkeypatch):
    import ember

    monkeypatch.setenv("EMBER_HOME", str(ember_home))
    monkeypatch.setenv("EMBER_LOG_LAZY_S", "60")  # nothing commits unless somebody waits for it
    ember.init(num_cpus=2)
    try:
        @ember.remote
        def slow(value):
            import time

            time.sleep(0.3)  # still pending when the ref leaves the driver
            return value

        @ember.remote
        def read_and_check(refs, conninfo):
            import psycopg

            value = ember.get(refs[0])  # a borrowed ref: its owner is the driver
            with psycopg.connect(conninfo) as conn:
                row = conn.execute("SELECT origin FROM objects WHERE object_id = %s", (refs[0].binary(),)).fetchone()
            return value, row

        ref = slow.remote(99)
        value, row = ember.get(read_and_check.remote([ref], log_server.conninfo), timeout=60)
    finally:
        ember.shutdown()
    assert value == 99
    assert row == ("return",)  # the creation row was durable before the borrower's get returned


def test_a_get_commits_the_lineage_of_what_it_waits_for_while_the_task_runs(ember_home, log_server, tmp_path,
                                                                           monkeypatch):
    """The commit a get needs is paid while the task runs, not after: the creation row is declared first."""
    import threading
    import time

    import ember

    monkeypatch.setenv("EMBER_HOME", str(ember_home))
    monkeypatch.setenv("EMBER_LOG_LAZY_S", "60")  # only the get's own declaration can commit these rows
    release = tmp_path / "release"
    ember.init(num_cpus=2)
    try:
        @ember.remote
        def inc(x):
            return x + 1

        @ember.remote
        def held(x, path):
            deadline = time.monotonic() + 60
            while not os.path.exists(path) and time.monotonic() < deadline:
                time.sleep(0.01)
            return x + 1

        assert ember.get(inc.remote(0)) == 1  # the functions' rows are in
        ref = held.remote(inc.remote(1), str(release))
        got = []
        reader = threading.Thread(target=lambda: got.append(ember.get(ref, timeout=60)))
        reader.start()
        rows = None
        deadline = time.monotonic() + 30
        with psycopg.connect(log_server.conninfo) as conn:
            while rows is None and time.monotonic() < deadline:
                found = conn.execute("SELECT o.object_id, o.size FROM objects o JOIN tasks t ON t.task_id = o.task_id "
                                     "WHERE o.object_id = %s", (ref.binary(),)).fetchall()
                rows = found or None
                time.sleep(0.02)
        running = not got
        release.touch()
        reader.join(60)
        assert got == [3]
        assert running and rows == [(ref.binary(), None)]  # declared while it ran: no size yet
        with open_log(log_server.conninfo) as log:
            graph = log.lineage(ref.hex())
        assert len(graph.tasks) == 2 and graph.complete and not graph.missing
    finally:
        release.touch()
        ember.shutdown()
