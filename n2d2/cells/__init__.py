"""Cells and containers (`n2d2.cells`): `n2d2.cells.Fc` is `n2d2.cells.nn.Fc`.

`DeepNetCell` and the `Transformation` cell are loaded on first use (module `__getattr__`), so
that `import n2d2` stays light; upstream scripts spell them `n2d2.cells.DeepNetCell`.
"""
import importlib

from n2d2.cells import nn
from n2d2.cells.cell import Block, Cell, Iterable, Layer, Sequence
from n2d2.cells.nn import *  # noqa: F401,F403
from n2d2.cells.nn import __all__ as _nn_all

_LAZY = {"DeepNetCell": "n2d2.cells.deepnet_cell", "Transformation": "n2d2.cells.nn.transformation"}

# `from n2d2.cells import *` loads the lazy names too (through __getattr__), as upstream exports them
__all__ = ["nn", "Cell", "Block", "Iterable", "Sequence", "Layer", *_nn_all, *_LAZY]


def __getattr__(name):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'n2d2.cells' has no attribute '{name}'")


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
