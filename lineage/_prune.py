"""Pruning history: forgetting finished jobs older than a cutoff.

The log keeps everything until told otherwise. ``prune`` deletes, in one
transaction, every job that ended before the cutoff together with what only
it owned: its task specs, attempts and lineage edges, its objects and their
locations, its actors with their calls and checkpoints, then functions no
remaining task uses, node and process records that ended before the
cutoff, and the scheduler queue rows of nodes that ended. Jobs still
running are never touched, and neither are calls a pruned job made on an
actor of a job that is kept (that actor's replay needs them).

An object whose lineage was pruned cannot be rebuilt; reconstruction says so
("lineage pruned") instead of guessing.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from ember.exceptions import EmberUserError
from ember.lineage._pg_connect import CONNECT_OPTIONS

# (table, the statement deleting its pruned rows); order respects what each reads.
_STEPS: tuple[tuple[str, str], ...] = (
    ("task_args", "DELETE FROM task_args WHERE task_id IN (SELECT task_id FROM pruned_tasks)"),
    ("task_attempts", "DELETE FROM task_attempts WHERE task_id IN (SELECT task_id FROM pruned_tasks)"),
    ("actor_calls", "DELETE FROM actor_calls WHERE actor_id IN (SELECT actor_id FROM pruned_actors)"),
    ("checkpoints", "DELETE FROM checkpoints WHERE actor_id IN (SELECT actor_id FROM pruned_actors)"),
    ("actors", "DELETE FROM actors WHERE actor_id IN (SELECT actor_id FROM pruned_actors)"),
    ("object_locations", "DELETE FROM object_locations WHERE object_id IN "
                         "(SELECT object_id FROM objects WHERE job_id IN (SELECT job_id FROM pruned_jobs))"),
    # A result's id starts with its creating task's: no join with objects needed.
    ("content_hashes", "DELETE FROM content_hashes WHERE substring(object_id from 1 for 16) IN "
                       "(SELECT task_id FROM pruned_tasks)"),
    ("objects", "DELETE FROM objects WHERE job_id IN (SELECT job_id FROM pruned_jobs)"),
    ("tasks", "DELETE FROM tasks WHERE task_id IN (SELECT task_id FROM pruned_tasks)"),
    ("chaos_runs", "DELETE FROM chaos_runs WHERE job_id IN (SELECT job_id FROM pruned_jobs)"),  # v9
    ("jobs", "DELETE FROM jobs WHERE job_id IN (SELECT job_id FROM pruned_jobs)"),
    ("functions", "DELETE FROM functions f WHERE NOT EXISTS "
                  "(SELECT 1 FROM tasks t WHERE t.function_id = f.function_id)"),
    # v14: environments no task names any more, then packages no environment names: kept as long as
    # the history of a job that ran in them.
    ("runtime_envs", "DELETE FROM runtime_envs e WHERE NOT EXISTS "
                     "(SELECT 1 FROM tasks t WHERE t.runtime_env = e.env_hash)"),
    ("runtime_env_packages", "DELETE FROM runtime_env_packages p WHERE NOT EXISTS "
                             "(SELECT 1 FROM runtime_envs e WHERE position(p.package_hash IN e.record) > 0)"),
    # Queue rows a node left when it stopped without deleting them (SIGKILLed whole).
    ("scheduler_queue", "DELETE FROM scheduler_queue q WHERE q.job_id IN (SELECT job_id FROM pruned_jobs) "
                        "OR q.node_id IN (SELECT node_id FROM nodes WHERE ended_at IS NOT NULL)"),
    ("workers", "DELETE FROM workers WHERE ended_at < %(cutoff)s"),
    ("nodes", "DELETE FROM nodes WHERE ended_at < %(cutoff)s"),
)


@dataclass(frozen=True)
class PruneReport:
    cutoff: dt.datetime
    deleted: dict[str, int]  # rows per table
    dry_run: bool

    @property
    def jobs(self) -> int:
        return self.deleted.get("jobs", 0)


def prune(older_than: dt.timedelta | float, *, gcs_url: str | None = None, dry_run: bool = False) -> PruneReport:
    """Delete jobs that ended more than ``older_than`` ago (a timedelta or seconds), with what they owned."""
    import psycopg

    from ember.lineage._reader import locate_log

    age = older_than if isinstance(older_than, dt.timedelta) else dt.timedelta(seconds=float(older_than))
    if age < dt.timedelta(0):
        raise EmberUserError(f"prune(older_than={older_than!r}): the age must not be negative")
    cutoff = dt.datetime.now(dt.timezone.utc) - age
    conninfo, release = locate_log(gcs_url)
    try:
        with psycopg.connect(conninfo, **CONNECT_OPTIONS) as conn:
            deleted = _prune(conn, cutoff)
            if dry_run:
                conn.rollback()
    finally:
        if release is not None:
            release()
    return PruneReport(cutoff, deleted, dry_run)


def _prune(conn, cutoff: dt.datetime) -> dict[str, int]:  # type: ignore[no-untyped-def]
    params = {"cutoff": cutoff}
    conn.execute("CREATE TEMP TABLE pruned_jobs ON COMMIT DROP AS SELECT job_id FROM jobs "
                 "WHERE ended_at IS NOT NULL AND ended_at < %(cutoff)s", params)
    conn.execute("CREATE TEMP TABLE pruned_actors ON COMMIT DROP AS SELECT actor_id FROM actors "
                 "WHERE job_id IN (SELECT job_id FROM pruned_jobs)")
    conn.execute("CREATE TEMP TABLE pruned_tasks ON COMMIT DROP AS SELECT task_id FROM tasks "
                 "WHERE job_id IN (SELECT job_id FROM pruned_jobs) "
                 "AND (actor_id IS NULL OR actor_id IN (SELECT actor_id FROM pruned_actors))")
    deleted = {}
    for table, statement in _STEPS:
        deleted[table] = conn.execute(statement, params).rowcount
    return deleted
