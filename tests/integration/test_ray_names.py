"""Ray names that programs import from where Ray's documentation does: ``ray.experimental.tqdm_ray``
(progress lines from a task reach the driver's terminal) and ``ray._raylet``'s ref types."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

import ember
from ember.experimental.tqdm_ray import tqdm

BOUND_S = 120.0


def test_tqdm_in_a_task_writes_its_progress_to_the_drivers_terminal() -> None:
    program = textwrap.dedent("""
        import ember
        from ember.experimental.tqdm_ray import tqdm

        ember.init(num_cpus=2)

        @ember.remote
        def load(name):
            return sum(x for x in tqdm(range(40), desc=name, flush_interval_s=0))

        print(ember.get([load.remote("part a"), load.remote("part b")], timeout=60))
    """)
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=BOUND_S)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[-2] == "[780, 780]"
    for name in ("part a", "part b"):  # written by the workers, shown by the driver
        assert f"{name}: 1/40 [2%]" in done.stderr and f"{name}: 40/40 [100%]" in done.stderr
        assert done.stderr.count(f"{name}: 40/40 [100%]") == 1  # the end is written once


def test_tqdm_by_hand_and_its_misuse(capsys: pytest.CaptureFixture[str]) -> None:
    with tqdm(desc="steps", total=4, flush_interval_s=3600) as bar:
        bar.update(3)  # the first line is written at once, the next only after the interval
        bar.update(1)
    lines = capsys.readouterr().err.splitlines()
    assert [line.split(" ", 2)[:2] for line in lines] == [["steps:", "3/4"], ["steps:", "4/4"]]
    bar = tqdm(total=None, flush_interval_s=0)
    bar.update(5)
    assert capsys.readouterr().err.startswith("5 ")  # no total: a count
    tqdm(total=2, position=1, desc="second", flush_interval_s=0).update(1)
    assert capsys.readouterr().err.startswith("#1 second: 1/2 [50%]")
    with pytest.raises(TypeError, match="no iterable"):
        iter(tqdm(total=3)).__next__()
    with pytest.raises(ValueError, match="flush_interval_s"):
        tqdm(range(3), flush_interval_s=-1)


def test_ray_raylet_names_ember_s_ref_types() -> None:
    from ember._raylet import DynamicObjectRefGenerator, ObjectRef, ObjectRefGenerator

    assert (ObjectRef, ObjectRefGenerator, DynamicObjectRefGenerator) == (
        ember.ObjectRef, ember.ObjectRefGenerator, ember.DynamicObjectRefGenerator)
