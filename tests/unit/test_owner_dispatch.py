"""The owner's table of incoming messages, with stand-ins for connections (no processes)."""

import threading

from ember.scheduler._owner._dispatch import MessageTable
from ember.scheduler._protocol import Op

OID = b"o" * 20
TID = b"t" * 16


class FakeConnection:
    name = "fake"

    def reply(self, *args, **kwargs):
        raise AssertionError("no request here to answer")


class FakeExecutor:
    def __init__(self):
        self.delivered = []

    def deliver(self, conn, msg):
        self.delivered.append(msg)


def table(kind="driver", own_scheduler=None):
    taken = []
    handlers = {Op.OBJECT_READY: lambda conn, msg: taken.append(msg)}
    messages = MessageTable(kind, handlers, lambda conn: conn is own_scheduler, threading.RLock())
    return messages, taken


def test_an_op_goes_to_its_handler():
    messages, taken = table()
    messages.dispatch(FakeConnection(), (Op.OBJECT_READY, OID))
    assert taken == [(Op.OBJECT_READY, OID)]


def test_a_malformed_message_is_refused_not_handled():
    messages, taken = table()
    messages.dispatch(FakeConnection(), (Op.OBJECT_READY, b"short"))
    assert taken == []


def test_ops_without_a_handler_wait_for_the_executor_then_reach_it_in_order():
    scheduler = FakeConnection()
    messages, _ = table("worker", own_scheduler=scheduler)
    messages.dispatch(scheduler, (Op.CANCEL_RUNNING, TID))
    executor = FakeExecutor()
    messages.attach_executor(executor)
    messages.dispatch(scheduler, (Op.CANCEL_RUNNING, TID + b""))
    assert executor.delivered == [(Op.CANCEL_RUNNING, TID), (Op.CANCEL_RUNNING, TID)]
    assert messages.executor is executor and messages.early == []


def test_a_schedulers_op_from_anyone_else_is_refused():
    messages, _ = table("worker", own_scheduler=FakeConnection())
    executor = FakeExecutor()
    messages.attach_executor(executor)
    messages.dispatch(FakeConnection(), (Op.CANCEL_RUNNING, TID))
    assert executor.delivered == []
    driver, _ = table("driver")
    driver.attach_executor(executor)
    driver.dispatch(FakeConnection(), (Op.CANCEL_RUNNING, TID))
    assert executor.delivered == []
