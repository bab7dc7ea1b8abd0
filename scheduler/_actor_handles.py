"""Freeing actors no process holds a handle to: the creator's count, and its borrowers'.

A non-detached, unnamed actor ends once no process holds a handle to it,
after the calls already sent to it: its creator sends ``__ray_terminate__``,
which queues behind those calls like any call, and the actor's process,
resources and slot are freed (Ray's rule).

The creator counts three things per actor it may free:

- ``live``: handle objects in its own process;
- ``leases``: handles it pickled into the arguments of a task or call it
  submitted, held until that task no longer needs its arguments (its
  result came, or it failed for good); the process that unpickles them has
  registered as a borrower before the task runs, so the actor never ends
  between the two;
- ``borrowers``: the other processes that hold handles (or leases) to it.

Any other process counts its own handles and leases to an actor it did not
create; on its first it registers with the creator (``BORROW``, answered
before the handle is used), on its last it says so (``UNBORROW``). A
borrower that dies without saying so is noticed by the creator, which
checks the borrowers of its otherwise unheld actors while there are any,
and drops the dead ones (``_owner/_liveness.py``: refused on this node, or
out of reach for longer than a cut to a live node can last unnoticed).

What it cannot see it never guesses: a handle pickled into anything but a
task's arguments (``put``, a result, an object a task returns) may be read
anywhere, any number of times, later: that actor lives until its creator
exits (the creator hears ``ESCAPED`` when this happens in a borrower). A
named actor can be looked up from anywhere (``get_actor``) and a detached
one outlives its creator: both are never tracked.

It must never take the owner's lock from ``__del__`` (the garbage collector
runs it on whichever thread it interrupts), and never send from one: ends
and notices leave from a thread of their own.
"""

from __future__ import annotations

import enum
import logging
import threading
import time
from typing import Any

__all__ = ["HANDLES", "ActorHandles", "HandleChange", "leasing"]

log = logging.getLogger("ember.actor")

BORROW_WAIT_S = 30.0  # a borrower waits this long for its creator's answer (a dead creator refuses at once)
BORROWER_CHECK_S = 1.0  # how often a creator checks the borrowers of actors only they hold


class HandleChange(enum.IntEnum):
    """What a borrower tells an actor's creator (``Op.ACTOR_HANDLES``)."""

    BORROW = 1  # this process holds handles to it now (answered: True if it is tracked)
    UNBORROW = 2  # ... and no longer does
    ESCAPED = 3  # a handle left this process in an object: it may be read anywhere, later


class _Held:
    __slots__ = ("creator", "class_name", "live", "leases", "borrowers", "escaped")

    def __init__(self, creator: str | None, class_name: str) -> None:
        self.creator = creator  # None: created here
        self.class_name = class_name
        self.live = 0
        self.leases = 0
        self.borrowers: set[str] = set()  # created here: the processes that registered as borrowers
        self.escaped = False


class _Leasing(threading.local):
    task: Any = None  # the pending task whose arguments this thread is pickling (``leasing``)


_LEASING = _Leasing()


class leasing:
    """``with leasing(pt):`` handles pickled meanwhile on this thread are leases of task ``pt``
    (``pt.actor_leases``), returned by ``ActorHandles.leases_done`` once it needs its arguments no more."""

    __slots__ = ("_task",)

    def __init__(self, task: Any) -> None:
        self._task = task

    def __enter__(self) -> None:
        _LEASING.task = self._task

    def __exit__(self, *exc_info: Any) -> None:
        _LEASING.task = None


