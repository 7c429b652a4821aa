"""The FakeQuantize IR op: activation fake-quantization for QAT (math in `n2d2.ops.quantizer`)."""
import numpy as np

from n2d2.backend import array_module
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
