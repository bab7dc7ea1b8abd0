"""The words and the rhythm of infeasible requests (``scheduler/_infeasible.py``): plain data, a clock passed in."""

from __future__ import annotations

import pickle

import pytest

from ember import exceptions as ex
from ember.scheduler._infeasible import (
    WARN_EVERY_S,
    WaitWarnings,
    actor_cannot_start,
    actor_died_error,
    fixed_cluster_message,
    missing,
    waiting_message,
)

TOTALS = {"CPU": 3.0, "memory": 8e9, "object_store_memory": 2e9, "node:127.0.0.1": 1.0}


def test_missing_is_the_part_no_node_total_covers() -> None:
    assert missing((("CPU", 5.0), ("GPU", 0.5)), TOTALS) == {"CPU": 5.0, "GPU": 0.5}
    assert missing((("CPU", 3.0), ("node:127.0.0.1", 0.01)), TOTALS) == {}


def test_a_fixed_cluster_names_the_request_the_totals_and_the_fix() -> None:
    text = fixed_cluster_message((("CPU", 5.0),), TOTALS)
    assert "asks for {'CPU': 5.0}" in text
    assert "it has {'CPU': 3.0}" in text
    assert "'node:127.0.0.1': 1.0" in text and "memory" not in text.split("totals:")[1].split(")")[0]
    assert "ember.init(num_cpus=N" in text and "ember start --head" in text


def test_the_waiting_warning_names_the_request_the_cluster_and_how_a_node_joins() -> None:
    text = waiting_message("f (task 01)", (("GPU", 2.0),), {"CPU": 4.0, "GPU": 1.0}, nodes=2)
    assert "f (task 01)" in text and "{'GPU': 2.0}" in text and "{'CPU': 4.0, 'GPU': 1.0} over 2 node(s)" in text
    assert "ember start --address" in text and f"every {WARN_EVERY_S:.0f}s" in text


def test_a_wait_is_warned_about_once_then_every_minute() -> None:
    warnings = WaitWarnings(every_s=60.0)
    shape = (("CPU", 5.0),)
    assert warnings.due("owner-a", shape, now=100.0)
    assert not warnings.due("owner-a", shape, now=100.5)  # a thousand tasks of one shape: one warning
    assert not warnings.due("owner-a", shape, now=159.9)
    assert warnings.due("owner-b", shape, now=101.0)  # another owner hears it too
    assert warnings.due("owner-a", (("GPU", 1.0),), now=101.0)  # and another shape
    assert warnings.due("owner-a", shape, now=160.0)  # a minute on, while it still waits
    assert not warnings.due("owner-a", shape, now=170.0)


def test_the_warnings_remember_a_bounded_number_of_requests() -> None:
    warnings = WaitWarnings(every_s=60.0, keys_max=3)
    for k in range(10):
        assert warnings.due(f"owner-{k}", (("CPU", 5.0),), now=float(k))
    assert len(warnings) == 3
    assert warnings.due("owner-0", (("CPU", 5.0),), now=10.0)  # forgotten, so warned again: never silent


def test_an_actor_that_cannot_start_raises_both_actor_died_and_infeasible() -> None:
    error = actor_died_error("Counter", actor_cannot_start((("tpu", 1.0),), TOTALS))
    assert isinstance(error, ex.InfeasibleActorError)
    assert isinstance(error, ex.ActorDiedError) and isinstance(error, ex.InfeasibleResourceError)
    assert "asks for {'tpu': 1.0}" in str(error)
    again = pickle.loads(pickle.dumps(error))
    assert type(again) is ex.InfeasibleActorError and str(again) == str(error)
    plain = actor_died_error("Counter", "killed by ember.kill()")
    assert type(plain) is ex.ActorDiedError


@pytest.mark.parametrize("bad", ["abc", 12, b"short"])
def test_a_ref_from_something_not_an_id_is_a_typed_error(bad: object) -> None:
    import ember

    with pytest.raises(ex.NotAnObjectRefError, match="20 bytes of an object id"):
        ember.ObjectRef(bad)  # checked before any cluster is needed


def test_from_hex_of_something_not_hex_is_a_typed_error() -> None:
    import ember

    with pytest.raises(ex.NotAnObjectRefError, match="hex string"):
        ember.ObjectRef.from_hex("not hex at all")
    with pytest.raises(ex.NotAnObjectRefError, match="hex string"):
        ember.ObjectRef.from_hex(b"00")
