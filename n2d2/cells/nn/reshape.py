"""`Reshape`: new per-sample shape given in N2D2 order [X, Y, Z] (no batch)."""
import numpy as np

from n2d2.cells.nn.base import ACTIVATION_SPEC
from n2d2.cells.nn.lazy import LazyCell
from n2d2.error_handler import WrongInputType, WrongValue
from n2d2.ir.ops import activation_spec


class Reshape(LazyCell):
    """Reshapes each sample to `dims` = [X, Y, Z] (N2D2 order; missing trailing dims are 1).

    As N2D2: 0 keeps the input's size on that axis, one -1 is inferred; a fourth (batch) entry
    is ignored. Input NCHW [1, 5, 4, 4] with dims [4, 4, 5] keeps its shape.
    """

    _arguments = ("dims",)
    _parameters = {"activation": ACTIVATION_SPEC}

    def __init__(self, dims, **config):
        if not isinstance(dims, list):
            raise WrongInputType("dims", type(dims), ["list"])
        for d in dims:
            if not isinstance(d, int) or isinstance(d, bool):
                raise WrongInputType("dims element", type(d), ["int"])
        if len(dims) > 4 or not dims or any(d < -1 for d in dims) or dims.count(-1) > 1:
            raise WrongValue("dims", dims, ["1 to 4 ints (0 = keep, at most one -1)"])
        super().__init__({"dims": list(dims)}, **config)
        self._sample_shape = None  # numpy [C, H, W] of the output

    def _build(self, tensors, channels):
        in_dims = [tensors[0].dimX(), tensors[0].dimY(), channels]
        dims = (list(self._args["dims"][:3]) + [1, 1, 1])[:3]
        dims = [in_dims[i] if d == 0 else d for i, d in enumerate(dims)]
        size = int(np.prod(in_dims))
        if -1 in dims:
            known = int(np.prod([d for d in dims if d != -1]))
            if known == 0 or size % known:
                raise ValueError(f"Cell '{self._name}' (Reshape): cannot infer -1 in {self._args['dims']} for an "
                                 f"input of N2D2 dims {in_dims}")
            dims[dims.index(-1)] = size // known
        if int(np.prod(dims)) != size:
            raise ValueError(f"Cell '{self._name}' (Reshape): dims {self._args['dims']} hold {int(np.prod(dims))} "
                             f"values per sample, the input [X, Y, Z] = {in_dims} holds {size}")
        self._sample_shape = tuple(dims[::-1])

    def _ir_node(self):
        return "Reshape", {"shape": self._sample_shape, "activation": activation_spec(self._config["activation"])}, {}
