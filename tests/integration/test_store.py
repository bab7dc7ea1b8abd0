"""The object store under memory pressure, and objects shared between processes."""

import numpy as np

import ember
from ember.scheduler import Op, require_core


def _store_stats():
    return require_core().store.call(Op.STORE_STATS, timeout_s=10)


def test_full_store_spills_to_disk_instead_of_failing():
    ember.init(num_cpus=2, object_store_memory=60 * 1024 * 1024)
    try:
        arrays = [np.full(2_500_000, i, dtype=np.float64) for i in range(6)]  # 20 MB each
        refs = [ember.put(a) for a in arrays]
        stats = _store_stats()
        assert stats["spilled"] >= 1, stats
        for i, ref in enumerate(refs):
            got = ember.get(ref)
            assert got[0] == i and got[-1] == i

        @ember.remote
        def total(a):
            return float(a.sum())

        assert ember.get([total.remote(r) for r in refs]) == [2_500_000.0 * i for i in range(6)]
    finally:
        ember.shutdown()


def test_dropped_refs_free_store_memory():
    ember.init(num_cpus=1)
    try:
        ref = ember.put(np.zeros(5_000_000))
        assert _store_stats()["objects"] == 1
        del ref
        assert _store_stats()["freed"] == 1
    finally:
        ember.shutdown()
