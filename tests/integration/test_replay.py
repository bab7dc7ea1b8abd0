"""Replay from the durable log after the cluster is gone: ember.lineage.replay_task/replay_job and `ember replay`.

One job runs on a real cluster (module scope), which then shuts down; every
test replays from the log alone.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import psycopg
import pytest
from click.testing import CliRunner

import ember
from ember.lineage._reader import locate_log
from ember.lineage import (
    FunctionUnavailableError,
    NotReplayableError,
    ReplayInputError,
    UnknownIdError,
    Verdict,
    replay_job,
    replay_task,
)

REPO = Path(__file__).resolve().parents[2]
CLI_TIMEOUT_S = 120


@ember.remote
def inc(x):
    return x + 1


@ember.remote
def total(values):
    return sum(values)


@ember.remote
def roll(x):
    return random.random() + x


@ember.remote
def boom(x):
    raise ValueError(f"boom {x}")


@ember.remote
def make_array(n):
    return np.arange(n, dtype=np.int64)  # 800 KB: a store result, hashed after it is sent


@ember.remote
def first(array):
    return int(array[0]) + int(array[-1])


@ember.remote
def submits(x):
    return ember.get(inc.remote(x))


@ember.remote
class Counter:
    def __init__(self, start):
        self.n = start

    def add(self, k):
        self.n += k
        return self.n


@pytest.fixture(scope="module")
def job():
    """Run the job, shut the cluster down; the ids of what it ran."""
    info = ember.init(num_cpus=2)
    try:
        ids = {}
        a = inc.remote(1)
        b = inc.remote(a)
        c = inc.remote(b)
        ids["chain"] = [r.task_id().hex() for r in (a, b, c)]
        assert ember.get(c, timeout=60) == 4
        small_put = ember.put([1, 2, 3])
        t = total.remote(small_put)
        assert ember.get(t, timeout=60) == 6
        ids["total"] = t.task_id().hex()
        ids["put_task"] = small_put.task_id().hex()
        large_put = ember.put(np.ones(30_000))  # 240 KB: in the store, its copy deleted when the job ends
        reader = first.remote(large_put)
        assert ember.get(reader, timeout=60) == 2
        ids["large_put_reader"] = reader.task_id().hex()
        ids["roll_value"] = ember.get(roll_ref := roll.remote(1), timeout=60)
        ids["roll"] = roll_ref.task_id().hex()
        e = boom.remote(3)
        with pytest.raises(ValueError):
            ember.get(e, timeout=60)
        ids["boom"] = e.task_id().hex()
        counter = Counter.remote(10)
        calls = [counter.add.remote(k) for k in (1, 2, 3)]
        assert ember.get(calls, timeout=60) == [11, 13, 16]
        ids["calls"] = [r.task_id().hex() for r in calls]
        arr = make_array.remote(100_000)
        f = first.remote(arr)
        assert ember.get(f, timeout=60) == 99_999
        ids["array"], ids["first"] = arr.task_id().hex(), f.task_id().hex()
        s = submits.remote(5)
        assert ember.get(s, timeout=60) == 6
        ids["submits"] = s.task_id().hex()
        ids["job"] = info["job_id"]
    finally:
        ember.shutdown()
    _wait_for_late_hash(ids["array"])
    return ids


def _wait_for_late_hash(task_hex: str, timeout_s: float = 30.0) -> None:
    """A store result's hash is logged by its worker shortly after the result is sent; bounded wait."""
    import time

    conninfo, release = locate_log()
    deadline = time.monotonic() + timeout_s
    try:
        with psycopg.connect(conninfo, autocommit=True) as conn:
            while time.monotonic() < deadline:
                if conn.execute("SELECT 1 FROM content_hashes WHERE object_id = %s",
                                (bytes.fromhex(task_hex) + (1).to_bytes(4, "big"),)).fetchone():
                    return
                time.sleep(0.1)
    finally:
        if release is not None:
            release()
    raise AssertionError(f"no late content hash for {task_hex} within {timeout_s}s")


def test_a_deterministic_task_matches_its_recorded_hash(job):
    result = replay_task(job["total"])
    assert result.value == 6 and result.verdict is Verdict.MATCHES
    assert result.replayed_hashes == result.recorded_hashes and result.recorded_hashes[0] is not None
    assert result.rebuilt == ()  # a small put its owner held travels in the spec itself


