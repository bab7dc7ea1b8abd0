"""gRPC plumbing for the GCS service: JSON messages, a token check, a client.

The GCS service speaks gRPC (DESIGN.md section 3) without generated stubs:
every method takes and returns one JSON object, so nothing a peer sends is
ever unpickled. The cluster token travels as call metadata and is checked
before a request is even decoded; a call without it is refused with
UNAUTHENTICATED.

The address is a Unix socket in the session directory (``unix:PATH``) or a
loopback ``host:port``; never a public interface by default.
"""

from __future__ import annotations

import hmac
import json
import time
from collections.abc import Callable
from concurrent import futures
from typing import Any

import grpc

SERVICE = "ember.Gcs"
TOKEN_KEY = "ember-token"

Handler = Callable[[dict[str, Any]], dict[str, Any]]


def _encode(msg: dict[str, Any]) -> bytes:
    return json.dumps(msg, separators=(",", ":")).encode()


def _decode(data: bytes) -> dict[str, Any]:
    return json.loads(data) if data else {}


class _TokenCheck(grpc.ServerInterceptor):
    def __init__(self, token: bytes) -> None:
        self._token = token.hex()

        def refuse(request: bytes, context: grpc.ServicerContext) -> None:
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong cluster token")

        self._refusal = grpc.unary_unary_rpc_method_handler(refuse)

    def intercept_service(self, continuation, handler_call_details):  # type: ignore[no-untyped-def]
        sent = dict(handler_call_details.invocation_metadata or ()).get(TOKEN_KEY, "")
        if isinstance(sent, bytes):
            sent = sent.decode(errors="replace")
        if not hmac.compare_digest(sent, self._token):
            return self._refusal
        return continuation(handler_call_details)


def serve(address: str, token: bytes, handlers: dict[str, Handler], threads: int = 4) -> grpc.Server:
    """Start a gRPC server answering ``handlers`` by method name; returns it running."""

    def wrap(fn: Handler):  # type: ignore[no-untyped-def]
        def call(request: dict[str, Any], context: grpc.ServicerContext) -> dict[str, Any]:
            try:
                return fn(request)
            except Unavailable as exc:
                context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))
                raise  # abort raises; this is for type checkers

        return grpc.unary_unary_rpc_method_handler(call, request_deserializer=_decode, response_serializer=_encode)

    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=threads, thread_name_prefix="ember-gcs-rpc"),
        interceptors=[_TokenCheck(token)],
    )
    server.add_generic_rpc_handlers(
        [grpc.method_handlers_generic_handler(SERVICE, {name: wrap(fn) for name, fn in handlers.items()})]
    )
    if server.add_insecure_port(address) == 0 and not address.startswith("unix:"):
        raise OSError(f"cannot bind the GCS service to {address}")
    server.start()
    return server


class Unavailable(Exception):
    """A handler cannot answer now (its database is down); the caller retries."""


class GcsUnreachable(Exception):
    """The GCS service did not answer within the caller's bound."""


class GcsClient:
    """Calls the GCS service; ``call`` retries until ``timeout_s`` runs out."""

    def __init__(self, address: str, token: bytes) -> None:
        self.address = address
        self._metadata = ((TOKEN_KEY, token.hex()),)
        # gRPC backs off up to minutes between reconnects by default; a GCS
        # restart takes well under a second, so reconnect soon after it.
        self._channel = grpc.insecure_channel(address, options=[
            ("grpc.initial_reconnect_backoff_ms", 20),
            ("grpc.min_reconnect_backoff_ms", 20),
            ("grpc.max_reconnect_backoff_ms", 250),
        ])
        self._methods: dict[str, Any] = {}

    def close(self) -> None:
        self._channel.close()

    def _method(self, name: str) -> Any:
        method = self._methods.get(name)
        if method is None:
            method = self._channel.unary_unary(
                f"/{SERVICE}/{name}", request_serializer=_encode, response_deserializer=_decode
            )
            self._methods[name] = method
        return method

    def try_call(self, name: str, request: dict[str, Any] | None = None, timeout_s: float = 2.0) -> dict[str, Any]:
        """One attempt; raises GcsUnreachable when it fails for a reason worth retrying."""
        try:
            return self._method(name)(request or {}, timeout=timeout_s, metadata=self._metadata)
        except grpc.RpcError as exc:
            code = exc.code() if hasattr(exc, "code") else None
            if code == grpc.StatusCode.UNAUTHENTICATED:
                raise PermissionError(f"the GCS service at {self.address} refused this cluster's token") from exc
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
