"""ember.chaos: failure injection against a running cluster's processes."""

from ember.chaos._processes import ProcessRecord, processes

__all__ = ["ProcessRecord", "processes"]
