"""``ember.util.metrics``: Ray's application metrics, ``Counter``, ``Gauge`` and ``Histogram``.

Any process (a task, an actor, the driver) makes one and records into it;
tags name a series, as in Ray: ``tag_keys`` at creation, a value for each
key from ``set_default_tags`` or the call's ``tags``. Each process keeps its
series in memory and, at most once a second while they change, writes them
whole to ``<session>/metrics/<pid>.json`` on its node (a temporary file
renamed over the last: a reader never sees half of one). The driver that
started the cluster with ``init(_metrics_export_port=PORT)`` serves them in
Prometheus' text format (``ember._metrics_export``).

Metrics are not lineage: nothing of them goes to the log, a retried task
records again, and a process's series end with it, as in Ray.
"""

from __future__ import annotations

import atexit
import json
import math
import os
import threading
import time
from collections.abc import Sequence
from typing import Any

from ember._metrics_export import METRICS_FOLDER
from ember.scheduler import _context

__all__ = ["Counter", "Gauge", "Histogram"]

EXPORT_INTERVAL_S = 1.0


class _Registry:
    """This process's series, by metric name: what the exporter writes."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.metrics: dict[str, dict[str, Any]] = {}  # name -> {kind, description, tag_keys, boundaries, series}
        self.version = 0
        self._written = 0
        self._thread: threading.Thread | None = None
        self._pid = os.getpid()

    def define(self, name: str, kind: str, description: str, tag_keys: tuple[str, ...],
               boundaries: list[float] | None) -> None:
        with self.lock:
            self._forked()
            found = self.metrics.get(name)
            if found is not None and (found["kind"], tuple(found["tag_keys"])) != (kind, tag_keys):
                raise ValueError(f"metric {name!r} is a {found['kind']} with tag_keys {tuple(found['tag_keys'])} in "
                                 f"this process already; a metric's name names one kind and one set of tag keys")
            if found is None:
                self.metrics[name] = {"kind": kind, "description": description, "tag_keys": list(tag_keys),
                                      "boundaries": boundaries, "series": {}}
        self._start()

    def record(self, name: str, key: str, update: Any) -> None:
        with self.lock:
            series = self.metrics[name]["series"]
            series[key] = update(series.get(key))
            self.version += 1

    def _forked(self) -> None:
        # A worker forked from a process that had metrics starts with none of them, and its own exporter.
        if self._pid != os.getpid():
            self._pid, self.metrics, self.version, self._written, self._thread = os.getpid(), {}, 0, 0, None

    def _start(self) -> None:
        with self.lock:
            if self._thread is not None:
                return
            self._thread = threading.Thread(target=self._export_loop, name="ember-metrics", daemon=True)
            self._thread.start()
        atexit.register(self.export)

    def _export_loop(self) -> None:
        while True:
            time.sleep(EXPORT_INTERVAL_S)
            self.export()

    def export(self) -> None:
        """Write this process's series, if they changed since the last write and the process is in a cluster."""
        owner = _context.PROCESS.owner
        with self.lock:
            if self.version == self._written or owner is None or self._pid != os.getpid():
                return
            version, text = self.version, json.dumps({"pid": self._pid, "node_id": owner.node_id,
                                                      "metrics": self.metrics})
        folder = owner.session.dir / METRICS_FOLDER
        try:
            folder.mkdir(mode=0o700, exist_ok=True)
            temporary = folder / f".{self._pid}.tmp"
            temporary.write_text(text)
            os.replace(temporary, folder / f"{self._pid}.json")
        except OSError:
            return  # the session is gone (shutdown): nothing to export to
        with self.lock:
            self._written = version


REGISTRY = _Registry()


