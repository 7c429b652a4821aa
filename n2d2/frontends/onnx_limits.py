"""Size limits on untrusted ONNX models, checked before anything is allocated from a declared size.

ONNX files come from strangers. Every tensor's declared dims are checked (non-negative, rank,
size under a cap) against the bytes it actually holds (raw_data, typed fields, or an external
file that must lie inside the model's folder) before numpy sees it; the graph's node count and
subgraph nesting are capped; shapes from ONNX shape inference and the outputs of constant
folding are capped before they are materialized. The caps sit well above real models (VGG-16
holds a 411 MB tensor, 528 MB in all): raise them here for larger ones.
"""
import os

from n2d2.frontends.onnx_errors import ONNXFormatError, _first_line

MAX_TENSOR_BYTES = 8 << 30   # one tensor (initializer, constant, inferred or folded value)
MAX_TOTAL_BYTES = 32 << 30   # all the tensors a model holds (initializers, constants, external data)
MAX_RANK = 32
MAX_NODES = 1_000_000        # over the main graph, its subgraphs and the model's functions
MAX_GRAPH_DEPTH = 16         # subgraph nesting (If/Loop/Scan bodies inside bodies)

# ops whose output size comes from input values: folded only when inference bounds that size
_GROWS = frozenset(("ConstantOfShape", "Expand", "Tile", "Range", "Resize", "Upsample", "Pad", "OneHot", "EyeLike",
                    "CenterCropPad", "Col2Im", "StringSplit", "Compress", "NonZero", "Unique", "TopK"))

# bits per element of the types packed below one byte
#: ops whose value is drawn at random: never evaluated at import, whatever their inputs
RANDOM_OPS = frozenset(("RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial",
                        "Bernoulli"))
_SUB_BYTE_BITS = {"UINT4": 4, "INT4": 4, "FLOAT4E2M1": 4, "UINT2": 2, "INT2": 2, "FLOAT6E2M3": 6, "FLOAT6E3M2": 6}


def _error(message):
    return ONNXFormatError(message)


def check_dims(dims, label, elem_bits):
    """Number of elements and of bytes of a tensor of `dims`; raises when a dim is negative, the
    rank or the size is over the limits (Python ints: no overflow)."""
    dims = [int(d) for d in dims]
    if len(dims) > MAX_RANK:
        raise _error(f"{label}: rank {len(dims)}, more than the limit of {MAX_RANK}")
    if any(d < 0 for d in dims):
        raise _error(f"{label}: negative dimension in {dims}")
    count = 1
    for d in dims:
        count *= d
    nbytes = (count * elem_bits + 7) // 8
    if nbytes > MAX_TENSOR_BYTES:
        raise _error(f"{label}: shape {dims} is {nbytes} bytes, more than the {MAX_TENSOR_BYTES}-byte limit "
                     "of one tensor (n2d2.frontends.onnx_limits.MAX_TENSOR_BYTES)")
    return count, nbytes


def elem_bits(data_type, label):
    """Bits per element of an ONNX TensorProto data type; raises for an unknown or undefined one."""
    import numpy as np
    from onnx import TensorProto, helper

    name = TensorProto.DataType.Name(data_type) if data_type in TensorProto.DataType.values() else None
    if name is None or name == "UNDEFINED":
        raise _error(f"{label}: unknown tensor data type {data_type}")
    if name in _SUB_BYTE_BITS:
        return _SUB_BYTE_BITS[name]
    if name == "STRING":
        return 0  # strings are counted by their own lengths
    return 8 * np.dtype(helper.tensor_dtype_to_np_dtype(data_type)).itemsize


