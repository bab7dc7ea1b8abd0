"""A node's fork server: one process that has imported what a worker needs, forking each new worker.

A worker started as ``python -m ember.scheduler._worker_main`` imports the
interpreter's start-up, ember, psycopg, numpy and pyarrow before it runs
anything: about 0.4 s of CPU on this machine, and a task blocked in ``get``
waits for it (its CPU goes to a new worker). The fork server pays those
imports once per node, before any work arrives, and then forks a worker in
a few milliseconds; the worker's imported pages stay shared with it until
written (copy on write), so an idle worker costs less memory too.

How a worker is made (``fork_worker``): the server forks a child, which
starts a new session (a Ctrl-C in a terminal reaches no worker), forks the
worker and exits. The kernel re-parents the orphaned worker to the
scheduler, which made itself a child subreaper (``_procutil.become_subreaper``),
and the worker asks for SIGKILL on the scheduler's death once the scheduler
is its parent. So a forked worker is the scheduler's child as a spawned one
is: the scheduler waits for it and signals it by pid (``ForkedProcess``),
it dies with the scheduler, and the fork server's own death kills no
worker. Each worker takes a fresh identity after the fork (ids, random
state, its own log file and connections, all made after it).

The server must stay single-threaded (``fork`` copies only the calling
thread), must never open a connection or a log file a worker would share,
and is stopped by closing its requests pipe. The scheduler side
(``ForkServer``) falls back to spawning a worker when the server is not up
or fails, and starts a new server on the next spawn.

Protocol: a request is one JSON line on the server's stdin (``{"env": {...}}``:
variables the worker's environment gains); each reply is one line on the
reply pipe: ``ready`` once after start-up, then the worker's pid or
``error <text>`` per request.
"""

from __future__ import annotations

import json
import logging
import os
import select
import signal
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path

from ember.scheduler import _procutil

__all__ = ["FORK_READY_WAIT_S", "ForkServer", "ForkedProcess"]

log = logging.getLogger("ember.scheduler")

FORK_READY_WAIT_S = 20.0  # how long a starting node waits for its server's imports before its first workers
FORK_REPLY_WAIT_S = 2.0  # one fork's reply (milliseconds, normally); past it the server is taken as broken
MAX_FD = 65536
REPARENT_WAIT_S = 5.0
FORK_FAILURES_MAX = 5  # servers in a row that broke before the node gives up on them and only spawns workers  # a forked worker waits this long to become the scheduler's child
# Imported once per node, before any work: what every worker needs, and the
# data libraries whose first use would otherwise cost each worker an import.
PRELOAD = ("ember.scheduler._worker_main", "ember.scheduler._executor", "ember.lineage._gcs_log", "cloudpickle",
           "numpy", "pyarrow")


