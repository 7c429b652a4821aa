"""Dropout as N2D2 does it: keep each element with probability 1 - p, without rescaling.

Upstream's DropoutCell does not divide the kept values by (1 - p) during training, so a net
trained with dropout sees smaller activations in learn mode than in test mode (identity).
"""
import numpy as np

from n2d2.backend import array_module, to_device
from n2d2.ir.lowering import CopyLowering
from n2d2.ir.ops import _concat, _ConcatenatingOp, _split_channels, register
from n2d2.settings import global_variables


def dropout_mask(rng, shape, dropout: float, dtype=np.float32):
    """A host 0/1 mask of `shape` where each element is 1 with probability 1 - dropout."""
    return (rng.random(shape, dtype=np.float32) >= dropout).astype(dtype)


def fill_dropout_mask(rng, out, dropout: float):
    """`out[...] = dropout_mask(rng, out.shape, dropout)` for a float32 host `out`: the same draws
    and values, drawn into `out` (no float32 draws, mask or copy allocated per step)."""
    rng.random(out=out, dtype=np.float32)
    keep = out >= dropout
    out[...] = keep


def dropout_forward(x, mask):
    return x * mask


def dropout_backward(dy, mask):
    return dy * mask


# -- the IR op ------------------------------------------------------------
@register
class Dropout(CopyLowering, _ConcatenatingOp):
    """attrs: dropout (drop probability; kept values are not rescaled, as N2D2)."""

    name = "Dropout"
    per_sample = True
    onnx_names = ("Dropout",)
    ini_names = ("Dropout",)
    elementwise = True
    keeps_sign = True
    passthrough = "inference"
    copy_in_place = False   # a training forward applies its mask

    def kernel_context(self, ctx, graph, node, g, training, plan, aux_slot, stats_kind, activation):
        if training:
            ctx.aux["mask"] = aux_slot(f"{node}.mask", graph.output_types(node)[0].shape, "dropout")

    def _forward(self, attrs, xs, params, training):
        x = _concat(xs)
        if not training:
            return x, (None, [a.shape for a in xs])
        mask = dropout_mask(global_variables.rng, x.shape, attrs["dropout"], x.dtype)
        mask = to_device(mask, array_module(x) is not np)
        return dropout_forward(x, mask), (mask, [a.shape for a in xs])

    def _backward(self, attrs, saved, dy, needs, params):
        mask, shapes = saved
        dx = dy if mask is None else dropout_backward(dy, mask)
        return _split_channels(dx, shapes, needs), {}
