"""A node's worker processes: starting them, matching their connections, stopping and reaping them.

``WorkerPool`` owns each worker's process and its two connections to the
scheduler (control: completions, blocking, cancellation; exec: the tasks to
run, read by the worker's main thread), keyed by the slot number the queue
core (``scheduler/_node_queue.py``) gave it. It knows which workers failed
to start (exited before connecting, or not connected within
``WORKER_START_TIMEOUT_S``), counts failed starts in a row, and SIGKILLs a
worker asked to stop once ``WORKER_STOP_GRACE_S`` has passed.

Which worker runs what, and when a worker starts or stops, is decided by
the queue core and the service (``scheduler/_service.py``); this module
carries it out. It must never decide placement, never send a task, and
never signal a process it did not start (by pid only, through
``scheduler/_procutil.py``).
"""

from __future__ import annotations

import json
import logging
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ember import _settings
from ember.scheduler import _procutil
from ember.scheduler._fork_server import ForkedProcess, ForkServer
from ember.scheduler._protocol import Connection

__all__ = ["WORKER_START_FAILURES_MAX", "PoolStatistics", "WorkerPool", "WorkerProcess"]

log = logging.getLogger("ember.scheduler")

RUNTIME_ENV_VARIABLE = _settings.variable("runtime_env")  # a worker's runtime_env (its JSON), read at its start

WORKER_START_TIMEOUT_S = 60.0  # a worker not connected by then counts as a failed start
# ... a worker whose runtime_env has a pip list: it installs it first (once per node), then connects.
PIP_WORKER_START_TIMEOUT_S = 600.0
WORKER_START_FAILURES_MAX = 5  # failed starts in a row after which queued tasks are failed to their owners
WORKER_STOP_GRACE_S = _procutil.WORKER_STOP_GRACE_S


class WorkerProcess:
    """One worker process and its connections to the scheduler."""

    __slots__ = ("key", "proc", "actor_id", "conn", "exec_conn", "address", "worker_id", "functions", "started_at",
                 "start_timeout_s")

    def __init__(self, key: int, proc: subprocess.Popen | ForkedProcess, actor_id: bytes | None, now: float,
                 start_timeout_s: float = WORKER_START_TIMEOUT_S) -> None:
        self.key = key  # its slot in the queue core
        self.proc = proc
        self.actor_id = actor_id
        self.conn: Connection | None = None  # control: completions, blocking, cancel
        self.exec_conn: Connection | None = None  # tasks to run, read by the worker's main thread
        self.address: str | None = None
        self.worker_id: bytes | None = None
        self.functions: set[bytes] = set()  # function ids whose code it has been sent
        self.started_at = now
        self.start_timeout_s = start_timeout_s

    @property
    def ready(self) -> bool:
        return self.conn is not None and self.exec_conn is not None


@dataclass(frozen=True)
class PoolStatistics:
    """A snapshot of the pool, for tests and status."""

    workers: int
    starting: int  # not yet connected on both connections
    actor_workers: int
    stopping: int  # asked to stop, not yet reaped
    start_failures: int  # in a row


