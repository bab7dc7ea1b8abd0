"""Pulling an object from another node's store into this node's object files.

``ObjectPuller.pull`` asks the stores that hold copies (``sources``, tried in
the order given) for the object's bytes (``_transfer`` serves them) and
writes each chunk at its offset into a temporary file as it arrives. The
pipelining is gRPC's: the channel's stream window (``STREAM_WINDOW_BYTES``)
lets the transport receive the next chunks while this thread writes one.
The object is published under its id only when every byte is there and the
header checks out (``ObjectFiles.publish_incoming``): a reader never maps a
half-written object.

A stream that breaks (the source died, a chunk stalled past
``STALL_TIMEOUT_S``) resumes from the offset reached, at the next source, or
at the same one again after ``RETRY_BACKOFF_S``; each source gets at most
``ATTEMPTS_PER_SOURCE_MAX`` attempts and the whole pull ``timeout_s``. A
source that does not have the object, refuses the token or sends something
inconsistent is not asked again. When no source is left, ``pull`` raises
``ObjectTransferError`` naming the object and what each source did.

Resuming at another copy mixes bytes of two copies; that is sound because
copies of one id are byte copies of one original (the object is immutable,
and it is rebuilt only when no copy is left). The new source's header must
still equal the first one's, or it is not used.

This module must never publish an object it did not receive whole and
check, and never wait without a bound.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc

from ember.exceptions import EmberInternalError, ObjectTransferError
from ember.scheduler._grpc_shared import RECONNECT_OPTIONS, encode, token_metadata
from ember.store._segments import ObjectFiles, _pwritev_all
from ember.store._serialization import HEADER_BYTES, read_header
from ember.store._transfer import CHUNK_BYTES, HEADER_KEY, PULL_METHOD, SERVICE

log = logging.getLogger("ember.store")

__all__ = ["ObjectPuller", "PullAttempt", "PullResult", "Receipt", "SourceError", "SourcePlan"]

PULL_TIMEOUT_S = 300.0
STALL_TIMEOUT_S = 10.0  # no chunk (or no header) for this long: the source is hung
_STALL_CHECK_S = 0.25
ATTEMPTS_PER_SOURCE_MAX = 2
RETRY_BACKOFF_S = 0.2
# The server never sends more than a chunk; the margin is for gRPC's framing.
RECEIVE_MESSAGE_BYTES_MAX = 2 * CHUNK_BYTES
# What the transport accepts ahead of this thread: a few chunks in flight.
STREAM_WINDOW_BYTES = 8 * CHUNK_BYTES

_CHANNEL_OPTIONS = RECONNECT_OPTIONS + [
    ("grpc.max_receive_message_length", RECEIVE_MESSAGE_BYTES_MAX),
    ("grpc.http2.lookahead_bytes", STREAM_WINDOW_BYTES),
    # Stores talk to each other directly; an http_proxy meant for the web must not apply.
    ("grpc.enable_http_proxy", 0),
]

# Codes after which asking the same source again can help.
_RETRYABLE = frozenset({
    grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.CANCELLED, grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.ABORTED,
})


class SourceError(Exception):
    """One attempt at one source failed; ``retryable`` says whether that source is worth asking again."""

    def __init__(self, reason: str, retryable: bool) -> None:
        super().__init__(reason)
        self.retryable = retryable


class Receipt:
    """What has arrived of one object: its header and how many bytes, in order. No I/O.

    ``begin`` takes each source's header; ``place`` says where the next
    chunk goes, and refuses a chunk the object has no room for.
    """

    def __init__(self, object_id: bytes) -> None:
        self.object_id = object_id
        self.header: bytes | None = None
        self.total_bytes = 0
        self.offset = 0

    def begin(self, header: bytes | None) -> None:
        """Check a source's header against the object (and the first source's, when resuming)."""
        if header is None or len(header) != HEADER_BYTES:
            raise SourceError(f"sent no object header (got {None if header is None else len(header)} bytes)", False)
        try:
            found_id, _kind, total_bytes = read_header(header)
        except EmberInternalError as exc:
            raise SourceError(f"sent a corrupt object header: {exc}", False) from exc
        if found_id != self.object_id:
            raise SourceError(f"sent the header of object {found_id.hex()}", False)
        if self.header is not None and header != self.header:
            raise SourceError("holds a copy whose header differs from the first source's", False)
        if total_bytes < HEADER_BYTES:
            raise SourceError(f"sent a header claiming {total_bytes} bytes, less than a header", False)
        self.header = header
        self.total_bytes = total_bytes

    def place(self, chunk: bytes) -> int:
        """The offset at which ``chunk`` goes; the receipt then counts it as arrived."""
        if self.header is None:
            raise EmberInternalError("a chunk was placed before any header was checked")
        end = self.offset + len(chunk)
        if not chunk or end > self.total_bytes:
            raise SourceError(f"sent {len(chunk)} bytes at offset {self.offset} of {self.total_bytes}", False)
        if self.offset < HEADER_BYTES and chunk[: HEADER_BYTES - self.offset] != self.header[self.offset:end]:
            raise SourceError("sent object bytes whose header differs from the one it announced", False)
        start, self.offset = self.offset, end
        return start

    @property
    def complete(self) -> bool:
        return self.header is not None and self.offset == self.total_bytes


class SourcePlan:
    """Which source to ask next: each in the order given, again if worth it, each a bounded number of times. No I/O."""

    def __init__(self, sources: Sequence[str], attempts_per_source_max: int = ATTEMPTS_PER_SOURCE_MAX) -> None:
        if not sources:
            raise ValueError("a pull needs at least one source address")
        if attempts_per_source_max < 1:
            raise ValueError(f"attempts_per_source_max must be at least 1, got {attempts_per_source_max}")
        self._sources = list(dict.fromkeys(sources))  # one address listed twice is one source
        self._attempts = dict.fromkeys(self._sources, 0)
        self._dropped: set[str] = set()
        self._attempts_max = attempts_per_source_max
        self._next = 0

    def next_source(self) -> tuple[str, bool] | None:
        """``(address, is_retry)`` of the next source to ask, or None when none is left."""
        for step in range(len(self._sources)):
            source = self._sources[(self._next + step) % len(self._sources)]
            if source not in self._dropped and self._attempts[source] < self._attempts_max:
                self._next = (self._next + step + 1) % len(self._sources)
                self._attempts[source] += 1
                return source, self._attempts[source] > 1
        return None

    def failed(self, source: str, retryable: bool) -> None:
        if not retryable:
            self._dropped.add(source)


@dataclass(frozen=True)
class PullAttempt:
    source: str
    start_offset: int
    end_offset: int
    outcome: str  # "complete", or why the attempt ended


@dataclass(frozen=True)
class PullResult:
    path: Path
    total_bytes: int
    attempts: tuple[PullAttempt, ...]  # empty when the object was already here


class _StallWatch:
    """Cancels a call when ``fed`` has not been called for ``stall_timeout_s``; the clock is injected."""

    def __init__(self, call: grpc.Call, stall_timeout_s: float, clock: Callable[[], float]) -> None:
        self._call = call
        self.stall_timeout_s = stall_timeout_s
        self._clock = clock
        self._last_s = clock()
        self._done = threading.Event()
        self.stalled = False
        self._thread = threading.Thread(target=self._watch, name="ember-pull-watch", daemon=True)
        self._thread.start()

    def fed(self) -> None:
        self._last_s = self._clock()

    def stop(self) -> None:
        self._done.set()
        self._thread.join(timeout=_STALL_CHECK_S * 4)

    def _watch(self) -> None:
        # Ends when the attempt does (stop) or when it cancels a stalled call.
        while not self._done.wait(_STALL_CHECK_S):
            if self._clock() - self._last_s > self.stall_timeout_s:
                self.stalled = True
                self._call.cancel()
                return


class _IncomingFile:
    """The temporary file one pull writes into: created at the first header, kept across attempts."""

    def __init__(self, files: ObjectFiles, object_id: bytes) -> None:
        self._files = files
        self._object_id = object_id
        self._fd = -1
        self._path: Path | None = None

    def write(self, data: bytes, offset: int, total_bytes: int) -> None:
        if self._path is None:
            self._fd, self._path = self._files.create_incoming(self._object_id, total_bytes)
        _pwritev_all(self._fd, [data], offset)

    def publish(self) -> Path:
        assert self._path is not None, "a complete object was written somewhere"
        self._close()
        path, self._path = self._path, None
        try:
            return self._files.publish_incoming(path, self._object_id)
        finally:
            path.unlink(missing_ok=True)  # gone already when published; a copy that failed its check is dropped

    def discard(self) -> None:
        self._close()
        if self._path is not None:
            self._path.unlink(missing_ok=True)
            self._path = None

    def _close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class ObjectPuller:
    """Pulls objects into ``files`` from other stores that hold ``token``; keeps one channel per source."""

    def __init__(self, files: ObjectFiles, token: bytes, stall_timeout_s: float = STALL_TIMEOUT_S,
                 attempts_per_source_max: int = ATTEMPTS_PER_SOURCE_MAX,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._files = files
        self._metadata = token_metadata(token)
        self._stall_timeout_s = stall_timeout_s
        self._attempts_per_source_max = attempts_per_source_max
        self._clock = clock
        self._lock = threading.Lock()
        self._channels: dict[str, grpc.Channel] = {}

    def close(self) -> None:
        with self._lock:
            channels, self._channels = list(self._channels.values()), {}
        for channel in channels:
            channel.close()

    def pull(self, object_id: bytes, sources: Sequence[str], timeout_s: float = PULL_TIMEOUT_S,
             progress: Callable[[int, int], None] | None = None) -> PullResult:
        """Pull ``object_id`` from the first of ``sources`` that delivers it; returns where it now is.

        ``progress(received_bytes, total_bytes)`` is called after each chunk is written.
        """
        path = self._files.path_of(object_id)
        if path is not None:
            return PullResult(path, self._files.size_of(object_id) or 0, ())
        deadline_s = self._clock() + timeout_s
        receipt = Receipt(object_id)
        plan = SourcePlan(sources, self._attempts_per_source_max)
        attempts: list[PullAttempt] = []
        incoming = _IncomingFile(self._files, object_id)
        try:
            while not receipt.complete:
                step = plan.next_source()
                if step is None:
                    raise ObjectTransferError(object_id.hex(), _summary(attempts, "every source failed"))
                source, is_retry = step
                if is_retry:
                    time.sleep(max(0.0, min(RETRY_BACKOFF_S, deadline_s - self._clock())))
                remaining_s = deadline_s - self._clock()
                if remaining_s <= 0:
                    raise ObjectTransferError(object_id.hex(), _summary(attempts, f"out of time ({timeout_s} s)"))
                start = receipt.offset
                try:
                    self._stream(source, receipt, incoming, remaining_s, progress)
                    outcome = "complete"
                except SourceError as exc:
                    plan.failed(source, exc.retryable)
                    outcome = str(exc)
                    log.warning("pull of object %s from %s stopped at byte %d: %s", object_id.hex(), source,
                                receipt.offset, outcome)
                attempts.append(PullAttempt(source, start, receipt.offset, outcome))
            return PullResult(incoming.publish(), receipt.total_bytes, tuple(attempts))
        finally:
            incoming.discard()

    def _stream(self, source: str, receipt: Receipt, incoming: _IncomingFile, remaining_s: float,
                progress: Callable[[int, int], None] | None) -> None:
        """One attempt: receive from ``receipt.offset`` to the end into ``incoming``, or raise SourceError."""
        request = {"object_id": receipt.object_id.hex(), "offset": receipt.offset}
        call = self._method(source)(request, timeout=remaining_s, metadata=self._metadata)
        watch = _StallWatch(call, self._stall_timeout_s, self._clock)
        try:
            header = dict(call.initial_metadata() or ()).get(HEADER_KEY)
            if header is None and call.code() != grpc.StatusCode.OK:
                raise _source_error(call, watch)  # refused before any data (no token, no such object)
            receipt.begin(header)
            for chunk in call:
                watch.fed()
                incoming.write(chunk, receipt.place(chunk), receipt.total_bytes)
                if progress is not None:
                    progress(receipt.offset, receipt.total_bytes)
        except grpc.RpcError as exc:
            raise _source_error(call, watch) from exc
        finally:
            watch.stop()
            call.cancel()  # a no-op after the stream ended; frees the stream after a failure
        if not receipt.complete:
            raise SourceError(f"ended the stream at {receipt.offset} of {receipt.total_bytes} bytes", True)

    def _method(self, source: str) -> grpc.UnaryStreamMultiCallable:
        with self._lock:
            channel = self._channels.get(source)
            if channel is None:
                channel = self._channels[source] = grpc.insecure_channel(source, options=_CHANNEL_OPTIONS)
        return channel.unary_stream(f"/{SERVICE}/{PULL_METHOD}", request_serializer=encode)


def _source_error(call: grpc.Call, watch: _StallWatch) -> SourceError:
    """What a failed call says about its source, and whether asking it again can help."""
    if watch.stalled:
        return SourceError(f"stalled: nothing arrived for {watch.stall_timeout_s} s", True)
    code, detail = call.code(), call.details()
    if code == grpc.StatusCode.UNAUTHENTICATED:
        return SourceError(f"refused this cluster's token ({detail})", False)
    if code == grpc.StatusCode.NOT_FOUND:
        return SourceError(f"does not have it ({detail})", False)
    return SourceError(f"{code.name if code else 'no status'}: {detail}", code in _RETRYABLE)


def _summary(attempts: list[PullAttempt], why: str) -> str:
    tried = "; ".join(f"{a.source} from byte {a.start_offset}: {a.outcome}" for a in attempts)
    return f"{why} ({tried or 'no attempt made'})"

