"""``@ember.remote`` on a class: ActorClass, ActorHandle and ActorMethod."""

from __future__ import annotations

import hashlib
import inspect
import os
from typing import Any

import cloudpickle

from ember.exceptions import ActorAlreadyExistsError, EmberUserError, InvalidOptionError, SerializationError
from ember.scheduler import (ASYNC_MAX_CONCURRENCY_DEFAULT, DYNAMIC, HANDLES, READY_METHOD, STREAMING, TERMINATE_METHOD,
                             ActorExit, Concurrency, ObjectRef, ObjectRefGenerator, Op, TaskKind)
from ember import _options
from ember._runtime import _lookup_named, core as _core, current_namespace
from ember._runtime_env import env_wire
from ember.dag import ClassMethodNode, ClassNode
from ember.scheduler import _context


def method(**options: Any) -> Any:
    """Decorate an actor method with options, e.g. ``@ember.method(num_returns=2)``."""
    checked = _options.validate(options, "method")

    def decorate(fn: Any) -> Any:
        fn.__ember_method_options__ = checked
        return fn

    return decorate


def _methods(cls: type) -> list[tuple[str, Any]]:
    return [(name, member) for name, member in inspect.getmembers(cls, predicate=callable)
            if not name.startswith("__") or name == "__call__"]


def _method_table(cls: type) -> dict[str, int]:
    return {name: _options.returns_of(getattr(member, "__ember_method_options__", {}), member)
            for name, member in _methods(cls)}


def _method_options(cls: type) -> dict[str, tuple[int | None, str | None]]:
    """What ``@ember.method`` gives each call of a method besides its returns: (max_task_retries, name)."""
    found = {}
    for name, member in _methods(cls):
        options = getattr(member, "__ember_method_options__", {})
        if "max_task_retries" in options or options.get("name") is not None:
            retries = _options.retries(options, "max_task_retries", 0) if "max_task_retries" in options else None
            found[name] = (retries, options.get("name"))
    return found


def _concurrency(cls: type, options: dict[str, Any]) -> Concurrency | None:
    """How the actor runs its calls; None: one at a time, in order (neither async nor threaded).

    Like Ray: an ``async def`` method makes an async actor (1000 calls at once unless
    ``max_concurrency`` says otherwise); ``max_concurrency`` > 1 or ``concurrency_groups``
    make a threaded one (its default group as many threads as ``max_concurrency``).
    """
    methods = _methods(cls)
    is_async = any(inspect.iscoroutinefunction(m) or inspect.isasyncgenfunction(m) for _, m in methods)
    groups = dict(options.get("concurrency_groups") or {})
    method_groups = {name: m.__ember_method_options__["concurrency_group"] for name, m in methods
                     if "concurrency_group" in getattr(m, "__ember_method_options__", {})}
    for name, group in method_groups.items():
        if group not in groups:
            raise InvalidOptionError(
                f"method {cls.__qualname__}.{name} is in concurrency group {group!r}, which the actor does not "
                f"declare; declare it with @ember.remote(concurrency_groups={{{group!r}: N}})")
    default = ASYNC_MAX_CONCURRENCY_DEFAULT if is_async else 1
    max_concurrency = options.get("max_concurrency", default)
    if not is_async and max_concurrency == 1 and not groups:
        return None
    return Concurrency(is_async, max_concurrency, groups, method_groups)


