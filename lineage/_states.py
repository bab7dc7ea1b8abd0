"""The states and process kinds ember records: one definition each, for the log's writers, its readers and the runtime.

The lineage log stores these as text (``task_attempts.state``, ``jobs.state``,
``objects.state``, ``workers.kind``); the runtime holds the same values in
memory (an actor's state in its node scheduler, the owner's process kind);
``ember list`` and the dashboard parse what they read with the same classes.
Each is a ``StrEnum`` whose values are the very text the log has always held,
so a member can be written as it is, an old log reads unchanged, and no
schema changes. Members also pickle as their plain text: a state or kind
that crosses processes (a hello, an RPC) arrives as a ``str`` equal to the
member, never as a call to this module.

It lives in ``lineage/`` because these are the log's words, and it is a leaf
(tests/unit/test_layers.py): it imports nothing of ember, so every layer,
``store/`` below the log included, may use it. It must never hold behaviour
beyond naming the values: which state a row is in is decided by the writers
and readers that import it.
"""

from __future__ import annotations

import enum

__all__ = ["ActorState", "JobState", "NodeState", "ObjectState", "PlacementGroupState", "PlainStrEnum", "ProcessKind",
           "TaskState"]


class PlainStrEnum(enum.StrEnum):
    """A StrEnum whose members travel as the plain string (pickle, JSON, SQL parameters)."""

    def __reduce_ex__(self, protocol: object) -> tuple:
        # An enum member would unpickle as a call to its class, in every process it reaches.
        return (str, (self.value,))


class TaskState(PlainStrEnum):
    """A task's state: its latest attempt's logged end (``task_attempts.state``), or SUBMITTED."""

    SUBMITTED = "SUBMITTED"  # no end logged: pending, running, or cut short with its owner (readers derive it)
    FINISHED = "FINISHED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"


class ObjectState(PlainStrEnum):
    """An object's logged state (``objects.state``): the log writes CREATED; losses are read from process records."""

    CREATED = "CREATED"
    LOST = "LOST"  # not written by this version; a row that holds it is read as lost


class ActorState(PlainStrEnum):
    """An actor's life: PENDING -> ALIVE (-> RESTARTING -> ALIVE)* -> DEAD.

    The node scheduler holds it for each actor it places; readers derive it
    from the worker processes logged for the actor (``lineage/_listing.py``).
    """

    PENDING = "PENDING"  # no worker started for it yet
    ALIVE = "ALIVE"
    RESTARTING = "RESTARTING"  # its process died and it has restarts left: constructor, then logged calls replayed
    DEAD = "DEAD"  # for good: killed, out of restarts, its owner gone, its constructor failed, or its cluster ended


class NodeState(PlainStrEnum):
    ALIVE = "ALIVE"
    DEAD = "DEAD"  # ended: shut down, or declared dead (see its death cause)


class PlacementGroupState(PlainStrEnum):
    """A placement group's life (``placement_groups.state``), Ray's words: PENDING -> CREATED
    (-> RESCHEDULING -> CREATED)* -> REMOVED.

    The GCS service decides it (``lineage/_placement_groups.py``) and logs each change.
    """

    PENDING = "PENDING"  # not every bundle is reserved yet (none is usable)
    CREATED = "CREATED"  # every bundle is reserved and committed on its node
    RESCHEDULING = "RESCHEDULING"  # a node holding some of its bundles died: those are being placed again
    REMOVED = "REMOVED"  # removed, or its creator's job ended (not detached): its bundles are released


class JobState(PlainStrEnum):
    """A job's state (``jobs.state``)."""

    RUNNING = "RUNNING"
    FINISHED = "FINISHED"  # its driver called shutdown()
    ABANDONED = "ABANDONED"  # its cluster stopped without saying so; closed by the next GCS service on the log


class ProcessKind(PlainStrEnum):
    """What an ember process is: as ``workers.kind`` records it, as processes name themselves, as chaos targets them.

    ``ember.chaos.Target`` is this class: a fault's target is a process kind.
    """

    DRIVER = "driver"  # the user's program: it owns its refs and submits (chaos never kills it)
    WORKER = "worker"  # runs tasks, or one actor
    FORK_SERVER = "forkserver"  # one per node: forks its workers (scheduler/_fork_server.py)
    SCHEDULER = "scheduler"  # one per node: its queue, workers and resources
    STORE = "store"  # one per node: the shared-memory object store
    GCS = "gcs"  # the GCS service, on the head node (its node_id in the log is NULL)
    NODE = "node"  # the daemon of a node of a multi-node cluster; its other processes die with it
    POSTGRES = "postgres"  # the embedded PostgreSQL server that holds the log
