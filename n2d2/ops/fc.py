"""Fully connected layer: y = x W^T + b over inputs flattened to [N, C*H*W]."""
import numpy as np

from n2d2.ir import lowering as low
from n2d2.ir.ops import OpDef, _concat, register
from n2d2.quantization.integer import quantize_weighted, weighted_forward


def fc_forward(x2d, weights, biases=None):
    y = x2d @ weights.T
    if biases is not None:
        y += biases
    return y


def fc_backward(dy, x2d, weights, need_dx=True):
    """Returns (dx2d or None, dW, db) for dy of shape [N, O]."""
    dw = dy.T @ x2d
    db = dy.sum(axis=0)
    dx = dy @ weights if need_dx else None
    return dx, dw, db


# -- the IR op ------------------------------------------------------------
@register
class Fc(OpDef):
    """Fully connected over C*H*W; params weights [O, C*H*W], biases [O] (optional)."""

    name = "Fc"
    per_sample = True
    onnx_names = ("Gemm", "MatMul")
    ini_names = ("Fc",)
    max_inputs = None
    carries_activation = True
    epilogue_anchor = True
    folds_batchnorm = True
    params = ("weights", "biases", "weight_step")
    trainable = ("weights", "biases", "weight_step")

    def macs_per_output(self, graph, node) -> float:
        w = graph.params[graph.node(node).params["weights"]].array   # [O, ...]: one row per output
        return w.size / w.shape[0]

    def _infer(self, attrs, in_shapes, param_shapes):
        n = in_shapes[0][0]
        total = sum(int(np.prod(s[1:])) for s in in_shapes)
        o, i = param_shapes["weights"]
        if total != i:
            raise ValueError(f"inputs {list(in_shapes)} have C*H*W = {total}, weights expect {i}")
        return [(n, o, 1, 1)]

    def _forward(self, attrs, xs, params, training):
        n = xs[0].shape[0]
        x2d = _concat([x.reshape(n, -1) for x in xs])
        y = fc_forward(x2d, params["weights"], params.get("biases"))
        return y.reshape(n, -1, 1, 1), (x2d, [x.shape for x in xs])

    def _backward(self, attrs, saved, dy, needs, params):
        x2d, shapes = saved
        n = dy.shape[0]
        dx, dw, db = fc_backward(dy.reshape(n, -1), x2d, params["weights"], any(needs))
        grads = {"weights": dw}
        if params.get("biases") is not None:
            grads["biases"] = db
        if dx is None:
            return [None] * len(needs), grads
        out, offset = [], 0
        for s, need in zip(shapes, needs):
            size = int(np.prod(s[1:]))
            out.append(dx[:, offset:offset + size].reshape(s) if need else None)
            offset += size
        return out, grads

    # -- lowering --------------------------------------------------------------------------------
    def _dense_inputs(self, ins):
        inputs, off = [], 0
        for s in ins:
            k = int(np.prod(s[1:]))
            inputs.append({"K": k, "off": off})
            off += k
        return inputs, off

    def lower_c(self, graph, node, training):
        ins, outs = low.shapes(graph, node)
        inputs, k = self._dense_inputs(ins)
        return low.dense_geometry(ins[0][0], k, outs[0][1], inputs)

    def lower_cuda(self, graph, node, training):
        ins, outs = low.shapes(graph, node)
        inputs, k = self._dense_inputs(ins)
        return dict(N=ins[0][0], K=k, O=outs[0][1], inputs=inputs)

    def plan_cuda_forward(self, n, g, k):
        return k.gemm("fwd_gemm", g["N"], g["O"], g["K"], a_kfast=True, b_kfast=True)

    def plan_cuda_backward(self, n, g, k):
        specs = []
        if n.fwd.act is not None:
            specs.append(k.elementwise("bwd_act", n.dy.size))
        if "biases" in n.dp:
            specs.append(k.kernel("bwd_bias", (g["O"], 1, 1), barrier=True, N=g["N"], C=g["O"], P=1))
        if "weights" in n.dp:
            specs += k.gemm("bwd_weights_gemm", g["O"], g["K"], g["N"], split=True, a_kfast=False, b_kfast=False)
        if n.need_dx:
            specs += k.gemm("bwd_data_gemm", g["N"], g["K"], g["O"], a_kfast=True, b_kfast=False)
        return specs


# -- integer form (post-training quantization, n2d2.quantization) --------------------------------------
class _FcInteger:
    """Integer Fc over the flattened (C, H, W) input: int8 weights, int32 accumulator and bias,
    per-output requantization (n2d2.quantization.integer.quantize_weighted)."""

    kernel = "Fc"

    @staticmethod
    def _channel_scale(steps, in_shapes, weights, attrs):
        # each input flattened (C, H, W), the inputs concatenated: one step per input value
        flat = [np.repeat(s, int(np.prod(shape[1:]))) for s, shape in zip(steps, in_shapes)]
        return np.concatenate(flat)[None, :]

    def quantize(self, q, node):

        return quantize_weighted(q, node, Fc(), self._channel_scale)

    def forward(self, qnode, xs, nb_bits):

        return weighted_forward(Fc(), qnode, xs, nb_bits)


Fc.integer = _FcInteger()
Fc.quantized = Fc.integer.kernel
