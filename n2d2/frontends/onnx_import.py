"""ONNX import: an ONNX model becomes n2d2 cells, called eagerly and traced into a `DeepNetCell`.

Steps (N2D2's `DeepNetGenerator::ONNX_processGraph`, reference section 2.2):

1. load: `onnx.load`, the size limits of `onnx_limits` (before any tensor is read),
   `onnx.checker`, strict shape inference; any failure is an `ONNXFormatError` naming the file;
2. the one ONNX path, for every model it builds (`_Importer._through_the_ir`): the model is
   converted to `Onnx*` IR by `n2d2.onnx_backend` (nodes named by their ONNX outputs, in file
   order; `ignore_cells` bypassed; Reshape targets naming the file's batch size take the
   provider's; a model it refuses is refused, naming file and node), 1-D convolutions and
   poolings of a rank-3 input made 2-D (`lift_1d`), legalized into N2D2 ops (`legalize_onnx`,
   whose rules say why a node stays `Onnx*`), its constant operands folded (`fold_constant_operands`),
   activations fused (`fuse_activation`), and built as cells, one per node
   (`graph_cells.CellBuilder`). An `Onnx*` node left (not a view) is an `OnnxNode` cell
   (`generic_ops=True`) or refused with its rule's reason; the node-by-node importer below
   builds the model instead only for what this path does not take yet: a rank-2/3 input, a
   conversion refused (the file's batch size in a Reshape target), an INI `[onnx]` section
   (steps 2'-3);
2'. walk the nodes in order (ONNX graphs are topologically sorted), skipping those no graph
   output depends on. A node whose inputs are all constants (initializers, `Constant`, the
   `Shape` of an activation, whose size is known) is evaluated at import with numpy (the
   `onnx.reference` evaluator, `onnx_limits.evaluate_constant_node`, as `n2d2.onnx_backend`
   does for ops it has no rule for): the Shape/Gather/Unsqueeze/Concat/Cast chains exporters emit
   around `Reshape` disappear this way;
3. every other node becomes a cell named after its first output ('9', '11', ...), called at
   once on the running tensor (a zero batch of `provider.shape()`, in test mode), or no cell:
   - the activations of n2d2.ops.activation's table (Relu, LeakyRelu, Sigmoid, Tanh, Softplus,
     Gelu, Mish, HardSigmoid, HardSwish), Clip and PRelu(scalar) become the activation of the
     cell that produced their input when they are its only consumer (else an Activation
     cell), by the rule of the `fuse_activation` pass (`fuse_activation.fusion`); a general
     Clip(lo, hi) is two ElemWise cells around a clipped Rectifier; the decomposed GELU
     (x * 0.5 * (1 + Erf(x / sqrt 2))) is one Gelu activation, found by the legalize pass's
     pattern (`legalize_onnx.gelu_pattern`, on a view of the ONNX graph);
   - Add/Sub of a per-channel constant after Conv/Fc/BatchNorm is folded into the bias, a
     Mul/Div by one into the weights (else an ElemWise shift or a Scaling cell);
   - Flatten/Reshape/Squeeze/Unsqueeze only relabel the shape: the tensor is kept, and a
     Reshape cell is made only when a consumer depends on the layout (not for an Fc, which
     flattens in the same order); Identity, Dropout and Cast-to-float are removed;
   - Concat (channel axis) hands an Interface to the next cell (an Activation cell when that
     consumer cannot take one);
4. the network is traced (`n2d2.ir.trace`) into a `DeepNetCell` whose target is a
   `Score(provider, name="Target")`, as `DeepNetCell.from_block` does.

Tensors are NCHW; an ONNX tensor of rank r < 4 is held as a 4-D tensor with trailing
dimensions of size 1 ([N, F] as [N, F, 1, 1]), so that the memory order is the same.
The batch size is the provider's: constant Reshape targets may name the file's batch size.

A node no cell represents exactly is, by default (`generic_ops=True`), a generic cell; with
`generic_ops=False` it is refused with an `ONNXUnsupportedError` (a `ValueError`) that names the
node and says what is supported; never a silent skip. With `generic_ops=True` such a node (no
handler, or a handler's refusal) becomes instead an `OnnxNode` cell
(`n2d2.cells.nn.onnx_node`) running the node's conversion by `n2d2.onnx_backend` (exact ONNX
semantics: broadcasting, any rank, ceil-mode windows, LayerNormalization...); its inputs are
viewed in their ONNX shapes, its output is carried like any other (ranks above 4 as they are,
until a Reshape brings them back to 4). Every torchvision classifier imports this way.
"""
import contextlib
import os
import re
import warnings

import numpy as np

import n2d2.activation as activations
from n2d2 import filler, solver
from n2d2.activation import Rectifier
from n2d2.cells.deepnet_cell import DeepNetCell
from n2d2.cells.nn import (
    LRN,
    Activation,
    BatchNorm2d,
    Conv,
    ConvDepthWise,
    Deconv,
    ElemWise,
    Fc,
    GlobalPool2d,
    Padding,
    Pool,
    Reshape,
    Resize,
    Scaling,
    Softmax,
    Transpose,
)
from n2d2.cells.nn import base as nn_base  # nn_base.deferred_values read at call time (tests swap it)
from n2d2.cells.nn.onnx_node import OnnxNode
from n2d2.cells.nn.weighted import weights_from_file
from n2d2.error_handler import WrongInputType
from n2d2.frontends import graph_cells, onnx_limits
from n2d2.frontends.onnx_errors import ONNXError, ONNXFormatError, ONNXUnsupportedError, _first_line, _onnx  # noqa: F401
from n2d2.ir.ops import activation_spec
from n2d2.ir.passes._common import set_op
from n2d2.ir.passes.fuse_activation import fuse_activation, fusion
from n2d2.ir.passes.legalize_onnx import RULES as LEGALIZE_RULES
from n2d2.ir.passes.legalize_onnx import (
    fold_constant_operands,
    gelu_pattern,
    legalize_onnx,
    legalize_onnx_with_reasons,
)
from n2d2.ir.passes.lift_1d import lift_1d
from n2d2.ir.tensor_ops import MAX_PARAM_SLOTS, constant_value, resolve_pads
from n2d2.ir.trace import trace
from n2d2.ir.types import TensorType
from n2d2.mapping import Mapping
from n2d2.ops import activation as act_table
from n2d2.provider.base import Provider
from n2d2.scaling import FloatingPointScaling
from n2d2.target import Score
from n2d2.tensor import Interface, Tensor

SUPPORTED_OPS = ("Abs", "Add", "AveragePool", "BatchNormalization", "Cast", "Clip", "Concat", "Constant", "Conv",
                 "ConvTranspose", "Div", "Dropout", "Flatten", "Gemm", "GlobalAveragePool", "GlobalMaxPool",
                 "Identity", "LogSoftmax", "LRN", "MatMul", "Max", "MaxPool", "Min", "Mul", "Neg", "Pad", "PRelu",
                 "ReduceMax", "ReduceMean", "Reshape", "Resize", "Shape", "Size", "Softmax",
                 "Squeeze", "Sub", "Sum", "Transpose", "Unsqueeze", "Upsample",
                 *act_table.onnx_import_ops(), "(and any op whose inputs are all constants)")

# -- loading -------------------------------------------------------------------------------------
def load_model(path):
    """`onnx.load` + `onnx.checker` + strict shape inference; returns (model, inferred model).

    Raises `ONNXFormatError` naming `path` when any step fails, `FileNotFoundError` when the
    file does not exist.
    """
    model, inferred, _ = load_model_arrays(path)
    return model, inferred


def load_model_arrays(path):
    """`load_model`, plus {initializer name: read-only array} for the main graph's raw-data
    initializers: the bytes the limits check reads once, viewed without another copy."""
    onnx = _onnx()
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"ONNX model {path}: no such file")
    try:
        model = onnx.load(path, load_external_data=False)
    except Exception as e:  # protobuf DecodeError, truncated file, nesting deeper than protobuf's limit
        raise ONNXFormatError(f"{path}: not a readable ONNX model ({type(e).__name__}: {e})") from None
    base_dir = os.path.dirname(os.path.abspath(path))
    raw = {}
    onnx_limits.check_model(model, path, base_dir, raw=raw)  # dims vs data, caps: before any tensor is read
    try:
        onnx.external_data_helper.load_external_data_for_model(model, base_dir)
    except Exception as e:
        raise ONNXFormatError(f"{path}: external data cannot be read ({type(e).__name__}: {e})") from None
    light = onnx_limits.without_large_initializers(model)
    try:
        onnx.checker.check_model(light)
    except Exception as e:
        raise ONNXFormatError(f"{path}: the ONNX checker rejects the model: {_first_line(e)}") from None
    try:
        inferred = onnx.shape_inference.infer_shapes(light, check_type=True, strict_mode=True)
    except Exception as e:
        raise ONNXFormatError(f"{path}: ONNX shape inference fails: {_first_line(e)}") from None
    onnx_limits.check_value_infos(inferred, path)
    return model, inferred, raw


# -- values --------------------------------------------------------------------------------------

def _pad4(shape):
    return tuple(shape) + (1,) * (4 - len(shape))


class _Owner:
    """The cell that produced a tensor and how many ONNX uses still reach that tensor unchanged
    (through aliases); a consumer may rewrite the cell (fuse) only when it is the last one."""

    __slots__ = ("cell", "tensor", "refs")

    def __init__(self, cell, tensor, refs):
        self.cell = cell
        self.tensor = tensor
        self.refs = refs


class _Act:
    """An activation: an n2d2 tensor (or the parts of a channel concatenation) and the shape
    ONNX gives it. The tensor may hold the values in another shape of the same memory order
    (a view: Flatten, Reshape...); `view_name` names the Reshape cell made if a consumer needs
    the ONNX layout."""

    __slots__ = ("tensor", "parts", "shape", "owner", "view_name", "materialized")

    def __init__(self, tensor, shape, owner=None, view_name=None, parts=None):
        self.tensor = tensor
        self.parts = parts
        self.shape = tuple(int(s) for s in shape)
        self.owner = owner
        self.view_name = view_name
        self.materialized = None

    @property
    def rank(self):
        return len(self.shape)

    def canonical(self) -> bool:
        return self.parts is None and tuple(self.tensor.shape()) == _pad4(self.shape)


class _OnnxView:
    """The needed nodes of an ONNX graph as `legalize_onnx.gelu_pattern` reads a graph: a node is
    named by its first output; a constant is an initializer or a `Constant` node."""

    def __init__(self, importer, nodes):
        self.importer = importer
        self.producer = {o: n for n in nodes for o in n.output if o}
        self.reads = {}
        for n in nodes:
            for name in n.input:
                if name:
                    self.reads[name] = self.reads.get(name, 0) + 1
        self.closed = {o.name for o in importer.graph.output} | importer.ignore

    def op(self, name):
        node = self.producer.get(name)
        if node is None:
            return "OnnxConstant" if isinstance(self.importer.values.get(name), np.ndarray) else "Input"
        if node.domain not in ("", "ai.onnx"):
            return f"{node.domain}.{node.op_type}"
        return "OnnxConstant" if node.op_type == "Constant" else f"Onnx{node.op_type}"

    def inputs_of(self, name):
        return [(n, 0 if n not in self.producer or self.producer[n].output[0] == n else 1)
                for n in self.producer[name].input if n]

    def scalar(self, ref):
        v, node = self.importer.values.get(ref[0]), self.producer.get(ref[0])
        if v is None and node is not None and node.op_type == "Constant":
            attrs = {a.name: _plain(_onnx().helper.get_attribute_value(a)) for a in node.attribute}
            try:
                v = self.importer._constant(node, attrs)
            except ONNXError:
                return None
        if not isinstance(v, np.ndarray) or v.size != 1 or not np.issubdtype(v.dtype, np.floating):
            return None
        return float(v.reshape(-1)[0])

    def read_once(self, name):
        node = self.producer.get(name)
        return node is not None and len([o for o in node.output if o]) == 1 and self.reads.get(name, 0) == 1 \
            and name not in self.closed


