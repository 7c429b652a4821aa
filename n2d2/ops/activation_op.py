"""The Activation IR op: a fused-activation-only node (the activation table is `n2d2.ir.ops`)."""

from n2d2.ir.ops import register
from n2d2.ops.structure import Concat
from n2d2.quantization.integer import QuantizationError


@register
class Activation(Concat):
    """attrs: activation (a spec; None = identity). Several inputs are concatenated first: the
    core is Concat's, the activation is applied by OpDef.forward."""

    name = "Activation"
    onnx_names = ("Relu", "LeakyRelu", "PRelu", "Sigmoid", "Tanh", "Softplus", "Clip")
    ini_names = ("Activation",)
    elementwise = True
    keeps_sign = True
    passthrough = "always"
    aliases_inputs = False   # Concat's aliasing does not apply: it computes
    backward_sees_input = True

    def chain_steps(self, attrs, nb_inputs, slot, first_input):
        return ([], []) if nb_inputs == 1 else None   # the pass appends its activation

    def kernel_context(self, ctx, graph, node, g, training, plan, aux_slot, stats_kind, activation):
        pass   # no aliased inputs (Concat's): it computes


# -- integer form (post-training quantization, n2d2.quantization) --------------------------------------
class _ActivationInteger:
    """Integer Rectifier (max(x, 0), same grid) and Linear (identity) on one input."""

    kernel = "Activation"

    def quantize(self, q, node):

        spec = q.graph.attrs(node).get("activation")
        name = spec[0] if spec else "Linear"
        params = dict(spec[1]) if spec else {}
        if len(q.graph.inputs_of(node)) != 1 or name not in ("Rectifier", "Linear") \
                or float(params.get("leak_slope", 0.0) or 0.0) != 0.0 or float(params.get("clipping", 0.0) or 0.0):
            raise QuantizationError(f"node '{node}' (Activation): {name} {params} on "
                                    f"{len(q.graph.inputs_of(node))} input(s) has no integer form (supported: "
                                    "Rectifier and Linear without clipping or leak, one input)")
        tin = q.input_q(node, 0)
        return {"signed": tin.signed, "Q": tin.Q, "T": tin.T, "relu": name == "Rectifier"}

    def forward(self, qnode, xs, nb_bits):
        import numpy as np

        x = np.asarray(xs[0], dtype=np.int64)
        return np.maximum(x, 0) if qnode["relu"] else x.copy()


Activation.integer = _ActivationInteger()
Activation.quantized = Activation.integer.kernel
