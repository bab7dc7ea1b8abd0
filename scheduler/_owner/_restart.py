"""Taking over a restarted node scheduler: what an owner sends it, and which of its tasks it claims from the log.

When a driver's scheduler dies the node starts another; the owner
reconnects (``run``) and, once connected (``adopt``), registers its
functions again, claims its named actors' names, has its actors started
again, and decides for each task the dead scheduler had (queued or running)
what happens now (``after_scheduler_died``: claim it from the new
scheduler's logged queue, send it again, or fail it). The logged-queue
adoption is one ``Op.RESUME`` call: the new scheduler says which of the
claimed tasks it queued from its log, and the rest are sent again.

It must never hold the owner's lock across a call to the scheduler, and
never send a task twice: a task the log gave back is not sent again.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, assert_never

from ember.exceptions import TaskCancelledError
from ember.scheduler._owner._links import RECONNECT_POLL_S, RECONNECT_TIMEOUT_S, Links
from ember.scheduler._owner._tasks import Claim, Fail, PendingTask, Resubmit, after_scheduler_died
from ember.scheduler._protocol import Connection, Op
from ember.scheduler._spec import TaskKind, TaskSpec

__all__ = ["SchedulerRestart"]

LIVENESS_WAIT_S = 10.0  # a new scheduler answers its first question within this
log = logging.getLogger("ember.core")


class TaskHooks:
    """What the restart does to the owner's tasks and actors, as the owner's own methods."""

    __slots__ = ("recreate_actors", "resubmit", "fail", "dispatch", "input_bytes", "changed", "settled")

    def __init__(self, recreate_actors: Callable[[Connection], None], resubmit: Callable[[PendingTask], None],
                 fail: Callable[[PendingTask, BaseException], None], dispatch: Callable[[PendingTask], None],
                 input_bytes: Callable[[TaskSpec], Any] | None, changed: Callable[[], None],
                 settled: Callable[[], None]) -> None:
        self.recreate_actors = recreate_actors  # under the lock: start again the actors the dead one ran
        self.resubmit = resubmit
        self.fail = fail
        self.dispatch = dispatch
        self.input_bytes = input_bytes  # the global scheduler's locality hints (multi-node only), else None
        self.changed = changed  # under the lock: waiters have something to look at again
        self.settled = settled  # outside the lock, once adopted: wake the waiters, send what was queued


class SchedulerRestart:
    """Reconnects a driver to its node's restarted scheduler and hands it this process's work again."""

    def __init__(self, links: Links, lock: Any, scheduler_socket: Any, tasks: dict[bytes, PendingTask],
                 registered_functions: dict[bytes, tuple[bytes, str]],
                 created_actors: dict[bytes, tuple[TaskSpec, tuple]], hooks: TaskHooks,
                 is_closed: Callable[[], bool], on_closed: Callable[[Connection], None]) -> None:
        self._links = links
        self._lock = lock
        self._scheduler_socket = scheduler_socket
        self._tasks = tasks
        self._registered_functions = registered_functions
        self._created_actors = created_actors
        self._hooks = hooks
        self._is_closed = is_closed
        self._on_closed = on_closed  # the owner's handler for this connection's close
        self.gcs: Any = None  # the lineage log (GcsLog), set when the owner starts with one
        self.resumed_from_log = 0  # tasks a restarted scheduler took from its log, not sent again

    def run(self) -> str | None:
        """Reconnect until a new scheduler is adopted (None), or the reason it was given up on."""
        deadline = time.monotonic() + RECONNECT_TIMEOUT_S
        while not self._is_closed():
            conn = self._links.reconnect(self._scheduler_socket, self._on_closed, "scheduler", quiet=True)
            if conn is not None and self._answers(conn) and self.adopt(conn):
                return None
            # The new scheduler refused or dropped the connection while it
            # started, or died too while this process was setting it up
            # (chaos does that): try again, its successor included.
            if time.monotonic() > deadline:
                return "the node's scheduler process died and did not come back"
            time.sleep(RECONNECT_POLL_S)
        return None

    @staticmethod
    def _answers(conn: Connection) -> bool:
        """Whether a live scheduler is behind ``conn``. A SIGKILLed one's socket can still take a
        connection while the kernel tears the process down; only a live one answers a question."""
        try:
            conn.call(Op.RESOURCES, timeout_s=LIVENESS_WAIT_S)
            return True
        except Exception as exc:  # reset, closed or silent: the dead one's socket, or a successor dying too
            log.info("a connection to the scheduler's socket did not answer (%s): connecting again", exc)
            conn.close()
            return False

    def adopt(self, conn: Connection) -> bool:
        """Make ``conn`` this process's scheduler connection; False if it closed before it could be."""
        hooks = self._hooks
        for function_id, (payload, name) in list(self._registered_functions.items()):
            conn.send((Op.REGISTER_FUNCTION, function_id, payload, name))
        for spec, (_detached, meta) in list(self._created_actors.values()):
            if spec.name:
                try:
                    conn.call(Op.CLAIM_NAME, spec.name, spec.actor_id, meta, timeout_s=RECONNECT_TIMEOUT_S)
                except Exception as exc:
                    log.warning("could not claim the name %r again: %s", spec.name, exc)
        with self._lock:
            if self._is_closed():
                conn.close()
                return True
            if conn.closed:
                return False  # its close was ignored (not yet ours): try again
            self._links.scheduler = conn
            # Actors lived in workers of the dead scheduler.
            hooks.recreate_actors(conn)
            # Every task it had (queued or running) is gone with it: each runs
            # again, as its next attempt. The new scheduler read the dead one's
            # queue back from the log; it takes from there the tasks whose
            # logged spec is the one sent. The others go again in full.
            claims: list[PendingTask] = []
            items = []
            # Chosen before any is failed: failing one may dispatch tasks waiting on it, to the new scheduler.
            sent = [pt for pt in self._tasks.values() if pt.spec.kind == TaskKind.NORMAL and not pt.missing]
            for pt in sent:
                spec = pt.spec
                action = after_scheduler_died(pt)
                match action:
                    case Claim():
                        spec.attempt += 1  # before asking: the scheduler may run it, and answer, at once
                        claims.append(pt)
                        hints = hooks.input_bytes(spec) or None if hooks.input_bytes is not None else None
                        items.append((spec.task_id, spec.attempt, hints))
                    case Resubmit():
                        hooks.resubmit(pt)
                    case Fail(error):
                        hooks.fail(pt, error)
                    case _:
                        assert_never(action)
            hooks.changed()
        if self.gcs is not None:
            # Asked even with nothing to claim: the scheduler then drops this owner's rows at once.
            taken = self._claim_from_log(conn, items)
            with self._lock:
                self.resumed_from_log += len(taken)
                for pt in claims:
                    if pt.spec.task_id in taken or self._tasks.get(pt.spec.task_id) is not pt:
                        continue  # queued from the log, or finished meanwhile
                    if self._links.scheduler is not conn:
                        break  # that one died too: the next reconnection sends them
                    if pt.cancelled:
                        hooks.fail(pt, TaskCancelledError(pt.spec.task_id.hex()))
                    else:
                        hooks.dispatch(pt)
                hooks.changed()
        hooks.settled()
        return True

    def _claim_from_log(self, conn: Connection, items: list) -> set[bytes]:
        """Ask the restarted scheduler to queue again these (task id, attempt, input bytes) from its log;
        returns the ids it did. It answers within ``READ_WAIT_S`` of starting, whatever its log says."""
        try:
            return set(conn.call(Op.RESUME, items, timeout_s=RECONNECT_TIMEOUT_S))
        except Exception as exc:
            log.warning("the restarted scheduler did not say which tasks it took from its log (%s): "
                        "sending them all again", exc)
            return set()
