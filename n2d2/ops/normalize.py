"""L2 normalisation across the channels of each pixel (N2D2's NormalizeCell, `Norm=L2`)."""
from n2d2.backend import array_module
from n2d2.ir.ops import OpDef, _concat, _concat_shape, _split_channels, register

EPSILON = 1e-12  # added to the sum of squares: an all-zero pixel stays zero instead of NaN


def normalize_forward(x):
    """(y, r): y = x / r with r = sqrt(sum over channels of x**2 + EPSILON), per pixel."""
    xp = array_module(x)
    r = xp.sqrt((x * x).sum(axis=1, keepdims=True) + EPSILON)
    return x / r, r


def normalize_backward(dy, y, r):
    """dx = (dy - y * sum_c(dy * y)) / r (the Jacobian of x / ||x|| applied to dy)."""
    return (dy - y * (dy * y).sum(axis=1, keepdims=True)) / r


# -- the IR op ------------------------------------------------------------
@register
class Normalize(OpDef):
    """L2 normalisation across channels at each pixel (N2D2's NormalizeCell); no attrs."""

    name = "Normalize"
    ini_names = ("Normalize",)
    max_inputs = None

    def _infer(self, attrs, in_shapes, param_shapes):
        return [_concat_shape(in_shapes)]

    def _forward(self, attrs, xs, params, training):
        y, r = normalize_forward(_concat(xs))
        return y, (y, r, [a.shape for a in xs])

    def _backward(self, attrs, saved, dy, needs, params):
        y, r, shapes = saved
        return _split_channels(normalize_backward(dy, y, r), shapes, needs), {}
