"""``ember demo``: a short workload on a fresh local cluster that shows what ember does.

Besides parallel tasks, a chain, an actor and a large zero-copy object, it
SIGKILLs the cluster's object store in the middle of a pipeline, shows the
answer come back right from lineage, and ends with the commands that show
that answer's lineage and replay one of its tasks, after the cluster is gone.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import ember
from ember.lineage import open_log

BLOCKS = 8
BLOCK_FLOATS = 50_000  # 400 kB each: results that live in the object store, not inline
STORE_RESTART_WAIT_S = 20.0


@ember.remote
def _square(x: int) -> int:
    return x * x


@ember.remote
def _increment(x: int) -> int:
    return x + 1


@ember.remote
def _checksum(weights: dict) -> float:
    return float(sum(float(v[:1000].sum()) for v in weights.values()))


@ember.remote
def _block(i: int) -> "np.ndarray":  # noqa: F821  (numpy is imported where the demo runs)
    import numpy as np

    return np.full(BLOCK_FLOATS, float(i))


@ember.remote
def _total(*blocks: "np.ndarray") -> float:  # noqa: F821
    return float(sum(float(block.sum()) for block in blocks))


@ember.remote
class _Counter:
    def __init__(self) -> None:
        self.value = 0

    def add(self, k: int) -> int:
        self.value += k
        return self.value


def run_demo(size_mb: int = 400, echo: Callable[[str], None] = print) -> int:
    import numpy as np

    started = time.perf_counter()
    t0 = time.perf_counter()
    ember.init()
    echo(f"started a local cluster ({ember.cluster_resources().get('CPU', 0):.0f} CPUs) "
         f"in {time.perf_counter() - t0:.2f}s")
    try:
        t0 = time.perf_counter()
        squares = ember.get([_square.remote(i) for i in range(1000)])
        assert squares == [i * i for i in range(1000)]
        echo(f"1,000 parallel tasks: sum of squares {sum(squares):,} in {time.perf_counter() - t0:.2f}s")

        t0 = time.perf_counter()
        ref = _increment.remote(0)
        for _ in range(99):
            ref = _increment.remote(ref)
        value = ember.get(ref)
        assert value == 100
        echo(f"a 100-task dependency chain: result {value} in {time.perf_counter() - t0:.2f}s")

        t0 = time.perf_counter()
        counter = _Counter.remote()
        results = ember.get([counter.add.remote(1) for _ in range(500)])
        assert results == list(range(1, 501))
        echo(f"an actor: 500 calls in order, final count {results[-1]} in {time.perf_counter() - t0:.2f}s")

        arrays = max(1, size_mb // 40)
        per_array = size_mb * 1_000_000 // 8 // arrays
        weights = {f"Variable{i}": np.random.normal(size=per_array) for i in range(arrays)}
        nbytes = sum(v.nbytes for v in weights.values())
        t0 = time.perf_counter()
        weights_ref = ember.put(weights)
        put_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        view = ember.get(weights_ref)
        get_s = time.perf_counter() - t0
        assert all(np.array_equal(view[k], weights[k]) for k in weights)
        remote_sum = ember.get(_checksum.remote(weights_ref))
        local_sum = float(sum(float(v[:1000].sum()) for v in weights.values()))
        assert abs(remote_sum - local_sum) < 1e-6
        echo(f"a {nbytes / 1e6:,.0f} MB dict of numpy arrays: put {put_s * 1000:.0f} ms, "
             f"get {get_s * 1000:.2f} ms (zero-copy view), read by a task: checksum matches")
        del view, weights_ref
        total_ref, block_task = _survive_a_store_kill(echo)
    finally:
        ember.shutdown()
    echo(f"demo finished in {time.perf_counter() - started:.2f}s; cluster stopped. The log outlives it:")
    echo(f"  ember lineage {total_ref}        # where that total came from, rebuilt tasks marked")
    echo(f"  ember replay {block_task} --pdb    # run one of its tasks again, in your debugger")
    return 0


def _survive_a_store_kill(echo: Callable[[str], None]) -> tuple[str, str]:
    """SIGKILL the object store under a pipeline and get the right answer anyway; the ids to look at."""
    t0 = time.perf_counter()
    blocks = [_block.remote(i) for i in range(BLOCKS)]
    ember.wait(blocks, num_returns=BLOCKS)  # every block sits in the store now
    store = ember.chaos.Target.STORE
    injected = ember.chaos.inject(ember.chaos.Fault.kill(store))
    if injected.pid is None:
        raise ember.exceptions.EmberInternalError(f"the demo could not kill the object store: {injected.detail}")
    deadline = time.monotonic() + STORE_RESTART_WAIT_S
    while ember.chaos.live_pids(store) in (None, [], [injected.pid]) and time.monotonic() < deadline:
        time.sleep(0.02)
    total_ref = _total.remote(*blocks)  # its inputs died with the store
    total = ember.get(total_ref)
    expected = float(sum(i * BLOCK_FLOATS for i in range(BLOCKS)))
    assert total == expected, (total, expected)
    with open_log() as log:  # the attempts are durable: get waited for the total's lineage
        rebuilt = sum(log.task(ref.task_id().hex()).rebuilt > 0 for ref in blocks)
    echo(f"SIGKILLed the object store (pid {injected.pid}) holding {BLOCKS} results: {rebuilt} rebuilt "
         f"from lineage, total {total:,.0f} is right, in {time.perf_counter() - t0:.2f}s")
    return total_ref.hex(), blocks[0].task_id().hex()
