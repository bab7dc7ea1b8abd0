"""The shape of every message a service takes: op, arity, and the type of each field.

A service checks a message against ``SHAPES`` before acting on it, so a
message of the wrong arity or with a field of the wrong type is refused with
a logged reason (naming the peer and what was wrong) instead of raising half
way through a handler, with the service's tables half updated. A refused
request is answered with an error, so its sender does not wait out a timeout.

After the token every peer is a trusted member of the cluster: these checks
are against bugs and junk, not attackers (see docs/security.md). They cost a
few ``isinstance`` calls per message and never unpickle or copy anything.

This module only describes and checks; it must never act on a message.
"""

from __future__ import annotations

import logging
from typing import Any, assert_never

from ember.exceptions import EmberInternalError
from ember.scheduler._protocol import Connection, Op, describe, op_name
from ember.scheduler._spec import OBJECT_ID_BYTES, TASK_ID_BYTES, Strategy, TaskSpec

log = logging.getLogger("ember.protocol")

_ANY = object()  # a field of any type (user data, carried unread)
_NONE = type(None)


class _Id:
    """An id: bytes of exactly ``length``."""

    __slots__ = ("length", "what")

    def __init__(self, length: int, what: str) -> None:
        self.length = length
        self.what = what

    def __repr__(self) -> str:
        return f"{self.what} ({self.length} bytes)"


class _ListOf:
    """A list whose every item is a ``item`` field."""

    __slots__ = ("item",)

    def __init__(self, item: "_Id") -> None:
        self.item = item

    def __repr__(self) -> str:
        return f"list of {self.item!r}"


Field = Any  # a type, a tuple of types, _Id, _ListOf, or _ANY

OID = _Id(OBJECT_ID_BYTES, "an object id")
TID = _Id(TASK_ID_BYTES, "a task id")
AID = _Id(TASK_ID_BYTES, "an actor id")


