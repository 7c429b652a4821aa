"""Scaling objects (`n2d2.scaling`): per-output-channel rescaling applied by a `Scaling` cell.

Each object is a configuration (constructor arguments, printed as upstream) plus
`forward(x)` / `backward(dy, x)` that call `n2d2.ops.scaling`, where the formulas are.
"""
from numbers import Integral, Real

from n2d2.configurable import Configurable
from n2d2.error_handler import WrongInputType, WrongValue
from n2d2.ops import scaling as ops
from n2d2.settings import global_variables


def _is_int(v) -> bool:
    return isinstance(v, Integral) and not isinstance(v, bool)


def _is_real(v) -> bool:
    return isinstance(v, Real) and not isinstance(v, bool)


def _check_list(name, value, item_check, item_name):
    if not isinstance(value, list):
        raise WrongInputType(name, type(value), ["list"])
    for v in value:
        if not item_check(v):
            raise WrongInputType(f"{name} element", type(v), [item_name])
    return value


def _check_bool(name, value):
    if not isinstance(value, bool):
        raise WrongInputType(name, type(value), ["bool"])
    return value


def _is_shift(v) -> bool:
    return _is_int(v) and 0 <= v < 64


def _is_shift_pair(v) -> bool:
    return isinstance(v, (list, tuple)) and len(v) == 2 and all(_is_shift(s) for s in v)


def _clipping_arguments(is_clipped, clipping, item_check=_is_real, item_name="float"):
    """The checked `is_clipped` and `clipping` (None: []) arguments every scaling mode ends with."""
    clipping = [] if clipping is None else clipping
    _check_bool("is_clipped", is_clipped)
    _check_list("clipping", clipping, item_check, item_name)
    return {"is_clipped": is_clipped, "clipping": list(clipping)}


class ScalingObject(Configurable):
    """Abstract base of the scaling modes."""

    def __init__(self, arguments, model=None):
        if type(self) is ScalingObject:
            raise TypeError("ScalingObject is abstract")
        self._model = model or global_variables.default_model
        super().__init__(arguments)

    def nb_outputs(self) -> int:
        """How many output channels the per-output lists describe."""
        return len(self._args[self._arguments[self._per_output_index]])

    _per_output_index = 0

    def check_channels(self, nb_channels: int, cell_name: str):
        """Raise ValueError unless the per-output lists have one entry per channel."""
        if self.nb_outputs() != nb_channels:
            raise ValueError(f"Cell '{cell_name}': {self.get_type()} has {self.nb_outputs()} per-output "
                             f"factors for an input of {nb_channels} channels")
        if self._args["is_clipped"] and len(self._args["clipping"]) != nb_channels:
            raise ValueError(f"Cell '{cell_name}': {self.get_type()} has {len(self._args['clipping'])} "
                             f"clipping values for an input of {nb_channels} channels")

    def ir_spec(self) -> tuple:
        """The plain-data form of this scaling (attrs["scaling"] of a Scaling node)."""
        raise NotImplementedError

    def _clipping_spec(self):
        return None if not self._args["is_clipped"] else tuple(float(v) for v in self._args["clipping"])

    def forward(self, x):
        return ops.scaling_forward(self.ir_spec(), x)

    def backward(self, dy, x):
        return ops.scaling_backward(self.ir_spec(), dy, x)


class FloatingPointScaling(ScalingObject):
    """y = scaling_per_output[c] * x, x first clamped to [0, clipping[c]] when is_clipped."""

    _arguments = ("scaling_per_output", "is_clipped", "clipping")

    def __init__(self, scaling_per_output, is_clipped=False, clipping=None, model=None):
        _check_list("scaling_per_output", scaling_per_output, _is_real, "float")
        super().__init__({"scaling_per_output": list(scaling_per_output),
                          **_clipping_arguments(is_clipped, clipping)}, model)

    def ir_spec(self):
        return ("FloatingPoint", tuple(float(v) for v in self._args["scaling_per_output"]), self._clipping_spec())


class FixedPointScaling(ScalingObject):
    """y = (round(x) * scaling[c] + 2^(f-1)) >> f, f = nb_fractional_bits."""

    _arguments = ("nb_fractional_bits", "scaling", "is_clipped", "clipping")
    _per_output_index = 1

    def __init__(self, nb_fractional_bits, scaling, is_clipped=False, clipping=None, model=None):
        if not _is_int(nb_fractional_bits):
            raise WrongInputType("nb_fractional_bits", type(nb_fractional_bits), ["int"])
        if not 0 <= nb_fractional_bits < 63:
            raise WrongValue("nb_fractional_bits", nb_fractional_bits, ["0..62"])
        _check_list("scaling", scaling, _is_int, "int")
        super().__init__({"nb_fractional_bits": nb_fractional_bits, "scaling": list(scaling),
                          **_clipping_arguments(is_clipped, clipping)}, model)

    def ir_spec(self):
        return ("FixedPoint", tuple(int(v) for v in self._args["scaling"]), self._clipping_spec(),
                int(self._args["nb_fractional_bits"]))


class SingleShiftScaling(ScalingObject):
    """y = (round(x) + 2^(s[c]-1)) >> s[c], x first capped at clipping[c] when is_clipped."""

    _arguments = ("scaling", "is_clipped", "clipping")

    def __init__(self, scaling, is_clipped=False, clipping=None, model=None):
        _check_list("scaling", scaling, _is_shift, "int in [0, 64)")
        super().__init__({"scaling": list(scaling), **_clipping_arguments(is_clipped, clipping)}, model)

    def ir_spec(self):
        return ("SingleShift", tuple(int(v) for v in self._args["scaling"]), self._clipping_spec())


class DoubleShiftScaling(ScalingObject):
    """y = (v + (v << a[c]) + 2^(b[c]-1)) >> b[c], v = round(x), scaling[c] = (a[c], b[c]).

    `clipping` (pairs) is stored and printed but not applied, as upstream.
    """

    _arguments = ("scaling", "is_clipped", "clipping")

    def __init__(self, scaling, is_clipped=False, clipping=None, model=None):
        _check_list("scaling", scaling, _is_shift_pair, "pair of ints in [0, 64)")
        arguments = _clipping_arguments(is_clipped, clipping, _is_shift_pair, "pair of ints in [0, 64)")
        arguments["clipping"] = [tuple(p) for p in arguments["clipping"]]
        super().__init__({"scaling": [tuple(p) for p in scaling], **arguments}, model)

    def check_channels(self, nb_channels: int, cell_name: str):
        if self.nb_outputs() != nb_channels:
            raise ValueError(f"Cell '{cell_name}': DoubleShiftScaling has {self.nb_outputs()} per-output "
                             f"shift pairs for an input of {nb_channels} channels")

    def ir_spec(self):
        return ("DoubleShift", tuple((int(a), int(b)) for a, b in self._args["scaling"]))
