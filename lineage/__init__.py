"""ember.lineage: the durable lineage log on PostgreSQL, and reading it back.

The runtime writes every task spec, object creation and actor call here
(``docs/lineage.md``); ``open_log()`` reads it with or without a running
cluster: one task or object, a job's listings (``tasks()``, ``objects()``,
``actors()``, ``nodes()``, ``jobs()``) and what an id came from
(``lineage()``, rendered by ``Lineage.to_tree/to_dot/to_json``;
``docs/inspecting.md``); ``prune()`` forgets finished jobs older than a cutoff;
``replay_task()`` and ``replay_job()`` run logged tasks again in this process and
compare them with the log (``docs/debugging.md``).
"""

from ember.lineage._listing import ActorRow, JobRow, NodeRow, ObjectRow, TaskRow, TaskState
from ember.lineage._prune import PruneReport, prune
from ember.lineage._replay import JobReplay, ReplayResult, Verdict, replay_job, replay_task
from ember.lineage._replay_plan import (
    FunctionUnavailableError,
    NeedsClusterError,
    NotReplayableError,
    ReplayInputError,
)
from ember.lineage._reader import (
    EmptyLogError,
    Lineage,
    LineageLog,
    ObjectRecord,
    TaskRecord,
    UnknownIdError,
    open_log,
)

__all__ = [
    "ActorRow",
    "EmptyLogError",
    "FunctionUnavailableError",
    "JobRow",
    "JobReplay",
    "Lineage",
    "LineageLog",
    "NeedsClusterError",
    "NodeRow",
    "NotReplayableError",
    "ObjectRecord",
    "ObjectRow",
    "PruneReport",
    "ReplayInputError",
    "ReplayResult",
    "TaskRecord",
    "TaskRow",
    "TaskState",
    "UnknownIdError",
    "Verdict",
    "open_log",
    "prune",
    "replay_job",
    "replay_task",
]
