"""`Dropout`: zero each element with probability `dropout` in learn mode (N2D2: no rescaling)."""
from n2d2.cells.nn.base import ACTIVATION_SPEC
from n2d2.cells.nn.lazy import LazyCell
from n2d2.configurable import Spec
from n2d2.error_handler import WrongValue
from n2d2.ir.ops import activation_spec


class Dropout(LazyCell):
    """Keeps each element with probability 1 - dropout while learning, unscaled; identity in test mode.

    The mask is drawn from `n2d2.global_variables.rng`, so one seed reproduces a run.
    """

    _parameters = {
        "dropout": Spec(float, 0.5),
        "activation": ACTIVATION_SPEC,
    }

    def _on_parameter_change(self, key, value):
        if key == "dropout" and not 0.0 <= value <= 1.0:
            raise WrongValue("dropout", value, ["a probability in [0.0, 1.0]"])

    def _ir_node(self):
        return "Dropout", {"dropout": self._config["dropout"],
                           "activation": activation_spec(self._config["activation"])}, {}
