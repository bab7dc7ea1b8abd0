"""ember.lineage: the durable lineage log on PostgreSQL, and reading it back.

The runtime writes every task spec, object creation and actor call here
(``docs/lineage.md``); ``open_log()`` reads it with or without a running
cluster; ``prune()`` forgets finished jobs older than a cutoff.
"""

from ember.lineage._prune import PruneReport, prune
from ember.lineage._reader import (
    Lineage,
    LineageLog,
    ObjectRecord,
    TaskRecord,
    UnknownIdError,
    open_log,
)

__all__ = ["Lineage", "LineageLog", "ObjectRecord", "PruneReport", "TaskRecord", "UnknownIdError", "open_log", "prune"]
