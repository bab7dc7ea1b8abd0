"""Validation of the options given to ``remote``, ``.options`` and actor methods.

Every option is checked by name and type when it is given, so a typo fails
at decoration time with a message naming the option and the fix, not later
inside a worker.
"""

from __future__ import annotations

import inspect
import sys
from numbers import Real
from typing import Any

from ember.exceptions import EmberUserError, InvalidOptionError
from ember.lineage import check_runtime_env
from ember.scheduler import DYNAMIC, RESTART_FROM, STREAMING, Strategy, bundle_shape, resource_shape
from ember._placement_group import current_strategy
from ember._strategies import NodeAffinitySchedulingStrategy, PlacementGroupSchedulingStrategy

_TASK = {
    "num_returns", "num_cpus", "num_gpus", "resources", "max_retries", "retry_exceptions",
    "name", "memory", "scheduling_strategy", "max_calls", "runtime_env",
    "placement_group", "placement_group_bundle_index", "placement_group_capture_child_tasks",
    "enable_task_events",
}
_ACTOR = {
    "num_cpus", "num_gpus", "resources", "max_restarts", "max_task_retries", "name", "namespace",
    "lifetime", "memory", "max_concurrency", "concurrency_groups", "get_if_exists", "scheduling_strategy",
    "restart_from", "runtime_env",
    "placement_group", "placement_group_bundle_index", "placement_group_capture_child_tasks",
    "enable_task_events",
}
_METHOD = {"num_returns", "name", "max_task_retries", "retry_exceptions", "concurrency_group", "enable_task_events"}
# Ray's enable_task_events=False turns off the records its dashboard shows of a task. ember's records are its
# lineage log, which its fault tolerance rests on: True is what ember does; False is said, once, not to apply.
_TASK_EVENTS_OFF_SAID = False
# Spellings from older Ray releases that the seed documents still use.
_ALIASES = {"num_return_vals": "num_returns"}

DEFAULT_TASK_RETRIES = 3
NAMESPACE = "default"  # a namespace whose names are claimed as they are (what ember had before job namespaces)
ANONYMOUS_PREFIX = "anonymous-"  # a job's namespace when init() names none: its own, as Ray's anonymous one
_NAMESPACE_SEPARATOR = "\x1f"  # between a namespace and a name in the key a name is claimed under


def qualified_name(namespace: str | None, name: str) -> str:
    """The key ``name`` is claimed and looked up under in ``namespace`` (the default's: the name itself)."""
    if namespace is None or namespace == NAMESPACE:
        return name
    return f"{namespace}{_NAMESPACE_SEPARATOR}{name}"


def split_name(key: str) -> tuple[str, str]:
    """(namespace, name) of a claimed key."""
    namespace, separator, name = key.partition(_NAMESPACE_SEPARATOR)
    return (namespace, name) if separator else (NAMESPACE, key)


def check_namespace(namespace: Any, where: str) -> None:
    """A namespace must be a non-empty string without control characters (None: the default one)."""
    if namespace is None:
        return
    if not isinstance(namespace, str) or not namespace or _NAMESPACE_SEPARATOR in namespace:
        raise InvalidOptionError(f"{where} namespace must be a non-empty string, got {namespace!r}")


def anonymous_namespace(job_id: bytes) -> str:
    """The namespace of a job that ``init()`` gave none: the job's own, so its names are its own (Ray's rule)."""
    return ANONYMOUS_PREFIX + job_id.hex()


def _number(name: str, value: Any, minimum: float = 0.0) -> float:
    if isinstance(value, bool) or not isinstance(value, Real) or value < minimum:
        raise InvalidOptionError(f"option {name} must be a number >= {minimum:g}, got {value!r} (type={type(value).__name__})")
    return float(value)


