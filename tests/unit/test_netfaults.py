"""Network faults as data: validation, JSON and repr round trips, seeded schedules, the CLI's options."""

from __future__ import annotations

import pickle

import pytest
from click.testing import CliRunner

from ember.chaos._cli import main as chaos_main
from ember.chaos._faults import InvalidFaultError
from ember.chaos._netfaults import Direction, NetFault, NetFaultKind, Peer, peer_address
from ember.chaos._report import network_timeline
from ember.chaos._schedule import Options, Planned, plan

FAULTS = [NetFault.partition("gcs", 3.0), NetFault.partition(Peer.NODE, 1.5, "out", pick=4, peer_pick=7),
          NetFault.partition("postgres", 2.0, Direction.IN), NetFault.delay(120, 4.0, jitter_ms=30, pick=2),
          NetFault.loss(12.5, 2.0, pick=1)]


@pytest.mark.parametrize("fault", FAULTS, ids=repr)
def test_a_network_fault_round_trips_through_json_repr_and_pickle(fault: NetFault) -> None:
    assert NetFault.from_json(fault.to_json()) == fault
    assert eval(repr(fault), {"NetFault": NetFault}) == fault
    assert pickle.loads(pickle.dumps(fault)) == fault


@pytest.mark.parametrize("make, message", [
    (lambda: NetFault.partition("dns", 1.0), "peer='dns'"),
    (lambda: NetFault.partition("gcs", 1.0, "sideways"), "direction='sideways'"),
    (lambda: NetFault.partition("gcs", 0.0), "duration_s > 0"),
    (lambda: NetFault.partition("gcs", 601.0), r"duration_s=601\.0"),
    (lambda: NetFault.delay(0, 1.0), "delay_ms > 0"),
    (lambda: NetFault.delay(True, 1.0), "delay_ms=True"),
    (lambda: NetFault.loss(101.0, 1.0), "loss_percent=101"),
    (lambda: NetFault.loss(0.0, 1.0), "loss_percent > 0"),
    (lambda: NetFault.from_json({"kind": "loss", "duration_s": 1.0, "loss_percent": 5, "speed": 1}), "speed"),
    (lambda: NetFault.from_json({"kind": "loss", "duration_s": 1.0, "target": "gcs"}), "target is 'node'"),
])
def test_a_malformed_network_fault_is_a_typed_error_naming_the_field(make, message) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(InvalidFaultError, match=message):
        make()


def test_what_a_partition_cuts_follows_its_peer() -> None:
    net = {"role": "n1", "address": "10.0.0.5", "gcs": "10.0.0.3", "pg": "10.0.0.2", "host": "10.0.0.1"}
    assert peer_address(NetFault.partition("gcs", 1.0), net, []) == "{ 10.0.0.3, 10.0.0.1 }"  # drivers too
    assert peer_address(NetFault.partition("postgres", 1.0), net, []) == "10.0.0.2"
    assert peer_address(NetFault.partition("node", 1.0, peer_pick=3), net, ["10.0.0.4", "10.0.0.6"]) == "10.0.0.6"
    assert peer_address(NetFault.loss(5.0, 1.0), net, []) is None
    with pytest.raises(InvalidFaultError, match="two nodes"):
        peer_address(NetFault.partition("node", 1.0), net, [])


def test_a_seeded_schedule_of_network_faults_replays_and_round_trips() -> None:
    options = Options(partition=((Peer.GCS, Direction.BOTH), (Peer.NODE, Direction.OUT)), delay_ms=(50, 10),
                      loss_percent=20.0, net_duration_s=2.5, every_s=1.0, duration_s=30.0, seed=11)
    first, again = plan(options), plan(options)
    assert first == again and len(first) == 30
    assert {p.fault.kind for p in first} == set(NetFaultKind)
    assert all(p.fault.duration_s == 2.5 for p in first)
    assert [Planned.from_json(p.to_json()) for p in first] == first
    assert plan(Options(**{**options.__dict__, "seed": 12})) != first
    # Process faults drawn beside them are drawn as before: a schedule of kills alone is unchanged.
    kills = Options(kill=("worker",), every_s=1.0, duration_s=10.0, seed=3)  # type: ignore[arg-type]
    assert [p.fault for p in plan(kills)] == [p.fault for p in plan(kills)]


def test_the_timeline_shows_each_network_fault_from_its_start_to_its_heal() -> None:
    fault = NetFault.partition("gcs", 1.5).to_json()
    timeline = [{"t_s": 2.0, "what": "fault", "fault": fault, "outcome": "hit", "net_id": 1, "detail": "node n0"},
                {"t_s": 3.51, "what": "fault_healed", "net_id": 1},
                {"t_s": 4.0, "what": "fault", "fault": NetFault.loss(5.0, 1.0).to_json(), "outcome": "no_process",
                 "detail": "no node"},
                {"t_s": 5.0, "what": "fault", "fault": {"kind": "kill", "target": "worker"}, "outcome": "hit"}]
    assert network_timeline(timeline) == ["partition node-gcs both: 2.00 s to 3.51 s, node n0",
                                          "loss: at 4.00 s hit nothing (no node)"]


@pytest.mark.parametrize("args, message", [
    (["--partition", "dns"], "PEER"),
    (["--partition", "gcs:sideways"], "DIRECTION"),
    (["--delay", "abc"], "MS or MS:JITTER"),
    (["--delay", "0"], "MS in 1..10000"),
    (["--loss", "0"], "percentage"),
    (["--loss", "150"], "percentage"),
    (["--net-duration", "0"], "greater than 0"),
])
def test_the_cli_refuses_malformed_network_options(args: list[str], message: str) -> None:
    result = CliRunner().invoke(chaos_main, ["run", *args, "--", "true"])
    assert result.exit_code == 2 and message in result.output, result.output
