"""An `onnx.backend.base.Backend` on n2d2's IR and numpy executor (exact ONNX node semantics).

`prepare(model)` returns a `N2D2Rep`; `rep.run(inputs)` converts the model to an IR `Graph` of
`Onnx*` ops (`n2d2.ir.tensor_ops`) specialised to the input shapes, and evaluates it with
`n2d2.codegen.numpy_exec.run`. This is the general path: any rank, broadcasting, asymmetric
pads, ceil mode, auto_pad, attributes vs inputs across opsets. `prepare(model, backend="c")`
(or "cuda") legalizes the graph first (`n2d2.ir.passes.legalize_onnx`: the Onnx* nodes an N2D2
op computes exactly become that op), optimises it and compiles it: N2D2 ops run their kernels,
the other Onnx* nodes their reference. (The import of ONNX models into trainable N2D2 cells,
`n2d2.frontends.onnx_import`, starts from the same conversion.)

Conversion rules:
- the IR node of an ONNX node is named after its first output (the name the ONNX importer gives
  its cell: '9', '18'...) and the nodes are added in file order;
- graph inputs become `Input` nodes with their ONNX dtype; initializers become parameters held
  by `OnnxConstant` nodes (float ones trainable, except where an op reads them as statistics);
- values known at conversion time are folded: `Constant` nodes, `Shape` of a static shape, and
  any op whose inputs are all non-trainable constants (so shape sub-graphs vanish);
- operands the IR needs statically (Reshape shape, Squeeze/Unsqueeze/Reduce axes, Pad pads,
  Resize scales/sizes/roi, Clip bounds, Dropout ratio) must be constants; when they are graph
  inputs the graph is built per distinct input value (and per input shapes), and cached;
- for the ONNX importer, `_Converter(file_batch=)` makes Reshape/Expand targets naming the
  file's batch size follow the input's, and `bypass=` leaves nodes out (`ignore_cells`).
"""
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper
from onnx.backend.base import Backend, BackendRep, namedtupledict

import n2d2.ir.tensor_ops  # noqa: F401  (registers the Onnx* ops)
from n2d2.backend import to_host
from n2d2.codegen import numpy_exec
from n2d2.codegen.programs import InferenceProgram, select_backend
from n2d2.frontends import onnx_limits
from n2d2.ir import ops as op_registry
from n2d2.ir.graph import Graph
from n2d2.ir.passes import optimize
from n2d2.ir.passes.legalize_onnx import legalize_onnx
from n2d2.ir.tensor_ops import constant_value, resolve_pads
from n2d2.ir.types import TensorType

# input slots whose value the conversion needs (they must be constants)
STATIC_SLOTS = {
    "Reshape": (1,), "Squeeze": (1,), "Unsqueeze": (1,), "Pad": (1, 2, 3), "Resize": (1, 2, 3),
    "Upsample": (1,), "Clip": (1, 2), "Dropout": (1, 2), "ReduceMax": (1,), "ReduceSum": (1,),
    "ReduceMean": (1,), "Slice": (1, 2, 3, 4), "Expand": (1,), "ConstantOfShape": (0,),
}


@dataclass(slots=True, eq=False)
class _Value:
    """An ONNX value during conversion: a constant array or an IR tensor (node, output)."""

    name: str
    type: TensorType
    const: object = None
    ref: object = None
    trainable: bool = False

    @property
    def is_const(self):
        return self.const is not None

    @property
    def shape(self):
        return tuple(self.type.shape)

    @property
    def dtype(self):
        return self.type.dtype


def _const(name, array, trainable=False):
    array = np.asarray(array)
    return _Value(name, TensorType(tuple(array.shape), str(array.dtype)), const=array, trainable=trainable)


def _np_dtype(elem_type) -> str:
    return str(np.dtype(helper.tensor_dtype_to_np_dtype(elem_type)))


def _attributes(node) -> dict:
    out = {}
    for a in node.attribute:
        v = helper.get_attribute_value(a)
        if isinstance(v, bytes):
            v = v.decode()
        elif isinstance(v, onnx.TensorProto):
            v = numpy_helper.to_array(v)
        elif isinstance(v, list) and v and isinstance(v[0], bytes):
            v = [x.decode() for x in v]
        out[a.name] = v
    return out


def _opset(model) -> int:
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return int(imp.version)
    return 1


