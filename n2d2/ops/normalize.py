"""L2 normalisation across the channels of each pixel (N2D2's NormalizeCell, `Norm=L2`)."""
from n2d2.backend import array_module

EPSILON = 1e-12  # added to the sum of squares: an all-zero pixel stays zero instead of NaN


def normalize_forward(x):
    """(y, r): y = x / r with r = sqrt(sum over channels of x**2 + EPSILON), per pixel."""
    xp = array_module(x)
    r = xp.sqrt((x * x).sum(axis=1, keepdims=True) + EPSILON)
    return x / r, r


def normalize_backward(dy, y, r):
    """dx = (dy - y * sum_c(dy * y)) / r (the Jacobian of x / ||x|| applied to dy)."""
    return (dy - y * (dy * y).sum(axis=1, keepdims=True)) / r
