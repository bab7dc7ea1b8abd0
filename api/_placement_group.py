"""Placement groups, the user's side: ``ember.util.placement_group`` (Ray's ``ray.util.placement_group``).

A group is created, removed and looked up in the GCS service, which places
its bundles on the nodes in two phases and logs every change
(``lineage/_placement_groups.py``); this module checks the user's input,
makes the calls and wraps the answers. ``PlacementGroup.ready()`` is, as in
Ray, a task of no CPU run in one of the group's bundles: its ref resolves
once a bundle is committed on its node.

It imports only what lies below the API (the scheduler's core, the GCS
client) so that ``_strategies`` and ``_options`` may use its types; it must
never start a cluster (a group needs ``ember.init()`` first).
"""

from __future__ import annotations

import hashlib
import os
import time
from numbers import Real
from typing import Any

import cloudpickle

from ember.exceptions import (InvalidOptionError, NotInitializedError, PlacementGroupAlreadyExistsError,
                              PlacementGroupNotFoundError, RaySystemError)
from ember.lineage import PlacementGroupState, PlacementStrategy
from ember.lineage._rpc import GcsUnreachable, client_for
from ember.scheduler import ObjectRef, Strategy, TaskKind, bundle_shape, require_core

__all__ = [
    "PlacementGroup", "PlacementGroupID", "get_current_placement_group", "get_placement_group",
    "placement_group", "placement_group_table", "remove_placement_group",
]

GCS_CALL_TIMEOUT_S = 10.0  # a call waits this long for a GCS service that is restarting
WAIT_POLL_S = 0.05  # pg.wait() asks the GCS this often
READY_TASK_NAME = "placement_group_ready"
_LIFETIMES = (None, "detached")


class PlacementGroupID:
    """A placement group's id (Ray's ``PlacementGroupID``): 16 bytes, ``hex()`` to print."""

    __slots__ = ("_bytes",)

    def __init__(self, id_bytes: bytes) -> None:
        self._bytes = id_bytes

    def binary(self) -> bytes:
        return self._bytes

    def hex(self) -> str:
        return self._bytes.hex()

    def __eq__(self, other: Any) -> bool:
        return isinstance(other, PlacementGroupID) and other._bytes == self._bytes

    def __hash__(self) -> int:
        return hash(self._bytes)

    def __repr__(self) -> str:
        return f"PlacementGroupID({self.hex()})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (PlacementGroupID, (self._bytes,))


def _gcs_call(method: str, request: dict[str, Any]) -> dict[str, Any]:
    core = require_core()
    try:
        return client_for(core.session.gcs_address, core.session.token()).call(method, request,
                                                                              timeout_s=GCS_CALL_TIMEOUT_S)
    except GcsUnreachable as exc:
        raise RaySystemError(f"the cluster's GCS service did not answer {method} within "
                             f"{GCS_CALL_TIMEOUT_S:.0f}s: {exc}") from exc


def _ready_check(group: "PlacementGroup") -> "PlacementGroup":
    """The task ``ready()`` runs in a bundle: it only proves the bundle is reserved."""
    return group


_READY_PAYLOAD = cloudpickle.dumps(_ready_check)
_READY_FUNCTION_ID = hashlib.blake2b(_READY_PAYLOAD, digest_size=16).digest()


