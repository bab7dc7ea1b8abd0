"""ember.store: the shared-memory object store and the object format.

Objects are files on shared memory holding a pickle-5 stream with its
out-of-band buffers laid out aligned after it (or an Arrow IPC stream), so a
reader maps the file and gets numpy arrays and Arrow tables without copying.
"""

from ember.store._segments import ObjectFiles, prefault_segment
from ember.store._serialization import ObjectKind, SerializedObject, deserialize, serialize, serialize_error, to_bytes

__all__ = [
    "ObjectFiles",
    "ObjectKind",
    "SerializedObject",
    "deserialize",
    "prefault_segment",
    "serialize",
    "serialize_error",
    "to_bytes",
]
