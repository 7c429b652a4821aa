"""`Scaling`: applies an `n2d2.scaling` object (per-output-channel rescaling)."""
from n2d2.cells.nn.base import ACTIVATION_SPEC
from n2d2.cells.nn.lazy import LazyCell
from n2d2.error_handler import WrongInputType
from n2d2.ir.ops import activation_spec
from n2d2.scaling import ScalingObject


class Scaling(LazyCell):
    """Output channel c = scaling rule of `scaling` for channel c (see `n2d2.scaling`)."""

    _arguments = ("scaling",)
    _parameters = {"activation": ACTIVATION_SPEC}

    def __init__(self, scaling, **config):
        if not isinstance(scaling, ScalingObject):
            raise WrongInputType("scaling", type(scaling),
                                 ["FloatingPointScaling", "FixedPointScaling", "SingleShiftScaling",
                                  "DoubleShiftScaling"])
        super().__init__({"scaling": scaling}, **config)

    def _build(self, tensors, channels):
        self._args["scaling"].check_channels(channels, self._name)

    def _ir_node(self):
        return "Scaling", {"scaling": self._args["scaling"].ir_spec(),
                           "activation": activation_spec(self._config["activation"])}, {}
