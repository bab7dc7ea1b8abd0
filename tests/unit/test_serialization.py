"""The object format: round trips, zero-copy reads, user-facing errors and corrupt regions."""

from __future__ import annotations

import pickle
import struct
import subprocess
import sys
import threading
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from ember.exceptions import EmberInternalError, SerializationError
from ember.store._serialization import (
    BUFFER_ALIGNMENT_BYTES,
    HEADER_BYTES,
    MAGIC,
    ObjectKind,
    SerializedObject,
    deserialize,
    read_header,
    serialize,
    serialize_error,
    to_bytes,
    write_into,
)

OBJECT_ID = bytes(range(1, 21))


def round_trip(value: Any) -> Any:
    kind, result = deserialize(to_bytes(serialize(value), OBJECT_ID))
    assert kind is ObjectKind.VALUE
    return result


def region_address(region: Any) -> int:
    return int(np.frombuffer(region, dtype=np.uint8).ctypes.data)


class Point:
    def __init__(self, x: int, y: int) -> None:
        self.x = x
        self.y = y

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Point) and (self.x, self.y) == (other.x, other.y)


@pytest.mark.parametrize(
    "value",
    [
        0,
        -(2**70),
        3.5,
        1 + 2j,
        True,
        None,
        "",
        "héllo" * 1000,
        b"\x00\xff" * 100,
        (1, "two", 3.0),
        [1, [2, [3, [4]]]],
        {"a": 1, "b": {"c": [1, 2, {"d": (None, b"x")}]}},
        {1, 2, 3},
        Point(1, 2),
        {f"key{i}": i for i in range(100)},  # past the plain-container fast path
    ],
)
def test_round_trip_keeps_value(value: Any) -> None:
    assert round_trip(value) == value


def test_closures_and_local_classes_travel_by_value() -> None:
    offset = 10

    def add_offset(x: int) -> int:
        return x + offset

    class Local:
        def twice(self, x: int) -> int:
            return 2 * x

    assert round_trip(add_offset)(5) == 15
    assert round_trip(lambda x: x * offset)(3) == 30
    assert round_trip(Local)().twice(4) == 8


def test_header_names_id_kind_and_size() -> None:
    obj = serialize({"x": 1})
    region = to_bytes(obj, b"short")
    assert read_header(region) == (b"short", ObjectKind.VALUE, obj.total_size)
    assert read_header(region[:HEADER_BYTES]) == (b"short", ObjectKind.VALUE, obj.total_size)
    assert len(region) == obj.total_size
    assert region[:4] == MAGIC


def test_numpy_array_is_read_only_view_of_region() -> None:
    array = np.arange(100_000, dtype=np.float64)
    obj = serialize(array)
    assert len(obj.meta) < 1000, "the array data must not be in the pickle stream"
    region = to_bytes(obj, OBJECT_ID)
    _kind, result = deserialize(memoryview(region))
    np.testing.assert_array_equal(result, array)
    assert not result.flags.writeable
    assert np.shares_memory(result, np.frombuffer(region, dtype=np.uint8))
    assert (result.ctypes.data - region_address(region)) % BUFFER_ALIGNMENT_BYTES == 0
    with pytest.raises(ValueError, match="read-only"):
        result[0] = 1.0


def test_serialize_does_not_copy_array_data() -> None:
    array = np.arange(1000, dtype=np.int32)
    (buffer,) = serialize(array).buffers
    assert np.shares_memory(np.frombuffer(buffer, dtype=np.uint8), array)


@pytest.mark.parametrize(
    "array",
    [
        np.asfortranarray(np.arange(12.0).reshape(3, 4)),
        np.arange(40)[::3],  # not contiguous: goes in band
        np.zeros((0, 5)),
        np.array(["a", "bc"], dtype=object),
    ],
)
def test_numpy_layouts_round_trip(array: np.ndarray) -> None:
    result = round_trip(array)
    np.testing.assert_array_equal(result, array)
    assert result.dtype == array.dtype


