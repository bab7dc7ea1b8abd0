"""Resource accounting for one node: a plain state machine, no I/O.

Amounts are floats so fractional requests (``num_gpus=0.5``) work. A blocked
worker gives back its CPUs and takes them again when it resumes, even if that
oversubscribes the node for a while: refusing would deadlock nested tasks.
"""

from __future__ import annotations

from collections.abc import Iterable

from ember.scheduler._infeasible import missing

EPSILON = 1e-9  # amounts closer than this are equal


class ResourcePool:
    """A node's resource totals and what is free, and which GPU each holder of GPUs has (Ray's instances).

    GPUs are devices as well as an amount: the node's ``GPU`` total (a whole
    number) is that many devices, numbered from 0, each free in a fraction.
    A request of a whole number of GPUs takes that many wholly free devices;
    a fraction (< 1) takes part of one device, the fullest it fits on, so
    fractional requests share devices rather than spread over them (Ray's
    rule). ``acquire`` returns the devices taken, for the worker's
    ``CUDA_VISIBLE_DEVICES``.
    """

    def __init__(self, total: dict[str, float]) -> None:
        self.total = {k: float(v) for k, v in total.items()}
        self.available = dict(self.total)
        gpus = self.total.get("GPU", 0.0)
        assert gpus == int(gpus), f"a node's GPUs are whole devices, got {gpus}"
        self._gpu_free = [1.0] * int(gpus)  # per device: the fraction not held

    def feasible(self, shape: Iterable[tuple[str, float]]) -> bool:
        """Could this request ever run here, with the node otherwise idle?"""
        return all(self.total.get(name, 0.0) + EPSILON >= amount for name, amount in shape)

    def missing(self, shape: Iterable[tuple[str, float]]) -> dict[str, float]:
        return missing(shape, self.total)

    def can_acquire(self, shape: Iterable[tuple[str, float]]) -> bool:
        fits = True
        for name, amount in shape:
            if self.available.get(name, 0.0) + EPSILON < amount:
                return False
            if name == "GPU":
                fits = self._gpu_devices(amount) is not None
        return fits

    def acquire(self, shape: Iterable[tuple[str, float]], force: bool = False) -> tuple[int, ...]:
        """Take ``shape``; the GPU devices it holds (none for a request without GPUs, or ``force``d)."""
        shape = tuple(shape)
        if not force and not self.can_acquire(shape):
            raise AssertionError(f"acquire of {shape} without room: {self.available}")
        devices: tuple[int, ...] = ()
        for name, amount in shape:
            if name not in self.total:
                continue  # forced back for a worker whose placement group was removed meanwhile
            self.available[name] = self.available.get(name, 0.0) - amount
            if name == "GPU" and not force:
                devices = self._gpu_devices(amount) or ()
                share = min(amount, 1.0)
                for device in devices:
                    self._gpu_free[device] -= share
        return devices

    def release(self, shape: Iterable[tuple[str, float]], devices: tuple[int, ...] = ()) -> None:
        for name, amount in shape:
            if name not in self.total:
                continue  # a placement group bundle's resource, released since (the group was removed)
            self.available[name] = self.available.get(name, 0.0) + amount
            if name == "GPU":
                share = min(amount, 1.0)
                for device in devices:
                    self._gpu_free[device] = min(1.0, self._gpu_free[device] + share)

    def add(self, resources: dict[str, float]) -> None:
        """New resources of the node (a committed placement group bundle's), free."""
        for name, amount in resources.items():
            self.total[name] = self.total.get(name, 0.0) + amount
            self.available[name] = self.available.get(name, 0.0) + amount

    def remove(self, resources: dict[str, float]) -> None:
        """Resources ``add`` gave, taken away again (whoever holds some keeps them until they release)."""
        for name, amount in resources.items():
            left = self.total.get(name, 0.0) - amount
            if left > EPSILON:
                self.total[name] = left
                self.available[name] = self.available.get(name, 0.0) - amount
            else:
                self.total.pop(name, None)
                self.available.pop(name, None)

    def _gpu_devices(self, amount: float) -> tuple[int, ...] | None:
        """The devices a request of ``amount`` GPUs would take now; None if none fit."""
        if amount >= 1.0 - EPSILON:
            whole = [d for d, free in enumerate(self._gpu_free) if free >= 1.0 - EPSILON]
            wanted = int(round(amount))
            return tuple(whole[:wanted]) if len(whole) >= wanted else None
        fitting = [d for d, free in enumerate(self._gpu_free) if free + EPSILON >= amount]
        if not fitting:
            return None
        return (min(fitting, key=lambda d: (self._gpu_free[d], d)),)  # the fullest it fits on

    def gpus_in_use(self) -> list[float]:
        """Per device, the fraction held."""
        return [round(1.0 - free, 6) for free in self._gpu_free]

    def snapshot(self) -> tuple[dict[str, float], dict[str, float]]:
        return dict(self.total), {k: max(v, 0.0) for k, v in self.available.items()}


def is_cpu(name: str) -> bool:
    """A CPU of the node, or of a placement group's bundle (``CPU_group_...``): what a blocked worker lends out."""
    return name == "CPU" or name.startswith("CPU_group_")


def cpu_part(shape: tuple) -> tuple:
    return tuple((n, a) for n, a in shape if is_cpu(n))
