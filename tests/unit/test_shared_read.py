"""SharedReadConnection: a waiting thread reads the socket itself, never splitting a frame with the reader."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from ember.scheduler._protocol import Connection
from ember.scheduler._shared_read import LINGER_S, PipeWaiter, SharedReadConnection, poll_readable

WAIT_S = 10.0
MESSAGE = 12345  # any op but REPLY reaches the handler


class _Pair:
    def __init__(self) -> None:
        a, b = socket.socketpair()
        self.received: list[int] = []
        self.readers: set[str] = set()
        self.closed = threading.Event()
        self.changed = threading.Condition()
        self.shared = SharedReadConnection(a, self._handle, lambda c: self.closed.set(), name="shared").start()
        self.peer = Connection(b, lambda c, m: None, name="peer").start()

    def _handle(self, conn: Connection, msg: tuple) -> None:
        with self.changed:
            self.received.append(msg[1])
            self.readers.add(threading.current_thread().name)
            self.changed.notify_all()

    def wait_for(self, count: int) -> None:
        with self.changed:
            assert self.changed.wait_for(lambda: len(self.received) >= count, WAIT_S), self.received[-5:]

    def close(self) -> None:
        self.peer.close()
        self.shared.close()


@pytest.fixture
def pair():
    p = _Pair()
    yield p
    p.close()


def test_reader_and_borrower_together_deliver_every_message_once_in_order(pair: _Pair) -> None:
    stop = threading.Event()

    def borrower() -> None:
        waiter = PipeWaiter()
        while not stop.is_set():
            if pair.shared.borrow():
                try:
                    ready, _ = poll_readable(pair.shared.fileno(), waiter.r, 0.002)
                    if ready:
                        pair.shared.read_available()
                finally:
                    pair.shared.give_back()
            time.sleep(0.0005)

    thread = threading.Thread(target=borrower, name="borrower")
    thread.start()
    try:
        for i in range(3000):
            pair.peer.send((MESSAGE, i))
            if i % 50 == 0:
                pair.peer.flush()
                time.sleep(0.001)  # let both readers take turns
        pair.peer.flush()
        pair.wait_for(3000)
    finally:
        stop.set()
        thread.join(WAIT_S)
    assert pair.received == list(range(3000))
    assert "borrower" in pair.readers


def test_the_reader_resumes_after_the_borrower_leaves(pair: _Pair) -> None:
    assert pair.shared.borrow()
    pair.shared.give_back()
    time.sleep(LINGER_S * 3)  # past the linger: the reader reads on its own again
    pair.peer.send((MESSAGE, 1))
    pair.peer.flush()
    pair.wait_for(1)
    assert pair.readers == {pair.shared._reader.name}


def test_a_second_thread_cannot_borrow_while_one_reads(pair: _Pair) -> None:
    assert pair.shared.borrow()
    try:
        result: list[bool] = []
        other = threading.Thread(target=lambda: result.append(pair.shared.borrow()))
        other.start()
        other.join(WAIT_S)
        assert result == [False]
    finally:
        pair.shared.give_back()


def test_the_peer_closing_under_a_borrower_closes_the_connection(pair: _Pair) -> None:
    assert pair.shared.borrow()
    try:
        pair.peer.close()
        waiter = PipeWaiter()
        ready, _ = poll_readable(pair.shared.fileno(), waiter.r, WAIT_S)
        assert ready
        assert pair.shared.read_available() is False
    finally:
        pair.shared.give_back()
    assert pair.closed.wait(WAIT_S)
    assert pair.shared.closed


def test_a_pipe_waiter_wakes_its_owner_only_from_other_threads() -> None:
    waiter = PipeWaiter()
    waiter.set()  # the owner is awake: no byte written
    assert poll_readable(-1, waiter.r, 0) == (False, False)
    threading.Thread(target=waiter.set).start()
    assert poll_readable(-1, waiter.r, WAIT_S) == (False, True)
    waiter.drain()
    assert poll_readable(-1, waiter.r, 0) == (False, False)
