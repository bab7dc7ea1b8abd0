"""Objects across nodes: where an object is, and bringing it into this node's store.

Only in a multi-node cluster (``Owner.relay`` set). An owner records,
for each object a task wrote into a store on another node, the address of
the process that wrote it (whose relay endpoint names the node, and whose
node's store frees it when the owner does). A process that needs an object its node's
store does not have asks the owner where it is (``Op.LOCATE``); the owner
answers at once, or when the object is made: a small object's bytes
(``Op.OBJECT_VALUE``, written into this node's store), or the node that holds
it (``Op.OBJECT_AT``), from which this node's store pulls it (``Op.PULL``;
the store tells its subscribers when it is sealed). An owner that needs its
own object from another node asks its store to pull it directly.

A pull that finds no copy (``Op.PULL_FAILED``: the node died) is reported to
the owner (``Op.OBJECT_LOST_AT``), which marks the object lost and rebuilds
it from lineage; whoever waits asks again and is answered when it is made.

``Locations`` is a part of the owner over the owner's object table (under
its lock); it owns the lookups and pulls in flight. It must never decide
what to rebuild (it reports a lost copy to the owner), and socket writes
happen outside the lock where a connection might have to be opened.
"""

from __future__ import annotations

import logging
import struct
import threading
from collections.abc import Callable
from typing import Any

from ember.scheduler._address import is_relayed, parse_relay_address
from ember.scheduler._node_directory import NodeDirectory
from ember.scheduler._object_ref import ObjectRef
from ember.scheduler._protocol import Connection, Op
from ember.scheduler._spec import ArgKind
from ember.scheduler._owner._links import Links, grouped
from ember.scheduler._owner._objects import CopyLost, ObjectState, ObjectTable
from ember.scheduler._owner._writes import ObjectWriter
from ember.scheduler._session import Session
from ember.store import ObjectFiles

__all__ = ["FREE_AT_EXIT_WAIT_S", "LOCATION_OPS", "Locations"]

log = logging.getLogger("ember.core")

FREE_AT_EXIT_WAIT_S = 5.0
LOCATED_MAX = 100_000  # borrowed objects known to be made somewhere, kept for wait(fetch_local=False)
LOCATION_OPS = frozenset({Op.LOCATE, Op.OBJECT_AT, Op.OBJECT_VALUE, Op.PULL_FAILED, Op.OBJECT_LOST_AT})


