"""`RangeAffine`: two affine operations on pixel values (normalisation)."""
import numpy as np

from n2d2.configurable import Spec, check_choice
from n2d2.error_handler import WrongInputType, WrongValue
from n2d2.transform._image import restore_dtype, work_dtype
from n2d2.transform.transformation import Transformation

OPERATORS = ("Plus", "Minus", "Multiplies", "Divides")


def _check_operator(name, op):
    return check_choice(name, op, OPERATORS)


def _check_values(name, value):
    values = value if isinstance(value, (list, tuple)) else [value]
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)):
            raise WrongInputType(name, type(v), ["float", "list of float"])
    if not values:
        raise WrongValue(name, value, ["a non-empty list of float"])
    return value


class RangeAffine(Transformation):
    """`y = (x <first_operator> first_value) <second_operator> second_value`, per channel.

    Values are one float for every channel or a list with one float per channel (in the
    stored BGR order). The result is float (no 1/255 scaling of 8-bit data afterwards),
    unless `truncate` is True, which rounds and saturates it back to the input's type.
    Example (ImageNet): ``RangeAffine("Minus", [103.94, 116.78, 123.68], "Multiplies", [0.017])``.
    """

    _arguments = ("first_operator", "first_value", "second_operator", "second_value")
    _parameters = {"truncate": Spec(bool, False)}

    def __init__(self, first_operator: str, first_value, second_operator: str = "Plus", second_value=None, **config):
        _check_operator("first_operator", first_operator)
        _check_operator("second_operator", second_operator)
        _check_values("first_value", first_value)
        second_value = [0.0] if second_value is None else second_value
        _check_values("second_value", second_value)
        super().__init__({"first_operator": first_operator, "first_value": first_value,
                          "second_operator": second_operator, "second_value": second_value}, **config)

    @staticmethod
    def _operate(y, op, value, channels):
        values = value if isinstance(value, (list, tuple)) else [value]
        if len(values) not in (1, channels):
            raise RuntimeError(f"RangeAffine: {len(values)} values given for an image with {channels} channels "
                               f"(give one value, or one per channel)")
        v = np.asarray([float(a) for a in values], dtype=y.dtype).reshape(1, -1, 1, 1)
        if op == "Plus":
            return y + v
        if op == "Minus":
            return y - v
        if op == "Multiplies":
            return y * v
        return y / v

    def _forward(self, x: np.ndarray, rng) -> np.ndarray:
        a = self._args
        y = x.astype(work_dtype(x.dtype))
        y = self._operate(y, a["first_operator"], a["first_value"], x.shape[1])
        y = self._operate(y, a["second_operator"], a["second_value"], x.shape[1])
        if self._config["truncate"] and not np.issubdtype(x.dtype, np.floating):
            return restore_dtype(y, x.dtype)
        return y
