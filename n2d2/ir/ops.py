"""The op definition base (`OpDef`) and the registry API (`register`, `get`, `find`, `names`).

Each op is defined once, in its module of `n2d2/ops/` (listed in `n2d2.ir.registry`): the
reference math, and an `OpDef` subclass that marshals a node's attributes, inputs and
parameters to it, declares the properties passes ask (`OpDef.PROPERTIES`) and lowers the node
for the C and CUDA backends (`lower_c`, `lower_cuda`, `plan_cuda_*`, see n2d2.ir.lowering).
The numpy executor, autodiff, the passes and the backends ask these definitions, never op names.

Conventions: inputs and outputs are NCHW arrays (batch first); `attrs["activation"]`, when
present and not None, is an activation spec `(name, ((key, value), ...))` applied after the
op (a fused activation); `forward` returns `(outputs, saved)` and `backward` receives `saved`
and returns `(input gradients, {param role: gradient})`.
"""
import importlib

import numpy as np

from n2d2.backend import array_module, to_device
from n2d2.ir.lowering import Unsupported
from n2d2.ir.types import GraphError, TensorType
from n2d2.ops import activation as act_ops
from n2d2.ops import quantizer as quant_ops


def activation_spec(activation):
    """The plain-data spec of an `n2d2.activation` object (None stays None)."""
    if activation is None:
        return None
    params = tuple((k, v) for k, v in sorted(activation._config.items()) if k != "quantizer")
    return (type(activation).__name__, params)


def activation_forward(spec, z):
    """f(z) of an activation spec (n2d2.ops.activation's table)."""
    return act_ops.forward(spec, z)


def activation_backward(spec, dy, z):
    """dL/dz from dL/dy of an activation spec, given the pre-activation z."""
    return act_ops.backward(spec, dy, z)


