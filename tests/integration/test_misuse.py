"""API misuse gets a typed error that names the problem and the fix (issue 8, point 4).

One test per kind of misuse. Each asserts the error's type (an
``EmberUserError``: the program's fault) and the words of its message a user
needs: what was wrong and what to do instead. The last test shuts the
module's cluster down and starts another, to use a ref of the first.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Iterator

import pytest

import ember
from ember import exceptions as ex
from tests.fix_space import shrink_free_space


@pytest.fixture(scope="module", autouse=True)
def misuse_cluster() -> Iterator[None]:
    ember.init(num_cpus=2, object_store_memory=64 << 20)
    try:
        yield
    finally:
        ember.shutdown()  # whichever cluster the last test left running


@ember.remote
def add_one(x: int) -> int:
    return x + 1


@ember.remote
class Counter:
    def __init__(self) -> None:
        self.n = 0

    def inc(self) -> int:
        self.n += 1
        return self.n


def test_get_of_something_that_is_not_a_ref() -> None:
    with pytest.raises(ex.NotAnObjectRefError, match=r"expects an ObjectRef .* got a int.*ember\.put"):
        ember.get(5)
    with pytest.raises(ex.NotAnObjectRefError, match=r"item 1 is a str"):
        ember.get([add_one.remote(1), "two"])
    with pytest.raises(ex.NotAnObjectRefError, match=r"call \.remote\(\.\.\.\) on it first"):
        ember.get(add_one)
    with pytest.raises(ex.NotAnObjectRefError, match=r"wrap a single ref in a list"):
        ember.wait(add_one.remote(1))
    error = pytest.raises(ex.NotAnObjectRefError, ember.get, {"a": 1}).value
    assert isinstance(error, ex.EmberUserError) and isinstance(error, TypeError)  # Ray code catching TypeError


def test_calling_a_remote_function_directly() -> None:
    with pytest.raises(ex.EmberUserError, match=r"cannot be called directly; use add_one\.remote\(\.\.\.\)"):
        add_one(1)
    with pytest.raises(ex.EmberUserError, match=r"Counter\.remote"):
        Counter()


def test_actor_method_without_remote() -> None:
    counter = Counter.remote()
    with pytest.raises(ex.EmberUserError, match=r"cannot be called directly; use actor\.inc\.remote\(\.\.\.\)"):
        counter.inc()
    with pytest.raises(AttributeError, match="no method"):
        counter.dec.remote()
    assert ember.get(counter.inc.remote()) == 1  # the misuse changed nothing


def test_unknown_or_ill_typed_options() -> None:
    with pytest.raises(ex.InvalidOptionError, match=r"unknown option 'num_cpu'.*valid options are:.*num_cpus"):
        add_one.options(num_cpu=1)
    with pytest.raises(ex.InvalidOptionError, match=r"num_cpus must be a number >= 0, got 'two' \(type=str\)"):
        add_one.options(num_cpus="two")
    with pytest.raises(ex.InvalidOptionError, match=r"max_restarts must be an integer"):
        Counter.options(max_restarts=1.5)
    with pytest.raises(ex.InvalidOptionError, match=r"unknown option 'max_restarts' for a remote method"):
        Counter.remote().inc.options(max_restarts=2)
    with pytest.raises(ex.InvalidOptionError, match=r"unknown init option\(s\) \['num_cpu'\]"):
        ember.init(num_cpu=2)
    with pytest.raises(ex.InvalidOptionError, match=r"num_cpus must be a number >= 0, got -1"):
        ember.init(num_cpus=-1)  # checked before "already initialized"
    with pytest.raises(ex.InvalidOptionError, match=r"object_store_memory must be an integer"):
        ember.init(object_store_memory="1GB")


def test_resources_no_node_has() -> None:
    # As in Ray, .remote() returns; on a cluster no node can join, get says why at once (issue 19).
    gpus = add_one.options(num_gpus=4).remote(1)
    with pytest.raises(ex.InfeasibleResourceError, match=r"can never give \{'GPU': 4\.0\}.*ember\.init\(num_cpus=N, num_gpus=N"):
        ember.get(gpus)
    counter = Counter.options(resources={"tpu": 1}).remote()
    with pytest.raises(ex.InfeasibleResourceError, match=r"actor Counter is dead: it cannot start: it asks for \{'tpu': 1\.0\}"):
        ember.get(counter.inc.remote())
    cpus = add_one.options(num_cpus=64).remote(1)
    with pytest.raises(ex.InfeasibleResourceError, match=r"asks for \{'CPU': 64\.0\}.*Lower the request"):
        ember.get(cpus)
    assert ember.get(add_one.remote(1)) == 2  # nothing was queued forever


def test_object_larger_than_memory_and_disk(monkeypatch: pytest.MonkeyPatch) -> None:
    # The operating system reports 1 MiB free in shared memory and on the
    # spill disk; the put is refused before a byte is written.
    session = ember._runtime._session
    shm_dir, spill_dir = session.shm_dir, session.spill_dir
    shrink_free_space(monkeypatch, {shm_dir: 1 << 20, spill_dir: 1 << 20})
    before = set(os.listdir(shm_dir)) | set(os.listdir(spill_dir))
    with pytest.raises(ex.ObjectTooLargeError, match=r"4,194,\d+ bytes fits neither in shared memory .* "
                       r"nor on the spill disk .* Split it into smaller objects"):
        ember.put(b"x" * (4 << 20))
    assert set(os.listdir(shm_dir)) | set(os.listdir(spill_dir)) == before
    monkeypatch.undo()
    assert len(ember.get(ember.put(b"x" * (4 << 20)))) == 4 << 20  # with room, the same put works


def test_ref_from_another_cluster() -> None:
    small, large = ember.put(41), ember.put(b"y" * (1 << 20))
    blob = pickle.dumps([small, large, add_one.remote(1)])
    ember.shutdown()
    ember.init(num_cpus=2)
    refs = pickle.loads(blob)
    for ref in refs:
        # Raised at once: a hang would end in GetTimeoutError after 30 s.
        with pytest.raises(ex.ForeignObjectRefError, match=r"belongs to another ember cluster session.*"
                           r"do not outlive ember\.shutdown\(\)"):
            ember.get(ref, timeout=30)
    with pytest.raises(ex.ForeignObjectRefError):
        ember.wait(refs[:1])
    with pytest.raises(ex.ForeignObjectRefError):
        add_one.remote(refs[0])  # as a task's argument
    assert ember.get(add_one.remote(41)) == 42
