"""The node relay (issue 7): an ember connection from node A to a listener on node B, carried over gRPC.

Two session directories on this machine stand for two nodes of one cluster
(B's token is the cluster's). Node B's relay and its listener are real
processes (``tests/relay_node.py``); node A is this test process, which
connects through ``grpc://127.0.0.1:PORT/<B's socket>``. Every process a
test starts is killed by pid and reaped when it ends, pass or fail.
"""

from __future__ import annotations

import os
import queue
import shutil
import signal
import socket
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ember.exceptions import ClusterStartError, InvalidAddressError
from ember.scheduler._address import relay_address
from ember.scheduler._grpc_shared import token_metadata
from ember.scheduler._listener import connect
from ember.scheduler._protocol import AuthenticationError, Connection, ConnectionClosed
from ember.scheduler._relay import METHOD_PATH, hosted_relay
from ember.scheduler._relay_client import channel_count
from ember.scheduler._session import Session
from tests import relay_node

WAIT_S = 30.0  # every wait for a message, a close or a process is bounded by this
MESSAGE = 12345  # any op but REPLY reaches the handler


def _session(root: Path, name: str, token: bytes | None = None) -> Session:
    session = Session(root / name, name)
    session.sockets.mkdir(parents=True, mode=0o700)
    session.token_path.write_bytes(token if token is not None else os.urandom(32))
    return session


class _Node:
    """A helper process of ``tests/relay_node.py``; its stdout lines are read into a queue."""

    def __init__(self, *args: str) -> None:
        self.proc = relay_node.spawn(*args)
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:  # type: ignore[union-attr]
            self.lines.put(line.strip())

    def expect(self, line: str) -> None:
        try:
            got = self.lines.get(timeout=WAIT_S)
        except queue.Empty:
            raise AssertionError(f"{self.proc.args} did not say {line!r} within {WAIT_S}s") from None
        assert got == line, f"{self.proc.args} said {got!r}, expected {line!r}"

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=WAIT_S)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


class _Cluster:
    """Nodes A and B; B hosts a relay and an echo listener in processes of their own."""

    def __init__(self, root: Path) -> None:
        self.b = _session(root, "node-b")
        self.a = _session(root, "node-a", self.b.token())  # one cluster, one token
        self.nodes: list[_Node] = []
        try:
            self.relay = self.start("relay", str(self.b.dir))
            endpoint = hosted_relay(self.b)
            assert endpoint is not None and endpoint[0] == "127.0.0.1"
            self.port = endpoint[1]
            self.echo = self.start("echo", str(self.b.dir), "echo")
        except BaseException:
            self.stop()  # the nodes started so far
            raise

    def start(self, *args: str) -> _Node:
        node = _Node(*args)
        self.nodes.append(node)  # before waiting for it: a node that never gets ready is killed too
        node.expect("ready")
        return node

    def address(self, path: str | Path) -> str:
        return relay_address("127.0.0.1", self.port, path)

    def stop(self) -> None:
        for node in self.nodes:
            node.kill()


@pytest.fixture
def cluster() -> Iterator[_Cluster]:
    root = Path(tempfile.mkdtemp(prefix="ember-relay-", dir="/tmp"))  # short: socket paths have 107 bytes
    try:
        started = _Cluster(root)
        try:
            yield started
        finally:
            started.stop()
    finally:
        shutil.rmtree(root, ignore_errors=True)


class _Client:
    """Node A's end: received messages in order, and whether the connection closed."""

    def __init__(self, cluster: _Cluster, path: str | Path | None = None, token: bytes | None = None) -> None:
        self.received: list[object] = []
        self.changed = threading.Condition()
        self.closed = threading.Event()
        self.conn = connect(
            cluster.address(path if path is not None else cluster.b.sockets / "echo"),
            token if token is not None else cluster.a.token(),
            {"kind": "test", "pid": os.getpid()}, self._handle, lambda conn: self.closed.set(),
            name="echo on node B", timeout_s=WAIT_S,
        )

    def _handle(self, conn: Connection, msg: tuple) -> None:
        with self.changed:
            self.received.append(msg[1])
            self.changed.notify_all()

    def wait_for(self, count: int) -> list[object]:
        with self.changed:
            assert self.changed.wait_for(lambda: len(self.received) >= count, WAIT_S), len(self.received)
            return list(self.received)


def test_messages_go_both_ways_and_keep_their_order(cluster: _Cluster) -> None:
    client = _Client(cluster)
    cluster.echo.expect("open")  # the listener admitted us: the preamble passed end to end
    client.conn.send_now((MESSAGE, "hello"))
    assert client.wait_for(1) == ["hello"]
    count = 20_000
    for i in range(count):
        client.conn.send((MESSAGE, i))  # batched into frames of many messages by the writer
    client.conn.flush()
    assert client.wait_for(count + 1)[1:] == list(range(count))
    client.conn.close()
    cluster.echo.expect("closed")  # our close reached node B's listener


def test_a_50_megabyte_frame_passes_intact(cluster: _Cluster) -> None:
    client = _Client(cluster)
    payload = os.urandom(50 << 20)
    client.conn.send_now((MESSAGE, payload))
    (echoed,) = client.wait_for(1)
    assert echoed == payload


def test_one_channel_per_relay_endpoint(cluster: _Cluster) -> None:
    before = channel_count()
    clients = [_Client(cluster) for _ in range(3)]
    assert channel_count() == before + 1
    for client in clients:
        client.conn.send_now((MESSAGE, "x"))
        assert client.wait_for(1) == ["x"]


def _listening_socket(path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(path))
    sock.listen(8)
    sock.setblocking(False)
    return sock


