"""Copies of the store objects an actor's calls read, so a restarted actor can replay them.

A logged call names its large arguments by object id. By the time the actor
restarts and replays the call, those objects may be long freed, or lost with
a store, and a task's result may not be rebuildable either (its own inputs
freed too). Replaying without them would silently give the actor another
state; so the actor keeps, beside its log, a copy of every store object a
call reads, under ``$EMBER_HOME/objects/<job>/actor-<actor>/``, and replay
reads from there. The copies go with the job's directory when the job ends.

The actor also keeps a copy of each result it puts in the store, for its
owner: a call is not run again, so a result lost with its store comes back
from that copy.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ember.exceptions import ObjectStoreFullError
from ember.scheduler._spec import ArgKind

from ember.store import NO_ROOM, NoRoomForCopy, disk_room, job_dir, write_copy


class ActorArgCopies:
    def __init__(self, home: Path, job_id: bytes, actor_id: bytes) -> None:
        self.home = home
        self.job_id = job_id
        self.root = job_dir(home, job_id) / f"actor-{actor_id.hex()}"

    def require_room(self, spec: Any) -> None:
        """Raise ObjectStoreFullError if the disk is down to its reserve and call ``spec`` reads objects from
        the store: checked before the call takes its place in the actor's order, since a call whose
        arguments could not be kept must not run (its replay would read something else)."""
        if not any(arg[0] == ArgKind.REF for arg in (*spec.args, *(spec.kwargs or {}).values())):
            return
        if not disk_room(self.root, 0):
            raise ObjectStoreFullError(
                f"{spec.describe()} was not run: the actor keeps a copy of every object its calls read, for its "
                f"replay after a crash, under {self.root.parent}, and that disk is down to its reserve "
                "(EMBER_COPY_DISK_RESERVE_BYTES). Free disk space, give the actor checkpoint hooks "
                "(save_checkpoint/load_checkpoint), pass smaller arguments, or set EMBER_PUT_COPIES=off")

    def keep(self, object_id: bytes, data: memoryview | bytes) -> None:
        path = self.root / object_id.hex()
        if not path.exists():  # objects are immutable: one copy serves every call that reads it
            write_copy(path, data)

    def keep_result(self, object_id: bytes, data: memoryview | bytes) -> None:
        """A copy of a result in the store, where its owner looks (``PutCopies.adopt``) and deletes it on free.

        Written before the result leaves, so no store death can come between
        the result being seen and its copy existing.
        """
        try:
            write_copy(job_dir(self.home, self.job_id) / object_id.hex(), data)
        except NoRoomForCopy:
            NO_ROOM.skipped(f"actor result {object_id.hex()}")  # lost with its store, it cannot come back

    def read(self, object_id: bytes) -> bytes | None:
        try:
            return (self.root / object_id.hex()).read_bytes()
        except OSError:
            return None
