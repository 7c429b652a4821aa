"""Zero padding of the spatial dims; a negative pad crops instead.

The backward of pad(t, b, l, r) is pad(-t, -b, -l, -r): the gradient of the kept region is
copied back and the gradient of the added border is dropped.
"""
from n2d2.backend import array_module
from n2d2.ir import lowering as low
from n2d2.ir.lowering import Unsupported
from n2d2.ir.ops import OpDef, _concat, _concat_shape, _split_channels, register


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


# -- the IR op ------------------------------------------------------------
@register
class Padding(OpDef):
    """attrs: top, bot, left, right (negative crops)."""

    name = "Padding"
    per_sample = True
    onnx_names = ("Pad",)
    ini_names = ("Padding",)
    max_inputs = None
    keeps_sign = True

    def _infer(self, attrs, in_shapes, param_shapes):
        n, c, h, w = _concat_shape(in_shapes)
        oh, ow = output_hw(h, w, attrs["top"], attrs["bot"], attrs["left"], attrs["right"])
        if oh < 1 or ow < 1:
            raise ValueError(f"padding {attrs} leaves nothing of a {h}x{w} input")
        return [(n, c, oh, ow)]

    def _forward(self, attrs, xs, params, training):
        a = attrs
        return pad_forward(_concat(xs), a["top"], a["bot"], a["left"], a["right"]), [x.shape for x in xs]

    def _backward(self, attrs, shapes, dy, needs, params):
        a = attrs
        return _split_channels(pad_backward(dy, a["top"], a["bot"], a["left"], a["right"]), shapes, needs), {}

    # -- lowering --------------------------------------------------------------------------------
    def lower_c(self, graph, node, training):
        attrs = graph.attrs(node)
        ins, outs = low.shapes(graph, node)
        if len(ins) != 1 or len(ins[0]) != 4:
            return Unsupported(f"Padding kernels take one NCHW input, got {[list(s) for s in ins]}")
        n, c, h, w = ins[0]
        return dict(N=n, C=c, H=h, W=w, HO=outs[0][2], WO=outs[0][3], T=attrs["top"], L=attrs["left"])

    lower_cuda = lower_c

    def plan_cuda_forward(self, n, g, k):
        return [k.elementwise("fwd", g["N"] * g["C"] * g["HO"] * g["WO"])]

    def plan_cuda_backward(self, n, g, k):
        return [k.elementwise("bwd", g["N"] * g["C"] * g["H"] * g["W"])]
