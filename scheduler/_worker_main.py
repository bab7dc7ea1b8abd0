"""Entry point of a worker process: connect to the node, then run what arrives."""

from __future__ import annotations

import os
import signal
import sys

from ember.chaos import _agent
from ember.lineage._states import ProcessKind
from ember.scheduler import _context, _procutil
from ember.scheduler._owner import Owner
from ember.scheduler._executor import Executor
from ember.scheduler._session import open_session


LOG_FLUSH_ON_STOP_S = 1.5


def main(argv: list[str]) -> None:
    session_dir, node_id = argv[0], argv[1]
    _context.mark_worker_process()
    _procutil.die_with_parent()
    _procutil.setup_logging(session_dir, ProcessKind.WORKER)
    session = open_session(session_dir)
    core = Owner(session, ProcessKind.WORKER, job_id=b"", node_id=node_id).start()
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
    executor.run_forever()


if __name__ == "__main__":
    main(sys.argv[1:])
