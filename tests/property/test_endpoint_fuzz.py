"""Junk at every endpoint of a running cluster: refused, logged, nothing lost (issue 8, point 3).

One local cluster (``ember.init(num_cpus=2)``) with a small and a large
object stored before any junk arrives. Endpoints: the scheduler's socket, the
store's, a worker's listener, the driver's own listener, and the GCS
service's gRPC socket. What each example sends:

- bytes that are not a preamble, and a preamble with a wrong token followed by
  a pickle whose unpickling would create a directory: nothing may be
  unpickled (the directory must not appear);
- the right token, then random bytes, a truncated frame, a frame over the
  size limit, a frame that does not unpickle, or a batch that is not a list
  of messages;
- the right token and a HELLO, then well-formed pickled messages of the wrong
  shape (any op, wrong arity, wrong field types) or naming ids nobody has;
- to the GCS service: a wrong token, an unknown method, bodies that are not
  JSON (a pickle among them), and JSON of the wrong shape.

After each example, the endpoint must still serve a proper client, every
process of the cluster must have the pid it had, a task must give the right
value, and both stored objects must read back unchanged. Faults are not
injected here: the junk is the fault. The one process that may go is a task
worker the scheduler retired after idling (the pool grows while tasks wait
for a worker and shrinks back to ``num_cpus``); the GCS must have recorded
that as its cause, and the junk meant for a worker goes to one still running.

Run: ``.venv/bin/python -m pytest tests/property/test_endpoint_fuzz.py -q``
(ci profile: fixed seed, a few dozen examples per test).
"""

from __future__ import annotations

import json
import os
import pickle
import struct
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import psycopg
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import ember
import ember.chaos
from ember.lineage._rpc import SERVICE, TOKEN_KEY, client_for
from ember.scheduler._listener import ClusterStartError, connect
from ember.scheduler import _messages
from ember.scheduler._protocol import FRAME_BYTES_MAX, OP_NAMES, PREAMBLE_MAGIC, Op
from ember.scheduler._spec import OBJECT_ID_BYTES, TASK_ID_BYTES, TaskKind, TaskSpec
from tests.endpoint_junk import SideEffect, frame, send_raw
from tests.fix_cluster import poll_until

ENDPOINTS = ["scheduler", "store", "worker", "driver"]
LARGE_BYTES = 1 << 20
EXAMPLES = 30


@ember.remote
def add_one(x: int) -> int:
    return x + 1