# Op -> (fields after the op, how many trailing fields may be left out).
SHAPES: dict[int, tuple[tuple[Field, ...], int]] = {
    # to the scheduler
    Op.SUBMIT: ((TaskSpec, dict), 1),  # ..., bytes of its inputs by node (multi-node clusters)
    Op.REGISTER_FUNCTION: ((bytes, bytes, str), 0),
    Op.CANCEL: ((TID, bool, bool), 1),  # ..., force, recursive (absent: True)
    Op.CREATE_ACTOR: ((TaskSpec, bool, _ANY, int), 1),
    Op.KILL_ACTOR: ((AID, bool), 0),
    Op.LOOKUP_ACTOR: ((int, AID), 0),
    Op.GET_NAMED_ACTOR: ((int, str), 0),
    Op.LIST_NAMED_ACTORS: ((int,), 0),
    Op.RETIRE: ((_ListOf(TID),), 0),  # ..., the tasks the worker hands back unstarted
    Op.BLOCKED: ((_ListOf(TID),), 0),
    Op.UNBLOCKED: ((), 0),
    Op.TASKS_DONE: ((_ListOf(TID),), 0),
    Op.RETURN_TASKS: ((_ListOf(TID),), 0),
    Op.ACTOR_READY: ((AID, str), 0),
    Op.ACTOR_FAILED: ((AID, (bytes, _NONE), str), 0),
    Op.RESOURCES: ((int,), 0),
    Op.PROCESSES: ((int,), 0),
    Op.SHUTDOWN: ((), 0),
    Op.CLAIM_NAME: ((int, str, AID, _ANY), 0),
    Op.FORWARDED_DONE: ((_ListOf(TID),), 0),
    Op.RESUME: ((int, list), 0),  # ..., [(task id, the attempt to run, bytes of its inputs by node or None)]
    Op.TAKE_BACK: ((int, _ListOf(TID)), 0),
    # from the scheduler, to a worker's executor
    Op.EXECUTE: ((TaskSpec, (bytes, _NONE), tuple), 1),  # ..., the GPU devices it holds (if any)
    Op.CANCEL_RUNNING: ((TID, bool, bool), 2),  # ..., recursive, force (absent: False, False)
    # ..., restarts, its GPU devices, its concurrency (wire form), its restart_from, how its previous process ended
    Op.BECOME_ACTOR: ((TaskSpec, (bytes, _NONE), int, tuple, (tuple, _NONE), (str, _NONE), (str, _NONE)), 5),
    Op.HOLD_CALLS: ((int,), 0),  # RUN, HOLD or REFUSE
    Op.TASK_FAILED: ((TID, int, str, str), 0),
    Op.ACTOR_STATE: ((AID, bool, (str, _NONE), (str, _NONE), bool, int), 0),
    # between owners
    # ..., call_seq, durable_seq, hashes, when the run started (epoch microseconds), the worker's pid
    # ..., call_seq, durable_seq, hashes, run start (epoch µs), worker pid, worker's node
    Op.TASK_RESULT: ((TID, int, list, bool, int, int, (list, _NONE), int, int, (str, _NONE)), 6),
    Op.ACTOR_CALL: ((TaskSpec,), 0),
    Op.CANCEL_CALL: ((TID,), 0),
    # task id, attempt, index, object id, inline bytes (None: in the writer's store), size, content hash
    Op.STREAM_ITEM: ((TID, int, int, OID, (bytes, _NONE), int, (bytes, _NONE)), 0),
    Op.FLUSH_LOG: ((int, AID), 0),
    Op.LINEAGE_DURABLE: ((int, _ListOf(OID)), 0),
    Op.ACTOR_HANDLES: ((int, AID, int, str), 0),  # req id, actor, HandleChange, the borrower's address
    Op.OBJECT_WANTED: ((_ListOf(OID),), 0),
    Op.LOCATE: ((_ListOf(OID), str), 0),  # ..., where to answer
    Op.OBJECT_AT: ((OID, list), 0),  # ..., relay endpoints of the nodes that hold it
    Op.OBJECT_VALUE: ((OID, bytes), 0),
    Op.OBJECT_LOST_AT: ((OID, list), 0),  # ..., relay endpoints of nodes where no copy was found
    Op.PULL: ((OID, list), 0),  # ..., relay endpoints of nodes that hold it
    Op.PULL_FAILED: ((OID, str), 0),
    # to and from the object store
    Op.SEALED: ((OID, int, str), 0),
    Op.SUBSCRIBE: ((OID,), 0),
    Op.OBJECT_READY: ((OID,), 0),
    Op.FREE: ((_ListOf(OID),), 0),
    Op.ALLOC_SEGMENT: ((int, int), 0),
    Op.STORE_STATS: ((int,), 0),
}

# Requests (answered with REPLY): a refused one is answered with an error.
REQUESTS = frozenset({
    Op.GET_NAMED_ACTOR, Op.RESOURCES, Op.PROCESSES, Op.CLAIM_NAME, Op.FLUSH_LOG, Op.ALLOC_SEGMENT,
    Op.STORE_STATS, Op.RESUME, Op.LINEAGE_DURABLE, Op.TAKE_BACK, Op.LIST_NAMED_ACTORS, Op.ACTOR_HANDLES,
})

