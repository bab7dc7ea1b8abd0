"""The object format: how one value becomes one contiguous, self-describing region.

Layout (little-endian)::

    fixed header   magic b"EMB1", format version, kind, object-id length,
                   20-byte object-id field, CRC-32 of the header fields,
                   total size, meta length, buffer count        (56 bytes)
    buffer table   (offset, length) as uint64 per buffer        (16 bytes each)
    meta           the pickle stream (empty for Arrow objects)
    buffers        each at an offset aligned to 64 bytes

Values are pickled with protocol 5 through cloudpickle, so functions and
classes defined in ``__main__`` travel by value, and every contiguous buffer
(numpy arrays, Arrow buffers) goes out of band: serialize never copies it,
and deserialize hands the unpickler slices of the source, so a numpy array
comes back as a read-only view onto (for example) shared memory. pyarrow
Tables and RecordBatches are stored as one Arrow IPC stream, read back
zero-copy.

This module must never return a value from a region whose header or table is
inconsistent (it raises ``EmberInternalError`` instead), never copy an
out-of-band buffer while reading, and never import pyarrow for a value that
is not an Arrow object.
"""

from __future__ import annotations

import enum
import io
import pickle
import reprlib
import struct
import zlib
from typing import Any, assert_never

import cloudpickle

from ember.exceptions import EmberInternalError, SerializationError

__all__ = [
    "BUFFER_ALIGNMENT_BYTES",
    "FORMAT_VERSION",
    "HEADER_BYTES",
    "MAGIC",
    "OBJECT_ID_BYTES_MAX",
    "ObjectKind",
    "SerializedObject",
    "deserialize",
    "layout_pieces",
    "read_header",
    "serialize",
    "serialize_error",
    "to_bytes",
    "write_into",
]

MAGIC = b"EMB1"
FORMAT_VERSION = 1
OBJECT_ID_BYTES_MAX = 20
BUFFER_ALIGNMENT_BYTES = 64

# magic, version, kind, id length, id, crc, total size, meta length, buffer count
_HEADER = struct.Struct("<4sHBB20sIQQQ")
# The fields the CRC covers: everything but the id (try_reclaim zeroes it in
# place, and a reader must then see a mismatch, not a checksum error) and the CRC.
_CRC_FIELDS = struct.Struct("<4sHBBQQQ")
_BUFFER_ENTRY_BYTES = 16
HEADER_BYTES = _HEADER.size
OBJECT_ID_OFFSET = 8
_BUFFER_COUNT_MAX = 1 << 24  # far above any real value; bounds a corrupt header's table
_ZERO_PADDING = bytes(BUFFER_ALIGNMENT_BYTES)
_REPR_CHARS_MAX = 200
_FIND_CHILDREN_MAX = 64
_FIND_DEPTH_MAX = 3

# Exact types (and small flat containers of them) that the C pickler handles
# identically to cloudpickle; skipping cloudpickle's Python-level Pickler setup
# makes a tiny value's to_bytes ~1 us instead of ~4 us.
_PLAIN_TYPES = frozenset({int, float, complex, str, bytes, bool, type(None)})
_PLAIN_CONTAINER_ITEMS_MAX = 32


class ObjectKind(enum.IntEnum):
    """What the region holds; ERROR is an exception the reader must raise."""

    VALUE = 1
    ERROR = 2
    ARROW_TABLE = 3
    ARROW_BATCH = 4


_KINDS_BY_CODE = {kind.value: kind for kind in ObjectKind}


