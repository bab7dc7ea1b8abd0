"""The lineage log's schema, in SQLAlchemy Core, and its version.

Every table is append-mostly: task specs, attempts, object creations and
actor calls are written once and then only have their state columns moved
forward, so the log can be replayed and inspected after the cluster is gone.

A log records the schema version that wrote it. A newer ember opens an older
log (migrating it forward); an older ember refuses a newer log with a message
that says so, instead of misreading it.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import BYTEA, JSONB

from ember.lineage._schema_version import SCHEMA_VERSION, SchemaVersionError
from ember.lineage._states import ActorState, JobState, ObjectState


metadata = sa.MetaData()

meta = sa.Table(
    "ember_meta", metadata,
    sa.Column("key", sa.Text, primary_key=True),
    sa.Column("value", sa.Text, nullable=False),
)

jobs = sa.Table(
    "jobs", metadata,
    sa.Column("job_id", BYTEA, primary_key=True),
    sa.Column("cluster_id", sa.Text),  # v2
    sa.Column("driver_pid", sa.Integer),
    sa.Column("entrypoint", sa.Text),
    sa.Column("started_at", sa.DateTime(timezone=True), server_default=sa.func.now()),
    sa.Column("ended_at", sa.DateTime(timezone=True)),
    sa.Column("state", sa.Text, nullable=False, server_default=JobState.RUNNING.value),
    sa.Column("namespace", sa.Text),  # v14: init(namespace=...), or the job's anonymous one
)

nodes = sa.Table(
    "nodes", metadata,
    sa.Column("node_id", sa.Text, primary_key=True),
    sa.Column("cluster_id", sa.Text, index=True),  # v2: the session that ran it
    sa.Column("address", sa.Text),
    sa.Column("resources", JSONB),
    sa.Column("started_at", sa.DateTime(timezone=True), server_default=sa.func.now()),
    sa.Column("last_heartbeat_at", sa.DateTime(timezone=True)),  # v2, written every few seconds
    sa.Column("ended_at", sa.DateTime(timezone=True)),
    sa.Column("death_cause", sa.Text),
)

# Every ember process, not only workers: ``kind`` is a ProcessKind (lineage/_states.py):
# worker, store, scheduler or gcs (the GCS belongs to no node: node_id is NULL).
workers = sa.Table(
    "workers", metadata,
    sa.Column("worker_id", BYTEA, primary_key=True),
    sa.Column("cluster_id", sa.Text),  # v2
    sa.Column("node_id", sa.Text, index=True),
    sa.Column("pid", sa.Integer),
    sa.Column("kind", sa.Text),
    sa.Column("actor_id", BYTEA),  # v2: the actor a worker was started for
    # v15: that actor instance's generation, which the GCS's actor fence reloads (lineage/_actor_fence.py)
    sa.Column("generation", sa.Integer),
    sa.Column("started_at", sa.DateTime(timezone=True), server_default=sa.func.now()),
    sa.Column("ended_at", sa.DateTime(timezone=True)),
    sa.Column("death_cause", sa.Text),
)

functions = sa.Table(
    "functions", metadata,
    sa.Column("function_id", BYTEA, primary_key=True),  # content hash of the payload
    sa.Column("name", sa.Text, nullable=False),
    sa.Column("payload", BYTEA, nullable=False),  # cloudpickle of the function or class
)

tasks = sa.Table(
    "tasks", metadata,
    sa.Column("task_id", BYTEA, primary_key=True),
    sa.Column("job_id", BYTEA, nullable=False, index=True),
    sa.Column("kind", sa.SmallInteger, nullable=False),  # ember.scheduler TaskKind
    sa.Column("function_id", BYTEA),
    sa.Column("function_name", sa.Text, nullable=False),
    sa.Column("parent_task_id", BYTEA),  # not indexed: lineage walks to parents, never to children
    sa.Column("actor_id", BYTEA),
    sa.Column("method", sa.Text),
    sa.Column("args", BYTEA, nullable=False),  # pickled encoded arguments (values, inline objects, refs)
    sa.Column("num_returns", sa.Integer, nullable=False),
    sa.Column("resources", JSONB),
    sa.Column("max_retries", sa.Integer, nullable=False),
    sa.Column("name", sa.Text),  # v8: options(name=...), for a task run again from here (errors name it)
    # v10: the process that owns its results (its submitter), for a ref rebuilt from an id (ObjectRef(id))
    sa.Column("owner", sa.Text),
    # v11: its scheduling_strategy (SPREAD, node affinity), as ember.scheduler strategy_record makes it
    sa.Column("strategy", JSONB),
    # v14: the hash of its runtime_env (runtime_envs.env_hash); NULL: none, the cluster's own environment
    sa.Column("runtime_env", sa.Text),
    sa.Column("submitted_at", sa.DateTime(timezone=True), server_default=sa.func.now()),
)

# v14: each runtime_env a task ran in, by the hash of its canonical JSON (lineage/_runtime_env.py), and
# the packages (zip archives of a working_dir or py_modules entry) it names, by content hash: how a
# node gets them, and how `ember replay` runs a task in its environment after the cluster is gone.
runtime_envs = sa.Table(
    "runtime_envs", metadata,
    sa.Column("env_hash", sa.Text, primary_key=True),
    sa.Column("record", sa.Text, nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now()),
)

runtime_env_packages = sa.Table(
    "runtime_env_packages", metadata,
    sa.Column("package_hash", sa.Text, primary_key=True),
    sa.Column("size", sa.BigInteger, nullable=False),
    sa.Column("data", BYTEA, nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now()),
)

task_args = sa.Table(
    "task_args", metadata,  # the lineage edges: task -> the objects it read
    sa.Column("task_id", BYTEA, primary_key=True),
    sa.Column("object_id", BYTEA, primary_key=True, index=True),
)

task_attempts = sa.Table(
    "task_attempts", metadata,
    sa.Column("task_id", BYTEA, primary_key=True),
    sa.Column("attempt", sa.Integer, primary_key=True),
    sa.Column("node_id", sa.Text),
    sa.Column("worker_id", BYTEA),
    sa.Column("state", sa.Text, nullable=False),  # SUBMITTED, RUNNING, FINISHED, FAILED, CANCELLED
    sa.Column("error", sa.Text),
    sa.Column("started_at", sa.DateTime(timezone=True)),
    # v4: when the attempt's row was committed, within the group commit's few
    # ms of the attempt's end; filled by the server, so writers pay nothing.
    sa.Column("finished_at", sa.DateTime(timezone=True), server_default=sa.func.now()),
    # v9: when the run began, by the worker's clock (epoch microseconds), and the worker's
    # pid: sent with the result, so they cost the run no row of its own (the dashboard's timeline).
    sa.Column("started_us", sa.BigInteger),
    sa.Column("worker_pid", sa.Integer),
)

objects = sa.Table(
    "objects", metadata,
    sa.Column("object_id", BYTEA, primary_key=True),
    # The creating task (or the put). Not indexed: a task's return ids are its
    # own id plus an index, so its objects are a primary-key range.
    sa.Column("task_id", BYTEA, nullable=False),
    # v6: indexed, so listing a job's objects (and pruning a job) reads that
    # job's rows, not the whole log's; equal keys in a row cost the B-tree little.
    sa.Column("job_id", BYTEA, nullable=False, index=True),
    sa.Column("origin", sa.Text, nullable=False),  # 'return', 'put' or 'argument'
    sa.Column("size", sa.BigInteger),
    sa.Column("node_id", sa.Text),  # v2: where the first copy was made
    sa.Column("durable_copy", BYTEA),  # a small put's bytes: rebuilt without lineage
    sa.Column("durable_path", sa.Text),  # a large put's file under $EMBER_HOME
    # v5: a task result's content hash (store/_content_hash.py), for results
    # that travel inline; larger ones are hashed later, into content_hashes.
    sa.Column("content_hash", BYTEA),
    sa.Column("state", sa.Text, nullable=False, server_default=ObjectState.CREATED.value),
    sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now()),
    sa.Column("owner", sa.Text),  # v10: a put's owner (a task's results: tasks.owner), for ObjectRef(id)
)

object_locations = sa.Table(
    "object_locations", metadata,
    sa.Column("object_id", BYTEA, primary_key=True),
    sa.Column("node_id", sa.Text, primary_key=True),
    sa.Column("added_at", sa.DateTime(timezone=True), server_default=sa.func.now()),
    sa.Column("removed_at", sa.DateTime(timezone=True)),
)

actors = sa.Table(
    "actors", metadata,
    sa.Column("actor_id", BYTEA, primary_key=True),
    sa.Column("job_id", BYTEA, nullable=False),
    sa.Column("creation_task_id", BYTEA, nullable=False),
    sa.Column("class_name", sa.Text, nullable=False),
    sa.Column("name", sa.Text),
    sa.Column("max_restarts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("restarts", sa.Integer, nullable=False, server_default="0"),
    # Not written: readers derive an actor's state from its workers (lineage/_listing.py).
    sa.Column("state", sa.Text, nullable=False, server_default=ActorState.PENDING.value),
    sa.Column("death_cause", sa.Text),
    sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now()),
    # v12: how a concurrent actor runs its calls (e.g. "async 1000, io=2"); NULL: one at a time, in order.
    # Its calls have no single order: replay tools refuse them, and a restart replays none.
    sa.Column("concurrency", sa.Text),
)

actor_calls = sa.Table(
    "actor_calls", metadata,
    sa.Column("actor_id", BYTEA, primary_key=True),
    sa.Column("seq", sa.BigInteger, primary_key=True),  # order of execution on the actor
    sa.Column("task_id", BYTEA, nullable=False, unique=True),
    # v2: the call itself, so a restarted actor replays from this table alone
    sa.Column("method", sa.Text),
    sa.Column("args", BYTEA),  # pickled encoded (args, kwargs), as in tasks.args
    sa.Column("num_returns", sa.Integer),
    # v3: the address of the process that made the call; after a restart the
    # actor asks the caller of its last logged call for rows still in flight.
    sa.Column("caller", sa.Text),
)

# v12: what each restart of an actor replayed its last logged call at, when that call had not finished:
# the next restart that finds the same call at the same place knows the call kills the actor there.
actor_restarts = sa.Table(
    "actor_restarts", metadata,
    sa.Column("actor_id", BYTEA, primary_key=True),
    sa.Column("restart", sa.Integer, primary_key=True),  # the restart's number (1: the first)
    sa.Column("task_id", BYTEA, nullable=False),  # the unfinished call it was about to run again
    sa.Column("seq", sa.BigInteger, nullable=False),  # the call's place in the actor's order (its state: the calls before)
    sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now()),
)

# v5: hashes of results too large to hash before they are sent: the worker
# that made one hashes it afterwards, off the task's path, and logs it here.
content_hashes = sa.Table(
    "content_hashes", metadata,
    sa.Column("object_id", BYTEA, primary_key=True),
    sa.Column("content_hash", BYTEA, nullable=False),
)

checkpoints = sa.Table(
    "checkpoints", metadata,
    sa.Column("actor_id", BYTEA, primary_key=True),
    sa.Column("seq", sa.BigInteger, primary_key=True),  # the last call the checkpoint includes
    sa.Column("data", BYTEA, nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now()),
)

# v7: cluster-wide actor names, kept by the GCS service so that one restarted
# after a crash still knows them. ``meta`` is the handle metadata the claiming
# scheduler pickled (base64); the service stores and returns it, never unpickles it.
actor_names = sa.Table(
    "actor_names", metadata,
    sa.Column("cluster_id", sa.Text, primary_key=True),
    sa.Column("name", sa.Text, primary_key=True),
    sa.Column("actor_id", BYTEA, nullable=False),
    sa.Column("meta", sa.Text, nullable=False),
)

# v8: each node scheduler's queue (tasks queued or running on its workers), so
# that the scheduler that replaces a dead one reads it back
# (``lineage/_queue_log.py``). Working state, not history: a row lives as long
# as its task stays with the scheduler, and the table is UNLOGGED (PostgreSQL
# empties it after a crash of its own; owners then resubmit in full).
scheduler_queue = sa.Table(
    "scheduler_queue", metadata,
    sa.Column("node_id", sa.Text, primary_key=True),
    sa.Column("task_id", BYTEA, primary_key=True),
    sa.Column("attempt", sa.Integer, nullable=False),
    sa.Column("owner", sa.Text, nullable=False),  # the address of the process that submitted it
    sa.Column("scheduler_pid", sa.Integer, nullable=False),  # which of the node's schedulers holds it
    sa.Column("job_id", BYTEA, nullable=False),
    # clock_timestamp(), not now(): rows of one statement keep the order they came in
    sa.Column("queued_at", sa.DateTime(timezone=True), server_default=sa.text("clock_timestamp()")),
    prefixes=["UNLOGGED"],
)

# v9: what ``chaos run`` did, for the dashboard's chaos page (``chaos/_record.py``):
# the schedule, each fault with its time, the tally, and the job it ran.
chaos_runs = sa.Table(
    "chaos_runs", metadata,
    sa.Column("run_id", BYTEA, primary_key=True),
    sa.Column("job_id", BYTEA, index=True),  # the program's job; NULL if it started none
    sa.Column("command", sa.Text, nullable=False),
    sa.Column("seed", sa.BigInteger),
    sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("ended_at", sa.DateTime(timezone=True)),  # NULL while the run goes on (updated every few s)
    sa.Column("exit_code", sa.Integer),
    sa.Column("options", JSONB),
    sa.Column("schedule", JSONB),  # the planned faults with their triggers
    sa.Column("faults", JSONB),  # each fault fired: at (epoch s), t_s, kind, target, outcome, pid, detail
    sa.Column("tally", JSONB),
    sa.Column("notes", JSONB),
)


# v13: placement groups, kept by the GCS service so that one restarted after a crash still
# knows them (lineage/_placement_groups.py); ``record`` is the group as Group.record() makes it
# (bundles, strategy, where each bundle is and in which phase). History too: a removed group's
# row stays, with its state REMOVED.
placement_groups = sa.Table(
    "placement_groups", metadata,
    sa.Column("placement_group_id", sa.Text, primary_key=True),
    sa.Column("cluster_id", sa.Text, nullable=False, index=True),
    sa.Column("name", sa.Text),
    sa.Column("state", sa.Text, nullable=False),
    sa.Column("creator_job_id", BYTEA),
    sa.Column("detached", sa.Boolean, nullable=False),
    sa.Column("record", JSONB, nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now()),
    sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.func.now()),
)


# Forward migrations: _MIGRATIONS[v] takes a log from version v-1 to v.
_MIGRATIONS: dict[int, list[str]] = {
    2: [
        "ALTER TABLE jobs ADD COLUMN IF NOT EXISTS cluster_id TEXT",
        "ALTER TABLE nodes ADD COLUMN IF NOT EXISTS cluster_id TEXT",
        "ALTER TABLE nodes ADD COLUMN IF NOT EXISTS last_heartbeat_at TIMESTAMPTZ",
        "CREATE INDEX IF NOT EXISTS ix_nodes_cluster_id ON nodes (cluster_id)",
        "ALTER TABLE workers ADD COLUMN IF NOT EXISTS cluster_id TEXT",
        "ALTER TABLE workers ADD COLUMN IF NOT EXISTS actor_id BYTEA",
        "CREATE INDEX IF NOT EXISTS ix_workers_node_id ON workers (node_id)",
        "ALTER TABLE objects ADD COLUMN IF NOT EXISTS node_id TEXT",
        "DROP INDEX IF EXISTS ix_objects_task_id",
        "ALTER TABLE actor_calls ADD COLUMN IF NOT EXISTS method TEXT",
        "ALTER TABLE actor_calls ADD COLUMN IF NOT EXISTS args BYTEA",
        "ALTER TABLE actor_calls ADD COLUMN IF NOT EXISTS num_returns INTEGER",
        "DROP INDEX IF EXISTS ix_tasks_parent_task_id",
    ],
    3: [
        "ALTER TABLE actor_calls ADD COLUMN IF NOT EXISTS caller TEXT",
    ],
    4: [
        "ALTER TABLE task_attempts ALTER COLUMN finished_at SET DEFAULT now()",
    ],
    5: [
        "ALTER TABLE objects ADD COLUMN IF NOT EXISTS content_hash BYTEA",
        # content_hashes is a new table: create_all makes it.
    ],
    6: [
        "CREATE INDEX IF NOT EXISTS ix_objects_job_id ON objects (job_id)",
    ],
    7: [
        # actor_names is a new table: create_all makes it.
    ],
    8: [
        "ALTER TABLE tasks ADD COLUMN IF NOT EXISTS name TEXT",
        # scheduler_queue is a new table: create_all makes it.
    ],
    9: [
        "ALTER TABLE task_attempts ADD COLUMN IF NOT EXISTS started_us BIGINT",
        "ALTER TABLE task_attempts ADD COLUMN IF NOT EXISTS worker_pid INTEGER",
        # chaos_runs is a new table: create_all makes it.
    ],
    10: [
        "ALTER TABLE tasks ADD COLUMN IF NOT EXISTS owner TEXT",
        "ALTER TABLE objects ADD COLUMN IF NOT EXISTS owner TEXT",
    ],
    11: [
        "ALTER TABLE tasks ADD COLUMN IF NOT EXISTS strategy JSONB",
    ],
    12: [
        "ALTER TABLE actors ADD COLUMN IF NOT EXISTS concurrency TEXT",
        # actor_restarts is a new table: create_all makes it.
    ],
    13: [
        # placement_groups is a new table: create_all makes it.
    ],
    14: [
        "ALTER TABLE tasks ADD COLUMN IF NOT EXISTS runtime_env TEXT",
        "ALTER TABLE jobs ADD COLUMN IF NOT EXISTS namespace TEXT",
        # runtime_envs and runtime_env_packages are new tables: create_all makes them.
    ],
    15: [
        "ALTER TABLE workers ADD COLUMN IF NOT EXISTS generation INTEGER",
    ],
}


def ensure_schema(engine: sa.Engine) -> int:
    """Create the tables if missing and check the log's version; returns it."""
    with engine.begin() as conn:
        # One creator at a time when several drivers open a fresh log at once.
        conn.execute(sa.text("SELECT pg_advisory_xact_lock(727100)"))
        metadata.create_all(conn, checkfirst=True)
        row = conn.execute(sa.select(meta.c.value).where(meta.c.key == "schema_version")).first()
        if row is None:
            conn.execute(meta.insert().values(key="schema_version", value=str(SCHEMA_VERSION)))
            return SCHEMA_VERSION
        found = int(row[0])
        if found > SCHEMA_VERSION:
            raise SchemaVersionError(
                f"this lineage log uses schema version {found}, written by a newer ember; this ember "
                f"understands up to version {SCHEMA_VERSION}: upgrade ember, or point EMBER_GCS_URL "
                "at another database"
            )
        for version in range(found + 1, SCHEMA_VERSION + 1):
            for statement in _MIGRATIONS[version]:
                conn.execute(sa.text(statement))
            conn.execute(meta.update().where(meta.c.key == "schema_version").values(value=str(version)))
        return SCHEMA_VERSION
