"""The owner's incoming messages: which handler takes each op.

Every message a connection's reader thread hands the owner goes through
``MessageTable.dispatch``: its shape is checked (``_messages``), an op only a
worker's own scheduler may send is refused from anyone else, and the handler
registered for the op takes it. Ops with no handler here are the executor's
(a worker's tasks and actor calls); they wait in ``early`` until it attaches.

It must never block: handlers only update tables and queue messages, and
anything slow (a commit) is handed to a thread of its own by the handler.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import Any

from ember.lineage._states import ProcessKind
from ember.scheduler import _messages
from ember.scheduler._protocol import Connection, op_name

__all__ = ["Handler", "MessageTable"]

Handler = Callable[[Connection, tuple], None]  # (the connection it came on, the whole message)


class MessageTable:
    """Op -> handler, with the checks every incoming message passes first."""

    def __init__(self, kind: ProcessKind, handlers: dict[int, Handler],
                 from_own_scheduler: Callable[[Connection], bool], lock: Any) -> None:
        self._kind = kind
        self._handlers = handlers
        self._from_own_scheduler = from_own_scheduler  # the connection is this worker's to its node's scheduler
        self._lock = lock
        self.executor: Any = None  # a worker's Executor, which takes every op without a handler here
        self.early: list[tuple[Connection, tuple]] = []  # what came for the executor before it attached

    def dispatch(self, conn: Connection, msg: tuple) -> None:
        problem = _messages.problem(msg, _messages.CORE_OPS)
        if problem is None and msg[0] in _messages.FROM_SCHEDULER_ONLY and (
                self._kind != ProcessKind.WORKER or not self._from_own_scheduler(conn)):
            problem = f"{op_name(msg[0])} is taken only from this node's scheduler, by a worker"
        if problem is not None:
            _messages.refuse(conn, msg, problem, f"{self._kind} {os.getpid()}")
            return
        handler = self._handlers.get(msg[0])
        if handler is not None:
            handler(conn, msg)
            return
        with self._lock:
            executor = self.executor
            if executor is None:
                # A worker's executor attaches right after connecting; keep what arrives before then.
                self.early.append((conn, msg))
                return
        executor.deliver(conn, msg)

    def attach_executor(self, executor: Any) -> None:
        with self._lock:
            self.executor = executor
            early, self.early = self.early, []
        for conn, msg in early:
            executor.deliver(conn, msg)


def off_the_reader(target: Callable[..., None], name: str) -> Handler:
    """A handler that runs ``target(conn, *msg[1:])`` on a thread of its own (it may wait for a commit)."""
    def handler(conn: Connection, msg: tuple) -> None:
        threading.Thread(target=target, args=(conn, *msg[1:]), name=name, daemon=True).start()
    return handler