def test_write_into_larger_dirty_destination() -> None:
    obj = serialize({"a": np.arange(10), "b": np.ones(7)})
    dest = bytearray(b"\xab" * (obj.total_size + 100))
    write_into(obj, memoryview(dest), OBJECT_ID)
    _kind, result = deserialize(bytes(dest))
    np.testing.assert_array_equal(result["a"], np.arange(10))
    np.testing.assert_array_equal(result["b"], np.ones(7))
    assert bytes(dest[: obj.total_size]) == to_bytes(obj, OBJECT_ID)


def test_write_into_too_small_destination_raises() -> None:
    obj = serialize(np.arange(10))
    with pytest.raises(ValueError, match="needs"):
        write_into(obj, memoryview(bytearray(obj.total_size - 1)), OBJECT_ID)


def test_object_id_longer_than_20_bytes_is_refused() -> None:
    with pytest.raises(ValueError, match="at most 20"):
        to_bytes(serialize(1), bytes(21))


def test_contained_refs_are_kept() -> None:
    obj = serialize(1)
    assert obj.contained_refs == []
    obj.contained_refs.append("ref")
    assert SerializedObject(ObjectKind.VALUE, b"", [], ["r"]).contained_refs == ["r"]


@pytest.mark.parametrize("materialize", [False, True])
def test_arrow_table_round_trips_zero_copy(materialize: bool) -> None:
    table = pa.table({"x": np.arange(10_000, dtype=np.int64), "s": [str(i) for i in range(10_000)]})
    obj = serialize(table)
    assert obj.kind is ObjectKind.ARROW_TABLE and obj.meta == b""
    if materialize:
        assert len(obj.buffers) == 1  # the stream, materialized on request
    region = to_bytes(obj, OBJECT_ID)
    kind, result = deserialize(region)
    assert kind is ObjectKind.ARROW_TABLE
    assert result.equals(table)
    start = region_address(region)
    data_address = result.column("x").chunk(0).buffers()[1].address
    assert start <= data_address < start + len(region)


def test_arrow_record_batch_round_trips_zero_copy() -> None:
    batch = pa.record_batch({"y": np.linspace(0, 1, 500)})
    obj = serialize(batch)
    region = bytearray(obj.total_size)
    write_into(obj, memoryview(region), OBJECT_ID)
    kind, result = deserialize(memoryview(region))
    assert kind is ObjectKind.ARROW_BATCH
    assert result.equals(batch)
    start = region_address(region)
    assert start <= result.column(0).buffers()[1].address < start + len(region)


def test_arrow_inside_a_container_goes_through_pickle() -> None:
    table = pa.table({"x": [1, 2, 3]})
    assert round_trip({"t": table})["t"].equals(table)


