"""The lineage log's schema version, apart from the schema itself.

Readers check a log's version before they read it; importing the tables
(SQLAlchemy) for that would double the start-up of every ``ember list``.
"""

from __future__ import annotations

from ember.exceptions import EmberOperationError

SCHEMA_VERSION = 6


class SchemaVersionError(EmberOperationError):
    """The log was written by a newer ember than this one."""
