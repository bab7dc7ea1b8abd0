"""GPU ids without a GPU: a 2-GPU node (``init(num_gpus=2)``), and a node started under CUDA_VISIBLE_DEVICES.

What a task or actor asking ``num_gpus`` sees is what Ray gives it: distinct
devices, ``get_gpu_ids()``, ``CUDA_VISIBLE_DEVICES``, the runtime context's
accelerator ids and assigned resources; fractions share a device.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

import ember
from ember.exceptions import EmberUserError, InvalidOptionError

pytestmark = pytest.mark.usefixtures("cluster")  # 4 CPUs, 2 GPUs

GET_TIMEOUT_S = 60.0


def seen() -> dict:
    context = ember.get_runtime_context()
    return {"ids": ember.get_gpu_ids(), "env": os.environ.get("CUDA_VISIBLE_DEVICES"),
            "accelerators": context.get_accelerator_ids(), "assigned": context.get_assigned_resources()}


@ember.remote(num_gpus=1)
def on_a_gpu() -> dict:
    return seen()


@ember.remote
def on_cpu() -> dict:
    return seen()


@ember.remote
class Holder:
    def seen(self) -> dict:
        return seen()


def test_actors_holding_gpus_get_distinct_devices_and_a_task_the_one_left():
    first = Holder.options(num_gpus=1).remote()
    a = ember.get(first.seen.remote(), timeout=GET_TIMEOUT_S)
    task = ember.get(on_a_gpu.remote(), timeout=GET_TIMEOUT_S)  # device a is held for the actor's life
    assert a["ids"] != task["ids"] and sorted(a["ids"] + task["ids"]) == [0, 1]
    for got in (a, task):
        assert got["env"] == str(got["ids"][0])
        assert got["accelerators"] == {"GPU": [str(got["ids"][0])]}
    assert a["assigned"] == {"GPU": 1.0}  # an actor holds no CPU unless it asks (ember's default, as Ray runs it)
    assert task["assigned"] == {"CPU": 1.0, "GPU": 1.0}
    second = Holder.options(num_gpus=1).remote()
    b = ember.get(second.seen.remote(), timeout=GET_TIMEOUT_S)
    assert sorted(a["ids"] + b["ids"]) == [0, 1]
    third = Holder.options(num_gpus=1).remote()
    assert ember.wait([third.seen.remote()], timeout=1.0)[0] == []  # no device left: it waits
    ember.kill(first)
    assert ember.get(third.seen.remote(), timeout=GET_TIMEOUT_S)["ids"] == a["ids"]  # the device freed
    for actor in (second, third):
        ember.kill(actor)


def test_fractional_gpus_share_a_device():
    halves = [Holder.options(num_gpus=0.5).remote() for _ in range(3)]
    ids = [ember.get(h.seen.remote(), timeout=GET_TIMEOUT_S)["ids"] for h in halves]
    assert ids[0] == ids[1] and len(ids[0]) == 1  # packed on one device
    assert ids[2] != ids[0]  # that device is full
    for actor in halves:
        ember.kill(actor)


def test_work_without_gpus_sees_none_and_the_node_s_setting():
    ember.get(on_a_gpu.remote(), timeout=GET_TIMEOUT_S)
    got = [ember.get(on_cpu.remote(), timeout=GET_TIMEOUT_S) for _ in range(8)]  # some on the worker that had a GPU
    driver_env = os.environ.get("CUDA_VISIBLE_DEVICES")
    assert all(g["ids"] == [] and g["env"] == driver_env and g["accelerators"] == {"GPU": []} for g in got)
    assert ember.get_gpu_ids() == []
    with pytest.raises(EmberUserError):  # as Ray's assertion: a driver holds no resources of a task
        ember.get_runtime_context().get_assigned_resources()


def test_more_than_one_gpu_must_be_whole():
    with pytest.raises(InvalidOptionError, match="whole number"):
        on_a_gpu.options(num_gpus=1.5)


def test_a_node_started_under_cuda_visible_devices_offers_those_devices_by_name():
    program = textwrap.dedent("""
        import json, os, ember
        ember.init(num_cpus=2)  # no num_gpus: detected from CUDA_VISIBLE_DEVICES

        @ember.remote(num_gpus=1)
        class Holder:
            def seen(self):
                return ember.get_gpu_ids(), os.environ["CUDA_VISIBLE_DEVICES"]

        holders = [Holder.remote() for _ in range(2)]
        print(json.dumps({"gpus": ember.cluster_resources().get("GPU"),
                          "seen": ember.get([h.seen.remote() for h in holders], timeout=60)}))
        ember.shutdown()
    """)
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "4,6"}
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout.splitlines()[-1])
    assert out["gpus"] == 2.0
    assert sorted(map(tuple, out["seen"])) == [(["4"], "4"), (["6"], "6")]
