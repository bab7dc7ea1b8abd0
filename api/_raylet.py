"""``ember._raylet``: where Ray's documentation imports its ref types from (``from ray._raylet import
ObjectRefGenerator``), for programs that name that module; the types are ember's own."""

from ember.scheduler import DynamicObjectRefGenerator, ObjectRef, ObjectRefGenerator

__all__ = ["DynamicObjectRefGenerator", "ObjectRef", "ObjectRefGenerator"]