# -- the importer ----------------------------------------------------------------------------------
class _Importer:
    """Maps the nodes of one ONNX graph to cells (see the module docstring)."""

    def __init__(self, model, inferred, path, provider, ignore_cells=(), ignore_input_size=False,
                 load_weights=True, arrays=None, generic_ops=False):
        self.model = model
        self.generic_ops = generic_ops  # nodes no cell represents become OnnxNode cells
        self.arrays = arrays or {}  # initializer name -> array already read (load_model_arrays)
        self.graph = model.graph
        self.path = path
        self.provider = provider
        self.ignore = set(ignore_cells or ())
        self.ignore_input_size = ignore_input_size
        self.load_weights = load_weights
        self.opset = self._default_opset()
        self.values = {}          # ONNX name -> np.ndarray (constant) or _Act
        self.cells = []           # cells in creation order
        self.cell_of_node = {}    # ONNX output name -> cell created for that node
        self.used_names = set()
        self.inferred = self._inferred_shapes(inferred)
        self.file_batch = None
        self._node = None

    # -- errors -------------------------------------------------------------------------------
    def _label(self, node=None):
        node = node or self._node
        if node is None:
            return self.path
        out = node.output[0] if len(node.output) else "?"
        name = f"'{node.name}' " if node.name else ""
        return f"{self.path}: node {name}({node.op_type}, output '{out}')"

    def unsupported(self, message, node=None) -> ONNXUnsupportedError:
        return ONNXUnsupportedError(f"{self._label(node)}: {message}")

    def malformed(self, message, node=None) -> ONNXFormatError:
        return ONNXFormatError(f"{self._label(node)}: {message}")

    # -- set-up -------------------------------------------------------------------------------
    def _default_opset(self):
        for imp in self.model.opset_import:
            if imp.domain in ("", "ai.onnx"):
                return int(imp.version)
        raise ONNXFormatError(f"{self.path}: the model imports no version of the default ONNX domain")

    @staticmethod
    def _inferred_shapes(inferred):
        shapes = {}
        for vi in list(inferred.graph.value_info) + list(inferred.graph.output):
            t = vi.type.tensor_type
            if not t.HasField("shape"):
                continue
            dims = [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]
            shapes[vi.name] = dims
        return shapes

    # -- uses and liveness ------------------------------------------------------------------------
    def _needed_nodes(self):
        producer = {}
        for i, node in enumerate(self.graph.node):
            for o in node.output:
                if o:
                    producer[o] = i
        needed = set()
        stack = [o.name for o in self.graph.output]
        seen = set()
        while stack:
            name = stack.pop()
            if name in seen:
                continue
            seen.add(name)
            i = producer.get(name)
            if i is None or i in needed:
                continue
            needed.add(i)
            stack.extend(n for n in self.graph.node[i].input if n)
        return [node for i, node in enumerate(self.graph.node) if i in needed]

    def _count_uses(self, nodes):
        uses = {}
        for node in nodes:
            if node.op_type in ("Shape", "Size"):
                continue  # reads only the size: never blocks a fusion
            for name in node.input:
                if name:
                    uses[name] = uses.get(name, 0) + 1
        for o in self.graph.output:
            uses[o.name] = uses.get(o.name, 0) + 1
        return uses

    # -- names --------------------------------------------------------------------------------
    def _name(self, base, primary=False, own=False):
        """A unique cell name. `primary`: `base` is the output of the node the cell is made for;
        `own`: `base` is the output of a node that made no cell (a view being materialized).
        Other cells get `base`, `base_1`... avoiding every ONNX value name."""
        if (primary or own) and base not in self.used_names:
            self.used_names.add(base)
            return base
        name, k = base, 1
        while name in self.used_names or name in self.reserved:
            name = f"{base}_{k}"
            k += 1
        self.used_names.add(name)
        return name

    # -- running ------------------------------------------------------------------------------
    def run(self, input_tensor=None):
        """Build every cell; returns (input tensor, output tensors, input name). `input_tensor`
        (of `provider.shape()`): the graph input is that tensor (an INI network's layer feeding an
        `[onnx]` section) instead of a new zero batch."""
        onnx = _onnx()
        from onnx import numpy_helper

        init_names = set()
        for init in self.graph.initializer:
            try:
                self.values[init.name] = self.arrays.get(init.name)
                if self.values[init.name] is None:
                    self.values[init.name] = numpy_helper.to_array(init)
            except Exception as e:
                raise ONNXFormatError(f"{self.path}: initializer '{init.name}' cannot be read "
                                      f"({type(e).__name__}: {e})") from None
            init_names.add(init.name)
        for sparse in self.graph.sparse_initializer:
            raise ONNXUnsupportedError(f"{self.path}: sparse initializer '{sparse.values.name}' is not supported")
        data_inputs = [i for i in self.graph.input if i.name not in init_names]
        if len(data_inputs) != 1:
            raise ONNXUnsupportedError(f"{self.path}: the model has {len(data_inputs)} data inputs "
                                       f"({', '.join(i.name for i in data_inputs) or 'none'}); n2d2 imports "
                                       "models with exactly one (the provider's batch)")
        graph_input = data_inputs[0]
        elem = graph_input.type.tensor_type.elem_type
        if elem not in (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16):
            raise ONNXUnsupportedError(f"{self.path}: input '{graph_input.name}' has element type "
                                       f"{onnx.TensorProto.DataType.Name(elem)}; n2d2 feeds float tensors")
        in_dims = [d.dim_value if d.HasField("dim_value") else None
                   for d in graph_input.type.tensor_type.shape.dim]
        provider_shape = [int(s) for s in self.provider.shape()]
        if not 2 <= len(in_dims) <= 4:
            raise ONNXUnsupportedError(f"{self.path}: input '{graph_input.name}' has rank {len(in_dims)}; n2d2 "
                                       "imports inputs of rank 2 to 4 (N, C[, H[, W]])")
        self.file_batch = in_dims[0]
        sample = _pad4([1] + [d if d else 0 for d in in_dims[1:]])[1:]
        if any(d and d != p for d, p in zip(sample, provider_shape[1:])):
            if not self.ignore_input_size or len(in_dims) != 4:
                raise ONNXUnsupportedError(
                    f"{self.path}: unexpected size for ONNX input '{graph_input.name}': the model expects "
                    f"{list(in_dims)} (N, C, H, W; None = any), the provider gives {provider_shape}"
                    + ("" if len(in_dims) != 4 else "; pass ignore_input_size=True to use the provider's size"))
            self.inferred = {}  # the file's shapes no longer apply
        x = Tensor(provider_shape) if input_tensor is None else input_tensor
        in_shape = (provider_shape[0],) + tuple(provider_shape[1:len(in_dims)])
        self.values[graph_input.name] = _Act(x, in_shape, None, view_name=graph_input.name)
        nodes = self._needed_nodes()
        self.uses = self._count_uses(nodes)
        self.reserved = {o for n in self.graph.node for o in n.output} | {graph_input.name}
        self.used_names.add(graph_input.name)
        known = {o for n in self.graph.node for o in n.output if o}
        unknown = sorted(self.ignore - known)
        if unknown:
            raise ONNXUnsupportedError(f"{self.path}: ignore_cells names {unknown}, which are not node outputs "
                                       f"of this model")
        outputs = self._through_the_ir(x, graph_input.name, in_shape)
        if outputs is not None:
            return x, outputs, graph_input.name
        self._find_gelus(nodes)
        for node in nodes:
            self._node = node
            try:
                self._visit(node)
            except (ONNXError, FileNotFoundError):
                raise
            except Exception as e:
                raise ONNXUnsupportedError(f"{self._label(node)}: {type(e).__name__}: {e}") from e
        self._node = None
        outputs = []
        for o in self.graph.output:
            v = self.values.get(o.name)
            if v is None:
                raise ONNXFormatError(f"{self.path}: graph output '{o.name}' is produced by no node")
            if isinstance(v, np.ndarray):
                raise ONNXUnsupportedError(f"{self.path}: graph output '{o.name}' is a constant; n2d2 imports "
                                           "networks whose outputs depend on the input")
            outputs.append(self._tensor(v, interface_ok=False))
        return x, outputs, graph_input.name

    def _through_the_ir(self, x, input_name, in_shape):
        """The one ONNX path: the model converted to `Onnx*` IR (`n2d2.onnx_backend`, nodes named
        by their ONNX outputs), `ignore_cells` bypassed, legalized into N2D2 ops
        (`legalize_onnx`, then `fold_constant_operands`), activations fused (`fuse_activation`) and built as cells
        (`graph_cells.CellBuilder`) called on `x`; returns the output tensors. An `Onnx*` node
        left is an OnnxNode cell, or refused by name (`_check_leftover`). None (the node by
        node importer below runs) when the converter lacks an op; a model the converter refuses
        otherwise is refused (`_conversion_error`). The input may be of rank 2 or 3 (`x` holds
        it as [N, C, 1, 1] / [N, C, L, 1]; 1-D windows become 2-D, `lift_1d`), and Reshape
        targets naming the file's batch size take the provider's. The ONNX values are left in
        `self.values` (`_serve_values`)."""
        from n2d2.onnx_backend import _Converter

        converter = _Converter(self.model, {input_name: (in_shape, "float32")}, {}, self.arrays,
                               file_batch=self.file_batch, bypass=self.ignore)
        try:
            graph = converter.convert()
        except NotImplementedError:   # an op the converter lacks: the node by node importer's handler
            return None
        except Exception as e:   # the node by node importer refused such models too, naming the node
            raise self._conversion_error(converter, e) from e
        order = graph.nodes()   # the file's order
        self._onnx_nodes = {n.output[0]: n for n in self.graph.node if len(n.output) and n.output[0]}
        converted = graph
        # legalized again after the folding: what read a folded node (a Softmax after a Gemm whose alpha
        # was folded) may now be legalized too
        graph = fold_constant_operands(legalize_onnx(self._log_softmax_as_softmax(lift_1d(graph))))
        graph, reasons = legalize_onnx_with_reasons(graph)
        graph = fuse_activation(graph)
        if any(not graph.op(n).startswith("Onnx") and graph.op(n) not in graph_cells.SUPPORTED + ("Input", "Concat")
               for n in graph.nodes()):
            return None
        for n in graph.nodes():
            if graph.op(n).startswith("Onnx") and graph.op(n) != "OnnxConstant" and not graph_cells.is_alias(graph, n):
                self._check_leftover(graph, n, reasons.get(n), in_shape[0])
        builder = graph_cells.CellBuilder(graph, order=order, load_weights=self.load_weights, label=self.path)
        outputs = builder.build(x)
        self.cells = builder.cells
        self.used_names.update(c.get_name() for c in self.cells)
        self._serve_values(converter.values, converted, builder)
        return outputs

    def _serve_values(self, values, converted, builder):
        """`self.values` of the ONNX activations, as the node by node importer leaves them (an INI
        network's `[onnx]` section reads them: `Input=onnx,<value>`, `[<value>.Target]`): each
        name's IR tensor (`values`: the converter's, by ONNX name), or, for a node a pass removed
        (an activation fused into its producer, a bias folded into it), the tensor of its first
        activation input in the `converted` graph, which that pass made carry its value."""
        built = builder.graph
        for name, v in values.items():
            ref = v.ref
            if ref is None or name in self.values:
                continue
            while ref[0] not in built.nx:
                ins = [r for r in converted.inputs_of(ref[0]) if converted.op(r[0]) != "OnnxConstant"] \
                    if ref[0] in converted.nx else []
                if not ins:
                    break
                ref = ins[0]
            t = builder.values.get(ref)
            if t is None:
                continue
            shape = tuple(v.type.shape)
            if isinstance(t, graph_cells.Parts):
                parts = [_Act(p, tuple(p.shape())) for p in t]
                self.values[name] = _Act(None, shape, view_name=name, parts=parts)
            else:
                self.values[name] = _Act(t, shape, view_name=name)

    def _conversion_error(self, converter, e):
        """The error of a model `n2d2.onnx_backend` refuses, naming the file and the node: a format
        error stays one (`onnx_limits`' bounds), any other is an `ONNXUnsupportedError`."""
        name = getattr(converter, "_node_name", None)
        node = next((n for n in self.graph.node if name is not None and name in n.output), None)
        message = _first_line(e)
        cls = ONNXFormatError if isinstance(e, ONNXFormatError) else ONNXUnsupportedError
        return cls(f"{self._label(node) if node is not None else self.path}: {message}")

    def _check_leftover(self, graph, node, reason, batch):
        """Refuse `node`, an `Onnx*` node that legalize left (`reason`: its rule's), unless
        `generic_ops` makes it an OnnxNode cell, which carries a float32 batch of `batch`
        samples. The refusal names the file, the ONNX node and why."""
        onnx_node = self._onnx_nodes.get(node)
        op_type = graph.op(node)[len("Onnx"):]
        if reason is None or graph.op(node) not in LEGALIZE_RULES:
            reason = (f"op type '{op_type}' is not supported on activations (supported: {', '.join(SUPPORTED_OPS)}; "
                      "with generic_ops=True, any op of n2d2.onnx_backend)")
        if not self.generic_ops:
            raise self.unsupported(reason, node=onnx_node)
        out = graph.output_types(node)[0]
        if out.dtype != "float32" or not out.shape or out.shape[0] != batch:
            raise self.unsupported(f"{reason}; its output {list(out.shape)} ({out.dtype}) is not a float32 batch of "
                                   f"{batch} samples, which an OnnxNode cell would carry", node=onnx_node)

    def _log_softmax_as_softmax(self, graph):
        """A LogSoftmax that is the network's output (read by nothing else) imported as a Softmax,
        with a warning: its outputs are the probabilities (exp of the ONNX outputs); the arg-max
        and the cross-entropy training are the same (the importer's rule; not exact, so not a
        legalize rule)."""
        for node in graph.nodes():
            if graph.op(node) == "OnnxLogSoftmax" and not graph.consumers(node) \
                    and sum(n == node for n, _ in graph.outputs) == 1:
                warnings.warn(f"{self._label(self._onnx_nodes.get(node))}: LogSoftmax imported as a Softmax cell: "
                              "its outputs are the probabilities (exp of the ONNX outputs); the arg-max and the "
                              "cross-entropy training are the same", stacklevel=4)
                set_op(graph, node, "OnnxSoftmax", graph.attrs(node))
        return graph

    def _visit(self, node):
        if node.domain not in ("", "ai.onnx"):
            raise self.unsupported(f"custom domain '{node.domain}' (supported: the default ONNX domain)")
        first = node.output[0] if len(node.output) else ""
        final = self._gelu_inner.get(first, first)
        if final in self._gelus and self._gelu(node, final):
            return
        ins = []
        for name in node.input:
            if not name:
                ins.append(None)
                continue
            if name not in self.values:
                raise self.malformed(f"input '{name}' is produced by no earlier node, initializer or graph input")
            ins.append(self.values[name])
        onnx = _onnx()
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        attrs = {k: _plain(v) for k, v in attrs.items()}
        out = node.output[0] if len(node.output) else None
        if out is None or not out:
            raise self.malformed("the node has no output")
        if out in self.ignore:
            acts = [v for v in ins if isinstance(v, _Act)]
            if not acts:
                raise self.unsupported("ignore_cells names this node but it has no activation input to "
                                       "reconnect its consumers to")
            self._alias(acts[0], out, acts[0].shape)
            return
        if node.op_type in onnx_limits.RANDOM_OPS:
            raise self.unsupported("random ops are not supported")
        if node.op_type == "Constant":
            self.values[out] = self._constant(node, attrs)
            return
        if node.op_type == "Shape":
            v = ins[0] if ins else None
            if not isinstance(v, (_Act, np.ndarray)):
                raise self.malformed("Shape needs one input")
            shape = np.array(v.shape, dtype=np.int64)
            start, end = attrs.get("start", 0), attrs.get("end", None)
            self.values[out] = shape[start:end] if end is not None else shape[start:]
            return
        if node.op_type == "Size" and ins and isinstance(ins[0], _Act):
            self.values[out] = np.array(int(np.prod(ins[0].shape)), dtype=np.int64)
            return
        if all(v is None or isinstance(v, np.ndarray) for v in ins):
            if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute):
                raise self.unsupported("control flow (subgraph attributes) is not supported")
            results = onnx_limits.evaluate_constant_node(node, ins, self.opset, self._label(node))
            for name, value in zip(node.output, results):
                if name:
                    self.values[name] = value
            return
        handler = getattr(self, f"_op_{node.op_type}", None)
        if handler is None and not self.generic_ops:
            raise self.unsupported(f"op type '{node.op_type}' is not supported on activations (supported: "
                                   f"{', '.join(SUPPORTED_OPS)}; with generic_ops=True, any op of "
                                   "n2d2.onnx_backend)")
        for extra in node.output[1:]:
            if extra and self.uses.get(extra, 0):
                raise self.unsupported(f"output '{extra}' (the op's optional output {list(node.output).index(extra)}) "
                                       "is used; n2d2 imports only the first output of this op")
        if handler is None:
            result = self._generic(node, ins)
        elif self.generic_ops:
            nb_cells = len(self.cells)
            try:
                result = handler(node, ins, attrs)
            except ONNXUnsupportedError as refusal:   # what the cells cannot express: an OnnxNode cell
                if len(self.cells) != nb_cells:
                    raise   # the handler already called cells: they are in the graph
                try:
                    result = self._generic(node, ins)
                except ONNXUnsupportedError:
                    raise refusal from None   # the cell importer's reason is the more precise one
        else:
            result = handler(node, ins, attrs)
        if result is not None:
            self.values[out] = result
        self._check_shape(out)

    def _check_shape(self, name):
        """Compare the imported shape with ONNX shape inference (per sample): a mismatch is a bug."""
        v = self.values.get(name)
        ref = self.inferred.get(name)
        if not isinstance(v, _Act) or ref is None or any(d is None for d in ref[1:]):
            return
        if list(ref[1:]) != list(v.shape[1:]):
            raise RuntimeError(f"{self._label()}: imported shape {list(v.shape)} differs from the ONNX shape "
                               f"{ref} (this is an importer bug, please report it)")

    # -- constants ------------------------------------------------------------------------------
    def _constant(self, node, attrs):
        from onnx import numpy_helper

        if "value" in attrs:
            attrs = dict(attrs, value=numpy_helper.to_array(attrs["value"]))
        value = constant_value(attrs)
        if value is None:
            raise self.unsupported(f"Constant attributes {sorted(attrs)} are not supported (value, value_float(s), "
                                   "value_int(s))")
        return value

    # -- input helpers ----------------------------------------------------------------------------
    def _act(self, ins, k, what="input"):
        v = ins[k] if k < len(ins) else None
        if not isinstance(v, _Act):
            kind = "missing" if v is None else "a constant"
            raise self.unsupported(f"{what} {k} is {kind}; n2d2 needs an activation there")
        return v

    def _const(self, ins, k, what, optional=False):
        v = ins[k] if k < len(ins) else None
        if v is None:
            if optional:
                return None
            raise self.malformed(f"{what} (input {k}) is missing")
        if not isinstance(v, np.ndarray):
            raise self.unsupported(f"{what} (input {k}) must be a constant (initializer or constant expression); "
                                   "n2d2 does not compute it from activations")
        return v

    def _tensor(self, v, interface_ok=True):
        """The tensor (or an Interface) holding `v` in its ONNX layout, making a Reshape or an
        Activation cell when the layout or a concatenation requires one."""
        if v.materialized is not None:
            return v.materialized
        if v.parts is not None:
            tensors = [self._tensor(p, interface_ok=False) for p in v.parts]
            if interface_ok:
                return Interface(tensors)
            cell = Activation(None, name=self._name(v.view_name, own=True))
            v.materialized = self._call(cell, Interface(tensors))
            return v.materialized
        if v.canonical() and v.tensor.nb_dims() == 4:
            return v.tensor
        if self.generic_ops and (v.rank > 4 or v.tensor.nb_dims() != 4):
            if v.rank > 4:
                raise self.unsupported(f"a tensor of rank {v.rank} ({list(v.shape)}) reaches a cell that takes "
                                       "tensors of rank 4 at most")
            cell = self._onnx_cell(self._name(v.view_name, own=True), "Reshape", "OnnxReshape",
                                   {"shape": (int(v.shape[0]),) + tuple(v.shape[1:])}, [("x", 0)], [v.shape[1:]],
                                   {}, ("shape",))
            v.materialized = self._call(cell, v.tensor)
            return v.materialized
        if v.rank > 4:
            raise self.unsupported(f"a tensor of rank {v.rank} ({list(v.shape)}) reaches a cell; n2d2 cells take "
                                   "tensors of rank 4 at most")
        c, h, w = _pad4(v.shape)[1:]
        cell = Reshape([w, h, c], name=self._name(v.view_name, own=True))
        v.materialized = self._call(cell, v.tensor)
        return v.materialized

    # -- generic cells (generic_ops) ------------------------------------------------------------------
    def _onnx_cell(self, name, op_type, op, attrs, slots, shapes, constants, batch_keys=()):
        return OnnxNode(op_type, op, attrs, slots, shapes, constants, batch_keys, name=name)

    def _carried(self, v):
        """The tensor holding activation `v` in its memory order (any shape of that size)."""
        if v.parts is not None:
            return self._tensor(v, interface_ok=False)
        return v.materialized if v.materialized is not None else v.tensor

    def _generic(self, node, ins):
        """`node` as an OnnxNode cell named after its output: its conversion by `n2d2.onnx_backend`
        (exact ONNX semantics: one IR op, whose constant operands become the cell's parameters)."""
        from n2d2.onnx_backend import convert_node

        batch = None
        spec = []
        for v in ins:
            if isinstance(v, _Act):
                batch = v.shape[0] if batch is None else batch
                spec.append(TensorType(v.shape, "float32"))
            else:
                spec.append(v)
        if node.op_type in ("Reshape", "Expand") and len(spec) > 1 and isinstance(spec[1], np.ndarray) \
                and isinstance(ins[0], _Act) and spec[1].size and spec[1][0] == self.file_batch != batch:
            spec[1] = spec[1].copy()   # a target naming the file's batch size: the provider's
            spec[1][0] = batch
        try:
            graph = convert_node(node, spec, self.opset)
        except (NotImplementedError, ValueError, KeyError, IndexError, TypeError) as e:
            raise self.unsupported(f"op type '{node.op_type}' cannot run as a generic ONNX node: "
                                   f"{_first_line(e)}") from None
        src, out = graph.outputs[0]
        if graph.op(src) == "Input":   # the node is an identity (an Expand to its own shape...)
            v = ins[int(src[1:])]
            self._alias(v, self._node.output[0], v.shape)
            return None
        ops = [n for n in graph.nodes() if graph.op(n) not in ("Input", "OnnxConstant")]
        if ops != [src] or out != 0:
            raise self.unsupported(f"its conversion has {len(ops)} ops; an OnnxNode cell holds one")
        tensors, shapes, slots, constants = [], [], [], {}
        for slot, (arg, _) in enumerate(graph.inputs_of(src)):
            if graph.op(arg) == "OnnxConstant":
                if slot >= MAX_PARAM_SLOTS:
                    raise self.unsupported(f"constant operand {slot}: an OnnxNode cell takes constants in its first "
                                           f"{MAX_PARAM_SLOTS} inputs")
                constants[f"in{slot}"] = np.asarray(graph.params[graph.node(arg).params["value"]].array)
                slots.append(("p", f"in{slot}"))
                continue
            v = ins[int(arg[1:])]
            tensor = self._carried(v)
            key = next((k for k, t in enumerate(tensors) if t is tensor), None)
            if key is None:
                key = len(tensors)
                tensors.append(tensor)
                shapes.append(tuple(v.shape[1:]))
            slots.append(("x", key))
        out_type = graph.output_types(src)[0]
        if out_type.dtype != "float32" or not out_type.shape or out_type.shape[0] != batch:
            raise self.unsupported(f"its output {list(out_type.shape)} ({out_type.dtype}) is not a float32 batch "
                                   f"of {batch} samples; n2d2 cells carry those only")
        attrs = graph.attrs(src)
        batch_keys = tuple(k for k in ("shape",) if k in attrs and len(attrs[k]) and attrs[k][0] == batch)
        cell = self._onnx_cell(self._name(self._node.output[0], primary=True), node.op_type, graph.op(src), attrs,
                               slots, shapes, constants, batch_keys)
        return self._produce(cell, tensors, out_type.shape)

    def _call(self, cell, inputs):
        cell.test()
        y = cell(inputs)
        self.cells.append(cell)
        return y

    def _produce(self, cell, inputs, shape):
        """Call `cell` for the current node; its output is the node's first output."""
        out = self._node.output[0]
        y = self._call(cell, inputs)
        self.cell_of_node[out] = cell
        return _Act(y, shape, _Owner(cell, y, self.uses.get(out, 0)), view_name=out)

    def _alias(self, v, name, shape):
        """Give `v` (same values, same memory order) a new ONNX name and shape."""
        shape = tuple(int(s) for s in shape)
        if v.parts is not None and shape != v.shape:
            a = _Act(self._tensor(v, interface_ok=False), shape, None, view_name=name)
        else:
            a = _Act(v.tensor, shape, v.owner, view_name=name, parts=v.parts)
            if shape == v.shape:
                a.materialized = v.materialized
            if a.owner is not None:
                a.owner.refs += self.uses.get(name, 0) - 1
        self.values[name] = a
        return a

    def _fusable(self, v):
        """True when the cell that made `v` can be rewritten: `v` is its plain output and the
        current node is the only use left."""
        o = v.owner
        return (o is not None and v.parts is None and v.tensor is o.tensor and o.refs == 1
                and v.materialized is None and "activation" in o.cell._parameters)

    def _out_shape(self, y, rank):
        shape = tuple(y.shape())
        if any(s != 1 for s in shape[rank:]):
            raise RuntimeError(f"cell output {list(shape)} does not fit rank {rank} (importer bug)")
        return shape[:rank]

    # -- geometry helpers -------------------------------------------------------------------------
    def _spatial(self, a, key, default, nsp):
        value = list(a.get(key, [default] * nsp))
        if len(value) != nsp:
            raise self.malformed(f"attribute {key}={value} must have {nsp} values (one per spatial axis)")
        return [int(v) for v in value]

    def _pads(self, a, in_spatial, kernel, strides, dilations):
        """(begin, end) pads per spatial axis from `pads` or `auto_pad` (`resolve_pads`)."""
        nsp = len(in_spatial)
        auto = a.get("auto_pad", "NOTSET")
        pads = [int(p) for p in a.get("pads", [0] * (2 * nsp))]
        if auto in ("NOTSET", "") and len(pads) != 2 * nsp:
            raise self.malformed(f"pads={pads} must have {2 * nsp} values")
        try:
            pads = list(resolve_pads(auto, in_spatial, kernel, strides, dilations, pads))
        except ValueError:
            raise self.malformed(f"auto_pad={auto!r} is not one of NOTSET, VALID, SAME_UPPER, SAME_LOWER") from None
        if any(p < 0 for p in pads):
            raise self.unsupported(f"negative pads {pads} are not supported")
        return pads[:nsp], pads[nsp:]

    @staticmethod
    def _hw(values, fill):
        """A 1- or 2-element spatial list as (h, w)."""
        values = list(values)
        return (values[0], values[1]) if len(values) == 2 else (values[0], fill)

    def _pad_cell(self, t, begin, end, base):
        (top, left), (bot, right) = self._hw(begin, 0), self._hw(end, 0)
        cell = Padding(int(top), int(bot), int(left), int(right), name=self._name(f"{base}_padding"))
        return self._call(cell, t)

    # -- convolutions -----------------------------------------------------------------------------
    def _op_Conv(self, node, ins, a):
        x = self._act(ins, 0)
        w = self._const(ins, 1, "weights")
        b = self._const(ins, 2, "bias", optional=True)
        nsp = x.rank - 2
        if nsp not in (1, 2) or w.ndim != x.rank:
            raise self.unsupported(f"{nsp}-D convolution (input {list(x.shape)}, weights {list(w.shape)}); n2d2 "
                                   "imports 1-D and 2-D convolutions")
        c, o, g = x.shape[1], w.shape[0], int(a.get("group", 1))
        if g < 1 or c % g or o % g or w.shape[1] * g != c:
            raise self.malformed(f"group={g} does not fit {c} input channels and weights {list(w.shape)}")
        kernel = self._spatial(a, "kernel_shape", 1, nsp) if "kernel_shape" in a else list(w.shape[2:])
        if list(kernel) != list(w.shape[2:]):
            raise self.malformed(f"kernel_shape={kernel} differs from the weights {list(w.shape)}")
        strides = self._spatial(a, "strides", 1, nsp)
        dilations = self._spatial(a, "dilations", 1, nsp)
        if min(strides + dilations) < 1:
            raise self.malformed(f"strides {strides} and dilations {dilations} must be positive")
        begin, end = self._pads(a, x.shape[2:], kernel, strides, dilations)
        if b is not None and b.shape != (o,):
            raise self.malformed(f"bias shape {list(b.shape)} is not [{o}]")
        out = node.output[0]
        t = self._tensor(x)
        if begin != end:
            t = self._pad_cell(t, begin, end, out)
            pad = (0, 0)
        else:
            pad = self._hw(begin, 0)
        (kh, kw), (sh, sw), (dh, dw) = self._hw(kernel, 1), self._hw(strides, 1), self._hw(dilations, 1)
        geometry = dict(stride_dims=[sw, sh], padding_dims=[pad[1], pad[0]], dilation_dims=[dw, dh],
                        no_bias=b is None, name=self._name(out, primary=True))
        if g == 1:
            cell = Conv(c, o, [kw, kh], **geometry)
        elif g == c == o:
            cell = ConvDepthWise(c, [kw, kh], **geometry)
        else:
            cell = Conv(c, o, [kw, kh], mapping=Mapping(nb_groups=g).create_mapping(c, o), **geometry)
        if self.load_weights:
            self._set_array(cell, "_weights", w)
            if b is not None:
                self._set_array(cell, "_biases", b)
        y = self._produce(cell, t, ())
        y.shape = self._out_shape(y.tensor, x.rank)
        return y

    def _op_ConvTranspose(self, node, ins, a):
        x = self._act(ins, 0)
        w = self._const(ins, 1, "weights")
        b = self._const(ins, 2, "bias", optional=True)
        nsp = x.rank - 2
        if nsp not in (1, 2) or w.ndim != x.rank:
            raise self.unsupported(f"{nsp}-D transposed convolution; n2d2 imports 1-D and 2-D ones")
        c, g = x.shape[1], int(a.get("group", 1))
        if g < 1 or c % g or w.shape[0] != c:
            raise self.malformed(f"group={g} and weights {list(w.shape)} do not fit {c} input channels")
        o = w.shape[1] * g
        kernel = list(w.shape[2:])
        strides = self._spatial(a, "strides", 1, nsp)
        dilations = self._spatial(a, "dilations", 1, nsp)
        if "output_shape" in a:
            raise self.unsupported("ConvTranspose with output_shape is not supported (give pads instead)")
        if a.get("auto_pad", "NOTSET") not in ("NOTSET", "", "VALID"):
            raise self.unsupported(f"ConvTranspose auto_pad={a['auto_pad']} is not supported")
        begin, end = self._pads(a, x.shape[2:], kernel, strides, dilations)
        extra = self._spatial(a, "output_padding", 0, nsp)
        crop_end = [e - p for e, p in zip(end, extra)]
        if any(v < 0 for v in crop_end):
            raise self.unsupported(f"output_padding {extra} larger than the end pads {end} is not supported")
        out = node.output[0]
        (kh, kw), (sh, sw), (dh, dw) = self._hw(kernel, 1), self._hw(strides, 1), self._hw(dilations, 1)
        symmetric = begin == crop_end
        pad = self._hw(begin, 0) if symmetric else (0, 0)
        mapping = None if g == 1 else Mapping(nb_groups=g).create_mapping(c, o)
        cell = Deconv(c, o, [kw, kh], stride_dims=[sw, sh], padding_dims=[pad[1], pad[0]], dilation_dims=[dw, dh],
                      mapping=mapping, no_bias=b is None, name=self._name(out, primary=True))
        if self.load_weights:
            self._set_array(cell, "_weights", w)
            if b is not None:
                self._set_array(cell, "_biases", b)
        y = self._produce(cell, self._tensor(x), ())
        if not symmetric:
            crop = self._pad_cell(y.tensor, [-v for v in begin], [-v for v in crop_end], out)
            y = _Act(crop, (), None, view_name=out)
        y.shape = self._out_shape(y.tensor, x.rank)
        return y

    def _set_array(self, cell, attr, values):
        target = getattr(cell, attr)
        values = np.asarray(values, dtype=np.float32)
        if values.size != target.size:
            raise self.malformed(f"{attr[1:]} of {values.size} values for a cell expecting {list(target.shape)}")
        target[...] = cell._to_model_device(values.reshape(target.shape))

    # -- fully connected --------------------------------------------------------------------------
    def _fc(self, x, weights, bias):
        """An Fc cell computing x (rank 2, or a flattened view) @ weights.T + bias."""
        o, i = weights.shape
        if x.rank != 2 or x.shape[1] != i:
            raise self.unsupported(f"a fully connected op needs a [N, {i}] input, got {list(x.shape)}")
        if x.parts is not None and any(_pad4(p.shape)[2:] != (1, 1) for p in x.parts):
            t = self._tensor(x, interface_ok=False)  # Fc flattens each input: concatenate first
        else:
            t = self._any_layout(x)
        cell = Fc(i, o, no_bias=bias is None, name=self._name(self._node.output[0], primary=True))
        if self.load_weights:
            self._set_array(cell, "_weights", weights)
            if bias is not None:
                self._set_array(cell, "_biases", bias)
        return self._produce(cell, t, (x.shape[0], o))

    def _op_Gemm(self, node, ins, a):
        x = self._act(ins, 0)
        b = self._const(ins, 1, "B")
        c = self._const(ins, 2, "C", optional=True)
        if a.get("transA", 0):
            raise self.unsupported("Gemm with transA=1 is not supported (the batch must stay the first axis)")
        if b.ndim != 2:
            raise self.malformed(f"B must be a matrix, got shape {list(b.shape)}")
        alpha, beta = float(a.get("alpha", 1.0)), float(a.get("beta", 1.0))
        weights = b if a.get("transB", 0) else b.T
        if alpha != 1.0:
            weights = weights * alpha
        o = weights.shape[0]
        bias = None
        if c is not None and beta != 0.0:
            bias = self._per_channel(c, (x.shape[0], o), "C") * beta
        return self._fc(x, weights, bias)

    def _op_MatMul(self, node, ins, a):
        x = self._act(ins, 0)
        if not isinstance(ins[1], np.ndarray):
            raise self.unsupported("MatMul of two activations is not supported (n2d2 maps MatMul by a constant "
                                   "matrix to an Fc cell)")
        w = self._const(ins, 1, "B")
        if w.ndim != 2:
            raise self.unsupported(f"MatMul by a constant of shape {list(w.shape)}: n2d2 supports a matrix")
        if x.rank > 2 and int(np.prod(x.shape[1:-1])) != 1:
            raise self.unsupported(f"MatMul over the last axis of a {list(x.shape)} input is not a fully "
                                   "connected layer; n2d2 supports [N, F] inputs")
        shape = x.shape
        if x.rank > 2:
            x = _Act(self._any_layout(x), (shape[0], shape[-1]), None, view_name=x.view_name)
        y = self._fc(x, w.T, None)
        y.shape = shape[:-1] + (w.shape[1],)
        return y

    # -- normalisation and pooling ------------------------------------------------------------------
    def _op_BatchNormalization(self, node, ins, a):
        x = self._act(ins, 0)
        scale, bias, mean, var = (self._const(ins, k, what) for k, what in
                                  ((1, "scale"), (2, "B"), (3, "mean"), (4, "var")))
        if a.get("training_mode", 0):
            raise self.unsupported("BatchNormalization with training_mode=1 is not supported (export in eval "
                                   "mode)")
        if not a.get("spatial", 1):
            raise self.unsupported("BatchNormalization with spatial=0 is not supported")
        c = x.shape[1]
        for what, arr in (("scale", scale), ("B", bias), ("mean", mean), ("var", var)):
            if arr.shape != (c,):
                raise self.malformed(f"{what} has shape {list(arr.shape)}, expected [{c}]")
        eps, momentum = float(a.get("epsilon", 1e-5)), round(1.0 - float(a.get("momentum", 0.9)), 12)
        if not 0.0 <= momentum < 1.0 or eps < 0.0:
            raise self.unsupported(f"BatchNormalization momentum={a.get('momentum')}, epsilon={eps}: n2d2 needs a "
                                   "momentum in (0, 1] and a non-negative epsilon")
        cell = BatchNorm2d(c, epsilon=eps, moving_average_momentum=momentum,
                           name=self._name(node.output[0], primary=True))
        if self.load_weights:
            for attr, arr in (("_scales", scale), ("_biases", bias), ("_means", mean), ("_variances", var)):
                self._set_array(cell, attr, arr)
        return self._produce(cell, self._tensor(x), x.shape)

    def _pool(self, node, a, x, pooling):
        nsp = x.rank - 2
        if nsp not in (1, 2):
            raise self.unsupported(f"{nsp}-D pooling; n2d2 imports 1-D and 2-D pooling")
        kernel = self._spatial(a, "kernel_shape", 1, nsp)
        strides = self._spatial(a, "strides", 1, nsp)
        dilations = self._spatial(a, "dilations", 1, nsp)
        if any(d != 1 for d in dilations):
            raise self.unsupported(f"pooling dilations {dilations} are not supported")
        if min(kernel + strides) < 1:
            raise self.malformed(f"kernel_shape {kernel} and strides {strides} must be positive")
        begin, end = self._pads(a, x.shape[2:], kernel, strides, dilations)
        if any(bg >= k or e >= k for bg, e, k in zip(begin, end, kernel)):
            raise self.unsupported(f"pads {begin + end} as large as the window {kernel} are not supported")
        if pooling == "Average" and not a.get("count_include_pad", 0) and any(begin + end):
            raise self.unsupported("AveragePool with count_include_pad=0 and padding: n2d2's average pooling "
                                   "divides by the full window (count_include_pad=1); pad the model differently")
        for i, k, s, bg, e in zip(x.shape[2:], kernel, strides, begin, end):
            floor_size = (i + bg + e - k) // s + 1
            ceil_size = -(-(i + bg + e - k) // s) + 1
            if a.get("ceil_mode", 0) and ceil_size != floor_size:
                raise self.unsupported(f"ceil_mode=1 gives {ceil_size} outputs where n2d2's floor rule gives "
                                       f"{floor_size} (input {i}, window {k}, stride {s}); not supported")
        out = node.output[0]
        t = self._tensor(x)
        if begin != end:
            if pooling == "Max" and not self._non_negative(x):
                raise self.unsupported("MaxPool with asymmetric pads on an input that may be negative: a zero "
                                       "Padding cell would change the result; not supported")
            t = self._pad_cell(t, begin, end, out)
            pad = (0, 0)
        else:
            pad = self._hw(begin, 0)
        (kh, kw), (sh, sw) = self._hw(kernel, 1), self._hw(strides, 1)
        c = x.shape[1]
        cell = Pool([kw, kh], stride_dims=[sw, sh], padding_dims=[pad[1], pad[0]], pooling=pooling,
                    mapping=Tensor.from_numpy(np.eye(c, dtype=bool)), name=self._name(out, primary=True))
        y = self._produce(cell, t, ())
        y.shape = self._out_shape(y.tensor, x.rank)
        return y

    @staticmethod
    def _non_negative(v):
        o = v.owner
        if o is None or v.tensor is not o.tensor:
            return False
        return act_table.prop(activation_spec(o.cell._config.get("activation")), "non_negative", False)

    def _op_MaxPool(self, node, ins, a):
        return self._pool(node, a, self._act(ins, 0), "Max")

    def _op_AveragePool(self, node, ins, a):
        return self._pool(node, a, self._act(ins, 0), "Average")

    def _global_pool(self, x, pooling, keepdims=True):
        if x.rank not in (3, 4):
            raise self.unsupported(f"global pooling of a rank-{x.rank} tensor; n2d2 pools [N, C, H(, W)]")
        cell = GlobalPool2d(pooling=pooling, name=self._name(self._node.output[0], primary=True))
        y = self._produce(cell, self._tensor(x), ())
        y.shape = (x.shape[0], x.shape[1]) + ((1,) * (x.rank - 2) if keepdims else ())
        return y

    def _op_LRN(self, node, ins, a):
        x = self._act(ins, 0)
        if "size" not in a:
            raise self.malformed("LRN without its required 'size' attribute")
        cell = LRN(size=int(a["size"]), alpha=float(a.get("alpha", 1e-4)), beta=float(a.get("beta", 0.75)),
                   k=float(a.get("bias", 1.0)), name=self._name(node.output[0], primary=True))
        return self._produce(cell, self._tensor(x), x.shape)

    def _op_GlobalAveragePool(self, node, ins, a):
        return self._global_pool(self._act(ins, 0), "Average")

    def _op_GlobalMaxPool(self, node, ins, a):
        return self._global_pool(self._act(ins, 0), "Max")

    def _reduce(self, node, ins, a, pooling):
        x = self._act(ins, 0)
        if "axes" in a:
            axes = list(a["axes"])
        elif len(ins) > 1 and ins[1] is not None:
            axes = [int(v) for v in self._const(ins, 1, "axes").reshape(-1)]
        else:
            axes = [] if a.get("noop_with_empty_axes", 0) else list(range(x.rank))
        axes = sorted(ax % x.rank for ax in axes) if axes else []
        if axes != list(range(2, x.rank)) or x.rank not in (3, 4):
            raise self.unsupported(f"{node.op_type} over axes {axes} of a {list(x.shape)} tensor; n2d2 supports "
                                   "the spatial axes (global pooling)")
        return self._global_pool(x, pooling, keepdims=bool(a.get("keepdims", 1)))

    def _op_ReduceMean(self, node, ins, a):
        return self._reduce(node, ins, a, "Average")

    def _op_ReduceMax(self, node, ins, a):
        return self._reduce(node, ins, a, "Max")

    # -- activations ------------------------------------------------------------------------------
    def _activation(self, node, x, activation):
        """Fuse `activation` into the cell that made `x`, or make an Activation cell."""
        out = node.output[0]
        if self._fusable(x):   # fuse_activation's rule, on the cell that made x
            action = fusion(activation_spec(activation), activation_spec(x.owner.cell._config.get("activation")),
                            True, True)
            if action == "fuse":
                x.owner.cell.set_parameter("activation", activation)
            if action is not None:
                return self._alias(x, out, x.shape)
        cell = Activation(activation, name=self._name(out, primary=True))
        return self._produce(cell, self._any_layout(x), x.shape)

    def _find_gelus(self, nodes):
        """Record the decomposed GELUs among `nodes` (x * 0.5 * (1 + Erf(x / sqrt 2)), as PyTorch
        exports nn.GELU below opset 20), found by the legalize pass's own pattern
        (`legalize_onnx.gelu_pattern`) on a view of the ONNX graph: each is imported as one Gelu
        activation (see `_gelu`)."""
        view = _OnnxView(self, nodes)
        self._gelus, self._gelu_inner = {}, {}   # last output -> (x, inner outputs, reads of x); inner -> last
        for node in nodes:
            out = node.output[0] if len(node.output) == 1 else ""
            found = gelu_pattern(view, out) if out and out not in self.ignore else None
            if found is None or any(n in self._gelu_inner or n in self._gelus for n in found[1] + [out]):
                continue
            (x, _), inner = found
            reads = sum(list(view.producer[n].input).count(x) for n in inner + [out])
            self._gelus[out] = (x, inner, reads)
            self._gelu_inner.update((n, out) for n in inner)

    def _gelu(self, node, final):
        """`node` belongs to the decomposed GELU ending at `final`: True when it is imported as part
        of one Gelu activation (an inner node makes nothing, the last one the activation, fused
        into x's producer when it can be); False when x is a constant (the pattern is dropped, its
        nodes are evaluated one by one)."""
        x, inner, reads = self._gelus[final]
        v = self.values.get(x)
        if not isinstance(v, _Act):
            del self._gelus[final]
            for n in inner:
                del self._gelu_inner[n]
            return False
        if node.output[0] != final:
            return True
        if v.owner is not None:
            v.owner.refs -= reads - 1   # x is read several times by the pattern, which is one consumer
        self.values[final] = self._activation(node, v, activations.Gelu())
        self._check_shape(final)
        return True

    def _any_layout(self, x):
        """The tensor of `x` for an element-wise consumer (a view need not be materialized)."""
        if x.parts is not None:
            return self._tensor(x)
        return x.materialized if x.materialized is not None else x.tensor

    def _op_table_activation(self, node, ins, a):
        """An ONNX activation of the activation table (Relu, LeakyRelu, Sigmoid, Tanh, Softplus,
        Gelu, Mish, HardSigmoid, HardSwish, ...: n2d2.ops.activation)."""
        d, params = act_table.onnx_import_params(node.op_type, a)
        return self._activation(node, self._act(ins, 0), getattr(activations, d.name)(**params))

    def _op_PRelu(self, node, ins, a):
        slope = self._const(ins, 1, "slope")
        if slope.size != 1:
            raise self.unsupported(f"PRelu with a slope of shape {list(slope.shape)}: n2d2's Rectifier has one "
                                   "leak slope")
        return self._activation(node, self._act(ins, 0), Rectifier(leak_slope=_plain(float(slope.reshape(-1)[0]))))

    def _op_Clip(self, node, ins, a):
        x = self._act(ins, 0)
        if self.opset < 11:
            lo, hi = float(a.get("min", -np.inf)), float(a.get("max", np.inf))
        else:
            lo_c = self._const(ins, 1, "min", optional=True)
            hi_c = self._const(ins, 2, "max", optional=True)
            for what, c in (("min", lo_c), ("max", hi_c)):
                if c is not None and c.size != 1:
                    raise self.malformed(f"Clip {what} must be a scalar, got shape {list(c.shape)}")
            lo = -np.inf if lo_c is None else _plain(float(lo_c.reshape(-1)[0]))
            hi = np.inf if hi_c is None else _plain(float(hi_c.reshape(-1)[0]))
        return self._clip(node, x, lo, hi)

    def _clip(self, node, x, lo, hi):
        """min(max(x, lo), hi) with the cells that represent it exactly."""
        if np.isnan(lo) or np.isnan(hi):
            raise self.malformed(f"Clip bounds ({lo}, {hi}) are not numbers")
        if lo > hi or (lo == hi):
            raise self.unsupported(f"Clip(min={lo}, max={hi}) gives a constant; not supported")
        if lo == -np.inf and hi == np.inf:
            return self._alias(x, node.output[0], x.shape)
        current = x.owner.cell._config.get("activation") if self._fusable(x) else None
        if type(current).__name__ == "Rectifier" and current.leak_slope == 0.0 and lo <= 0.0 < hi:
            # after a fused ReLU (values >= 0) only the upper bound matters: tighten its clipping
            clipping = min(current.clipping if current.clipping > 0 else np.inf, hi)
            x.owner.cell.set_parameter("activation", Rectifier(clipping=0.0 if clipping == np.inf else clipping))
            return self._alias(x, node.output[0], x.shape)
        found = act_table.clip_activation(lo, hi)
        if found is not None:
            return self._activation(node, x, getattr(activations, found[0])(**found[1]))
        return self._general_clip(node, x, lo, hi)

    def _general_clip(self, node, x, lo, hi):
        """clip(x, lo, hi) = relu_clip(x - lo, hi - lo) + lo; min(x, hi) = hi - relu(hi - x)."""
        out = node.output[0]
        t = self._any_layout(x)
        if np.isfinite(lo):
            first = ElemWise("Sum", weights=[1.0], shifts=[-lo], name=self._name(f"{out}_shift"),
                             activation=Rectifier(clipping=0.0 if hi == np.inf else hi - lo))
            second = dict(weights=[1.0], shifts=[lo])
        else:
            first = ElemWise("Sum", weights=[-1.0], shifts=[hi], name=self._name(f"{out}_shift"),
                             activation=Rectifier())
            second = dict(weights=[-1.0], shifts=[hi])
        mid = self._call(first, t)
        cell = ElemWise("Sum", name=self._name(out, primary=True), **second)
        y = self._produce(cell, mid, x.shape)
        return y

    def _op_Softmax(self, node, ins, a, log=False):
        x = self._act(ins, 0)
        axis = int(a.get("axis", 1 if self.opset < 13 else -1))
        if not -x.rank <= axis < x.rank:
            raise self.malformed(f"axis {axis} out of range for a rank-{x.rank} input")
        axis %= x.rank
        reduced = list(range(axis, x.rank)) if self.opset < 13 else [axis]
        if axis == 0 or any(ax != 1 and x.shape[ax] != 1 for ax in reduced) or 1 not in reduced:
            raise self.unsupported(f"{node.op_type} over axes {reduced} of a {list(x.shape)} tensor; n2d2's "
                                   "Softmax normalises the channel axis (1)")
        out = node.output[0]
        is_output = out in {o.name for o in self.graph.output}
        if log and not (is_output and self.uses.get(out, 0) == 1):
            raise self.unsupported("LogSoftmax is imported only as the last op of the network (as a Softmax "
                                   "whose outputs are the probabilities, exp of the ONNX outputs)")
        cell = Softmax(with_loss=is_output, name=self._name(out, primary=True))
        return self._produce(cell, self._tensor(x), x.shape)

    def _op_LogSoftmax(self, node, ins, a):
        warnings.warn(f"{self._label(node)}: LogSoftmax imported as a Softmax cell: its outputs are the "
                      "probabilities (exp of the ONNX outputs); the arg-max and the cross-entropy training "
                      "are the same", stacklevel=2)
        return self._op_Softmax(node, ins, a, log=True)

    # -- element-wise arithmetic --------------------------------------------------------------------
    def _per_channel(self, c, shape, what):
        """The constant `c` (broadcast against an activation of `shape`) as one float32 value per
        channel (axis 1); raises when it varies along another axis or would broadcast `shape`."""
        c = np.asarray(c)
        try:
            full = np.broadcast_shapes(tuple(shape), c.shape)
        except ValueError:
            raise self.malformed(f"{what} of shape {list(c.shape)} does not broadcast to {list(shape)}") from None
        if full != tuple(shape):
            raise self.unsupported(f"{what} of shape {list(c.shape)} would broadcast the activation "
                                   f"{list(shape)} to {list(full)}; not supported")
        cc = c.reshape((1,) * (len(shape) - c.ndim) + c.shape)
        for ax in range(len(shape)):
            if ax != 1 and cc.shape[ax] != 1:
                raise self.unsupported(f"{what} of shape {list(c.shape)} varies along axis {ax} of "
                                       f"{list(shape)}; n2d2 supports scalar or per-channel constants")
        vec = cc.reshape(-1).astype(np.float64)
        if vec.size == 1:
            vec = np.repeat(vec, shape[1])
        return vec.astype(np.float32)

    def _fold_target(self, x):
        """The cell an affine constant can be folded into, or None."""
        if not self._fusable(x) or not x.canonical():
            return None
        cell = x.owner.cell
        if cell._config.get("activation") is not None:
            return None
        if isinstance(cell, (Conv, Fc, BatchNorm2d)):
            return cell
        return None

    def _add_const(self, node, x, c, sign=1.0):
        """x + sign * c (c per channel)."""
        vec = self._per_channel(c, x.shape, "the constant") * np.float32(sign)
        out = node.output[0]
        if not vec.any():
            return self._alias(x, out, x.shape)
        cell = self._fold_target(x)
        if cell is not None:
            if isinstance(cell, BatchNorm2d):
                cell._biases += cell._to_model_device(vec)
            else:
                if not cell.has_bias():
                    cell.set_parameter("no_bias", False)
                    cell._biases[...] = 0.0
                cell._biases += cell._to_model_device(vec)
            return self._alias(x, out, x.shape)
        t = self._tensor(x, interface_ok=False)
        if np.all(vec == vec[0]):
            cell = ElemWise("Sum", weights=[1.0], shifts=[float(vec[0])], name=self._name(out, primary=True))
        else:
            cell = ElemWise("Sum", mode="PerChannel", weights=[1.0] * len(vec), shifts=[float(v) for v in vec],
                            name=self._name(out, primary=True))
        return self._produce(cell, t, x.shape)

    def _mul_const(self, node, x, c):
        vec = self._per_channel(c, x.shape, "the constant")
        out = node.output[0]
        if np.all(vec == 1.0):
            return self._alias(x, out, x.shape)
        cell = self._fold_target(x)
        if cell is not None:
            dev = cell._to_model_device(vec)
            if isinstance(cell, BatchNorm2d):
                cell._scales *= dev
                cell._biases *= dev
            else:
                cell._weights *= dev.reshape((-1,) + (1,) * (cell._weights.ndim - 1))
                if cell.has_bias():
                    cell._biases *= dev
                if isinstance(cell, Conv):
                    cell._mask_weights()
            return self._alias(x, out, x.shape)
        t = self._tensor(x, interface_ok=False)
        cell = Scaling(FloatingPointScaling([float(v) for v in vec]), name=self._name(out, primary=True))
        return self._produce(cell, t, x.shape)

    def _elemwise(self, node, acts, operation, weights=None):
        shape = acts[0].shape
        for v in acts[1:]:
            if v.shape != shape:
                raise self.unsupported(f"{node.op_type} of activations of shapes {[list(a.shape) for a in acts]}: "
                                       "n2d2's ElemWise needs equal shapes (no broadcasting)")
        tensors = [self._tensor(v, interface_ok=False) for v in acts]
        kwargs = {} if weights is None else dict(mode="PerInput", weights=weights)
        cell = ElemWise(operation, name=self._name(node.output[0], primary=True), **kwargs)
        y = self._produce(cell, Interface(tensors), shape)
        return y

    def _binary(self, node, ins):
        if len(ins) != 2 or any(v is None for v in ins):
            raise self.malformed(f"{node.op_type} needs 2 inputs, got {len(ins)}")
        return ins

    def _commutative(self, node, ins, with_const, operation):
        """Add/Mul: a constant on either side goes to `with_const`, two activations to an ElemWise."""
        x, y = self._binary(node, ins)
        if isinstance(x, np.ndarray):
            x, y = y, x
        if isinstance(y, np.ndarray):
            return with_const(node, x, y)
        return self._elemwise(node, [x, y], operation)

    def _op_Add(self, node, ins, a):
        return self._commutative(node, ins, self._add_const, "Sum")

    def _op_Sub(self, node, ins, a):
        x, y = self._binary(node, ins)
        if isinstance(y, np.ndarray):
            return self._add_const(node, x, y, sign=-1.0)
        if isinstance(x, np.ndarray):
            vec = self._per_channel(x, y.shape, "the constant")
            mode = dict(weights=[-1.0], shifts=[float(vec[0])]) if np.all(vec == vec[0]) else \
                dict(mode="PerChannel", weights=[-1.0] * len(vec), shifts=[float(v) for v in vec])
            cell = ElemWise("Sum", name=self._name(node.output[0], primary=True), **mode)
            return self._produce(cell, self._tensor(y, interface_ok=False), y.shape)
        return self._elemwise(node, [x, y], "Sum", weights=[1.0, -1.0])

    def _op_Mul(self, node, ins, a):
        return self._commutative(node, ins, self._mul_const, "Prod")

    def _op_Div(self, node, ins, a):
        x, y = self._binary(node, ins)
        if isinstance(x, np.ndarray) or not isinstance(y, np.ndarray):
            raise self.unsupported("Div is supported only by a constant divisor")
        if np.any(y == 0):
            raise self.unsupported("Div by a constant holding zeros")
        return self._mul_const(node, x, 1.0 / y.astype(np.float64))

    def _variadic(self, node, ins, operation):
        consts = [v for v in ins if not isinstance(v, _Act)]
        acts = [v for v in ins if isinstance(v, _Act)]
        if consts and operation in ("Max", "Min") and len(acts) == 1 and all(c.size == 1 for c in consts):
            bound = float(np.max(consts) if operation == "Max" else np.min(consts))
            bound = _plain(bound)
            lo, hi = (bound, np.inf) if operation == "Max" else (-np.inf, bound)
            return self._clip(node, acts[0], lo, hi)
        if consts:
            raise self.unsupported(f"{node.op_type} mixing constants and activations is supported only for Max/Min "
                                   "of one activation and scalar constants")
        if len(ins) == 1:
            return self._alias(ins[0], node.output[0], ins[0].shape)
        return self._elemwise(node, list(ins), operation)

    def _op_Sum(self, node, ins, a):
        return self._variadic(node, ins, "Sum")

    def _op_Max(self, node, ins, a):
        return self._variadic(node, ins, "Max")

    def _op_Min(self, node, ins, a):
        if all(isinstance(v, _Act) for v in ins) and len(ins) > 1:
            raise self.unsupported("Min of activations is not supported (n2d2's ElemWise has Max, not Min)")
        return self._variadic(node, ins, "Min")

    def _op_Neg(self, node, ins, a):
        return self._mul_const(node, self._act(ins, 0), np.float32(-1.0))

    def _op_Abs(self, node, ins, a):
        x = self._act(ins, 0)
        cell = ElemWise("AbsSum", name=self._name(node.output[0], primary=True))
        return self._produce(cell, self._any_layout(x), x.shape)

    # -- shapes -----------------------------------------------------------------------------------
    def _view(self, node, x, shape):
        shape = tuple(int(s) for s in shape)
        if shape[0] != x.shape[0]:
            raise self.unsupported(f"reshaping {list(x.shape)} to {list(shape)} changes the batch axis; not "
                                   "supported")
        if int(np.prod(shape)) != int(np.prod(x.shape)):
            raise self.malformed(f"cannot reshape {list(x.shape)} to {list(shape)}")
        if len(shape) < 2:
            raise self.unsupported(f"reshaping to rank {len(shape)} ({list(shape)}) is not supported")
        if len(shape) > 4:
            raise self.unsupported(f"reshaping to rank {len(shape)} ({list(shape)}): n2d2 tensors have rank 4 "
                                   "at most")
        return self._alias(x, node.output[0], shape)

    def _op_Identity(self, node, ins, a):
        x = self._act(ins, 0)
        return self._alias(x, node.output[0], x.shape)

    def _op_Dropout(self, node, ins, a):
        return self._op_Identity(node, ins, a)

    def _op_Cast(self, node, ins, a):
        onnx = _onnx()
        if a.get("to") not in (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16):
            raise self.unsupported(f"Cast of an activation to {a.get('to')}: n2d2 computes in float")
        return self._op_Identity(node, ins, a)

    def _op_Flatten(self, node, ins, a):
        x = self._act(ins, 0)
        axis = int(a.get("axis", 1))
        if axis < 0:
            axis += x.rank
        if axis != 1:
            raise self.unsupported(f"Flatten with axis={a.get('axis', 1)} on a {list(x.shape)} tensor merges "
                                   "the batch axis; n2d2 supports axis=1")
        return self._view(node, x, (x.shape[0], int(np.prod(x.shape[1:]))))

    def _op_Reshape(self, node, ins, a):
        x = self._act(ins, 0)
        target = [int(v) for v in self._const(ins, 1, "shape").reshape(-1)]
        if not target:
            raise self.unsupported("reshaping to a scalar is not supported")
        allowzero = int(a.get("allowzero", 0))
        if not allowzero:
            target = [x.shape[i] if v == 0 and i < x.rank else v for i, v in enumerate(target)]
        if target[0] != x.shape[0] and target[0] != -1 and target[0] == self.file_batch:
            target[0] = x.shape[0]
        per_sample = int(np.prod(x.shape[1:]))
        if target[0] == -1:
            rest = target[1:]
            if -1 in rest or int(np.prod(rest)) != per_sample:
                raise self.unsupported(f"Reshape to {target} infers the batch axis from {list(x.shape)}; n2d2 "
                                       "keeps the batch")
            target[0] = x.shape[0]
        if target.count(-1) > 1:
            raise self.malformed(f"Reshape target {target} has more than one -1")
        if -1 in target:
            known = int(np.prod([v for v in target if v != -1]))
            if known <= 0 or (x.shape[0] * per_sample) % known:
                raise self.malformed(f"cannot reshape {list(x.shape)} to {target}")
            target[target.index(-1)] = x.shape[0] * per_sample // known
        if any(v <= 0 for v in target):
            raise self.malformed(f"Reshape target {target} has a non-positive size")
        return self._view(node, x, target)

    def _axes(self, node, ins, a, rank, what):
        if "axes" in a:
            axes = list(a["axes"])
        elif len(ins) > 1 and ins[1] is not None:
            axes = [int(v) for v in self._const(ins, 1, "axes").reshape(-1)]
        else:
            return None
        out = []
        for ax in axes:
            if not -rank <= ax < rank:
                raise self.malformed(f"{what} axis {ax} out of range for rank {rank}")
            out.append(ax % rank)
        if len(set(out)) != len(out):
            raise self.malformed(f"{what} axes {axes} repeat an axis")
        return sorted(out)

    def _op_Squeeze(self, node, ins, a):
        x = self._act(ins, 0)
        axes = self._axes(node, ins, a, x.rank, "Squeeze")
        if axes is None:
            axes = [i for i in range(1, x.rank) if x.shape[i] == 1]  # the batch axis is never squeezed
        if 0 in axes:
            raise self.unsupported("Squeeze of the batch axis is not supported")
        for ax in axes:
            if x.shape[ax] != 1:
                raise self.malformed(f"Squeeze axis {ax} has size {x.shape[ax]}, not 1")
        return self._view(node, x, [s for i, s in enumerate(x.shape) if i not in axes])

    def _op_Unsqueeze(self, node, ins, a):
        x = self._act(ins, 0)
        n = x.rank
        if "axes" in a:
            raw = list(a["axes"])
        elif len(ins) > 1 and ins[1] is not None:
            raw = [int(v) for v in self._const(ins, 1, "axes").reshape(-1)]
        else:
            raise self.malformed("Unsqueeze needs axes")
        rank = n + len(raw)
        axes = sorted(ax % rank for ax in raw if -rank <= ax < rank)
        if len(axes) != len(raw) or len(set(axes)) != len(axes):
            raise self.malformed(f"Unsqueeze axes {raw} are invalid for an output of rank {rank}")
        if 0 in axes:
            raise self.unsupported("Unsqueeze before the batch axis is not supported")
        shape, it = [], iter(x.shape)
        for i in range(rank):
            shape.append(1 if i in axes else next(it))
        return self._view(node, x, shape)

    def _op_Transpose(self, node, ins, a):
        x = self._act(ins, 0)
        perm = [int(p) for p in a.get("perm", list(range(x.rank))[::-1])]
        if sorted(perm) != list(range(x.rank)):
            raise self.malformed(f"perm {perm} is not a permutation of the {x.rank} axes")
        if perm[0] != 0:
            raise self.unsupported(f"Transpose with perm {perm} moves the batch axis; not supported")
        shape = tuple(x.shape[p] for p in perm)
        moved = [p for i, p in enumerate(perm) if x.shape[p] != 1]
        if moved == sorted(moved):  # only size-1 axes move: the memory order is unchanged
            return self._alias(x, node.output[0], shape)
        if x.rank > 4:
            raise self.unsupported(f"Transpose of a rank-{x.rank} tensor; n2d2 supports rank 4 at most")
        p4 = perm + list(range(x.rank, 4))
        n2d2_perm = [3 - p4[3 - i] for i in range(4)]
        cell = Transpose(n2d2_perm, name=self._name(node.output[0], primary=True))
        return self._produce(cell, self._tensor(x, interface_ok=False), shape)

    def _op_Concat(self, node, ins, a):
        acts = [v for v in ins if v is not None]
        if any(not isinstance(v, _Act) for v in acts):
            raise self.unsupported("Concat of activations and constants is not supported")
        rank = acts[0].rank
        axis = int(a.get("axis", 1))
        if not -rank <= axis < rank:
            raise self.malformed(f"Concat axis {axis} out of range for rank {rank}")
        if axis % rank != 1:
            raise self.unsupported(f"Concat along axis {axis}: n2d2 concatenates channels (axis 1)")
        for v in acts:
            if v.rank != rank or v.shape[:1] + v.shape[2:] != acts[0].shape[:1] + acts[0].shape[2:]:
                raise self.malformed(f"Concat inputs {[list(v.shape) for v in acts]} differ outside axis 1")
        if len(acts) == 1:
            return self._alias(acts[0], node.output[0], acts[0].shape)
        parts = []
        for v in acts:
            if v.parts is not None:
                parts.extend(v.parts)
            else:
                t = self._tensor(v)
                parts.append(_Act(t, v.shape, None, view_name=v.view_name))
        shape = (acts[0].shape[0], sum(v.shape[1] for v in acts)) + acts[0].shape[2:]
        return _Act(None, shape, None, view_name=node.output[0], parts=parts)

    def _op_Pad(self, node, ins, a):
        x = self._act(ins, 0)
        mode = a.get("mode", "constant")
        if mode != "constant":
            raise self.unsupported(f"Pad mode '{mode}': n2d2's Padding cell pads with zeros (mode 'constant')")
        if self.opset < 11:
            pads = [int(p) for p in a.get("pads", [])]
            value = float(a.get("value", 0.0))
        else:
            pads = [int(p) for p in self._const(ins, 1, "pads").reshape(-1)]
            cv = self._const(ins, 2, "constant_value", optional=True)
            value = 0.0 if cv is None or cv.size == 0 else float(cv.reshape(-1)[0])
            axes_c = self._const(ins, 3, "axes", optional=True)
            if axes_c is not None:
                axes = [int(v) % x.rank for v in axes_c.reshape(-1)]
                full = [0] * (2 * x.rank)
                if len(pads) != 2 * len(axes):
                    raise self.malformed(f"pads {pads} do not match axes {axes}")
                for k, ax in enumerate(axes):
                    full[ax], full[x.rank + ax] = pads[k], pads[len(axes) + k]
                pads = full
        if len(pads) != 2 * x.rank:
            raise self.malformed(f"pads {pads} must have {2 * x.rank} values")
        if value != 0.0:
            raise self.unsupported(f"Pad value {value}: n2d2's Padding cell pads with zeros")
        begin, end = pads[:x.rank], pads[x.rank:]
        if any(begin[:2]) or any(end[:2]) or x.rank not in (3, 4):
            raise self.unsupported(f"Pad {pads} of a {list(x.shape)} tensor: n2d2 pads the spatial axes of "
                                   "[N, C, H(, W)] tensors")
        if not any(begin) and not any(end):
            return self._alias(x, node.output[0], x.shape)
        (top, left), (bot, right) = self._hw(begin[2:], 0), self._hw(end[2:], 0)
        cell = Padding(top, bot, left, right, name=self._name(node.output[0], primary=True))
        y = self._produce(cell, self._tensor(x), ())
        y.shape = self._out_shape(y.tensor, x.rank)
        return y

    # -- resizing ---------------------------------------------------------------------------------
    def _resize(self, node, x, scales, sizes, mode, ctm, nearest_mode="floor"):
        if x.rank != 4:
            raise self.unsupported(f"resizing a rank-{x.rank} tensor; n2d2 resizes [N, C, H, W]")
        h, w = x.shape[2:]
        if sizes is not None:
            sizes = [int(v) for v in sizes.reshape(-1)]
            if len(sizes) != 4 or sizes[:2] != [x.shape[0], x.shape[1]] and sizes[1] != x.shape[1]:
                raise self.unsupported(f"Resize sizes {sizes}: n2d2 resizes H and W only")
            oh, ow = sizes[2:]
            scale = (oh / h, ow / w)
        else:
            s = [float(v) for v in scales.reshape(-1)]
            if len(s) != 4 or s[0] != 1.0 or s[1] != 1.0:
                raise self.unsupported(f"Resize scales {s}: n2d2 resizes H and W only")
            oh, ow = int(np.floor(h * s[2])), int(np.floor(w * s[3]))
            scale = (s[2], s[3])
            if abs(oh / h - s[2]) > 1e-6 or abs(ow / w - s[3]) > 1e-6:
                raise self.unsupported(f"Resize scales {s} of a {h}x{w} input give {oh}x{ow}, a different ratio; "
                                       "n2d2 interpolates with the ratio of the sizes")
        if oh < 1 or ow < 1:
            raise self.malformed(f"Resize to {oh}x{ow}")
        del scale
        if mode == "nearest":
            if ctm not in ("asymmetric",) or nearest_mode not in ("floor",):
                raise self.unsupported(f"nearest Resize with coordinate_transformation_mode={ctm}, "
                                       f"nearest_mode={nearest_mode}: n2d2 supports asymmetric + floor (PyTorch "
                                       "'nearest')")
            args = ("NearestNeighbor", True)
        elif mode in ("linear", "bilinear"):
            if ctm in ("half_pixel", "pytorch_half_pixel"):
                if ctm == "half_pixel" and (oh == 1 or ow == 1):
                    raise self.unsupported("half_pixel linear Resize to a size of 1 is not supported")
                args = ("Bilinear", True)
            elif ctm == "align_corners":
                args = ("BilinearTF", True)
            elif ctm == "asymmetric":
                args = ("BilinearTF", False)
            else:
                raise self.unsupported(f"linear Resize with coordinate_transformation_mode={ctm}: n2d2 supports "
                                       "half_pixel, pytorch_half_pixel, align_corners, asymmetric")
        else:
            raise self.unsupported(f"Resize mode '{mode}': n2d2 supports nearest and linear")
        cell = Resize(ow, oh, args[0], align_corners=args[1], name=self._name(node.output[0], primary=True))
        return self._produce(cell, self._tensor(x), (x.shape[0], x.shape[1], oh, ow))

    def _op_Resize(self, node, ins, a):
        x = self._act(ins, 0)
        for key in ("antialias", "exclude_outside"):
            if a.get(key, 0):
                raise self.unsupported(f"Resize with {key}=1 is not supported")
        if a.get("keep_aspect_ratio_policy", "stretch") != "stretch" or "axes" in a:
            raise self.unsupported("Resize with axes or keep_aspect_ratio_policy is not supported")
        if self.opset < 11:
            scales, sizes = self._const(ins, 1, "scales"), None
            ctm = "asymmetric"
        else:
            scales = self._const(ins, 2, "scales", optional=True)
            sizes = self._const(ins, 3, "sizes", optional=True)
            if scales is not None and scales.size == 0:
                scales = None
            if sizes is not None and sizes.size == 0:
                sizes = None
            if (scales is None) == (sizes is None):
                raise self.malformed("Resize needs exactly one of scales and sizes")
            ctm = a.get("coordinate_transformation_mode", "half_pixel")
            if ctm == "tf_crop_and_resize":
                raise self.unsupported("tf_crop_and_resize is not supported")
        return self._resize(node, x, scales, sizes, a.get("mode", "nearest"), ctm,
                            a.get("nearest_mode", "round_prefer_floor") if self.opset >= 11 else "floor")

    def _op_Upsample(self, node, ins, a):
        x = self._act(ins, 0)
        if "scales" in a:
            scales = np.array(a["scales"], dtype=np.float32)
        else:
            scales = self._const(ins, 1, "scales")
        return self._resize(node, x, scales, None, a.get("mode", "nearest"), "asymmetric", "floor")


def _plain(value):
    """An attribute value as plain Python: text decoded, float32 numbers as their shortest
    decimal (alpha=0.1 prints 0.1, not 0.10000000149011612)."""
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, float):
        return float(str(np.float32(value))) if np.isfinite(value) else value
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


