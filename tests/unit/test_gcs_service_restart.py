"""What a GCS service answers between its start and its load from PostgreSQL, and how nodes come back to it.

No processes: the service object alone, with a table that writes nothing
(no log configured), loaded or not by hand.
"""

from __future__ import annotations

import pytest

from ember.lineage import _gcs_service
from ember.lineage._cluster_table import ClusterTable
from ember.lineage._gcs_service import GcsService
from ember.lineage._rpc import Unavailable

NODE = {"node_id": "n1", "address": "grpc://127.0.0.1:1/tmp/s/scheduler", "resources": {"CPU": 1.0}}


@pytest.fixture
def service(monkeypatch: pytest.MonkeyPatch) -> GcsService:
    monkeypatch.setattr(_gcs_service, "LOAD_WAIT_S", 0.01)
    return GcsService(ClusterTable(None, "c1"), "p1", None, "n1")


@pytest.mark.parametrize("method, request_", [
    ("place", {"node_id": "n1", "tasks": [{"resources": {"CPU": 1.0}}]}),
    ("locate_actor", {"actor_id": "ab"}),
    ("lookup_name", {"name": "tally"}),
    ("claim_name", {"name": "tally", "actor_id": "ab", "meta": ""}),
])
def test_before_its_load_it_says_retry_rather_than_nothing_fits_or_no_such_actor(service, method, request_):
    with pytest.raises(Unavailable):
        getattr(service, method)(request_)
    service.loaded.set()
    getattr(service, method)(request_)  # answered once loaded


def test_a_node_it_only_loaded_from_the_table_is_asked_to_register_again(service):
    service._nodes["n1"] = _gcs_service._Node(NODE["node_id"], NODE["address"], NODE["resources"])  # as load() does
    service.loaded.set()
    assert service.heartbeat({"node_id": "n1"}) == {"known": False}
    service.register({**NODE, "transfer": "127.0.0.1:2"})
    assert service.heartbeat({"node_id": "n1"})["known"] is True
    assert service.nodes({})["nodes"][0]["transfer"] == "127.0.0.1:2"
