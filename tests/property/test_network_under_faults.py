"""Network faults mixed with process kills on three nodes in namespaces, against a fault-free model.

Hypothesis draws the seeds of plans (``tests/chaos/network_soak.py``):
partitions of a node from the GCS, PostgreSQL or another node (one way or
both), packet loss, delays where the machine can make them (netem or NFQUEUE), and SIGKILLs of
workers and stores, while chains of tasks over store-sized arrays and calls
on two restartable actors run. Every value must equal the model's, every
``get`` return in its bound, nothing be lost, and once the faults heal every
actor must have exactly one live process. The explicit example (seed 0) holds a cut from
the GCS longer than the owners' 15 s, so tasks and actors really move and
the heal really fences. The ci profile runs two plans; the
10-minute soak is ``python tests/chaos/network_soak.py --seconds 600``.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from ember.chaos import LocalCluster
from tests.chaos.network_soak import NODES, Tally, connected, draw_plan, delay_available, run_plan

STEPS = 4


@pytest.fixture(scope="module")
def net_cluster() -> Iterator[LocalCluster]:
    with connected(NODES) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def delay() -> bool:
    return delay_available()


@settings(max_examples=1, derandomize=True, deadline=None)
@given(seed=st.integers(min_value=0, max_value=2 ** 32))
@example(seed=0)  # a long cut from the GCS: tasks and actors move, the heal fences
def test_values_and_actors_survive_network_faults_and_kills(net_cluster: LocalCluster, delay: bool,
                                                            seed: int) -> None:
    tally = Tally()
    run_plan(net_cluster, draw_plan(seed, STEPS, long_cut=seed % 2 == 0, delay=delay), tally)
    assert not tally.failures, f"{tally.line()}\n" + "\n".join(tally.failures)
    assert tally.operations_checked > 0 and sum(tally.faults.values()) > 0
