"""The GCS service process: node registration, heartbeats, the failure detector.

One per cluster. Nodes register with it and heartbeat every
``HEARTBEAT_S``; each heartbeat carries the node's process events (a worker
started, a worker died, and why), which are committed to PostgreSQL before
the call returns, so the node may forget them. A node silent for
``NODE_DEAD_AFTER_S`` is declared dead, with the cause, in the log.

It keeps nothing that matters only in memory: killed, it is restarted by the
node that started it, reloads this cluster's live nodes from PostgreSQL and
gives them a fresh heartbeat window, and nodes replay whatever events they
had not had acknowledged.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
import time
from typing import Any, assert_never

from ember import _settings
from ember.lineage._actor_fence import ActorInstances
from ember.lineage._cluster_table import ClusterTable
from ember.lineage._placement_groups import BUNDLES_MAX, BundlePhase, Group, PlacementGroups, PlacementStrategy
from ember.lineage._rpc import BadRequest, Unavailable, serve
from ember.lineage._states import JobState, PlacementGroupState, ProcessKind
from ember.scheduler._spec import Strategy, strategy_of_record, unbundled_shape

log = logging.getLogger("ember.gcs")

HEARTBEAT_S = 0.2
NODE_DEAD_AFTER_S = _settings.Settings.node_dead_after_s  # the default; EMBER_NODE_DEAD_AFTER_S changes it
HEARTBEAT_WRITE_S = 2.0  # how often last_heartbeat_at is written; death is detected in memory
LOAD_WAIT_S = 1.0  # a call about actors or names waits this long for the start's load, then says "retry"


class _Node:
    __slots__ = ("node_id", "address", "endpoint", "resources", "available", "last_seen", "alive", "death_cause",
                 "transfer", "queued", "placed", "claimed", "registered")

    def __init__(self, node_id: str, address: str, resources: dict[str, float]) -> None:
        self.node_id = node_id
        self.address = address
        self.endpoint = _endpoint(address)  # its relay's HOST:PORT, which names it in input locations
        self.resources = resources
        self.available = dict(resources)  # as of the node's last heartbeat
        self.last_seen = time.monotonic()
        self.alive = True
        self.death_cause: str | None = None
        self.transfer: str | None = None  # where its store serves objects to other nodes
        self.queued = 0  # tasks waiting in its queues, as of its last heartbeat
        self.placed = 0  # tasks placed on it since that heartbeat
        self.claimed: dict[str, float] = {}  # the resources of those tasks
        # Registered with this instance of the service; a node loaded from PostgreSQL after a
        # restart is asked to register again, which brings what the table does not keep (transfer).
        self.registered = False

    def free(self) -> dict[str, float]:
        """Its free resources as of its last heartbeat, less what was placed on it since."""
        return {name: amount - self.claimed.get(name, 0.0) for name, amount in self.available.items()}

    def public(self) -> dict[str, Any]:
        return {"node_id": self.node_id, "address": self.address, "resources": self.resources,
                "available": self.available, "alive": self.alive, "death_cause": self.death_cause,
                "transfer": self.transfer, "queued": self.queued, "registered": self.registered,
                "last_heartbeat_age_s": round(time.monotonic() - self.last_seen, 3)}


class GcsService:
    def __init__(self, table: ClusterTable, process_id: str, previous: str | None, host_node: str,
                 conninfo: str | None = None) -> None:
        self.table = table
        self.conninfo = conninfo  # where the log is: nodes that join learn it here (token-checked)
        self.host_node = host_node
        self.process_id = process_id
        self.previous = previous  # "process_id:cause" of the instance this one replaces
        self.started_at = time.time()
        self._lock = threading.Lock()
        self._nodes: dict[str, _Node] = {}
        # Each actor's current instance, and the superseded ones still alive on their nodes (the fence).
        self._instances = ActorInstances()
        # Actor names, cluster-wide: name -> (actor id hex, handle metadata: a pickle in base64 the
        # schedulers made; never unpickled here).
        self._names: dict[str, tuple[str, str]] = {}
        self._spread_next = 0  # SPREAD: where the next turn starts, in node id order
        self._groups = PlacementGroups()  # placement groups; each change is logged before it is acted on
        self._stop = threading.Event()
        self.loaded = threading.Event()

    def handlers(self) -> dict[str, Any]:
        return {"Register": self.register, "Heartbeat": self.heartbeat, "Unregister": self.unregister,
                "Nodes": self.nodes, "Info": self.info, "JobFinished": self.job_finished,
                "ProcessEvents": self.process_events, "Place": self.place, "LocateActor": self.locate_actor,
                "ClaimName": self.claim_name, "LookupName": self.lookup_name, "ListNames": self.list_names,
                "ReleaseName": self.release_name, "CreatePlacementGroup": self.create_placement_group,
                "RemovePlacementGroup": self.remove_placement_group, "GetPlacementGroup": self.get_placement_group,
                "PlacementGroupTable": self.placement_group_table, "CreatorGone": self.creator_gone}

    # -- calls -----------------------------------------------------------------------------
    # Each call checks its request's shape before it writes anything: junk is
    # refused (INVALID_ARGUMENT, logged), never half-written to PostgreSQL.

    def register(self, req: dict[str, Any]) -> dict[str, Any]:
        _require(req, node_id=str, address=str, resources=dict, events=(list, None), restarted=(bool, None),
                 transfer=(str, None), own=(list, None), own_actors=(dict, None))
        _check_events(req)
        own = req.get("own") or []
        if not all(type(p) is str for p in own):
            raise BadRequest(f"field 'own' is {own!r:.60}, not a list of process ids (hex)")
        own_actors = _own_actors(req.get("own_actors") or {})
        self._note_actors(req["node_id"], req.get("events"))
        with self._lock:
            self._instances.registered(req["node_id"], own_actors)
            stale = self._instances.stale(req["node_id"])
        # A superseded actor instance is not back with its node: the node kills it on this answer.
        spared = [_hex(p, "own") for p in own if p not in stale]
        if req.get("restarted"):
            # Not the processes the new scheduler started: this registration may be a second try.
            self.table.workers_ended(req["node_id"], "its node's scheduler died", spared)
        self.table.node_started(req["node_id"], req["address"], req["resources"])
        self.table.workers_back(spared)  # ended with their node when it was presumed dead
        self.table.workers_fenced([bytes.fromhex(p) for p in stale if p in own])
        self.table.process_events(req["node_id"], req.get("events", []))
        with self._lock:
            node = self._nodes.get(req["node_id"])
            if node is None:
                node = self._nodes[req["node_id"]] = _Node(req["node_id"], req["address"], req["resources"])
            node.address, node.endpoint = req["address"], _endpoint(req["address"])
            node.resources, node.transfer = req["resources"], req.get("transfer")
            node.alive, node.death_cause, node.last_seen = True, None, time.monotonic()
            node.registered = True
        return {"gcs_pid": os.getpid(), "stale": stale}

    def heartbeat(self, req: dict[str, Any]) -> dict[str, Any]:
        _require(req, node_id=str, events=(list, None), available=(dict, None), queued=(int, None),
                 bundles=(dict, None), refused=(list, None), awaiting=(list, None))
        _check_events(req)
        _check_bundle_report(req)
        available = req.get("available")
        if available is not None and not all(type(k) is str and type(v) in (int, float) for k, v in available.items()):
            raise BadRequest("available must map resource names to numbers")
        with self._lock:
            node = self._nodes.get(req["node_id"])
            if node is None or not node.alive or not node.registered:
                # A new instance (that has not loaded this node yet, or loaded it from the
                # table only), or one that declared it dead: the node registers (again) and resends.
                return {"known": False}
            node.last_seen = time.monotonic()
            if available is not None:
                node.available = available
            node.queued, node.placed, node.claimed = req.get("queued") or 0, 0, {}
            # The other live nodes' free resources: the node spreads work to them (hybrid policy).
            view = {n.node_id: {"total": n.resources, "available": n.free()}
                    for n in self._nodes.values() if n.alive and n.registered and n is not node}
            changed: list[Group] = []
            desired: dict[str, Any] | None = None
            gone: list[str] = []
            if self.loaded.is_set():  # before the load, every group would look unknown, every bundle unplaced
                changed = self._groups.report(node.node_id, req.get("bundles") or {}, req.get("refused") or ())
                changed += self._schedule_groups()
                desired = self._groups.desired(node.node_id)
                # Groups the node holds or waits for that are removed: it ends their work (a bundle it
                # holds and no longer should, of a group not removed, was moved: its work follows it).
                asked = set(req.get("awaiting") or ()) | {k.rpartition(":")[0] for k in req.get("bundles") or {}}
                gone = sorted(g for g in asked if self._group_gone(g))
        self._log_groups(changed)
        events = req.get("events") or []
        if events:
            self.table.process_events(req["node_id"], events)
            self._note_actors(req["node_id"], events)
        reply: dict[str, Any] = {"known": True, "view": view, "gone": gone}
        with self._lock:
            stale = self._instances.stale(req["node_id"])
        if stale:
            reply["stale"] = stale  # the node kills them and reports their deaths, which ends this
        if desired is not None:  # none before the load: the node keeps what it holds meanwhile
            reply["bundles"] = desired
        return reply

    def unregister(self, req: dict[str, Any]) -> dict[str, Any]:
        _require(req, node_id=str, events=(list, None), cause=(str, None))
        _check_events(req)
        self.table.process_events(req["node_id"], req.get("events", []))
        self.table.node_ended(req["node_id"], req.get("cause") or "shut down")
        with self._lock:
            node = self._nodes.get(req["node_id"])
            if node is not None:
                node.alive, node.death_cause = False, req.get("cause") or "shut down"
            self._instances.node_left(req["node_id"])
            changed = self._groups_of_dead_node(req["node_id"])
        self._log_groups(changed)
        return {}

    def process_events(self, req: dict[str, Any]) -> dict[str, Any]:
        _require(req, node_id=(str, None), events=(list, None))
        _check_events(req)
        self.table.process_events(req.get("node_id"), req.get("events") or [])
        return {}

    def job_finished(self, req: dict[str, Any]) -> dict[str, Any]:
        _require(req, job_id=str, state=(str, None))
        self.table.job_ended(_hex(req["job_id"], "job_id"), _job_end(req.get("state") or JobState.FINISHED))
        self.creator_gone({"job_id": req["job_id"]})
        return {}

    def creator_gone(self, req: dict[str, Any]) -> dict[str, Any]:
        """A job ended (its driver shut down or disconnected): its placement groups that are not detached go."""
        _require(req, job_id=str)
        _hex(req["job_id"], "job_id")
        self._require_loaded()
        with self._lock:
            changed = self._groups.remove_job(req["job_id"])
        self._log_groups(changed)
        return {"removed": [g.group_id for g in changed]}

    # -- placement groups -----------------------------------------------------------------

    def create_placement_group(self, req: dict[str, Any]) -> dict[str, Any]:
        """A new group, logged before the answer; placed at once if the nodes have room, else it waits."""
        _require(req, group_id=str, name=(str, None), strategy=str, bundles=list, job_id=str, detached=bool)
        _require_hex(req, "group_id")
        _require_hex(req, "job_id")
        if req["strategy"] not in set(PlacementStrategy):
            raise BadRequest(f"strategy must be one of {[s.value for s in PlacementStrategy]}, got "
                             f"{req['strategy']!r:.40}")
        bundles = req["bundles"]
        if not 0 < len(bundles) <= BUNDLES_MAX or not all(
                isinstance(b, dict) and b and all(isinstance(k, str) and type(v) in (int, float) and v >= 0
                                                  for k, v in b.items()) for b in bundles):
            raise BadRequest(f"bundles must be 1 to {BUNDLES_MAX} maps of resource name to amount")
        self._require_loaded()
        group = Group(req["group_id"], req.get("name") or "", PlacementStrategy(req["strategy"]),
                      [{k: float(v) for k, v in b.items()} for b in bundles], req["job_id"], req["detached"])
        with self._lock:
            if req["group_id"] in self._groups.groups:
                return {}  # sent again (its answer was lost): created already
            try:
                self._groups.add(group)
            except ValueError as exc:
                return {"error": str(exc)}
        try:
            self.table.placement_groups_logged([group.record()])
        except Exception:
            with self._lock:
                self._groups.groups.pop(group.group_id, None)  # not durable: not created
            raise
        with self._lock:
            changed = self._schedule_groups()
        self._log_groups(changed)
        return {}

    def remove_placement_group(self, req: dict[str, Any]) -> dict[str, Any]:
        _require(req, group_id=str)
        self._require_loaded()
        with self._lock:
            group = self._groups.remove(req["group_id"])
            changed = ([group] if group is not None else []) + self._schedule_groups()
        self._log_groups(changed)
        return {"removed": group is not None}

    def get_placement_group(self, req: dict[str, Any]) -> dict[str, Any]:
        """A group's record by id or by name (a live group's); {} if none."""
        _require(req, group_id=(str, None), name=(str, None))
        self._require_loaded()
        with self._lock:
            if req.get("name"):
                group = self._groups.named(req["name"])
            else:
                group = self._groups.groups.get(req.get("group_id") or "")
            return {} if group is None else {"group": group.record()}

    def placement_group_table(self, req: dict[str, Any]) -> dict[str, Any]:
        self._require_loaded()
        with self._lock:
            return {"groups": [g.record() for g in sorted(self._groups.groups.values(), key=lambda g: g.seq)]}

    def _schedule_groups(self) -> list[Group]:
        """Place pending bundles on the live nodes' free resources (call under the lock)."""
        if not any(None in g.nodes and g.state is not PlacementGroupState.REMOVED
                   for g in self._groups.groups.values()):
            return []
        free = {n.node_id: n.free() for n in self._nodes.values() if n.alive and n.registered}
        return self._groups.schedule(free)

    def _groups_of_dead_node(self, node_id: str) -> list[Group]:
        """A node died: the bundles it held are placed again on the others (call under the lock)."""
        return self._groups.node_dead(node_id) + self._schedule_groups()

    def _group_gone(self, group_id: Any) -> bool:
        group = self._groups.groups.get(group_id) if isinstance(group_id, str) else None
        return group is None or group.state is PlacementGroupState.REMOVED

    def _log_groups(self, groups: list[Group]) -> None:
        """Log the groups' latest records (a group listed twice is logged once)."""
        if not groups:
            return
        with self._lock:
            records = list({g.group_id: g.record() for g in groups}.values())
        try:
            self.table.placement_groups_logged(records)
        except Unavailable as exc:
            # Nodes act on the table in memory; the log catches up at the group's next change,
            # and a GCS restarted meanwhile re-places what it does not find held.
            log.warning("placement group changes not logged yet: %s", exc)

    def nodes(self, req: dict[str, Any]) -> dict[str, Any]:
        self.loaded.wait(5.0)
        with self._lock:
            return {"nodes": [n.public() for n in self._nodes.values()], "gcs_pid": os.getpid()}

    def place(self, req: dict[str, Any]) -> dict[str, Any]:
        """The global scheduler: a node for each task a node spilled (``None``: no live node can run it)."""
        _require(req, node_id=str, tasks=list, avoid=(list, None))
        # Before the start's load, a node not yet heard from would look absent: "nowhere fits"
        # would fail tasks for good.
        self._require_loaded()
        tasks = req["tasks"]
        avoid = req.get("avoid") or []  # nodes the caller lost touch with, maybe not declared dead yet
        for task in tasks:
            if not (isinstance(task, dict) and isinstance(task.get("resources"), dict)
                    and all(type(v) in (int, float) for v in task["resources"].values())
                    and isinstance(task.get("inputs", {}), dict)
                    and all(type(v) is int for v in task.get("inputs", {}).values())):
                raise BadRequest("each task must be {resources: {name: amount}, inputs: {endpoint: bytes}}")
            _check_strategy(task.get("strategy"))
        if not all(isinstance(node_id, str) for node_id in avoid):
            raise BadRequest("avoid must list node ids")
        avoided = set(avoid)
        with self._lock:
            alive = [n for n in self._nodes.values() if n.alive]
            preferred = [n for n in alive if n.node_id not in avoided]
            # A task only an avoided node can run goes there all the same: it may be a blip, and if
            # the node is dead, it is declared so within a second and the task fails then.
            requester = self._nodes.get(req["node_id"])
            placements: list[str | None] = []
            refused: dict[str, str] = {}  # index -> why its strategy cannot be met
            for i, task in enumerate(tasks):
                node_id, why = self._place_one(task, preferred, alive, requester)
                placements.append(node_id)
                if why is not None:
                    refused[str(i)] = why
            addresses = {n.node_id: n.address for n in alive}
            # What the cluster has, for the warning about a task no live node can run (it waits for one).
            totals: dict[str, float] = {}
            if None in placements:
                for n in alive:
                    for name, amount in n.resources.items():
                        totals[name] = totals.get(name, 0.0) + amount
        return {"placements": placements, "addresses": addresses, "totals": totals, "nodes": len(alive),
                "refused": refused}

    def _place_one(self, task: dict[str, Any], preferred: list[_Node], alive: list[_Node],
                   requester: _Node | None) -> tuple[str | None, str | None]:
        """One task's node by its strategy (call under the lock): (node id or None, why it is refused or None)."""
        resources, inputs = task["resources"], task.get("inputs") or {}
        strategy = strategy_of_record(task.get("strategy"))
        if strategy is not None:
            kind = Strategy(strategy[0])
            match kind:
                case Strategy.SPREAD:
                    return self._spread(preferred, resources) or self._spread(alive, resources), None
                case Strategy.PLACEMENT_GROUP:
                    free = {n.node_id: n.free() for n in alive}
                    node_id, why = self._groups.where(strategy[1], strategy[2],
                                                      unbundled_shape(tuple(resources.items()), strategy[1]), free)
                    if node_id is not None and node_id in free:
                        _claim(self._nodes[node_id], resources)
                        return node_id, None
                    return None, why  # why None: its bundle is not committed yet, and it waits
                case Strategy.NODE_AFFINITY:
                    target = self._nodes.get(strategy[1])
                    if target is not None and target.alive and _fits(target, resources):
                        _claim(target, resources)  # there only, even without room now: it waits there
                        return target.node_id, None
                    if not strategy[2]:
                        state = ("is not a node of this cluster" if target is None else
                                 f"is dead ({target.death_cause})" if not target.alive else
                                 f"can never give {resources}: it has {target.resources}")
                        return None, (f"its node affinity (soft=False) names node {strategy[1]}, which {state}; "
                                      "pass soft=True to run it elsewhere")
                case _:
                    assert_never(kind)
        return (_placement(preferred, resources, inputs, requester)
                or _placement(alive, resources, inputs, requester)), None

    def _spread(self, nodes: list[_Node], resources: dict[str, Any]) -> str | None:
        """SPREAD: the nodes in turn, from the one after the last chosen, the first with room (else the
        first that fits), as Ray's spread policy does (call under the lock)."""
        fits = sorted((n for n in nodes if _fits(n, resources)), key=lambda n: n.node_id)
        if not fits:
            return None
        start = self._spread_next % len(fits)
        turn = fits[start:] + fits[:start]
        best = next((n for n in turn if _has_room(n, resources)), turn[0])
        self._spread_next = fits.index(best) + 1
        _claim(best, resources)
        return best.node_id

    def locate_actor(self, req: dict[str, Any]) -> dict[str, Any]:
        """The live node an actor's process runs on, with its scheduler's address; {} if none is known."""
        _require(req, actor_id=str)
        self._require_loaded()
        with self._lock:
            node = self._nodes.get(self._instances.current_node(req["actor_id"]) or "")
            if node is None or not node.alive:
                return {}
            return {"node_id": node.node_id, "address": node.address}

    def claim_name(self, req: dict[str, Any]) -> dict[str, Any]:
        """Name an actor cluster-wide; {"error": why} if a live actor has the name (its own claim again is fine).

        Kept in PostgreSQL before the answer, so a restarted service still knows it.
        """
        _require(req, name=str, actor_id=str, meta=str)
        _require_hex(req, "actor_id")
        self._require_loaded()
        name, claim = req["name"], (req["actor_id"], req["meta"])
        with self._lock:
            held = self._names.get(name)
            if held is not None and held[0] != claim[0]:
                return {"error": f"an actor named {name!r} already exists"}
            self._names[name] = claim
        try:
            self.table.name_claimed(name, *claim)
        except Exception:
            with self._lock:
                if self._names.get(name) == claim and held is None:
                    del self._names[name]  # not durable: not claimed
            raise
        return {}

    def lookup_name(self, req: dict[str, Any]) -> dict[str, Any]:
        _require(req, name=str)
        self._require_loaded()
        with self._lock:
            held = self._names.get(req["name"])
        return {} if held is None else {"actor_id": held[0], "meta": held[1]}

    def list_names(self, req: dict[str, Any]) -> dict[str, Any]:
        """The names the cluster's live actors hold (a dead actor's name is released)."""
        self._require_loaded()
        with self._lock:
            return {"names": sorted(self._names)}

    def release_name(self, req: dict[str, Any]) -> dict[str, Any]:
        """Free a name, if ``actor_id`` still holds it (the actor died)."""
        _require(req, name=str, actor_id=str)
        _require_hex(req, "actor_id")
        with self._lock:
            if self._names.get(req["name"], ("",))[0] == req["actor_id"]:
                del self._names[req["name"]]
        self.table.name_released(req["name"], req["actor_id"])
        return {}

    def _require_loaded(self) -> None:
        """Actors and names come back from PostgreSQL when the service starts: no answer from before."""
        if not self.loaded.wait(LOAD_WAIT_S):
            raise Unavailable("the GCS service is loading the cluster's actors and names from PostgreSQL")

    def _note_actors(self, node_id: str, events: list[dict[str, Any]] | None) -> None:
        """Remember where each actor's process started, and which is its current instance (events were
        checked already)."""
        with self._lock:
            for event in events or ():
                if event["type"] == "started" and event.get("actor_id"):
                    self._instances.started(node_id, event["process_id"], event["actor_id"],
                                            event.get("generation") or 0)
                elif event["type"] == "died":
                    self._instances.died(node_id, event["process_id"])

    def info(self, req: dict[str, Any]) -> dict[str, Any]:
        return {"gcs_pid": os.getpid(), "process_id": self.process_id, "started_at": self.started_at,
                "cluster_id": self.table.cluster_id, "loaded": self.loaded.is_set(), "node_id": self.host_node,
                "gcs_conninfo": self.conninfo}

    # -- background ------------------------------------------------------------------------

    def load(self) -> None:
        """Resume from PostgreSQL: who was alive, and record this instance's start."""
        if not self.table.wait_available(self._stop):
            return
        events = [{"type": "started", "process_id": self.process_id, "pid": os.getpid(), "kind": ProcessKind.GCS}]
        if self.previous:
            prev_id, _, cause = self.previous.partition(":")
            events.insert(0, {"type": "died", "process_id": prev_id, "cause": cause})
        self._retry(lambda: self.table.process_events(None, events))
        for row in self._retry(self.table.live_nodes):
            with self._lock:
                self._nodes.setdefault(row["node_id"], _Node(row["node_id"], row["address"], row["resources"]))
        # Where each actor runs, as the processes table has it: schedulers that did not place an
        # actor find it through the fence's table (LocateActor), and a restarted service must not forget it.
        instances = self._retry(self.table.live_actor_instances)
        names = self._retry(self.table.actor_names)
        groups = self._retry(self.table.placement_groups)
        with self._lock:
            for seq, record in enumerate(groups, 1):
                try:
                    self._groups.add(Group.from_record(record, seq))
                except (KeyError, TypeError, ValueError) as exc:
                    log.error("placement group row not loaded: %s %r", exc, record)
            heard = {actor_id for actor_id, _, _, _ in instances if self._instances.current(actor_id) is not None}
            # Oldest first: of one generation, the latest start is current, unless a start was heard since
            # this service started: that one is. A higher generation is current either way.
            for actor_id, node_id, process_id, generation in instances:
                if actor_id in heard:
                    self._instances.registered(node_id, {process_id: (actor_id, generation)})
                else:
                    self._instances.started(node_id, process_id, actor_id, generation)
            for name, claim in names.items():
                self._names.setdefault(name, claim)
        self.loaded.set()
        try:
            closed = self.table.close_abandoned_clusters()
            if closed:
                log.warning("closed %d node(s) of clusters that stopped without recording it", closed)
        except Exception:
            log.exception("could not close abandoned clusters' nodes")

    def _retry(self, fn):  # type: ignore[no-untyped-def]
        delay = 0.05
        while True:
            try:
                return fn()
            except Exception as exc:
                if self._stop.is_set():
                    raise
                log.warning("retrying a GCS write: %s", exc)
                self._stop.wait(delay)
                delay = min(delay * 2, 1.0)

    def detect_failures(self) -> None:
        dead_after_s = _settings.load().node_dead_after_s
        last_write = time.monotonic()
        while not self._stop.wait(HEARTBEAT_S / 2):
            now = time.monotonic()
            dead: list[tuple[str, str]] = []
            with self._lock:
                for node in self._nodes.values():
                    silent = now - node.last_seen
                    if node.alive and silent > dead_after_s:
                        node.alive = False
                        node.death_cause = f"missed heartbeats for {silent:.1f}s"
                        dead.append((node.node_id, node.death_cause))
                        self._instances.declared_dead(node.node_id)  # its actor processes are suspect now
                changed = [g for node_id, _ in dead for g in self._groups_of_dead_node(node_id)]
                alive = [n.node_id for n in self._nodes.values() if n.alive]
            self._log_groups(changed)
            for node_id, cause in dead:
                log.warning("node %s declared dead: %s", node_id, cause)
                try:
                    self.table.node_ended(node_id, cause)
                except Exception as exc:
                    log.warning("could not record node %s's death yet: %s", node_id, exc)
            if alive and now - last_write > HEARTBEAT_WRITE_S:
                last_write = now
                try:
                    self.table.heartbeats(alive)
                except Exception as exc:
                    log.info("heartbeat times not written: %s", exc)

    def stop(self) -> None:
        self._stop.set()


