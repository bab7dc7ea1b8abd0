"""Cluster benchmark: ember vs. Ray, three local nodes (1 CPU, a store each, node k holding ``node{k}``).

* ``transfer_mb_per_s``: a task pinned to node 1 returns a 400 MiB array; once it
  is ready (``wait(fetch_local=False)``) a task pinned to node 2 returns its
  ``nbytes``, so the object moves node 1 -> node 2. Transfer time = that round trip
  minus the median round trip with a tiny object. MB = 10^6 bytes; median of
  ``--trials`` fresh objects.
* ``tasks_per_s``: N unpinned no-op tasks (``num_cpus=1``) submitted, then one
  ``get`` of all; median of ``--repeat`` rounds. ``nodes_used``: distinct node ids
  the tasks reported.
* ``spread_s``: 12 unpinned tasks of 0.2 s submitted at once from the driver on
  node 1, then one ``get``: 0.8 s if they spread over the three nodes at once,
  2.4 s on one node; median of ``--repeat`` rounds, ``spread_nodes_used``.
* ``tree_reduce_s``: 12 leaves of 8 MiB, made on nodes 1, 2, 3 in turn (pinned),
  summed pairwise by unpinned tasks up a tree; submission to the root's value,
  median of ``--repeat`` rounds.

Timings are reported, never asserted. Each runtime runs in a ``--child NAME``
process that prints one ``BENCH_RESULT {json}`` line; the parent imports neither.
Ray's nodes are ``ray start --block`` processes from its venv, stopped by pid
(never ``ray stop``, which would stop every Ray on the machine).

    python tests/benchmarks/bench_cluster.py --runtimes ember,ray --ray-python /work/rayvenv/bin/python
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable

from _table import aligned  # beside this script

PREFIX = "BENCH_RESULT "
CHILD_TIMEOUT_S = 900.0
NODES = 3
OBJECT_BYTES = 400 * 2**20
STORE_BYTES = 1536 * 2**20  # per node: room for a 400 MiB object and a pulled copy
PIN = 0.01  # share of a node's custom resource a pinned task asks for
OVERHEAD_TRIALS = 5
NODE_UP_TIMEOUT_S = 60.0
RAY_STOP_TIMEOUT_S = 30.0
POLL_S = 0.2
SPREAD_TASKS = 12
SPREAD_TASK_S = 0.2
TREE_LEAVES = 12
LEAF_BYTES = 8 * 2**20


def node_sizes(k: int) -> dict[str, Any]:
    return {"num_cpus": 1, "resources": {f"node{k}": 1}, "object_store_memory": STORE_BYTES}


# --------------------------------------------------------------------------- child
def measure(rt: Any, trials: int, rounds: int, n_tasks: int) -> dict[str, Any]:
    """The workload, written against the Ray core API that ``rt`` (ember or ray) offers."""
    import numpy as np

    def produce(n: int) -> Any:
        return np.frombuffer(np.random.default_rng().bytes(n), dtype=np.uint8)

    def consume(array: Any) -> int:
        return array.nbytes

    def where() -> str:
        return rt.get_runtime_context().get_node_id()

    producer = rt.remote(produce).options(resources={"node1": PIN})
    consumer = rt.remote(consume).options(resources={"node2": PIN})
    noop = rt.remote(where).options(num_cpus=1)

    def consumer_round_trip_s(size: int) -> float:
        ref = producer.remote(size)
        rt.wait([ref], fetch_local=False)  # ready on node 1, not pulled to the driver
        started_s = time.perf_counter()
        nbytes = rt.get(consumer.remote(ref))
        elapsed_s = time.perf_counter() - started_s
        assert nbytes == size, f"consumer saw {nbytes} bytes, expected {size}"
        return elapsed_s

    res: dict[str, Any] = {}
    consumer_round_trip_s(8)  # warm-up: a worker on each of nodes 1 and 2
    overhead_s = statistics.median(consumer_round_trip_s(8) for _ in range(OVERHEAD_TRIALS))
    rates = []
    for trial in range(trials):
        elapsed_s = consumer_round_trip_s(OBJECT_BYTES)
        rates.append(OBJECT_BYTES / max(elapsed_s - overhead_s, 1e-9) / 1e6)
        print(f"  transfer {trial + 1}: {elapsed_s:.3f} s - {overhead_s * 1e3:.1f} ms = {rates[-1]:.0f} MB/s",
              file=sys.stderr, flush=True)
    res.update(transfer_mb_per_s=statistics.median(rates), transfer_trials_mb_per_s=rates,
               consumer_overhead_ms=overhead_s * 1e3)

    rt.get([noop.remote() for _ in range(200)])  # warm-up: workers start on every node
    per_s, used = [], set()
    for _ in range(rounds):
        started_s = time.perf_counter()
        node_ids = rt.get([noop.remote() for _ in range(n_tasks)])
        per_s.append(n_tasks / (time.perf_counter() - started_s))
        used |= set(node_ids)
    res.update(tasks_per_s=statistics.median(per_s), tasks_rounds_per_s=per_s, nodes_used=len(used))
    res.update(spread_and_tree(rt, rounds))
    return res


def spread_and_tree(rt: Any, rounds: int) -> dict[str, Any]:
    """Twelve 0.2 s tasks from one node; a tree reduce over leaves made on the three nodes."""
    import numpy as np

    def nap() -> str:
        time.sleep(SPREAD_TASK_S)
        return rt.get_runtime_context().get_node_id()

    def leaf(i: int) -> Any:
        return np.full(LEAF_BYTES // 8, i, dtype=np.int64)

    def add(a: Any, b: Any) -> Any:
        return a + b

    napper = rt.remote(nap).options(num_cpus=1)
    leaves = [rt.remote(leaf).options(resources={f"node{k}": PIN}) for k in range(1, NODES + 1)]
    adder = rt.remote(add)
    spread, used, tree = [], set(), []
    for _ in range(rounds):
        started_s = time.perf_counter()
        used |= set(rt.get([napper.remote() for _ in range(SPREAD_TASKS)]))
        spread.append(time.perf_counter() - started_s)
        started_s = time.perf_counter()
        level = [leaves[i % NODES].remote(i) for i in range(TREE_LEAVES)]
        while len(level) > 1:
            level = [adder.remote(level[i], level[i + 1]) if i + 1 < len(level) else level[i]
                     for i in range(0, len(level), 2)]
        root = rt.get(level[0])
        tree.append(time.perf_counter() - started_s)
        assert int(root[0]) == sum(range(TREE_LEAVES)), f"the tree summed to {int(root[0])}"
    return {"spread_s": statistics.median(spread), "spread_rounds_s": spread, "spread_nodes_used": len(used),
            "tree_reduce_s": statistics.median(tree), "tree_rounds_s": tree}


def run_ember(body: Callable[[Any], dict[str, Any]], home: str) -> dict[str, Any]:
    os.environ["EMBER_HOME"] = home  # a fresh one: its own lineage log and node records
    import ember
    from ember.chaos import LocalCluster

    with LocalCluster(nodes=[node_sizes(k) for k in range(1, NODES + 1)]) as cluster:
        ember.init(address=cluster.address)
        try:
            return body(ember)
        finally:
            ember.shutdown()


def run_ray(body: Callable[[Any], dict[str, Any]], temp_dir: str) -> dict[str, Any]:
    # `ray start` turns token auth on by itself when ~/.ray/auth_token exists, but a
    # driver's ray.init(address=...) does not and is refused: pin one mode for all.
    os.environ["RAY_AUTH_MODE"] = "disabled"
    import ray

    ray_cli = os.path.join(os.path.dirname(sys.executable), "ray")  # the same venv's
    port = free_port()
    address = f"127.0.0.1:{port}"
    nodes: list[subprocess.Popen] = []
    try:
        for k in range(1, NODES + 1):
            sizes = node_sizes(k)
            argv = [ray_cli, "start", "--block", "--disable-usage-stats", "--num-cpus", str(sizes["num_cpus"]),
                    "--resources", json.dumps(sizes["resources"]),
                    "--object-store-memory", str(sizes["object_store_memory"]),
                    # each raylet's dashboard agent needs a port of its own (the default is one fixed port)
                    "--dashboard-agent-listen-port", str(free_port())]
            argv += ["--head", "--port", str(port), "--temp-dir", temp_dir, "--include-dashboard", "false"] \
                if k == 1 else ["--address", address]
            # in this child's process group, so the parent's kill on timeout reaches them too
            log_path = os.path.join(temp_dir, f"node{k}.log")
            with open(log_path, "w") as log:
                nodes.append(subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT))
            # one at a time: joiners started together may pick the same plasma socket name and abort;
            # "started" is printed once the node has registered with the head
            wait_started(nodes[-1], log_path)
        ray.init(address=address, log_to_driver=False)
        try:
            return body(ray)
        finally:
            ray.shutdown()
    finally:
        for node in reversed(nodes):  # joined nodes first, the head last
            stop(node)


def wait_started(proc: subprocess.Popen, log_path: str) -> None:
    deadline = time.monotonic() + NODE_UP_TIMEOUT_S
    while proc.poll() is None and time.monotonic() < deadline:
        with open(log_path) as log:
            if "Ray runtime started" in log.read():
                return
        time.sleep(POLL_S)
    with open(log_path) as log:
        tail = log.read()[-800:]
    raise RuntimeError(f"`ray start` did not start a node (exit code {proc.poll()}):\n{tail}")


def stop(proc: subprocess.Popen) -> None:
    """SIGTERM a ``ray start --block``: it stops its node's processes. If it hangs,
    SIGKILL it; its raylet and GCS die with it (Ray starts them with PR_SET_PDEATHSIG)."""
    if proc.poll() is None:
        proc.terminate()
    try:
        proc.wait(timeout=RAY_STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_child(name: str, trials: int, rounds: int, n_tasks: int) -> dict[str, Any]:
    scratch = tempfile.mkdtemp(prefix=f"bench_cluster_{name}_")  # Ray's --temp-dir or ember's EMBER_HOME
    os.chmod(scratch, 0o755)  # under root, ember's PostgreSQL runs as its own user and must reach it
    try:
        res = (run_ray if name == "ray" else run_ember)(lambda rt: measure(rt, trials, rounds, n_tasks), scratch)
    except Exception as e:  # noqa: BLE001 - reported in the table, not raised
        res = {"error": f"{type(e).__name__}: {e}"[:1000]}
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return {"runtime": name, **res}


# -------------------------------------------------------------------------- parent
def run_runtime(name: str, python: str, args: argparse.Namespace) -> dict[str, Any]:
    """Run one child; return its results (or {"error": ...}) without raising."""
    cmd = [python, os.path.abspath(__file__), "--child", name, "--trials", str(args.trials),
           "--repeat", str(args.repeat), "--tasks", str(args.tasks)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, start_new_session=True)  # stderr: progress
    try:
        out, _ = proc.communicate(timeout=CHILD_TIMEOUT_S)
    except BaseException as e:  # timeout, Ctrl-C: the child's group holds its nodes too; kill it whole
        os.killpg(proc.pid, signal.SIGKILL)  # not yet reaped, so the group id is still the child's
        proc.wait()
        if not isinstance(e, subprocess.TimeoutExpired):
            raise
        return {"error": f"timeout after {CHILD_TIMEOUT_S:.0f} s"}
    for line in out.splitlines():
        if line.startswith(PREFIX):
            return json.loads(line[len(PREFIX):])
    return {"error": f"exit {proc.returncode}, no result"}


def table(runs: dict[str, dict[str, Any]]) -> str:
    metrics = [("transfer_mb_per_s", "400 MiB node1->node2, MB/s, median"),
               ("transfer_trials_mb_per_s", "  all trials"), ("consumer_overhead_ms", "  consumer overhead, ms"),
               ("tasks_per_s", "no-op tasks/s, 3 nodes, median"), ("tasks_rounds_per_s", "  all rounds"),
               ("nodes_used", "  nodes that ran tasks"),
               ("spread_s", "12 x 0.2 s tasks from node 1, s, median"), ("spread_rounds_s", "  all rounds"),
               ("spread_nodes_used", "  nodes that ran them"),
               ("tree_reduce_s", "tree reduce, 12 x 8 MiB leaves on 3 nodes, s"), ("tree_rounds_s", "  all rounds")]

    def fmt(v: Any) -> str:
        if isinstance(v, list):
            return " ".join(f"{x:.0f}" if x >= 100 else f"{x:.3g}" for x in v)
        return "-" if v is None else f"{v:,.0f}" if v >= 100 else f"{v:.3g}"

    rows = [["metric"] + list(runs)]
    rows += [[label] + [fmt(r.get(key)) if "error" not in r else "error" for r in runs.values()]
             for key, label in metrics]
    return aligned(rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--runtimes", default="ember,ray")
    p.add_argument("--ray-python", metavar="PATH", help="interpreter for the ray child (its venv's ray CLI is used)")
    p.add_argument("--trials", type=int, default=5, help="400 MiB transfers, fresh object each")
    p.add_argument("--repeat", type=int, default=3, help="rounds of the tasks/s measurement")
    p.add_argument("--tasks", type=int, default=3000, help="no-op tasks per round")
    p.add_argument("--json", metavar="FILE", help="also write all results as JSON")
    p.add_argument("--child", metavar="NAME", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.child:
        print(PREFIX + json.dumps(run_child(a.child, a.trials, a.repeat, a.tasks)), flush=True)
        return 0
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so `timeout` runs the cleanup too
    runs: dict[str, dict[str, Any]] = {}
    for name in [n.strip() for n in a.runtimes.split(",") if n.strip()]:
        python = a.ray_python if name == "ray" and a.ray_python else sys.executable
        print(f"running {name} with {python} ...", file=sys.stderr, flush=True)
        runs[name] = run_runtime(name, python, a)
        if "error" in runs[name]:
            print(f"  {name} error: {runs[name]['error']}", file=sys.stderr)
    print(f"bench_cluster on {platform.node()} ({os.cpu_count()} cpus), {NODES} local nodes")
    print(table(runs))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(runs, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
