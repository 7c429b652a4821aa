"""BatchNorm followed by its Epilogue chain, one op (built by `fuse_batchnorm_epilogue`).

ResNet's second BatchNorm of a block feeds an Epilogue (the residual Sum, then ReLU). Apart, the
BatchNorm writes its output and the Epilogue reads it back; in the backward the Epilogue writes
d(BatchNorm output) and the BatchNorm reads it again. Together, one pass normalises and runs the
chain, and the backward's first pass runs the chain backward while it takes the two BatchNorm
reductions. The arithmetic is that of the two ops (n2d2.ops.batchnorm, n2d2.ir.epilogue),
composed: the reference below calls theirs.

Inputs: the BatchNorm input, then the Epilogue's residuals (numbered from 1 in `steps`, as in
the Epilogue). Attrs: the BatchNorm's (epsilon, momentum, unbiased) and the Epilogue's `steps`.
Params: the BatchNorm's.
"""
from n2d2.ir import lowering as low
from n2d2.ir import ops as op_registry
from n2d2.ir.ops import OpDef, register


def _parts():
    return op_registry.get("BatchNorm"), op_registry.get("Epilogue")


def _bn_attrs(attrs):
    return {k: v for k, v in attrs.items() if k not in ("steps", "activation")}


def _epilogue_attrs(attrs):
    return {"steps": attrs["steps"]}


@register
class BatchNormEpilogue(OpDef):
    """attrs: epsilon, momentum, unbiased, steps; params scales, biases, means, variances."""

    name = "BatchNormEpilogue"
    max_inputs = None
    params = ("scales", "biases", "means", "variances")
    trainable = ("scales", "biases")
    backward_sees_input = True   # the backward recomputes the chain from the BatchNorm input
    needs_all_param_grads = True

    def _infer(self, attrs, in_shapes, param_shapes):
        bn, epilogue = _parts()
        (z,) = bn._infer(_bn_attrs(attrs), in_shapes[:1], param_shapes)
        return epilogue._infer(_epilogue_attrs(attrs), [z] + list(in_shapes[1:]), {})

    def _forward(self, attrs, xs, params, training):
        bn, epilogue = _parts()
        z, bn_saved = bn._forward(_bn_attrs(attrs), xs[:1], params, training)
        y, epilogue_saved = epilogue._forward(_epilogue_attrs(attrs), [z] + list(xs[1:]), {}, training)
        return y, (bn_saved, epilogue_saved)

    def _backward(self, attrs, saved, dy, needs, params):
        bn, epilogue = _parts()
        bn_saved, epilogue_saved = saved
        dzs, _ = epilogue._backward(_epilogue_attrs(attrs), epilogue_saved, dy, [True] + list(needs[1:]), {})
        dx, grads = bn._backward(_bn_attrs(attrs), bn_saved, dzs[0], needs[:1], params)
        return list(dx) + list(dzs[1:]), grads

    def activations(self, attrs):
        return _parts()[1].activations(attrs)

    def kernel_context(self, ctx, graph, node, g, training, plan, aux_slot, stats_kind, activation):
        for part in _parts():
            part.kernel_context(ctx, graph, node, g, training, plan, aux_slot, stats_kind, activation)

    def lower_c(self, graph, node, training):
        ins, _ = low.shapes(graph, node)
        n, c, h, w = low.nchw(ins[0])
        train = training and graph.attrs(node)["momentum"] != 0.0
        return dict(N=n, C=c, HW=h * w, M=n * h * w, TRAIN=train, inputs=[dict(C=c, off=0)],   # BatchNorm.c.j2's
                    PAR=n * c * h * w >= low.PARALLEL_MIN_ELEMENTS)

