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

from n2d2.backend import to_device, to_host
from n2d2.configurable import Configurable, Spec
from n2d2.error_handler import WrongInputType, WrongValue
from n2d2.ir import ops as ir_ops
from n2d2.ops.quantizer import SAT_MODES
from n2d2.settings import global_variables
from n2d2.solver import SGD, Solver
from n2d2.tensor import Tensor

__all__ = ["Quantizer", "CellQuantizer", "ActivationQuantizer", "SATCell", "SATAct", "LSQCell", "LSQAct", "PTQ",
           "fuse_qat"]


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

    def __init__(self, **config):
        super().__init__(**config)
        self._cell = None       # the cell it quantizes (set when attached)
        self._added = []        # tensors registered by add_weights / add_biases (upstream's test API)

    def _attach(self, cell):
        self._cell = cell

    def add_weights(self, weights, diff_weights):
        """Register a weight tensor (and its gradient tensor) outside a cell, as upstream's tests do."""
        _check_tensors(weights=weights, diff_weights=diff_weights)
        self._added.append(("weights", weights))

    def add_biases(self, biases, diff_biases):
        _check_tensors(biases=biases, diff_biases=diff_biases)
        self._added.append(("biases", biases))

    def _quantized(self, input_idx):
        """(quantized weights as a numpy array shaped as its source, biases or None)."""
        if not isinstance(input_idx, int) or isinstance(input_idx, bool):
            raise WrongInputType("input_idx", type(input_idx), ["int"])
        added = [t for role, t in self._added if role == "weights"]
        biases = [t for role, t in self._added if role == "biases"]
        if added:
            if not 0 <= input_idx < len(added):
                raise ValueError(f"{self.get_type()}: weight tensor {input_idx} of {len(added)} registered")
            w = added[input_idx].to_numpy()
            dims = added[input_idx].dims()
            n_out = w.size // dims[2] if len(dims) == 4 else w.size // w.shape[-1]
            op = _FixedFanOut(n_out)
            params = {"weights": w}
            attrs = {}
            b = biases[0].to_numpy() if biases else None
        else:
            if self._cell is None:
                raise RuntimeError(f"{self.get_type()}: not attached to a cell and no weights registered")
            if input_idx != 0:
                raise ValueError(f"{self.get_type()}: cell '{self._cell.get_name()}' keeps its weights as one tensor "
                                 f"(input index 0), got {input_idx}")
            op_name, attrs, params = self._cell._ir_node()
            op = ir_ops.get(op_name)
            params = {role: to_host(array) for role, (array, _) in params.items() if array is not None}
            b = params.get("biases")
        learned = self.learnable()
        if learned is not None:
            params["weight_step"] = to_host(learned[0]).copy()   # a read does not initialise the step
        quantized, _ = ir_ops.quantize_weights(op, attrs, self.ir_spec(), params, training=False)
        return quantized["weights"], b

    def get_quantized_weights(self, input_idx=0):
        """The weights the cell computes with (fake-quantized), as a Tensor."""
        return Tensor._wrap(np.array(self._quantized(input_idx)[0], dtype=np.float32))

    def get_quantized_biases(self):
        """The biases the cell computes with: not quantized (copied), as upstream."""
        b = self._quantized(0)[1]
        if b is None:
            raise RuntimeError(f"{self.get_type()}: no biases (no_bias=True or none registered)")
        return Tensor._wrap(np.array(b, dtype=np.float32))


class _FixedFanOut:
    """Stands for the op of registered tensors: SAT's N_out given directly."""

    name = "Registered"

    def __init__(self, n_out):
        self.n_out = n_out


def _check_tensors(**tensors):
    for name, value in tensors.items():
        if not isinstance(value, Tensor):
            raise WrongInputType(name, type(value), ["Tensor"])


class ActivationQuantizer(Quantizer):
    """Quantizer of an activation's output."""

    _full_precision = None   # the last input seen in training (eager cells)

    def get_full_precision_activations(self):
        """The activations before quantization of the last training call, as a Tensor."""
        if self._full_precision is None:
            raise RuntimeError(f"{self.get_type()}: no training forward yet")
        return Tensor._wrap(np.array(to_host(self._full_precision), dtype=np.float32))


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


