"""Network faults mixed with process kills on a three-node network cluster, checked against a model.

A plan (drawn from a seed: the same seed, the same plan) is a list of
steps; each step submits work (chains of tasks over 400 KB arrays, calls on
two restartable actors), then fires one fault while that work runs, and
after the checks has a task on any node read each actor's total (a caller
apart from the owner: during a long cut it may reach the old instance,
which must hold the call until it is fenced):

- a partition of one node from the GCS (and the drivers), from PostgreSQL
  or from another node, one way or both, for 0.5 to 3 s, and now and then
  (``long_cut``) from the GCS for 17 s: past the owners' 15 s, so tasks run
  again elsewhere and actors restart elsewhere, and the heal must fence;
- a loss of 10 to 40% of a node's packets for 1 to 3 s;
- a delay of 20 to 200 ms (where the machine can delay: netem or NFQUEUE, `require_delay`);
- a SIGKILL of a worker or of a node's store (by pid, from the cluster's
  own process list).

Every value read is compared with the model (what the same code computes
without ember), every ``get`` is bounded (a GetTimeoutError is a hang), an
error is counted as lost, and once the step's faults are healed every actor
must have exactly one live process (two is a split brain). ``Tally`` counts
it all. ``python tests/chaos/network_soak.py --seconds 600`` is the soak:
random seeds until the time is up, then the tally (root only).
"""

from __future__ import annotations

import argparse
import contextlib
import random
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

import ember
from ember.chaos import LocalCluster, processes
from ember.chaos import NetFault, NetFaultUnavailableError
from ember.chaos._netfaults import require_delay

GET_TIMEOUT_S = 120.0
SPLIT_BRAIN_WAIT_S = 30.0  # a superseded instance is fenced at its node's next word with the GCS
ARRAY = 50_000
LONG_CUT_S = 17.0


@ember.remote(max_retries=-1)
def start(seed: int) -> np.ndarray:
    return np.full(ARRAY, float(seed))


@ember.remote(max_retries=-1)
def inc(a: np.ndarray) -> np.ndarray:
    return a + 1


@ember.remote(max_retries=-1)
def read_through(actor: Any) -> int:
    """An actor's total, read by a task: a caller apart from the actor's owner, on any node."""
    return ember.get(actor.add.remote(0), timeout=GET_TIMEOUT_S)


@ember.remote(max_restarts=-1, max_task_retries=-1)
class Counter_:
    def __init__(self) -> None:
        self.n = 0

    def add(self, k: int) -> int:
        self.n += k
        return self.n


@dataclass
class Tally:
    faults: Counter = field(default_factory=Counter)
    operations_checked: int = 0
    wrong: int = 0
    hangs: int = 0
    lost: int = 0
    split_brain: int = 0
    failures: list[str] = field(default_factory=list)

    def line(self) -> str:
        kinds = ", ".join(f"{k} {n}" for k, n in sorted(self.faults.items()))
        return (f"faults {sum(self.faults.values())} ({kinds}); operations checked {self.operations_checked}; "
                f"wrong {self.wrong}; hangs {self.hangs}; lost {self.lost}; split-brain actors {self.split_brain}")


def draw_plan(seed: int, steps: int, long_cut: bool, delay: bool) -> list[tuple[str, Any]]:
    """``steps`` faults, as (kind, NetFault or process kind); one long cut among them if ``long_cut``."""
    rng = random.Random(seed)
    kinds = ["partition", "partition", "loss", "kill worker", "kill store"] + (["delay"] if delay else [])
    plan: list[tuple[str, Any]] = []
    for _ in range(steps):
        kind = rng.choice(kinds)
        pick = rng.randrange(1_000)
        if kind == "partition":
            peer = rng.choice(["gcs", "node", "postgres"])
            fault = NetFault.partition(peer, round(rng.uniform(0.5, 3.0), 2), rng.choice(["both", "out", "in"]),
                                       pick, rng.randrange(1_000))
            plan.append((f"partition node-{peer} {fault.direction}", fault))
        elif kind == "loss":
            plan.append(("loss", NetFault.loss(rng.randrange(10, 41), round(rng.uniform(1.0, 3.0), 2), pick)))
        elif kind == "delay":
            plan.append(("delay", NetFault.delay(rng.randrange(20, 201), round(rng.uniform(1.0, 3.0), 2),
                                                 rng.randrange(0, 21), pick)))
        else:
            plan.append((kind, pick))
    if long_cut:
        plan.insert(rng.randrange(len(plan) + 1),
                    ("partition node-gcs both (long)", NetFault.partition("gcs", LONG_CUT_S, "both", rng.randrange(1_000))))
    return plan


