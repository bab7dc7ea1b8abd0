"""A stand-in for node B's processes in the relay tests: a relay host, or an echo listener.

``python -m tests.relay_node relay SESSION_DIR`` hosts the node relay for the
session (as the scheduler does with ``--relay-bind``) and prints ``ready``.
``python -m tests.relay_node echo SESSION_DIR NAME`` listens at
``SESSION_DIR/s/NAME``, sends every message back on the connection it came
on, prints ``ready``, then ``open`` and ``closed`` as peers come and go.

Both die with the process that started them; the tests kill them by pid.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

from ember.scheduler import _procutil
from ember.scheduler._listener import Listener
from ember.scheduler._protocol import Connection
from ember.scheduler._session import open_session


REPO = Path(__file__).resolve().parents[1]


def spawn(*args: str) -> subprocess.Popen:
    """Start ``python -m tests.relay_node ARGS``, its stdout piped to the caller; it dies with this process."""
    return subprocess.Popen([sys.executable, "-m", "tests.relay_node", *args], cwd=REPO, stdout=subprocess.PIPE,
                            text=True, env={**os.environ, "EMBER_PARENT_PID": str(os.getpid())})


def _say(line: str) -> None:
    print(line, flush=True)


def _echo(conn: Connection, msg: tuple) -> None:
    conn.send(msg)


def main(argv: list[str]) -> None:
    _procutil.die_with_parent()
    role, session = argv[0], open_session(argv[1])
    if role == "relay":
        from ember.scheduler._relay import host_relay

        server, _ = host_relay(session)  # held by this frame, which never returns
    elif role == "echo":
        Listener(session.sockets / argv[2], session.token(), lambda conn: _say("open"), _echo,
                 lambda conn: _say("closed"), name="echo").start()
    else:
        raise SystemExit(f"unknown role {role!r}: expected relay or echo")
    _say("ready")
    threading.Event().wait()


if __name__ == "__main__":
    main(sys.argv[1:])
