"""Dropout as N2D2 does it: keep each element with probability 1 - p, without rescaling.

Upstream's DropoutCell does not divide the kept values by (1 - p) during training, so a net
trained with dropout sees smaller activations in learn mode than in test mode (identity).
"""
import numpy as np


def dropout_mask(rng, shape, dropout: float, dtype=np.float32):
    """A host 0/1 mask of `shape` where each element is 1 with probability 1 - dropout."""
    return (rng.random(shape, dtype=np.float32) >= dropout).astype(dtype)


def dropout_forward(x, mask):
    return x * mask


def dropout_backward(dy, mask):
    return dy * mask
