"""``ember.dag.output_node``: where Ray keeps ``MultiOutputNode``, for programs that import it from there."""

from ember.dag import MultiOutputNode

__all__ = ["MultiOutputNode"]
