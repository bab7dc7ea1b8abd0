"""Inspection benchmark: ``ember list`` and ``ember lineage`` on a job of 100,000 tasks.

It fills the log by running real tasks through ember (no rows forged): a
fan-out of ``--leaves`` tasks, then a pairwise tree reduce over their
results, so a job of 2 x leaves - 1 tasks whose root has a lineage as deep as
the tree (17 generations for 50,000 leaves). Then, with the cluster shut
down, it times, best and median of ``--repeat`` runs:

* the Python API (``open_log()`` already open): ``tasks(limit=N)``,
  ``tasks(state=FAILED)`` (reads every task of the job), ``objects(limit=N)``,
  ``jobs()``, and ``lineage()`` of a leaf's result and of the root's, at the
  default depth (20) and task budget (1,000);
* the CLI as a user runs it, a fresh process each time (interpreter start,
  embedded server attach included): ``ember list tasks --job J --limit N``
  and ``ember lineage ROOT``;
* every page of ``ember dashboard`` (HTML and, for the tasks view, its JSON
  twin), server-side: ``Dashboard.answer`` from the path to the bytes sent,
  the query, the layout and the markup included, no socket. The target is
  under a second each.

Timings are printed, never asserted. Usage:

    python tests/benchmarks/bench_inspect.py [--leaves 50000] [--limit 50] [--repeat 5] [--home DIR]

``--home`` keeps the log (an ``EMBER_HOME``) between runs: a second run with
the same home and ``--reuse`` skips the fill.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

FILL_TIMEOUT_S = 1800.0
CLI_TIMEOUT_S = 120.0


def fill(leaves: int) -> dict[str, str]:
    """Run the job; returns its id and the ids of a leaf's result and of the root."""
    import ember

    ember.init(num_cpus=2)
    try:
        @ember.remote
        def leaf(i: int) -> int:
            return i

        @ember.remote
        def combine(a: int, b: int) -> int:
            return a + b

        started = time.perf_counter()
        level = [leaf.remote(i) for i in range(leaves)]
        first_leaf = level[0]
        while len(level) > 1:
            paired = [combine.remote(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
            level = paired + ([level[-1]] if len(level) % 2 else [])
        total = ember.get(level[0], timeout=FILL_TIMEOUT_S)
        assert total == leaves * (leaves - 1) // 2, total
        print(f"filled: {2 * leaves - 1:,} tasks in {time.perf_counter() - started:.1f} s", flush=True)
        return {"job": ember.get_runtime_context().get_job_id(), "leaf": first_leaf.hex(), "root": level[0].hex()}
    finally:
        ember.shutdown()


def timed(fn: Callable[[], object], repeat: int) -> tuple[float, float]:
    trials = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        trials.append(time.perf_counter() - started)
    return min(trials), statistics.median(trials)


def measure(ids: dict[str, str], limit: int, repeat: int) -> list[tuple[str, float, float, str]]:
    from ember.lineage import open_log

    results = []
    with open_log() as log:
        job = ids["job"]
        cases: list[tuple[str, Callable[[], object], Callable[[object], str]]] = [
            (f"tasks(job, limit={limit})", lambda: log.tasks(job=job, limit=limit), lambda r: f"{len(r)} rows"),
            ("tasks(job, state=FAILED)", lambda: log.tasks(job=job, state="FAILED", limit=limit),
             lambda r: f"{len(r)} rows"),
            (f"tasks(job, state=FINISHED, limit={limit})",
             lambda: log.tasks(job=job, state="FINISHED", limit=limit), lambda r: f"{len(r)} rows"),
            (f"objects(job, limit={limit})", lambda: log.objects(job=job, limit=limit), lambda r: f"{len(r)} rows"),
            ("jobs()", lambda: log.jobs(), lambda r: f"{len(r)} rows"),
            ("lineage(leaf result)", lambda: log.lineage(ids["leaf"]),
             lambda g: f"{len(g.tasks)} tasks, {len(g.objects)} objects"),  # type: ignore[attr-defined]
            ("lineage(root)", lambda: log.lineage(ids["root"]),
             lambda g: f"{len(g.tasks)} tasks, {len(g.objects)} objects, "  # type: ignore[attr-defined]
                       f"complete={g.complete}"),  # type: ignore[attr-defined]
            ("lineage(root).to_tree()", lambda: log.lineage(ids["root"]).to_tree(), lambda t: f"{len(t)} chars"),
            ("lineage(root, depth=3)", lambda: log.lineage(ids["root"], depth=3),
             lambda g: f"{len(g.tasks)} tasks"),  # type: ignore[attr-defined]
        ]
        for name, fn, describe in cases:
            best, median = timed(fn, repeat)
            results.append((name, best, median, describe(fn())))
    ember = [sys.executable, "-m", "ember._cli"]
    for name, argv in [(f"ember list tasks --job J --limit {limit}", ember + ["list", "tasks", "--job", ids["job"],
                                                                               "--limit", str(limit)]),
                       ("ember list tasks --job J --state FAILED", ember + ["list", "tasks", "--job", ids["job"],
                                                                             "--state", "FAILED"]),
                       ("ember lineage LEAF", ember + ["lineage", ids["leaf"]]),
                       ("ember lineage ROOT", ember + ["lineage", ids["root"]]),
                       ("ember --version (startup alone)", ember + ["--version"])]:
        out: list[str] = []

        def run_cli(argv: list[str] = argv, out: list[str] = out) -> None:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=CLI_TIMEOUT_S, check=True)
            out[:] = [done.stdout]

        best, median = timed(run_cli, repeat)
        results.append((name, best, median, f"{len(out[0].splitlines())} lines"))
    return results + measure_dashboard(ids, repeat)


def measure_dashboard(ids: dict[str, str], repeat: int) -> list[tuple[str, float, float, str]]:
    """Each dashboard page, answered server-side from the log (``Dashboard.answer``)."""
    from ember.lineage._dashboard_server import Dashboard
    from ember.lineage._reader import locate_log

    job, leaf, root = ids["job"], ids["leaf"], ids["root"]
    pages = ["/", f"/job/{job}", f"/job/{job}/tasks", f"/job/{job}/tasks?format=json",
             f"/job/{job}/tasks?offset=50000", f"/job/{job}/tasks?state=FAILED", f"/job/{job}/tasks?function=combine",
             f"/job/{job}/tasks?retried=1", f"/job/{job}/tasks?rebuilt=1", f"/job/{job}/tasks?error=Error",
             f"/task/{root[:32]}", f"/object/{root}", f"/lineage/{root}", f"/lineage/{root}?depth=20&max_tasks=2000",
             f"/lineage/{leaf}?dir=down&depth=20", f"/job/{job}/timeline", f"/job/{job}/timeline?offset=90000",
             f"/job/{job}/actors", f"/job/{job}/nodes", "/chaos"]
    conninfo, release = locate_log()
    dashboard = Dashboard(conninfo)
    results = []
    try:
        for path in pages:
            split = path.split("?", 1)
            query = {k: [v] for k, v in (p.split("=", 1) for p in split[1].split("&"))} if len(split) > 1 else {}
            answer: list[tuple[int, str, bytes]] = []

            def get(path: str = split[0], query: dict = query, answer: list = answer) -> None:
                answer[:] = [dashboard.answer(path, query)]

            best, median = timed(get, repeat)
            status, _, body = answer[0]
            shown = path.replace(job, "J").replace(root, "ROOT").replace(root[:32], "ROOT_TASK").replace(leaf, "LEAF")
            results.append((f"dashboard {shown}", best, median, f"{status}, {len(body):,} bytes"))
        results.append(_chaos_chart(job, repeat))
    finally:
        dashboard.shutdown()
        if release is not None:
            release()
    return results


def _chaos_chart(job: str, repeat: int) -> tuple[str, float, float, str]:
    """What a chaos run's page costs over this job, beyond reading its row: the job's finishes per
    second over its whole span, the recovery times and the chart. (The job ran under no chaos run,
    and none is forged: one fault, in memory, stands for the run's.)"""
    import datetime as dt

    from ember.lineage import _dashboard_data as data
    from ember.lineage import open_log
    from ember.lineage._dashboard_chaos import recoveries
    from ember.lineage._dashboard_svg import Shade, throughput_svg

    with open_log() as log:
        row = log.job(job)
        end = row.ended_at or dt.datetime.now(dt.timezone.utc)
        run = data.ChaosRun("00" * 16, job, ["bench"], None, row.started_at, end, 0, {},
                            [{"at": row.started_at.timestamp() + 1.0, "kind": "kill", "target": "store",
                              "outcome": "hit"}], {}, [])
        out: list[str] = []

        def chart() -> None:
            bucket_s, counts = data.throughput(log, bytes.fromhex(job), run.started_at, end)
            found = recoveries(run, bucket_s, counts)
            out[:] = [throughput_svg(counts, bucket_s, [Shade(f["at_s"], f["at_s"] + 1, f["kind"], "") for f in found])]

        best, median = timed(chart, repeat)
    return "dashboard chaos chart over J (job's span)", best, median, f"{len(out[0]):,} bytes of SVG"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--leaves", type=int, default=50_000)
    parser.add_argument("--limit", type=int, default=50)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--home", default=None, help="EMBER_HOME to use (default: a fresh temporary one)")
    parser.add_argument("--reuse", action="store_true", help="the home already holds a filled job: skip the fill")
    args = parser.parse_args()
    home = Path(args.home or tempfile.mkdtemp(prefix="ember-bench-inspect-", dir="/tmp"))
    home.mkdir(parents=True, exist_ok=True)
    os.chmod(home, 0o755)
    os.environ["EMBER_HOME"] = str(home)
    ids_file = home / "bench_inspect_ids.json"
    if args.reuse:
        ids = json.loads(ids_file.read_text())
    else:
        ids = fill(args.leaves)
        ids_file.write_text(json.dumps(ids))
    print(f"EMBER_HOME={home} job={ids['job']} root={ids['root']}")
    print(f"{'what':<44} {'best':>9} {'median':>9}  answer")
    for name, best, median, answer in measure(ids, args.limit, args.repeat):
        print(f"{name:<44} {best * 1000:>7.1f}ms {median * 1000:>7.1f}ms  {answer}")


if __name__ == "__main__":
    main()
