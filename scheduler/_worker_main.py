"""Entry point of a worker process: enter its runtime_env (if it has one), connect to the node, then run
what arrives.

A worker started for a ``runtime_env`` (``EMBER_RUNTIME_ENV``, set by its node's scheduler) sets it up
and enters it before it connects, so nothing of anyone's runs before that: packages fetched from the
log and unpacked once per node, its variables, its working_dir as the current folder. With a ``pip``
list it then replaces itself (``exec``, same pid) by that environment's virtual environment's Python.
When the set-up fails, the worker still connects, and fails each task it is given with
``RuntimeEnvSetupError`` (then retires: the next try is a new process).
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

from ember import _settings
from ember.exceptions import RuntimeEnvSetupError
from ember.lineage import RuntimeEnvLog, RuntimeEnv, enter_env, prepare_env, run_setup_hook
from ember.scheduler._worker_pool import RUNTIME_ENV_VARIABLE
from ember.chaos import _agent
from ember.lineage._states import ProcessKind
from ember.scheduler import _context, _procutil
from ember.scheduler._owner import Owner
from ember.scheduler._executor import Executor
from ember.scheduler._session import Session, log_conninfo, open_session


LOG_FLUSH_ON_STOP_S = 1.5


def main(argv: list[str]) -> None:
    session_dir, node_id = argv[0], argv[1]
    _context.mark_worker_process()
    _procutil.die_with_parent()
    session = open_session(session_dir)
    env_text = _settings.load().runtime_env
    os.environ.pop(RUNTIME_ENV_VARIABLE, None)  # not inherited by what its tasks start
    env, env_error = (None, None) if env_text is None else _enter_runtime_env(env_text, session, argv)
    _procutil.setup_logging(session_dir, ProcessKind.WORKER, user_code=True)
    core = Owner(session, ProcessKind.WORKER, job_id=b"", node_id=node_id).start()
    core.runtime_env = None if env is None else env.wire  # what its tasks' children inherit
    _context.set_core(core)
    _agent.start(ProcessKind.WORKER, node_id)

    def on_term(*_: object) -> None:
        # A clean stop (a retired idle worker, a shutdown): no socket file is left for peers to
        # knock on, and lineage rows still queued (actor call order, attempts) reach the log first.
        core.stop_listening()
        if core.gcs is not None:
            core.gcs.writer.flush(LOG_FLUSH_ON_STOP_S)
        os._exit(0)

    signal.signal(signal.SIGTERM, on_term)
    # SIGINT is how a running task is cancelled (``Executor._cancel``). A driver started with
    # SIGINT ignored (nohup, `cmd &` in a script) passes that on to every process it starts:
    # the worker takes Python's own handler back, or cancels would go unnoticed.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    executor = Executor(core)
    executor.env_error = env_error
    executor.run_forever()


def _enter_runtime_env(text: str, session: Session, argv: list[str]) -> tuple[RuntimeEnv, RuntimeEnvSetupError | None]:
    """Set the environment up on this node and enter it; the error that stopped it, if one did."""
    env = RuntimeEnv.of_text(text)
    conninfo = log_conninfo(session)
    packages = RuntimeEnvLog(conninfo) if conninfo else None
    try:
        prepared = prepare_env(env, Path(session.dir) / "runtime_env", packages or (lambda digest: None))
    except RuntimeEnvSetupError as exc:
        return env, exc
    finally:
        if packages is not None:
            packages.close()
    python = prepared.venv_python
    if python is not None and not prepared.in_venv():
        os.environ[RUNTIME_ENV_VARIABLE] = text  # read again by the same code in the venv's Python
        sys.stdout.flush()
        sys.stderr.flush()
        os.execv(python, [str(python), "-m", "ember.scheduler._worker_main", *argv])
    enter_env(prepared)
    try:
        run_setup_hook(prepared)  # before the first task, once per worker process
    except RuntimeEnvSetupError as exc:
        return env, exc
    return env, None


if __name__ == "__main__":
    main(sys.argv[1:])
