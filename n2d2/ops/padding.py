"""Zero padding of the spatial dims; a negative pad crops instead.

The backward of pad(t, b, l, r) is pad(-t, -b, -l, -r): the gradient of the kept region is
copied back and the gradient of the added border is dropped.
"""
from n2d2.backend import array_module


def output_hw(h: int, w: int, top: int, bot: int, left: int, right: int):
    return h + top + bot, w + left + right


def pad_forward(x, top: int, bot: int, left: int, right: int):
    xp = array_module(x)
    n, c, h, w = x.shape
    oh, ow = output_hw(h, w, top, bot, left, right)
    if oh < 1 or ow < 1:
        raise ValueError(f"Padding ({top}, {bot}, {left}, {right}) leaves nothing of a {h}x{w} input")
    y = xp.zeros((n, c, oh, ow), dtype=x.dtype)
    # Overlap between input rows [0, h) and output rows shifted by `top`.
    iy0, iy1 = max(0, -top), min(h, oh - top)
    ix0, ix1 = max(0, -left), min(w, ow - left)
    if iy1 > iy0 and ix1 > ix0:
        y[:, :, iy0 + top:iy1 + top, ix0 + left:ix1 + left] = x[:, :, iy0:iy1, ix0:ix1]
    return y


def pad_backward(dy, top: int, bot: int, left: int, right: int):
    return pad_forward(dy, -top, -bot, -left, -right)
