"""Setting a ``runtime_env`` up on a node, and entering it: packages from the log, unpacked once; pip venvs.

Every package (a working_dir, a py_modules entry) lives in the lineage log,
in ``runtime_env_packages``, by content hash: a node fetches it through the
cluster's PostgreSQL, never from a shared filesystem, and ``ember replay``
fetches it the same way after the cluster is gone. On each node a package is
unpacked once into ``<cache>/pkg/<hash>``, and a ``pip`` list is installed
once into a virtual environment ``<cache>/pip/<hash>`` made with
``--system-site-packages`` plus a ``.pth`` that adds this interpreter's own
site folders (ember stays importable from a virtual environment too); a lock
file per hash keeps two workers of a node from doing the same work at once.

``prepare_env`` does that work and says where things are; ``enter_env`` changes the
calling process (environment variables, current folder, ``sys.path``); a
worker calls both before it runs anything, ``ember replay`` around one task
(``entered_env``, which puts everything back after). Then ``run_setup_hook``
calls the environment's ``worker_process_setup_hook``, the one user code
here. Nothing else may run user code, or write anything of a package's
outside the cache.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib
import io
import os
import shutil
import site
import subprocess
import sys
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import cloudpickle

from ember.exceptions import RuntimeEnvSetupError
from ember.lineage._replay_source import ReplaySource
from ember.lineage._runtime_env import RuntimeEnv

__all__ = ["PIP_INSTALL_TIMEOUT_S", "RuntimeEnvLog", "Prepared", "enter_env", "entered_env", "prepare_env",
           "run_setup_hook"]

PIP_INSTALL_TIMEOUT_S = 540.0  # one pip install of one environment (a worker that waits for it starts late)
_OUTPUT_TAIL_CHARS = 2000  # of pip's output, in the error


@dataclass(frozen=True)
class Prepared:
    """Where an environment's parts are on this node."""

    env: RuntimeEnv
    working_dir: Path | None
    module_roots: tuple[Path, ...]
    venv: Path | None
    # Its worker_process_setup_hook: the function pickled (bytes, from the log) or its 'module.function'
    # name; ``run_setup_hook`` calls it. None: it has none.
    setup_hook: bytes | str | None = None

    @property
    def venv_python(self) -> Path | None:
        return None if self.venv is None else self.venv / "bin" / "python"

    def in_venv(self) -> bool:
        """Whether this interpreter is the environment's pip venv's (or it has none)."""
        return self.venv is None or Path(sys.prefix).resolve() == self.venv.resolve()


def prepare_env(env: RuntimeEnv, cache: Path, fetch: Callable[[str], bytes | None]) -> Prepared:
    """Fetch and unpack its packages, make its pip venv, once per node; RuntimeEnvSetupError if one fails.

    ``fetch(hash)``: a package's bytes from the log (None: not there).
    """
    record = env.record
    packages: dict[str, Path] = {}
    for digest in env.packages():
        packages[digest] = _unpacked(cache / "pkg" / digest, lambda d=digest: _fetched(fetch, d))
    working_dir = packages[record["working_dir"]["hash"]] if "working_dir" in record else None
    roots = tuple(packages[m["hash"]] for m in record.get("py_modules", ()))
    venv = None
    if record.get("pip"):
        pip_key = RuntimeEnv.of({"pip": record["pip"], "python": sys.version.split()[0]}).hash
        venv = _venv(cache / "pip" / pip_key, record["pip"])
    hook = record.get("worker_process_setup_hook")
    setup_hook = None if hook is None else hook["import"] if "import" in hook else _fetched(fetch, hook["hash"])
    return Prepared(env, working_dir, roots, venv, setup_hook)


def run_setup_hook(prepared: Prepared) -> None:
    """Call the environment's worker_process_setup_hook, in an entered environment (a worker does it once,
    before its first task); RuntimeEnvSetupError naming it if it cannot be loaded or raises."""
    hook = prepared.setup_hook
    if hook is None:
        return
    hook_record = prepared.env.record["worker_process_setup_hook"]
    name = hook_record.get("import") or hook_record.get("name", "the hook")
    try:
        if isinstance(hook, str):
            module, _, attribute = hook.rpartition(".")
            function = getattr(importlib.import_module(module), attribute)
        else:
            function = cloudpickle.loads(hook)
        function()
    except Exception as exc:  # noqa: BLE001 - user code: its failure is the environment's
        raise RuntimeEnvSetupError(f"runtime_env worker_process_setup_hook {name} failed: {exc!r}") from exc


def _fetched(fetch: Callable[[str], bytes | None], digest: str) -> bytes:
    data = fetch(digest)
    if data is None:
        raise RuntimeEnvSetupError(f"package {digest} of the runtime_env is not in the lineage log (pruned?)")
    return data


