"""Serving this node's objects to other nodes' stores: one gRPC stream of chunks per pull.

A multi-node cluster moves an object by having the store that needs it pull
it from a store that has it (the client side is ``_transfer_pull``). The
service has one server-streaming method, ``Pull``: the request is a JSON
object ``{"object_id": hex, "offset": n, "end": m}`` (``end``, exclusive,
is optional and defaults to the object's end); the reply's initial metadata
carries the object's fixed header (``HEADER_KEY``), from which the puller
learns and checks the total size before any data; then the bytes from
``offset`` to ``end`` follow in chunks of ``CHUNK_BYTES``. A puller may pull
several ranges of one object at once, one stream each; a stream that broke
asks again with the offset it reached, at this store or another copy.

Chunks are read from the object's mapped file one at a time (the whole
object is never copied into this process's memory), and the mapping holds
the reader's shared lock, so the store cannot recycle the file mid-stream.

Refusals, each before anything is read: no or a wrong cluster token is
UNAUTHENTICATED (``scheduler/_grpc_shared.py``); a request that is not a JSON object with a
valid id, offset and end (``offset <= end``) is INVALID_ARGUMENT; an object
this store does not have is NOT_FOUND; an offset or end past the object's
end OUT_OF_RANGE. More than
``STREAMS_MAX`` pulls at once get RESOURCE_EXHAUSTED, and the puller retries.

This module must never send a byte before the token matched, never unpickle
anything, and never serve a file that is not a published object.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from concurrent import futures
from typing import Any

import grpc

from ember.exceptions import InvalidAddressError
from ember.scheduler._address import split_host_port
from ember.scheduler._grpc_shared import TokenCheck, Undecodable, decode
from ember.scheduler._tls import add_port
from ember.store._segments import ObjectFiles
from ember.store._serialization import HEADER_BYTES, OBJECT_ID_BYTES_MAX

__all__ = [
    "CHUNK_BYTES",
    "HEADER_KEY",
    "PULL_METHOD",
    "SERVICE",
    "STREAMS_MAX",
    "TransferServer",
    "chunk_spans",
    "parse_bind_address",
]

log = logging.getLogger("ember.store")

SERVICE = "ember.ObjectTransfer"
PULL_METHOD = "Pull"
# Large enough that per-message overhead vanishes next to the copy, small
# enough that many in flight fit the stream window. 4 MiB chunks cost the
# puller ~25% more CPU per byte (measured, 400 MB between two local stores):
# message buffers that large keep getting fresh pages from the allocator.
CHUNK_BYTES = 1 << 20
HEADER_KEY = "ember-object-header-bin"  # "-bin": gRPC carries the value as bytes
STREAMS_MAX = 8
DEFAULT_HOST = "127.0.0.1"
_STOP_GRACE_S = 1.0


def chunk_spans(offset: int, end: int, chunk_bytes: int = CHUNK_BYTES) -> Iterator[tuple[int, int]]:
    """``(start, stop)`` of each chunk that carries bytes ``offset`` to ``end`` (exclusive)."""
    if chunk_bytes <= 0:
        raise ValueError(f"chunk_bytes must be positive, got {chunk_bytes}")
    if not 0 <= offset <= end:
        raise ValueError(f"offset {offset} is outside bytes 0 to {end}")
    for start in range(offset, end, chunk_bytes):
        yield start, min(start + chunk_bytes, end)


def parse_bind_address(text: str) -> tuple[str, int]:
    """``(host, port)`` from ``HOST:PORT``, ``:PORT`` or ``PORT``; the host defaults to loopback."""
    full = text if ":" in text else f":{text}"
    if full.startswith(":"):
        full = DEFAULT_HOST + full
    try:
        return split_host_port(full, "bind address")
    except InvalidAddressError as exc:
        raise ValueError(f"expected HOST:PORT with a port from 0 (any free one) to 65535, got {text!r}") from exc


class _BadPull(ValueError):
    """A Pull request that is not ``{"object_id": hex, "offset": n, "end": m}``."""


def _parse_pull(request: Any) -> tuple[bytes, int, int | None]:
    """``(object_id, offset, end)`` of a Pull request; ``end`` is None when the request leaves it out."""
    if isinstance(request, Undecodable):
        raise _BadPull(f"the request is {request.reason}")
    id_hex, offset = request.get("object_id"), request.get("offset", 0)
    try:
        object_id = bytes.fromhex(id_hex) if isinstance(id_hex, str) else b""
    except ValueError:
        object_id = b""
    if not 0 < len(object_id) <= OBJECT_ID_BYTES_MAX:
        raise _BadPull(f"object_id must be 1 to {OBJECT_ID_BYTES_MAX} bytes in hex, got {id_hex!r:.80}")
    if type(offset) is not int or offset < 0:
        raise _BadPull(f"offset must be a whole number of bytes >= 0, got {offset!r:.80}")
    end = request.get("end")
    if end is not None and (type(end) is not int or end < offset):
        raise _BadPull(f"end must be a whole number of bytes >= offset ({offset}), got {end!r:.80}")
    return object_id, offset, end


class TransferServer:
    """Serves the objects in ``files`` to pullers that hold ``token``; started on construction."""

    def __init__(self, files: ObjectFiles, token: bytes, bind: str, chunk_bytes: int = CHUNK_BYTES) -> None:
        if chunk_bytes <= 0:
            raise ValueError(f"chunk_bytes must be positive, got {chunk_bytes}")
        self._files = files
        self._chunk_bytes = chunk_bytes
        host, port = parse_bind_address(bind)
        self._server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=STREAMS_MAX, thread_name_prefix="ember-transfer"),
            interceptors=[TokenCheck(token, SERVICE, {PULL_METHOD}, log, "object transfer")],
            # Beyond this a pull is refused at once (RESOURCE_EXHAUSTED) rather than queued unseen.
            maximum_concurrent_rpcs=STREAMS_MAX,
            # gRPC sets SO_REUSEPORT by default: a second store could bind a port
            # the first holds and silently take half of its pulls.
            options=[("grpc.so_reuseport", 0)],
        )
        handler = grpc.unary_stream_rpc_method_handler(self._pull, request_deserializer=decode)
        self._server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(SERVICE, {PULL_METHOD: handler})])
        bracketed = f"[{host}]" if ":" in host else host
        self.port = add_port(self._server, f"{bracketed}:{port}", "the object transfer service")
        if self.port == 0:
            raise OSError(f"cannot bind the object transfer service to {bracketed}:{port}")
        self.address = f"{bracketed}:{self.port}"
        self._server.start()

    def stop(self) -> None:
        self._server.stop(_STOP_GRACE_S).wait(_STOP_GRACE_S)

    def _pull(self, request: Any, context: grpc.ServicerContext) -> Iterator[bytes]:
        try:
            object_id, offset, end = _parse_pull(request)
        except _BadPull as exc:
            log.warning("object transfer refused Pull from %s: %s", context.peer(), exc)
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        view = self._files.open(object_id)
        if view is None:
            context.abort(grpc.StatusCode.NOT_FOUND, f"object {object_id.hex()} is not in this store")
        try:
            total_bytes = len(view)
            end = total_bytes if end is None else end
            if not offset <= end <= total_bytes:
                context.abort(grpc.StatusCode.OUT_OF_RANGE, f"bytes {offset} to {end} are past the end of object "
                                                            f"{object_id.hex()} ({total_bytes} bytes)")
            context.send_initial_metadata(((HEADER_KEY, bytes(view[:HEADER_BYTES])),))
            for start, stop in chunk_spans(offset, end, self._chunk_bytes):
                if not context.is_active():
                    return  # the puller went away or gave up: stop reading
                yield bytes(view[start:stop])
        finally:
            view.release()  # drops the mapping, and with it the shared lock
