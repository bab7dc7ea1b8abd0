"""Ray's ``ray.remote_function`` module name: the class of ``@ember.remote`` functions.

It only re-exports (the code is in ``ember._remote_function``).
"""

from ember._remote_function import RemoteFunction

__all__ = ["RemoteFunction"]