def _integer(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise InvalidOptionError(f"option {name} must be an integer >= {minimum}, got {value!r} (type={type(value).__name__})")
    return value


def _resources(res: Any) -> None:
    if not isinstance(res, dict) or not all(isinstance(k, str) for k in res):
        raise InvalidOptionError(f"option resources must be a dict of name to amount, got {res!r:.100}")
    for name, amount in res.items():
        if name in ("CPU", "GPU"):
            raise InvalidOptionError(f"use num_cpus/num_gpus instead of resources={{{name!r}: ...}}")
        _number(f"resources[{name!r}]", amount)


def _concurrency_groups(groups: Any) -> None:
    if not isinstance(groups, dict):
        raise InvalidOptionError(f"option concurrency_groups must be a dict of group name to its max concurrency, "
                                 f"e.g. {{'io': 2}}, got {groups!r:.100} (type={type(groups).__name__})")
    for name, size in groups.items():
        if not isinstance(name, str) or not name or name.startswith("_ember"):
            raise InvalidOptionError(f"option concurrency_groups: a group's name must be a non-empty string "
                                     f"(not starting with '_ember'), got {name!r}")
        _integer(f"concurrency_groups[{name!r}]", size, 1)


def validate(options: dict[str, Any], kind: str) -> dict[str, Any]:
    """Check and normalize ``options`` for kind 'task', 'actor' or 'method'."""
    allowed = {"task": _TASK, "actor": _ACTOR, "method": _METHOD}[kind]
    out: dict[str, Any] = {}
    for key, value in options.items():
        key = _ALIASES.get(key, key)
        if key not in allowed:
            raise InvalidOptionError(
                f"unknown option {key!r} for a remote {kind}; valid options are: {', '.join(sorted(allowed))}"
            )
        out[key] = value
    if "num_returns" in out and out["num_returns"] not in ("streaming", "dynamic"):
        _integer("num_returns", out["num_returns"], 0)
    for key in ("num_cpus", "num_gpus", "memory"):
        if key in out and out[key] is not None:
            _number(key, out[key])
    gpus = out.get("num_gpus")
    if gpus is not None and gpus > 1 and gpus != int(gpus):
        raise InvalidOptionError(f"option num_gpus={gpus!r}: more than one GPU must be a whole number of devices "
                                 "(a fraction below 1 shares one device)")
    if "resources" in out and out["resources"] is not None:
        _resources(out["resources"])
    for key in ("max_retries", "max_restarts", "max_task_retries"):
        if key in out:
            _integer(key, out[key], -1)
    if "max_calls" in out:
        _integer("max_calls", out["max_calls"], 0)
    if kind == "method" and out.get("retry_exceptions"):
        raise InvalidOptionError(
            "option retry_exceptions on an actor method is not supported by ember: a call run again after "
            "its exception would need a second place in the actor's logged order, which replay after a "
            "restart reads; catch the exception in the method, or in the caller and call again "
            "(retry_exceptions=False, Ray's default, is accepted)")
    if "retry_exceptions" in out:
        rule = out["retry_exceptions"]
        if not isinstance(rule, bool):
            if not isinstance(rule, (list, tuple)) or not all(isinstance(t, type) and issubclass(t, BaseException) for t in rule):
                raise InvalidOptionError(f"option retry_exceptions must be a bool or a list of exception types, got {rule!r}")
            out["retry_exceptions"] = tuple(rule)
    if "enable_task_events" in out:
        _task_events(out.pop("enable_task_events"))
    if "name" in out and out["name"] is not None and not isinstance(out["name"], str):
        raise InvalidOptionError(f"option name must be a string, got {out['name']!r}")
    if "namespace" in out:
        check_namespace(out["namespace"], "the actor option")
    if "runtime_env" in out:
        out["runtime_env"] = check_runtime_env(out["runtime_env"], f"the {kind} option")
    if "lifetime" in out and out["lifetime"] not in (None, "detached", "non_detached"):
        raise InvalidOptionError(f"option lifetime must be 'detached' or None, got {out['lifetime']!r}")
    if "max_concurrency" in out:
        _integer("max_concurrency", out["max_concurrency"], 1)
    if "restart_from" in out and out["restart_from"] not in RESTART_FROM:
        raise InvalidOptionError(f"option restart_from must be \"replay\" (constructor, newest checkpoint, then the "
                                 f"logged calls: the state before the crash) or \"constructor\" (Ray's restart), "
                                 f"got {out['restart_from']!r}")
    if "concurrency_groups" in out:
        _concurrency_groups(out["concurrency_groups"])
    if "concurrency_group" in out and not isinstance(out["concurrency_group"], str):
        raise InvalidOptionError(f"option concurrency_group must be the name of one of the actor's concurrency "
                                 f"groups, got {out['concurrency_group']!r} (type={type(out['concurrency_group']).__name__})")
    _legacy_placement_group(out)
    if "scheduling_strategy" in out:
        strategy_of(out["scheduling_strategy"])  # refused now, by name, if it is not one ember supports
    return out


_LEGACY_GROUP_OPTIONS = ("placement_group", "placement_group_bundle_index", "placement_group_capture_child_tasks")


def _legacy_placement_group(out: dict[str, Any]) -> None:
    """Ray's older ``placement_group=``/``placement_group_bundle_index=``/``placement_group_capture_child_tasks=``
    options, made into the ``PlacementGroupSchedulingStrategy`` they mean (in place)."""
    given = {key: out.pop(key) for key in _LEGACY_GROUP_OPTIONS if key in out}
    group = given.get("placement_group")
    if group is None or group == "default":
        if any(given.get(key) not in (None, -1, False) for key in _LEGACY_GROUP_OPTIONS[1:]):
            raise InvalidOptionError("options placement_group_bundle_index and placement_group_capture_child_tasks "
                                     "need placement_group=...; better: scheduling_strategy="
                                     "PlacementGroupSchedulingStrategy(pg, bundle_index, capture_child_tasks)")
        return
    if out.get("scheduling_strategy") is not None:
        raise InvalidOptionError("give either scheduling_strategy or placement_group, not both: "
                                 "scheduling_strategy=PlacementGroupSchedulingStrategy(pg, ...) says it all")
    index = given.get("placement_group_bundle_index")
    out["scheduling_strategy"] = PlacementGroupSchedulingStrategy(
        group, -1 if index is None else index, bool(given.get("placement_group_capture_child_tasks")))


_STRATEGIES_SUPPORTED = ('None, "DEFAULT", "SPREAD", or from ember.util.scheduling_strategies '
                         'NodeAffinitySchedulingStrategy(node_id, soft) or PlacementGroupSchedulingStrategy('
                         'placement_group, placement_group_bundle_index, placement_group_capture_child_tasks)')


def strategy_of(strategy: Any) -> tuple | None:
    """The spec's form of a ``scheduling_strategy`` option (``ember.scheduler.Strategy``); None: the default."""
    if strategy is None or strategy == "DEFAULT":
        return None
    if strategy == "SPREAD":
        return (Strategy.SPREAD.value,)
    if isinstance(strategy, NodeAffinitySchedulingStrategy):
        return (Strategy.NODE_AFFINITY.value, strategy.node_id, strategy.soft)
    if isinstance(strategy, PlacementGroupSchedulingStrategy):
        return (Strategy.PLACEMENT_GROUP.value, strategy.placement_group.id.hex(),
                strategy.placement_group_bundle_index, strategy.placement_group_capture_child_tasks)
    what = f"{strategy!r:.80}" if isinstance(strategy, str) else f"a {type(strategy).__name__}"
    raise InvalidOptionError(f"option scheduling_strategy={what} is not supported: ember supports "
                             f"{_STRATEGIES_SUPPORTED}")


def placement(options: dict[str, Any], shape: tuple, what: str) -> tuple[tuple | None, tuple]:
    """The spec's strategy and resource shape for ``options``: in a placement group, the bundle's resources.

    A request no bundle it may use can hold is refused here, as Ray refuses it
    (``InvalidOptionError``, a ValueError).
    """
    option = options.get("scheduling_strategy")
    if isinstance(option, PlacementGroupSchedulingStrategy):
        group, index = option.placement_group, option.placement_group_bundle_index
        request = dict(shape)
        bundles = group.bundle_specs if index < 0 else [group.bundle_specs[index]]
        if not any(all(b.get(name, 0.0) + 1e-9 >= amount for name, amount in request.items()) for b in bundles):
            which = f"bundle {index} ({bundles[0]})" if index >= 0 else f"any of its bundles ({bundles})"
            raise InvalidOptionError(
                f"{what} asks for {request}, which does not fit in {which} of placement group "
                f"{group.id.hex()}: ask for less (num_cpus=..., num_gpus=..., resources=...; a task asks for 1 "
                "CPU unless told otherwise), or create the group with bigger bundles")
        strategy = strategy_of(option)
        return strategy, bundle_shape(shape, group.id.hex(), index)
    return strategy_of(option), shape


def captured(shape: tuple) -> tuple[tuple, tuple] | None:
    """For work given no ``scheduling_strategy``: (strategy, shape) in the group the running task or actor
    captures its children into (any bundle), or None."""
    try:
        current = current_strategy()
    except EmberUserError:
        return None  # not initialized: no task is running here
    if current is None or not current[3]:
        return None
    return (Strategy.PLACEMENT_GROUP.value, current[1], -1, True), bundle_shape(shape, current[1], -1)


def validate_init(num_cpus: Any, num_gpus: Any, resources: Any, object_store_memory: Any) -> None:
    """Check ``ember.init``'s resource options, naming the one that is wrong."""
    for key, value in (("num_cpus", num_cpus), ("num_gpus", num_gpus)):
        if value is not None:
            _number(key, value)
    if resources is not None:
        _resources(resources)
    if object_store_memory is not None:
        _integer("object_store_memory", object_store_memory, 1 << 20)


def shape_of(options: dict[str, Any], default_cpus: float) -> tuple:
    num_cpus = options.get("num_cpus")
    resources = dict(options.get("resources") or {})
    resources["CPU"] = default_cpus if num_cpus is None else num_cpus
    resources["GPU"] = options.get("num_gpus") or 0
    if options.get("memory"):
        resources["memory"] = options["memory"]
    return resource_shape(resources)


def max_calls(options: dict[str, Any]) -> int:
    """Runs of a task's function a worker makes before it retires; 0: no limit.

    As Ray: no limit by default, but 1 for a task that asks for GPUs, so that
    what it left in the GPU's memory goes with its process.
    """
    if "max_calls" in options:
        return options["max_calls"]
    return 1 if options.get("num_gpus") else 0


def returns_of(options: dict[str, Any], function: Any) -> int:
    """``num_returns`` as the owner takes it: ``STREAMING`` for a generator given none, or "streaming";
    ``DYNAMIC`` for "dynamic" (a generator function only)."""
    given = options.get("num_returns")
    if given == "dynamic":
        if not inspect.isgeneratorfunction(function):
            raise InvalidOptionError(
                f"num_returns=\"dynamic\" needs a generator function (one that uses yield), but "
                f"{getattr(function, '__qualname__', function)!r} is not one; give it an int num_returns instead")
        return DYNAMIC
    if given == "streaming" or (given is None and (inspect.isgeneratorfunction(function)
                                                   or inspect.isasyncgenfunction(function))):
        return STREAMING
    return 1 if given is None else given


def _task_events(value: Any) -> None:
    global _TASK_EVENTS_OFF_SAID
    if not isinstance(value, bool):
        raise InvalidOptionError(f"option enable_task_events must be True or False, got {value!r}")
    if not value and not _TASK_EVENTS_OFF_SAID:
        _TASK_EVENTS_OFF_SAID = True
        print("ember: enable_task_events=False has no effect: every task and call is recorded in ember's lineage "
              "log, which its fault tolerance (retries, rebuilds, actor replay) rests on", file=sys.stderr, flush=True)


def retries(options: dict[str, Any], key: str, default: int) -> int:
    value = options.get(key, default)
    return 1 << 30 if value == -1 else value