class Cluster:
    """The running cluster and what was stored in it before the junk."""

    def __init__(self, marker_dir: Path) -> None:
        self.session = ember._runtime._session
        self.core = ember._runtime.require_core()
        self.token = self.session.token()
        self.small = ember.put({"answer": 42})
        self.large = ember.put(b"L" * LARGE_BYTES)
        assert ember.get(add_one.remote(1)) == 2  # the workers are up
        info = client_for(self.session.gcs_address, self.token).call("Info")
        self.conninfo, self.cluster_id = info["gcs_conninfo"], info["cluster_id"]
        self.pids = self._pids()
        self.marker = marker_dir / "unpickled"

    @staticmethod
    def _pids() -> dict[int, str]:
        return {p.pid: p.kind for p in ember.chaos.processes()}

    def socket_path(self, endpoint: str) -> str:
        if endpoint == "scheduler":
            return str(self.session.scheduler_socket)
        if endpoint == "store":
            return str(self.session.store_socket)
        return self.core.address

    def send(self, endpoint: str, data: bytes) -> None:
        if endpoint == "worker":
            self._at_a_worker(lambda path: send_raw(path, data))
        else:
            send_raw(self.socket_path(endpoint), data)

    def _at_a_worker(self, use: Callable[[str], Any]) -> Any:
        """``use(socket)`` at a running task worker; one that stopped listening must have retired."""
        live = self._pids()
        for worker_id, pid in self._gcs_rows("SELECT worker_id, pid FROM workers WHERE cluster_id = %s "
                                             "AND kind = 'worker' AND actor_id IS NULL ORDER BY pid"):
            if live.get(pid) != "worker":
                continue
            try:
                return use(str(self.session.worker_socket("worker", bytes(worker_id))))
            except (ConnectionRefusedError, FileNotFoundError, ClusterStartError):
                self._assert_retired([pid])
        raise AssertionError("no worker listener to fuzz")

    def _assert_retired(self, pids: list[int]) -> None:
        """Each of these task workers ended because the scheduler retired it after idling."""
        def causes() -> dict[int, str | None]:
            return dict(self._gcs_rows("SELECT pid, death_cause FROM workers WHERE cluster_id = %s "
                                       "AND pid = ANY(%s)", pids))

        def all_known() -> dict[int, str | None] | None:
            found = causes()
            return found if all(found.get(pid) for pid in pids) else None

        # The scheduler reports a death to the GCS in the background: wait for every cause.
        found = poll_until(all_known, timeout_s=30)
        assert found and all(cause == "stopped after idling" for cause in found.values()), \
            f"a worker died or was replaced: {found or causes()}"

    def _gcs_rows(self, sql: str, *params: Any) -> list[tuple]:
        with psycopg.connect(self.conninfo) as conn:
            return conn.execute(sql, (self.cluster_id, *params)).fetchall()

    def check_healthy(self, endpoint: str) -> None:
        assert not self.marker.exists(), "a peer without the token got a pickle loaded"
        self._proper_client(endpoint)
        assert ember.get(add_one.remote(41), timeout=30) == 42
        assert ember.get(self.small, timeout=30) == {"answer": 42}
        assert ember.get(self.large, timeout=30) == b"L" * LARGE_BYTES
        self._check_processes()
        assert ember.nodes()  # the GCS service answers

    def _check_processes(self) -> None:
        now = self._pids()
        gone = [pid for pid, kind in self.pids.items() if pid not in now and kind == "worker"]
        if gone:
            self._assert_retired(gone)
        steady = {pid: kind for pid, kind in self.pids.items() if pid not in gone}
        assert {pid: kind for pid, kind in now.items() if pid in steady or kind != "worker"} == steady, \
            "a process of the cluster died or was replaced"
        self.pids = now  # the pool may have grown: new workers are watched from now on

    def _proper_client(self, endpoint: str) -> None:
        hello = {"kind": "fuzz-check", "pid": os.getpid()}
        if endpoint == "worker":
            conn = self._at_a_worker(lambda path: connect(path, self.token, hello, lambda c, m: None,
                                                          name="check-worker", timeout_s=2))
        else:
            conn = connect(self.socket_path(endpoint), self.token, hello, lambda c, m: None, name=f"check-{endpoint}")
        try:
            if endpoint == "scheduler":
                assert conn.call(Op.RESOURCES, timeout_s=10)[0]["CPU"] == 2.0
            elif endpoint == "store":
                assert conn.call(Op.STORE_STATS, timeout_s=10)["objects"] >= 1
            else:  # a core client: an owner answers a flush request for an actor it never called
                assert conn.call(Op.FLUSH_LOG, os.urandom(TASK_ID_BYTES), timeout_s=10) in (True, False)
        finally:
            conn.close()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    ember.init(num_cpus=2, object_store_memory=256 << 20)
    try:
        yield Cluster(tmp_path_factory.mktemp("fuzz"))
    finally:
        ember.shutdown()


# -- sending junk ------------------------------------------------------------------------------


ids = st.one_of(
    st.binary(min_size=TASK_ID_BYTES, max_size=TASK_ID_BYTES),
    st.binary(min_size=OBJECT_ID_BYTES, max_size=OBJECT_ID_BYTES),
    st.binary(max_size=24),
)
scalars = st.one_of(st.none(), st.booleans(), st.integers(-(2**40), 2**40), st.text(max_size=12), ids,
                    st.floats(allow_nan=False))
fields = st.one_of(scalars, st.lists(scalars, max_size=3), st.lists(ids, max_size=3),
                   st.dictionaries(st.text(max_size=6), scalars, max_size=3))
# Every op but a well-formed SHUTDOWN, which a cluster member may send and which stops the scheduler.
messages = st.builds(
    lambda op, rest: (int(op), *rest),
    st.sampled_from([op for op in OP_NAMES if op not in (Op.HELLO, Op.REPLY)] + [0, 9999]),
    st.lists(fields, max_size=7),
).filter(lambda msg: msg != (int(Op.SHUTDOWN),))


def _id(length: int) -> st.SearchStrategy[bytes]:
    return st.binary(min_size=length, max_size=length)


