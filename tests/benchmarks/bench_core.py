"""Core micro-benchmark: ember vs. Ray, side by side.

Measures, through the Ray core API only (init, remote, get, put, wait,
shutdown, actors), for each runtime in a fresh child process:

* ``init_s``                  time of ``init(num_cpus=2)`` (first thing measured)
* ``tasks_async_per_s``       N no-op tasks submitted, then one ``get`` of the list
* ``lineage_rows_per_s``      (ember) rows the driver logged per second during that run
* ``tasks_sync_per_s``        ``get(noop.remote())`` in a loop
* ``chain_per_s``             ``x = inc.remote(x)`` N times, then ``get`` (checks N+1)
* ``actor_calls_async_per_s`` N ``ping`` calls on one actor, then ``get`` of all
* ``actor_calls_sync_per_s``  ``get(a.ping.remote())`` in a loop
* ``async_actor_calls_per_s`` N calls of a no-op ``async def`` on one async actor, then ``get`` of all
* ``threaded_actor_calls_per_s`` the same on a threaded actor (``max_concurrency=4``, a no-op ``def``)
* ``generator_items_per_s``   one generator task yielding N small values, each read as it comes
* ``small_puts_per_s``        N ``put(i)``;  ``small_gets_per_s``: ``get`` of each
* ``put_400mb_s`` / ``get_400mb_s`` (+ ``_median_s``) best and median of 3 trials
  of put/get of a dict of ten 5,000,000-float64 arrays (400 MB)
* ``tree_reduce_cold_s``      a tree reduce of 100 small numpy arrays, the first
  work of the fresh cluster (measured right after ``init``); ``tree_reduce_warm_s``
  the same again, warm (median of 3)
* ``worker_start_ms``         one new actor created and its first call answered
  (a new worker each), median of 5 in a row
* ``actor_startup_s``         8 actors created, one call each, all at once
* ``fib10_s``                 ``fib(10)`` as nested tasks, each blocking in ``get``
  on its two children (177 tasks)
* ``sleep10_s``               ten ``sleep(1)`` tasks of ``num_cpus=0.2`` (all fit at once)
* ``pss_worker_mb`` / ``pss_cluster_mb`` proportional set size of an idle worker
  (mean over the workers left) and of every process the driver started
  (ember's PostgreSQL server is not the driver's child and is not counted)

Each metric is run once after a short warm-up. Timings are reported, never
asserted: this script fails only if it cannot run at all.

The parent uses only the standard library and never imports a runtime; each
runtime is imported by name (``importlib``) in ``--child NAME`` subprocesses,
which print one ``BENCH_RESULT {json}`` line on stdout.
Usage: see README.md beside this file.
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import time
from typing import Any, Callable

from _table import aligned  # beside this script

PREFIX = "BENCH_RESULT "
NOLOG = "ember-nolog"  # ember with lineage logging switched off, to show what logging costs
# ember whose log commits are acknowledged before PostgreSQL flushes them to
# disk: shows what the disk flush costs a synchronous call
NOSYNC = "ember-nosync"
# ember whose workers start as fresh interpreters, not forked by the node's fork server
SPAWN = "ember-spawn"
VARIANTS = {NOLOG: {"EMBER_LINEAGE": "off"}, NOSYNC: {"EMBER_LOG_SYNC_COMMIT": "off"},
            SPAWN: {"EMBER_WORKER_FORK": "off"}}


def _module(name: str) -> str:
    return "ember" if name in VARIANTS else name
CHILD_TIMEOUT_S = 600.0

# (key, unit, target): an absolute limit in seconds for ember; None: at least 3x
# Ray's rate; "info": side by side, no target; "cold": within 1.5x ember's warm
# figure and at most a third of Ray's cold one.
METRICS: list[tuple[str, str, float | str | None]] = [
    ("init_s", "s", 1.5), ("tasks_async_per_s", "/s", None), ("lineage_rows_per_s", "/s", None), ("tasks_sync_per_s", "/s", None),
    ("chain_per_s", "/s", None), ("actor_calls_async_per_s", "/s", None),
    ("actor_calls_sync_per_s", "/s", None), ("async_actor_calls_per_s", "/s", None),
    ("threaded_actor_calls_per_s", "/s", None), ("generator_items_per_s", "/s", None), ("small_puts_per_s", "/s", None),
    ("small_gets_per_s", "/s", None), ("put_400mb_s", "s", 0.15), ("put_400mb_median_s", "s", 0.15),
    ("get_400mb_s", "s", 0.001), ("get_400mb_median_s", "s", 0.001),
    ("tree_reduce_cold_s", "s", "cold"), ("tree_reduce_warm_s", "s", "info"), ("worker_start_ms", "ms", "info"),
    ("actor_startup_s", "s", "info"), ("fib10_s", "s", 1.5), ("sleep10_s", "s", 1.1),
    ("pss_worker_mb", "MB", "info"), ("pss_cluster_mb", "MB", "info"),
]


# --------------------------------------------------------------------------- child
def run_child(name: str, quick: bool) -> dict[str, Any]:
    """Import runtime ``name`` and measure every metric; never raises per metric."""
    n_big, n_small = (2000, 500) if quick else (10000, 2000)
    res: dict[str, Any] = {"runtime": name, "quick": quick, "n_async": n_big, "n_sync": n_small}
    errors: dict[str, str] = {}

    def measure(keys: list[str], fn: Callable[[], dict[str, float]]) -> None:
        print(f"[{name}] {keys[0]} ...", file=sys.stderr, flush=True)  # shows where a hang was
        try:
            res.update(fn())
        except Exception as e:  # noqa: BLE001 - one failure must not kill the run
            for k in keys:
                res[k] = None
                errors[k] = f"{type(e).__name__}: {e}"[:500]

    os.environ.update(VARIANTS.get(name, {}))
    import numpy  # noqa: F401  # the driver's own import, as in any program that reduces arrays: not the cluster's cost
    rt = importlib.import_module(_module(name))
    res["version"] = getattr(rt, "__version__", None)

    def init() -> dict[str, float]:
        kw: dict[str, Any] = {"num_cpus": 2}
        if name == "ray":
            kw.update(include_dashboard=False, log_to_driver=False)
        t = time.perf_counter()
        rt.init(**kw)
        return {"init_s": time.perf_counter() - t}

    measure(["init_s"], init)

    def make_leaf(i: int) -> Any:
        import numpy as np

        return np.full(1000, float(i))

    def add_arrays(a: Any, b: Any) -> Any:
        return a + b

    r_leaf, r_add = rt.remote(make_leaf), rt.remote(add_arrays)

    def tree_reduce() -> float:
        t = time.perf_counter()
        level = [r_leaf.remote(i) for i in range(100)]
        while len(level) > 1:
            level = [r_add.remote(level[i], level[i + 1]) if i + 1 < len(level) else level[i]
                     for i in range(0, len(level), 2)]
        total = rt.get(level[0])
        dt = time.perf_counter() - t
        assert float(total[0]) == sum(range(100)), f"tree reduce gave {total[0]}"
        return dt

    # The first work of the fresh cluster: nothing has imported numpy in a worker yet.
    measure(["tree_reduce_cold_s"], lambda: {"tree_reduce_cold_s": tree_reduce()})
    measure(["tree_reduce_warm_s"], lambda: {"tree_reduce_warm_s": statistics.median(tree_reduce() for _ in range(3))})

    def noop() -> None:
        return None

    def inc(x: int) -> int:
        return x + 1

    class Pinger:
        def ping(self) -> None:
            return None

    r_noop = rt.remote(noop)
    r_inc = rt.remote(inc)

    def lineage_rows() -> int | None:
        # ember only: rows its driver wrote to the lineage log (None: not ember, or logging off)
        context = getattr(getattr(rt, "scheduler", None), "_context", None)
        gcs = getattr(getattr(getattr(context, "PROCESS", None), "owner", None), "gcs", None)
        if gcs is None:
            return None
        gcs.writer.flush(60)
        return gcs.writer.statistics()["rows_written"]

    def tasks_async() -> dict[str, float]:
        rt.get([r_noop.remote() for _ in range(100)])
        rows_before = lineage_rows()
        t = time.perf_counter()
        out = rt.get([r_noop.remote() for _ in range(n_big)])
        dt = time.perf_counter() - t
        assert len(out) == n_big
        result = {"tasks_async_per_s": n_big / dt}
        rows_after = lineage_rows()
        if rows_before is not None and rows_after is not None:
            # rows the driver logged while those tasks ran, per second of the run
            result["lineage_rows_per_s"] = (rows_after - rows_before) / dt
        return result

    def tasks_sync() -> dict[str, float]:
        for _ in range(20):
            rt.get(r_noop.remote())
        t = time.perf_counter()
        for _ in range(n_small):
            rt.get(r_noop.remote())
        return {"tasks_sync_per_s": n_small / (time.perf_counter() - t)}

    def chain() -> dict[str, float]:
        rt.get(r_inc.remote(r_inc.remote(0)))
        t = time.perf_counter()
        x = r_inc.remote(0)
        for _ in range(n_small):
            x = r_inc.remote(x)
        val = rt.get(x)
        dt = time.perf_counter() - t
        assert val == n_small + 1, f"chain gave {val}, expected {n_small + 1}"
        return {"chain_per_s": (n_small + 1) / dt}

    measure(["tasks_async_per_s"], tasks_async)
    measure(["tasks_sync_per_s"], tasks_sync)
    measure(["chain_per_s"], chain)

    actor: list[Any] = []

    def actor_async() -> dict[str, float]:
        a = rt.remote(Pinger).remote()
        actor.append(a)
        rt.get([a.ping.remote() for _ in range(100)])
        t = time.perf_counter()
        out = rt.get([a.ping.remote() for _ in range(n_big)])
        dt = time.perf_counter() - t
        assert len(out) == n_big
        return {"actor_calls_async_per_s": n_big / dt}

    def actor_sync() -> dict[str, float]:
        a = actor[0] if actor else rt.remote(Pinger).remote()
        for _ in range(20):
            rt.get(a.ping.remote())
        t = time.perf_counter()
        for _ in range(n_small):
            rt.get(a.ping.remote())
        return {"actor_calls_sync_per_s": n_small / (time.perf_counter() - t)}

    measure(["actor_calls_async_per_s"], actor_async)
    measure(["actor_calls_sync_per_s"], actor_sync)
    actor.clear()

    class AsyncPinger:
        async def ping(self) -> None:
            return None

    def calls_per_s(handle: Any) -> float:
        rt.get([handle.ping.remote() for _ in range(100)])
        t = time.perf_counter()
        out = rt.get([handle.ping.remote() for _ in range(n_big)])
        dt = time.perf_counter() - t
        assert len(out) == n_big
        return n_big / dt

    def async_actor() -> dict[str, float]:
        return {"async_actor_calls_per_s": calls_per_s(rt.remote(AsyncPinger).remote())}

    def threaded_actor() -> dict[str, float]:
        return {"threaded_actor_calls_per_s": calls_per_s(rt.remote(max_concurrency=4)(Pinger).remote())}

    def count_to(n: int) -> Any:
        for i in range(n):
            yield i

    r_count = rt.remote(count_to)

    def generator_items() -> dict[str, float]:
        assert [rt.get(ref) for ref in r_count.remote(10)] == list(range(10))
        t = time.perf_counter()
        last = -1
        for ref in r_count.remote(n_big):
            last = rt.get(ref)
        dt = time.perf_counter() - t
        assert last == n_big - 1
        return {"generator_items_per_s": n_big / dt}

    measure(["async_actor_calls_per_s"], async_actor)
    measure(["threaded_actor_calls_per_s"], threaded_actor)
    measure(["generator_items_per_s"], generator_items)

    refs: list[Any] = []

    def small_puts() -> dict[str, float]:
        rt.get([rt.put(i) for i in range(50)])
        t = time.perf_counter()
        for i in range(n_big):
            refs.append(rt.put(i))
        return {"small_puts_per_s": n_big / (time.perf_counter() - t)}

    def small_gets() -> dict[str, float]:
        if len(refs) != n_big:
            raise RuntimeError("small_puts failed; nothing to get")
        t = time.perf_counter()
        for r in refs:
            rt.get(r)
        dt = time.perf_counter() - t
        assert rt.get(refs[-1]) == n_big - 1
        return {"small_gets_per_s": n_big / dt}

    measure(["small_puts_per_s"], small_puts)
    measure(["small_gets_per_s"], small_gets)
    refs.clear()

    def big() -> dict[str, float]:
        import numpy as np

        weights = {f"Variable{i}": np.random.normal(size=5000000) for i in range(10)}
        puts: list[float] = []
        gets: list[float] = []
        for trial in range(3):
            t = time.perf_counter()
            ref = rt.put(weights)
            puts.append(time.perf_counter() - t)
            t = time.perf_counter()
            got = rt.get(ref)
            gets.append(time.perf_counter() - t)
            if trial == 0:
                assert set(got) == set(weights), "keys differ"
                for k, v in weights.items():
                    assert np.array_equal(got[k], v), f"{k} differs"
            del got, ref
        return {"put_400mb_s": min(puts), "put_400mb_median_s": statistics.median(puts),
                "get_400mb_s": min(gets), "get_400mb_median_s": statistics.median(gets),
                "put_400mb_trials_s": puts, "get_400mb_trials_s": gets}

    measure(["put_400mb_s", "put_400mb_median_s", "get_400mb_s", "get_400mb_median_s"], big)

    class Starter:
        def ready(self) -> int:
            return os.getpid()

    r_starter = rt.remote(Starter)
    kept: list[Any] = []

    def worker_start() -> dict[str, float]:
        times = []
        for _ in range(5):
            t = time.perf_counter()
            a = r_starter.remote()
            rt.get(a.ready.remote())
            times.append(time.perf_counter() - t)
            kept.append(a)
        return {"worker_start_ms": statistics.median(times) * 1000}

    def actor_startup() -> dict[str, float]:
        t = time.perf_counter()
        actors = [r_starter.remote() for _ in range(8)]
        pids = rt.get([a.ready.remote() for a in actors])
        dt = time.perf_counter() - t
        assert len(set(pids)) == 8
        kept.extend(actors)
        return {"actor_startup_s": dt}

    measure(["worker_start_ms"], worker_start)
    measure(["actor_startup_s"], actor_startup)

    def pss() -> dict[str, float]:
        # Idle now: the actors above answered and wait; the task workers are idle.
        tree = descendants(os.getpid())
        if name == "ray":
            workers = [p for p in tree if _cmdline(p).startswith("ray::")]
        else:
            from ember.chaos import processes

            workers = [p.pid for p in processes() if p.kind == "worker"]
        sizes = {p: _pss_kb(p) for p in tree}
        worker_sizes = [sizes[p] for p in workers if sizes.get(p)]
        return {"pss_worker_mb": statistics.mean(worker_sizes) / 1024,
                "pss_cluster_mb": sum(v for v in sizes.values() if v) / 1024}

    measure(["pss_worker_mb", "pss_cluster_mb"], pss)
    kept.clear()

    def fib_task(n: int) -> int:
        if n < 2:
            return n
        return sum(rt.get([r_fib.remote(n - 1), r_fib.remote(n - 2)]))

    r_fib = rt.remote(fib_task)

    def fib10() -> dict[str, float]:
        t = time.perf_counter()
        value = rt.get(r_fib.remote(10))
        dt = time.perf_counter() - t
        assert value == 55, f"fib(10) gave {value}"
        return {"fib10_s": dt}

    def sleep_task() -> None:
        time.sleep(1.0)

    r_sleep = rt.remote(sleep_task).options(num_cpus=0.2)

    def sleep10() -> dict[str, float]:
        t = time.perf_counter()
        rt.get([r_sleep.remote() for _ in range(10)])
        return {"sleep10_s": time.perf_counter() - t}

    measure(["fib10_s"], fib10)
    measure(["sleep10_s"], sleep10)

    try:
        rt.shutdown()
    except Exception as e:  # noqa: BLE001
        errors["shutdown"] = f"{type(e).__name__}: {e}"[:500]
    res["errors"] = errors
    return res


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _pss_kb(pid: int) -> int | None:
    """A process's proportional set size (kB), from /proc/PID/smaps_rollup; None if it is gone."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