class _Converter:
    """Builds the IR graph of one ONNX graph for given input types and static input values."""

    def __init__(self, model, input_types, static_values, arrays=None, file_batch=None, bypass=()):
        self.model = model
        self.file_batch = file_batch   # the batch size the file declares, when the input has another
        self.bypass = set(bypass)      # first outputs of nodes not converted (the ONNX importer's ignore_cells)
        self.opset = _opset(model)
        self.graph = Graph(model.graph.name or "onnx")
        self.values = {}
        self._materialised = {}
        inits = {t.name for t in model.graph.initializer}
        frozen = _frozen_initializers(model.graph)
        arrays = arrays or {}   # initializer name -> array already read (the ONNX importer's)
        for t in model.graph.initializer:
            a = arrays.get(t.name)
            a = numpy_helper.to_array(t) if a is None else a
            trainable = np.issubdtype(a.dtype, np.floating) and t.name not in frozen
            self.values[t.name] = _const(t.name, a, trainable)
        for vi in model.graph.input:
            if vi.name in static_values:
                self.values[vi.name] = _const(vi.name, static_values[vi.name])
            elif vi.name in input_types:
                shape, dtype = input_types[vi.name]
                self.graph.add_input(vi.name, shape, dtype)
                self.values[vi.name] = _Value(vi.name, TensorType(tuple(shape), dtype), ref=(vi.name, 0))
            elif vi.name not in inits:
                raise ValueError(f"n2d2.onnx_backend: no value for the graph input '{vi.name}'")

    # -- helpers used by the handlers ---------------------------------------------------------
    def materialise(self, v: _Value):
        """The IR tensor of a value (a constant gets an OnnxConstant node holding a parameter)."""
        if v.ref is not None:
            return v.ref
        key = id(v)
        if key not in self._materialised:
            name = self.graph.unique_name(v.name or "const")
            pname = name
            while pname in self.graph.params:
                pname += "_"
            self.graph.add_param(pname, v.const, trainable=v.trainable, owner=name, role="value")
            self.graph.add_op(name, "OnnxConstant", [], params={"value": pname})
            self._materialised[key] = (name, 0)
        return self._materialised[key]

    def op(self, op_name, inputs, attrs, nb_outputs=1, fold=True):
        """Add (or fold) one IR op over `inputs` (_Values); returns its output _Values."""
        opdef = op_registry.get(op_name)
        if fold and all(v.is_const and not v.trainable for v in inputs):
            ys, _ = opdef.forward(attrs, [v.const for v in inputs], {}, False)
            return [_const(f"{self._node_name}:{i}", np.asarray(to_host(y))) for i, y in enumerate(ys)]
        refs = [self.materialise(v) for v in inputs]
        name = self.graph.unique_name(self._node_name)
        self.graph.add_op(name, op_name, refs, attrs)
        types = self.graph.output_types(name)
        return [_Value(name, t, ref=(name, i)) for i, t in enumerate(types)][:max(nb_outputs, 1)]

    @staticmethod
    def _foldable(node, ins):
        """True for a node of an op without a rule whose inputs are all non-trainable constants
        (a shape computation), neither random nor holding a subgraph."""
        return any(v is not None for v in ins) and all(v is None or (v.is_const and not v.trainable) for v in ins) \
            and node.op_type not in onnx_limits.RANDOM_OPS \
            and not any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute)

    def _fold(self, c, node, ins, attrs):
        """The values of such a node, evaluated as the ONNX importer folds constants."""
        arrays = onnx_limits.evaluate_constant_node(node, [None if v is None else v.const for v in ins], self.opset,
                                                    f"n2d2.onnx_backend: node '{self._node_label}' ({node.op_type})")
        return [_const(f"{self._node_name}:{i}", a) for i, a in enumerate(arrays)]

    def _bypass(self, node, ins):
        """A node left out: its outputs are its first activation input (the ONNX importer's
        `ignore_cells`: the consumers of a final Softmax read the scores)."""
        acts = [v for v in ins if v is not None and not v.is_const]
        if not acts:
            raise ValueError(f"node '{self._node_label}': ignore_cells names this node but it has no activation "
                             "input to reconnect its consumers to")
        for name in node.output:
            if name:
                self.values[name] = acts[0]

    # -- conversion ---------------------------------------------------------------------------
    def convert(self):
        for index, node in enumerate(self.model.graph.node):
            handler = HANDLERS.get(node.op_type) if node.domain in ("", "ai.onnx") else None
            self._node_label = node.name or f"{node.op_type}_{index}"   # in messages
            self._node_name = next((o for o in node.output if o), self._node_label)   # the IR node's name
            for i, n in enumerate(node.input):
                if n and n not in self.values:
                    raise ValueError(f"node '{self._node_label}': input '{n}' is not defined before it")
            ins = [self.values[n] if n else None for n in node.input]
            if self._node_name in self.bypass:
                self._bypass(node, ins)
                continue
            if handler is None and self._foldable(node, ins):
                handler = self._fold
            elif handler is not None and ins and all(v is None or (v.is_const and not v.trainable) for v in ins):
                # a handler folding constants (ConstantOfShape, Expand, Tile...) allocates its output: bound it first
                onnx_limits.check_node_outputs(node, [None if v is None else v.const for v in ins], self.opset,
                                               f"n2d2.onnx_backend: node '{self._node_label}' ({node.op_type})")
            if handler is None:
                raise NotImplementedError(f"n2d2.onnx_backend: op '{node.domain + '.' if node.domain else ''}"
                                          f"{node.op_type}' (node '{node.name}') is not supported")
            for slot in STATIC_SLOTS.get(node.op_type, ()):
                if slot < len(ins) and ins[slot] is not None and not ins[slot].is_const:
                    raise NotImplementedError(f"n2d2.onnx_backend: node '{self._node_label}' ({node.op_type}): "
                                              f"input {slot} '{node.input[slot]}' must be a constant")
            outs = handler(self, node, ins, _attributes(node))
            for name, v in zip(node.output, outs):
                if name:
                    v.name = name
                    self.values[name] = v
        outputs = []
        for vi in self.model.graph.output:
            v = self.values[vi.name]
            outputs.append(self.materialise(v))
        self.graph.set_outputs(outputs)
        return self.graph


