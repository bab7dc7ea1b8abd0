"""Which process is each actor's current instance, and which live ones are superseded: the actor fence.

An actor's instances are numbered by the order the GCS hears of their
starts: the latest started is the actor's current instance (its
generation). A node cut off from the cluster long enough for the actor's
owner to restart the actor elsewhere still runs the old instance; when the
node is heard from again (a heartbeat, or a registration after it was
declared dead), the GCS answers with that node's superseded instances, and
the node kills them before anything else of theirs is heard: a second
instance of an actor never runs on past its node's first word with the GCS.
The owner, for its part, ignores a result of any attempt but the current
one, so what an old instance finished in between is never published.

A sans-IO decision core over plain ids (hex strings), used under the GCS
service's lock; it must never do I/O or read the clock.
"""

from __future__ import annotations

__all__ = ["ActorInstances", "INSTANCES_PER_NODE_MAX"]

INSTANCES_PER_NODE_MAX = 100_000  # actor processes a node may have at once, as far as this table keeps


class ActorInstances:
    """The live actor processes of each node, and each actor's latest started process."""

    def __init__(self) -> None:
        self._latest: dict[str, str] = {}  # actor id -> process id of its latest started instance
        self._by_node: dict[str, dict[str, str]] = {}  # node id -> {process id: actor id}, live as last heard

    def started(self, node_id: str, process_id: str, actor_id: str) -> None:
        """An instance of ``actor_id`` started on ``node_id``: from now on it is the actor's current one."""
        self._latest[actor_id] = process_id
        self._remember(node_id, process_id, actor_id)

    def died(self, node_id: str, process_id: str) -> None:
        self._by_node.get(node_id, {}).pop(process_id, None)

    def claimed(self, node_id: str, own: dict[str, str]) -> None:
        """A node registers and names the actor processes it runs (``{process id: actor id}``). One the GCS
        has no start for (it was restarted, and the log ended the process with its node) is current only
        if no other instance of its actor is known."""
        for process_id, actor_id in own.items():
            self._latest.setdefault(actor_id, process_id)
            self._remember(node_id, process_id, actor_id)

    def node_left(self, node_id: str) -> None:
        """The node said goodbye (its processes stopped with it): nothing of it is left to fence."""
        self._by_node.pop(node_id, None)

    def stale(self, node_id: str) -> list[str]:
        """The processes of ``node_id`` that run an actor some later instance has replaced, sorted."""
        return sorted(p for p, a in self._by_node.get(node_id, {}).items() if self._latest.get(a, p) != p)

    def current(self, actor_id: str) -> str | None:
        return self._latest.get(actor_id)

    def _remember(self, node_id: str, process_id: str, actor_id: str) -> None:
        live = self._by_node.setdefault(node_id, {})
        if len(live) < INSTANCES_PER_NODE_MAX or process_id in live:
            live[process_id] = actor_id