class ActorClass:
    """A class whose instances live in their own worker process: ``Cls.remote(...)``."""

    def __init__(self, cls: type, options: dict[str, Any]) -> None:
        self._cls = cls
        self._options = _options.validate(options, "actor")
        # Like Ray: an actor needs no CPU while it runs unless it asks for one.
        self._shape = _options.shape_of(self._options, default_cpus=0.0)
        self._strategy, self._shape = _options.placement(self._options, self._shape, f"actor {cls.__qualname__}")
        self._methods = _method_table(cls)
        self._method_options = _method_options(cls)
        self._concurrency = _concurrency(cls, self._options)
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
        if name is not None and namespace is None:
            namespace = current_namespace()  # the job's (Ray's rule), not "default"
        if name is not None and opts.get("get_if_exists"):
            existing = _lookup_named(name, namespace)
            if existing is not None:
                return existing
        # The key the name is claimed under (the namespace's), which a scheduler restart claims again.
        key = _options.qualified_name(namespace, name) if name is not None else None
        core.register_function(class_id, payload, self.__qualname__)
        actor_id = os.urandom(16)
        freeable = name is None and opts.get("lifetime") != "detached"
        if freeable:
            HANDLES.track(actor_id, self.__qualname__)  # freed once no process holds a handle to it
        max_task_retries = _options.retries(opts, "max_task_retries", 0)
        concurrency = self._concurrency.to_wire() if self._concurrency is not None else None
        handle = ActorHandle(actor_id, self.__qualname__, self._methods, max_task_retries, concurrency,
                             opts.get("restart_from"), core.address if freeable else None, self._method_options)
        meta = handle._meta()
        if key is not None:
            error = core.call_scheduler(Op.CLAIM_NAME, key, actor_id, meta)
            if error is not None:
                where = "" if key == name else f", namespace={namespace!r}"
                raise ActorAlreadyExistsError(
                    f"cannot create actor: an actor named {name!r} already exists{where and ' in that namespace'}; "
                    f"use ember.get_actor({name!r}{where}) to reach it")
        strategy, shape = self._strategy, self._shape
        if "scheduling_strategy" not in opts and core.executor is not None:
            strategy, shape = _options.captured(shape) or (strategy, shape)
        try:
            core.submit(
                TaskKind.ACTOR_CREATION, class_id, self.__qualname__, args, kwargs, 0, shape,
                _options.retries(opts, "max_restarts", 0),  # a creation's retries are the actor's restarts
                actor_id=actor_id, name=key, extra=(opts.get("lifetime") == "detached", meta),
                strategy=strategy,
                runtime_env=None if opts.get("runtime_env") is None else env_wire(core, opts["runtime_env"]),
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
    __slots__ = ("_handle", "_name", "_num_returns", "_group", "_retries", "_call_name")

    def __init__(self, handle: "ActorHandle", name: str, num_returns: int, group: str | None = None,
                 retries: int | None = None, call_name: str | None = None) -> None:
        self._handle = handle
        self._name = name
        self._num_returns = num_returns
        self._group = group  # .options(concurrency_group=...); None: the method's own group
        self._retries = retries  # the method's max_task_retries; None: the actor's
        self._call_name = call_name  # the calls' name in the log and the timeline (``name=``)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise EmberUserError(
            f"actor method {self._name}() cannot be called directly; use actor.{self._name}.remote(...)"
        )

    def remote(self, *args: Any, **kwargs: Any) -> Any:
        h = self._handle
        refs = _core().submit(
            TaskKind.ACTOR_CALL, b"", h._class_name, args, kwargs, self._num_returns, (),
            h._max_task_retries if self._retries is None else self._retries, actor_id=h._actor_id,
            method=self._name, name=self._call_name, concurrency_group=self._group,
        )
        if self._num_returns == 1 or self._num_returns == DYNAMIC:
            return refs[0]
        if self._num_returns == STREAMING:
            return ObjectRefGenerator(refs[0])
        if self._num_returns == 0:
            return None
        return refs

    def bind(self, *args: Any, **kwargs: Any) -> ClassMethodNode:
        """Record a call on this live actor in a lazy graph (``ember.dag``)."""
        return ClassMethodNode(self._handle, self._name, args, kwargs)

    def options(self, **options: Any) -> "ActorMethod":
        opts = _options.validate(options, "method")
        if opts.get("num_returns") == "streaming":
            opts["num_returns"] = STREAMING
        if (opts.get("num_returns") == "dynamic") != (self._num_returns == DYNAMIC) and "num_returns" in opts:
            # The worker knows a dynamic method from its decorator alone: the two must agree.
            raise InvalidOptionError(
                f"actor method {self._name}: num_returns=\"dynamic\" is given by decorating the method with "
                f"@ember.method(num_returns=\"dynamic\"), and a method so decorated keeps it; "
                f".options(num_returns={opts['num_returns']!r}) cannot change it")
        if opts.get("num_returns") == "dynamic":
            opts["num_returns"] = DYNAMIC
        group = opts.get("concurrency_group", self._group)
        if group is not None:
            declared = dict(self._handle._concurrency[2]) if self._handle._concurrency is not None else {}
            if group not in declared:
                raise InvalidOptionError(
                    f"actor {self._handle._class_name} has no concurrency group {group!r}; its groups are: "
                    f"{', '.join(sorted(declared)) or 'none (declare them with concurrency_groups=...)'}")
        retries = _options.retries(opts, "max_task_retries", 0) if "max_task_retries" in opts else self._retries
        return ActorMethod(self._handle, self._name, opts.get("num_returns", self._num_returns), group, retries,
                           opts.get("name", self._call_name))