class _Walker:
    """Walks a model's graphs, subgraphs and functions, checking every tensor before use."""

    def __init__(self, label, base_dir, raw=None):
        self.label = label
        self.base_dir = base_dir
        self.raw = raw
        self.nodes = 0
        self.total = 0

    def graph(self, graph, depth):
        if depth > MAX_GRAPH_DEPTH:
            raise _error(f"{self.label}: subgraphs nested more than {MAX_GRAPH_DEPTH} deep")
        where = f"graph '{graph.name}'" if depth else "the main graph"
        for t in graph.initializer:
            data = self.tensor(t, f"initializer '{t.name}'")
            if data is not None and depth == 0 and self.raw is not None:
                self.raw[t.name] = _view(t, data)
        for s in graph.sparse_initializer:
            self.sparse(s, f"sparse initializer '{s.values.name}'")
        self.node_list(graph.node, depth, where)

    def node_list(self, nodes, depth, where):
        self.nodes += len(nodes)
        if self.nodes > MAX_NODES:
            raise _error(f"{self.label}: more than {MAX_NODES} nodes (in {where} and before it)")
        for node in nodes:
            for a in node.attribute:
                self.attribute(a, f"node '{node.name}' ({node.op_type}) attribute '{a.name}'", depth)

    def attribute(self, a, what, depth):
        if a.HasField("t"):
            self.tensor(a.t, what)
        for t in a.tensors:
            self.tensor(t, what)
        if a.HasField("sparse_tensor"):
            self.sparse(a.sparse_tensor, what)
        for s in a.sparse_tensors:
            self.sparse(s, what)
        if a.HasField("g"):
            self.graph(a.g, depth + 1)
        for g in a.graphs:
            self.graph(g, depth + 1)

    def sparse(self, s, what):
        check_dims(s.dims, f"{self.label}: {what}", 0)
        self.tensor(s.values, what + " values")
        self.tensor(s.indices, what + " indices")

    def tensor(self, t, what):
        """Checks `t`; returns its raw_data bytes when it holds them (else None)."""
        label = f"{self.label}: {what}"
        data = None
        bits = elem_bits(t.data_type, label)
        count, nbytes = check_dims(t.dims, label, bits)
        if t.data_location == 1:  # TensorProto.EXTERNAL
            nbytes = self.external(t, label, nbytes)
        elif t.HasField("raw_data"):
            if bits == 0:
                raise _error(f"{label}: a string tensor cannot have raw_data")
            data = t.raw_data  # a copy of the bytes (upb): read once, kept for the importer
            if len(data) != nbytes:
                raise _error(f"{label}: shape {list(t.dims)} needs {nbytes} bytes of raw_data, the file holds "
                             f"{len(data)}")
        else:
            self.typed(t, label, count, bits)
        self.total += nbytes
        if self.total > MAX_TOTAL_BYTES:
            raise _error(f"{self.label}: the tensors hold more than the {MAX_TOTAL_BYTES}-byte limit "
                         "(n2d2.frontends.onnx_limits.MAX_TOTAL_BYTES)")
        return data

    @staticmethod
    def typed(t, label, count, bits):
        from onnx import helper

        field = helper.tensor_dtype_to_field(t.data_type)
        held = len(getattr(t, field))
        if t.data_type in (14, 15):  # COMPLEX64/128: two numbers per element
            expected = 2 * count
        elif bits < 8:  # sub-byte types are packed in int32_data
            expected = None
        else:
            expected = count
        if expected is None:
            if held > count:
                raise _error(f"{label}: shape {list(t.dims)} holds at most {count} packed values, {field} has {held}")
        elif held != expected:
            raise _error(f"{label}: shape {list(t.dims)} needs {expected} values, {field} has {held}")

    def external(self, t, label, nbytes):
        """Checks an external-data tensor: a file inside the model's folder, holding its bytes."""
        info = {e.key: e.value for e in t.external_data}
        location = info.get("location", "")
        if self.base_dir is None:
            raise _error(f"{label}: external data '{location}' in a model not read from a file")
        if not location or os.path.isabs(location) or ".." in location.replace("\\", "/").split("/"):
            raise _error(f"{label}: external data location '{location}' must be a relative path inside the "
                         "model's folder")
        base = os.path.realpath(self.base_dir)
        path = os.path.realpath(os.path.join(base, location))
        if os.path.commonpath([base, path]) != base or not os.path.isfile(path):
            raise _error(f"{label}: external data file '{location}' is not a file inside {self.base_dir}")
        try:
            offset = int(info.get("offset", 0))
            length = int(info["length"]) if "length" in info else None
        except ValueError:
            raise _error(f"{label}: external data offset/length {info} are not integers") from None
        size = os.path.getsize(path)
        if length is None:
            length = size - offset
        if offset < 0 or length != nbytes or offset + length > size:
            raise _error(f"{label}: shape {list(t.dims)} needs {nbytes} bytes of external data, '{location}' "
                         f"gives offset {offset}, length {length} in a {size}-byte file")
        return nbytes


def _view(t, data):
    """The checked raw bytes of initializer `t` as a read-only array (numpy_helper.to_array's
    values without its second copy); None for the types numpy_helper decodes specially."""
    import numpy as np
    from onnx import helper

    if t.data_type not in _PLAIN_TYPES:
        return None
    dtype = np.dtype(helper.tensor_dtype_to_np_dtype(t.data_type)).newbyteorder("<")
    return np.frombuffer(data, dtype=dtype).reshape([int(d) for d in t.dims]).astype(dtype.newbyteorder("="),
                                                                                      copy=False)


# raw_data types whose bytes are the little-endian values (the others are decoded by numpy_helper)
_PLAIN_TYPES = frozenset((1, 2, 3, 4, 5, 6, 7, 9, 10, 11, 12, 13))  # FLOAT..UINT64, FLOAT16, DOUBLE

# an initializer at least this large is given to the ONNX checker and shape inference as a typed
# graph input instead: they would serialize and copy its bytes (twice) only to check their size,
# which check_model has done
LARGE_INITIALIZER_BYTES = 1 << 20


