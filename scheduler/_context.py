"""The process's core client, if this process is part of a running cluster."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from ember.exceptions import NotInitializedError

if TYPE_CHECKING:
    from ember.scheduler._core import CoreClient

CORE: "CoreClient | None" = None
# A worker process (``_worker_main``): it is connected from its start, and the API never starts a cluster in it.
IN_WORKER = False
# Code running where the first use of the API must not start a cluster (a task replayed from the log, in
# the replaying process): how many such runs are on, process-wide.
_auto_init_off = 0
_auto_init_lock = threading.Lock()


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


def auto_init_allowed() -> bool:
    """Whether the first use of the API in this process may start (or join) a cluster."""
    return not IN_WORKER and _auto_init_off == 0


@contextmanager
def no_auto_init() -> Iterator[None]:
    """Run code (a replayed task) whose use of the API must raise NotInitializedError, not start a cluster."""
    global _auto_init_off
    with _auto_init_lock:
        _auto_init_off += 1
    try:
        yield
    finally:
        with _auto_init_lock:
            _auto_init_off -= 1