LOCALITY_BYTES_MIN = 1 << 20  # inputs this large on one node draw a task there...
LOCALITY_SLACK = 4.0  # ...unless that node's load (tasks per CPU) is this much above the least loaded's
_EPSILON = 1e-9


def _load(node: _Node) -> float:
    """Tasks per CPU on ``node``: running, queued, and placed there since it last said."""
    cpus = node.resources.get("CPU", 0.0)
    busy = cpus - node.available.get("CPU", cpus)
    return (busy + node.queued + node.placed) / max(cpus, 1.0)


def _utilisation(node: _Node) -> float:
    """The used fraction of the node's most used resource, counting what was placed there since it said."""
    free = node.free()
    return max((1.0 - free.get(name, 0.0) / total for name, total in node.resources.items() if total > 0),
               default=0.0)


def _has_room(node: _Node, resources: dict[str, Any]) -> bool:
    free = node.free()
    return all(free.get(name, 0.0) + _EPSILON >= amount for name, amount in resources.items())


def _fits(node: _Node, resources: dict[str, Any]) -> bool:
    return all(node.resources.get(k, 0.0) + _EPSILON >= v for k, v in resources.items())


def _claim(node: _Node, resources: dict[str, Any]) -> None:
    """Count a task as placed on ``node`` until its next heartbeat says what it holds."""
    node.placed += 1
    for name, amount in resources.items():
        node.claimed[name] = node.claimed.get(name, 0.0) + amount


