"""``ember demo``: a short workload on a fresh local cluster that shows what ember does."""

from __future__ import annotations

import time
from collections.abc import Callable

import ember


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
    finally:
        ember.shutdown()
    echo(f"demo finished in {time.perf_counter() - started:.2f}s; cluster stopped")
    return 0
