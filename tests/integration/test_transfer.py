"""Object transfer between stores (issue 7): real store processes, real gRPC, one machine.

Each store runs as its own process with its own session and shared-memory
folder, like the stores of separate nodes; objects are written into a
store's folder the way a worker writes them, and pulled into another's.
Every process here is started by the test and killed by its pid.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import signal
import threading
from collections.abc import Iterator
from concurrent import futures

import grpc
import numpy as np
import psutil
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ember.exceptions import ObjectTransferError
from ember.scheduler._grpc_shared import decode, encode, token_metadata
from ember.scheduler._listener import connect
from ember.scheduler._protocol import Op
from ember.store import ObjectFiles, deserialize, serialize, to_bytes
from ember.store._serialization import HEADER_BYTES
from ember.store._transfer import CHUNK_BYTES, HEADER_KEY, PULL_METHOD, SERVICE, TransferServer
from ember.store._transfer_pull import PARALLEL_STREAMS, ObjectPuller, PullResult
from tests.fix_kill import wait_gone

CALL_TIMEOUT_S = 30.0
PULL_TIMEOUT_S = 120.0
ARRAY_BYTES = 400 * 1000 * 1000


@pytest.fixture
def token() -> bytes:
    return os.urandom(32)


def _object_id() -> bytes:
    return os.urandom(20)


@contextlib.contextmanager
def _puller(files: ObjectFiles, token: bytes, **options: float) -> Iterator[ObjectPuller]:
    puller = ObjectPuller(files, token, **options)
    try:
        yield puller
    finally:
        puller.close()


@pytest.fixture
def two_stores(start_store, token):
    return start_store(token), start_store(token)


def _leftovers(files: ObjectFiles) -> list[str]:
    return sorted(p.name for p in files.shm_dir.iterdir() if p.is_file())


def _same_bytes(a: memoryview, b: memoryview) -> bool:
    return np.array_equal(np.frombuffer(a, np.uint8), np.frombuffer(b, np.uint8))


def _ranges(result: PullResult) -> list[tuple[int, int]]:
    """The byte ranges a split pull asked for: after the first stream's header, what each range's attempts covered."""
    first, *rest = result.attempts
    assert (first.start_offset, first.end_offset, first.outcome) == (0, 0, "header only")
    # A range starts where an attempt started that no broken attempt led to.
    starts = sorted({a.start_offset for a in rest} - {a.end_offset for a in rest if a.outcome != "complete"})
    ends = sorted({a.end_offset for a in rest if a.outcome == "complete"})
    return list(zip(starts, ends))


def test_an_object_written_in_one_store_is_pulled_into_another_byte_for_byte(two_stores, token):
    source, target = two_stores
    value = {"blob": os.urandom(3 * CHUNK_BYTES + 12345), "name": "x" * 1000}
    object_id = _object_id()
    source.files.write(object_id, serialize(value))
    with _puller(target.files, token) as puller:
        result = puller.pull(object_id, [source.transfer_address], timeout_s=PULL_TIMEOUT_S)
    assert result.path.parent == target.session.shm_dir
    assert [a.outcome for a in result.attempts] == ["complete"]
    assert bytes(target.files.open(object_id)) == bytes(source.files.open(object_id))
    assert deserialize(target.files.open(object_id))[1] == value
    assert _leftovers(target.files) == [object_id.hex()]  # no temporary file left behind


def test_a_400_mb_numpy_array_round_trips_in_parallel_ranges(two_stores, token):
    source, target = two_stores
    array = np.random.default_rng(7).integers(0, 1 << 62, ARRAY_BYTES // 8, dtype=np.int64)
    object_id = _object_id()
    source.files.write(object_id, serialize(array))
    progress: list[tuple[int, int]] = []
    with _puller(target.files, token) as puller:
        result = puller.pull(object_id, [source.transfer_address], timeout_s=PULL_TIMEOUT_S,
                             progress=lambda received, total: progress.append((received, total)))
    assert result.total_bytes > ARRAY_BYTES
    ranges = _ranges(result)
    assert len(ranges) == PARALLEL_STREAMS and ranges[0][0] == 0 and ranges[-1][1] == result.total_bytes
    assert all(a.outcome in ("complete", "header only") for a in result.attempts)
    # The ranges' bytes are summed: the reports only grow, and the last one is the whole object.
    assert [received for received, _ in progress] == sorted(received for received, _ in progress)
    assert progress[-1] == (result.total_bytes, result.total_bytes)
    assert _same_bytes(target.files.open(object_id), source.files.open(object_id))
    _kind, pulled = deserialize(target.files.open(object_id))
    assert pulled.dtype == array.dtype and np.array_equal(pulled, array)


def _transfer_connections(store) -> int:
    port = int(store.transfer_address.rsplit(":", 1)[1])
    return sum(1 for conn in psutil.Process(store.proc.pid).net_connections(kind="inet")
               if conn.status == psutil.CONN_ESTABLISHED and conn.laddr.port == port)


def test_each_range_comes_over_a_connection_of_its_own(two_stores, token):
    source, target = two_stores
    object_id = _object_id()
    source.files.write(object_id, serialize(os.urandom(5 * CHUNK_BYTES + 12345)))
    with _puller(target.files, token, parallel_streams=3, split_bytes_min=0) as puller:
        result = puller.pull(object_id, [source.transfer_address], timeout_s=PULL_TIMEOUT_S)
        connections = _transfer_connections(source)
    assert _ranges(result) == [(0, 2 * CHUNK_BYTES), (2 * CHUNK_BYTES, 4 * CHUNK_BYTES),
                               (4 * CHUNK_BYTES, result.total_bytes)]
    assert connections == 3  # the first stream's connection is the first range's
    assert bytes(target.files.open(object_id)) == bytes(source.files.open(object_id))
    assert _leftovers(target.files) == [object_id.hex()]


def _raw_pull(address: str, object_id: bytes, metadata: tuple,
              **byte_range: object) -> tuple[grpc.StatusCode, object, bytes]:
    with grpc.insecure_channel(address, options=[("grpc.enable_http_proxy", 0)]) as channel:
        call = channel.unary_stream(f"/{SERVICE}/{PULL_METHOD}", request_serializer=encode)(
            {"object_id": object_id.hex(), "offset": 0, **byte_range}, timeout=CALL_TIMEOUT_S, metadata=metadata)
        received = []
        try:
            for chunk in call:
                received.append(chunk)
        except grpc.RpcError:
            pass
        return call.code(), dict(call.initial_metadata() or ()).get(HEADER_KEY), b"".join(received)


@pytest.mark.parametrize("sent", ["wrong", "missing"])
def test_a_wrong_or_missing_token_is_refused_and_the_target_gets_nothing(two_stores, token, sent):
    source, target = two_stores
    object_id = _object_id()
    source.files.write(object_id, serialize(os.urandom(CHUNK_BYTES)))
    stranger = os.urandom(32)
    code, header, received = _raw_pull(source.transfer_address, object_id,
                                       token_metadata(stranger) if sent == "wrong" else ())
    assert (code, header, received) == (grpc.StatusCode.UNAUTHENTICATED, None, b"")
    with _puller(target.files, stranger) as puller:
        with pytest.raises(ObjectTransferError, match="token") as caught:
            puller.pull(object_id, [source.transfer_address], timeout_s=PULL_TIMEOUT_S)
    assert caught.value.object_id_hex == object_id.hex()
    assert _leftovers(target.files) == []


def test_a_missing_object_raises_the_typed_error_naming_it(two_stores, token):
    source, target = two_stores
    object_id = _object_id()
    code, header, received = _raw_pull(source.transfer_address, object_id, token_metadata(token))
    assert (code, header, received) == (grpc.StatusCode.NOT_FOUND, None, b"")
    with _puller(target.files, token) as puller:
        with pytest.raises(ObjectTransferError, match=object_id.hex()) as caught:
            puller.pull(object_id, [source.transfer_address], timeout_s=PULL_TIMEOUT_S)
    assert "does not have it" in caught.value.reason
    assert _leftovers(target.files) == []


def test_a_byte_range_is_served_and_a_bad_one_refused_before_any_byte(two_stores, token):
    source, _target = two_stores
    object_id = _object_id()
    source.files.write(object_id, serialize(os.urandom(CHUNK_BYTES + 1000)))
    layout = bytes(source.files.open(object_id))
    metadata = token_metadata(token)
    code, header, received = _raw_pull(source.transfer_address, object_id, metadata, offset=100, end=CHUNK_BYTES + 200)
    assert (code, header, received) == (grpc.StatusCode.OK, layout[:HEADER_BYTES], layout[100:CHUNK_BYTES + 200])
    for byte_range, refused in [
        ({"end": len(layout) + 1}, grpc.StatusCode.OUT_OF_RANGE),
        ({"offset": len(layout) + 1}, grpc.StatusCode.OUT_OF_RANGE),
        ({"offset": 10, "end": 9}, grpc.StatusCode.INVALID_ARGUMENT),
        ({"end": "all"}, grpc.StatusCode.INVALID_ARGUMENT),
    ]:
        assert _raw_pull(source.transfer_address, object_id, metadata, **byte_range) == (refused, None, b""), byte_range


def test_sigkill_of_the_source_mid_stream_resumes_every_range_from_another_copy(start_store, token):
    source, target, second = start_store(token), start_store(token), start_store(token)
    array = np.arange(ARRAY_BYTES // 8, dtype=np.int64)
    object_id = _object_id()
    serialized = serialize(array)
    source.files.write(object_id, serialized)
    second.files.write(object_id, serialized)
    killed_at: list[int] = []

    def kill_the_source_once_chunks_arrived(received_bytes: int, total_bytes: int) -> None:
        if not killed_at and received_bytes >= 2 * CHUNK_BYTES:
            killed_at.append(received_bytes)
            os.kill(source.proc.pid, signal.SIGKILL)
            wait_gone(source.proc.pid)

    with _puller(target.files, token) as puller:
        result = puller.pull(object_id, [source.transfer_address, second.transfer_address],
                             timeout_s=PULL_TIMEOUT_S, progress=kill_the_source_once_chunks_arrived)
    assert source.proc.wait(timeout=CALL_TIMEOUT_S) == -signal.SIGKILL
    ranges = _ranges(result)
    assert len(ranges) == PARALLEL_STREAMS
    broken, resumed = (sorted((a for a in result.attempts[1:] if a.source == copy.transfer_address),
                              key=lambda a: a.start_offset) for copy in (source, second))
    # Each range broke with the source (none could finish: it died a few chunks into the object) ...
    assert [(a.start_offset, a.outcome != "complete") for a in broken] == [(start, True) for start, _ in ranges]
    assert killed_at[0] <= sum(a.end_offset - a.start_offset for a in broken) < result.total_bytes
    # ... and the recovery path ran for each: the second copy was asked from where it broke, not from its start.
    assert [(a.start_offset, a.end_offset, a.outcome) for a in resumed] == [
        (b.end_offset, end, "complete") for b, (_, end) in zip(broken, ranges)]
    assert _same_bytes(target.files.open(object_id), second.files.open(object_id))
    assert np.array_equal(deserialize(target.files.open(object_id))[1], array)


def test_the_store_names_its_transfer_address_in_its_statistics(start_store, token):
    store = start_store(token)
    conn = connect(store.session.store_socket, token, {"kind": "test"}, lambda conn, msg: None)
    try:
        stats = conn.call(Op.STORE_STATS, timeout_s=CALL_TIMEOUT_S)
    finally:
        conn.close()
    assert stats["transfer_address"] == store.transfer_address
    assert store.transfer_address.startswith("127.0.0.1:")


def _tcp_listeners(pid: int) -> list[str]:
    """``ip:port`` of each listening socket, IPv4-mapped IPv6 addresses (gRPC's dual-stack sockets) as IPv4."""
    found = []
    for conn in psutil.Process(pid).net_connections(kind="inet"):
        if conn.status == psutil.CONN_LISTEN:
            ip = ipaddress.ip_address(conn.laddr.ip)
            mapped = getattr(ip, "ipv4_mapped", None)
            found.append(f"{mapped or ip}:{conn.laddr.port}")
    return found


def test_without_the_option_nothing_new_listens(start_store, token):
    plain = start_store(token, transfer_bind=None)
    serving = start_store(token)
    assert _tcp_listeners(plain.proc.pid) == []
    assert _tcp_listeners(serving.proc.pid) == [serving.transfer_address]  # loopback only
    assert not (plain.session.sockets / "store.transfer").exists()


class _StallingSource:
    """A peer that announces a real header, then sends nothing: a hung store, as the puller sees it."""

    def __init__(self, header: bytes) -> None:
        self.release = threading.Event()
        self._header = header
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        handler = grpc.unary_stream_rpc_method_handler(self._pull)
        self.server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(SERVICE, {PULL_METHOD: handler})])
        self.address = f"127.0.0.1:{self.server.add_insecure_port('127.0.0.1:0')}"
        self.server.start()

    def _pull(self, request, context):
        context.send_initial_metadata(((HEADER_KEY, self._header),))
        self.release.wait(CALL_TIMEOUT_S)
        return iter(())


