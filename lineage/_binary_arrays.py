"""A lineage column as one PostgreSQL binary array, built in a few list operations.

The log writer sends each table's rows as ``unnest`` over one array per
column. psycopg's own array dumper looks up a dumper per element and per
array, which cost the writer about 0.3 ms of CPU per batch whatever its size
(27 arrays for a task's three rows) and a few microseconds per row, all of it
holding the GIL the caller's threads need. The lineage tables use six column
types only, so each column is encoded here directly in the wire format
(``array_recv``): a header, then per element its length (-1 for NULL) and
its bytes.

The parameter goes out with type 0: PostgreSQL takes its type from the
statement's ``$n::type[]`` cast, and reads the bytes with that type's
binary input, which checks them (a malformed array is an error, never a
wrong row).
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from typing import Any

from psycopg.adapt import Dumper
from psycopg.pq import Format

_NULL = b"\xff\xff\xff\xff"
_LEN = struct.Struct(">i").pack
_HEADER = struct.Struct(">iiIii").pack  # dimensions, has-nulls flag, element type, length, lower bound

# Element type oids (pg_type), fixed since PostgreSQL 7.
OIDS = {"bytea": 17, "text": 25, "smallint": 21, "integer": 23, "bigint": 20, "jsonb": 3802}


def _bytes_elements(values: Sequence[Any]) -> list[bytes]:
    out: list[bytes] = []
    add = out.append
    for v in values:
        if v is None:
            add(_NULL)
        else:
            add(_LEN(len(v)))
            add(v)
    return out


def _text_elements(values: Sequence[Any]) -> list[bytes]:
    return _bytes_elements([None if v is None else v.encode() for v in values])


def _jsonb_elements(values: Sequence[Any]) -> list[bytes]:
    # A jsonb value in binary form is a version byte (1) and the JSON text;
    # the rows carry that text already (see GcsLog._resources_json).
    return _bytes_elements([None if v is None else b"\x01" + v.encode() for v in values])


def _fixed(fmt: str) -> Callable[[Sequence[Any]], list[bytes]]:
    pack = struct.Struct(">i" + fmt).pack
    size = struct.calcsize(">" + fmt)
    return lambda values: [_NULL if v is None else pack(size, v) for v in values]


_ELEMENTS: dict[str, Callable[[Sequence[Any]], list[bytes]]] = {
    "bytea": _bytes_elements, "text": _text_elements, "jsonb": _jsonb_elements,
    "smallint": _fixed("h"), "integer": _fixed("i"), "bigint": _fixed("q"),
}


class BinaryArray:
    """One column's values, encoded; ``EncodedDumper`` sends the bytes as they are."""

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data


class EncodedDumper(Dumper):
    format = Format.BINARY
    oid = 0  # the statement's cast gives the type

    def dump(self, obj: BinaryArray) -> bytes:
        return obj.data


def supported(type_name: str) -> bool:
    return type_name in _ELEMENTS


def encode_column(type_name: str, values: Sequence[Any]) -> BinaryArray:
    """``values`` (not empty) as a one-dimensional array of ``type_name``."""
    elements = _ELEMENTS[type_name](values)
    has_null = 1 if None in values else 0
    return BinaryArray(_HEADER(1, has_null, OIDS[type_name], len(values), 1) + b"".join(elements))
