"""Validation of the options given to ``remote``, ``.options`` and actor methods.

Every option is checked by name and type when it is given, so a typo fails
at decoration time with a message naming the option and the fix, not later
inside a worker.
"""

from __future__ import annotations

import inspect
from numbers import Real
from typing import Any

from ember.exceptions import InvalidOptionError
from ember.lineage import check_runtime_env
from ember.scheduler import RESTART_FROM, STREAMING, Strategy, resource_shape
from ember._strategies import NodeAffinitySchedulingStrategy

_TASK = {
    "num_returns", "num_cpus", "num_gpus", "resources", "max_retries", "retry_exceptions",
    "name", "memory", "scheduling_strategy", "max_calls", "runtime_env",
}
_ACTOR = {
    "num_cpus", "num_gpus", "resources", "max_restarts", "max_task_retries", "name", "namespace",
    "lifetime", "memory", "max_concurrency", "concurrency_groups", "get_if_exists", "scheduling_strategy",
    "restart_from", "runtime_env",
}
_METHOD = {"num_returns", "name", "max_task_retries", "retry_exceptions", "concurrency_group"}
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
    if out.get("num_returns") == "dynamic":
        raise InvalidOptionError(
            "option num_returns=\"dynamic\" is not supported: write the generator with no num_returns (or "
            "num_returns=\"streaming\") and iterate the ObjectRefGenerator it returns, which Ray also "
            "recommends over \"dynamic\"")
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
    if "retry_exceptions" in out:
        rule = out["retry_exceptions"]
        if not isinstance(rule, bool):
            if not isinstance(rule, (list, tuple)) or not all(isinstance(t, type) and issubclass(t, BaseException) for t in rule):
                raise InvalidOptionError(f"option retry_exceptions must be a bool or a list of exception types, got {rule!r}")
            out["retry_exceptions"] = tuple(rule)
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
    if "scheduling_strategy" in out:
        strategy_of(out["scheduling_strategy"])  # refused now, by name, if it is not one ember supports
    return out


_STRATEGIES_SUPPORTED = ('None, "DEFAULT", "SPREAD", or ember.util.scheduling_strategies.'
                         'NodeAffinitySchedulingStrategy(node_id, soft)')


def strategy_of(strategy: Any) -> tuple | None:
    """The spec's form of a ``scheduling_strategy`` option (``ember.scheduler.Strategy``); None: the default."""
    if strategy is None or strategy == "DEFAULT":
        return None
    if strategy == "SPREAD":
        return (Strategy.SPREAD.value,)
    if isinstance(strategy, NodeAffinitySchedulingStrategy):
        return (Strategy.NODE_AFFINITY.value, strategy.node_id, strategy.soft)
    what = f"{strategy!r:.80}" if isinstance(strategy, str) else f"a {type(strategy).__name__}"
    raise InvalidOptionError(f"option scheduling_strategy={what} is not supported: ember supports "
                             f"{_STRATEGIES_SUPPORTED}")


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
    """``num_returns`` as the owner takes it: ``STREAMING`` for a generator given none, or "streaming"."""
    given = options.get("num_returns")
    if given == "streaming" or (given is None and (inspect.isgeneratorfunction(function)
                                                   or inspect.isasyncgenfunction(function))):
        return STREAMING
    return 1 if given is None else given


def retries(options: dict[str, Any], key: str, default: int) -> int:
    value = options.get(key, default)
    return 1 << 30 if value == -1 else value