def _check_strategy(record: Any) -> None:
    """Raise BadRequest unless ``record`` is None or a strategy record (``strategy_record``'s shape)."""
    if record is None:
        return
    if not isinstance(record, dict) or record.get("kind") not in set(Strategy):
        raise BadRequest(f"strategy must be null or {{kind: one of {[k.value for k in Strategy]}, ...}}, "
                         f"got {record!r:.80}")
    if record["kind"] == Strategy.NODE_AFFINITY:
        _require(record, node_id=str, soft=bool)
    if record["kind"] == Strategy.PLACEMENT_GROUP:
        _require(record, placement_group_id=str, bundle_index=int, capture_child_tasks=bool)


def _check_bundle_report(req: dict[str, Any]) -> None:
    """A heartbeat's bundles: {key: phase} held, keys refused, group ids its tasks wait for."""
    held = req.get("bundles") or {}
    if not all(type(k) is str and v in set(BundlePhase) for k, v in held.items()):
        raise BadRequest("bundles must map bundle keys to 'prepare' or 'commit'")
    for field in ("refused", "awaiting"):
        if not all(type(k) is str for k in req.get(field) or ()):
            raise BadRequest(f"{field} must list strings")


def _placement(nodes: list[_Node], resources: dict[str, Any], inputs: dict[str, Any],
               requester: _Node | None = None) -> str | None:
    """The node for one task, by Ray's hybrid policy; counted as placed there (call under the lock).

    The requesting node spilled the task because it has no room for it now (or is utilised past
    ``SPREAD_THRESHOLD``), which it knows better than its last heartbeat says: it counts as having no
    room. Among the nodes whose totals fit the task: the node holding at least ``LOCALITY_BYTES_MIN`` of
    its inputs, if it has room now or is not much busier than the least loaded (moving large inputs costs
    more than a short wait);
    else the least utilised node with room now; else (no node has room) the least loaded, where the
    task queues.
    """
    fits = [n for n in nodes if _fits(n, resources)]
    if not fits:
        return None
    roomy = [n for n in fits if n is not requester and _has_room(n, resources)]
    holder = max(fits, key=lambda n: inputs.get(n.endpoint, 0)) if inputs else None
    if holder is not None and inputs.get(holder.endpoint, 0) < LOCALITY_BYTES_MIN:
        holder = None
    if holder is not None and (holder in roomy or _load(holder) - min(map(_load, fits)) <= LOCALITY_SLACK):
        best = holder
    elif roomy:
        best = min(roomy, key=_utilisation)
    else:
        best = min(fits, key=_load)
    _claim(best, resources)
    return best.node_id


