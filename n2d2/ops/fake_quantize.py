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

    def plan_cuda_forward(self, n, g, k):
        return plan_quantizer_forward(g, n.x[0].ptr, n.y.ptr, n.p.quant_param, n.aux.save, k)

    def plan_cuda_backward(self, n, g, k):
        dp = n.dp["quant_param"].ptr if "quant_param" in n.dp else None
        return plan_quantizer_backward(g, n.fwd.x[0].ptr, n.dy.ptr, n.dx[0].ptr if n.dx[0] is not None else None,
                                       dp, n.fwd.aux.save, k, scale=g.get("G", 1.0))


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
    g = quantizer_geometry(spec, w.size, True, training, f"node '{node}' ({d.op})",
                           ir_ops._sat_fan_out(opdef, d.attrs, w))
    if isinstance(g, Unsupported) or g["KIND"] != "LSQ" or not training:
        return g
    step = d.params.get("weight_step")
    if step is None:
        return Unsupported(f"node '{node}' ({d.op}): LSQ weight quantizer without its 'weight_step' parameter")
    if graph.params[step].trainable and not graph.params[d.params["weights"]].trainable:
        return Unsupported(f"node '{node}' ({d.op}): LSQ step trained with frozen weights (no weight gradient kernel)")
    return g


# -- CUDA launch plans (templates/cuda/ops/FakeQuantize.cu.j2; k: the backend's launch helpers) --------
CUDA_TEMPLATE = "cuda/ops/FakeQuantize.cu.j2"
_PART = "((double *)(arena + N2D2_SCRATCH_OFF))"


def _cuda(spec):
    spec["template"] = CUDA_TEMPLATE   # the weight quantizer's kernels run inside a Conv / Fc / Deconv plan
    return spec


def _reduction(k, macro, size, doubles=1, **fields):
    """A kernel whose S blocks each reduce a slice of `size` values into `doubles` partials."""
    s = k.reduction_splits(1, size)
    return _cuda(k.kernel(macro, (s, 1, 1), barrier=True, S=s, CH=k.ceil(size, s), SIZE=size, part=_PART,
                          scratch=8 * doubles * s, **fields))


def _single(k, macro, reduction, **fields):
    """The one-thread kernel that finishes `reduction` (adds its partials in order)."""
    return _cuda(k.kernel(macro, (1, 1, 1), S=reduction.S, SIZE=reduction.SIZE, part=_PART, **fields))


def plan_quantizer_forward(q, x, y, p, save, k):
    """Kernels of a fake-quantizer forward (geometry q): `y` = quantized `x`; `p` the learned scalar
    (SAT activation alpha, LSQ step; None for SAT weights), `save` the doubles for the backward."""
    size = q["SIZE"]
    if q["KIND"] == "LSQ":
        part = _reduction(k, "lsq_init_part", size, q=q, X=x, P=p)
        return [part, _single(k, "lsq_init", part, q=q, P=p, SAVE=save),
                _cuda(k.elementwise("lsq_fwd", size, q=q, X=x, Y=y, SAVE=save))]
    if not q["SIGNED"]:
        return [_cuda(k.elementwise("sat_fwd", size, q=q, X=x, Y=y, P=p, SAVE=save))]
    part = _reduction(k, "sat_max_part", size, q=q, X=x)
    specs = [part, _single(k, "sat_max", part, q=q, SAVE=save)]
    if q["SCALING"] and size > 1:
        var = _reduction(k, "sat_var_part", size, doubles=2, q=q, X=x, SAVE=save)
        specs += [var, _single(k, "sat_scale", var, q=q, SAVE=save)]
    return specs + [_cuda(k.elementwise("sat_apply", size, q=q, X=x, Y=y, SAVE=save))]


def plan_quantizer_backward(q, x, dy, dx, dp, save, k, scale=1.0):
    """Kernels of a fake-quantizer backward: `dx` (may be `dy`: in place; None: not needed) and
    `dp` = `scale` * sum dy * dy_hat/dscalar (None: not needed)."""
    if q["KIND"] == "SAT" and q["SIGNED"]:
        return [_cuda(k.elementwise("sat_bwd", q["SIZE"], q=q, X=x, DX=dx, SAVE=save))]
    part = _reduction(k, "bwd_part", q["SIZE"], q=q, X=x, DY=dy, DX=dx, DP=dp, SAVE=save)
    return [part] + ([_single(k, "bwd_final", part, q=q, DP=dp, SCALE=float(scale))] if dp else [])


def plan_weight_forward(wq, k):
    """Kernels computing the quantized weights of a node (its context's `wq`) before its forward."""
    return plan_quantizer_forward(wq.g, wq.w, wq.wq, wq.get("step"), wq.save, k)


def plan_weight_backward(wq, dp, k):
    """Kernels mapping dL/dw_hat (written in dp.weights by the node's backward) to dL/dw in place,
    and LSQ's step gradient (dp.weight_step)."""
    if "weights" not in dp:
        return []
    step = dp["weight_step"].ptr if "weight_step" in dp else None
    return plan_quantizer_backward(wq.g, wq.w, dp["weights"].ptr, dp["weights"].ptr, step, wq.save, k,
                                   scale=wq.g.get("G", 1.0))