for _op_type in act_table.onnx_import_ops():   # one handler per ONNX op type of the activation table
    setattr(_Importer, f"_op_{_op_type}", _Importer._op_table_activation)


# -- INI embedding ---------------------------------------------------------------------------------
_ONNX_SECTION = "onnx"
_ONNX_KEYS = ("Input", "Type", "File", "Ignore", "IgnoreInputSize", "Transpose", "CNTK", "ONNX_init")
_TYPE_SECTIONS = {"Conv": "Conv_def", "ConvDepthWise": "Conv_def", "Fc": "Fc_def", "BatchNorm2d": "BatchNorm_def",
                  "Pool": "Pool_def", "GlobalPool2d": "Pool_def", "Deconv": "Deconv_def"}
_SOLVER_KEYS = {"Solvers": ("weights_solver", "bias_solver", "scale_solver", "solver"),  # solver: OnnxNode
                "WeightsSolver": ("weights_solver",),
                "BiasSolver": ("bias_solver",), "ScaleSolver": ("scale_solver",)}
_FILLERS = {"ConstantFiller": "Constant", "NormalFiller": "Normal", "UniformFiller": "Uniform", "HeFiller": "He",
            "XavierFiller": "Xavier"}
_CELL_KEYS = {"BackPropagate": "back_propagate", "Epsilon": "epsilon",
              "MovingAverageMomentum": "moving_average_momentum", "WeightsExportFormat": "weights_export_format",
              "WeightsExportFlip": "weights_export_flip"}


