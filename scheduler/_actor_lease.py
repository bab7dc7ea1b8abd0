"""A node's lease on its actors' calls: no call runs on an instance the GCS may have superseded.

The actor fence (``lineage/_actor_fence.py``) kills a superseded actor
instance when its node is heard from again. Until then the node could run
calls on it: during a cut, for a caller on its side of the cut, and after
the heal, until its first heartbeat is answered. So a node of a cluster
holds its actors' calls while the GCS has not answered it for
``HOLD_AFTER_S``: a call that arrives waits in its actor's process, and one
running finishes. That is before any owner can have restarted an actor
elsewhere: an owner gives a node up only when its relay's keepalive does,
``KEEPALIVE_TIMEOUT_S`` after the cut at the earliest. The GCS's next answer
(the node's registration, or a heartbeat) carries the stale instances; the
node kills them first, then lets the held calls run, in the order they
came. A hold that lasts ``actor_hold_max_s`` (EMBER_ACTOR_HOLD_MAX_S) more
refuses the held calls and every later one with ``ActorUnavailableError``
(none of them ran, so a caller may send it again) until the GCS answers.

``Lease`` decides on the node scheduler's clock, ``HeldCalls`` keeps an actor
process's held calls; both are sans-IO. The messages between them are
``Op.HOLD_CALLS`` with one of ``RUN``, ``HOLD``, ``REFUSE``.
"""

from __future__ import annotations

from collections import deque
from typing import Any

from ember.scheduler._relay import KEEPALIVE_TIMEOUT_S

__all__ = ["HELD_TOO_LONG", "HOLD", "HOLD_AFTER_S", "REFUSE", "RUN", "HeldCalls", "Lease"]

RUN, HOLD, REFUSE = 0, 1, 2  # what an actor process does with the calls it is sent
HOLD_AFTER_S = 2.0  # no answer from the GCS this long: hold (10 heartbeats; the GCS's limit is 1 s)
assert HOLD_AFTER_S < KEEPALIVE_TIMEOUT_S, "calls must be held before an owner can restart an actor elsewhere"
# Why a call is refused (ActorUnavailableError).
HELD_TOO_LONG = ("its node has not heard from the cluster's GCS for longer than EMBER_ACTOR_HOLD_MAX_S allows, so "
                 "the actor may run on another node now; the call did not run, and may be sent again")


class Lease:
    """When a node's actors must hold, refuse or run calls, from when the GCS last answered it."""

    def __init__(self, hold_max_s: float) -> None:
        self._hold_max_s = hold_max_s
        self._answered_at: float | None = None  # None: never answered yet (nothing of this node's runs)
        self.mode = RUN

    def answered(self, now: float) -> int | None:
        """The GCS answered (after its stale instances were fenced): the new mode, if it changed."""
        self._answered_at = now
        return self._change(RUN)

    def tick(self, now: float) -> int | None:
        """The mode now, if it changed."""
        if self._answered_at is None:
            return None
        silent = now - self._answered_at
        if silent > HOLD_AFTER_S + self._hold_max_s:
            return self._change(REFUSE)
        if silent > HOLD_AFTER_S and self.mode == RUN:
            return self._change(HOLD)
        return None

    def _change(self, mode: int) -> int | None:
        if mode == self.mode:
            return None
        self.mode = mode
        return mode


class HeldCalls:
    """An actor process's calls while its node holds them: kept in the order they came."""

    def __init__(self) -> None:
        self.mode = RUN
        self._held: deque[tuple[Any, Any]] = deque()

    def keep(self, conn: Any, call: Any) -> bool:
        """Hold ``call`` (from ``conn``) if its node holds calls; False if it is to run, or to be refused
        (``mode`` says which)."""
        if self.mode != HOLD:
            return False
        self._held.append((conn, call))
        return True

    def set(self, mode: int) -> list[tuple[Any, Any]]:
        """The node's mode changed: the held calls to run (``RUN``) or to refuse (``REFUSE``), in order."""
        self.mode = mode
        if mode == HOLD:
            return []
        released = list(self._held)
        self._held.clear()
        return released