SCHEDULER_OPS = frozenset({
    Op.SUBMIT, Op.REGISTER_FUNCTION, Op.CANCEL, Op.CREATE_ACTOR, Op.KILL_ACTOR, Op.LOOKUP_ACTOR,
    Op.GET_NAMED_ACTOR, Op.BLOCKED, Op.UNBLOCKED, Op.TASKS_DONE, Op.RETURN_TASKS, Op.ACTOR_READY,
    Op.ACTOR_FAILED, Op.RESOURCES, Op.PROCESSES, Op.SHUTDOWN, Op.CLAIM_NAME, Op.RESUME, Op.FORWARDED_DONE,
    Op.TASK_FAILED, Op.ACTOR_STATE,  # these three: from another node's scheduler
    Op.TAKE_BACK, Op.LIST_NAMED_ACTORS, Op.RETIRE,
})
STORE_OPS = frozenset({Op.SEALED, Op.SUBSCRIBE, Op.FREE, Op.ALLOC_SEGMENT, Op.STORE_STATS, Op.PULL})
CORE_OPS = frozenset({
    Op.TASK_RESULT, Op.OBJECT_READY, Op.ACTOR_STATE, Op.TASK_FAILED, Op.OBJECT_WANTED, Op.FLUSH_LOG,
    Op.LINEAGE_DURABLE, Op.LOCATE, Op.OBJECT_AT, Op.OBJECT_VALUE, Op.OBJECT_LOST_AT, Op.PULL_FAILED,
    Op.EXECUTE, Op.CANCEL_RUNNING, Op.BECOME_ACTOR, Op.HOLD_CALLS, Op.STREAM_ITEM, Op.ACTOR_HANDLES,
})
# What an actor takes on a caller's connection once it has adopted it.
CALL_OPS = frozenset({Op.ACTOR_CALL, Op.CANCEL_CALL})
# Only the node's scheduler sends these: from anyone else they are refused.
FROM_SCHEDULER_ONLY = frozenset({Op.EXECUTE, Op.CANCEL_RUNNING, Op.BECOME_ACTOR, Op.HOLD_CALLS})


def _field_problem(value: Any, field: Field) -> str | None:
    if field is _ANY:
        return None
    if isinstance(field, _Id):
        if type(value) is not bytes or len(value) != field.length:
            return f"{describe(value)}, expected {field!r}"
        return None
    if isinstance(field, _ListOf):
        if type(value) is not list:
            return f"a {type(value).__name__}, expected a {field!r}"
        for item in value:
            if type(item) is not bytes or len(item) != field.item.length:
                return f"a list holding {describe(item)}, expected a {field!r}"
        return None
    if not isinstance(value, field) or (isinstance(value, bool) and field is int):
        return f"{describe(value)}, expected {_names(field)}"
    return None


def _names(field: Field) -> str:
    if isinstance(field, tuple):
        return " or ".join(t.__name__ for t in field)
    return field.__name__


def problem(msg: tuple, accepted: frozenset) -> str | None:
    """What is wrong with ``msg`` for a receiver that takes ``accepted`` ops; None if nothing.

    ``msg`` is already known to be a non-empty tuple led by an int
    (``Connection`` refuses anything else).
    """
    op = msg[0]
    fast = _FAST.get(op)
    if fast is not None and op in accepted and fast(msg):
        return None
    if op not in accepted:
        return f"op {op_name(op)} is not a message this process takes"
    fields, optional = SHAPES[op]
    arity = len(msg) - 1
    if not len(fields) - optional <= arity <= len(fields):
        return f"{op_name(op)} has {arity} field(s), expected {len(fields) - optional} to {len(fields)}"
    for i in range(arity):
        wrong = _field_problem(msg[i + 1], fields[i])
        if wrong is not None:
            return f"{op_name(op)} field {i + 1} is {wrong}"
    devices = _DEVICES_FIELD.get(op)
    if devices is not None and arity >= devices and not all(
            type(d) is int and d >= 0 for d in msg[devices]):
        return f"{op_name(op)} field {devices} is {describe(msg[devices])}, expected a tuple of GPU device numbers"
    if isinstance(msg[1] if arity else None, TaskSpec):
        return spec_problem(msg[1])
    if op == Op.RESUME:
        return _resume_items_problem(msg[2])
    return None


def _resume_items_problem(items: list) -> str | None:
    for item in items:
        if not (type(item) is tuple and len(item) == 3 and type(item[0]) is bytes and len(item[0]) == TASK_ID_BYTES
                and type(item[1]) is int and not isinstance(item[1], bool) and (item[2] is None or type(item[2]) is dict)):
            return (f"{op_name(Op.RESUME)} holds {describe(item)}, expected (a task id, an attempt, "
                    "a dict or None)")
    return None


# The spec fields the scheduler and the core read before any user code runs.
_SPEC_FIELDS: tuple[tuple[str, Field], ...] = (
    ("task_id", TID), ("kind", int), ("job_id", bytes), ("owner_addr", str), ("function_id", bytes),
    ("function_name", str), ("args", (list, tuple)), ("kwargs", (dict, _NONE)), ("num_returns", int),
    ("resources", tuple), ("max_retries", int), ("attempt", int), ("actor_id", (bytes, _NONE)),
)


