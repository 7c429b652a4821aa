"""n2d2.export.export_c: the standalone C project builds with warnings as errors, runs, gives the
DeepNetCell's outputs and accuracy, is clean under valgrind and AddressSanitizer; refusals."""
import contextlib
import ctypes
import ctypes.util
import os
import re
import shutil
import subprocess

import numpy as np
import pytest

import n2d2
from n2d2.activation import Rectifier
from n2d2.cells import BatchNorm2d, Conv, Dropout, Fc, Pool2d, Sequence, Softmax
from n2d2.codegen import c_backend
from n2d2.codegen.compiler import find_compiler
from n2d2.error_handler import WrongInputType, WrongValue
from n2d2.export import ExportError, bake_connection_tables, c_export_graph, export_c
from tests.conftest import rel_err

NB_STIMULI = 300     # exported MNIST test stimuli (a multiple of the batch: run_test counts whole batches)
BATCH = 50

needs_make = pytest.mark.skipif(shutil.which("make") is None or find_compiler() is None,
                                reason="needs make and a C compiler")


@contextlib.contextmanager
def _one_openmp_thread():
    """Train with one OpenMP thread: on a loaded 2-core machine a 2-thread team spends its time
    waiting for a core (35x slower steps); restored afterwards."""
    path = ctypes.util.find_library("gomp")
    gomp = None
    if path:
        try:
            gomp = ctypes.CDLL(path)
        except OSError:
            gomp = None
    before = gomp.omp_get_max_threads() if gomp else None
    if gomp:
        gomp.omp_set_num_threads(1)
    try:
        yield
    finally:
        if gomp:
            gomp.omp_set_num_threads(before)