def test_a_source_that_stalls_is_given_up_on_and_the_next_one_finishes(tmp_path, token):
    # In-process servers: the hang is the test's own fake peer; the real one is ember's TransferServer.
    real = ObjectFiles(tmp_path / "real", tmp_path / "real-spill")
    object_id = _object_id()
    real.write(object_id, serialize(os.urandom(CHUNK_BYTES)))
    stalling = _StallingSource(bytes(real.open(object_id)[:HEADER_BYTES]))
    server = TransferServer(real, token, "127.0.0.1:0")
    target = ObjectFiles(tmp_path / "target", tmp_path / "target-spill")
    try:
        with _puller(target, token, stall_timeout_s=0.5) as puller:
            result = puller.pull(object_id, [stalling.address, server.address], timeout_s=PULL_TIMEOUT_S)
    finally:
        stalling.release.set()
        stalling.server.stop(0)
        server.stop()
    assert [(a.source, a.outcome.split(":")[0]) for a in result.attempts] == [
        (stalling.address, "stalled"), (server.address, "complete")]
    assert bytes(target.open(object_id)) == bytes(real.open(object_id))


class _HalfSource:
    """A peer that has the first range of a split object but not the second. It refuses the second only
    once it serves the first, and then holds the first stream open, recording whether the puller cut it."""

    def __init__(self, layout: bytes, second_range_start: int) -> None:
        self.serving_first = threading.Event()
        self.first_done = threading.Event()
        self.first_cut_by_puller = False
        self._layout = layout
        self._second_range_start = second_range_start
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        handler = grpc.unary_stream_rpc_method_handler(self._pull, request_deserializer=decode)
        self.server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(SERVICE, {PULL_METHOD: handler})])
        self.address = f"127.0.0.1:{self.server.add_insecure_port('127.0.0.1:0')}"
        self.server.start()

    def _pull(self, request, context):
        if request.get("end") is None:  # the first stream: the header tells the size
            context.send_initial_metadata(((HEADER_KEY, self._layout[:HEADER_BYTES]),))
            return iter(())
        if request["offset"] >= self._second_range_start:
            self.serving_first.wait(CALL_TIMEOUT_S)
            context.abort(grpc.StatusCode.NOT_FOUND, "not this range")
        ended = threading.Event()
        context.add_callback(ended.set)
        context.send_initial_metadata(((HEADER_KEY, self._layout[:HEADER_BYTES]),))
        self.serving_first.set()
        self.first_cut_by_puller = ended.wait(CALL_TIMEOUT_S)
        self.first_done.set()
        return iter(())


