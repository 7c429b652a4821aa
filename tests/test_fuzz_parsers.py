"""Fuzzing the parsers of untrusted files (issue 11): only the library's own errors may escape.

Targets: the ONNX importer (byte mutations of a valid small model, and mutations of its protobuf
fields: dims, data types, raw data, attributes, op types, missing inputs, cycles, nested
subgraphs), the IDX reader (raw and gzip) and the CIFAR reader. Hypothesis runs derandomized
(the same examples every run); the CI portion is a few hundred examples per target, the
`slow` ones many more.
"""
import atexit
import gzip
import os
import shutil
import struct
import tempfile

import numpy as np
import pytest
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from n2d2.database import cifar, mnist
from n2d2.error_handler import DataFileError, ModelFileError

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

CI = dict(max_examples=500, derandomize=True, deadline=None, database=None,
          suppress_health_check=list(HealthCheck))
SLOW = dict(CI, max_examples=20000)
_DIR = tempfile.mkdtemp(prefix="n2d2-fuzz-")
atexit.register(shutil.rmtree, _DIR, True)


def _file(name, raw):
    path = os.path.join(_DIR, name)
    with open(path, "wb") as f:
        f.write(raw)
    return path


# -- ONNX ----------------------------------------------------------------------------------------
def _small_model():
    """Conv -> Relu -> MaxPool -> Reshape(by a Shape/Concat chain) -> Gemm -> Softmax, input 1x1x6x6."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((2, 1, 3, 3)).astype(np.float32), "w"),
             numpy_helper.from_array(rng.standard_normal(2).astype(np.float32), "b"),
             numpy_helper.from_array(rng.standard_normal((3, 8)).astype(np.float32), "fw"),
             numpy_helper.from_array(np.array([-1], np.int64), "minus1")]
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], kernel_shape=[3, 3], pads=[0, 0, 0, 0]),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("MaxPool", ["r"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("Shape", ["p"], ["s"]),
             helper.make_node("Constant", [], ["zero"], value=numpy_helper.from_array(np.array([0], np.int64))),
             helper.make_node("Gather", ["s", "zero"], ["n"], axis=0),
             helper.make_node("Concat", ["n", "minus1"], ["shape"], axis=0),
             helper.make_node("Reshape", ["p", "shape"], ["f"]),
             helper.make_node("Gemm", ["f", "fw"], ["g"], transB=1),
             helper.make_node("Softmax", ["g"], ["y"], axis=1)]
    graph = helper.make_graph(nodes, "fuzz", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 6, 6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


MODEL = _small_model()
MODEL_BYTES = MODEL.SerializeToString()
_PROVIDER = []


def _provider():
    if not _PROVIDER:
        import n2d2

        _PROVIDER.append(n2d2.provider.DataProvider(n2d2.database.Numpy(), [6, 6, 1], batch_size=1))
    return _PROVIDER[0]


def _import(raw: bytes):
    """Import `raw` as an ONNX file; only ModelFileError (the ONNX errors' base) may escape."""
    from n2d2.frontends.onnx_import import load_from_onnx

    path = _file("model.onnx", raw)
    try:
        load_from_onnx(_provider(), path, backend="numpy")
    except ModelFileError as e:
        assert path in str(e), f"the error does not name the file: {e}"


def test_small_model_imports():
    from n2d2.frontends.onnx_import import load_from_onnx

    dn = load_from_onnx(_provider(), _file("ok.onnx", MODEL_BYTES), backend="numpy")
    assert dn is not None


_byte_edits = st.lists(st.tuples(st.sampled_from(["flip", "set", "insert", "delete", "truncate"]),
                                 st.integers(0, len(MODEL_BYTES) - 1), st.integers(0, 255)), min_size=1, max_size=6)


def _mutate_bytes(raw: bytes, edits) -> bytes:
    b = bytearray(raw)
    for kind, pos, value in edits:
        pos %= max(len(b), 1)
        if kind == "flip":
            b[pos] ^= 1 << (value % 8)
        elif kind == "set":
            b[pos] = value
        elif kind == "insert":
            b[pos:pos] = bytes([value])
        elif kind == "delete":
            del b[pos:pos + 1 + value % 8]
        else:
            del b[pos:]
        if not b:
            break
    return bytes(b)


def _onnx_bytes_target(edits):
    _import(_mutate_bytes(MODEL_BYTES, edits))


@settings(**CI)
@seed(11)
@given(_byte_edits)
def test_fuzz_onnx_bytes(edits):
    _onnx_bytes_target(edits)


@pytest.mark.slow
@settings(**SLOW)
@seed(12)
@given(_byte_edits)
def test_fuzz_onnx_bytes_slow(edits):
    _onnx_bytes_target(edits)


_ints = st.one_of(st.integers(-3, 12), st.sampled_from([-1, 0, 1 << 31, 1 << 40, (1 << 63) - 1, -(1 << 63)]))
_field_edit = st.one_of(
    st.tuples(st.just("dims"), st.integers(0, 3), st.lists(_ints, max_size=5)),
    st.tuples(st.just("data_type"), st.integers(0, 3), st.integers(0, 40)),
    st.tuples(st.just("raw_data"), st.integers(0, 3), st.integers(-40, 40)),
    st.tuples(st.just("attribute"), st.integers(0, 9),
              st.tuples(st.sampled_from(["kernel_shape", "pads", "strides", "axis", "transB", "dilations", "group",
                                         "value", "body", "alpha"]), st.lists(_ints, max_size=6))),
    st.tuples(st.just("drop_attribute"), st.integers(0, 9), st.integers(0, 5)),
    st.tuples(st.just("op_type"), st.integers(0, 9),
              st.sampled_from(["Add", "ConstantOfShape", "Tile", "Range", "Expand", "Resize", "If", "Loop", "Concat",
                               "Pad", "Slice", "Transpose", "Squeeze", "Flatten", "Identity", "Foo", ""])),
    st.tuples(st.just("input"), st.integers(0, 9), st.tuples(st.integers(0, 3), st.sampled_from(
        ["", "missing", "y", "g", "f", "p", "x", "w", "shape", "minus1"]))),
    st.tuples(st.just("drop_input"), st.integers(0, 9), st.integers(0, 3)),
    st.tuples(st.just("cycle"), st.integers(0, 9), st.integers(0, 9)),
    st.tuples(st.just("swap_nodes"), st.integers(0, 9), st.integers(0, 9)),
    st.tuples(st.just("nest"), st.integers(0, 9), st.integers(1, 40)),
    st.tuples(st.just("input_dims"), st.integers(0, 3), st.lists(_ints, max_size=5)),
    st.tuples(st.just("opset"), st.integers(0, 0), st.integers(-2, 30)),
    # edits that keep the file consistent, so that the checker passes and the importer is reached
    st.tuples(st.just("reshape_init"), st.integers(0, 3), st.lists(st.integers(0, 9), max_size=5)),
    st.tuples(st.just("init_values"), st.integers(0, 3), st.lists(_ints, min_size=1, max_size=4)),
    st.tuples(st.just("set_attr"), st.integers(0, 9), st.tuples(st.integers(0, 3), st.lists(_ints, max_size=6))),
    # a constant whose size comes from values (folded at import): ConstantOfShape/Tile/Expand/Range
    st.tuples(st.just("grow"), st.integers(0, 3), st.lists(st.one_of(_ints, st.integers(1 << 10, 1 << 16)),
                                                            min_size=1, max_size=4)),
)


def _nested_graph(depth):
    leaf = helper.make_graph([helper.make_node("Identity", ["a"], ["b"])], "leaf", [],
                             [helper.make_tensor_value_info("b", TensorProto.FLOAT, [1])])
    g = leaf
    for k in range(depth):  # one branch nests deeper: the size stays linear in the depth
        node = helper.make_node("If", ["cond"], ["b"], then_branch=g, else_branch=leaf)
        g = helper.make_graph([node], f"level{k}", [], [helper.make_tensor_value_info("b", TensorProto.FLOAT, [1])])
    return g


def _add_growing_constant(g, op, values):
    """y -> z = y + sum(op(values)): the constant is folded at import, its size set by `values`."""
    if any(o.name == "z" for o in g.output):
        return
    g.initializer.append(numpy_helper.from_array(np.array(values, np.int64), "gv"))
    if op == "ConstantOfShape":
        g.node.append(helper.make_node(op, ["gv"], ["gc"]))
    elif op == "Range":
        for name, value in (("g0", 0), ("g1", values[0]), ("g2", values[1] if len(values) > 1 else 1)):
            g.initializer.append(numpy_helper.from_array(np.array(value, np.int64), name))
        g.node.append(helper.make_node(op, ["g0", "g1", "g2"], ["gc"]))
    else:
        g.node.append(helper.make_node(op, ["fw", "gv"], ["gc"]))
    g.node.append(helper.make_node("ReduceSum", ["gc"], ["rs"], keepdims=0))
    g.node.append(helper.make_node("Cast", ["rs"], ["gr"], to=TensorProto.FLOAT))
    g.node.append(helper.make_node("Add", ["y", "gr"], ["z"]))
    g.output[0].name = "z"


def _mutate_fields(edits):
    m = onnx.ModelProto()
    m.CopyFrom(MODEL)
    g = m.graph
    for kind, k, v in edits:
        node = g.node[k % len(g.node)]
        init = g.initializer[k % len(g.initializer)]
        if kind == "dims":
            del init.dims[:]
            init.dims.extend(v)
        elif kind == "data_type":
            init.data_type = v
        elif kind == "raw_data":
            init.raw_data = init.raw_data[:v] if v < 0 else init.raw_data + bytes(v)
        elif kind == "attribute":
            name, values = v
            for a in list(node.attribute):
                if a.name == name:
                    node.attribute.remove(a)
            if name == "value":
                node.attribute.append(helper.make_attribute(name, helper.make_tensor(
                    "v", TensorProto.INT64, [len(values)], [x % (1 << 62) for x in values])))
            elif name == "body":
                node.attribute.append(helper.make_attribute(name, _nested_graph(len(values))))
            elif name == "alpha":
                node.attribute.append(helper.make_attribute(name, float(values[0]) if values else float("nan")))
            elif name in ("axis", "transB", "group"):
                node.attribute.append(helper.make_attribute(name, values[0] if values else 0))
            else:
                node.attribute.append(helper.make_attribute(name, values))
        elif kind == "drop_attribute":
            if node.attribute:
                del node.attribute[v % len(node.attribute)]
        elif kind == "op_type":
            node.op_type = v
        elif kind == "input":
            slot, name = v
            if slot < len(node.input):
                node.input[slot] = name
            else:
                node.input.append(name)
        elif kind == "drop_input":
            if node.input:
                del node.input[v % len(node.input)]
        elif kind == "cycle":  # node k reads the output of a node after it (or its own)
            later = g.node[max(k % len(g.node), v % len(g.node))]
            if node.input:
                node.input[0] = later.output[0]
        elif kind == "swap_nodes":
            a, b = k % len(g.node), v % len(g.node)
            na, nb = onnx.NodeProto(), onnx.NodeProto()
            na.CopyFrom(g.node[a])
            nb.CopyFrom(g.node[b])
            g.node[a].CopyFrom(nb)
            g.node[b].CopyFrom(na)
        elif kind == "nest":
            node.attribute.append(helper.make_attribute("then_branch", _nested_graph(v)))
        elif kind == "input_dims":
            dims = g.input[0].type.tensor_type.shape
            del dims.dim[:]
            for d in v:
                dims.dim.add().dim_value = d
        elif kind == "opset":
            m.opset_import[0].version = v
        elif kind == "reshape_init":
            a = numpy_helper.to_array(init)
            n = int(np.prod(v))
            flat = np.resize(a.ravel(), n) if a.size else np.zeros(n, a.dtype)
            init.CopyFrom(numpy_helper.from_array(flat.reshape(v), init.name))
        elif kind == "init_values":
            a = numpy_helper.to_array(init)
            values = np.array(v, dtype=np.int64 if a.dtype == np.int64 else np.float64).astype(a.dtype)
            init.CopyFrom(numpy_helper.from_array(values, init.name))
        elif kind == "grow":
            _add_growing_constant(g, ["ConstantOfShape", "Tile", "Expand", "Range"][k], v)
        elif kind == "set_attr":
            slot, values = v
            if node.attribute:
                a = node.attribute[slot % len(node.attribute)]
                if a.type == onnx.AttributeProto.INTS:
                    del a.ints[:]
                    a.ints.extend(values)
                elif a.type == onnx.AttributeProto.INT:
                    a.i = values[0] if values else 0
    return m


def _onnx_fields_target(edits):
    from n2d2.frontends import onnx_limits

    try:
        with np.errstate(all="ignore"):
            raw = _mutate_fields(edits).SerializeToString()
    except Exception:  # protobuf refuses the edit itself (e.g. a value out of range): not a file
        return
    # a low cap here: a folded constant under the default 8 GiB cap would be built for real
    cap, onnx_limits.MAX_TENSOR_BYTES = onnx_limits.MAX_TENSOR_BYTES, 64 << 20
    try:
        _import(raw)
    finally:
        onnx_limits.MAX_TENSOR_BYTES = cap


_field_edits = st.lists(_field_edit, min_size=1, max_size=4)


@settings(**CI)
@seed(13)
@given(_field_edits)
def test_fuzz_onnx_fields(edits):
    _onnx_fields_target(edits)


@pytest.mark.slow
@settings(**SLOW)
@seed(14)
@given(_field_edits)
def test_fuzz_onnx_fields_slow(edits):
    _onnx_fields_target(edits)


# -- IDX -----------------------------------------------------------------------------------------
def _idx(dims, type_code=0x08, payload=None):
    item = {0x08: 1, 0x09: 1, 0x0B: 2, 0x0C: 4, 0x0D: 4, 0x0E: 8}[type_code]
    n = int(np.prod(dims)) * item
    head = bytes([0, 0, type_code, len(dims)]) + b"".join(struct.pack(">I", d) for d in dims)
    return head + (payload if payload is not None else bytes(range(256)) * (n // 256) + bytes(n % 256))


IDX_SEEDS = [_idx((3, 4, 5)), _idx((7,)), _idx((2, 3), 0x0D), _idx((2, 2, 2, 2), 0x0E), _idx((0,)),
             _idx((4, 4), 0x0B), _idx((3,), 0x0C)]
_idx_case = st.tuples(st.sampled_from(range(len(IDX_SEEDS))), st.booleans(),
                      st.lists(st.tuples(st.sampled_from(["flip", "set", "insert", "delete", "truncate"]),
                                         st.integers(0, 200), st.integers(0, 255)), max_size=5),
                      st.sampled_from(["before", "after", "header"]))


def _idx_target(case):
    k, gz, edits, where = case
    raw = IDX_SEEDS[k]
    if where == "header":  # aim at the magic number and dims
        edits = [(kind, pos % 20, v) for kind, pos, v in edits]
    if gz and where == "after":
        raw = _mutate_bytes(gzip.compress(raw, mtime=0), edits)
    else:
        raw = _mutate_bytes(raw, edits) if edits else raw
        raw = gzip.compress(raw, mtime=0) if gz else raw
    path = _file("t10k-images-idx3-ubyte" + (".gz" if gz else ""), raw)
    try:
        out = mnist.read_idx(path)
    except DataFileError as e:
        assert path in str(e), f"the error does not name the file: {e}"
        return
    assert out.nbytes <= len(raw) * mnist.MAX_GZIP_RATIO


@settings(**CI)
@seed(15)
@given(_idx_case)
def test_fuzz_idx(case):
    _idx_target(case)


@pytest.mark.slow
@settings(**SLOW)
@seed(16)
@given(_idx_case)
def test_fuzz_idx_slow(case):
    _idx_target(case)


# -- CIFAR ---------------------------------------------------------------------------------------
_cifar_case = st.tuples(st.integers(1, 2), st.integers(0, 3), st.integers(-40, 40), st.binary(max_size=64),
                        st.booleans())


def _cifar_target(case):
    label_bytes, records, extra, names, names_ok = case
    raw = bytes((k * 7) % 256 for k in range((label_bytes + 3072) * records + max(extra, 0)))
    raw = raw[:len(raw) + min(extra, 0)] if extra < 0 else raw
    path = _file("data_batch_1.bin", raw)
    try:
        images, labels = cifar.read_cifar_file(path, label_bytes)
        assert images.shape == (len(raw) // (label_bytes + 3072), 3, 32, 32)
        assert labels.shape == (images.shape[0], label_bytes)
    except DataFileError as e:
        assert path in str(e)
    names_path = _file("batches.meta.txt", b"airplane\nautomobile\n" if names_ok else names)
    try:
        assert all(cifar.read_label_names(names_path))
    except DataFileError as e:
        assert names_path in str(e)


@settings(**CI)
@seed(17)
@given(_cifar_case)
def test_fuzz_cifar(case):
    _cifar_target(case)


@pytest.mark.slow
@settings(**SLOW)
@seed(18)
@given(_cifar_case)
def test_fuzz_cifar_slow(case):
    _cifar_target(case)
