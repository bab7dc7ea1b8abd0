"""A connection another thread can read for a while: the direct path of a synchronous call.

A caller that waits for an actor call's result would otherwise be woken by
the connection's reader thread: one more thread wake-up (and a hand-over of
the GIL) on every round trip, about a tenth of a trivial call's latency. So
the waiting thread *borrows* the connection: it parks the reader thread and
reads the socket itself, and the result it reads is already in its hands.

The reader stays parked for ``LINGER_S`` after the last give-back, so a loop
of synchronous calls never wakes it; then it resumes reading on its own. A
message nobody waits for may therefore sit unread for at most about
``2 * LINGER_S`` after a borrower leaves.

All reading happens under ``_read_mutex``, by one thread at a time, with
non-blocking receives: frames are never split between two readers.

It must never let two threads read the socket at once, and never park the
reader without a bound.
"""

from __future__ import annotations

import os
import select
import signal
import threading
import time
from typing import Any

from ember.scheduler._protocol import Connection

LINGER_S = 0.005
_INFINITE = float("inf")


class SharedReadConnection(Connection):
    """A connection whose reading a waiting thread can take over (``borrow``/``give_back``)."""

    def __init__(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().__init__(*args, **kwargs)
        self._read_mutex = threading.Lock()
        self._park_cv = threading.Condition(threading.Lock())
        self._park_until = 0.0  # the reader stays parked until then (inf while borrowed)
        self._parked = False
        self._borrower: int | None = None
        self._park_r, self._park_w = os.pipe()
        os.set_blocking(self._park_r, False)
        os.set_blocking(self._park_w, False)
        self._reader = threading.Thread(target=self._read_shared, name=self._reader.name, daemon=True)

    # -- the borrowing thread --------------------------------------------------------

    def try_borrow(self, timeout_s: float) -> bool:
        """Park the reader thread and take over reading until ``give_back``; False if that cannot be had now.

        False: another thread reads it, this thread reads it already (a
        handler waiting inside a read), the connection is closed, or the
        reader is mid-frame for longer than ``timeout_s``.
        """
        with self._park_cv:
            if self._closed or self._borrower is not None:
                return False
            self._borrower = threading.get_ident()
            self._park_until = _INFINITE
            if not self._parked and self._park_w >= 0:
                try:
                    os.write(self._park_w, b"p")  # under the lock: the reader closes the pipe under it too
                except (BlockingIOError, OSError):
                    pass  # a wake-up is pending already
        try:
            # The reader may be mid-frame: it finishes first, within the caller's time.
            acquired = self._read_mutex.acquire(timeout=max(timeout_s, 0.0))
        except BaseException:
            self._end_borrow()
            raise
        if not acquired:
            self._end_borrow()
        return acquired

    def give_back(self) -> None:
        self._read_mutex.release()
        self._end_borrow()

    def _end_borrow(self) -> None:
        with self._park_cv:
            self._borrower = None
            self._park_until = time.monotonic() + LINGER_S

    def read_available(self) -> bool:
        """Handle what the socket holds now (the borrower, after a poll); False once the peer is gone."""
        try:
            alive = self.receive(nonblocking=True)
        except Exception as exc:
            self.fail(self._reading_failed(exc))
            return False
        if not alive:
            self.fail(None)
        return alive

    # -- the reader thread -------------------------------------------------------------

    def _read_shared(self) -> None:
        poller = select.poll()
        fd = self._sock.fileno()  # -1: closed before this thread first ran (a peer that died at once)
        if fd >= 0:
            poller.register(fd, select.POLLIN)
        poller.register(self._park_r, select.POLLIN)
        error: BaseException | None = None
        try:
            while fd >= 0 and not self._closed:
                self._wait_unparked()
                if self._closed:
                    break
                events = poller.poll()
                if any(fd == self._park_r for fd, _ in events):
                    _drain(self._park_r)
                    continue
                with self._read_mutex:
                    if self._closed or not self.receive(nonblocking=True):
                        break
        except Exception as exc:
            error = self._reading_failed(exc)
        self._shutdown(error)
        with self._park_cv:
            # Under the lock: a borrower writes to the pipe under it, and a
            # closed fd's number may already belong to another file.
            for fd in (self._park_r, self._park_w):
                try:
                    os.close(fd)
                except OSError:
                    pass
            self._park_r = self._park_w = -1

    def _wait_unparked(self) -> None:
        with self._park_cv:
            while not self._closed:
                remaining = self._park_until - time.monotonic()
                if remaining <= 0:
                    self._parked = False
                    return
                self._parked = True
                self._park_cv.wait(min(remaining, LINGER_S))

    def _shutdown(self, error: BaseException | None) -> None:
        was_closed = self._closed
        super()._shutdown(error)
        if not was_closed:
            with self._park_cv:
                self._park_cv.notify_all()


class _MainThreadSigint:
    """Installed once as the SIGINT handler: holds a Ctrl-C back while the main thread reads a connection.

    A KeyboardInterrupt raised in the middle of handling a frame would leave
    its messages half applied (a result taken off the pending table but
    never published), and the next wait for it would hang. Held, it wakes
    the read's poll at once and is raised when the read is done, where
    nothing is half done. Outside such a read it calls the handler that was
    there before. Installing once keeps the per-read cost to a flag.
    """

    def __init__(self) -> None:
        self.depth = 0
        self.caught: tuple[int, Any] | None = None
        self.wake_fd = -1
        self.original: Any = None
        self.handler = self._handle  # one bound method, so getsignal() can recognise it

    def _handle(self, signum: int, frame: Any) -> None:
        if not self.depth:
            self.original(signum, frame)
            return
        self.caught = (signum, frame)
        try:
            os.write(self.wake_fd, b"i")
        except OSError:
            pass


_SIGINT = _MainThreadSigint()


def hold_sigint(waiter: "PipeWaiter") -> bool:
    """On the main thread, hold a Ctrl-C back until ``release_sigint`` (see ``_MainThreadSigint``).

    Returns whether it holds: only then must the caller release.
    """
    if threading.current_thread() is not threading.main_thread():
        return False
    hold = _SIGINT
    current = signal.getsignal(signal.SIGINT)
    if current is not hold.handler:
        if not callable(current):
            return False  # ignored, or not set from Python: nothing raises in Python
        hold.original = current  # the user's handler (or Python's), called for every Ctrl-C outside a read
        signal.signal(signal.SIGINT, hold.handler)
    hold.depth += 1
    hold.wake_fd = waiter.w
    return True


def release_sigint() -> None:
    """End a ``hold_sigint``; a Ctrl-C that came meanwhile is raised now."""
    hold = _SIGINT
    hold.depth -= 1
    if not hold.depth and hold.caught is not None:
        caught, hold.caught = hold.caught, None
        hold.original(*caught)


def _drain(fd: int) -> None:
    try:
        os.read(fd, 65536)
    except (BlockingIOError, OSError):
        pass


def poll_readable(conn_fd: int, waiter_fd: int, timeout_s: float | None) -> tuple[bool, bool]:
    """Wait until the connection or the waiter's pipe is readable; returns (connection, waiter)."""
    poller = select.poll()
    if conn_fd >= 0:  # -1: no connection, or one closed meanwhile
        poller.register(conn_fd, select.POLLIN)
    poller.register(waiter_fd, select.POLLIN)
    events = poller.poll(None if timeout_s is None else max(0, int(timeout_s * 1000)))
    conn_ready = waiter_ready = False
    for fd, _ in events:
        if fd == conn_fd:
            conn_ready = True
        else:
            waiter_ready = True
    return conn_ready, waiter_ready


class PipeWaiter:
    """An Event-like waker its thread can poll together with a socket (one per thread, reused).

    ``set`` from another thread writes a byte; from the owning thread it does
    nothing, since the owner checks again before it sleeps. The owner drains
    the pipe when a poll reports it readable, so a byte left over costs one
    spurious pass through the wait loop, never a busy loop.
    """

    __slots__ = ("r", "w", "owner")

    def __init__(self) -> None:
        self.r, self.w = os.pipe()
        os.set_blocking(self.r, False)
        os.set_blocking(self.w, False)
        self.owner = threading.get_ident()

    def set(self) -> None:
        if threading.get_ident() != self.owner:
            try:
                os.write(self.w, b"w")
            except BlockingIOError:
                pass  # full: the owner has plenty to wake it

    def clear(self) -> None:
        pass  # the wait drains the pipe (see the class docstring)

    def drain(self) -> None:
        _drain(self.r)

    def __del__(self) -> None:
        for fd in (self.r, self.w):
            try:
                os.close(fd)
            except OSError:
                pass