def _frozen_initializers(graph):
    """Initializers read as running statistics (BatchNormalization mean and variance)."""
    frozen = set()
    for node in graph.node:
        if node.op_type == "BatchNormalization":
            frozen.update(n for n in node.input[3:5] if n)
    return frozen


def _static_inputs(model):
    """Graph inputs the conversion needs the value of (fed into a static slot)."""
    names = {vi.name for vi in model.graph.input} - {t.name for t in model.graph.initializer}
    static = set()
    for node in model.graph.node:
        for slot in STATIC_SLOTS.get(node.op_type, ()):
            if slot < len(node.input) and node.input[slot] in names:
                static.add(node.input[slot])
    return static


# -- handlers ------------------------------------------------------------------------------------------
HANDLERS = {}


def _handles(*op_types):
    def deco(fn):
        for t in op_types:
            HANDLERS[t] = fn
        return fn
    return deco


def _axis(axis, ndim):
    axis = int(axis)
    if not -max(ndim, 1) <= axis < max(ndim, 1):
        raise ValueError(f"axis {axis} out of range for rank {ndim}")
    return axis % ndim if ndim else 0


def _ints(v):
    return [int(a) for a in np.asarray(v).reshape(-1)]


@_handles("Add", "Sub", "Mul", "Div")
def _binary(c, node, ins, attrs):
    if attrs.get("broadcast") and "axis" in attrs:
        raise NotImplementedError(f"n2d2.onnx_backend: legacy {node.op_type} broadcast with axis (opset < 7)")
    return c.op("Onnx" + node.op_type, ins, {})


@_handles("Sum", "Max", "Min")
def _variadic(c, node, ins, attrs):
    return c.op("Onnx" + node.op_type, [v for v in ins if v is not None], {})


@_handles("Less", "Equal")
def _compare(c, node, ins, attrs):
    return c.op("Onnx" + node.op_type, ins, {})


@_handles("Where")
def _where(c, node, ins, attrs):
    return c.op("OnnxWhere", ins, {})


@_handles("Relu", "Sigmoid", "Tanh", "Softplus", "Exp", "Log", "Erf", "HardSwish", "Mish", "Abs")
def _unary(c, node, ins, attrs):
    return c.op("Onnx" + node.op_type, ins[:1], {})


@_handles("Neg")
def _neg(c, node, ins, attrs):
    """-x as x * -1 (the same value for every float, NaN and zeros included): a multiplication
    by a constant, which the ONNX importer folds or makes a Scaling cell."""
    return c.op("OnnxMul", [ins[0], _const(f"{c._node_name}/minus_one", np.array(-1, dtype=ins[0].dtype))], {})


@_handles("PRelu")
def _prelu(c, node, ins, attrs):
    return c.op("OnnxPRelu", ins[:2], {})


@_handles("HardSigmoid")
def _hard_sigmoid(c, node, ins, attrs):
    return c.op("OnnxHardSigmoid", ins[:1], {"alpha": float(attrs.get("alpha", 0.2)),
                                             "beta": float(attrs.get("beta", 0.5))})


@_handles("Gelu")
def _gelu(c, node, ins, attrs):
    approximate = attrs.get("approximate", "none")
    if approximate not in ("none", "tanh"):
        raise ValueError(f"n2d2.onnx_backend: node '{c._node_label}' (Gelu): approximate '{approximate}' "
                         "(supported: none, tanh)")
    return c.op("OnnxGelu", ins[:1], {"approximate": approximate})


@_handles("LayerNormalization")
def _layer_norm(c, node, ins, attrs):
    if int(attrs.get("stash_type", 1)) != 1:
        raise NotImplementedError(f"n2d2.onnx_backend: node '{c._node_label}' (LayerNormalization): stash_type "
                                  f"{attrs['stash_type']} (supported: 1, float)")
    ins = [v for v in ins if v is not None]
    return c.op("OnnxLayerNormalization", ins, {"axis": _axis(attrs.get("axis", -1), len(ins[0].shape)),
                                                "epsilon": float(attrs.get("epsilon", 1e-5))},
                nb_outputs=len(node.output))


@_handles("LeakyRelu")
def _leaky_relu(c, node, ins, attrs):
    return c.op("OnnxLeakyRelu", ins[:1], {"alpha": float(attrs.get("alpha", 0.01))})


@_handles("Identity")
def _identity(c, node, ins, attrs):
    return [ins[0]]


@_handles("Clip")
def _clip(c, node, ins, attrs):
    if c.opset < 11:
        low, high = attrs.get("min"), attrs.get("max")
    else:
        low = ins[1].const.item() if len(ins) > 1 and ins[1] is not None else None
        high = ins[2].const.item() if len(ins) > 2 and ins[2] is not None else None
    return c.op("OnnxClip", ins[:1], {"min": low, "max": high})


