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
import signal
import subprocess
import sys
from pathlib import Path

_PR_SET_PDEATHSIG = 1


def spawn_python(module: str, args: list[str], log_dir: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    child_env = dict(os.environ)
    child_env["EMBER_PARENT_PID"] = str(os.getpid())
    if env:
        child_env.update(env)
    return subprocess.Popen(
        [sys.executable, "-m", module, *args],
        env=child_env,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
        close_fds=True,
    )


def die_with_parent() -> None:
    """Ask the kernel to SIGKILL this process when the process that started it dies."""
    parent = int(os.environ.get("EMBER_PARENT_PID", "0"))
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: rely on connection loss instead
        return
    if parent and os.getppid() != parent:
        os._exit(1)  # the parent died before the request took effect


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


def setup_logging(session_dir: str, name: str) -> None:
    level = os.environ.get("EMBER_LOG_LEVEL", "WARNING").upper()
    logging.basicConfig(
        level=getattr(logging, level, logging.WARNING),
        format=f"%(asctime)s {name}[%(process)d] %(levelname)s %(name)s: %(message)s",
        filename=str(Path(session_dir) / "logs" / f"{name}-{os.getpid()}.log"),
    )
