"""Which actor processes are superseded instances: the actor fence.

An actor's owner restarts it elsewhere when it loses its node; the node,
cut off (a network partition), may still run the old instance. Every
instance carries its *generation*: the actor's restart count when the
node that placed it (the owner's node, or the owner itself) decided to
place it there. Only that decision raises it: a node that restarts an
actor process of its own after a crash keeps the generation, and a node
that places an actor again after losing the node it ran on raises it
above every count it heard. So the generation orders the placers'
decisions, and a later decision supersedes every instance of an earlier
one, wherever it runs, whatever the GCS heard first: an instance with a
lower generation than its actor's current one is *stale*. The GCS answers
a node's registration and each of its heartbeats with its stale
processes, and the node kills them before anything else of its is heard.
This holds across a node-to-node cut (nobody is declared dead), two nodes
cut at once, and a GCS restarted meanwhile (it reloads the generations
from the log).

Two instances of one generation on two nodes (a placement retried, or a
placer that died between its decision and telling the owner) are told
apart as before generations: the GCS declares a cut-off node dead first
(its detector is faster than the owners'), and every actor process the
node had then, or reports having started while it was dead, is *suspect*.
A suspect process whose actor has a current instance elsewhere is stale.
Among equals, an actor's current instance is its latest start the GCS
heard, except that a start reported by a node coming back from the dead
never displaces a live instance elsewhere that was never cut off. Equal
instances on nodes never declared dead are left to the owner, who talks
to one; the owner ignores results of any attempt but the current one, so
what an old instance finished in between is never published.

A sans-IO decision core over plain ids (hex strings), used under the GCS
service's lock; it must never do I/O or read the clock.
"""

from __future__ import annotations

__all__ = ["ActorInstances", "INSTANCES_PER_NODE_MAX"]

INSTANCES_PER_NODE_MAX = 100_000  # actor processes a node may have at once, as far as this table keeps


class ActorInstances:
    """The live actor processes of each node with their generations, each actor's current instance, and
    the suspect processes."""

    def __init__(self) -> None:
        self._current: dict[str, tuple[str, str, int]] = {}  # actor id -> (process, node, generation)
        # node id -> {process id: (actor id, its instance's generation)}, live as last heard
        self._by_node: dict[str, dict[str, tuple[str, int]]] = {}
        self._returning: set[str] = set()  # nodes declared dead that have not registered again
        self._suspect: set[str] = set()  # processes of a node while it was declared dead

    def started(self, node_id: str, process_id: str, actor_id: str, generation: int = 0) -> None:
        """An instance of ``actor_id`` started on ``node_id``: the actor's current one if its generation
        is higher than the current one's; if equal, unless the node reports it on its way back from the
        dead and the actor has a live instance elsewhere that was never cut off (not suspect)."""
        current = self._current.get(actor_id)
        if node_id in self._returning:
            self._suspect.add(process_id)
        self._remember(node_id, process_id, actor_id, generation)
        if current is not None and current[0] != process_id:
            if generation < current[2]:
                return
            if (generation == current[2] and node_id in self._returning and current[1] != node_id
                    and current[0] not in self._suspect and current[0] in self._by_node.get(current[1], {})):
                return
        self._current[actor_id] = (process_id, node_id, generation)

    def died(self, node_id: str, process_id: str) -> None:
        self._by_node.get(node_id, {}).pop(process_id, None)
        self._suspect.discard(process_id)

    def declared_dead(self, node_id: str) -> None:
        """The failure detector gave up on ``node_id``: all its actor processes are suspect from now on."""
        self._returning.add(node_id)
        self._suspect.update(self._by_node.get(node_id, {}))

    def registered(self, node_id: str, own: dict[str, tuple[str, int]]) -> None:
        """``node_id`` registers, naming the actor processes it runs (``{process id: (actor id,
        generation)}``), after its events were noted. A process the GCS has no start for (the GCS
        restarted, or the log ended the process with its node) is current if its generation is above
        the current instance's, or if no other instance of its actor is known."""
        for process_id, (actor_id, generation) in own.items():
            current = self._current.get(actor_id)
            if current is None or (current[0] != process_id and generation > current[2]):
                self._current[actor_id] = (process_id, node_id, generation)
            self._remember(node_id, process_id, actor_id, generation)
        self._returning.discard(node_id)

    def node_left(self, node_id: str) -> None:
        """The node said goodbye (its processes stopped with it): nothing of it is left to fence."""
        for process_id in self._by_node.pop(node_id, {}):
            self._suspect.discard(process_id)
        self._returning.discard(node_id)

    def stale(self, node_id: str) -> list[str]:
        """The processes of ``node_id`` whose actor's current instance is another process of a higher
        generation, or of the same one when they are suspect; sorted."""
        found = []
        for process_id, (actor_id, generation) in self._by_node.get(node_id, {}).items():
            current = self._current.get(actor_id)
            if current is None or current[0] == process_id:
                continue
            if generation < current[2] or process_id in self._suspect:
                found.append(process_id)
        return sorted(found)

    def current(self, actor_id: str) -> str | None:
        found = self._current.get(actor_id)
        return found[0] if found is not None else None

    def current_node(self, actor_id: str) -> str | None:
        """The node of the actor's current instance: where its callers find it (the GCS's LocateActor)."""
        found = self._current.get(actor_id)
        return found[1] if found is not None else None

    def _remember(self, node_id: str, process_id: str, actor_id: str, generation: int) -> None:
        live = self._by_node.setdefault(node_id, {})
        if len(live) < INSTANCES_PER_NODE_MAX or process_id in live:
            live[process_id] = (actor_id, generation)
