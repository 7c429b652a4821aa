"""Plain IR value types, importable without networkx (the op definitions use them)."""
from dataclasses import dataclass

import numpy as np


class GraphError(ValueError):
    """A graph that breaks an IR rule; the message names the node."""


@dataclass(frozen=True)
class TensorType:
    """Shape (numpy order, batch first) and dtype name of one node output."""

    shape: tuple
    dtype: str = "float32"

    @property
    def size(self) -> int:
        return int(np.prod(self.shape)) if self.shape else 1

    @property
    def nbytes(self) -> int:
        return self.size * np.dtype(self.dtype).itemsize

    def __str__(self):
        return f"{self.dtype}[{'x'.join(str(d) for d in self.shape)}]"