def _endpoint(address: str) -> str | None:
    """The relay endpoint in a node's address (a node of a one-machine cluster, or a malformed address, has none)."""
    from ember.exceptions import InvalidAddressError
    from ember.scheduler._address import is_relayed, parse_relay_address

    try:
        return parse_relay_address(address).endpoint if is_relayed(address) else None
    except InvalidAddressError:
        return None


_EVENT_FIELDS: dict[str, dict[str, Any]] = {
    "started": {"process_id": str, "pid": int, "kind": str, "actor_id": (str, None), "generation": (int, None)},
    "died": {"process_id": str, "cause": str},
}


# The processes the workers table records (a driver is a job's, a node's daemon is the node's row).
_LOGGED_KINDS = (ProcessKind.WORKER, ProcessKind.STORE, ProcessKind.SCHEDULER, ProcessKind.GCS)
# The states a job can end in; the log holds RUNNING until then.
_JOB_ENDS = tuple(s for s in JobState if s is not JobState.RUNNING)


def _job_end(state: str) -> JobState:
    if state not in _JOB_ENDS:
        raise BadRequest(f"state {state!r:.40} is not a job's end; expected one of {', '.join(_JOB_ENDS)}")
    return JobState(state)


def _require_hex(req: dict[str, Any], field: str) -> None:
    try:
        bytes.fromhex(req[field])
    except ValueError:
        raise BadRequest(f"{field} must be hex, got {req[field]!r:.80}") from None


