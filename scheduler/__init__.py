"""ember.scheduler: the node scheduler, worker pool, and the owner every process runs.

The public surface here is what ``ember`` (api/) builds on; everything in
underscore modules is internal.
"""

from ember.scheduler._accelerators import node_gpus
from ember.scheduler._actor_concurrency import ASYNC_MAX_CONCURRENCY_DEFAULT, Concurrency
from ember.scheduler._actor_exit import RESTART_FROM, TERMINATE_METHOD, ActorExit
from ember.scheduler._actor_handles import HANDLES
from ember.scheduler._context import require_core, set_core
from ember.scheduler._owner import Owner
from ember.scheduler import _local_nodes as local_nodes
from ember.scheduler._node import NODE_RESOURCE_PREFIX, JoinTarget, Node, bring_up, free_port, node_resources
from ember.scheduler._object_ref import DynamicObjectRefGenerator, ObjectRef, TaskID
from ember.scheduler._ref_generator import ObjectRefGenerator
from ember.scheduler._protocol import Op
from ember.scheduler._session import Session
from ember.scheduler._spec import (DYNAMIC, IDS, READY_METHOD, STREAMING, CallLimited, DynamicReturns, Strategy,
                                   TaskKind, bundle_shape, resource_shape, unbundled_shape)

__all__ = [
    "ASYNC_MAX_CONCURRENCY_DEFAULT",
    "ActorExit",
    "CallLimited",
    "Concurrency",
    "DYNAMIC",
    "DynamicObjectRefGenerator",
    "DynamicReturns",
    "HANDLES",
    "IDS",
    "JoinTarget",
    "NODE_RESOURCE_PREFIX",
    "Node",
    "ObjectRef",
    "ObjectRefGenerator",
    "Op",
    "Owner",
    "RESTART_FROM",
    "STREAMING",
    "TERMINATE_METHOD",
    "READY_METHOD",
    "Session",
    "Strategy",
    "TaskID",
    "TaskKind",
    "bring_up",
    "bundle_shape",
    "free_port",
    "local_nodes",
    "node_gpus",
    "node_resources",
    "require_core",
    "resource_shape",
    "set_core",
    "unbundled_shape",
]