class Locations:
    """Where owned objects are across nodes, and the lookups and pulls that bring objects to this node."""

    def __init__(self, address: str, relay: str | None, session: Session, lock: Any, table: ObjectTable,
                 subscribed: set[bytes], store_ready: set[bytes], files: ObjectFiles, links: Links,
                 writes: ObjectWriter, set_changed: Callable[[], None], on_lost: Callable[[bytes], None],
                 is_closed: Callable[[], bool]) -> None:
        self.address = address
        self.relay = relay
        self.session = session
        self._lock = lock
        self._objects = table.entries
        self._subscribed = subscribed  # objects this process asked its node's store about (shared with waiting)
        self._store_ready = store_ready  # objects the store said it has (shared with waiting)
        self.files = files
        self.links = links
        self.writes = writes
        self._set_changed = set_changed  # under the lock: waiters have something to look at again
        self._on_lost = on_lost  # an owned object has no copy left on any node: the owner rebuilds it
        self._is_closed = is_closed
        # Who asked where an object is before it was made, lookups to send, and
        # the owner and node of each object being pulled here.
        self.locate_waiters: dict[bytes, set[str]] = {}
        self.to_locate: list[ObjectRef] = []
        # Borrowed objects whose owners said where they are: made, wherever they are (bounded; a
        # wait(fetch_local=False) that finds one forgotten asks the owner again).
        self.located: set[bytes] = set()
        self._pulling: dict[bytes, tuple[str, list[str]]] = {}  # object -> (its owner, relay endpoints)
        self._endpoints: dict[str, str] = {}
        self._remote_frees: list[tuple[str, bytes]] = []
        self._nodes: Any = None  # NodeDirectory of this cluster's nodes, made when first needed
        self._frees_wake: threading.Event | None = None

    def remote_peer(self, conn: Connection) -> str | None:
        """The address of ``conn``'s peer if that process is on another node."""
        address = conn.peer.get("address")
        if not address or not is_relayed(address):
            return None
        return None if self.endpoint(address) == self.relay else address

    def endpoint(self, address: str) -> str:
        """The relay endpoint (``HOST:PORT``) of the node of the process at ``address``."""
        endpoint = self._endpoints.get(address)
        if endpoint is None:
            endpoint = self._endpoints[address] = parse_relay_address(address).endpoint
        return endpoint

    def in_this_cluster(self, owner: str) -> bool:
        """Whether ``owner`` is a process of this cluster: its node's relay is one the GCS service knows.

        A ref from another cluster would otherwise send its holder asking a
        stranger, which refuses the token, and then rebuilding the object.
        """
        from ember.exceptions import InvalidAddressError
        from ember.lineage._rpc import GcsUnreachable

        try:
            endpoint = self.endpoint(owner) if is_relayed(owner) else None
        except InvalidAddressError:
            return False
        if endpoint is None:
            return False
        if self._nodes is None:
            self._nodes = NodeDirectory(self.session.gcs_address, self.links.token)
        try:
            return self._nodes.find(endpoint) is not None
        except (GcsUnreachable, PermissionError):
            return True  # cannot tell now: let it through rather than refuse a ref of this cluster

    def remote_ready(self, oid: bytes, entry: Any) -> bool:
        """An owned object in another node's store: here once pulled (call under the lock)."""
        if oid in self._store_ready or self.files.exists(oid):
            return True
        if entry.where != CopyLost.LOST and oid not in self._subscribed:
            self._subscribed.add(oid)
            sources = self._sources(entry)
            self._pulling[oid] = (self.address, sources)
            self.links.store.send((Op.PULL, oid, sources))
        return False

    def _sources(self, entry: Any) -> list[str]:
        """Relay endpoints of the nodes that hold an owned object: where it was made first, then copies."""
        holders = [entry.where or self.address, *(entry.copies or ())]
        return list(dict.fromkeys(self.endpoint(a) for a in holders))

    def input_bytes(self, spec: Any) -> dict[str, int]:
        """How many bytes of a task's inputs in stores this process owns, by node (relay endpoint): the
        global scheduler places a task it is given where most of them are (under the lock)."""
        found: dict[str, int] = {}
        for arg in (*spec.args, *spec.kwargs.values()) if spec.kwargs else spec.args:
            if arg[0] != ArgKind.REF or arg[2] != self.address:
                continue
            entry = self._objects.get(arg[1])
            if entry is not None and entry.state == ObjectState.READY_STORE and entry.where != CopyLost.LOST:
                node = self.endpoint(entry.where) if entry.where else self.relay
                found[node] = found.get(node, 0) + entry.size
        return found

    def free_remote(self, oid: bytes, entry: Any) -> None:
        """Free an owned object in the stores of other nodes that hold it (under the lock; never blocks)."""
        for holder in (entry.where, *(entry.copies or ())):
            if holder is not None and holder != CopyLost.LOST and self.endpoint(holder) != self.relay:
                # Every process's socket sits beside its node's store socket.
                self._remote_frees.append((holder.rsplit("/", 1)[0] + "/store", oid))
        if self._frees_wake is None:
            self._frees_wake = threading.Event()
            threading.Thread(target=self._send_remote_frees, name="ember-remote-free", daemon=True).start()
        self._frees_wake.set()

    def free_owned_objects(self) -> None:
        """Free every object this process owns in a store, on every node that holds it (at its end)."""
        with self._lock:
            stored = [(oid, entry) for oid, entry in self._objects.items() if entry.state == ObjectState.READY_STORE]
            for oid, entry in stored:
                self.free_remote(oid, entry)
            frees, self._remote_frees = self._remote_frees, []
        self.links.store.send((Op.FREE, [oid for oid, _ in stored]))
        for store, oids in grouped(frees).items():
            try:
                conn = self.links.peer(store)
                conn.send((Op.FREE, oids))
                # Answered after the FREE before it: this process may exit the moment it returns.
                conn.call(Op.STORE_STATS, timeout_s=FREE_AT_EXIT_WAIT_S)
            except Exception as exc:
                log.warning("could not free %d object(s) in the store at %s: %s", len(oids), store, exc)

    def _send_remote_frees(self) -> None:
        wake = self._frees_wake
        assert wake is not None
        while not self._is_closed():
            wake.wait()
            wake.clear()
            with self._lock:
                frees, self._remote_frees = self._remote_frees, []
            for store, oids in grouped(frees).items():
                self.links.send_to(store, (Op.FREE, oids))

    def send_locates(self) -> None:
        """Ask owners where the objects this process found missing are (outside the lock)."""
        with self._lock:
            refs, self.to_locate = self.to_locate, []
        for owner, oids in grouped((ref._owner, ref._id) for ref in refs).items():
            self.links.send_to(owner, (Op.LOCATE, oids, self.address))

    def answer_locates(self, oid: bytes, entry: Any) -> None:
        """An object was made (or rebuilt): tell whoever asked where it is (under the lock)."""
        asked = self.locate_waiters.pop(oid, None)
        for requester in asked or ():
            self.links.send_to(requester, self._location(oid, entry, requester), flush=False)

    def _location(self, oid: bytes, entry: Any, requester: str) -> tuple:
        """The answer to ``requester``'s LOCATE; its node will hold a copy, which later askers may pull."""
        if entry.state == ObjectState.READY_INLINE:
            return (Op.OBJECT_VALUE, oid, entry.data)
        sources = self._sources(entry)
        if self.relay not in sources and self.files.exists(oid):
            sources.append(self.relay)  # this process pulled it here
        if self.endpoint(requester) not in sources:
            entry.copies = [*(entry.copies or ()), requester]
        return (Op.OBJECT_AT, oid, sources)

    def on_message(self, conn: Connection, msg: tuple) -> None:
        op = msg[0]
        if op == Op.LOCATE:
            self._on_locate(msg[1], msg[2])
        elif op == Op.OBJECT_AT:
            oid, sources = msg[1], [s for s in msg[2] if type(s) is str and s != self.relay]
            if sources:
                with self._lock:
                    self._pulling[oid] = (conn.peer.get("address") or "", sources)
                    if len(self.located) >= LOCATED_MAX:
                        self.located.clear()
                    self.located.add(oid)  # made, on another node: what wait(fetch_local=False) waits for
                    self._set_changed()
                self.links.store.send_now((Op.PULL, oid, sources))
            elif not self.files.exists(oid):
                # Said to be here only, and it is not (this node's store restarted empty): the owner
                # forgets this copy, and rebuilds the object if no other is left.
                self.links.send_to(conn.peer.get("address") or "", (Op.OBJECT_LOST_AT, oid, [self.relay]))
        elif op == Op.OBJECT_VALUE:
            self._take_value(msg[1], msg[2])
        elif op == Op.PULL_FAILED:
            self._on_pull_failed(msg[1], msg[2])
        elif op == Op.OBJECT_LOST_AT:
            self._on_lost_at(msg[1], msg[2])

    def _on_locate(self, oids: list[bytes], requester: str) -> None:
        replies = []
        with self._lock:
            for oid in oids:
                entry = self._objects.get(oid)
                if entry is None:
                    continue  # not held here: the asker's wait asks again, and rebuilds if need be
                if entry.state not in (ObjectState.READY_INLINE, ObjectState.READY_STORE) or entry.where == CopyLost.LOST:
                    self.locate_waiters.setdefault(oid, set()).add(requester)
                else:
                    replies.append(self._location(oid, entry, requester))
        for message in replies:
            self.links.send_to(requester, message, flush=False)

    def _take_value(self, oid: bytes, data: bytes) -> None:
        """A small object's bytes from its owner: into this node's store, for every process here."""
        try:
            self.writes.publish(oid, data)
        except (ValueError, struct.error) as exc:  # not an object's layout: a bug or junk, refused
            log.warning("refused object %s sent by its owner: %s", oid.hex(), exc)
            return
        with self._lock:
            self._store_ready.add(oid)
            self._set_changed()

    def _on_pull_failed(self, oid: bytes, why: str) -> None:
        with self._lock:
            self._subscribed.discard(oid)  # asked again on the next look
            self.located.discard(oid)  # its copy died: made again, and said where, once rebuilt
            owner, sources = self._pulling.pop(oid, ("", []))
            entry = self._objects.get(oid) if owner == self.address else None
            self._set_changed()
        log.warning("object %s could not be fetched from nodes %s: %s", oid.hex(), sources, why)
        # This node holds no copy either, though its owner was told it would (``_location``).
        missing = [*sources, self.relay]
        if entry is not None:
            self._on_lost_at(oid, missing)
        elif owner:
            self.links.send_to(owner, (Op.OBJECT_LOST_AT, oid, missing))

    def _on_lost_at(self, oid: bytes, endpoints: list[str]) -> None:
        """No copy of an owned object was found at these nodes: forget them; rebuild it if none is left."""
        with self._lock:
            entry = self._objects.get(oid)
            if entry is None or entry.state != ObjectState.READY_STORE or entry.where in (None, CopyLost.LOST):
                return  # already rebuilt, or in this node's store
            holders = [a for a in (entry.where, *(entry.copies or ())) if self.endpoint(a) not in endpoints]
            if holders:
                entry.where, entry.copies = holders[0], holders[1:]  # a copy made elsewhere stands in
                return
            entry.where, entry.copies = CopyLost.LOST, None
        self._on_lost(oid)
