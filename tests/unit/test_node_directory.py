"""The node directory against a real GCS service (gRPC on a Unix socket, no log): cached, and asked again on a miss."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ember.lineage._cluster_table import ClusterTable
from ember.lineage._gcs_service import GcsService
from ember.lineage._rpc import serve
from ember.scheduler import _node_directory
from ember.scheduler._node_directory import NodeDirectory
from tests.fix_cluster import poll_until

ENDPOINT = "127.0.0.1:7001"
NODE = {"node_id": "n1", "address": f"grpc://{ENDPOINT}/tmp/s/scheduler", "resources": {"CPU": 1.0}}


@pytest.fixture
def gcs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(_node_directory, "REFRESH_S", 0.05)
    token = os.urandom(32)
    service = GcsService(ClusterTable(None, "c1"), "p1", None, "n1")
    service.loaded.set()
    address = f"unix:{tmp_path / 'gcs'}"
    server = serve(address, token, service.handlers())
    try:
        yield service, NodeDirectory(address, token)
    finally:
        server.stop(0)


def test_a_record_without_what_the_caller_needs_is_asked_for_again(gcs):
    service, directory = gcs
    service.register(NODE)  # registered, its transfer endpoint not yet known (a GCS that just restarted)
    assert directory.find(ENDPOINT)["transfer"] is None
    service.register({**NODE, "transfer": "127.0.0.1:7002"})
    assert directory.find(ENDPOINT)["transfer"] is None  # a known record is kept: no call per lookup
    has_transfer = lambda node: node.get("transfer")  # noqa: E731
    found = poll_until(lambda: (directory.find(ENDPOINT, usable=has_transfer) or {}).get("transfer"), 10.0)
    assert found == "127.0.0.1:7002"


def test_an_unknown_endpoint_is_none(gcs):
    service, directory = gcs
    service.register(NODE)
    assert directory.find("127.0.0.1:9") is None
