"""A data transformation (`n2d2.transform`) applied inside a network, as N2D2's TransformationCell.

Each sample of the batch is transformed on its own (random transformations draw per image),
on the host. Nothing is back-propagated through it: the gradient sent to the input is zero.
"""
import numpy as np

from n2d2.backend import array_module, to_device, to_host


def transformation_forward(x, transformation, rng):
    """(N, C, H, W) -> the transformed samples stacked in x's array module and dtype."""
    xp = array_module(x)
    host = to_host(x)
    outs = [np.asarray(transformation.apply_batch(host[i:i + 1], rng)) for i in range(host.shape[0])]
    shapes = {o.shape[1:] for o in outs}
    if len(shapes) > 1:
        raise ValueError(f"{transformation.get_type()} gave samples of different shapes {sorted(shapes)} in one batch")
    y = np.concatenate(outs).astype(x.dtype, copy=False)
    return to_device(y, xp is not np)


def transformation_backward(x_shape, dy):
    """Zero: a transformation of the data is not differentiated (N2D2 back-propagates nothing)."""
    return array_module(dy).zeros(x_shape, dtype=dy.dtype)
