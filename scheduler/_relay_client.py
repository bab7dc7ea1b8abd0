"""The client side of the node relay: a local socket whose other end is a gRPC stream to another node.

``open_relayed`` makes a ``socket.socketpair()``: one end goes to the caller
(``connect`` hands it to an ordinary ``Connection``, so reader and writer
threads, ``fileno()`` and ``select`` work as on a Unix socket) and two pumps
copy between the other end and a stream to the relay (``_relay``): gRPC's
request thread reads the socket into the stream, one thread of ours writes
the stream's responses into the socket.

It must never read what it carries. When either side ends or breaks, both
are closed: the caller's end then reads end-of-stream, as after a local
peer's close. One gRPC channel per relay endpoint per process.
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Iterator

import grpc

from ember.exceptions import InvalidAddressError
from ember.scheduler._address import RelayAddress
from ember.scheduler._grpc_shared import RECONNECT_OPTIONS, token_metadata
from ember.scheduler._protocol import AuthenticationError, shut_and_close
from ember.scheduler._relay import CHUNK_BYTES_MAX, KEEPALIVE_OPTIONS, METHOD_PATH
from ember.scheduler._tls import channel as tls_channel

log = logging.getLogger("ember.relay")

# Answers that no retry can change: the caller's address or token is wrong.
_REFUSED_ADDRESS = (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.PERMISSION_DENIED)

_channels: dict[str, grpc.Channel] = {}
_methods: dict[str, grpc.StreamStreamMultiCallable] = {}
_channels_lock = threading.Lock()


def _method(endpoint: str) -> grpc.StreamStreamMultiCallable:
    """The relay's stream method on this process's one channel to ``endpoint``."""
    with _channels_lock:
        method = _methods.get(endpoint)
        if method is None:
            channel = _channels[endpoint] = tls_channel(endpoint, RECONNECT_OPTIONS + KEEPALIVE_OPTIONS)
            method = _methods[endpoint] = channel.stream_stream(METHOD_PATH)
        return method


def channel_count() -> int:
    """How many relay channels this process holds (one per endpoint it has reached)."""
    with _channels_lock:
        return len(_channels)


class _Stream:
    """One relayed connection: the caller's socket end, the pump end, the gRPC call between."""

    def __init__(self, address: RelayAddress, token: bytes) -> None:
        self.address = address
        self.local, self._pump_end = socket.socketpair()
        self._opened = threading.Event()  # set once the relay answered: "open", or an error
        self._acknowledged = False
        self.error: grpc.RpcError | None = None
        self._call = _method(address.endpoint)(
            self._requests(address.path.encode()), metadata=token_metadata(token))
        threading.Thread(target=self._downstream, name=f"ember-relay-down-{address}", daemon=True).start()

    def _requests(self, target: bytes) -> Iterator[bytes]:
        # Runs on gRPC's request thread, which waits for each message to be
        # sent before asking for the next: a slow network slows this reader
        # instead of growing a queue.
        yield target
        buffer = bytearray(CHUNK_BYTES_MAX)
        view = memoryview(buffer)
        try:
            while received := self._pump_end.recv_into(buffer):
                yield bytes(view[:received])
        except OSError:
            pass  # the pump end was closed: the stream is over
        # Returning half-closes the stream; the relay then closes the target
        # and ends the stream from its side, which closes our end below.

    def _downstream(self) -> None:
        try:
            for chunk in self._call:
                if not self._acknowledged:
                    assert chunk == b"", "the relay's first response says the target is open"
                    self._acknowledged = True
                    self._opened.set()
                    continue
                self._pump_end.sendall(chunk)
        except grpc.RpcError as exc:
            self.error = exc
        except OSError:
            pass  # the caller closed its end
        finally:
            self._call.cancel()
            shut_and_close(self._pump_end)
            self._opened.set()

    def wait_open(self, timeout_s: float) -> socket.socket:
        """The caller's end, once the relay has opened the target; raises why not otherwise."""
        if not self._opened.wait(timeout_s):
            self.close()
            raise ConnectionError(f"the relay at {self.address.endpoint} did not answer within {timeout_s:.1f}s")
        if self._acknowledged:
            return self.local
        self.close()
        error = self.error
        code = error.code() if error is not None else None
        detail = error.details() if error is not None else "the stream ended before the target opened"
        if code == grpc.StatusCode.UNAUTHENTICATED:
            raise AuthenticationError(
                f"the relay at {self.address.endpoint} refused this cluster's token: is {self.address} "
                "a node of another cluster?") from error
        if code in _REFUSED_ADDRESS:
            raise InvalidAddressError(f"the relay at {self.address.endpoint} refused {self.address}: {detail}") from error
        # UNAVAILABLE (no relay or no listener there yet), RESOURCE_EXHAUSTED
        # (too many streams): worth trying again until the caller's deadline.
        raise ConnectionError(f"the relay at {self.address.endpoint} could not open {self.address.path}: "
                              f"{code}: {detail}") from error

    def close(self) -> None:
        self._call.cancel()
        shut_and_close(self.local)


def open_relayed(address: RelayAddress, token: bytes, timeout_s: float) -> socket.socket:
    """One attempt to open a stream to ``address``; returns the local end of it.

    Raises ConnectionError (an OSError) when trying again may help,
    AuthenticationError for a wrong token, InvalidAddressError for a target
    the relay refuses.
    """
    return _Stream(address, token).wait_open(timeout_s)
