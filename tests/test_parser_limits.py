"""Regression tests: data-file parsers check declared sizes before they allocate or inflate (issue 11)."""
import os
import struct
import tracemalloc
import zlib

import numpy as np
import pytest

from n2d2.database import mnist
from n2d2.database.cifar import read_cifar_file, read_label_names
from n2d2.error_handler import DataFileError

_INFLATED = 64 << 20  # what the bomb streams expand to; the reader must never hold it


def _gzip_bomb(path, header: bytes, inflated: int = _INFLATED):
    """A .gz whose stream is `header` then `inflated` zero bytes (~64 KB on disk), written in chunks."""
    comp = zlib.compressobj(9, zlib.DEFLATED, 31)
    zeros = bytes(1 << 20)
    with open(path, "wb") as f:
        f.write(comp.compress(header))
        for _ in range(inflated // len(zeros)):
            f.write(comp.compress(zeros))
        f.write(comp.flush())
    return str(path)


def _peak_bytes(fn):
    tracemalloc.start()
    try:
        fn()
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return peak


def _idx_header(dims, type_code=0x08):
    return bytes([0, 0, type_code, len(dims)]) + b"".join(struct.pack(">I", d) for d in dims)


def _rejected_within_4_mib(path):
    """The DataFileError message of reading the IDX file `path`, the reader holding under 4 MiB meanwhile."""
    errors = []

    def read():
        with pytest.raises(DataFileError) as info:
            mnist.read_idx(path)
        errors.append(str(info.value))

    peak = _peak_bytes(read)
    assert peak < 4 << 20, f"the reader held {peak} bytes while rejecting the bomb"
    return errors[0]


def test_gzip_bomb_modest_header_is_not_inflated(tmp_path):
    # Header: 10x10 bytes; the stream goes on for 64 MiB. Only the 100 bytes (plus one probe) are inflated.
    path = _gzip_bomb(tmp_path / "train-images-idx3-ubyte.gz", _idx_header((1, 10, 10)))
    error = _rejected_within_4_mib(path)
    assert "train-images-idx3-ubyte.gz: IDX file larger than expected" in error


def test_gzip_bomb_huge_header_is_rejected_from_the_header(tmp_path):
    # Header: 2^40 bytes. Rejected before any payload byte is inflated or allocated.
    path = _gzip_bomb(tmp_path / "t10k-images-idx3-ubyte.gz", _idx_header((1 << 20, 1 << 10, 1 << 10)))
    error = _rejected_within_4_mib(path)
    assert "t10k-images-idx3-ubyte.gz: the IDX header announces 1048576x1024x1024 values" in error
    assert "limit" in error


def test_mnist_database_rejects_a_bomb_in_its_folder(tmp_path):
    # The case: a bomb among the four MNIST files; the database refuses it, naming it.
    _gzip_bomb(tmp_path / "train-images-idx3-ubyte.gz", _idx_header((2, 28, 28)))
    for name, dims in (("train-labels-idx1-ubyte", (2,)), ("t10k-images-idx3-ubyte", (1, 28, 28)),
                       ("t10k-labels-idx1-ubyte", (1,))):
        (tmp_path / name).write_bytes(_idx_header(dims) + bytes(int(np.prod(dims))))
    errors = []

    def load():
        with pytest.raises(DataFileError) as info:
            mnist.MNIST(str(tmp_path))
        errors.append(str(info.value))

    assert _peak_bytes(load) < 4 << 20
    assert "train-images-idx3-ubyte.gz: IDX file larger than expected" in errors[0]


def test_gzip_header_larger_than_deflate_can_hold_is_rejected_before_allocation(tmp_path):
    # 512 MiB announced (under the cap) by a 1 KB gzip file: deflate cannot expand that far.
    path = tmp_path / "labels.idx.gz"
    path.write_bytes(_gzip_small(_idx_header((1 << 29,)) + bytes(1000)))

    def read():
        with pytest.raises(DataFileError, match="labels.idx.gz: .*gzip data can hold"):
            mnist.read_idx(str(path))

    assert _peak_bytes(read) < 4 << 20


def _gzip_small(raw):
    comp = zlib.compressobj(9, zlib.DEFLATED, 31)
    return comp.compress(raw) + comp.flush()


def test_idx_cap_is_checked_against_the_header(tmp_path, monkeypatch):
    monkeypatch.setattr(mnist, "MAX_IDX_BYTES", 1000)
    ok = _idx_header((10, 100)) + bytes(1000)
    assert mnist.parse_idx(ok).shape == (10, 100)
    with pytest.raises(DataFileError, match="x.idx: the IDX header announces 11x100 values .*1000-byte limit"):
        mnist.parse_idx(_idx_header((11, 100)) + bytes(1100), "x.idx")


def test_idx_gzip_trailing_garbage_and_truncation(tmp_path):
    good = _idx_header((2, 3)) + bytes(range(6))
    np.testing.assert_array_equal(mnist.parse_idx(_gzip_small(good), "a.gz"), np.arange(6).reshape(2, 3))
    with pytest.raises(DataFileError, match="a.gz: IDX file larger than expected"):
        mnist.parse_idx(_gzip_small(good + b"\x01"), "a.gz")
    with pytest.raises(DataFileError, match="a.gz: truncated IDX file.*gzip"):
        mnist.parse_idx(_gzip_small(good[:-1]), "a.gz")
    with pytest.raises(DataFileError, match="a.gz: corrupt or truncated gzip"):
        mnist.parse_idx(_gzip_small(good)[:-6], "a.gz")


def test_cifar_size_is_checked_before_reading(tmp_path, monkeypatch):
    from n2d2.database import cifar

    path = tmp_path / "data_batch_1.bin"
    path.write_bytes(bytes(3073 * 3))
    images, labels = read_cifar_file(str(path), 1)
    assert images.shape == (3, 3, 32, 32) and labels.shape == (3, 1)
    monkeypatch.setattr(cifar, "MAX_CIFAR_BYTES", 3073 * 2)
    with pytest.raises(DataFileError, match="data_batch_1.bin: .*limit"):
        read_cifar_file(str(path), 1)


def test_cifar_label_names_that_are_not_text(tmp_path):
    path = tmp_path / "batches.meta.txt"
    path.write_bytes(b"cat\n\xff\xfe dog\n")
    with pytest.raises(DataFileError, match="batches.meta.txt: .*UTF-8"):
        read_label_names(str(path))


# -- ONNX ----------------------------------------------------------------------------------------
onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from n2d2.error_handler import ModelFileError  # noqa: E402
from n2d2.frontends import onnx_limits  # noqa: E402
from n2d2.frontends.onnx_import import ONNXFormatError, load_from_onnx, load_model  # noqa: E402


def _provider():
    import n2d2

    return n2d2.provider.DataProvider(n2d2.database.Numpy(), [4, 4, 1], batch_size=1)


def _fc_model(extra_nodes=(), out="y", inits=(), opset=13, extra_graph_inits=(), out_shape=(1, 3)):
    """x [1, 1, 4, 4] -> Flatten -> Gemm by 'fw' (3x16) -> y, plus `extra_nodes` feeding nothing needed."""
    fw = numpy_helper.from_array(np.arange(48, dtype=np.float32).reshape(3, 16) / 48, "fw")
    nodes = [helper.make_node("Flatten", ["x"], ["f"]), helper.make_node("Gemm", ["f", "fw"], ["y"], transB=1),
             *extra_nodes]
    graph = helper.make_graph(nodes, "limits", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 4, 4])],
                              [helper.make_tensor_value_info(out, TensorProto.FLOAT, list(out_shape))],
                              [fw, *inits, *extra_graph_inits])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _save(model, path):
    path.write_bytes(model.SerializeToString())
    return str(path)


