"""Providers: the roots of eager graphs.

A provider produces input tensors; each batch it produces starts a fresh `DeepNet`. Raw
tensors given to a cell get a `TensorPlaceholder`, several raw tensors grouped in an
`Interface` a `MultipleOutputsProvider`.

`Provider` and `PARTITIONS` are defined with the graph they root (`n2d2.deepnet`), the two
placeholders with the tensors that create them (`n2d2.tensor`), both below this package; this
module re-exports them (`n2d2.provider.TensorPlaceholder`, as upstream).
"""
from n2d2.deepnet import PARTITIONS, Provider
from n2d2.tensor import MultipleOutputsProvider, TensorPlaceholder

__all__ = ["PARTITIONS", "Provider", "TensorPlaceholder", "MultipleOutputsProvider"]


