"""Object files: atomic publication, zero-copy mapped reads, spill fallback, safe recycling."""

from __future__ import annotations

import errno
import fcntl
import gc
import multiprocessing
import os
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from ember.exceptions import ObjectTooLargeError
from ember.store._segments import ObjectFiles, prefault_segment
from ember.store._serialization import ObjectKind, deserialize, read_header, serialize
from tests.fix_space import shrink_free_space

ID_A = b"a" * 20
ID_B = b"b" * 20


@pytest.fixture
def files(tmp_path: Path) -> ObjectFiles:
    return ObjectFiles(tmp_path / "shm", tmp_path / "spill")


@pytest.fixture
def free_dir(tmp_path: Path) -> Path:
    path = tmp_path / "shm-free"  # on the same filesystem as shm, so rename works
    path.mkdir()
    return path


def read(files: ObjectFiles, object_id: bytes) -> Any:
    view = files.open(object_id)
    assert view is not None
    _kind, value = deserialize(view)
    return value


def test_write_open_round_trip(files: ObjectFiles) -> None:
    obj = serialize({"x": [1, 2, 3], "f": lambda y: y + 1})
    path = files.write(ID_A, obj)
    assert path == files.shm_dir / ID_A.hex()
    assert files.exists(ID_A) and files.path_of(ID_A) == path
    assert files.size_of(ID_A) == obj.total_size
    view = files.open(ID_A)
    assert view is not None and view.readonly and len(view) == obj.total_size
    kind, value = deserialize(view)
    assert kind is ObjectKind.VALUE
    assert value["x"] == [1, 2, 3] and value["f"](1) == 2
    assert [p.name for p in files.shm_dir.iterdir()] == [ID_A.hex()], "no temporary file is left behind"


def test_missing_object(files: ObjectFiles) -> None:
    assert files.open(ID_A) is None
    assert not files.exists(ID_A)
    assert files.path_of(ID_A) is None
    assert files.size_of(ID_A) is None
    files.delete(ID_A)  # no error


def test_array_outlives_every_other_reference_to_the_mapping(files: ObjectFiles) -> None:
    files.write(ID_A, serialize(np.arange(1_000_000, dtype=np.float64)))
    view = files.open(ID_A)
    assert view is not None
    _kind, array = deserialize(view)
    assert np.shares_memory(array, np.frombuffer(view, dtype=np.uint8))
    del view
    gc.collect()
    files.delete(ID_A)  # the mapping, not the name, keeps the pages
    gc.collect()
    assert not array.flags.writeable
    with pytest.raises(ValueError, match="read-only"):
        array[0] = 1.0
    np.testing.assert_array_equal(array, np.arange(1_000_000, dtype=np.float64))


@pytest.fixture(scope="module")
def variables() -> dict[str, np.ndarray]:
    return {f"Variable{i}": np.random.normal(size=5_000_000) for i in range(10)}


def test_400_mb_dict_round_trip(files: ObjectFiles, variables: dict[str, np.ndarray]) -> None:
    obj = serialize(variables)
    assert obj.total_size > 400_000_000
    files.write(ID_A, obj)
    view = files.open(ID_A)
    assert view is not None
    _kind, result = deserialize(view)
    del view
    assert result.keys() == variables.keys()
    for name, array in variables.items():
        assert not result[name].flags.writeable
        np.testing.assert_array_equal(result[name], array)


def test_400_mb_dict_into_prefaulted_segment(
    files: ObjectFiles, free_dir: Path, variables: dict[str, np.ndarray]
) -> None:
    obj = serialize(variables)
    segment = free_dir / "segment"
    prefault_segment(segment, obj.total_size + 4096)
    path = files.write(ID_A, obj, segment=segment)
    assert not segment.exists()
    assert path.stat().st_size == obj.total_size + 4096, "a segment is not shrunk"
    assert files.size_of(ID_A) == obj.total_size
    result = read(files, ID_A)
    np.testing.assert_array_equal(result["Variable9"], variables["Variable9"])


@pytest.mark.parametrize("value", [pa.table({"x": np.arange(100_000)}), pa.record_batch({"y": np.ones(5000)})])
def test_arrow_objects_map_zero_copy(files: ObjectFiles, value: Any) -> None:
    files.write(ID_A, serialize(value))
    view = files.open(ID_A)
    assert view is not None
    _kind, result = deserialize(view)
    assert result.equals(value)
    column = result.column(0)
    data = (column.chunk(0) if isinstance(column, pa.ChunkedArray) else column).buffers()[1]
    start = int(np.frombuffer(view, dtype=np.uint8).ctypes.data)
    assert start <= data.address < start + len(view)


