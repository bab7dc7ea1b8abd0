"""ember's settings from ``EMBER_*`` environment variables, read in one place into one immutable object.

``load()`` reads the environment each time it is called, so a process that
sets a variable before starting a part of ember (a test, a worker started
with its own environment) gets what it set. Parts read their settings once,
when they are made, and keep the object.

A leaf module: it imports nothing of ember but the exceptions, so every
layer may use it. It must never read anything but the environment.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, fields

from ember.exceptions import InvalidOptionError

__all__ = ["Settings", "load"]

# How long a value waits for its lineage to commit before the caller gets
# LineageLogUnavailableError instead of the value.
LOG_COMMIT_WAIT_S = 60.0
# How long rows nobody waits for yet may sit before they are committed.
LOG_LAZY_S = 0.01


@dataclass(frozen=True)
class Settings:
    """What the ``EMBER_*`` variables say (``_VARIABLES`` names each field's variable)."""

    log_commit_wait_s: float = LOG_COMMIT_WAIT_S
    log_lazy_s: float = LOG_LAZY_S
    # A commit waits for PostgreSQL's flush of its write-ahead log to disk
    # (synchronous_commit on). Off, a commit is acknowledged once the server
    # has it: it survives any ember process's crash and a server restart, not
    # a crash of the server or its machine in the next moments.
    log_sync_commit: bool = True


_VARIABLES = {
    "log_commit_wait_s": "EMBER_LOG_COMMIT_WAIT_S",
    "log_lazy_s": "EMBER_LOG_LAZY_S",
    "log_sync_commit": "EMBER_LOG_SYNC_COMMIT",
}
_SWITCH = {"on": True, "1": True, "true": True, "off": False, "0": False, "false": False}


def load(environ: Mapping[str, str] | None = None) -> Settings:
    """The settings the environment (``os.environ`` by default) gives; defaults for what it leaves out."""
    environ = os.environ if environ is None else environ
    values: dict[str, float | bool] = {}
    for field in fields(Settings):
        name = _VARIABLES[field.name]
        text = environ.get(name)
        if text is None or text == "":
            continue
        values[field.name] = _switch(name, text) if field.type in (bool, "bool") else _seconds(name, text)
    return Settings(**values)  # type: ignore[arg-type]


def _seconds(name: str, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise InvalidOptionError(f"{name}={text!r} is not a number of seconds; unset it or give e.g. {name}=30")
    if not value >= 0:  # also refuses nan
        raise InvalidOptionError(f"{name}={text!r} must be zero or more seconds")
    return value


def _switch(name: str, text: str) -> bool:
    value = _SWITCH.get(text.strip().lower())
    if value is None:
        raise InvalidOptionError(f"{name}={text!r} is neither on nor off; unset it or give {name}=on or {name}=off")
    return value
