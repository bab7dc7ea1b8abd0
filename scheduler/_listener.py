"""Opening connections: ``connect`` on the client side, ``Listener`` on the serving side.

Every connection starts with a preamble: ``PREAMBLE_MAGIC`` and the cluster
token. The listener compares the token in constant time *before* it reads a
single frame, so a peer without the token never reaches pickle; it is logged
(with the pid and uid the kernel gives for the Unix socket) and dropped. The
first message must then be a HELLO naming the peer.

It must never unpickle anything before the token check, and never let one
peer (silent, wrong, or junk) stop it from admitting the others.
"""

from __future__ import annotations

import hmac
import logging
import os
import socket
import struct
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ember.exceptions import ClusterStartError
from ember.scheduler._address import is_relayed, parse_relay_address
from ember.scheduler._protocol import (
    PREAMBLE_MAGIC,
    TOKEN_BYTES,
    Connection,
    ConnectionClosed,
    Op,
    _recv_exactly,
    describe,
    shut_and_close,
)

log = logging.getLogger("ember.protocol")

CONNECT_TIMEOUT_S = 10.0
CONNECT_RETRY_S = 0.01  # between attempts while nothing listens at the address yet
PREAMBLE_TIMEOUT_S = 5.0
# Connections waiting to present their token, at most; more wait in the
# kernel's backlog, so a flood of silent connections delays others by at most
# PREAMBLE_TIMEOUT_S and costs no thread each.
ADMISSIONS_MAX = 64


def peer_credentials(sock: socket.socket) -> str:
    """Who is at the other end of a Unix socket, as the kernel says (for logs)."""
    try:
        pid, uid, gid = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
    except OSError:
        return "an unknown peer"
    return f"pid {pid} (uid {uid})"


_local_relay: str | None = None  # HOST:PORT of this node's relay, in a multi-node cluster


def set_local_relay(endpoint: str | None) -> None:
    """Name this process's node relay: addresses through it are opened as the local sockets they name."""
    global _local_relay
    _local_relay = endpoint


def connect(
    path: str | Path,
    token: bytes,
    hello: dict[str, Any],
    handler: Callable[[Connection, tuple], None],
    on_close: Callable[[Connection], None] | None = None,
    name: str = "peer",
    timeout_s: float = CONNECT_TIMEOUT_S,
    reader: bool = True,
    connection_class: type[Connection] | None = None,
) -> Connection:
    """Open an authenticated connection to the listener at ``path``.

    ``path`` is a Unix socket on this node, or ``grpc://HOST:PORT/abs/path``
    for one on another node, reached through that node's relay (``_relay``).
    """
    relayed = parse_relay_address(str(path)) if is_relayed(path) else None
    if relayed is not None and relayed.endpoint == _local_relay:
        # A peer on this node named by its cluster-wide address: no detour through the relay.
        sock = _retrying(lambda remaining_s: _open_unix(relayed.path), name, path, timeout_s)
    elif relayed is not None:
        # Imported here: only processes that talk to other nodes pay for loading gRPC.
        from ember.scheduler._relay_client import open_relayed

        sock = _retrying(lambda remaining_s: open_relayed(relayed, token, remaining_s), name, path, timeout_s)
    else:
        sock = _retrying(lambda remaining_s: _open_unix(path), name, path, timeout_s)
    try:
        sock.sendall(PREAMBLE_MAGIC + token)
    except OSError:
        sock.close()  # the listener went away between accept and this write: the caller may try again
        raise
    conn = (connection_class or Connection)(sock, handler, on_close, name=name)
    conn.send((Op.HELLO, hello))
    conn.start(reader=reader)
    conn.flush()
    return conn


