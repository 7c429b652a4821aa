"""`WeightedCell`: the weight/bias API shared by Fc, Conv and Deconv.

Weights are one array (Fc: [O, C]; Conv: [O, C/groups..., kH, kW] as the subclass says),
biases one [O] array, both on the cell's device. Solvers and fillers are parameters;
`solver=` / `filler=` are write-only shortcuts that set both (solvers as copies).
"""

import contextlib
import threading

import numpy as np

from n2d2.backend import to_host
from n2d2.cells.nn.base import ACTIVATION_SPEC, NeuralNetworkCell, SolverPair, _like, format_rows
from n2d2.configurable import Spec
from n2d2.error_handler import WrongInputType
from n2d2.filler import Filler, Normal
from n2d2.quantizer import CellQuantizer, check_quantizer
from n2d2.solver import SGD, Solver
from n2d2.tensor import Tensor
from n2d2.utils import thread_flag

QUANTIZER_SPEC = Spec(CellQuantizer, None, allow_none=True)


_FILL = threading.local()


@contextlib.contextmanager
def weights_from_file():
    """Cells built inside start with zero weights and biases instead of drawing from their
    fillers: an importer that overwrites every value next skips the draw (VGG-11's 102M-value
    Fc takes seconds to fill). The fillers stay configured (refill_* draws as usual) but the
    global random stream is not advanced by the skipped draws."""
    with thread_flag(_FILL, "skip"):
        yield


def _fill(filler, shape, fan_in, fan_out):
    if getattr(_FILL, "skip", False):
        return np.zeros(shape, dtype=np.float32)
    return filler.fill(shape, fan_in, fan_out)


def _default_filler():
    return Normal(mean=0.0, std_dev=0.05)


def solver_and_filler_specs():
    """The object-valued parameters every weighted cell prints last, in upstream order."""
    return {
        "activation": ACTIVATION_SPEC,
        "weights_solver": Spec(Solver, SGD),
        "bias_solver": Spec(Solver, SGD),
        "weights_filler": Spec(Filler, _default_filler),
        "bias_filler": Spec(Filler, _default_filler),
        "quantizer": QUANTIZER_SPEC,
    }


