"""The DAG API of Ray's "Lazy Computation Graphs" page: bind, InputNode, MultiOutputNode, execute.

Ray's own examples run verbatim under ``import ember as ray``; a graph's nodes
are in the lineage log as the tasks they became, with the edges between them.
"""

from __future__ import annotations

import pytest

import ember
import ember as ray
from ember.dag import InputNode, MultiOutputNode

BOUND_S = 60.0


@pytest.fixture(scope="module", autouse=True)
def _cluster(fault_cluster):
    yield


@ray.remote
def func(src, inc=1):
    return src + inc


@ray.remote
class Actor:
    def __init__(self, init_value):
        self.i = init_value

    def inc(self, x):
        self.i += x

    def get(self):
        return self.i


@ray.remote
def combine(x, y):
    return x + y


def test_rays_task_example():
    a_ref = func.bind(1, inc=2)
    assert ray.get(a_ref.execute(), timeout=BOUND_S) == 3
    b_ref = func.bind(a_ref, inc=3)
    assert ray.get(b_ref.execute(), timeout=BOUND_S) == 6
    c_ref = func.bind(b_ref, inc=a_ref)
    assert ray.get(c_ref.execute(), timeout=BOUND_S) == 9


def test_rays_actor_example_runs_calls_bound_on_a_class_node_in_order():
    a1 = Actor.bind(10)
    val = a1.get.bind()
    assert ray.get(val.execute(), timeout=BOUND_S) == 10
    a2 = Actor.bind(10)
    a1.inc.bind(2)
    a1.inc.bind(4)
    a2.inc.bind(6)
    dag = combine.bind(a1.get.bind(), a2.get.bind())
    assert ray.get(dag.execute(), timeout=BOUND_S) == 32  # 10 + 2 + 4 and 10 + 6


def test_rays_input_node_example_and_a_fresh_run_per_execute():
    @ray.remote
    def a(user_input):
        return user_input * 2

    @ray.remote
    def b(user_input):
        return user_input + 1

    @ray.remote
    def c(x, y):
        return x + y

    with InputNode() as dag_input:
        dag = c.bind(a.bind(dag_input), b.bind(dag_input))
    assert ray.get(dag.execute(2), timeout=BOUND_S) == 7
    assert ray.get(dag.execute(3), timeout=BOUND_S) == 10


def test_input_parts_multi_output_and_a_class_node_executed_alone():
    @ray.remote
    class Model:
        def __init__(self, weight):
            self.weight = weight

        def forward(self, x):
            return self.weight * x

    with InputNode() as inp:
        m1, m2 = Model.bind(1), Model.bind(2)
        dag = combine.bind(m1.forward.bind(inp[0]), m2.forward.bind(inp.x))
        both = MultiOutputNode([func.bind(inp[0]), func.bind(inp.x)])
    assert ray.get(dag.execute(1, x=2), timeout=BOUND_S) == 5
    assert ray.get(both.execute(1, x=10), timeout=BOUND_S) == [2, 11]
    with InputNode() as inp:
        from_list = func.bind(inp[1])
        from_dict = func.bind(inp["k"])
    assert ray.get(from_list.execute([5, 6]), timeout=BOUND_S) == 7
    assert ray.get(from_dict.execute({"k": 1}), timeout=BOUND_S) == 2
    handle = Model.bind(4).execute()
    assert isinstance(handle, ember.ActorHandle)
    assert ray.get(handle.forward.remote(2), timeout=BOUND_S) == 8
    live = Model.remote(3)
    assert ray.get(live.forward.bind(func.bind(1)).execute(), timeout=BOUND_S) == 6


def test_a_node_read_twice_is_made_once_per_execute():
    @ray.remote
    class Counter:
        def __init__(self):
            self.n = 0

        def inc(self):
            self.n += 1
            return self.n

    counter = Counter.remote()
    shared = counter.inc.bind()
    assert ray.get(MultiOutputNode([func.bind(shared), func.bind(shared)]).execute(), timeout=BOUND_S) == [2, 2]
    assert ray.get(counter.inc.remote(), timeout=BOUND_S) == 2  # one call, not two


def test_misuse_is_the_callers_error():
    inp = InputNode()
    with pytest.raises(ember.exceptions.EmberUserError, match="context manager"):
        inp[0]
    with InputNode() as inp:
        whole = func.bind(inp)
        part = func.bind(inp.missing)
        with pytest.raises(ember.exceptions.EmberUserError, match="nest"):
            with InputNode():
                pass
    with pytest.raises(ember.exceptions.EmberUserError, match="inp\\[index\\]"):
        whole.execute(1, 2)
    with pytest.raises(ember.exceptions.EmberUserError, match="missing"):
        part.execute(1, x=2)
    with pytest.raises(AttributeError, match="no method"):
        Actor.bind(1).nope
    with pytest.raises(TypeError):
        MultiOutputNode([1])


def test_a_graphs_nodes_are_logged_as_the_tasks_they_became():
    first = func.bind(1, inc=2)
    last = func.bind(first, inc=3)
    ref = last.execute()
    assert ray.get(ref, timeout=BOUND_S) == 6
    with ember.lineage.open_log() as log:
        lineage = log.lineage(ref.hex())
    names = sorted(task.function_name for task in lineage.tasks.values())
    assert names == ["func", "func"], names
    assert len(lineage.edges) >= 2  # the first task's result into the second, the second's result out
