"""Killing a cluster's processes from tests: by pid, SIGKILL, waiting for the replacement.

Only processes of the cluster the test started are killed, and none is ever
reaped here: the scheduler, store and GCS are the test process's children,
and their exit status is ember's supervisor's to collect.
"""

from __future__ import annotations

import os
import signal
import time

import psutil

import ember
from ember.chaos import processes

KILL_BOUND_S = 90.0


def wait_gone(pid: int, bound_s: float = KILL_BOUND_S) -> None:
    deadline = time.monotonic() + bound_s
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return
        except psutil.NoSuchProcess:
            return
        time.sleep(0.005)
    raise AssertionError(f"pid {pid} still alive {bound_s}s after SIGKILL")


def sigkill(pids: list[int]) -> None:
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    for pid in pids:
        wait_gone(pid)


def live_pids(kind: str) -> list[int]:
    try:
        return [p.pid for p in processes() if p.kind == kind]
    except ember.exceptions.ClusterUnavailableError:
        return []  # asked while the driver reconnects to a restarted scheduler


def kill_and_wait_for_the_next(kind: str, bound_s: float = KILL_BOUND_S) -> tuple[int, int]:
    """SIGKILL the cluster's ``kind`` process (store, scheduler, gcs); return (old pid, its replacement's)."""
    old = live_pids(kind)
    assert old, f"no {kind} process is listed"
    sigkill(old[:1])
    deadline = time.monotonic() + bound_s
    while time.monotonic() < deadline:
        new = live_pids(kind)
        if new and new[0] != old[0]:
            return old[0], new[0]
        time.sleep(0.02)
    raise AssertionError(f"no new {kind} within {bound_s}s")


def actor_pid(handle: object, bound_s: float = KILL_BOUND_S) -> int:
    """The pid of an actor's process, as ``ember.chaos.processes()`` lists it (waits while it restarts)."""
    wanted = handle._actor_id.hex()  # type: ignore[attr-defined]
    deadline = time.monotonic() + bound_s
    while time.monotonic() < deadline:
        found = [p.pid for p in processes() if p.kind == "worker" and p.actor_id == wanted]
        if found:
            return found[0]
        time.sleep(0.02)
    raise AssertionError(f"no process for actor {wanted} within {bound_s}s")
