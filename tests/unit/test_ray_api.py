"""docs/api.md's table of Ray's core API holds: every supported or differing name exists in ember, no refused
name does, and every name of Ray 2.60's lists is in the table.

Ray's lists are written out here (ember never imports Ray): ``ray.__all__``,
``ray.util.__all__``, the exception classes of ``ray.exceptions`` and the
public members of ``ray.runtime_context.RuntimeContext``, as Ray 2.60 has them.
"""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

API_MD = Path(__file__).resolve().parents[2] / "docs" / "api.md"
STATUSES = ("supported", "differs", "refused")

RAY_ALL = [
    "ActorClassID", "ActorID", "ClientBuilder", "DynamicObjectRefGenerator", "FunctionID", "JobID", "Language",
    "LoggingConfig", "NodeID", "ObjectID", "ObjectRef", "ObjectRefGenerator", "PlacementGroupID", "SCRIPT_MODE",
    "TaskID", "UniqueID", "WORKER_MODE", "WorkerID", "__version__", "_config", "actor", "autoscaler",
    "available_resources", "cancel", "client", "cluster_resources", "cpp_function", "data", "get", "get_actor",
    "get_gpu_ids", "get_runtime_context", "init", "internal", "is_initialized", "java_actor_class", "java_function",
    "kill", "method", "nodes", "put", "remote", "shutdown", "timeline", "util", "wait", "widgets", "workflow",
]
RAY_UTIL_ALL = [
    "ActorPool", "accelerators", "as_completed", "collective", "connect", "deregister_serializer",
    "disable_log_once_globally", "disconnect", "enable_periodic_logging", "get_current_placement_group",
    "get_node_instance_id", "get_node_ip_address", "get_placement_group", "inspect_serializability", "iter",
    "list_named_actors", "log_once", "map_unordered", "pdb", "placement_group", "placement_group_table",
    "ray_debugpy", "register_serializer", "remove_placement_group",
]
RAY_EXCEPTIONS = [
    "ActorAlreadyExistsError", "ActorDiedError", "ActorHandleNotFoundError", "ActorPlacementGroupRemoved",
    "ActorUnavailableError", "ActorUnschedulableError", "AsyncioActorExit", "AuthenticationError",
    "CrossLanguageError", "GetTimeoutError", "LocalRayletDiedError", "NodeDiedError", "ObjectFetchTimedOutError",
    "ObjectFreedError", "ObjectLostError", "ObjectReconstructionFailedError",
    "ObjectReconstructionFailedLineageEvictedError", "ObjectReconstructionFailedMaxAttemptsExceededError",
    "ObjectRefStreamEndOfStreamError", "ObjectStoreFullError", "OufOfBandObjectRefSerializationException",
    "OutOfDiskError", "OutOfMemoryError", "OwnerDiedError", "PendingCallsLimitExceeded", "PlasmaObjectNotAvailable",
    "RayActorError", "RayCgraphCapacityExceeded", "RayChannelError", "RayChannelTimeoutError",
    "RayDirectTransportError", "RayError", "RaySystemError", "RayTaskError", "ReferenceCountingAssertionError",
    "RpcError", "RuntimeEnvSetupError", "StreamingGeneratorReplayInconsistentError", "TaskCancelledError",
    "TaskPlacementGroupRemoved", "TaskUnschedulableError", "UnserializableException", "UserCodeException",
    "WorkerCrashedError",
]
RAY_RUNTIME_CONTEXT = [
    "actor_id", "current_actor", "current_placement_group_id", "gcs_address", "get", "get_accelerator_ids",
    "get_actor_id", "get_actor_name", "get_assigned_resources", "get_job_id", "get_node_id", "get_node_labels",
    "get_placement_group_id", "get_resource_ids", "get_runtime_env_string", "get_session_name",
    "get_task_function_name", "get_task_id", "get_task_name", "get_temp_dir", "get_worker_id", "is_canceled",
    "job_id", "namespace", "node_id", "runtime_env", "should_capture_child_tasks_in_placement_group", "task_id",
    "was_current_actor_reconstructed",
]


def _table() -> dict[str, str]:
    text = API_MD.read_text()
    section = text[text.index('<a id="ray-api"></a>'):text.index('<a id="cluster"></a>')]
    rows = re.findall(r"^\| `(ray[^`]*)` \| (\w+) \| (.*) \|$", section, flags=re.MULTILINE)
    table = {}
    for name, status, note in rows:
        assert name not in table, f"{name} is in the table twice"
        assert status in STATUSES, f"{name}: status {status!r} is none of {STATUSES}"
        if status != "supported":
            assert note.strip(), f"{name} is {status}: the note must say how, or why"
        table[name] = status
    return table


TABLE = _table()


def _resolve(ray_name: str) -> bool:
    """Whether ember has the name, ``ray.`` read as ``ember.`` (modules imported as needed)."""
    parts = ray_name.split(".")[1:]
    target = importlib.import_module("ember")
    path = "ember"
    for part in parts:
        path += "." + part
        if hasattr(target, part):
            target = getattr(target, part)
            continue
        try:
            target = importlib.import_module(path)
        except ImportError:
            return False
    return True


@pytest.mark.parametrize("name", sorted(n for n, s in TABLE.items() if s != "refused"))
def test_every_supported_or_differing_name_exists(name):
    assert _resolve(name), f"docs/api.md says {name} is {TABLE[name]}, but ember has no such name"


@pytest.mark.parametrize("name", sorted(n for n, s in TABLE.items() if s == "refused"))
def test_no_refused_name_exists(name):
    assert not _resolve(name), f"docs/api.md says {name} is refused, but ember has it: update the table"


def test_every_name_of_rays_lists_is_in_the_table():
    expected = ([f"ray.{n}" for n in RAY_ALL] + [f"ray.util.{n}" for n in RAY_UTIL_ALL]
                + [f"ray.exceptions.{n}" for n in RAY_EXCEPTIONS]
                + [f"ray.runtime_context.RuntimeContext.{n}" for n in RAY_RUNTIME_CONTEXT])
    missing = [name for name in expected if name not in TABLE]
    assert not missing, f"docs/api.md's table lacks {missing}"