class ForkedProcess:
    """A worker made by the fork server, now this process's child: the part of ``Popen`` the pool uses."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None
        self.args = [f"forked worker {pid}"]

    def poll(self) -> int | None:
        if self.returncode is None:
            try:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:
                self.returncode = -signal.SIGKILL  # reaped elsewhere: it is gone, how is not known
                return self.returncode
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        delay = 0.0005
        while self.poll() is None:
            if deadline is not None and time.monotonic() >= deadline:
                raise subprocess.TimeoutExpired(self.args, timeout)  # type: ignore[arg-type]
            time.sleep(delay)
            delay = min(delay * 2, 0.02)
        return self.returncode  # type: ignore[return-value]

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:  # not reaped: the pid is still this child's
            os.kill(self.pid, sig)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)


class ForkServer:
    """The scheduler's side: starts the server, asks it for workers (under the scheduler's lock)."""

    def __init__(self, session_dir: Path, node_id: str, log_dir: Path) -> None:
        self._args = [str(session_dir), node_id]
        self._log_dir = log_dir
        self._proc: subprocess.Popen | None = None
        self._reply_r: int | None = None
        self._buffer = b""
        self._ready = False
        self.forks = 0
        self.failures = 0  # servers in a row that broke before serving; each is replaced on the next spawn
        # One user of the server's pipes at a time. The scheduler's start waits for the imports
        # (``wait_ready``, up to seconds, not under the scheduler's lock) while its listener already
        # takes work: a ``fork`` or ``check`` meanwhile must not read the reply pipe under it, nor
        # close it (a killed server's), so they find the lock taken and let the caller spawn instead.
        self._lock = threading.Lock()

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None and self._proc.poll() is None else None

    def start(self) -> None:
        """Start a server (its imports take a while: ``fork`` waits for them when it must)."""
        if self._proc is not None:
            return
        reply_r, reply_w = os.pipe()
        try:
            self._proc = _procutil.spawn_python(__name__, [*self._args, str(reply_w)], self._log_dir,
                                                stdin=subprocess.PIPE, pass_fds=(reply_w,))
        finally:
            os.close(reply_w)
        self._reply_r = reply_r
        self._buffer = b""
        self._ready = False

    def wait_ready(self, timeout_s: float) -> bool:
        """Wait for a starting server's imports (not under the scheduler's lock); whether it is up."""
        with self._lock:
            return self._wait_ready(timeout_s)

    def _wait_ready(self, timeout_s: float) -> bool:
        if self.failures >= FORK_FAILURES_MAX:
            return False
        if self._proc is None:
            self.start()
        if not self._ready:
            line = self._read_line(timeout_s)
            if line == "ready":
                self._ready = True
                self.failures = 0
            elif line is not None or self._proc is None or self._proc.poll() is not None:
                self._broken(f"it did not start ({line or 'no word from it'})")
        return self._ready

    def fork(self, env: dict[str, str] | None = None) -> ForkedProcess | None:
        """A new worker; None if the server is still starting, or failed, or another thread waits on it
        (the caller spawns one instead)."""
        if not self._lock.acquire(blocking=False):
            return None
        try:
            return self._fork(env)
        finally:
            self._lock.release()

    def _fork(self, env: dict[str, str] | None) -> ForkedProcess | None:
        if not self._wait_ready(0):
            return None  # not up yet: never wait for its imports under the scheduler's lock
        try:
            assert self._proc is not None and self._proc.stdin is not None
            self._proc.stdin.write(json.dumps({"env": env or {}}).encode() + b"\n")
            self._proc.stdin.flush()
            reply = self._read_line(FORK_REPLY_WAIT_S)
            if reply is None or not reply.isdigit():
                raise OSError(reply or "no reply")
        except (OSError, ValueError) as exc:
            self._broken(str(exc))
            return None
        self.forks += 1
        return ForkedProcess(int(reply))

    def check(self) -> None:
        """Replace a server that died (killed, or crashed), or that a failed fork stopped: the new one does
        its imports from now on, not at the next worker start. Skipped while another thread waits on it."""
        if not self._lock.acquire(blocking=False):
            return
        try:
            self._check()
        finally:
            self._lock.release()

    def _check(self) -> None:
        proc = self._proc
        if proc is not None and proc.poll() is not None:
            self._broken(_procutil.exit_description(proc))
        if self._proc is None and self.failures < FORK_FAILURES_MAX:
            self.start()

    def _broken(self, why: str) -> None:
        proc = self._proc
        log.warning("the fork server failed (%s); workers start without it until a new one is up", why)
        self.stop()  # reaped (SIGKILLed if it does not exit): how it ended is known after
        if proc is None or proc.returncode is None or proc.returncode >= 0:
            self.failures += 1  # its own failure; one killed by a signal (chaos, an operator) is replaced as often

    def _read_line(self, timeout_s: float) -> str | None:
        deadline = time.monotonic() + timeout_s
        assert self._reply_r is not None
        while b"\n" not in self._buffer:
            remaining = max(0.0, deadline - time.monotonic())
            if not select.select([self._reply_r], [], [], remaining)[0]:
                return None
            chunk = os.read(self._reply_r, 4096)
            if not chunk:
                return None  # the server is gone
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return line.decode(errors="replace")

    def stop(self) -> None:
        """Close its requests (it exits), and reap it; the next ``fork`` starts a new one."""
        proc, self._proc = self._proc, None
        if self._reply_r is not None:
            os.close(self._reply_r)
            self._reply_r = None
        if proc is not None:
            try:
                if proc.stdin is not None:
                    proc.stdin.close()
            except OSError:
                pass
            _procutil.reap(proc, 2.0)


# -- the server process --------------------------------------------------------------------


def fork_worker(session_dir: str, node_id: str, env: dict[str, str], scheduler_pid: int) -> int:
    """Fork a worker that the scheduler adopts (see the module's docstring); its pid."""
    r, w = os.pipe()
    child = os.fork()
    if child == 0:
        try:
            os.close(r)
            os.setsid()
            worker = os.fork()
            if worker == 0:
                os.close(w)
                _run_worker(session_dir, node_id, env, scheduler_pid)
            os.write(w, str(worker).encode())
        finally:
            os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as reader:
        data = reader.read()
    os.waitpid(child, 0)  # once it is reaped, the worker is the scheduler's child
    if not data:
        raise OSError("the intermediate process died before forking the worker")
    return int(data)


def _run_worker(session_dir: str, node_id: str, env: dict[str, str], scheduler_pid: int) -> None:
    """In the forked worker: never returns."""
    code = 1
    try:
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)  # not the server's requests
        os.close(devnull)
        os.closerange(3, MAX_FD)  # nothing of the server's: its reply pipe would outlive it here
        os.environ.update(env)
        numpy = sys.modules.get("numpy")
        if numpy is not None:
            numpy.random.seed()  # its global state was the server's: every worker would draw the same numbers
        deadline = time.monotonic() + REPARENT_WAIT_S
        while os.getppid() != scheduler_pid:
            # Until adopted, nothing kills this process with the scheduler: it must see a death itself.
            if not _procutil.pid_alive(scheduler_pid):
                return  # the scheduler died between the request and now: nobody wants this worker
            if time.monotonic() > deadline:
                raise OSError(f"not adopted by the scheduler (pid {scheduler_pid}): parent is {os.getppid()}")
            time.sleep(0.0002)
        from ember.scheduler import _worker_main

        _worker_main.main([session_dir, node_id])
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:
        traceback.print_exc()
    finally:
        sys.stderr.flush()
        os._exit(code)


def main(argv: list[str]) -> None:
    session_dir, node_id, reply_fd = argv
    _procutil.die_with_parent()
    scheduler_pid = os.getppid()
    for module in PRELOAD:
        __import__(module)
    if threading.active_count() != 1:
        # A fork copies only the calling thread: a worker would inherit locks held by the others.
        raise SystemExit(f"the fork server has {threading.active_count()} threads after its imports; it needs one")
    requests = sys.stdin.buffer
    with os.fdopen(int(reply_fd), "wb", buffering=0) as reply:
        reply.write(b"ready\n")
        for line in requests:  # ends when the scheduler closes the pipe (or dies)
            try:
                env = json.loads(line).get("env") or {}
                reply.write(f"{fork_worker(session_dir, node_id, env, scheduler_pid)}\n".encode())
            except (OSError, ValueError) as exc:
                reply.write(f"error {exc}\n".replace("\n", " ").encode() + b"\n")


if __name__ == "__main__":
    main(sys.argv[1:])
