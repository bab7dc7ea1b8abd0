"""The owner's two connections to its own node, the scheduler and the object store, and what their loss does.

- The store's connection closed: the node restarts a dead store, empty. A
  thread reconnects, forgets which objects the old store had sealed, wakes
  every waiter to ask again, and has the inputs of pending tasks rebuilt.
  A store not back within ``RECONNECT_TIMEOUT_S`` is tried again, with
  backoff up to ``STORE_RETRY_BACKOFF_MAX_S``, for as long as this process
  lives: meanwhile what it asks of the store fails typed
  (``ConnectionClosed``, a ``get``'s bound), and a store that comes back
  late is used again.
- The scheduler's closed: a driver reconnects to the one the node restarts
  and sends again what it had queued (``_restart.SchedulerRestart``); a
  worker, whose scheduler owned it, closes (its executor exits).

``NodeLinks`` is a part of the owner; it changes the owner's tables only
under its lock, and reconnects on threads of its own, never a reader's.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from ember.lineage._states import ProcessKind
from ember.scheduler._owner._links import Links
from ember.scheduler._owner._objects import OwnerState
from ember.scheduler._protocol import Connection

__all__ = ["STORE_RETRY_BACKOFF_INITIAL_S", "STORE_RETRY_BACKOFF_MAX_S", "NodeLinks"]

log = logging.getLogger("ember.core")

# A store that did not come back within one reconnection's wait is tried again after this, doubling
# up to the maximum: a store the node restarts late (a slow disk, a loaded machine) is used again.
STORE_RETRY_BACKOFF_INITIAL_S = 0.5
STORE_RETRY_BACKOFF_MAX_S = 10.0


class NodeLinks:
    def __init__(self, kind: ProcessKind, store_socket: Any, lock: Any, state: OwnerState, links: Links,
                 subscribed: set[bytes], store_ready: set[bytes], set_changed: Callable[[], None],
                 wake_waiters: Callable[[], None], rebuild_inputs: Callable[[], None],
                 restart_scheduler: Callable[[], str | None], executor: Callable[[], Any]) -> None:
        self._kind = kind
        self._store_socket = store_socket
        self._lock = lock
        self._state = state
        self._links = links
        self._subscribed = subscribed  # objects the store was asked to tell about
        self._store_ready = store_ready  # objects the store said are sealed
        self._store_replaced: Connection | None = None  # the lost store connection a reconnection was started for
        self._set_changed = set_changed
        self._wake_waiters = wake_waiters
        self._rebuild_inputs = rebuild_inputs  # rebuild what pending tasks read that a dead store had
        self._restart_scheduler = restart_scheduler  # reconnect and resend; why not, or None
        self._executor = executor  # a worker's executor, once attached

    def on_store_closed(self, conn: Connection) -> None:
        # The node restarts a dead store, empty: reconnect, and ask again for
        # what we were waiting on. Lost objects are rebuilt when read.
        with self._lock:
            if self._state.closed or conn is not self._links.store or conn is self._store_replaced:
                return
            self._store_replaced = conn  # one reconnection per lost connection, whoever notices first
        threading.Thread(target=self._reconnect_store, name="ember-store-reconnect", daemon=True).start()

    def _reconnect_store(self) -> None:
        backoff_s = STORE_RETRY_BACKOFF_INITIAL_S
        attempts = 0
        while True:
            conn = self._links.reconnect(self._store_socket, self.on_store_closed, "store", quiet=attempts > 0)
            if conn is not None:
                self.install_store(conn)
                return
            attempts += 1
            with self._lock:
                if self._state.closed:
                    return
            # Not for good: every store request meanwhile fails on the closed connection (typed), and a
            # store the node brings back late is used again.
            log.warning("the node's store is still not back after %d attempt(s): trying again in %.1fs",
                        attempts, backoff_s)
            time.sleep(backoff_s)
            backoff_s = min(backoff_s * 2, STORE_RETRY_BACKOFF_MAX_S)

    def install_store(self, conn: Connection) -> None:
        """Make ``conn`` (to a restarted store) this process's store connection, and ask again."""
        with self._lock:
            if self._state.closed:
                conn.close()
                return
            self._links.store = conn
            self._state.store_generation += 1
            self._subscribed.clear()
            self._store_ready.clear()  # what the dead store had sealed may be gone
            self._set_changed()
        self._wake_waiters()
        self._rebuild_inputs()
        if conn.closed:
            # The store died again before this was its connection: its close handler saw another one
            # and let it be. Left so, every later subscribe and pull would go nowhere, and a wait for an
            # object from another node would never end (seen in the network soak after store kills).
            self.on_store_closed(conn)

    def on_scheduler_closed(self, conn: Connection) -> None:
        if self._kind == ProcessKind.DRIVER:
            with self._lock:
                if self._state.closed:
                    return
                if conn is not self._links.scheduler:
                    # Replaced already, or a reconnection still setting it up:
                    # that thread sees it closed and tries again.
                    return
            # The node restarts a dead scheduler; its workers died with it.
            threading.Thread(target=self._reconnect_scheduler, name="ember-scheduler-reconnect", daemon=True).start()
            return
        self._lose_scheduler("the node's scheduler process is gone")

    def _lose_scheduler(self, reason: str) -> None:
        with self._lock:
            if not self._state.closed:
                self._state.closed_reason = reason
            self._state.closed = True
            self._set_changed()
        self._wake_waiters()
        executor = self._executor()
        if executor is not None:
            executor.on_scheduler_lost()

    def _reconnect_scheduler(self) -> None:
        reason = self._restart_scheduler()
        if reason is not None:
            self._lose_scheduler(reason)