class SerializedObject:
    """A serialized value: pickle stream plus out-of-band buffers, not yet laid out.

    An Arrow object keeps the table itself until it is written, so the IPC
    stream is produced straight into the destination (one copy in all);
    reading ``buffers`` materializes it into memory.
    """

    __slots__ = ("kind", "meta", "_buffers", "_arrow", "_lengths", "_offsets", "total_size", "contained_refs")

    def __init__(
        self,
        kind: ObjectKind,
        meta: bytes,
        buffers: list[memoryview],
        contained_refs: list[Any] | None = None,
    ) -> None:
        self.kind = kind
        self.meta = meta
        self._arrow: Any = None
        self.contained_refs: list[Any] = [] if contained_refs is None else contained_refs
        if buffers:
            self._buffers = [_byte_view(buffer) for buffer in buffers]
            self._set_layout([len(buffer) for buffer in self._buffers])
        else:  # the common small value: skip the layout loop
            self._buffers = buffers
            self._lengths: list[int] = []
            self._offsets: list[int] = []
            self.total_size = HEADER_BYTES + len(meta)

    @classmethod
    def _for_arrow(cls, kind: ObjectKind, value: Any, stream_bytes: int) -> SerializedObject:
        obj = cls(kind, b"", [])
        obj._arrow = value
        obj._set_layout([stream_bytes])
        return obj

    def _set_layout(self, lengths: list[int]) -> None:
        self._lengths = lengths
        position = HEADER_BYTES + _BUFFER_ENTRY_BYTES * len(lengths) + len(self.meta)
        offsets: list[int] = []
        for length in lengths:
            position = _align(position)
            offsets.append(position)
            position += length
        self._offsets = offsets
        self.total_size = position

    @property
    def buffers(self) -> list[memoryview]:
        if self._arrow is not None:
            pa = _pyarrow()
            sink = pa.BufferOutputStream()
            _write_arrow(sink, self._arrow)
            stream = memoryview(sink.getvalue())
            if len(stream) != self._lengths[0]:
                raise EmberInternalError(f"Arrow stream has {len(stream)} bytes, {self._lengths[0]} were measured")
            self._buffers = [stream]
            self._arrow = None
        return self._buffers

    @property
    def writes_in_place(self) -> bool:
        """True if the data is produced only by ``write_into`` (a not yet materialized Arrow stream)."""
        return self._arrow is not None

    def __repr__(self) -> str:
        return f"SerializedObject(kind={self.kind.name}, total_size={self.total_size}, buffers={len(self._lengths)})"


def serialize(value: Any, kind: ObjectKind = ObjectKind.VALUE) -> SerializedObject:
    """Serialize ``value``; Arrow Tables and RecordBatches are detected and stored as IPC streams."""
    if kind is ObjectKind.VALUE and type(value).__module__.startswith("pyarrow"):
        arrow = _serialize_arrow(value)
        if arrow is not None:
            return arrow
    if kind not in (ObjectKind.VALUE, ObjectKind.ERROR):
        raise ValueError(f"serialize() takes kind VALUE or ERROR (Arrow kinds are detected), got {kind!r}")
    if _is_plain(value):
        return SerializedObject(kind, pickle.dumps(value, protocol=5), [])
    buffers: list[memoryview] = []

    def keep_out_of_band(buffer: pickle.PickleBuffer) -> bool:
        try:
            buffers.append(buffer.raw())
        except BufferError:
            return True  # not contiguous: let pickle copy it in band
        return False

    file = io.BytesIO()
    try:
        cloudpickle.Pickler(file, protocol=5, buffer_callback=keep_out_of_band).dump(value)
    except MemoryError:
        raise
    except Exception as exc:
        raise SerializationError(_describe_failure(value, exc)) from exc
    return SerializedObject(kind, file.getvalue(), buffers)


def serialize_error(exc: BaseException) -> SerializedObject:
    """Serialize an exception as kind ERROR; one that does not round-trip becomes a RuntimeError. Never raises."""
    try:
        obj = serialize(exc, ObjectKind.ERROR)
        # Many exception classes pickle but fail to unpickle (a required
        # __init__ argument); find out here rather than in the reader.
        pickle.loads(obj.meta, buffers=obj.buffers)
        return obj
    except Exception:
        pass
    try:
        text = repr(exc)
    except Exception:
        text = f"<{type(exc).__qualname__} whose repr() failed>"
    return SerializedObject(ObjectKind.ERROR, pickle.dumps(RuntimeError(text), protocol=5), [])


def write_into(obj: SerializedObject, dest: memoryview, object_id: bytes) -> None:
    """Write the whole layout of ``obj`` into ``dest`` (writable, at least ``obj.total_size`` bytes)."""
    dest = _byte_view(dest)
    if len(dest) < obj.total_size:
        raise ValueError(f"destination has {len(dest)} bytes, the object needs {obj.total_size}")
    if obj.writes_in_place:
        start = obj._offsets[0]
        end = start + obj._lengths[0]
        dest[: start] = _header_and_table(obj, object_id).ljust(start, b"\0")
        pa = _pyarrow()
        sink = pa.FixedSizeBufferWriter(pa.py_buffer(dest[start:end]))
        _write_arrow(sink, obj._arrow)
        written = sink.tell()
        sink.close()
        if written != end - start:
            raise EmberInternalError(f"Arrow stream wrote {written} bytes, {end - start} were measured")
        return
    position = 0
    for piece in layout_pieces(obj, object_id):
        end = position + len(piece)
        dest[position:end] = piece
        position = end


