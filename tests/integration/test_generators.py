"""Generator tasks and methods: streaming values read while the task runs, num_returns=k, and their lineage.

Every wait is bounded; every kill is by pid, of a worker this module's cluster started.
"""

from __future__ import annotations

import asyncio
import os
import signal

import numpy as np
import psycopg
import pytest

import ember
from ember.exceptions import GetTimeoutError, InvalidOptionError
from ember.scheduler import ObjectRef
from ember.scheduler._spec import item_id
from tests.fix_kill import kill_and_wait_for_the_next, wait_gone

BOUND_S = 60.0
ARRAY_LEN = 200_000  # 1.6 MB: a value that lives in the store


@ember.remote
def count_up(n: int):
    for i in range(n):
        yield i * 10


@ember.remote
def paced(gate_dir: str, n: int):
    """Yields value i only once the file ``gate_dir/i`` exists: the test decides when each is made."""
    import time

    for i in range(n):
        path = os.path.join(gate_dir, str(i))
        for _ in range(6000):  # 60 s at most
            if os.path.exists(path):
                break
            time.sleep(0.01)
        yield (i, os.getpid())


@ember.remote
def fails_after(k: int):
    for i in range(k):
        yield i
    raise KeyError("stream broke")


@ember.remote(num_returns=3)
def exactly_three():
    yield "a"
    yield "b"
    yield "c"


@ember.remote(num_returns=2)
def too_many():
    yield 1
    yield 2
    yield 3


@ember.remote(max_retries=2)
def arrays(n: int, runs_file: str):
    with open(runs_file, "a") as f:
        f.write("run\n")  # one line per run of the generator
    for i in range(n):
        yield np.full(ARRAY_LEN, i, dtype=np.int64)


@ember.remote
class Streamer:
    def __init__(self) -> None:
        self.made = 0

    def numbers(self, k: int):
        for _ in range(k):
            self.made += 1
            yield self.made

    def total(self) -> int:
        return self.made


@ember.remote
class AsyncStreamer:
    async def ticks(self, k: int):
        for i in range(k):
            await asyncio.sleep(0.001)
            yield i

    async def other(self) -> str:
        return "other"


def _open(gate_dir, i: int) -> None:
    open(os.path.join(gate_dir, str(i)), "w").close()


def test_a_generator_task_streams_its_values_in_order(fault_cluster):
    gen = count_up.remote(5)
    assert isinstance(gen, ember.ObjectRefGenerator)
    assert [ember.get(ref, timeout=BOUND_S) for ref in gen] == [0, 10, 20, 30, 40]
    assert ember.get(gen.completed(), timeout=BOUND_S) == 5
    assert list(count_up.remote(0)) == []


def test_each_value_is_read_while_the_task_still_runs(fault_cluster, tmp_path):
    gen = paced.remote(str(tmp_path), 3)
    _open(tmp_path, 0)
    first = next(gen)
    assert ember.get(first, timeout=BOUND_S)[0] == 0
    # Value 1 is not made until its gate opens: wait sees the generator not ready, the task still running.
    assert ember.wait([gen], timeout=0.3) == ([], [gen])
    assert ember.wait([gen.completed()], timeout=0.1)[0] == []
    _open(tmp_path, 1)
    assert ember.wait([gen], timeout=BOUND_S)[0] == [gen]
    assert ember.get(next(gen), timeout=BOUND_S)[0] == 1
    with pytest.raises(GetTimeoutError):
        gen._next(0.2)  # bounded: value 2 is not made yet
    _open(tmp_path, 2)
    assert [ember.get(r, timeout=BOUND_S)[0] for r in gen] == [2]


def test_an_exception_mid_stream_surfaces_at_the_next_ref(fault_cluster):
    refs = list(fails_after.remote(2))
    assert len(refs) == 3
    assert ember.get(refs[:2], timeout=BOUND_S) == [0, 1]
    with pytest.raises(KeyError, match="stream broke"):
        ember.get(refs[2], timeout=BOUND_S)


