"""Fault primitives: one named fault applied to the connected cluster, and a record of what it hit.

Property tests, ``chaos run`` and nemesis schedules are built from ``Fault``
values (plain data that round-trips through JSON, so a failing schedule can
be written to a report and replayed) and ``inject``, whose ``Injected``
records make the run's timeline.

It must never signal a pid that ``ember.chaos.processes()`` does not list for
the connected cluster (nothing is ever found by name), never leave a process
stopped once ``resume_all()`` has run or the interpreter exits, and never
restart a PostgreSQL server that is not ember's embedded one.

Faults it injects, and what must recover (DESIGN.md section 3):

- kill worker: its task is retried, its actor restarted with its state;
- kill store: its objects are rebuilt from lineage, large puts from their copy;
- kill scheduler: a new one starts; owners resubmit, actors come back and replay;
- kill gcs: the service restarts from PostgreSQL; tasks never wait for it;
- kill node (a node of a multi-node cluster other than the head and the
  caller's own): its daemon, and with it every process of the node; its
  tasks run elsewhere, its objects are rebuilt, its actors restart elsewhere;
- pause (SIGSTOP, SIGCONT ``pause_s`` later) of any of those but a node: work resumes,
  and no failure detector turns the stall into lost work;
- restart_postgres: every connection drops; log writers reconnect and
  nothing committed is lost.

A pid may in principle be reused between listing and signalling; the window
is one round trip to the scheduler, and the record names the pid hit.
"""

from __future__ import annotations

import atexit
import enum
import os
import signal
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, assert_never

from ember.chaos._processes import processes
from ember.lineage._states import ProcessKind
from ember.exceptions import ClusterUnavailableError, EmberUserError
from ember.scheduler import require_core

PAUSE_MAX_S = 60.0  # longer stalls are outages, not pauses: kill instead
LIST_TIMEOUT_S = 5.0  # a paused scheduler answers once resumed; a dead one not at all


class FaultKind(enum.StrEnum):
    KILL = "kill"
    PAUSE = "pause"
    RESTART_POSTGRES = "restart_postgres"


# What a fault hits is a kind of process: WORKER (task workers and actors' processes alike),
# FORK_SERVER (a node's fork server: workers start without it for a moment), STORE, SCHEDULER, GCS,
# NODE (a whole node of a multi-node cluster: its daemon; the rest dies with it) or POSTGRES. Never the
# DRIVER: it is the program under test.
Target = ProcessKind

PROCESS_TARGETS = (Target.WORKER, Target.FORK_SERVER, Target.STORE, Target.SCHEDULER, Target.GCS, Target.NODE)  # kill and pause
PAUSE_TARGETS = tuple(t for t in PROCESS_TARGETS if t is not Target.NODE)


class Outcome(enum.StrEnum):
    HIT = "hit"
    NO_PROCESS = "no_process"  # none of that kind was live (one may be restarting)
    CLUSTER_UNAVAILABLE = "cluster_unavailable"  # the process list could not be read in time
    GONE = "gone"  # the chosen pid exited between listing and signalling


class InvalidFaultError(EmberUserError, ValueError):
    """A fault is malformed: an unknown kind or target, or options that do not go together."""


class PostgresNotRestartableError(EmberUserError):
    """The cluster's lineage log is not on a PostgreSQL server ember started, so chaos may not restart it."""