class _Metric:
    _kind = ""

    def __init__(self, name: str, description: str = "", tag_keys: Sequence[str] | None = None,
                 boundaries: list[float] | None = None) -> None:
        if not isinstance(name, str) or not name:
            raise ValueError("a metric's name must be a non-empty string")
        if not all(c.isalnum() or c == "_" for c in name) or name[0].isdigit():
            raise ValueError(f"metric name {name!r}: use letters, digits and underscores, not starting with a digit "
                             "(Prometheus' rule)")
        if tag_keys is None:
            tag_keys = ()
        if isinstance(tag_keys, str) or not all(isinstance(k, str) for k in tag_keys):
            raise TypeError(f"tag_keys must be a tuple of strings, got {tag_keys!r}")
        self._name = name
        self._description = description
        self._tag_keys = tuple(tag_keys)
        self._default_tags: dict[str, str] = {}
        REGISTRY.define(name, self._kind, description, self._tag_keys, boundaries)

    @property
    def info(self) -> dict[str, Any]:
        """Ray's ``Metric.info``: its name, description, tag keys and default tags."""
        return {"name": self._name, "description": self._description, "tag_keys": self._tag_keys,
                "default_tags": dict(self._default_tags)}

    def set_default_tags(self, default_tags: dict[str, str]) -> "_Metric":
        """Values for some of its tag keys, used where a call gives none; returns the metric (as Ray's)."""
        self._check_keys(default_tags)
        self._default_tags = dict(default_tags)
        return self

    def _check_keys(self, tags: dict[str, str]) -> None:
        for key, value in tags.items():
            if key not in self._tag_keys:
                raise ValueError(f"unknown tag key {key!r} for metric {self._name!r}; its tag_keys are {self._tag_keys}")
            if not isinstance(value, str):
                raise TypeError(f"tag {key!r} of metric {self._name!r} must be a string, got {value!r}")

    def _series(self, tags: dict[str, str] | None) -> str:
        if tags:
            self._check_keys(tags)
        merged = {**self._default_tags, **(tags or {})}
        missing = [key for key in self._tag_keys if key not in merged]
        if missing:
            raise ValueError(f"missing value for tag key(s) {missing} of metric {self._name!r}: give them in tags= "
                             "or set_default_tags()")
        return json.dumps([merged[key] for key in self._tag_keys])

    @staticmethod
    def _number(value: Any, what: str) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
            raise TypeError(f"{what} takes a number, got {value!r}")
        return float(value)


class Counter(_Metric):
    """A total that only goes up: ``inc(value=1.0, tags=None)``."""

    _kind = "counter"

    def inc(self, value: float = 1.0, tags: dict[str, str] | None = None) -> None:
        value = self._number(value, "Counter.inc")
        if value <= 0:
            raise ValueError(f"Counter.inc takes a value > 0, got {value!r}")
        REGISTRY.record(self._name, self._series(tags), lambda old: (old or 0.0) + value)


class Gauge(_Metric):
    """A value that goes up and down: ``set(value, tags=None)``."""

    _kind = "gauge"

    def set(self, value: float, tags: dict[str, str] | None = None) -> None:
        value = self._number(value, "Gauge.set")
        REGISTRY.record(self._name, self._series(tags), lambda old: value)


class Histogram(_Metric):
    """Observations counted in buckets bounded by ``boundaries``: ``observe(value, tags=None)``."""

    _kind = "histogram"

    def __init__(self, name: str, description: str = "", boundaries: list[float] | None = None,
                 tag_keys: Sequence[str] | None = None) -> None:
        if not boundaries or not isinstance(boundaries, (list, tuple)):
            raise ValueError("a Histogram needs boundaries: a non-empty list of increasing numbers > 0")
        bounds = [float(b) for b in boundaries]
        if any(b <= 0 for b in bounds) or bounds != sorted(set(bounds)):
            raise ValueError(f"Histogram boundaries must be increasing numbers > 0, got {boundaries!r}")
        self._boundaries = bounds
        super().__init__(name, description, tag_keys, bounds)

    @property
    def info(self) -> dict[str, Any]:
        return {**super().info, "boundaries": list(self._boundaries)}

    def observe(self, value: float, tags: dict[str, str] | None = None) -> None:
        value = self._number(value, "Histogram.observe")
        bucket = next((i for i, bound in enumerate(self._boundaries) if value <= bound), len(self._boundaries))

        def add(old: Any) -> Any:
            counts, total = (old or [[0] * (len(self._boundaries) + 1), 0.0])
            counts = list(counts)
            counts[bucket] += 1
            return [counts, total + value]

        REGISTRY.record(self._name, self._series(tags), add)
