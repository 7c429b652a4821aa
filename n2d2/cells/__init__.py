"""Cells and containers (`n2d2.cells`): `n2d2.cells.Fc` is `n2d2.cells.nn.Fc`."""
from n2d2.cells import nn
from n2d2.cells.cell import Block, Cell, Iterable, Layer, Sequence
from n2d2.cells.nn import *  # noqa: F401,F403
from n2d2.cells.nn import __all__ as _nn_all

__all__ = ["nn", "Cell", "Block", "Iterable", "Sequence", "Layer", *_nn_all]
