"""Identifiers and task specifications, the records that travel between processes.

A ``TaskSpec`` is everything needed to run a task again: which function, the
arguments (by value or by object id), the options, who asked for it and which
attempt this is. The lineage log stores exactly these records, so keep them
plain: bytes, ints, strings, tuples.

Ids: a task id is 16 bytes (8 random per process, then a counter), an object
id is its creating task's id followed by a 4-byte return index. Puts get a
task id of their own, so every object has a creating "task" in the lineage.
"""

from __future__ import annotations

import enum
import itertools
import operator
import os
import struct
from typing import Any, assert_never

from ember.lineage._states import PlainStrEnum

TASK_ID_BYTES = 16
OBJECT_ID_BYTES = 20
_INDEX = struct.Struct(">I")


class IdSource:
    """Cheap unique ids: a random per-process prefix and a counter."""

    def __init__(self) -> None:
        self._prefix = os.urandom(8)
        self._counter = itertools.count(1)

    def task_id(self) -> bytes:
        return self._prefix + next(self._counter).to_bytes(8, "big")

    def reset(self) -> None:
        # After fork a child must not repeat the parent's ids.
        self._prefix = os.urandom(8)
        self._counter = itertools.count(1)


IDS = IdSource()
os.register_at_fork(after_in_child=IDS.reset)  # a forked worker (``_fork_server``) must not repeat ids


def object_id(task_id: bytes, index: int) -> bytes:
    return task_id + _INDEX.pack(index)


_FIRST_INDEX = _INDEX.pack(1)


def task_of(object_id_: bytes) -> bytes:
    return object_id_[:TASK_ID_BYTES]


# ``num_returns`` of a streaming generator task: it returns one object, its end (the number of
# values it yielded, or the error that ended it), and each value it yields is an object of its
# own, by index (``item_id``), made and read while the task still runs.
STREAMING = -1
# ``num_returns="dynamic"`` (Ray's older generators), as the caller's side knows it: the task streams
# like ``STREAMING`` on the wire, but its caller gets its end object's ref, whose value is a
# ``DynamicObjectRefGenerator`` of the refs of every value it yielded, once it has run to its end.
DYNAMIC = -2
# Ray's readiness probe, a method every actor has: a call like any other that answers True (``ready``).
READY_METHOD = "__ray_ready__"


def ready() -> bool:
    """What ``__ray_ready__`` runs, on a cluster and in replay."""
    return True


def item_id(task_id: bytes, index: int) -> bytes:
    """The object id of the ``index``-th value (from 0) a streaming generator task yields."""
    return object_id(task_id, index + 2)  # index 1 is the task's end object


def item_index(object_id_: bytes) -> int:
    """The inverse of ``item_id``: which yielded value an object of a streaming task is."""
    return _INDEX.unpack_from(object_id_, TASK_ID_BYTES)[0] - 2


class FailureCause(PlainStrEnum):
    """Why the node scheduler gave a task back to its owner unrun or unfinished (``Op.TASK_FAILED``)."""

    WORKER_DIED = "worker_died"
    CANCELLED = "cancelled"
    ACTOR_DIED = "actor_died"
    INFEASIBLE = "infeasible"
    # Not a failure: the task waits for a node that can run it to join; ``detail`` is the warning.
    UNSCHEDULABLE = "unschedulable"  # travels as the plain string, as every PlainStrEnum does
    # Its scheduling strategy cannot be met (hard node affinity to a dead or unknown node).
    STRATEGY_UNMET = "strategy_unmet"


class TaskKind(enum.IntEnum):
    NORMAL = 1
    ACTOR_CREATION = 2
    ACTOR_CALL = 3
    PUT = 4


class ArgKind(int):
    """How an encoded argument travels. The members are plain ints: an enum
    member pickles as a call to its class (~2.6 us per argument to unpickle).
    It stays a class of ints so that logs that pickled the IntEnum it was
    still load: their ``ArgKind(0)`` makes an int equal to ``VALUE``."""

    VALUE = 0  # a plain value that rides in the message pickle
    INLINE = 1  # serialized object bytes (store layout)
    REF = 2  # (object id, owner address): the executor reads it from the store


# Types whose values ride as-is in control messages: cheap to pickle, cannot
# hold references, never need cloudpickle.
PLAIN_TYPES = frozenset({int, float, bool, str, bytes, type(None)})
PLAIN_BYTES_MAX = 4096


