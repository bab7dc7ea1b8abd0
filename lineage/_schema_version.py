"""The lineage log's schema version, apart from the schema itself.

Readers check a log's version before they read it; importing the tables
(SQLAlchemy) for that would double the start-up of every ``ember list``.
"""

from __future__ import annotations

from collections.abc import Callable

from ember.exceptions import EmberOperationError

SCHEMA_VERSION = 15
# The oldest log the readers (``ember list``, ``lineage``, ``replay``) read as it is:
# v5 added the content hashes they compare. Older logs are upgraded by running ember once.
READABLE_MIN_VERSION = 5


class SchemaVersionError(EmberOperationError):
    """The log was written by a newer ember than this one."""


# v9 added each attempt's start and worker (task_attempts.started_us, worker_pid): readers of an
# older log read them as unknown.
RUN_TIMES_VERSION = 9
# v11 added each task's scheduling strategy (tasks.strategy): readers of an older log read DEFAULT.
STRATEGY_VERSION = 11
# v12 added how a concurrent actor ran its calls (actors.concurrency): readers of an older log read
# every actor as one that ran its calls one at a time (which is all an older ember ran).
CONCURRENCY_VERSION = 12
# v13 added placement groups (placement_groups): an older log has none.
PLACEMENT_GROUPS_VERSION = 13
# v14 added each task's runtime_env (tasks.runtime_env, runtime_envs, runtime_env_packages) and each
# job's namespace (jobs.namespace): readers of an older log read every task as run without one.
RUNTIME_ENV_VERSION = 14
# v15 added each actor process's generation (workers.generation), which only the GCS reads.


def check_readable(query: Callable[[str], list]) -> int:
    """Refuse, with what to do, a log the readers cannot read; its version if they can.

    ``query`` runs one SELECT and returns its rows.
    """
    from ember.lineage._ids import EmptyLogError

    if query("SELECT to_regclass('ember_meta')")[0][0] is None:
        raise EmptyLogError("the lineage log is empty: no program has run with it yet "
                            "(or EMBER_GCS_URL / EMBER_HOME point somewhere else)")
    rows = query("SELECT value FROM ember_meta WHERE key = 'schema_version'")
    found = int(rows[0][0]) if rows else 1
    if found > SCHEMA_VERSION:
        raise SchemaVersionError(f"this lineage log uses schema version {found}, written by a newer ember; "
                                 f"this ember reads up to version {SCHEMA_VERSION}: upgrade ember")
    if found < READABLE_MIN_VERSION:
        raise SchemaVersionError(f"this lineage log uses schema version {found}, older than this ember reads "
                                 f"({READABLE_MIN_VERSION} and up): run any ember program once with it "
                                 "(ember.init() upgrades the log in place), then read it again")
    return found
