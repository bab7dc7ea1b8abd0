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

    A placement group's committed bundle brings the devices it reserved
    (``add(..., devices)``): a task in the bundle asking ``GPU_group_...``
    takes devices out of those, by the same rule, so two tasks in one bundle
    of two GPUs get distinct devices, as in Ray.
    """

    def __init__(self, total: dict[str, float]) -> None:
        self.total = {k: float(v) for k, v in total.items()}
        self.available = dict(self.total)
        gpus = self.total.get("GPU", 0.0)
        assert gpus == int(gpus), f"a node's GPUs are whole devices, got {gpus}"
        # Per device: [device, the fraction not held, the whole of it (1.0)].
        self._gpus: list[list] = [[device, 1.0, 1.0] for device in range(int(gpus))]
        # A committed bundle's GPU resource name (``GPU_group_<index>_<group>``) -> its devices, each as
        # [device, the fraction of it the bundle holds that no task in it holds, the fraction it holds].
        self._bundle_gpus: dict[str, list[list]] = {}

    def feasible(self, shape: Iterable[tuple[str, float]]) -> bool:
        """Could this request ever run here, with the node otherwise idle?"""
        return all(self.total.get(name, 0.0) + EPSILON >= amount for name, amount in shape)

    def missing(self, shape: Iterable[tuple[str, float]]) -> dict[str, float]:
        return missing(shape, self.total)

    def can_acquire(self, shape: Iterable[tuple[str, float]]) -> bool:
        fits = True
        shape = tuple(shape)
        for name, amount in shape:
            if self.available.get(name, 0.0) + EPSILON < amount:
                return False
            if name == "GPU":
                fits = _fit(self._gpus, amount) is not None
        if fits and self._bundle_gpus:
            fits = self._bundle_choice(shape) is not False
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
                devices = _take(self._gpus, amount)
        if self._bundle_gpus and not force:
            chosen = self._bundle_choice(shape)
            if chosen:
                entries, amount = chosen
                devices = _take(entries, amount)
        return devices

    def release(self, shape: Iterable[tuple[str, float]], devices: tuple[int, ...] = ()) -> None:
        shape = tuple(shape)
        if devices and self._bundle_gpus:
            self._give_back_bundle_devices(shape, devices)
        for name, amount in shape:
            if name not in self.total:
                continue  # a placement group bundle's resource, released since (the group was removed)
            self.available[name] = self.available.get(name, 0.0) + amount
            if name == "GPU":
                _give_back(self._gpus, devices, amount)

    def add(self, resources: dict[str, float], devices: tuple[int, ...] = ()) -> None:
        """New resources of the node (a committed placement group bundle's, with the GPU devices it
        reserved), free."""
        for name, amount in resources.items():
            self.total[name] = self.total.get(name, 0.0) + amount
            self.available[name] = self.available.get(name, 0.0) + amount
            if devices and _is_indexed_bundle_gpu(name):
                share = min(amount, 1.0)  # a whole number of GPUs is that many devices; a fraction, part of one
                self._bundle_gpus[name] = [[device, share, share] for device in devices]

    def remove(self, resources: dict[str, float]) -> None:
        """Resources ``add`` gave, taken away again (whoever holds some keeps them until they release)."""
        for name in resources:
            self._bundle_gpus.pop(name, None)
        for name, amount in resources.items():
            left = self.total.get(name, 0.0) - amount
            if left > EPSILON:
                self.total[name] = left
                self.available[name] = self.available.get(name, 0.0) - amount
            else:
                self.total.pop(name, None)
                self.available.pop(name, None)

    def _bundle_choice(self, shape: tuple) -> "tuple[list[list], float] | bool | None":
        """For a request of GPUs in a bundle: (the bundle's device entries, the amount); None if it asks
        no bundle's GPUs (or the bundle brought no devices); False if no bundle it may use has devices
        free for it now."""
        indexed = [(n, a) for n, a in shape if n in self._bundle_gpus]
        if indexed:
            name, amount = indexed[0]
            entries = self._bundle_gpus[name]
            return (entries, amount) if _fit(entries, amount) is not None else False
        for name, amount in shape:  # bundle_index=-1: any bundle of the group on this node
            if not name.startswith(_GPU_GROUP):
                continue
            group = name.rsplit("_", 1)[-1]
            candidates = [e for n, e in self._bundle_gpus.items() if n.endswith(f"_{group}")]
            if not candidates:
                return None
            for entries in candidates:
                if _fit(entries, amount) is not None:
                    return entries, amount
            return False
        return None

    def _give_back_bundle_devices(self, shape: tuple, devices: tuple[int, ...]) -> None:
        gpu_names = [(n, a) for n, a in shape if n.startswith(_GPU_GROUP)]
        if not gpu_names:
            return
        indexed = [(n, a) for n, a in gpu_names if n in self._bundle_gpus]
        name, amount = (indexed or gpu_names)[0]
        entries = self._bundle_gpus.get(name)
        if entries is None:  # bundle_index=-1: the group's bundle on this node that holds these devices taken
            group = name.rsplit("_", 1)[-1]
            entries = next((e for n, e in self._bundle_gpus.items() if n.endswith(f"_{group}")
                            and all(any(x[0] == d and x[1] < x[2] for x in e) for d in devices)), None)
        if entries is not None:  # else the bundle was removed meanwhile: its devices went back with it
            _give_back(entries, devices, amount)

    def gpus_in_use(self) -> list[float]:
        """Per device, the fraction held."""
        return [round(whole - free, 6) for _, free, whole in self._gpus]

    def snapshot(self) -> tuple[dict[str, float], dict[str, float]]:
        return dict(self.total), {k: max(v, 0.0) for k, v in self.available.items()}


_GPU_GROUP = "GPU_group_"


def _is_indexed_bundle_gpu(name: str) -> bool:
    """``GPU_group_<index>_<group>`` (one bundle's GPUs), not ``GPU_group_<group>`` (the group's, any bundle)."""
    return name.startswith(_GPU_GROUP) and name[len(_GPU_GROUP):].split("_", 1)[0].isdigit() \
        and name.count("_") >= 3


def _fit(entries: list[list], amount: float) -> tuple[int, ...] | None:
    """The devices of ``entries`` ([device, free, whole]) a request of ``amount`` GPUs would take now; None
    if none fit. Whole GPUs take wholly free devices; a fraction, the fullest device it fits on."""
    if amount >= 1.0 - EPSILON:
        whole = [e for e in entries if e[1] >= 1.0 - EPSILON]
        wanted = int(round(amount))
        return tuple(e[0] for e in whole[:wanted]) if len(whole) >= wanted else None
    fitting = [e for e in entries if e[1] + EPSILON >= amount]
    if not fitting:
        return None
    return (min(fitting, key=lambda e: (e[1], e[0]))[0],)


def _take(entries: list[list], amount: float) -> tuple[int, ...]:
    devices = _fit(entries, amount) or ()
    share = min(amount, 1.0)
    for entry in entries:
        if entry[0] in devices:
            entry[1] -= share
    return devices


def _give_back(entries: list[list], devices: tuple[int, ...], amount: float) -> None:
    share = min(amount, 1.0)
    for entry in entries:
        if entry[0] in devices:
            entry[1] = min(entry[2], entry[1] + share)


def is_cpu(name: str) -> bool:
    """A CPU of the node, or of a placement group's bundle (``CPU_group_...``): what a blocked worker lends out."""
    return name == "CPU" or name.startswith("CPU_group_")


def cpu_part(shape: tuple) -> tuple:
    return tuple((n, a) for n, a in shape if is_cpu(n))
