"""Ray's ``ray.actor`` module name: the actor classes, handles and methods, for ``isinstance`` and type hints.

It only re-exports (the code is in ``ember._actor``).
"""

from ember._actor import ActorClass, ActorHandle, ActorMethod, exit_actor, method

__all__ = ["ActorClass", "ActorHandle", "ActorMethod", "exit_actor", "method"]
