"""Process-wide settings: default model (CPU/GPU), verbosity, seed, CUDA device.

`n2d2.global_variables` is the single `GlobalVariables` instance (the module of that name,
`n2d2/global_variables.py`, forwards to it). The random generator that fillers, dropout and
data providers draw from lives here so that one seed reproduces a run.

Upstream scripts hard-code GPU settings (`default_model = "Frame_CUDA"`, `cuda_device = N`,
`set_cuda_device(N)`); without a usable CUDA device each one warns once, naming itself, and the
CPU path is taken, as the INI runner does for `DefaultModel=Frame_CUDA`.
"""
import os
from enum import Enum

import numpy as np

from n2d2 import backend
from n2d2.error_handler import WrongInputType, WrongValue


class Verbosity(Enum):
    """How much `print(cell)` shows."""

    graph_only = 0
    short = 1
    detailed = 2


_MODELS = ("Frame", "Frame_CUDA")


class GlobalVariables:
    """Settings read when objects are created (cells capture `default_model` at construction)."""

    Verbosity = Verbosity

    def __init__(self):
        self._default_model = "Frame"
        self._default_datatype = "float"
        self._verbosity = Verbosity.detailed
        self._seed = 1
        self._cuda_device = 0
        self.model_cache = os.path.join(os.path.expanduser("~"), "MODELS")
        self.rng = np.random.default_rng(self._seed)
        self._eager_compile = os.environ.get("N2D2_EAGER_COMPILE", "1") != "0"
        depth = os.environ.get("N2D2_PREFETCH", "")
        self._prefetch_depth = int(depth) if depth.isdigit() else 2

    # -- model / datatype -------------------------------------------------------------------
    @property
    def default_model(self) -> str:
        return self._default_model

    @default_model.setter
    def default_model(self, value):
        if not isinstance(value, str):
            raise WrongInputType("default_model", type(value), ["str"])
        if value not in _MODELS:
            raise WrongValue("default_model", value, _MODELS)
        if value == "Frame_CUDA" and not backend.cuda_available():
            backend.warn_cpu_fallback("default_model = 'Frame_CUDA'")
            value = "Frame"
        self._default_model = value

    @property
    def default_datatype(self) -> str:
        return self._default_datatype

    @default_datatype.setter
    def default_datatype(self, value):
        if value != "float":
            raise WrongValue("default_datatype", value, ["float"])
        self._default_datatype = value

    # -- verbosity ----------------------------------------------------------------------------
    @property
    def verbosity(self) -> Verbosity:
        return self._verbosity

    @verbosity.setter
    def verbosity(self, value):
        if isinstance(value, int) and not isinstance(value, bool):
            value = Verbosity(value)
        if not isinstance(value, Verbosity):
            raise WrongInputType("verbosity", type(value), ["Verbosity"])
        self._verbosity = value

    # -- seed ---------------------------------------------------------------------------------
    @property
    def seed(self) -> int:
        # Upstream's getter never reflects the setter (quirk); here it does (docs/compatibility.md).
        return self._seed

    @seed.setter
    def seed(self, value):
        if not isinstance(value, int) or isinstance(value, bool):
            raise WrongInputType("seed", type(value), ["int"])
        self._seed = value
        # seed 0 means "time based" in N2D2.
        self.rng = np.random.default_rng(None if value == 0 else value)

    def set_random_seed(self, seed):
        raise RuntimeError("set_random_seed is removed: use 'n2d2.global_variables.seed = value'")

    # -- CUDA ---------------------------------------------------------------------------------
    @property
    def cuda_available(self) -> bool:
        return backend.cuda_available()

    @cuda_available.setter
    def cuda_available(self, value):
        raise RuntimeError("cuda_available is read-only")

    @property
    def cuda_device(self):
        return self._cuda_device

    @cuda_device.setter
    def cuda_device(self, value):
        self._set_cuda_device(value, f"cuda_device = {value!r}")

    def set_cuda_device(self, device):
        """Upstream's older spelling of `cuda_device = device`."""
        self._set_cuda_device(device, f"set_cuda_device({device!r})")

    def _set_cuda_device(self, value, setting):
        if isinstance(value, (tuple, list)):
            devices = list(value)
        elif isinstance(value, int) and not isinstance(value, bool):
            devices = [value]
        else:
            raise TypeError(f"cuda_device must be an int or a list/tuple of ints, got {type(value).__name__}")
        if not all(isinstance(d, int) and not isinstance(d, bool) for d in devices) or not devices:
            raise TypeError("cuda_device must be an int or a non-empty list/tuple of ints")
        cp = backend.cupy_module()
        if cp is None:
            backend.warn_cpu_fallback(setting, stacklevel=4)
            self._cuda_device = value
            return
        count = cp.cuda.runtime.getDeviceCount()
        for d in devices:
            if d < 0 or d >= count:
                raise RuntimeError(f"cuda_device {d} does not exist: {count} device(s) found")
        cp.cuda.Device(devices[0]).use()
        self._cuda_device = value

    # -- eager loop compiler ----------------------------------------------------------------------
    @property
    def eager_compile(self) -> bool:
        """Compile repeated eager training/test steps (`n2d2.eager_compile`); env N2D2_EAGER_COMPILE=0
        starts with it off."""
        return self._eager_compile

    @eager_compile.setter
    def eager_compile(self, value):
        if not isinstance(value, bool):
            raise WrongInputType("eager_compile", type(value), ["bool"])
        self._eager_compile = value

    # -- data loading ---------------------------------------------------------------------------
    @property
    def prefetch_depth(self) -> int:
        """Batches `DataProvider.prefetch_batches` (what `DeepNetCell.fit` reads through) prepares
        ahead in a background thread (default 2); 0 assembles each batch in the caller's thread
        when it is asked for (same order, same data): on a machine with as many cores as the C
        team has threads the background thread competes with the team for a core and with the
        training loop for the interpreter. Env N2D2_PREFETCH=<depth> sets the initial value."""
        return self._prefetch_depth

    @prefetch_depth.setter
    def prefetch_depth(self, value):
        if isinstance(value, bool) or not isinstance(value, int):
            raise WrongInputType("prefetch_depth", type(value), ["int"])
        if value < 0:
            raise WrongValue("prefetch_depth", value, ["an int >= 0"])
        self._prefetch_depth = value

    # -- compiled features ----------------------------------------------------------------------
    @property
    def onnx_compiled(self) -> bool:
        return True

    @property
    def json_compiled(self) -> bool:
        return True

    @property
    def n2d2_ip_compiled(self) -> bool:
        return False

    def __str__(self):
        lines = ["n2d2 global variables :"]
        for name in dir(self):
            if name.startswith("_") or name in ("Verbosity", "rng"):
                continue
            value = getattr(self, name)
            if callable(value):
                continue
            lines.append(f"\t- {name} : {value}")
        return "\n".join(lines)


global_variables = GlobalVariables()
