"""A node's side of placement groups: the bundles it reserves and commits, as the GCS asks on each heartbeat.

The GCS answers every heartbeat with the bundles this node should hold and
in which phase (``lineage/_placement_groups.py``); ``Bundles.reconcile``
brings the node to that:

- a bundle asked to PREPARE is taken out of the node's free resources (all
  of it, or it is refused: the GCS then aborts the group's round);
- a bundle asked to COMMIT adds its group's resources to the node
  (``bundle_resources``), which the tasks and actors placed in it ask for;
- a bundle no longer asked for (its group removed, its round aborted) gives
  its resources back, and the group's resources leave the node: the service
  stops the workers that held them, as Ray kills a removed group's tasks
  and actors.

The next heartbeat reports what is held. It must never do I/O: the node
scheduler's service calls it under its lock, and tests drive it with a
``ResourcePool``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ember.scheduler._resources import ResourcePool
from ember.scheduler._spec import bundle_resources, resource_shape

__all__ = ["BundleChanges", "Bundles"]

PREPARE = "prepare"  # the phases as the GCS words them (lineage/_placement_groups.py BundlePhase)
COMMIT = "commit"
BUNDLES_HELD_MAX = 10_000  # bundles one node holds at most; more are refused


@dataclass
class BundleChanges:
    """What a reconcile did that the service acts on."""

    committed: bool = False  # some bundle's resources appeared: queued tasks may run now
    released_groups: set[str] = field(default_factory=set)  # groups whose committed resources left this node
    changed: bool = False  # what is held changed (reserved, committed, released): report it at once


class _Held:
    __slots__ = ("group_id", "index", "resources", "phase", "gpus")

    def __init__(self, group_id: str, index: int, resources: dict[str, float], gpus: tuple[int, ...]) -> None:
        self.group_id = group_id
        self.index = index
        self.resources = resources
        self.phase = PREPARE
        self.gpus = gpus


class Bundles:
    """The bundles this node holds, reserved out of its ``ResourcePool``."""

    def __init__(self, pool: ResourcePool) -> None:
        self._pool = pool
        self._held: dict[str, _Held] = {}
        self._refused: set[str] = set()

    def reconcile(self, desired: Mapping[str, Mapping[str, Any]]) -> BundleChanges:
        changes = BundleChanges()
        for key in [k for k in self._held if k not in desired]:
            self._release(key, changes)
            changes.changed = True
        for key, want in desired.items():
            held = self._held.get(key)
            if held is None:
                held = self._reserve(key, want)
                if held is None:
                    continue  # refused: said at the next heartbeat (at once, a refusal the GCS's view
                    # cannot foresee, such as GPUs free only in fractions, would be retried in a tight loop)
                changes.changed = True  # reserved: the GCS hears it at once, and may commit
            if want.get("phase") == COMMIT and held.phase == PREPARE:
                held.phase = COMMIT
                self._pool.add(bundle_resources(held.group_id, held.index, held.resources), held.gpus)
                changes.committed = changes.changed = True
        return changes

    def report(self) -> dict[str, Any]:
        """For the heartbeat: {"held": {key: phase}, "refused": [keys]} (refusals are reported once)."""
        refused, self._refused = sorted(self._refused), set()
        return {"held": {key: held.phase for key, held in self._held.items()}, "refused": refused}

    def groups(self) -> set[str]:
        """Groups this node holds a committed bundle of."""
        return {held.group_id for held in self._held.values() if held.phase == COMMIT}

    def _reserve(self, key: str, want: Mapping[str, Any]) -> _Held | None:
        group_id, _, index = key.rpartition(":")
        try:
            resources = {str(k): float(v) for k, v in want["resources"].items()}
            shape = resource_shape(resources)
            bundle_index = int(index)
        except (KeyError, TypeError, ValueError, AttributeError):
            self._refused.add(key)
            return None
        if len(self._held) >= BUNDLES_HELD_MAX or not self._pool.can_acquire(shape):
            self._refused.add(key)
            return None
        held = self._held[key] = _Held(group_id, bundle_index, resources, self._pool.acquire(shape))
        return held

    def _release(self, key: str, changes: BundleChanges) -> None:
        held = self._held.pop(key)
        if held.phase == COMMIT:
            self._pool.remove(bundle_resources(held.group_id, held.index, held.resources))
            changes.released_groups.add(held.group_id)
        self._pool.release(resource_shape(held.resources), held.gpus)
