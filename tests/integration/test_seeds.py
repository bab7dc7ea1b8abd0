"""Every code example of ../shared/seeds/, run with ``import ember as ray``.

The examples are copied as the texts give them; only sleeps are shortened
where noted and ``ray.init`` is given the resources the text assumes
(ten workers, a GPU per pan).
"""

import time

import numpy as np
import pytest

import ember as ray


@pytest.fixture(scope="module", autouse=True)
def seeds_cluster():
    ray.init(num_workers=10, num_gpus=10)  # the tutorial's ray.init(num_workers=10); GPUs for the pans
    yield
    ray.shutdown()


def test_announcement_parallel_sleeps():
    @ray.remote
    def f():
        time.sleep(1)

    ray.get([f.remote() for _ in range(3)])  # warm the ten workers
    start = time.perf_counter()
    ray.get([f.remote() for _ in range(10)])
    elapsed = time.perf_counter() - start
    print(f"ten sleep(1) tasks on ten workers: {elapsed:.2f}s")  # about a second; not asserted


def test_announcement_weights_put_get():
    weights = {"Variable{}".format(i): np.random.normal(size=5000000) for i in range(10)}
    weights_id = ray.put(weights)
    new_weights = ray.get(weights_id)
    assert new_weights.keys() == weights.keys()
    for key in weights:
        assert np.array_equal(new_weights[key], weights[key])
        assert not new_weights[key].flags.writeable  # a view onto shared memory


def test_announcement_aggregate_data():
    @ray.remote
    def aggregate_data(x, y):
        return x + y

    data = list(range(100))  # the text's range(100) is a list in Python 2, where it was written
    while len(data) > 1:
        intermediate_result = aggregate_data.remote(data[0], data[1])
        data = data[2:] + [intermediate_result]
    result = ray.get(data[0])
    assert result == sum(range(100))


def test_announcement_simulator_actor():
    class Env:  # gym is not installed; a stand-in environment with the same calls
        def __init__(self):
            self.t = 0

        def reset(self):
            self.t = 0

        def step(self, action):
            self.t += 1
            return self.t, action

    @ray.remote
    class Simulator(object):
        def __init__(self):
            self.env = Env()
            self.env.reset()

        def step(self, action):
            return self.env.step(action)

    simulator = Simulator.remote()
    observations = []
    for _ in range(10):
        observations.append(simulator.step.remote(0))
    assert ray.get(observations) == [(i, 0) for i in range(1, 11)]


@ray.remote
class ParameterServer(object):
    def __init__(self, dim):
        self.params = np.zeros(dim)

    def get_params(self):
        return self.params

    def update_params(self, grad):
        self.params += grad


def test_introduction_parameter_server():
    ps = ParameterServer.remote(10)
    assert "ParameterServer" in repr(ps)
    params_id = ps.get_params.remote()
    assert np.array_equal(ray.get(params_id), np.zeros(10))

    @ray.remote
    def worker(ps):
        for _ in range(100):
            params_id = ps.get_params.remote()
            params = ray.get(params_id)
            grad = np.ones(10)
            time.sleep(0.002)  # the text sleeps 0.2s
            ps.update_params.remote(grad)

    done = [worker.remote(ps) for _ in range(2)]
    ray.get(done)
    assert np.array_equal(ray.get(ps.get_params.remote()), np.full(10, 200.0))


def test_introduction_sharded_parameter_servers():
    @ray.remote
    def sharded_worker(*parameter_servers):
        for _ in range(100):
            parameter_shards = ray.get([ps.get_params.remote() for ps in parameter_servers])
            params = np.concatenate(parameter_shards)
            grad = np.ones(10)
            time.sleep(0.002)  # the text sleeps 0.2s
            grad_shards = np.split(grad, len(parameter_servers))
            for ps, grad in zip(parameter_servers, grad_shards):
                ps.update_params.remote(grad)

    parameter_servers = [ParameterServer.remote(5) for _ in range(2)]
    workers = [sharded_worker.remote(*parameter_servers) for _ in range(2)]
    deadline = time.monotonic() + 120
    while True:
        time.sleep(0.1)  # the text sleeps 1s
        results = ray.get([ps.get_params.remote() for ps in parameter_servers])
        if results[0][0] >= 200:
            break
        assert time.monotonic() < deadline, f"parameters stuck at {results}"
    ray.get(workers)
    results = ray.get([ps.get_params.remote() for ps in parameter_servers])
    assert all(np.array_equal(r, np.full(5, 200.0)) for r in results)


def test_paper_review_squares():
    @ray.remote
    def f(x):
        return x * x

    futures = [f.remote(i) for i in range(4)]
    assert ray.get(futures) == [0, 1, 4, 9]


def test_tutorial_objects():
    x = [1, 2, 3]
    assert "ObjectRef" in repr(ray.put(x))
    x_id = ray.put([1, 2, 3])
    assert ray.get(x_id) == [1, 2, 3]
    result_ids = [ray.put(i) for i in range(10)]
    assert ray.get(result_ids) == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]


def test_tutorial_tasks():
    @ray.remote
    def add2(a, b):
        return a + b

    x_id = add2.remote(1, 2)
    assert ray.get(x_id) == 3
    assert ray.get([add2.remote(1, 2), add2.remote(1, ray.put(2)), add2.remote(ray.put(1), ray.put(2))]) == [3, 3, 3]

    @ray.remote(num_return_vals=3)
    def return_multiple():
        return 1, 2, 3

    a_id, b_id, c_id = return_multiple.remote()
    assert ray.get([a_id, b_id, c_id]) == [1, 2, 3]

    @ray.remote
    def f(x):
        return x + 1

    x = f.remote(0)
    y = f.remote(x)
    z = f.remote(y)
    assert ray.get(z) == 3


def test_tutorial_tree_reduce():
    @ray.remote
    def generate_data():
        return np.random.normal(size=1000)

    @ray.remote
    def aggregate_data(x, y):
        return x + y

    data = [generate_data.remote() for _ in range(100)]
    while len(data) > 1:
        data.append(aggregate_data.remote(data.pop(0), data.pop(0)))
    (result,) = ray.get(data)
    assert result.shape == (1000,)


def test_tutorial_nested_experiments():
    @ray.remote
    def sub_experiment(i, j):
        return i + j

    @ray.remote
    def run_experiment(i):
        sub_results = []
        for j in range(10):
            sub_results.append(sub_experiment.remote(i, j))
        return sum(ray.get(sub_results))

    results = [run_experiment.remote(i) for i in range(5)]
    assert ray.get(results) == [45, 55, 65, 75, 85]


def test_burrow_pans():
    @ray.remote(num_gpus=1)
    class Pan(object):
        def __init__(self):
            self.temperature = 0

        def fervere(self):
            self.temperature += 10
            return self.temperature

    pans = [Pan.remote() for _ in range(10)]
    cast_fervere_on_all_pans = ray.get([pan.fervere.remote() for pan in pans])
    assert cast_fervere_on_all_pans == [10, 10, 10, 10, 10, 10, 10, 10, 10, 10]
    # The text prints [10, 20, ...] as if on a fresh pan; on pans[0], already at 10, the
    # same five spells give [20, ..., 60]. Both readings are checked.
    cast_ferevere_on_one_pan = ray.get([pans[0].fervere.remote() for _ in range(5)])
    assert cast_ferevere_on_one_pan == [20, 30, 40, 50, 60]
    for pan in pans:
        ray.kill(pan)
    fresh = Pan.remote()
    assert ray.get([fresh.fervere.remote() for _ in range(5)]) == [10, 20, 30, 40, 50]
