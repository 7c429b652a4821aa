"""`Activation`: applies an activation function alone (several inputs are concatenated)."""
from n2d2.activation import ActivationFunction
from n2d2.cells.nn.base import ACTIVATION_SPEC
from n2d2.cells.nn.lazy import LazyCell
from n2d2.error_handler import WrongInputType
from n2d2.ir.ops import activation_spec


class Activation(LazyCell):
    """Output = activation(input), same shape; an Interface is concatenated along channels first."""

    _parameters = {"activation": ACTIVATION_SPEC}

    def __init__(self, activation, **config):
        if activation is not None and not isinstance(activation, ActivationFunction):
            raise WrongInputType("activation", type(activation), ["ActivationFunction"])
        super().__init__(activation=activation, **config)

    def _ir_node(self):
        return "Activation", {"activation": activation_spec(self._config["activation"])}, {}
