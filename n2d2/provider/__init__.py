"""Data providers (`n2d2.provider`): what feeds tensors into eager graphs."""
from n2d2.provider.base import PARTITIONS, MultipleOutputsProvider, Provider, TensorPlaceholder
from n2d2.provider.data_provider import DataProvider

__all__ = ["PARTITIONS", "Provider", "DataProvider", "TensorPlaceholder", "MultipleOutputsProvider"]