def PTQ(deepnet_cell, nb_bits, nb_sitmuli=-1, provider=None, no_unsigned=False, cross_layer_equalization=True,
        wt_clipping_mode="NONE", act_clipping_mode="MSE", act_scaling_mode="FLOAT_MULT",
        act_rescale_per_output=False, **kwargs):
    """Post-training quantization of `deepnet_cell` (upstream's `n2d2.quantizer.PTQ`).

    Calibrates over `nb_sitmuli` (sic, upstream's name; -1: all; kwarg `calibration` overrides
    it) stimuli of the Validation partition (Test when Validation is empty), quantizes to
    `nb_bits`-bit integers and attaches the resulting `n2d2.quantization.ptq.IntegerNetwork` to the
    cell: `deepnet_cell.run_test()` then reports the integer simulation's accuracy, as
    upstream's in-place PTQ does, and `deepnet_cell.is_integral()` is True. Unlike upstream the
    float parameters are left unchanged and no file is written (docs/compatibility.md). Returns
    the IntegerNetwork. `nb_bits < 0` (float) quantizes nothing and returns None.

    Keyword aliases: `calibration` (= nb_sitmuli), `export_no_unsigned` (= no_unsigned),
    `export_no_cross_layer_equalization` (= not cross_layer_equalization); `act_quantile_value`,
    `calibration_reload`, `report` are accepted and ignored, as upstream's PTQ ignores them.
    """

    for key, value in kwargs.items():
        if key == "calibration":
            nb_sitmuli = value
        elif key == "export_no_unsigned":
            no_unsigned = value
        elif key == "export_no_cross_layer_equalization":
            cross_layer_equalization = not value
        elif key not in ("act_quantile_value", "calibration_reload", "report"):
            raise TypeError(f"PTQ() got an unexpected keyword argument '{key}'")
    if isinstance(nb_bits, bool) or not isinstance(nb_bits, (int, np.integer)):
        raise WrongInputType("nb_bits", type(nb_bits), ["int"])
    for name, value in (("no_unsigned", no_unsigned), ("cross_layer_equalization", cross_layer_equalization),
                        ("act_rescale_per_output", act_rescale_per_output)):
        if not isinstance(value, bool):
            raise WrongInputType(name, type(value), ["bool"])
    if isinstance(nb_sitmuli, bool) or not isinstance(nb_sitmuli, (int, np.integer)) or nb_sitmuli < -1:
        raise WrongValue("nb_sitmuli", nb_sitmuli, ["-1 (all)", "0 (none)", "a positive int"])
    if nb_bits < 0:
        return None
    from n2d2.quantization.ptq import quantize_network  # PTQ runs the compiler (see test_import_structure)

    network = quantize_network(deepnet_cell, provider, nb_bits=int(nb_bits), calibration=int(nb_sitmuli),
                               no_unsigned=no_unsigned, cross_layer_equalization=cross_layer_equalization,
                               wt_clipping_mode=wt_clipping_mode, act_clipping_mode=act_clipping_mode,
                               act_scaling_mode=act_scaling_mode, act_rescale_per_output=act_rescale_per_output)
    deepnet_cell._integer_network = network
    return network


def fuse_qat(deep_net, provider=None, act_scaling_mode="FLOAT_MULT", w_mode="NONE", b_mode="NONE", c_mode="NONE",
             nb_bits=8, input_range=1.0, calibration=256):
    """Upstream's `n2d2.quantizer.fuse_qat` for a network trained with SAT / LSQ quantizers: its
    `nb_bits` integer network from the learned ranges (reference section 3.11,
    n2d2.quantization.qat: the layers QAT left float, e.g. the classifier, are measured on
    `calibration` stimuli of `provider`; the quantized activations are not), attached to the
    DeepNetCell (`run_test()` then reports the integer simulation, `export_c / export_cpp(nb_bits,
    calibration=0)` export it) and returned.

    `deep_net`: the DeepNetCell (upstream passes `x.get_deepnet()`; our cells' DeepNet is a
    trace, not the compiled network: pass the DeepNetCell). The cell's float parameters and its
    quantizers are left unchanged (upstream modifies the graph in place: docs/compatibility.md).
    `act_scaling_mode`: NONE (= FLOAT_MULT), FLOAT_MULT, FIXED_MULT16/32, SINGLE_SHIFT,
    DOUBLE_SHIFT; `w_mode` / `b_mode` / `c_mode`: NONE or RINTF (no effect: the integer program
    is integer in every mode); an unknown string raises KeyError, as upstream."""
    for name, value in (("act_scaling_mode", act_scaling_mode), ("w_mode", w_mode), ("b_mode", b_mode),
                        ("c_mode", c_mode)):
        if not isinstance(value, str):
            raise WrongInputType(name, type(value), ["str"])
    if isinstance(nb_bits, bool) or not isinstance(nb_bits, (int, np.integer)):
        raise WrongInputType("nb_bits", type(nb_bits), ["int"])
    from n2d2.quantization.qat import fuse_qat as fuse  # runs the compiler's passes (see test_import_structure)

    return fuse(deep_net, provider, act_scaling_mode, w_mode, b_mode, c_mode, int(nb_bits), input_range, calibration)
