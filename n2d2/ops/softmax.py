"""Softmax over channels at each pixel, optionally over consecutive groups of channels."""
from n2d2.backend import array_module
from n2d2.ir import lowering as low
from n2d2.ir.ops import OpDef, _concat, _concat_shape, _split_channels, register
from n2d2.quantization.integer import QuantizationError


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


# -- the IR op ------------------------------------------------------------
@register
class Softmax(OpDef):
    """attrs: group_size, with_loss (backward passes the gradient through: fused cross-entropy)."""

    name = "Softmax"
    per_sample = True
    onnx_names = ("Softmax", "LogSoftmax")
    ini_names = ("Softmax",)
    max_inputs = None

    def _infer(self, attrs, in_shapes, param_shapes):
        shape = _concat_shape(in_shapes)
        g = attrs.get("group_size", 0)
        if shape[1] == 0:
            raise ValueError("softmax over 0 channels; expected at least 1")
        if g and shape[1] % g:
            raise ValueError(f"group_size {g} does not divide {shape[1]} channels")
        return [shape]

    def _forward(self, attrs, xs, params, training):
        y = softmax_forward(_concat(xs), attrs.get("group_size", 0))
        return y, (y, [a.shape for a in xs])

    def _backward(self, attrs, saved, dy, needs, params):
        y, shapes = saved
        if attrs.get("with_loss"):
            dx = softmax_with_loss_backward(dy)
        else:
            dx = softmax_backward(dy, y, attrs.get("group_size", 0))
        return _split_channels(dx, shapes, needs), {}

    # -- lowering --------------------------------------------------------------------------------
    def lower_c(self, graph, node, training):
        ins, _ = low.shapes(graph, node)
        n, c, h, w = low.nchw(ins[0])
        return low.one_input(ins, self.name) or dict(N=n, C=c, HW=h * w, GS=graph.attrs(node).get("group_size", 0) or c)

    lower_cuda = lower_c

    def plan_cuda_forward(self, n, g, k):
        return [k.elementwise("fwd", g["N"] * (g["C"] // g["GS"]) * g["HW"])]

    def plan_cuda_backward(self, n, g, k):
        if n.fwd.a.get("with_loss"):
            return [k.elementwise("bwd_copy", n.dy.size)]
        return [k.elementwise("bwd", g["N"] * (g["C"] // g["GS"]) * g["HW"])]


# -- integer form (post-training quantization, n2d2.quantization) --------------------------------------
class _SoftmaxInteger:
    """A final Softmax: its arg-max is its input's, so the integer network outputs the input
    integers (the export's arg-max reads them). A Softmax feeding another node has no integer form."""

    kernel = "Softmax"

    def quantize(self, q, node):

        if q.graph.consumers(node) or len(q.graph.inputs_of(node)) != 1 or q.graph.attrs(node).get("activation"):
            raise QuantizationError(f"node '{node}' (Softmax): only a final single-input Softmax has an integer "
                                    "form (its arg-max)")
        tin = q.input_q(node, 0)
        return {"signed": tin.signed, "Q": tin.Q, "T": tin.T}

    def forward(self, qnode, xs, nb_bits):
        import numpy as np

        return np.asarray(xs[0], dtype=np.int64).copy()


Softmax.integer = _SoftmaxInteger()
Softmax.quantized = Softmax.integer.kernel