def test_num_returns_k_gives_exactly_k_refs_and_names_both_counts(fault_cluster):
    assert ember.get(exactly_three.remote(), timeout=BOUND_S) == ["a", "b", "c"]
    # As in Ray, a value past the k-th does not undo the k made: the error is only written to stderr.
    assert ember.get(too_many.remote(), timeout=BOUND_S) == [1, 2]
    with pytest.raises(ValueError, match="declares num_returns=3 but its generator yielded 1 values"):
        ember.get(count_up.options(num_returns=3).remote(1)[2], timeout=BOUND_S)
    with pytest.raises(ValueError, match="declares num_returns=2 but returned 3 values"):
        ember.get(plus_one_list.options(num_returns=2).remote(), timeout=BOUND_S)
    with pytest.raises(InvalidOptionError, match="needs a generator function"):
        plus_one.options(num_returns="dynamic")


@ember.remote
def plus_one_list():
    return [1, 2, 3]


@ember.remote(max_retries=1, retry_exceptions=True)
def counted_fails_after(k: int, runs_file: str):
    with open(runs_file, "a") as f:
        f.write("run\n")
    yield from range(k)
    raise KeyError("broke partway")


def test_a_num_returns_k_generator_keeps_the_values_it_yielded_before_it_raised(fault_cluster, tmp_path):
    # Ray's generator.py example: the values before the exception are kept, the rest are the error.
    refs = fails_after.options(num_returns=4).remote(2)
    assert ember.get(refs[:2], timeout=BOUND_S) == [0, 1]
    for ref in refs[2:]:
        with pytest.raises(KeyError, match="stream broke"):
            ember.get(ref, timeout=BOUND_S)
    # Raising after all k values were made keeps them all.
    assert ember.get(fails_after.options(num_returns=2).remote(2), timeout=BOUND_S) == [0, 1]
    # A partly failed run is a failed run: retry_exceptions runs it again, and its last outcome stands.
    runs_file = str(tmp_path / "runs")
    first, second, third = counted_fails_after.options(num_returns=3).remote(1, runs_file)
    assert ember.get(first, timeout=BOUND_S) == 0
    with pytest.raises(KeyError, match="broke partway"):
        ember.get(third, timeout=BOUND_S)
    assert (tmp_path / "runs").read_text().count("run") == 2


def test_actor_methods_stream_too_and_async_for_reads_them(fault_cluster):
    streamer = Streamer.remote()
    assert [ember.get(r, timeout=BOUND_S) for r in streamer.numbers.remote(3)] == [1, 2, 3]
    assert [ember.get(r, timeout=BOUND_S) for r in streamer.numbers.remote(2)] == [4, 5]
    assert ember.get(streamer.total.remote(), timeout=BOUND_S) == 5
    ticker = AsyncStreamer.remote()

    async def read_all():
        return [await ref async for ref in ticker.ticks.remote(4)]

    assert asyncio.run(asyncio.wait_for(read_all(), BOUND_S)) == [0, 1, 2, 3]
    assert ember.get(ticker.other.remote(), timeout=BOUND_S) == "other"


def _rows(session, task_id: bytes) -> list[tuple[bytes, int]]:
    from ember.scheduler._session import log_conninfo

    with psycopg.connect(log_conninfo(session)) as conn:
        return [(bytes(r[0]), r[1]) for r in conn.execute(
            "SELECT object_id, size FROM objects WHERE task_id = %s ORDER BY object_id", (task_id,))]


def test_values_are_logged_by_index_before_they_are_read(fault_cluster):
    gen = count_up.remote(3)
    refs = list(gen)
    ember.get(refs, timeout=BOUND_S)
    ember.get(gen.completed(), timeout=BOUND_S)
    ids = [oid for oid, _ in _rows(fault_cluster, gen.task_id().binary())]
    assert ids == [gen.completed().binary()] + [r.binary() for r in refs]  # the end (index 1), then each value


def test_a_worker_killed_mid_stream_runs_it_again_and_delivers_each_value_once(fault_cluster, tmp_path):
    gen = paced.options(max_retries=1).remote(str(tmp_path), 4)
    _open(tmp_path, 0)
    _open(tmp_path, 1)
    first = [next(gen), next(gen)]
    values = ember.get(first, timeout=BOUND_S)
    pid = values[0][1]
    os.kill(pid, signal.SIGKILL)
    wait_gone(pid)
    _open(tmp_path, 2)
    _open(tmp_path, 3)
    rest = ember.get(list(gen), timeout=BOUND_S)
    assert [v[0] for v in values + rest] == [0, 1, 2, 3]
    assert rest[0][1] != pid  # made by the second attempt
    assert ember.get(first, timeout=BOUND_S) == values  # the first attempt's values, not published again


