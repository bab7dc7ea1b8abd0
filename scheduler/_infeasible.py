"""Requests no node can give: what the user is told, and how often.

A task (or an actor) asking for more than any node of its cluster has is
never refused when it is submitted: ``.remote()`` returns, as in Ray. What
happens next depends on whether the cluster can grow:

- a cluster that ``ember.init()`` started for one program has its one node
  for good: the task fails at once, and ``get``/``wait`` raise
  ``InfeasibleResourceError`` with :func:`fixed_cluster_message`;
- a cluster of ``ember start`` nodes can gain a node that has it: the task
  waits, and its owner is warned with :func:`waiting_message`, once, then
  every ``WARN_EVERY_S`` while it waits (:class:`WaitWarnings`).

This module is plain logic over data, with the clock passed in: it must
never do I/O.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Mapping

from ember.exceptions import ActorDiedError, ActorPlacementGroupRemoved, ActorUnschedulableError, InfeasibleActorError
from ember.scheduler._spec import GROUP_REMOVED

WARN_EVERY_S = 60.0  # a waiting request is named again this often
WARNED_KEYS_MAX = 4096  # (owner, request) pairs remembered; the oldest is forgotten first
_EPSILON = 1e-9
# Resources every node has in plenty and nobody asks for by hand: left out of the totals a message shows.
_NOISE = ("memory", "object_store_memory")


def missing(request: Iterable[tuple[str, float]], totals: Mapping[str, float]) -> dict[str, float]:
    """The part of ``request`` that ``totals`` (one node's) can never give."""
    return {name: amount for name, amount in request if totals.get(name, 0.0) + _EPSILON < amount}


def _shown(totals: Mapping[str, float]) -> dict[str, float]:
    return {name: amount for name, amount in sorted(totals.items()) if name not in _NOISE}


def fixed_cluster_message(request: Iterable[tuple[str, float]], totals: Mapping[str, float]) -> str:
    """Why a request fails on a cluster no node can join, and how to get a cluster that can run it."""
    wanted = dict(request)
    short = missing(wanted.items(), totals)
    have = {name: totals.get(name, 0.0) for name in short}
    return (f"it asks for {wanted}, and this cluster can never give {short}: it has {have} "
            f"(its totals: {_shown(totals)}), and no node can join a cluster ember.init() started. "
            "Lower the request, or start a bigger cluster: ember.init(num_cpus=N, num_gpus=N, "
            "resources={...}) (resources like GPUs are scheduling labels here), or `ember start --head` "
            "and `ember start --address HEAD:PORT` on more machines, then ember.init(address=\"auto\")")


# How a scheduler's reason for an actor's death begins when the actor could never start: the reason
# travels to the actor's callers as text, and they raise InfeasibleActorError for it.
CANNOT_START = "it cannot start: "
CANNOT_SCHEDULE = "it cannot be scheduled: "  # its scheduling strategy cannot be met


def actor_cannot_start(request: Iterable[tuple[str, float]], totals: Mapping[str, float]) -> str:
    """The death reason of an actor no node of a cluster that cannot grow can start."""
    return CANNOT_START + fixed_cluster_message(request, totals)


def actor_died_error(actor_desc: str, reason: str) -> ActorDiedError:
    """The error for a call on a dead actor: ``InfeasibleActorError`` if it could never start,
    ``ActorUnschedulableError`` if its scheduling strategy could not be met."""
    if reason.startswith(CANNOT_START):
        return InfeasibleActorError(actor_desc, reason)
    if reason.startswith(CANNOT_SCHEDULE + GROUP_REMOVED):
        return ActorPlacementGroupRemoved(actor_desc, reason)
    if reason.startswith(CANNOT_SCHEDULE):
        return ActorUnschedulableError(actor_desc, reason)
    return ActorDiedError(actor_desc, reason)


def waiting_message(what: str, request: Iterable[tuple[str, float]], totals: Mapping[str, float],
                    nodes: int) -> str:
    """The warning for a request that waits for a node able to run it (``totals``: the live nodes' sum)."""
    return (f"ember: warning: {what} cannot be scheduled right now: it asks for {dict(request)}, and no live "
            f"node of the cluster has that (the cluster has {_shown(totals)} over {nodes} node(s)). It waits "
            "until a node that has it joins (`ember start --address HEAD:PORT --num-cpus N --resources "
            "'{...}'`), or until it is cancelled; this warning repeats every "
            f"{WARN_EVERY_S:.0f}s while it waits")


class WaitWarnings:
    """When to warn an owner about its requests that wait: once, then every ``every_s`` while they wait.

    Keyed by (owner, request), so a thousand waiting tasks of one shape make
    one warning a minute, not a thousand.
    """

    def __init__(self, every_s: float = WARN_EVERY_S, keys_max: int = WARNED_KEYS_MAX) -> None:
        self._every_s = every_s
        self._keys_max = keys_max
        self._last: OrderedDict[tuple[str, tuple], float] = OrderedDict()

    def due(self, owner: str, request: tuple, now: float) -> bool:
        """Whether to warn ``owner`` about ``request`` at ``now`` (and if so, note that it was)."""
        key = (owner, request)
        last = self._last.get(key)
        if last is not None and now - last < self._every_s:
            return False
        self._last[key] = now
        self._last.move_to_end(key)
        while len(self._last) > self._keys_max:
            self._last.popitem(last=False)
        return True

    def __len__(self) -> int:
        return len(self._last)


__all__ = ["CANNOT_START", "WARN_EVERY_S", "WaitWarnings", "actor_cannot_start", "actor_died_error",
           "fixed_cluster_message", "missing", "waiting_message"]
