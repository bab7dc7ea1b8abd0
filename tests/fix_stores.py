"""Object store processes on their own, as the stores of several nodes on one machine.

Each store runs in a session (and shared-memory folder) of its own; stores
of one "cluster" share its token, as the nodes of a real cluster do. Every
store is started by the test process and, at teardown, SIGKILLed by its pid
if it still runs, reaped, and its session removed, pass or fail.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest

from ember.scheduler._session import Session, create_session
from ember.store import ObjectFiles
from ember.store._service import transfer_address_path

STORE_READY_WAIT_S = 30.0
STORE_EXIT_WAIT_S = 10.0
_POLL_S = 0.01
CAPACITY_BYTES = 2 << 30


@dataclass(frozen=True)
class StoreProcess:
    session: Session
    proc: subprocess.Popen
    transfer_address: str | None  # None when started without --transfer-bind

    @property
    def files(self) -> ObjectFiles:
        """The store's object files as this test process sees them (writers write there directly)."""
        return ObjectFiles(self.session.shm_dir, self.session.spill_dir)


def launch(token: bytes, transfer_bind: str | None) -> StoreProcess:
    """Start a store process in a new session holding ``token``; ``wait_ready`` before using it."""
    session = create_session()
    session.token_path.write_bytes(token)
    argv = [sys.executable, "-m", "ember.store._service", str(session.dir), "--capacity-bytes", str(CAPACITY_BYTES)]
    if transfer_bind is not None:
        argv += ["--transfer-bind", transfer_bind]
    try:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, start_new_session=True)
    except BaseException:
        session.remove()
        raise
    return StoreProcess(session, proc, None)


def wait_ready(store: StoreProcess, transfer_bind: str | None) -> StoreProcess:
    """``store`` once it is ready, with the address it serves transfers on."""
    marker = store.session.sockets / "store.ready"
    deadline = time.monotonic() + STORE_READY_WAIT_S
    while not marker.exists():
        if store.proc.poll() is not None:
            raise AssertionError(f"the store exited with {store.proc.returncode} before it was ready")
        if time.monotonic() > deadline:
            raise AssertionError(f"the store was not ready within {STORE_READY_WAIT_S} s")
        time.sleep(_POLL_S)
    address = transfer_address_path(store.session).read_text() if transfer_bind is not None else None
    return StoreProcess(store.session, store.proc, address)


def stop(store: StoreProcess) -> None:
    """SIGKILL the store by pid if it still runs, reap it, remove its session."""
    if store.proc.poll() is None:
        os.kill(store.proc.pid, signal.SIGKILL)
    try:
        store.proc.wait(timeout=STORE_EXIT_WAIT_S)
    finally:
        store.session.remove()


@pytest.fixture
def start_store() -> Iterator[Callable[..., StoreProcess]]:
    """``start_store(token, transfer_bind="127.0.0.1:0")`` starts a store process and waits until it is ready."""
    started: list[StoreProcess] = []

    def start(token: bytes, transfer_bind: str | None = "127.0.0.1:0") -> StoreProcess:
        store = launch(token, transfer_bind)
        started.append(store)
        return wait_ready(store, transfer_bind)

    try:
        yield start
    finally:
        for store in started:
            stop(store)
