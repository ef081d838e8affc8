"""Public test kit: memory pairs, chaos wrappers, hypothesis strategies, conformance checks."""

from ._memory import MemoryStream, memory_pair

__all__ = ["MemoryStream", "memory_pair"]
