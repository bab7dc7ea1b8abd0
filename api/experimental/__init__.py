"""``ember.experimental``: Ray's ``ray.experimental`` names that ember supports (``tqdm_ray``)."""

from ember.experimental import tqdm_ray

__all__ = ["tqdm_ray"]
