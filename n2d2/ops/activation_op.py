"""The Activation IR op: a fused-activation-only node (the activation table is `n2d2.ir.ops`)."""

from n2d2.ir.ops import register
from n2d2.ops.structure import Concat


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
