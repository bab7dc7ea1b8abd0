"""Pruning the lineage log: finished jobs go with what they owned; running jobs and shared actors stay."""

from __future__ import annotations

import datetime as dt

import psycopg
import pytest

import ember
from ember.exceptions import EmberUserError
from ember.lineage import open_log, prune
from tests.fix_cluster import run_script

FINISHED_JOB = """
    import json
    import ember
    ember.init(num_cpus=1)

    @ember.remote
    def inc(x):
        return x + 1

    @ember.remote
    class Box:
        def __init__(self):
            self.v = 0
        def set(self, v):
            self.v = v
            return v

    ref = inc.remote(inc.remote(ember.put(1)))
    box = Box.remote()
    assert ember.get([ref, box.set.remote(5)]) == [3, 5]
    print(json.dumps({"job": ember.get_runtime_context().get_job_id(), "ref": ref.hex(),
                      "task": ref.task_id().hex()}))
    ember.shutdown()
"""


def _count(conninfo, sql, *params):
    with psycopg.connect(conninfo) as conn:
        return conn.execute(sql, params).fetchone()[0]


def test_prune_removes_finished_jobs_and_keeps_the_running_one():
    import json

    out = run_script(FINISHED_JOB)
    assert out.returncode == 0, out.stderr
    done = json.loads(out.stdout.strip().splitlines()[-1])
    ember.init(num_cpus=1)
    try:
        conninfo = ember._runtime._session.read_info()["gcs_conninfo"]

        @ember.remote
        def still_here():
            return 7

        kept = still_here.remote()
        assert ember.get(kept) == 7
        running_job = bytes.fromhex(ember.get_runtime_context().get_job_id())
        with open_log() as log:
            assert log.task(done["task"]).state == "FINISHED"

        assert prune(dt.timedelta(days=1)).jobs == 0  # nothing is that old
        dry = prune(0, dry_run=True)
        assert dry.jobs >= 1 and dry.deleted["tasks"] >= 3
        with open_log() as log:
            assert log.task(done["task"]).state == "FINISHED"  # a dry run deletes nothing

        # Queue rows a node left when it died whole, and one of the live node's.
        with psycopg.connect(conninfo) as conn:
            ended = conn.execute("SELECT node_id FROM nodes WHERE ended_at IS NOT NULL LIMIT 1").fetchone()[0]
            live = conn.execute("SELECT node_id FROM nodes WHERE cluster_id = %s AND ended_at IS NULL",
                                (ember._runtime._session.name,)).fetchone()[0]
            for node in (ended, live):
                conn.execute("INSERT INTO scheduler_queue (node_id, scheduler_pid, task_id, attempt, owner, job_id) "
                             "VALUES (%s, 1, %s, 0, '/o', %s)", (node, b"q" * 16, running_job))

        report = prune(0)
        assert report.jobs == dry.jobs and report.deleted["actor_calls"] >= 1
        assert report.deleted["scheduler_queue"] >= 1  # other tests' nodes may have left some too
        assert _count(conninfo, "SELECT count(*) FROM scheduler_queue WHERE node_id = %s", ended) == 0
        assert _count(conninfo, "SELECT count(*) FROM scheduler_queue WHERE node_id = %s AND task_id = %s",
                      live, b"q" * 16) == 1
        job = bytes.fromhex(done["job"])
        for table in ("jobs", "tasks", "objects", "actors"):
            assert _count(conninfo, f"SELECT count(*) FROM {table} WHERE job_id = %s", job) == 0, table
        with open_log() as log:
            with pytest.raises(KeyError):
                log.object(done["ref"])
            assert log.task(kept.task_id().hex()).function_name.endswith("still_here")
        assert _count(conninfo, "SELECT count(*) FROM jobs WHERE job_id = %s", running_job) == 1
    finally:
        ember.shutdown()


def test_prune_refuses_a_negative_age():
    with pytest.raises(EmberUserError, match="negative"):
        prune(-1)


ENV_JOB = """
    import json
    import ember
    ember.init(num_cpus=1)

    @ember.remote
    def read():
        with open("kept.txt") as kept:
            return kept.read()

    runtime_env = {{"working_dir": {folder!r}, "env_vars": {{"PRUNE_TEST": "1"}}}}
    assert ember.get(read.options(runtime_env=runtime_env).remote()) == {text!r}
    print(json.dumps(ember.get_runtime_context().get_job_id()))
    ember.shutdown()
"""


def test_prune_keeps_a_runtime_env_as_long_as_a_job_that_ran_in_it(tmp_path):
    import json
    import textwrap

    folders = []
    for name in ("gone", "kept"):
        folder = tmp_path / name
        folder.mkdir()
        (folder / "kept.txt").write_text(name)
        folders.append(folder)
    out = run_script(textwrap.dedent(ENV_JOB).format(folder=str(folders[0]), text="gone"))
    assert out.returncode == 0, out.stderr
    ember.init(num_cpus=1)
    try:
        conninfo = ember._runtime._session.read_info()["gcs_conninfo"]

        @ember.remote
        def read():
            with open("kept.txt") as kept:
                return kept.read()

        running = read.options(runtime_env={"working_dir": str(folders[1])}).remote()
        assert ember.get(running) == "kept"

        def package_of(text):
            return _count(conninfo, "SELECT count(*) FROM runtime_env_packages p JOIN runtime_envs e "
                                    "ON position(p.package_hash IN e.record) > 0 JOIN tasks t "
                                    "ON t.runtime_env = e.env_hash WHERE t.job_id = %s", text)

        finished_job = bytes.fromhex(json.loads(out.stdout.strip().splitlines()[-1]))
        running_job = bytes.fromhex(ember.get_runtime_context().get_job_id())
        assert package_of(finished_job) == 1 and package_of(running_job) == 1
        envs_before = _count(conninfo, "SELECT count(*) FROM runtime_envs")
        report = prune(0)
        assert report.deleted["runtime_envs"] >= 1 and report.deleted["runtime_env_packages"] >= 1
        assert package_of(running_job) == 1  # the running job's environment and package stay
        assert _count(conninfo, "SELECT count(*) FROM runtime_envs") < envs_before
        with open_log() as log:
            assert log.task(running.task_id().hex()).state == "FINISHED"
    finally:
        ember.shutdown()
