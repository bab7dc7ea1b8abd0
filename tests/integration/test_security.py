"""Safe by default (issue 8, points 1 and 2): private files, the token before any pickle, no TCP.

On one real cluster: the session's folders are 0700 and its token and
sockets 0600; every endpoint that exists today (scheduler, store, a worker's
and the driver's listeners, the GCS service) refuses a peer without the
token before unpickling anything it sent; and the embedded PostgreSQL opens
no TCP port. See docs/security.md for what this protects and what it does not.
"""

from __future__ import annotations

import os
import pickle
import socket
import stat
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import psutil
import pytest

import ember
from ember.lineage._postgres import EmbeddedPostgres
from ember.lineage._rpc import SERVICE, TOKEN_KEY
from ember.scheduler._protocol import PREAMBLE_MAGIC
from tests.endpoint_junk import SideEffect, frame, send_raw

WAIT_S = 10.0


@pytest.fixture(scope="module")
def session() -> Iterator[Any]:
    ember.init(num_cpus=1)
    try:
        ember.nodes()  # the GCS service starts alongside init; wait until it answers
        assert ember.get(_still_serving.remote(), timeout=60) == "yes"  # and a worker listens
        yield ember._runtime._session
    finally:
        ember.shutdown()


@ember.remote
def _still_serving() -> str:
    return "yes"


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_session_files_are_private(session: Any) -> None:
    for directory in (session.dir, session.sockets, session.spill_dir, session.log_dir, session.shm_dir):
        assert _mode(directory) == 0o700, directory
    assert _mode(session.token_path) == 0o600
    assert len(session.token()) == 32
    sockets = [p for p in session.sockets.iterdir() if stat.S_ISSOCK(os.stat(p).st_mode)]
    assert {"scheduler", "store", "gcs"} <= {p.name for p in sockets}
    for path in sockets:
        assert _mode(path) == 0o600, path
        assert os.stat(path).st_uid == os.getuid()


def _endpoints(session: Any) -> dict[str, str]:
    workers = sorted(session.sockets.glob("worker-*"))
    assert workers
    return {"scheduler": str(session.scheduler_socket), "store": str(session.store_socket),
            "worker": str(workers[0]), "driver": ember._runtime.require_core().address}


@pytest.mark.parametrize("endpoint", ["scheduler", "store", "worker", "driver"])
@pytest.mark.parametrize("preamble", ["none", "wrong-token", "empty-token"])
def test_no_pickle_is_loaded_without_the_token(session: Any, tmp_path: Path, endpoint: str, preamble: str) -> None:
    marker = tmp_path / "unpickled"
    token = session.token()
    head = {"none": b"", "wrong-token": PREAMBLE_MAGIC + bytes(b ^ 1 for b in token),
            "empty-token": PREAMBLE_MAGIC + bytes(len(token))}[preamble]
    assert send_raw(_endpoints(session)[endpoint], head + frame([SideEffect(marker)]) * 4) == b""  # refused, silently
    assert not marker.exists()
    assert ember.get(_still_serving.remote(), timeout=30) == "yes"


@pytest.mark.parametrize("token", ["missing", "wrong"])
def test_gcs_service_refuses_without_the_token(session: Any, tmp_path: Path, token: str) -> None:
    marker = tmp_path / "unpickled"
    metadata = () if token == "missing" else ((TOKEN_KEY, os.urandom(32).hex()),)
    with grpc.insecure_channel(session.gcs_address) as channel:
        call = channel.unary_unary(f"/{SERVICE}/Info")
        with pytest.raises(grpc.RpcError) as caught:
            call(pickle.dumps(SideEffect(marker)), timeout=WAIT_S, metadata=metadata)
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert not marker.exists()  # and the service speaks JSON: it never unpickles at all


def test_embedded_postgres_opens_no_tcp_port(session: Any) -> None:
    server = EmbeddedPostgres()
    pid = server.server_pid()
    assert pid is not None and psutil.pid_exists(pid)
    postmaster = psutil.Process(pid)
    family = {c.family for c in _connections(postmaster) if c.status == psutil.CONN_LISTEN}
    assert socket.AF_INET not in family and socket.AF_INET6 not in family
    assert '"-h" ""' in (server.data_dir / "postmaster.opts").read_text()  # listen_addresses='': no TCP at all
    listening = [p for p in server.socket_dir.iterdir() if p.name.startswith(".s.PGSQL.")]
    assert listening and all(stat.S_ISSOCK(os.stat(p).st_mode) for p in listening if not p.name.endswith(".lock"))
    assert _mode(server.socket_dir) == 0o700


def _connections(process: psutil.Process) -> list[Any]:
    deadline = time.monotonic() + WAIT_S
    while True:
        try:
            return process.net_connections(kind="all")
        except psutil.AccessDenied:  # another user's process (the server's own user under root)
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
