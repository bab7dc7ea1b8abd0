"""Object transfer's decisions without processes or sockets: requests, chunks, ranges, offsets, sources, publishing."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ember.exceptions import EmberInternalError, ObjectTooLargeError
from ember.store import ObjectFiles, serialize, to_bytes
from ember.store._serialization import HEADER_BYTES
from ember.store._transfer import CHUNK_BYTES, _BadPull, _parse_pull, chunk_spans, parse_bind_address
from ember.store._transfer_pull import Receipt, SourceError, SourcePlan
from tests.fix_space import shrink_free_space

OBJECT_ID = bytes(range(20))


def _layout(object_id: bytes = OBJECT_ID, payload_bytes: int = 1000) -> bytes:
    return to_bytes(serialize(os.urandom(payload_bytes)), object_id)


@pytest.fixture
def files(tmp_path: Path) -> ObjectFiles:
    return ObjectFiles(tmp_path / "shm", tmp_path / "spill")


# -- chunks -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("offset, total, chunk", [(0, 10, 4), (0, 8, 4), (5, 10, 4), (10, 10, 4), (0, 1, 4)])
def test_chunks_cover_the_bytes_from_the_offset_in_order_without_gaps(offset, total, chunk):
    spans = list(chunk_spans(offset, total, chunk))
    assert [start for start, _ in spans] == list(range(offset, total, chunk))
    assert all(0 < end - start <= chunk for start, end in spans)
    assert all(end == next_start for (_, end), (next_start, _) in zip(spans, spans[1:]))
    assert (spans[-1][1] if spans else offset) == total


@pytest.mark.parametrize("offset, total, chunk", [(11, 10, 4), (-1, 10, 4), (0, 10, 0)])
def test_an_offset_outside_the_object_or_an_empty_chunk_is_refused(offset, total, chunk):
    with pytest.raises(ValueError):
        list(chunk_spans(offset, total, chunk))


@pytest.mark.parametrize("text, expected", [
    ("0", ("127.0.0.1", 0)), (":7000", ("127.0.0.1", 7000)), ("10.0.0.5:0", ("10.0.0.5", 0)), ("[::1]:9", ("::1", 9)),
])
def test_bind_addresses_default_to_loopback(text, expected):
    assert parse_bind_address(text) == expected


@pytest.mark.parametrize("text", ["host:", "host:port", "host:70000", "host:-1", ""])
def test_a_bind_address_without_a_valid_port_is_refused(text):
    with pytest.raises(ValueError, match="HOST:PORT"):
        parse_bind_address(text)


# -- receiving ----------------------------------------------------------------------------------------------


def test_chunks_are_placed_one_after_another_until_the_object_is_complete():
    layout = _layout()
    receipt = Receipt(OBJECT_ID)
    receipt.begin(layout[:HEADER_BYTES])
    assert receipt.total_bytes == len(layout)
    [whole] = receipt.ranges  # small: one range, no split
    placed = [receipt.place(whole, layout[start:end]) for start, end in chunk_spans(0, len(layout), 300)]
    assert placed == list(range(0, len(layout), 300))
    assert receipt.complete and receipt.received_bytes == len(layout)


def test_a_chunk_past_the_end_is_refused_and_not_counted():
    layout = _layout()
    receipt = Receipt(OBJECT_ID)
    receipt.begin(layout[:HEADER_BYTES])
    [whole] = receipt.ranges
    receipt.place(whole, layout[: len(layout) - 10])
    with pytest.raises(SourceError, match="at offset"):
        receipt.place(whole, bytes(11))
    assert whole.offset == len(layout) - 10 and not receipt.complete


def test_a_first_chunk_whose_header_differs_from_the_announced_one_is_refused():
    layout = bytearray(_layout())
    receipt = Receipt(OBJECT_ID)
    receipt.begin(bytes(layout[:HEADER_BYTES]))
    layout[0] ^= 1
    with pytest.raises(SourceError, match="header differs"):
        receipt.place(receipt.ranges[0], bytes(layout[:100]))


@pytest.mark.parametrize("header, reason", [
    (None, "no object header"),
    (b"short", "no object header"),
    (bytes(HEADER_BYTES), "corrupt"),
    (_layout(b"other object")[:HEADER_BYTES], "header of object"),
])
def test_a_header_that_is_missing_corrupt_or_of_another_object_is_refused(header, reason):
    with pytest.raises(SourceError, match=reason) as caught:
        Receipt(OBJECT_ID).begin(header)
    assert not caught.value.retryable


def test_a_resumed_pull_keeps_its_offset_and_needs_the_same_header():
    layout = _layout()
    receipt = Receipt(OBJECT_ID)
    receipt.begin(layout[:HEADER_BYTES])
    receipt.place(receipt.ranges[0], layout[:500])
    receipt.begin(layout[:HEADER_BYTES])  # the same copy, elsewhere
    assert receipt.ranges[0].offset == 500
    with pytest.raises(SourceError, match="differs"):
        receipt.begin(_layout(payload_bytes=2000)[:HEADER_BYTES])


# -- ranges -------------------------------------------------------------------------------------------------


def _large_layout(chunks: float) -> bytes:
    return to_bytes(serialize(bytes(int(chunks * CHUNK_BYTES))), OBJECT_ID)  # zeros: cheap to make


@pytest.mark.parametrize("chunks, split_bytes_min, parts, expected_starts", [
    (5.5, 2 * CHUNK_BYTES, 2, [0, 3]),      # halves, rounded up to whole chunks
    (5.5, 2 * CHUNK_BYTES, 3, [0, 2, 4]),   # the last range takes the rest
    (1.5, 0, 3, [0, 1]),                    # never a range of less than a chunk, but the last
    (5.5, 2 * CHUNK_BYTES, 1, None),        # one stream: no split
    (5.5, 6 * CHUNK_BYTES, 2, None),        # below the threshold: no split
])
def test_a_large_object_is_cut_into_chunk_aligned_ranges_that_tile_it(chunks, split_bytes_min, parts, expected_starts):
    layout = _large_layout(chunks)
    receipt = Receipt(OBJECT_ID, split_bytes_min, parts)
    receipt.begin(layout[:HEADER_BYTES])
    first, *ranges = receipt.ranges
    if expected_starts is None:
        assert (first.start, first.end, ranges) == (0, len(layout), [])
        return
    assert first.complete and first.end == 0  # the first stream brought the size only
    assert [span.start for span in ranges] == [n * CHUNK_BYTES for n in expected_starts]
    assert [span.end for span in ranges] == [span.start for span in ranges[1:]] + [len(layout)]
    assert not receipt.complete


def test_ranges_fill_in_any_order_and_each_refuses_bytes_past_its_end():
    layout = _large_layout(2.5)
    receipt = Receipt(OBJECT_ID, split_bytes_min=0, parts=2)
    receipt.begin(layout[:HEADER_BYTES])
    _, head, tail = receipt.ranges
    assert receipt.place(tail, layout[tail.start:tail.end]) == tail.start
    with pytest.raises(SourceError, match=f"ending at {head.end}"):
        receipt.place(head, layout[: head.end + 1])
    assert receipt.received_bytes == len(layout) - head.end and not receipt.complete
    for start, end in chunk_spans(0, head.end, CHUNK_BYTES // 2):
        assert receipt.place(head, layout[start:end]) == start
    assert receipt.complete and receipt.received_bytes == len(layout)


def test_only_the_first_header_plans_the_ranges():
    layout = _large_layout(2.5)
    receipt = Receipt(OBJECT_ID, split_bytes_min=0, parts=2)
    receipt.begin(layout[:HEADER_BYTES])
    planned = [(span.start, span.end) for span in receipt.ranges]
    receipt.begin(layout[:HEADER_BYTES])  # a range resumed at another copy
    assert [(span.start, span.end) for span in receipt.ranges] == planned


@pytest.mark.parametrize("parts", [0, -1])
def test_a_receipt_needs_at_least_one_part(parts):
    with pytest.raises(ValueError, match="parts"):
        Receipt(OBJECT_ID, parts=parts)


# -- requests -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("request_, expected", [
    ({"object_id": "0a0b"}, (b"\n\x0b", 0, None)),
    ({"object_id": "0a0b", "offset": 5, "end": 9}, (b"\n\x0b", 5, 9)),
    ({"object_id": "0a0b", "offset": 5, "end": 5}, (b"\n\x0b", 5, 5)),  # an empty range
])
def test_a_pull_request_names_an_object_and_a_byte_range(request_, expected):
    assert _parse_pull(request_) == expected


@pytest.mark.parametrize("request_, reason", [
    ({"object_id": "0a0b", "offset": 5, "end": 4}, "end must be"),
    ({"object_id": "0a0b", "end": -1}, "end must be"),
    ({"object_id": "0a0b", "end": "9"}, "end must be"),
    ({"object_id": "0a0b", "end": 9.0}, "end must be"),
    ({"object_id": "0a0b", "end": True}, "end must be"),
    ({"object_id": "0a0b", "offset": -1}, "offset must be"),
    ({"object_id": "xyz"}, "object_id must be"),
])
def test_a_pull_request_with_a_bad_range_is_refused(request_, reason):
    with pytest.raises(_BadPull, match=reason):
        _parse_pull(request_)


# -- choosing sources ---------------------------------------------------------------------------------------


def _drain(plan: SourcePlan, retryable: bool, sources_max: int = 100) -> list[tuple[str, bool]]:
    order = []
    for _ in range(sources_max):
        step = plan.next_source()
        if step is None:
            return order
        order.append(step)
        plan.failed(step[0], retryable)
    raise AssertionError("the plan never ran out")


def test_sources_are_asked_in_turn_each_a_bounded_number_of_times():
    assert _drain(SourcePlan(["a", "b", "a"], attempts_per_source_max=2), retryable=True) == [
        ("a", False), ("b", False), ("a", True), ("b", True)]


def test_a_source_that_failed_for_good_is_not_asked_again():
    assert _drain(SourcePlan(["a", "b"], attempts_per_source_max=3), retryable=False) == [("a", False), ("b", False)]


@pytest.mark.parametrize("sources, attempts", [([], 1), (["a"], 0)])
def test_a_plan_needs_a_source_and_an_attempt(sources, attempts):
    with pytest.raises(ValueError):
        SourcePlan(sources, attempts)


# -- publishing ---------------------------------------------------------------------------------------------


def _receive(files: ObjectFiles, layout: bytes, object_id: bytes = OBJECT_ID) -> Path:
    fd, tmp = files.create_incoming(object_id, len(layout))
    try:
        for start, end in reversed(list(chunk_spans(0, len(layout), 256))):  # any order: each at its offset
            os.pwrite(fd, layout[start:end], start)
    finally:
        os.close(fd)
    return tmp


def test_an_incoming_object_is_invisible_until_published_whole(files):
    layout = _layout()
    fd, tmp = files.create_incoming(OBJECT_ID, len(layout))
    os.close(fd)
    assert tmp.parent == files.shm_dir and os.stat(tmp).st_size == len(layout)
    assert files.open(OBJECT_ID) is None and not files.exists(OBJECT_ID)
    tmp.unlink()
    path = files.publish_incoming(_receive(files, layout), OBJECT_ID)
    assert path == files.shm_dir / OBJECT_ID.hex()
    assert bytes(files.open(OBJECT_ID)) == layout
    assert sorted(p.name for p in files.shm_dir.iterdir()) == [OBJECT_ID.hex()]


def test_an_incoming_object_fills_a_recycled_segment_cut_to_its_size(files, tmp_path):
    from ember.store._segments import prefault_segment

    layout = _layout()
    segment = tmp_path / "free-segment"
    prefault_segment(segment, len(layout) + 5000)
    inode = segment.stat().st_ino
    fd, tmp = files.create_incoming(OBJECT_ID, len(layout), segment)
    try:
        assert not segment.exists() and os.fstat(fd).st_ino == inode  # the segment's pages, not a new file's
        assert os.fstat(fd).st_size == len(layout)
        os.pwrite(fd, layout, 0)
    finally:
        os.close(fd)
    files.publish_incoming(tmp, OBJECT_ID)
    assert bytes(files.open(OBJECT_ID)) == layout


def test_a_segment_gone_meanwhile_leaves_the_object_a_new_file(files, tmp_path):
    layout = _layout()
    fd, tmp = files.create_incoming(OBJECT_ID, len(layout), tmp_path / "claimed-by-another-writer")
    os.close(fd)
    assert tmp.parent == files.shm_dir and os.stat(tmp).st_size == len(layout)
    small = tmp_path / "small-segment"
    small.write_bytes(bytes(len(layout) - 1))
    with pytest.raises(ValueError, match="needs"):
        files.create_incoming(OBJECT_ID, len(layout), small)  # too small: a bug in the caller


def test_the_first_published_copy_is_kept(files):
    first, second = _layout(), _layout()
    files.publish_incoming(_receive(files, first), OBJECT_ID)
    files.publish_incoming(_receive(files, second), OBJECT_ID)
    assert bytes(files.open(OBJECT_ID)) == first
    assert sorted(p.name for p in files.shm_dir.iterdir()) == [OBJECT_ID.hex()]


@pytest.mark.parametrize("damage", ["other id", "corrupt header", "extra byte"])
def test_a_file_that_fails_its_check_is_not_published(files, damage):
    layout = _layout(b"other object" if damage == "other id" else OBJECT_ID)
    if damage == "corrupt header":
        layout = layout[:32] + bytes([layout[32] ^ 1]) + layout[33:]  # the total size, which the CRC covers
    tmp = _receive(files, layout + (b"\0" if damage == "extra byte" else b""))
    with pytest.raises(EmberInternalError, match={"other id": "expected object", "corrupt header": "CRC",
                                                  "extra byte": "expected object"}[damage]):
        files.publish_incoming(tmp, OBJECT_ID)
    assert not files.exists(OBJECT_ID)


def test_an_incoming_object_goes_to_the_spill_disk_when_memory_is_full(files, monkeypatch):
    shrink_free_space(monkeypatch, {files.shm_dir: 100})
    fd, tmp = files.create_incoming(OBJECT_ID, 1000)
    os.close(fd)
    assert tmp.parent == files.spill_dir


def test_an_incoming_object_that_fits_nowhere_is_refused_before_any_byte(files, monkeypatch):
    shrink_free_space(monkeypatch, {files.shm_dir: 100, files.spill_dir: 100})
    with pytest.raises(ObjectTooLargeError, match="1,000 bytes"):
        files.create_incoming(OBJECT_ID, 1000)
    assert list(files.shm_dir.iterdir()) == list(files.spill_dir.iterdir()) == []
