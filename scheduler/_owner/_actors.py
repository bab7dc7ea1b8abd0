"""Actor calls from the caller's side: one queue per actor, a connection of its own.

Calls leave in submission order; a call whose arguments are not ready holds
back the ones after it. When the actor's connection breaks, the scheduler is
asked what became of the actor, and pending calls fail with its reason.

``ActorCalls`` is a part of the owner: it holds each actor's call state
(shared with the owner's waiting and durability parts, under the owner's
lock). It must never do blocking socket I/O while holding that lock.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from typing import Any

from ember.lineage._states import ProcessKind
from ember.scheduler._infeasible import actor_died_error
from ember.scheduler._listener import connect
from ember.scheduler._owner._links import PEER_CONNECT_TIMEOUT_S, Links
from ember.scheduler._owner._submit import SpecEncoder
from ember.scheduler._owner._tasks import PendingTask
from ember.scheduler._protocol import Connection, Op
from ember.scheduler._shared_read import SharedReadConnection
from ember.scheduler._spec import TaskSpec

__all__ = ["FATE_RETRY_S", "ActorCalls"]

# A live actor this process could not reconnect to (the network to its node cut for a moment) is asked
# about again this often, while calls wait for it: nothing else would make this process try again.
FATE_RETRY_S = 1.0



class _ActorState:
    __slots__ = ("actor_id", "address", "conn", "queue", "inflight", "dead_reason", "seq", "subscribed", "desc",
                 "restarts", "unconfirmed")

    def __init__(self, actor_id: bytes, desc: str) -> None:
        self.actor_id = actor_id
        self.address: str | None = None
        self.conn: Connection | None = None
        self.queue: deque[PendingTask] = deque()
        self.inflight: dict[bytes, PendingTask] = {}
        self.dead_reason: str | None = None
        self.seq = 0
        self.subscribed = False
        self.desc = desc
        self.restarts = 0  # restarts so far, as the scheduler reports them (the creator's budget)
        # Calls whose results arrived before the actor's row of their place in
        # its order was durable, as (place, spec): logged here if the actor
        # restarts or a ref to their result leaves, dropped once the actor
        # says its rows are durable.
        self.unconfirmed: deque[tuple[int, Any]] = deque()


class ActorCalls:
    """The calls this process makes to actors: their order, their connections, and each actor's fate."""

    def __init__(self, kind: ProcessKind, lock: Any, actors: dict[bytes, _ActorState],
                 created_actors: dict[bytes, tuple[TaskSpec, tuple]], links: Links, specs: SpecEncoder,
                 fail: Callable[[PendingTask, BaseException], None], handle: Callable[[Connection, tuple], None],
                 on_peer_closed: Callable[[Connection], None], send_follow_ups: Callable[[], None],
                 wake: Callable[[], None], is_closed: Callable[[], bool]) -> None:
        self._kind = kind
        self._lock = lock
        self._actors = actors  # actor id -> its call state
        self._created_actors = created_actors  # actor id -> (creation spec, extra): to start it again
        self._links = links
        self._specs = specs
        self._fail = fail  # the owner finishes a call with an error
        self._handle = handle
        self._on_peer_closed = on_peer_closed
        self._send_follow_ups = send_follow_ups
        self._wake = wake  # wake the waiters (outside the lock)
        self._is_closed = is_closed

    def state_of(self, actor_id: bytes, desc: str) -> _ActorState:
        state = self._actors.get(actor_id)
        if state is None:
            state = _ActorState(actor_id, desc)
            self._actors[actor_id] = state
        if not state.subscribed:
            state.subscribed = True
            self._links.scheduler.send((Op.LOOKUP_ACTOR, 0, actor_id))
        return state

    def pump(self, state: _ActorState) -> None:
        conn = state.conn
        if conn is None or conn.closed:
            return
        while state.queue and state.queue[0].missing == 0:
            pt = state.queue.popleft()
            if pt.cancelled:
                continue
            state.seq += 1
            pt.spec.seq = state.seq
            try:
                must_log = self._specs.encode_spec(pt)
            except BaseException as exc:
                self._fail(pt, exc)
                continue
            state.inflight[pt.spec.task_id] = pt
            conn.send((Op.ACTOR_CALL, pt.spec))
            if must_log:
                self._specs.log_spec(pt)

    def on_actor_state(self, actor_id: bytes, alive: bool, address: str | None, reason: str | None,
                        restarting: bool = False, restarts: int = 0) -> None:
        with self._lock:
            state = self._actors.get(actor_id)
            if state is None:
                return
            state.restarts = max(state.restarts, restarts)
            if restarting:
                self._requeue_inflight(state)
                return
            if alive and address:
                if state.address != address or state.conn is None or state.conn.closed:
                    # The same live process, whose connection broke (a network cut ends it at one end
                    # first): what was in flight may never have arrived, or its results not come back.
                    same = state.address == address and state.conn is None
                    if state.address is not None and state.address != address:
                        # Alive in another process, its restart unheard (a node that fenced the old one
                        # relays only where it lives now): what was sent to the old one goes again.
                        self._requeue_inflight(state)
                    state.address = address
                    try:
                        # A connection of its own: nothing else may queue behind calls.
                        state.conn = connect(
                            address, self._links.token, {**self._links.hello, "purpose": "actor-call"},
                            self._handle, self._on_peer_closed, f"actor:{address}",
                            timeout_s=PEER_CONNECT_TIMEOUT_S, connection_class=SharedReadConnection,
                        )
                        state.conn.batch_end = self._send_follow_ups
                        state.conn.peer = {"address": address}  # where its results are (_node_of)
                        if same:
                            self._send_inflight_again(state)
                    except Exception:
                        # Its process just died (the scheduler's next word on it, restarting or dead, is
                        # on its way), or the network to it is cut for now: asked again in a while.
                        state.conn = None
                        self._ask_fate_later(state)
                        return
                self.pump(state)
                return
            state.dead_reason = reason or "its process died"
            pending = list(state.queue)
            state.queue.clear()
            if state.conn is None or state.conn.closed:
                pending += state.inflight.values()
                state.inflight.clear()
            # Else the calls in flight fail when its connection closes (``fail_inflight``), after the
            # results it sent before its end are read: an actor that ended itself answered those.
            error = actor_died_error(state.desc, state.dead_reason)
            for pt in pending:
                self._fail(pt, error)

    def fail_inflight(self, state: _ActorState) -> None:
        """The connection of a dead actor closed: the calls it did not answer fail (under the lock)."""
        assert state.dead_reason is not None
        pending = list(state.inflight.values())
        state.inflight.clear()
        error = actor_died_error(state.desc, state.dead_reason)
        for pt in pending:
            self._fail(pt, error)

    def _send_inflight_again(self, state: _ActorState) -> None:
        """Send the calls in flight again, in their order, first, on the actor's new connection: it answers
        those it ran with the outcome it had (``_ran_calls.py``) and runs the others."""
        for pt in sorted(state.inflight.values(), key=lambda pt: pt.spec.seq):
            state.conn.send((Op.ACTOR_CALL, pt.spec))  # type: ignore[union-attr]

    def _requeue_inflight(self, state: _ActorState) -> None:
        """The actor restarts: calls sent to its old process go again, first, in their order.

        The new process answers those its replay already ran with their
        replayed results; the others run (or fail, past ``max_task_retries``).
        """
        if state.conn is not None:
            state.conn = None
        inflight = sorted(state.inflight.values(), key=lambda pt: pt.spec.seq)
        state.inflight.clear()
        for pt in reversed(inflight):
            pt.spec.attempt += 1
            state.queue.appendleft(pt)

    def recreate_actors(self, conn: Connection) -> None:
        """A new scheduler replaced one that died with every actor's process: bring back ours.

        Actors this process created that have restarts left are created again
        on ``conn`` (constructor, then their logged calls replayed); calls in
        flight go again once they are up. The others fail, naming why.
        """
        reason = "its node's scheduler died, and the actor's process with it"
        for actor_id, (spec, extra) in list(self._created_actors.items()):
            state = self._actors.get(actor_id)
            if state is None or state.dead_reason is not None:
                continue
            if state.restarts >= spec.max_retries:
                self.on_actor_state(actor_id, False, None,
                                     f"{reason}, and it is out of restarts (max_restarts={spec.max_retries})")
                continue
            state.restarts += 1
            self._requeue_inflight(state)
            state.subscribed = False
            conn.send((Op.CREATE_ACTOR, spec, *extra, state.restarts))
            conn.send((Op.LOOKUP_ACTOR, 0, actor_id))
            state.subscribed = True
        for state in list(self._actors.values()):
            if state.dead_reason is None and state.actor_id not in self._created_actors:
                # Created elsewhere: its creator (a worker of the dead scheduler) is gone too.
                self.on_actor_state(state.actor_id, False, None, reason)

    def kill_actor(self, actor_id: bytes, no_restart: bool) -> None:
        """Kill an actor; calls from this process fail from now on, whatever is in flight.

        With ``no_restart`` False the actor restarts while its restarts last: calls in flight go
        again as after any crash (``max_task_retries``), and the scheduler says if it is dead instead.
        """
        self._links.scheduler.send_now((Op.KILL_ACTOR, actor_id, no_restart))
        if not no_restart:
            return
        self._created_actors.pop(actor_id, None)
        with self._lock:
            if actor_id in self._actors:
                self.on_actor_state(actor_id, False, None, "killed by ember.kill()")
        self._wake()

    def _ask_fate_later(self, state: _ActorState) -> None:
        """Ask the actor's state again in ``FATE_RETRY_S``, while calls wait for it and it has no connection."""
        def again() -> None:
            with self._lock:
                waiting = state.conn is None and state.dead_reason is None and bool(state.inflight or state.queue)
            if waiting and not self._is_closed():
                self.ask_fate(state)

        timer = threading.Timer(FATE_RETRY_S, again)
        timer.daemon = True
        timer.start()

    def ask_fate(self, state: _ActorState) -> None:
        # The actor's connection broke: the scheduler knows why.
        if self._links.scheduler.closed:
            if not self._is_closed() and self._kind == ProcessKind.DRIVER and state.actor_id in self._created_actors:
                return  # the new scheduler starts it again (recreate_actors)
            reason = ("the cluster is shutting down" if self._is_closed()
                      else "its node's scheduler died, and the actor's process with it")
            self.on_actor_state(state.actor_id, False, None, reason)
            return
        self._links.scheduler.send((Op.LOOKUP_ACTOR, 0, state.actor_id))
