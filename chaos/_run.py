"""Run one program under a schedule: start it, fire faults, watch it end, say what happened.

Used by ``chaos run`` and ``chaos replay``. The program runs in the
foreground with the terminal (its output is its own); progress goes to
stderr. When it ends, anything still paused is resumed and the result says
what was injected and what ember did about it.

It must never outlive the program by more than the controller's shutdown,
and never kill anything but the program's own process tree (on --timeout).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import psutil

from ember.chaos._controller import Controller, Tally
from ember.chaos._schedule import Planned

EXIT_LOST_DATA = 3  # the program exited 0, but ember gave up on objects it needed
EXIT_TIMEOUT = 124  # as timeout(1): the program ran past --timeout and was killed
PROGRESS_TTY_S = 1.0
PROGRESS_PIPE_S = 10.0
OBSERVE_S = 2.0  # how often ``observe`` (the run's live record in the log) hears how the run goes
STOP_WAIT_S = 10.0


@dataclass
class RunResult:
    command: list[str]
    planned: list[Planned]
    duration_s: float
    faults_max: int | None
    started_at: float
    elapsed_s: float
    program_exit: int | None  # None: killed by chaos run after --timeout
    exit_code: int
    tally: Tally
    timeline: list[dict[str, Any]]
    lost: list[dict[str, Any]]
    pending_faults: int
    notes: list[str] = field(default_factory=list)
    program_pid: int | None = None  # its driver's pid, when the program is the driver itself


def run_program(
    command: Sequence[str],
    planned: list[Planned],
    duration_s: float,
    faults_max: int | None = None,
    timeout_s: float | None = None,
    progress: Callable[[str, bool], None] | None = None,
    observe: Callable[[Snapshot], None] | None = None,
) -> RunResult:
    """Run ``command`` under ``planned``; ``progress(line, final)`` gets a status line now and then,
    ``observe(snapshot)`` the run so far every ``OBSERVE_S`` (from a thread of its own)."""
    controller = Controller(planned, duration_s, faults_max)
    env = dict(os.environ)
    env.update(controller.environment())
    started_at = time.time()
    try:
        proc = subprocess.Popen(list(command), env=env)
    except OSError as exc:
        controller.stop()
        raise FileNotFoundError(f"cannot start {command[0]!r}: {exc.strerror or exc}") from exc
    controller.start(proc.pid)
    ticker = _ticker(controller, progress)
    ticker.start()
    watcher = _watcher(controller, proc.pid, started_at, observe)
    watcher.start()
    notes: list[str] = []
    timed_out = False
    try:
        timed_out = not _wait(proc, timeout_s)
    except KeyboardInterrupt:
        notes.append("interrupted (Ctrl-C): the program was asked to stop")
        _wait(proc, STOP_WAIT_S)
    finally:
        if timed_out or proc.poll() is None:
            _kill_tree(proc)
        ticker.stop()
        watcher.stop()
        controller.stop()
    if timed_out:
        notes.append(f"the program ran past --timeout {timeout_s:g}s and was killed: a hang")
    code = proc.returncode
    program_exit = None if timed_out else (128 - code if code < 0 else code)
    exit_code = EXIT_TIMEOUT if program_exit is None else program_exit
    if exit_code == 0 and controller.tally.objects_lost:
        exit_code = EXIT_LOST_DATA
    return RunResult(
        list(command), planned, duration_s, faults_max, started_at, controller.elapsed_s(), program_exit, exit_code,
        controller.tally, controller.timeline, controller.lost, controller.nemesis.pending(), notes, proc.pid)


def _wait(proc: subprocess.Popen, timeout_s: float | None) -> bool:
    try:
        proc.wait(timeout_s)
        return True
    except subprocess.TimeoutExpired:
        return False


def _kill_tree(proc: subprocess.Popen) -> None:
    """SIGKILL the program and every process under it: all of it started here."""
    try:
        tree = psutil.Process(proc.pid).children(recursive=True)
    except psutil.Error:
        tree = []
    for victim in [*tree]:
        try:
            victim.send_signal(signal.SIGCONT)  # a paused process still dies, but leaves no stopped zombie
            victim.kill()
        except psutil.Error:
            pass
    if proc.poll() is None:
        proc.kill()
    proc.wait(STOP_WAIT_S)


@dataclass(frozen=True)
class Snapshot:
    """A run so far, for its live record: copies, safe to keep while the run goes on."""

    program_pid: int
    started_at: float
    elapsed_s: float
    timeline: list[dict[str, Any]]
    tally: dict[str, Any]


class _Every:
    """Calls ``tick(final=False)`` every ``interval_s`` on a thread of its own until stopped, then, if it
    ran, ``tick(final=True)`` once; with no ``tick``, nothing. Never stops the run."""

    def __init__(self, interval_s: float, tick: Callable[[bool], None] | None, name: str) -> None:
        self._interval_s = interval_s
        self._tick = tick
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)

    def start(self) -> None:
        if self._tick is not None:
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(STOP_WAIT_S)
            assert self._tick is not None
            self._tick(True)

    def _loop(self) -> None:
        assert self._tick is not None
        while not self._stop.wait(self._interval_s):
            self._tick(False)


def _ticker(controller: Controller, progress: Callable[[str, bool], None] | None) -> _Every:
    """Status lines while the program runs: every second on a terminal, every ten otherwise."""
    interval_s = PROGRESS_TTY_S if sys.stderr.isatty() else PROGRESS_PIPE_S
    tick = (lambda final: progress(status_line(controller), final)) if progress is not None else None
    return _Every(interval_s, tick, "chaos-progress")


def _watcher(controller: Controller, pid: int, started_at: float,
             observe: Callable[[Snapshot], None] | None) -> _Every:
    """A snapshot of the run for ``observe`` every ``OBSERVE_S`` (the run's end is the caller's to record)."""
    def tick(final: bool) -> None:
        if not final:
            timeline, tally = controller.snapshot()
            observe(Snapshot(pid, started_at, controller.elapsed_s(), timeline, tally))  # type: ignore[misc]

    return _Every(OBSERVE_S, tick if observe is not None else None, "chaos-observe")


def status_line(controller: Controller) -> str:
    tally = controller.tally
    faults = sum(tally.faults.values())
    kinds = tally.faults_text(", ")
    parts = [f"{controller.elapsed_s():7.1f}s", f"faults {faults}" + (f" ({kinds})" if kinds else ""),
             f"tasks {tally.tasks_finished:,} done, {tally.task_reruns:,} re-run"]
    if tally.actors_restarted:
        parts.append(f"actors restarted {tally.actors_restarted}")
    parts.append(f"lost {tally.objects_lost}")
    return "[chaos] " + " · ".join(parts)