class OpDef:
    """Base op definition. Subclasses set `name`, arity, and implement `_infer`, `_forward`,
    `_backward`; the fused activation is handled here."""

    name = None
    min_inputs = 1
    max_inputs = 1
    params = ()           # parameter roles the op reads
    trainable = ()        # roles that receive gradients

    # -- properties the passes and the planner ask (never the op's name) --------------------------
    #: output shape == input 0 shape, may run in place of input 0 (planner)
    elementwise = False
    #: may take a fused activation `attrs["activation"]` (fuse_activation moves one into it)
    carries_activation = False
    #: an elementwise chain reading its output may become an Epilogue (fuse_elementwise_chains)
    epilogue_anchor = False
    #: a chain node that makes an Epilogue worth building (not a lone activation)
    epilogue_member = False
    #: its attrs["steps"] is an elementwise chain on input 0 (the Epilogue, n2d2.ir.epilogue)
    holds_chain = False
    #: the op a node of this op becomes with the chain-holding node that reads it merged in
    #: (fuse_batchnorm_epilogue); None: it does not absorb one
    absorbs_chain = None
    #: every output value is >= 0 when every input value is (before its fused activation)
    keeps_sign = False
    #: "always": the identity on the channel concatenation of its inputs, then its fused
    #: activation (remove_identities); "inference": that only in inference (remove_dropout)
    passthrough = None
    #: a batch-1 node whose inputs may be planned as channel slices of its output (it then copies
    #: nothing; the planner's concat aliasing)
    aliases_inputs = False
    #: in inference, image i of every output depends only on image i of every input (batch-first
    #: tensors): a run on a slice of the batch computes that slice (n2d2.ir.batch_chunks)
    per_sample = False
    #: a following inference BatchNorm can fold into its weights and biases (fold_batchnorm)
    folds_batchnorm = False
    #: its backward kernels see the pre-activation value (the Activation node reads its forward
    #: input, the Epilogue recomputes its chain): only such an op may carry, in training, an
    #: activation whose derivative needs its input (Swish, Gelu, Mish, HardSwish)
    backward_sees_input = False
    #: names of the op in other formats, plain data (ONNX op types, INI cell types)
    onnx_names = ()
    ini_names = ()
    #: `onnx_export(exporter, attrs, ins) -> (value, rank, still_to_name)` for an op whose ONNX
    #: form the exporter has no `_op_<Op>` handler for (n2d2/ops/lrn.py); None: the exporter's own
    onnx_export = None
    #: the integer (quantized) form of the op: the name of its C template
    #: (templates/export/int/<name>.c.j2), the implementation being `integer` (its `quantize` and
    #: `forward`, see n2d2.quantization.integer.IntegerForm); None: no integer form
    quantized = None
    integer = None

    #: the property names above, for tools and tests that walk the registry
    PROPERTIES = ("elementwise", "carries_activation", "epilogue_anchor", "epilogue_member", "holds_chain",
                  "absorbs_chain", "keeps_sign", "passthrough", "aliases_inputs", "per_sample", "folds_batchnorm",
                  "backward_sees_input", "onnx_names", "ini_names", "quantized")

    def plain_attrs(self, attrs: dict) -> dict:
        """The node's attributes as plain data (Graph.add_node stores what this returns): an op
        whose attributes may arrive as live objects converts them here."""
        return attrs

    def preserves_sign(self, attrs) -> bool:
        """`keeps_sign` for a node with these attributes (an op may depend on them)."""
        return self.keeps_sign

    def absorbs_padding(self, attrs):
        """How a zero Padding before it folds into its `padding` attr: "exact", "non_negative"
        (exact in inference when the padded input is >= 0), or None (it does not)."""
        return None

    def batchnorm_fold_ok(self, attrs) -> bool:
        """`folds_batchnorm` for a node with these attributes."""
        return self.folds_batchnorm

    def scale_output_channels(self, attrs, weights, a):
        """`a` (one factor per output channel) broadcast onto the weight layout ([O, ...])."""
        return a.reshape((-1,) + (1,) * (weights.ndim - 1))

    def chain_steps(self, attrs, nb_inputs, slot, first_input):
        """How a node joins an Epilogue chain that reaches it through input `slot`: (steps,
        input slots of its residuals, numbered from `first_input` in the steps), its own
        fused activation excluded; None when it cannot join (see n2d2.ir.epilogue)."""
        return None

    def macs_per_output(self, graph, node) -> float:
        """Multiply-adds per output value in inference, its arithmetic intensity (how
        n2d2.ir.batch_chunks tells a memory-bound front from a compute-bound one): 1 unless the
        op says more."""
        return 1.0

    def check_arity(self, node, n):
        if n < self.min_inputs or (self.max_inputs is not None and n > self.max_inputs):
            bound = f"{self.min_inputs}" if self.min_inputs == self.max_inputs else \
                f"{self.min_inputs}..{self.max_inputs if self.max_inputs is not None else 'n'}"
            raise GraphError(f"node '{node}' ({self.name}): {n} inputs, expected {bound}")

    def infer(self, graph, node):
        d = graph.nx.nodes[node]
        param_shapes = {r: graph.params[p].shape for r, p in d["params"].items() if p in graph.params}
        return self.infer_types(d["attrs"], graph.input_types(node), param_shapes, node)

    def infer_types(self, attrs, in_types, param_shapes, node="?"):
        self.check_arity(node, len(in_types))
        empty = [k for k, t in enumerate(in_types) if len(t.shape) and t.shape[0] == 0]
        if empty:   # the reference would fail on empty arrays and a kernel return nothing
            raise GraphError(f"node '{node}' ({self.name}): input {empty[0]} {list(in_types[empty[0]].shape)} has a "
                             "batch of 0; expected at least 1")
        try:
            shapes = self._infer(attrs, [tuple(t.shape) for t in in_types], param_shapes)
        except (ValueError, KeyError, IndexError, TypeError) as e:
            raise GraphError(f"node '{node}' ({self.name}): {e}") from None
        dtype = in_types[0].dtype if in_types else attrs.get("dtype", "float32")
        return [TensorType(tuple(int(v) for v in s), dtype) for s in shapes]

    def _infer(self, attrs, in_shapes, param_shapes):
        return [in_shapes[0]]

    def forward(self, attrs, xs, params, training=False):
        wspec = attrs.get("weight_quantizer")
        if wspec is not None:   # fake-quantized weights: the op computes with them
            params, wctx = quantize_weights(self, attrs, wspec, params, training)
        z, saved = self._forward(attrs, xs, params, training)
        spec = attrs.get("activation")
        saved = (saved, None if spec is None else z)
        if wspec is not None:
            saved = _QuantizedSaved(saved, wctx, params)
        return [z if spec is None else activation_forward(spec, z)], saved

    def backward(self, attrs, saved, dys, needs, params):
        quantized = isinstance(saved, _QuantizedSaved)
        if quantized:
            params = saved.params
            saved, wctx = saved.inner, saved.wctx
        core, z = saved
        dy = dys[0]
        spec = attrs.get("activation")
        if spec is not None:
            dy = activation_backward(spec, dy, z)
        dxs, grads = self._backward(attrs, core, dy, needs, params)
        if quantized:
            grads = weight_quantizer_backward(attrs["weight_quantizer"], grads, wctx)
        return dxs, grads

    def _forward(self, attrs, xs, params, training):
        raise NotImplementedError

    def _backward(self, attrs, saved, dy, needs, params):
        raise NotImplementedError

    # -- integer form (post-training quantization, n2d2.quantization) -------------------------------
    def quantize_integer(self, q, node) -> dict:
        """The plain-data integer node of `node` from its inputs' grids (`quantized` ops only)."""
        if self.integer is None:
            raise GraphError(f"node '{node}' (op {self.name}) has no integer form")
        return self.integer.quantize(q, node)

    def integer_forward(self, qnode, xs, nb_bits):
        """The integer node's outputs (exact int64) from its integer inputs."""
        return self.integer.forward(qnode, xs, nb_bits)

    # -- lowering for the compiled backends (see n2d2.ir.lowering) --------------------------------
    def activations(self, attrs):
        """The activation specs a node applies (its fused activation; None entries skipped)."""
        spec = attrs.get("activation")
        return [] if spec is None else [spec]

    def lower_c(self, graph, node, training):
        """Geometry dict of a forward node for `templates/c/ops/<Op>.c.j2`, or an Unsupported.
        The backend has checked dtypes (float32), activations and parameter arrays first."""
        return Unsupported(f"no C kernel for op {self.name}: the numpy reference runs it")

    def lower_cuda(self, graph, node, training):
        """Geometry dict of a forward node for `templates/cuda/ops/<Op>.cu.j2`, or an Unsupported."""
        return Unsupported(f"no CUDA kernel for op {self.name}: the numpy reference runs it")

    def plan_cuda_forward(self, n, g, k):
        """CUDA kernel launches of a forward node (context `n`, geometry `g`), in order, built
        with the CUDA backend's launch helpers `k` (elementwise, kernel, gemm, ...)."""
        raise GraphError(f"no CUDA kernel plan for op {self.name}")

    def plan_cuda_backward(self, n, g, k):
        """CUDA kernel launches of the Grad node of a forward node (`n.fwd` its forward context)."""
        raise GraphError(f"no CUDA backward kernel plan for op {self.name}")

    @property
    def cuda_backward(self) -> bool:
        """The op's Grad runs as CUDA kernels where its forward did."""
        return type(self).plan_cuda_backward is not OpDef.plan_cuda_backward

    #: its compiled backward writes the gradient of every trainable role (frozen ones get a buffer)
    needs_all_param_grads = False

    def kernel_context(self, ctx, graph, node, g, training, plan, aux_slot, stats_kind, activation):
        """Add the op's own entries (aux buffers, ...) to the template context `ctx` of a forward
        node (see n2d2.codegen.kernel_data.forward_context, which passes `activation`, the
        converter of an activation spec to template data)."""


