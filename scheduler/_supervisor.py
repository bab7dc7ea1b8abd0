"""Watching a node's long-lived children and restarting the ones that may come back.

The process that starts a child is the one told when it exits (a pidfd
becomes readable at once, no polling), so a death is noticed in
milliseconds and the child is started again with the cause of the death
passed along for the record. A child that keeps dying soon after it starts
is given up on rather than restarted in a tight loop; one killed after it
became ready (chaos does this on purpose, often) is always restarted.
"""

from __future__ import annotations

import logging
import os
import select
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ember.scheduler import _procutil

log = logging.getLogger("ember.node")

EARLY_DEATHS_MAX = 10  # consecutive deaths before becoming ready, then a child is given up on
EARLY_DEATH_S = 2.0  # for a child with no ready marker: a death this soon after start counts

Restart = Callable[[str], subprocess.Popen]


@dataclass
class _Child:
    name: str
    proc: subprocess.Popen
    restart: Restart | None
    pidfd: int = -1
    on_death: Callable[[int, str], None] | None = None
    ready_marker: Path | None = None  # the child writes its pid here once it serves
    started_at: float = field(default_factory=time.monotonic)
    early_deaths: int = 0  # consecutive deaths before the child became ready


class Supervisor:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._children: dict[str, _Child] = {}
        self._wake_r, self._wake_w = os.pipe()
        self._stopping = False
        self.deaths: list[tuple[str, int, str]] = []  # (name, pid, cause): what happened, for callers
        self._thread = threading.Thread(target=self._run, name="ember-supervisor", daemon=True)
        self._thread.start()

    def watch(self, name: str, proc: subprocess.Popen, restart: Restart | None = None,
              on_death: Callable[[int, str], None] | None = None, ready_marker: Path | None = None) -> None:
        """Watch ``proc``; when it dies, ``restart(cause)`` (if given) replaces it, and ``on_death(pid, cause)`` is told.

        ``ready_marker`` is a file the child writes its pid into once it
        serves: a child that dies before that counts toward a crash loop.
        """
        child = _Child(name, proc, restart, on_death=on_death, ready_marker=ready_marker)
        child.pidfd = self._pidfd(proc)
        with self._lock:
            self._children[name] = child
        os.write(self._wake_w, b"x")

    def proc(self, name: str) -> subprocess.Popen:
        with self._lock:
            return self._children[name].proc

    @staticmethod
    def _pidfd(proc: subprocess.Popen) -> int:
        try:
            return os.pidfd_open(proc.pid)
        except (OSError, AttributeError):
            return -1  # already gone, or no pidfds here: the poll timeout finds it

    def _run(self) -> None:
        poller = select.poll()
        poller.register(self._wake_r, select.POLLIN)
        registered: set[int] = set()
        while True:
            with self._lock:
                if self._stopping:
                    return
                children = list(self._children.values())
            for child in children:
                if child.pidfd >= 0 and child.pidfd not in registered:
                    poller.register(child.pidfd, select.POLLIN)
                    registered.add(child.pidfd)
            ready = {fd for fd, _ in poller.poll(1000)}
            if self._wake_r in ready:
                os.read(self._wake_r, 4096)
            for child in children:
                if child.proc.poll() is None:
                    continue
                if child.pidfd >= 0:
                    poller.unregister(child.pidfd)
                    registered.discard(child.pidfd)
                    os.close(child.pidfd)
                    child.pidfd = -1
                self._exited(child)

    def _exited(self, child: _Child) -> None:
        cause = _procutil.exit_description(child.proc)
        with self._lock:
            if self._stopping or self._children.get(child.name) is not child:
                return
            self.deaths.append((child.name, child.proc.pid, cause))
            del self._children[child.name]
        if child.on_death is not None:
            child.on_death(child.proc.pid, cause)
        if child.restart is None:
            log.warning("%s (%s) is gone and is not restarted", child.name, cause)
            return
        early = 0 if _was_ready(child) else child.early_deaths + 1
        if early >= EARLY_DEATHS_MAX:
            log.error("%s died %d times in a row within %.0fs of starting (last: %s); not restarting it again",
                      child.name, early, EARLY_DEATH_S, cause)
            return
        log.warning("%s died (%s); restarting it", child.name, cause)
        try:
            proc = child.restart(cause)
        except Exception:
            log.exception("could not restart %s", child.name)
            return
        replacement = _Child(child.name, proc, child.restart, on_death=child.on_death,
                             ready_marker=child.ready_marker, early_deaths=early)
        replacement.pidfd = self._pidfd(proc)
        with self._lock:
            if self._stopping:
                _procutil.kill(proc)
                return
            self._children[child.name] = replacement

    def stop(self) -> None:
        """Stop watching (children are stopped by their owner, after this)."""
        with self._lock:
            self._stopping = True
        os.write(self._wake_w, b"x")
        self._thread.join(timeout=2.0)
        for fd in (self._wake_r, self._wake_w):
            os.close(fd)
        with self._lock:
            for child in self._children.values():
                if child.pidfd >= 0:
                    os.close(child.pidfd)
                    child.pidfd = -1


def _was_ready(child: _Child) -> bool:
    if child.ready_marker is None:
        return time.monotonic() - child.started_at >= EARLY_DEATH_S
    try:
        return child.ready_marker.read_text().strip() == str(child.proc.pid)
    except OSError:
        return False
