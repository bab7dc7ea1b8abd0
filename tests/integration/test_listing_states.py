"""The states ``ember list actors`` derives from the log, on a real embedded PostgreSQL with rows written by hand.

An actor is PENDING before a worker starts for it, ALIVE while its latest one
runs, RESTARTING once that one ended while the actor has restarts left, was
not stopped for good and its cluster runs, and DEAD otherwise.
"""

from __future__ import annotations

import os

import psycopg
import pytest
import sqlalchemy as sa

from ember.exceptions import EmberUserError
from ember.lineage import ActorState, open_log
from ember.lineage import _schema

LIVE, GONE = "cluster-live", "cluster-gone"


@pytest.fixture(scope="module")
def log_rows(postgres):
    engine = sa.create_engine("postgresql+psycopg://", connect_args={
        "host": str(postgres.socket_dir), "user": "postgres", "dbname": "ember"})
    _schema.ensure_schema(engine)
    engine.dispose()
    jobs = {LIVE: os.urandom(4), GONE: os.urandom(4)}
    actors: dict[str, bytes] = {}
    with psycopg.connect(postgres.conninfo) as conn:
        conn.execute("INSERT INTO nodes (node_id, cluster_id) VALUES ('n-live', %s)", (LIVE,))
        conn.execute("INSERT INTO nodes (node_id, cluster_id, ended_at, death_cause) "
                     "VALUES ('n-gone', %s, now(), 'shut down')", (GONE,))
        for cluster, job in jobs.items():
            conn.execute("INSERT INTO jobs (job_id, cluster_id) VALUES (%s, %s)", (job, cluster))

        def actor(name: str, cluster: str, max_restarts: int, *lives: str | None) -> None:
            """An actor and its workers, oldest first: None for one still running, else why it ended."""
            actor_id = actors[name] = os.urandom(16)
            conn.execute("INSERT INTO actors (actor_id, job_id, creation_task_id, class_name, max_restarts) "
                         "VALUES (%s, %s, %s, %s, %s)", (actor_id, jobs[cluster], os.urandom(16), name, max_restarts))
            for i, cause in enumerate(lives):
                conn.execute(
                    "INSERT INTO workers (worker_id, cluster_id, node_id, pid, kind, actor_id, started_at, ended_at, "
                    "death_cause) VALUES (%s, %s, %s, %s, 'worker', %s, now() + make_interval(secs => %s), "
                    "CASE WHEN %s::text IS NULL THEN NULL ELSE now() + make_interval(secs => %s) END, %s)",
                    (os.urandom(16), cluster, "n-live" if cluster == LIVE else "n-gone", 100 + i, actor_id, i,
                     cause, i + 0.5, cause))

        actor("Waiting", LIVE, 1)
        actor("Running", LIVE, 0, None)
        actor("Crashed", LIVE, 2, "killed by SIGKILL")
        actor("Replaced", LIVE, 2, "killed by SIGKILL", None)
        actor("OutOfRestarts", LIVE, 1, "killed by SIGKILL", "killed by SIGKILL")
        actor("Killed", LIVE, 5, "actor stopped: killed by ember.kill()")
        actor("BadConstructor", LIVE, 5, "its constructor raised ValueError('no')")
        actor("ClusterEnded", GONE, 5, "its node ended: shut down")
    return postgres.conninfo, jobs, actors


def _states(log, job: bytes, state: str | None = None) -> dict[str, ActorState]:
    return {a.class_name: a.state for a in log.actors(job=job.hex(), state=state)}


def test_an_actor_between_lives_is_restarting_and_one_gone_for_good_is_dead(log_rows):
    conninfo, jobs, _ = log_rows
    with open_log(conninfo) as log:
        assert _states(log, jobs[LIVE]) == {
            "Waiting": ActorState.PENDING, "Running": ActorState.ALIVE, "Crashed": ActorState.RESTARTING,
            "Replaced": ActorState.ALIVE, "OutOfRestarts": ActorState.DEAD, "Killed": ActorState.DEAD,
            "BadConstructor": ActorState.DEAD}
        assert _states(log, jobs[GONE]) == {"ClusterEnded": ActorState.DEAD}
        assert all(type(a.state) is ActorState for a in log.actors(job=jobs[LIVE].hex()))


def test_the_state_filter_selects_what_the_rows_say(log_rows):
    conninfo, jobs, _ = log_rows
    with open_log(conninfo) as log:
        everything = _states(log, jobs[LIVE])
        for state in ActorState:
            wanted = {name for name, s in everything.items() if s is state}
            assert set(_states(log, jobs[LIVE], state.value.lower())) == wanted, state
        with pytest.raises(EmberUserError, match="expected one of PENDING, ALIVE, RESTARTING, DEAD"):
            log.actors(job=jobs[LIVE].hex(), state="zombie")