class ActorHandles:
    """This process's count of the handles it holds, per actor; and, for actors it created, who else does."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._held: dict[bytes, _Held] = {}
        self._owner: Any = None  # the process's owner (address, submit, links), once it is attached
        self._checker: threading.Thread | None = None

    def attach(self, owner: Any) -> None:
        self._owner = owner

    # -- in any process ------------------------------------------------------------------

    def track(self, actor_id: bytes, class_name: str) -> None:
        """A freeable actor was created here (before its first handle is counted)."""
        with self._lock:
            self._held[actor_id] = _Held(None, class_name)

    def added(self, actor_id: bytes, class_name: str, creator: str | None) -> None:
        """A handle object was made here (created, or unpickled)."""
        register = False
        with self._lock:
            held = self._held.get(actor_id)
            if held is None:
                owner = self._owner
                if creator is None or owner is None or creator == owner.address:
                    return  # not freeable (named, detached), or its creator has forgotten it (escaped)
                held = self._held[actor_id] = _Held(creator, class_name)
                register = True
            held.live += 1
        if register:
            # Before the handle is used, and so before the task that brought it can end: the
            # creator knows of this process before the lease that covered it is returned.
            self._tell(actor_id, creator, HandleChange.BORROW, wait=True)  # type: ignore[arg-type]

    def dropped(self, actor_id: bytes) -> None:
        """A handle object here was garbage collected (may run on any thread, inside any lock: this
        one's too, so a busy lock hands the count to a thread of its own)."""
        if not self._lock.acquire(blocking=False):
            threading.Thread(target=self.dropped, args=(actor_id,), name="ember-actor-handles", daemon=True).start()
            return
        try:
            held = self._held.get(actor_id)
            if held is None:
                return
            held.live -= 1
        finally:
            self._lock.release()
        self._maybe_release(actor_id)

    def pickled(self, actor_id: bytes) -> None:
        """A handle is being pickled: a lease of the task whose arguments these are, or an escape."""
        task = _LEASING.task
        with self._lock:
            held = self._held.get(actor_id)
            if held is None:
                return
            if task is not None:
                held.leases += 1
                if not task.actor_leases:
                    task.actor_leases = []  # most tasks have none: no list each
                task.actor_leases.append(actor_id)
                return
            if held.escaped:
                return
            held.escaped = True
            creator = held.creator
            if creator is None:
                return  # created here: never freed from now on
            del self._held[actor_id]  # the creator keeps it for good: nothing more to say to it
        self._tell_later(actor_id, creator, HandleChange.ESCAPED)

    def leases_done(self, actor_ids: list[bytes]) -> None:
        """A task no longer needs its arguments: the handles pickled into them are returned (under the
        owner's lock: nothing here blocks or sends)."""
        with self._lock:
            for actor_id in actor_ids:
                held = self._held.get(actor_id)
                if held is not None:
                    held.leases -= 1
        for actor_id in actor_ids:
            self._maybe_release(actor_id)

    def forget_all(self) -> None:
        """At shutdown: the cluster ends every actor anyway."""
        with self._lock:
            self._held.clear()

    def statistics(self) -> dict[bytes, tuple[int, int, int]]:
        """Per actor held here: (live handles, leases, borrowers)."""
        with self._lock:
            return {a: (h.live, h.leases, len(h.borrowers)) for a, h in self._held.items()}

    # -- in the creator ------------------------------------------------------------------

    def on_message(self, actor_id: bytes, change: int, borrower: str) -> bool:
        """A borrower's word on an actor created here; True if it is tracked (BORROW's answer)."""
        with self._lock:
            held = self._held.get(actor_id)
            if held is None or held.creator is not None or held.escaped:
                return False
            if change == HandleChange.BORROW:
                held.borrowers.add(borrower)
                return True
            if change == HandleChange.ESCAPED:
                held.escaped = True
                return True
            held.borrowers.discard(borrower)
        self._maybe_release(actor_id)
        return True

    # -- how an actor stops being held -----------------------------------------------------

    def _maybe_release(self, actor_id: bytes) -> None:
        with self._lock:
            held = self._held.get(actor_id)
            if held is None or held.live > 0 or held.leases > 0 or held.escaped:
                return
            if held.creator is None and held.borrowers:
                self._watch_borrowers()
                return
            del self._held[actor_id]
        if held.creator is None:
            threading.Thread(target=self._end, args=(actor_id, held.class_name), name="ember-actor-free",
                             daemon=True).start()
        else:
            self._tell_later(actor_id, held.creator, HandleChange.UNBORROW)

    def _end(self, actor_id: bytes, class_name: str) -> None:
        """No process holds a handle to an actor created here: it ends after the calls sent to it."""
        owner = self._owner
        if owner is None or owner.closed:
            return  # the cluster is going: it ends every actor
        try:
            owner.terminate_actor(actor_id, class_name)
        except Exception:  # noqa: BLE001 - the cluster went meanwhile: nothing is left to free
            pass

    def _tell_later(self, actor_id: bytes, creator: str, change: HandleChange) -> None:
        threading.Thread(target=self._tell, args=(actor_id, creator, change), name="ember-actor-handles",
                         daemon=True).start()

    def _tell(self, actor_id: bytes, creator: str, change: HandleChange, wait: bool = False) -> None:
        owner = self._owner
        if owner is None or owner.closed:
            return
        try:
            owner.tell_actor_creator(creator, actor_id, int(change), BORROW_WAIT_S if wait else None)
        except Exception as exc:  # noqa: BLE001 - a dead creator took its actor with it
            log.debug("actor %s: its creator %s did not hear %s: %s", actor_id.hex(), creator, change.name, exc)

    def _watch_borrowers(self) -> None:
        """Start the check of borrowers' lives, unless it runs (under the lock)."""
        if self._checker is not None and self._checker.is_alive():
            return
        self._checker = threading.Thread(target=self._check_borrowers, name="ember-actor-borrowers", daemon=True)
        self._checker.start()

    def _check_borrowers(self) -> None:
        """While some actor is held only by borrowers, drop the borrowers that died without a word."""
        while True:
            time.sleep(BORROWER_CHECK_S)
            owner = self._owner
            if owner is None or owner.closed:
                return
            with self._lock:
                waiting = {a: set(h.borrowers) for a, h in self._held.items()
                           if h.creator is None and h.borrowers and not h.live and not h.leases and not h.escaped}
            if not waiting:
                return
            dead = {b for borrowers in waiting.values() for b in borrowers if owner.process_gone(b)}
            for actor_id, borrowers in waiting.items():
                for borrower in borrowers & dead:
                    self.on_message(actor_id, HandleChange.UNBORROW, borrower)


HANDLES = ActorHandles()  # this process's
