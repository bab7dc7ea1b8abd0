"""``ember.dag``: Ray's lazy computation graphs (``f.bind(...)``, ``Cls.bind(...)``, ``InputNode``, ``execute``).

``bind`` records a call without making it; ``execute(*args, **kwargs)`` makes
every call of the graph, inputs first, as the ordinary ``.remote`` calls it
stands for: each function node becomes a task, each class node an actor,
each method node an actor call. So a graph's nodes are logged in the lineage
log as the tasks they become, with the edges of the refs passed between
them, and rebuilt from it like any task: a graph adds no state of its own.

Within one ``execute`` each node is made once, however many nodes read it;
a second ``execute`` makes the graph again (new tasks, new actors), as in Ray.
Calls bound on one class node run on its actor in the order they were bound,
each after the one bound before it, even those no output reads (Ray's rule:
``a.inc.bind(2)`` then ``a.get.bind()`` sees the increment).
This module must never run user code in the caller: it only submits.
"""

from __future__ import annotations

import abc

import threading
from typing import Any

from ember.exceptions import EmberUserError

__all__ = [
    "ClassMethodNode",
    "ClassNode",
    "DAGNode",
    "FunctionNode",
    "InputAttributeNode",
    "InputNode",
    "MultiOutputNode",
]


class _Execution:
    """One ``execute``: the input it was given, and what each node became (each node made once)."""

    def __init__(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        self.args = args
        self.kwargs = kwargs
        self.made: dict[int, Any] = {}

    def resolve(self, value: Any) -> Any:
        """``value`` with every node in it (nested in lists, tuples, dicts too) replaced by what it became."""
        if isinstance(value, DAGNode):
            key = id(value)
            if key not in self.made:
                self.made[key] = value._make(self)
            return self.made[key]
        if isinstance(value, list):
            return [self.resolve(v) for v in value]
        if isinstance(value, tuple):
            return tuple(self.resolve(v) for v in value)
        if isinstance(value, dict):
            return {k: self.resolve(v) for k, v in value.items()}
        return value

    def whole_input(self) -> Any:
        if len(self.args) == 1 and not self.kwargs:
            return self.args[0]
        raise EmberUserError(
            f"the InputNode stands for the one value given to execute(), but execute() got {len(self.args)} "
            f"positional and {len(self.kwargs)} keyword argument(s); read them with inp[index] or inp.name")


class DAGNode(abc.ABC):
    """A call recorded by ``bind``, made by ``execute``."""

    def __init__(self, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None) -> None:
        self._bound_args = args
        self._bound_kwargs = dict(kwargs or {})

    def get_args(self) -> tuple[Any, ...]:
        return self._bound_args

    def get_kwargs(self) -> dict[str, Any]:
        return dict(self._bound_kwargs)

    def _resolved_arguments(self, run: _Execution) -> tuple[tuple[Any, ...], dict[str, Any]]:
        return run.resolve(self._bound_args), run.resolve(self._bound_kwargs)

    @abc.abstractmethod
    def _make(self, run: _Execution) -> Any:
        """Make what this node stands for, in ``run`` (each node kind says how)."""

    def execute(self, *args: Any, **kwargs: Any) -> Any:
        """Make every call of the graph that leads here; what this node became (a ref, an actor handle, a list)."""
        return _Execution(args, kwargs).resolve(self)


class FunctionNode(DAGNode):
    """``f.bind(...)``: a task, once executed (its ``ObjectRef``)."""

    def __init__(self, remote_function: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        super().__init__(args, kwargs)
        self._remote_function = remote_function

    def _make(self, run: _Execution) -> Any:
        args, kwargs = self._resolved_arguments(run)
        return self._remote_function.remote(*args, **kwargs)

    def __repr__(self) -> str:
        return f"FunctionNode({self._remote_function.__qualname__})"


class ClassNode(DAGNode):
    """``Cls.bind(...)``: an actor, once executed (its handle). ``node.method.bind(...)`` records a call on it."""

    def __init__(self, actor_class: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        super().__init__(args, kwargs)
        self._actor_class = actor_class
        self._last_call: ClassMethodNode | None = None  # the call bound on it last: the next one runs after it

    def _make(self, run: _Execution) -> Any:
        args, kwargs = self._resolved_arguments(run)
        return self._actor_class.remote(*args, **kwargs)

    def __getattr__(self, name: str) -> "_MethodBinder":
        if name.startswith("_"):
            raise AttributeError(name)
        if name not in self._actor_class._methods:
            raise AttributeError(f"actor class {self._actor_class.__name__} has no method {name!r}")
        return _MethodBinder(self, name)

    def __repr__(self) -> str:
        return f"ClassNode({self._actor_class.__qualname__})"


class _MethodBinder:
    """``class_node.method``: only ``.bind(...)`` is there, as the actor does not exist yet."""

    def __init__(self, target: Any, name: str) -> None:
        self._target = target
        self._name = name

    def bind(self, *args: Any, **kwargs: Any) -> "ClassMethodNode":
        node = ClassMethodNode(self._target, self._name, args, kwargs, previous=self._target._last_call)
        self._target._last_call = node
        return node


class ClassMethodNode(DAGNode):
    """``class_node.method.bind(...)`` or ``handle.method.bind(...)``: an actor call, once executed (its ref)."""

    def __init__(self, target: Any, method_name: str, args: tuple[Any, ...], kwargs: dict[str, Any],
                 previous: "ClassMethodNode | None" = None) -> None:
        super().__init__(args, kwargs)
        self._target = target  # a ClassNode, or a live actor's handle
        self._method_name = method_name
        self._previous = previous  # the call bound on the same class node before this one

    def _make(self, run: _Execution) -> Any:
        if self._previous is not None:
            run.resolve(self._previous)  # sent first: an actor runs one caller's calls in order
        handle = run.resolve(self._target)
        args, kwargs = self._resolved_arguments(run)
        return getattr(handle, self._method_name).remote(*args, **kwargs)

    def __repr__(self) -> str:
        return f"ClassMethodNode({self._method_name})"


_building = threading.local()  # the InputNode of the ``with`` block this thread is in


class InputNode(DAGNode):
    """What ``execute`` is given: ``with InputNode() as inp:`` then ``f.bind(inp)``, ``inp[0]``, ``inp.name``.

    Alone, ``inp`` stands for the one value ``execute`` got. ``inp[i]``/``inp[key]``
    and ``inp.name`` read a positional or keyword argument of ``execute``; when
    ``execute`` got one positional argument only, they index it or read its
    attribute (``execute([1, 2])`` with ``inp[0]``; ``execute({"a": 1})`` with ``inp["a"]``).
    """

    def __init__(self) -> None:
        super().__init__()
        self._entered = False

    def __enter__(self) -> "InputNode":
        if getattr(_building, "node", None) is not None:
            raise EmberUserError("InputNode blocks cannot nest: a graph has one InputNode")
        self._entered = True
        _building.node = self
        return self

    def __exit__(self, *exc_info: Any) -> None:
        _building.node = None

    def _require_entered(self) -> None:
        if not self._entered:
            raise EmberUserError("use InputNode as a context manager: with InputNode() as inp: dag = f.bind(inp)")

    def _make(self, run: _Execution) -> Any:
        self._require_entered()
        return run.whole_input()

    def __getitem__(self, key: Any) -> "InputAttributeNode":
        self._require_entered()
        return InputAttributeNode(key, by_index=True)

    def __getattr__(self, name: str) -> "InputAttributeNode":
        if name.startswith("_"):
            raise AttributeError(name)
        self._require_entered()
        return InputAttributeNode(name, by_index=False)

    def __repr__(self) -> str:
        return "InputNode()"


class InputAttributeNode(DAGNode):
    """``inp[key]`` or ``inp.name``: one part of what ``execute`` was given."""

    def __init__(self, key: Any, by_index: bool) -> None:
        super().__init__()
        self._key = key
        self._by_index = by_index

    def _make(self, run: _Execution) -> Any:
        key = self._key
        if len(run.args) == 1 and not run.kwargs:
            whole = run.args[0]
            if self._by_index:
                return whole[key]
            return whole[key] if isinstance(whole, dict) else getattr(whole, key)
        if self._by_index and isinstance(key, int):
            if not -len(run.args) <= key < len(run.args):
                raise EmberUserError(f"the graph reads input [{key}], but execute() got {len(run.args)} positional "
                                     "argument(s)")
            return run.args[key]
        if key not in run.kwargs:
            raise EmberUserError(f"the graph reads input {key!r}, but execute() got no keyword argument {key!r} "
                                 f"(it got {sorted(run.kwargs)})")
        return run.kwargs[key]

    def __repr__(self) -> str:
        return f"InputAttributeNode({self._key!r})"


class MultiOutputNode(DAGNode):
    """Several nodes as one graph's output: ``execute`` returns the list of what each became."""

    def __init__(self, outputs: list[DAGNode] | tuple[DAGNode, ...]) -> None:
        if not isinstance(outputs, (list, tuple)) or not all(isinstance(o, DAGNode) for o in outputs):
            raise TypeError("MultiOutputNode takes a list of nodes (what .bind(...) returned)")
        super().__init__(tuple(outputs))

    def _make(self, run: _Execution) -> Any:
        return [run.resolve(output) for output in self._bound_args]

    def __repr__(self) -> str:
        return f"MultiOutputNode({len(self._bound_args)})"


