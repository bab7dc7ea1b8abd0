"""A workload to soak under `chaos run`: every result checked against what a fault-free run computes.

Run it for a while under faults of every kind, for example:

    EMBER_HOME=/tmp/soak chaos run --kill worker,store,scheduler,gcs --pause worker,store,scheduler,gcs \\
        --restart-postgres --rate 0.5 --duration 600 --timeout 1200 --report soak.json \\
        -- python tests/chaos/soak_workload.py --seconds 600

Each round mixes what users run: a chain of tasks over arrays that live in the
store, a tree reduce, the seeds' parameter server (gradients are tasks, updates
actor calls), a counter actor, and large puts read back rounds later. Every
value read is compared with its closed form. At the end it prints one line
of JSON: rounds, operations checked, wrong values, hangs (a get past its
bound), and errors by type; it exits 1 on any wrong value or error, 2 on a
hang. A separate EMBER_HOME keeps the PostgreSQL restarts away from other
clusters on the machine.
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import time

import numpy as np

import ember

GET_BOUND_S = 180.0  # a get slower than this is a hang, whatever the faults
ARRAY = 50_000  # float64s: 400 KB, past the inline limit, so objects live in the store


@ember.remote
def fill(value):
    return np.full(ARRAY, float(value))


@ember.remote
def inc(a):
    return a + 1.0


@ember.remote
def add(a, b):
    return a + b


@ember.remote
def gradient(params, shard):
    return np.ones_like(params) * (shard + 1)


@ember.remote(max_restarts=-1, max_task_retries=-1)
class ParameterServer:
    def __init__(self):
        self.params = np.zeros(ARRAY)

    def get(self):
        return self.params

    def apply(self, grad):
        self.params += grad
        return float(self.params[0])


@ember.remote(max_restarts=-1, max_task_retries=-1)
class Counter:
    def __init__(self):
        self.n = 0

    def add(self, k):
        self.n += k
        return self.n


class Soak:
    def __init__(self) -> None:
        self.checked = 0
        self.wrong: list[str] = []
        self.errors: collections.Counter = collections.Counter()
        self.ps = ParameterServer.remote()
        self.ps_value = 0.0
        self.counter = Counter.remote()
        self.count = 0
        self.kept: list[tuple[object, float]] = []  # (ref of a put, its value), read again later

    def check(self, what: str, got: float, want: float) -> None:
        self.checked += 1
        if got != want:
            self.wrong.append(f"{what}: got {got!r}, want {want!r}")

    def round(self, r: int) -> None:
        depth = 8
        x = fill.remote(r)
        for _ in range(depth):
            x = inc.remote(x)
        self.check("chain", float(ember.get(x, timeout=GET_BOUND_S)[-1]), float(r + depth))

        leaves = [fill.remote(i) for i in range(8)]
        while len(leaves) > 1:
            leaves = [add.remote(a, b) for a, b in zip(leaves[::2], leaves[1::2])]
        self.check("tree reduce", float(ember.get(leaves[0], timeout=GET_BOUND_S)[0]), float(sum(range(8))))

        params = self.ps.get.remote()
        grads = [gradient.remote(params, shard) for shard in range(3)]  # ones times 1, 2 and 3
        updates = [self.ps.apply.remote(g) for g in grads]
        self.ps_value += 1 + 2 + 3
        self.check("parameter server", ember.get(updates[-1], timeout=GET_BOUND_S), self.ps_value)

        self.count += r % 5
        self.check("counter", ember.get(self.counter.add.remote(r % 5), timeout=GET_BOUND_S), self.count)

        ref = ember.put(np.full(ARRAY, float(r)))
        self.kept.append((ref, float(r)))
        if len(self.kept) > 5:
            old, value = self.kept.pop(0)
            self.check("put read rounds later", float(ember.get(old, timeout=GET_BOUND_S)[0]), value)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="how long to keep starting rounds")
    args = parser.parse_args(argv)
    ember.init(num_cpus=2)
    soak = Soak()
    hangs = 0
    rounds = 0
    deadline = time.monotonic() + args.seconds
    while time.monotonic() < deadline:
        try:
            soak.round(rounds)
        except ember.exceptions.GetTimeoutError as exc:
            hangs += 1
            print(f"hang in round {rounds}: {exc}", file=sys.stderr, flush=True)
            break
        except Exception as exc:  # noqa: BLE001 - every failure is counted and reported
            soak.errors[type(exc).__name__] += 1
            print(f"round {rounds} failed: {exc!r}", file=sys.stderr, flush=True)
            break
        rounds += 1
    tally = {"rounds": rounds, "operations_checked": soak.checked, "wrong": len(soak.wrong), "hangs": hangs,
             "errors": dict(soak.errors), "first_wrong": soak.wrong[:5]}
    print("SOAK " + json.dumps(tally), flush=True)
    ember.shutdown()
    if hangs:
        return 2
    return 1 if soak.wrong or soak.errors else 0


if __name__ == "__main__":
    sys.exit(main())
