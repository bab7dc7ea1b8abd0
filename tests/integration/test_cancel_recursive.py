"""``ember.cancel(ref, recursive=...)``: the tasks a cancelled task submitted are cancelled too, as in Ray.

Tasks here spin until a file appears (or ``BOUND_S`` passes). Each says it
started (with its worker's pid), and how it ended: interrupted (a
cancellation's KeyboardInterrupt), or at its end; a force cancel kills its
worker, which the test sees. The tasks ask for no CPU, so none waits
behind a spinning one on its worker. Every wait is bounded, and the stop
file ends whatever is left.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import psutil
import pytest

import ember
from ember.exceptions import TaskCancelledError
from tests.fix_cluster import poll_until

BOUND_S = 60.0


@pytest.fixture(scope="module", autouse=True)
def _cluster(fault_cluster):
    yield


def _wait_for(path: Path) -> None:
    deadline = time.monotonic() + BOUND_S
    while not path.exists() and time.monotonic() < deadline:
        time.sleep(0.01)


@ember.remote(num_cpus=0, max_retries=0)
def spin(folder: str, name: str) -> str:
    marker = Path(folder, f"started-{name}")
    marker.with_suffix(".tmp").write_text(str(os.getpid()))
    os.replace(marker.with_suffix(".tmp"), marker)  # whole: the test reads it the moment it appears
    try:
        _wait_for(Path(folder, "stop"))
    except KeyboardInterrupt:
        Path(folder, f"interrupted-{name}").touch()
        raise
    Path(folder, f"finished-{name}").touch()
    return name


@ember.remote(num_cpus=0, max_retries=0)
def middle(folder: str, name: str) -> str:
    return ember.get(spin.remote(folder, name))


@ember.remote(num_cpus=0, max_retries=0)
def parent(folder: str) -> list:
    return ember.get([spin.remote(folder, "child"), middle.remote(folder, "grandchild")])


SPINNERS = ("child", "grandchild")


def _started(folder: Path) -> dict[str, int]:
    assert poll_until(lambda: all((folder / f"started-{n}").exists() for n in SPINNERS), BOUND_S), \
        f"not all of {SPINNERS} started: {sorted(p.name for p in folder.iterdir())}"
    return {n: int((folder / f"started-{n}").read_text()) for n in SPINNERS}


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE  # dead, not yet reaped by its scheduler
    except psutil.NoSuchProcess:
        return True


def _ended(folder: Path, how: str) -> set[str]:
    return {n for n in SPINNERS if (folder / f"{how}-{n}").exists()}


def test_cancel_interrupts_the_children_and_grandchildren(tmp_path):
    ref = parent.remote(str(tmp_path))
    _started(tmp_path)
    ember.cancel(ref)
    with pytest.raises(TaskCancelledError):
        ember.get(ref, timeout=BOUND_S)
    assert poll_until(lambda: _ended(tmp_path, "interrupted") == set(SPINNERS), BOUND_S)
    (tmp_path / "stop").touch()
    assert _ended(tmp_path, "finished") == set()


def test_a_force_cancel_kills_the_workers_of_the_children_and_grandchildren(tmp_path):
    ref = parent.remote(str(tmp_path))
    pids = _started(tmp_path)
    ember.cancel(ref, force=True)
    with pytest.raises(TaskCancelledError):
        ember.get(ref, timeout=BOUND_S)
    assert poll_until(lambda: all(_gone(pid) for pid in pids.values()), BOUND_S), pids
    (tmp_path / "stop").touch()
    assert _ended(tmp_path, "finished") == set()


def test_without_recursive_the_children_run_on(tmp_path):
    ref = parent.remote(str(tmp_path))
    _started(tmp_path)
    ember.cancel(ref, recursive=False)
    with pytest.raises(TaskCancelledError):
        ember.get(ref, timeout=BOUND_S)
    (tmp_path / "stop").touch()
    assert poll_until(lambda: _ended(tmp_path, "finished") == set(SPINNERS), BOUND_S)
    assert _ended(tmp_path, "interrupted") == set()
