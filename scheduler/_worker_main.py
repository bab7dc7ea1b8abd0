"""Entry point of a worker process: connect to the node, then run what arrives."""

from __future__ import annotations

import sys

from ember.scheduler import _context, _procutil
from ember.scheduler._core import CoreClient
from ember.scheduler._executor import Executor
from ember.scheduler._session import open_session


def main(argv: list[str]) -> None:
    session_dir, node_id = argv[0], argv[1]
    _procutil.die_with_parent()
    _procutil.setup_logging(session_dir, "worker")
    session = open_session(session_dir)
    core = CoreClient(session, "worker", job_id=b"", node_id=node_id)
    _context.set_core(core)
    executor = Executor(core)
    executor.run_forever()


if __name__ == "__main__":
    main(sys.argv[1:])
