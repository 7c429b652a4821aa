"""Permutation of N2D2 axes [X, Y, Z, B] applied to NCHW arrays.

N2D2 defines out.dims()[i] = in.dims()[perm[i]] in its [X, Y, Z, B] order; numpy axis j is
N2D2 axis 3 - j, so the numpy permutation is p[j] = 3 - perm[3 - j]
(perm [1, 0, 2, 3] -> numpy (0, 1, 3, 2)). N2D2 does not permute the batch: perm[3] == 3.
"""
from n2d2.backend import array_module


def numpy_axes(perm):
    """The numpy transpose axes equivalent to N2D2 `perm`."""
    return tuple(3 - perm[3 - j] for j in range(4))


def inverse_axes(axes):
    inv = [0] * len(axes)
    for j, a in enumerate(axes):
        inv[a] = j
    return tuple(inv)


def transpose_forward(x, perm):
    xp = array_module(x)
    return xp.ascontiguousarray(x.transpose(numpy_axes(perm)))


def transpose_backward(dy, perm):
    xp = array_module(dy)
    return xp.ascontiguousarray(dy.transpose(inverse_axes(numpy_axes(perm))))
