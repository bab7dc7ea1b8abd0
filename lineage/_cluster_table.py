"""The GCS service's writes: nodes, processes and their deaths, in PostgreSQL.

Every write commits before the GCS answers the call that asked for it, so a
node that was told "recorded" can forget the event. While the database is
unreachable, writes raise ``Unavailable`` and callers keep their events and
retry; the GCS itself keeps running on what it holds in memory.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from typing import Any

from ember.lineage._rpc import Unavailable
from ember.lineage._states import JobState, PlacementGroupState, ProcessKind

log = logging.getLogger("ember.gcs")

# A cluster whose nodes have not heartbeated for this long stopped without
# saying so (its driver was SIGKILLed); the next GCS to start closes its rows.
ABANDONED_AFTER_S = 60.0


NODE_ENDED = "its node ended: "  # the start of the cause of a process that ended with its node

class ClusterTable:
    def __init__(self, conninfo: str | None, cluster_id: str) -> None:
        self.conninfo = conninfo
        self.cluster_id = cluster_id
        self._lock = threading.Lock()
        self._conn: Any = None

    @property
    def enabled(self) -> bool:
        return self.conninfo is not None

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def _run(self, statements: list[tuple[str, tuple]]) -> list[list[tuple]]:
        """Run statements in one transaction; returns each one's rows."""
        if not self.enabled or not statements:
            return [[] for _ in statements]
        import psycopg

        from ember.lineage._log_writer import close_quietly
        from ember.lineage._pg_connect import CONNECT_OPTIONS

        with self._lock:
            try:
                if self._conn is None or self._conn.closed:
                    self._conn = psycopg.connect(self.conninfo, connect_timeout=3, **CONNECT_OPTIONS)
                results = []
                with self._conn.transaction(), self._conn.cursor() as cur:
                    for sql, params in statements:
                        cur.execute(sql, params)
                        results.append(cur.fetchall() if cur.description else [])
                return results
            except psycopg.Error as exc:
                close_quietly(self._conn)
                self._conn = None
                raise Unavailable(f"the lineage log's PostgreSQL is unavailable: {exc}".strip()) from exc

    # -- reads --------------------------------------------------------------------------

    def live_nodes(self) -> list[dict[str, Any]]:
        (rows,) = self._run([(
            "SELECT node_id, address, resources FROM nodes WHERE cluster_id = %s AND ended_at IS NULL",
            (self.cluster_id,),
        )])
        return [{"node_id": r[0], "address": r[1], "resources": r[2] or {}} for r in rows]

    def live_actor_instances(self) -> list[tuple[str, str, str, int]]:
        """(actor id, node id, process id, generation), ids hex, of every live actor process, oldest start
        first."""
        (rows,) = self._run([(
            "SELECT actor_id, node_id, worker_id, generation FROM workers WHERE cluster_id = %s "
            "AND actor_id IS NOT NULL AND ended_at IS NULL AND node_id IS NOT NULL ORDER BY started_at",
            (self.cluster_id,),
        )])
        return [(bytes(r[0]).hex(), r[1], bytes(r[2]).hex(), r[3] or 0) for r in rows]

    def actor_names(self) -> dict[str, tuple[str, str]]:
        """Name -> (actor id hex, handle metadata) of this cluster's named actors."""
        (rows,) = self._run([("SELECT name, actor_id, meta FROM actor_names WHERE cluster_id = %s",
                              (self.cluster_id,))])
        return {r[0]: (bytes(r[1]).hex(), r[2]) for r in rows}

    def placement_groups(self) -> list[dict[str, Any]]:
        """This cluster's placement groups not removed, as Group.record() made them, oldest first."""
        (rows,) = self._run([("SELECT record FROM placement_groups WHERE cluster_id = %s AND state <> %s "
                              "ORDER BY created_at", (self.cluster_id, PlacementGroupState.REMOVED))])
        return [r[0] for r in rows]

    # -- writes -------------------------------------------------------------------------

    def placement_groups_logged(self, records: list[dict[str, Any]]) -> None:
        """Each group's latest record (a new group, or one whose state or placement changed)."""
        self._run([(
            "INSERT INTO placement_groups (placement_group_id, cluster_id, name, state, creator_job_id, detached, "
            "record) VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT (placement_group_id) DO UPDATE SET "
            "state = EXCLUDED.state, record = EXCLUDED.record, updated_at = now()",
            (r["placement_group_id"], self.cluster_id, r["name"] or None, r["state"],
             bytes.fromhex(r["creator_job_id"]) if r["creator_job_id"] else None, r["detached"], json.dumps(r)),
        ) for r in records])

    def name_claimed(self, name: str, actor_id_hex: str, meta: str) -> None:
        self._run([(
            "INSERT INTO actor_names (cluster_id, name, actor_id, meta) VALUES (%s, %s, %s, %s) "
            "ON CONFLICT (cluster_id, name) DO UPDATE SET actor_id = EXCLUDED.actor_id, meta = EXCLUDED.meta",
            (self.cluster_id, name, bytes.fromhex(actor_id_hex), meta),
        )])

    def name_released(self, name: str, actor_id_hex: str) -> None:
        self._run([("DELETE FROM actor_names WHERE cluster_id = %s AND name = %s AND actor_id = %s",
                    (self.cluster_id, name, bytes.fromhex(actor_id_hex)))])

    def node_started(self, node_id: str, address: str, resources: dict[str, float]) -> None:
        self._run([(
            "INSERT INTO nodes (node_id, cluster_id, address, resources, last_heartbeat_at) "
            "VALUES (%s, %s, %s, %s, now()) ON CONFLICT (node_id) DO UPDATE SET "
            "last_heartbeat_at = now(), ended_at = NULL, death_cause = CASE WHEN nodes.ended_at IS NULL "
            "THEN nodes.death_cause ELSE 'presumed dead (' || nodes.death_cause || '), then it came back' END",
            (node_id, self.cluster_id, address, json.dumps(resources)),
        )])

    def node_ended(self, node_id: str, cause: str) -> None:
        self._run([
            ("UPDATE nodes SET ended_at = now(), death_cause = %s WHERE node_id = %s AND ended_at IS NULL",
             (cause, node_id)),
            ("UPDATE workers SET ended_at = now(), death_cause = %s WHERE node_id = %s AND ended_at IS NULL",
             (f"{NODE_ENDED}{cause}", node_id)),
        ])

    def workers_back(self, worker_ids: list[bytes]) -> None:
        """Live processes of a node that registered again: those ended with it when it was presumed dead
        are open again, the presumption kept in their cause (as ``node_started`` keeps the node's)."""
        if worker_ids:
            self._run([("UPDATE workers SET ended_at = NULL, death_cause = 'presumed dead (' || death_cause || "
                        "'), then it came back' WHERE worker_id = ANY(%s) AND ended_at IS NOT NULL "
                        "AND starts_with(death_cause, %s)", (worker_ids, NODE_ENDED))])

    def workers_fenced(self, worker_ids: list[bytes]) -> None:
        """Actor processes of a node that came back, ended with it when it was presumed dead, and not back:
        a later instance of their actor runs elsewhere, so the node kills them (the GCS's fence)."""
        if worker_ids:
            self._run([("UPDATE workers SET death_cause = death_cause || '; fenced when its node came back: a "
                        "later instance of its actor runs elsewhere' WHERE worker_id = ANY(%s) "
                        "AND ended_at IS NOT NULL AND starts_with(death_cause, %s)", (worker_ids, NODE_ENDED))])

    def job_ended(self, job_id: bytes, state: JobState) -> None:
        self._run([("UPDATE jobs SET ended_at = now(), state = %s WHERE job_id = %s AND ended_at IS NULL",
                    (state, job_id))])

    def workers_ended(self, node_id: str, cause: str, spared: list[bytes] | None = None) -> None:
        """The node's workers ended (its scheduler died), but those in ``spared`` (its new one's)."""
        self._run([("UPDATE workers SET ended_at = now(), death_cause = %s WHERE node_id = %s "
                    "AND kind = %s AND ended_at IS NULL AND NOT worker_id = ANY(%s)",
                    (cause, node_id, ProcessKind.WORKER, spared or []))])

    def heartbeats(self, node_ids: list[str]) -> None:
        self._run([("UPDATE nodes SET last_heartbeat_at = now() WHERE node_id = ANY(%s)", (node_ids,))])

    def process_events(self, node_id: str | None, events: list[dict[str, Any]]) -> None:
        statements = []
        for ev in events:
            process_id = bytes.fromhex(ev["process_id"])
            if ev["type"] == "started":
                actor = bytes.fromhex(ev["actor_id"]) if ev.get("actor_id") else None
                statements.append((
                    "INSERT INTO workers (worker_id, cluster_id, node_id, pid, kind, actor_id, generation) "
                    "VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT (worker_id) DO NOTHING",
                    (process_id, self.cluster_id, node_id, ev["pid"], ev["kind"], actor, ev.get("generation")),
                ))
            elif ev["type"] == "died":
                statements.append((
                    "UPDATE workers SET ended_at = now(), death_cause = %s WHERE worker_id = %s "
                    "AND ended_at IS NULL",
                    (ev["cause"], process_id),
                ))
        self._run(statements)

    def close_abandoned_clusters(self) -> int:
        cause = f"no heartbeat for over {ABANDONED_AFTER_S:.0f}s: its cluster stopped without recording it"
        results = self._run([
            ("UPDATE nodes SET ended_at = now(), death_cause = %s WHERE ended_at IS NULL AND cluster_id <> %s "
             "AND (last_heartbeat_at IS NULL OR last_heartbeat_at < now() - make_interval(secs => %s)) "
             "RETURNING node_id", (cause, self.cluster_id, ABANDONED_AFTER_S)),
        ])
        ended = [r[0] for r in results[0]]
        self._run([("UPDATE jobs SET ended_at = now(), state = %s WHERE ended_at IS NULL "
                    "AND cluster_id <> %s AND cluster_id IS NOT NULL AND NOT EXISTS (SELECT 1 FROM nodes "
                    "WHERE nodes.cluster_id = jobs.cluster_id AND nodes.ended_at IS NULL)",
                    (JobState.ABANDONED, self.cluster_id))])
        # A stopped cluster's placement groups went with it (its GCS held them).
        self._run([("UPDATE placement_groups SET state = %s, updated_at = now(), record = jsonb_set(record, "
                    "'{state}', to_jsonb(%s::text)) WHERE state <> %s AND cluster_id <> %s AND NOT EXISTS "
                    "(SELECT 1 FROM nodes WHERE nodes.cluster_id = placement_groups.cluster_id "
                    "AND nodes.ended_at IS NULL)",
                    (PlacementGroupState.REMOVED, PlacementGroupState.REMOVED, PlacementGroupState.REMOVED,
                     self.cluster_id))])
        if ended:
            self._run([("UPDATE workers SET ended_at = now(), death_cause = %s WHERE ended_at IS NULL "
                        "AND (node_id = ANY(%s) OR (node_id IS NULL AND cluster_id IN "
                        "(SELECT cluster_id FROM nodes WHERE node_id = ANY(%s))))",
                        (f"{NODE_ENDED}{cause}", ended, ended))])
        return len(ended)

    def wait_available(self, stop: threading.Event, timeout_s: float | None = None) -> bool:
        """Block until the database answers (True) or ``stop``/timeout (False)."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        delay = 0.05
        while not stop.is_set():
            try:
                self._run([("SELECT 1", ())])
                return True
            except Unavailable as exc:
                if deadline is not None and time.monotonic() > deadline:
                    return False
                log.info("waiting for PostgreSQL: %s", exc)
                stop.wait(delay)
                delay = min(delay * 2, 1.0)
        return False
