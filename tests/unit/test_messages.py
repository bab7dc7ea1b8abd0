"""The message shape checks services run before acting on a message (scheduler/_messages.py)."""

from __future__ import annotations

import pytest

from ember.scheduler import _messages
from ember.scheduler._protocol import Op
from ember.scheduler._spec import TaskKind, TaskSpec

TID = b"t" * 16
OID = b"o" * 20


def spec(**changes: object) -> TaskSpec:
    s = TaskSpec(TID, TaskKind.NORMAL, b"job", "/addr", b"f" * 16, "f", [], None, 1, (("CPU", 1.0),), 3)
    for name, value in changes.items():
        setattr(s, name, value)
    return s


@pytest.mark.parametrize("msg", [
    (Op.SUBMIT, spec()),
    (Op.TASKS_DONE, [TID, TID]),
    (Op.CREATE_ACTOR, spec(), False, ("A", {}, 0)),
    (Op.CREATE_ACTOR, spec(), True, None, 2),
    (Op.RESOURCES, 7),
    (Op.UNBLOCKED,),
    (Op.KILL_ACTOR, TID, True),
    (Op.ACTOR_FAILED, TID, None, "why"),
    (Op.RESUME, 3, [(TID, 1, None), (TID, 2, {"grpc://h:1": 400})]),
    (Op.RESUME, 3, []),
])
def test_what_senders_send_is_accepted(msg: tuple) -> None:
    assert _messages.problem(msg, _messages.SCHEDULER_OPS) is None


@pytest.mark.parametrize("msg, words", [
    ((Op.SUBMIT,), "SUBMIT has 0 field(s), expected 1 to 2"),
    ((Op.SUBMIT, spec(), {}, 1), "has 3 field(s)"),
    ((Op.SUBMIT, spec(), 1), "SUBMIT field 2 is int 1, expected dict"),
    ((Op.SUBMIT, "spec"), "field 1 is str 'spec', expected TaskSpec"),
    ((Op.SUBMIT, spec(resources="CPU")), "task spec's resources is str"),
    ((Op.SUBMIT, spec(task_id=b"short")), "task spec's task_id is bytes b'short', expected a task id (16 bytes)"),
    ((Op.KILL_ACTOR, TID, 1), "field 2 is int 1, expected bool"),
    ((Op.RESOURCES, True), "expected int"),  # a bool is not a request id
    ((Op.TASKS_DONE, [TID, 5]), "a list holding int 5"),
    ((Op.SEALED, OID, 1, "/a"), "op SEALED is not a message this process takes"),
    ((9999,), "op 9999 (no such op) is not a message"),
    ((Op.RESUME, 3, [(TID, 1)]), "RESUME holds tuple"),
    ((Op.RESUME, 3, [(b"short", 1, None)]), "expected (a task id, an attempt, a dict or None)"),
    ((Op.RESUME, 3, [(TID, True, None)]), "RESUME holds tuple"),
    ((Op.RESUME, 3, [(TID, 1, [])]), "RESUME holds tuple"),
    ((Op.RESUME, 3, (TID, 1, None)), "RESUME field 2 is tuple"),
])
def test_wrong_shapes_are_named(msg: tuple, words: str) -> None:
    found = _messages.problem(msg, _messages.SCHEDULER_OPS)
    assert found is not None and words in found, found


def test_every_op_a_receiver_takes_has_a_shape() -> None:
    for accepted in (_messages.SCHEDULER_OPS, _messages.STORE_OPS, _messages.CORE_OPS, _messages.CALL_OPS):
        assert accepted <= set(_messages.SHAPES)
    assert _messages.REQUESTS <= set(_messages.SHAPES)


class _Conn:
    name = "test-peer"

    def __init__(self) -> None:
        self.replies: list[tuple] = []

    def reply(self, req_id: int, value: object = None, error: BaseException | None = None) -> None:
        self.replies.append((req_id, error))


def test_a_refused_request_is_answered_with_the_reason(caplog: pytest.LogCaptureFixture) -> None:
    conn = _Conn()
    _messages.refuse(conn, (Op.RESOURCES, 3, "extra"), "RESOURCES has 2 field(s)", "scheduler")  # type: ignore[arg-type]
    [(req_id, error)] = conn.replies
    assert req_id == 3 and "scheduler refused the request: RESOURCES has 2 field(s)" in str(error)
    assert "scheduler refused a message from test-peer" in caplog.text
    _messages.refuse(conn, (Op.SUBMIT, "x"), "wrong", "scheduler")  # type: ignore[arg-type]
    assert len(conn.replies) == 1  # not a request: nothing to answer


def test_the_gpu_devices_a_worker_is_sent_must_be_device_numbers():
    from ember.scheduler._messages import CORE_OPS, problem
    from ember.scheduler._protocol import Op
    from ember.scheduler._spec import TaskKind, TaskSpec

    spec = TaskSpec(b"t" * 16, TaskKind.NORMAL, b"job", "/owner", b"f" * 16, "f", [], None, 1, (), 0)
    assert problem((Op.EXECUTE, spec, None, (0, 1)), CORE_OPS) is None
    assert "GPU device numbers" in problem((Op.EXECUTE, spec, None, ("0",)), CORE_OPS)
    assert "GPU device numbers" in problem((Op.BECOME_ACTOR, spec, None, 0, (True,)), CORE_OPS)
