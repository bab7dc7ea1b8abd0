"""PutCopies: durable copies of puts, written in the background; a restore can wait for its copy's turn."""

from __future__ import annotations

import threading
from pathlib import Path

from ember.store._put_copies import PutCopies, read_copy

WAIT_S = 10.0
OID = bytes(range(20))
JOB = b"\x01\x02\x03\x04"


def test_a_restore_waits_for_a_copy_still_queued_and_reads_the_mapped_bytes(tmp_path: Path) -> None:
    data = memoryview(b"a large put's bytes" * 1000)
    opened: list[bytes] = []
    copies = PutCopies(tmp_path, lambda oid: opened.append(oid) or None)  # the store's file is gone already
    busy = threading.Event()
    copies.after_copies(lambda: busy.wait(WAIT_S))  # the copying thread is busy with earlier copies
    path = copies.schedule(OID, JOB, view=data)  # mapped by the writer right after it wrote the object
    assert copies.wait_written(OID, 0.05) is False  # still queued: a read now would find nothing
    assert not path.exists()
    busy.set()
    assert copies.wait_written(OID, WAIT_S) is True
    assert read_copy(str(path)) == bytes(data)  # from the mapping, though the file was gone
    assert opened == []


def test_waiting_for_an_object_never_scheduled_returns_at_once(tmp_path: Path) -> None:
    copies = PutCopies(tmp_path, lambda oid: None)
    assert copies.wait_written(OID, WAIT_S) is True
