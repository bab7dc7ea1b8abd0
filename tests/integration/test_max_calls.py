"""``max_calls``: a worker runs a function at most that many times, then retires (Ray's option).

Tasks report their worker's pid. A retiring worker hands back what was queued
on it, so no task fails or spends a retry for it (``max_retries=0`` here).
"""

from __future__ import annotations

import os
from collections import Counter

import pytest

import ember
from ember.exceptions import InvalidOptionError

BOUND_S = 60.0


@pytest.fixture(scope="module", autouse=True)
def _cluster(cluster):
    yield


@ember.remote(max_retries=0)
def pid(_=None):
    return os.getpid()


def _sequential(fn, n):
    return [ember.get(fn.remote(), timeout=BOUND_S) for _ in range(n)]


def test_max_calls_one_runs_each_call_in_a_fresh_worker():
    pids = _sequential(pid.options(max_calls=1), 5)
    assert len(set(pids)) == 5


def test_max_calls_two_reuses_a_worker_at_most_twice():
    counts = Counter(_sequential(pid.options(max_calls=2), 6))
    assert max(counts.values()) <= 2


def test_without_max_calls_workers_are_reused():
    counts = Counter(_sequential(pid, 6))
    assert max(counts.values()) > 1


def test_many_at_once_none_fails_for_a_retiring_worker():
    limited = pid.options(max_calls=1)
    pids = ember.get([limited.remote(i) for i in range(24)], timeout=BOUND_S)
    assert len(set(pids)) == 24  # queued behind a retiring worker, they went back and ran elsewhere


def test_a_gpu_task_retires_its_worker_by_default_as_in_ray():
    gpu = pid.options(num_gpus=1)
    assert len(set(_sequential(gpu, 3))) == 3
    assert Counter(_sequential(gpu.options(max_calls=0), 4)).most_common(1)[0][1] > 1  # 0: no limit


def test_max_calls_is_checked():
    for bad in (-1, 1.5, "2", True):
        with pytest.raises(InvalidOptionError, match="max_calls"):
            pid.options(max_calls=bad)
