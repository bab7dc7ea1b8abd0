"""``ember.timeline``: Ray's ``ray.timeline``, a Chrome trace of a job's runs, from the durable log.

Connected, it commits what this process still has queued for the log first,
then reads this driver's job from the cluster's log; not connected, it reads
any job of a log (``job_id``, ``gcs_url``), so a trace can be written after
the cluster is gone. The trace itself is ``ember.lineage.chrome_trace``,
which ``ember timeline`` writes too.
"""

from __future__ import annotations

import json
from typing import Any

from ember.exceptions import LineageLogUnavailableError
from ember.scheduler import _context
from ember.scheduler._session import log_conninfo

__all__ = ["TIMELINE_FLUSH_S", "timeline"]

TIMELINE_FLUSH_S = 10.0  # how long timeline() waits for this process's queued log rows to commit


def timeline(filename: str | None = None, *, job_id: str | None = None,
             gcs_url: str | None = None) -> list[dict[str, Any]] | None:
    """The Chrome trace events of a job's runs: written to ``filename`` as JSON (returns None), else returned.

    The job is ``job_id`` (an id or unique prefix), else this driver's job when
    connected, else the log's latest job. Load the file in Perfetto
    (ui.perfetto.dev) or chrome://tracing: a lane per worker, each run with its
    task id and attempt, rebuilds marked. Unlike Ray's, every run is in it.
    """
    from ember.lineage import LineageLog, chrome_trace, open_log

    owner = _context.PROCESS.owner
    if owner is not None and gcs_url is None:
        conninfo = log_conninfo(owner.session)
        if conninfo is None:
            raise LineageLogUnavailableError("", 0.0, "a timeline (this cluster logs no lineage: EMBER_LINEAGE=off)")
        if owner.gcs is not None and not owner.gcs.writer.flush(TIMELINE_FLUSH_S):
            raise LineageLogUnavailableError(owner.gcs.url, TIMELINE_FLUSH_S, "a timeline of this job")
        log = LineageLog(conninfo)
        job = job_id or (owner.current_task.job_id if owner.current_task is not None else owner.job_id).hex()
    else:
        log = open_log(gcs_url)
        job = job_id
    with log:
        events = chrome_trace(log, job)
    if filename is None:
        return events
    with open(filename, "w", encoding="utf-8") as out:
        json.dump(events, out)
    return None