def test_write_falls_back_to_spill_dir_when_shm_is_short(files: ObjectFiles, monkeypatch: pytest.MonkeyPatch) -> None:
    shrink_free_space(monkeypatch, {files.shm_dir: 100})
    path = files.write(ID_A, serialize(np.arange(1000)))
    assert path == files.spill_dir / ID_A.hex()
    np.testing.assert_array_equal(read(files, ID_A), np.arange(1000))


def test_write_refuses_an_object_too_large_for_memory_and_disk(
    files: ObjectFiles, monkeypatch: pytest.MonkeyPatch
) -> None:
    shrink_free_space(monkeypatch, {files.shm_dir: 100, files.spill_dir: 100})
    with pytest.raises(ObjectTooLargeError, match="neither in shared memory .* nor on the spill disk"):
        files.write(ID_A, serialize(np.arange(1000)))
    assert not any(files.shm_dir.iterdir()) and not any(files.spill_dir.iterdir())  # nothing written


@pytest.mark.parametrize("value", [np.arange(1000), pa.table({"x": [1, 2]})])
def test_write_falls_back_to_spill_dir_on_enospc(
    files: ObjectFiles, monkeypatch: pytest.MonkeyPatch, value: Any
) -> None:
    calls = []
    real_pwritev, real_fallocate = os.pwritev, os.posix_fallocate

    def full_once(real: Any) -> Any:
        def fake(fd: int, *args: Any) -> Any:
            if not calls:
                calls.append(fd)
                raise OSError(errno.ENOSPC, "No space left on device")
            return real(fd, *args)

        return fake

    monkeypatch.setattr(os, "pwritev", full_once(real_pwritev))
    monkeypatch.setattr(os, "posix_fallocate", full_once(real_fallocate))
    path = files.write(ID_A, serialize(value))
    assert calls, "the shm write was attempted"
    assert path == files.spill_dir / ID_A.hex()
    assert list(files.shm_dir.iterdir()) == [], "the failed temporary file is removed"
    assert read(files, ID_A) is not None


def test_other_write_errors_propagate(files: ObjectFiles, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(fd: int, *args: Any) -> int:
        raise OSError(errno.EIO, "I/O error")

    monkeypatch.setattr(os, "pwritev", broken)
    with pytest.raises(OSError, match="I/O error"):
        files.write(ID_A, serialize(np.arange(10)))
    assert list(files.shm_dir.iterdir()) == []


def test_segment_too_small_is_refused(files: ObjectFiles, free_dir: Path) -> None:
    prefault_segment(free_dir / "small", 64)
    with pytest.raises(ValueError, match="needs"):
        files.write(ID_A, serialize(np.arange(1000)), segment=free_dir / "small")
    assert (free_dir / "small").exists()


def test_segment_claimed_by_someone_else_falls_back_to_new_file(files: ObjectFiles, free_dir: Path) -> None:
    segment = free_dir / "segment"
    prefault_segment(segment, 1 << 16)
    obj = serialize(np.arange(10))
    real_stat = Path.stat

    # The segment vanishes between the size check and the claiming rename.
    def stat_then_steal(self: Path, **kwargs: Any) -> os.stat_result:
        result = real_stat(self, **kwargs)
        if self == segment:
            os.unlink(segment)
        return result

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Path, "stat", stat_then_steal)
        path = files.write(ID_A, obj, segment=segment)
    assert path == files.shm_dir / ID_A.hex()
    np.testing.assert_array_equal(read(files, ID_A), np.arange(10))


def test_try_reclaim_refuses_while_mapped_and_recycles_after(files: ObjectFiles, free_dir: Path) -> None:
    files.write(ID_A, serialize(np.arange(1000)))
    array = read(files, ID_A)
    assert files.try_reclaim(ID_A, free_dir) is None, "a reader maps it"
    assert not files.exists(ID_A), "refusing still unlinks the name"
    np.testing.assert_array_equal(array, np.arange(1000))
    assert list(free_dir.iterdir()) == []

    files.write(ID_B, serialize(np.arange(1000)))
    array = read(files, ID_B)
    del array
    gc.collect()
    recycled = files.try_reclaim(ID_B, free_dir)
    assert recycled is not None and recycled.parent == free_dir
    assert not files.exists(ID_B)
    assert read_header(recycled.read_bytes())[0] == bytes(20), "late readers must see a mismatch"

    # The recycled file is a segment for the next object.
    files.write(ID_A, serialize("next"), segment=recycled)
    assert read(files, ID_A) == "next"


