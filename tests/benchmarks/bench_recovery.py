"""Recovery benchmark: how long after a store dies the first rebuilt value is back.

For lineage depths 1, 10 and 100 (a chain ``x = inc.remote(x)`` of 400 KB
numpy arrays, so every link lives in the store), it builds the chain, reads
its end, SIGKILLs the node's object store, and times:

* ``store_back_s``  the kill until the restarted store is listed again
* ``first_get_s``   the kill until ``get`` of the chain's end returns the right value
* ``rebuild_s``     that ``get`` alone (the replay of every lost link)

Then it times a 10-deep chain owned by a worker, after that worker and the
store are both SIGKILLed, until the driver (a borrower) has adopted and
rebuilt it: this includes the one second a borrower waits before it asks.

Then, for an actor that has run 1,000 calls, with and without a checkpoint
(every 100 calls), it SIGKILLs the actor's process and times the kill until
a call on the restarted actor returns the state it had (constructor,
checkpoint, replay of the logged calls).

Last, it queues 500 tasks behind a closed gate, SIGKILLs the node's
scheduler, opens the gate and times the kill until every result is back;
it also prints how many of the 500 the restarted scheduler took from the
queue it read back from the log (the rest the driver sent again in full).

With ``--network`` (root: a ``LocalCluster(network=True)`` of two nodes in
network namespaces) it times network partitions instead. It puts a 400 KB
result and a restartable actor on one node, cuts that node from the GCS
(and the drivers beside it) with nftables, and times:

* ``first_rebuilt_get_s``  the cut until ``get`` of the result, rebuilt on the other node, returns
* ``actor_back_s``         the cut until a call on the actor, restarted on the other node, returns its state
* ``declared_dead_s``      the cut until the GCS lists the node dead

then heals the cut and times:

* ``alive_again_s``        the heal until the GCS lists the node alive
* ``in_service_s``         the heal until a task that only that node may run returns

Timings are printed, never asserted. Usage:

    python tests/benchmarks/bench_recovery.py [--depths 1,10,100] [--repeat 3]
    python tests/benchmarks/bench_recovery.py --network [--repeat 3]
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
                wait_for_new_store(store_pid, old)
                back = time.perf_counter()
                value = ember.get(chain, timeout=300)
                done = time.perf_counter()
                assert value[0] == depth, f"depth {depth}: rebuilt {value[0]}"
                samples["store_back_s"].append(back - killed)
                samples["first_get_s"].append(done - killed)
                samples["rebuild_s"].append(done - back)
            rows.append({"depth": depth, **{k: statistics.median(v) for k, v in samples.items()}})
        rows += run_owner_death(ember, zeros, inc, store_pid, repeat)
        rows += run_actors(ember, repeat)
        rows += run_scheduler_death(ember, repeat)
    finally:
        ember.shutdown()
    return rows


def wait_for_new_store(store_pid, old: int, bound_s: float = 60.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.perf_counter() + bound_s
    while store_pid() in (None, old):
        if time.perf_counter() > deadline:
            raise SystemExit(f"no new store {bound_s:.0f}s after killing pid {old}")
        time.sleep(0.005)


def run_owner_death(ember, zeros, inc, store_pid, repeat: int) -> list[dict]:  # type: ignore[no-untyped-def]
    """A worker owns a 10-deep chain and dies, and so does the store: the driver adopts and rebuilds it."""
    @ember.remote
    def spawn_chain(depth):
        x = zeros.remote()
        for _ in range(depth):
            x = inc.remote(x)
        return os.getpid(), [x]

    times = []
    for _ in range(repeat):
        pid, [end] = ember.get(spawn_chain.remote(10), timeout=300)
        assert ember.get(end, timeout=300)[0] == 10
        old = store_pid()
        killed = time.perf_counter()
        os.kill(pid, signal.SIGKILL)
        os.kill(old, signal.SIGKILL)
        wait_for_new_store(store_pid, old)
        value = ember.get(end, timeout=300)
        assert value[0] == 10
        times.append(time.perf_counter() - killed)
    return [{"label": "10-deep chain whose owner and store died (adopted by the driver)",
             "recovery_s": statistics.median(times)}]


def run_actors(ember, repeat: int) -> list[dict]:  # type: ignore[no-untyped-def]
    class Plain:
        def __init__(self):
            self.total = 0

        def add(self, k):
            self.total += k
            return self.total

        def state(self):
            return self.total

        def pid(self):
            return os.getpid()

    class Checkpointed(Plain):
        checkpoint_interval = 100

        def save_checkpoint(self):
            return self.total

        def load_checkpoint(self, state):
            self.total = state

    rows = []
    for label, cls in (("actor, 1,000 calls, no checkpoint", Plain),
                       ("actor, 1,000 calls, checkpoint every 100", Checkpointed)):
        times = []
        for _ in range(repeat):
            actor = ember.remote(cls).options(max_restarts=1, max_task_retries=-1).remote()
            ember.get([actor.add.remote(1) for _ in range(1000)], timeout=300)
            expected = ember.get(actor.state.remote(), timeout=300)
            time.sleep(0.2)  # checkpoints are written lazily
            pid = ember.get(actor.pid.remote(), timeout=300)
            killed = time.perf_counter()
            os.kill(pid, signal.SIGKILL)
            assert ember.get(actor.state.remote(), timeout=300) == expected
            times.append(time.perf_counter() - killed)
            ember.kill(actor)
        rows.append({"label": label, "recovery_s": statistics.median(times)})
    return rows


def run_scheduler_death(ember, repeat: int, tasks: int = 500) -> list[dict]:  # type: ignore[no-untyped-def]
    """Tasks queued behind a gate when the scheduler dies: all of them come back, most from the log."""
    import tempfile

    from ember._runtime import require_core
    from ember.chaos import processes

    @ember.remote
    def gated(i, path):
        deadline = time.monotonic() + 300
        while not os.path.exists(path) and time.monotonic() < deadline:
            time.sleep(0.005)
        return i

    def scheduler_pid() -> int | None:
        found = [p.pid for p in processes() if p.kind == "scheduler"]
        return found[0] if found else None

    core = require_core()
    times, taken = [], []
    for _ in range(repeat):
        gate = os.path.join(tempfile.mkdtemp(), "open")
        refs = [gated.remote(i, gate) for i in range(tasks)]
        time.sleep(0.5)  # the queue's rows and the specs are written within 10 ms
        before = core.resumed_from_log
        old = scheduler_pid()
        killed = time.perf_counter()
        os.kill(old, signal.SIGKILL)  # type: ignore[arg-type]
        open(gate, "w").close()
        assert ember.get(refs, timeout=300) == list(range(tasks))
        times.append(time.perf_counter() - killed)
        taken.append(core.resumed_from_log - before)
    return [{"label": f"{tasks} queued tasks when the scheduler died (median {statistics.median(taken):.0f} "
                      "taken from its queue in the log)", "recovery_s": statistics.median(times)}]


def run_partitions(repeat: int, bound_s: float = 120.0) -> dict[str, float]:
    """Median times of ``repeat`` cuts of a node from the GCS, and of their heals (see the docstring)."""
    import numpy as np

    import ember
    from ember.chaos import LocalCluster
    from ember.chaos import NetFault
    from ember.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    @ember.remote(max_retries=-1)
    def block(seed):
        return np.full(50_000, float(seed))

    @ember.remote(max_restarts=-1, max_task_retries=-1)
    class Counter:
        def __init__(self):
            self.n = 0

        def inc(self):
            self.n += 1
            return self.n

    @ember.remote
    def here():
        return ember.util.get_node_ip_address()

    def until(check, what: str) -> float:  # type: ignore[no-untyped-def]
        deadline = time.monotonic() + bound_s
        while not check():
            if time.monotonic() > deadline:
                raise SystemExit(f"not within {bound_s:g}s: {what}")
            time.sleep(0.02)
        return time.perf_counter()

    def alive(node_id: str) -> bool:
        return any(n["NodeID"] == node_id and n["Alive"] for n in ember.nodes())

    samples: dict[str, list[float]] = {k: [] for k in ("declared_dead_s", "first_rebuilt_get_s", "actor_back_s",
                                                        "alive_again_s", "in_service_s")}
    with LocalCluster(nodes=[{"num_cpus": 2}, {"num_cpus": 2}], network=True) as cluster:
        ember.init(address=cluster.address)
        try:
            for i in range(repeat):
                victim = cluster.nodes[i % 2]
                on_victim = NodeAffinitySchedulingStrategy(victim.node_id, soft=True)
                result = block.options(scheduling_strategy=on_victim).remote(i)
                actor = Counter.options(scheduling_strategy=on_victim).remote()
                # Done on the victim, and never fetched: its only copy is in the victim's store.
                ready, _ = ember.wait([result], timeout=bound_s, fetch_local=False)
                assert ready and ember.get(actor.inc.remote(), timeout=bound_s) == 1
                cut_at = time.perf_counter()
                cut = cluster.net_fault(NetFault.partition("gcs", bound_s), victim)
                try:
                    calls = actor.inc.remote()
                    samples["declared_dead_s"].append(until(lambda: not alive(victim.node_id), "declared dead")
                                                      - cut_at)
                    assert ember.get(result, timeout=bound_s)[0] == i
                    print(f"  cut {i}: rebuilt get after {time.perf_counter() - cut_at:.3f} s", flush=True)
                    samples["first_rebuilt_get_s"].append(time.perf_counter() - cut_at)
                    assert ember.get(calls, timeout=bound_s) == 2
                    samples["actor_back_s"].append(time.perf_counter() - cut_at)
                finally:
                    healed_at = time.perf_counter()
                    cluster.heal(cut)
                samples["alive_again_s"].append(until(lambda: alive(victim.node_id), "alive again") - healed_at)
                print(f"  heal {i}: alive after {samples['alive_again_s'][-1]:.3f} s", flush=True)
                pinned = here.options(resources={f"node:{cluster.node_address(victim)}": 0.01})
                assert ember.get(pinned.remote(), timeout=bound_s) == cluster.node_address(victim)
                samples["in_service_s"].append(time.perf_counter() - healed_at)
                ember.kill(actor)
        finally:
            ember.shutdown()
    return {k: statistics.median(v) for k, v in samples.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--depths", default="1,10,100")
    parser.add_argument("--repeat", type=int, default=3, help="kills per depth; the table shows medians")
    parser.add_argument("--network", action="store_true",
                        help="time partitions of a node from the GCS instead (root: network namespaces)")
    args = parser.parse_args()
    if args.network:
        times = run_partitions(args.repeat)
        print(f"a node cut from the GCS and the drivers, then healed; median of {args.repeat} "
              f"({os.cpu_count()} cpus)")
        for name, value in times.items():
            print(f"  {name:<22} {value:7.3f} s")
        return
    rows = run([int(d) for d in args.depths.split(",")], args.repeat)
    print(f"recovery after a store SIGKILL, median of {args.repeat} ({os.cpu_count()} cpus)")
    print(f"{'depth':>6}  {'store back (s)':>14}  {'first get (s)':>13}  {'rebuild (s)':>11}")
    for r in rows:
        if "depth" in r:
            print(f"{r['depth']:>6}  {r['store_back_s']:>14.3f}  {r['first_get_s']:>13.3f}  {r['rebuild_s']:>11.3f}")
    for r in rows:
        if "label" in r:
            print(f"{r['label']}: kill -> back in {r['recovery_s']:.3f} s")


if __name__ == "__main__":
    main()
