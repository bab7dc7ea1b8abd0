"""ObjectRef: a future for an immutable object somewhere in the cluster.

A ref knows its object id and its owner's address (``ObjectRef(id_bytes)``
looks the owner up: ``_owner_lookup``). Creating and dropping refs
is counted by the process's owner, so an owner can free objects nobody
can name any more. Pickling a ref (inside a container argument, a result, a
put) marks it as shared: the owner then keeps the object and publishes it to
the node's store so any process can read it.
"""

from __future__ import annotations

from typing import Any

from ember.scheduler import _context
from ember.scheduler._owner_lookup import checked_id, find_owner, id_from_hex
from ember.scheduler._spec import TASK_ID_BYTES, item_id


class TaskID:
    """The id of the task that created an object (``ref.task_id().hex()``)."""

    __slots__ = ("_id",)

    def __init__(self, raw: bytes) -> None:
        self._id = raw

    def hex(self) -> str:
        return self._id.hex()

    def binary(self) -> bytes:
        return self._id

    def __eq__(self, other: object) -> bool:
        return isinstance(other, TaskID) and other._id == self._id

    def __hash__(self) -> int:
        return hash(self._id)

    def __repr__(self) -> str:
        return f"TaskID({self._id.hex()})"


class ObjectRef:
    """A reference to an object that a task returns or ``ember.put`` stores."""

    __slots__ = ("_id", "_owner", "__weakref__")

    def __init__(self, object_id: bytes, owner_addr: str | None = None) -> None:
        if owner_addr is None:
            # ``ObjectRef(id_bytes)``, as in Ray: a ref passed out of band. Its owner is looked up.
            object_id = checked_id(object_id)
            owner_addr = find_owner(_context.require_core(), object_id)
        self._id = object_id
        self._owner = owner_addr
        core = _context.PROCESS.owner
        if core is not None:
            core.incref(object_id)

    def __del__(self) -> None:
        core = _context.PROCESS.owner
        if core is not None:
            try:
                core.decref(self._id)
            except Exception:  # interpreter shutdown: nothing left to free
                pass

    @classmethod
    def from_hex(cls, text: str) -> "ObjectRef":
        """The ref whose ``hex()`` is ``text`` (its owner found as ``ObjectRef(id_bytes)`` finds it)."""
        return cls(id_from_hex(text))

    def hex(self) -> str:
        return self._id.hex()

    def binary(self) -> bytes:
        return self._id

    def task_id(self) -> TaskID:
        return TaskID(self._id[:TASK_ID_BYTES])

    @property
    def owner_address(self) -> str:
        return self._owner

    def __reduce__(self) -> tuple[Any, ...]:
        core = _context.PROCESS.owner
        if core is not None:
            core.on_ref_shared(self)
        return (_rebuild, (self._id, self._owner))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ObjectRef) and other._id == self._id

    def __hash__(self) -> int:
        return hash(self._id)

    def __repr__(self) -> str:
        return f"ObjectRef({self._id.hex()})"

    def future(self) -> Any:
        """A ``concurrent.futures.Future`` resolved with the object's value."""
        from concurrent.futures import Future
        import threading

        fut: Future = Future()

        def resolve() -> None:
            try:
                fut.set_result(_context.require_core().get([self], None)[0])
            except BaseException as exc:  # delivered to the future's user
                fut.set_exception(exc)

        threading.Thread(target=resolve, daemon=True).start()
        return fut

    def __await__(self) -> Any:
        import asyncio

        return asyncio.wrap_future(self.future()).__await__()


def _rebuild(object_id: bytes, owner_addr: str) -> ObjectRef:
    return ObjectRef(object_id, owner_addr)


class DynamicObjectRefGenerator:
    """The value of a ``num_returns="dynamic"`` task: the refs of the values it yielded, in order.

    The task has run to its end when this exists (an exception it raised
    fails the task as a whole, as in Ray). The refs are the submitter's
    objects like any result; this value pickles with them, so it can be
    passed to other tasks and actors.
    """

    __slots__ = ("_refs",)

    def __init__(self, refs: list[ObjectRef]) -> None:
        self._refs = list(refs)

    def __iter__(self) -> Any:
        return iter(self._refs)

    def __len__(self) -> int:
        return len(self._refs)

    def __reduce__(self) -> tuple[Any, ...]:
        return (DynamicObjectRefGenerator, (self._refs,))

    def __repr__(self) -> str:
        return f"DynamicObjectRefGenerator({len(self._refs)} refs)"


def is_dynamic(fn: Any) -> bool:
    """Whether a generator function or method runs with ``num_returns="dynamic"``: shipped as a
    ``DynamicReturns`` (a task's), or decorated with ``@ember.method(num_returns="dynamic")``."""
    return bool(getattr(fn, "dynamic_returns", False)) or \
        getattr(fn, "__ember_method_options__", {}).get("num_returns") == "dynamic"


def stream_end(task_id: bytes, owner_addr: str, sent: int, dynamic: bool) -> Any:
    """A streaming task's end value: how many values it yielded, or (``dynamic``) their refs, which
    the task's caller owns like any result of its own."""
    if not dynamic:
        return sent
    return DynamicObjectRefGenerator([ObjectRef(item_id(task_id, i), owner_addr) for i in range(sent)])
