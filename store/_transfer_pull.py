"""Pulling an object from another node's store into this node's object files.

``ObjectPuller.pull`` asks the stores that hold copies (``sources``, tried in
the order given) for the object's bytes (``_transfer`` serves them) and
writes each chunk at its offset into a temporary file as it arrives. The
pipelining is gRPC's: the channel's stream window (``STREAM_WINDOW_BYTES``)
lets the transport receive the next chunks while this thread writes one.
The object is published under its id only when every byte is there and the
header checks out (``ObjectFiles.publish_incoming``): a reader never maps a
half-written object.

The first stream asks for the whole object; its header tells the size. An
object of ``SPLIT_BYTES_MIN`` or more is not taken from that stream: it is
cut into ``PARALLEL_STREAMS`` byte ranges, pulled at once, each by a lane of
its own (a thread, and a channel with a connection of its own); a small one
costs no thread. ``Receipt`` decides the ranges and checks what arrives.

Each range is pulled the same way. A stream that breaks (the source died,
a chunk stalled past ``STALL_TIMEOUT_S``) resumes from the offset reached,
at the next source, or at the same one again after ``RETRY_BACKOFF_S``; in
each range, each source gets at most ``ATTEMPTS_PER_SOURCE_MAX`` attempts,
and the whole pull ``timeout_s``. A source that does not have the object,
refuses the token or sends something inconsistent is not asked again for
that range. When a range has no source left, the other ranges are
cancelled and ``pull`` raises ``ObjectTransferError`` naming the object and
what each attempt did.

Resuming at another copy, or taking ranges from several, mixes bytes of
copies; that is sound because copies of one id are byte copies of one
original (the object is immutable, and it is rebuilt only when no copy is
left). Every source's header must still equal the first one's, or it is not
used.

This module must never publish an object it did not receive whole and
check, and never wait without a bound.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc

from ember.exceptions import EmberInternalError, ObjectTransferError
from ember.scheduler._grpc_shared import RECONNECT_OPTIONS, encode, token_metadata
from ember.scheduler._tls import channel as tls_channel
from ember.store._segments import ObjectFiles, _pwritev_all
from ember.store._serialization import HEADER_BYTES, read_header
from ember.store._transfer import CHUNK_BYTES, HEADER_KEY, PULL_METHOD, SERVICE, chunk_spans

log = logging.getLogger("ember.store")

__all__ = ["ByteRange", "ObjectPuller", "PullAttempt", "PullResult", "Receipt", "SourceError", "SourcePlan"]

PULL_TIMEOUT_S = 300.0
STALL_TIMEOUT_S = 10.0  # no chunk (or no header) for this long: the source is hung
_STALL_CHECK_S = 0.25
ATTEMPTS_PER_SOURCE_MAX = 2
RETRY_BACKOFF_S = 0.2
# The server never sends more than a chunk; the margin is for gRPC's framing.
RECEIVE_MESSAGE_BYTES_MAX = 2 * CHUNK_BYTES
# What the transport accepts ahead of this thread: many chunks in flight.
STREAM_WINDOW_BYTES = 32 << 20
# A second stream, on a thread and connection of its own, lets a pull use a
# second core for gRPC's receive and the writes. More than the cores of a
# small node only contend (3 measured slower than 2 on 2 cores), and each
# stream takes one of the source's STREAMS_MAX slots.
PARALLEL_STREAMS = 2
# Splitting costs a call that only learns the size, a thread, and a second
# stream's start: ~2-3 ms measured on loopback, under 5% of a pull this size.
# Every range is then at least a stream window long, so each reaches full speed.
SPLIT_BYTES_MIN = PARALLEL_STREAMS * STREAM_WINDOW_BYTES

_CHANNEL_OPTIONS = RECONNECT_OPTIONS + [
    ("grpc.max_receive_message_length", RECEIVE_MESSAGE_BYTES_MAX),
    ("grpc.http2.lookahead_bytes", STREAM_WINDOW_BYTES),
    # Stores talk to each other directly; an http_proxy meant for the web must not apply.
    ("grpc.enable_http_proxy", 0),
    # A connection per channel, so each lane's stream has its own (channels share one by default).
    ("grpc.use_local_subchannel_pool", 1),
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


class ByteRange:
    """Bytes ``start`` to ``end`` (exclusive) of an object, received in order up to ``offset``. No I/O.

    ``end`` is None while the object's size is unknown: the range then runs to the object's end.
    """

    def __init__(self, start: int, end: int | None = None) -> None:
        self.start = start
        self.end = end
        self.offset = start

    @property
    def complete(self) -> bool:
        return self.offset == self.end


class Receipt:
    """What has arrived of one object: its header, and how far each of its byte ranges got. No I/O.

    A pull starts with one range, the whole object. The first header tells
    the size; an object of at least ``split_bytes_min`` bytes is then pulled
    in up to ``parts`` ranges at once instead, and the first range ends
    there, empty. ``begin`` checks each source's header against the first
    one's; ``place`` says where a range's next chunk goes, and refuses a
    chunk the range has no room for.
    """

    def __init__(self, object_id: bytes, split_bytes_min: int = SPLIT_BYTES_MIN,
                 parts: int = PARALLEL_STREAMS) -> None:
        if parts < 1:
            raise ValueError(f"parts must be at least 1, got {parts}")
        self.object_id = object_id
        self.header: bytes | None = None
        self.total_bytes = 0
        self.ranges = [ByteRange(0)]
        self._split_bytes_min = split_bytes_min
        self._parts = parts

    def begin(self, header: bytes | None) -> None:
        """Check a source's header against the object (and the first source's, when it is not the first)."""
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
        if self.header is None:
            self.header, self.total_bytes = header, total_bytes
            self._plan_ranges()

    def place(self, span: ByteRange, chunk: bytes) -> int:
        """The offset at which ``span``'s next chunk goes; the receipt then counts it as arrived."""
        if self.header is None or span.end is None:
            raise EmberInternalError("a chunk was placed before any header was checked")
        end = span.offset + len(chunk)
        if not chunk or end > span.end:
            raise SourceError(f"sent {len(chunk)} bytes at offset {span.offset} of a range ending at {span.end}", False)
        if span.offset < HEADER_BYTES and chunk[: HEADER_BYTES - span.offset] != self.header[span.offset:end]:
            raise SourceError("sent object bytes whose header differs from the one it announced", False)
        start, span.offset = span.offset, end
        return start

    @property
    def received_bytes(self) -> int:
        return sum(span.offset - span.start for span in self.ranges)

    @property
    def complete(self) -> bool:
        return self.header is not None and all(span.complete for span in self.ranges)

    def _plan_ranges(self) -> None:
        whole = self.ranges[0]
        if self._parts == 1 or self.total_bytes < self._split_bytes_min:
            whole.end = self.total_bytes
            return
        whole.end = 0
        # Whole chunks per range (the last takes the rest): every write but the object's last is chunk-aligned.
        part_bytes = -(-self.total_bytes // (self._parts * CHUNK_BYTES)) * CHUNK_BYTES
        self.ranges += [ByteRange(start, end) for start, end in chunk_spans(0, self.total_bytes, part_bytes)]
        assert self.ranges[-1].end == self.total_bytes and len(self.ranges) <= self._parts + 1, "ranges tile the object"


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
    outcome: str  # "complete", "header only" (the object was then pulled in ranges), or why the attempt ended


@dataclass(frozen=True)
class PullResult:
    path: Path
    total_bytes: int
    attempts: tuple[PullAttempt, ...]  # of every range, in the order they ended; empty when the object was here


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
    """The temporary file one pull writes into: created at the first chunk, kept across attempts and ranges."""

    def __init__(self, files: ObjectFiles, object_id: bytes,
                 segment_for: Callable[[int], Path | None] | None = None) -> None:
        self._files = files
        self._object_id = object_id
        self._segment_for = segment_for
        self._lock = threading.Lock()  # the ranges' first chunks may come at once: one file for all
        self._fd = -1
        self._path: Path | None = None

    def write(self, data: bytes, offset: int, total_bytes: int) -> None:
        with self._lock:
            if self._path is None:
                segment = self._segment_for(total_bytes) if self._segment_for is not None else None
                self._fd, self._path = self._files.create_incoming(self._object_id, total_bytes, segment)
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


class _Pull:
    """What the ranges of one pull share; thread-safe. The first error stops every range."""

    def __init__(self, receipt: Receipt, incoming: _IncomingFile, sources: Sequence[str], timeout_s: float,
                 deadline_s: float, progress: Callable[[int, int], None] | None) -> None:
        self.receipt = receipt
        self.incoming = incoming
        self.sources = sources
        self.timeout_s = timeout_s
        self.deadline_s = deadline_s
        self.stopped = threading.Event()
        self.error: BaseException | None = None
        self._progress = progress
        self._lock = threading.Lock()
        self._attempts: list[PullAttempt] = []
        self._calls: set[grpc.Call] = set()

    def arrived(self) -> None:
        """A chunk was written: report the bytes of all ranges (under the lock, so the reports only grow)."""
        if self._progress is not None:
            with self._lock:
                self._progress(self.receipt.received_bytes, self.receipt.total_bytes)

    def ended(self, attempt: PullAttempt) -> None:
        with self._lock:
            self._attempts.append(attempt)

    @property
    def attempts(self) -> tuple[PullAttempt, ...]:
        with self._lock:
            return tuple(self._attempts)

    def failure(self, why: str) -> ObjectTransferError:
        tried = "; ".join(f"{a.source} from byte {a.start_offset}: {a.outcome}" for a in self.attempts)
        return ObjectTransferError(self.receipt.object_id.hex(), f"{why} ({tried or 'no attempt made'})")

    def fail(self, error: BaseException) -> None:
        """Keep the first error and cancel every call in flight: the other ranges stop at once."""
        with self._lock:
            self.error = self.error or error
            calls = list(self._calls)
            self.stopped.set()
        for call in calls:
            call.cancel()

    @contextlib.contextmanager
    def running(self, call: grpc.Call) -> Iterator[None]:
        """While the block runs, ``fail`` cancels ``call``; it is cancelled at once if the pull failed already."""
        with self._lock:
            self._calls.add(call)
            if self.stopped.is_set():
                call.cancel()
        try:
            yield
        finally:
            with self._lock:
                self._calls.discard(call)


class ObjectPuller:
    """Pulls objects into ``files`` from other stores that hold ``token``; keeps a channel per source and lane.

    An object of at least ``split_bytes_min`` bytes comes in ``parallel_streams``
    ranges at once, each over a connection of its own. ``segment_for(size)``,
    if given, offers a free file of at least ``size`` bytes to write it into.
    """

    def __init__(self, files: ObjectFiles, token: bytes, stall_timeout_s: float = STALL_TIMEOUT_S,
                 attempts_per_source_max: int = ATTEMPTS_PER_SOURCE_MAX,
                 clock: Callable[[], float] = time.monotonic, parallel_streams: int = PARALLEL_STREAMS,
                 split_bytes_min: int = SPLIT_BYTES_MIN,
                 segment_for: Callable[[int], Path | None] | None = None) -> None:
        if parallel_streams < 1:
            raise ValueError(f"parallel_streams must be at least 1, got {parallel_streams}")
        self._files = files
        self._segment_for = segment_for
        self._metadata = token_metadata(token)
        self._stall_timeout_s = stall_timeout_s
        self._attempts_per_source_max = attempts_per_source_max
        self._clock = clock
        self._parallel_streams = parallel_streams
        self._split_bytes_min = split_bytes_min
        self._lock = threading.Lock()
        self._channels: dict[tuple[str, int], grpc.Channel] = {}

    def close(self) -> None:
        with self._lock:
            channels, self._channels = list(self._channels.values()), {}
        for channel in channels:
            channel.close()

    def pull(self, object_id: bytes, sources: Sequence[str], timeout_s: float = PULL_TIMEOUT_S,
             progress: Callable[[int, int], None] | None = None) -> PullResult:
        """Pull ``object_id`` from the first of ``sources`` that delivers it; returns where it now is.

        ``progress(received_bytes, total_bytes)`` is called after each chunk is written, from any range's thread.
        """
        path = self._files.path_of(object_id)
        if path is not None:
            return PullResult(path, self._files.size_of(object_id) or 0, ())
        receipt = Receipt(object_id, self._split_bytes_min, self._parallel_streams)
        pull = _Pull(receipt, _IncomingFile(self._files, object_id, self._segment_for), sources, timeout_s, self._clock() + timeout_s,
                     progress)
        try:
            self._pull_ranges(pull, receipt.ranges[:1])  # the whole object, or its header only when it is large
            self._pull_ranges(pull, receipt.ranges[1:])  # then the ranges of a large one, at once
            assert receipt.complete, "every range ended complete, or the pull raised"
            return PullResult(pull.incoming.publish(), receipt.total_bytes, pull.attempts)
        finally:
            pull.incoming.discard()

    def _pull_ranges(self, pull: _Pull, ranges: Sequence[ByteRange]) -> None:
        """Pull ``ranges`` at once, lane ``i`` for ``ranges[i]``, lane 0 on this thread; raise the first error."""
        threads = [threading.Thread(target=self._lane, args=(pull, lane, span), name="ember-pull-lane", daemon=True)
                   for lane, span in enumerate(ranges) if lane > 0]
        for thread in threads:
            thread.start()
        if ranges:
            self._lane(pull, 0, ranges[0])
        for thread in threads:
            # Bounded: every attempt ends by the pull's deadline, and a failed pull cancels the others' calls.
            # Joined before the file is closed, so no lane writes to a closed (or reused) descriptor.
            thread.join()
        if pull.error is not None:
            raise pull.error

    def _lane(self, pull: _Pull, lane: int, span: ByteRange) -> None:
        try:
            self._pull_range(pull, lane, span)
        except BaseException as exc:  # raised on the caller's thread by _pull_ranges, once every lane ended
            pull.fail(exc)

    def _pull_range(self, pull: _Pull, lane: int, span: ByteRange) -> None:
        """Pull ``span`` from the sources in turn until it is complete, or raise ObjectTransferError."""
        plan = SourcePlan(pull.sources, self._attempts_per_source_max)
        while not span.complete:
            step = plan.next_source()
            if step is None:
                raise pull.failure("every source failed")
            source, is_retry = step
            backoff_s = max(0.0, min(RETRY_BACKOFF_S, pull.deadline_s - self._clock())) if is_retry else 0.0
            if pull.stopped.wait(backoff_s):
                return  # another range failed: the pull does
            remaining_s = pull.deadline_s - self._clock()
            if remaining_s <= 0:
                raise pull.failure(f"out of time ({pull.timeout_s} s)")
            start = span.offset
            try:
                self._stream(source, lane, pull, span, remaining_s)
                outcome = "complete" if span.offset > start else "header only"
            except SourceError as exc:
                plan.failed(source, exc.retryable)
                outcome = str(exc)
                log.warning("pull of object %s from %s stopped at byte %d: %s", pull.receipt.object_id.hex(), source,
                            span.offset, outcome)
            pull.ended(PullAttempt(source, start, span.offset, outcome))

    def _stream(self, source: str, lane: int, pull: _Pull, span: ByteRange, remaining_s: float) -> None:
        """One attempt: receive ``span`` from its offset into the pull's file, or raise SourceError."""
        receipt = pull.receipt
        request: dict[str, object] = {"object_id": receipt.object_id.hex(), "offset": span.offset}
        if span.end is not None:
            request["end"] = span.end
        call = self._method(source, lane)(request, timeout=remaining_s, metadata=self._metadata)
        watch = _StallWatch(call, self._stall_timeout_s, self._clock)
        try:
            with pull.running(call):
                header = dict(call.initial_metadata() or ()).get(HEADER_KEY)
                if header is None and call.code() != grpc.StatusCode.OK:
                    raise _source_error(call, watch)  # refused before any data (no token, no such object)
                receipt.begin(header)  # the first header may end the first range here: the rest comes in ranges
                if span.complete:
                    return
                for chunk in call:
                    watch.fed()
                    pull.incoming.write(chunk, receipt.place(span, chunk), receipt.total_bytes)
                    pull.arrived()
        except grpc.RpcError as exc:
            raise _source_error(call, watch) from exc
        finally:
            watch.stop()
            call.cancel()  # a no-op after the stream ended; frees the stream after a failure or a header only
        if not span.complete:
            raise SourceError(f"ended the stream at {span.offset} of bytes {span.start} to {span.end}", True)

    def _method(self, source: str, lane: int) -> grpc.UnaryStreamMultiCallable:
        with self._lock:
            channel = self._channels.get((source, lane))
            if channel is None:
                channel = self._channels[source, lane] = tls_channel(source, _CHANNEL_OPTIONS)
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

