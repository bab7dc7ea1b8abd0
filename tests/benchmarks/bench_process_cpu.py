"""Where a task's CPU goes: microseconds of CPU per no-op task, by process kind.

Runs ``init(num_cpus=2)``, then rounds of 10,000 no-op tasks submitted at
once and gathered with one ``get`` (``--shape async``, the default), or of
synchronous calls, each ``get`` of one no-op task (``--shape sync-task``) or
actor call (``--shape sync-actor``) before the next; around each round it reads the CPU times
(user + system) of the driver, the node's scheduler, store and GCS service,
the task workers, and the PostgreSQL server's processes (the embedded one,
or any local server), and prints each kind's median per task. Wall-clock
rates on a shared 2-core machine drift by ±30 %; CPU per task drifts far
less, so this is the figure to compare two versions of ember by, each run
with the interpreter of its own install:

    python tests/benchmarks/bench_process_cpu.py [--rounds 5] [--tasks 10000] [--shape sync-task]

With ``EMBER_LINEAGE=off`` in its environment it shows what the log costs
each process. Figures are printed, never asserted.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time


def _cpu(proc) -> float:  # type: ignore[no-untyped-def]
    import psutil

    try:
        times = proc.cpu_times()
    except psutil.Error:
        return 0.0
    return times.user + times.system


SHAPES = ("async", "sync-task", "sync-actor")


def run(rounds: int, tasks: int, shape: str = "async") -> dict[str, float]:
    import psutil

    import ember
    from ember.chaos import processes

    @ember.remote
    def noop():
        return None

    @ember.remote
    class Pinger:
        def ping(self):
            return None

    ember.init(num_cpus=2)
    try:
        ember.get([noop.remote() for _ in range(2000)])  # workers up, functions registered
        if shape == "async":
            def one_round() -> None:
                ember.get([noop.remote() for _ in range(tasks)], timeout=300)
        elif shape == "sync-task":
            def one_round() -> None:
                for _ in range(tasks):
                    ember.get(noop.remote(), timeout=60)
        else:
            pinger = Pinger.remote()
            ember.get(pinger.ping.remote(), timeout=60)

            def one_round() -> None:
                for _ in range(tasks):
                    ember.get(pinger.ping.remote(), timeout=60)

        def by_kind() -> dict[str, float]:
            totals = {"driver": _cpu(psutil.Process(os.getpid()))}
            for p in processes():
                kind = "workers" if p.kind == "worker" else p.kind
                try:
                    totals[kind] = totals.get(kind, 0.0) + _cpu(psutil.Process(p.pid))
                except psutil.Error:
                    pass
            totals["postgres"] = sum(_cpu(p) for p in psutil.process_iter(["name"])
                                     if (p.info["name"] or "").startswith("postgres"))
            return totals

        samples: dict[str, list[float]] = {}
        rates = []
        for _ in range(rounds):
            before = by_kind()
            start = time.perf_counter()
            one_round()
            rates.append(tasks / (time.perf_counter() - start))
            after = by_kind()
            for kind in after:
                samples.setdefault(kind, []).append((after[kind] - before.get(kind, 0.0)) * 1e6 / tasks)
    finally:
        ember.shutdown()
    return {"tasks_per_s": statistics.median(rates), **{k: statistics.median(v) for k, v in samples.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--tasks", type=int, default=10_000)
    parser.add_argument("--shape", choices=SHAPES, default="async")
    args = parser.parse_args()
    result = run(args.rounds, args.tasks, args.shape)
    log = "off" if os.environ.get("EMBER_LINEAGE") == "off" else "on"
    print(f"CPU per no-op call ({args.shape}, log {log}), median of {args.rounds} rounds of {args.tasks:,} "
          f"({os.cpu_count()} cpus); {result.pop('tasks_per_s'):,.0f} calls/s")
    for kind, us in sorted(result.items(), key=lambda kv: -kv[1]):
        print(f"  {kind:<10} {us:7.1f} us")
    print(f"  {'total':<10} {sum(result.values()):7.1f} us")


if __name__ == "__main__":
    main()
