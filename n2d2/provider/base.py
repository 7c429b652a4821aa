"""Providers: the roots of eager graphs.

A provider produces input tensors; each batch it produces starts a fresh `DeepNet`. Raw
tensors given to a cell get a `TensorPlaceholder`, several raw tensors grouped in an
`Interface` a `MultipleOutputsProvider`.
"""
import numpy as np

from n2d2.deepnet import DeepNet
from n2d2.error_handler import WrongInputType, WrongValue
from n2d2.utils import generate_name

PARTITIONS = ("Learn", "Validation", "Test", "Unpartitioned")


class Provider:
    """Abstract base of everything that produces input tensors."""

    def __init__(self, name=None):
        if type(self) is Provider:
            raise TypeError("Provider is abstract: use DataProvider or TensorPlaceholder")
        self._name = name if name is not None else generate_name(self)
        self._deepnet = DeepNet(self)
        self._partition = "Test"

    def get_name(self) -> str:
        return self._name

    def get_deepnet(self):
        return self._deepnet

    def _new_graph(self):
        from n2d2 import eager_compile

        eager_compile.on_step_end(self, self._deepnet)
        self._deepnet = DeepNet(self)
        return self._deepnet

    def set_partition(self, partition: str):
        if not isinstance(partition, str):
            raise WrongInputType("partition", type(partition), ["str"])
        if partition not in PARTITIONS:
            raise WrongValue("partition", partition, PARTITIONS)
        self._partition = partition

    def get_partition(self) -> str:
        return self._partition

    def get_labels(self):
        """Labels of the current batch (an int Tensor); -1 marks an invalid slot."""
        raise NotImplementedError(f"{type(self).__name__} has no labels")

    def __str__(self):
        return f"'{self._name}' {type(self).__name__}"


class TensorPlaceholder(Provider):
    """Streams one given float tensor (and optional int labels) as a graph input."""

    def __init__(self, inputs, labels=None, name=None):
        from n2d2.tensor import Tensor

        if not isinstance(inputs, Tensor):
            raise WrongInputType("inputs", type(inputs), ["Tensor"])
        if np.dtype(inputs._data.dtype).kind != "f":
            raise TypeError(f"TensorPlaceholder: the input tensor must be float, got '{inputs.data_type()}'")
        if labels is not None:
            if not isinstance(labels, Tensor):
                raise WrongInputType("labels", type(labels), ["Tensor"])
            if np.dtype(labels._data.dtype).kind not in "iu":
                raise TypeError("TensorPlaceholder: labels must be an int tensor")
        super().__init__(name)
        self._partition = "Learn"
        self._tensor = inputs
        self._labels = labels
        inputs.cell = self

    def get_data(self):
        return self._tensor

    def get_labels(self):
        if self._labels is None:
            raise RuntimeError(f"{self._name}: no labels were given to this TensorPlaceholder")
        return self._labels

    def get_batch_size(self) -> int:
        return self._tensor.dimB()

    def dims(self):
        return self._tensor.dims()

    def shape(self):
        return self._tensor.shape()


class MultipleOutputsProvider(Provider):
    """The common root of several raw tensors used together (an Interface)."""

    def __init__(self, tensors, name=None):
        super().__init__(name)
        self._partition = "Learn"
        self._tensors = list(tensors)
        for t in self._tensors:
            t.cell = self

    def get_data(self):
        return list(self._tensors)