def test_onnx_tensor_cap_is_exact(tmp_path, monkeypatch):
    path = _save(_fc_model(), tmp_path / "fc.onnx")
    monkeypatch.setattr(onnx_limits, "MAX_TENSOR_BYTES", 3 * 16 * 4)
    assert load_from_onnx(_provider(), path, backend="numpy") is not None
    monkeypatch.setattr(onnx_limits, "MAX_TENSOR_BYTES", 3 * 16 * 4 - 1)
    with pytest.raises(ONNXFormatError, match=r"fc.onnx: initializer 'fw': shape \[3, 16\] is 192 bytes, more than"):
        load_model(path)


@pytest.mark.parametrize("dims, raw, message", [
    ([1 << 20, 1 << 20], b"", r"shape \[1048576, 1048576\] is 4398046511104 bytes, more than the"),
    ([4, -4], bytes(64), r"negative dimension in \[4, -4\]"),
    ([5], bytes(16), r"shape \[5\] needs 20 bytes of raw_data, the file holds 16"),
    ([2] * 40, b"", "rank 40, more than the limit of 32"),
], ids=["huge", "negative", "short_raw_data", "rank"])
def test_onnx_initializer_dims_are_checked_against_the_data(tmp_path, dims, raw, message):
    t = TensorProto(name="bad", data_type=TensorProto.FLOAT, dims=dims, raw_data=raw)
    path = _save(_fc_model(extra_graph_inits=[t]), tmp_path / "dims.onnx")
    with pytest.raises(ONNXFormatError, match="dims.onnx: initializer 'bad': " + message):
        load_model(path)


def test_onnx_typed_values_must_match_the_dims(tmp_path):
    t = helper.make_tensor("bad", TensorProto.INT64, [3], [1, 2, 3])
    del t.int64_data[2]
    path = _save(_fc_model(extra_graph_inits=[t]), tmp_path / "typed.onnx")
    with pytest.raises(ONNXFormatError, match=r"typed.onnx: initializer 'bad': shape \[3\] needs 3 values, "
                                              "int64_data has 2"):
        load_model(path)