class PlacementGroup:
    """A handle to a placement group: ``pg.ready()``, ``pg.wait(timeout_seconds)``, ``pg.bundle_specs``."""

    def __init__(self, id: PlacementGroupID, bundle_specs: list[dict[str, float]]) -> None:
        self.id = id
        self._bundles = [dict(b) for b in bundle_specs]

    @property
    def bundle_specs(self) -> list[dict[str, float]]:
        """The bundles, as given to ``placement_group``."""
        return [dict(b) for b in self._bundles]

    @property
    def bundle_count(self) -> int:
        return len(self._bundles)

    def ready(self) -> ObjectRef:
        """An ObjectRef that resolves (to this group) once the group's bundles are reserved, as in Ray."""
        core = require_core()
        core.register_function(_READY_FUNCTION_ID, _READY_PAYLOAD, READY_TASK_NAME)
        strategy = (Strategy.PLACEMENT_GROUP.value, self.id.hex(), -1, False)
        (ref,) = core.submit(TaskKind.NORMAL, _READY_FUNCTION_ID, READY_TASK_NAME, (self,), {}, 1,
                             bundle_shape((), self.id.hex(), -1), 3, False, name=READY_TASK_NAME,
                             strategy=strategy)
        return ref

    def wait(self, timeout_seconds: float | int = 30) -> bool:
        """Wait up to ``timeout_seconds`` for the group to be created; whether it is."""
        if isinstance(timeout_seconds, bool) or not isinstance(timeout_seconds, Real) or timeout_seconds < 0:
            raise InvalidOptionError(f"PlacementGroup.wait's timeout_seconds must be a number >= 0, got "
                                     f"{timeout_seconds!r} (type={type(timeout_seconds).__name__})")
        deadline = time.monotonic() + float(timeout_seconds)
        while True:
            record = _gcs_call("GetPlacementGroup", {"group_id": self.id.hex()}).get("group")
            if record is not None and record["state"] == PlacementGroupState.CREATED:
                return True
            if record is None or record["state"] == PlacementGroupState.REMOVED:
                return False
            if time.monotonic() + WAIT_POLL_S > deadline:
                return False
            time.sleep(WAIT_POLL_S)

    def __eq__(self, other: Any) -> bool:
        return isinstance(other, PlacementGroup) and other.id == self.id

    def __hash__(self) -> int:
        return hash(self.id)

    def __repr__(self) -> str:
        return f"PlacementGroup(id={self.id.hex()}, bundles={self._bundles})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (PlacementGroup, (self.id, self._bundles))


def _check_bundles(bundles: Any) -> list[dict[str, float]]:
    if not isinstance(bundles, (list, tuple)) or not bundles:
        raise InvalidOptionError(f"placement_group's bundles must be a non-empty list of dicts of resource name to "
                                 f"amount, e.g. [{{\"CPU\": 1}}, {{\"CPU\": 1, \"GPU\": 1}}], got {bundles!r:.100}")
    checked = []
    for i, bundle in enumerate(bundles):
        if not isinstance(bundle, dict) or not all(isinstance(k, str) for k in bundle):
            raise InvalidOptionError(f"placement_group's bundle {i} must be a dict of resource name to amount, got "
                                     f"{bundle!r:.100} (type={type(bundle).__name__})")
        for name, amount in bundle.items():
            if isinstance(amount, bool) or not isinstance(amount, Real) or amount < 0:
                raise InvalidOptionError(f"placement_group's bundle {i}: {name!r} must be a number >= 0, got "
                                         f"{amount!r} (type={type(amount).__name__})")
        if not any(bundle.values()):
            raise InvalidOptionError(f"placement_group's bundle {i} is {bundle!r}: a bundle cannot be empty or hold "
                                     "only zero amounts (as in Ray); give it some resource")
        checked.append({name: float(amount) for name, amount in bundle.items() if amount})
    return checked


def placement_group(bundles: list[dict[str, float]], strategy: str = "PACK", name: str = "",
                    lifetime: str | None = None, _max_cpu_fraction_per_node: float | None = None,
                    _soft_target_node_id: str | None = None) -> PlacementGroup:
    """Reserve ``bundles`` together on the cluster's nodes, all or nothing (Ray's ``placement_group``).

    Returns at once; the group is PENDING until every bundle is reserved
    (``pg.ready()``, ``pg.wait()``), and stays so while the nodes have no room.
    It is removed by ``remove_placement_group``, or when the job that made it
    ends, unless ``lifetime="detached"``.
    """
    checked = _check_bundles(bundles)
    if strategy not in set(PlacementStrategy):
        raise InvalidOptionError(f"placement_group's strategy must be one of "
                                 f"{', '.join(repr(s.value) for s in PlacementStrategy)}, got {strategy!r:.60}")
    if not isinstance(name, str):
        raise InvalidOptionError(f"placement_group's name must be a str, got {name!r:.60} "
                                 f"(type={type(name).__name__})")
    if lifetime not in _LIFETIMES:
        raise InvalidOptionError(f"placement_group's lifetime must be None (removed when its job ends) or "
                                 f"'detached' (kept until removed), got {lifetime!r:.60}")
    for option, value in (("_max_cpu_fraction_per_node", _max_cpu_fraction_per_node),
                          ("_soft_target_node_id", _soft_target_node_id)):
        if value is not None:
            raise InvalidOptionError(f"placement_group's {option} (a private Ray option) is not supported: leave "
                                     "it out")
    core = require_core()
    task = core.current_task
    job_id = task.job_id if task is not None else core.job_id
    group_id = PlacementGroupID(os.urandom(16))
    reply = _gcs_call("CreatePlacementGroup", {
        "group_id": group_id.hex(), "name": name or None, "strategy": strategy, "bundles": checked,
        "job_id": job_id.hex(), "detached": lifetime == "detached"})
    if reply.get("error"):
        raise PlacementGroupAlreadyExistsError(f"cannot create the placement group: {reply['error']}; use "
                                               f"ember.util.get_placement_group({name!r}) to reach it")
    return PlacementGroup(group_id, checked)


