"""``ember.runtime_env``: Ray's ``RuntimeEnv``, a ``runtime_env`` dict whose fields are checked as it is made.

It holds the same fields a plain dict would (``env_vars``, ``working_dir``,
``py_modules``, ``excludes``, ``pip``; docs/api.md#runtime_env) and goes
wherever one does: ``ember.init(runtime_env=...)``, ``@ember.remote(...)``,
``.options(...)``. It never packs or ships anything itself.
"""

from __future__ import annotations

from typing import Any

from ember.lineage import check_runtime_env

__all__ = ["RuntimeEnv"]


class RuntimeEnv(dict):  # type: ignore[type-arg]
    """``RuntimeEnv(env_vars={...}, working_dir="...", pip=[...])``: InvalidOptionError at once for a field
    ember does not support or a value of the wrong type, naming it."""

    def __init__(self, **fields: Any) -> None:
        super().__init__(check_runtime_env(fields, "RuntimeEnv") or {})