def run_plan(cluster: LocalCluster, plan: list[tuple[str, Any]], tally: Tally) -> None:
    """Run ``plan`` on ``cluster`` (this process connected to it), counting into ``tally``."""
    actors = [Counter_.options(resources={"slot": 1}).remote() for _ in range(2)]
    model = [0, 0]
    chains: list[tuple[Any, int]] = []  # (ref, the value every element must have)
    for step, (label, fault) in enumerate(plan):
        seed = step * 100
        ref = start.remote(seed)
        for _ in range(3):
            ref = inc.remote(ref)
        chains.append((ref, seed + 3))
        calls = []
        for i, actor in enumerate(actors):
            model[i] += step + 1
            calls.append((actor.add.remote(step + 1), model[i]))
        healer = _fire(cluster, label, fault, tally)
        for ref, expected in chains[-3:]:
            _check(tally, lambda r=ref: ember.get(r, timeout=GET_TIMEOUT_S)[0], float(expected),
                   f"{label} (step {step}, a task chain)")
        for i, (ref, expected) in enumerate(calls):
            _check(tally, lambda r=ref: ember.get(r, timeout=GET_TIMEOUT_S), expected,
                   f"{label} (step {step}, a call on actor {i})")
        for i, actor in enumerate(actors):  # while a long cut lasts: an old instance must not answer it
            _check(tally, lambda a=actor: ember.get(read_through.remote(a), timeout=GET_TIMEOUT_S), model[i],
                   f"{label} (step {step}, a read of actor {i} by a task)")
        if healer is not None:
            healer.join(LONG_CUT_S + 30.0)
    for i, actor in enumerate(actors):  # the final state, after every fault healed
        _check(tally, lambda a=actor: ember.get(a.add.remote(0), timeout=GET_TIMEOUT_S), model[i],
               f"final (a call on actor {i})")
    for ref, expected in chains:
        _check(tally, lambda r=ref: ember.get(r, timeout=GET_TIMEOUT_S)[0], float(expected), "final (a task chain)")
    _check_one_instance(actors, tally)
    for actor in actors:
        ember.kill(actor)


def _fire(cluster: LocalCluster, label: str, fault: Any, tally: Tally) -> threading.Thread | None:
    if isinstance(fault, NetFault):
        applied = cluster.net_fault(fault)
        tally.faults[label.split(" (")[0]] += 1
        healer = threading.Thread(target=lambda: (time.sleep(fault.duration_s), cluster.heal(applied)),
                                  name="soak-heal", daemon=True)
        healer.start()
        return healer
    kind = label.split()[1]
    pids = sorted(p.pid for p in processes() if p.kind == kind and p.node_id != cluster.head.node_id)
    if pids:
        import os
        import signal

        try:
            os.kill(pids[fault % len(pids)], signal.SIGKILL)  # a process of this cluster's own list
            tally.faults[label] += 1
        except ProcessLookupError:
            pass
    return None


def _check(tally: Tally, read: Any, expected: Any, label: str) -> None:
    tally.operations_checked += 1
    try:
        value = read()
    except ember.exceptions.GetTimeoutError as exc:
        tally.hangs += 1
        tally.failures.append(f"hang after {label}: {exc}")
        return
    except ember.exceptions.EmberError as exc:
        tally.lost += 1
        tally.failures.append(f"lost after {label}: {type(exc).__name__}: {exc}")
        return
    if value != expected:
        tally.wrong += 1
        tally.failures.append(f"wrong after {label}: {value!r} != {expected!r}")


def _check_one_instance(actors: list[Any], tally: Tally) -> None:
    """Every actor has one live process, once fencing had its time (two is a split brain)."""
    deadline = time.monotonic() + SPLIT_BRAIN_WAIT_S
    while True:
        counts = Counter(p.actor_id for p in processes() if p.actor_id is not None)
        doubled = [a for a in actors if counts[a._actor_id.hex()] > 1]
        if not doubled or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    tally.split_brain += len(doubled)
    tally.failures += [f"split brain: actor {a._actor_id.hex()} has {counts[a._actor_id.hex()]} live processes"
                       for a in doubled]


@contextlib.contextmanager
def connected(sizes: list[dict[str, Any]]) -> Iterator[LocalCluster]:
    """A network cluster of nodes of ``sizes``, this process its driver."""
    with LocalCluster(nodes=sizes, network=True) as cluster:
        ember.init(address=cluster.address)
        try:
            yield cluster
        finally:
            ember.shutdown()


def delay_available() -> bool:
    try:
        require_delay()
        return True
    except NetFaultUnavailableError:
        return False


NODES = [{"num_cpus": 2, "resources": {"slot": 2}}] * 3


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=600.0)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--seed", type=int, default=0, help="the first plan's seed; the next ones follow")
    args = parser.parse_args()
    tally = Tally()
    delay = delay_available()
    started = time.monotonic()
    plans = 0
    with connected(NODES) as cluster:
        seed = args.seed
        while time.monotonic() - started < args.seconds:
            plan = draw_plan(seed, args.steps, long_cut=seed % 3 == 0, delay=delay)
            run_plan(cluster, plan, tally)
            plans += 1
            seed += 1
            print(f"[{time.monotonic() - started:6.0f}s] plan {plans} (seed {seed - 1}): {tally.line()}",
                  flush=True)
    print(f"soak: {time.monotonic() - started:.0f} s, {plans} plans, delays {'yes' if delay else 'no'}")
    print(f"soak: {tally.line()}")
    for failure in tally.failures[:20]:
        print(f"  {failure}")
    sys.exit(1 if tally.failures else 0)


if __name__ == "__main__":
    main()
