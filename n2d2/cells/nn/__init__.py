"""Every layer (`n2d2.cells.nn`), re-exported by `n2d2.cells`."""
from n2d2.cells.nn.base import NeuralNetworkCell
from n2d2.cells.nn.fc import Fc

__all__ = ["NeuralNetworkCell", "Fc"]
