"""What every ember gRPC service shares: the cluster token check and JSON requests.

ember's gRPC services (the GCS service, a store's object transfers) use no
generated stubs. The cluster token travels as call metadata under
``TOKEN_KEY`` and ``TokenCheck`` compares it before a request is even
decoded: a call without it is refused with UNAUTHENTICATED, and a method the
service does not have with UNIMPLEMENTED, each with a logged reason (the peer
as gRPC names it, the method, what was wrong), and the server keeps serving.
Requests are JSON objects, so nothing a peer sends is ever unpickled.

This module must never let a handler run before the token matched, and
never raise while decoding junk (gRPC would blame the server with INTERNAL).
"""

from __future__ import annotations

import hmac
import json
import logging
from typing import Any

import grpc

__all__ = ["RECONNECT_OPTIONS", "TOKEN_KEY", "TokenCheck", "Undecodable", "decode", "encode", "token_metadata"]

TOKEN_KEY = "ember-token"

# gRPC backs off up to minutes between reconnects by default; a restarted
# service is back in well under a second, so reconnect soon after it.
RECONNECT_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", 20),
    ("grpc.min_reconnect_backoff_ms", 20),
    ("grpc.max_reconnect_backoff_ms", 250),
]


def token_metadata(token: bytes) -> tuple[tuple[str, str], ...]:
    """The call metadata that carries the cluster token."""
    return ((TOKEN_KEY, token.hex()),)


def encode(msg: dict[str, Any]) -> bytes:
    return json.dumps(msg, separators=(",", ":")).encode()


class Undecodable:
    """A request body that is not a JSON object (refused by the handler, not by gRPC)."""

    def __init__(self, reason: str) -> None:
        self.reason = reason


def decode(data: bytes) -> Any:
    """The JSON object in ``data``, or an ``Undecodable`` saying why not. Never raises."""
    try:
        msg = json.loads(data) if data else {}
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError
        return Undecodable(f"{len(data)} bytes that are not JSON ({exc})")
    if not isinstance(msg, dict):
        return Undecodable(f"a JSON {type(msg).__name__}, not an object")
    return msg


def _refusal(code: grpc.StatusCode, reason: str, method: str, who: str, log: logging.Logger) -> grpc.RpcMethodHandler:
    # A unary handler refuses streaming methods too: the request side is the
    # same on the wire, and the caller sees only the status.
    def refuse(request: bytes, context: grpc.ServicerContext) -> None:
        log.warning("%s refused %s from %s: %s", who, method, context.peer(), reason)
        context.abort(code, reason)

    return grpc.unary_unary_rpc_method_handler(refuse)


class TokenCheck(grpc.ServerInterceptor):
    """Refuses every call to ``service`` without the cluster token, or to a method not in ``methods``.

    ``who`` names the service in the log ("GCS service", "object transfer").
    """

    def __init__(self, token: bytes, service: str, methods: set[str], who: str, log: logging.Logger) -> None:
        self._token = token.hex().encode()
        self._methods = {f"/{service}/{name}" for name in methods}
        self._who = who
        self._log = log

    def intercept_service(self, continuation, handler_call_details):  # type: ignore[no-untyped-def]
        method = handler_call_details.method
        sent = dict(handler_call_details.invocation_metadata or ()).get(TOKEN_KEY, "")
        if isinstance(sent, bytes):
            sent = sent.decode(errors="replace")
        if not isinstance(sent, str) or not hmac.compare_digest(sent.encode(errors="replace"), self._token):
            return _refusal(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong cluster token", method, self._who,
                            self._log)
        if method not in self._methods:
            return _refusal(grpc.StatusCode.UNIMPLEMENTED, "no such method", method, self._who, self._log)
        return continuation(handler_call_details)
