"""Where a task or actor asks to run: the strategies of ``ember.util.scheduling_strategies``.

A ``scheduling_strategy`` option is one of ``None``/``"DEFAULT"`` (Ray's
hybrid policy), ``"SPREAD"`` (over the nodes in turn), a
``NodeAffinitySchedulingStrategy`` or a ``PlacementGroupSchedulingStrategy``.
Anything else is refused by name when the option is given
(``InvalidOptionError``), never accepted and ignored.
"""

from __future__ import annotations

from typing import Any

from ember.exceptions import InvalidOptionError
from ember._placement_group import PlacementGroup

__all__ = ["NodeAffinitySchedulingStrategy", "PlacementGroupSchedulingStrategy"]


class PlacementGroupSchedulingStrategy:
    """Run in a bundle of ``placement_group``: bundle ``placement_group_bundle_index``, or any (-1).

    The task or actor uses the bundle's reserved resources, not the node's
    free ones; asking more than the bundle holds fails at submit
    (``InvalidOptionError``, a ValueError as in Ray). With
    ``placement_group_capture_child_tasks=True`` the tasks and actors it
    creates without a strategy of their own run in the same group (any bundle).
    """

    def __init__(self, placement_group: PlacementGroup, placement_group_bundle_index: int = -1,
                 placement_group_capture_child_tasks: bool = False) -> None:
        if not isinstance(placement_group, PlacementGroup):
            raise InvalidOptionError(f"PlacementGroupSchedulingStrategy's placement_group must be what "
                                     f"ember.util.placement_group() returned, got {placement_group!r:.80} "
                                     f"(type={type(placement_group).__name__})")
        index = placement_group_bundle_index
        if isinstance(index, bool) or not isinstance(index, int) or not -1 <= index < placement_group.bundle_count:
            raise InvalidOptionError(f"placement_group_bundle_index must be -1 (any bundle) or a bundle's index, "
                                     f"0 to {placement_group.bundle_count - 1}, got {index!r}")
        if not isinstance(placement_group_capture_child_tasks, bool):
            raise InvalidOptionError(f"placement_group_capture_child_tasks must be a bool, got "
                                     f"{placement_group_capture_child_tasks!r:.60}")
        self.placement_group = placement_group
        self.placement_group_bundle_index = index
        self.placement_group_capture_child_tasks = placement_group_capture_child_tasks

    def __eq__(self, other: Any) -> bool:
        return (isinstance(other, PlacementGroupSchedulingStrategy) and
                (other.placement_group, other.placement_group_bundle_index,
                 other.placement_group_capture_child_tasks) ==
                (self.placement_group, self.placement_group_bundle_index, self.placement_group_capture_child_tasks))

    def __hash__(self) -> int:
        return hash((self.placement_group, self.placement_group_bundle_index))

    def __repr__(self) -> str:
        return (f"PlacementGroupSchedulingStrategy(placement_group={self.placement_group!r}, "
                f"placement_group_bundle_index={self.placement_group_bundle_index}, "
                f"placement_group_capture_child_tasks={self.placement_group_capture_child_tasks})")


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
