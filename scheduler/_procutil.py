"""Starting, watching and stopping ember's own processes.

Every process ember starts is started here, so the rules live in one place:
children die with their parent (PR_SET_PDEATHSIG), run in their own session
(a Ctrl-C in the driver's terminal reaches only the driver), and are killed by
pid only, never by name or group.
"""

from __future__ import annotations

import ctypes
import logging
import os
import queue
import signal
import subprocess
import sys
import threading
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from ember import _settings

_PR_SET_PDEATHSIG = 1


SPAWN_TIMEOUT_S = 30.0


class _Spawner:
    """Starts every child from one thread that lives as long as the process.

    PR_SET_PDEATHSIG fires when the *thread* that forked a child exits, not
    the process: a child started from a connection's reader thread would be
    killed when that connection closed.
    """

    def __init__(self) -> None:
        self._requests: queue.SimpleQueue = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._pid = 0

    def spawn(self, argv: list[str], env: dict[str, str], stdin: int = subprocess.DEVNULL,
              pass_fds: tuple[int, ...] = (), output: Any = None) -> subprocess.Popen:
        with self._lock:
            if self._thread is None or self._pid != os.getpid():
                self._pid = os.getpid()
                self._requests = queue.SimpleQueue()
                self._thread = threading.Thread(target=self._run, name="ember-spawner", daemon=True)
                self._thread.start()
        done: Future = Future()
        self._requests.put((argv, env, stdin, pass_fds, output, done))
        return done.result(timeout=SPAWN_TIMEOUT_S)

    def _run(self) -> None:
        while True:
            argv, env, stdin, pass_fds, output, done = self._requests.get()
            try:
                done.set_result(subprocess.Popen(
                    argv, env=env, stdin=stdin, start_new_session=True, close_fds=True, pass_fds=pass_fds,
                    stdout=output, stderr=output,
                ))
            except BaseException as exc:  # delivered to the caller
                done.set_exception(exc)


_SPAWNER = _Spawner()


WORKER_STOP_GRACE_S = 2.0  # a worker's, between SIGTERM (flush your log rows) and SIGKILL


def spawn_python(module: str, args: list[str], log_dir: Path, env: dict[str, str] | None = None,
                 stdin: int = subprocess.DEVNULL, pass_fds: tuple[int, ...] = (),
                 output: Path | None = None) -> subprocess.Popen:
    """Start ``python -m module``; ``output``: a file its stdout and stderr go to (appended), else this
    process's own (and its children's after it, which inherit them)."""
    child_env = dict(os.environ)
    child_env[_settings.variable("parent_pid")] = str(os.getpid())
    if env:
        child_env.update(env)
    if output is None:
        return _SPAWNER.spawn([sys.executable, "-m", module, *args], child_env, stdin, pass_fds)
    with open(output, "ab") as out:  # the child has its own descriptor once started
        return _SPAWNER.spawn([sys.executable, "-m", module, *args], child_env, stdin, pass_fds, out)


_PR_SET_CHILD_SUBREAPER = 36


def become_subreaper() -> bool:
    """Adopt this process's orphaned descendants (PR_SET_CHILD_SUBREAPER); False where the kernel will not.

    The fork server's workers become this process's children this way (``scheduler/_fork_server.py``).
    """
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def reap_strays(known: set[int]) -> int:
    """Reap exited children this process adopted but did not start (a dead worker's own orphans); how many.

    Children in ``known`` are left for their own handles to reap, with their exit status.
    """
    reaped = 0
    while True:
        try:
            info = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return reaped
        if info is None or info.si_pid in known:
            return reaped  # none exited, or the first is one of ours: its handle reaps it
        try:
            os.waitpid(info.si_pid, 0)
        except ChildProcessError:
            pass
        reaped += 1


def announce_ready(marker: Path) -> None:
    """Write this process's pid to its ready file, whole: the supervisor and the scheduler read it at any moment."""
    tmp = marker.with_name(marker.name + ".tmp")
    tmp.write_text(str(os.getpid()))
    os.replace(tmp, marker)


def die_with_parent() -> None:
    """Ask the kernel to SIGKILL this process when the process that started it dies."""
    parent = _settings.load().parent_pid
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: rely on connection loss instead
        return
    if parent and os.getppid() != parent:
        os._exit(1)  # the parent died before the request took effect


# glibc's mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


def keep_freed_buffers(mmap_threshold_bytes: int, trim_threshold_bytes: int) -> None:
    """Let glibc's malloc reuse freed buffers below ``mmap_threshold_bytes`` instead of returning them.

    A process that streams megabyte messages (gRPC's receive buffers, the
    bytes of each chunk) otherwise gets fresh pages for each one: a page fault
    and a zeroed page per 4 KiB, ~15% of a store's CPU per pull (perf record of a store receiving 400 MiB).
    Freed memory up to ``trim_threshold_bytes`` stays with the process.
    """
    try:
        libc = ctypes.CDLL(None)
        libc.mallopt(_M_MMAP_THRESHOLD, mmap_threshold_bytes)
        libc.mallopt(_M_TRIM_THRESHOLD, trim_threshold_bytes)
    except (OSError, AttributeError):  # not glibc: its allocator's own defaults
        return


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists (another user's counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def kill(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        try:
            proc.kill()
        except ProcessLookupError:
            pass


def terminate(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        try:
            proc.terminate()
        except ProcessLookupError:
            pass


def reap(proc: subprocess.Popen, timeout_s: float) -> int | None:
    try:
        return proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        kill(proc)
        try:
            return proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return None


def exit_description(proc: subprocess.Popen) -> str:
    try:
        code = proc.wait(timeout=0.5)
    except subprocess.TimeoutExpired:
        return f"pid {proc.pid} closed its connection"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = str(-code)
        return f"pid {proc.pid} killed by {name}"
    return f"pid {proc.pid} exited with code {code}"


def setup_logging(session_dir: str, name: str, user_code: bool = False) -> None:
    """This process's log file in the session's logs folder. ``user_code``: a worker's, where the root
    logger is the user's (a task's or a worker_process_setup_hook's ``logging.basicConfig`` works as in
    any process, as in Ray's workers): only ember's own loggers go to the file."""
    level = getattr(logging, (_settings.load().log_level or "WARNING").upper(), logging.WARNING)
    form = f"%(asctime)s {name}[%(process)d] %(levelname)s %(name)s: %(message)s"
    path = str(Path(session_dir) / "logs" / f"{name}-{os.getpid()}.log")
    if not user_code:
        logging.basicConfig(level=level, format=form, filename=path)
        return
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter(form))
    ours = logging.getLogger("ember")
    ours.addHandler(handler)
    ours.setLevel(level)
    ours.propagate = False


def process_start_ticks(pid: int) -> int | None:
    """A process's start time (``/proc/PID/stat`` field 22), or None if there is no such process.

    With the pid it names one process for good: a reused pid has another start time.
    """
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None