def test_a_log_from_before_xxh3_hashes_is_compared_with_sha256(job):
    import hashlib

    from ember.store._serialization import HEADER_BYTES, serialize, to_bytes

    # Such a log holds SHA-256's first 16 bytes of the kind byte and the layout after the header.
    layout = to_bytes(serialize(6), b"")
    legacy = hashlib.sha256(layout[6:7] + layout[HEADER_BYTES:]).digest()[:16]
    oid = bytes.fromhex(job["total"]) + (1).to_bytes(4, "big")
    conninfo, release = locate_log()
    try:
        with psycopg.connect(conninfo, autocommit=True) as conn:
            (current,) = conn.execute("SELECT content_hash FROM objects WHERE object_id = %s", (oid,)).fetchone()
            assert len(current) == 17 and current[:1] == b"\x01"  # an algorithm byte, then XXH3-128
            try:
                for logged, verdict in ((legacy, Verdict.MATCHES), (bytes(16), Verdict.DIFFERS)):
                    conn.execute("UPDATE objects SET content_hash = %s WHERE object_id = %s", (logged, oid))
                    result = replay_task(job["total"])
                    assert result.verdict is verdict
                    assert result.recorded_hashes == (logged,) and result.replayed_hashes == (legacy,)
            finally:
                conn.execute("UPDATE objects SET content_hash = %s WHERE object_id = %s", (current, oid))
    finally:
        if release is not None:
            release()


def test_a_large_put_whose_copy_went_with_its_job_is_reported(job):
    with pytest.raises(ReplayInputError, match="was an ember.put and no copy of it is left"):
        replay_task(job["large_put_reader"])


def test_a_chain_rebuilds_its_ancestors_locally(job):
    first_task, second_task, last_task = job["chain"]
    result = replay_task(last_task)
    assert result.value == 4 and result.verdict is Verdict.MATCHES
    assert result.rebuilt == (f"ran inc (task {first_task})", f"ran inc (task {second_task})")


def test_a_random_task_is_reported_not_deterministic(job):
    result = replay_task(job["roll"])
    assert result.verdict is Verdict.DIFFERS and result.verdict.differs
    assert result.value != job["roll_value"]
    assert "not deterministic" in result.explain()


def test_a_failed_task_is_replayed_into_its_exception(job):
    result = replay_task(job["boom"])
    assert isinstance(result.error, ValueError) and str(result.error) == "boom 3"
    assert result.verdict is Verdict.FAILED_AS_RECORDED
    assert "ValueError: boom 3" in result.recorded.error
    assert 'raise ValueError(f"boom {x}")' in result.traceback  # the task's own frame, with its source


def test_an_actor_call_rebuilds_the_actor_from_its_logged_calls(job):
    result = replay_task(job["calls"][-1])
    assert result.value == 16 and result.verdict is Verdict.MATCHES
    assert len(result.rebuilt) == 3 and result.rebuilt[0].startswith("actor Counter")


def test_an_actors_creation_is_refused_with_what_to_replay_instead(job):
    conninfo, release = locate_log()
    try:
        with psycopg.connect(conninfo, autocommit=True) as conn:
            (creation,) = conn.execute("SELECT creation_task_id FROM actors WHERE job_id = %s",
                                       (bytes.fromhex(job["job"]),)).fetchone()
    finally:
        if release is not None:
            release()
    with pytest.raises(NotReplayableError, match=r"created actor Counter: .*Counter\.METHOD.*--job"):
        replay_task(creation.hex())
    # Refusing it left the session able to replay the actor's calls.
    assert replay_task(job["calls"][-1]).verdict is Verdict.MATCHES


def test_a_store_result_is_hashed_after_it_is_sent_and_rebuilt_for_its_reader(job):
    assert replay_task(job["array"]).verdict is Verdict.MATCHES
    result = replay_task(job["first"])
    assert result.value == 99_999 and result.rebuilt == (f"ran make_array (task {job['array']})",)


def test_a_task_that_calls_ember_needs_a_cluster(job):
    assert replay_task(job["submits"]).verdict is Verdict.NEEDS_CLUSTER


def test_replaying_the_job_stops_at_the_non_deterministic_task(job):
    progress = []
    report = replay_job(job["job"], on_task=lambda done, total: progress.append(done))
    assert report.stopped_at is not None and report.stopped_at.task_id == job["roll"]
    assert [r.verdict for r in report.results] == [Verdict.MATCHES] * 4 + [Verdict.DIFFERS]
    assert progress == list(range(1, len(progress) + 1)) and 0 < len(progress) < report.tasks_total


# The CLI, in this process (CliRunner) and, for pdb, in a subprocess reading commands from stdin.

