"""A node's link to the GCS service: registration, heartbeats, process events.

Runs on its own thread in the scheduler, so a slow or restarting GCS never
stalls scheduling. Events (a process started, a process died and why) queue
here until a heartbeat carrying them is acknowledged, which the GCS does only
after committing them: a GCS killed mid-call loses nothing, the events are
sent again to its replacement (the writes are idempotent).
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from typing import Any

from ember.lineage._states import ProcessKind

log = logging.getLogger("ember.scheduler")

HEARTBEAT_S = 0.2


def process_id(node_id: str, pid: int) -> bytes:
    """The id of a node's long-lived process in the log, computable by anyone who knows its pid."""
    import hashlib

    return hashlib.blake2b(f"{node_id}:{pid}".encode(), digest_size=16).digest()
EVENTS_PER_CALL = 500
JOBS_GONE_MAX = 10_000  # drivers gone not yet reported to the GCS, at most
# The goodbye's bound. A service that is slow at that moment (its PostgreSQL just restarted, the
# machine loaded) must still record the node's end: 1 s lost it in a fresh-check run.
UNREGISTER_TIMEOUT_S = 3.0


class GcsLink:
    def __init__(self, address: str, token: bytes, node_id: str, node_address: str,
                 resources: dict[str, float], available: Any = None, queued: Any = None,
                 transfer: str | None = None, on_view: Any = None, bundles: Any = None,
                 on_bundles: Any = None, on_answer: Any = None) -> None:
        self.node_id = node_id
        # ([process id hex]) -> None: the GCS answered a registration or a heartbeat, naming the actor
        # processes of this node that a later instance of their actor replaced (the fence): the node kills
        # them, then lets its actors' held calls run (the lease, scheduler/_actor_lease.py).
        self._on_answer = on_answer
        # () -> {"held", "refused", "awaiting"}: the placement group bundles this node holds, for each heartbeat;
        # ({key: {"resources", "phase"}}, [gone group ids]) -> bool: the GCS's answer, True if it changed something.
        self._bundles = bundles
        self._on_bundles = on_bundles
        self._on_view = on_view  # ({node_id: {"total", "available"}}) -> None: the other nodes, per heartbeat
        self._available = available  # () -> the node's free resources now, sent with each heartbeat
        self._queued = queued  # () -> how many tasks wait in the node's queues, for the global scheduler
        self._transfer = transfer  # where the node's store serves objects to other nodes
        self._address = address
        self._token = token
        self._node_address = node_address
        self._resources = resources
        self._events: deque[dict[str, Any]] = deque()
        self._jobs_gone: deque[str] = deque()  # jobs whose driver left, to tell the GCS (hex)
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._client: Any = None
        self.registered = False
        self.restarted = False  # this node's scheduler replaces one that died: its workers died too
        # The processes this scheduler started that live, named in each registration: one sent again
        # (its answer lost) must not end them in the log with a dead scheduler's, and a node presumed
        # dead that comes back has them open again.
        self._own: set[str] = set()
        # Of those, the actors' processes: process id -> [actor id (hex), the instance's generation].
        self._own_actors: dict[str, list] = {}
        self.gcs_pid: int | None = None

    def start(self) -> None:
        threading.Thread(target=self._run, name="ember-gcs-link", daemon=True).start()

    def started(self, process_id: bytes, kind: ProcessKind, pid: int, actor_id: bytes | None = None,
                generation: int = 0) -> None:
        """A process of this node started; an actor's carries its instance's generation (the fence's)."""
        with self._lock:
            self._own.add(process_id.hex())
            if actor_id:
                self._own_actors[process_id.hex()] = [actor_id.hex(), generation]
        event = {"type": "started", "process_id": process_id.hex(), "kind": kind, "pid": pid,
                 "actor_id": actor_id.hex() if actor_id else None}
        if actor_id:
            event["generation"] = generation
        self._push(event)

    def died(self, process_id: bytes, cause: str) -> None:
        with self._lock:
            self._own.discard(process_id.hex())
            self._own_actors.pop(process_id.hex(), None)
        self._push({"type": "died", "process_id": process_id.hex(), "cause": cause})

    def creator_gone(self, job_id: bytes) -> None:
        """A driver of this node left for good: the GCS removes its job's placement groups (not detached)."""
        with self._lock:
            if len(self._jobs_gone) < JOBS_GONE_MAX:
                self._jobs_gone.append(job_id.hex())
        self._wake.set()

    def _report_jobs_gone(self) -> None:
        """Tell the GCS of the drivers gone (on the link's thread; kept until it has heard)."""
        from ember.lineage._rpc import GcsRefused

        while self._jobs_gone:
            job_hex = self._jobs_gone[0]
            try:
                self._client.try_call("CreatorGone", {"job_id": job_hex})
            except GcsRefused as exc:
                log.error("the GCS service refused the end of job %s: %s", job_hex, exc)
            with self._lock:
                self._jobs_gone.popleft()

    def _push(self, event: dict[str, Any]) -> None:
        with self._lock:
            self._events.append(event)
        self._wake.set()

    def _pending(self) -> list[dict[str, Any]]:
        with self._lock:
            return [self._events[i] for i in range(min(EVENTS_PER_CALL, len(self._events)))]

    def _acknowledged(self, count: int) -> None:
        with self._lock:
            for _ in range(count):
                self._events.popleft()

    def _run(self) -> None:
        from ember.lineage._rpc import GcsClient, GcsRefused, GcsUnreachable

        self._client = GcsClient(self._address, self._token)
        while not self._stop.is_set():
            events = self._pending()
            try:
                if not self.registered:
                    with self._lock:
                        own, own_actors = sorted(self._own), dict(self._own_actors)
                    request = {"node_id": self.node_id, "address": self._node_address,
                               "resources": self._resources, "events": events, "restarted": self.restarted,
                               "own": own, "own_actors": own_actors}
                    if self._transfer:
                        request["transfer"] = self._transfer
                    reply = self._client.try_call("Register", request)
                    self.registered, self.gcs_pid = True, reply.get("gcs_pid")
                    # Recorded: registering again (after the service restarts) must not end this
                    # scheduler's live workers in the log a second time.
                    self.restarted = False
                    self._acknowledged(len(events))
                    self._answered(reply)
                else:
                    beat: dict[str, Any] = {"node_id": self.node_id, "events": events}
                    if self._available is not None:
                        beat["available"] = self._available()
                    if self._queued is not None:
                        beat["queued"] = self._queued()
                    if self._bundles is not None:
                        report = self._bundles()
                        beat["bundles"], beat["refused"] = report["held"], report["refused"]
                        beat["awaiting"] = report["awaiting"]
                    self._report_jobs_gone()
                    reply = self._client.try_call("Heartbeat", beat)
                    if reply.get("known"):
                        self._acknowledged(len(events))
                        self._answered(reply)
                        if self._on_view is not None and isinstance(reply.get("view"), dict):
                            self._on_view(reply["view"])
                        if (self._on_bundles is not None and isinstance(reply.get("bundles"), dict)
                                and self._on_bundles(reply["bundles"], reply.get("gone") or [])):
                            continue  # a bundle prepared, committed or released: say so at once
                    else:
                        self.registered = False
                        continue
            except GcsRefused as exc:
                # The service took the call apart and refused it: the events it
                # carried would be refused forever, and with them every heartbeat.
                log.error("the GCS service refused %d event(s) of this node, dropped: %s %r", len(events), exc,
                          events[:3])
                self._acknowledged(len(events))
            except (GcsUnreachable, PermissionError) as exc:
                log.info("GCS heartbeat failed: %s", exc)
                self.registered = False
            self._wake.wait(HEARTBEAT_S)
            self._wake.clear()

    def _answered(self, reply: dict[str, Any]) -> None:
        if self._on_answer is None:
            return
        stale = reply.get("stale")
        mine: list[str] = []
        if stale and isinstance(stale, list):
            with self._lock:
                mine = [p for p in stale if p in self._own_actors]
            if mine:
                log.warning("the GCS fenced %d actor process(es) of this node: their actors run elsewhere now",
                            len(mine))
        self._on_answer(mine)

    def stop(self, cause: str) -> None:
        """Say goodbye (bounded): the node's end and its last events get recorded."""
        self._stop.set()
        self._wake.set()
        if self._client is None:
            return
        from ember.lineage._rpc import GcsUnreachable

        try:
            self._client.try_call("Unregister", {"node_id": self.node_id, "cause": cause,
                                                 "events": self._pending()}, timeout_s=UNREGISTER_TIMEOUT_S)
        except (GcsUnreachable, PermissionError) as exc:
            log.warning("could not record the node's end with the GCS: %s", exc)
