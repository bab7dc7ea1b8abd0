"""ember.lineage: the durable lineage log on PostgreSQL, and reading it back.

The runtime writes every task spec, object creation and actor call here
(``docs/lineage.md``); ``open_log()`` reads it with or without a running
cluster: one task or object, a job's listings (``tasks()``, ``objects()``,
``actors()``, ``nodes()``, ``jobs()``) and what an id came from
(``lineage()``, rendered by ``Lineage.to_tree/to_dot/to_json``;
``docs/inspecting.md``); ``prune()`` forgets finished jobs older than a cutoff;
``replay_task()`` and ``replay_job()`` run logged tasks again in this process and
compare them with the log (``docs/debugging.md``). ``ember dashboard`` serves
the same reads in a browser (``_dashboard_server``; ``docs/dashboard.md``).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# Where each public name lives. Loaded on first use: every ember process
# imports this package (the runtime reads the log through _replay_source),
# and only a reader needs the listings, rendering and replay (~45 ms of imports).
_HOME = {
    "ActorRow": "_listing", "JobRow": "_listing", "NodeRow": "_listing", "ObjectRow": "_listing",
    "TaskRow": "_listing",
    "ActorState": "_states", "JobState": "_states", "NodeState": "_states", "ObjectState": "_states",
    "TaskState": "_states",
    "PruneReport": "_prune", "prune": "_prune",
    "JobReplay": "_replay", "ReplayResult": "_replay", "Verdict": "_replay", "replay_job": "_replay",
    "replay_task": "_replay",
    "FunctionUnavailableError": "_replay_plan", "LineageTooLongError": "_replay_plan",
    "NeedsClusterError": "_replay_plan",
    "NotReplayableError": "_replay_plan", "ReplayInputError": "_replay_plan",
    "chrome_trace": "_timeline",
    "EmptyLogError": "_reader", "Lineage": "_reader", "LineageLog": "_reader", "ObjectRecord": "_reader",
    "TaskRecord": "_reader", "UnknownIdError": "_reader", "open_log": "_reader",
}

# Names ember's other packages use (not part of the user API, so not in __all__):
# other packages import them from here, never from a private module.
_INTERNAL = {
    "Dashboard": "_dashboard_server", "standalone_report": "_dashboard_chaos",
    "locate_log": "_reader", "SchemaVersionError": "_schema_version",
    "TaskFilter": "_listing", "row_json": "_listing", "human_duration": "_render", "human_size": "_render",
    "STATE_COLOURS": "_render", "ProcessKind": "_states", "PlacementGroupState": "_states",
    "PlacementStrategy": "_placement_groups",
    "short_repr": "_replay", "EmbeddedPostgres": "_postgres", "LineageStore": "_store",
    "QueueLog": "_queue_log", "ReplaySource": "_replay_source",
    "GcsLog": "_gcs_log", "ember_home": "_postgres", "TcpListen": "_postgres",
    "KeptCopy": "_replay_plan", "Lost": "_replay_plan", "LostWhy": "_replay_plan", "RebuildPlan": "_replay_plan", "Rerun": "_replay_plan",
    "Restore": "_replay_plan", "TaskFacts": "_replay_plan", "no_copy_reason": "_replay_plan",
    "plan_rebuild": "_replay_plan", "UNREACHABLE_WAIT_S": "_replay_source", "LoggedTask": "_replay_source",
    "RuntimeEnv": "_runtime_env", "check_runtime_env": "_runtime_env", "resolve_runtime_env": "_runtime_env",
    "RuntimeEnvLog": "_env_setup", "prepare_env": "_env_setup", "enter_env": "_env_setup",
    "entered_env": "_env_setup", "run_setup_hook": "_env_setup", "CONNECT_OPTIONS": "_pg_connect",
}

if TYPE_CHECKING:
    from ember.lineage._listing import ActorRow, JobRow, NodeRow, ObjectRow, TaskRow
    from ember.lineage._prune import PruneReport, prune
    from ember.lineage._reader import (
        EmptyLogError,
        Lineage,
        LineageLog,
        ObjectRecord,
        TaskRecord,
        UnknownIdError,
        open_log,
    )
    from ember.lineage._replay import JobReplay, ReplayResult, Verdict, replay_job, replay_task
    from ember.lineage._timeline import chrome_trace
    from ember.lineage._replay_plan import (
        FunctionUnavailableError,
        LineageTooLongError,
        NeedsClusterError,
        NotReplayableError,
        ReplayInputError,
    )
    from ember.lineage._states import ActorState, JobState, NodeState, ObjectState, TaskState


def __getattr__(name: str) -> Any:
    home = _HOME.get(name) or _INTERNAL.get(name)
    if home is None:
        raise AttributeError(f"module 'ember.lineage' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"ember.lineage.{home}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


__all__ = [
    "ActorRow",
    "ActorState",
    "EmptyLogError",
    "FunctionUnavailableError",
    "JobReplay",
    "JobRow",
    "JobState",
    "Lineage",
    "LineageLog",
    "LineageTooLongError",
    "NeedsClusterError",
    "NodeRow",
    "NodeState",
    "NotReplayableError",
    "ObjectRecord",
    "ObjectRow",
    "ObjectState",
    "PruneReport",
    "ReplayInputError",
    "ReplayResult",
    "TaskRecord",
    "TaskRow",
    "TaskState",
    "UnknownIdError",
    "Verdict",
    "chrome_trace",
    "open_log",
    "prune",
    "replay_job",
    "replay_task",
]