def test_cli_prints_the_verdict_and_exits_non_zero_on_a_difference(job):
    from ember._cli import main

    runner = CliRunner()
    ok = runner.invoke(main, ["replay", job["chain"][-1]])
    assert ok.exit_code == 0, ok.output
    assert "result: 4" in ok.output and "matches the recorded result (hash " in ok.output
    differs = runner.invoke(main, ["replay", job["roll"]])
    assert differs.exit_code == 1 and "this task is not deterministic" in differs.output
    stopped = runner.invoke(main, ["replay", "--job", job["job"]])
    assert stopped.exit_code == 1 and f"stopped at roll (task {job['roll']})" in stopped.output
    unknown = runner.invoke(main, ["replay", "ab" * 16])
    assert unknown.exit_code == 2 and "no task" in unknown.output and "Traceback" not in unknown.output


def _cli(args: list[str], stdin: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", "from ember._cli import main; main()", *args],
        input=stdin, capture_output=True, text=True, timeout=CLI_TIMEOUT_S, cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )


def test_cli_pdb_stops_at_the_first_line_then_post_mortem(job):
    done = _cli(["replay", job["boom"], "--pdb"], stdin="p x\nc\np x + 1\nq\n")
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert out.count("(Pdb)") >= 3
    assert "-> raise ValueError" in out  # the task's own source line
    assert "\n3\n" in out.replace("(Pdb) ", "\n") and "\n4\n" in out.replace("(Pdb) ", "\n")
    assert "raised ValueError: boom 3" in out and "failed, and the log records that it failed too" in out


def test_cli_pdb_continues_through_a_task_that_returns(job):
    done = _cli(["replay", job["total"], "--pdb"], stdin="c\n")
    assert done.returncode == 0, done.stderr
    assert "(Pdb)" in done.stdout and "result: 6" in done.stdout


# Last: it changes the log under the other tests.
def test_unknown_and_unloadable_tasks_raise_clear_errors(job):
    with pytest.raises(UnknownIdError, match="no task"):
        replay_task("ab" * 16)
    with pytest.raises(UnknownIdError, match="object id"):
        replay_task(job["total"] + "00000001")
    conninfo, release = locate_log()
    try:
        with psycopg.connect(conninfo, autocommit=True) as conn:
            # A task whose code names a module that is not installed here.
            conn.execute("INSERT INTO functions (function_id, name, payload) VALUES (%s, 'gone', %s) "
                         "ON CONFLICT DO NOTHING", (b"\x01" * 16, b"cnot_a_moduleX\nf\n."))
            conn.execute("UPDATE tasks SET function_id = %s WHERE task_id = %s",
                         (b"\x01" * 16, bytes.fromhex(job["chain"][0])))
            with pytest.raises(FunctionUnavailableError, match="not_a_moduleX"):
                replay_task(job["chain"][0])
            # An ancestor whose spec was pruned.
            conn.execute("DELETE FROM tasks WHERE task_id = %s", (bytes.fromhex(job["array"]),))
            with pytest.raises(ReplayInputError, match="pruned"):
                replay_task(job["first"])
    finally:
        if release is not None:
            release()


LIVE_DRIVER = """
import sys
import numpy as np
import ember
ember.init(num_cpus=1)

@ember.remote
def make(n):
    return np.random.default_rng().random(n)  # random: replaying it could not give this value back

@ember.remote
def total(array):
    return float(array.sum())

array = make.remote(200_000)  # 1.6 MB: it lives in the store
done = total.remote(array)
print(ember.get(done), done.task_id().hex(), array.hex(), flush=True)
sys.stdin.readline()  # keep the cluster up until the test is done
ember.shutdown()
"""
LIVE_READY_TIMEOUT_S = 120


def test_an_argument_still_in_a_live_clusters_store_is_read_from_it():
    # `make` is random, so only the live object gives `total` its recorded value.
    with subprocess.Popen([sys.executable, "-c", LIVE_DRIVER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                          text=True, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}) as driver:
        try:
            line: list[str] = []
            reader = threading.Thread(target=lambda: line.append(driver.stdout.readline()), daemon=True)
            reader.start()
            reader.join(LIVE_READY_TIMEOUT_S)
            assert line and line[0], "the driver did not report its result in time"
            value, task_hex, array_hex = line[0].split()
            result = replay_task(task_hex)
            assert result.verdict is Verdict.MATCHES
            assert result.value == float(value)
            assert result.rebuilt == (f"object {array_hex} from a live cluster's store",)
        finally:
            if driver.poll() is None:
                driver.stdin.write("\n")
                driver.stdin.flush()
                try:
                    driver.wait(60)
                except subprocess.TimeoutExpired:
                    driver.kill()
                    driver.wait(10)
