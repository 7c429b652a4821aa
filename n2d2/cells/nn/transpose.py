"""`Transpose`: permutes the N2D2 axes [X, Y, Z, B] (the batch axis stays)."""
from n2d2.cells.nn.base import ACTIVATION_SPEC
from n2d2.cells.nn.lazy import LazyCell
from n2d2.error_handler import WrongInputType, WrongValue
from n2d2.ir.ops import activation_spec


class Transpose(LazyCell):
    """out.dims()[i] = in.dims()[perm[i]] in N2D2 order; torch permute(0, 1, 3, 2) is perm [1, 0, 2, 3]."""

    _arguments = ("perm",)
    _parameters = {"activation": ACTIVATION_SPEC}

    def __init__(self, perm, **config):
        if not isinstance(perm, list):
            raise WrongInputType("perm", type(perm), ["list"])
        for p in perm:
            if not isinstance(p, int) or isinstance(p, bool):
                raise WrongInputType("perm element", type(p), ["int"])
        if len(perm) == 3:
            perm = perm + [3]
        if sorted(perm) != [0, 1, 2, 3]:
            raise WrongValue("perm", perm, ["a permutation of [0, 1, 2, 3]"])
        if perm[3] != 3:
            raise WrongValue("perm", perm, ["a permutation that keeps the batch axis (perm[3] == 3)"])
        super().__init__({"perm": list(perm)}, **config)

    def _ir_node(self):
        return "Transpose", {"perm": tuple(self._args["perm"]),
                             "activation": activation_spec(self._config["activation"])}, {}