@_handles("Cast")
def _cast(c, node, ins, attrs):
    return c.op("OnnxCast", ins[:1], {"dtype": _np_dtype(attrs["to"])})


@_handles("CastLike")
def _cast_like(c, node, ins, attrs):
    return c.op("OnnxCast", ins[:1], {"dtype": ins[1].dtype})


@_handles("LRN")
def _lrn(c, node, ins, attrs):
    return c.op("LRN", ins[:1], {"size": int(attrs["size"]), "alpha": float(attrs.get("alpha", 1e-4)),
                                 "beta": float(attrs.get("beta", 0.75)), "bias": float(attrs.get("bias", 1.0))})


@_handles("Softmax", "LogSoftmax")
def _softmax(c, node, ins, attrs):
    ndim = len(ins[0].shape)
    if c.opset < 13:
        axes = tuple(range(_axis(attrs.get("axis", 1), ndim), ndim))
    else:
        axes = (_axis(attrs.get("axis", -1), ndim),)
    return c.op("Onnx" + node.op_type, ins[:1], {"axes": axes})


@_handles("ReduceMax", "ReduceSum", "ReduceMean")
def _reduce(c, node, ins, attrs):
    ndim = len(ins[0].shape)
    axes_from_input = (node.op_type == "ReduceSum" and c.opset >= 13) or c.opset >= 18
    if axes_from_input:
        axes = _ints(ins[1].const) if len(ins) > 1 and ins[1] is not None else []
    else:
        axes = list(attrs.get("axes", []))
    if not axes:
        if attrs.get("noop_with_empty_axes", 0):
            return [ins[0]]
        axes = list(range(ndim))
    axes = tuple(sorted(_axis(a, ndim) for a in axes))
    return c.op("Onnx" + node.op_type, ins[:1], {"axes": axes, "keepdims": bool(attrs.get("keepdims", 1))})


@_handles("GlobalAveragePool", "GlobalMaxPool")
def _global_pool(c, node, ins, attrs):
    op = "OnnxReduceMean" if node.op_type == "GlobalAveragePool" else "OnnxReduceMax"
    return c.op(op, ins[:1], {"axes": tuple(range(2, len(ins[0].shape))), "keepdims": True})


@_handles("MatMul")
def _matmul(c, node, ins, attrs):
    return c.op("OnnxMatMul", ins, {})


@_handles("Gemm")
def _gemm(c, node, ins, attrs):
    ins = [v for v in ins if v is not None]
    return c.op("OnnxGemm", ins, {"alpha": float(attrs.get("alpha", 1.0)), "beta": float(attrs.get("beta", 1.0)),
                                  "trans_a": bool(attrs.get("transA", 0)), "trans_b": bool(attrs.get("transB", 0))})


# -- layout ---------------------------------------------------------------------------------------------
def _reshape(c, v, shape):
    shape = tuple(int(s) for s in shape)
    if shape == v.shape:
        return [v]
    return c.op("OnnxReshape", [v], {"shape": shape})


@_handles("Reshape")
def _reshape_node(c, node, ins, attrs):
    in_shape = ins[0].shape
    target = _ints(ins[1].const) if c.opset >= 5 else list(attrs["shape"])
    allowzero = attrs.get("allowzero", 0)
    out = [in_shape[i] if (d == 0 and not allowzero) else d for i, d in enumerate(target)]
    out = _batch_of_input(c, ins[0], out)
    if out.count(-1) > 1:
        raise ValueError(f"node '{node.name}': Reshape target {target} has several -1")
    if -1 in out:
        known = int(np.prod([d for d in out if d != -1]))
        out[out.index(-1)] = int(np.prod(in_shape)) // known if known else 0
    return _reshape(c, ins[0], out)


@_handles("Flatten")
def _flatten(c, node, ins, attrs):
    shape = ins[0].shape
    axis = int(attrs.get("axis", 1))
    axis = axis + len(shape) if axis < 0 else axis
    return _reshape(c, ins[0], (int(np.prod(shape[:axis])), int(np.prod(shape[axis:]))))


@_handles("Squeeze")
def _squeeze(c, node, ins, attrs):
    shape = ins[0].shape
    if c.opset >= 13:
        axes = _ints(ins[1].const) if len(ins) > 1 and ins[1] is not None else None
    else:
        axes = attrs.get("axes")
    if axes is None:
        axes = [i for i, s in enumerate(shape) if s == 1]
    axes = {_axis(a, len(shape)) for a in axes}
    for a in axes:
        if shape[a] != 1:
            raise ValueError(f"node '{node.name}': cannot squeeze axis {a} of shape {list(shape)}")
    return _reshape(c, ins[0], [s for i, s in enumerate(shape) if i not in axes])


@_handles("Unsqueeze")
def _unsqueeze(c, node, ins, attrs):
    shape = list(ins[0].shape)
    axes = _ints(ins[1].const) if c.opset >= 13 else list(attrs["axes"])
    rank = len(shape) + len(axes)
    for a in sorted(_axis(a, rank) for a in axes):
        shape.insert(a, 1)
    return _reshape(c, ins[0], shape)