def test_a_lost_yielded_value_is_rebuilt_by_running_the_generator_again(fault_cluster, tmp_path):
    runs_file = str(tmp_path / "runs")
    gen = arrays.remote(3, runs_file)
    refs = list(gen)
    assert [int(ember.get(r, timeout=BOUND_S)[0]) for r in refs] == [0, 1, 2]
    kill_and_wait_for_the_next("store")  # the node restarts it empty
    rebuilt = ember.get(refs[1], timeout=BOUND_S)
    assert rebuilt.shape == (ARRAY_LEN,) and int(rebuilt[0]) == 1 and int(rebuilt[-1]) == 1
    assert (tmp_path / "runs").read_text().count("run") == 2  # the generator ran again, once


def test_a_generator_cannot_travel_to_another_process(fault_cluster):
    gen = count_up.remote(1)
    with pytest.raises(TypeError, match="cannot be passed to another process"):
        ember.put(gen)
    assert len(list(gen)) == 1


def test_replay_runs_a_generator_task_again_and_compares_each_value(fault_cluster):
    from ember.lineage import Verdict, replay_task

    gen = count_up.remote(4)
    assert ember.get(list(gen), timeout=BOUND_S) == [0, 10, 20, 30]
    assert ember.get(gen.completed(), timeout=BOUND_S) == 4
    result = replay_task(gen.task_id().hex())
    assert result.verdict is Verdict.MATCHES, result
    assert result.values == (4, 0, 10, 20, 30)  # its end (how many), then each value


@ember.remote
def plus_one(array):
    return array + 1  # as large as its input: it lives in the store too


def test_a_task_over_a_lost_yielded_value_is_rebuilt_after_the_generator_runs_again(fault_cluster, tmp_path):
    gen = arrays.remote(2, str(tmp_path / "runs"))
    refs = list(gen)
    after = plus_one.remote(refs[1])
    assert int(ember.get(after, timeout=BOUND_S)[0]) == 2
    kill_and_wait_for_the_next("store")  # both the value and the task's result are lost
    # Rebuilding ``after`` waits for its input, which only a second run of the generator makes.
    assert int(ember.get(after, timeout=BOUND_S)[-1]) == 2
    assert (tmp_path / "runs").read_text().count("run") == 2


# -- num_returns="dynamic": Ray's older generators, one ref to the refs of every value --------------


@ember.remote
class DynamicStreamer:
    def __init__(self) -> None:
        self.made = 0

    @ember.method(num_returns="dynamic")
    def numbers(self, k: int):
        for _ in range(k):
            self.made += 1
            yield self.made


@ember.remote
def sum_of(generator) -> int:
    return sum(ember.get(list(generator), timeout=BOUND_S))


def test_a_dynamic_generator_returns_one_ref_to_the_refs_of_its_values(fault_cluster):
    from ember.scheduler import DynamicObjectRefGenerator

    ref = count_up.options(num_returns="dynamic").remote(3)
    assert isinstance(ref, ObjectRef)
    values = ember.get(ref, timeout=BOUND_S)
    assert isinstance(values, DynamicObjectRefGenerator) and len(values) == 3
    assert ember.get(list(values), timeout=BOUND_S) == [0, 10, 20]
    assert ember.get(sum_of.remote(values), timeout=BOUND_S) == 30  # it travels, with its refs
    actor = DynamicStreamer.remote()
    assert ember.get(list(ember.get(actor.numbers.remote(2), timeout=BOUND_S)), timeout=BOUND_S) == [1, 2]
    with pytest.raises(InvalidOptionError, match="decorating the method"):
        actor.numbers.options(num_returns="streaming")


