"""Where a task or actor asks to run: ``NodeAffinitySchedulingStrategy``, public as ``ember.util.scheduling_strategies``.

A ``scheduling_strategy`` option is one of ``None``/``"DEFAULT"`` (Ray's
hybrid policy), ``"SPREAD"`` (over the nodes in turn) or a
``NodeAffinitySchedulingStrategy``. Anything else is refused by name when the
option is given (``InvalidOptionError``), never accepted and ignored.
"""

from __future__ import annotations

from typing import Any

from ember.exceptions import InvalidOptionError

__all__ = ["NodeAffinitySchedulingStrategy"]


class NodeAffinitySchedulingStrategy:
    """Run on the node ``node_id`` (``ember.get_runtime_context().get_node_id()``, ``ember.nodes()``'s NodeID).

    While that node is alive and its totals fit the request, the task or
    actor runs there only, waiting for its resources if need be. If the node
    is dead, unknown or too small, the task fails with
    ``TaskUnschedulableError`` (an actor with ``ActorUnschedulableError``),
    or with ``soft=True`` runs on another node, as Ray's default policy
    places it.
    """

    def __init__(self, node_id: str, soft: bool, _spill_on_unavailable: bool = False,
                 _fail_on_unavailable: bool = False) -> None:
        if not isinstance(node_id, str) or not node_id:
            raise InvalidOptionError(f"NodeAffinitySchedulingStrategy's node_id must be a node id (a str), got "
                                     f"{node_id!r:.80} (type={type(node_id).__name__})")
        if not isinstance(soft, bool):
            raise InvalidOptionError(f"NodeAffinitySchedulingStrategy's soft must be a bool, got {soft!r:.80} "
                                     f"(type={type(soft).__name__})")
        for name, value in (("_spill_on_unavailable", _spill_on_unavailable),
                            ("_fail_on_unavailable", _fail_on_unavailable)):
            if value:
                raise InvalidOptionError(f"NodeAffinitySchedulingStrategy's {name} (a private Ray option) is not "
                                         "supported: leave it out; soft=True runs the task elsewhere only when "
                                         "its node is dead, unknown or too small")
        self.node_id = node_id
        self.soft = soft

    def __eq__(self, other: Any) -> bool:
        return (isinstance(other, NodeAffinitySchedulingStrategy)
                and (other.node_id, other.soft) == (self.node_id, self.soft))

    def __hash__(self) -> int:
        return hash((self.node_id, self.soft))

    def __repr__(self) -> str:
        return f"NodeAffinitySchedulingStrategy(node_id={self.node_id!r}, soft={self.soft})"
