"""``ember.util``: Ray's ``ray.util`` names that ember supports (``import ember as ray`` programs import them).

This package only re-exports; each concept lives in a module of its own.
"""

from ember.util._helpers import as_completed, map_unordered
from ember.util.actor_pool import ActorPool
from ember._runtime import get_node_ip_address, list_named_actors
from ember.util import actor_pool, multiprocessing, queue, scheduling_strategies

__all__ = [
    "ActorPool",
    "actor_pool",
    "as_completed",
    "get_node_ip_address",
    "list_named_actors",
    "map_unordered",
    "multiprocessing",
    "queue",
    "scheduling_strategies",
]
