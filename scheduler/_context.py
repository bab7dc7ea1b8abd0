"""The process's core client, if this process is part of a running cluster."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ember.exceptions import NotInitializedError

if TYPE_CHECKING:
    from ember.scheduler._core import CoreClient

CORE: "CoreClient | None" = None
# A worker process (``_worker_main``): it is connected from its start, and the API never starts a cluster in it.
IN_WORKER = False


def require_core() -> "CoreClient":
    core = CORE
    if core is None:
        raise NotInitializedError(
            "ember is not initialized in this process: call ember.init() first (a remote call, put, get, "
            "wait or get_actor starts a local cluster by itself)"
        )
    return core


def set_core(core: "CoreClient | None") -> None:
    global CORE
    CORE = core


def mark_worker_process() -> None:
    global IN_WORKER
    IN_WORKER = True
