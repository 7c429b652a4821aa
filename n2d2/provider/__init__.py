"""Data providers (`n2d2.provider`): what feeds tensors into eager graphs."""
from n2d2.provider.base import PARTITIONS, MultipleOutputsProvider, Provider, TensorPlaceholder

__all__ = ["PARTITIONS", "Provider", "TensorPlaceholder", "MultipleOutputsProvider"]