# A task nobody can run: an unknown function, for an owner that does not exist.
specs = st.builds(
    lambda task_id, function_id, owner: TaskSpec(
        task_id, TaskKind.NORMAL, b"fuzz", f"/nonexistent/ember-fuzz-{owner}", function_id, "fuzz", [], None, 1,
        (("CPU", 1.0),), 0),
    _id(TASK_ID_BYTES), _id(16), st.integers(0, 1000),
)


def _field(field: Any) -> st.SearchStrategy[Any]:
    if isinstance(field, _messages._Id):
        return _id(field.length)
    if isinstance(field, _messages._ListOf):
        return st.lists(_id(field.item.length), max_size=3)
    if field is _messages._ANY:
        return scalars
    if isinstance(field, tuple):
        return st.one_of(*[_field(f) for f in field])
    return {TaskSpec: specs, bool: st.booleans(), int: st.integers(0, 1 << 20), str: st.text(max_size=12),
            bytes: st.binary(max_size=16), type(None): st.none(), list: st.just([]), dict: st.just({}),
            tuple: st.just(())}[field]


# Messages of the right shape that name ids nobody has, of the ops each
# endpoint takes. Left out: what a cluster member may send to change the
# cluster for real (stop the scheduler, start an actor).
ACCEPTED = {
    "scheduler": _messages.SCHEDULER_OPS - {Op.SHUTDOWN, Op.CREATE_ACTOR},
    "store": _messages.STORE_OPS,
    "worker": _messages.CORE_OPS,
    "driver": _messages.CORE_OPS,
}


def well_formed(endpoint: str) -> st.SearchStrategy[tuple]:
    return st.sampled_from(sorted(ACCEPTED[endpoint])).flatmap(
        lambda op: st.tuples(st.just(op), *[_field(f) for f in _messages.SHAPES[op][0]]))


@settings(max_examples=EXAMPLES)
@given(endpoint=st.sampled_from(ENDPOINTS), junk=st.binary(max_size=256), kind=st.sampled_from(
    ["no-preamble", "wrong-token", "wrong-magic"]))
def test_no_token_no_unpickling(cluster: Cluster, endpoint: str, junk: bytes, kind: str) -> None:
    bomb = frame([SideEffect(cluster.marker)])
    wrong = bytes(b ^ 0xFF for b in cluster.token)
    data = {
        "no-preamble": junk + bomb,
        "wrong-token": PREAMBLE_MAGIC + wrong + bomb + junk,
        "wrong-magic": b"EMBR\x02" + cluster.token + bomb,
    }[kind]
    cluster.send(endpoint, data)
    cluster.check_healthy(endpoint)


@settings(max_examples=EXAMPLES)
@given(endpoint=st.sampled_from(ENDPOINTS), junk=st.binary(max_size=512), kind=st.sampled_from(
    ["random", "truncated", "oversized", "huge-claim", "not-pickle", "not-a-list", "not-tuples", "bad-hello"]))
