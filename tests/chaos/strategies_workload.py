"""A workload for `chaos run --kill node`: scheduling strategies on three nodes, one of which is killed.

    chaos run --kill node --every-tasks 40 --max-faults 1 --seed 3 --report nodes.json \\
        -- python tests/chaos/strategies_workload.py --rounds 6

Node 1 is the head and the driver's (chaos never kills it); nodes 2 and 3
may be killed. Each round runs, and checks against the closed form:

- 12 SPREAD tasks and 12 default tasks (the hybrid policy spreads them);
- 4 tasks with soft affinity to each of nodes 2 and 3 (they run elsewhere
  once their node is dead);
- 4 tasks with hard affinity to each of nodes 2 and 3: each must return its
  value, or, only if its node is dead, raise TaskUnschedulableError;
- a call on a counter actor with soft affinity to node 3 and restarts: its
  count must hold across a kill of its node (replayed from the log).

It prints one line of JSON (rounds, values checked, wrong values, the typed
errors of hard affinity to the dead node, other errors, the nodes alive at
the end) and exits 1 on any wrong value or unexpected error.
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
from ember.util.scheduling_strategies import NodeAffinitySchedulingStrategy

GET_TIMEOUT_S = 120.0
TASK_S = 0.05


@ember.remote
def square(x: int) -> int:
    time.sleep(TASK_S)
    return x * x


@ember.remote(max_restarts=-1, max_task_retries=-1)
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
    nodes = [{"num_cpus": 1}, {"num_cpus": 1}, {"num_cpus": 1}]
    with LocalCluster(nodes=nodes) as cluster:
        ember.init(address=cluster.address)
        try:
            run_rounds(cluster, args.rounds, tally)
            deadline = time.monotonic() + 30.0  # a killed node is declared dead within seconds
            while sum(1 for n in ember.nodes() if n["Alive"]) > 2 and time.monotonic() < deadline:
                time.sleep(0.1)
            tally["nodes_alive_at_end"] = sum(1 for n in ember.nodes() if n["Alive"])
        finally:
            ember.shutdown()
    print(json.dumps(dict(tally), sort_keys=True))
    return 1 if tally["wrong"] or tally["errors"] else 0


def run_rounds(cluster: LocalCluster, rounds: int, tally: collections.Counter[str]) -> None:
    second, third = cluster.nodes[1].node_id, cluster.nodes[2].node_id
    counter = Counter.options(scheduling_strategy=NodeAffinitySchedulingStrategy(third, soft=True)).remote()
    expected_count = 0
    for round_ in range(rounds):
        base = round_ * 100
        work: list[tuple[str, int, object]] = []  # (how, x, ref)
        for i in range(12):
            work.append(("spread", base + i, square.options(scheduling_strategy="SPREAD").remote(base + i)))
            work.append(("default", base + 20 + i, square.remote(base + 20 + i)))
        for k, node in enumerate((second, third)):
            for i in range(4):
                x = base + 40 + k * 10 + i
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
    if got != x * x:
        tally["wrong"] += 1
        print(f"wrong: {how} {x}: {got!r}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