def remove_placement_group(placement_group: PlacementGroup) -> None:
    """Remove the group: its bundles are released, and the tasks and actors running in them are stopped."""
    if not isinstance(placement_group, PlacementGroup):
        raise InvalidOptionError(f"remove_placement_group takes a PlacementGroup, got {placement_group!r:.80} "
                                 f"(type={type(placement_group).__name__})")
    _gcs_call("RemovePlacementGroup", {"group_id": placement_group.id.hex()})


def _group_of(record: dict[str, Any]) -> PlacementGroup:
    bundles = record["bundles"]
    return PlacementGroup(PlacementGroupID(bytes.fromhex(record["placement_group_id"])),
                          [bundles[str(i)] if str(i) in bundles else bundles[i] for i in range(len(bundles))])


def get_placement_group(placement_group_name: str) -> PlacementGroup:
    """The live placement group of that name (``PlacementGroupNotFoundError``, a ValueError, if none)."""
    if not isinstance(placement_group_name, str) or not placement_group_name:
        raise InvalidOptionError(f"get_placement_group takes a group's name (a non-empty str), got "
                                 f"{placement_group_name!r:.80}")
    record = _gcs_call("GetPlacementGroup", {"name": placement_group_name}).get("group")
    if record is None:
        raise PlacementGroupNotFoundError(f"no live placement group is named {placement_group_name!r}; "
                                          "ember.util.placement_group_table() lists the cluster's groups")
    return _group_of(record)


def placement_group_table(placement_group: PlacementGroup | None = None) -> dict[str, Any]:
    """Every group of the cluster by id (hex), or one group's entry: Ray's fields (``state``, ``bundles``,
    ``bundles_to_node_id``, ``strategy``, ``name``, ``stats``), pending and removed ones included."""
    groups = {r["placement_group_id"]: _table_entry(r) for r in _gcs_call("PlacementGroupTable", {})["groups"]}
    if placement_group is None:
        return groups
    if not isinstance(placement_group, PlacementGroup):
        raise InvalidOptionError(f"placement_group_table takes a PlacementGroup or nothing, got "
                                 f"{placement_group!r:.80}")
    return groups.get(placement_group.id.hex(), {})


def _table_entry(record: dict[str, Any]) -> dict[str, Any]:
    entry = dict(record)
    entry["bundles"] = {int(i): b for i, b in record["bundles"].items()}
    entry["bundles_to_node_id"] = {int(i): n for i, n in record["bundles_to_node_id"].items()}
    entry["lifetime"] = "detached" if record["detached"] else None
    return entry


def current_strategy() -> tuple | None:
    """The placement group strategy the running task or actor was scheduled with, if any."""
    core = require_core()
    executor = core.executor
    if executor is not None and executor.actor_spec is not None:
        strategy = executor.actor_spec.strategy
    else:
        task = core.current_task
        strategy = task.strategy if task is not None else None
    if strategy is None or strategy[0] != Strategy.PLACEMENT_GROUP:
        return None
    return strategy


def get_current_placement_group() -> PlacementGroup | None:
    """The group the running task or actor was scheduled in; None in a driver or outside any group (Ray's).

    Its ``bundle_specs`` are read from the GCS.
    """
    try:
        strategy = current_strategy()
    except NotInitializedError:
        return None
    if strategy is None:
        return None
    record = _gcs_call("GetPlacementGroup", {"group_id": strategy[1]}).get("group")
    if record is None:
        return None
    return _group_of(record)