def _was_connected(sock: socket.socket) -> bool:
    """Whether anyone connected to the listening ``sock`` (a connect lands in its backlog at once)."""
    try:
        peer, _ = sock.accept()
    except BlockingIOError:
        return False
    peer.close()
    return True


def _raw_open(cluster: _Cluster, target: bytes, metadata: tuple) -> grpc.RpcError:
    """Open a relay stream by hand; returns the error it ends with."""
    with grpc.insecure_channel(f"127.0.0.1:{cluster.port}") as channel:
        call = channel.stream_stream(METHOD_PATH)(iter([target]), metadata=metadata, timeout=WAIT_S)
        with pytest.raises(grpc.RpcError) as caught:
            list(call)
    return caught.value


@pytest.mark.parametrize("token", ["wrong", "missing"])
def test_a_wrong_token_is_refused_before_the_target_is_opened(cluster: _Cluster, token: str) -> None:
    target = _listening_socket(cluster.b.sockets / "bait")
    try:
        metadata = token_metadata(os.urandom(32)) if token == "wrong" else ()
        error = _raw_open(cluster, str(cluster.b.sockets / "bait").encode(), metadata)
        assert error.code() == grpc.StatusCode.UNAUTHENTICATED
        assert not _was_connected(target)
        if token == "wrong":
            with pytest.raises(AuthenticationError, match="refused this cluster's token"):
                _Client(cluster, cluster.b.sockets / "bait", token=os.urandom(32))
            assert not _was_connected(target)
    finally:
        target.close()


def test_a_target_outside_the_sockets_directory_is_refused(cluster: _Cluster) -> None:
    outside = _listening_socket(cluster.a.sockets / "elsewhere")  # node A's socket, not B's
    (cluster.b.sockets / "link").symlink_to(cluster.a.sockets / "elsewhere")
    try:
        for path in (cluster.a.sockets / "elsewhere", cluster.b.sockets / "link"):
            with pytest.raises(InvalidAddressError, match="outside this node's sockets directory"):
                _Client(cluster, path)
        sneaky = f"{cluster.b.sockets}/../../node-a/s/elsewhere".encode()
        error = _raw_open(cluster, sneaky, token_metadata(cluster.b.token()))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "not normalised" in (error.details() or "")
        assert not _was_connected(outside)
    finally:
        outside.close()


def test_a_stream_that_names_no_target_is_ended(cluster: _Cluster) -> None:
    never = threading.Event()

    def silent() -> Iterator[bytes]:
        never.wait(WAIT_S)
        yield from ()

    with grpc.insecure_channel(f"127.0.0.1:{cluster.port}") as channel:
        call = channel.stream_stream(METHOD_PATH)(silent(), metadata=token_metadata(cluster.b.token()),
                                                  timeout=WAIT_S)
        try:
            with pytest.raises(grpc.RpcError) as caught:
                list(call)
        finally:
            never.set()
    assert caught.value.code() == grpc.StatusCode.CANCELLED  # by the relay (TARGET_WAIT_S), not our deadline


def test_nothing_listening_at_the_target_is_a_bounded_wait(cluster: _Cluster) -> None:
    with pytest.raises(ClusterStartError, match="could not connect"):
        connect(cluster.address(cluster.b.sockets / "nobody"), cluster.a.token(), {"kind": "test"},
                lambda conn, msg: None, timeout_s=1.0)


def test_killing_the_relay_closes_both_ends(cluster: _Cluster) -> None:
    client = _Client(cluster)
    cluster.echo.expect("open")
    client.conn.send_now((MESSAGE, "before"))
    assert client.wait_for(1) == ["before"]
    cluster.relay.kill()
    assert client.closed.wait(WAIT_S), "node A's end did not see the relay die"
    cluster.echo.expect("closed")  # and node B's listener did too


def test_the_target_dying_closes_the_remote_end(cluster: _Cluster) -> None:
    client = _Client(cluster)
    cluster.echo.expect("open")
    cluster.echo.kill()
    assert client.closed.wait(WAIT_S), "node A's end did not see node B's listener die"
    with pytest.raises(ConnectionClosed):
        client.conn.call(MESSAGE, timeout_s=WAIT_S)  # a request on a closed connection fails at once


def test_junk_streams_are_refused_and_the_relay_keeps_serving(cluster: _Cluster) -> None:
    """Random first messages (targets) and bytes, with and without the token: each stream ends, the relay
    stays up, and a real connection through it still works afterwards."""
    token = cluster.b.token()
    echo = str(cluster.b.sockets / "echo").encode()
    targets = st.one_of(st.binary(max_size=120), st.just(echo), st.text(max_size=60).map(lambda t: ("/" + t).encode()))

    @settings(max_examples=40, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
    @given(target=targets, rest=st.lists(st.binary(max_size=64), max_size=3), right_token=st.booleans())
    def junk(target: bytes, rest: list[bytes], right_token: bool) -> None:
        metadata = token_metadata(token if right_token else os.urandom(32))
        with grpc.insecure_channel(f"127.0.0.1:{cluster.port}") as channel:
            call = channel.stream_stream(METHOD_PATH)(iter([target, *rest]), metadata=metadata, timeout=WAIT_S)
            try:
                list(call)  # the echo listener drops a peer without its preamble; the rest are refused
            except grpc.RpcError as exc:
                assert exc.code() != grpc.StatusCode.DEADLINE_EXCEEDED, "a junk stream was left hanging"

    junk()
    assert cluster.relay.proc.poll() is None
    client = _Client(cluster)
    client.conn.send_now((MESSAGE, "still here"))
    assert client.wait_for(1) == ["still here"]
    client.conn.close()
