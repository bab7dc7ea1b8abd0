"""A node scheduler's view of the other nodes' free resources, and the hybrid spread rule over it.

Ray's default ("hybrid") policy, as a node applies it to a task at the head
of one of its queues:

- run it here when this node has the resources free and its utilisation is
  below ``SPREAD_THRESHOLD``;
- otherwise send it at once to another node that has the resources free now
  and is less utilised than this one (a full node is utilised 1.0);
- queue it here only when no node has room.

The view is what the GCS service last said in answer to this node's
heartbeat (every 0.2 s): each other live node's totals and free resources.
It goes stale between heartbeats, so each task sent away is taken off the
view at once (``take``); the global scheduler, which sees every node's
placements, makes the final choice. A node's utilisation is its most used
resource's used fraction (Ray's "critical resource utilisation").

It must never do I/O or read the clock: the queue core (``_node_queue.py``)
asks it, and tests feed it plain dicts.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

__all__ = ["SPREAD_THRESHOLD", "ClusterView", "utilisation"]

SPREAD_THRESHOLD = 0.5  # Ray's default spread threshold for the hybrid policy
VIEW_NODES_MAX = 10_000  # nodes kept in the view at most (a bound; clusters are far smaller)
_EPSILON = 1e-9


def utilisation(total: Mapping[str, float], available: Mapping[str, float]) -> float:
    """The used fraction of the node's most used resource (0.0 for a node with nothing)."""
    used = 0.0
    for name, amount in total.items():
        if amount > 0 and "_group_" not in name:  # a placement group's bundle is reserved, not load
            used = max(used, 1.0 - available.get(name, 0.0) / amount)
    return used


def _fits(available: Mapping[str, float], shape: Iterable[tuple[str, float]]) -> bool:
    return all(available.get(name, 0.0) + _EPSILON >= amount for name, amount in shape)


class ClusterView:
    """The other live nodes' totals and free resources, as of the last heartbeat's answer."""

    def __init__(self) -> None:
        self._total: dict[str, dict[str, float]] = {}
        self._available: dict[str, dict[str, float]] = {}

    def update(self, nodes: Mapping[str, Mapping[str, Mapping[str, float]]]) -> None:
        """Replace the view: ``{node_id: {"total": {...}, "available": {...}}}`` for every other live node.

        A malformed entry is left out (the GCS sent it; a node without a view only spreads less).
        """
        self._total.clear()
        self._available.clear()
        for node_id, node in list(nodes.items())[:VIEW_NODES_MAX]:
            try:
                total = {str(k): float(v) for k, v in node["total"].items()}
                available = {str(k): float(v) for k, v in node["available"].items()}
            except (KeyError, TypeError, ValueError, AttributeError):
                continue
            self._total[node_id], self._available[node_id] = total, available

    def has_room(self, shape: tuple, below: float = 1.0 + _EPSILON) -> bool:
        """Some other node has ``shape`` free now and is utilised less than ``below``."""
        for node_id, available in self._available.items():
            if _fits(available, shape) and utilisation(self._total[node_id], available) < below:
                return True
        return False

    def take(self, shape: tuple, below: float = 1.0 + _EPSILON) -> bool:
        """Count ``shape`` as sent to the least utilised node that has it free (until the next update)."""
        best, best_use = None, below
        for node_id, available in self._available.items():
            if _fits(available, shape):
                use = utilisation(self._total[node_id], available)
                if use < best_use:
                    best, best_use = node_id, use
        if best is None:
            return False
        available = self._available[best]
        for name, amount in shape:
            available[name] = available.get(name, 0.0) - amount
        return True

    def nodes(self) -> int:
        return len(self._available)
