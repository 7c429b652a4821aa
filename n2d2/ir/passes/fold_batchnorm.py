"""Batch-normalisation folding into the preceding Conv / Fc / Deconv (inference)."""
import numpy as np

from n2d2.backend import to_device, to_host
from n2d2.ir import ops as op_registry
from n2d2.ir.graph import Graph
from n2d2.ir.passes._common import check_mode, is_identity_spec, new_param_name, sole_consumer


def _output_scale(op: str, attrs: dict, weights: np.ndarray, a: np.ndarray) -> np.ndarray:
    """`a` (one factor per output channel) broadcast onto the weight layout of `op`."""
    return op_registry.get(op).scale_output_channels(attrs, weights, a)


def _foldable(g: Graph, bn: str):
    """The producer to fold `bn` into, or None."""
    ins = g.inputs_of(bn)
    if len(ins) != 1:
        return None
    src, out = ins[0]
    op = g.op(src)
    if out != 0 or not op_registry.get(op, node=src).folds_batchnorm:
        return None
    attrs = g.attrs(src)
    if not is_identity_spec(attrs.get("activation")) or sole_consumer(g, src) != (bn, 0):
        return None
    if attrs.get("weight_quantizer") is not None:
        return None  # the quantizer normalises the weights: scaling them first would change its output
    if not op_registry.get(op).batchnorm_fold_ok(attrs):
        return None  # e.g. a sub-sampling Conv: its bias is added before blocks are summed
    if "weights" not in g.nx.nodes[src]["params"]:
        return None
    return src


def fold_batchnorm(graph: Graph, mode: str = "inference") -> Graph:
    """Fold an inference BatchNorm into the weights and biases of the node that feeds it.

    Rewrite: `BN(P(x))` with `P` a Conv, Fc or Deconv becomes `P'(x)` where, per output
    channel o, a = scales[o] / sqrt(variances[o] + epsilon), W'[o] = a W[o] and
    b'[o] = a (b[o] - means[o]) + biases_bn[o] (b = 0 when P had no biases: they are created);
    the BatchNorm's fused activation moves onto P'. New parameter arrays are registered under
    new names (computed in float64, stored in the weights' dtype); the originals are untouched.
    Precondition: `mode == "inference"` (training normalises with batch statistics); the BN has
    a single input, output 0 of P; P has no fused activation, no other consumer and is no
    graph output; a Conv has no sub-sampling. (None and Linear without clipping count as
    no activation.) Otherwise the BN is left alone.
    """
    g = graph.copy()
    if check_mode(mode) != "inference":
        return g
    for bn in g.topological_order():
        if bn not in g.nx or g.op(bn) != "BatchNorm":
            continue
        src = _foldable(g, bn)
        if src is None:
            continue
        bn_d, src_d = g.nx.nodes[bn], g.nx.nodes[src]
        p = {role: to_host(g.params[name].array).astype(np.float64) for role, name in bn_d["params"].items()}
        a = p["scales"] / np.sqrt(p["variances"] + float(bn_d["attrs"]["epsilon"]))
        shift = p["biases"] - p["means"] * a
        w_param = g.params[src_d["params"]["weights"]]
        on_gpu = not isinstance(w_param.array, np.ndarray)   # a CuPy array stays on the device
        w = to_host(w_param.array)
        new_w = (w.astype(np.float64) * _output_scale(src_d["op"], src_d["attrs"], w, a)).astype(w.dtype)
        b_name = src_d["params"].get("biases")
        b_param = g.params[b_name] if b_name is not None else None
        b = np.zeros(a.shape) if b_param is None else to_host(b_param.array).astype(np.float64)
        b_dtype = w.dtype if b_param is None else b_param.array.dtype
        new_b = to_device((b * a + shift).astype(b_dtype), on_gpu)
        new_w = to_device(new_w, on_gpu)
        params = dict(src_d["params"])
        params["weights"] = g.add_param(new_param_name(g, f"{src_d['params']['weights']}.bnfold"), new_w,
                                        w_param.trainable, w_param.owner, w_param.role or "weights")
        base = b_name if b_name is not None else f"{src}.biases"
        params["biases"] = g.add_param(new_param_name(g, f"{base}.bnfold"), new_b,
                                       w_param.trainable if b_param is None else b_param.trainable,
                                       w_param.owner if b_param is None else b_param.owner, "biases")
        src_d["params"] = params
        src_d["attrs"] = dict(src_d["attrs"])
        spec = bn_d["attrs"].get("activation")
        if spec is not None:
            src_d["attrs"]["activation"] = spec
        else:
            src_d["attrs"].pop("activation", None)
        g.replace_uses(bn, src)
        g.remove_node(bn)
    return g
