"""The owner of an object known only by its id: ``ember.ObjectRef(id_bytes)``, ``ObjectRef.from_hex``.

A ref names its owner, which a ``get`` asks for the value. A ref rebuilt from
its id alone (passed out of band: printed, written to a file) finds it here:

- this process, if it owns the object;
- else the lineage log: the process whose task a node scheduler still holds
  (``scheduler_queue.owner``), the caller of the actor call that makes it
  (``actor_calls.caller``), the process that submitted its task
  (``tasks.owner``) or put it (``objects.owner``);
- else, for an object the log knows whose owner it does not name (one logged
  before schema version 10), no live owner at all: the ref is adopted, as a
  borrowed ref of a dead owner is; so is one whose named owner has died. The object is read from a store that has
  it, or rebuilt from its lineage (a put from its durable copy). Ray cannot do
  this once the owner is gone; objects outlive their owners here.

An id the log does not know raises ``UnknownObjectRefError`` naming it. The
lookup reads the log on the caller's thread; it must never run on a reader
thread, nor under the core's lock.
"""

from __future__ import annotations

import struct
import time
from typing import Any

from ember.exceptions import NotAnObjectRefError, UnknownObjectRefError
from ember.scheduler._spec import OBJECT_ID_BYTES, STREAMING, TASK_ID_BYTES

# The owner's task spec reaches the log a few milliseconds after the ref exists (group commit):
# an id read back that soon is looked up again for this long before it counts as unknown.
LOOKUP_WAIT_S = 2.0
LOOKUP_POLL_S = 0.05
# The owner address of an adopted ref: a socket in this session's folder that no process ever binds,
# so the first wait on the ref finds its owner dead and adopts the object.
NO_LIVE_OWNER = "no-live-owner"


def checked_id(object_id: Any) -> bytes:
    """``object_id`` as the id bytes of an object, or a typed error naming what is wrong."""
    if not isinstance(object_id, (bytes, bytearray, memoryview)):
        raise NotAnObjectRefError(
            f"ObjectRef(id) expects the {OBJECT_ID_BYTES} bytes of an object id (ref.binary()), got a "
            f"{type(object_id).__name__}: {object_id!r:.100}; for a hex string use ObjectRef.from_hex(text)")
    raw = bytes(object_id)
    if len(raw) != OBJECT_ID_BYTES:
        raise NotAnObjectRefError(
            f"ObjectRef(id) expects the {OBJECT_ID_BYTES} bytes of an object id (ref.binary()), got "
            f"{len(raw)} bytes: {raw.hex()[:80]}")
    return raw


def id_from_hex(text: Any) -> bytes:
    if not isinstance(text, str):
        raise NotAnObjectRefError(f"ObjectRef.from_hex expects a hex string (ref.hex()), got a {type(text).__name__}")
    try:
        return checked_id(bytes.fromhex(text))
    except ValueError as exc:
        if isinstance(exc, NotAnObjectRefError):
            raise
        raise NotAnObjectRefError(f"ObjectRef.from_hex expects a hex string (ref.hex()), got {text!r:.100}") from exc


def find_owner(core: Any, object_id: bytes, wait_s: float = LOOKUP_WAIT_S) -> str:
    """The owner address a ref to ``object_id`` names in ``core``'s process (see the module's docstring)."""
    # The owner's own tables, read without its lock: one dict lookup (never a reader thread's path).
    if object_id in core._objects:
        return str(core.address)
    source = core.rebuild.replay_source()
    if source is None:
        raise UnknownObjectRefError(
            object_id.hex(), "this cluster runs without a lineage log (EMBER_LINEAGE=off), so only the process "
            "that owns an object can rebuild a ref to it from its id; pass the ref itself instead")
    task_id = object_id[:TASK_ID_BYTES]
    (index,) = struct.unpack(">I", object_id[TASK_ID_BYTES:])
    deadline = time.monotonic() + wait_s
    while True:
        facts = source.owner_facts(object_id, task_id)
        if facts.known or time.monotonic() > deadline:
            break
        time.sleep(LOOKUP_POLL_S)
    if not facts.known:
        raise UnknownObjectRefError(
            object_id.hex(), "the lineage log has no task or put that made it. Rebuild refs only from ids that "
            "ref.hex() or ref.binary() gave in this cluster (a log pruned since may have dropped it)")
    # A generator's values are numbered as it yields them: any index past its end object may be one.
    if not facts.object_logged and facts.num_returns is not None and facts.num_returns != STREAMING \
            and not 1 <= index <= max(facts.num_returns, 1):
        raise UnknownObjectRefError(
            object_id.hex(), f"its task {task_id.hex()} returns {facts.num_returns} object(s), and this id "
            f"names result {index}")
    return facts.live_owner or core._owners_prefix + NO_LIVE_OWNER


__all__ = ["LOOKUP_WAIT_S", "NO_LIVE_OWNER", "checked_id", "find_owner", "id_from_hex"]
