"""Ids as people type them: full hex task and object ids, and job ids by unique prefix.

Task ids are 32 hex digits, object ids 40 (the creating task's id and a
4-byte return index), job ids 8. Mistakes are the user's and are reported as
``UnknownIdError`` with what was expected, never as a traceback from deeper
down.

It must never touch the database except to read.
"""

from __future__ import annotations

import re
from typing import Any

from ember.exceptions import EmberUserError

TASK_ID_HEX = 32
OBJECT_ID_HEX = 40
_HEX = re.compile(r"[0-9a-fA-F]+")


class UnknownIdError(EmberUserError, KeyError):
    """The id names no task, object or job in this lineage log, or is not an id at all."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "unknown id"


def id_bytes(id_hex: str) -> bytes:
    """A task or object id's bytes; ``UnknownIdError`` saying what was expected if it is neither."""
    if not isinstance(id_hex, str) or not _HEX.fullmatch(id_hex) or len(id_hex) % 2:
        raise UnknownIdError(f"{id_hex!r} is not a task or object id (hex expected)")
    if len(id_hex) not in (TASK_ID_HEX, OBJECT_ID_HEX):
        raise UnknownIdError(
            f"{id_hex!r} is not a task id ({TASK_ID_HEX} hex digits) or an object id ({OBJECT_ID_HEX})")
    return bytes.fromhex(id_hex)


def hex_or_none(value: bytes | None) -> str | None:
    return value.hex() if value is not None else None


def resolve_job(conn: Any, job: str | None) -> bytes:
    """A job's id from a full id or a unique hex prefix; with none, the latest job."""
    if job is None:
        row = conn.execute("SELECT job_id FROM jobs ORDER BY started_at DESC, job_id DESC LIMIT 1").fetchone()
        if row is None:
            raise UnknownIdError("the lineage log has no jobs yet: run a program with ember.init() first")
        return bytes(row[0])
    prefix = job.strip().lower()
    if not prefix or not _HEX.fullmatch(prefix):
        raise UnknownIdError(f"{job!r} is not a job id (hex expected, e.g. the JOB_ID column of `ember list jobs`)")
    rows = conn.execute(
        "SELECT job_id FROM jobs WHERE starts_with(encode(job_id, 'hex'), %s) ORDER BY started_at DESC LIMIT 6",
        (prefix,)).fetchall()
    if not rows:
        raise UnknownIdError(f"no job {job} in the lineage log (see `ember list jobs`)")
    if len(rows) > 1:
        shown = ", ".join(bytes(r[0]).hex() for r in rows[:5])
        raise UnknownIdError(f"job prefix {job!r} is ambiguous: it matches {shown}{', ...' if len(rows) > 5 else ''}")
    return bytes(rows[0][0])


class EmptyLogError(UnknownIdError):
    """The log has no tables yet: nothing has run with it."""
