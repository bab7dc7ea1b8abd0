"""The actor fence's decisions (lineage/_actor_fence.py), over plain ids: which processes a node must kill."""

from __future__ import annotations

import pytest

from ember.lineage._actor_fence import ActorInstances
from ember.lineage._gcs_service import _check_events, _own_actors
from ember.lineage._rpc import BadRequest

A, B = "a1", "b1"  # actor ids


def test_a_cut_off_node_comes_back_to_find_its_actor_restarted_elsewhere_and_kills_the_old_instance() -> None:
    table = ActorInstances()
    table.started("x", "px", A)
    table.declared_dead("x")  # cut off: the GCS gives up on it
    table.started("y", "py", A)  # its owner restarts the actor on y
    table.registered("x", {"px": (A, 0)})
    assert table.stale("x") == ["px"]
    assert table.stale("y") == []
    assert table.current(A) == "py"
    table.died("x", "px")  # the node killed it and said so
    assert table.stale("x") == []


def test_a_node_back_from_the_dead_whose_actor_did_not_move_keeps_it() -> None:
    table = ActorInstances()
    table.started("x", "px", A)
    table.declared_dead("x")
    table.registered("x", {"px": (A, 0)})
    assert table.stale("x") == []
    assert table.current(A) == "px"


def test_regression_two_instances_on_nodes_never_declared_dead_are_never_fenced() -> None:
    # The network soak (2026-12-06) saw actor calls hang after the first fence fenced processes on two nodes
    # at once; the likely cause: "the latest start heard" is not the instance its owner follows when two
    # starts race (a placement retried). Of one generation, only processes of a node declared dead are
    # fenced.
    table = ActorInstances()
    table.started("x", "px", A)
    table.started("y", "py", A)
    assert table.stale("x") == [] and table.stale("y") == []


def test_regression_a_start_reported_on_the_way_back_never_displaces_the_instance_elsewhere() -> None:
    # The cut-off node restarted the actor itself (its process was killed during the cut), while the owner
    # restarted it on y; x reports its start only when it registers again, after y's. The owner follows y.
    table = ActorInstances()
    table.started("x", "px", A)
    table.declared_dead("x")
    table.started("y", "py", A)
    table.died("x", "px")  # x's events, sent with its registration: the old process died ...
    table.started("x", "px2", A)  # ... and x started another
    table.registered("x", {"px2": (A, 0)})
    assert table.current(A) == "py"
    assert table.stale("x") == ["px2"]
    assert table.stale("y") == []


def test_a_suspect_instance_is_fenced_when_its_actor_moves_after_the_node_came_back() -> None:
    table = ActorInstances()
    table.started("x", "px", A)
    table.started("x", "qx", B)
    table.declared_dead("x")
    table.registered("x", {"px": (A, 0), "qx": (B, 0)})
    assert table.stale("x") == []
    table.started("y", "py", A)  # the owner's keepalive gave up only now: A restarts on y
    assert table.stale("x") == ["px"]  # answered with the next heartbeat


def test_a_node_that_leaves_has_nothing_left_to_fence() -> None:
    table = ActorInstances()
    table.started("x", "px", A)
    table.declared_dead("x")
    table.started("y", "py", A)
    table.node_left("x")
    assert table.stale("x") == []


def test_regression_the_owners_restart_on_a_node_declared_dead_for_a_moment_displaces_the_cut_off_instance() -> None:
    # Issue 27's split brain (network soak, plan seed 30, a 17 s cut): x is cut off and its actor restarts
    # on y, whose heartbeats are late for a moment then (a loaded machine: the GCS declares it dead too),
    # so y reports the new start only as it registers again. Kept from being current (an instance lived
    # "elsewhere": on x, itself declared dead), the owner's new instance on y was fenced, and the cut-off
    # one on x kept when x came back.
    table = ActorInstances()
    table.started("x", "px", A)
    table.declared_dead("x")  # the long cut
    table.declared_dead("y")  # late heartbeats, for a moment
    table.started("y", "py", A)  # the owner's restart, reported with y's registration
    table.registered("y", {"py": (A, 0)})
    assert table.current(A) == "py"
    assert table.stale("y") == []  # the instance the owner follows lives
    table.registered("x", {"px": (A, 0)})  # the heal
    assert table.stale("x") == ["px"]  # the cut-off one is fenced


