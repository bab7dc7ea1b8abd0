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
    def __init__(self, total: dict[str, float]) -> None:
        self.total = {k: float(v) for k, v in total.items()}
        self.available = dict(self.total)

    def feasible(self, shape: Iterable[tuple[str, float]]) -> bool:
        """Could this request ever run here, with the node otherwise idle?"""
        return all(self.total.get(name, 0.0) + EPSILON >= amount for name, amount in shape)

    def missing(self, shape: Iterable[tuple[str, float]]) -> dict[str, float]:
        return missing(shape, self.total)

    def can_acquire(self, shape: Iterable[tuple[str, float]]) -> bool:
        return all(self.available.get(name, 0.0) + EPSILON >= amount for name, amount in shape)

    def acquire(self, shape: Iterable[tuple[str, float]], force: bool = False) -> None:
        shape = tuple(shape)
        if not force and not self.can_acquire(shape):
            raise AssertionError(f"acquire of {shape} without room: {self.available}")
        for name, amount in shape:
            self.available[name] = self.available.get(name, 0.0) - amount

    def release(self, shape: Iterable[tuple[str, float]]) -> None:
        for name, amount in shape:
            self.available[name] = self.available.get(name, 0.0) + amount

    def snapshot(self) -> tuple[dict[str, float], dict[str, float]]:
        return dict(self.total), {k: max(v, 0.0) for k, v in self.available.items()}


def cpu_part(shape: tuple) -> tuple:
    return tuple((n, a) for n, a in shape if n == "CPU")
