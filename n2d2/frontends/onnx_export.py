"""ONNX export: an IR forward graph (a `DeepNetCell`, a trace or a `Graph`) as an ONNX model.

Every IR node becomes a few standard ONNX nodes, in the graph's execution order. The first
ONNX node of an IR node outputs the IR node's name, so that importing the file again gives
cells of the same names (a fused activation follows as `<name>/<op>`):

- Conv -> Conv (`group` for grouped tables; an irregular connection table is written as dense
  weights whose unconnected kernels are zero: the same function, a dense convolution);
  Deconv -> ConvTranspose; Fc -> Flatten + Gemm (transB=1) and, when a consumer needs the
  4-D layout, Unsqueeze; BatchNorm -> BatchNormalization; Pool -> MaxPool / AveragePool
  (count_include_pad=1, as n2d2 counts padded positions) or Global*Pool over the whole plane;
- ElemWise -> Add/Sum/Mul/Max/Abs/Sqrt with its coefficients as constants; Scaling
  (floating point) -> Max/Min/Mul; Softmax -> Softmax over the channel axis (Transposes around
  it below opset 13 when H, W > 1); Padding -> Pad (negative pads crop); Reshape, Transpose,
  Resize (sizes from the input's shape), Concat; Activation -> its activation; Dropout and
  Identity are dropped (inference);
- activations: each entry of n2d2.ops.activation's table says its form (Rectifier -> Relu /
  LeakyRelu / Clip, Logistic -> Sigmoid, Tanh (alpha as a Mul), Saturation and clipped Linear
  -> Clip, Softplus, Swish -> x * Sigmoid(x), Gelu (decomposed below opset 20), Mish, ...).

The batch axis is dynamic (`N`). What ONNX cannot express exactly (cross-channel pooling
tables, fixed-point scalings, sub-sampled convolutions, ops of optimised programs) raises
`ONNXUnsupportedError` naming the node. The model is checked (`onnx.checker`, full) and written
through a temporary file renamed into place.
"""
import functools
import os

import numpy as np

from n2d2.backend import to_host
from n2d2.frontends.onnx_errors import ONNXUnsupportedError, _onnx
from n2d2.ir import ops as op_registry
from n2d2.ops import activation as act_table
from n2d2.ops.transpose import numpy_axes
from n2d2.utils import write_inside

MIN_OPSET = 9


def _graph_of(source):
    """The IR graph of a DeepNetCell, a TraceResult or a Graph."""
    if hasattr(source, "get_graph"):
        return source.get_graph()
    if hasattr(source, "graph") and hasattr(source, "cell_of"):
        return source.graph
    if hasattr(source, "topological_order") and hasattr(source, "params"):
        return source
    raise TypeError(f"export_onnx: expected a DeepNetCell, a TraceResult or an IR Graph, got {type(source).__name__}")


def _host(array):
    return np.ascontiguousarray(np.asarray(to_host(array), dtype=np.float32))


class OnnxWriter:
    """Fresh tensor names and initializers of a model being built (`self.names`: the names taken,
    `self.reserved`: names kept for their owners, `self.inits`: the initializers); shared with the
    QDQ export (n2d2.quantization.onnx_qdq)."""

    reserved = frozenset()

    def unique(self, base, own=False):
        """A fresh name from `base`; a reserved name only for its owner (`own`)."""
        name, k = str(base), 1
        while name in self.names or (not own and name in self.reserved):
            name = f"{base}_{k}"
            k += 1
        self.names.add(name)
        return name

    def const(self, base, array, dtype=np.float32):
        from onnx import numpy_helper

        name = self.unique(base)
        self.inits.append(numpy_helper.from_array(np.ascontiguousarray(np.asarray(array, dtype=dtype)), name))
        return name


