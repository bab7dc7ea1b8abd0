"""ember.store: the shared-memory object store and the object format.

Objects are files on shared memory holding a pickle-5 stream with its
out-of-band buffers laid out aligned after it (or an Arrow IPC stream), so a
reader maps the file and gets numpy arrays and Arrow tables without copying.
"""

from ember.store._content_hash import LateHashes, content_hash, value_hash
from ember.store._put_copies import NO_ROOM, NoRoomForCopy, PutCopies, copy_wanted, disk_room, job_dir, read_copy, write_copy
from ember.store._segments import ObjectFiles, prefault_segment, publish_layout_bytes
from ember.store._serialization import (
    ObjectKind,
    SerializedObject,
    deserialize,
    is_error,
    read_header,
    serialize,
    serialize_error,
    to_bytes,
)

__all__ = [
    "NO_ROOM",
    "LateHashes",
    "NoRoomForCopy",
    "ObjectFiles",
    "ObjectKind",
    "PutCopies",
    "SerializedObject",
    "content_hash",
    "copy_wanted",
    "deserialize",
    "disk_room",
    "is_error",
    "job_dir",
    "prefault_segment",
    "publish_layout_bytes",
    "read_copy",
    "read_header",
    "serialize",
    "serialize_error",
    "to_bytes",
    "value_hash",
    "write_copy",
]
