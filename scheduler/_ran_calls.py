"""The outcomes of the calls an actor ran last, kept to answer a call its caller sends again.

A caller whose connection to a live actor broke (a network cut ends a
relayed connection at one end before the other) cannot know whether the
calls it had in flight reached the actor, ran, or had their results lost on
the way back. It sends them again on its new connection
(``_owner/_actors.py``), and the actor answers one it ran already with the
outcome it had, instead of running it a second time. A one-at-a-time actor
takes calls in the order they come, so a call sent again always comes after
the first one finished. A concurrent actor's calls are not kept: one sent
again runs again (as their calls are not replayed after a restart either).

A bounded table over plain data; it must never send, log or read the clock.
"""

from __future__ import annotations

from collections import OrderedDict

__all__ = ["RAN_CALLS_KEPT", "RanCalls"]

RAN_CALLS_KEPT = 128  # outcomes kept at most: a caller sends again only what it had in flight


class RanCalls:
    """Outcome ``(results, failed)`` of each of the last ``RAN_CALLS_KEPT`` calls run, by task id: the
    results as they were sent (``SentResult``: inline bytes, or the size of a result in the store), so
    what is kept is small whatever the calls returned."""

    def __init__(self) -> None:
        self._outcomes: OrderedDict[bytes, tuple[list, bool]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._outcomes)

    def ran(self, task_id: bytes, outcome: list, failed: bool) -> None:
        self._outcomes[task_id] = (outcome, failed)
        self._outcomes.move_to_end(task_id)
        while len(self._outcomes) > RAN_CALLS_KEPT:
            self._outcomes.popitem(last=False)

    def outcome(self, task_id: bytes) -> tuple[list, bool] | None:
        """What the call ``task_id`` gave when it ran here; None if it did not run (or was forgotten)."""
        return self._outcomes.get(task_id)
