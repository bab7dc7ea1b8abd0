"""A process's store connection after the store restarts (scheduler/_owner/_node_links.py), over real sockets.

A store killed again just after a process reconnected to it closes that
connection before the process has made it its store connection: the close
handler sees another connection and lets it be. The connection must not be
left in place closed (every later subscribe and pull would go nowhere).

A store that is not back within one reconnection's wait (the node restarts
it late) must be tried again, with backoff, and used once it is back: a
process must not be left without a store for good.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from ember.lineage._states import ProcessKind
from ember.scheduler._listener import Listener
from ember.scheduler._owner import _links, _node_links
from ember.scheduler._owner._links import Links
from ember.scheduler._owner._node_links import NodeLinks
from ember.scheduler._owner._objects import OwnerState
from ember.scheduler._protocol import Connection, new_token
from tests.waits import wait_for

BOUND_S = 10.0


@pytest.fixture
def store_side(tmp_path: Path) -> Iterator[tuple[Listener, bytes, list[Connection]]]:
    """A listener where the store's socket is, and the connections it accepted, in order."""
    token = new_token()
    accepted: list[Connection] = []
    listener = Listener(tmp_path / "store", token, accepted.append, lambda conn, msg: None, name="store").start()
    yield listener, token, accepted
    listener.close()


def _worker(tmp_path: Path, listener: Listener, token: bytes) -> tuple[OwnerState, Links, NodeLinks]:
    """A worker's state, links and node links, its store at ``listener``."""
    lock = threading.RLock()
    state = OwnerState()
    links = Links(ProcessKind.WORKER, str(tmp_path / "worker"), os.urandom(16), token, lock,
                  lambda conn, msg: None, lambda conn: None, lambda: None)
    node = NodeLinks(ProcessKind.WORKER, listener.path, lock, state, links, set(), set(), lambda: None,
                     lambda: None, lambda: None, lambda: None, lambda: None)
    return state, links, node


def test_a_store_connection_that_closed_before_it_was_installed_is_replaced(
        tmp_path: Path, store_side: tuple[Listener, bytes, list[Connection]]) -> None:
    listener, token, accepted = store_side
    state, links, node = _worker(tmp_path, listener, token)
    links.store = links.connect(listener.path, node.on_store_closed, "store")  # the store it had
    # A reconnection to the store restarted meanwhile, which dies at once: the connection closes while
    # it is not yet this process's store connection, so its close handler lets it be.
    fresh = links.connect(listener.path, node.on_store_closed, "store", hello={"purpose": "fresh"})
    wait_for(lambda: len(accepted) == 2, "the store side accepts both", BOUND_S)
    next(conn for conn in accepted if conn.peer.get("purpose") == "fresh").close()
    wait_for(lambda: fresh.closed, "the fresh connection sees its store die", BOUND_S)
    node.install_store(fresh)  # what the reconnecting thread does with it
    wait_for(lambda: links.store is not fresh and not links.store.closed, "a live store connection again", BOUND_S)
    assert state.store_generation == 2  # installed, found closed, and replaced by a new one
    links.close()


def test_a_store_back_only_after_a_failed_reconnection_is_used_again(
        tmp_path: Path, store_side: tuple[Listener, bytes, list[Connection]], monkeypatch: pytest.MonkeyPatch) -> None:
    listener, token, accepted = store_side
    monkeypatch.setattr(_links, "RECONNECT_TIMEOUT_S", 0.3)  # one reconnection's wait, short for the test
    monkeypatch.setattr(_node_links, "STORE_RETRY_BACKOFF_INITIAL_S", 0.05, raising=False)
    state, links, node = _worker(tmp_path, listener, token)
    failed: list[bool] = []
    reconnect = links.reconnect

    def recorded(*args: object, **kwargs: object) -> Connection | None:
        conn = reconnect(*args, **kwargs)  # type: ignore[arg-type]
        if conn is None:
            failed.append(True)
        return conn

    links.reconnect = recorded  # type: ignore[method-assign]
    links.store = links.connect(listener.path, node.on_store_closed, "store")
    old = links.store
    wait_for(lambda: accepted, "the store side accepts", BOUND_S)
    listener.close()  # the store dies, and is not back in time
    accepted[0].close()
    wait_for(lambda: failed, "a reconnection gives up (the store is not back)", BOUND_S)
    back = Listener(listener.path, token, accepted.append, lambda conn, msg: None, name="store").start()
    try:
        wait_for(lambda: links.store is not old and not links.store.closed, "the store that came back is used",
                 BOUND_S)
        assert state.store_generation == 1
    finally:
        state.closed = True  # the process ends: no reconnection after this
        links.close()
        back.close()
