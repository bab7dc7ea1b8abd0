"""The node relay: ember connections to this node's Unix sockets from other nodes, carried over gRPC.

A peer on another node opens one bidirectional gRPC stream per connection
(``connect`` does this for a ``grpc://`` address, see ``_relay_client``).
The cluster token travels as call metadata and is checked before anything
else (UNAUTHENTICATED otherwise). The stream's first request names the
target socket; the relay refuses any path outside this node's sockets
directory (INVALID_ARGUMENT for a malformed path, PERMISSION_DENIED for one
that leads elsewhere, symlinks resolved), answers UNAVAILABLE while nothing
listens there yet, and otherwise connects, sends one empty response ("open"),
and from then on copies bytes both ways in chunks of at most
``CHUNK_BYTES_MAX``.

It must never unpickle, frame or read what it carries: ember's own preamble
(magic and token) still passes end to end, and the target's listener checks
it as for any local peer. There is no half-close: when either side ends or
breaks, the relay closes the other, and keepalive pings bound how long a
silent, vanished peer can hold a stream open.
"""

from __future__ import annotations

import logging
import os
import socket
import stat
import threading
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import NamedTuple, NoReturn

import grpc

from ember.exceptions import ClusterStartError
from ember.scheduler._address import join_host_port, socket_path_problem, split_host_port
from ember.scheduler._grpc_shared import TokenCheck
from ember.scheduler._protocol import shut_and_close
from ember.scheduler._session import RELAY_INFO_KEY, Session
from ember.scheduler._tls import add_port

log = logging.getLogger("ember.relay")

SERVICE = "ember.Relay"
METHOD = "Open"
METHOD_PATH = f"/{SERVICE}/{METHOD}"
DEFAULT_BIND = "127.0.0.1:0"  # loopback: another node reaches the relay only when it is bound on purpose
# Both directions move at most this much per gRPC message; gRPC refuses a
# larger one (and so ends the stream) from a peer that does not keep to it.
CHUNK_BYTES_MAX = 1 << 20
STREAMS_MAX = 256  # relayed connections at once; more are refused with RESOURCE_EXHAUSTED
TARGET_WAIT_S = 5.0  # a stream that names no target within this is cancelled
# A peer that vanished without closing (a cut cable, a frozen host) is
# noticed after at most KEEPALIVE_S + KEEPALIVE_TIMEOUT_S.
KEEPALIVE_S = 10.0
KEEPALIVE_TIMEOUT_S = 5.0
# What was sent this long before a relayed connection closed may have died with it: the far end may have
# been gone for a whole keepalive before this end noticed (a cut), plus a margin for the sending.
DEAD_PEER_WINDOW_S = KEEPALIVE_S + KEEPALIVE_TIMEOUT_S + 5.0

KEEPALIVE_OPTIONS: list[tuple[str, int]] = [
    ("grpc.keepalive_time_ms", int(KEEPALIVE_S * 1000)),
    ("grpc.keepalive_timeout_ms", int(KEEPALIVE_TIMEOUT_S * 1000)),
    ("grpc.http2.max_pings_without_data", 0),  # an idle connection is still pinged
    ("grpc.max_receive_message_length", CHUNK_BYTES_MAX),
    ("grpc.max_send_message_length", CHUNK_BYTES_MAX),
]
_SERVER_OPTIONS = KEEPALIVE_OPTIONS + [
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_recv_ping_interval_without_data_ms", int(KEEPALIVE_S * 1000 / 2)),
    # Every client is ember's own: pings it takes for too many (keepalive on top of gRPC's own
    # flow-control probes) must never earn a GOAWAY, which drops every connection relayed on it.
    # Seen under chaos: "too_many_pings" from a relay, then connections taken for dead peers.
    ("grpc.http2.max_ping_strikes", 0),
    ("grpc.so_reuseport", 0),  # port 0 must mean a port no one else holds
]


class Refusal(NamedTuple):
    code: grpc.StatusCode
    reason: str


def check_target(sockets_dir: Path, requested: bytes) -> Path | Refusal:
    """The socket the relay may open for a request naming ``requested``, or why not.

    The path must be absolute and normalised, lie in ``sockets_dir`` as
    written and once every symlink is resolved, and be a socket.
    """
    try:
        path = requested.decode()
    except UnicodeDecodeError:
        return Refusal(grpc.StatusCode.INVALID_ARGUMENT, f"the target {requested[:120]!r} is not UTF-8")
    problem = socket_path_problem(path)
    if problem is not None:
        return Refusal(grpc.StatusCode.INVALID_ARGUMENT, f"the target path {problem}")
    roots = {str(sockets_dir), os.path.realpath(sockets_dir)}
    real = os.path.realpath(path)
    if not any(path.startswith(root + os.sep) for root in roots) or \
            not real.startswith(os.path.realpath(sockets_dir) + os.sep):
        return Refusal(grpc.StatusCode.PERMISSION_DENIED,
                       f"the target {path!r} is outside this node's sockets directory {str(sockets_dir)!r}")
    try:
        mode = os.stat(real).st_mode
    except FileNotFoundError:
        return Refusal(grpc.StatusCode.UNAVAILABLE, f"nothing listens at {path!r} (yet)")
    except OSError as exc:
        return Refusal(grpc.StatusCode.PERMISSION_DENIED, f"cannot inspect the target {path!r}: {exc}")
    if not stat.S_ISSOCK(mode):
        return Refusal(grpc.StatusCode.INVALID_ARGUMENT, f"the target {path!r} is not a socket")
    return Path(real)


