"""Quantization-aware training quantizers (`n2d2.quantizer`): SAT and LSQ, upstream's API.

A cell quantizer (`SATCell`, `LSQCell`) is given to `Conv`/`Fc`/`Deconv(quantizer=...)`: the
cell computes with fake-quantized weights. An activation quantizer (`SATAct`, `LSQAct`) is
given to an activation (`Linear(quantizer=SATAct(alpha=6.0, range=15))`): the cell's output
is fake-quantized after the activation. The math is in `n2d2.ops.quantizer`, run through the
IR ops (`weight_quantizer` attribute of Conv/Fc/Deconv, `FakeQuantize` node), so eager cells
and compiled graphs share it. Learnable scalars (SATAct's alpha, LSQ's step size) are
1-element float32 arrays updated by the quantizer's own solver (default `SGD()`); LSQ's step is
NaN until the first forward initialises it (`set_opt_init_step_size=True`).
"""
import numpy as np

from n2d2.backend import to_device
from n2d2.configurable import Configurable, Spec
from n2d2.error_handler import WrongInputType, WrongValue
from n2d2.ops.quantizer import SAT_MODES
from n2d2.settings import global_variables
from n2d2.solver import SGD, Solver

__all__ = ["Quantizer", "CellQuantizer", "ActivationQuantizer", "SATCell", "SATAct", "LSQCell", "LSQAct"]


def _range_spec():
    return Spec(int, 255)


class Quantizer(Configurable):
    """Abstract base of quantizers: `model`/`datatype` plus typed parameters (`range` first)."""

    _kind = None   # "SAT" or "LSQ": the IR spelling

    def __init__(self, model=None, datatype=None, **config):
        if type(self) in (Quantizer, CellQuantizer, ActivationQuantizer):
            raise TypeError(f"{type(self).__name__} is abstract: use SATCell, SATAct, LSQCell or LSQAct")
        self._model = model or global_variables.default_model
        datatype = datatype or global_variables.default_datatype
        if datatype != "float":
            raise WrongValue("datatype", datatype, ["float"])
        self._datatype = datatype
        super().__init__(**config)
        self._check_range(self._config["range"])

    def _check_range(self, value):
        if value < 1:
            raise WrongValue("range", value, [], expected="a number of steps >= 1 (1 binary, 15 4-bit, 255 8-bit)")

    def _on_parameter_change(self, key, value):
        if key == "range":
            self._check_range(value)

    def set_range(self, integer_range):
        """Number of quantization steps (15 for 4 bits, 255 for 8 bits)."""
        self.set_parameter("range", integer_range)

    def get_range(self) -> int:
        return self._config["range"]

    def ir_spec(self):
        """The plain-data description the IR ops read: (kind, ((name, value), ...))."""
        return (self._kind, tuple(sorted((k, v) for k, v in self._config.items() if not isinstance(v, Solver))))

    def learnable(self):
        """(1-element array, solver) of the learned scalar, or None (SATCell)."""
        return None


class CellQuantizer(Quantizer):
    """Weight quantizer of Conv / Fc / Deconv."""


class ActivationQuantizer(Quantizer):
    """Quantizer of an activation's output."""


class _LearnedScalar:
    """Mixin: one learned scalar, its solver (`solver=`, `set_solver`, `get_solver`)."""

    def _init_scalar(self, solver, value):
        if solver is not None and not isinstance(solver, Solver):
            raise WrongInputType("solver", type(solver), ["Solver"])
        self._solver = solver if solver is not None else SGD()
        # on the device of the quantizer's model, as the cells' parameters (CUDA programs take CuPy arrays)
        self._scalar = to_device(np.array([value], dtype=np.float32), self._model == "Frame_CUDA")

    def set_solver(self, solver):
        if not isinstance(solver, Solver):
            raise WrongInputType("solver", type(solver), ["Solver"])
        self._solver = solver

    def get_solver(self):
        return self._solver

    @property
    def solver(self):
        return self._solver

    @solver.setter
    def solver(self, value):
        self.set_solver(value)

    def learnable(self):
        return self._scalar, self._solver

    def _config_str(self) -> str:
        base = super()._config_str()
        return f"{base}, solver={self._solver.nested_str()}"


