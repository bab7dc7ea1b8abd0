"""The ``chaos run`` controller: hears the cluster's processes, fires the schedule, keeps the timeline.

Every ember process of the program under test connects to the controller's
Unix socket (in a private 0700 directory) with the run's token, says what it
is, and reports task starts and finishes, actor restarts, rebuilds and
objects given up on (see ``_agent``). The live connections are the list of
processes faults choose from; the events drive the ``Nemesis``.

It must never signal a process that did not say hello with the token, nor
one that is not a descendant of the program it started (checked on every
fault), and never leave a process stopped when the run ends.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from ember.chaos import _agent, _faults, _netfaults
from ember.chaos._faults import Fault, FaultKind, Injected, Outcome, Target
from ember.chaos._netfaults import Applied, NetFault
from ember.lineage._states import ProcessKind
from ember.scheduler._procutil import process_start_ticks
from ember.chaos._schedule import Nemesis, Planned, TriggerKind

HELLO_WAIT_S = 5.0
ACCEPT_BACKLOG = 128
LINE_BYTES_MAX = 1 << 20
_KINDS = frozenset(ProcessKind) - {ProcessKind.POSTGRES}  # what may say hello


@dataclass
class Member:
    """One process of the cluster under test, as it introduced itself."""

    kind: ProcessKind  # any but POSTGRES, which is restarted through a driver's report of it
    pid: int
    node_id: str
    details: dict[str, Any]
    since_s: float


@dataclass
class Tally:
    faults: Counter = field(default_factory=Counter)  # "kill worker" -> count of faults that hit
    missed: Counter = field(default_factory=Counter)  # fired with nothing to hit, by outcome
    tasks_started: int = 0
    tasks_finished: int = 0
    tasks_failed: int = 0
    task_reruns: int = 0  # starts of attempt > 0: retries and rebuilds
    rebuilds: int = 0  # tasks the owners ran again to rebuild lost objects
    copies_restored: int = 0  # puts and actor results put back from their durable copies
    actors_restarted: int = 0
    calls_replayed: int = 0
    objects_lost: int = 0
    processes_started: Counter = field(default_factory=Counter)

    def faults_text(self, separator: str) -> str:
        """Faults that hit, by kind: ``kill store 2<separator>kill worker 1``."""
        return separator.join(f"{label} {n}" for label, n in sorted(self.faults.items()))

    def to_json(self) -> dict[str, Any]:
        out = dict(self.__dict__)
        for key in ("faults", "missed", "processes_started"):
            out[key] = dict(sorted(out[key].items()))
        return out


class Controller:
    def __init__(self, planned: list[Planned], duration_s: float, faults_max: int | None = None,
                 clock: Any = time.monotonic) -> None:
        self.nemesis = Nemesis(planned, duration_s, faults_max)
        self.tally = Tally()
        self.timeline: list[dict[str, Any]] = []
        self.lost: list[dict[str, Any]] = []
        self._clock = clock
        self._t0 = clock()
        self._token = secrets.token_hex(16)
        self._dir = Path(tempfile.mkdtemp(prefix="ember-chaos-"))
        os.chmod(self._dir, 0o700)
        self._path = self._dir / "controller.sock"
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind(str(self._path))
        self._listener.listen(ACCEPT_BACKLOG)
        self._lock = threading.RLock()  # events, the nemesis and the tally
        self._fire_lock = threading.Lock()  # one fault at a time, in trigger order
        self._members: dict[int, Member] = {}
        self._net_lock = threading.Lock()  # the network faults in place, and their heal timers
        self._net_applied: dict[int, tuple[Applied, threading.Timer]] = {}
        self._net_ids = 0
        self._program_pid: int | None = None
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._threads = [threading.Thread(target=self._accept_loop, name="chaos-accept", daemon=True),
                         threading.Thread(target=self._clock_loop, name="chaos-clock", daemon=True)]

    # -- the run -------------------------------------------------------------------

    def environment(self) -> dict[str, str]:
        """What the program's environment needs so its cluster reports here."""
        return {_agent.SOCKET_ENV: str(self._path), _agent.TOKEN_ENV: self._token}

    def start(self, program_pid: int) -> None:
        self._program_pid = program_pid
        self._t0 = self._clock()
        for thread in self._threads:
            thread.start()

    def elapsed_s(self) -> float:
        return self._clock() - self._t0

    def stop(self) -> None:
        """Stop firing, resume anything paused, heal every network fault, close the socket."""
        self._stop.set()
        self._wake.set()
        with self._fire_lock:
            _faults.resume_all()
            self._heal_all()
        try:
            self._listener.close()
        finally:
            shutil.rmtree(self._dir, ignore_errors=True)

    def snapshot(self) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """The timeline and the tally so far, copied under the lock the event threads write them under."""
        with self._lock:
            return list(self.timeline), self.tally.to_json()

    def members(self) -> list[Member]:
        with self._lock:
            return sorted(self._members.values(), key=lambda m: (m.kind, m.pid))

    def _record(self, what: str, **details: Any) -> None:
        self.timeline.append({"t_s": round(self.elapsed_s(), 4), "what": what, **details})

    # -- connections ------------------------------------------------------------------

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), name="chaos-member", daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        member: Member | None = None
        try:
            conn.settimeout(HELLO_WAIT_S)
            stream = conn.makefile("rb")
            member = self._hello(conn, stream.readline(LINE_BYTES_MAX))
            if member is None:
                return
            conn.settimeout(None)
            for line in stream:
                self._on_event(conn, member, json.loads(line))
        except (OSError, ValueError):
            pass
        finally:
            conn.close()
            if member is not None:
                with self._lock:
                    self._members.pop(member.pid, None)
                    self._record("process_gone", kind=member.kind, pid=member.pid)

    def _hello(self, conn: socket.socket, line: bytes) -> Member | None:
        msg = json.loads(line or b"{}")
        if not secrets.compare_digest(str(msg.get("token", "")), self._token) or "hello" not in msg:
            conn.sendall(b'{"refused": "wrong chaos token"}\n')
            return None
        if not isinstance(msg["hello"], str) or msg["hello"] not in _KINDS:
            conn.sendall(json.dumps({"refused": f"{msg['hello']!r:.40} is not a process kind"}).encode() + b"\n")
            return None
        details = {k: v for k, v in msg.items() if k not in ("hello", "token", "pid", "node_id")}
        member = Member(ProcessKind(msg["hello"]), int(msg["pid"]), str(msg.get("node_id", "")), details,
                        self.elapsed_s())
        with self._lock:
            self._members[member.pid] = member
            self.tally.processes_started[member.kind] += 1
            self._record("process_up", kind=member.kind, pid=member.pid, **details)
            watch = sorted(self.nemesis.watched_functions)
        conn.sendall(json.dumps({"watch": watch}).encode() + b"\n")
        return member

    def _on_event(self, conn: socket.socket, member: Member, msg: dict[str, Any]) -> None:
        event = msg.get("ev")
        due: list[Planned] = []
        with self._lock:
            tally = self.tally
            if event == "start":
                tally.tasks_started += 1
                tally.task_reruns += msg.get("attempt", 0) > 0
                if msg.get("answer"):
                    due = self.nemesis.on_start(msg["fn"], self.elapsed_s())
            elif event == "finish":
                tally.tasks_finished += 1
                tally.tasks_failed += bool(msg.get("failed"))
                due = self.nemesis.on_finish(self.elapsed_s())
            elif event == "rebuild":
                tally.rebuilds += msg.get("tasks", 0)
                tally.copies_restored += msg.get("copies", 0)
            elif event == "actor_restarted":
                tally.actors_restarted += 1
                tally.calls_replayed += msg.get("replayed", 0)
                self._record("actor_restarted", pid=member.pid, actor=msg.get("actor"), replayed=msg.get("replayed"))
            elif event == "lost":
                tally.objects_lost += 1
                entry = {"pid": member.pid, "object": msg.get("object"), "reason": msg.get("reason")}
                self.lost.append(entry)
                self._record("object_lost", **entry)
        for planned in due:
            self._fire(planned, source=member)
        if msg.get("answer"):
            try:
                conn.sendall(b"{}\n")
            except OSError:
                pass  # the fault took the asker with it

    def _clock_loop(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                next_at = self.nemesis.next_at_s()
            timeout = None if next_at is None else max(0.0, next_at - self.elapsed_s())
            if timeout is None or timeout > 0:
                self._wake.wait(timeout)
                self._wake.clear()
                continue
            with self._lock:
                due = self.nemesis.on_clock(self.elapsed_s())
            for planned in due:
                self._fire(planned)

    # -- faults -----------------------------------------------------------------------

    def _fire(self, planned: Planned, source: Member | None = None) -> None:
        if isinstance(planned.fault, NetFault):
            self._fire_net(planned, planned.fault)
            return
        fault = planned.fault
        with self._fire_lock:
            if self._stop.is_set():
                return
            started = time.monotonic()
            at_s = time.time()
            if fault.kind is FaultKind.RESTART_POSTGRES:
                outcome, pid, detail = self._restart_postgres()
            else:
                outcome, pid, detail = self._signal(fault, source if planned.trigger.kind is TriggerKind.ON_START
                                                    else None)
            injected = Injected(fault, at_s, time.monotonic() - started, outcome, pid, detail)
        with self._lock:
            label = f"{fault.kind} {fault.target}" if fault.kind is not FaultKind.RESTART_POSTGRES else str(fault.kind)
            if outcome is Outcome.HIT:
                self.tally.faults[label] += 1
            else:
                self.tally.missed[str(outcome)] += 1
            self._record("fault", trigger=planned.trigger.to_json(), **injected.to_json())

    def _signal(self, fault: Fault, source: Member | None) -> tuple[Outcome, int | None, str]:
        with self._lock:
            if source is not None and fault.target is Target.WORKER and source.kind is ProcessKind.WORKER:
                candidates = [source.pid]  # the worker that is about to run the watched task
            elif fault.target is Target.NODE:
                # Never the head (its GCS service is the cluster's) nor a node a driver runs on.
                spared = {m.node_id for m in self._members.values() if m.kind is ProcessKind.DRIVER}
                candidates = sorted(m.pid for m in self._members.values() if m.kind is ProcessKind.NODE
                                    and not m.details.get("head") and m.node_id not in spared)
            else:
                candidates = sorted(m.pid for m in self._members.values() if m.kind is fault.target)
        candidates = [pid for pid in candidates if self._is_ours(pid)]
        if not candidates:
            return Outcome.NO_PROCESS, None, f"no live {fault.target} has reported"
        pid = candidates[fault.pick % len(candidates)]
        return _faults.signal_pid(fault, pid), pid, f"{len(candidates)} live"

    def _is_ours(self, pid: int) -> bool:
        """A process of the program this controller started: never anything else.

        A descendant of it, or a process that said hello with this run's token
        and is still the process that did (same start time): a node daemon the
        program started detaches from it, and is its all the same.
        """
        try:
            if any(parent.pid == self._program_pid for parent in psutil.Process(pid).parents()):
                return True
        except psutil.Error:
            return False
        with self._lock:
            member = self._members.get(pid)
        ticks = member.details.get("start_ticks") if member is not None else None
        return ticks is not None and ticks == process_start_ticks(pid)

    # -- network faults ------------------------------------------------------------------

    def _fire_net(self, planned: Planned, fault: NetFault) -> None:
        """Put ``fault`` on a node in a namespace, and heal it ``fault.duration_s`` later (or at ``stop``)."""
        with self._fire_lock:
            if self._stop.is_set():
                return
            started = time.monotonic()
            at_s, t_s = time.time(), self.elapsed_s()
            outcome, pid, detail, applied = self._apply_net(fault)
            entry = {"what": "fault", "trigger": planned.trigger.to_json(), "fault": fault.to_json(), "at_s": at_s,
                     "took_s": time.monotonic() - started, "outcome": str(outcome), "pid": pid, "detail": detail}
            if applied is not None:
                entry["until_s"] = round(t_s + fault.duration_s, 4)  # planned; the heal's own entry says when
                self._net_ids += 1
                net_id = entry["net_id"] = self._net_ids
                timer = threading.Timer(fault.duration_s, self._heal, args=(net_id,))
                timer.name, timer.daemon = f"chaos-heal-{net_id}", True
                with self._net_lock:
                    self._net_applied[net_id] = (applied, timer)
                timer.start()
        with self._lock:
            if outcome is Outcome.HIT:
                self.tally.faults[fault.label()] += 1
            else:
                self.tally.missed[str(outcome)] += 1
            self.timeline.append({"t_s": round(t_s, 4), **entry})

    def _apply_net(self, fault: NetFault) -> tuple[Outcome, int | None, str, Applied | None]:
        with self._lock:
            nodes = sorted((m for m in self._members.values() if m.kind is ProcessKind.NODE
                            and isinstance(m.details.get("net"), dict) and not m.details.get("head")),
                           key=lambda m: _role_order(m.details["net"]["role"]))
        nodes = [m for m in nodes if self._is_ours(m.pid)]
        if not nodes:
            return Outcome.NO_PROCESS, None, "no node in a network namespace has reported " \
                "(network faults need LocalCluster(network=True))", None
        victim = nodes[fault.pick % len(nodes)]
        net = victim.details["net"]
        others = [m.details["net"]["address"] for m in nodes if m is not victim]
        try:
            peer = _netfaults.peer_address(fault, net, others)
        except _faults.InvalidFaultError as exc:
            return Outcome.NO_PROCESS, None, str(exc), None
        inside = ["/usr/bin/nsenter", "--target", str(victim.pid), "--net"]
        try:
            applied = _netfaults.apply(fault, inside, peer)
        except _netfaults.NetworkCommandError as exc:
            return Outcome.GONE, victim.pid, f"not applied: {exc}", None
        return Outcome.HIT, victim.pid, f"node {net['role']} ({net['address']}): {applied.detail}", applied

    def _heal(self, net_id: int) -> None:
        with self._net_lock:
            found = self._net_applied.pop(net_id, None)
        if found is None:
            return
        applied, timer = found
        timer.cancel()
        _netfaults.heal(applied)
        with self._lock:
            self._record("fault_healed", net_id=net_id, fault=applied.fault.to_json(), label=applied.fault.label())

    def _heal_all(self) -> None:
        with self._net_lock:
            ids = sorted(self._net_applied)
        for net_id in ids:
            self._heal(net_id)

    def _restart_postgres(self) -> tuple[Outcome, int | None, str]:
        with self._lock:
            homes = {m.details.get("pg_home") for m in self._members.values() if m.kind is ProcessKind.DRIVER}
        homes.discard(None)
        if not homes:
            return Outcome.NO_PROCESS, None, "no driver reported an embedded PostgreSQL (EMBER_GCS_URL is not restarted)"
        from ember.lineage import EmbeddedPostgres

        server = EmbeddedPostgres(Path(sorted(homes)[0]))
        old_pid = server.server_pid()
        try:
            server.restart()
        except Exception as exc:  # noqa: BLE001 - a failed restart is part of the timeline, not a crash
            return Outcome.GONE, old_pid, f"restart failed: {exc}"
        return Outcome.HIT, old_pid, f"new server pid {server.server_pid()}"


def _role_order(role: str) -> tuple[int, str]:
    """Nodes in the order their cluster made them: n0, n1, ..., n10 (a stable pick, run after run)."""
    return (int(role[1:]), role) if role[1:].isdigit() else (1 << 30, role)
