"""gRPC plumbing for the GCS service: JSON messages, a token check, a client.

The GCS service speaks gRPC (DESIGN.md section 3) without generated stubs:
every method takes and returns one JSON object, so nothing a peer sends is
ever unpickled. The cluster token travels as call metadata and is checked
before a request is even decoded (``scheduler/_grpc_shared.py``, shared with the store's
object transfers); a call without it is refused with UNAUTHENTICATED.

The address is a Unix socket in the session directory (``unix:PATH``) or a
loopback ``host:port``; never a public interface by default.

Junk is refused with a logged reason (the peer as gRPC names it, the method,
what was wrong) and the server keeps serving: a wrong token is
UNAUTHENTICATED, an unknown method UNIMPLEMENTED, a body that is not a JSON
object or a request a handler finds malformed (``BadRequest``)
INVALID_ARGUMENT. A handler that fails otherwise is a bug: INTERNAL, logged
with its traceback.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from concurrent import futures
from typing import Any

import grpc

from ember.scheduler._tls import add_port, channel
from ember.scheduler._grpc_shared import (
    RECONNECT_OPTIONS,
    TOKEN_KEY,
    TokenCheck,
    Undecodable,
    decode,
    encode,
    token_metadata,
)

log = logging.getLogger("ember.gcs")

SERVICE = "ember.Gcs"
# TOKEN_KEY is named from here by tests and tools that speak to the GCS service.
__all__ = ["SERVICE", "TOKEN_KEY", "BadRequest", "GcsClient", "GcsRefused", "GcsUnreachable", "Unavailable",
           "client_for", "serve"]

Handler = Callable[[dict[str, Any]], dict[str, Any]]


class BadRequest(ValueError):
    """A request is not what its method takes; the caller gets INVALID_ARGUMENT with this message."""


def serve(address: str, token: bytes, handlers: dict[str, Handler], threads: int = 4) -> grpc.Server:
    """Start a gRPC server answering ``handlers`` by method name; returns it running."""

    def wrap(name: str, fn: Handler):  # type: ignore[no-untyped-def]
        def call(request: Any, context: grpc.ServicerContext) -> dict[str, Any]:
            code, reason = grpc.StatusCode.INVALID_ARGUMENT, ""
            if isinstance(request, Undecodable):
                reason = f"the request is {request.reason}"
            else:
                try:
                    return fn(request)
                except Unavailable as exc:
                    code, reason = grpc.StatusCode.UNAVAILABLE, str(exc)
                except BadRequest as exc:
                    reason = str(exc)
                except Exception as exc:
                    log.exception("GCS service: %s from %s failed", name, context.peer())
                    code, reason = grpc.StatusCode.INTERNAL, f"{name} failed: {exc!r:.200}"
            if code == grpc.StatusCode.INVALID_ARGUMENT:
                log.warning("GCS service refused %s from %s: %s", name, context.peer(), reason)
            context.abort(code, reason)
            raise AssertionError("unreachable: abort raises")

        return grpc.unary_unary_rpc_method_handler(call, request_deserializer=decode, response_serializer=encode)

    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=threads, thread_name_prefix="ember-gcs-rpc"),
        interceptors=[TokenCheck(token, SERVICE, handlers, log, "GCS service")],
    )
    server.add_generic_rpc_handlers(
        [grpc.method_handlers_generic_handler(SERVICE, {name: wrap(name, fn) for name, fn in handlers.items()})]
    )
    if add_port(server, address, "the GCS service") == 0 and not address.startswith("unix:"):
        raise OSError(f"cannot bind the GCS service to {address}")
    server.start()
    if address.startswith("unix:"):
        # gRPC creates the socket with the umask's mode; the session folder
        # (0700) already keeps others out, and the socket says so itself too.
        os.chmod(address[len("unix:"):], 0o600)
    return server


class Unavailable(Exception):
    """A handler cannot answer now (its database is down); the caller retries."""


class GcsUnreachable(Exception):
    """The GCS service did not answer within the caller's bound."""


class GcsRefused(Exception):
    """The GCS service answered, refusing the request as malformed: sending it again cannot help."""


class GcsClient:
    """Calls the GCS service; ``call`` retries until ``timeout_s`` runs out."""

    def __init__(self, address: str, token: bytes) -> None:
        self.address = address
        self._metadata = token_metadata(token)
        self._channel = channel(address, RECONNECT_OPTIONS)
        self._methods: dict[str, Any] = {}

    def close(self) -> None:
        self._channel.close()

    def _method(self, name: str) -> Any:
        method = self._methods.get(name)
        if method is None:
            method = self._channel.unary_unary(
                f"/{SERVICE}/{name}", request_serializer=encode, response_deserializer=decode
            )
            self._methods[name] = method
        return method

    def try_call(self, name: str, request: dict[str, Any] | None = None, timeout_s: float = 2.0) -> dict[str, Any]:
        """One attempt; raises GcsUnreachable when it fails for a reason worth retrying, GcsRefused when not."""
        try:
            return self._method(name)(request or {}, timeout=timeout_s, metadata=self._metadata)
        except grpc.RpcError as exc:
            code = exc.code() if hasattr(exc, "code") else None
            if code == grpc.StatusCode.UNAUTHENTICATED:
                raise PermissionError(f"the GCS service at {self.address} refused this cluster's token") from exc
            if code == grpc.StatusCode.INVALID_ARGUMENT:
                detail = exc.details() if hasattr(exc, "details") else ""
                raise GcsRefused(f"the GCS service at {self.address} refused {name}: {detail}") from exc
            raise GcsUnreachable(f"the GCS service at {self.address} did not answer {name}: {code}") from exc

    def call(self, name: str, request: dict[str, Any] | None = None, timeout_s: float = 10.0) -> dict[str, Any]:
        """Retry with backoff while the service is down or restarting, up to ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        delay = 0.02
        while True:
            remaining = deadline - time.monotonic()
            try:
                return self.try_call(name, request, timeout_s=max(0.05, min(2.0, remaining)))
            except GcsUnreachable:
                if time.monotonic() + delay >= deadline:
                    raise
                time.sleep(delay)
                delay = min(delay * 2, 0.25)


_clients: dict[str, GcsClient] = {}


def client_for(address: str, token: bytes) -> GcsClient:
    """One channel per GCS address per process (channels reconnect on their own)."""
    client = _clients.get(address)
    if client is None:
        client = _clients[address] = GcsClient(address, token)
    return client