def test_regression_the_owners_restart_displaces_the_cut_off_instance_also_when_its_node_came_back_first() -> None:
    # As above, but x's registration after the heal reaches the GCS before y's: the cut-off instance is
    # current again for a moment (nothing else was heard), and y's report must still displace it.
    table = ActorInstances()
    table.started("x", "px", A)
    table.declared_dead("x")
    table.declared_dead("y")
    table.registered("x", {"px": (A, 0)})
    assert table.stale("x") == []
    table.started("y", "py", A)
    table.registered("y", {"py": (A, 0)})
    assert table.current(A) == "py"
    assert table.stale("y") == [] and table.stale("x") == ["px"]


# -- generations: the placer's restart count at each instance's placement ---------------------------------


def test_a_node_node_cut_fences_the_old_instance_though_no_node_was_declared_dead() -> None:
    # The owner's node lost x over a cut between the two nodes (the GCS hears both) and placed the actor
    # again, on y, one generation up: x's instance is superseded wherever it runs.
    table = ActorInstances()
    table.started("x", "px", A, 0)
    table.started("y", "py", A, 1)
    assert table.current(A) == "py"
    assert table.stale("x") == ["px"] and table.stale("y") == []


def test_a_start_of_a_lower_generation_heard_later_never_becomes_current() -> None:
    # x, cut off, restarted its own crashed process (same generation) and reports it after y's new one.
    table = ActorInstances()
    table.started("x", "px", A, 0)
    table.started("y", "py", A, 1)
    table.died("x", "px")
    table.started("x", "px2", A, 0)
    assert table.current(A) == "py"
    assert table.stale("x") == ["px2"] and table.stale("y") == []


def test_two_nodes_cut_at_once_the_later_placement_wins_whichever_comes_back_first() -> None:
    for first, second in (("x", "y"), ("y", "x")):
        table = ActorInstances()
        table.started("x", "px", A, 0)
        table.declared_dead("x")  # cut: the owner places the actor again on y ...
        table.started("y", "py", A, 1)
        table.declared_dead("y")  # ... and y is cut off too
        own = {"x": {"px": (A, 0)}, "y": {"py": (A, 1)}}
        table.registered(first, own[first])
        table.registered(second, own[second])
        assert table.current(A) == "py", first
        assert table.stale("x") == ["px"] and table.stale("y") == [], first


def test_a_gcs_restarted_during_a_cut_fences_the_old_instance_from_the_generations_in_the_log() -> None:
    table = ActorInstances()  # the new service: it loaded y's instance from the log (x's was ended there)
    table.started("y", "py", A, 1)
    table.registered("x", {"px": (A, 0)})  # the heal: x never was declared dead by this service
    assert table.current(A) == "py"
    assert table.stale("x") == ["px"]


def test_a_registration_naming_a_higher_generation_than_the_log_had_is_current() -> None:
    table = ActorInstances()
    table.started("x", "px", A, 0)  # loaded from the log
    table.registered("y", {"py": (A, 2)})  # its start event was lost with a GCS that died
    assert table.current(A) == "py"
    assert table.stale("x") == ["px"] and table.stale("y") == []


def test_an_older_process_on_the_same_node_is_fenced_by_a_new_placement_there() -> None:
    # The owner placed its actor again after its node's scheduler died; the old process outlived it.
    table = ActorInstances()
    table.started("x", "px", A, 0)
    table.started("x", "px2", A, 1)
    assert table.stale("x") == ["px"]
    table.died("x", "px")
    assert table.stale("x") == []


def test_a_returning_node_with_the_higher_generation_keeps_its_instance() -> None:
    # The placer is behind the cut with the node it placed the actor on: its decision is the latest.
    table = ActorInstances()
    table.started("y", "py", A, 0)
    table.declared_dead("x")
    table.started("x", "px", A, 1)
    table.registered("x", {"px": (A, 1)})
    assert table.current(A) == "px"
    assert table.stale("x") == [] and table.stale("y") == ["py"]


def test_the_gcs_refuses_a_registration_or_event_whose_generation_is_not_a_count() -> None:
    assert _own_actors({"ab" * 16: ["cd" * 16, 3]}) == {"ab" * 16: ("cd" * 16, 3)}
    for entry in ("cd" * 16, ["cd" * 16], ["cd" * 16, -1], ["cd" * 16, "3"], ["zz", 0]):
        with pytest.raises(BadRequest):
            _own_actors({"ab" * 16: entry})
    started = {"type": "started", "process_id": "ab" * 16, "pid": 7, "kind": "worker", "actor_id": "cd" * 16}
    _check_events({"events": [{**started, "generation": 2}]})
    for generation in (-1, "2", 1.5):
        with pytest.raises(BadRequest):
            _check_events({"events": [{**started, "generation": generation}]})
