"""A program for `chaos run` network faults: a network cluster of its own, tasks whose values it checks.

Starts ``LocalCluster(network=True)`` with ``--nodes`` nodes (root only), runs rounds of tasks for
``--seconds`` and checks every value against the fault-free one; prints ``checked N wrong W`` and exits 1
if any was wrong. Every get is bounded: a hang is a GetTimeoutError, which fails the run.
"""

from __future__ import annotations

import argparse
import sys
import time

import ember
from ember.chaos import LocalCluster

GET_TIMEOUT_S = 120.0


@ember.remote(max_retries=-1)
def square(x: int) -> int:
    time.sleep(0.05)
    return x * x


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--nodes", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=8.0)
    args = parser.parse_args()
    checked = wrong = 0
    with LocalCluster(nodes=[{"num_cpus": 1}] * args.nodes, network=True) as cluster:
        ember.init(address=cluster.address)
        try:
            deadline = time.monotonic() + args.seconds
            round_ = 0
            while time.monotonic() < deadline:
                values = ember.get([square.remote(round_ * 10 + i) for i in range(10)], timeout=GET_TIMEOUT_S)
                wrong += sum(v != (round_ * 10 + i) ** 2 for i, v in enumerate(values))
                checked += len(values)
                round_ += 1
        finally:
            ember.shutdown()
    print(f"checked {checked} wrong {wrong}", flush=True)
    sys.exit(1 if wrong else 0)


if __name__ == "__main__":
    main()
