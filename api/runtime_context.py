"""Ray's ``ray.runtime_context`` module name: ``RuntimeContext`` and ``get_runtime_context``.

It only re-exports (the code is in ``ember._runtime_context``).
"""

from ember._runtime_context import RuntimeContext, get_runtime_context

__all__ = ["RuntimeContext", "get_runtime_context"]
