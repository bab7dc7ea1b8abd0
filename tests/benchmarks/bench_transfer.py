"""Transfer benchmark: MB/s of pulling a 400 MB object from one store process into another's.

Two store processes run on this machine, each in a session and shared-memory
folder of its own, as the stores of two nodes would; the source serves
transfers on loopback (``--transfer-bind 127.0.0.1:0``). A 400 MB numpy
array is written into the source's store; each trial pulls it with
``ObjectPuller`` into the target's folder (the puller runs in this process,
as it would in the target node's store), checks it, and deletes it again so
the next trial writes fresh pages. MB is 10^6 bytes; the rate counts the
whole object (header and padding) over the whole pull (connect, stream,
check, publish). The object is large enough to come in ``PARALLEL_STREAMS``
ranges at once; ``--streams 1`` pulls it over one stream, as small objects are.

Timings are printed, never asserted. Usage (from the repository root):

    python tests/benchmarks/bench_transfer.py [--trials 5] [--megabytes 400] [--streams N]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repo root, for tests.fix_stores

PULL_TIMEOUT_S = 300.0


def run(trials: int, megabytes: int, streams: int | None) -> list[float]:
    import numpy as np

    from ember.store import serialize
    from ember.store._transfer_pull import PARALLEL_STREAMS, ObjectPuller
    from tests.fix_stores import launch, stop, wait_ready

    token = os.urandom(32)
    bind = "127.0.0.1:0"
    stores = []
    try:
        for _ in range(2):
            stores.append(launch(token, bind))
        source, target = (wait_ready(store, bind) for store in stores)
        object_id = os.urandom(20)
        array = np.random.default_rng(0).integers(0, 255, megabytes * 1_000_000 // 8, dtype=np.int64)
        source.files.write(object_id, serialize(array))
        total_bytes = source.files.size_of(object_id)
        puller = ObjectPuller(target.files, token, parallel_streams=streams or PARALLEL_STREAMS)
        rates = []
        try:
            for trial in range(trials):
                started_s = time.perf_counter()
                result = puller.pull(object_id, [source.transfer_address], timeout_s=PULL_TIMEOUT_S)
                elapsed_s = time.perf_counter() - started_s
                if result.total_bytes != total_bytes or any(
                        a.outcome not in ("complete", "header only") for a in result.attempts):
                    raise RuntimeError(f"trial {trial}: unexpected pull {result}")
                rates.append(total_bytes / elapsed_s / 1e6)
                print(f"trial {trial + 1}: {total_bytes / 1e6:.0f} MB in {elapsed_s:.3f} s = {rates[-1]:.0f} MB/s")
                target.files.delete(object_id)
        finally:
            puller.close()
        return rates
    finally:
        for store in stores:
            stop(store)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--megabytes", type=int, default=400)
    parser.add_argument("--streams", type=int, default=None, help="parallel streams (default: PARALLEL_STREAMS)")
    args = parser.parse_args()
    rates = run(args.trials, args.megabytes, args.streams)
    print(f"pull of {args.megabytes} MB between two stores: median {statistics.median(rates):.0f} MB/s "
          f"over {len(rates)} trials (min {min(rates):.0f}, max {max(rates):.0f})")


if __name__ == "__main__":
    main()