class _Exporter(OnnxWriter):
    def __init__(self, graph, opset):
        self.g = graph
        self.opset = opset
        self.nodes = []
        self.inits = []
        self.names = set(graph.nodes())
        self.values = {}      # (ir node, out) -> (onnx name, rank)
        self.wide = {}        # onnx name -> its 4-D form (Unsqueeze made once)
        self.current = None

    # -- building blocks ------------------------------------------------------------------------
    def error(self, message):
        n = self.current
        where = f"node '{n}' ({self.g.op(n)})" if n is not None else f"graph '{self.g.name}'"
        return ONNXUnsupportedError(f"export_onnx: {where}: {message}")

    def node(self, op, inputs, base, **attrs):
        from onnx import helper

        out = self.unique(base)
        self.nodes.append(helper.make_node(op, list(inputs), [out], **attrs))
        return out

    def primary(self, op, inputs, **attrs):
        """The first ONNX node of the current IR node: its output is the IR node's name."""
        from onnx import helper

        self.nodes.append(helper.make_node(op, list(inputs), [self.current], **attrs))
        return self.current

    def step(self, op, inputs, suffix, first, **attrs):
        """A node of the current IR node's chain (`first`: the primary one)."""
        if first:
            return self.primary(op, inputs, **attrs)
        return self.node(op, inputs, f"{self.current}/{suffix}", **attrs)

    def four_d(self, value):
        """`value` = (name, rank) as a 4-D tensor (trailing axes of size 1)."""
        name, rank = value
        if rank == 4:
            return name
        if rank > 4:
            raise self.error(f"a tensor of rank {rank} cannot be fed to a 4-D op")
        if name not in self.wide:
            axes = list(range(rank, 4))
            if self.opset >= 13:
                self.wide[name] = self.node("Unsqueeze", [name, self.const(f"{name}/axes", axes, np.int64)],
                                            f"{name}/4d")
            else:
                self.wide[name] = self.node("Unsqueeze", [name], f"{name}/4d", axes=axes)
        return self.wide[name]

    def joined(self, inputs, first, suffix="concat"):
        """One 4-D tensor from the IR node's inputs (channel concatenation when several)."""
        names = [self.four_d(v) for v in inputs]
        if len(names) == 1:
            return names[0], first
        return self.step("Concat", names, suffix, first, axis=1), False

    def param(self, role):
        attrs = self.g.node(self.current).params
        if role not in attrs:
            return None
        return _host(self.g.params[attrs[role]].array)

    def clip(self, x, lo, hi, first, suffix="clip"):
        if self.opset < 11:
            kw = {}
            if lo is not None:
                kw["min"] = float(lo)
            if hi is not None:
                kw["max"] = float(hi)
            return self.step("Clip", [x], suffix, first, **kw)
        ins = [x, "" if lo is None else self.const(f"{self.current}/min", np.float32(lo)),
               "" if hi is None else self.const(f"{self.current}/max", np.float32(hi))]
        while ins[-1] == "":
            ins.pop()
        return self.step("Clip", ins, suffix, first)

    def activation(self, x, spec, first):
        """Apply an activation spec (name, ((key, value), ...)) to `x`."""
        if spec is None:
            return x, first
        return act_table.onnx_export(self, x, spec, first)

    def coefficient(self, values, rank, base):
        """A scalar or per-channel coefficient broadcastable to a rank-`rank` NC... tensor."""
        arr = np.asarray(values, dtype=np.float32)
        if arr.ndim:
            arr = arr.reshape((1, -1) + (1,) * (rank - 2))
        return self.const(base, arr)

    # -- graph ----------------------------------------------------------------------------------
    def run(self):
        from onnx import TensorProto, helper

        g = self.g
        if len(g.inputs) < 1:
            raise self.error("the graph has no input")
        inputs = []
        for name in g.inputs:
            t = g.output_types(name)[0]
            if t.dtype != "float32":
                raise self.error(f"input '{name}' is {t.dtype}; the export writes float32 models")
            inputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, ["N"] + list(t.shape[1:])))
            self.values[(name, 0)] = (name, len(t.shape))
        for n in g.topological_order():
            op = g.op(n)
            if op == "Input":
                continue
            self.current = n
            handler = getattr(self, f"_op_{op}", None)
            export = op_registry.get(op, node=n).onnx_export
            if handler is None and export is not None:   # an op that states its own export (n2d2/ops/lrn.py)
                handler = functools.partial(export, self)
            if handler is None:
                raise self.error("this op has no ONNX export (export the forward graph as traced, "
                                 "DeepNetCell.get_graph(), not an optimised program)")
            ins = [self.values[(s, o)] for s, o in g.inputs_of(n)]
            attrs = g.attrs(n)
            y, rank, first = handler(attrs, ins)
            y, _ = self.activation(y, attrs.get("activation"), first)
            self.values[(n, 0)] = (y, rank)
        self.current = None
        outputs, seen = [], set(g.inputs)
        for n, o in g.outputs:
            t = g.output_types(n)[o]
            name, rank = self.values[(n, o)]
            if rank != len(t.shape):
                name = self.four_d((name, rank)) if len(t.shape) == 4 else name
            if name in seen:
                name = self.node("Identity", [name], f"{n}/output")
            seen.add(name)
            outputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, ["N"] + list(t.shape[1:])))
        graph = helper.make_graph(self.nodes, g.name or "n2d2", inputs, outputs, self.inits)
        opsets = [helper.make_opsetid("", self.opset)]
        model = helper.make_model(graph, opset_imports=opsets, producer_name="n2d2")
        model.ir_version = helper.find_min_ir_version_for(opsets)
        return model

    # -- ops ------------------------------------------------------------------------------------
    def _op_Identity(self, attrs, ins):
        if len(ins) == 1:
            return ins[0][0], ins[0][1], True
        x, first = self.joined(ins, True)
        return x, 4, first

    _op_Dropout = _op_Identity   # exported for inference

    def _op_Activation(self, attrs, ins):
        if len(ins) == 1:
            x, rank = ins[0]
            if attrs.get("activation") is None:
                return self.primary("Identity", [x]), rank, False
            return x, rank, True
        x, first = self.joined(ins, True)
        return x, 4, first

    def _op_Concat(self, attrs, ins):
        x, first = self.joined(ins, True)
        if first:  # a single input: still give the node its own output
            x = self.primary("Identity", [x])
        return x, 4, False

    def _op_Conv(self, attrs, ins):
        if tuple(attrs.get("sub_sample", (1, 1))) != (1, 1):
            raise self.error(f"sub_sample {attrs['sub_sample']} (block sums) has no ONNX equivalent")
        return self.convolution("Conv", "conv", attrs, ins), 4, False

    def _op_Deconv(self, attrs, ins):
        return self.convolution("ConvTranspose", "deconv", attrs, ins), 4, False

    def convolution(self, op_type, suffix, attrs, ins):
        """The ONNX Conv or ConvTranspose node of an IR Conv/Deconv node. An irregular connection
        table (attr `mapping`, [C, O]) becomes dense weights with the unconnected kernels zeroed."""
        x, first = self.joined(ins, True)
        w = self.param("weights")
        b = self.param("biases")
        groups = int(attrs.get("groups", 1))
        mapping = attrs.get("mapping")
        if mapping is not None:
            mask = np.asarray(mapping, dtype=bool)  # [C, O]: ConvTranspose's weight order
            if op_type == "Conv":
                mask = mask.T  # [O, C]
                if w.shape[:2] != mask.shape:
                    raise self.error(f"weights {list(w.shape)} do not match the connection table "
                                     f"{list(mask.shape)}")
            w = w * mask[:, :, None, None]
            groups = 1
        (ph, pw), (sh, sw), (dh, dw) = attrs["padding"], attrs["stride"], attrs["dilation"]
        names = self.with_parameters(x, w, b)
        return self.step(op_type, names, suffix, first, kernel_shape=list(w.shape[2:]), strides=[sh, sw],
                         pads=[ph, pw, ph, pw], dilations=[dh, dw], group=groups)

    def with_parameters(self, x, w, b):
        """Input names [x, weights, biases] of a weighted node (no biases name when b is None)."""
        names = [x, self.const(f"{self.current}.weights", w)]
        if b is not None:
            names.append(self.const(f"{self.current}.biases", b))
        return names

    def _op_Fc(self, attrs, ins):
        flat = []
        for k, (name, rank) in enumerate(ins):
            flat.append(name if rank == 2 else self.node("Flatten", [name], f"{self.current}/flatten", axis=1))
        x = flat[0] if len(flat) == 1 else self.node("Concat", flat, f"{self.current}/concat", axis=1)
        w = self.param("weights")
        b = self.param("biases")
        names = self.with_parameters(x, w, b)
        if b is None and self.opset < 11:
            names.append(self.const(f"{self.current}.biases", np.zeros(w.shape[0], np.float32)))
        return self.primary("Gemm", names, transB=1), 2, False

    def _op_BatchNorm(self, attrs, ins):
        x, first = self.joined(ins, True)
        names = [x] + [self.const(f"{self.current}.{r}", self.param(r)) for r in ("scales", "biases", "means",
                                                                                   "variances")]
        kw = dict(epsilon=float(attrs["epsilon"]), momentum=float(1.0 - attrs["momentum"]))
        if self.opset < 9:
            kw["spatial"] = 1
        return self.step("BatchNormalization", names, "batchnorm", first, **kw), 4, False

    def _op_Pool(self, attrs, ins):
        if attrs.get("mapping") is not None:
            raise self.error("pooling across channels (a non-identity mapping) has no ONNX equivalent")
        x, first = self.joined(ins, True)
        (kh, kw), (sh, sw), (ph, pw) = attrs["pool"], attrs["stride"], attrs["padding"]
        in_hw = tuple(self.g.input_types(self.current)[0].shape[2:])
        kind = "Max" if attrs["pooling"] == "Max" else "Average"
        if (kh, kw) == in_hw and (ph, pw) == (0, 0):
            return self.step(f"Global{kind}Pool", [x], "pool", first), 4, False
        kwargs = dict(kernel_shape=[kh, kw], strides=[sh, sw], pads=[ph, pw, ph, pw])
        if kind == "Average":
            kwargs["count_include_pad"] = 1
        return self.step(f"{kind}Pool", [x], "pool", first, **kwargs), 4, False

    def _op_ElemWise(self, attrs, ins):
        op = attrs["operation"]
        rank = max(r for _, r in ins)
        xs = [n if r == rank else self.four_d((n, r)) for n, r in ins]
        weights, shifts = attrs["weights"], attrs["shifts"]
        first = True
        if op in ("Sum", "AbsSum", "EuclideanSum"):
            terms = []
            for k, x in enumerate(xs):
                if op == "AbsSum":
                    x = self.step("Abs", [x], f"abs{k}", first)
                    first = False
                w = weights[k]
                if op == "EuclideanSum":
                    x = self.step("Mul", [x, x], f"square{k}", first)
                    first = False
                    w = np.square(np.asarray(w, dtype=np.float64))
                if np.any(np.asarray(w) != 1.0):
                    x = self.step("Mul", [x, self.coefficient(w, rank, f"{self.current}/w{k}")], f"mul{k}", first)
                    first = False
                terms.append(x)
            if op == "EuclideanSum":
                shift = sum(np.square(np.asarray(s, dtype=np.float64)) for s in shifts[:len(xs)])
            elif op == "Sum":
                shift = sum(np.asarray(s, dtype=np.float64) for s in shifts[:len(xs)])
            else:
                shift = np.float64(0.0)
            y = terms[0] if len(terms) == 1 else self.step("Sum", terms, "sum", first)
            first = first and len(terms) == 1
            if np.any(np.asarray(shift) != 0.0):
                y = self.step("Add", [y, self.coefficient(shift, rank, f"{self.current}/shift")], "shift", first)
                first = False
            if op == "EuclideanSum":
                y = self.step("Sqrt", [y], "sqrt", first)
                first = False
            if first:
                y = self.primary("Identity", [y])
            return y, rank, False
        if op == "Prod":
            y = xs[0]
            for k, x in enumerate(xs[1:]):
                y = self.step("Mul", [y, x], f"mul{k}", first)
                first = False
            if first:
                y = self.primary("Identity", [y])
            return y, rank, False
        if op == "Max":
            return self.step("Max", xs, "max", True), rank, False
        raise self.error(f"ElemWise operation '{op}' has no ONNX export")

    def _op_Scaling(self, attrs, ins):
        spec = attrs["scaling"]
        if spec[0] != "FloatingPoint":
            raise self.error(f"{spec[0]}Scaling (integer arithmetic) has no exact ONNX equivalent")
        x, first = self.joined(ins, True) if len(ins) > 1 else (ins[0][0], True)
        rank = 4 if len(ins) > 1 else ins[0][1]
        scales, clipping = spec[1], spec[2]
        if clipping is not None:
            x = self.step("Max", [x, self.const(f"{self.current}/zero", np.float32(0.0))], "low", first)
            x = self.step("Min", [x, self.coefficient(list(clipping), rank, f"{self.current}/clipping")], "high",
                          False)
            first = False
        y = self.step("Mul", [x, self.coefficient(list(scales), rank, f"{self.current}/scale")], "scale",
                      first)
        return y, rank, False

    def _op_Softmax(self, attrs, ins):
        group = int(attrs.get("group_size", 0))
        if len(ins) == 1 and ins[0][1] == 2 and group == 0:
            return self.primary("Softmax", [ins[0][0]], axis=1), 2, False
        x, first = self.joined(ins, True)
        shape = self.g.output_types(self.current)[0].shape
        c, h, w = shape[1], shape[2], shape[3]
        if group and group != c:
            shape5 = self.const(f"{self.current}/groups", [0, c // group, group, h, w], np.int64)
            y = self.step("Reshape", [x, shape5], "groups", first)
            if self.opset >= 13:
                y = self.node("Softmax", [y], f"{self.current}/softmax", axis=2)
            else:  # softmax over the last axis only: the coerced 2-D view is [N*(C/g)*H*W, g]
                y = self.node("Transpose", [y], f"{self.current}/last", perm=[0, 1, 3, 4, 2])
                y = self.node("Softmax", [y], f"{self.current}/softmax", axis=4)
                y = self.node("Transpose", [y], f"{self.current}/back", perm=[0, 1, 4, 2, 3])
            back = self.const(f"{self.current}/shape", [0, c, h, w], np.int64)
            return self.node("Reshape", [y, back], f"{self.current}/ungroup"), 4, False
        if self.opset >= 13 or (h, w) == (1, 1):
            return self.step("Softmax", [x], "softmax", first, axis=1), 4, False
        y = self.step("Transpose", [x], "nhwc", first, perm=[0, 2, 3, 1])
        y = self.node("Softmax", [y], f"{self.current}/softmax", axis=3)
        return self.node("Transpose", [y], f"{self.current}/nchw", perm=[0, 3, 1, 2]), 4, False

    def _op_Padding(self, attrs, ins):
        x, first = self.joined(ins, True)
        pads = [0, 0, attrs["top"], attrs["left"], 0, 0, attrs["bot"], attrs["right"]]
        if self.opset < 11:
            return self.step("Pad", [x], "pad", first, pads=pads, mode="constant", value=0.0), 4, False
        return self.step("Pad", [x, self.const(f"{self.current}/pads", pads, np.int64)], "pad", first,
                         mode="constant"), 4, False

    def _op_Reshape(self, attrs, ins):
        if len(ins) > 1:
            x, first = self.joined(ins, True)
        else:
            x, first = ins[0][0], True
        shape = [0] + [int(s) for s in attrs["shape"]]
        y = self.step("Reshape", [x, self.const(f"{self.current}/shape", shape, np.int64)], "reshape", first)
        return y, len(shape), False

    def _op_Transpose(self, attrs, ins):
        x, first = self.joined(ins, True)
        return self.step("Transpose", [x], "transpose", first, perm=list(numpy_axes(attrs["perm"]))), 4, False

    def _op_Resize(self, attrs, ins):
        if self.opset < 11:
            raise self.error("Resize needs opset 11 or more")
        x, first = self.joined(ins, True)
        mode = attrs["mode"]
        if mode == "NearestNeighbor":
            kw = dict(mode="nearest", coordinate_transformation_mode="asymmetric", nearest_mode="floor")
        elif mode == "Bilinear":
            kw = dict(mode="linear", coordinate_transformation_mode="pytorch_half_pixel")
        elif mode == "BilinearTF":
            ctm = "align_corners" if attrs.get("align_corners", True) else "asymmetric"
            kw = dict(mode="linear", coordinate_transformation_mode=ctm)
        else:
            raise self.error(f"resize mode {mode} has no ONNX export")
        cur = self.current
        shape = self.node("Shape", [x], f"{cur}/shape")
        nc = self.node("Slice", [shape, self.const(f"{cur}/start", [0], np.int64),
                                 self.const(f"{cur}/end", [2], np.int64)], f"{cur}/nc")
        hw = self.const(f"{cur}/hw", [attrs["height"], attrs["width"]], np.int64)
        sizes = self.node("Concat", [nc, hw], f"{cur}/sizes", axis=0)
        empty = "" if self.opset >= 13 else self.const(f"{cur}/empty", np.zeros(0, np.float32))
        return self.step("Resize", [x, empty, empty, sizes], "resize", first, **kw), 4, False


def export_onnx(source, path, opset: int = 17):
    """Write `source` (a DeepNetCell, a TraceResult or an IR Graph) as an ONNX model at `path`.

    Returns the `onnx.ModelProto`. The file is written to a temporary file in the same folder
    and renamed, so an existing file is never left half-written.
    """
    onnx = _onnx()
    if not isinstance(opset, int) or isinstance(opset, bool):
        raise TypeError(f"export_onnx: opset must be an int, got {type(opset).__name__}")
    newest = onnx.defs.onnx_opset_version()
    if not MIN_OPSET <= opset <= newest:
        raise ValueError(f"export_onnx: opset {opset} is not supported (from {MIN_OPSET} to {newest})")
    graph = _graph_of(source)
    model = _Exporter(graph, opset).run()
    try:
        onnx.checker.check_model(model, full_check=True)
    except Exception as e:
        raise RuntimeError(f"export_onnx: the exported model fails the ONNX checker (an exporter bug): "
                           f"{type(e).__name__}: {e}") from e

    path = os.path.abspath(os.fspath(path))
    write_inside(os.path.dirname(path), os.path.basename(path), model.SerializeToString())
    return model
