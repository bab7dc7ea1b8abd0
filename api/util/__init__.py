"""``ember.util``: Ray's ``ray.util`` names that ember supports (``import ember as ray`` programs import them)."""

from ember.util import scheduling_strategies

__all__ = ["scheduling_strategies"]
