"""A workload for `chaos run --kill node`: placement groups and node affinity on three nodes, one of which is killed.

    chaos run --kill node --every-tasks 40 --max-faults 1 --seed 3 --report groups.json \\
        -- python tests/chaos/groups_workload.py --rounds 6

Node 1 is the head and the driver's (chaos never kills it); nodes 2 and 3
may be killed. Three nodes of 2 CPUs; two groups are made first:

- ``spread``: SPREAD, three bundles of half a CPU (one on each node);
- ``pack``: STRICT_PACK, two bundles of a quarter CPU (on one node).

Each round runs, and checks against the closed form:

- 3 tasks in each bundle of ``spread`` and 4 in ``pack`` (any bundle): each
  must return its value, however its bundle's node dies (the bundle is
  placed again on a living node, the task runs again there);
- 2 tasks with hard affinity to each of nodes 2 and 3: each must return its
  value, or, only if its node is dead, raise TaskUnschedulableError; 2 with
  soft affinity to each (they run elsewhere once their node is dead);
- a call on a counter actor in the ``spread`` bundle on node 3, with
  restarts: its count must hold across a kill of its node (it restarts in
  its bundle's new node and replays its calls from the log).

At the end both groups must be CREATED again with no bundle on a dead node.
It prints one line of JSON (rounds, values checked, wrong values, the typed
errors of hard affinity to the dead node, bundles placed again, other
errors, the nodes alive at the end) and exits 1 on any wrong value,
unexpected error, or group not placed again.
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import time

import ember
from ember.chaos import LocalCluster
from ember.exceptions import TaskUnschedulableError
from ember.util import placement_group, placement_group_table
from ember.util.scheduling_strategies import NodeAffinitySchedulingStrategy, PlacementGroupSchedulingStrategy

GET_TIMEOUT_S = 120.0
DEATH_NOTICED_S = 30.0  # after the last round: a killed node is declared dead by then
REPLACED_TIMEOUT_S = 60.0  # after the last round: the groups are CREATED again, on living nodes
TASK_S = 0.05


@ember.remote(num_cpus=0.25)
def square(x: int) -> int:
    time.sleep(TASK_S)
    return x * x


@ember.remote(max_restarts=-1, max_task_retries=-1, num_cpus=0.25)
class Counter:
    def __init__(self) -> None:
        self.count = 0

    def add(self, k: int) -> int:
        self.count += k
        return self.count


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=6)
    args = parser.parse_args(argv)
    tally: collections.Counter[str] = collections.Counter()
    with LocalCluster(nodes=[{"num_cpus": 2}] * 3) as cluster:
        ember.init(address=cluster.address)
        try:
            run(cluster, args.rounds, tally)
        finally:
            ember.shutdown()
    print(json.dumps(dict(tally), sort_keys=True))
    return 1 if tally["wrong"] or tally["errors"] else 0


def run(cluster: LocalCluster, rounds: int, tally: collections.Counter[str]) -> None:
    spread = placement_group([{"CPU": 0.5}] * 3, strategy="SPREAD", name="spread")
    pack = placement_group([{"CPU": 0.25}] * 2, strategy="STRICT_PACK", name="pack")
    ember.get([spread.ready(), pack.ready()], timeout=GET_TIMEOUT_S)
    placed = {pg.id.hex(): dict(placement_group_table(pg)["bundles_to_node_id"]) for pg in (spread, pack)}
    second, third = cluster.nodes[1].node_id, cluster.nodes[2].node_id
    on_third = next((i for i, node in placed[spread.id.hex()].items() if node == third), 0)
    counter = Counter.options(scheduling_strategy=PlacementGroupSchedulingStrategy(spread, on_third)).remote()
    expected_count = 0
    for round_ in range(rounds):
        base = round_ * 100
        work: list[tuple[str, int, object]] = []  # (how, x, ref)
        for i in range(3):
            for j in range(3):
                x = base + i * 10 + j
                in_bundle = PlacementGroupSchedulingStrategy(spread, i)
                work.append((f"bundle {i}", x, square.options(scheduling_strategy=in_bundle).remote(x)))
        for j in range(4):
            x = base + 40 + j
            work.append(("pack", x, square.options(scheduling_strategy=PlacementGroupSchedulingStrategy(pack))
                         .remote(x)))
        for k, node in enumerate((second, third)):
            for j in range(2):
                x = base + 50 + k * 10 + j
                soft = NodeAffinitySchedulingStrategy(node, soft=True)
                work.append(("soft", x, square.options(scheduling_strategy=soft).remote(x)))
                x += 5
                hard = NodeAffinitySchedulingStrategy(node, soft=False)
                work.append((f"hard:{node}", x, square.options(scheduling_strategy=hard).remote(x)))
        expected_count += round_ + 1
        counted = counter.add.remote(round_ + 1)
        for how, x, ref in work:
            check(how, x, ref, tally)
        try:
            got = ember.get(counted, timeout=GET_TIMEOUT_S)
            tally["checked"] += 1
            tally["wrong"] += got != expected_count
        except Exception as exc:  # noqa: BLE001 - counted and reported
            tally["errors"] += 1
            print(f"error: counter: {exc!r}", file=sys.stderr)
        tally["rounds"] += 1
    check_groups((spread, pack), placed, tally)


def check_groups(groups: tuple, placed: dict[str, dict[int, str]], tally: collections.Counter[str]) -> None:
    """Both groups CREATED again, every bundle on a living node; counts the bundles that moved."""
    deadline = time.monotonic() + DEATH_NOTICED_S  # a killed node is declared dead within seconds
    while sum(1 for n in ember.nodes() if n["Alive"]) > 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    deadline = time.monotonic() + REPLACED_TIMEOUT_S
    while True:
        alive = {n["NodeID"] for n in ember.nodes() if n["Alive"]}
        entries = [placement_group_table(pg) for pg in groups]
        if all(e["state"] == "CREATED" and set(e["bundles_to_node_id"].values()) <= alive for e in entries):
            break
        if time.monotonic() > deadline:
            tally["errors"] += 1
            print(f"error: groups not placed again on living nodes {sorted(alive)}: {entries}", file=sys.stderr)
            break
        time.sleep(0.1)
    for pg, e in zip(groups, entries):
        before = placed[pg.id.hex()]
        tally["bundles_placed_again"] += sum(1 for i, node in e["bundles_to_node_id"].items() if before[i] != node)
    tally["nodes_alive_at_end"] = len(alive)


def check(how: str, x: int, ref: object, tally: collections.Counter[str]) -> None:
    try:
        got = ember.get(ref, timeout=GET_TIMEOUT_S)
    except TaskUnschedulableError as exc:
        node = how.partition(":")[2]
        dead = node and not any(n["NodeID"] == node and n["Alive"] for n in ember.nodes())
        if dead and "which is dead" in str(exc):
            tally["hard_affinity_to_dead_node"] += 1  # Ray's promise: a typed error, not a silent move
        else:
            tally["errors"] += 1
            print(f"error: {how} {x}: {exc!r}", file=sys.stderr)
        return
    except Exception as exc:  # noqa: BLE001 - counted and reported
        tally["errors"] += 1
        print(f"error: {how} {x}: {exc!r}", file=sys.stderr)
        return
    tally["checked"] += 1
    tally["in_groups"] += how.startswith(("bundle", "pack"))
    if got != x * x:
        tally["wrong"] += 1
        print(f"wrong: {how} {x}: {got!r}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