def _require(req: dict[str, Any], **fields: Any) -> None:
    """Raise BadRequest unless each field has its type; ``(type, None)``: may be missing or null."""
    for name, kind in fields.items():
        value = req.get(name)
        optional = isinstance(kind, tuple) and None in kind
        types = tuple(t for t in (kind if isinstance(kind, tuple) else (kind,)) if t is not None)
        if value is None and optional:
            continue
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            expected = " or ".join(t.__name__ for t in types) + (" or null" if optional else "")
            raise BadRequest(f"field {name!r} is {value!r:.60} (type={type(value).__name__}), expected {expected}")


def _hex(value: str, name: str) -> bytes:
    try:
        return bytes.fromhex(value)
    except ValueError as exc:
        raise BadRequest(f"field {name!r} is {value!r:.60}, not hex") from exc


def _own_actors(own: dict[str, Any]) -> dict[str, tuple[str, int]]:
    """A registration's ``own_actors`` ({process id: [actor id, generation]}), checked."""
    checked = {}
    for process_hex, entry in own.items():
        _hex(process_hex, "own_actors")
        if (not isinstance(entry, (list, tuple)) or len(entry) != 2 or type(entry[0]) is not str
                or type(entry[1]) is not int or entry[1] < 0):
            raise BadRequest(f"own_actors[{process_hex!r:.40}] is {entry!r:.60}, expected [actor id (hex), "
                             "generation (an int >= 0)]")
        _hex(entry[0], "own_actors")
        checked[process_hex] = (entry[0], entry[1])
    return checked


