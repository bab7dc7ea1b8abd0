"""The owner's object table and failure causes, over plain data (no processes)."""

import pickle

from ember.scheduler._owner._objects import CopyLost, ObjectEntry, ObjectState, ObjectTable
from ember.scheduler._spec import FailureCause

OID = b"o" * 20


def test_the_last_ref_to_a_finished_object_frees_it():
    table = ObjectTable()
    table.entries[OID] = ObjectEntry(ObjectState.READY_STORE)
    table.incref(OID)
    table.incref(OID)
    assert table.release(OID) is None
    freed = table.release(OID)
    assert freed is not None and freed.state is ObjectState.READY_STORE
    assert OID not in table.entries and OID not in table.refcounts


def test_a_pending_object_whose_refs_are_dropped_is_marked_not_freed():
    table = ObjectTable()
    entry = table.entries[OID] = ObjectEntry()
    table.incref(OID)
    assert table.release(OID) is None
    assert entry.dropped and OID in table.entries


def test_a_shared_object_outlives_its_local_refs():
    table = ObjectTable()
    entry = table.entries[OID] = ObjectEntry(ObjectState.READY_INLINE)
    entry.shared = True
    table.incref(OID)
    assert table.release(OID) is None
    assert OID in table.entries


def test_a_replays_entry_is_shared_and_pending():
    entry = ObjectEntry.shared_pending()
    assert entry.shared and entry.state is ObjectState.PENDING and entry.where is None


def test_a_lost_copy_is_a_location_not_an_address():
    entry = ObjectEntry(ObjectState.READY_STORE)
    entry.where = CopyLost.LOST
    assert not isinstance(entry.where, str)


def test_failure_causes_travel_as_plain_strings():
    for cause in FailureCause:
        carried = pickle.loads(pickle.dumps(cause, protocol=5))
        assert type(carried) is str and FailureCause(carried) is cause