def _make(folder, *args, timeout=240):
    result = subprocess.run(["make", *args], cwd=folder, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"make {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
    return result


def _run(folder, binary, *args, prefix=(), timeout=240):
    result = subprocess.run([*prefix, os.path.join(folder, binary), *args], cwd=folder, capture_output=True,
                            text=True, timeout=timeout)
    assert result.returncode == 0, f"{binary} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
    return result.stdout


def _success_rate(stdout) -> float:
    return float(re.search(r"Success rate = ([0-9.]+)%", stdout).group(1))


def _stimuli(folder, chw):
    inputs = np.fromfile(os.path.join(folder, "stimuli", "inputs.bin"), dtype="<f4").reshape((-1,) + tuple(chw))
    labels = np.fromfile(os.path.join(folder, "stimuli", "labels.bin"), dtype="<i4")
    return inputs, labels


def _cell_outputs(dn, inputs, batch):
    """The DeepNetCell's test-mode outputs on `inputs`, `batch` at a time."""
    dn.test()
    outs = []
    for start in range(0, len(inputs), batch):
        x = n2d2.Tensor.from_numpy(np.ascontiguousarray(inputs[start:start + batch]))
        n2d2.provider.TensorPlaceholder(x)
        outs.append(dn(x).to_numpy().reshape(len(x.to_numpy()), -1))
    return np.concatenate(outs)


# -- LeNet (models/LeNet.ini) on MNIST -----------------------------------------------------------------
@pytest.fixture(scope="module")
def lenet(tmp_path_factory):
    """LeNet.ini trained 200 steps on MNIST, exported with NB_STIMULI test stimuli and built."""
    from n2d2.models import LeNetINI

    n2d2.global_variables.seed = 1
    database = n2d2.database.MNIST(data_path=n2d2.datasets.mnist_path())
    provider = n2d2.provider.DataProvider(database, [32, 32, 1], batch_size=BATCH)
    provider.add_transformation(n2d2.transform.Rescale(width=32, height=32))
    model = Sequence([LeNetINI(), Softmax(with_loss=True)])
    dn = model.to_deepnet_cell(provider)
    target = dn.get_target()
    with _one_openmp_thread():
        provider.set_partition("Learn")
        dn.learn()
        for _ in range(200):
            loss = target(dn(provider.read_random_batch()))
            loss.back_propagate()
            loss.update()
        success = dn.run_test(nb_test=NB_STIMULI)
    folder = str(tmp_path_factory.mktemp("lenet") / "export_C_float32")
    assert export_c(dn, export_folder_name=folder, export_nb_stimuli_max=NB_STIMULI) == folder
    if shutil.which("make") and find_compiler():
        _make(folder)
    return {"dn": dn, "provider": provider, "folder": folder, "success": success}


def test_project_layout_and_defaults(lenet, tmp_path):
    folder = lenet["folder"]
    for rel in ("Makefile", "README.md", "include/network.h", "include/weights.h", "src/network.c",
                "src/weights.c", "src/main.c", "stimuli/inputs.bin", "stimuli/labels.bin", "stimuli/stimuli.list"):
        assert os.path.isfile(os.path.join(folder, rel)), rel
    header = open(os.path.join(folder, "include", "network.h")).read()
    assert "void network_run(const float *input, float *output);" in header
    assert re.search(r"#define NETWORK_ARENA_BYTES \d+", header)
    assert "#define NETWORK_INPUT_SIZE 1024" in header and "#define NETWORK_OUTPUT_SIZE 10" in header
    source = open(os.path.join(folder, "src", "network.c")).read()
    assert "static uint8_t network_arena[NETWORK_ARENA_BYTES] __attribute__((aligned(64)));" in source
    for name in ("network.c", "main.c", "weights.c"):
        text = open(os.path.join(folder, "src", name)).read()
        assert not re.search(r"\b(malloc|calloc|realloc)\s*\(", text), name
    makefile = open(os.path.join(folder, "Makefile")).read()
    assert "-O3" in makefile and "-Wall -Wextra -Werror" in makefile and "asan:" in makefile
    kernels = re.findall(r"/\* IR node '[^']*' \((\w+)\)", source)
    assert kernels == ["Conv", "Pool", "Conv", "Pool", "Conv", "Fc", "Fc", "Softmax"]
    # the default folder name is N2D2's, relative to the working directory (conftest: tmp_path)
    export_c(lenet["dn"], export_nb_stimuli_max=0)
    assert os.path.isfile(tmp_path / "export_C_float32" / "src" / "network.c")
    assert os.path.getsize(tmp_path / "export_C_float32" / "stimuli" / "inputs.bin") == 0


def test_stimuli_are_the_test_partition_in_order(lenet):
    provider = lenet["provider"]
    inputs, labels = _stimuli(lenet["folder"], (1, 32, 32))
    assert inputs.shape == (NB_STIMULI, 1, 32, 32) and labels.shape == (NB_STIMULI,)
    provider.set_partition("Test")
    x = provider.read_batch(BATCH)
    assert np.array_equal(inputs[BATCH:2 * BATCH], x.to_numpy())
    assert np.array_equal(labels[BATCH:2 * BATCH], provider.get_labels().to_numpy().reshape(-1))
    assert len(open(os.path.join(lenet["folder"], "stimuli", "stimuli.list")).read().splitlines()) == NB_STIMULI


def test_weights_are_exact(lenet):
    graph = c_export_graph(lenet["dn"])
    text = open(os.path.join(lenet["folder"], "src", "weights.c")).read()
    arrays = re.findall(r"/\* (\S+) \[[0-9x]+\] \*/\nstatic const float \w+\[\d+\][^=]*= \{(.*?)\};", text, re.S)
    assert {name for name, _ in arrays} == {p for n in graph.nodes() for p in graph.node(n).params.values()}
    for name, body in arrays:
        values = np.array([float.fromhex(v.strip().rstrip("f")) for v in body.split(",") if v.strip()],
                          dtype=np.float64)
        expected = np.asarray(graph.params[name].array, dtype=np.float32).reshape(-1)
        assert np.array_equal(values.astype(np.float32), expected), name
        assert np.array_equal(values, expected.astype(np.float64)), name   # literals are exact float32


@needs_make
def test_lenet_outputs_and_accuracy_equal_the_deepnet_cell(lenet):
    folder, dn = lenet["folder"], lenet["dn"]
    stdout = _run(folder, "bin/network_test", "-q", "-d", str(NB_STIMULI), "outputs.bin")
    assert f"Tested {NB_STIMULI} stimuli" in stdout and "Process time per stimulus" in stdout
    inputs, labels = _stimuli(folder, (1, 32, 32))
    out = np.fromfile(os.path.join(folder, "outputs.bin"), dtype="<f4").reshape(NB_STIMULI, 10)
    with _one_openmp_thread():
        expected = _cell_outputs(dn, inputs, BATCH)
    assert rel_err(out, expected) < 1e-5
    assert np.array_equal(out.argmax(1), expected.argmax(1))
    # the accuracy the test program prints is run_test()'s on the same stimuli
    accuracy = 100.0 * float(np.mean(out.argmax(1) == labels))
    assert _success_rate(stdout) == pytest.approx(accuracy, abs=0.006)
    assert _success_rate(stdout) == pytest.approx(100.0 * lenet["success"], abs=0.006)
    assert lenet["success"] > 0.5   # trained: the comparison is not between two chance levels


@needs_make
@pytest.mark.skipif(shutil.which("valgrind") is None, reason="valgrind is not installed")
def test_lenet_runs_clean_under_valgrind(lenet):
    folder = lenet["folder"]
    # valgrind does not decode AVX-512: the same code for the host without it
    _make(folder, "BIN=bin/network_test_vg", "ARCHFLAGS=-march=native -mno-avx512f")
    _run(folder, "bin/network_test_vg", "-q", "-n", "3", "-d", "3", "outputs_vg.bin",
         prefix=("valgrind", "--error-exitcode=1", "--leak-check=full", "-q"))
    _run(folder, "bin/network_test", "-q", "-n", "3", "-d", "3", "outputs_3.bin")
    a = np.fromfile(os.path.join(folder, "outputs_vg.bin"), dtype="<f4")
    b = np.fromfile(os.path.join(folder, "outputs_3.bin"), dtype="<f4")
    assert a.size == 30 and rel_err(a, b) < 1e-5


def _asan_available() -> bool:
    cc = find_compiler()
    if cc is None:
        return False
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        src = os.path.join(d, "a.c")
        with open(src, "w") as f:
            f.write("int main(void) { return 0; }\n")
        exe = os.path.join(d, "a")
        try:
            ok = subprocess.run([cc, "-fsanitize=address", src, "-o", exe], capture_output=True).returncode == 0
            return ok and subprocess.run([exe], capture_output=True).returncode == 0
        except OSError:
            return False


@needs_make
@pytest.mark.skipif(not _asan_available(), reason="the C compiler has no working AddressSanitizer")
def test_lenet_runs_clean_under_address_sanitizer(lenet):
    folder = lenet["folder"]
    _make(folder, "asan")
    stdout = _run(folder, "bin/network_test_asan", "-q", "-n", "40", "-r", "2")
    assert "Tested 40 stimuli" in stdout


@needs_make
def test_profile_build_and_cpu_clock(lenet):
    folder = lenet["folder"]
    _make(folder, "BIN=bin/network_test_prof", "PROFILE=1")
    stdout = _run(folder, "bin/network_test_prof", "-q", "-c", "-n", "20", "-r", "2")
    assert "thread CPU time" in stdout and "Kernel profile over 40 calls" in stdout
    assert len(re.findall(r"^  \S+ \((Conv|Pool|Fc|Softmax)\) +[0-9.]+ +[0-9.]+%$", stdout, re.M)) == 8


# -- a ResNet-style graph: residual sums, BatchNorm (folded, and one that is not) ---------------------
@needs_make
def test_resnet_style_graph_exports_and_matches(tmp_path):
    from n2d2.models.resnet import BuildingBlock

    n2d2.global_variables.seed = 2
    rng = np.random.default_rng(0)
    database = n2d2.database.Numpy()
    xs = [rng.normal(size=(3, 16, 16)).astype(np.float32) for _ in range(12)]
    database.load(xs[:4], [0, 1, 2, 3], partition="Learn")
    database.load(xs[4:], [i % 5 for i in range(8)], partition="Test")
    provider = n2d2.provider.DataProvider(database, [16, 16, 3], batch_size=4)
    model = Sequence([
        Conv(3, 8, kernel_dims=[3, 3], padding_dims=[1, 1]), BatchNorm2d(8, activation=Rectifier()),
        BuildingBlock(8, 8), BuildingBlock(8, 16, stride=2),
        Pool2d(pool_dims=[2, 2], stride_dims=[2, 2], pooling="Max"),
        BatchNorm2d(16),                        # after a pool: not folded, runs its own kernel
        Fc(16 * 4 * 4, 5), Dropout(dropout=0.3), Softmax(with_loss=True),
    ])
    dn = model.to_deepnet_cell(provider)
    for cell in dn:
        if isinstance(cell, BatchNorm2d):
            c = cell._means.shape
            cell._means[...] = rng.normal(0.0, 0.3, c)
            cell._variances[...] = rng.uniform(0.5, 2.0, c)
            cell._scales[...] = rng.uniform(0.5, 1.5, c)
            cell._biases[...] = rng.normal(0.0, 0.2, c)
    graph = c_export_graph(dn)
    ops = [graph.op(n) for n in graph.nodes()]
    assert ops.count("BatchNorm") == 1 and "Dropout" not in ops
    traced = dn.get_graph()
    assert sum(traced.op(n) == "ElemWise" for n in traced.nodes()) == 2   # two residual sums
    folder = export_c(dn, export_folder_name="resnet_export")
    assert folder == str(tmp_path / "resnet_export")
    _make(folder)
    stdout = _run(folder, "bin/network_test", "-q", "-d", "8", "outputs.bin")
    assert "Tested 8 stimuli" in stdout
    inputs, labels = _stimuli(folder, (3, 16, 16))
    assert np.array_equal(inputs, np.stack(xs[4:])) and labels.tolist() == [i % 5 for i in range(8)]
    out = np.fromfile(os.path.join(folder, "outputs.bin"), dtype="<f4").reshape(8, 5)
    with _one_openmp_thread():
        expected = _cell_outputs(dn, inputs, 4)
    assert rel_err(out, expected) < 1e-5
    assert _success_rate(stdout) == pytest.approx(100.0 * np.mean(expected.argmax(1) == labels), abs=0.006)
    if _asan_available():   # padded convolutions read zero-padded planes: no read outside them
        _make(folder, "asan")
        assert "Tested 8 stimuli" in _run(folder, "bin/network_test_asan", "-q", "-n", "8", "-r", "1")


# -- wide convolutions with gathered panels (GATHER): stride 2 padded and in place, stride 1 padded -----
@needs_make
def test_strided_and_gathered_convolutions_export_and_match(tmp_path):
    """Inference lowers these to the wide forward with panels gathered from the output pixels
    (every other column for stride 2): the export matches the cell, and under AddressSanitizer the
    reads past the input (no padding: the windows of the input itself) stay in the buffers' slack."""
    n2d2.global_variables.seed = 3
    rng = np.random.default_rng(1)
    database = n2d2.database.Numpy()
    xs = [rng.normal(size=(5, 41, 39)).astype(np.float32) for _ in range(8)]
    database.load(xs[:2], [0, 1], partition="Learn")
    database.load(xs[2:], [i % 4 for i in range(6)], partition="Test")
    provider = n2d2.provider.DataProvider(database, [39, 41, 5], batch_size=2)
    model = Sequence([
        Conv(5, 24, kernel_dims=[3, 3], stride_dims=[2, 2], activation=Rectifier()),   # 20 x 19, in place
        Conv(24, 20, kernel_dims=[3, 3], padding_dims=[1, 1], stride_dims=[2, 2]),      # 10 x 10, padded
        # stride 1, junk columns; over PARALLEL_MIN_MACS (a smaller one takes the plane mode)
        Conv(20, 64, kernel_dims=[3, 3], padding_dims=[1, 1], activation=Rectifier()),
        Fc(64 * 10 * 10, 4), Softmax(with_loss=True),
    ])
    dn = model.to_deepnet_cell(provider)
    graph = c_export_graph(dn)
    convs = [n for n in graph.topological_order() if graph.op(n) == "Conv"]
    geometries = [c_backend._geometry(graph, n, False) for n in convs]
    assert [(g["MODE"], g["GATHER"], g["PADDED"]) for g in geometries] == [("wide", True, False), ("wide", True, True),
                                                                          ("wide", True, True)]
    folder = export_c(dn, export_folder_name="gather_export")
    _make(folder)
    stdout = _run(folder, "bin/network_test", "-q", "-d", "6", "outputs.bin")
    assert "Tested 6 stimuli" in stdout
    inputs, _ = _stimuli(folder, (5, 41, 39))
    out = np.fromfile(os.path.join(folder, "outputs.bin"), dtype="<f4").reshape(6, 4)
    with _one_openmp_thread():
        expected = _cell_outputs(dn, inputs, 2)
    assert rel_err(out, expected) < 1e-5
    if _asan_available():
        _make(folder, "asan")
        assert "Tested 6 stimuli" in _run(folder, "bin/network_test_asan", "-q", "-n", "6", "-r", "1")


# -- depthwise convolutions (the direct kernels: masked loads on AVX-512, padded copies elsewhere) ------
@needs_make
def test_depthwise_graph_exports_and_matches(tmp_path):
    """Stride 1 and 2, clipped ReLU fused, odd sizes and rows longer than one vector: the exported
    C (-Werror) gives the cell's outputs, and runs clean under AddressSanitizer."""
    from n2d2.cells import ConvDepthWise

    n2d2.global_variables.seed = 3
    rng = np.random.default_rng(1)
    database = n2d2.database.Numpy()
    xs = [rng.normal(size=(4, 13, 37)).astype(np.float32) for _ in range(8)]
    database.load(xs[:4], [0, 1, 2, 3], partition="Learn")
    database.load(xs[4:], [0, 1, 2, 3], partition="Test")
    provider = n2d2.provider.DataProvider(database, [37, 13, 4], batch_size=2)
    model = Sequence([
        ConvDepthWise(4, kernel_dims=[3, 3], padding_dims=[1, 1], activation=Rectifier(clipping=6.0)),
        ConvDepthWise(4, kernel_dims=[3, 3], stride_dims=[2, 2], padding_dims=[1, 1]),
        Fc(4 * 7 * 19, 4), Softmax(with_loss=True),
    ])
    dn = model.to_deepnet_cell(provider)
    folder = export_c(dn, export_folder_name="dw_export")
    _make(folder)
    stdout = _run(folder, "bin/network_test", "-q", "-d", "4", "outputs.bin")
    assert "Tested 4 stimuli" in stdout
    inputs, _ = _stimuli(folder, (4, 13, 37))
    out = np.fromfile(os.path.join(folder, "outputs.bin"), dtype="<f4").reshape(4, 4)
    with _one_openmp_thread():
        expected = _cell_outputs(dn, inputs, 2)
    assert rel_err(out, expected) < 1e-5
    if _asan_available():
        _make(folder, "asan")
        assert "Tested 4 stimuli" in _run(folder, "bin/network_test_asan", "-q", "-n", "4", "-r", "1")


@needs_make
def test_wide_panels_and_dot_tail_export_and_match(tmp_path):
    """A 1x1 convolution on a map over WIDE_PANEL_MIN_PIXELS (packed by panels, a ragged last strip)
    and one on a 7x7 map (its 49th pixel by dot products, n2d2_dot_cols): the exported C (-Werror)
    gives the cell's outputs, and runs clean under AddressSanitizer."""
    n2d2.global_variables.seed = 3
    rng = np.random.default_rng(1)
    database = n2d2.database.Numpy()
    xs = [rng.normal(size=(24, 101, 103)).astype(np.float32) for _ in range(6)]
    database.load(xs[:2], [0, 1], partition="Learn")
    database.load(xs[2:], [0, 1, 2, 3], partition="Test")
    provider = n2d2.provider.DataProvider(database, [103, 101, 24], batch_size=2)
    model = Sequence([
        Conv(24, 16, kernel_dims=[1, 1], activation=Rectifier(clipping=6.0)),   # 10403 = 325 x 32 + 3 pixels
        Conv(16, 20, kernel_dims=[3, 3], stride_dims=[16, 16]),                 # 7 x 7
        Conv(20, 36, kernel_dims=[1, 1], activation=Rectifier()),
        Fc(36 * 7 * 7, 4), Softmax(with_loss=True),
    ])
    dn = model.to_deepnet_cell(provider)
    graph = c_export_graph(dn)
    convs = [n for n in graph.topological_order() if graph.op(n) == "Conv"]
    geometries = [c_backend._geometry(graph, n, False) for n in convs]
    assert geometries[0]["MODE"] == "wide" and geometries[0]["PANEL"]
    assert geometries[2]["MODE"] == "wide" and geometries[2]["SMALL"] and geometries[2]["P"] == 49
    folder = export_c(dn, export_folder_name="panel_export")
    _make(folder)
    stdout = _run(folder, "bin/network_test", "-q", "-d", "4", "outputs.bin")
    assert "Tested 4 stimuli" in stdout
    inputs, _ = _stimuli(folder, (24, 101, 103))
    out = np.fromfile(os.path.join(folder, "outputs.bin"), dtype="<f4").reshape(4, 4)
    with _one_openmp_thread():
        expected = _cell_outputs(dn, inputs, 2)
    assert rel_err(out, expected) < 1e-5
    if _asan_available():
        _make(folder, "asan")
        assert "Tested 4 stimuli" in _run(folder, "bin/network_test_asan", "-q", "-n", "4", "-r", "1")


# -- rewrites ------------------------------------------------------------------------------------------
def test_bake_connection_tables_is_exact():
    from n2d2.codegen.numpy_exec import run
    from n2d2.models.lenet import conv2_mapping

    n2d2.global_variables.seed = 3
    rng = np.random.default_rng(1)
    data = rng.normal(size=(2, 6, 9, 9)).astype(np.float32)
    conv = Conv(6, 16, kernel_dims=[3, 3], mapping=conv2_mapping(), activation=Rectifier())
    model = Sequence([conv])
    database = n2d2.database.Numpy()
    database.load([d for d in data], [0, 1], partition="Test")
    provider = n2d2.provider.DataProvider(database, [9, 9, 6], batch_size=2)
    dn = model.to_deepnet_cell(provider)
    graph = dn.get_graph()
    baked = bake_connection_tables(graph)
    node = [n for n in baked.nodes() if baked.op(n) == "Conv"][0]
    assert baked.attrs(node)["mapping"] is None and graph.attrs(node)["mapping"] is not None
    before = run(graph, {graph.inputs[0]: data})[0]
    after = run(baked, {baked.inputs[0]: data})[0]
    assert rel_err(after, before) < 1e-6
    w = np.asarray(baked.params[baked.node(node).params["weights"]].array)
    table = np.asarray(graph.attrs(node)["mapping"], dtype=bool)
    assert np.all(w[~table.T] == 0.0)
    assert np.array_equal(np.asarray(graph.params[graph.node(node).params["weights"]].array), conv._weights)


# -- refusals ------------------------------------------------------------------------------------------
def _small_dn(extra=()):
    n2d2.global_variables.seed = 4
    rng = np.random.default_rng(2)
    database = n2d2.database.Numpy()
    database.load([rng.random((1, 8, 8)).astype(np.float32) for _ in range(4)], [0, 1, 0, 1], partition="Test")
    provider = n2d2.provider.DataProvider(database, [8, 8, 1], batch_size=2)
    model = Sequence([Conv(1, 4, kernel_dims=[3, 3], activation=Rectifier()), *extra,
                      Pool2d(pool_dims=[2, 2], stride_dims=[2, 2]), Fc(4 * 3 * 3 if not extra else 4 * 4 * 4, 2),
                      Softmax(with_loss=True)])
    return model.to_deepnet_cell(provider)


def _no_temporaries(parent):
    return [f for f in os.listdir(parent) if ".tmp-" in f or ".old-" in f] == []


def test_unsupported_node_is_named_and_nothing_is_written(tmp_path, monkeypatch):
    import n2d2.export as export

    dn = _small_dn()
    real = export._has_forward
    monkeypatch.setattr(export, "_has_forward", lambda op: op != "Pool" and real(op))
    with pytest.raises(ExportError, match=r"node 'Pool2d_\d+' \(op Pool\).*no C forward kernel"):
        export_c(dn, export_folder_name="out")
    assert os.listdir(tmp_path) == []


def test_a_real_op_without_kernel_is_refused(tmp_path):
    from n2d2.cells import Deconv
    from n2d2.codegen.c_backend import _has_macro

    if _has_macro("Deconv", "forward"):
        pytest.skip("Deconv has a C kernel now")
    dn = _small_dn(extra=[Deconv(4, 4, kernel_dims=[3, 3])])
    with pytest.raises(ExportError, match=r"node 'Deconv_\d+' \(op Deconv\)"):
        export_c(dn, export_folder_name="out")
    assert os.listdir(tmp_path) == []


def test_existing_folder_is_refused_unless_overwrite(tmp_path):
    dn = _small_dn()
    os.makedirs(tmp_path / "export_C_float32")
    (tmp_path / "export_C_float32" / "mine.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        export_c(dn)
    assert (tmp_path / "export_C_float32" / "mine.txt").read_text() == "keep me"
    folder = export_c(dn, overwrite=True)
    assert not os.path.exists(os.path.join(folder, "mine.txt"))
    assert os.path.isfile(os.path.join(folder, "src", "network.c"))
    assert _no_temporaries(tmp_path)


def test_a_failed_write_leaves_nothing(tmp_path, monkeypatch):
    import n2d2.export as export

    dn = _small_dn()

    def broken(*args):
        raise OSError("disk full")

    monkeypatch.setattr(export.os, "rename", broken)
    with pytest.raises(OSError, match="disk full"):
        export_c(dn)
    monkeypatch.undo()
    assert os.listdir(tmp_path) == []


def test_a_failed_overwrite_keeps_the_previous_export(tmp_path, monkeypatch):
    import n2d2.export as export

    dn = _small_dn()
    folder = export_c(dn)
    (tmp_path / "export_C_float32" / "mine.txt").write_text("previous")
    real = os.rename

    def rename(src, dst):
        if ".tmp-" in os.fspath(src):
            raise OSError("no space left")
        return real(src, dst)

    monkeypatch.setattr(export.os, "rename", rename)
    with pytest.raises(OSError, match="no space left"):
        export_c(dn, overwrite=True)
    monkeypatch.undo()
    assert (tmp_path / "export_C_float32" / "mine.txt").read_text() == "previous"
    assert os.path.isfile(os.path.join(folder, "src", "network.c")) and _no_temporaries(tmp_path)


def test_argument_checks(tmp_path):
    dn = _small_dn()
    with pytest.raises(RuntimeError, match="calibrate the network to export it in 8 bits integer"):
        export_c(dn, nb_bits=8)   # integer export needs calibration (tests/test_export_int.py)
    with pytest.raises(NotImplementedError, match="later feature"):
        export_c(dn, nb_bits=-64)
    with pytest.raises(WrongInputType):
        export_c(dn, nb_bits="8")
    with pytest.raises(WrongValue):
        export_c(dn, nb_bits=-8)
    with pytest.raises(WrongValue, match="act_scaling_mode"):
        export_c(dn, act_scaling_mode="FLOAT_MULT")
    with pytest.raises(WrongValue, match="wt_clipping_mode"):
        export_c(dn, wt_clipping_mode="MAX")
    with pytest.raises(WrongInputType, match="calibration"):
        export_c(dn, calibration=1.5)
    with pytest.raises(TypeError, match="unexpected keyword argument 'calib'"):
        export_c(dn, calib=5)
    with pytest.raises(WrongValue):
        export_c(dn, export_nb_stimuli_max=-2)
    with pytest.raises(WrongInputType, match="DeepNetCell"):
        export_c(Sequence([Fc(4, 2)]))
    with pytest.raises(WrongInputType, match="provider"):
        export_c(dn, provider="stimuli")
    assert os.listdir(tmp_path) == []
    # the reference's keywords are accepted (and change nothing in a float32 export)
    folder = export_c(dn, calibration=-1, act_clipping_mode="KL_DIVERGENCE", act_scaling_mode="SINGLE_SHIFT",
                      wt_round_mode="RINTF", qat_sat=True, export_no_unsigned=True, report=10,
                      export_folder_name="kw")
    assert os.path.isfile(os.path.join(folder, "src", "network.c"))
    with pytest.raises(RuntimeError, match="calibrate"):
        n2d2.export.export_cpp(dn)   # nb_bits=8, calibration=0: upstream's refusal


def test_export_without_provider_needs_no_stimuli(tmp_path):
    dn = _small_dn()
    dn.set_provider(None)
    with pytest.raises(ExportError, match="no provider"):
        export_c(dn)
    folder = export_c(dn, export_nb_stimuli_max=0)
    assert os.path.getsize(os.path.join(folder, "stimuli", "labels.bin")) == 0


def test_list_exportable_cell(capsys):
    n2d2.export.list_exportable_cell("C")
    out = capsys.readouterr().out
    assert re.search(r"Conv\s+\| Yes", out) and re.search(r"Fc\s+\| Yes", out)
    with pytest.raises(WrongValue):
        n2d2.export.list_exportable_cell("VHDL")
