"""A caller's side of an actor that turns up alive elsewhere (scheduler/_owner/_actors.py)."""

from __future__ import annotations

import threading
from types import SimpleNamespace
from typing import Any

import pytest

from ember.lineage._states import ProcessKind
from ember.scheduler._owner import _actors
from ember.scheduler._owner._tasks import PendingTask
from ember.scheduler._protocol import Op
from ember.scheduler._spec import TaskKind, TaskSpec, resource_shape

ACTOR = b"a" * 16


class FakeConn:
    def __init__(self, address: str) -> None:
        self.address = address
        self.closed = False
        self.sent: list[tuple] = []
        self.batch_end: Any = None
        self.peer: dict = {}

    def send(self, msg: tuple) -> None:
        self.sent.append(msg)


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> _actors.ActorCalls:
    monkeypatch.setattr(_actors, "connect", lambda address, *args, **kwargs: FakeConn(address))
    links = SimpleNamespace(token=b"t", hello={}, scheduler=FakeConn("scheduler"))
    specs = SimpleNamespace(encode_spec=lambda pt: False, log_spec=lambda pt: None)
    return _actors.ActorCalls(ProcessKind.WORKER, threading.RLock(), {}, {}, links, specs,  # type: ignore[arg-type]
                              lambda pt, exc: None, lambda c, m: None, lambda c: None, lambda: None, lambda: None,
                              lambda: False)


def _call(n: int) -> PendingTask:
    spec = TaskSpec(bytes([n]) * 16, TaskKind.ACTOR_CALL, b"job", "/me", b"", "A.add", [], None, 1,
                    resource_shape({}), 3, actor_id=ACTOR)
    return PendingTask(spec, (), {}, False)


def test_regression_calls_in_flight_go_again_when_the_actor_turns_up_alive_at_another_address(
        calls: _actors.ActorCalls) -> None:
    # The network property test (issue 27) hung: a task's call was held by an actor's old instance on a
    # node cut from the GCS; the heal fenced that instance, and the caller, which followed the actor through
    # that node, heard only that it was alive elsewhere, never that it restarted. The call stayed in
    # flight on the dead process's connection.
    state = calls.state_of(ACTOR, "A")
    calls.on_actor_state(ACTOR, True, "/old", None)
    first, second = _call(1), _call(2)
    state.queue.extend([first, second])
    calls.pump(state)
    assert [m[1].task_id for m in state.conn.sent] == [first.spec.task_id, second.spec.task_id]  # type: ignore[union-attr]
    calls.on_actor_state(ACTOR, True, "/new", None)  # no "restarting" heard first
    moved = state.conn
    assert moved.address == "/new"  # type: ignore[union-attr]
    assert [(m[0], m[1].task_id, m[1].attempt) for m in moved.sent] == [  # type: ignore[union-attr]
        (Op.ACTOR_CALL, first.spec.task_id, 1), (Op.ACTOR_CALL, second.spec.task_id, 1)]


def test_calls_in_flight_are_not_sent_twice_when_the_same_process_is_heard_alive_again(
        calls: _actors.ActorCalls) -> None:
    state = calls.state_of(ACTOR, "A")
    calls.on_actor_state(ACTOR, True, "/same", None)
    state.queue.append(_call(1))
    calls.pump(state)
    conn = state.conn
    calls.on_actor_state(ACTOR, True, "/same", None)
    assert state.conn is conn and len(conn.sent) == 1  # type: ignore[union-attr]
