"""Softmax over channels at each pixel, optionally over consecutive groups of channels."""
from n2d2.backend import array_module


def _grouped(a, group_size):
    """View [N, C, H, W] as [N, C / g, g, H, W] (g = C when group_size is 0)."""
    n, c, h, w = a.shape
    if c == 0:
        raise ValueError(f"Softmax over 0 channels (input shape {list(a.shape)}); expected at least 1")
    g = group_size or c
    if c % g:
        raise ValueError(f"Softmax group_size {group_size} does not divide the {c} channels")
    return a.reshape(n, c // g, g, h, w)


def softmax_forward(x, group_size: int = 0):
    """exp(x - max) / sum(exp(x - max)) over each channel group (numerically stable)."""
    xp = array_module(x)
    xg = _grouped(x, group_size)
    e = xp.exp(xg - xg.max(axis=2, keepdims=True))
    e /= e.sum(axis=2, keepdims=True)
    return e.reshape(x.shape)


def softmax_backward(dy, y, group_size: int = 0):
    """Jacobian-vector product: dx = y * (dy - sum(dy * y)) over each group."""
    yg = _grouped(y, group_size)
    dyg = _grouped(dy, group_size)
    dx = yg * (dyg - (dyg * yg).sum(axis=2, keepdims=True))
    return dx.reshape(y.shape)


def softmax_with_loss_backward(dy):
    """With a fused cross-entropy target, the target already seeds y - onehot: pass it on."""
    return dy
