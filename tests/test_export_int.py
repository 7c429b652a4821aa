"""Integer C export (n2d2.export.export_c / export_cpp with nb_bits > 0): the program builds with
warnings as errors, its int32 outputs equal the Python integer simulation bit for bit in every
act_scaling_mode (8 and 4 bits, a residual Sum network too), its success rate is the
simulation's, it runs clean under AddressSanitizer + UBSan; layout, parameters, refusals."""
import os
import re
import shutil
import subprocess
import warnings

import numpy as np
import pytest

import n2d2
from n2d2.activation import Linear, Rectifier
from n2d2.cells import Conv, Fc, Sequence
from n2d2.codegen.compiler import find_compiler
from n2d2.export import export_c, export_cpp
from n2d2.quantization import SCALING_MODES
from n2d2.quantization.export import plan_arena
from n2d2.quantization.ptq import quantize_network, read_stimuli
from tests.conftest import residual_network, trained_lenet
from tests.test_export import _asan_available

NB = 150        # exported stimuli
needs_make = pytest.mark.skipif(shutil.which("make") is None or find_compiler() is None,
                                reason="needs make and a C compiler")


def _make(folder, *args):
    r = subprocess.run(["make", *args], cwd=folder, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, f"make {' '.join(args)}:\n{r.stdout}\n{r.stderr}"


def _run(folder, binary, *args):
    r = subprocess.run([os.path.join(folder, binary), *args], cwd=folder, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, f"{binary} ({r.returncode}):\n{r.stdout}\n{r.stderr}"
    return r.stdout


@pytest.fixture(scope="module")
def lenet():
    return trained_lenet(seed=2, steps=150, nb_test=NB)


def _export(dn, folder, mode, nb_bits=8, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if mode == "FLOAT_MULT":   # upstream's export_c refuses FLOAT_MULT; export_cpp's default
            return export_cpp(dn, nb_bits=nb_bits, calibration=100, export_folder_name=folder,
                              export_nb_stimuli_max=NB, **kw)
        return export_c(dn, nb_bits=nb_bits, calibration=100, act_scaling_mode=mode, export_folder_name=folder,
                        export_nb_stimuli_max=NB, **kw)


def _check_bit_exact(dn, folder, mode, nb_bits, x, y, **kw):
    folder = _export(dn, folder, mode, nb_bits, **kw)
    _make(folder)
    stdout = _run(folder, "bin/network_test", "-q", "-d", str(len(x)), "outputs.bin")
    assert f"Tested {len(x)} stimuli" in stdout and "Process time per stimulus" in stdout
    options = dict(kw)
    if options.pop("export_no_unsigned", False):
        options["no_unsigned"] = True
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        net = quantize_network(dn, nb_bits=nb_bits, calibration=100, act_scaling_mode=mode, **options)
    out = np.fromfile(os.path.join(folder, "outputs.bin"), dtype="<i4").reshape(len(x), -1)
    xq = net.quantize_input(x)
    ref = net.run(xq).reshape(len(x), -1)
    assert np.array_equal(out, ref), (mode, int(np.sum(out != ref)))
    # the exported stimuli are the simulation's quantized inputs
    dtype = ("<i" if net.input["signed"] else "<u") + ("1" if nb_bits <= 8 else "2")
    stim = np.fromfile(os.path.join(folder, "stimuli", "inputs.bin"), dtype=dtype).reshape(xq.shape)
    assert np.array_equal(stim, xq)
    rate = float(re.search(r"Success rate = ([0-9.]+)%", stdout).group(1))
    assert rate == pytest.approx(100 * net.accuracy(x, y), abs=0.006)
    return folder, net


@needs_make
@pytest.mark.parametrize("mode", SCALING_MODES)
def test_lenet_int8_program_equals_the_simulation(lenet, tmp_path, mode):
    _check_bit_exact(lenet["dn"], str(tmp_path / "e"), mode, 8, lenet["x"], lenet["y"])


@needs_make
@pytest.mark.parametrize("mode", ["FIXED_MULT32", "DOUBLE_SHIFT"])
def test_lenet_int4_per_output_program_equals_the_simulation(lenet, tmp_path, mode):
    _, net = _check_bit_exact(lenet["dn"], str(tmp_path / "e"), mode, 4, lenet["x"], lenet["y"],
                              act_rescale_per_output=True)
    assert max(int(np.abs(n["weights"]).max()) for n in net.nodes if "weights" in n) <= 7


@needs_make
def test_no_unsigned_program_equals_the_simulation(lenet, tmp_path):
    """export_no_unsigned: signed int8 input and activations everywhere (Q = 127)."""
    folder, net = _check_bit_exact(lenet["dn"], str(tmp_path / "signed"), "DOUBLE_SHIFT", 8, lenet["x"], lenet["y"],
                                   export_no_unsigned=True)
    assert net.input["signed"] and all(n["signed"] and n["Q"] == 127 for n in net.nodes)
    assert "typedef int8_t network_input_t;" in open(os.path.join(folder, "include", "network.h")).read()


@needs_make
def test_lenet_int16_program_equals_the_simulation(lenet, tmp_path):
    """16 bits: int16 weights and activations, int64 biases and accumulators."""
    folder, net = _check_bit_exact(lenet["dn"], str(tmp_path / "e16"), "FIXED_MULT32", 16, lenet["x"], lenet["y"])
    weights = open(os.path.join(folder, "include", "weights.h")).read()
    assert "static const int16_t n0_" in weights and "static const int64_t n0_conv1_b" in weights
    assert max(int(np.abs(n["weights"]).max()) for n in net.nodes if "weights" in n) > 127


def test_list_exportable_cell_cpp(capsys):
    n2d2.export.list_exportable_cell("CPP")
    rows = dict(line.split(" | ") for line in capsys.readouterr().out.splitlines()[2:])
    assert rows["Conv".ljust(len(next(iter(rows))))].strip() == "Yes (integer)"
    assert {k.strip(): v.strip() for k, v in rows.items()}["BatchNorm"] == "No"


@needs_make
def test_average_pool_program_equals_the_simulation(lenet, tmp_path):
    """Average pools (padded 3x3 stride 2, then global) through the integer path and the C program."""
    from n2d2.cells import Pool2d

    n2d2.global_variables.seed = 6
    dn = Sequence([Conv(1, 6, kernel_dims=[5, 5], activation=Rectifier()),
                   Pool2d(pool_dims=[3, 3], stride_dims=[2, 2], padding_dims=[1, 1], pooling="Average"),
                   Conv(6, 12, kernel_dims=[3, 3], activation=Linear()),
                   Pool2d(pool_dims=[12, 12], stride_dims=[1, 1], pooling="Average"),
                   Fc(12, 10, activation=Linear())]).to_deepnet_cell(lenet["provider"])
    for mode in ("SINGLE_SHIFT", "FLOAT_MULT"):
        _, net = _check_bit_exact(dn, str(tmp_path / mode), mode, 8, lenet["x"], lenet["y"])
        assert [n["attrs"]["pooling"] for n in net.nodes if n["op"] == "Pool"] == ["Average", "Average"]


@needs_make
def test_residual_sum_program_equals_the_simulation(lenet, tmp_path):
    provider = lenet["provider"]
    dn = residual_network(provider)
    for mode in ("FLOAT_MULT", "SINGLE_SHIFT"):
        _check_bit_exact(dn, str(tmp_path / mode), mode, 8, lenet["x"], lenet["y"])


@needs_make
@pytest.mark.skipif(not _asan_available(), reason="the C compiler has no working AddressSanitizer")
def test_int8_program_runs_clean_under_address_sanitizer(lenet, tmp_path):
    folder = _export(lenet["dn"], str(tmp_path / "asan"), "DOUBLE_SHIFT")
    _make(folder)
    _make(folder, "asan")
    _run(folder, "bin/network_test", "-q", "-n", "30", "-d", "30", "plain.bin")
    stdout = _run(folder, "bin/network_test_asan", "-q", "-n", "30", "-d", "30", "asan.bin")
    assert "Tested 30 stimuli" in stdout
    assert np.array_equal(np.fromfile(os.path.join(folder, "plain.bin"), "<i4"),
                          np.fromfile(os.path.join(folder, "asan.bin"), "<i4"))


def test_layout_parameters_and_default_folders(lenet, tmp_path):
    dn = lenet["dn"]
    folder = export_cpp(dn, nb_bits=8, calibration=50, export_nb_stimuli_max=0)
    assert folder == str(tmp_path / "export_CPP_int8")
    folder_c = export_c(dn, nb_bits=8, calibration=50, export_nb_stimuli_max=3)
    assert folder_c == str(tmp_path / "export_C_int8")
    for rel in ("Makefile", "README.md", "include/network.h", "include/weights.h", "src/network.c", "src/main.c",
                "stimuli/inputs.bin", "stimuli/labels.bin", "stimuli/stimuli.list"):
        assert os.path.isfile(os.path.join(folder_c, rel)), rel
    assert os.path.getsize(os.path.join(folder_c, "stimuli", "inputs.bin")) == 3 * 32 * 32
    source = open(os.path.join(folder_c, "src", "network.c")).read()
    header = open(os.path.join(folder_c, "include", "network.h")).read()
    weights = open(os.path.join(folder_c, "include", "weights.h")).read()
    for text in (source, weights, open(os.path.join(folder_c, "src", "main.c")).read()):
        assert not re.search(r"\b(malloc|calloc|realloc)\s*\(", text)
    assert "static uint8_t network_arena[NETWORK_ARENA_BYTES]" in source
    assert re.findall(r"/\* IR node '[^']*' \((\w+)\)", source) == ["Conv", "Pool", "Conv", "Pool", "Conv", "Fc",
                                                                      "Fc", "Softmax"]
    assert "typedef uint8_t network_input_t;" in header and "#define NETWORK_NB_BITS 8" in header
    # the weights are the simulation's integers, int8, and the biases int32
    net = quantize_network(dn, nb_bits=8, calibration=50, act_scaling_mode="SINGLE_SHIFT")
    arrays = dict(re.findall(r"static const (?:int8_t|int32_t|int64_t|double) (\w+)\[\d+\][^=]*= \{(.*?)\};",
                             weights, re.S))
    assert len(re.findall(r"static const int8_t n\d+_\w+_w\[", weights)) == 5
    for i, node in enumerate(net.nodes):
        if "weights" not in node:
            continue
        w = [k for k in arrays if k.startswith(f"n{i}_") and k.endswith("_w")][0]
        values = np.array([int(v) for v in arrays[w].replace("\n", "").split(",") if v.strip()])
        assert np.array_equal(values, node["weights"].reshape(-1)), node["name"]
    # planned arena: activations and kernel scratch (im2col) share it; smaller than all laid end to end
    from n2d2.quantization.export import _scratch_bytes

    shapes = {n["name"]: tuple(n["shape"]) for n in net.nodes}
    total = sum(int(np.prod(n["shape"])) + _scratch_bytes(n, shapes, 8) for n in net.nodes)
    arena = int(re.search(r"#define NETWORK_ARENA_BYTES (\d+)", header).group(1))
    assert max(_scratch_bytes(n, shapes, 8) for n in net.nodes) < arena < 0.8 * total
    # weights 4x smaller than float32 (int8 weights; int32 biases)
    assert net.weight_bytes() <= sum(4 * n["weights"].size for n in net.nodes if "weights" in n) / 3.9


def test_plan_arena_never_overlaps_live_tensors():
    rng = np.random.default_rng(0)
    order = [f"t{i}" for i in range(12)]
    sizes = {t: int(rng.integers(1, 500)) for t in order}
    last = {t: min(11, i + int(rng.integers(1, 4))) for i, t in enumerate(order)}
    offsets, top = plan_arena(order, sizes, last)
    for i, a in enumerate(order):
        for j, b in enumerate(order[:i]):
            if last[b] >= i:   # b still live when a is written
                assert offsets[a] + sizes[a] <= offsets[b] or offsets[b] + sizes[b] <= offsets[a]
    assert top >= max(offsets[t] + sizes[t] for t in order) and all(o % 16 == 0 for o in offsets.values())


def test_refusals(lenet, tmp_path):
    dn = lenet["dn"]
    with pytest.raises(RuntimeError, match="calibrate the network to export it in 8 bits"):
        export_c(dn, nb_bits=8)
    with pytest.raises(n2d2.error_handler.WrongValue, match="act_scaling_mode"):
        export_c(dn, nb_bits=8, calibration=10, act_scaling_mode="FLOAT_MULT")
    with pytest.raises(RuntimeError, match="qat_sat=True.*no QAT quantizer"):   # a float network (issue 13)
        export_cpp(dn, nb_bits=8, calibration=10, qat_sat=True)
    with pytest.raises(NotImplementedError, match="float CPP"):
        export_cpp(dn, nb_bits=-32)
    assert os.listdir(tmp_path) == []
    # calibration=0 reuses an earlier PTQ of the cell (upstream: PTQ then export)
    from n2d2.quantizer import PTQ

    try:
        PTQ(dn, 8, nb_sitmuli=50, act_scaling_mode="FIXED_MULT16")
        folder = export_cpp(dn, nb_bits=8, export_nb_stimuli_max=0)
        assert "(8 bits, FIXED_MULT16)" in open(os.path.join(folder, "include", "weights.h")).read()
    finally:
        dn._integer_network = None


@needs_make
def test_cli_export_nb_bits(tmp_path):
    """`n2d2 export RUN_DIR --nb-bits 8 --calibration N`: a small lenet run (with BatchNorm, folded
    before quantization) exported as int8; the program scores what the float run scored, +-2 pt."""
    from tests.test_cli import ACCURACY_LINE
    from tests.test_cli import _run as run_cli

    out_dir = tmp_path / "run"
    rc, out, err = run_cli(["train", "--model", "lenet", "--epochs", "1", "--batch-size", "32", "--limit-train",
                            "6000", "--limit-test", "200", "--learning-rate", "0.05", "--output", str(out_dir),
                            "--no-progress"], tmp_path,
                           timeout=600)
    assert rc == 0, err
    accuracy = float(ACCURACY_LINE.search(out).group(1))
    rc, out, err = run_cli(["export", str(out_dir), "--nb-bits", "8"], tmp_path)
    assert rc == 1 and "--calibration" in err and "Traceback" not in err
    rc, out, err = run_cli(["export", str(out_dir), "--nb-bits", "8", "--calibration", "200", "--nb-stimuli", "200",
                            "--act-scaling-mode", "DOUBLE_SHIFT"], tmp_path)
    assert rc == 0, err
    project = out_dir / "export_C_int8"
    assert "8-bit integer C project" in out and str(project) in out
    build = subprocess.run(["make", "-s", "-C", str(project), "run"], capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stderr
    m = re.search(r"Success rate = (\d+\.\d+)% \((\d+) scored\)", build.stdout)
    assert m and int(m.group(2)) == 200
    assert accuracy > 60 and abs(float(m.group(1)) - accuracy) <= 2.0, (build.stdout, accuracy)


@needs_make
def test_upstream_lenet_onnx_flow_ends_in_export_cpp(tmp_path, monkeypatch):
    """The end of upstream's python/examples/lenet_onnx.py: an ONNX LeNet loaded with
    DeepNetCell.load_from_ONNX, its Softmax '18' removed, then
    `n2d2.export.export_cpp(model, nb_bits=8, calibration=1)` -> export_CPP_int8/, which builds,
    runs and equals the simulation (FLOAT_MULT, upstream's export_cpp default)."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("onnx")

    class LeNet(torch.nn.Module):   # the layers of upstream's LeNet.onnx (section 5a of the reference)
        def __init__(self):
            super().__init__()
            self.c1, self.c2 = torch.nn.Conv2d(1, 4, 3), torch.nn.Conv2d(4, 4, 3)
            self.f1, self.f2 = torch.nn.Linear(576, 128), torch.nn.Linear(128, 10)

        def forward(self, x):
            x = torch.nn.functional.max_pool2d(torch.relu(self.c2(torch.relu(self.c1(x)))), 2)
            return torch.softmax(self.f2(torch.relu(self.f1(torch.flatten(x, 1)))), 1)

    torch.manual_seed(0)
    path = str(tmp_path / "LeNet.onnx")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(LeNet(), torch.zeros(1, 1, 28, 28), path, opset_version=13, dynamo=False)
    db = n2d2.database.MNIST(data_path=n2d2.datasets.mnist_path(), validation=0.1)
    provider = n2d2.provider.DataProvider(db, [28, 28, 1], batch_size=54)
    provider.add_transformation(n2d2.transform.Rescale(width=28, height=28))
    model = n2d2.cells.DeepNetCell.load_from_ONNX(provider, path)
    model.remove("18")
    monkeypatch.chdir(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        folder = n2d2.export.export_cpp(model, nb_bits=8, calibration=1, export_nb_stimuli_max=40)
    assert folder == str(tmp_path / "export_CPP_int8")
    _make(folder)
    _run(folder, "bin/network_test", "-q", "-d", "40", "outputs.bin")
    net = quantize_network(model, nb_bits=8, calibration=1)
    assert net.options["calibration"] == 54 and net.options["partition"] == "Validation"
    x, _ = read_stimuli(provider, "Test", 40)
    out = np.fromfile(os.path.join(folder, "outputs.bin"), dtype="<i4").reshape(40, -1)
    assert np.array_equal(out, net.run(net.quantize_input(x)).reshape(40, -1))


def _concat_onnx(tmp_path):
    """An ONNX network whose concatenations the importer turns into multi-input Conv and Fc nodes,
    one branch unsigned (ReLU) and one signed (Linear): each input keeps its own grid."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("onnx")

    class Branches(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.Conv2d(1, 3, 5, padding=2)
            self.c = torch.nn.Conv2d(7, 6, 3)
            self.f = torch.nn.Linear(6 * 13 * 13 + 3 * 7 * 7, 10)

        def forward(self, x):
            b = self.b(x)
            y = torch.cat([torch.relu(self.a(x)), b], 1)
            y = torch.nn.functional.max_pool2d(torch.relu(self.c(y)), 2)
            z = torch.nn.functional.max_pool2d(b, 4)
            return self.f(torch.cat([torch.flatten(y, 1), torch.flatten(z, 1)], 1))

    torch.manual_seed(1)
    path = str(tmp_path / "branches.onnx")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(Branches(), torch.zeros(1, 1, 28, 28), path, opset_version=13, dynamo=False)
    db = n2d2.database.MNIST(data_path=n2d2.datasets.mnist_path())
    provider = n2d2.provider.DataProvider(db, [28, 28, 1], batch_size=50)
    provider.add_transformation(n2d2.transform.Rescale(width=28, height=28))
    return n2d2.cells.DeepNetCell.load_from_ONNX(provider, path), provider


@needs_make
def test_multi_input_conv_and_fc_program_equals_the_simulation(tmp_path):
    from n2d2.quantization.ptq import inference_graph

    dn, provider = _concat_onnx(tmp_path)
    graph = inference_graph(dn)
    multi = {graph.op(n) for n in graph.nodes() if len(graph.inputs_of(n)) > 1}
    if multi != {"Conv", "Fc"}:
        pytest.skip(f"the ONNX importer did not produce multi-input Conv and Fc nodes ({multi})")
    x, y = read_stimuli(provider, "Test", NB)
    for mode in ("FLOAT_MULT", "SINGLE_SHIFT", "FIXED_MULT16"):
        _, net = _check_bit_exact(dn, str(tmp_path / mode), mode, 8, x, y)
        signs = {net.nodes[[n["name"] for n in net.nodes].index(s)]["signed"]
                 for n in net.nodes if n["op"] == "Conv" and len(n["inputs"]) > 1 for s in n["inputs"]}
        assert signs == {True, False}


@needs_make
def test_hostile_names_stay_in_comments(tmp_path):
    """The hostile ONNX network of tests/test_hostile_names.py exported as int8: every name
    reaches the generated C only inside comments (and README code spans); it builds and runs."""
    from n2d2.cells.deepnet_cell import DeepNetCell
    from tests.test_hostile_names import MARK, TOKEN, H, _code_tokens, assert_contained, onnx_model

    database = n2d2.database.Numpy()
    rng = np.random.default_rng(1)
    database.load([rng.random((1, 6, 6)).astype(np.float32) for _ in range(4)], [0, 1, 2, 0], partition="Test")
    provider = n2d2.provider.DataProvider(database, [6, 6, 1], batch_size=2)
    dn = DeepNetCell.load_from_ONNX(provider, onnx_model(str(tmp_path / "hostile.onnx")))
    dn._name = H("network", 5)
    folder = export_c(dn, nb_bits=8, calibration=-1, export_folder_name=str(tmp_path / "int"))
    for rel in ("src/network.c", "include/weights.h", "include/network.h", "src/main.c"):
        with open(os.path.join(folder, rel), encoding="ascii") as f:
            text = f.read()
        if rel == "src/main.c":
            assert not TOKEN.search(_code_tokens(text, cpp=False)), rel
        else:
            assert_contained(text, f"int8 export: {rel}")
    makefile = open(os.path.join(folder, "Makefile"), encoding="ascii").read().splitlines()
    hits = [i for i, line in enumerate(makefile) if MARK in line]
    assert hits and all(makefile[i].startswith("# ") and not makefile[i].endswith("\\") for i in hits)
    readme = [line for line in open(os.path.join(folder, "README.md"), encoding="ascii").read().splitlines()
              if MARK in line]
    assert readme and all(re.fullmatch(r"# Integer export of `[^`]*` .*|- `[^`]*` \(\w+\): .*", line)
                          for line in readme), readme
    _make(folder)
    _run(folder, "bin/network_test", "-q")
