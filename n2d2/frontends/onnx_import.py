"""ONNX import: an ONNX model becomes n2d2 cells, called eagerly and traced into a `DeepNetCell`.

Steps (N2D2's `DeepNetGenerator::ONNX_processGraph`, reference section 2.2):

1. load: `onnx.load`, the size limits of `onnx_limits` (before any tensor is read),
   `onnx.checker`, strict shape inference; any failure is an `ONNXFormatError` naming the file;
2. the one ONNX path (`_Importer._through_the_ir`): the model is converted to `Onnx*` IR by
   `n2d2.onnx_backend` (nodes named by their ONNX outputs, in file order; `ignore_cells`
   bypassed; nodes whose inputs are all constants evaluated at import, bounded by
   `onnx_limits`; Reshape targets naming the file's batch size take the provider's; a model it
   refuses is refused, naming file and node), 1-D convolutions and poolings of a rank-3 input
   made 2-D (`lift_1d`), legalized into N2D2 ops (`legalize_onnx`, whose rules say why a node
   stays `Onnx*`: activations, Clip, PRelu, per-channel constants folded into biases and
   weights, views, Concat, the decomposed GELU...), its constant operands folded
   (`fold_constant_operands`), activations fused (`fuse_activation`);
3. cells built from that graph, one per node, named after its ONNX output ('9', '11', ...)
   (`graph_cells.CellBuilder`), called at once on the running tensor (a zero batch of
   `provider.shape()`, in test mode). An `Onnx*` node the rules leave is, by default
   (`generic_ops=True`), an `OnnxNode` cell (`n2d2.cells.nn.onnx_node`: exact ONNX semantics,
   broadcasting, any rank, ceil-mode windows, LayerNormalization...; it runs compiled where a
   kernel exists); with `generic_ops=False` it is refused with an `ONNXUnsupportedError` (a
   `ValueError`) naming the node and its rule's reason; never a silent skip;
4. the network is traced (`n2d2.ir.trace`) into a `DeepNetCell` whose target is a
   `Score(provider, name="Target")`, as `DeepNetCell.from_block` does.

Tensors are NCHW; an ONNX tensor of rank r < 4 is held as a 4-D tensor with trailing
dimensions of size 1 ([N, F] as [N, F, 1, 1]), so that the memory order is the same.
The batch size is the provider's. An INI network's `[onnx]` section reads the ONNX values by
name (`_Importer.values`, served from the built graph).
"""
import contextlib
import os
import re
import warnings

from n2d2 import filler, solver
from n2d2.cells.deepnet_cell import DeepNetCell
from n2d2.cells.nn import (
    Activation,
    Reshape,
)
from n2d2.cells.nn import base as nn_base  # nn_base.deferred_values read at call time (tests swap it)
from n2d2.cells.nn.onnx_node import OnnxNode
from n2d2.cells.nn.weighted import weights_from_file
from n2d2.error_handler import WrongInputType
from n2d2.frontends import graph_cells, onnx_limits
from n2d2.frontends.onnx_errors import ONNXError, ONNXFormatError, ONNXUnsupportedError, _first_line, _onnx  # noqa: F401
from n2d2.ir.passes._common import set_op
from n2d2.ir.passes.fuse_activation import fuse_activation
from n2d2.ir.passes.legalize_onnx import RULES as LEGALIZE_RULES
from n2d2.ir.passes.legalize_onnx import (
    fold_constant_operands,
    legalize_onnx,
    legalize_onnx_with_reasons,
)
from n2d2.ir.passes.lift_1d import lift_1d
from n2d2.ir.trace import trace
from n2d2.ops import activation as act_table
from n2d2.provider.base import Provider
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


