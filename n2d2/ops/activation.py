"""Activation functions, forward and backward (elementwise)."""
from n2d2.backend import array_module


def linear_forward(z, clipping=0.0):
    if clipping > 0:
        xp = array_module(z)
        return xp.clip(z, -clipping, clipping)
    return z


def linear_backward(dy, z, clipping=0.0):
    if clipping > 0:
        return dy * ((z > -clipping) & (z < clipping))
    return dy


def rectifier_forward(z, leak_slope=0.0, clipping=0.0):
    xp = array_module(z)
    if leak_slope == 0.0:
        y = xp.maximum(z, 0)
    else:
        y = xp.where(z > 0, z, z * z.dtype.type(leak_slope))
    if clipping > 0:
        y = xp.minimum(y, z.dtype.type(clipping))
    return y


def rectifier_backward(dy, z, leak_slope=0.0, clipping=0.0):
    xp = array_module(z)
    positive = z > 0
    if clipping > 0:
        positive &= z < clipping
    if leak_slope == 0.0:
        return dy * positive
    if clipping <= 0:   # a NaN z takes the leak, as the kernels' `y > 0 ? 1 : leak`
        return xp.where(positive, dy, dy * dy.dtype.type(leak_slope))
    return xp.where(positive, dy, dy * dy.dtype.type(leak_slope) * (z <= 0))


def tanh_forward(z, alpha=1.0):
    xp = array_module(z)
    return xp.tanh(z * z.dtype.type(alpha)) if alpha != 1.0 else xp.tanh(z)


def tanh_backward(dy, z, alpha=1.0):
    y = tanh_forward(z, alpha)
    return dy * (1 - y * y) * dy.dtype.type(alpha)


def logistic_forward(z):
    xp = array_module(z)
    # Split by sign to avoid overflow in exp.
    e = xp.exp(-xp.abs(z))
    return xp.where(z >= 0, 1 / (1 + e), e / (1 + e))


def logistic_backward(dy, z):
    y = logistic_forward(z)
    return dy * y * (1 - y)


def saturation_forward(z, threshold=1.0):
    xp = array_module(z)
    return xp.clip(z, -threshold, threshold)


def saturation_backward(dy, z, threshold=1.0):
    return dy * ((z > -threshold) & (z < threshold))


def softplus_forward(z):
    xp = array_module(z)
    return xp.logaddexp(z, 0)


def softplus_backward(dy, z):
    return dy * logistic_forward(z)
