"""Framed, authenticated, batching message connections between ember processes.

Every connection starts with a preamble carrying the cluster token; the
listener (``_listener``) compares it in constant time *before* unpickling a
single byte, so a peer without the token never reaches pickle. After that each frame is an
8-byte length followed by a pickle of a *list* of messages: senders append to
a pending list and one write carries everything queued since the last one,
which is how a task avoids paying a syscall (and a wake-up on the other side)
of its own.

Messages are tuples whose first element is an ``Op``. Requests carry a
request id and are answered with ``Op.REPLY``.

This module must never interpret message contents beyond replies and HELLO:
it is plumbing, the services decide what messages mean (``_messages`` checks
their shapes). It does refuse what cannot be a batch of messages at all: a
frame over ``FRAME_BYTES_MAX``, bytes that do not unpickle, a batch that is not
a list of tuples led by an int. Such a peer is logged by name and dropped; the
process keeps serving everyone else.

After the token, peers are trusted members of the cluster (they may send any
pickle, which runs code when loaded): the checks here are against bugs and
junk, not against attackers. The token is the security boundary.
"""

from __future__ import annotations

import itertools
import logging
import os
import pickle
import socket
import struct
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from ember.exceptions import EmberOperationError

log = logging.getLogger("ember.protocol")

PREAMBLE_MAGIC = b"EMBR\x01"
TOKEN_BYTES = 32
_HEADER = struct.Struct("<Q")
FRAME_BYTES_MAX = 1 << 31  # anything larger is a broken or hostile peer
# Below glibc's mmap threshold (128 KiB): a recv of 256 KiB cost ~15 us
# (an mmap and munmap each time) where one of 64 KiB costs ~2.5 us.
_RECV_CHUNK_BYTES = 1 << 16
# A large frame is read in blocks of this size: memory grows with the bytes a
# peer really sends, never with the length it merely claims.
_FRAME_BLOCK_BYTES = 64 << 20
WRITER_DELAY_S = 0.0005
QUIET_S = 0.0002  # a connection idle this long sends its next message at once


class Op:
    """Message kinds: plain ints, not an IntEnum, because an enum member pickles
    as a call to its class, which costs ~2.6 us per message to unpickle."""

    HELLO = 1
    REPLY = 2
    # to the scheduler
    SUBMIT = 10
    REGISTER_FUNCTION = 11
    CANCEL = 12
    CREATE_ACTOR = 13
    KILL_ACTOR = 14
    LOOKUP_ACTOR = 15
    GET_NAMED_ACTOR = 16
    BLOCKED = 17
    UNBLOCKED = 18
    TASKS_DONE = 19
    RETURN_TASKS = 20
    ACTOR_READY = 21
    ACTOR_FAILED = 22
    RESOURCES = 23
    PROCESSES = 24
    SHUTDOWN = 25
    CLAIM_NAME = 26
    FORWARDED_DONE = 27  # node scheduler -> the scheduler that spilled tasks to it: these finished
    RESUME = 28  # owner -> a restarted scheduler: these tasks of yours I still want; which did your log keep?
    TAKE_BACK = 29  # worker -> scheduler: my task waits for these queued tasks of mine; may I run them here?
    # from the scheduler
    EXECUTE = 30
    CANCEL_RUNNING = 31
    BECOME_ACTOR = 32
    TASK_FAILED = 33
    ACTOR_STATE = 34
    # between owners (owner <-> executor)
    TASK_RESULT = 40
    ACTOR_CALL = 41
    FLUSH_LOG = 42  # restarted actor -> its last caller: commit what you logged, then answer
    LINEAGE_DURABLE = 43  # a borrower -> an object's owner: commit these objects' lineage, then answer
    CANCEL_CALL = 44  # caller -> actor: cancel this call of yours (queued, or running on an event loop)
    STREAM_ITEM = 45  # worker -> owner: a streaming generator task yielded this value (made while it runs)
    # to and from the object store
    SEALED = 50
    SUBSCRIBE = 51
    OBJECT_READY = 52
    FREE = 53
    ALLOC_SEGMENT = 54
    STORE_STATS = 55
    OBJECT_WANTED = 56  # borrower -> owner: still waiting for these; rebuild them if every copy is gone
    # objects across nodes
    LOCATE = 60  # borrower -> owner: where is this object? (answered now, or when it is made)
    OBJECT_AT = 61  # owner -> borrower: in the stores of the nodes at these relay endpoints
    OBJECT_VALUE = 62  # owner -> borrower: a small object's bytes
    PULL = 63  # owner -> its node's store: fetch this object from these nodes
    PULL_FAILED = 64  # store -> subscribers: no source gave the object
    OBJECT_LOST_AT = 65  # borrower -> owner: no copy where you said (their nodes died)
    # to the scheduler (later additions: 10-29 are taken)
    LIST_NAMED_ACTORS = 70  # the names of the cluster's live named actors
    RETIRE = 71  # worker -> its scheduler: I ran a function max_calls times; here are tasks back, stop me when idle
    ACTOR_HANDLES = 80  # a borrower -> an actor's creator: I hold handles to it now, no longer, or one escaped
    HOLD_CALLS = 81  # scheduler -> an actor's worker: run, hold or refuse calls (scheduler/_actor_lease.py)


