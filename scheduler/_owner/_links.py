"""The owner's links to other processes: its node's scheduler and store, a worker's exec connection, peers.

``Links`` holds every connection the owner has and makes new ones the same
way (the cluster token, this process's hello, the owner's message handler);
peers (other owners, actors, stores on other nodes) are kept by address and
connected on first use. Reconnecting to a restarted scheduler or store is
started here (``reconnect``); what the owner does with a new scheduler
(registering functions again, the logged-queue RESUME adoption) is
``Owner._adopt_scheduler``'s, since it is about tasks.

Results sent to owners on other nodes are kept a while and sent again on a
new connection if the one they left on closes (``_resend.py``: a relayed
connection can swallow what was written just before it closed).

It must never decide anything about objects or tasks, and never block a
reader thread: a connect happens on the caller's thread (a resend's, on a
thread of its own).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from ember.lineage._states import ProcessKind
from ember.scheduler._address import is_relayed, parse_relay_address
from ember.scheduler._listener import Listener, connect
from ember.scheduler._owner._resend import RESEND_CONNECT_S, RESENDS_MAX, SentResults
from ember.scheduler._protocol import Connection

__all__ = ["PEER_CONNECT_TIMEOUT_S", "RECONNECT_POLL_S", "RECONNECT_TIMEOUT_S", "Links", "grouped"]

log = logging.getLogger("ember.core")

PEER_CONNECT_TIMEOUT_S = 2.0  # peers listen before they announce themselves
RECONNECT_TIMEOUT_S = 30.0  # how long a restarted store or scheduler has to come back
RECONNECT_POLL_S = 0.05

Handle = Callable[[Connection, tuple], None]


class Links:
    """This process's connections (guarded by the owner's lock where threads race on them)."""

    def __init__(self, kind: ProcessKind, address: str, worker_id: bytes, token: bytes, lock: Any, handle: Handle,
                 on_peer_closed: Callable[[Connection], None], batch_end: Callable[[], None],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.token = token
        self.hello = {"kind": kind, "pid": os.getpid(), "address": address, "worker_id": worker_id}
        self._kind = kind
        self._lock = lock
        self._handle = handle
        self._on_peer_closed = on_peer_closed
        self._batch_end = batch_end  # sends what a batch of incoming messages queued, at its end
        self.listener: Listener | None = None
        self.scheduler: Connection = None  # type: ignore[assignment]  # connected by Owner.start()
        self.store: Connection = None  # type: ignore[assignment]
        # Workers take their tasks on a connection of their own that the
        # executor's main thread reads itself: no hand-off between threads.
        self.exec_conn: Connection | None = None
        self.peers: dict[str, Connection] = {}
        # This process's relay endpoint (None on a one-node cluster): peers behind another one are on other nodes.
        self._endpoint = parse_relay_address(address).endpoint if is_relayed(address) else None
        self._sent = SentResults()  # results sent to other nodes lately, to send again if their connection closes
        self._sent_lock = threading.Lock()
        self._clock = clock
        self._closing = False  # this process closes its connections: nothing goes again

    def listen(self, socket_path: str, on_peer: Callable[[Connection], None]) -> None:
        self.listener = Listener(socket_path, self.token, on_peer, self._handle, self._on_peer_closed,
                                 name=self._kind, batch_end=self._batch_end).start()

    def connect(self, path: Any, on_close: Callable[[Connection], None] | None, name: str, **options: Any) -> Connection:
        """A new connection to a process of this node (or through its relay), its messages to the owner."""
        hello = {**self.hello, **options.pop("hello", {})}
        conn = connect(path, self.token, hello, self._handle, on_close, name, **options)
        if options.get("reader", True):
            conn.batch_end = self._batch_end
        return conn

    def reconnect(self, path: Any, on_close: Callable[[Connection], None], name: str,
                  quiet: bool = False) -> Connection | None:
        """A connection to the restarted scheduler or store at ``path``; None if it did not come back in time."""
        try:
            return self.connect(path, on_close, name, timeout_s=RECONNECT_TIMEOUT_S)
        except Exception as exc:
            (log.info if quiet else log.error)("the node's %s did not come back: %s", name, exc)
            return None

    def peer(self, address: str, timeout_s: float = PEER_CONNECT_TIMEOUT_S) -> Connection:
        """The connection to the process at ``address``, made now if there is none (raises if it cannot be)."""
        conn = self.peers.get(address)
        if conn is None or conn.closed:
            conn = connect(address, self.token, self.hello, self._handle, self._on_peer_closed,
                           f"peer:{address}", timeout_s=timeout_s)
            conn.peer = {"address": address}
            self.peers[address] = conn
        return conn

    def send_to(self, address: str, msg: tuple, flush: bool = True, keep: bool = False,
                timeout_s: float = PEER_CONNECT_TIMEOUT_S, resends: int = 0) -> None:
        """Send ``msg`` to the process at ``address``; ``keep``: a result, sent again on a new connection if
        this one closes soon (``_resend.py``), when ``address`` is on another node."""
        kept = keep and self._elsewhere(address)
        try:
            conn = self.peer(address, timeout_s=timeout_s)
        except Exception as exc:
            log.warning("could not deliver to %s (owner gone?): %s", address, exc)
            if kept and resends < RESENDS_MAX:  # another node, maybe cut off for now: tried again for longer
                self._send_again_soon([(address, msg, resends)])
            return
        if kept:
            with self._sent_lock:
                self._sent.sent(conn, address, msg, self._clock(), resends)
        if flush:
            conn.send_now(msg)
        else:
            conn.send(msg)
        if kept and conn.closed:
            self.resend(conn)  # closed before it was kept: its close did not see it

    def _elsewhere(self, address: str) -> bool:
        return self._endpoint is not None and is_relayed(address) and \
            parse_relay_address(address).endpoint != self._endpoint

    def resend(self, conn: Connection) -> None:
        """``conn`` closed: send again, on a thread of its own, the results it carried lately."""
        with self._sent_lock:
            again = [] if self._closing else self._sent.closed(conn, self._clock())
        if again:
            log.info("a connection to %s closed: %d result(s) sent on it lately go again", again[0][0], len(again))
            self._send_again_soon(again)

    def _send_again_soon(self, again: list[tuple[str, tuple, int]]) -> None:
        threading.Thread(target=self._send_again, args=(again,), name="ember-resend", daemon=True).start()

    def _send_again(self, again: list[tuple[str, tuple, int]]) -> None:
        for address, msg, resends in again:
            self.send_to(address, msg, keep=True, timeout_s=RESEND_CONNECT_S, resends=resends + 1)

    def keep_incoming(self, conn: Connection) -> None:
        """A peer connected to this process: kept to answer it, unless a live connection to it is kept already."""
        address = conn.peer.get("address")
        if address:
            with self._lock:
                existing = self.peers.get(address)
                if existing is None or existing.closed:
                    self.peers[address] = conn

    def forget(self, conn: Connection) -> None:
        """A peer's connection closed (call under the lock): what it carried lately goes again."""
        address = conn.peer.get("address")
        if address and self.peers.get(address) is conn:
            del self.peers[address]
        self.resend(conn)

    def close(self) -> None:
        """Stop listening, then send what is queued on every connection and close it."""
        with self._sent_lock:
            self._closing = True
        self.stop_listening()
        for conn in [self.scheduler, self.store, *self.peers.values()]:
            if conn is None:
                continue  # never started
            conn.flush()
            conn.close()

    def stop_listening(self) -> None:
        if self.listener is not None:
            self.listener.close()


def grouped(pairs: Iterable[tuple[str, bytes]]) -> dict[str, list[bytes]]:
    """``(place, object id)`` pairs as one list of ids per place (an owner, a store): one message to each."""
    by_place: dict[str, list[bytes]] = {}
    for place, oid in pairs:
        by_place.setdefault(place, []).append(oid)
    return by_place