def snake_case(name: str) -> str:
    """N2D2's CamelCase parameter names as the Python API's (LearningRate -> learning_rate)."""
    s = re.sub(r"(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", s).lower()


class _IniEmbedding:
    """What an INI file adds to an ONNX import (reference section 2.1), read with
    `n2d2.frontends.ini.parser`:

    - `[onnx]`: `Ignore` (node outputs not imported), `IgnoreInputSize`, `ONNX_init` (0: keep
      the fillers' weights), `CNTK` (accepted: bias additions are always folded), `Transpose`
      (only 0), `Input`/`Type`/`File` (accepted, the file given to `load_from_ONNX` is used);
    - `[onnx:Conv_def]`, `Fc_def`, `BatchNorm_def`, `Pool_def`: keys for every cell of that type;
    - `[<node output>]`: keys for the cell named so;
    - in those sections, and in the config sections they list in `ConfigSection=a,b`:
      `BackPropagate`, `Solvers`/`WeightsSolver`/`BiasSolver`/`ScaleSolver` (`SGD`, `Adam`) and
      their `.<Param>` keys, `WeightsFiller`/`BiasFiller` (`NormalFiller`...) and their
      `.<Param>` keys, `Epsilon`, `MovingAverageMomentum`, `WeightsExportFormat`,
      `WeightsExportFlip`. Any other key is refused (ValueError naming file, section, key).
    """

    def __init__(self, path, doc=None, section=_ONNX_SECTION):
        try:
            from n2d2.frontends.ini import parser
        except ImportError:
            raise ONNXUnsupportedError(f"{path}: INI embedding needs n2d2.frontends.ini.parser, which is not "
                                       "available") from None
        self.path = os.fspath(path)
        self.doc = parser.parse_file(self.path) if doc is None else doc
        self.section = section   # the `Type=ONNX` section (`[onnx]` in upstream's files)
        self.ignore, self.ignore_input_size, self.load_weights = [], False, True
        if section in self.doc.sections:
            sec = self.doc.section(section)
            for key in sec.keys():
                if key not in _ONNX_KEYS:
                    raise self.error(section, key, f"is not an ONNX import key ({', '.join(_ONNX_KEYS)})")
            if "Ignore" in sec:
                self.ignore = self.value(section, "Ignore").split()
            self.ignore_input_size = self.flag(section, "IgnoreInputSize", False)
            self.load_weights = self.flag(section, "ONNX_init", True)
            if self.flag(section, "Transpose", False):
                raise self.error(section, "Transpose", "=1 is not supported (export the model NCHW)")
            if "Type" in sec and self.value(section, "Type") != "ONNX":
                raise self.error(section, "Type", "must be ONNX")

    def error(self, section, key, message):
        entry = self.doc.section(section).entries.get(key) if section in self.doc.sections else None
        where = f"{self.path}:{entry.line}" if entry is not None and entry.line else self.path
        return ONNXUnsupportedError(f"{where}: [{section}] {key} {message}")

    def value(self, section, key):
        return self.doc.value(section, key).strip()

    def flag(self, section, key, default):
        if key not in self.doc.section(section):
            return default
        v = self.value(section, key)
        if v in ("1", "true", "True", "yes"):
            return True
        if v in ("0", "false", "False", "no"):
            return False
        raise self.error(section, key, f"={v!r} is not a boolean (0 or 1)")

    def _entries(self, section, seen=()):
        """(section, key) pairs in application order: config sections first, then own keys."""
        if section in seen:
            raise self.error(section, "ConfigSection", "refers to itself (circular)")
        pairs = []
        sec = self.doc.section(section)
        if "ConfigSection" in sec:
            for name in self.value(section, "ConfigSection").split(","):
                name = name.strip()
                if not name:
                    continue
                if name not in self.doc.sections:
                    raise self.error(section, "ConfigSection", f"names [{name}], which does not exist")
                pairs += self._entries(name, tuple(seen) + (section,))
        pairs += [(section, k) for k in sec.keys() if k != "ConfigSection"]
        return pairs

    def apply(self, cells, node_names):
        """Configure `cells` (name -> cell); `node_names` are every ONNX node output."""
        applied = set()
        for name, cell in cells.items():
            sections = []
            tdef = _TYPE_SECTIONS.get(type(cell).__name__)
            if tdef and f"{self.section}:{tdef}" in self.doc.sections:
                sections.append(f"{self.section}:{tdef}")
            if name in self.doc.sections:
                sections.append(name)
                applied.add(name)
            pairs = [p for s in sections for p in self._entries(s)]
            if pairs:
                self._apply_cell(cell, pairs, solver, filler)
        for name in node_names:
            if name in self.doc.sections and name not in applied:
                raise ONNXUnsupportedError(f"{self.path}: section [{name}] names an ONNX node that made no cell of "
                                           "its own (it was fused into, or removed before, another cell)")

    def _apply_cell(self, cell, pairs, solver_mod, filler_mod):
        solvers, fillers = {}, {}
        plain = []
        for section, key in pairs:
            base, _, param = key.partition(".")
            if base in _SOLVER_KEYS:
                roles = [r for r in _SOLVER_KEYS[base] if r in cell._parameters]
                if not roles:
                    raise self.error(section, key, f"does not apply to {cell.get_type()} '{cell.get_name()}'")
                for role in roles:
                    solvers.setdefault(role, [None, []])
                    if param:
                        solvers[role][1].append((section, key, param))
                    else:
                        solvers[role][0] = (section, key)
            elif base in ("WeightsFiller", "BiasFiller"):
                role = "weights_filler" if base == "WeightsFiller" else "bias_filler"
                if role not in cell._parameters:
                    raise self.error(section, key, f"does not apply to {cell.get_type()} '{cell.get_name()}'")
                fillers.setdefault(role, [None, []])
                if param:
                    fillers[role][1].append((section, key, param))
                else:
                    fillers[role][0] = (section, key)
            elif key in _CELL_KEYS:
                plain.append((section, key))
            else:
                raise self.error(section, key, "is not supported by the ONNX import INI embedding (supported: "
                                 + ", ".join(list(_CELL_KEYS) + list(_SOLVER_KEYS) + ["WeightsFiller", "BiasFiller",
                                                                                       "ConfigSection"]) + ")")
        for section, key in plain:
            pname = _CELL_KEYS[key]
            if pname not in cell._parameters:
                raise self.error(section, key, f"does not apply to {cell.get_type()} '{cell.get_name()}'")
            self._set(cell, pname, self.value(section, key), section, key)
        for role, (type_entry, params) in solvers.items():
            obj = cell._config[role]
            if type_entry is not None:
                kind = self.value(*type_entry)
                if kind not in ("SGD", "Adam"):
                    raise self.error(type_entry[0], type_entry[1], f"={kind!r} is not a solver (SGD, Adam)")
                obj = getattr(solver_mod, kind)()
            else:
                obj = obj.copy()
            for section, key, param in params:
                self._set(obj, snake_case(param), self.value(section, key), section, key)
            cell._config[role] = obj
        for role, (type_entry, params) in fillers.items():
            current = cell._config[role]
            cls = type(current)
            if type_entry is not None:
                kind = self.value(*type_entry)
                if kind not in _FILLERS:
                    raise self.error(type_entry[0], type_entry[1], f"={kind!r} is not a filler "
                                     f"({', '.join(_FILLERS)})")
                cls = getattr(filler_mod, _FILLERS[kind])
            kwargs = dict(current._args) if cls is type(current) else {}
            for section, key, param in params:
                pname = snake_case(param)
                if pname not in cls._argument_specs:
                    raise self.error(section, key, f"is not a parameter of {cls.__name__} "
                                     f"({', '.join(cls._argument_specs)})")
                kwargs[pname] = self._convert(cls._argument_specs[pname], self.value(section, key), section, key)
            try:
                obj = cls(**kwargs)
            except (ValueError, TypeError) as e:
                where = params[-1][:2] if params else type_entry
                raise self.error(*where, f"gives an invalid {cls.__name__}: {e}") from None
            cell.set_parameter(role, obj)
        if fillers and not self.load_weights and hasattr(cell, "refill_weights"):
            cell.refill_weights()
            if cell.has_bias():
                cell.refill_bias()

    def _set(self, obj, pname, text, section, key):
        if pname not in obj._parameters:
            raise self.error(section, key, f"is not a parameter of {obj.get_type()}")
        value = self._convert(obj._parameters[pname], text, section, key)
        try:
            obj.set_parameter(pname, value)
        except (ValueError, TypeError, RuntimeError) as e:
            raise self.error(section, key, f"={text!r} is refused: {e}") from None

    def _convert(self, spec, text, section, key):
        types = spec.types
        try:
            if bool in types:
                if text in ("1", "true", "True"):
                    return True
                if text in ("0", "false", "False"):
                    return False
                raise ValueError(text)
            if float in types:
                return float(text)
            if int in types:
                return int(float(text)) if float(text).is_integer() else int(text)
            return text
        except ValueError:
            raise self.error(section, key, f"={text!r} is not a {types[0].__name__}") from None


