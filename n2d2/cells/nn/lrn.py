"""`LRN`: local response normalization across channels (N2D2's LRNCell; the op is `n2d2.ops.lrn`)."""
import math

from n2d2.cells.nn.base import ACTIVATION_SPEC
from n2d2.cells.nn.lazy import LazyCell
from n2d2.error_handler import WrongInputType, WrongValue
from n2d2.ir.ops import activation_spec
from n2d2.ops import lrn as _lrn_op  # noqa: F401 (registers the LRN op)


class LRN(LazyCell):
    """y = x / (k + alpha / size * sum of x**2 over `size` neighbouring channels) ** beta.

    Parameters
    ----------
    size : int
        Channels in the window (N2D2's `N`; centred, one more above than below for an even size, as ONNX).
    alpha, beta : float
        N2D2's `Alpha`, `Beta` (alpha is divided by `size`, as in ONNX and PyTorch).
    k : float
        N2D2's `K` (ONNX's `bias`).
    """

    _arguments = ("size", "alpha", "beta", "k")
    _parameters = {"activation": ACTIVATION_SPEC}

    def __init__(self, size=5, alpha=1e-4, beta=0.75, k=2.0, **config):
        if not isinstance(size, int) or isinstance(size, bool):
            raise WrongInputType("size", type(size), ["int"])
        if size < 1:
            raise WrongValue("size", size, [], expected="an int >= 1")
        for key, v in (("alpha", alpha), ("beta", beta), ("k", k)):
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise WrongInputType(key, type(v), ["float"])
            if not math.isfinite(v):
                raise WrongValue(key, v, [], expected="a finite number")
        super().__init__({"size": size, "alpha": float(alpha), "beta": float(beta), "k": float(k)}, **config)

    def _ir_node(self):
        a = self._args
        return "LRN", {"size": a["size"], "alpha": a["alpha"], "beta": a["beta"], "bias": a["k"],
                       "activation": activation_spec(self._config["activation"])}, {}
