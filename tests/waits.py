"""Bounded waits for tests: poll a check until it holds, or fail saying what did not happen in time."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

__all__ = ["wait_for"]


def wait_for(check: Callable[[], Any], what: str, timeout_s: float, poll_s: float = 0.02) -> Any:
    """``check()``'s first truthy result within ``timeout_s``; AssertionError naming ``what`` otherwise."""
    deadline = time.monotonic() + timeout_s
    while True:
        found = check()
        if found:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout_s:g}s: {what}")
        time.sleep(poll_s)
