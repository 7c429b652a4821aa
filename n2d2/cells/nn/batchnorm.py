"""`BatchNorm2d`: spatial batch normalisation with learnt scales and biases.

Built at construction (nb_inputs channels). Learn mode normalises with the batch statistics
and updates the moving averages (N2D2 CPU convention: running = (1 - momentum) * running +
momentum * batch statistic, with the *biased* batch variance); test mode uses the moving
averages. As in N2D2, `moving_average_momentum=0.0` freezes the statistics: learn mode then
normalises with the moving averages too.
"""

import numpy as np

from n2d2.backend import to_host
from n2d2.cells.nn.base import ACTIVATION_SPEC, NeuralNetworkCell, SolverPair, format_rows
from n2d2.configurable import Spec
from n2d2.error_handler import WrongInputType, WrongValue
from n2d2.ir.ops import activation_spec
from n2d2.solver import SGD, Solver
from n2d2.tensor import Tensor

_FILES = ("scales", "biases", "means", "variances")


class BatchNorm2d(SolverPair, NeuralNetworkCell):
    """Batch normalisation over N, H, W for each of `nb_inputs` channels.

    Parameters
    ----------
    nb_inputs : int
        Number of channels.
    nb_input_cells : int
        Accepted for compatibility (inputs are concatenated along channels).
    """

    _arguments = ("nb_inputs",)
    _parameters = {
        "back_propagate": Spec(bool, True),
        "epsilon": Spec(float, 1e-5),
        "moving_average_momentum": Spec(float, 0.1),
        "activation": ACTIVATION_SPEC,
        "scale_solver": Spec(Solver, SGD),
        "bias_solver": Spec(Solver, SGD),
    }
    _solver_keys = ("scale_solver", "bias_solver")

    # Set to True to fold the unbiased batch variance (cuDNN / PyTorch convention).
    unbiased_moving_variance = False

    def __init__(self, nb_inputs, nb_input_cells=1, solver=None, filler=None, quantizer=None, **config):
        for key, value in (("nb_inputs", nb_inputs), ("nb_input_cells", nb_input_cells)):
            if not isinstance(value, int) or isinstance(value, bool):
                raise WrongInputType(key, type(value), ["int"])
        if nb_inputs < 1:
            raise WrongValue("nb_inputs", nb_inputs, ["a positive int"])
        if filler is not None:
            raise ValueError("BatchNorm2d has no filler (scales start at 1, biases at 0)")
        if quantizer is not None:
            raise WrongInputType("quantizer", type(quantizer), ["None (BatchNorm2d has no quantizer)"])
        if solver is not None and not isinstance(solver, Solver):
            raise WrongInputType("solver", type(solver), ["Solver"])
        super().__init__({"nb_inputs": nb_inputs}, **config)
        if solver is not None:
            self.set_solver(solver)
        c = nb_inputs
        self._scales = self._to_model_device(np.ones(c, dtype=np.float32))
        self._biases = self._to_model_device(np.zeros(c, dtype=np.float32))
        self._means = self._to_model_device(np.zeros(c, dtype=np.float32))
        self._variances = self._to_model_device(np.ones(c, dtype=np.float32))

    def _on_parameter_change(self, key, value):
        if key == "moving_average_momentum" and not 0.0 <= value < 1.0:
            raise WrongValue("moving_average_momentum", value, ["a float in [0.0, 1.0)"])
        if key == "epsilon" and value < 0.0:
            raise WrongValue("epsilon", value, ["a non-negative float"])

    # -- calling --------------------------------------------------------------------------------
    def _check_input(self, tensors):
        for t in tensors:
            if t.nb_dims() != 4:
                raise ValueError(f"Cell '{self._name}' (BatchNorm2d): input tensors must have 4 dims "
                                 f"(N, C, H, W), got shape {t.shape()}")
        channels = sum(t.dimZ() for t in tensors)
        if channels != self._args["nb_inputs"]:
            raise ValueError(f"Cell '{self._name}' (BatchNorm2d): input shapes {[t.shape() for t in tensors]} "
                             f"have {channels} channels, expected nb_inputs = {self._args['nb_inputs']}")

    def get_nb_outputs(self) -> int:
        return self._args["nb_inputs"]

    def _ir_node(self):
        c = self._config
        attrs = {"epsilon": c["epsilon"], "momentum": c["moving_average_momentum"],
                 "unbiased": self.unbiased_moving_variance, "activation": activation_spec(c["activation"])}
        params = {"scales": (self._scales, c["scale_solver"]), "biases": (self._biases, c["bias_solver"]),
                  "means": (self._means, None), "variances": (self._variances, None)}
        return "BatchNorm", attrs, params

    def update(self):
        if "scales" in self._param_grads:
            self._config["scale_solver"].update(self._scales, self._param_grads["scales"], self._batch_size)
        if "biases" in self._param_grads:
            self._config["bias_solver"].update(self._biases, self._param_grads["biases"], self._batch_size)

    # -- fillers ----------------------------------------------------------------------------------
    def set_filler(self, filler, refill=False):
        raise ValueError(f"Cell '{self._name}': BatchNorm2d has no filler (scales start at 1, biases at 0)")

    def has_bias(self) -> bool:
        return True

    def has_quantizer(self) -> bool:
        return False

    # -- parameters -----------------------------------------------------------------------------
    def _tensor(self, array) -> Tensor:
        return Tensor._wrap(np.array(to_host(array), dtype=np.float32).reshape(1, -1, 1, 1))

    def get_scales(self) -> Tensor:
        return self._tensor(self._scales)

    def get_biases(self) -> Tensor:
        return self._tensor(self._biases)

    def get_means(self) -> Tensor:
        return self._tensor(self._means)

    def get_variances(self) -> Tensor:
        return self._tensor(self._variances)

    def _set(self, name, values):
        if not isinstance(values, Tensor):
            raise WrongInputType(name, type(values), ["Tensor"])
        if len(values) != self._args["nb_inputs"]:
            raise ValueError(f"Cell '{self._name}': {name} needs {self._args['nb_inputs']} values, "
                             f"got a tensor of shape {values.shape()}")
        getattr(self, "_" + name)[...] = self._to_model_device(values.to_numpy().reshape(-1).astype(np.float32))

    def set_scales(self, values: Tensor):
        self._set("scales", values)

    def set_biases(self, values: Tensor):
        self._set("biases", values)

    def set_means(self, values: Tensor):
        self._set("means", values)

    def set_variances(self, values: Tensor):
        self._set("variances", values)

    def _parameter_files(self):
        return {f"_{name}": format_rows(to_host(getattr(self, "_" + name)).reshape(-1, 1)) for name in _FILES}

    def _parameter_shapes(self):
        return {f"_{name}": (self._args["nb_inputs"],) for name in _FILES}

    def _set_parameter_values(self, values):
        for name in _FILES:
            if f"_{name}" in values:
                getattr(self, "_" + name)[...] = self._to_model_device(values[f"_{name}"])
