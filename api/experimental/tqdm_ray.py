"""``ember.experimental.tqdm_ray.tqdm``: Ray's progress bar for code that runs in tasks and actors.

Used as tqdm is (``for x in tqdm(range(n), desc="load"): ...``, or
``update``/``close`` by hand), in any process of the cluster. Ray's version
sends each bar's state to the driver, which redraws the bars in place; here
a bar writes a line to the process's stderr at most every
``flush_interval_s`` seconds, and when it closes::

    load: 45/100 [45%] 4.5s, 10.0 it/s

A worker's stderr reaches the driver's terminal (``init(log_to_driver=True)``,
the default) with the rest of its output, so the lines of every bar of the
cluster arrive there, one after another rather than redrawn in place.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any

__all__ = ["tqdm"]


class tqdm:  # noqa: N801 - Ray's (and tqdm's) name
    """A progress bar over ``iterable`` (or ``total`` steps, advanced by ``update``)."""

    def __init__(self, iterable: Iterable | None = None, desc: str | None = None, total: int | None = None,
                 unit: str | None = None, position: int | None = None, flush_interval_s: float = 1.0) -> None:
        if total is None and iterable is not None:
            try:
                total = len(iterable)  # type: ignore[arg-type]
            except (TypeError, AttributeError):
                total = None
        if flush_interval_s < 0:
            raise ValueError(f"flush_interval_s must be >= 0, got {flush_interval_s!r}")
        self._iterable = iterable
        self.desc = desc or ""
        self.total = total
        self.unit = unit or "it"
        self.position = position  # Ray draws the bar on that row; here the bar's lines start with it
        self.n = 0
        self._flush_interval_s = flush_interval_s
        self._started = time.monotonic()
        self._shown_at = -float("inf")
        self._shown_n = -1
        self._closed = False

    def __iter__(self) -> Iterator[Any]:
        if self._iterable is None:
            raise TypeError("tqdm() was given no iterable to iterate over: call update() instead")
        try:
            for item in self._iterable:
                yield item
                self.update(1)
        finally:
            self.close()

    def __enter__(self) -> "tqdm":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def update(self, n: int = 1) -> None:
        """Advance by ``n`` steps; a line is written if ``flush_interval_s`` passed since the last one."""
        self.n += n
        if time.monotonic() - self._shown_at >= self._flush_interval_s:
            self.refresh()

    def set_description(self, desc: str | None = None) -> None:
        self.desc = desc or ""
        self.refresh()

    def refresh(self) -> None:
        """Write the bar's line now."""
        now = time.monotonic()
        self._shown_at, self._shown_n = now, self.n
        elapsed = now - self._started
        done = f"{self.n}/{self.total} [{100 * self.n / self.total:.0f}%]" if self.total else f"{self.n}"
        rate = f"{self.n / elapsed:.1f} {self.unit}/s" if elapsed > 0 else f"? {self.unit}/s"
        prefix = (f"#{self.position} " if self.position is not None else "") + (f"{self.desc}: " if self.desc else "")
        print(f"{prefix}{done} {elapsed:.1f}s, {rate}", file=sys.stderr, flush=True)

    def close(self) -> None:
        """Write the final line (once), unless the last line written shows it already."""
        if not self._closed:
            self._closed = True
            if self._shown_n != self.n:
                self.refresh()
