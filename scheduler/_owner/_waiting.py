"""Waiting for objects: ``get`` and ``wait`` in the owner.

A ref is ready when its owner holds the value or the node's store has it.
Waiters park on an Event of their own, set after the lock is released. A
worker that must wait tells the scheduler it is blocked (its CPU is lent out
meanwhile) and hands back the tasks queued behind it.

``Waiting`` is a part of the owner over its object table (under its lock);
before ``get`` or ``wait`` hands out a value, the lineage gate makes its
lineage durable (``LineageGate.await_lineage``). It must never write to a
socket while holding the lock, and never return a value whose lineage is
not durable.
"""

from __future__ import annotations

import threading
import time
from itertools import compress
from operator import not_
from collections.abc import Callable
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

from ember.chaos import _agent
from ember.exceptions import EmberTaskError, GetTimeoutError, ObjectLostError
from ember.scheduler._object_ref import ObjectRef
from ember.scheduler._owner._dispatch import MessageTable
from ember.scheduler._owner._durable import LineageGate
from ember.scheduler._owner._links import Links, grouped
from ember.scheduler._owner._locations import Locations
from ember.scheduler._owner._objects import CopyLost, ObjectState, ObjectTable, OwnerState
from ember.scheduler._owner._reconstruct import Reconstruction
from ember.scheduler._owner._tasks import PendingTask
from ember.scheduler._owner._writes import ObjectWriter
from ember.scheduler._protocol import ConnectionClosed, Op
from ember.scheduler._shared_read import PipeWaiter, SharedReadConnection, hold_sigint, poll_readable, release_sigint
from ember.scheduler._spec import TaskKind, task_of
from ember.store import ObjectFiles
from ember.store import ObjectKind, deserialize

__all__ = ["ASK_OWNERS_AFTER_S", "BLOCKED_POLL_S", "RECONSTRUCTION_ROUNDS_MAX", "Waiting"]

BLOCKED_POLL_S = 0.05  # a blocked worker looks this often for tasks to hand back
TAKE_BACK_WAIT_S = 10.0  # the scheduler's answer to a task about to wait for its own queued tasks
ASK_OWNERS_AFTER_S = 1.0  # a wait on a borrowed object this long asks its owner again where it is, and to check for a lost copy
RECONSTRUCTION_ROUNDS_MAX = 8  # rebuild, then find more lost (the store died again), a few times at most


class _Readiness:
    """Which of a wait's refs are ready, each pass re-checking only those that were not.

    A wait for 10,000 results woken by each chunk of them would otherwise
    check all 10,000 every time. A ref can turn pending again meanwhile (a
    store died and it is being rebuilt), so before the wait ends every ref
    is checked once more, together.
    """

    __slots__ = ("refs", "count", "flags", "pending")

    def __init__(self, refs: list[ObjectRef], count: int) -> None:
        self.refs = refs
        self.count = count
        self.flags: list[bool] = []
        self.pending: list[int] = []

    def update(self, ready: Any) -> bool:
        """Check again (``ready(ref)``); True once ``count`` refs are ready at one moment.

        Once it is True the wait ends, and ``flags`` mark the first ``count``
        ready refs in the list's order, which are what a wait hands back:
        the refs after them are not looked at (nor is ``pending`` kept).
        """
        refs = self.refs
        count = self.count
        if self.flags:
            need_all = count >= len(refs)
            still: list[int] = []
            pending = self.pending
            for k, i in enumerate(pending):
                if ready(refs[i]):
                    self.flags[i] = True
                else:
                    still.append(i)
                    if need_all:  # one missing is enough to keep waiting: look at the rest later
                        still.extend(pending[k + 1:])
                        break
            self.pending = still
            if len(refs) - len(still) < count:
                return False
        # The first pass, and the last: the refs at one moment (the first subscribes borrowed ones).
        flags: list[bool] = []
        if count < len(refs):
            found = 0
            for ref in refs:
                flag = ready(ref)
                flags.append(flag)
                if flag:
                    found += 1
                    if found == count:
                        flags += [False] * (len(refs) - len(flags))
                        self.flags = flags
                        return True
        else:
            flags = [ready(r) for r in refs]
        self.flags = flags
        self.pending = [i for i, flag in enumerate(flags) if not flag]
        return len(refs) - len(self.pending) >= count