def to_bytes(obj: SerializedObject, object_id: bytes) -> bytes:
    """The layout as one bytes object, for sending small objects inline."""
    if obj.writes_in_place:
        region = bytearray(obj.total_size)
        write_into(obj, memoryview(region), object_id)
        return bytes(region)
    if not obj._lengths:
        return _header_and_table(obj, object_id) + obj.meta
    return b"".join(layout_pieces(obj, object_id))


def layout_pieces(obj: SerializedObject, object_id: bytes) -> list[bytes | memoryview]:
    """The layout as consecutive pieces (header, meta, padding, buffers), for writev-style writers."""
    pieces: list[bytes | memoryview] = [_header_and_table(obj, object_id), obj.meta]
    position = HEADER_BYTES + _BUFFER_ENTRY_BYTES * len(obj._lengths) + len(obj.meta)
    for offset, buffer in zip(obj._offsets, obj.buffers):
        if offset != position:
            pieces.append(_ZERO_PADDING[: offset - position])
        pieces.append(buffer)
        position = offset + len(buffer)
    return pieces


def read_header(buf: Any) -> tuple[bytes, ObjectKind, int]:
    """``(object_id, kind, total_size)`` from the fixed header; ``buf`` may hold only the header."""
    object_id, kind, total_size, _meta_bytes, _count = _read_fixed_header(_byte_view(buf))
    return object_id, kind, total_size


_KIND_OFFSET = 6  # magic (4 bytes), version (2), then the kind
_ERROR_CODE = int(ObjectKind.ERROR)


def is_error(buf: Any) -> bool:
    """Whether an object's bytes hold an error, from its kind byte alone: no CRC, no unpacking.

    For the hot path that only sorts results; whoever reads the value checks
    the whole header then.
    """
    return len(buf) > _KIND_OFFSET and buf[_KIND_OFFSET] == _ERROR_CODE


def deserialize(buf: Any) -> tuple[ObjectKind, Any]:
    """``(kind, value)`` from a region; out-of-band buffers become slices of ``buf``, not copies."""
    view = _byte_view(buf)
    _object_id, kind, total_size, meta_bytes, count = _read_fixed_header(view)
    meta_start = HEADER_BYTES + _BUFFER_ENTRY_BYTES * count
    if total_size > len(view):
        raise EmberInternalError(f"object region is truncated: header says {total_size} bytes, buffer has {len(view)}")
    if meta_start + meta_bytes > total_size:
        raise EmberInternalError(f"object header is inconsistent: meta ends past total size {total_size}")
    table = struct.unpack_from(f"<{2 * count}Q", view, HEADER_BYTES) if count else ()
    buffers = []
    position = meta_start + meta_bytes
    for index in range(count):
        offset, length = table[2 * index], table[2 * index + 1]
        if offset % BUFFER_ALIGNMENT_BYTES or offset < position or offset + length > total_size:
            raise EmberInternalError(f"object buffer table is corrupt: buffer {index} at {offset}+{length}")
        buffers.append(view[offset : offset + length])
        position = offset + length
    if position != total_size:
        raise EmberInternalError(f"object layout ends at {position}, header says {total_size}")
    match kind:
        case ObjectKind.VALUE | ObjectKind.ERROR:
            return kind, _unpickle(view[meta_start : meta_start + meta_bytes], buffers)
        case ObjectKind.ARROW_TABLE | ObjectKind.ARROW_BATCH:
            if count != 1 or meta_bytes:
                raise EmberInternalError(
                    f"Arrow object has {count} buffers and {meta_bytes} meta bytes, expected 1 and 0"
                )
            return kind, _read_arrow(kind, buffers[0])
        case _:
            assert_never(kind)