@_handles("Transpose")
def _transpose(c, node, ins, attrs):
    ndim = len(ins[0].shape)
    perm = tuple(int(p) for p in attrs.get("perm", range(ndim - 1, -1, -1)))
    return c.op("OnnxTranspose", ins[:1], {"perm": perm})


@_handles("Concat")
def _concat(c, node, ins, attrs):
    ins = [v for v in ins if v is not None]
    return c.op("OnnxConcat", ins, {"axis": _axis(attrs["axis"], len(ins[0].shape))})


@_handles("Gather")
def _gather(c, node, ins, attrs):
    return c.op("OnnxGather", ins, {"axis": _axis(attrs.get("axis", 0), len(ins[0].shape))})


@_handles("Shape")
def _shape(c, node, ins, attrs):
    shape = np.array(ins[0].shape, dtype=np.int64)
    n = len(shape)
    start = int(attrs.get("start", 0))
    end = attrs.get("end")
    start = min(max(start + n if start < 0 else start, 0), n)
    end = n if end is None else min(max(int(end) + n if int(end) < 0 else int(end), 0), n)
    return [_const(node.output[0], shape[start:end])]


@_handles("Slice")
def _slice(c, node, ins, attrs):
    if c.opset < 10:
        starts, ends, axes, steps = attrs["starts"], attrs["ends"], attrs.get("axes"), None
    else:
        starts, ends = _ints(ins[1].const), _ints(ins[2].const)
        axes = _ints(ins[3].const) if len(ins) > 3 and ins[3] is not None else None
        steps = _ints(ins[4].const) if len(ins) > 4 and ins[4] is not None else None
    ndim = len(ins[0].shape)
    a = {"starts": tuple(int(v) for v in starts), "ends": tuple(int(v) for v in ends),
         "axes": None if axes is None else tuple(_axis(v, ndim) for v in axes),
         "steps": None if steps is None else tuple(int(v) for v in steps)}
    return c.op("OnnxSlice", ins[:1], a)


def _batch_of_input(c, v, target):
    """A Reshape/Expand `target` of activation `v` naming on axis 0 the batch size the file
    declares (`Reshape(x, [1, 2, 3, H, W])` exported at batch 1), where `v` has another: the
    target with `v`'s batch (the ONNX importer runs the model at the provider's)."""
    if c.file_batch is None or v.is_const or not target or not v.shape:
        return target
    if target[0] == c.file_batch != v.shape[0]:
        return [v.shape[0]] + list(target[1:])
    return target


@_handles("Expand")
def _expand(c, node, ins, attrs):
    shape = _ints(ins[1].const)
    if len(shape) == len(ins[0].shape):   # axis 0 is the batch axis
        shape = _batch_of_input(c, ins[0], shape)
    shape = tuple(shape)
    if tuple(np.broadcast_shapes(ins[0].shape, shape)) == ins[0].shape:
        return [ins[0]]
    return c.op("OnnxExpand", ins[:1], {"shape": shape})


@_handles("ConstantOfShape")
def _constant_of_shape(c, node, ins, attrs):
    value = np.asarray(attrs.get("value", np.zeros(1, dtype=np.float32))).reshape(-1)
    return [_const(node.output[0], np.full(tuple(_ints(ins[0].const)), value[0], dtype=value.dtype))]


@_handles("Constant")
def _constant(c, node, ins, attrs):
    a = constant_value(attrs)
    if a is None:
        raise NotImplementedError(f"n2d2.onnx_backend: Constant '{node.name}' with {sorted(attrs)}")
    return [_const(node.output[0], a)]


@_handles("Pad")
def _pad(c, node, ins, attrs):
    ndim = len(ins[0].shape)
    mode = attrs.get("mode", "constant")
    if c.opset < 11:
        pads, value = list(attrs.get("pads", attrs.get("paddings", []))), float(attrs.get("value", 0.0))
        axes = list(range(ndim))
    else:
        pads = _ints(ins[1].const)
        value = ins[2].const.item() if len(ins) > 2 and ins[2] is not None and ins[2].const.size else 0
        axes = _ints(ins[3].const) if len(ins) > 3 and ins[3] is not None else list(range(ndim))
    axes = [_axis(a, ndim) for a in axes]
    if len(pads) != 2 * len(axes):
        raise ValueError(f"node '{node.name}': {len(pads)} pads for {len(axes)} axes")
    full = [0] * (2 * ndim)
    for i, a in enumerate(axes):
        full[a], full[ndim + a] = pads[i], pads[len(axes) + i]
    if not any(full):
        return [ins[0]]
    return c.op("OnnxPad", ins[:1], {"pads": tuple(full), "mode": mode, "value": value})


# -- convolution and pooling ---------------------------------------------------------------------------
def _window(attrs, x, kernel):
    """(spatial rank, kernel, strides, dilations) of a convolution or pooling of x, as int tuples."""
    nd = len(x.shape) - 2
    strides = tuple(int(s) for s in attrs.get("strides", [1] * nd))
    dilations = tuple(int(d) for d in attrs.get("dilations", [1] * nd))
    return nd, tuple(int(k) for k in kernel), strides, dilations


