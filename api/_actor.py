"""``@ember.remote`` on a class: ActorClass, ActorHandle and ActorMethod."""

from __future__ import annotations

import hashlib
import inspect
import os
from typing import Any

import cloudpickle

from ember.exceptions import ActorAlreadyExistsError, EmberUserError, SerializationError
from ember.scheduler import ObjectRef, Op, TaskKind
from ember import _options
from ember._runtime import _lookup_named, core as _core
from ember.dag import ClassMethodNode, ClassNode


def method(**options: Any) -> Any:
    """Decorate an actor method with options, e.g. ``@ember.method(num_returns=2)``."""
    checked = _options.validate(options, "method")

    def decorate(fn: Any) -> Any:
        fn.__ember_method_options__ = checked
        return fn

    return decorate


def _method_table(cls: type) -> dict[str, int]:
    table = {}
    for name, member in inspect.getmembers(cls, predicate=callable):
        if name.startswith("__") and name != "__call__":
            continue
        opts = getattr(member, "__ember_method_options__", {})
        table[name] = opts.get("num_returns", 1)
    return table


class ActorClass:
    """A class whose instances live in their own worker process: ``Cls.remote(...)``."""

    def __init__(self, cls: type, options: dict[str, Any]) -> None:
        self._cls = cls
        self._options = _options.validate(options, "actor")
        # Like Ray: an actor needs no CPU while it runs unless it asks for one.
        self._shape = _options.shape_of(self._options, default_cpus=0.0)
        self._methods = _method_table(cls)
        self._payload: bytes | None = None
        self._class_id: bytes | None = None
        self.__name__ = cls.__name__
        self.__qualname__ = cls.__qualname__
        self.__doc__ = cls.__doc__

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise EmberUserError(
            f"actor class {self.__name__} cannot be instantiated directly; use {self.__name__}.remote(...)"
        )

    def options(self, **options: Any) -> "ActorClass":
        variant = ActorClass(self._cls, {**self._options, **options})
        variant._payload, variant._class_id = self._payload, self._class_id
        return variant

    def _ensure_payload(self) -> tuple[bytes, bytes]:
        if self._payload is None:
            try:
                self._payload = cloudpickle.dumps(self._cls)
            except Exception as exc:
                raise SerializationError(f"actor class {self.__name__} cannot be pickled: {exc}") from exc
            self._class_id = hashlib.blake2b(self._payload, digest_size=16).digest()
        return self._class_id, self._payload  # type: ignore[return-value]

    def remote(self, *args: Any, **kwargs: Any) -> "ActorHandle":
        core = _core()  # the first remote call of a process that never called init starts a cluster
        class_id, payload = self._ensure_payload()
        opts = self._options
        name = opts.get("name")
        namespace = opts.get("namespace")
        if name is not None and opts.get("get_if_exists"):
            existing = _lookup_named(name, namespace)
            if existing is not None:
                return existing
        # The key the name is claimed under (the namespace's), which a scheduler restart claims again.
        key = _options.qualified_name(namespace, name) if name is not None else None
        core.register_function(class_id, payload, self.__qualname__)
        actor_id = os.urandom(16)
        max_task_retries = _options.retries(opts, "max_task_retries", 0)
        handle = ActorHandle(actor_id, self.__qualname__, self._methods, max_task_retries)
        meta = handle._meta()
        if key is not None:
            error = core.call_scheduler(Op.CLAIM_NAME, key, actor_id, meta)
            if error is not None:
                where = "" if key == name else f", namespace={namespace!r}"
                raise ActorAlreadyExistsError(
                    f"cannot create actor: an actor named {name!r} already exists{where and ' in that namespace'}; "
                    f"use ember.get_actor({name!r}{where}) to reach it")
        try:
            core.submit(
                TaskKind.ACTOR_CREATION, class_id, self.__qualname__, args, kwargs, 0, self._shape,
                _options.retries(opts, "max_restarts", 0),  # a creation's retries are the actor's restarts
                actor_id=actor_id, name=key, extra=(opts.get("lifetime") == "detached", meta),
                strategy=_options.strategy_of(opts.get("scheduling_strategy")),
            )
        except BaseException:
            core.kill_actor(actor_id, True)  # frees the name it claimed
            raise
        return handle

    def bind(self, *args: Any, **kwargs: Any) -> ClassNode:
        """Record the creation of an actor in a lazy graph (``ember.dag``); ``node.method.bind(...)`` calls it."""
        return ClassNode(self, args, kwargs)

    def __reduce__(self) -> tuple[Any, ...]:
        return (ActorClass, (self._cls, self._options))

    def __repr__(self) -> str:
        return f"<ember actor class {self.__qualname__}>"


class ActorMethod:
    __slots__ = ("_handle", "_name", "_num_returns")

    def __init__(self, handle: "ActorHandle", name: str, num_returns: int) -> None:
        self._handle = handle
        self._name = name
        self._num_returns = num_returns

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise EmberUserError(
            f"actor method {self._name}() cannot be called directly; use actor.{self._name}.remote(...)"
        )

    def remote(self, *args: Any, **kwargs: Any) -> Any:
        h = self._handle
        refs = _core().submit(
            TaskKind.ACTOR_CALL, b"", h._class_name, args, kwargs, self._num_returns, (),
            h._max_task_retries, actor_id=h._actor_id, method=self._name,
        )
        if self._num_returns == 1:
            return refs[0]
        if self._num_returns == 0:
            return None
        return refs

    def bind(self, *args: Any, **kwargs: Any) -> ClassMethodNode:
        """Record a call on this live actor in a lazy graph (``ember.dag``)."""
        return ClassMethodNode(self._handle, self._name, args, kwargs)

    def options(self, **options: Any) -> "ActorMethod":
        opts = _options.validate(options, "method")
        return ActorMethod(self._handle, self._name, opts.get("num_returns", self._num_returns))


class ActorHandle:
    """A reference to a live actor; pass it to tasks and other actors freely."""

    def __init__(self, actor_id: bytes, class_name: str, methods: dict[str, int], max_task_retries: int) -> None:
        self._actor_id = actor_id
        self._class_name = class_name
        self._methods = methods
        self._max_task_retries = max_task_retries

    def _meta(self) -> tuple:
        return (self._class_name, self._methods, self._max_task_retries)

    def __getattr__(self, name: str) -> ActorMethod:
        if name.startswith("_"):
            raise AttributeError(name)
        num_returns = self._methods.get(name)
        if num_returns is None:
            raise AttributeError(
                f"actor {self._class_name} has no method {name!r}; its methods are: {', '.join(sorted(self._methods))}"
            )
        return ActorMethod(self, name, num_returns)

    def __reduce__(self) -> tuple[Any, ...]:
        return (ActorHandle, (self._actor_id, self._class_name, self._methods, self._max_task_retries))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ActorHandle) and other._actor_id == self._actor_id

    def __hash__(self) -> int:
        return hash(self._actor_id)

    def __repr__(self) -> str:
        return f"Actor({self._class_name}, {self._actor_id.hex()[:16]})"


def handle_from_meta(actor_id: bytes, meta: tuple) -> ActorHandle:
    class_name, methods, max_task_retries = meta
    return ActorHandle(actor_id, class_name, methods, max_task_retries)


__all__ = ["ActorClass", "ActorHandle", "ActorMethod", "ObjectRef", "method", "handle_from_meta"]