# -- entry point ------------------------------------------------------------------------------------
def load_from_onnx(provider, model_path, ini_file=None, ignore_cells=None, ignore_input_size=False, name=None,
                   target=None, backend=None, cls=None, generic_ops=True):
    """Import the ONNX model at `model_path` as a `DeepNetCell` fed by `provider`.

    Parameters
    ----------
    provider : n2d2.provider.Provider
        Gives the input size (`shape()`, NCHW, batch first) and, for `fit`, the data.
    model_path : str
        The .onnx file.
    ini_file : str, optional
        N2D2 INI with import directives (`[onnx]`, `[onnx:Conv_def]`..., per-cell sections;
        see `_IniEmbedding`).
    ignore_cells : list of str, optional
        Node output names not imported: their consumers read their input instead (e.g. drop
        the final Softmax).
    ignore_input_size : bool
        Use the provider's C, H, W even when the model declares another input size.
    name : str, optional
        The DeepNetCell name (default `DeepNetCell_<k>`).
    target : n2d2.target.Target, optional
        Default `Score(provider, name="Target")`.
    backend : str, optional
        The DeepNetCell backend (see `n2d2.codegen.programs.select_backend`).
    cls : type, optional
        The DeepNetCell class to build (a subclass calling this).
    generic_ops : bool, default True
        A node no N2D2 cell represents (a broadcasting Mul, HardSwish, LayerNormalization,
        MaxPool in ceil mode, rank-5 reshapes...) becomes an `OnnxNode` cell running its op of
        ONNX semantics (`n2d2.onnx_backend`) instead of being refused. Every torchvision
        classifier imports this way. `generic_ops=False` refuses such a node with an
        `ONNXUnsupportedError` instead (an `OnnxNode` cell has no standalone C export).
    """
    if not isinstance(provider, Provider):
        raise WrongInputType("provider", type(provider), ["n2d2.provider.Provider"])
    if not isinstance(model_path, (str, os.PathLike)):
        raise WrongInputType("model_path", type(model_path), ["str"])
    if ignore_cells is None:
        ignore_cells = []
    if isinstance(ignore_cells, str) or not all(isinstance(c, str) for c in ignore_cells):
        raise WrongInputType("ignore_cells", type(ignore_cells), ["list of str"])
    if not isinstance(ignore_input_size, bool):
        raise WrongInputType("ignore_input_size", type(ignore_input_size), ["bool"])
    if not isinstance(generic_ops, bool):
        raise WrongInputType("generic_ops", type(generic_ops), ["bool"])
    path = os.fspath(model_path)
    ini = _IniEmbedding(ini_file) if ini_file is not None else None
    load_weights = True
    if ini is not None:
        ignore_cells = list(ignore_cells) + ini.ignore
        ignore_input_size = ignore_input_size or ini.ignore_input_size
        load_weights = ini.load_weights
    model, inferred, arrays = load_model_arrays(path)
    importer = _Importer(model, inferred, path, provider, ignore_cells, ignore_input_size, load_weights, arrays,
                         generic_ops)
    # the cells are called only to be traced: no forward of the dummy batch, no filler draws for
    # values the file gives
    with nn_base.deferred_values(), weights_from_file() if load_weights else contextlib.nullcontext():
        x, outputs, input_name = importer.run()
    cells = {c.get_name(): c for c in importer.cells}
    if ini is not None:
        ini.apply(cells, [o for n in model.graph.node for o in n.output if o])
    for cell in importer.cells:
        cell.learn()
    try:
        result = trace(x.get_deepnet(), outputs=outputs, name=model.graph.name or "onnx", input_names=[input_name])
    except ValueError as e:
        raise ONNXUnsupportedError(f"{path}: the imported network cannot be traced: {e}") from None
    if target is None:
        target = Score(provider, name="Target")
    return (cls or DeepNetCell)(result, provider=provider, target=target, name=name, backend=backend)
