"""ember: a Ray-compatible distributed runtime whose promise is fault tolerance through lineage.

``import ember as ray`` runs ordinary Ray core programs: remote functions and
actors, ``get``/``put``/``wait``, object refs passed between tasks.
"""

from ember import chaos, exceptions, lineage
from ember.scheduler import DynamicObjectRefGenerator, ObjectRef, ObjectRefGenerator, TaskID
from ember._actor import ActorClass, ActorHandle, method
from ember._remote import remote
from ember._runtime_context import RuntimeContext, get_gpu_ids, get_runtime_context
from ember._placement_group import PlacementGroupID
from ember._timeline import timeline
from ember._runtime import (
    available_resources,
    cancel,
    cluster_resources,
    get,
    get_actor,
    init,
    is_initialized,
    kill,
    nodes,
    put,
    shutdown,
    wait,
)

# Ray's public module names (``ray.actor.ActorHandle`` in type hints); imported after the names they re-export.
from ember import actor, dag, remote_function, runtime_context, util

__version__ = "0.1.0"

__all__ = [
    "ActorClass",
    "ActorHandle",
    "ObjectRef",
    "DynamicObjectRefGenerator",
    "ObjectRefGenerator",
    "RuntimeContext",
    "TaskID",
    "PlacementGroupID",
    "actor",
    "available_resources",
    "cancel",
    "chaos",
    "cluster_resources",
    "dag",
    "exceptions",
    "get",
    "get_actor",
    "get_gpu_ids",
    "get_runtime_context",
    "init",
    "is_initialized",
    "kill",
    "lineage",
    "method",
    "nodes",
    "put",
    "remote",
    "remote_function",
    "runtime_context",
    "shutdown",
    "timeline",
    "util",
    "wait",
]
