"""A ``runtime_env`` option turned into the environment a spec carries: merged, packed, logged, once.

``env_wire(owner, option)`` resolves a checked option (``_options.validate``) over the environment
this process runs in (the job's in a driver, the worker's own in a task: Ray's inheritance), packs
its folders, logs the record and its packages durably (a worker of any node fetches them from the
log), and returns ``(hash, JSON)``. The result is kept per process for each option and base, so a
loop of ``f.options(runtime_env=...).remote()`` packs its working_dir once: files changed after the
first submission of an option are not shipped again (as Ray, which uploads a working_dir once).

A task with no ``runtime_env`` of its own never comes here: it inherits its process's, a None check.
"""

from __future__ import annotations

import hashlib
import json
import threading
import weakref
from collections import OrderedDict
from typing import Any

import cloudpickle

from ember.lineage import RuntimeEnv, resolve_runtime_env
from ember.scheduler import Owner

__all__ = ["RESOLVED_MAX", "env_wire"]

RESOLVED_MAX = 256  # resolved (option, base) pairs a process keeps

_lock = threading.Lock()
_content_keys: "weakref.WeakKeyDictionary[Any, str]" = weakref.WeakKeyDictionary()  # function -> its pickle's hash
_resolved: "OrderedDict[tuple[int, str, str | None], tuple[str, str]]" = OrderedDict()  # by (owner, option, base)


def env_wire(owner: Owner, option: dict[str, Any], base: tuple[str, str] | None = None,
             from_process: bool = True) -> tuple[str, str]:
    """The environment ``option`` gives over ``base`` (by default this process's own), logged by ``owner``."""
    if from_process:
        base = owner.runtime_env
    key = (id(owner), json.dumps(option, sort_keys=True, default=_content_key), None if base is None else base[0])
    with _lock:
        found = _resolved.get(key)
        if found is not None:
            _resolved.move_to_end(key)
            return found
    env, packages = resolve_runtime_env(option, RuntimeEnv.from_wire(base))
    owner.register_runtime_env(env.hash, env.text, packages)  # durable before any task names it
    with _lock:
        _resolved[key] = env.wire
        while len(_resolved) > RESOLVED_MAX:
            _resolved.popitem(last=False)
    return env.wire


def _content_key(value: Any) -> str:
    """A function in an option (a worker_process_setup_hook) as its pickle's hash: the same function, or an
    equal one made again, finds its resolved environment. Pickled once per function object, not per
    submission (a loop of ``f.options(runtime_env=...).remote()`` asks each time)."""
    try:
        return _content_keys[value]
    except (KeyError, TypeError):  # not seen yet, or not weakly referable: pickled now
        pass
    key = hashlib.sha256(cloudpickle.dumps(value, protocol=5)).hexdigest()
    try:
        _content_keys[value] = key
    except TypeError:
        pass
    return key
