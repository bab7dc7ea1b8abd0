"""Placement groups in the GCS service: where each bundle goes, and its two-phase reservation on the nodes.

A placement group is a list of bundles (resource requests) reserved
together, all or nothing, under a strategy (Ray's): ``PACK`` (as few nodes
as possible), ``SPREAD`` (as many as possible), ``STRICT_PACK`` (one node)
or ``STRICT_SPREAD`` (a different node for each bundle). The GCS service
holds one ``PlacementGroups`` table; this module decides, the service
carries the decisions out and logs every change of a group in PostgreSQL.

The reservation is two-phase, carried by the nodes' heartbeats, and
level-triggered: each heartbeat's answer tells a node every bundle it
should hold and in which phase (``desired``), and each heartbeat reports
what the node holds (``report``). A node asked to PREPARE a bundle takes its
resources out of its free pool, or refuses if it cannot; once every bundle
of the group is prepared on its node, every one is asked to COMMIT, which
makes the bundle's resources usable by tasks and actors (``bundle_resources``
in ``scheduler/_spec.py``); the group is CREATED when every node has
committed. A refusal aborts the round: every bundle of the group not yet
committed is taken off its node (which releases it on its next heartbeat)
and the group waits for the next ``schedule``. A removed group's bundles,
and those of a dead node, leave the desired sets the same way.

It must never do I/O or read the clock: tests drive it with plain dicts
(tests/unit/test_placement_groups.py).
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, assert_never

from ember.lineage._states import PlacementGroupState, PlainStrEnum
from ember.scheduler._spec import GROUP_REMOVED

__all__ = ["BundlePhase", "Group", "PlacementGroups", "PlacementStrategy", "bundle_key", "plan"]

REMOVED_KEPT_MAX = 1_000  # removed groups kept in memory for the table (the log keeps them all)
BUNDLES_MAX = 1_000  # bundles in one group at most
PLAN_STEPS_MAX = 100_000  # STRICT_SPREAD's search over nodes gives up after this many tries
_EPSILON = 1e-9


class PlacementStrategy(enum.StrEnum):
    PACK = "PACK"
    SPREAD = "SPREAD"
    STRICT_PACK = "STRICT_PACK"
    STRICT_SPREAD = "STRICT_SPREAD"


class BundlePhase(PlainStrEnum):
    """What a node is asked to do with a bundle, or reports doing."""

    PREPARE = "prepare"  # its resources taken out of the node's free pool; not usable yet
    COMMIT = "commit"  # its resources usable by the tasks and actors of its group


def bundle_key(group_id: str, index: int) -> str:
    return f"{group_id}:{index}"


def _fits(free: Mapping[str, float], request: Mapping[str, float]) -> bool:
    return all(free.get(name, 0.0) + _EPSILON >= amount for name, amount in request.items())


def _take(free: dict[str, float], request: Mapping[str, float]) -> None:
    for name, amount in request.items():
        free[name] = free.get(name, 0.0) - amount


def _sum(bundles: Iterable[Mapping[str, float]]) -> dict[str, float]:
    total: dict[str, float] = {}
    for bundle in bundles:
        for name, amount in bundle.items():
            total[name] = total.get(name, 0.0) + amount
    return total


def plan(bundles: list[dict[str, float]], strategy: PlacementStrategy, free: Mapping[str, Mapping[str, float]],
         fixed: Mapping[int, str]) -> dict[int, str] | None:
    """A node for each bundle not in ``fixed`` (index -> node, already placed), or None if they cannot all go now.

    ``free``: each live node's free resources. Nodes are tried in id order, so a plan is reproducible.
    """
    room = {node: dict(resources) for node, resources in sorted(free.items())}
    todo = [i for i in range(len(bundles)) if i not in fixed]
    if not todo:
        return {}
    match strategy:
        case PlacementStrategy.STRICT_PACK | PlacementStrategy.PACK:
            homes = sorted(set(fixed.values()))
            candidates = homes if (homes and strategy is PlacementStrategy.STRICT_PACK) else homes + list(room)
            together = _sum(bundles[i] for i in todo)
            for node in candidates:
                if node in room and _fits(room[node], together):
                    return {i: node for i in todo}
            if strategy is PlacementStrategy.STRICT_PACK:
                return None
            return _greedy(bundles, todo, room, fixed, fewest=False)
        case PlacementStrategy.SPREAD:
            return _greedy(bundles, todo, room, fixed, fewest=True)
        case PlacementStrategy.STRICT_SPREAD:
            return _distinct(bundles, todo, room, set(fixed.values()))
        case _:
            assert_never(strategy)


def _greedy(bundles: list[dict[str, float]], todo: list[int], room: dict[str, dict[str, float]],
            fixed: Mapping[int, str], fewest: bool) -> dict[int, str] | None:
    """Each bundle on a node with room: the one holding the fewest of the group's bundles (SPREAD) or the
    most (PACK)."""
    count: dict[str, int] = {node: 0 for node in room}
    for node in fixed.values():
        count[node] = count.get(node, 0) + 1
    chosen: dict[int, str] = {}
    for i in todo:
        fitting = [node for node in room if _fits(room[node], bundles[i])]
        if not fitting:
            return None
        node = min(fitting, key=lambda n: count[n] if fewest else -count[n])
        _take(room[node], bundles[i])
        count[node] += 1
        chosen[i] = node
    return chosen


def _distinct(bundles: list[dict[str, float]], todo: list[int], room: dict[str, dict[str, float]],
              used: set[str]) -> dict[int, str] | None:
    """STRICT_SPREAD: a node of its own for each bundle (a bounded depth-first search)."""
    nodes = [node for node in room if node not in used]
    if len(nodes) < len(todo):
        return None
    chosen: dict[int, str] = {}
    steps = 0

    def search(k: int) -> bool:
        nonlocal steps
        if k == len(todo):
            return True
        i = todo[k]
        for node in nodes:
            steps += 1
            if steps > PLAN_STEPS_MAX:
                return False
            if node in chosen.values() or not _fits(room[node], bundles[i]):
                continue
            chosen[i] = node
            if search(k + 1):
                return True
            del chosen[i]
        return False

    return chosen if search(0) else None


@dataclass
class Group:
    """One placement group as the GCS holds it; ``nodes[i]``/``phase[i]``/``held[i]``: bundle i's node (None:
    unplaced), what that node is asked to do with it, and what it last reported holding."""

    group_id: str  # hex
    name: str
    strategy: PlacementStrategy
    bundles: list[dict[str, float]]
    creator_job: str  # hex of the job that created it
    detached: bool
    state: PlacementGroupState = PlacementGroupState.PENDING
    nodes: list[str | None] = field(default_factory=list)
    phase: list[BundlePhase | None] = field(default_factory=list)
    held: list[BundlePhase | None] = field(default_factory=list)
    seq: int = 0  # creation order: pending groups are placed first come, first served
    why_pending: str = ""  # why it is not placed yet, for people

    def __post_init__(self) -> None:
        count = len(self.bundles)
        self.nodes = self.nodes or [None] * count
        self.phase = self.phase or [None] * count
        self.held = self.held or [None] * count

    def record(self) -> dict[str, Any]:
        """What the log and ``placement_group_table()`` show of it (JSON)."""
        return {"placement_group_id": self.group_id, "name": self.name, "strategy": self.strategy.value,
                "bundles": {i: dict(b) for i, b in enumerate(self.bundles)}, "state": self.state.value,
                "creator_job_id": self.creator_job, "detached": self.detached,
                "bundles_to_node_id": {i: n for i, n in enumerate(self.nodes) if n is not None},
                "phases": [p.value if p is not None else None for p in self.phase],
                "stats": {"why_pending": self.why_pending}}

    @classmethod
    def from_record(cls, record: Mapping[str, Any], seq: int) -> "Group":
        count = len(record["bundles"])
        bundles = [dict(record["bundles"][str(i)] if str(i) in record["bundles"] else record["bundles"][i])
                   for i in range(count)]
        placed = {int(i): n for i, n in (record.get("bundles_to_node_id") or {}).items()}
        phases = record.get("phases") or [None] * count
        return cls(record["placement_group_id"], record.get("name") or "", PlacementStrategy(record["strategy"]),
                   bundles, record.get("creator_job_id") or "", bool(record.get("detached")),
                   PlacementGroupState(record["state"]), [placed.get(i) for i in range(count)],
                   [BundlePhase(p) if p else None for p in phases], [None] * count, seq)


class PlacementGroups:
    """Every placement group of the cluster, and the two-phase reservation of their bundles."""

    def __init__(self) -> None:
        self.groups: dict[str, Group] = {}
        self._seq = 0

    # -- the user's calls -------------------------------------------------------------------

    def add(self, group: Group) -> None:
        """Take a new group (or one loaded from the log). Raises ValueError if a live group has its name."""
        if group.name and self.named(group.name) not in (None, group):
            raise ValueError(f"a placement group named {group.name!r} already exists")
        self._seq += 1
        group.seq = group.seq or self._seq
        self.groups[group.group_id] = group
        removed = [g for g in self.groups.values() if g.state is PlacementGroupState.REMOVED]
        if len(removed) > REMOVED_KEPT_MAX:
            for old in sorted(removed, key=lambda g: g.seq)[:len(removed) - REMOVED_KEPT_MAX]:
                del self.groups[old.group_id]

    def named(self, name: str) -> Group | None:
        for group in self.groups.values():
            if group.name == name and group.state is not PlacementGroupState.REMOVED:
                return group
        return None

    def remove(self, group_id: str) -> Group | None:
        """Remove a group: its bundles leave their nodes' desired sets. The group, or None if it is unknown."""
        group = self.groups.get(group_id)
        if group is None or group.state is PlacementGroupState.REMOVED:
            return None
        group.state = PlacementGroupState.REMOVED
        count = len(group.bundles)
        group.nodes, group.phase, group.held = [None] * count, [None] * count, [None] * count
        return group

    def remove_job(self, job_hex: str) -> list[Group]:
        """The job ended: its groups that are not detached are removed."""
        return [g for g in list(self.groups.values())
                if g.creator_job == job_hex and not g.detached and self.remove(g.group_id) is not None]

    # -- the nodes --------------------------------------------------------------------------

    def desired(self, node_id: str) -> dict[str, dict[str, Any]]:
        """Every bundle ``node_id`` should hold, and in which phase: ``{key: {"resources", "phase"}}``."""
        wanted: dict[str, dict[str, Any]] = {}
        for group in self.groups.values():
            for i, node in enumerate(group.nodes):
                if node == node_id:
                    wanted[bundle_key(group.group_id, i)] = {"resources": group.bundles[i],
                                                            "phase": group.phase[i]}
        return wanted

    def reserving(self, node_id: str) -> dict[str, float]:
        """Resources of bundles placed on ``node_id`` that it has not reported holding yet (not in its free yet)."""
        return _sum(group.bundles[i] for group in self.groups.values() for i, node in enumerate(group.nodes)
                    if node == node_id and group.held[i] is None)

    def report(self, node_id: str, held: Mapping[str, str], refused: Iterable[str]) -> list[Group]:
        """A node's heartbeat: the bundles it holds (key -> phase) and those it could not reserve.

        Returns the groups whose state or placement changed (to log).
        """
        refused = set(refused)
        changed: list[Group] = []
        for group in self.groups.values():
            mine = [i for i, node in enumerate(group.nodes) if node == node_id]
            if not mine:
                continue
            before = (group.state, list(group.nodes), list(group.phase))
            lost = [i for i in mine if bundle_key(group.group_id, i) in refused]
            for i in mine:
                phase = held.get(bundle_key(group.group_id, i))
                group.held[i] = BundlePhase(phase) if phase else None
            if lost:
                self._abort(group, lost)
            else:
                self._advance(group)
            if (group.state, group.nodes, group.phase) != before:
                changed.append(group)
        return changed

    def node_dead(self, node_id: str) -> list[Group]:
        """A node died: its bundles are placed again elsewhere. Returns the groups it held bundles of."""
        changed = []
        for group in self.groups.values():
            lost = [i for i, node in enumerate(group.nodes) if node == node_id]
            if lost:
                self._unplace(group, lost)
                group.why_pending = f"node {node_id} holding bundle(s) {lost} died"
                changed.append(group)
        return changed

    def schedule(self, free: Mapping[str, Mapping[str, float]]) -> list[Group]:
        """Place the bundles that have no node, group by group in creation order; returns the groups placed."""
        room = {node: dict(resources) for node, resources in free.items()}
        for node in room:
            for name, amount in self.reserving(node).items():
                room[node][name] = room[node].get(name, 0.0) - amount
        changed = []
        for group in sorted(self.groups.values(), key=lambda g: g.seq):
            if group.state is PlacementGroupState.REMOVED or None not in group.nodes:
                continue
            fixed = {i: node for i, node in enumerate(group.nodes) if node is not None}
            chosen = plan(group.bundles, group.strategy, room, fixed)
            if chosen is None:
                group.why_pending = (f"no set of the {len(room)} live node(s) has room for its bundles "
                                     f"{group.bundles} under {group.strategy.value} now")
                continue
            for i, node in chosen.items():
                group.nodes[i], group.phase[i], group.held[i] = node, BundlePhase.PREPARE, None
                _take(room[node], group.bundles[i])
            group.why_pending = ""
            changed.append(group)
        return changed

    # -- tasks in bundles -------------------------------------------------------------------

    def where(self, group_id: str, index: int, request: Mapping[str, float],
              free: Mapping[str, Mapping[str, float]]) -> tuple[str | None, str | None]:
        """The node for a task in bundle ``index`` (-1: any) of a group: (node or None to wait, why it never can)."""
        group = self.groups.get(group_id)
        if group is None:
            return None, f"{GROUP_REMOVED}{group_id} (this cluster does not know it)"
        if group.state is PlacementGroupState.REMOVED:
            return None, f"{GROUP_REMOVED}{group_id}"
        indexes = [index] if index >= 0 else list(range(len(group.bundles)))
        if index >= len(group.bundles):
            return None, (f"its placement_group_bundle_index {index} is out of range: the group has "
                          f"{len(group.bundles)} bundle(s)")
        fitting = [i for i in indexes if _fits(group.bundles[i], request)]
        if not fitting:
            return None, (f"it asks for {dict(request)}, more than "
                          + (f"bundle {index} of its placement group holds ({group.bundles[index]})" if index >= 0
                             else f"any bundle of its placement group holds ({group.bundles})"))
        ready = [group.nodes[i] for i in fitting if group.held[i] is BundlePhase.COMMIT]
        if not ready:
            return None, None  # its bundle is not committed yet: it waits
        suffix = f"_group_{index}_{group_id}" if index >= 0 else f"_group_{group_id}"
        for node in ready:
            if _fits({k[:-len(suffix)]: v for k, v in free.get(node or "", {}).items() if k.endswith(suffix)},
                     request):
                return node, None
        return ready[0], None

    # -- inside -----------------------------------------------------------------------------

    def _advance(self, group: Group) -> None:
        """Every bundle prepared: commit them all; every one committed: the group is created."""
        if group.state is PlacementGroupState.REMOVED or None in group.nodes:
            return
        if all(h is not None for h in group.held) and BundlePhase.PREPARE in group.phase:
            group.phase = [BundlePhase.COMMIT] * len(group.bundles)
        if all(h is BundlePhase.COMMIT for h in group.held) and all(p is BundlePhase.COMMIT for p in group.phase):
            group.state = PlacementGroupState.CREATED

    def _abort(self, group: Group, refused: list[int]) -> None:
        """A node could not reserve some bundles: every bundle not committed yet leaves its node."""
        uncommitted = [i for i, phase in enumerate(group.phase) if phase is BundlePhase.PREPARE]
        self._unplace(group, sorted(set(uncommitted) | set(refused)))
        group.why_pending = f"a node refused bundle(s) {refused} (its resources were taken meanwhile); tried again"

    def _unplace(self, group: Group, indexes: list[int]) -> None:
        for i in indexes:
            group.nodes[i], group.phase[i], group.held[i] = None, None, None
        if group.state is PlacementGroupState.CREATED:
            group.state = PlacementGroupState.RESCHEDULING
