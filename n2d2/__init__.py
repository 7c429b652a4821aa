"""n2d2: N2D2's Python API, run through a graph compiler of its own.

`import n2d2` needs numpy only; CuPy, onnx, matplotlib, torch are imported when used.
"""
import os

from n2d2 import activation, cells, deepnet, error_handler, filler, mapping, provider, solver
from n2d2 import global_variables as _global_variables_module  # noqa: F401 (`import n2d2.global_variables`)
from n2d2.config_section import ConfigSection
from n2d2.settings import global_variables  # the name is the settings object, as upstream
from n2d2.tensor import Interface, Tensor
from n2d2.utils import download, generate_name, model_logger

os.environ.setdefault("N2D2_PATH", os.path.dirname(os.path.abspath(__file__)))

__version__ = "0.1.0"
__all__ = ["Tensor", "Interface", "ConfigSection", "global_variables", "error_handler", "activation", "cells",
           "deepnet", "filler", "mapping", "provider", "solver", "download", "generate_name", "model_logger"]

_LAZY = ("database", "datasets", "transform", "target", "models", "export", "ir", "codegen", "scaling", "quantizer",
         "onnx_backend", "converter", "eager_compile", "application")


def __getattr__(name):
    # Heavier sub-packages load on first use so that `import n2d2` stays light.
    if name in _LAZY:
        import importlib

        try:
            module = importlib.import_module(f"n2d2.{name}")
        except ModuleNotFoundError as e:
            if e.name == f"n2d2.{name}":
                raise AttributeError(f"module 'n2d2' has no attribute '{name}'") from None
            raise
        globals()[name] = module
        return module
    raise AttributeError(f"module 'n2d2' has no attribute '{name}'")