@contextlib.contextmanager
def _locked(target: Path) -> Iterator[None]:
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.with_name(target.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _unpacked(target: Path, data: Callable[[], bytes]) -> Path:
    if target.is_dir():
        return target
    with _locked(target):
        if not target.is_dir():
            staging = target.with_name(f"{target.name}.tmp-{os.getpid()}")
            shutil.rmtree(staging, ignore_errors=True)
            try:
                with zipfile.ZipFile(io.BytesIO(data())) as archive:
                    archive.extractall(staging)
                    for info in archive.infolist():  # extractall drops the modes
                        mode = info.external_attr >> 16 & 0o777
                        if mode:
                            os.chmod(staging / info.filename, mode)
            except (OSError, zipfile.BadZipFile) as exc:
                shutil.rmtree(staging, ignore_errors=True)
                raise RuntimeEnvSetupError(f"unpacking a runtime_env package into {target} failed: {exc}") from exc
            staging.mkdir(exist_ok=True)  # an empty folder packs to no entry
            os.rename(staging, target)
    return target


def _venv(target: Path, requirements: list[str]) -> Path:
    if (target / "bin" / "python").exists():
        return target
    with _locked(target):
        if (target / "bin" / "python").exists():
            return target
        staging = target.with_name(f"{target.name}.tmp-{os.getpid()}")
        shutil.rmtree(staging, ignore_errors=True)
        try:
            _run([sys.executable, "-m", "venv", "--without-pip", "--system-site-packages", str(staging)], "venv")
            inner = Path(subprocess.check_output(
                [str(staging / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                text=True, timeout=60).strip())
            # This interpreter's own site folders (a virtual environment's, where ember may be installed):
            # after the venv's own, so what pip installs here wins.
            bridge = "".join(f"import site; site.addsitedir({folder!r})\n" for folder in site.getsitepackages())
            (inner / "_ember_parent_site.pth").write_text(bridge)
            _run([sys.executable, "-m", "pip", "--python", str(staging / "bin" / "python"), "install",
                  "--disable-pip-version-check", "--no-input", "-q", *requirements], "pip install")
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        os.rename(staging, target)
    return target


def _run(command: list[str], what: str) -> None:
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=PIP_INSTALL_TIMEOUT_S,
                              stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as exc:
        raise RuntimeEnvSetupError(f"runtime_env {what} took more than {PIP_INSTALL_TIMEOUT_S:g} s") from exc
    if done.returncode != 0:
        lines = (done.stdout + done.stderr).splitlines()
        errors = [line for line in lines if line.startswith("ERROR")]  # pip's own words first, not its warnings
        output = "\n".join(errors or lines)[-_OUTPUT_TAIL_CHARS:]
        raise RuntimeEnvSetupError(f"runtime_env {what} failed (exit {done.returncode}): {output}")


def enter_env(prepared: Prepared) -> None:
    """Make this process run in the environment: its variables, its working_dir as the current folder and
    first on ``sys.path``, its py_modules on ``sys.path``, its venv's packages first (``in_venv`` or not)."""
    record = prepared.env.record
    os.environ.update(record.get("env_vars", {}))
    paths = [str(p) for p in (prepared.working_dir, *prepared.module_roots) if p is not None]
    if prepared.venv is not None and not prepared.in_venv():
        paths += _venv_site(prepared.venv)  # replay, in this interpreter: the venv's packages first
    sys.path[:0] = [p for p in paths if p not in sys.path]
    if prepared.working_dir is not None:
        os.chdir(prepared.working_dir)


def _venv_site(venv: Path) -> list[str]:
    return [str(p) for p in sorted((venv / "lib").glob("python*/site-packages"))]


@contextlib.contextmanager
def entered_env(prepared: Prepared) -> Iterator[None]:
    """``enter_env`` for a while (``ember replay``): variables, folder and ``sys.path`` put back after."""
    environ, cwd, path = dict(os.environ), os.getcwd(), list(sys.path)
    enter_env(prepared)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(environ)
        os.chdir(cwd)
        sys.path[:] = path


class RuntimeEnvLog:
    """What a worker reads of the log for its job's environment: a package's bytes (the ``fetch`` that
    ``prepare_env`` takes) and a job's namespace; reconnects while PostgreSQL restarts, for up to
    ``UNREACHABLE_WAIT_S``. Close it after."""

    def __init__(self, conninfo: str) -> None:
        self._source = ReplaySource(conninfo)

    def __call__(self, digest: str) -> bytes | None:
        rows = self._source.query("SELECT data FROM runtime_env_packages WHERE package_hash = %s", (digest,))
        return bytes(rows[0][0]) if rows else None

    def job_namespace(self, job_id: bytes) -> str | None:
        """The namespace the log names for a job (None: no row, or a log older than v14)."""
        rows = self._source.query("SELECT namespace FROM jobs WHERE job_id = %s", (job_id,))
        return rows[0][0] if rows else None

    def close(self) -> None:
        self._source.close()