class WeightedCell(SolverPair, NeuralNetworkCell):
    """Base of cells with trainable weights and biases."""

    _solver_keys = ("weights_solver", "bias_solver")

    def __init__(self, arguments, solver=None, filler=None, quantizer=None, **config):
        check_quantizer(quantizer, CellQuantizer, "cell")
        self._extra_quantizer = None   # cells that do not print a quantizer (Deconv) keep it here
        if quantizer is not None and "quantizer" in self._parameters:
            config["quantizer"] = quantizer
        elif quantizer is not None:
            self._extra_quantizer = quantizer
            quantizer._attach(self)
        if solver is not None and not isinstance(solver, Solver):
            raise WrongInputType("solver", type(solver), ["Solver"])
        if filler is not None and not isinstance(filler, Filler):
            raise WrongInputType("filler", type(filler), ["Filler"])
        super().__init__(arguments, **config)
        if solver is not None:
            self.set_solver(solver)
        if filler is not None:
            self._config["weights_filler"] = filler
            self._config["bias_filler"] = filler
        self._weights = None
        self._biases = None
        self.refill_weights()
        self.refill_bias()

    # -- what subclasses define ------------------------------------------------------------------
    def _weights_shape(self):
        raise NotImplementedError

    def _fans(self):
        """(fan_in, fan_out) for fillers."""
        raise NotImplementedError

    def _weight_view(self, output_index, channel_index):
        """The array slice that `get_weight(o, c)` shows."""
        raise NotImplementedError

    def _nb_weight_channels(self) -> int:
        return self._args["nb_inputs"]

    def _mask_weights(self):
        """Zero the weights of unconnected (output, channel) pairs (mapping); default none."""

    # -- filling --------------------------------------------------------------------------------
    def _store(self, attribute, values):
        """Write `values` into the parameter array in place when it exists with that shape:
        compiled programs hold references to these arrays, a rebinding would go unseen."""
        current = getattr(self, attribute, None)
        if current is not None and tuple(current.shape) == tuple(values.shape):
            current[...] = self._to_model_device(values)
        else:
            setattr(self, attribute, self._to_model_device(values))

    def refill_weights(self):
        fan_in, fan_out = self._fans()
        self._store("_weights", _fill(self._config["weights_filler"], self._weights_shape(), fan_in, fan_out))
        self._mask_weights()

    def refill_bias(self):
        if self._config.get("no_bias"):
            self._biases = None
            return
        fan_in, fan_out = self._fans()
        self._store("_biases", _fill(self._config["bias_filler"], (self._args["nb_outputs"],), fan_in, fan_out))

    def set_weights_filler(self, filler, refill=False):
        self.set_parameter("weights_filler", filler)
        if refill:
            self.refill_weights()

    def set_bias_filler(self, filler, refill=False):
        if self._config.get("no_bias"):
            raise RuntimeError(f"Cell '{self._name}' has no bias (no_bias=True)")
        self.set_parameter("bias_filler", filler)
        if refill:
            self.refill_bias()

    set_biases_filler = set_bias_filler

    def set_filler(self, filler, refill=False):
        self.set_weights_filler(filler, refill)
        if not self._config.get("no_bias"):
            self.set_bias_filler(filler, refill)

    @property
    def filler(self):
        raise AttributeError("'filler' is write-only: read weights_filler or bias_filler")

    @filler.setter
    def filler(self, value):
        self.set_filler(value)

    def get_quantizer(self):
        """The weight quantizer (None without one)."""
        if "quantizer" in self._parameters:
            return self._config["quantizer"]
        return self._extra_quantizer

    def has_quantizer(self) -> bool:
        return self.get_quantizer() is not None

    def _ir_params(self):
        # every weighted cell's `_ir_node` is `_with_quantizer(op, attrs, self._params())`
        if self.get_quantizer() is None:
            return self._params(), None
        return super()._ir_params()

    def _with_quantizer(self, op, attrs, params):
        """The IR node with the weight quantizer: attribute `weight_quantizer` (a plain-data spec)
        and, for LSQ, the learned step as parameter `weight_step` trained by the quantizer's solver."""
        q = self.get_quantizer()
        if q is None:
            return op, attrs, params
        attrs = dict(attrs, weight_quantizer=q.ir_spec())
        learned = q.learnable()
        if learned is not None:
            params = dict(params, weight_step=learned)
        return op, attrs, params

    def update(self):
        if "weight_step" in self._param_grads:
            step, solver = self.get_quantizer().learnable()
            solver.update(step, _like(self._param_grads["weight_step"], step), self._batch_size)
        if "weights" in self._param_grads:
            self._config["weights_solver"].update(self._weights, self._param_grads["weights"], self._batch_size)
            self._mask_weights()
        if "biases" in self._param_grads and self._biases is not None:
            self._config["bias_solver"].update(self._biases, self._param_grads["biases"], self._batch_size)

    # -- weights API ----------------------------------------------------------------------------
    def _check_indices(self, output_index, channel_index):
        nb_out = self._args["nb_outputs"]
        nb_ch = self._nb_weight_channels()
        if not (isinstance(output_index, int) and 0 <= output_index < nb_out):
            raise ValueError(f"Cell '{self._name}': output index {output_index} out of range [0, {nb_out})")
        if not (isinstance(channel_index, int) and 0 <= channel_index < nb_ch):
            raise ValueError(f"Cell '{self._name}': channel index {channel_index} out of range [0, {nb_ch})")

    def get_weight(self, output_index, channel_index) -> Tensor:
        self._check_indices(output_index, channel_index)

        view = to_host(self._weight_view(output_index, channel_index))
        return Tensor._wrap(np.array(view, dtype=np.float32).reshape(self._weight_tensor_shape()))

    def _weight_tensor_shape(self):
        return [1]

    def set_weight(self, output_index, channel_index, weight: Tensor):
        if not isinstance(weight, Tensor):
            raise WrongInputType("weight", type(weight), ["Tensor"])
        self._check_indices(output_index, channel_index)
        view = self._weight_view(output_index, channel_index)
        values = weight.to_numpy()
        if values.size != view.size:
            raise ValueError(f"Cell '{self._name}': weight ({output_index}, {channel_index}) has "
                             f"{view.size} values {self._weight_tensor_shape()}, got {weight.shape()}")
        view[...] = self._to_model_device(values.reshape(view.shape).astype(np.float32))

    def get_weights(self):
        return [[self.get_weight(o, c) for c in range(self._nb_weight_channels())]
                for o in range(self._args["nb_outputs"])]

    def has_bias(self) -> bool:
        return not self._config.get("no_bias")

    def _params(self):
        """The IR parameters {role: (array, solver)}: weights, and biases unless no_bias."""
        params = {"weights": (self._weights, self._config["weights_solver"])}
        if self.has_bias():
            params["biases"] = (self._biases, self._config["bias_solver"])
        return params

    def _check_bias(self, output_index):
        if not self.has_bias():
            raise RuntimeError(f"Cell '{self._name}' has no bias (no_bias=True)")
        nb_out = self._args["nb_outputs"]
        if not (isinstance(output_index, int) and 0 <= output_index < nb_out):
            raise ValueError(f"Cell '{self._name}': output index {output_index} out of range [0, {nb_out})")

    def get_bias(self, output_index) -> Tensor:
        self._check_bias(output_index)

        return Tensor._wrap(np.array(to_host(self._biases[output_index:output_index + 1]), dtype=np.float32))

    def set_bias(self, output_index, bias: Tensor):
        if not isinstance(bias, Tensor):
            raise WrongInputType("bias", type(bias), ["Tensor"])
        self._check_bias(output_index)
        if len(bias) != 1:
            raise ValueError(f"Cell '{self._name}': a bias is one value, got a tensor of shape {bias.shape()}")
        self._biases[output_index] = float(bias[0])

    def get_biases(self):
        if not self.has_bias():
            raise RuntimeError(f"Cell '{self._name}' has no bias (no_bias=True)")
        return [self.get_bias(o) for o in range(self._args["nb_outputs"])]

    def _on_parameter_change(self, key, value):
        if key == "quantizer" and value is not None:
            value._attach(self)
        if key == "no_bias":
            if value:
                self._biases = None
            elif getattr(self, "_biases", None) is None and getattr(self, "_weights", None) is not None:
                self.refill_bias()

    # -- free parameters ------------------------------------------------------------------------
    def _weights_rows(self):
        """The weights as N2D2 writes them: one row per output (default: all inputs flattened)."""
        w = to_host(self._weights)
        return w.reshape(w.shape[0], -1)

    def _set_weights_rows(self, rows):
        self._weights[...] = self._to_model_device(rows.reshape(self._weights.shape))
        self._mask_weights()

    def _parameter_files(self):
        files = {"_weights": format_rows(self._weights_rows())}
        if self.has_bias():
            files["_biases"] = format_rows(to_host(self._biases).reshape(-1, 1))
        return files

    def _parameter_shapes(self):
        shapes = {"_weights": self._weights_rows().shape}
        if self.has_bias():
            shapes["_biases"] = (self._args["nb_outputs"],)
        return shapes

    def _set_parameter_values(self, values):
        if "_weights" in values:
            self._set_weights_rows(values["_weights"])
        if "_biases" in values and self.has_bias():
            self._biases[...] = self._to_model_device(values["_biases"])