class _Act:
    """An activation: an n2d2 tensor (or the parts of a channel concatenation) and the shape
    ONNX gives it. The tensor may hold the values in another shape of the same memory order
    (a view: Flatten, Reshape...); `view_name` names the Reshape cell made if a consumer needs
    the ONNX layout."""

    __slots__ = ("tensor", "parts", "shape", "view_name", "materialized")

    def __init__(self, tensor, shape, view_name=None, parts=None):
        self.tensor = tensor
        self.parts = parts
        self.shape = tuple(int(s) for s in shape)
        self.view_name = view_name
        self.materialized = None

    @property
    def rank(self):
        return len(self.shape)

    def canonical(self) -> bool:
        return self.parts is None and tuple(self.tensor.shape()) == _pad4(self.shape)


# -- the importer ----------------------------------------------------------------------------------
class _Importer:
    """Builds the cells of one ONNX graph through the one path (see the module docstring)."""

    def __init__(self, model, path, provider, ignore_cells=(), ignore_input_size=False,
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
        self._check_default_opset()
        self.values = {}          # ONNX name -> np.ndarray (constant) or _Act
        self.cells = []           # cells in creation order
        self.used_names = set()
        self.file_batch = None

    # -- errors -------------------------------------------------------------------------------
    def _label(self, node=None):
        if node is None:
            return self.path
        out = node.output[0] if len(node.output) else "?"
        name = f"'{node.name}' " if node.name else ""
        return f"{self.path}: node {name}({node.op_type}, output '{out}')"

    def unsupported(self, message, node=None) -> ONNXUnsupportedError:
        return ONNXUnsupportedError(f"{self._label(node)}: {message}")

    # -- set-up -------------------------------------------------------------------------------
    def _check_default_opset(self):
        if not any(imp.domain in ("", "ai.onnx") for imp in self.model.opset_import):
            raise ONNXFormatError(f"{self.path}: the model imports no version of the default ONNX domain")

    # -- names --------------------------------------------------------------------------------
    def _name(self, base):
        """A unique name for the cell materializing value `base` (a view or a concatenation that
        made no cell): `base` itself when free, else `base_1`... avoiding every ONNX value name."""
        if base not in self.used_names:
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
        x = Tensor(provider_shape) if input_tensor is None else input_tensor
        in_shape = (provider_shape[0],) + tuple(provider_shape[1:len(in_dims)])
        self.values[graph_input.name] = _Act(x, in_shape, view_name=graph_input.name)
        self.reserved = {o for n in self.graph.node for o in n.output} | {graph_input.name}
        self.used_names.add(graph_input.name)
        known = {o for n in self.graph.node for o in n.output if o}
        unknown = sorted(self.ignore - known)
        if unknown:
            raise ONNXUnsupportedError(f"{self.path}: ignore_cells names {unknown}, which are not node outputs "
                                       f"of this model")
        return x, self._through_the_ir(x, graph_input.name, in_shape), graph_input.name

    def _through_the_ir(self, x, input_name, in_shape):
        """The one ONNX path: the model converted to `Onnx*` IR (`n2d2.onnx_backend`, nodes named
        by their ONNX outputs), `ignore_cells` bypassed, legalized into N2D2 ops
        (`legalize_onnx`, then `fold_constant_operands`), activations fused (`fuse_activation`) and built as cells
        (`graph_cells.CellBuilder`) called on `x`; returns the output tensors. An `Onnx*` node
        left is an OnnxNode cell, or refused by name (`_check_leftover`); a model the converter
        refuses is refused (`_conversion_error`). The input may be of rank 2 or 3 (`x` holds it
        as [N, C, 1, 1] / [N, C, L, 1]; 1-D windows become 2-D, `lift_1d`), and Reshape targets
        naming the file's batch size take the provider's. The ONNX values are left in
        `self.values` (`_serve_values`)."""
        from n2d2.onnx_backend import _Converter

        converter = _Converter(self.model, {input_name: (in_shape, "float32")}, {}, self.arrays,
                               file_batch=self.file_batch, bypass=self.ignore)
        try:
            graph = converter.convert()
        except Exception as e:
            raise self._conversion_error(converter, e) from e
        order = graph.nodes()   # the file's order
        self._onnx_nodes = {n.output[0]: n for n in self.graph.node if len(n.output) and n.output[0]}
        converted = graph
        # legalized again after the folding: what read a folded node (a Softmax after a Gemm whose alpha
        # was folded) may now be legalized too
        graph = fold_constant_operands(legalize_onnx(self._log_softmax_as_softmax(lift_1d(graph))))
        graph, reasons = legalize_onnx_with_reasons(graph)
        graph = fuse_activation(graph)
        for n in graph.nodes():
            if not graph.op(n).startswith("Onnx") and graph.op(n) not in graph_cells.SUPPORTED + ("Input", "Concat"):
                raise ONNXUnsupportedError(f"{self.path}: node '{n}' became a {graph.op(n)}, which no cell builds "
                                           "(an importer bug, please report it)")
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
        """`self.values` of the ONNX activations (an INI network's `[onnx]` section reads them:
        `Input=onnx,<value>`, `[<value>.Target]`): each name's IR tensor (`values`: the
        converter's, by ONNX name), or, for a node a pass removed (an activation fused into its
        producer, a bias folded into it), the tensor of its first activation input in the
        `converted` graph, which that pass made carry its value."""
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
        error stays one (`onnx_limits`' bounds), any other is an `ONNXUnsupportedError`; an op
        the converter lacks says what is supported."""
        name = getattr(converter, "_node_name", None)
        node = next((n for n in self.graph.node if name is not None and name in n.output), None)
        message = _first_line(e)
        if isinstance(e, NotImplementedError) and node is not None:
            if node.domain not in ("", "ai.onnx"):
                message = f"custom domain '{node.domain}' (supported: the default ONNX domain)"
            elif node.op_type in onnx_limits.RANDOM_OPS:
                message = "random ops are not supported"
            elif any(a.type in (_onnx().AttributeProto.GRAPH, _onnx().AttributeProto.GRAPHS) for a in node.attribute):
                message = "control flow (subgraph attributes) is not supported"
            elif node.op_type not in SUPPORTED_OPS:
                message = (f"op type '{node.op_type}' is not supported on activations (supported: "
                           f"{', '.join(SUPPORTED_OPS)}; with generic_ops=True, any op of n2d2.onnx_backend): "
                           f"{message}")
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

    def _tensor(self, v, interface_ok=True):
        """The tensor (or an Interface) holding `v` in its ONNX layout, making a Reshape or an
        Activation cell when the layout or a concatenation requires one."""
        if v.materialized is not None:
            return v.materialized
        if v.parts is not None:
            tensors = [self._tensor(p, interface_ok=False) for p in v.parts]
            if interface_ok:
                return Interface(tensors)
            cell = Activation(None, name=self._name(v.view_name))
            v.materialized = self._call(cell, Interface(tensors))
            return v.materialized
        if v.canonical() and v.tensor.nb_dims() == 4:
            return v.tensor
        if self.generic_ops and (v.rank > 4 or v.tensor.nb_dims() != 4):
            if v.rank > 4:
                raise self.unsupported(f"a tensor of rank {v.rank} ({list(v.shape)}) reaches a cell that takes "
                                       "tensors of rank 4 at most")
            cell = OnnxNode("Reshape", "OnnxReshape", {"shape": (int(v.shape[0]),) + tuple(v.shape[1:])},
                            [("x", 0)], [v.shape[1:]], {}, ("shape",), name=self._name(v.view_name))
            v.materialized = self._call(cell, v.tensor)
            return v.materialized
        if v.rank > 4:
            raise self.unsupported(f"a tensor of rank {v.rank} ({list(v.shape)}) reaches a cell; n2d2 cells take "
                                   "tensors of rank 4 at most")
        c, h, w = _pad4(v.shape)[1:]
        cell = Reshape([w, h, c], name=self._name(v.view_name))
        v.materialized = self._call(cell, v.tensor)
        return v.materialized

    def _call(self, cell, inputs):
        cell.test()
        y = cell(inputs)
        self.cells.append(cell)
        return y



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
    importer = _Importer(model, path, provider, ignore_cells, ignore_input_size, load_weights, arrays,
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
