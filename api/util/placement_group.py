"""``ember.util.placement_group``: placement groups (Ray's ``ray.util.placement_group`` module).

This module only re-exports; the concept lives in ``ember._placement_group``.
"""

from ember._placement_group import (PlacementGroup, PlacementGroupID, get_current_placement_group,
                                    get_placement_group, placement_group, placement_group_table,
                                    remove_placement_group)

__all__ = [
    "PlacementGroup",
    "PlacementGroupID",
    "get_current_placement_group",
    "get_placement_group",
    "placement_group",
    "placement_group_table",
    "remove_placement_group",
]