def test_right_token_then_bad_frames(cluster: Cluster, endpoint: str, junk: bytes, kind: str) -> None:
    preamble = PREAMBLE_MAGIC + cluster.token
    hello = frame([(Op.HELLO, {"kind": "fuzz", "pid": os.getpid()})])
    body = {
        "random": junk,
        "truncated": hello + frame([(Op.RESOURCES, 1)] * 8)[: 8 + len(junk) // 4],
        "oversized": hello + struct.pack("<Q", FRAME_BYTES_MAX + 1 + len(junk)) + junk,
        "huge-claim": hello + struct.pack("<Q", FRAME_BYTES_MAX) + junk,  # then the stream ends
        "not-pickle": hello + struct.pack("<Q", len(junk) + 1) + b"\xff" + junk,
        "not-a-list": hello + frame({"op": junk}),
        "not-tuples": hello + frame([junk, [1, 2], None]),
        "bad-hello": frame([(Op.HELLO, {"kind": junk, "pid": "not a pid"})]) + frame([(Op.RESOURCES, 1)]),
    }[kind]
    cluster.send(endpoint, preamble + body)
    cluster.check_healthy(endpoint)


@settings(max_examples=EXAMPLES * 2)
@given(endpoint=st.sampled_from(ENDPOINTS), batch=st.lists(messages, min_size=1, max_size=6))
def test_messages_of_the_wrong_shape(cluster: Cluster, endpoint: str, batch: list) -> None:
    _send_messages(cluster, endpoint, batch)


@settings(max_examples=EXAMPLES * 2)
@given(endpoint=st.sampled_from(ENDPOINTS), data=st.data())
def test_well_formed_messages_with_unknown_ids(cluster: Cluster, endpoint: str, data: st.DataObject) -> None:
    _send_messages(cluster, endpoint, data.draw(st.lists(well_formed(endpoint), min_size=1, max_size=6)))


def _send_messages(cluster: Cluster, endpoint: str, batch: list) -> None:
    preamble = PREAMBLE_MAGIC + cluster.token
    hello = frame([(Op.HELLO, {"kind": "fuzz", "pid": os.getpid()})])
    cluster.send(endpoint, preamble + hello + frame(batch))
    cluster.check_healthy(endpoint)


# -- the GCS service ---------------------------------------------------------------------------

GCS_METHODS = ["Register", "Heartbeat", "Unregister", "Nodes", "Info", "JobFinished", "ProcessEvents", "Place",
               "LocateActor", "ClaimName", "LookupName", "ReleaseName", "Nope"]
json_scalars = st.one_of(st.none(), st.booleans(), st.integers(-(2**40), 2**40), st.text(max_size=10),
                         st.floats(allow_nan=False, allow_infinity=False))
# Two levels, spelled out: deep enough for the checks of every call, and no st.recursive (whose
# check that ``extend`` uses its argument misfires when the strategy is shared between tests).
json_values = st.one_of(json_scalars, st.lists(json_scalars, max_size=3),
                        st.dictionaries(st.text(max_size=8), json_scalars, max_size=3))
gcs_keys = st.sampled_from(["node_id", "address", "resources", "events", "restarted", "cause", "job_id", "state",
                            "tasks", "avoid", "inputs", "actor_id", "name", "meta"])
gcs_bodies = st.one_of(
    st.binary(max_size=128).map(lambda b: ("raw", b)),
    json_values.map(lambda v: ("json", json.dumps(v).encode())),
    st.dictionaries(gcs_keys, json_values, max_size=5).map(lambda d: ("json", json.dumps(d).encode())),
    st.just(("pickle", b"")),  # filled in with the side-effect pickle
)


@settings(max_examples=EXAMPLES * 2)
@given(method=st.sampled_from(GCS_METHODS), body=gcs_bodies, right_token=st.booleans())
def test_gcs_service_junk(cluster: Cluster, method: str, body: tuple[str, bytes], right_token: bool) -> None:
    kind, data = body
    if kind == "pickle":
        data = pickle.dumps(SideEffect(cluster.marker))
    token = cluster.token.hex() if right_token else os.urandom(len(cluster.token)).hex()
    with grpc.insecure_channel(cluster.session.gcs_address) as channel:
        call = channel.unary_unary(f"/{SERVICE}/{method}")  # raw bytes in, raw bytes out
        try:
            reply = json.loads(call(data, timeout=10, metadata=((TOKEN_KEY, token),)))
        except grpc.RpcError as exc:
            expected = {grpc.StatusCode.UNAUTHENTICATED} if not right_token else {
                grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.UNIMPLEMENTED}
            assert exc.code() in expected, exc
        else:
            # Accepted only with the token, a known method and a body of the right shape.
            assert right_token and method != "Nope" and isinstance(reply, dict)
    assert client_for(cluster.session.gcs_address, cluster.token).call("Info")["cluster_id"]
    cluster.check_healthy("scheduler")


place_tasks = st.lists(st.dictionaries(st.sampled_from(["resources", "inputs"]), st.one_of(
    json_values, st.dictionaries(st.text(max_size=6), json_values, max_size=3)), max_size=2), max_size=4)


@settings(max_examples=EXAMPLES)
@given(tasks=place_tasks, avoid=json_values)
def test_the_global_scheduler_refuses_junk_placements(cluster: Cluster, tasks: list, avoid: Any) -> None:
    body = json.dumps({"node_id": "fuzz", "tasks": tasks, "avoid": avoid}).encode()
    with grpc.insecure_channel(cluster.session.gcs_address) as channel:
        call = channel.unary_unary(f"/{SERVICE}/Place")
        try:
            reply = json.loads(call(body, timeout=10, metadata=((TOKEN_KEY, cluster.token.hex()),)))
        except grpc.RpcError as exc:
            assert exc.code() is grpc.StatusCode.INVALID_ARGUMENT, exc
        else:
            assert len(reply["placements"]) == len(tasks)
    assert client_for(cluster.session.gcs_address, cluster.token).call("Info")["cluster_id"]
