"""Cancelling the tasks this process submitted, as ``ember.cancel`` and a cancelled parent ask.

A task still waiting here (for its arguments, or queued behind an actor's
earlier calls) fails at once with ``TaskCancelledError``. One already sent
goes on to where it is: an actor call to its actor, which never runs it if it
has not started (and, as in Ray, does not interrupt it if it has); a task to
the node's scheduler, which ends it on its worker. With ``recursive``, the
worker running the task cancels what that task submitted before it stops
(``cancel_children``, called by the executor).

``Cancels`` is a part of the owner: it reads the pending tasks under the
owner's lock and sends only after releasing it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ember.exceptions import TaskCancelledError
from ember.scheduler._owner._links import Links
from ember.scheduler._owner._tasks import PendingTask
from ember.scheduler._protocol import Op
from ember.scheduler._spec import TaskKind

__all__ = ["Cancels"]


class Cancels:
    def __init__(self, lock: Any, tasks: dict[bytes, PendingTask], actors: dict[bytes, Any], links: Links,
                 fail_task: Callable[[PendingTask, BaseException], None], wake_waiters: Callable[[], None]) -> None:
        self._lock = lock
        self._tasks = tasks
        self._actors = actors  # actor id -> its calls' state here (``_actors._ActorState``)
        self._links = links
        self._fail_task = fail_task
        self._wake_waiters = wake_waiters

    def cancel(self, task_id: bytes, force: bool, recursive: bool) -> None:
        """Cancel task ``task_id``, if it is pending here; ``force``: kill the worker running it."""
        with self._lock:
            pt = self._tasks.get(task_id)
            if pt is None:
                return
            pt.cancelled = True
            local = pt.missing > 0 or (
                pt.spec.kind == TaskKind.ACTOR_CALL and pt in self._actors[pt.spec.actor_id].queue  # type: ignore[index]
            )
            if local:
                self._fail_task(pt, TaskCancelledError(task_id.hex()))
            actor_conn = None
            if pt.spec.kind == TaskKind.ACTOR_CALL and not local:
                actor_conn = self._actors[pt.spec.actor_id].conn  # type: ignore[index]
        if local:
            self._wake_waiters()
            return
        if pt.spec.kind == TaskKind.ACTOR_CALL:
            # Sent to the actor, which runs it: the scheduler never sees a call.
            if actor_conn is not None and not actor_conn.closed:
                actor_conn.send_now((Op.CANCEL_CALL, task_id))
            return
        # The worker running it cancels what it submitted (recursive), before it stops.
        self._links.scheduler.send_now((Op.CANCEL, task_id, force, recursive))

    def cancel_children(self, parent_task_id: bytes, force: bool) -> None:
        """Cancel, recursively, the tasks this process submitted from task ``parent_task_id`` that are not done.

        As Ray: an actor call among them is cancelled without ``force`` (an actor is never killed for it).
        """
        with self._lock:
            children = [(pt.spec.task_id, pt.spec.kind == TaskKind.ACTOR_CALL) for pt in self._tasks.values()
                        if pt.spec.parent_task_id == parent_task_id]
        for task_id, actor_call in children:
            self.cancel(task_id, force and not actor_call, True)