def spec_problem(spec: TaskSpec) -> str | None:
    # Specs are the hottest messages: one expression for the common case,
    # the field-by-field walk only to name what is wrong.
    try:
        if (type(spec.task_id) is bytes and len(spec.task_id) == TASK_ID_BYTES and isinstance(spec.kind, int)
                and type(spec.job_id) is bytes and type(spec.owner_addr) is str
                and type(spec.function_id) is bytes and type(spec.function_name) is str
                and type(spec.args) in (list, tuple) and (spec.kwargs is None or type(spec.kwargs) is dict)
                and type(spec.num_returns) is int and type(spec.resources) is tuple
                and type(spec.max_retries) is int and type(spec.attempt) is int
                and (spec.actor_id is None or type(spec.actor_id) is bytes)):
            return None if spec.strategy is None else _strategy_problem(spec.strategy)
    except AttributeError:
        pass
    for name, field in _SPEC_FIELDS:
        wrong = _field_problem(getattr(spec, name, None), field)
        if wrong is not None:
            return f"its task spec's {name} is {wrong}"
    return _strategy_problem(getattr(spec, "strategy", None))


def _strategy_problem(strategy: object) -> str | None:
    """What is wrong with a spec's scheduling strategy (``Strategy``'s tuples), None if nothing."""
    if strategy is None:
        return None
    fine = False
    if type(strategy) is tuple and strategy and strategy[0] in _STRATEGY_KINDS:
        kind = Strategy(strategy[0])
        match kind:
            case Strategy.SPREAD:
                fine = len(strategy) == 1
            case Strategy.NODE_AFFINITY:
                fine = len(strategy) == 3 and type(strategy[1]) is str and type(strategy[2]) is bool
            case Strategy.PLACEMENT_GROUP:
                fine = (len(strategy) == 4 and type(strategy[1]) is str and type(strategy[2]) is int
                        and strategy[2] >= -1 and type(strategy[3]) is bool)
            case _:
                assert_never(kind)
    return None if fine else f"its task spec's strategy is {strategy!r:.80}, not a scheduling strategy"


_STRATEGY_KINDS = frozenset(k.value for k in Strategy)
_DEVICES_FIELD = {Op.EXECUTE: 3, Op.BECOME_ACTOR: 4}  # where the GPU devices a worker holds are, if sent


def _task_result_fine(msg: tuple) -> bool:
    n = len(msg)
    return (5 <= n <= 11 and type(msg[1]) is bytes and len(msg[1]) == TASK_ID_BYTES and type(msg[2]) is int
            and type(msg[3]) is list and type(msg[4]) is bool and (n < 6 or type(msg[5]) is int)
            and (n < 7 or type(msg[6]) is int) and (n < 8 or msg[7] is None or type(msg[7]) is list)
            and (n < 9 or type(msg[8]) is int) and (n < 10 or type(msg[9]) is int)
            and (n < 11 or msg[10] is None or type(msg[10]) is str))


def _one_spec_fine(msg: tuple) -> bool:
    return len(msg) == 2 and type(msg[1]) is TaskSpec and spec_problem(msg[1]) is None


# The hottest messages' common, well-formed case in one expression each; a
# message it does not pass takes the field-by-field walk, which names the
# problem (or finds none: these are stricter than ``SHAPES``).
_FAST = {Op.TASK_RESULT: _task_result_fine, Op.ACTOR_CALL: _one_spec_fine, Op.SUBMIT: _one_spec_fine}


def refuse(conn: Connection, msg: tuple, reason: str, receiver: str) -> None:
    """Log why ``msg`` was refused and, for a request, answer it with the reason."""
    log.warning("%s refused a message from %s: %s", receiver, conn.name, reason)
    if msg[0] in REQUESTS and len(msg) > 1 and type(msg[1]) is int:
        conn.reply(msg[1], error=EmberInternalError(f"{receiver} refused the request: {reason}"))