class _QuantizedSaved:
    """Forward context of a node with fake-quantized weights (the quantized parameters kept
    for the backward, which differentiates through them)."""

    __slots__ = ("inner", "wctx", "params")

    def __init__(self, inner, wctx, params):
        self.inner, self.wctx, self.params = inner, wctx, params


def _options(spec):
    kind, opts = spec
    return kind, dict(opts)


def _sat_fan_out(op, attrs, w):
    """SAT's N_out: outputs x kernel size (Conv [O, C/g, kH, kW], Fc [O, C], Deconv [C, O/g, kH, kW])."""
    if hasattr(op, "n_out"):   # tensors registered on a quantizer (add_weights)
        return op.n_out
    if op.name == "Deconv":
        return w.size // w.shape[0] * int(attrs.get("groups", 1))
    return w.size // w.shape[1]


def _lsq_step(step, v, qp, training):
    """The step size; NaN = not initialised yet (upstream's `set_opt_init_step_size`): the first
    training forward stores 2 mean|v| / sqrt(Qp) of that tensor or batch; a forward before it
    (tracing, inference) uses that value without storing it (1.0 when v is all zeros)."""
    xp = array_module(step)
    if not bool(xp.isnan(step[0])):
        return float(step[0])
    s = quant_ops.lsq_init_step(v, qp)
    if not s > 0.0:
        return 1.0
    if training:
        step[...] = s
    return s