def test_reader_of_a_recycled_file_gets_none(files: ObjectFiles, free_dir: Path) -> None:
    files.write(ID_A, serialize([1, 2, 3]))
    recycled = files.try_reclaim(ID_A, free_dir)
    assert recycled is not None
    # As if a reader had opened the old name just before the rename.
    os.rename(recycled, files.shm_dir / ID_A.hex())
    assert files.open(ID_A) is None
    assert files.size_of(ID_A) is None


def test_reader_waits_out_a_short_exclusive_lock(files: ObjectFiles) -> None:
    files.write(ID_A, serialize("locked"))
    fd = os.open(files.shm_dir / ID_A.hex(), os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX)  # as try_reclaim holds it while checking the file
    results: list[Any] = []
    reader = threading.Thread(target=lambda: results.append(read(files, ID_A)))
    reader.start()
    reader.join(timeout=0.2)
    assert reader.is_alive(), "the reader waits for the exclusive lock"
    os.close(fd)
    reader.join(timeout=10)
    assert results == ["locked"]


def test_try_reclaim_of_missing_object(files: ObjectFiles, free_dir: Path) -> None:
    assert files.try_reclaim(ID_A, free_dir) is None


def test_spill_keeps_existing_readers_intact(files: ObjectFiles, free_dir: Path) -> None:
    data = np.arange(100_000, dtype=np.int64)
    files.write(ID_A, serialize(data))
    before = read(files, ID_A)
    spilled = files.spill(ID_A)
    assert spilled == files.spill_dir / ID_A.hex()
    assert not (files.shm_dir / ID_A.hex()).exists()
    assert [p.name for p in files.spill_dir.iterdir()] == [ID_A.hex()]
    np.testing.assert_array_equal(before, data)
    np.testing.assert_array_equal(read(files, ID_A), data)
    assert files.path_of(ID_A) == spilled
    assert files.spill(ID_A) is None, "nothing left in shm"


def test_spill_copies_only_the_object_from_a_larger_segment(files: ObjectFiles, free_dir: Path) -> None:
    obj = serialize(np.arange(100))
    prefault_segment(free_dir / "segment", 1 << 20)
    files.write(ID_A, obj, segment=free_dir / "segment")
    spilled = files.spill(ID_A)
    assert spilled is not None and spilled.stat().st_size == obj.total_size


def test_the_first_copy_of_an_id_wins_and_delete_removes(files: ObjectFiles) -> None:
    files.write(ID_A, serialize("first"))
    files.write(ID_A, serialize("second"))  # a late attempt, or a second rebuilder
    assert read(files, ID_A) == "first"
    assert [p.name for p in files.shm_dir.iterdir() if p.is_file()] == [ID_A.hex()]  # nothing left behind
    files.delete(ID_A)
    assert files.open(ID_A) is None


def test_clear_removes_only_object_files(files: ObjectFiles) -> None:
    files.write(ID_A, serialize(1))
    files.write(ID_B, serialize(2))
    files.spill(ID_B)
    (files.shm_dir / ".tmp-aa-1-0").write_bytes(b"partial")
    (files.shm_dir / "README").write_text("not ours")
    files.clear()
    assert [p.name for p in files.shm_dir.iterdir()] == ["README"]
    assert list(files.spill_dir.iterdir()) == []


def test_bad_object_id_is_refused(files: ObjectFiles) -> None:
    with pytest.raises(ValueError, match="1 to 20 bytes"):
        files.open(b"")
    with pytest.raises(ValueError, match="1 to 20 bytes"):
        files.write(bytes(21), serialize(1))


def test_prefault_segment_makes_a_file_of_that_size(tmp_path: Path) -> None:
    prefault_segment(tmp_path / "segment", 123_456)
    assert (tmp_path / "segment").stat().st_size == 123_456
    with pytest.raises(ValueError, match="positive"):
        prefault_segment(tmp_path / "empty", 0)


def _child_reads(shm_dir: str, spill_dir: str, results: Any) -> None:
    view = ObjectFiles(Path(shm_dir), Path(spill_dir)).open(ID_A)
    assert view is not None
    _kind, value = deserialize(view)
    results.put((float(value["array"].sum()), value["array"].flags.writeable, value["text"]))


def test_child_process_reads_what_the_parent_wrote(files: ObjectFiles) -> None:
    files.write(ID_A, serialize({"array": np.arange(10_000, dtype=np.float64), "text": "hi"}))
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    child = context.Process(target=_child_reads, args=(str(files.shm_dir), str(files.spill_dir), results))
    child.start()
    try:
        assert results.get(timeout=60) == (float(np.arange(10_000).sum()), False, "hi")
    finally:
        child.join(timeout=60)
    assert child.exitcode == 0
    results.close()
    results.join_thread()