class _Relay:
    def __init__(self, sockets_dir: Path) -> None:
        self._sockets_dir = sockets_dir

    def open(self, requests: Iterator[bytes], context: grpc.ServicerContext) -> Iterator[bytes]:
        sock = self._open_target(requests, context)
        # Whatever ends the call (the peer cancels or vanishes, the stream
        # completes) closes the target, which wakes both pumps.
        context.add_callback(lambda: shut_and_close(sock))
        threading.Thread(target=_upstream, args=(requests, sock), name="ember-relay-up", daemon=True).start()
        yield b""  # the target is open
        buffer = bytearray(CHUNK_BYTES_MAX)
        view = memoryview(buffer)
        try:
            while received := sock.recv_into(buffer):
                yield bytes(view[:received])
        except OSError:
            pass  # closed under us: the peer's side ended
        finally:
            shut_and_close(sock)
        log.debug("relay: stream from %s ended", context.peer())

    def _open_target(self, requests: Iterator[bytes], context: grpc.ServicerContext) -> socket.socket:
        timer = threading.Timer(TARGET_WAIT_S, context.cancel)
        timer.start()
        try:
            requested = next(requests, None)
        finally:
            timer.cancel()
        if requested is None:
            _refuse(context, Refusal(grpc.StatusCode.INVALID_ARGUMENT,
                                     f"the stream named no target (it has {TARGET_WAIT_S:.0f}s to)"))
        target = check_target(self._sockets_dir, requested)
        if isinstance(target, Refusal):
            _refuse(context, target)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(str(target))
        except OSError as exc:
            sock.close()
            _refuse(context, Refusal(grpc.StatusCode.UNAVAILABLE, f"cannot connect to {str(target)!r}: {exc}"))
        return sock


def _refuse(context: grpc.ServicerContext, refusal: Refusal) -> NoReturn:
    if refusal.code != grpc.StatusCode.UNAVAILABLE:  # not yet listening is routine at start-up
        log.warning("relay refused a stream from %s: %s", context.peer(), refusal.reason)
    context.abort(refusal.code, refusal.reason)
    raise AssertionError("unreachable: abort raises")


def _upstream(requests: Iterator[bytes], sock: socket.socket) -> None:
    """Copy the peer's chunks into the target; the end of either closes the target."""
    try:
        for chunk in requests:
            sock.sendall(chunk)
    except (OSError, grpc.RpcError):
        pass  # one side broke: closing the target below tells the other
    finally:
        shut_and_close(sock)


def serve_relay(sockets_dir: Path, token: bytes, bind: str = DEFAULT_BIND) -> tuple[grpc.Server, int]:
    """Start a relay to the sockets in ``sockets_dir`` on ``bind`` (HOST:PORT, port 0: any free one).

    Returns the running server and the port it listens on.
    """
    host, port = split_host_port(bind, what="relay bind address")
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=STREAMS_MAX, thread_name_prefix="ember-relay"),
        interceptors=[TokenCheck(token, SERVICE, [METHOD], log, "relay", streaming_methods=[METHOD])],
        options=_SERVER_OPTIONS,
        maximum_concurrent_rpcs=STREAMS_MAX,
    )
    relay = _Relay(sockets_dir)
    server.add_generic_rpc_handlers(
        [grpc.method_handlers_generic_handler(SERVICE, {METHOD: grpc.stream_stream_rpc_method_handler(relay.open)})]
    )
    try:
        bound = add_port(server, join_host_port(host, port), "the node relay")
    except RuntimeError as exc:  # newer grpcio raises where older returned 0
        raise ClusterStartError(f"cannot bind the relay to {bind}: {exc}; choose a free port or port 0") from exc
    if bound == 0:
        raise ClusterStartError(f"cannot bind the relay to {bind}: choose a free port or port 0")
    server.start()
    log.info("relay to %s listening on %s:%d", sockets_dir, host, bound)
    return server, bound


def host_relay(session: Session, bind: str = DEFAULT_BIND) -> tuple[grpc.Server, int]:
    """Serve the relay for ``session``'s node and record ``HOST:PORT`` in its session info."""
    server, port = serve_relay(session.sockets, session.token(), bind)
    host, _ = split_host_port(bind, what="relay bind address")
    session.update_info({RELAY_INFO_KEY: join_host_port(host, port)})
    return server, port


def hosted_relay(session: Session) -> tuple[str, int] | None:
    """Where ``session``'s node relay listens, as its host recorded it; None if it hosts none."""
    endpoint = session.relay_endpoint()
    return None if endpoint is None else split_host_port(endpoint, what="the session's relay")