def _check_events(req: dict[str, Any]) -> None:
    for i, event in enumerate(req.get("events") or ()):
        if not isinstance(event, dict) or event.get("type") not in _EVENT_FIELDS:
            raise BadRequest(f"event {i} is {event!r:.80}, expected an object with type 'started' or 'died'")
        try:
            _require(event, **_EVENT_FIELDS[event["type"]])
        except BadRequest as exc:
            raise BadRequest(f"event {i}: {exc}") from None
        _hex(event["process_id"], "process_id")
        if event["type"] == "started" and event["kind"] not in _LOGGED_KINDS:
            raise BadRequest(f"event {i}: kind {event['kind']!r:.40} is not one of {', '.join(_LOGGED_KINDS)}")
        if event.get("actor_id"):
            _hex(event["actor_id"], "actor_id")
        if event.get("generation") is not None and event["generation"] < 0:
            raise BadRequest(f"event {i}: generation {event['generation']} is negative")


def main(argv: list[str] | None = None) -> None:
    from ember.chaos import _agent
    from ember.scheduler import _procutil
    from ember.scheduler._session import open_session

    parser = argparse.ArgumentParser(prog="ember-gcs")
    parser.add_argument("session")
    parser.add_argument("--process-id", required=True)
    parser.add_argument("--node-id", required=True, help="the node this service runs on")
    parser.add_argument("--previous", default=None, help="process_id:cause of the instance this replaces")
    args = parser.parse_args(argv)
    _procutil.die_with_parent()
    _procutil.setup_logging(args.session, ProcessKind.GCS)
    session = open_session(args.session)
    conninfo = session.read_info().get("gcs_conninfo")
    table = ClusterTable(conninfo, session.name)
    service = GcsService(table, args.process_id, args.previous, args.node_id, conninfo)
    server = serve(session.gcs_address, session.token(), service.handlers())
    threading.Thread(target=service.load, name="ember-gcs-load", daemon=True).start()
    threading.Thread(target=service.detect_failures, name="ember-gcs-detector", daemon=True).start()
    _agent.start(ProcessKind.GCS, args.node_id)
    _procutil.announce_ready(session.sockets / "gcs.ready")  # the pid: the supervisor tells a kill from a crash loop

    stopped = threading.Event()

    def on_term(*_: Any) -> None:
        service.stop()
        stopped.set()

    signal.signal(signal.SIGTERM, on_term)
    stopped.wait()
    server.stop(grace=0.2)
    table.close()
    os._exit(0)


if __name__ == "__main__":
    main(sys.argv[1:])
