"""The process-global context: the one object through which code with no owner at hand reaches this process's.

``ObjectRef`` needs the owner of its process when it is made (a new ref is
counted), dropped (uncounted) and pickled (it may be read elsewhere: its
lineage must be durable first); the API needs it for every call. None of them
is handed the owner, so they reach it here, through ``PROCESS``:

- ``PROCESS.owner``: the ``Owner`` of this process once ``ember.init`` (a
  driver) or ``_worker_main`` (a worker) has started one and said so with
  ``set_core``; None before, and after ``ember.shutdown``;
- ``PROCESS.in_worker``: this is a worker process (it is connected from its
  start, and the API never starts a cluster in it);
- ``PROCESS.auto_init_off``: how many runs are on, process-wide, where the
  first use of the API must not start a cluster (a task replayed from the
  log, in the replaying process).

Setting it is the caller's explicit step, never a side effect of building
or starting an owner. This module must never import the owner (it is a leaf:
the owner's package, the API and ``ObjectRef`` all import it).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from ember.exceptions import NotInitializedError

__all__ = ["PROCESS", "ProcessContext", "auto_init_allowed", "mark_worker_process", "no_auto_init",
           "require_core", "set_core"]


class ProcessContext:
    """What this process is in the cluster: its owner, if any, and whether the API may start a cluster."""

    __slots__ = ("owner", "in_worker", "auto_init_off", "_auto_init_lock")

    def __init__(self) -> None:
        self.owner: Any = None  # ember.scheduler._owner.Owner (typed loosely: this module imports no owner)
        self.in_worker = False
        self.auto_init_off = 0
        self._auto_init_lock = threading.Lock()

    def auto_init_allowed(self) -> bool:
        """Whether the first use of the API in this process may start (or join) a cluster."""
        return not self.in_worker and self.auto_init_off == 0

    @contextmanager
    def no_auto_init(self) -> Iterator[None]:
        """Run code (a replayed task) whose use of the API must raise NotInitializedError, not start a cluster."""
        with self._auto_init_lock:
            self.auto_init_off += 1
        try:
            yield
        finally:
            with self._auto_init_lock:
                self.auto_init_off -= 1


PROCESS = ProcessContext()


def require_core() -> Any:
    """This process's owner; NotInitializedError if it has none."""
    owner = PROCESS.owner
    if owner is None:
        raise NotInitializedError(
            "ember is not initialized in this process: call ember.init() first (a remote call, put, get, "
            "wait or get_actor starts a local cluster by itself)"
        )
    return owner


def set_core(owner: Any) -> None:
    """Make ``owner`` (None: none) the one this process's refs and API calls reach."""
    PROCESS.owner = owner


def mark_worker_process() -> None:
    PROCESS.in_worker = True


def auto_init_allowed() -> bool:
    return PROCESS.auto_init_allowed()


def no_auto_init() -> Any:
    return PROCESS.no_auto_init()
