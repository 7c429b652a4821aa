"""The ops of the backward graph built by `n2d2.ir.autodiff`: AddN (gradient sums), Grad (the
backward of a forward node) and Update (a parameter's solver step)."""
from n2d2.ir import lowering as low
from n2d2.ir import ops as op_registry
from n2d2.ir.ops import OpDef, register
from n2d2.ir.types import GraphError


@register
class AddN(low.SameShapeLowering, OpDef):
    """Sum of same-shape inputs (gradient contributions)."""

    name = "AddN"
    max_inputs = None
    elementwise = True
    plan_cuda_backward = OpDef.plan_cuda_backward   # autodiff never differentiates an AddN

    def _infer(self, attrs, in_shapes, param_shapes):
        for s in in_shapes[1:]:
            if s != in_shapes[0]:
                raise ValueError(f"AddN inputs must share one shape, got {list(in_shapes)}")
        return [in_shapes[0]]

    def _forward(self, attrs, xs, params, training):
        total = xs[0] + xs[1]
        for x in xs[2:]:
            total += x
        return total, None


@register
class Grad(OpDef):
    """Backward of the forward node `attrs['of']`; needs that node's saved context."""

    name = "Grad"
    min_inputs = 2
    max_inputs = None
    needs_forward_context = True

    def infer(self, graph, node):
        return list(graph.output_types(node))

    def run(self, graph, node, xs, saved_of_forward):
        """Input and parameter gradients, in the node's output order."""
        attrs = graph.attrs(node)
        fwd = graph.node(attrs["of"])
        opdef = op_registry.get(fwd.op, node=attrs["of"])
        params = {r: graph.params[p].array for r, p in fwd.params.items()}
        dxs, grads = opdef.backward(fwd.attrs, saved_of_forward, [xs[0]], list(attrs["input_needs"]), params)
        outs = [dx for dx, n in zip(dxs, attrs["input_needs"]) if n]
        if any(o is None for o in outs):
            raise GraphError(f"node '{node}': the backward of '{attrs['of']}' returned no gradient for an input "
                             "that needs one")
        return outs + [grads[r] for r in attrs["roles"]]


@register
class Update(OpDef):
    """Apply the parameter's solver in place (`attrs['param']`); no output."""

    name = "Update"

    def infer(self, graph, node):
        return []

    def run_update(self, graph, node, grad, batch_size):
        pname = graph.attrs(node)["param"]
        param = graph.params[pname]
        param.solver.update(param.array, grad, batch_size)
