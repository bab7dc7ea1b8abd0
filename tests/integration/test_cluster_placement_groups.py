"""Placement groups on three nodes: STRICT_SPREAD, STRICT_PACK, pending, removal, a driver's end, a node's death.

Each node is a real node daemon (``LocalCluster``) with 2 CPUs; the driver
runs on node 1. The last test kills node 3 and checks what Ray promises: the
bundles it held are placed again on the living nodes, and the work in them
runs there.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap

from collections.abc import Iterator

import pytest

import ember
import ember.chaos
from ember.chaos import LocalCluster
from ember.util import placement_group, placement_group_table, remove_placement_group
from ember.util.placement_group import PlacementGroup
from ember.util.scheduling_strategies import PlacementGroupSchedulingStrategy
from tests.fix_cluster import Counter, driver_of, poll_until

GET_TIMEOUT_S = 120.0
STATE_TIMEOUT_S = 60.0
DRIVER_TIMEOUT_S = 120.0

pytestmark = pytest.mark.usefixtures("private_runtime_dir")


@pytest.fixture(scope="module")
def three_nodes() -> Iterator[LocalCluster]:
    with driver_of([{"num_cpus": 2}] * 3) as cluster:
        yield cluster


@ember.remote(num_cpus=1)
def node_of() -> str:
    return ember.get_runtime_context().get_node_id()


def in_bundle(pg: PlacementGroup, index: int = -1) -> dict:
    return {"scheduling_strategy": PlacementGroupSchedulingStrategy(pg, index)}


def entry(pg: PlacementGroup) -> dict:
    return placement_group_table(pg)


def cpus_free() -> float:
    return ember.available_resources().get("CPU", 0.0)


def test_strict_spread_puts_each_bundle_on_its_own_node(three_nodes: LocalCluster) -> None:
    pg = placement_group([{"CPU": 1}] * 3, strategy="STRICT_SPREAD")
    assert ember.get(pg.ready(), timeout=GET_TIMEOUT_S) == pg
    placed = entry(pg)["bundles_to_node_id"]
    assert sorted(placed.values()) == sorted(node.node_id for node in three_nodes.nodes)
    ran = ember.get([node_of.options(**in_bundle(pg, i)).remote() for i in range(3)], timeout=GET_TIMEOUT_S)
    assert ran == [placed[i] for i in range(3)]
    remove_placement_group(pg)
    assert poll_until(lambda: cpus_free() == 6.0, STATE_TIMEOUT_S)


def test_strict_pack_puts_every_bundle_on_one_node(three_nodes: LocalCluster) -> None:
    pg = placement_group([{"CPU": 1}, {"CPU": 1}], strategy="STRICT_PACK")
    assert pg.wait(STATE_TIMEOUT_S)
    (home,) = set(entry(pg)["bundles_to_node_id"].values())
    ran = ember.get([node_of.options(**in_bundle(pg)).remote() for _ in range(4)], timeout=GET_TIMEOUT_S)
    assert set(ran) == {home}
    actor = Counter.options(num_cpus=1, **in_bundle(pg, 1)).remote()
    assert ember.get(actor.node.remote(), timeout=GET_TIMEOUT_S) == home
    ember.kill(actor)
    remove_placement_group(pg)
    assert poll_until(lambda: cpus_free() == 6.0, STATE_TIMEOUT_S)


def test_infeasible_strict_spread_stays_pending_and_is_placed_when_room_appears(three_nodes: LocalCluster) -> None:
    four = placement_group([{"CPU": 1}] * 4, strategy="STRICT_SPREAD", name="four")
    assert not four.wait(1.0)
    assert entry(four)["state"] == "PENDING"
    # `ember status` shows it waiting, and why.
    shown = _ember("status", "--address", three_nodes.address)
    assert shown.returncode == 0, shown.stderr
    (line,) = [line for line in shown.stdout.splitlines() if line.startswith(four.id.hex()[:8])]
    assert "four" in line and "PENDING" in line and "STRICT_SPREAD" in line and "no set of the 3 live" in line
    listed = json.loads(_ember("status", "--address", three_nodes.address, "--format", "json").stdout)
    assert [g["state"] for g in listed["placement_groups"] if g["placement_group_id"] == four.id.hex()] == [
        "PENDING"]
    remove_placement_group(four)
    # Room taken, then given back: a group that did not fit is placed once it does.
    hog = placement_group([{"CPU": 2}] * 3, strategy="SPREAD")
    assert hog.wait(STATE_TIMEOUT_S)
    later = placement_group([{"CPU": 1}], strategy="PACK")
    ready = later.ready()
    assert not later.wait(1.0) and entry(later)["state"] == "PENDING"
    remove_placement_group(hog)
    assert ember.get(ready, timeout=GET_TIMEOUT_S) == later
    remove_placement_group(later)
    assert poll_until(lambda: cpus_free() == 6.0, STATE_TIMEOUT_S)


def _ember(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ember._cli", *args], capture_output=True, text=True,
                          timeout=DRIVER_TIMEOUT_S, env=dict(os.environ))


def _driver(address: str, code: str) -> subprocess.CompletedProcess:
    program = textwrap.dedent(f"""
        import ember
        from ember.util import placement_group
        ember.init(address={address!r})
    """) + textwrap.dedent(code)
    return subprocess.run([sys.executable, "-c", program], capture_output=True, text=True,
                          timeout=DRIVER_TIMEOUT_S, env=dict(os.environ))


def test_a_group_ends_with_its_driver_unless_detached(three_nodes: LocalCluster) -> None:
    made = _driver(three_nodes.address, """
        kept = placement_group([{"CPU": 1}], name="kept", lifetime="detached")
        gone = placement_group([{"CPU": 1}], name="gone")
        assert kept.wait(60) and gone.wait(60)
        print(kept.id.hex(), gone.id.hex())
        ember.shutdown()
    """)
    assert made.returncode == 0, made.stderr
    kept_id, gone_id = made.stdout.split()[-2:]
    killed = _driver(three_nodes.address, """
        import os, signal
        pg = placement_group([{"CPU": 1}], name="killed")
        assert pg.wait(60)
        print(pg.id.hex(), flush=True)
        os.kill(os.getpid(), signal.SIGKILL)  # no shutdown: its node's scheduler sees it go
    """)
    killed_id = killed.stdout.split()[-1]
    # Its node's scheduler tells the GCS the driver is gone (after a grace: it may connect again).
    for group_id in (gone_id, killed_id):
        assert poll_until(lambda: placement_group_table()[group_id]["state"] == "REMOVED", STATE_TIMEOUT_S)
    table = placement_group_table()
    assert table[kept_id]["state"] == "CREATED" and table[kept_id]["lifetime"] == "detached"
    remove_placement_group(ember.util.get_placement_group("kept"))
    assert poll_until(lambda: cpus_free() == 6.0, STATE_TIMEOUT_S)


def _gcs_pid() -> int | None:
    return next((p.pid for p in ember.chaos.processes() if p.kind == "gcs"), None)


def test_groups_survive_a_gcs_restart(three_nodes: LocalCluster) -> None:
    pg = placement_group([{"CPU": 1}] * 3, strategy="STRICT_SPREAD", name="durable")
    assert pg.wait(STATE_TIMEOUT_S)
    before = entry(pg)
    old = _gcs_pid()
    assert old is not None
    os.kill(old, signal.SIGKILL)  # the head's supervisor starts another, which loads the groups from PostgreSQL
    assert poll_until(lambda: (pid := _gcs_pid()) not in (None, old) and pid, STATE_TIMEOUT_S), "no new GCS"
    after = poll_until(lambda: (e := entry(pg)) and e["state"] == "CREATED" and e, STATE_TIMEOUT_S)
    assert after and after["bundles_to_node_id"] == before["bundles_to_node_id"]
    assert ember.util.get_placement_group("durable") == pg
    ran = ember.get([node_of.options(**in_bundle(pg, i)).remote() for i in range(3)], timeout=GET_TIMEOUT_S)
    assert ran == [before["bundles_to_node_id"][i] for i in range(3)]
    remove_placement_group(pg)
    assert poll_until(lambda: cpus_free() == 6.0, STATE_TIMEOUT_S)


def test_a_dead_nodes_bundles_are_placed_again_and_their_work_runs_there(three_nodes: LocalCluster) -> None:
    pg = placement_group([{"CPU": 1}, {"CPU": 1}], strategy="STRICT_SPREAD")
    assert pg.wait(STATE_TIMEOUT_S)
    placed = entry(pg)["bundles_to_node_id"]
    driver_node = three_nodes.nodes[0].node_id
    # The bundle away from the driver's node is the one whose node dies.
    lost_index = next(i for i, node in placed.items() if node != driver_node)
    victim = next(node for node in three_nodes.nodes if node.node_id == placed[lost_index])
    actor = Counter.options(num_cpus=1, max_restarts=1, **in_bundle(pg, lost_index)).remote()
    assert ember.get(actor.add.remote(1), timeout=GET_TIMEOUT_S) == 1
    three_nodes.kill_node(victim)
    moved = poll_until(lambda: (e := entry(pg))["state"] == "CREATED" and
                       e["bundles_to_node_id"].get(lost_index) not in (None, victim.node_id) and e, STATE_TIMEOUT_S)
    assert moved, f"the dead node's bundle was not placed again: {entry(pg)}"
    new_home = moved["bundles_to_node_id"][lost_index]
    assert new_home != moved["bundles_to_node_id"][1 - lost_index]  # still STRICT_SPREAD
    assert ember.get(node_of.options(**in_bundle(pg, lost_index)).remote(), timeout=GET_TIMEOUT_S) == new_home
    # The actor restarted in its bundle, on its new node (its state replayed from the log).
    assert ember.get(actor.node.remote(), timeout=GET_TIMEOUT_S) == new_home
    assert ember.get(actor.add.remote(1), timeout=GET_TIMEOUT_S) == 2
    remove_placement_group(pg)

