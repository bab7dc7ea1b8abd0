"""The node's supervisor: children that die are restarted, crash loops are given up on."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from ember.scheduler import _supervisor
from ember.scheduler._supervisor import EARLY_DEATHS_MAX, Supervisor

BOUND_S = 60.0


def _spawn(code: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", code])


@pytest.fixture
def supervised():
    """(supervisor, started, restart_with(code)): every child started is killed afterwards."""
    supervisor = Supervisor()
    started: list[subprocess.Popen] = []

    def restart_with(code: str):
        def restart(cause: str) -> subprocess.Popen:
            started.append(_spawn(code))
            return started[-1]
        return restart

    try:
        yield supervisor, started, restart_with
    finally:
        supervisor.stop()
        for proc in started:
            proc.kill()
            proc.wait()


def _wait_for(condition, what: str) -> None:
    deadline = time.monotonic() + BOUND_S
    while not condition():
        assert time.monotonic() < deadline, f"{what} within {BOUND_S}s"
        time.sleep(0.01)


def test_a_child_that_dies_at_once_every_time_is_given_up_on(supervised):
    supervisor, started, restart_with = supervised
    restart = restart_with("raise SystemExit(3)")
    supervisor.watch("looping", restart(""), restart)
    _wait_for(lambda: len(supervisor.deaths) >= EARLY_DEATHS_MAX, "the crash loop was seen")
    time.sleep(0.3)  # time for a restart that must not happen
    assert len(started) == EARLY_DEATHS_MAX
    assert all(cause.endswith("exited with code 3") for _name, _pid, cause in supervisor.deaths)


def test_a_child_killed_after_it_ran_a_while_is_always_restarted(monkeypatch, supervised):
    monkeypatch.setattr(_supervisor, "EARLY_DEATH_S", 0.05)
    supervisor, started, restart_with = supervised
    restart = restart_with("import signal; signal.pause()")
    supervisor.watch("killed", restart(""), restart)
    for kills in range(1, EARLY_DEATHS_MAX + 3):
        time.sleep(0.1)  # past EARLY_DEATH_S: a death now is no crash loop
        started[-1].kill()
        _wait_for(lambda: len(started) == kills + 1, f"restart number {kills}")


def test_a_child_that_became_ready_is_restarted_however_soon_it_is_killed(tmp_path, supervised):
    marker = tmp_path / "child.ready"
    ready = f"import os, pathlib, signal; pathlib.Path({str(marker)!r}).write_text(str(os.getpid())); signal.pause()"
    supervisor, started, restart_with = supervised
    restart = restart_with(ready)
    supervisor.watch("ready", restart(""), restart, ready_marker=marker)
    for kills in range(1, EARLY_DEATHS_MAX + 3):
        proc = started[-1]
        _wait_for(lambda: marker.exists() and marker.read_text() == str(proc.pid), f"child {kills} ready")
        proc.kill()
        _wait_for(lambda: len(started) == kills + 1, f"restart number {kills}")
