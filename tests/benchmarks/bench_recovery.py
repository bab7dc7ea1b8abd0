"""Recovery benchmark: how long after a store dies the first rebuilt value is back.

For lineage depths 1, 10 and 100 (a chain ``x = inc.remote(x)`` of 400 KB
numpy arrays, so every link lives in the store), it builds the chain, reads
its end, SIGKILLs the node's object store, and times:

* ``store_back_s``  the kill until the restarted store is listed again
* ``first_get_s``   the kill until ``get`` of the chain's end returns the right value
* ``rebuild_s``     that ``get`` alone (the replay of every lost link)

Timings are printed, never asserted. Usage:

    python tests/benchmarks/bench_recovery.py [--depths 1,10,100] [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import time


def run(depths: list[int], repeat: int) -> list[dict]:
    import numpy as np

    import ember
    from ember.chaos import processes

    def store_pid() -> int | None:
        found = [p.pid for p in processes() if p.kind == "store"]
        return found[0] if found else None

    @ember.remote
    def zeros():
        return np.zeros(50_000)

    @ember.remote
    def inc(a):
        return a + 1

    ember.init(num_cpus=2)
    rows = []
    try:
        for depth in depths:
            samples: dict[str, list[float]] = {"store_back_s": [], "first_get_s": [], "rebuild_s": []}
            for _ in range(repeat):
                chain = zeros.remote()
                for _ in range(depth):
                    chain = inc.remote(chain)
                assert ember.get(chain, timeout=300)[0] == depth
                old = store_pid()
                killed = time.perf_counter()
                os.kill(old, signal.SIGKILL)  # type: ignore[arg-type]
                while store_pid() in (None, old):
                    time.sleep(0.005)
                back = time.perf_counter()
                value = ember.get(chain, timeout=300)
                done = time.perf_counter()
                assert value[0] == depth, f"depth {depth}: rebuilt {value[0]}"
                samples["store_back_s"].append(back - killed)
                samples["first_get_s"].append(done - killed)
                samples["rebuild_s"].append(done - back)
            rows.append({"depth": depth, **{k: statistics.median(v) for k, v in samples.items()}})
    finally:
        ember.shutdown()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--depths", default="1,10,100")
    parser.add_argument("--repeat", type=int, default=3, help="kills per depth; the table shows medians")
    args = parser.parse_args()
    rows = run([int(d) for d in args.depths.split(",")], args.repeat)
    print(f"recovery after a store SIGKILL, median of {args.repeat} ({os.cpu_count()} cpus)")
    print(f"{'depth':>6}  {'store back (s)':>14}  {'first get (s)':>13}  {'rebuild (s)':>11}")
    for r in rows:
        print(f"{r['depth']:>6}  {r['store_back_s']:>14.3f}  {r['first_get_s']:>13.3f}  {r['rebuild_s']:>11.3f}")


if __name__ == "__main__":
    main()
