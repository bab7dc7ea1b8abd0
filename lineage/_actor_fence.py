"""Which actor processes are superseded instances on a node that was cut off: the actor fence.

An actor's owner restarts it elsewhere when it loses its node; the node,
cut off (a network partition), may still run the old instance. The GCS
declares such a node dead first (its detector is faster than the owners'),
and this table marks every actor process the node had then, or reports
having started while it was dead, as *suspect*. When the node is heard
from again (its registration after the heal, then its heartbeats), a
suspect process whose actor has a current instance on another node is
*stale*: the GCS answers with it, and the node kills it before anything
else of its is heard. An actor's current instance is its latest start the
GCS heard, except that a start reported by a node coming back from the
dead never displaces a live instance elsewhere that was never cut off (it
happened behind the cut, while the owner, who decides restarts, had moved
on). A suspect instance (its node was declared dead since it started) is
displaced as usual: the later start is then the owner's restart, placed on
a node whose heartbeats were late for a moment (a loaded machine), which
reports it only as it registers again. Kept from being current, that new
instance was fenced and the cut-off old one kept.

Processes on nodes never declared dead are never fenced: two instances
there (an owner's placement retried, say) are left to the owner, who talks
to one. The owner ignores results of any attempt but the current one, so
what an old instance finished in between is never published.

A sans-IO decision core over plain ids (hex strings), used under the GCS
service's lock; it must never do I/O or read the clock.
"""

from __future__ import annotations

__all__ = ["ActorInstances", "INSTANCES_PER_NODE_MAX"]

INSTANCES_PER_NODE_MAX = 100_000  # actor processes a node may have at once, as far as this table keeps


class ActorInstances:
    """The live actor processes of each node, each actor's current instance, and the suspect processes."""

    def __init__(self) -> None:
        self._current: dict[str, tuple[str, str]] = {}  # actor id -> (process id, node id) of its current instance
        self._by_node: dict[str, dict[str, str]] = {}  # node id -> {process id: actor id}, live as last heard
        self._returning: set[str] = set()  # nodes declared dead that have not registered again
        self._suspect: set[str] = set()  # processes of a node while it was declared dead

    def started(self, node_id: str, process_id: str, actor_id: str) -> None:
        """An instance of ``actor_id`` started on ``node_id``: the actor's current one, unless the node
        reports it on its way back from the dead and the actor has a live instance elsewhere that was never
        cut off (not suspect)."""
        current = self._current.get(actor_id)
        if node_id in self._returning:
            self._suspect.add(process_id)
            if (current is not None and current[1] != node_id and current[0] not in self._suspect
                    and current[0] in self._by_node.get(current[1], {})):
                self._remember(node_id, process_id, actor_id)
                return
        self._current[actor_id] = (process_id, node_id)
        self._remember(node_id, process_id, actor_id)

    def died(self, node_id: str, process_id: str) -> None:
        self._by_node.get(node_id, {}).pop(process_id, None)
        self._suspect.discard(process_id)

    def declared_dead(self, node_id: str) -> None:
        """The failure detector gave up on ``node_id``: all its actor processes are suspect from now on."""
        self._returning.add(node_id)
        self._suspect.update(self._by_node.get(node_id, {}))

    def registered(self, node_id: str, own: dict[str, str]) -> None:
        """``node_id`` registers, naming the actor processes it runs (``{process id: actor id}``), after its
        events were noted. A process the GCS has no start for (it was restarted, and the log ended the
        process with its node) is current only if no other instance of its actor is known."""
        for process_id, actor_id in own.items():
            self._current.setdefault(actor_id, (process_id, node_id))
            self._remember(node_id, process_id, actor_id)
        self._returning.discard(node_id)

    def node_left(self, node_id: str) -> None:
        """The node said goodbye (its processes stopped with it): nothing of it is left to fence."""
        for process_id in self._by_node.pop(node_id, {}):
            self._suspect.discard(process_id)
        self._returning.discard(node_id)

    def stale(self, node_id: str) -> list[str]:
        """The suspect processes of ``node_id`` whose actor's current instance is another process, sorted."""
        live = self._by_node.get(node_id, {})
        return sorted(p for p, a in live.items() if p in self._suspect and self._current.get(a, (p,))[0] != p)

    def current(self, actor_id: str) -> str | None:
        found = self._current.get(actor_id)
        return found[0] if found is not None else None

    def _remember(self, node_id: str, process_id: str, actor_id: str) -> None:
        live = self._by_node.setdefault(node_id, {})
        if len(live) < INSTANCES_PER_NODE_MAX or process_id in live:
            live[process_id] = actor_id