def test_onnx_constant_of_huge_shape_is_not_evaluated(tmp_path):
    # The shape [N, 2^40] is computed at import (Shape of the input, Concat), then ConstantOfShape would
    # allocate 2^40 floats: the folded output's size is checked before evaluation.
    big = numpy_helper.from_array(np.array([1 << 40], np.int64), "big")
    nodes = [helper.make_node("Shape", ["x"], ["s"], end=1),
             helper.make_node("Concat", ["s", "big"], ["shape"], axis=0),
             helper.make_node("ConstantOfShape", ["shape"], ["c"]),
             helper.make_node("ReduceSum", ["c"], ["r"], keepdims=0),
             helper.make_node("Add", ["y", "r"], ["z"])]
    path = _save(_fc_model(nodes, out="z", inits=[big], opset=15), tmp_path / "bomb.onnx")
    errors = []

    def run():
        with pytest.raises(ModelFileError) as info:
            load_from_onnx(_provider(), path, backend="numpy")
        errors.append(str(info.value))

    assert _peak_bytes(run) < 64 << 20
    assert "bomb.onnx" in errors[0] and "ConstantOfShape" in errors[0] and "1099511627776" in errors[0], errors[0]
    assert "limit" in errors[0]


def test_onnx_inferred_shapes_are_capped(tmp_path, monkeypatch):
    # Tile by constant repeats: shape inference knows the output size; a cap below it refuses the file.
    reps = numpy_helper.from_array(np.array([1, 1000], np.int64), "reps")
    nodes = [helper.make_node("Tile", ["y", "reps"], ["t"])]
    path = _save(_fc_model(nodes, out="t", inits=[reps], out_shape=(1, 3000)), tmp_path / "tile.onnx")
    monkeypatch.setattr(onnx_limits, "MAX_TENSOR_BYTES", 4000)
    with pytest.raises(ONNXFormatError, match=r"tile.onnx: value 't': shape \[1, 3000\] is 12000 bytes"):
        load_model(path)


def _if_chain(depth):
    leaf = helper.make_graph([helper.make_node("Identity", ["y"], ["o"])], "leaf", [],
                             [helper.make_tensor_value_info("o", TensorProto.FLOAT, [1, 3])])
    g = leaf
    for k in range(depth):
        g = helper.make_graph([helper.make_node("If", ["cond"], ["o"], then_branch=g, else_branch=leaf)], f"g{k}",
                              [], [helper.make_tensor_value_info("o", TensorProto.FLOAT, [1, 3])])
    return g


def test_onnx_subgraph_nesting_and_node_count_are_capped(tmp_path, monkeypatch):
    cond = numpy_helper.from_array(np.array(True), "cond")
    node = helper.make_node("If", ["cond"], ["z"], then_branch=_if_chain(3), else_branch=_if_chain(0))
    path = _save(_fc_model([node], out="z", inits=[cond]), tmp_path / "nested.onnx")
    monkeypatch.setattr(onnx_limits, "MAX_GRAPH_DEPTH", 3)
    with pytest.raises(ONNXFormatError, match="nested.onnx: subgraphs nested more than 3 deep"):
        load_model(path)
    monkeypatch.setattr(onnx_limits, "MAX_GRAPH_DEPTH", 16)
    monkeypatch.setattr(onnx_limits, "MAX_NODES", 5)
    with pytest.raises(ONNXFormatError, match="nested.onnx: more than 5 nodes"):
        load_model(path)


def _external_model(tmp_path, location, length=None):
    model = _fc_model()
    fw = model.graph.initializer[0]
    data = fw.raw_data
    (tmp_path / "weights.bin").write_bytes(data)
    fw.ClearField("raw_data")
    fw.data_location = TensorProto.EXTERNAL
    fw.external_data.add(key="location", value=location)
    if length is not None:
        fw.external_data.add(key="length", value=str(length))
    return _save(model, tmp_path / "ext.onnx")


def test_onnx_external_data_is_checked_before_it_is_read(tmp_path):
    ok = load_model(_external_model(tmp_path, "weights.bin", 192))[0]
    assert numpy_helper.to_array(ok.graph.initializer[0]).shape == (3, 16)
    with pytest.raises(ONNXFormatError, match="ext.onnx: initializer 'fw': shape .* needs 192 bytes of external "
                                              "data, 'weights.bin' gives offset 0, length 1000"):
        load_model(_external_model(tmp_path, "weights.bin", 1000))
    for location in ("../weights.bin", "/etc/passwd", "sub/../../x"):
        with pytest.raises(ONNXFormatError, match="ext.onnx: initializer 'fw': external data location"):
            load_model(_external_model(tmp_path, location))
    os.symlink("/etc/hostname", tmp_path / "link.bin")
    with pytest.raises(ONNXFormatError, match="is not a file inside"):
        load_model(_external_model(tmp_path, "link.bin"))


def test_onnx_backend_checks_tensors(tmp_path):
    import n2d2.onnx_backend

    t = TensorProto(name="bad", data_type=TensorProto.FLOAT, dims=[1 << 20, 1 << 20], raw_data=b"")
    with pytest.raises(ModelFileError, match="onnx_backend: model 'limits': initializer 'bad'"):
        n2d2.onnx_backend.prepare(_fc_model(extra_graph_inits=[t]))
