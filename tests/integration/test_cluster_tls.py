"""A cluster whose TCP endpoints speak TLS: work and objects cross nodes, plaintext peers get nowhere.

Certificates are made here with the ``openssl`` command: a CA, and one
certificate for every node that names the cluster (``ember-cluster``), not a
host, so clients check it through ``EMBER_TLS_SERVER_NAME``.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import numpy as np
import pytest

import ember
from ember.chaos import LocalCluster
from ember.scheduler import _tls

pytestmark = [pytest.mark.usefixtures("private_runtime_dir"),
              pytest.mark.skipif(shutil.which("openssl") is None,
                                 reason="makes its test certificates with the openssl command, which is not installed")]

GET_TIMEOUT_S = 120.0
PLAINTEXT_WAIT_S = 3.0


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def tls_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    folder = tmp_path_factory.mktemp("tls")
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
             "-subj", "/CN=ember test CA", cwd=folder)
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "node.key", "-out", "node.csr",
             "-subj", "/CN=ember-cluster", cwd=folder)
    (folder / "ext.cnf").write_text("subjectAltName=DNS:ember-cluster\n")
    _openssl("x509", "-req", "-in", "node.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
             "-out", "node.pem", "-days", "2", "-extfile", "ext.cnf", cwd=folder)
    env = {_tls.CERT_ENV: str(folder / "node.pem"), _tls.KEY_ENV: str(folder / "node.key"),
           _tls.CA_ENV: str(folder / "ca.pem"), _tls.SERVER_NAME_ENV: "ember-cluster"}
    old = {name: os.environ.get(name) for name in env}
    os.environ.update(env)  # the nodes' daemons, and this driver, inherit it
    try:
        yield env
    finally:
        for name, value in old.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def test_tasks_and_objects_cross_nodes_over_tls_and_plaintext_peers_are_refused(tls_env: dict[str, str]) -> None:
    nodes = [{"num_cpus": 1}, {"num_cpus": 1, "resources": {"far": 1}}]
    with LocalCluster(nodes=nodes) as cluster:
        ember.init(address=cluster.address)
        try:
            @ember.remote(resources={"far": 0.01})
            def made_far(n: int) -> tuple[np.ndarray, str]:
                return np.ones(n), ember.get_runtime_context().get_node_id()

            array, node = ember.get(made_far.remote(2_000_000), timeout=GET_TIMEOUT_S)  # 16 MB, pulled here
            assert (float(array.sum()), node) == (2_000_000.0, cluster.nodes[1].node_id)
        finally:
            ember.shutdown()
        # The GCS service (and every other TCP endpoint) completes no plaintext connection.
        with grpc.insecure_channel(cluster.address) as plaintext:
            with pytest.raises(grpc.FutureTimeoutError):
                grpc.channel_ready_future(plaintext).result(timeout=PLAINTEXT_WAIT_S)


def test_half_a_tls_configuration_is_refused_naming_what_is_missing(tls_env: dict[str, str]) -> None:
    with pytest.raises(_tls.TlsConfigError, match=_tls.KEY_ENV):
        _tls._read(tls_env[_tls.CERT_ENV], None, tls_env[_tls.CA_ENV], None)
    with pytest.raises(_tls.TlsConfigError, match="cannot be read"):
        _tls._read(tls_env[_tls.CERT_ENV], "/nonexistent/key.pem", tls_env[_tls.CA_ENV], None)


@pytest.mark.parametrize("address, loopback", [
    ("127.0.0.1:6380", True), ("localhost:1", True), ("[::1]:80", True), ("::1", True),
    ("0.0.0.0:6380", False), ("10.1.2.3:6380", False), ("[::]:80", False), ("example.org:1", False),
])
def test_what_counts_as_loopback(address: str, loopback: bool) -> None:
    assert _tls.is_loopback(address) is loopback


def test_a_plaintext_listener_beyond_loopback_is_warned_about(monkeypatch: pytest.MonkeyPatch,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    for name in (*_tls.FILE_ENVS, _tls.SERVER_NAME_ENV):
        monkeypatch.delenv(name, raising=False)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=1))
    try:
        with caplog.at_level(logging.WARNING, logger="ember.tls"):
            assert _tls.add_port(server, "127.0.0.1:0", "a loopback listener")
            assert "WITHOUT TLS" not in caplog.text
            assert _tls.add_port(server, "0.0.0.0:0", "an exposed listener")
        assert "an exposed listener listens on 0.0.0.0:0 WITHOUT TLS" in caplog.text
    finally:
        server.stop(None)
