"""Fault values: validated, printable as code, and round-tripped through JSON (no cluster needed)."""

from __future__ import annotations

import json
import pickle

import pytest

from ember.chaos import (
    PAUSE_MAX_S,
    Fault,
    FaultKind,
    Injected,
    InvalidFaultError,
    Outcome,
    PostgresNotRestartableError,
    Target,
)
from ember.exceptions import EmberUserError

EVERY_KIND = [Fault.kill(t, pick=2) for t in ("worker", "store", "scheduler", "gcs")] + [
    Fault.pause(t, 0.5, pick=1) for t in ("worker", "store", "scheduler", "gcs")] + [Fault.restart_postgres()]


@pytest.mark.parametrize("fault", EVERY_KIND, ids=repr)
def test_a_fault_survives_json_and_its_repr_is_code(fault):
    assert Fault.from_json(json.loads(json.dumps(fault.to_json()))) == fault
    assert eval(repr(fault), {"Fault": Fault}) == fault


def test_an_injected_record_survives_json():
    record = Injected(Fault.pause("store", 0.2), 1.5, 0.01, Outcome.HIT, 4242, "1 live")
    assert Injected.from_json(json.loads(json.dumps(record.to_json()))) == record


def test_strings_become_members():
    fault = Fault("kill", "store")
    assert fault.kind is FaultKind.KILL and fault.target is Target.STORE


@pytest.mark.parametrize("data, says", [
    ({"kind": "zap", "target": "worker"}, "kind='zap'"),
    ({"kind": "kill", "target": "disk"}, "target='disk'"),
    ({"kind": "kill", "target": "postgres"}, "use restart_postgres"),
    ({"kind": "restart_postgres", "target": "gcs"}, "target 'postgres'"),
    ({"kind": "pause", "target": "store"}, "0 < pause_s"),
    ({"kind": "pause", "target": "store", "pause_s": PAUSE_MAX_S + 1}, "0 < pause_s"),
    ({"kind": "kill", "target": "store", "pause_s": 1.0}, "pause faults only"),
    ({"kind": "kill", "target": "store", "pick": -1}, "pick=-1"),
    ({"kind": "kill", "target": "store", "pick": True}, "pick=True"),
    ({"kind": "kill", "target": "store", "when": 3}, "got keys"),
    ({"target": "store"}, "needs 'kind'"),
])
def test_a_malformed_fault_says_what_is_wrong(data, says):
    with pytest.raises(InvalidFaultError, match=says.replace("(", r"\(")):
        Fault.from_json(data)


def test_fault_errors_are_user_errors_that_pickle():
    for error in (InvalidFaultError("bad fault"), PostgresNotRestartableError("not ours")):
        assert isinstance(error, EmberUserError)
        copy = pickle.loads(pickle.dumps(error))
        assert type(copy) is type(error) and str(copy) == str(error)