def without_large_initializers(model):
    """A copy of `model` for `onnx.checker` and shape inference in which each main-graph
    initializer of at least LARGE_INITIALIZER_BYTES (float types: never a shape operand) is a
    graph input of the same type and dims; everything else is copied as is."""
    import onnx
    from onnx import TensorProto, helper

    floats = (TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE, TensorProto.BFLOAT16)
    graph = model.graph
    large = []
    for t in graph.initializer:
        if t.data_type in floats:
            count = 1
            for d in t.dims:
                count *= int(d)
            if count * elem_bits(t.data_type, "") // 8 >= LARGE_INITIALIZER_BYTES:
                large.append(t)
    if not large:
        return model
    light = onnx.ModelProto()
    for field, value in model.ListFields():
        if field.name != "graph":
            _copy_field(light, field, value)
    for field, value in graph.ListFields():
        if field.name != "initializer":
            _copy_field(light.graph, field, value)
    names = {t.name for t in large}
    light.graph.initializer.extend(t for t in graph.initializer if t.name not in names)
    inputs = {i.name for i in graph.input}
    light.graph.input.extend(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims))
                             for t in large if t.name not in inputs)
    return light


def _copy_field(message, field, value):
    if field.is_repeated:
        getattr(message, field.name).extend(value)
    elif field.type == field.TYPE_MESSAGE:
        getattr(message, field.name).CopyFrom(value)
    else:
        setattr(message, field.name, value)


def check_model(model, label, base_dir=None, raw=None):
    """Raise `ONNXFormatError` naming `label` when the model breaks a limit or a tensor's dims
    disagree with its data. `base_dir`: the folder external data may be read from (None: none).
    `raw`: a dict given here receives {name: read-only array} for the main graph's raw-data
    initializers (the bytes read by the check, not copied again)."""
    walker = _Walker(label, base_dir, raw)
    walker.graph(model.graph, 0)
    for f in model.functions:
        walker.node_list(f.node, 1, f"function '{f.name}'")


def check_value_infos(inferred, label):
    """Shapes given by ONNX shape inference (fully known ones) must be under the tensor limit."""
    from onnx import TensorProto

    for vi in list(inferred.graph.value_info) + list(inferred.graph.output):
        t = vi.type.tensor_type
        if not t.HasField("shape") or not all(d.HasField("dim_value") for d in t.shape.dim):
            continue
        bits = 32 if t.elem_type in (0, TensorProto.STRING) else elem_bits(t.elem_type, label)
        check_dims([d.dim_value for d in t.shape.dim], f"{label}: value '{vi.name}'", bits)


def check_node_outputs(node, arrays, opset, label):
    """Before a node is evaluated on constants: its output shapes, inferred from the input
    values, must be known and under the tensor limit. Returns nothing; raises ONNXFormatError."""
    import numpy as np
    import onnx
    from onnx import helper, numpy_helper

    try:
        schema = onnx.defs.get_schema(node.op_type, opset, node.domain)
        types, data = {}, {}
        for name, a in zip(node.input, arrays):
            if name and a is not None:
                a = np.asarray(a)
                types[name] = helper.make_tensor_type_proto(helper.np_dtype_to_tensor_dtype(a.dtype), a.shape)
                if a.size <= 1 << 16:
                    data[name] = numpy_helper.from_array(a, name)
        outs = onnx.shape_inference.infer_node_outputs(schema, node, types, data,
                                                       opset_imports=[helper.make_opsetid(node.domain, opset)])
    except Exception:
        outs = {}  # no inference: the op's own checks decide; ops in _GROWS are refused below
    for name in node.output:
        t = outs.get(name)
        dims = None
        if t is not None and t.tensor_type.HasField("shape"):
            dims = [d.dim_value if d.HasField("dim_value") else None for d in t.tensor_type.shape.dim]
        if dims is not None and None not in dims:
            elem = t.tensor_type.elem_type
            bits = 64 if elem in (0, 8) else elem_bits(elem, label)  # unknown or string: 8 bytes
            check_dims(dims, f"{label}: output '{name}'", bits)
        elif name and node.op_type in _GROWS:
            raise _error(f"{label}: the size of output '{name}' cannot be bounded before evaluating this "
                         f"{node.op_type} (shape inference gives {dims})")


def evaluate_constant_node(node, arrays, opset, label):
    """The outputs (numpy arrays) of ONNX `node` on the constant inputs `arrays` (one per input
    slot, None where absent), evaluated by `onnx.reference` after `check_node_outputs`;
    ONNXFormatError naming `label` when it cannot be. The constant folding of both ONNX paths
    (the importer, and `n2d2.onnx_backend` for ops that have no conversion rule)."""
    import numpy as np
    from onnx import helper
    from onnx.reference import ReferenceEvaluator

    names = [f"i{k}" if n else "" for k, n in enumerate(node.input)]
    feeds = {nm: a for nm, a in zip(names, arrays) if nm}
    inputs = [helper.make_tensor_value_info(nm, helper.np_dtype_to_tensor_dtype(a.dtype), None)
              for nm, a in feeds.items()]
    outs = [f"o{k}" for k in range(len(node.output))]
    copy = helper.make_node(node.op_type, names, outs, domain=node.domain)
    copy.attribute.extend(node.attribute)
    g = helper.make_graph([copy], "fold", inputs, [helper.make_tensor_value_info(o, 0, None) for o in outs])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    check_node_outputs(node, arrays, opset, label)
    try:
        results = ReferenceEvaluator(m).run(None, feeds)
    except Exception as e:
        raise _error(f"{label}: cannot evaluate this constant expression ({type(e).__name__}: "
                     f"{_first_line(e)})") from None
    return [np.asarray(r) for r in results]
