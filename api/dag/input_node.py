"""``ember.dag.input_node``: where Ray keeps ``InputNode``, for programs that import it from there."""

from ember.dag import InputAttributeNode, InputNode

__all__ = ["InputAttributeNode", "InputNode"]
