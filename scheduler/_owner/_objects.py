"""The owner's object table: what it knows of each object it owns, and how many refs to each are alive.

An owned object is ``PENDING`` (its task has not finished), ``READY_INLINE``
(its bytes are held here) or ``READY_STORE`` (in a node's store: this one's,
or, in a multi-node cluster, the store of the node whose process wrote it).
Where a stored object is, is a ``where``: ``None`` for this node's store,
the address of the process that wrote it on another node, or ``CopyLost.LOST``
once that copy died with its node.

The table decides only bookkeeping: when the last ref to an object is
dropped, ``release`` says which entry is to be freed; the owner does the
freeing (messages to stores). It must never send a message or take a lock of
its own: the owner's lock guards it, and the garbage collector's drops that
cannot take that lock wait in ``deferred``.
"""

from __future__ import annotations

import contextvars

import enum
from collections import deque
from typing import Any

__all__ = ["INLINE_BYTES_MAX", "CopyLost", "ObjectEntry", "ObjectState", "ObjectTable", "OwnerState", "Where"]

INLINE_BYTES_MAX = 100 * 1024  # larger objects go through shared memory (lineage/_reader.py agrees, tested)


class ObjectState(enum.Enum):
    """The state of an object this process owns."""

    PENDING = "pending"  # its task has not finished
    READY_INLINE = "ready_inline"  # its bytes are held in this process
    READY_STORE = "ready_store"  # in a node's object store


class CopyLost(enum.Enum):
    """The location of a stored object whose only known copy died with the node that held it."""

    LOST = "lost"


# None: inline, or in this node's store; str: in the store of the node of the process at this address,
# which wrote it; CopyLost.LOST: that copy died with its node.
Where = str | CopyLost | None


class ObjectEntry:
    """One owned object."""

    __slots__ = ("state", "data", "shared", "dropped", "log_seq", "order", "where", "size", "copies")

    def __init__(self, state: ObjectState = ObjectState.PENDING) -> None:
        self.where: Where = None
        self.size = 0  # bytes, of an object in a store: for the global scheduler's input locality
        self.copies: list[str] | None = None  # processes on other nodes told where it is: their nodes pulled it
        self.log_seq = 0  # the lineage row that must be durable before others see the value
        self.order: tuple[bytes, int] | None = None  # (actor, place) of an actor call whose order row may not be
        self.state = state
        self.data: bytes | None = None
        self.shared = False  # a ref left this process: kept, and published to the store when inline
        self.dropped = False  # every ref was dropped while it was pending: forgotten when it finishes

    def set_ready(self, data: bytes | None, size: int, where: Where) -> None:
        """Its value came: ``data`` inline, or (``data`` None) ``size`` bytes in the store at ``where``."""
        self.copies = None
        if data is None:
            self.state = ObjectState.READY_STORE
            self.where = where
            self.size = size
        else:
            self.state = ObjectState.READY_INLINE
            self.data = data
            self.where = None

    @classmethod
    def shared_pending(cls) -> "ObjectEntry":
        """An entry other processes read (adopted, or an input of a replay)."""
        entry = cls()
        entry.shared = True
        return entry


class ObjectTable:
    """The owned objects and the count of live refs to each (guarded by the owner's lock)."""

    __slots__ = ("entries", "refcounts", "deferred")

    def __init__(self) -> None:
        self.entries: dict[bytes, ObjectEntry] = {}
        self.refcounts: dict[bytes, int] = {}
        # Drops the garbage collector could not take the lock for: applied at the next incref or decref.
        self.deferred: deque[bytes] = deque()

    def incref(self, oid: bytes) -> None:
        self.refcounts[oid] = self.refcounts.get(oid, 0) + 1

    def release(self, oid: bytes, kept: bool = False) -> ObjectEntry | None:
        """A ref to ``oid`` was dropped: the entry the owner must free now, if this was the last ref to a
        finished object nobody else was handed; a pending one is forgotten when it finishes. ``kept``: the
        object is named by another one still held (a dynamic generator's end): it stays, freed with that."""
        count = self.refcounts.get(oid, 0) - 1
        if count > 0:
            self.refcounts[oid] = count
            return None
        self.refcounts.pop(oid, None)
        entry = self.entries.get(oid)
        if entry is None or entry.shared or kept:
            return None
        if entry.state is ObjectState.PENDING:
            entry.dropped = True
            return None
        del self.entries[oid]
        return entry


# The call a concurrent actor runs in this thread or asyncio task (None: none). Calls of a concurrent
# actor run together, each on a thread or in an asyncio task of its own: each sees its own.
_CONCURRENT_CALL: contextvars.ContextVar[Any] = contextvars.ContextVar("ember_concurrent_call", default=None)


class OwnerState:
    """The little the owner's parts share that changes over its life (guarded by the owner's lock)."""

    __slots__ = ("closed", "closed_reason", "_current_task", "store_generation")

    def __init__(self) -> None:
        self.closed = False  # closed, or its scheduler is gone for good: waits end
        self.closed_reason = ""  # why, for the ObjectLostError a waiting get raises
        self._current_task: Any = None  # the TaskSpec this process's executor runs now (None: none)
        self.store_generation = 0  # counts reconnections to a restarted store

    @property
    def current_task(self) -> Any:
        """The task running here: this thread's (or asyncio task's) concurrent call, else the executor's one."""
        call = _CONCURRENT_CALL.get()
        return call if call is not None else self._current_task

    @current_task.setter
    def current_task(self, spec: Any) -> None:
        self._current_task = spec

    @staticmethod
    def enter_concurrent_call(spec: Any) -> contextvars.Token:
        """Make ``spec`` the current task of this thread or asyncio task only; undo with ``leave_concurrent_call``."""
        return _CONCURRENT_CALL.set(spec)

    @staticmethod
    def leave_concurrent_call(token: contextvars.Token) -> None:
        _CONCURRENT_CALL.reset(token)