@_handles("Conv")
def _conv(c, node, ins, attrs):
    x, w = ins[0], ins[1]
    _, kernel, strides, dilations = _window(attrs, x, attrs.get("kernel_shape", w.shape[2:]))
    pads = resolve_pads(attrs.get("auto_pad", "NOTSET"), x.shape[2:], kernel, strides, dilations, attrs.get("pads"))
    inputs = [v for v in ins if v is not None]
    return c.op("OnnxConv", inputs, {"strides": strides, "pads": pads, "dilations": dilations,
                                     "group": int(attrs.get("group", 1))})


@_handles("ConvTranspose")
def _conv_transpose(c, node, ins, attrs):
    x, w = ins[0], ins[1]
    nd, kernel, strides, dilations = _window(attrs, x, attrs.get("kernel_shape", w.shape[2:]))
    out_pad = tuple(int(p) for p in attrs.get("output_padding", [0] * nd))
    auto_pad = attrs.get("auto_pad", "NOTSET")
    output_shape = attrs.get("output_shape")
    if output_shape is not None or (auto_pad in ("SAME_UPPER", "SAME_LOWER") and "pads" not in attrs):
        if output_shape is None:
            output_shape = [s * st for s, st in zip(x.shape[2:], strides)]
        output_shape = list(output_shape)[-nd:]
        begins, ends = [], []
        for s, k, st, d, op, o in zip(x.shape[2:], kernel, strides, dilations, out_pad, output_shape):
            total = st * (s - 1) + op + (k - 1) * d + 1 - int(o)
            small, large = total // 2, total - total // 2
            begins.append(small if auto_pad == "SAME_UPPER" else large)
            ends.append(large if auto_pad == "SAME_UPPER" else small)
        pads = tuple(begins + ends)
    else:
        pads = tuple(int(p) for p in attrs.get("pads", [0] * (2 * nd)))
    inputs = [v for v in ins if v is not None]
    return c.op("OnnxConvTranspose", inputs, {"strides": strides, "pads": pads, "dilations": dilations,
                                              "group": int(attrs.get("group", 1)), "output_padding": out_pad})


def _pool_attrs(attrs, x):
    _, kernel, strides, dilations = _window(attrs, x, attrs["kernel_shape"])
    auto_pad = attrs.get("auto_pad", "NOTSET")
    pads = resolve_pads(auto_pad, x.shape[2:], kernel, strides, dilations, attrs.get("pads"))
    return {"kernel": kernel, "strides": strides, "pads": pads, "dilations": dilations,
            "ceil_mode": bool(attrs.get("ceil_mode", 0))}


@_handles("MaxPool")
def _max_pool(c, node, ins, attrs):
    a = _pool_attrs(attrs, ins[0])
    indices = len(node.output) > 1 and bool(node.output[1])
    a.update(indices=indices, storage_order=int(attrs.get("storage_order", 0)))
    return c.op("OnnxMaxPool", ins[:1], a, nb_outputs=2 if indices else 1)


@_handles("AveragePool")
def _avg_pool(c, node, ins, attrs):
    a = _pool_attrs(attrs, ins[0])
    a["count_include_pad"] = bool(attrs.get("count_include_pad", 0))
    return c.op("OnnxAveragePool", ins[:1], a)


# -- normalisation, regularisation -----------------------------------------------------------------------
@_handles("BatchNormalization")
def _batchnorm(c, node, ins, attrs):
    training = bool(attrs.get("training_mode", 0)) if c.opset >= 14 else False
    if c.opset < 14 and len([o for o in node.output if o]) > 1:
        raise NotImplementedError(f"n2d2.onnx_backend: BatchNormalization '{node.name}' with training outputs "
                                  f"(opset {c.opset} < 14)")
    a = {"epsilon": float(attrs.get("epsilon", 1e-5)), "momentum": float(attrs.get("momentum", 0.9)),
         "training_mode": training}
    return c.op("OnnxBatchNormalization", ins[:5], a, nb_outputs=3 if training else 1)


@_handles("Dropout")
def _dropout(c, node, ins, attrs):
    if c.opset < 12:
        ratio, training = float(attrs.get("ratio", 0.5)), False
    else:
        ratio = float(ins[1].const) if len(ins) > 1 and ins[1] is not None else 0.5
        training = bool(ins[2].const) if len(ins) > 2 and ins[2] is not None else False
    want_mask = len(node.output) > 1 and bool(node.output[1])
    if not training or ratio == 0.0:
        outs = [ins[0]]
        if want_mask:
            outs.append(_const(node.output[1], np.ones(ins[0].shape, dtype=bool)))
        return outs
    return c.op("OnnxDropout", ins[:1], {"ratio": ratio, "training_mode": True, "mask": want_mask},
                nb_outputs=2 if want_mask else 1, fold=False)


