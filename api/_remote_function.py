"""``@ember.remote`` on a function: the RemoteFunction and its ``.remote``/``.options``."""

from __future__ import annotations

import hashlib
from typing import Any, Callable

import cloudpickle

from ember.exceptions import EmberUserError, SerializationError
from ember.scheduler import DYNAMIC, STREAMING, CallLimited, DynamicReturns, ObjectRefGenerator, TaskKind
from ember import _options
from ember._runtime import core as _core
from ember._runtime_env import env_wire
from ember.dag import FunctionNode


class RemoteFunction:
    """A function that runs as a task: call it with ``f.remote(*args)``."""

    def __init__(self, function: Callable[..., Any], options: dict[str, Any]) -> None:
        self._function = function
        self._options = _options.validate(options, "task")
        self._shape = _options.shape_of(self._options, default_cpus=1.0)
        self._num_returns = _options.returns_of(self._options, function)
        self._max_retries = _options.retries(self._options, "max_retries", _options.DEFAULT_TASK_RETRIES)
        self._retry_exceptions = self._options.get("retry_exceptions", False)
        self._max_calls = _options.max_calls(self._options)
        what = f"task {getattr(function, '__qualname__', 'remote function')}"
        self._strategy, self._shape = _options.placement(self._options, self._shape, what)
        self._own_strategy = "scheduling_strategy" in self._options  # else it may run in its parent's group
        self._runtime_env = self._options.get("runtime_env")  # checked; resolved at each submission (cached)
        self._payload: bytes | None = None
        self._function_id: bytes | None = None
        self.__name__ = getattr(function, "__name__", "remote_function")
        self.__qualname__ = getattr(function, "__qualname__", self.__name__)
        self.__doc__ = function.__doc__
        self.__wrapped__ = function

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise EmberUserError(
            f"remote function {self.__name__}() cannot be called directly; "
            f"use {self.__name__}.remote(...) to run it as a task, then ember.get() the result"
        )

    def _ensure_payload(self) -> tuple[bytes, bytes]:
        if self._payload is None:
            # A function with max_calls ships as a CallLimited, which tells every worker its limit.
            # One with num_returns="dynamic" ships as a DynamicReturns: its workers end it with its values' refs.
            shipped = DynamicReturns(self._function) if self._num_returns == DYNAMIC else self._function
            shipped = CallLimited(shipped, self._max_calls) if self._max_calls else shipped
            try:
                self._payload = cloudpickle.dumps(shipped)
            except Exception as exc:
                raise SerializationError(
                    f"remote function {self.__name__} cannot be pickled to send to workers: {exc}; "
                    "it probably captures an unpicklable object (a lock, a socket, an open file) — "
                    "create that object inside the function instead"
                ) from exc
            self._function_id = hashlib.blake2b(self._payload, digest_size=16).digest()
        return self._function_id, self._payload  # type: ignore[return-value]

    def remote(self, *args: Any, **kwargs: Any) -> Any:
        core = _core()  # the first remote call of a process that never called init starts a cluster
        function_id, payload = self._ensure_payload()
        core.register_function(function_id, payload, self.__qualname__)
        strategy, shape = self._strategy, self._shape
        if not self._own_strategy and core.executor is not None:
            strategy, shape = _options.captured(shape) or (strategy, shape)
        refs = core.submit(
            TaskKind.NORMAL, function_id, self.__qualname__, args, kwargs, self._num_returns,
            shape, self._max_retries, self._retry_exceptions, name=self._options.get("name"),
            strategy=strategy,
            runtime_env=None if self._runtime_env is None else env_wire(core, self._runtime_env),
        )
        if self._num_returns == 1 or self._num_returns == DYNAMIC:
            return refs[0]
        if self._num_returns == STREAMING:
            return ObjectRefGenerator(refs[0])
        if self._num_returns == 0:
            return None
        return refs

    def bind(self, *args: Any, **kwargs: Any) -> FunctionNode:
        """Record a call of this function in a lazy graph (``ember.dag``); ``node.execute()`` makes it."""
        return FunctionNode(self, args, kwargs)

    def options(self, **options: Any) -> "RemoteFunction":
        merged = {**self._options, **options}
        variant = RemoteFunction(self._function, merged)
        if variant._max_calls == self._max_calls and variant._num_returns == self._num_returns:
            variant._payload, variant._function_id = self._payload, self._function_id
        return variant

    def __reduce__(self) -> tuple[Any, ...]:
        return (RemoteFunction, (self._function, self._options))

    def __repr__(self) -> str:
        return f"<ember remote function {self.__qualname__}>"