def _read_fixed_header(view: memoryview) -> tuple[bytes, ObjectKind, int, int, int]:
    if len(view) < HEADER_BYTES:
        raise EmberInternalError(
            f"object region is truncated: {len(view)} bytes, shorter than the {HEADER_BYTES}-byte header"
        )
    magic, version, kind_code, id_bytes, id_field, crc, total_size, meta_bytes, count = _HEADER.unpack_from(view, 0)
    if magic != MAGIC:
        raise EmberInternalError(f"not an ember object: magic is {magic!r}, expected {MAGIC!r}")
    if version != FORMAT_VERSION:
        raise EmberInternalError(
            f"object format version {version} is not supported (this ember writes {FORMAT_VERSION})"
        )
    if crc != zlib.crc32(_CRC_FIELDS.pack(magic, version, kind_code, id_bytes, total_size, meta_bytes, count)):
        raise EmberInternalError("object header is corrupt: its CRC-32 does not match")
    if id_bytes > OBJECT_ID_BYTES_MAX or count > _BUFFER_COUNT_MAX:
        raise EmberInternalError(f"object header is corrupt: id length {id_bytes}, buffer count {count}")
    kind = _KINDS_BY_CODE.get(kind_code)
    if kind is None:
        raise EmberInternalError(f"object header names unknown kind {kind_code}")
    return id_field[:id_bytes], kind, total_size, meta_bytes, count


def _header_and_table(obj: SerializedObject, object_id: bytes) -> bytes:
    id_bytes = len(object_id)
    if id_bytes > OBJECT_ID_BYTES_MAX:
        raise ValueError(f"object ids are at most {OBJECT_ID_BYTES_MAX} bytes, got {id_bytes}")
    count = len(obj._lengths)
    meta_bytes = len(obj.meta)
    crc = zlib.crc32(_CRC_FIELDS.pack(MAGIC, FORMAT_VERSION, obj.kind, id_bytes, obj.total_size, meta_bytes, count))
    header = _HEADER.pack(MAGIC, FORMAT_VERSION, obj.kind, id_bytes, object_id, crc, obj.total_size, meta_bytes, count)
    if not count:
        return header
    table = [field for entry in zip(obj._offsets, obj._lengths) for field in entry]
    return header + struct.pack(f"<{2 * count}Q", *table)


def _unpickle(meta: memoryview, buffers: list[memoryview]) -> Any:
    try:
        return pickle.loads(meta, buffers=buffers)
    except (pickle.UnpicklingError, EOFError) as exc:
        raise EmberInternalError(f"object pickle stream is corrupt: {exc}") from exc
    except MemoryError:
        raise
    except Exception as exc:
        raise SerializationError(
            f"could not deserialize a value: {type(exc).__name__}: {exc}. If it names a module or class, "
            f"make it importable in every worker (install it, or define it in the driver script)"
        ) from exc


def _serialize_arrow(value: Any) -> SerializedObject | None:
    pa = _pyarrow()
    if isinstance(value, pa.Table):
        kind = ObjectKind.ARROW_TABLE
    elif isinstance(value, pa.RecordBatch):
        kind = ObjectKind.ARROW_BATCH
    else:
        return None
    # Measure now (no data is copied), write later straight into the destination.
    sink = pa.MockOutputStream()
    try:
        _write_arrow(sink, value)
    except Exception as exc:
        raise SerializationError(
            f"could not write {type(value).__name__} as an Arrow IPC stream: {exc}. "
            f"Convert unsupported columns (e.g. unregistered extension types) before returning it"
        ) from exc
    return SerializedObject._for_arrow(kind, value, sink.size())


def _write_arrow(sink: Any, value: Any) -> None:
    pa = _pyarrow()
    with pa.ipc.new_stream(sink, value.schema) as writer:
        writer.write(value)


def _read_arrow(kind: ObjectKind, stream: memoryview) -> Any:
    pa = _pyarrow()
    try:
        reader = pa.ipc.open_stream(pa.py_buffer(stream))
        if kind is ObjectKind.ARROW_TABLE:
            return reader.read_all()
        return reader.read_next_batch()
    except (pa.ArrowException, OSError, StopIteration) as exc:  # pyarrow raises OSError for bad IPC
        raise EmberInternalError(f"object Arrow stream is corrupt: {exc}") from exc


def _pyarrow() -> Any:
    import pyarrow
    import pyarrow.ipc  # noqa: F401  (ipc is a submodule; make sure it is loaded)

    return pyarrow