@ember.remote
def sum_asking_once(generator) -> int:
    from ember.scheduler._owner import _waiting

    before = _waiting.ASK_OWNERS_AFTER_S
    _waiting.ASK_OWNERS_AFTER_S = 1e9  # no periodic asking: the first question must bring the values
    try:
        return sum(ember.get(list(generator), timeout=BOUND_S))
    finally:
        _waiting.ASK_OWNERS_AFTER_S = before


def test_a_task_given_a_dynamic_generators_ref_reads_values_its_owner_never_passed_on(fault_cluster):
    # The values came inline to the driver, which never pickled their refs (the generator's worker did,
    # into its end object): a task reading them must ask the driver for them when it first misses them.
    ref = count_up.options(num_returns="dynamic").remote(3)
    assert len(ember.get(ref, timeout=BOUND_S)) == 3
    assert ember.get(sum_asking_once.remote(ref), timeout=2 * BOUND_S) == 30


def test_a_dynamic_generator_got_twice_gives_its_values_twice_from_one_run(fault_cluster, tmp_path):
    # Its values stay while its end is held, though the first generator got from it (and every ref
    # that one made) is gone: a second get names them again. This used to wait forever.
    runs_file = str(tmp_path / "runs")
    ref = arrays.options(num_returns="dynamic").remote(2, runs_file)
    first = [int(a[-1]) for a in ember.get(list(ember.get(ref, timeout=BOUND_S)), timeout=BOUND_S)]
    second = [int(a[-1]) for a in ember.get(list(ember.get(ref, timeout=BOUND_S)), timeout=BOUND_S)]
    assert first == second
    assert (tmp_path / "runs").read_text().count("run") == 1
    small = count_up.options(num_returns="dynamic").remote(3)  # values inline here, not in the store
    for _ in range(2):
        assert ember.get(list(ember.get(small, timeout=BOUND_S)), timeout=BOUND_S) == [0, 10, 20]


def test_an_exception_in_a_dynamic_generator_is_its_last_value(fault_cluster):
    # Ray's generator.py: "Generators with num_returns="dynamic" will store the exception in the final
    # ObjectRef"; the values before it are kept.
    first, second, last = ember.get(fails_after.options(num_returns="dynamic").remote(2), timeout=BOUND_S)
    assert ember.get([first, second], timeout=BOUND_S) == [0, 1]
    with pytest.raises(KeyError, match="stream broke"):
        ember.get(last, timeout=BOUND_S)
    only, = ember.get(fails_after.options(num_returns="dynamic").remote(0), timeout=BOUND_S)
    with pytest.raises(KeyError, match="stream broke"):
        ember.get(only, timeout=BOUND_S)


def test_values_of_a_dynamic_generator_nobody_holds_are_freed(fault_cluster):
    from ember.scheduler import _context

    entries = _context.PROCESS.owner._objects
    ref = count_up.options(num_returns="dynamic").remote(3)
    kept = list(ember.get(ref, timeout=BOUND_S))[1]  # one value's ref outlives the rest
    task_id = ref.task_id().binary()
    del ref
    assert [item_id(task_id, i) in entries for i in range(3)] == [False, True, False]
    assert ember.get(kept, timeout=BOUND_S) == 10


def test_a_lost_value_of_a_dynamic_generator_is_rebuilt(fault_cluster, tmp_path):
    runs_file = str(tmp_path / "runs")
    refs = list(ember.get(arrays.options(num_returns="dynamic").remote(2, runs_file), timeout=BOUND_S))
    kill_and_wait_for_the_next("store")  # the node restarts it empty
    assert int(ember.get(refs[1], timeout=BOUND_S)[-1]) == 1
    assert (tmp_path / "runs").read_text().count("run") == 2  # the generator ran again, once


def test_replay_of_a_dynamic_generator_matches_its_end_and_each_value(fault_cluster):
    from ember.lineage import Verdict, replay_task

    ref = count_up.options(num_returns="dynamic").remote(3)
    assert ember.get(list(ember.get(ref, timeout=BOUND_S)), timeout=BOUND_S) == [0, 10, 20]
    result = replay_task(ref.task_id().hex())
    assert result.verdict is Verdict.MATCHES, result
    assert list(result.values[0]) == [ObjectRef(item_id(ref.task_id().binary(), i), ref._owner) for i in range(3)]
    assert result.values[1:] == (0, 10, 20)