@dataclass(frozen=True)
class Fault:
    """What to do to which kind of process; ``pick`` chooses among several, by pid order."""

    kind: FaultKind
    target: Target
    pick: int = 0
    pause_s: float = 0.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "kind", _member(FaultKind, "kind", self.kind))
        object.__setattr__(self, "target", _member(Target, "target", self.target))
        _check_combination(self)

    @classmethod
    def kill(cls, target: Target | str, pick: int = 0) -> Fault:
        return cls(FaultKind.KILL, _member(Target, "target", target), pick)

    @classmethod
    def pause(cls, target: Target | str, pause_s: float, pick: int = 0) -> Fault:
        return cls(FaultKind.PAUSE, _member(Target, "target", target), pick, pause_s)

    @classmethod
    def restart_postgres(cls) -> Fault:
        return cls(FaultKind.RESTART_POSTGRES, Target.POSTGRES)

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict, for reports a schedule can be read back from."""
        return {"kind": str(self.kind), "target": str(self.target), "pick": self.pick, "pause_s": self.pause_s}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Fault:
        if not isinstance(data, Mapping):
            raise InvalidFaultError(f"Expected a mapping for a fault but got {data!r} (type={type(data).__name__})")
        unknown = set(data) - {"kind", "target", "pick", "pause_s"}
        if unknown or "kind" not in data or "target" not in data:
            raise InvalidFaultError(
                f"a fault needs 'kind' and 'target' (and may have 'pick', 'pause_s'); got keys {sorted(data)}")
        return cls(data["kind"], data["target"], data.get("pick", 0), data.get("pause_s", 0.0))

    def __repr__(self) -> str:
        # Valid Python, so a falsifying example or a report can be pasted back as code.
        match self.kind:
            case FaultKind.KILL:
                return f"Fault.kill({str(self.target)!r}, pick={self.pick})"
            case FaultKind.PAUSE:
                return f"Fault.pause({str(self.target)!r}, {self.pause_s!r}, pick={self.pick})"
            case FaultKind.RESTART_POSTGRES:
                return "Fault.restart_postgres()"
            case _ as unreachable:
                assert_never(unreachable)

    def __reduce__(self) -> tuple:
        # Checked again when unpickled: a Target member travels as its plain string.
        return (Fault, (str(self.kind), str(self.target), self.pick, self.pause_s))

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        # hypothesis (and IPython) print through this hook, not through __repr__.
        printer.text(repr(self))


def _member(enum_type: type[enum.StrEnum], name: str, value: Any) -> Any:
    try:
        return enum_type(value)
    except ValueError:
        choices = ", ".join(repr(str(m)) for m in enum_type)
        raise InvalidFaultError(
            f"Expected one of {choices} but got {name}={value!r} (type={type(value).__name__})") from None


def _check_combination(fault: Fault) -> None:
    if isinstance(fault.pick, bool) or not isinstance(fault.pick, int) or fault.pick < 0:
        raise InvalidFaultError(f"Expected an int >= 0 but got pick={fault.pick!r} (type={type(fault.pick).__name__})")
    if isinstance(fault.pause_s, bool) or not isinstance(fault.pause_s, (int, float)):
        raise InvalidFaultError(
            f"Expected a number of seconds but got pause_s={fault.pause_s!r} (type={type(fault.pause_s).__name__})")
    wants_process = fault.kind in (FaultKind.KILL, FaultKind.PAUSE)
    if fault.target is Target.DRIVER:
        raise InvalidFaultError("chaos never hits the driver: it is the program under test, and its end is the run's")
    if wants_process and fault.target not in PROCESS_TARGETS:
        raise InvalidFaultError(
            f"a {fault.kind} fault hits a process: target must be one of "
            f"{', '.join(map(str, PROCESS_TARGETS))}, not {fault.target}; to hit PostgreSQL use restart_postgres")
    if not wants_process and fault.target is not Target.POSTGRES:
        raise InvalidFaultError(f"restart_postgres has target 'postgres', not {fault.target}")
    if fault.kind is FaultKind.PAUSE and fault.target is Target.NODE:
        raise InvalidFaultError("a node cannot be paused (stopping its daemon stops none of its other processes); "
                                "kill it, or pause its scheduler or store")
    if fault.kind is FaultKind.PAUSE and not 0 < fault.pause_s <= PAUSE_MAX_S:
        raise InvalidFaultError(f"Expected 0 < pause_s <= {PAUSE_MAX_S:g} but got pause_s={fault.pause_s!r}")
    if fault.kind is not FaultKind.PAUSE and fault.pause_s != 0:
        raise InvalidFaultError(f"pause_s goes with pause faults only, not {fault.kind} (got {fault.pause_s!r})")


@dataclass(frozen=True)
class Injected:
    """One entry of a run's timeline: the fault, when it hit, and which pid (if any)."""

    fault: Fault
    at_s: float  # wall clock, so a timeline lines up with logs and the lineage log's timestamps
    took_s: float
    outcome: Outcome
    pid: int | None = None
    detail: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"fault": self.fault.to_json(), "at_s": self.at_s, "took_s": self.took_s,
                "outcome": str(self.outcome), "pid": self.pid, "detail": self.detail}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Injected:
        return cls(Fault.from_json(data["fault"]), float(data["at_s"]), float(data["took_s"]),
                   Outcome(data["outcome"]), data.get("pid"), data.get("detail", ""))


def inject(fault: Fault, *, now: Callable[[], float] = time.time) -> Injected:
    """Apply ``fault`` to the cluster this process is connected to; say what it hit.

    Nothing to hit (no live process of that kind, or the list unreadable while
    the scheduler restarts) is an outcome in the record, not an error: a
    schedule keeps going. Restarting a log server ember did not start raises
    ``PostgresNotRestartableError``.
    """
    if not isinstance(fault, Fault):
        raise TypeError(f"Expected Fault but got fault={fault!r} (type={type(fault).__name__})")
    started = time.monotonic()
    at_s = now()
    match fault.kind:
        case FaultKind.RESTART_POSTGRES:
            outcome, pid, detail = _restart_postgres()
        case FaultKind.KILL | FaultKind.PAUSE:
            outcome, pid, detail = _signal_one(fault)
        case _ as unreachable:
            assert_never(unreachable)
    return Injected(fault, at_s, time.monotonic() - started, outcome, pid, detail)


# -- processes -----------------------------------------------------------------------


def live_pids(target: Target) -> list[int] | None:
    """The connected cluster's pids of ``target``, sorted; None when the list cannot be read in time."""
    pids, _ = _listing(target)
    return pids