def quantize_weights(op, attrs, spec, params, training):
    """(params with fake-quantized weights, context of the weight quantizer's backward)."""
    kind, o = _options(spec)
    w = params["weights"]
    if kind == "SAT":
        wq, ctx = quant_ops.sat_weight_forward(w, o["range"], o["quant_mode"], o["apply_quantization"],
                                               o["apply_scaling"], _sat_fan_out(op, attrs, w))
    elif kind == "LSQ":
        qn, qp = quant_ops.lsq_bounds(o["range"], signed=True)
        wq, ctx = quant_ops.lsq_forward(w, _lsq_step(params["weight_step"], w, qp, training), qn, qp)
    else:
        raise GraphError(f"{op.name}: unknown weight quantizer '{kind}' (expected SAT or LSQ)")
    return dict(params, weights=wq), ctx


def weight_quantizer_backward(spec, grads, ctx):
    """Map dL/d(quantized weights) to dL/d(weights) (and dL/d(step) for LSQ)."""
    kind, o = _options(spec)
    grads = dict(grads)
    if kind == "SAT":
        grads["weights"] = quant_ops.sat_weight_backward(grads["weights"], ctx)
    else:
        qn, qp = quant_ops.lsq_bounds(o["range"], signed=True)
        dw, ds = quant_ops.lsq_backward(grads["weights"], ctx, qn, qp)
        grads["weights"] = dw
        grads["weight_step"] = array_module(dw).asarray([ds], dtype=np.float32)
    return grads


_REGISTRY = {}
_LOADED = []


def register(cls):
    """Class decorator: make `cls` (an OpDef subclass) the definition of op `cls.name`."""
    if cls.name in _REGISTRY and type(_REGISTRY[cls.name]) is not cls:
        raise GraphError(f"op '{cls.name}' is defined twice ({type(_REGISTRY[cls.name]).__module__} and "
                         f"{cls.__module__})")
    _REGISTRY[cls.name] = cls()
    return cls


def load_all():
    """Import every op module listed in `n2d2.ir.registry` (once). Imported by name, not at
    module level: those modules import this one."""
    if not _LOADED:
        importlib.import_module("n2d2.ir.registry")
        _LOADED.append(True)


def find(name):
    """The OpDef of op `name`, or None when no module defines it."""
    op = _REGISTRY.get(name)
    if op is None and not _LOADED:
        load_all()
        op = _REGISTRY.get(name)
    return op


def get(name, node=None) -> OpDef:
    op = find(name)
    if op is None:
        where = f"node '{node}': " if node else ""
        raise GraphError(f"{where}unknown op '{name}' (known: {', '.join(sorted(_REGISTRY))})")
    return op


def names():
    load_all()
    return sorted(_REGISTRY)


def definitions():
    """{op name: OpDef instance} of every op."""
    load_all()
    return dict(_REGISTRY)


def _split_channels(dx, shapes, needs):
    """Per-input slices of a gradient of channel-concatenated inputs."""
    if len(shapes) == 1:
        return [dx if needs[0] else None]
    out, offset = [], 0
    for s, need in zip(shapes, needs):
        out.append(dx[:, offset:offset + s[1]] if need else None)
        offset += s[1]
    return out


def _concat(xs):
    return xs[0] if len(xs) == 1 else array_module(*xs).concatenate(xs, axis=1)


def _mapping_like(attrs, x):
    """The connection table attr `mapping` (host array or None) on x's device."""
    mapping = attrs.get("mapping")
    if mapping is None:
        return None
    return to_device(mapping, array_module(x) is not np)


def _convolution_grads(dx, dw, db, shapes, needs):
    """(input gradients, parameter gradients) of a convolution of channel-concatenated inputs."""
    grads = {"weights": dw}
    if db is not None:
        grads["biases"] = db
    if dx is None:
        return [None] * len(needs), grads
    return _split_channels(dx, shapes, needs), grads


def _coef(v):
    """A scalar or per-channel coefficient as plain data (float or tuple of floats)."""
    a = np.asarray(v, dtype=np.float64)
    return float(a) if a.ndim == 0 else tuple(float(x) for x in a.reshape(-1))


def _all_equal(v, value) -> bool:
    return bool(np.all(np.asarray(v, dtype=np.float64) == value))


def _check_spatial(in_shapes):
    for s in in_shapes[1:]:
        if s[0] != in_shapes[0][0] or s[2:] != in_shapes[0][2:]:
            raise ValueError(f"inputs {list(in_shapes)} differ on batch or H, W")


def _concat_shape(in_shapes):
    _check_spatial(in_shapes)
    return (in_shapes[0][0], sum(s[1] for s in in_shapes)) + tuple(in_shapes[0][2:])


class _ConcatenatingOp(OpDef):
    """Base of ops that take several inputs concatenated along channels, shape unchanged."""

    max_inputs = None

    def _infer(self, attrs, in_shapes, param_shapes):
        return [_concat_shape(in_shapes)]