def _open_unix(path: str | Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(str(path))
    except OSError:
        sock.close()
        raise
    return sock


def _retrying(
    open_once: Callable[[float], socket.socket], name: str, path: str | Path, timeout_s: float,
) -> socket.socket:
    """``open_once(remaining_s)`` again while it raises OSError (nothing listens yet), up to ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return open_once(max(deadline - time.monotonic(), CONNECT_RETRY_S))
        except OSError as exc:
            if time.monotonic() >= deadline:
                raise ClusterStartError(f"could not connect to {name} at {path} within {timeout_s:.0f}s: {exc}") from exc
        time.sleep(CONNECT_RETRY_S)


class Listener:
    """Accepts connections on a Unix socket; rejects any without the token."""

    def __init__(
        self,
        path: str | Path,
        token: bytes,
        on_connection: Callable[[Connection], None],
        handler: Callable[[Connection, tuple], None],
        on_close: Callable[[Connection], None] | None = None,
        name: str = "listener",
        batch_end: Callable[[], None] | None = None,
    ) -> None:
        self.path = str(path)
        self._batch_end = batch_end
        self._token = token
        self._on_connection = on_connection
        self._handler = handler
        self._on_close = on_close
        self._name = name
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.bind(self.path)
        os.chmod(self.path, 0o600)
        self._sock.listen(512)
        self._closed = False
        self._admissions = threading.BoundedSemaphore(ADMISSIONS_MAX)
        self._thread = threading.Thread(target=self._accept_loop, name=f"ember-accept-{name}", daemon=True)

    def start(self) -> "Listener":
        self._thread.start()
        return self

    def _accept_loop(self) -> None:
        while not self._closed:
            self._admissions.acquire()
            try:
                sock, _ = self._sock.accept()
            except OSError:
                self._admissions.release()
                return
            threading.Thread(target=self._admit, args=(sock,), daemon=True).start()

    def _admit(self, sock: socket.socket) -> None:
        try:
            ok = self._check_preamble(sock)
        finally:
            self._admissions.release()
        if not ok:
            sock.close()
            return
        conn = Connection(sock, self._handle_first, self._on_close, name=f"{self._name}<-{peer_credentials(sock)}")
        conn.batch_end = self._batch_end
        conn.start()

    def _check_preamble(self, sock: socket.socket) -> bool:
        """Whether the peer sent the magic and this cluster's token; nothing it sent is unpickled."""
        try:
            sock.settimeout(PREAMBLE_TIMEOUT_S)
            preamble = _recv_exactly(sock, len(PREAMBLE_MAGIC) + TOKEN_BYTES)
            sock.settimeout(None)
        except (OSError, ConnectionClosed) as exc:
            log.warning("%s: dropped a connection from %s that sent no preamble: %s",
                        self._name, peer_credentials(sock), exc)
            return False
        magic, token = preamble[: len(PREAMBLE_MAGIC)], preamble[len(PREAMBLE_MAGIC) :]
        if magic != PREAMBLE_MAGIC:
            log.warning("%s: rejected a connection from %s: it does not speak ember's protocol",
                        self._name, peer_credentials(sock))
            return False
        if not hmac.compare_digest(token, self._token):
            log.warning("%s: rejected a connection from %s: wrong cluster token (another cluster's client?)",
                        self._name, peer_credentials(sock))
            return False
        return True

    def _handle_first(self, conn: Connection, msg: tuple) -> None:  # noqa: D401
        # The first message must be HELLO; after it the service's handler takes over.
        problem = _hello_problem(msg)
        if problem is not None:
            log.warning("%s: dropping %s: its first message %s", self._name, conn.name, problem)
            conn.close()
            return
        conn.peer = msg[1]
        conn.name = f"{self._name}<-{msg[1].get('kind', '?')}:{msg[1].get('pid', '?')}"
        conn._handler = self._handler
        self._on_connection(conn)

    def close(self) -> None:
        self._closed = True
        shut_and_close(self._sock)  # the shutdown wakes the accept loop
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass


# What services read from a HELLO: everything else in it is carried, unread.
_HELLO_FIELDS: dict[str, type | tuple[type, ...]] = {
    "kind": str, "pid": int, "address": str, "worker_id": bytes, "purpose": str, "job_id": bytes,
}


def _hello_problem(msg: tuple) -> str | None:
    if msg[0] != Op.HELLO or len(msg) != 2 or type(msg[1]) is not dict:
        return f"is {describe(msg)}, not (HELLO, dict)"
    for key, kind in _HELLO_FIELDS.items():
        value = msg[1].get(key)
        if value is not None and not isinstance(value, kind):
            return f"has {key}={value!r:.60} (type={type(value).__name__}), expected {kind}"
    return None
