"""``init(logging_level=..., configure_logging=...)``: the driver's ``ember`` logger, as Ray's are for ``ray``.

Ray gives its logger a level (INFO by default) and a handler on stderr
unless ``configure_logging=False``. ember leaves logging alone unless the
program passes ``logging_level``: then the ``ember`` logger gets that level,
and, unless ``configure_logging=False``, one handler on stderr (added once,
whatever the number of ``init`` calls). With ``configure_logging=False`` the
program's own logging configuration shows ember's records.

It must never touch another logger than ``ember``'s, nor the root logger.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass
from typing import Any

from ember.exceptions import InvalidOptionError

__all__ = ["LOG_FORMAT", "LoggingOptions", "logging_options"]

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_LOGGER = "ember"


@dataclass(frozen=True)
class LoggingOptions:
    level: int | None  # None: leave the ember logger as it is
    configure: bool

    def apply(self) -> None:
        if self.level is None:
            return
        logger = logging.getLogger(_LOGGER)
        logger.setLevel(self.level)
        if self.configure and not any(getattr(h, "_ember_init", False) for h in logger.handlers):
            handler = logging.StreamHandler(sys.stderr)
            handler.setFormatter(logging.Formatter(LOG_FORMAT))
            handler._ember_init = True  # type: ignore[attr-defined]  # ours: not added twice
            logger.addHandler(handler)


def logging_options(level: Any, configure: Any) -> LoggingOptions:
    """Check ``init``'s logging options: a level (an int, or a name such as ``"info"``) and a bool."""
    if not isinstance(configure, bool):
        raise InvalidOptionError(f"init option configure_logging must be True or False, got {configure!r}")
    if level is None:
        return LoggingOptions(None, configure)
    if isinstance(level, str):
        named = logging.getLevelName(level.upper())
        if not isinstance(named, int):
            raise InvalidOptionError(f"init option logging_level={level!r} is no logging level; use one of "
                                     "'debug', 'info', 'warning', 'error', 'critical', or logging.INFO etc.")
        level = named
    if isinstance(level, bool) or not isinstance(level, int):
        raise InvalidOptionError(f"init option logging_level must be a level name or number, got {level!r}")
    return LoggingOptions(level, configure)
