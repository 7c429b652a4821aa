"""2-D transposed convolution as N2D2's DeconvCell computes it, forward and backward.

A transposed convolution is the backward-data pass of the convolution that maps its output
back to its input, so it is built from `n2d2.ops.conv`:

- forward  = conv backward-data (the input plays the role of the convolution's output
  gradient), plus the bias;
- backward-data = conv forward of the output gradient (no bias);
- backward-weights = conv backward-weights with the roles of input and output swapped.

Arrays are NCHW; weights are [C_in, C_out/groups, kH, kW] (PyTorch's conv_transpose2d layout,
which is also the layout of the equivalent convolution's weights); sizes are (height, width)
pairs. Output size per dimension (N2D2 and PyTorch, no output padding):
`(in - 1) * stride - 2 * pad + dil * (k - 1) + 1`. `mapping` [C_in, C_out] (element [c][o]
true: output o reads input channel c) zeroes unconnected pairs (groups=1 only).
"""
from dataclasses import dataclass

import numpy as np

from n2d2.ir import lowering as low
from n2d2.ir.lowering import Unsupported
from n2d2.ir.ops import OpDef, _concat, _concat_shape, _convolution_grads, _mapping_like, register
from n2d2.ops import conv as _conv


def deconv_output_size(size: int, kernel: int, stride: int = 1, padding: int = 0, dilation: int = 1) -> int:
    """Output extent of one spatial dimension."""
    return (size - 1) * stride - 2 * padding + dilation * (kernel - 1) + 1


@dataclass(slots=True, eq=False)
class DeconvContext:
    """What the backward pass needs from a forward call."""

    geom: object
    x: object
    weights: object
    groups: int
    mapping: object
    has_bias: bool


def _geometry(x, weights, stride, padding, dilation, groups, mapping):
    """The geometry of the convolution whose backward-data pass this deconvolution is."""
    if x.ndim != 4 or weights.ndim != 4:
        raise ValueError(f"conv_transpose2d: input must be NCHW and weights [C_in, C_out/groups, kH, kW], "
                         f"got {list(x.shape)} and {list(weights.shape)}")
    n, c_in, h, w = x.shape
    if weights.shape[0] != c_in or groups < 1 or c_in % groups:
        raise ValueError(f"conv_transpose2d: input has {c_in} channels, weights {list(weights.shape)} "
                         f"with groups={groups}")
    c_out = weights.shape[1] * groups
    if mapping is not None and tuple(mapping.shape) != (c_in, c_out):
        raise ValueError(f"conv_transpose2d: mapping must be [C_in, C_out] = [{c_in}, {c_out}], "
                         f"got {list(mapping.shape)}")
    kernel = weights.shape[2:]
    stride, padding, dilation = (_conv._pair(v, k) for v, k in
                                 ((stride, "stride"), (padding, "padding"), (dilation, "dilation")))
    out = tuple(deconv_output_size(s, k, st, p, d) for s, k, st, p, d in
                zip((h, w), kernel, stride, padding, dilation))
    if min(out) < 1:
        raise ValueError(f"conv_transpose2d: input {h}x{w} gives an empty output {list(out)}")
    geom = _conv.ConvGeometry((n, c_out) + out, c_in, kernel, stride, padding, dilation)
    if geom.out != (h, w):
        raise ValueError(f"conv_transpose2d: inconsistent geometry {geom} for input {list(x.shape)}")
    return geom


def _conv_mapping(mapping):
    """The deconvolution table [C_in, C_out] as the equivalent convolution's [C_out, C_in]."""
    return None if mapping is None else mapping.T


def conv_transpose2d_forward(x, weights, biases=None, stride=1, padding=0, dilation=1, groups=1,
                             mapping=None):
    """y = conv_transpose(x, weights) + biases; returns (y [N, C_out, Ho, Wo], ctx)."""
    geom = _geometry(x, weights, stride, padding, dilation, groups, mapping)
    y = _conv.conv2d_backward_data(x, weights, geom, groups, _conv_mapping(mapping))
    if biases is not None:
        y = y + biases.reshape(1, -1, 1, 1).astype(y.dtype, copy=False)
    return y, DeconvContext(geom, x, weights, groups, mapping, biases is not None)


def conv_transpose2d_backward_data(dy, ctx: DeconvContext):
    """d(loss)/d(x) [N, C_in, H, W]: the convolution of the output gradient."""
    g = ctx.geom
    dx, _ = _conv.conv2d_forward(dy, ctx.weights, None, g.stride, g.padding, g.dilation, 1, ctx.groups,
                                 _conv_mapping(ctx.mapping))
    return dx


def conv_transpose2d_backward(dy, ctx: DeconvContext, need_dx=True, need_dw=True):
    """(dx or None, dweights [C_in, C_out/groups, kH, kW] or None, dbiases or None)."""
    g = ctx.geom
    cmap = _conv_mapping(ctx.mapping)
    dx = dw = None
    if need_dx:
        # the convolution of the output gradient gives dx, and its context (im2col of the
        # output gradient) gives dW, with the input in the role of the output gradient
        dx, conv_ctx = _conv.conv2d_forward(dy, ctx.weights, None, g.stride, g.padding, g.dilation, 1,
                                            ctx.groups, cmap)
    elif need_dw:
        conv_ctx = _conv.conv2d_prepare(dy, ctx.weights, g.stride, g.padding, g.dilation, 1, ctx.groups, cmap)
    if need_dw:
        _, dw, _ = _conv.conv2d_backward(ctx.x, conv_ctx, need_dx=False)
    db = dy.sum(axis=(0, 2, 3)) if ctx.has_bias else None
    return dx, dw, db


