"""The side of ``chaos run`` inside ember's own processes.

When a program runs under ``chaos run``, every process of its cluster (the
driver, GCS service, scheduler, store, workers) inherits two variables that
name the controller's socket and its token. Each process then says hello
(kind, pid, node) and reports what the schedule fires on: task starts and
finishes, actor restarts, objects rebuilt, and objects ember had to give up
on. Without those variables ``AGENT`` stays None and the hooks cost one
attribute check.

A start of a function the controller watches waits for its answer, so a
fault planned "when a task of f starts" hits while that task is on its
worker, and a replay hits at the same logical point. Everything else is
one-way. A controller that goes away turns the agent off; the program runs on.
"""

from __future__ import annotations

import json
import os
import socket
import threading
from typing import Any

from ember import _settings
from ember.scheduler._procutil import process_start_ticks

SOCKET_ENV = _settings.variable("chaos_socket")
TOKEN_ENV = _settings.variable("chaos_token")
ANSWER_WAIT_S = 30.0  # a controller that stops answering must not stall the task for long


class Agent:
    def __init__(self, path: str, token: str, kind: str, node_id: str, extra: dict[str, Any]) -> None:
        self._lock = threading.Lock()
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.settimeout(ANSWER_WAIT_S)
        self._sock.connect(path)
        self._file = self._sock.makefile("rb")
        self._send({"hello": kind, "token": token, "pid": os.getpid(), "node_id": node_id,
                    "start_ticks": process_start_ticks(os.getpid()), **extra})
        reply = json.loads(self._file.readline() or b"{}")
        if "watch" not in reply:
            raise ConnectionError(reply.get("refused", "the chaos controller closed the connection"))
        self.watch: frozenset[str] = frozenset(reply["watch"])

    def task_started(self, name: str, task_id: bytes, attempt: int) -> None:
        msg = {"ev": "start", "fn": name, "task": task_id.hex(), "attempt": attempt}
        if name not in self.watch:
            self._send(msg)
            return
        msg["answer"] = True
        global AGENT
        with self._lock:
            self._send_locked(msg)
            try:
                self._file.readline()  # the controller has fired what this start triggers
            except OSError:
                AGENT = None

    def task_finished(self, name: str, task_id: bytes, attempt: int, failed: bool) -> None:
        self._send({"ev": "finish", "fn": name, "task": task_id.hex(), "attempt": attempt, "failed": failed})

    def note(self, event: str, **details: Any) -> None:
        self._send({"ev": event, **details})

    def _send(self, msg: dict[str, Any]) -> None:
        with self._lock:
            self._send_locked(msg)

    def _send_locked(self, msg: dict[str, Any]) -> None:
        global AGENT
        try:
            self._sock.sendall(json.dumps(msg).encode() + b"\n")
        except OSError:
            AGENT = None  # the controller is gone: run on without it


AGENT: Agent | None = None


def start(kind: str, node_id: str = "", **extra: Any) -> None:
    """Say hello to the ``chaos run`` controller, if this program runs under one."""
    global AGENT
    settings = _settings.load()
    path, token = settings.chaos_socket, settings.chaos_token
    if not path or not token or AGENT is not None:
        return
    try:
        AGENT = Agent(path, token, kind, node_id, extra)
    except (OSError, ValueError, ConnectionError):
        AGENT = None