OP_NAMES: dict[int, str] = {v: k for k, v in vars(Op).items() if type(v) is int}


def op_name(op: Any) -> str:
    """An op's name for a log line or an error; says so if no op has that number."""
    return OP_NAMES.get(op) or f"{op!r} (no such op)"


class ConnectionClosed(EmberOperationError):
    """The peer went away (it exited, was killed, or closed the connection)."""


class AuthenticationError(EmberOperationError):
    """A peer presented the wrong cluster token."""


class MalformedFrame(ConnectionClosed):
    """A peer sent bytes that are not a frame of messages; the connection is dropped."""


def new_token() -> bytes:
    return os.urandom(TOKEN_BYTES)


class Connection:
    """One authenticated, bidirectional message stream.

    ``send`` queues a message; queued messages leave as one frame when
    ``flush`` is called or, failing that, when the writer thread gets to them.
    The handler runs on this connection's reader thread and must not block.
    """

    def __init__(
        self,
        sock: socket.socket,
        handler: Callable[["Connection", tuple], None],
        on_close: Callable[["Connection"], None] | None = None,
        name: str = "conn",
    ) -> None:
        self._sock = sock
        self._handler = handler
        self._on_close = on_close
        self.name = name
        self.peer: dict[str, Any] = {}
        self._pending: list[tuple] = []
        self._unsent = b""  # the tail of a frame a non-blocking flush could not finish
        self._last_write = 0.0
        self._pending_lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._wake = threading.Event()
        self._closed = False
        self._requests: dict[int, Future] = {}
        self._request_ids = itertools.count(1)
        # Called after each received chunk of frames is handled: a service
        # flushes the messages its handlers queued on *other* connections.
        self.batch_end: Callable[[], None] | None = None
        # Set by a handler to take reading over from the reader thread.
        self.adopter: Callable[["Connection"], None] | None = None
        self._buf = bytearray()
        self._reader = threading.Thread(target=self._read_loop, name=f"ember-read-{name}", daemon=True)
        self._writer = threading.Thread(target=self._write_loop, name=f"ember-write-{name}", daemon=True)

    def start(self, reader: bool = True) -> "Connection":
        """Start the writer thread and, unless another thread will read, the reader."""
        if reader:
            self._reader.start()
        self._writer.start()
        return self

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def has_unsent(self) -> bool:
        """Whether messages wait to leave: never on a closed connection, whose messages go nowhere."""
        return not self._closed and bool(self._pending or self._unsent)

    # -- sending -----------------------------------------------------------

    def send(self, msg: tuple) -> None:
        """Queue ``msg`` and see that it leaves soon.

        On a quiet connection the first message goes out at once (a
        non-blocking write, safe from any thread); during a burst, messages
        gather for the writer thread, which sends them as one frame.
        """
        with self._pending_lock:
            if self._closed:
                return  # it would never leave: a closed connection keeps nothing (its user reconnects)
            self._pending.append(msg)
            first = len(self._pending) == 1
        if first:
            if time.monotonic() - self._last_write > QUIET_S:
                self.flush(block=False)
            else:
                self._wake.set()

    def queue(self, msg: tuple) -> None:
        """Queue ``msg`` for a flush the caller promises to make (no writer wake-up).

        Waking the writer thread costs a context switch on each side of a
        round trip; on the synchronous path that is most of the latency.
        """
        with self._pending_lock:
            if not self._closed:
                self._pending.append(msg)

    def send_now(self, msg: tuple) -> None:
        self.queue(msg)
        self.flush()

    def flush(self, block: bool = True) -> None:
        """Send everything queued as one frame.

        Reader threads flush with ``block=False``: they write only what the
        socket takes at once and leave the rest to the writer thread. A reader
        that blocked on a full socket would stop reading, and two processes
        writing to each other at once would deadlock.
        """
        if self._closed or not (self._pending or self._unsent):
            return
        if block:
            with self._write_lock:
                self._write_queued(block=True)
            return
        if not self._write_lock.acquire(blocking=False):
            self._wake.set()  # the writer thread sends it after the current frame
            return
        try:
            self._write_queued(block=False)
        finally:
            self._write_lock.release()

    def _write_queued(self, block: bool) -> None:
        # The caller holds the write lock, so frames leave in the order they were cut.
        try:
            if self._unsent:
                if not block:
                    self._wake.set()
                    return
                self._sock.sendall(self._unsent)
                self._unsent = b""
            with self._pending_lock:
                batch, self._pending = self._pending, []
            if not batch:
                return
            self._last_write = time.monotonic()
            data = pickle.dumps(batch, protocol=5)
            if block:
                if len(data) < 65536:
                    self._sock.sendall(_HEADER.pack(len(data)) + data)
                else:  # no concatenation copy for big frames
                    self._sock.sendall(_HEADER.pack(len(data)))
                    self._sock.sendall(data)
                return
            frame = _HEADER.pack(len(data)) + data
            try:
                sent = self._sock.send(frame, socket.MSG_DONTWAIT)
            except BlockingIOError:
                sent = 0
            if sent < len(frame):
                self._unsent = frame[sent:]
                self._wake.set()
        except OSError as exc:
            self._shutdown(exc)

    def request(self, msg_op: int, *payload: Any) -> Future:
        """Send a request; the returned future resolves with the peer's reply."""
        fut: Future = Future()
        req_id = next(self._request_ids)
        self._requests[req_id] = fut
        if self._closed:
            self._requests.pop(req_id, None)
            fut.set_exception(ConnectionClosed(f"connection to {self.name} is closed"))
            return fut
        self.send_now((msg_op, req_id, *payload))
        return fut

    def call(self, msg_op: int, *payload: Any, timeout_s: float = 30.0) -> Any:
        return self.request(msg_op, *payload).result(timeout=timeout_s)

    def reply(self, req_id: int, value: Any = None, error: BaseException | None = None) -> None:
        # Replies are sent from handlers; the reader flushes after its batch.
        self.queue((Op.REPLY, req_id, error, value))

    # -- threads -----------------------------------------------------------

    def _write_loop(self) -> None:
        while not self._closed:
            self._wake.wait()
            self._wake.clear()
            # Give the sending thread a moment to flush itself (it usually
            # does, right before it waits for an answer) and to queue more.
            if not self._unsent:
                time.sleep(WRITER_DELAY_S)
            self.flush()

    def _read_loop(self) -> None:
        error: BaseException | None = None
        try:
            while self.receive():
                adopter = self.adopter
                if adopter is not None:
                    # Another thread reads this connection from now on.
                    adopter(self)
                    return
        except Exception as exc:
            error = self._reading_failed(exc)
        self._shutdown(error)

    def _reading_failed(self, exc: Exception) -> Exception:  # also for threads that adopted the connection
        """Log why reading stopped, if it is news; the connection is dropped with ``exc``."""
        if isinstance(exc, MalformedFrame):
            log.warning("dropping connection %s: %s", self.name, exc)
        elif not isinstance(exc, (OSError, ConnectionClosed)):
            # A handler failed on a message its service's shape check let by:
            # a bug here or junk from the peer. The peer goes, the service stays.
            log.warning("dropping connection %s: handling its message failed: %r", self.name, exc, exc_info=True)
        return exc

    def receive(self, nonblocking: bool = False) -> bool:
        """Read one chunk and handle every complete frame in it; False at end of stream.

        The reader thread calls this in a loop; after adoption, the adopting
        thread calls it when the socket is readable. ``nonblocking``: a
        chunk another reader took already is not waited for.
        """
        sock = self._sock
        if nonblocking:
            try:
                chunk = sock.recv(_RECV_CHUNK_BYTES, socket.MSG_DONTWAIT)
            except BlockingIOError:
                return True
        else:
            chunk = sock.recv(_RECV_CHUNK_BYTES)
        if not chunk:
            return False
        buf = self._buf
        buf += chunk
        start = 0
        while len(buf) - start >= 8:
            (size,) = _HEADER.unpack_from(buf, start)
            if size > FRAME_BYTES_MAX:
                raise MalformedFrame(f"a frame of {size} bytes exceeds the limit of {FRAME_BYTES_MAX}")
            end = start + 8 + size
            if len(buf) < end:
                if size <= _RECV_CHUNK_BYTES or nonblocking:
                    break  # the rest comes with later chunks; a non-blocking reader never waits for it
                while len(buf) < end:
                    buf += _recv_exactly(sock, min(end - len(buf), _FRAME_BLOCK_BYTES))
            batch = _decode(buf, start + 8, end)
            start = end
            self._dispatch(batch)
        if start:
            del buf[:start]
        if self.batch_end is not None:
            self.batch_end()
        # Messages the handler queued in response leave in one frame.
        self.flush(block=False)
        return True

    def fileno(self) -> int:
        return self._sock.fileno()

    def fail(self, error: BaseException | None) -> None:
        self._shutdown(error)

    def _dispatch(self, batch: list) -> None:
        if type(batch) is not list:
            raise MalformedFrame(f"a frame holds a {type(batch).__name__}, not a list of messages")
        for msg in batch:
            if type(msg) is not tuple or not msg or type(msg[0]) is not int:
                raise MalformedFrame(f"a message is {describe(msg)}, not a tuple led by an op")
            if msg[0] == Op.REPLY:
                if len(msg) != 4 or type(msg[1]) is not int:
                    raise MalformedFrame(f"a reply is {describe(msg)}, not (REPLY, request id, error, value)")
                fut = self._requests.pop(msg[1], None)
                if fut is not None and not fut.done():
                    if msg[2] is not None:
                        fut.set_exception(msg[2])
                    else:
                        fut.set_result(msg[3])
            else:
                # Looked up per message: HELLO may hand the connection to another handler.
                self._handler(self, msg)

    def close(self) -> None:
        self._shutdown(None)

    def _shutdown(self, error: BaseException | None) -> None:
        if self._closed:
            return
        with self._pending_lock:
            self._closed = True
            self._pending.clear()  # never to be sent: nothing holds on to them
        self._wake.set()
        shut_and_close(self._sock)
        closed = ConnectionClosed(f"connection to {self.name} closed" + (f": {error}" if error else ""))
        for fut in list(self._requests.values()):
            if not fut.done():
                fut.set_exception(closed)
        self._requests.clear()
        if self._on_close is not None:
            self._on_close(self)