# -------------------------------------------------------------------------- parent
def descendants(pid: int) -> list[int]:
    """Every live descendant of ``pid`` (from /proc), even those in sessions of their own."""
    children: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        try:
            with open(f"/proc/{d}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(d))
        except (ValueError, OSError, IndexError):
            continue
    out, todo = [], [pid]
    while todo:
        kids = children.get(todo.pop(), [])
        out += kids
        todo += kids
    return out


def kill_tree(pid: int) -> None:
    for p in [pid] + descendants(pid):
        try:
            os.kill(p, signal.SIGKILL)
        except OSError:
            pass


def run_runtime(name: str, python: str, quick: bool) -> dict[str, Any]:
    """Run one child; return {"status": ..., "results": {...}} without raising."""
    probe = subprocess.run(
        [python, "-c", f"import importlib.util,sys; sys.exit(importlib.util.find_spec({_module(name)!r}) is None)"],
        capture_output=True, text=True, cwd=os.path.dirname(os.path.abspath(__file__)))
    if probe.returncode != 0:
        return {"status": "not installed", "python": python}
    cmd = [python, os.path.abspath(__file__), "--child", name] + (["--quick"] if quick else [])
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)  # own group: a hung child is killed whole
    try:
        out, err = proc.communicate(timeout=CHILD_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        kill_tree(proc.pid)  # the runtime's own services may sit in sessions of their own
        out, err = proc.communicate()
        return {"status": "timeout", "python": python, "stderr_tail": err[-2000:]}
    except BaseException:  # Ctrl-C or SIGTERM to the parent: leave nothing behind
        kill_tree(proc.pid)
        raise
    for line in out.splitlines():
        if line.startswith(PREFIX):
            return {"status": "ok", "python": python, "results": json.loads(line[len(PREFIX):])}
    return {"status": f"error (exit {proc.returncode})", "python": python, "stderr_tail": err[-2000:]}


def fmt(v: float | None) -> str:
    if v is None:
        return "null"
    if v >= 100:
        return f"{v:,.0f}"
    return f"{v:.3g}" if v < 0.1 else f"{v:.3f}"


def table(runs: dict[str, dict[str, Any]]) -> str:
    names = list(runs)
    cost = {"ember", NOLOG} <= set(names)
    head = (["metric"] + names + (["ember/ray"] if {"ember", "ray"} <= set(names) else [])
            + (["log cost"] if cost else []) + ["target"])
    rows = [head]
    res = {n: r.get("results", {}) for n, r in runs.items()}
    for key, unit, limit in METRICS:
        row = [f"{key} ({unit})"]
        for n in names:
            row.append(fmt(res[n].get(key)) if runs[n]["status"] == "ok" else runs[n]["status"])
        e, r = res.get("ember", {}).get(key), res.get("ray", {}).get(key)
        if "ember/ray" in head:
            row.append(f"{e / r:.2f}x" if e is not None and r else "-")
        if cost:
            off = res.get(NOLOG, {}).get(key)
            # rates: the share of throughput logging takes; times: how much longer
            row.append("-" if e is None or not off or key == "lineage_rows_per_s" else
                       f"{(1 - e / off) * 100:+.0f}%" if unit == "/s" else f"{(e / off - 1) * 100:+.0f}%")
        if key == "lineage_rows_per_s" or limit == "info":  # no target: side by side
            rows.append(row + ["-"] * (len(head) - len(row) - 1) + ["(info)"])
            continue
        verdict = ""
        if limit == "cold":
            warm = res.get("ember", {}).get("tree_reduce_warm_s")
            target = "<= 1.5x warm, <= ray/3"
            if e is not None and warm is not None and r is not None:
                verdict = " ok" if e <= 1.5 * warm and e * 3 <= r else " MISS"
        elif isinstance(limit, float):
            target = f"< {limit:g} s"
            if e is not None:
                verdict = " ok" if e < limit else " MISS"
        else:
            target = ">= 3x ray"
            if e is not None and r is not None:
                verdict = " ok" if e >= 3 * r else " MISS"
        row.append(target + verdict)
        rows.append(row)
    return aligned(rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--runtimes", default="ember,ray")
    p.add_argument("--quick", action="store_true", help="smaller counts")
    p.add_argument("--json", metavar="FILE", help="also write all results as JSON")
    p.add_argument("--ray-python", metavar="PATH", help="interpreter for the ray child")
    p.add_argument("--repeat", type=int, default=1, metavar="N",
                   help="rounds (runtimes alternate); the table shows medians")
    p.add_argument("--child", metavar="NAME", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.child:
        print(PREFIX + json.dumps(run_child(a.child, a.quick)), flush=True)
        return 0
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so `timeout` cleans up too
    names = [n.strip() for n in a.runtimes.split(",") if n.strip()]
    rounds: list[dict[str, dict[str, Any]]] = []
    for round_no in range(a.repeat):
        # Rounds alternate the runtimes, so a drift in the machine's speed
        # touches both alike; the table shows each metric's median over rounds.
        runs: dict[str, dict[str, Any]] = {}
        for name in names:
            python = a.ray_python if name == "ray" and a.ray_python else sys.executable
            print(f"round {round_no + 1}/{a.repeat}: running {name} with {python} ...", file=sys.stderr, flush=True)
            t = time.perf_counter()
            runs[name] = run_runtime(name, python, a.quick)
            print(f"  {name}: {runs[name]['status']} in {time.perf_counter() - t:.1f} s", file=sys.stderr)
            for k, msg in runs[name].get("results", {}).get("errors", {}).items():
                print(f"  {name} error in {k}: {msg}", file=sys.stderr)
            if "stderr_tail" in runs[name]:
                print(runs[name]["stderr_tail"], file=sys.stderr)
        rounds.append(runs)
    merged = median_runs(rounds)
    label = f", median of {a.repeat} rounds" if a.repeat > 1 else ""
    print(f"bench_core on {platform.node()} ({os.cpu_count()} cpus){' --quick' if a.quick else ''}{label}")
    print(table(merged))
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"quick": a.quick, "cpus": os.cpu_count(), "runs": merged, "rounds": rounds}, f, indent=2)
    return 0


def median_runs(rounds: list[dict[str, dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """Per runtime, the median of each metric over the rounds in which it ran."""
    if len(rounds) == 1:
        return rounds[0]
    merged: dict[str, dict[str, Any]] = {}
    for name in rounds[0]:
        ok = [r[name] for r in rounds if r[name]["status"] == "ok"]
        if not ok:
            merged[name] = rounds[-1][name]
            continue
        results: dict[str, Any] = {}
        for key, _, _ in METRICS:
            values = [r["results"][key] for r in ok if r["results"].get(key) is not None]
            results[key] = statistics.median(values) if values else None
        merged[name] = {"status": "ok", "python": ok[0]["python"], "results": results}
    return merged


if __name__ == "__main__":
    sys.exit(main())