# -- resize ------------------------------------------------------------------------------------------------
def _resize(c, x, name, scales, sizes, roi, attrs):
    shape = x.shape
    r = len(shape)
    axes = [_axis(a, r) for a in attrs.get("axes", range(r))]
    policy = attrs.get("keep_aspect_ratio_policy", "stretch")
    scale = [1.0] * r
    out = list(shape)
    if sizes is not None:
        sizes = _ints(sizes)
        for a, s in zip(axes, sizes):
            out[a] = s
            scale[a] = s / shape[a]
        if policy != "stretch":
            pick = min if policy == "not_larger" else max
            if policy not in ("not_larger", "not_smaller"):
                raise ValueError(f"{name}: unknown keep_aspect_ratio_policy '{policy}'")
            common = pick(scale[a] for a in axes)
            for a in axes:
                scale[a] = common
                out[a] = int(common * shape[a] + 0.5)
    else:
        values = [float(v) for v in np.asarray(scales).reshape(-1)]
        if len(values) != len(axes):
            raise ValueError(f"{name}: {len(values)} scales for {len(axes)} axes")
        for a, s in zip(axes, values):
            scale[a] = s
            out[a] = int(np.floor(shape[a] * s))
    starts, ends = [0.0] * r, [1.0] * r
    if roi is not None and np.asarray(roi).size:
        roi = [float(v) for v in np.asarray(roi).reshape(-1)]
        n = len(axes)
        for i, a in enumerate(axes):
            starts[a], ends[a] = roi[i], roi[n + i]
    coordinate = attrs.get("coordinate_transformation_mode", "half_pixel")
    specs = []
    for i in range(r):
        identity = out[i] == shape[i] and np.isclose(scale[i], 1.0) and (
            coordinate != "tf_crop_and_resize" or (starts[i] == 0.0 and ends[i] == 1.0))
        specs.append(None if identity else (int(out[i]), int(shape[i]), float(scale[i]), starts[i], ends[i]))
    if all(s is None for s in specs):
        return [x]
    mode = attrs.get("mode", "nearest")
    if mode not in ("nearest", "linear", "cubic"):
        mode = {"bilinear": "linear", "trilinear": "linear", "bicubic": "cubic"}.get(mode, mode)
    a = {"shape": tuple(out), "axes": tuple(specs), "mode": mode, "coordinate_mode": coordinate,
         "nearest_mode": attrs.get("nearest_mode", "round_prefer_floor"),
         "cubic_a": float(attrs.get("cubic_coeff_a", -0.75)), "exclude_outside": bool(attrs.get("exclude_outside", 0)),
         "antialias": bool(attrs.get("antialias", 0)),
         "extrapolation_value": float(attrs.get("extrapolation_value", 0.0))}
    return c.op("OnnxResize", [x], a)


@_handles("Resize")
def _resize_node(c, node, ins, attrs):
    if c.opset < 11:
        attrs = dict(attrs, coordinate_transformation_mode="asymmetric", nearest_mode="floor")
        return _resize(c, ins[0], node.name, ins[1].const, None, None, attrs)
    roi = ins[1].const if len(ins) > 1 and ins[1] is not None else None
    scales = ins[2].const if len(ins) > 2 and ins[2] is not None and ins[2].const.size else None
    sizes = ins[3].const if len(ins) > 3 and ins[3] is not None and ins[3].const.size else None
    if scales is None and sizes is None:
        raise ValueError(f"node '{node.name}': Resize needs scales or sizes")
    return _resize(c, ins[0], node.name, scales, sizes, roi, attrs)


@_handles("Upsample")
def _upsample(c, node, ins, attrs):
    scales = attrs["scales"] if c.opset < 9 else ins[1].const
    a = dict(attrs, coordinate_transformation_mode="asymmetric", nearest_mode="floor")
    return _resize(c, ins[0], node.name, scales, None, None, a)


# -- the backend ---------------------------------------------------------------------------------------------
class N2D2Rep(BackendRep):
    """A prepared model: converts and caches one IR graph per input signature, runs it."""

    def __init__(self, model, backend="numpy"):
        if backend not in ("numpy", "c", "cuda"):
            raise ValueError(f"n2d2.onnx_backend: backend '{backend}' (supported: numpy, c, cuda)")
        self.backend = backend
        self._programs = {}
        self.model = model
        inits = {t.name for t in model.graph.initializer}
        self.input_names = [vi.name for vi in model.graph.input if vi.name not in inits]
        self.output_names = [vi.name for vi in model.graph.output]
        self.static_inputs = _static_inputs(model)
        self._graphs = {}
        self.graph = None

    def _signature(self, feeds):
        key = []
        for name in self.input_names:
            a = feeds[name]
            if name in self.static_inputs:
                key.append((name, a.dtype.str, a.shape, a.tobytes()))
            else:
                key.append((name, a.dtype.str, a.shape))
        return tuple(key)

    def build(self, feeds) -> Graph:
        """The IR graph for these inputs (their shapes and dtypes, and the values of static ones)."""
        key = self._signature(feeds)
        if key not in self._graphs:
            types = {n: (feeds[n].shape, str(feeds[n].dtype)) for n in self.input_names
                     if n not in self.static_inputs}
            static = {n: feeds[n] for n in self.input_names if n in self.static_inputs}
            graph = _Converter(self.model, types, static).convert()
            graph.verify()
            self._graphs[key] = graph
        self.graph = self._graphs[key]
        return self.graph

    def program(self, feeds):
        """The compiled inference program (C or CUDA backend) of these inputs: the converted graph
        legalized (`n2d2.ir.passes.legalize_onnx`: Onnx* nodes an N2D2 op computes become that op)
        and optimised by the inference pipeline; the N2D2 ops run their kernels, the remaining
        Onnx* nodes their reference."""
        key = self._signature(feeds)
        if key not in self._programs:
            graph = optimize(legalize_onnx(self.build(feeds)))
            self._programs[key] = InferenceProgram(graph, select_backend(self.backend))
        return self._programs[key]

    def run(self, inputs, **kwargs):
        feeds = _as_feeds(inputs, self.input_names)
        graph = self.build(feeds)
        dynamic = {n: a for n, a in feeds.items() if n in graph.inputs}
        if self.backend != "numpy":
            program = self.program(feeds)
            dynamic = {n: a for n, a in feeds.items() if n in program.graph.inputs}
            outs = [np.asarray(to_host(o)) for o in program.run(dynamic)]
            return namedtupledict("Outputs", self.output_names)(*outs)
        outs = numpy_exec.run(graph, dynamic)
        outs = [np.asarray(to_host(o)) for o in outs]
        return namedtupledict("Outputs", self.output_names)(*outs)