class Outbox:
    """Messages a service's handlers queue on other connections, sent at batch end.

    Services call ``flush`` from reader threads, so it never blocks on a full
    socket (see ``Connection.flush``).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._dirty: set[Connection] = set()

    def send(self, conn: Connection | None, msg: tuple) -> None:
        if conn is None or conn.closed:
            return
        conn.queue(msg)
        with self._lock:
            self._dirty.add(conn)

    def flush(self) -> None:
        with self._lock:
            dirty, self._dirty = self._dirty, set()
        for conn in dirty:
            conn.flush(block=False)




def _decode(buf: bytearray, start: int, end: int) -> Any:
    # Unpickling junk raises nearly anything (UnpicklingError, EOFError,
    # ValueError, an ImportError for a name that does not exist...).
    try:
        with memoryview(buf) as view:
            return pickle.loads(view[start:end])
    except Exception as exc:
        raise MalformedFrame(f"a frame of {end - start} bytes does not unpickle: {exc!r:.200}") from exc


def shut_and_close(sock: socket.socket) -> None:
    """Shut a socket down (waking a thread blocked on it) and close it, whatever state it is in."""
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    try:
        sock.close()
    except OSError:
        pass


def describe(value: Any) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text[:80]}{'...' if len(text) > 80 else ''}"


def _recv_exactly(sock: socket.socket, n: int) -> bytes:
    out = bytearray(n)
    view = memoryview(out)
    got = 0
    while got < n:
        k = sock.recv_into(view[got:], n - got)
        if k == 0:
            raise ConnectionClosed("peer closed mid-frame")
        got += k
    return bytes(out)