def _is_plain(value: Any) -> bool:
    value_type = type(value)
    if value_type in _PLAIN_TYPES:
        return True
    if value_type is list or value_type is tuple:
        return len(value) <= _PLAIN_CONTAINER_ITEMS_MAX and all(type(item) in _PLAIN_TYPES for item in value)
    if value_type is dict:
        return len(value) <= _PLAIN_CONTAINER_ITEMS_MAX and all(
            type(key) in _PLAIN_TYPES and type(item) in _PLAIN_TYPES for key, item in value.items()
        )
    return False


def _byte_view(buf: Any) -> memoryview:
    view = memoryview(buf)
    if view.ndim != 1 or view.format != "B":
        view = view.cast("B")
    return view


def _align(position: int) -> int:
    return (position + BUFFER_ALIGNMENT_BYTES - 1) // BUFFER_ALIGNMENT_BYTES * BUFFER_ALIGNMENT_BYTES


def _describe_failure(value: Any, exc: BaseException) -> str:
    type_name = _type_name(value)
    where = _find_unpicklable(value, "value", _FIND_DEPTH_MAX)
    located = ""
    if where is not None and where[0] != "value":
        located = f" (the part that fails is {where[0]}, of type {_type_name(where[1])})"
    return (
        f"could not serialize a value of type {type_name}: {_short_repr(value)}{located}; "
        f"pickling raised {type(exc).__name__}: {exc}. "
        f"Make it picklable (or drop the unpicklable part), or create it inside the task that uses it."
    )


def _find_unpicklable(value: Any, path: str, depth: int) -> tuple[str, Any] | None:
    """The deepest reachable part of ``value`` that does not pickle, looking a bounded way down."""
    if _pickles(value):
        return None
    if depth > 0:
        for child_path, child in _children(value, path):
            found = _find_unpicklable(child, child_path, depth - 1)
            if found is not None:
                return found
    return path, value


def _children(value: Any, path: str) -> list[tuple[str, Any]]:
    if isinstance(value, dict):
        items = [(f"{path}[{key!r}]", item) for key, item in value.items()]
    elif isinstance(value, (list, tuple, set, frozenset)):
        items = [(f"{path}[{index}]", item) for index, item in enumerate(value)]
    elif hasattr(value, "__dict__") and not isinstance(value, type) and not callable(value):
        items = [(f"{path}.{name}", item) for name, item in vars(value).items()]
    else:
        items = []
    return items[:_FIND_CHILDREN_MAX]


def _pickles(value: Any) -> bool:
    try:
        cloudpickle.Pickler(io.BytesIO(), protocol=5, buffer_callback=lambda buffer: False).dump(value)
    except Exception:
        return False
    return True


def _type_name(value: Any) -> str:
    value_type = type(value)
    if value_type.__module__ == "builtins":
        return value_type.__qualname__
    return f"{value_type.__module__}.{value_type.__qualname__}"


_REPR = reprlib.Repr()
_REPR.maxstring = _REPR_CHARS_MAX
_REPR.maxother = _REPR_CHARS_MAX


def _short_repr(value: Any) -> str:
    try:
        text = _REPR.repr(value)
    except Exception as exc:
        return f"<repr() raised {type(exc).__name__}>"
    return text if len(text) <= _REPR_CHARS_MAX else text[: _REPR_CHARS_MAX - 3] + "..."


def with_object_id(data: bytes, object_id: bytes) -> bytes:
    """The same layout with ``object_id`` in its header (inline objects travel without one)."""
    view = _byte_view(data)
    magic, version, kind_code, _, _, _, total_size, meta_bytes, count = _HEADER.unpack_from(view, 0)
    id_bytes = len(object_id)
    if id_bytes > OBJECT_ID_BYTES_MAX:
        raise ValueError(f"object ids are at most {OBJECT_ID_BYTES_MAX} bytes, got {id_bytes}")
    crc = zlib.crc32(_CRC_FIELDS.pack(magic, version, kind_code, id_bytes, total_size, meta_bytes, count))
    header = _HEADER.pack(magic, version, kind_code, id_bytes, object_id, crc, total_size, meta_bytes, count)
    return header + bytes(view[HEADER_BYTES:])
