"""The owner: the part of every driver and worker process that owns objects and submits tasks.

Every process that takes part in a cluster runs one. It decides, for the
objects and tasks this process created: what state each object is in and
when it can be freed (its refcount), when a task is sent and when its spec is
logged, whether a failed or lost task runs again or fails with a typed error,
the order of calls to each actor, where an object is across nodes, when
``get`` and ``wait`` may hand a value out (only once its lineage is durable),
and what to rebuild when copies are lost.

It must never run user code (the executor does), never block a reader thread
(handlers only update tables and queue messages), never hand out a value
whose lineage is not durable, and never read the log while holding its lock.

``Owner(...)`` builds its parts and opens nothing; ``Owner.start()`` opens the
log, the listener and the connections; making it the process's owner
(``_context.set_core``) is the caller's step. The parts, one module each,
are listed in ``docs/architecture.md`` ("The owner").
"""

from __future__ import annotations

from ember.scheduler._owner._objects import (INLINE_BYTES_MAX, CopyLost, ObjectEntry, ObjectState, ObjectTable,
                                             OwnerState)
from ember.scheduler._owner._owner import Owner

__all__ = ["INLINE_BYTES_MAX", "CopyLost", "ObjectEntry", "ObjectState", "ObjectTable", "Owner", "OwnerState"]
