"""``ember.util.scheduling_strategies``: where a task or actor asks to run (Ray's module of the same name).

The class lives in ``ember._strategies``, which the options' check imports
without loading the rest of ``ember.util``.
"""

from ember._strategies import NodeAffinitySchedulingStrategy, PlacementGroupSchedulingStrategy

__all__ = ["NodeAffinitySchedulingStrategy", "PlacementGroupSchedulingStrategy"]