def _as_feeds(inputs, names):
    if isinstance(inputs, dict):
        feeds = {k: np.asarray(v) for k, v in inputs.items()}
    else:
        if isinstance(inputs, np.ndarray):
            inputs = [inputs]
        inputs = list(inputs)
        if len(inputs) > len(names):
            raise ValueError(f"n2d2.onnx_backend: {len(inputs)} inputs for {len(names)} graph inputs {names}")
        feeds = {n: np.asarray(v) for n, v in zip(names, inputs)}
    missing = [n for n in names if n not in feeds]
    if missing:
        raise ValueError(f"n2d2.onnx_backend: no value for the graph inputs {missing}")
    return feeds


def _unsupported_ops(graph):
    """The op types of the nodes of `graph` that are neither converted (no rule) nor folded (an
    op without a rule is evaluated when its inputs are all constants: initializers, `Constant`,
    `Shape`, or values computed from those)."""
    static, unsupported = {t.name for t in graph.initializer}, set()
    for n in graph.node:
        known = n.domain in ("", "ai.onnx")
        ins = [i for i in n.input if i]
        folded = known and bool(ins) and all(i in static for i in ins) and n.op_type not in onnx_limits.RANDOM_OPS
        if not known or (n.op_type not in HANDLERS and not folded):
            unsupported.add(n.op_type)
        if folded or (known and n.op_type in ("Constant", "Shape")):
            static.update(o for o in n.output if o)
    return sorted(unsupported)


class N2D2Backend(Backend):
    """ONNX backend API over n2d2 (CPU, numpy executor)."""

    @classmethod
    def prepare(cls, model, device="CPU", backend="numpy", **kwargs):
        """`backend`: "numpy" (the reference executor), or "c" / "cuda" (the graph legalized into
        N2D2 ops where exact, optimised, compiled; see `N2D2Rep.program`)."""
        # the model may come from a file of a stranger: tensor dims vs data and size caps first
        onnx_limits.check_model(model, f"n2d2.onnx_backend: model '{model.graph.name}'")
        super().prepare(model, device, **kwargs)
        unsupported = _unsupported_ops(model.graph)
        if unsupported:
            raise NotImplementedError(f"n2d2.onnx_backend: unsupported ops {unsupported}")
        for vi in list(model.graph.input) + list(model.graph.output):
            if not vi.type.HasField("tensor_type"):
                raise NotImplementedError(f"n2d2.onnx_backend: '{vi.name}' is not a tensor "
                                          f"({vi.type.WhichOneof('value')})")
        return N2D2Rep(model, backend)

    @classmethod
    def run_model(cls, model, inputs, device="CPU", **kwargs):
        return cls.prepare(model, device, **kwargs).run(inputs)

    @classmethod
    def run_node(cls, node, inputs, device="CPU", outputs_info=None, **kwargs):
        """Run one node: wrap it in a model whose inputs are `inputs` (in node.input order)."""
        super().run_node(node, inputs, device=device, outputs_info=outputs_info, **kwargs)
        arrays = [np.asarray(a) for a in (inputs.values() if isinstance(inputs, dict) else inputs)]
        names = [n for n in node.input if n]
        graph_inputs = [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(a.dtype), a.shape)
                        for n, a in zip(names, arrays)]
        graph_outputs = [helper.make_empty_tensor_value_info(n) for n in node.output if n]
        graph = helper.make_graph([node], "run_node", graph_inputs, graph_outputs)
        opset = kwargs.get("opset_version", onnx.defs.onnx_opset_version())
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
        rep = N2D2Rep(model)
        return rep.run(dict(zip(names, arrays)))

    @classmethod
    def supports_device(cls, device: str) -> bool:
        return device.upper().startswith("CPU")


prepare = N2D2Backend.prepare
run_model = N2D2Backend.run_model
run_node = N2D2Backend.run_node
supports_device = N2D2Backend.supports_device
