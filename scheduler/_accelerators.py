"""GPUs: how many a node offers (given, or detected), and which devices a worker's task or actor holds.

A node's GPUs are devices numbered from 0 (its scheduler's ``ResourcePool``
hands them out). A worker maps those numbers through the
``CUDA_VISIBLE_DEVICES`` its node was started with, as Ray does: with
``CUDA_VISIBLE_DEVICES=4,5`` device 0 is ``"4"``; without it, device 0 is
``0``. While a task holds GPUs its process's ``CUDA_VISIBLE_DEVICES`` names
them (and is put back after); an actor's stays for its life.

Detection (no ``num_gpus`` given): the number of devices
``CUDA_VISIBLE_DEVICES`` names if it is set, else the GPUs ``nvidia-smi -L``
lists, else none. It must never import a GPU library.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
from collections.abc import Callable, Iterator, Mapping, MutableMapping
from typing import Any

from ember.exceptions import InvalidOptionError

__all__ = ["CUDA_VISIBLE_DEVICES", "Devices", "detect_gpus", "node_gpus", "visible_devices"]

CUDA_VISIBLE_DEVICES = "CUDA_VISIBLE_DEVICES"
NVIDIA_SMI_TIMEOUT_S = 5.0


def visible_devices(environ: Mapping[str, str]) -> list[str] | None:
    """The devices ``CUDA_VISIBLE_DEVICES`` names (None when it is not set; [] when it names none)."""
    value = environ.get(CUDA_VISIBLE_DEVICES)
    if value is None:
        return None
    return [device.strip() for device in value.split(",") if device.strip()]


def detect_gpus(environ: Mapping[str, str], run: Callable[..., Any] = subprocess.run,
                which: Callable[[str], str | None] = shutil.which) -> int:
    """How many GPUs this machine offers a node: ``CUDA_VISIBLE_DEVICES``, else ``nvidia-smi -L``, else 0."""
    visible = visible_devices(environ)
    if visible is not None:
        return len(visible)
    smi = which("nvidia-smi")
    if smi is None:
        return 0
    try:
        listed = run([smi, "-L"], capture_output=True, text=True, timeout=NVIDIA_SMI_TIMEOUT_S)
    except (OSError, subprocess.SubprocessError):
        return 0
    if listed.returncode != 0:
        return 0
    return sum(1 for line in listed.stdout.splitlines() if line.startswith("GPU "))


def node_gpus(num_gpus: float | None, environ: Mapping[str, str], detect: Callable[[], int] | None = None) -> int:
    """The GPUs a node offers: ``num_gpus`` (a whole number, within ``CUDA_VISIBLE_DEVICES``), or detected."""
    if num_gpus is None:
        return detect() if detect is not None else detect_gpus(environ)
    if num_gpus != int(num_gpus):
        raise InvalidOptionError(f"num_gpus={num_gpus!r}: a node's GPUs are whole devices; pass a whole number "
                                 "(tasks may ask for a fraction of one)")
    visible = visible_devices(environ)
    if visible is not None and num_gpus > len(visible):
        raise InvalidOptionError(f"num_gpus={num_gpus:g}, but CUDA_VISIBLE_DEVICES={environ[CUDA_VISIBLE_DEVICES]!r} "
                                 f"names {len(visible)} device(s): pass at most {len(visible)}, or change "
                                 "CUDA_VISIBLE_DEVICES")
    return int(num_gpus)


class Devices:
    """The GPU devices this worker process holds now, and the resources of what it runs (runtime context)."""

    def __init__(self, environ: MutableMapping[str, str]) -> None:
        self._environ = environ
        self._started_with = environ.get(CUDA_VISIBLE_DEVICES)  # what the node gave every worker
        self._visible = visible_devices(environ)
        self.gpus: tuple[int, ...] = ()  # the node's device numbers held now
        self.resources: dict[str, float] = {}  # an actor's, for its whole life

    def gpu_ids(self) -> list[int] | list[str]:
        """Ray's ``get_gpu_ids()``: device numbers, or the names ``CUDA_VISIBLE_DEVICES`` gave them."""
        if self._visible is None:
            return list(self.gpus)
        return [self._visible[d] if d < len(self._visible) else str(d) for d in self.gpus]

    @contextlib.contextmanager
    def holding(self, gpus: tuple[int, ...]) -> Iterator[None]:
        """While a task runs on ``gpus``: its ``CUDA_VISIBLE_DEVICES`` names them; put back after."""
        self._hold(gpus)
        try:
            yield
        finally:
            self._hold(())

    def keep(self, gpus: tuple[int, ...], resources: dict[str, float]) -> None:
        """An actor's devices and resources, for its whole life."""
        self.resources = resources
        self._hold(gpus)

    def _hold(self, gpus: tuple[int, ...]) -> None:
        self.gpus = gpus
        if gpus:
            self._environ[CUDA_VISIBLE_DEVICES] = ",".join(str(i) for i in self.gpu_ids())
        elif self._started_with is None:
            self._environ.pop(CUDA_VISIBLE_DEVICES, None)
        else:
            self._environ[CUDA_VISIBLE_DEVICES] = self._started_with
