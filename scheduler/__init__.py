"""ember.scheduler: the node scheduler, worker pool, and the core client every process runs.

The public surface here is what ``ember`` (api/) builds on; everything in
underscore modules is internal.
"""

from ember.scheduler._context import require_core, set_core
from ember.scheduler._core import CoreClient
from ember.scheduler._node import Node, start_node
from ember.scheduler._object_ref import ObjectRef, TaskID
from ember.scheduler._protocol import Op
from ember.scheduler._session import Session, create_session, remove_stale_sessions
from ember.scheduler._spec import IDS, TaskKind, resource_shape

__all__ = [
    "CoreClient",
    "IDS",
    "Node",
    "ObjectRef",
    "Op",
    "Session",
    "TaskID",
    "TaskKind",
    "create_session",
    "remove_stale_sessions",
    "require_core",
    "resource_shape",
    "set_core",
    "start_node",
]
