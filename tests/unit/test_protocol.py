import socket

import pytest

from ember.scheduler._listener import Listener, connect
from ember.scheduler._protocol import PREAMBLE_MAGIC, Op, new_token


@pytest.fixture
def echo_listener(tmp_path):
    token = new_token()
    got = []

    def handle(conn, msg):
        got.append(msg)
        if msg[0] == Op.RESOURCES:
            conn.reply(msg[1], ("pong", msg[2]))

    listener = Listener(tmp_path / "sock", token, lambda c: None, handle, name="test").start()
    yield listener, token, got
    listener.close()


def test_request_reply_and_batching(echo_listener):
    listener, token, got = echo_listener
    conn = connect(listener.path, token, {"kind": "test"}, lambda c, m: None)
    for i in range(100):
        conn.send((Op.SUBMIT, i))
    assert conn.call(Op.RESOURCES, "x", timeout_s=5) == ("pong", "x")
    assert [m[1] for m in got if m[0] == Op.SUBMIT] == list(range(100))
    conn.close()


def test_wrong_token_is_rejected_before_unpickling(echo_listener):
    listener, token, got = echo_listener
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(listener.path)
    sock.sendall(PREAMBLE_MAGIC + b"\x00" * 32 + b"\x00" * 8)
    sock.settimeout(5)
    try:
        assert sock.recv(1) == b""  # closed by the listener
    except ConnectionResetError:
        pass  # closed with unread bytes pending: also a rejection
    sock.close()
    assert got == []


def test_peer_close_fails_pending_requests(tmp_path):
    token = new_token()
    listener = Listener(tmp_path / "s2", token, lambda c: None, lambda c, m: c.close(), name="closer").start()
    conn = connect(listener.path, token, {"kind": "test"}, lambda c, m: None)
    fut = conn.request(Op.RESOURCES)
    with pytest.raises(Exception):
        fut.result(timeout=5)
    listener.close()


def test_a_closed_connection_keeps_nothing_to_send(tmp_path):
    # Regression: messages sent on a store connection that had closed piled up there for good, and a get
    # waiting meanwhile saw them as "to flush" on every turn of its loop: it spun instead of waiting.
    from ember.scheduler._protocol import Connection

    ours, theirs = socket.socketpair()
    conn = Connection(ours, lambda c, m: None, name="pair").start()
    try:
        conn.queue((Op.RESOURCES,))
        assert conn.has_unsent  # queued on an open connection: waits for a flush
        conn.close()
        assert not conn.has_unsent
        conn.send((Op.RESOURCES,))
        conn.queue((Op.RESOURCES,))
        assert not conn.has_unsent and conn._pending == []  # nothing kept for a connection that is gone
    finally:
        theirs.close()