class TaskSpec:
    """One task, actor creation or actor call, as logged and as executed."""

    __slots__ = (
        "task_id",
        "kind",
        "job_id",
        "owner_addr",
        "function_id",
        "function_name",
        "args",
        "kwargs",
        "num_returns",
        "resources",
        "max_retries",
        "attempt",
        "parent_task_id",
        "actor_id",
        "method",
        "seq",
        "name",
        "strategy",
        "concurrency_group",
        "runtime_env",
    )

    def __init__(
        self,
        task_id: bytes,
        kind: int,
        job_id: bytes,
        owner_addr: str,
        function_id: bytes,
        function_name: str,
        args: list | tuple,
        kwargs: dict | None,
        num_returns: int,
        resources: tuple,
        max_retries: int,
        attempt: int = 0,
        parent_task_id: bytes | None = None,
        actor_id: bytes | None = None,
        method: str | None = None,
        seq: int = 0,
        name: str | None = None,
        strategy: tuple | None = None,
        concurrency_group: str | None = None,
        runtime_env: tuple[str, str] | None = None,
    ) -> None:
        self.task_id = task_id
        self.kind = kind
        self.job_id = job_id
        self.owner_addr = owner_addr
        self.function_id = function_id
        self.function_name = function_name
        self.args = args
        self.kwargs = kwargs
        self.num_returns = num_returns
        self.resources = resources
        self.max_retries = max_retries
        self.attempt = attempt
        self.parent_task_id = parent_task_id
        self.actor_id = actor_id
        self.method = method
        self.seq = seq
        self.name = name
        self.strategy = strategy  # where it asks to run: None (the default policy), or see ``Strategy``
        # An actor call's ``.options(concurrency_group=...)``; None: its method's group (not logged:
        # it decides only where the call runs, never what it computes).
        self.concurrency_group = concurrency_group
        # Its runtime_env as (hash, canonical JSON) (``ember.lineage`` ``RuntimeEnv.wire``); None: the
        # cluster's own environment. Only a worker started in that environment runs it.
        self.runtime_env = runtime_env

    def __reduce__(self) -> tuple[Any, ...]:
        # The kind goes as a plain int: unpickling an IntEnum member costs a
        # Python-level call per spec, and specs are the hottest messages.
        fields = _FIELDS(self)
        return (TaskSpec, (fields[0], int(fields[1])) + fields[2:])

    def return_ids(self) -> list[bytes]:
        if self.num_returns <= 1:
            return [self.task_id + _FIRST_INDEX]  # most tasks: no loop, no pack (a stream: its end)
        return [object_id(self.task_id, i + 1) for i in range(self.num_returns)]

    def describe(self) -> str:
        label = self.name or self.function_name
        if self.kind == TaskKind.ACTOR_CALL:
            label = self.name or f"{self.function_name}.{self.method}"
        return f"{label} (task {self.task_id.hex()})"


_FIELDS = operator.attrgetter(*TaskSpec.__slots__)


class CallLimited:
    """A remote function with ``max_calls``: a worker runs it at most ``max_calls`` times, then retires.

    The payload ember logs and ships for such a function is this wrapper, so
    every worker of every node (and ``ember replay``, which calls it as the
    function) knows the limit without a field of its own on the wire.
    """

    __slots__ = ("function", "max_calls")

    def __init__(self, function: Any, max_calls: int) -> None:
        self.function = function
        self.max_calls = max_calls

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.function(*args, **kwargs)

    def __reduce__(self) -> tuple[Any, ...]:
        return (CallLimited, (self.function, self.max_calls))

    @property
    def dynamic_returns(self) -> bool:
        return getattr(self.function, "dynamic_returns", False)


class CallCounts:
    """A worker's runs of each function that has ``max_calls`` (``CallLimited``)."""

    def __init__(self) -> None:
        self._counts: dict[bytes, int] = {}

    def ran(self, function_id: bytes, function: Any) -> bool:
        """Count a run of ``function``; whether that was its ``max_calls``-th here (or later)."""
        if not isinstance(function, CallLimited):
            return False
        calls = self._counts[function_id] = self._counts.get(function_id, 0) + 1
        return calls >= function.max_calls


class DynamicReturns:
    """A generator function called with ``num_returns="dynamic"``: what every worker (and ``ember replay``)
    calls, which tells the worker to end the task with the refs of its values rather than their count."""

    __slots__ = ("function",)
    dynamic_returns = True

    def __init__(self, function: Any) -> None:
        self.function = function

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.function(*args, **kwargs)

    def __reduce__(self) -> tuple[Any, ...]:
        return (DynamicReturns, (self.function,))


class Strategy(enum.StrEnum):
    """A task's or actor's ``scheduling_strategy``, as its spec carries it: a plain tuple whose first item
    is one of these.

    - ``(SPREAD,)``: over the nodes, one after another, those with room first;
    - ``(NODE_AFFINITY, node_id, soft)``: on that node only, while it is alive and its totals fit the
      request; else (dead, unknown, too small) the task fails, or with ``soft`` runs elsewhere.
    - ``(PLACEMENT_GROUP, group_id_hex, bundle_index, capture_child_tasks)``: in a bundle of that
      placement group (index -1: any of its bundles); its resources are then the bundle's
      (``bundle_shape``), which exist only on the node that holds the bundle.
    """

    SPREAD = "SPREAD"
    NODE_AFFINITY = "NODE_AFFINITY"
    PLACEMENT_GROUP = "PLACEMENT_GROUP"