class Waiting:
    """``get`` and ``wait`` for this process: readiness, parking, a blocked worker's hand-back, and values."""

    def __init__(self, address: str, relay: str | None, lock: Any, state: OwnerState, table: ObjectTable,
                 tasks: dict[bytes, PendingTask], actors: dict[bytes, Any], subscribed: set[bytes],
                 store_ready: set[bytes], waiters: set[Any], files: ObjectFiles, links: Links, writes: ObjectWriter,
                 locations: Locations, rebuild: Reconstruction, lineage: LineageGate, messages: MessageTable,
                 check_refs: Callable[[list[ObjectRef]], None], flush: Callable[[], None]) -> None:
        self.address = address
        self.relay = relay
        self._lock = lock
        self._state = state
        self._objects = table.entries
        self._tasks = tasks
        self._actors = actors
        self._subscribed = subscribed  # borrowed objects this process asked its store about
        self._store_ready = store_ready  # objects the store said it has
        self._waiters = waiters  # one Event (or PipeWaiter) per parked waiter, set by the owner's wake-up
        self._thread_state = threading.local()
        self.files = files
        self.links = links
        self.writes = writes
        self.locations = locations
        self.rebuild = rebuild
        self.lineage = lineage
        self._messages = messages  # holds the executor of a worker
        self.check_refs = check_refs
        self.flush = flush
        # Borrowed objects just found missing on a one-node cluster: their owners are asked for them at once
        # (``OBJECT_WANTED``: a value the owner holds inline goes into the store), not a second later.
        self._to_ask: list[ObjectRef] = []

    def _ready(self, ref: ObjectRef) -> bool:
        entry = self._objects.get(ref._id) if ref._owner == self.address else None
        if entry is not None:
            if entry.where is not None and entry.state == ObjectState.READY_STORE:
                return self.locations.remote_ready(ref._id, entry)
            return entry.state != ObjectState.PENDING
        if ref._id in self._store_ready:
            return True
        if self.files.exists(ref._id):
            return True
        if ref._id not in self._subscribed:
            self._subscribed.add(ref._id)
            self.links.store.send((Op.SUBSCRIBE, ref._id))
            if self.relay is not None:
                self.locations.to_locate.append(ref)  # it may be on another node: its owner says where
            else:
                self._to_ask.append(ref)  # it may be inline at its owner, which never shared it
        return False

    def _ready_anywhere(self, ref: ObjectRef) -> bool:
        """Made, whichever node holds it (``wait(fetch_local=False)``): an owned object in another
        node's store is not pulled here; a borrowed one is ready once its owner said where it is."""
        entry = self._objects.get(ref._id) if ref._owner == self.address else None
        if entry is not None and entry.where is not None and entry.state == ObjectState.READY_STORE:
            return entry.where is not CopyLost.LOST  # lost with its node: ready again once rebuilt
        return ref._id in self.locations.located or self._ready(ref)

    def wait_ready(self, refs: list[ObjectRef], count: int, deadline: float | None,
                   fetch_local: bool = True) -> list[bool]:
        """Block until ``count`` of ``refs`` are ready (``fetch_local``: in this node's store, or
        inline here; else made anywhere in the cluster) or the deadline passes."""
        ready = self._ready if fetch_local else self._ready_anywhere
        # Socket writes happen outside the lock: a reader thread needs the lock
        # to take in results, and a writer blocked on a full socket while
        # holding it would stop the very reads that unblock it.
        blocked = False
        next_ask = time.monotonic() + ASK_OWNERS_AFTER_S
        store_generation = self._state.store_generation
        event: Any = None
        plain = threading.Event()  # the waiter when no connection is read here
        readiness = _Readiness(refs, count)
        via: tuple[SharedReadConnection, Any] | None = None
        try:
            while True:
                with self._lock:
                    # Under the lock, as the wake-up's state change is: a change after this check
                    # finds the event below among the waiters.
                    if event is not None:
                        self._waiters.discard(event)
                    done = readiness.update(ready)
                    flags = readiness.flags
                    if done or self._state.closed:
                        return flags
                    remaining = None if deadline is None else deadline - time.monotonic()
                    if remaining is not None and remaining <= 0:
                        return flags
                    # Results of calls to one actor, awaited by a thread not
                    # running a task: read them off the actor's connection
                    # here, without a hand-off from its reader thread.
                    if blocked or (self._messages.executor is not None and self._state.current_task is not None):
                        via = None
                    elif via is None or via[0].closed or via[1].conn is not via[0]:
                        # Found again only when the connection changed (the actor restarted):
                        # the refs still pending are a subset of those it was found for.
                        via = self._result_connection([refs[i] for i in readiness.pending])
                    direct = via[0] if via is not None else None
                    event = self._pipe_waiter() if direct is not None else plain
                    event.clear()
                    must_flush = self._has_pending()
                    self._waiters.add(event)
                if self.locations.to_locate:
                    self.locations.send_locates()
                if self._to_ask:
                    with self._lock:
                        asking, self._to_ask = self._to_ask, []
                    self._ask_owners(asking)
                now = time.monotonic()
                if now >= next_ask or store_generation != self._state.store_generation:
                    store_generation = self._state.store_generation
                    # A long wait on someone else's object, or a store that
                    # came back empty: its copy may have died with a store.
                    # Its owner checks, and rebuilds it.
                    next_ask = now + ASK_OWNERS_AFTER_S
                    self._ask_owners([r for r, ready in zip(refs, flags) if not ready])
                if remaining is None or remaining > next_ask - now:
                    remaining = max(0.0, next_ask - now)
                if direct is not None and not must_flush:
                    self._read_directly(direct, event, remaining)
                    continue
                if not must_flush and (blocked or self._messages.executor is None or self._state.current_task is None):
                    if blocked:
                        # Tasks may still arrive for this blocked worker: hand them back.
                        event.wait(min(remaining, BLOCKED_POLL_S) if remaining is not None else BLOCKED_POLL_S)
                        self._messages.executor.drain_exec()
                    else:
                        event.wait(remaining if remaining is not None else 1.0)
                    continue
                self.flush()
                if not blocked and self._messages.executor is not None and self._state.current_task is not None:
                    blocked = True
                    self._messages.executor.on_blocked()
        finally:
            if event is not None:
                with self._lock:
                    self._waiters.discard(event)
            if blocked:
                self._messages.executor.on_unblocked()

    def _result_connection(self, refs: list[ObjectRef]) -> tuple[SharedReadConnection, Any] | None:
        """The one actor connection every pending ref among ``refs`` awaits its call's result on, with
        that actor's state; None if there is none."""
        found = None
        found_state = None
        for ref in refs:
            entry = self._objects.get(ref._id) if ref._owner == self.address else None
            if entry is None:
                return None
            if entry.state != ObjectState.PENDING:
                continue
            pt = self._tasks.get(task_of(ref._id))
            if pt is None or pt.spec.kind != TaskKind.ACTOR_CALL:
                return None
            state = self._actors.get(pt.spec.actor_id)
            conn = state.conn if state is not None else None
            if type(conn) is not SharedReadConnection or conn.closed or (found is not None and conn is not found):
                return None
            found, found_state = conn, state
        return (found, found_state) if found is not None else None

    def _pipe_waiter(self) -> PipeWaiter:
        waiter = getattr(self._thread_state, "waiter", None)
        if waiter is None:
            waiter = self._thread_state.waiter = PipeWaiter()
        return waiter

    def _read_directly(self, conn: SharedReadConnection, waiter: PipeWaiter, remaining: float) -> None:
        """Wait (``remaining`` s at most) for the actor's connection or a wake-up, reading the connection here."""
        deadline = time.monotonic() + remaining
        held = hold_sigint(waiter)
        try:
            if not conn.try_borrow(remaining):
                # Another thread reads it now: wait for a wake-up instead.
                if poll_readable(-1, waiter.r, max(0.0, deadline - time.monotonic()))[1]:
                    waiter.drain()
                return
            try:
                conn_ready, woken = poll_readable(conn.fileno(), waiter.r, max(0.0, deadline - time.monotonic()))
                if woken:
                    waiter.drain()
                if conn_ready:
                    conn.read_available()
            finally:
                conn.give_back()
        finally:
            if held:
                release_sigint()

    def _ask_owners(self, refs: list[ObjectRef]) -> None:
        for owner, oids in grouped((ref._owner, ref._id) for ref in refs if ref._owner != self.address).items():
            if self.rebuild.owner_alive(owner):
                self.links.send_to(owner, (Op.OBJECT_WANTED, oids))
                if self.relay is not None:
                    # Where it is, again: the first question (or its answer) may have been lost to the
                    # network (a connection that closed under it, an owner out of reach for a moment),
                    # and nothing else would ever ask. An owner answers a repeated question the same
                    # way, and a store pulls an object once however often it is asked to.
                    self.links.send_to(owner, (Op.LOCATE, oids, self.address))
            else:
                # Its owner is gone, and with it whatever it held in memory:
                # rebuild from the log here.
                self.rebuild.adopt(oids)

    def on_object_wanted(self, oids: list[bytes]) -> None:
        with self._lock:
            # Not held here any more and gone from the store counts too: a
            # by-value argument freed after its call, wanted again by the
            # actor's replay, comes back from its durable copy.
            lost = [oid for oid in oids if self.rebuild.lost(oid)]
            # An inline object lives on in this process: somebody wants it,
            # so publish it to the store (again, if a store died with it).
            republish = []
            for oid in oids:
                entry = self._objects.get(oid)
                if entry is not None and entry.state == ObjectState.PENDING:
                    entry.shared = True  # published when it comes (``Owner._made``): somebody else reads it
                elif entry is not None and entry.state == ObjectState.READY_INLINE and not self.files.exists(oid):
                    entry.shared = True
                    republish.append((oid, entry.data))
        for oid, data in republish:
            self.writes.publish(oid, data)
        if lost:
            # Reading the log is not for a reader thread.
            threading.Thread(target=self.rebuild.reconstruct, args=(lost,), name="ember-rebuild", daemon=True).start()

    def _has_pending(self) -> bool:
        # A closed connection has nothing to send (a store being reconnected): the wait must not spin on it.
        if self.links.scheduler.has_unsent or self.links.store.has_unsent:
            return True
        return any(s.conn is not None and s.conn.has_unsent for s in self._actors.values())

    def get(self, refs: list[ObjectRef], timeout: float | None) -> list[Any]:
        self.check_refs(refs)
        came = self._came_inline(refs)
        if came is not None:
            self.flush()  # what the caller submitted leaves before it goes on, as below
            return [self._value(r, data) for r, data in zip(refs, came)]
        deadline = None if timeout is None else time.monotonic() + timeout
        self.lineage.declare_pending(refs)
        executor = self._messages.executor
        if executor is not None and self._state.current_task is not None and executor.can_run_inline():
            self._run_own_here(refs, executor)
        self.flush()
        for rounds_left in range(RECONSTRUCTION_ROUNDS_MAX - 1, -1, -1):
            flags = self.wait_ready(refs, len(refs), deadline)
            if not all(flags):
                if self._state.closed:
                    raise ObjectLostError(refs[flags.index(False)].hex(), self._state.closed_reason or "the cluster shut down")
                missing = sum(1 for f in flags if not f)
                raise GetTimeoutError(f"get timed out after {timeout}s: {missing} of {len(refs)} object(s) not ready")
            lost = self.rebuild.lost_refs(refs)
            gone = self._forget_gone_borrowed(refs)
            if (lost or gone) and rounds_left:
                if lost:
                    self.rebuild.reconstruct(lost)
                continue
            self.lineage.await_lineage(refs)
            buffers = [self._buffer(r) for r in refs]
            if all(buffer is not None for buffer in buffers) or not rounds_left:
                return [self._value(r, buffer) for r, buffer in zip(refs, buffers)]
            # A store died between the check and the read (its files went with it): round again.
        raise AssertionError("unreachable: the last round returns or raises")

    def _came_inline(self, refs: list[ObjectRef]) -> list[bytes] | None:
        """The bytes of ``refs`` when each is owned here, came inline and rests on lineage already durable:
        a get of them waits for nothing (None: take the full path, which finds the same for these)."""
        found = []
        with self._lock:
            for ref in refs:
                entry = self._objects.get(ref._id) if ref._owner == self.address else None
                if entry is None or entry.state is not ObjectState.READY_INLINE \
                        or not self.lineage.durable_locked(ref._id, entry):
                    return None
                found.append(entry.data)
        return found

    def _run_own_here(self, refs: list[ObjectRef], executor: Any) -> None:
        """The running task waits for tasks of its own still queued at the scheduler: run them here.

        It would block and lend its CPU to a new worker to run them; instead
        the scheduler hands them back (``Op.TAKE_BACK``, those whose
        resources fit in what the task holds) and this worker runs them in
        order, nested in the wait (``Executor.run_inline``). Their lineage,
        ids, attempts and retries are those of any run; a task already
        started elsewhere, or not handed back, is waited for as before.
        """
        with self._lock:
            wanted: dict[bytes, Any] = {}
            for ref in refs:
                if ref._owner != self.address:
                    continue
                entry = self._objects.get(ref._id)
                pt = self._tasks.get(ref._id[:16])
                if (entry is not None and entry.state == ObjectState.PENDING and pt is not None
                        and pt.spec.kind == TaskKind.NORMAL and pt.spec.num_returns >= 0  # not a generator
                        and not pt.cancelled and not pt.missing):
                    wanted[pt.spec.task_id] = pt
        if not wanted:
            return
        self.flush()  # the scheduler has every submission before it is asked for them
        try:
            taken = self.links.scheduler.call(Op.TAKE_BACK, list(wanted), timeout_s=TAKE_BACK_WAIT_S)
        except (ConnectionClosed, OSError, FutureTimeout):
            return  # waited for as before
        for task_id in taken:
            executor.run_inline(wanted[task_id].spec)

    def open_ready(self, ref: ObjectRef, deadline: float | None = None) -> Any:
        """The mapped bytes of store object ``ref`` once it is ready (None: not within ``deadline``, or
        still gone after every round). A store that dies between ready and read is waited out: the
        object is rebuilt (owned here) or asked for again (borrowed), ``RECONSTRUCTION_ROUNDS_MAX`` times."""
        for _ in range(RECONSTRUCTION_ROUNDS_MAX):
            if not self.wait_ready([ref], 1, deadline)[0]:
                return None
            data = self.files.open(ref._id)
            if data is not None:
                return data
            lost = self.rebuild.lost_refs([ref])
            if lost:
                self.rebuild.reconstruct(lost)
            else:
                self._forget_gone_borrowed([ref])
        return None

    def _forget_gone_borrowed(self, refs: list[ObjectRef]) -> bool:
        """Borrowed objects said to be ready whose file is gone (their store died): wait for them again.

        Waiting again asks their owner, or adopts them if the owner is dead.
        """
        gone = False
        with self._lock:
            for ref in refs:
                if ref._owner == self.address and ref._id in self._objects:
                    continue  # owned: lost_refs and reconstruct handle it
                if not self.files.exists(ref._id):
                    self._store_ready.discard(ref._id)
                    self._subscribed.discard(ref._id)
                    gone = True
        return gone

    def _buffer(self, ref: ObjectRef) -> Any:
        """The object's bytes: inline in this process, or mapped from the store (None: its file is gone)."""
        entry = self._objects.get(ref._id) if ref._owner == self.address else None
        if entry is not None and entry.state == ObjectState.READY_INLINE:
            return entry.data
        return self.files.open(ref._id)

    def _value(self, ref: ObjectRef, buf: Any) -> Any:
        if buf is None:
            if _agent.AGENT is not None:
                _agent.AGENT.note("lost", object=ref.hex(), reason="no copy is left in the object store")
            raise ObjectLostError(ref.hex(), "no copy is left in the object store")
        kind, value = deserialize(buf)
        if kind == ObjectKind.ERROR:
            if isinstance(value, EmberTaskError):
                raise value.as_instanceof_cause()
            raise value
        return value

    def wait(
        self, refs: list[ObjectRef], num_returns: int, timeout: float | None, fetch_local: bool = True
    ) -> tuple[list[ObjectRef], list[ObjectRef]]:
        self.check_refs(refs)
        deadline = None if timeout is None else time.monotonic() + timeout
        self.flush()
        flags = self.wait_ready(refs, num_returns, deadline, fetch_local)
        # At most ``num_returns`` flags are set (``_Readiness.update``): the first ready refs in order.
        ready = list(compress(refs, flags))
        not_ready = list(compress(refs, map(not_, flags)))
        self.lineage.await_lineage(ready)
        return ready, not_ready