def test_a_range_no_source_can_serve_fails_the_pull_and_cuts_the_other_ranges(tmp_path, token):
    object_id = _object_id()
    layout = to_bytes(serialize(os.urandom(2 * CHUNK_BYTES + 1000)), object_id)
    half = _HalfSource(layout, second_range_start=2 * CHUNK_BYTES)
    target = ObjectFiles(tmp_path / "target", tmp_path / "target-spill")
    try:
        # The stall watch never fires here: only the failed range can end the first range's stream.
        with _puller(target, token, parallel_streams=2, split_bytes_min=0,
                     stall_timeout_s=10 * CALL_TIMEOUT_S) as puller:
            with pytest.raises(ObjectTransferError, match="every source failed") as caught:
                puller.pull(object_id, [half.address], timeout_s=PULL_TIMEOUT_S)
        assert half.first_done.wait(CALL_TIMEOUT_S)
    finally:
        half.server.stop(0)
    assert f"{half.address} from byte {2 * CHUNK_BYTES}: does not have it" in caught.value.reason
    assert half.first_cut_by_puller
    assert not target.exists(object_id) and _leftovers(target) == []


def test_junk_pull_requests_are_refused_and_the_service_keeps_serving(two_stores, token):
    """Random request bodies, object ids and byte ranges, with and without the token: each call ends with
    a refusal or the bytes asked for, and a real pull works afterwards."""
    source, target = two_stores
    object_id = _object_id()
    source.files.write(object_id, serialize(os.urandom(3 * CHUNK_BYTES)))
    size = source.files.size_of(object_id)
    json_values = st.one_of(st.none(), st.booleans(), st.integers(-(2**40), 2**40), st.text(max_size=12),
                            st.floats(allow_nan=False, allow_infinity=False))
    bodies = st.one_of(
        st.binary(max_size=64),
        st.dictionaries(st.sampled_from(["object_id", "offset", "end", "other"]), json_values, max_size=4)
        .map(lambda d: json.dumps(d).encode()),
        st.tuples(st.integers(-5, size + 5), st.one_of(st.none(), st.integers(-5, size + 5)))
        .map(lambda r: json.dumps({"object_id": object_id.hex(), "offset": r[0]}
                                  | ({} if r[1] is None else {"end": r[1]})).encode()),
    )

    @settings(max_examples=40, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
    @given(body=bodies, right_token=st.booleans())
    def junk(body: bytes, right_token: bool) -> None:
        metadata = token_metadata(token if right_token else os.urandom(32))
        with grpc.insecure_channel(source.transfer_address, options=[("grpc.enable_http_proxy", 0)]) as channel:
            call = channel.unary_stream(f"/{SERVICE}/{PULL_METHOD}")(body, timeout=CALL_TIMEOUT_S, metadata=metadata)
            try:
                received = b"".join(call)
            except grpc.RpcError as exc:
                assert exc.code() in {grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.INVALID_ARGUMENT,
                                      grpc.StatusCode.NOT_FOUND, grpc.StatusCode.OUT_OF_RANGE}, exc
            else:
                request = json.loads(body)
                start, end = request.get("offset", 0), request.get("end", size)
                assert right_token and 0 <= start <= end <= size
                assert len(received) == end - start

    junk()
    assert source.proc.poll() is None
    with _puller(target.files, token) as puller:
        assert puller.pull(object_id, [source.transfer_address], timeout_s=PULL_TIMEOUT_S).total_bytes == size
