"""What ember's gRPC services and clients share: the cluster token on calls, the reconnect policy, JSON requests.

Used by every gRPC service ember hosts (the GCS service, the node relay, a
store's object transfers):
one place decides how the token travels and how a call without it is
refused, so the services cannot drift apart on what "authenticated" means.

It must never let a handler run, or a request body be decoded, for a call
whose token is missing or wrong; such a call gets UNAUTHENTICATED and a
logged line naming the peer and the method.
"""

from __future__ import annotations

import hmac
import json
import logging
from collections.abc import Iterable
from typing import Any

import grpc

TOKEN_KEY = "ember-token"

# gRPC backs off up to minutes between reconnects by default; a restarted
# service is back well under a second later, so reconnect soon after it.
RECONNECT_OPTIONS: list[tuple[str, int]] = [
    ("grpc.initial_reconnect_backoff_ms", 20),
    ("grpc.min_reconnect_backoff_ms", 20),
    ("grpc.max_reconnect_backoff_ms", 250),
]


def token_metadata(token: bytes) -> tuple[tuple[str, str], ...]:
    """The metadata a client sends with every call to carry ``token``."""
    return ((TOKEN_KEY, token.hex()),)


def encode(msg: dict[str, Any]) -> bytes:
    return json.dumps(msg, separators=(",", ":")).encode()


class Undecodable:
    """A request body that is not a JSON object (refused by the handler, not by gRPC)."""

    def __init__(self, reason: str) -> None:
        self.reason = reason


def decode(data: bytes) -> Any:
    """The JSON object in ``data``, or an ``Undecodable`` saying why not.

    Never raises: gRPC would log a decoding failure as an error with a
    traceback and answer INTERNAL, which blames the server for junk.
    """
    try:
        msg = json.loads(data) if data else {}
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError
        return Undecodable(f"{len(data)} bytes that are not JSON ({exc})")
    if not isinstance(msg, dict):
        return Undecodable(f"a JSON {type(msg).__name__}, not an object")
    return msg


def refusal(
    code: grpc.StatusCode, reason: str, method: str, log: logging.Logger, label: str,
    streaming: bool = False,
) -> grpc.RpcMethodHandler:
    """A handler that logs why ``method`` is refused and aborts with ``code``.

    ``streaming``: the refused method is bidirectional-streaming; the handler
    has the same shape, so gRPC never waits for a single request it will not get.
    """

    def refuse(request: Any, context: grpc.ServicerContext) -> None:
        log.warning("%s refused %s from %s: %s", label, method, context.peer(), reason)
        context.abort(code, reason)

    if streaming:
        return grpc.stream_stream_rpc_method_handler(refuse)
    return grpc.unary_unary_rpc_method_handler(refuse)


class TokenCheck(grpc.ServerInterceptor):
    """Refuses calls without this cluster's token, and calls to methods ``service`` does not have."""

    def __init__(
        self, token: bytes, service: str, methods: Iterable[str], log: logging.Logger, label: str,
        streaming_methods: Iterable[str] = (),
    ) -> None:
        self._token = token.hex().encode()
        self._methods = {f"/{service}/{name}" for name in methods}
        self._streaming = {f"/{service}/{name}" for name in streaming_methods}
        self._log = log
        self._label = label

    def intercept_service(self, continuation, handler_call_details):  # type: ignore[no-untyped-def]
        method = handler_call_details.method
        sent = dict(handler_call_details.invocation_metadata or ()).get(TOKEN_KEY, "")
        if isinstance(sent, bytes):
            sent = sent.decode(errors="replace")
        if not isinstance(sent, str) or not hmac.compare_digest(sent.encode(errors="replace"), self._token):
            return refusal(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong cluster token", method,
                           self._log, self._label, streaming=method in self._streaming)
        if method not in self._methods:
            return refusal(grpc.StatusCode.UNIMPLEMENTED, "no such method", method, self._log, self._label)
        return continuation(handler_call_details)
