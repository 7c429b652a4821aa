"""The FakeQuantize IR op: activation fake-quantization for QAT (math in `n2d2.ops.quantizer`)."""
import math

import numpy as np

from n2d2.backend import array_module
from n2d2.ir import lowering as low
from n2d2.ir import ops as ir_ops
from n2d2.ir.lowering import Context, Unsupported
from n2d2.ir.ops import OpDef, _lsq_step, _options, register
from n2d2.ir.types import GraphError
from n2d2.ops import quantizer as quant_ops


@register
class FakeQuantize(OpDef):
    """Activation fake-quantizer (QAT). attrs: quantizer = ("SAT", ((range, R),)) (CG-PACT, param
    `quant_param` = [alpha]) or ("LSQ", ((range, R),)) (param = [step size], NaN until the first
    forward initialises it). Not `elementwise`: its backward reads its input, and passes must not
    move or fuse anything across it."""

    name = "FakeQuantize"
    params = ("quant_param",)
    trainable = ("quant_param",)

    def _infer(self, attrs, in_shapes, param_shapes):
        return [in_shapes[0]]   # values quantized in place: same shape

    def _forward(self, attrs, xs, params, training):
        kind, o = _options(attrs["quantizer"])
        x, p = xs[0], params["quant_param"]
        if kind == "SAT":
            y, ctx = quant_ops.sat_act_forward(x, float(p[0]), o["range"])
        elif kind == "LSQ":
            qn, qp = quant_ops.lsq_bounds(o["range"], signed=False)
            y, ctx = quant_ops.lsq_forward(x, _lsq_step(p, x, qp, training), qn, qp)
        else:
            raise GraphError(f"FakeQuantize: unknown activation quantizer '{kind}' (expected SAT or LSQ)")
        return y, ctx

    def _backward(self, attrs, saved, dy, needs, params):
        kind, o = _options(attrs["quantizer"])
        if kind == "SAT":
            dx, dp = quant_ops.sat_act_backward(dy, saved, o["range"])
        else:
            qn, qp = quant_ops.lsq_bounds(o["range"], signed=False)
            dx, dp = quant_ops.lsq_backward(dy, saved, qn, qp)
        return [dx if needs[0] else None], {"quant_param": array_module(dx).asarray([dp], dtype=np.float32)}

    # -- lowering: templates/c/ops/FakeQuantize.c.j2, templates/cuda/ops/FakeQuantize.cu.j2 ------------
    def kernel_context(self, ctx, graph, node, g, training, plan, aux_slot, stats_kind, activation):
        # the clip level / step the forward used (a double in two floats), read by the backward
        ctx.aux["save"] = aux_slot(f"{node}.qsave", (2,), stats_kind)

    def _lower(self, graph, node, training):
        ins, _ = low.shapes(graph, node)
        return low.one_input(ins, self.name) or \
            quantizer_geometry(graph.attrs(node)["quantizer"], int(np.prod(ins[0])), False, training, node)

    def lower_c(self, graph, node, training):
        return self._lower(graph, node, training)

    def lower_cuda(self, graph, node, training):
        return self._lower(graph, node, training)


def quantizer_geometry(spec, size, signed, training, where, n_out=1):
    """Geometry of a fake-quantizer over `size` values (an activation, or a weight tensor when
    `signed`) for the templates, or an Unsupported: KIND (SAT / LSQ), R, and SAT's MODE, QUANT,
    SCALING, N_OUT, C (backward factor) or LSQ's QN, QP, G (step gradient scale)."""
    kind, o = _options(spec)
    r = int(o["range"])
    g = dict(KIND=kind, R=r, SIZE=int(size), TRAIN=bool(training), SIGNED=bool(signed),
             PAR=size >= low.PARALLEL_MIN_ELEMENTS)
    if kind == "SAT" and signed:
        mode = o["quant_mode"]
        if mode not in quant_ops.SAT_MODES:
            return Unsupported(f"{where}: SAT quant_mode '{mode}' (expected one of {', '.join(quant_ops.SAT_MODES)})")
        g.update(MODE=mode, QUANT=bool(o["apply_quantization"]), SCALING=bool(o["apply_scaling"]),
                 N_OUT=int(n_out), H=r // 2, C=quant_ops.sat_weight_gradient_factor(mode, r, o["apply_quantization"]))
    elif kind == "LSQ":
        qn, qp = quant_ops.lsq_bounds(r, signed=signed)
        g.update(QN=qn, QP=qp, G=1.0 / math.sqrt(size * qp))
    elif kind != "SAT":
        return Unsupported(f"{where}: unknown quantizer '{kind}' (expected SAT or LSQ)")
    if r < 1 or size < 1:
        return Unsupported(f"{where}: quantizer range {r} over {size} values")
    return g


def weight_quantizer_context(graph, node, training, param, aux_slot, stats_kind):
    """The template data of the weight quantizer of node `node` (Conv / Fc / Deconv with attribute
    `weight_quantizer`), or None when it has none: geometry `g`, the float weights `w`, the
    quantized copy `wq` the op's kernels compute with (an aux buffer), `step` (LSQ) and `save`
    (m and s of SAT, the step of LSQ, as doubles)."""
    d = graph.node(node)
    spec = d.attrs.get("weight_quantizer")
    if spec is None:
        return None
    g = weight_quantizer_geometry(graph, node, training)
    w = graph.params[d.params["weights"]]
    ctx = Context(g=Context(g), w=param(d.params["weights"]),
                  wq=aux_slot(f"{node}.wq", w.shape, stats_kind), save=aux_slot(f"{node}.wqsave", (4,), stats_kind))
    if g["KIND"] == "LSQ":
        ctx["step"] = param(d.params["weight_step"])
    return ctx


def weight_quantizer_geometry(graph, node, training):
    """`quantizer_geometry` of a node's weight quantizer (None without one), or an Unsupported."""
    d = graph.node(node)
    spec = d.attrs.get("weight_quantizer")
    if spec is None:
        return None
    opdef = ir_ops.get(d.op, node=node)
    w = graph.params[d.params["weights"]].array
    g = quantizer_geometry(spec, w.size, True, training, f"node '{node}' ({d.op})", ir_ops._sat_fan_out(opdef, d.attrs, w))
    if isinstance(g, Unsupported) or g["KIND"] != "LSQ" or not training:
        return g
    step = d.params.get("weight_step")
    if step is None:
        return Unsupported(f"node '{node}' ({d.op}): LSQ weight quantizer without its 'weight_step' parameter")
    if graph.params[step].trainable and not graph.params[d.params["weights"]].trainable:
        return Unsupported(f"node '{node}' ({d.op}): LSQ step trained with frozen weights (no weight gradient kernel)")
    return g
