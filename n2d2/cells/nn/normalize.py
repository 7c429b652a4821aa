"""`Normalize`: L2 normalisation across the channels of each pixel (N2D2's NormalizeCell)."""
from n2d2.cells.nn.base import ACTIVATION_SPEC
from n2d2.cells.nn.lazy import LazyCell
from n2d2.error_handler import WrongValue
from n2d2.ir.ops import activation_spec


class Normalize(LazyCell):
    """y = x / sqrt(sum over channels of x**2 + 1e-12) at each pixel (as many outputs as inputs).

    Parameters
    ----------
    norm : str
        Only "L2" (the norm N2D2's NormalizeCell implements).
    """

    _arguments = ("norm",)
    _parameters = {"activation": ACTIVATION_SPEC}

    def __init__(self, norm="L2", **config):
        if norm != "L2":
            raise WrongValue("norm", norm, ["L2"])
        super().__init__({"norm": norm}, **config)

    def _build(self, tensors, channels):
        pass

    def _ir_node(self):
        return "Normalize", {"activation": activation_spec(self._config["activation"])}, {}
