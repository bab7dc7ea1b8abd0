"""``ember.util``: Ray's ``ray.util`` names that ember supports (``import ember as ray`` programs import them).

This package only re-exports; each concept lives in a module of its own.
"""

from ember.util._helpers import as_completed, map_unordered
from ember.util.actor_pool import ActorPool
from ember._runtime import get_node_ip_address, list_named_actors
from ember.util import actor_pool, metrics, multiprocessing, queue, scheduling_strategies
# As in Ray, ``ember.util.placement_group`` is the function; the module of that name is still
# importable (``from ember.util.placement_group import PlacementGroup``).
from ember.util.placement_group import (PlacementGroup, get_current_placement_group, get_placement_group,
                                        placement_group, placement_group_table, remove_placement_group)

__all__ = [
    "ActorPool",
    "PlacementGroup",
    "actor_pool",
    "as_completed",
    "get_current_placement_group",
    "get_node_ip_address",
    "get_placement_group",
    "list_named_actors",
    "map_unordered",
    "metrics",
    "multiprocessing",
    "placement_group",
    "placement_group_table",
    "queue",
    "remove_placement_group",
    "scheduling_strategies",
]