# -- the IR op ------------------------------------------------------------
@register
class Deconv(OpDef):
    """Transposed convolution. attrs: stride, padding, dilation ((h, w) pairs), groups, mapping
    (bool [C_in, C_out] or None); params weights [C_in, C_out/groups, kH, kW], biases [C_out]."""

    name = "Deconv"
    per_sample = True
    onnx_names = ("ConvTranspose",)
    ini_names = ("Deconv",)
    max_inputs = None
    carries_activation = True
    epilogue_anchor = True
    folds_batchnorm = True
    params = ("weights", "biases", "weight_step")
    trainable = ("weights", "biases", "weight_step")

    def scale_output_channels(self, attrs, weights, a):
        # [C_in, C_out/groups, kH, kW]; input channel c of group g feeds outputs g*opg + j
        groups = int(attrs.get("groups", 1))
        c_in, opg = weights.shape[:2]
        group_of = np.arange(c_in) // (c_in // groups)
        table = a[group_of[:, None] * opg + np.arange(opg)[None, :]]
        return table.reshape(c_in, opg, 1, 1)

    def _infer(self, attrs, in_shapes, param_shapes):
        n, c_in, h, w = _concat_shape(in_shapes)
        ci, og, kh, kw = param_shapes["weights"]
        if ci != c_in:
            raise ValueError(f"weights {list(param_shapes['weights'])} do not match {c_in} input channels")
        (sh, sw), (ph, pw), (dh, dw) = attrs["stride"], attrs["padding"], attrs["dilation"]
        out = (deconv_output_size(h, kh, sh, ph, dh), deconv_output_size(w, kw, sw, pw, dw))
        if min(out) < 1:
            raise ValueError(f"empty output {list(out)}")
        return [(n, og * attrs.get("groups", 1)) + out]

    def _forward(self, attrs, xs, params, training):
        x = _concat(xs)
        y, ctx = conv_transpose2d_forward(x, params["weights"], params.get("biases"), attrs["stride"],
                                          attrs["padding"], attrs["dilation"], attrs.get("groups", 1),
                                          _mapping_like(attrs, x))
        return y, (ctx, [a.shape for a in xs])

    def _backward(self, attrs, saved, dy, needs, params):
        ctx, shapes = saved
        dx, dw, db = conv_transpose2d_backward(dy, ctx, need_dx=any(needs))
        return _convolution_grads(dx, dw, db, shapes, needs)

    # -- lowering --------------------------------------------------------------------------------
    def lower_c(self, graph, node, training):
        """The convolution whose backward-data pass it is (the roles of input and output swapped),
        in the geometry of Conv's image mode."""
        attrs = graph.attrs(node)
        ins, outs = low.shapes(graph, node)
        if len(ins) != 1:
            return Unsupported(f"Deconv kernels take one input, the node has {len(ins)}")
        n, c_in, h, w = ins[0]
        _, c_out, ho, wo = outs[0]
        window = low.kernel_window(graph, node, attrs)
        if isinstance(window, Unsupported):
            return window
        kh, kw, (sy, sx), (py, px), (dy, dx), groups, mapping = window
        conn = None if mapping is None else np.asarray(mapping, dtype=bool).T.astype(int).tolist()
        cg, og = c_out // groups, c_in // groups
        p = h * w
        kg = cg * kh * kw
        macs = n * c_in * p * kg
        nb = low.images_per_block(n, p, kg)
        nblk = -(-n // nb)
        g = dict(N=n, C=c_out, H=ho, W=wo, O=c_in, HO=h, WO=w, KH=kh, KW=kw, SY=sy, SX=sx, PY=py, PX=px, DY=dy, DX=dx,
                 G=groups, CG=cg, OG=og, P=p, KG=kg, NB=nb, NBLK=nblk, CLD=low.round16(nb * p), conn=conn,
                 inputs=[{"C": c_out, "off": 0}], VALID=(py == 0 and px == 0), MODE="image",
                 PAR=nblk >= 2 and macs >= low.PARALLEL_MIN_MACS, PARB=nblk >= 2 and 2 * macs >= low.PARALLEL_MIN_MACS)
        sf, sb = low.Scratch(), low.Scratch()
        for sc in (sf, sb):
            if conn is not None:
                sc.add_shared("WM", c_in * kg)
            sc.add_private("COL", kg * g["CLD"])
            sc.add_private("XB", c_in * g["CLD"])
        sb.add_private("YB", og * g["CLD"])
        sb.add_private("DWP", 16 * c_in * kg)
        sb.add_private("DBP", c_out)
        g["sf"], g["sb"] = sf.layout(), sb.layout()
        return g