def _listing(target: Target) -> tuple[list[int] | None, str]:
    """The pids of ``target`` and, when there are none to give, why.

    Listing asks the scheduler, which may be the very process a pause
    stopped, so the question runs on a thread and is abandoned after
    ``LIST_TIMEOUT_S``.
    """
    answer: list[Any] = []

    def ask() -> None:
        try:
            answer.append(sorted(p.pid for p in processes() if p.kind == target and p.killable))
        except (ClusterUnavailableError, TimeoutError) as exc:
            answer.append(exc)

    thread = threading.Thread(target=ask, name="ember-chaos-list", daemon=True)
    thread.start()
    thread.join(LIST_TIMEOUT_S)
    if not answer:
        return None, f"no process list within {LIST_TIMEOUT_S:g}s"
    if isinstance(answer[0], BaseException):
        return None, f"no process list: {type(answer[0]).__name__}: {answer[0]}"
    return answer[0], f"{len(answer[0])} live"


def _signal_one(fault: Fault) -> tuple[Outcome, int | None, str]:
    pids, why = _listing(fault.target)
    if pids is None:
        return Outcome.CLUSTER_UNAVAILABLE, None, why
    if not pids:
        return Outcome.NO_PROCESS, None, f"no live {fault.target}"
    pid = pids[fault.pick % len(pids)]
    outcome = signal_pid(fault, pid)
    return outcome, pid, why if outcome is Outcome.HIT else "exited before the signal"


def signal_pid(fault: Fault, pid: int) -> Outcome:
    """Kill or pause ``pid``, which the caller has checked belongs to the cluster it runs."""
    try:
        if fault.kind is FaultKind.KILL:
            os.kill(pid, signal.SIGKILL)
        else:
            _pause(pid, fault.pause_s)
    except ProcessLookupError:
        return Outcome.GONE
    return Outcome.HIT


# -- pauses --------------------------------------------------------------------------

_pause_lock = threading.Lock()
_resume_timers: dict[int, threading.Timer] = {}
_atexit_registered = False


def _pause(pid: int, pause_s: float) -> None:
    """SIGSTOP ``pid`` and arrange its SIGCONT; a second pause of the same pid restarts its clock.

    The timer is a daemon, so a caller that exits does not wait out the
    pause: ``resume_all`` runs at exit instead, before ember's own shutdown,
    which would otherwise wait on a stopped process.
    """
    global _atexit_registered
    with _pause_lock:
        if not _atexit_registered:
            # Registered after ember.init's handler (a pause needs a connected
            # cluster), so it runs first.
            atexit.register(resume_all)
            _atexit_registered = True
        os.kill(pid, signal.SIGSTOP)
        previous = _resume_timers.pop(pid, None)
        if previous is not None:
            previous.cancel()
        timer = threading.Timer(pause_s, _resume, args=(pid,))
        timer.name = f"ember-chaos-resume-{pid}"
        timer.daemon = True
        _resume_timers[pid] = timer
        timer.start()


def _resume(pid: int) -> None:
    with _pause_lock:
        _resume_timers.pop(pid, None)
        _continue(pid)


def _continue(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGCONT)
    except ProcessLookupError:
        pass  # killed while stopped: nothing left to resume


def paused_pids() -> list[int]:
    """Pids this process has stopped and not yet resumed."""
    with _pause_lock:
        return sorted(_resume_timers)


def resume_all() -> list[int]:
    """SIGCONT every process still paused by this process, at once; return their pids."""
    with _pause_lock:
        pids = sorted(_resume_timers)
        for pid in pids:
            _resume_timers.pop(pid).cancel()
            _continue(pid)
    return pids


# -- PostgreSQL ----------------------------------------------------------------------


def _restart_postgres() -> tuple[Outcome, int | None, str]:
    server = _embedded_log_server()
    old_pid = server.server_pid()
    server.restart()
    return Outcome.HIT, old_pid, f"new server pid {server.server_pid()}"


def _embedded_log_server() -> Any:
    """The embedded PostgreSQL holding the connected cluster's log; raise if it is not ember's own.

    The session file names the log by conninfo. ``ember.init`` without a URL
    writes exactly the embedded server's conninfo for this ``EMBER_HOME``;
    anything else came from ``EMBER_GCS_URL`` or ``init(gcs_url=...)`` and
    belongs to whoever runs that server.
    """
    from ember.lineage import EmbeddedPostgres

    try:
        conninfo = require_core().session.read_info().get("gcs_conninfo")
    except (OSError, ValueError) as exc:
        raise PostgresNotRestartableError(f"the cluster's session file cannot be read: {exc}") from exc
    if conninfo is None:
        raise PostgresNotRestartableError("the cluster runs with lineage logging off: there is no log server")
    server = EmbeddedPostgres()
    if conninfo != server.conninfo:
        raise PostgresNotRestartableError(
            f"the cluster's lineage log is at {conninfo!r}, a server ember did not start (EMBER_GCS_URL or "
            "init(gcs_url=...)); chaos restarts only the embedded server. Restart that one by its own means.")
    if server.server_pid() is None:
        raise PostgresNotRestartableError(f"the embedded PostgreSQL under {server.home} is not running")
    return server


__all__ = [
    "Fault",
    "FaultKind",
    "Injected",
    "InvalidFaultError",
    "Outcome",
    "PAUSE_MAX_S",
    "PostgresNotRestartableError",
    "Target",
    "inject",
    "live_pids",
    "paused_pids",
    "resume_all",
]
