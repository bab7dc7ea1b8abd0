"""An owner on another node that was out of reach for a while counts as alive again once it can be reached.

Node B's relay and a listener behind it (standing for an owner there) are
real processes (``tests/relay_node.py``, as in ``test_relay.py``). The
relay is frozen (SIGSTOP: its node still holds the connection, nothing
answers, as across a cut) while this process asks whether the owner is
alive, then thawed. Before, the first failed probe marked the owner dead
for good: every later object of it was rebuilt from the log instead of
asked of it, and its puts failed with OwnerDiedError. Every process is
this test's own, killed by pid; every wait is bounded.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from types import SimpleNamespace

import pytest

from ember.lineage._states import ProcessKind
from ember.scheduler._address import parse_relay_address, relay_address
from ember.scheduler._owner import _liveness
from ember.scheduler._owner._links import Links
from ember.scheduler._owner._reconstruct import Reconstruction
from tests.integration.test_relay import _Cluster, cluster  # noqa: F401 - the fixture, shared
from tests.waits import wait_for

BOUND_S = 30.0


def _owner_side(nodes: _Cluster) -> tuple[Reconstruction, Links]:
    """This process as node A's owner: its links, and the part that decides whether other owners live."""
    here = relay_address("127.0.0.1", 1, str(nodes.a.sockets / "me"))  # node A: another relay endpoint
    lock = threading.RLock()
    links = Links(ProcessKind.WORKER, here, os.urandom(16), nodes.a.token(), lock, lambda conn, msg: None,
                  lambda conn: None, lambda: None)
    rebuild = Reconstruction(here, "127.0.0.1:1", None, lock, SimpleNamespace(entries={}), {}, None, links, None,
                             None, lambda address: parse_relay_address(address).endpoint, lambda task: None,
                             lambda: None)
    return rebuild, links


def test_an_owner_out_of_reach_for_a_while_is_alive_again_once_reachable(
        cluster: _Cluster, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811 - the fixture
    monkeypatch.setattr(_liveness, "RECHECK_S", 0.2, raising=False)  # probed again soon, for the test
    owner = cluster.address(cluster.b.sockets / "echo")
    rebuild, links = _owner_side(cluster)
    try:
        os.kill(cluster.relay.proc.pid, signal.SIGSTOP)  # node B out of reach; its processes alive
        try:
            assert not rebuild.owner_alive(owner)
        finally:
            os.kill(cluster.relay.proc.pid, signal.SIGCONT)
        wait_for(lambda: rebuild.owner_alive(owner), "the owner, reachable again, counts as alive", BOUND_S)
    finally:
        links.close()


def test_an_owner_that_died_on_another_node_stays_dead(cluster: _Cluster, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    monkeypatch.setattr(_liveness, "RECHECK_S", 0.2)
    owner = cluster.address(cluster.b.sockets / "echo")
    rebuild, links = _owner_side(cluster)
    try:
        assert rebuild.owner_alive(owner)
        cluster.echo.kill()
        wait_for(lambda: links.peers[owner].closed, "its connection closes with it", BOUND_S)
        assert not rebuild.owner_alive(owner)
        time.sleep(1.0)  # past several rechecks: each probes again and finds nothing listening
        assert not rebuild.owner_alive(owner)
    finally:
        links.close()