def strategy_record(strategy: tuple | None) -> dict | None:
    """The strategy as the lineage log keeps it (JSON), None for the default policy."""
    if strategy is None:
        return None
    kind = Strategy(strategy[0])
    match kind:
        case Strategy.SPREAD:
            return {"kind": kind.value}
        case Strategy.NODE_AFFINITY:
            return {"kind": kind.value, "node_id": strategy[1], "soft": strategy[2]}
        case Strategy.PLACEMENT_GROUP:
            return {"kind": kind.value, "placement_group_id": strategy[1], "bundle_index": strategy[2],
                    "capture_child_tasks": strategy[3]}
        case _:
            assert_never(kind)


def strategy_of_record(record: dict | None) -> tuple | None:
    """The spec's strategy from the log's record (``strategy_record``'s inverse)."""
    if not record:
        return None
    kind = Strategy(record["kind"])
    match kind:
        case Strategy.SPREAD:
            return (kind.value,)
        case Strategy.NODE_AFFINITY:
            return (kind.value, record["node_id"], bool(record["soft"]))
        case Strategy.PLACEMENT_GROUP:
            return (kind.value, record["placement_group_id"], int(record["bundle_index"]),
                    bool(record["capture_child_tasks"]))
        case _:
            assert_never(kind)


def describe_strategy(record: dict | None) -> str:
    """For people (``ember list tasks``, lineage): DEFAULT, SPREAD, node:<id>[ soft]."""
    strategy = strategy_of_record(record)
    if strategy is None:
        return "DEFAULT"
    if strategy[0] == Strategy.NODE_AFFINITY:
        return f"node:{strategy[1]}" + (" (soft)" if strategy[2] else "")
    if strategy[0] == Strategy.PLACEMENT_GROUP:
        return f"group:{strategy[1]}" + ("" if strategy[2] < 0 else f"[{strategy[2]}]")
    return str(strategy[0])


# Placement group bundles as resources (Ray's naming). A bundle committed on a node adds, for each
# resource R it reserves, ``R_group_<i>_<group>`` (that bundle's) and ``R_group_<group>`` (the sum of
# the group's bundles on that node), and a ``bundle`` marker of BUNDLE_MARKER units under both names.
# A task in a bundle asks for those names instead of R (and 1/1000 of a marker, so that even a task of
# num_cpus=0 runs only where its bundle is).
GROUP_INFIX = "_group_"
# How the reason begins when work fails because its placement group was removed (owners raise
# TaskPlacementGroupRemoved / ActorPlacementGroupRemoved for it).
GROUP_REMOVED = "its placement group was removed: "
BUNDLE = "bundle"
BUNDLE_MARKER = 1000.0
BUNDLE_MARKER_TAKEN = 0.001


def bundle_resources(group_hex: str, index: int, reserved: dict[str, float]) -> dict[str, float]:
    """What bundle ``index`` of group ``group_hex`` adds to its node's resources once committed."""
    added: dict[str, float] = {}
    for name, amount in list(reserved.items()) + [(BUNDLE, BUNDLE_MARKER)]:
        if amount:
            added[f"{name}{GROUP_INFIX}{index}_{group_hex}"] = float(amount)
            added[f"{name}{GROUP_INFIX}{group_hex}"] = float(amount)
    return added


def bundle_shape(shape: tuple, group_hex: str, index: int) -> tuple:
    """A request's shape as a task in bundle ``index`` (-1: any) of group ``group_hex`` asks for it."""
    asked: dict[str, float] = {}
    for name, amount in list(shape) + [(BUNDLE, BUNDLE_MARKER_TAKEN)]:
        asked[f"{name}{GROUP_INFIX}{group_hex}"] = amount
        if index >= 0:
            asked[f"{name}{GROUP_INFIX}{index}_{group_hex}"] = amount
    return resource_shape(asked)


def unbundled_shape(shape: tuple, group_hex: str) -> dict[str, float]:
    """What a task in a bundle of ``group_hex`` asks for, in plain resource names (``bundle_shape``'s inverse)."""
    suffix = f"{GROUP_INFIX}{group_hex}"
    return {name[:-len(suffix)]: amount for name, amount in shape
            if name.endswith(suffix) and name[:-len(suffix)] != BUNDLE}


def group_of_resource(name: str) -> str | None:
    """The group a bundle resource's name belongs to (None for a node's own resource)."""
    if GROUP_INFIX not in name:
        return None
    return name.rsplit("_", 1)[-1]


def resource_shape(resources: dict[str, float]) -> tuple:
    """A hashable, canonical form of a resource request (zero amounts dropped)."""
    return tuple(sorted((k, float(v)) for k, v in resources.items() if v))