class ActorHandle:
    """A reference to a live actor; pass it to tasks and other actors freely."""

    def __init__(self, actor_id: bytes, class_name: str, methods: dict[str, int], max_task_retries: int,
                 concurrency: tuple | None = None, restart_from: str | None = None,
                 creator: str | None = None, method_options: dict[str, tuple] | None = None) -> None:
        self._actor_id = actor_id
        self._class_name = class_name
        self._methods = methods
        self._max_task_retries = max_task_retries
        self._method_options = method_options or {}  # method -> (max_task_retries, name), from @ember.method
        self._concurrency = concurrency  # ``Concurrency.to_wire()`` of a concurrent actor, else None
        self._restart_from = restart_from  # "constructor" for Ray's restart; None: ember's (replay)
        self._creator = creator  # the address of the process that created it, if it may be freed
        HANDLES.added(actor_id, class_name, creator)

    def __del__(self) -> None:
        try:
            HANDLES.dropped(self._actor_id)
        except Exception:  # interpreter shutdown: the module's globals are gone, and so is the cluster
            pass

    def _meta(self) -> tuple:
        # The node scheduler finds the concurrency and restart_from here (``concurrency_in_meta``,
        # ``restart_from_in_meta``) to start the actor with.
        base = (self._class_name, self._methods, self._max_task_retries)
        if self._method_options:
            return (*base, self._concurrency, self._restart_from, self._method_options)
        if self._restart_from is not None:
            return (*base, self._concurrency, self._restart_from)
        return base if self._concurrency is None else (*base, self._concurrency)

    def __getattr__(self, name: str) -> ActorMethod:
        if name in (TERMINATE_METHOD, READY_METHOD):
            # Ray's graceful end: queued like a call, after the calls this process sent before it; or
            # Ray's readiness probe, a call that answers True.
            return ActorMethod(self, name, 1)
        if name.startswith("_"):
            raise AttributeError(name)
        num_returns = self._methods.get(name)
        if num_returns is None:
            raise AttributeError(
                f"actor {self._class_name} has no method {name!r}; its methods are: {', '.join(sorted(self._methods))}"
            )
        retries, call_name = self._method_options.get(name, (None, None))
        return ActorMethod(self, name, num_returns, None, retries, call_name)

    def __reduce__(self) -> tuple[Any, ...]:
        HANDLES.pickled(self._actor_id)  # a lease of the task it is an argument of, or an escape
        return (ActorHandle, (self._actor_id, self._class_name, self._methods, self._max_task_retries,
                              self._concurrency, self._restart_from, self._creator, self._method_options))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ActorHandle) and other._actor_id == self._actor_id

    def __hash__(self) -> int:
        return hash(self._actor_id)

    def __repr__(self) -> str:
        return f"Actor({self._class_name}, {self._actor_id.hex()[:16]})"


def exit_actor() -> None:
    """End the actor this is called in, cleanly, once the current method returns (Ray's ``exit_actor``).

    The call that calls it, and every call after it, fail with ``ActorDiedError`` naming the exit; the
    actor is not restarted, whatever ``max_restarts`` says. It raises ``ActorExit`` (a ``SystemExit``):
    code after it does not run, and ``except Exception`` does not catch it.
    """
    core = _context.PROCESS.owner
    task = core.current_task if core is not None else None
    if task is None or task.kind != TaskKind.ACTOR_CALL:
        raise EmberUserError("exit_actor() ends the actor it runs in: call it inside an actor method, "
                             "or end an actor from outside with ember.kill(handle)")
    raise ActorExit(f"it ended itself: exit_actor() was called in {task.function_name}.{task.method}")


def handle_from_meta(actor_id: bytes, meta: tuple) -> ActorHandle:
    class_name, methods, max_task_retries = meta[:3]
    return ActorHandle(actor_id, class_name, methods, max_task_retries, meta[3] if len(meta) > 3 else None,
                       meta[4] if len(meta) > 4 else None, method_options=meta[5] if len(meta) > 5 else None)


__all__ = ["ActorClass", "ActorHandle", "ActorMethod", "ObjectRef", "exit_actor", "method", "handle_from_meta"]
