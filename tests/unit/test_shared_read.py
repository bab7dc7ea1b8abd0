"""SharedReadConnection: a waiting thread reads the socket itself, never splitting a frame with the reader."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable

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
            if pair.shared.try_borrow(WAIT_S):
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
    assert pair.shared.try_borrow(WAIT_S)
    pair.shared.give_back()
    time.sleep(LINGER_S * 3)  # past the linger: the reader reads on its own again
    pair.peer.send((MESSAGE, 1))
    pair.peer.flush()
    pair.wait_for(1)
    assert pair.readers == {pair.shared._reader.name}


def test_a_second_thread_cannot_borrow_while_one_reads(pair: _Pair) -> None:
    assert pair.shared.try_borrow(WAIT_S)
    try:
        result: list[bool] = []
        other = threading.Thread(target=lambda: result.append(pair.shared.try_borrow(WAIT_S)))
        other.start()
        other.join(WAIT_S)
        assert result == [False]
    finally:
        pair.shared.give_back()


def test_the_peer_closing_under_a_borrower_closes_the_connection(pair: _Pair) -> None:
    assert pair.shared.try_borrow(WAIT_S)
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


def test_a_borrower_gives_up_in_time_while_the_reader_is_mid_frame(pair: _Pair) -> None:
    pair.shared._read_mutex.acquire()  # as the reader thread holds it while it reads a frame
    try:
        assert pair.shared.try_borrow(0.05) is False  # gives up rather than waiting for the reader
    finally:
        pair.shared._read_mutex.release()
    assert pair.shared.try_borrow(WAIT_S)  # nothing was left half borrowed
    assert pair.shared.try_borrow(WAIT_S) is False  # and the same thread cannot borrow twice
    pair.shared.give_back()


def test_a_non_blocking_read_never_waits_for_the_rest_of_a_large_frame(pair: _Pair) -> None:
    import pickle
    import struct

    payload = pickle.dumps([(MESSAGE, b"x" * (1 << 20))], protocol=5)
    frame = struct.pack("<Q", len(payload)) + payload
    half_sent, go_on = threading.Event(), threading.Event()

    def sender() -> None:  # a peer that stops in the middle of a frame (a paused process)
        pair.peer._sock.sendall(frame[: len(frame) // 2])
        half_sent.set()
        go_on.wait(WAIT_S)
        pair.peer._sock.sendall(frame[len(frame) // 2:])

    thread = threading.Thread(target=sender)
    waiter = PipeWaiter()

    def read_until(done: Callable[[], bool]) -> None:
        deadline = time.monotonic() + WAIT_S
        while not done() and time.monotonic() < deadline:
            if poll_readable(pair.shared.fileno(), waiter.r, 0.05)[0]:
                # A read that waited for the rest of the frame would block until the
                # sender gives up waiting for go_on and delivers it: the check below fails.
                assert pair.shared.read_available()

    assert pair.shared.try_borrow(WAIT_S)
    try:
        thread.start()
        read_until(half_sent.is_set)
        read_until(lambda: False if poll_readable(pair.shared.fileno(), waiter.r, 0.2)[0] else True)
        assert pair.received == []  # half a frame: nothing delivered, nothing waited for
        go_on.set()
        read_until(lambda: bool(pair.received))
        assert len(pair.received) == 1
    finally:
        go_on.set()
        pair.shared.give_back()
        thread.join(WAIT_S)


def test_a_ctrl_c_during_a_read_is_raised_after_it() -> None:
    import os
    import signal

    from ember.scheduler._shared_read import hold_sigint, release_sigint

    # Python's own Ctrl-C handler, as in an interactive program: a suite started in the
    # background of a non-interactive shell inherits SIGINT ignored.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        waiter = PipeWaiter()
        assert hold_sigint(waiter)
        try:
            os.kill(os.getpid(), signal.SIGINT)
            assert poll_readable(-1, waiter.r, WAIT_S)[1]  # it woke the read's poll, and raised nothing yet
        except KeyboardInterrupt:
            pytest.fail("the Ctrl-C was raised inside the read")
        with pytest.raises(KeyboardInterrupt):
            release_sigint()
    finally:
        signal.signal(signal.SIGINT, previous)
