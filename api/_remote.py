"""The ``@ember.remote`` decorator, with or without options."""

from __future__ import annotations

import inspect
from typing import Any

from ember._actor import ActorClass
from ember._remote_function import RemoteFunction
from ember.exceptions import InvalidOptionError


def _make(target: Any, options: dict[str, Any]) -> Any:
    if inspect.isclass(target):
        return ActorClass(target, options)
    if callable(target):
        return RemoteFunction(target, options)
    raise TypeError(f"@ember.remote decorates a function or a class, not a {type(target).__name__}")


def remote(*args: Any, **options: Any) -> Any:
    """Make a function a task (``f.remote()``) or a class an actor (``Cls.remote()``).

    Use bare (``@ember.remote``) or with options (``@ember.remote(num_cpus=2)``).
    """
    if len(args) == 1 and not options and callable(args[0]):
        return _make(args[0], {})
    if args:
        raise InvalidOptionError("@ember.remote takes options as keywords only, e.g. @ember.remote(num_cpus=2)")
    return lambda target: _make(target, options)