class WorkerPool:
    """The worker processes of one node scheduler (used under the scheduler's lock)."""

    def __init__(self, session_dir: Path, node_id: str, log_dir: Path, fork: bool = False) -> None:
        """``fork``: workers come from a fork server (this process must be a child subreaper)."""
        self._args = [str(session_dir), node_id]
        self._log_dir = log_dir
        self.forks = ForkServer(session_dir, node_id, log_dir) if fork else None
        self._workers: dict[int, WorkerProcess] = {}  # slot key -> process, in start order
        self._by_conn: dict[Connection, WorkerProcess] = {}  # control connection -> its worker
        self._terminating: list[tuple[subprocess.Popen | ForkedProcess, float]] = []  # asked to stop, SIGKILLed after a grace
        self.start_failures = 0  # in a row; a worker that connects resets it
        self._kills_due: list[tuple[int, int, float]] = []  # (slot key, pid, kill after): force cancels

    def __iter__(self) -> Iterator[WorkerProcess]:
        return iter(list(self._workers.values()))

    def __len__(self) -> int:
        return len(self._workers)

    def get(self, key: int) -> WorkerProcess | None:
        return self._workers.get(key)

    def by_conn(self, conn: Connection) -> WorkerProcess | None:
        """The worker whose control connection ``conn`` is."""
        return self._by_conn.get(conn)

    def open(self, key: int) -> bool:
        """False once the worker's control connection has closed (``WorkerLinks`` for the queue core)."""
        w = self._workers.get(key)
        return w is not None and w.conn is not None and not w.conn.closed

    def statistics(self) -> PoolStatistics:
        workers = list(self._workers.values())
        return PoolStatistics(
            workers=len(workers),
            starting=sum(1 for w in workers if not w.ready),
            actor_workers=sum(1 for w in workers if w.actor_id is not None),
            stopping=len(self._terminating),
            start_failures=self.start_failures,
        )

    # -- starting --------------------------------------------------------------------------

    def start(self) -> None:
        """Start the fork server, if workers come from one: its imports run while the node starts."""
        if self.forks is not None:
            self.forks.start()

    def wait_ready(self, timeout_s: float) -> None:
        """Wait for the fork server's imports, if workers come from one (not under the scheduler's lock)."""
        if self.forks is not None:
            self.forks.wait_ready(timeout_s)

    def spawn(self, key: int, actor_id: bytes | None, now: float,
              runtime_env: tuple[str, str] | None = None) -> WorkerProcess:
        """Start a worker; ``runtime_env``: the environment (a spec's) it sets up and enters before it
        connects (``_worker_main``): forked or spawned alike, it runs nothing of anyone's before that."""
        env = None
        timeout_s = WORKER_START_TIMEOUT_S
        if runtime_env is not None:
            env = {RUNTIME_ENV_VARIABLE: runtime_env[1]}
            if "pip" in json.loads(runtime_env[1]):
                timeout_s = PIP_WORKER_START_TIMEOUT_S
        proc: subprocess.Popen | ForkedProcess | None = self.forks.fork(env) if self.forks is not None else None
        if proc is None:
            proc = _procutil.spawn_python("ember.scheduler._worker_main", self._args, self._log_dir, env)
        w = self._workers[key] = WorkerProcess(key, proc, actor_id, now, timeout_s)
        return w

    def attach(self, conn: Connection) -> WorkerProcess | None:
        """A worker's connection arrived: the worker it belongs to (by pid), or None if not one of ours."""
        peer = conn.peer
        for w in self._workers.values():
            if w.proc.pid != peer.get("pid"):
                continue
            if peer.get("purpose") == "exec":
                w.exec_conn = conn
            else:
                w.conn = conn
                w.address = peer["address"]
                w.worker_id = peer["worker_id"]
                self._by_conn[conn] = w
            if w.ready:
                self.start_failures = 0
            return w
        return None

    # -- stopping --------------------------------------------------------------------------

    def died(self, conn: Connection) -> tuple[WorkerProcess, str] | None:
        """The worker whose control connection closed, and how its process ended; killed and forgotten.

        None if ``conn`` was no worker's control connection.
        """
        w = self._by_conn.pop(conn, None)
        if w is None:
            return None
        detail = _procutil.exit_description(w.proc)  # before the kill: say how it really ended
        self._workers.pop(w.key, None)
        _procutil.kill(w.proc)
        return w, detail

    def retire(self, key: int) -> WorkerProcess | None:
        """Stop an idle worker (SIGTERM); None if it is gone already."""
        w = self._forget(key)
        if w is not None:
            _procutil.terminate(w.proc)
        return w

    def stop(self, key: int, now: float) -> WorkerProcess | None:
        """SIGTERM now, SIGKILL after ``WORKER_STOP_GRACE_S`` (at a later ``reap``); None if gone already.

        The grace lets the worker flush its lineage rows (an actor's call order) before it exits.
        """
        w = self._forget(key)
        if w is not None:
            _procutil.terminate(w.proc)
            self._terminating.append((w.proc, now + WORKER_STOP_GRACE_S))
        return w

    def _forget(self, key: int) -> WorkerProcess | None:
        w = self._workers.pop(key, None)
        if w is not None and w.conn is not None:
            self._by_conn.pop(w.conn, None)
        return w

    def kill(self, key: int) -> None:
        """SIGKILL a worker (a forced cancel); its connection's close reports the death."""
        w = self._workers.get(key)
        if w is not None:
            _procutil.kill(w.proc)

    def kill_after(self, key: int, deadline: float) -> None:
        """SIGKILL the worker in slot ``key`` at ``deadline`` if it has not ended by then (a forced cancel
        it was asked to carry out itself)."""
        w = self._workers.get(key)
        if w is not None:
            self._kills_due.append((key, w.proc.pid, deadline))

    def kill_due(self, now: float) -> None:
        """Kill the workers ``kill_after`` named whose deadline passed, unless they ended themselves."""
        waiting = []
        for key, pid, deadline in self._kills_due:
            w = self._workers.get(key)
            if w is None or w.proc.pid != pid:
                continue  # it ended itself
            if now < deadline:
                waiting.append((key, pid, deadline))
            else:
                self.kill(key)
        self._kills_due = waiting

    def reap(self, now: float) -> list[tuple[WorkerProcess, str]]:
        """SIGKILL the stopping workers past their grace; returns the workers that failed to start, killed,
        each with how its process ended."""
        for proc, deadline in list(self._terminating):
            if proc.poll() is not None or now > deadline:
                _procutil.kill(proc)
                self._terminating.remove((proc, deadline))
        failed: list[tuple[WorkerProcess, str]] = []
        for w in list(self._workers.values()):
            if w.ready:
                continue
            if w.proc.poll() is not None or now - w.started_at > w.start_timeout_s:
                # Not dropped from the control connections: if it had one, its close reports the death too.
                del self._workers[w.key]
                _procutil.kill(w.proc)
                self.start_failures += 1
                detail = _procutil.exit_description(w.proc)
                log.error("a worker failed to start (%s); see %s", detail, self._log_dir)
                failed.append((w, detail))
        if self.forks is not None:
            self.forks.check()
            # Adopted orphans (a dead worker's own children) are this process's to reap.
            known = {w.proc.pid for w in self._workers.values()} | {proc.pid for proc, _ in self._terminating}
            _procutil.reap_strays(known | {self.forks.pid or 0})
        return failed

    def stop_all(self) -> None:
        """At shutdown: every worker asked to stop (they flush their lineage rows), then reaped."""
        workers = list(self._workers.values())  # from a signal handler: the lock may be held elsewhere
        for w in workers:
            _procutil.terminate(w.proc)
        for w in workers:
            _procutil.reap(w.proc, WORKER_STOP_GRACE_S)
        for proc, _ in list(self._terminating):
            _procutil.reap(proc, WORKER_STOP_GRACE_S)
        if self.forks is not None:
            self.forks.stop()