def test_plain_values_do_not_import_pyarrow() -> None:
    code = (
        "import sys\n"
        "from ember.store._serialization import serialize, to_bytes, deserialize\n"
        "deserialize(to_bytes(serialize({'a': [1, 2], 'f': lambda: 1}), b'id'))\n"
        "assert 'pyarrow' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_explicit_arrow_kind_is_refused() -> None:
    with pytest.raises(ValueError, match="VALUE or ERROR"):
        serialize(1, ObjectKind.ARROW_TABLE)


def test_error_kind_round_trips_the_exception() -> None:
    kind, error = deserialize(to_bytes(serialize_error(ValueError("bad input")), OBJECT_ID))
    assert kind is ObjectKind.ERROR
    assert isinstance(error, ValueError) and error.args == ("bad input",)


class NeedsArgumentError(Exception):
    def __init__(self, code: int, text: str) -> None:
        super().__init__(text)
        self.code = code


class CarriesLockError(Exception):
    def __init__(self) -> None:
        super().__init__("with lock")
        self.lock = threading.Lock()


@pytest.mark.parametrize("error", [NeedsArgumentError(3, "boom"), CarriesLockError()])
def test_error_that_does_not_round_trip_becomes_runtime_error(error: Exception) -> None:
    kind, result = deserialize(to_bytes(serialize_error(error), OBJECT_ID))
    assert kind is ObjectKind.ERROR
    assert type(result) is RuntimeError
    assert type(error).__name__ in str(result)


def make_generator() -> Any:
    yield 1


@pytest.mark.parametrize(
    ("value", "type_name"),
    [(threading.Lock(), "_thread.lock"), (make_generator(), "generator")],
)
def test_unpicklable_value_names_its_type(value: Any, type_name: str) -> None:
    with pytest.raises(SerializationError, match="create it inside the task") as info:
        serialize(value)
    assert f"type {type_name}" in str(info.value)
    assert info.value.__cause__ is not None
    assert isinstance(info.value, TypeError)


def test_unpicklable_part_is_located() -> None:
    with pytest.raises(SerializationError) as info:
        serialize({"fine": 1, "inner": [0, Point(1, threading.Lock())]})
    assert "value['inner'][1].y" in str(info.value)


def test_long_repr_is_truncated() -> None:
    with pytest.raises(SerializationError) as info:
        serialize(["x" * 10_000, threading.Lock()])
    assert len(str(info.value)) < 1000


def test_value_that_fails_to_unpickle_raises_serialization_error() -> None:
    region = to_bytes(serialize(Point(1, 2)), OBJECT_ID)
    region = region.replace(b"Point", b"Pnint")
    with pytest.raises(SerializationError, match="importable"):
        deserialize(region)


def corrupt(region: bytes, offset: int, new: bytes) -> bytes:
    return region[:offset] + new + region[offset + len(new) :]


def sample_region() -> bytes:
    return to_bytes(serialize({"a": np.arange(100), "b": "text"}), OBJECT_ID)


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda r: r[:-1], "truncated"),
        (lambda r: r[: HEADER_BYTES - 1], "truncated"),
        (lambda r: b"", "truncated"),
        (lambda r: corrupt(r, 0, b"XXXX"), "magic"),
        (lambda r: corrupt(r, 4, struct.pack("<H", 99)), "version"),
        (lambda r: corrupt(r, 6, b"\x09"), "CRC"),
        (lambda r: corrupt(r, 40, struct.pack("<Q", 10**9)), "CRC"),
        (lambda r: corrupt(r, HEADER_BYTES, struct.pack("<Q", 65)), "buffer table"),
        (lambda r: corrupt(r, HEADER_BYTES + 8, struct.pack("<Q", 10**9)), "buffer table"),
    ],
)
def test_corrupt_region_raises_internal_error(damage: Any, message: str) -> None:
    with pytest.raises(EmberInternalError, match=message):
        deserialize(damage(sample_region()))


def test_corrupt_pickle_stream_raises_internal_error() -> None:
    obj = SerializedObject(ObjectKind.VALUE, b"\x80\x05garbage", [])
    with pytest.raises(EmberInternalError, match="pickle stream"):
        deserialize(to_bytes(obj, OBJECT_ID))


def test_corrupt_arrow_stream_raises_internal_error() -> None:
    region = bytearray(to_bytes(serialize(pa.table({"x": [1, 2, 3]})), OBJECT_ID))
    start = (HEADER_BYTES + 16 + BUFFER_ALIGNMENT_BYTES - 1) // BUFFER_ALIGNMENT_BYTES * BUFFER_ALIGNMENT_BYTES
    region[start : start + 16] = b"\xff" * 16
    with pytest.raises(EmberInternalError, match="Arrow"):
        deserialize(bytes(region))


def test_pickle_protocol_5_is_used() -> None:
    assert serialize({"a": [1, 2]}).meta[:2] == b"\x80\x05"
    assert pickle.loads(serialize([1, 2]).meta) == [1, 2]
