"""GPU detection and a worker's devices, with plain data: no GPU, no nvidia-smi, no processes."""

from __future__ import annotations

import subprocess

import pytest

from ember.exceptions import InvalidOptionError
from ember.scheduler._accelerators import CUDA_VISIBLE_DEVICES, Devices, detect_gpus, node_gpus, visible_devices


class Listed:
    def __init__(self, stdout: str, returncode: int = 0) -> None:
        self.stdout, self.returncode = stdout, returncode


def smi(stdout: str, returncode: int = 0):
    return lambda argv, **_: Listed(stdout, returncode)


def test_visible_devices_reads_cuda_visible_devices():
    assert visible_devices({}) is None
    assert visible_devices({CUDA_VISIBLE_DEVICES: ""}) == []
    assert visible_devices({CUDA_VISIBLE_DEVICES: "4, 5,GPU-ab"}) == ["4", "5", "GPU-ab"]


def test_detection_prefers_cuda_visible_devices_then_nvidia_smi_then_none():
    two = "GPU 0: NVIDIA A100 (UUID: GPU-1)\nGPU 1: NVIDIA A100 (UUID: GPU-2)\n"
    assert detect_gpus({CUDA_VISIBLE_DEVICES: "3"}, run=smi(two), which=lambda _: "/usr/bin/nvidia-smi") == 1
    assert detect_gpus({}, run=smi(two), which=lambda _: "/usr/bin/nvidia-smi") == 2
    assert detect_gpus({}, run=smi("", 9), which=lambda _: "/usr/bin/nvidia-smi") == 0  # driver not loaded
    assert detect_gpus({}, run=smi(two), which=lambda _: None) == 0

    def hangs(argv, **_):
        raise subprocess.TimeoutExpired(argv, 5.0)

    assert detect_gpus({}, run=hangs, which=lambda _: "/usr/bin/nvidia-smi") == 0


def test_a_node_offers_whole_gpus_within_cuda_visible_devices():
    assert node_gpus(2, {}) == 2
    assert node_gpus(None, {}, detect=lambda: 3) == 3
    with pytest.raises(InvalidOptionError, match="whole"):
        node_gpus(1.5, {})
    with pytest.raises(InvalidOptionError, match="names 1 device"):
        node_gpus(2, {CUDA_VISIBLE_DEVICES: "7"})


def test_a_task_sees_its_devices_in_cuda_visible_devices_and_the_node_s_setting_after():
    environ: dict[str, str] = {}
    devices = Devices(environ)
    with devices.holding((1,)):
        assert environ[CUDA_VISIBLE_DEVICES] == "1" and devices.gpu_ids() == [1]
    assert CUDA_VISIBLE_DEVICES not in environ and devices.gpu_ids() == []
    named = {CUDA_VISIBLE_DEVICES: "4,5"}
    devices = Devices(named)
    with devices.holding((1, 0)):
        assert named[CUDA_VISIBLE_DEVICES] == "5,4" and devices.gpu_ids() == ["5", "4"]  # Ray: names, as str
    assert named[CUDA_VISIBLE_DEVICES] == "4,5"
    devices.keep((0,), {"GPU": 1.0})  # an actor's, for its life
    assert named[CUDA_VISIBLE_DEVICES] == "4" and devices.resources == {"GPU": 1.0}