class SATCell(CellQuantizer):
    """SAT / DoReFa weight quantizer: tanh-normalised weights on R+1 levels.

    Parameters
    ----------
    range : int
        Steps R (255: 8 bits, 15: 4 bits), default 255.
    quant_mode : str
        "Default", "Symmetric", "Asymmetric" or "FullRange".
    apply_quantization : bool
        False: "clamp" phase (tanh normalisation, no rounding). Default True.
    apply_scaling : bool
        SAT's variance rescaling (for layers without a following BatchNorm). Default False.
    """

    _kind = "SAT"
    # printed as upstream: scalar parameters sorted by their engine (CamelCase) name
    _parameters = {
        "apply_quantization": Spec(bool, True),
        "apply_scaling": Spec(bool, False),
        "quant_mode": Spec(str, "Default", choices=SAT_MODES),
        "range": _range_spec(),
    }

    def set_quantization(self, status: bool):
        """Switch rounding on (quantize phase) or off (clamp phase)."""
        self.set_parameter("apply_quantization", status)

    def get_quantization(self) -> bool:
        return self._config["apply_quantization"]

    def set_scaling(self, status: bool):
        self.set_parameter("apply_scaling", status)

    def get_scaling(self) -> bool:
        return self._config["apply_scaling"]


class SATAct(_LearnedScalar, ActivationQuantizer):
    """SAT / CG-PACT activation quantizer: clip to [0, alpha] (alpha learned), R steps.

    Parameters
    ----------
    range : int
        Steps R, default 255.
    alpha : float
        Initial clipping level; default 1.0 (upstream's C++ default; its docs say 8.0).
    solver : n2d2.solver.Solver
        Optimiser of alpha, default `SGD()`.
    """

    _kind = "SAT"
    _parameters = {"alpha": Spec(float, 1.0), "range": _range_spec()}

    def __init__(self, solver=None, **config):
        super().__init__(**config)
        self._init_scalar(solver, self._config["alpha"])

    def _on_parameter_change(self, key, value):
        super()._on_parameter_change(key, value)
        if key == "alpha" and hasattr(self, "_scalar"):
            self._scalar[...] = value

    def get_alpha(self) -> float:
        """The current (learned) clipping level."""
        return float(self._scalar[0])

    def ir_spec(self):
        return (self._kind, (("range", self._config["range"]),))


class _LSQ(_LearnedScalar):
    """What LSQCell and LSQAct share: step size, its automatic initialisation, its solver."""

    _kind = "LSQ"

    def __init__(self, solver=None, **config):
        super().__init__(**config)
        auto = self._config["set_opt_init_step_size"]
        self._init_scalar(solver, np.nan if auto else self._config["step_size"])

    def _on_parameter_change(self, key, value):
        super()._on_parameter_change(key, value)
        if key == "step_size" and hasattr(self, "_scalar") and not self._config["set_opt_init_step_size"]:
            self._scalar[...] = value

    def get_step_size(self) -> float:
        """The current step size (NaN before the first forward when it is initialised then)."""
        return float(self._scalar[0])

    def ir_spec(self):
        return (self._kind, (("range", self._config["range"]),))


class LSQCell(_LSQ, CellQuantizer):
    """LSQ weight quantizer: signed grid [-floor((R+1)/2), floor((R-1)/2)] times a learned step.

    Runs on every backend (upstream: CUDA only). `quant_mode` is accepted and unused, as upstream.
    """

    _parameters = {
        "quant_mode": Spec(str, "Default", choices=SAT_MODES),
        "range": _range_spec(),
        "set_opt_init_step_size": Spec(bool, True),
        "step_size": Spec(float, 100.0),
    }


class LSQAct(_LSQ, ActivationQuantizer):
    """LSQ activation quantizer: unsigned grid [0, R] times a learned step (replaces ReLU)."""

    _parameters = {
        "range": _range_spec(),
        "set_opt_init_step_size": Spec(bool, True),
        "step_size": Spec(float, 100.0),
    }


def check_quantizer(value, kind, where):
    """`value` if it is None or a quantizer of `kind` (CellQuantizer / ActivationQuantizer), else WrongInputType."""
    if value is not None and not isinstance(value, kind):
        raise WrongInputType(f"{where} quantizer", type(value), ["None", kind.__name__])
    return value


