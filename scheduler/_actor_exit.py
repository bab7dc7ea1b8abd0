"""An actor ending itself: ``exit_actor()`` inside a method, or ``handle.__ray_terminate__.remote()``.

``ActorExit`` is what ``exit_actor()`` raises: a ``SystemExit``, so user code's
``except Exception`` lets it through to the executor, which ends the actor
cleanly (the call that raised it, and every call after it, fail with an
``ActorDiedError`` naming the exit; the actor is not restarted).

This module is a leaf of the scheduler package: it must never import the owner or the executor.
"""

from __future__ import annotations

__all__ = ["RESTART_FROM", "RESTART_FROM_CONSTRUCTOR", "TERMINATE_METHOD", "TERMINATE_POLL_S", "ActorExit",
           "restart_from_in_meta"]

# An actor's ``restart_from``: what a restart brings back. "replay" (ember's default): constructor, newest
# checkpoint, then its logged calls; "constructor": Ray's restart, from the constructor only.
RESTART_FROM = ("replay", "constructor")
RESTART_FROM_CONSTRUCTOR = "constructor"

TERMINATE_METHOD = "__ray_terminate__"  # Ray's name: ends the actor after the calls queued before it
TERMINATE_POLL_S = 0.01  # a concurrent actor's terminate checks this often whether its other calls are done


class ActorExit(SystemExit):
    """Raised by ``exit_actor()``: the actor ends once the current call returns (never caught as an error)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason

    def __reduce__(self) -> tuple:
        return (ActorExit, (self.reason,))


def restart_from_in_meta(meta: object) -> str | None:
    """An actor's ``restart_from`` from its handle metadata (its fifth item), if it is not the default."""
    if isinstance(meta, tuple) and len(meta) > 4 and meta[4] in RESTART_FROM:
        return meta[4]
    return None
