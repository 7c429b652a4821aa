"""Names from model files built to break out of generated code (issue 11, findings 1, 2, 9a).

Graphs, an ONNX model and an INI file whose graph, node, tensor, initializer and section names
hold comment and string terminators, newlines, backslashes, trigraphs, shell syntax, random
unicode and a marker payload (`... */ int N2D2_PWNED = 1; /* ...`) go through every generator:
the in-process C backend (training and inference, checked against numpy), the CUDA source
(run by the host emulator against numpy; nvcc where there is one) and `export_c` (built by make
with -Werror, run, and rebuilt with PROFILE=1). In every generated C/CUDA file the marker must
occur, but never as a token outside a comment or a string literal (gcc strips the comments);
the Makefile and README keep it on their comment / table lines. All of it runs while
`render.record_renders` watches: every file under n2d2/templates must have been used, so a
template added later is covered by this test.
"""
import os
import re
import shutil
import subprocess
import warnings

import numpy as np
import pytest

import n2d2
from n2d2.codegen import render
from n2d2.codegen.compiler import find_compiler
from tests.test_c_backend import ACTIVATIONS, Net, _normal, check_inference, check_training

MARK = "N2D2_PWNED"
PAYLOADS = [
    f"x */ int {MARK} = 1; /* y",
    f"a\nint {MARK} = 2;\n",
    f"b ??/\nint {MARK} = 3;",
    f"c \\\nint {MARK} = 4; //",
    f'"); int {MARK} = 5; ("',
    f"$(touch /tmp/{MARK}) `id` | # \r\n\tall: ; {MARK} \\",
    f"\u00e9\U0001f600\u2028\x1b\x7f */ {MARK} /*",
    f"/*/ {MARK} */*",
]
TOKEN = re.compile(rf"(?<![A-Za-z0-9_]){MARK}(?![A-Za-z0-9_])")
TEMPLATES = os.path.join(os.path.dirname(n2d2.__file__), "templates")
needs_build = pytest.mark.skipif(find_compiler() is None or shutil.which("make") is None
                                 or shutil.which("g++") is None, reason="needs a C compiler, g++ and make")
pytestmark = needs_build


def H(tag: str, i: int = 0) -> str:
    """A hostile name: `tag` (unique), then one of the payloads."""
    return f"{tag} {PAYLOADS[i % len(PAYLOADS)]}"


def _code_tokens(source: str, cpp: bool) -> str:
    """`source` without its comments (gcc's own lexer: line splices, trigraphs) and literals."""
    cmd = ["g++", "-x", "c++", "-std=c++17"] if cpp else [find_compiler(), "-x", "c", "-std=c11", "-trigraphs"]
    r = subprocess.run(cmd + ["-fpreprocessed", "-E", "-P", "-"], input=source, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    return re.sub(r'"(?:[^"\\\n]|\\.)*"|\'(?:[^\'\\\n]|\\.)*\'', '""', r.stdout)


def assert_contained(source: str, what: str, cpp=False):
    assert MARK in source, f"{what}: the hostile names never reached the source (nothing was tested)"
    found = TOKEN.search(_code_tokens(source, cpp))
    assert found is None, f"{what}: {MARK} is code outside comments and literals"


def zoo(graph_name: str):
    """Every IR op with a C or CUDA kernel in one graph, every name hostile."""
    from n2d2.scaling import FloatingPointScaling

    net = Net(seed=5, name=graph_name)
    k = iter(range(1000))
    outs = []
    x = net.source((2, 3, 6, 6), H("input", next(k)))
    conv = net.op("Conv", [x], {"stride": (1, 1), "padding": (1, 1), "dilation": (1, 1), "sub_sample": (1, 1),
                                "groups": 1, "mapping": None, "activation": ACTIVATIONS["relu"]},
                  {"weights": _normal(net.rng, (4, 3, 3, 3), 0.3), "biases": _normal(net.rng, (4,))},
                  name=H("conv", next(k)))
    bn = net.op("BatchNorm", [conv], {"epsilon": 1e-5, "momentum": 0.1, "unbiased": False, "activation": None},
                {"scales": 1 + _normal(net.rng, (4,), 0.2), "biases": _normal(net.rng, (4,)),
                 "means": _normal(net.rng, (4,), 0.1), "variances": 1 + net.rng.random(4).astype(np.float32)},
                name=H("bn", next(k)))
    pool = net.op("Pool", [bn], {"pooling": "Max", "pool": (2, 2), "stride": (2, 2), "padding": (0, 0),
                                 "mapping": None}, name=H("pool", next(k)))
    fc = net.op("Fc", [pool], {"activation": ACTIVATIONS["tanh"]}, {"weights": _normal(net.rng, (5, 36), 0.2)},
                name=H("fc", next(k)))
    outs.append(net.op("Softmax", [fc], {"with_loss": False, "group_size": 0}, name=H("softmax", next(k))))
    outs.append(net.op("Deconv", [x], {"stride": (2, 2), "padding": (0, 0), "dilation": (1, 1), "groups": 1,
                                       "mapping": None, "activation": None},
                       {"weights": _normal(net.rng, (3, 2, 2, 2), 0.3)}, name=H("deconv", next(k))))
    cat = net.op("Concat", [x, conv], name=H("concat", next(k)))
    outs.append(net.op("Reshape", [cat], {"shape": (7, 36, 1), "activation": None}, name=H("reshape", next(k))))
    outs.append(net.op("Padding", [x], {"top": 1, "bot": 0, "left": 2, "right": 1}, name=H("padding", next(k))))
    outs.append(net.op("Transpose", [x], {"perm": (1, 0, 2, 3)}, name=H("transpose", next(k))))
    outs.append(net.op("Resize", [x], {"height": 7, "width": 5, "mode": "Bilinear", "align_corners": False},
                       name=H("resize", next(k))))
    outs.append(net.op("Scaling", [x], {"scaling": FloatingPointScaling([0.5, -1.5, 2.0])},
                       name=H("scaling", next(k))))
    outs.append(net.op("Activation", [x], {"activation": ACTIVATIONS["logistic"]}, name=H("activation", next(k))))
    outs.append(net.op("Dropout", [x], {"dropout": 0.0, "activation": None}, name=H("dropout", next(k))))
    outs.append(net.op("ElemWise", [x, x], {"operation": "Sum", "weights": [1.0, 0.5], "shifts": [0.0, 0.0],
                                           "activation": None}, name=H("elemwise", next(k))))
    outs.append(net.op("Epilogue", [x, x], {"steps": (("scale", 0.5), ("add", 1, 1.0, 0.0),
                                                      ("activation", ACTIVATIONS["relu"])), "activation": None},
                       name=H("epilogue", next(k))))
    outs.append(net.op("BatchNormEpilogue", [x, x],
                       {"epsilon": 1e-5, "momentum": 0.1, "unbiased": False,
                        "steps": (("add", 1, 1.0, 0.0), ("activation", ACTIVATIONS["relu"]))},
                       {"scales": 1 + _normal(net.rng, (3,), 0.2), "biases": _normal(net.rng, (3,)),
                        "means": _normal(net.rng, (3,), 0.1), "variances": 1 + net.rng.random(3).astype(np.float32)},
                       name=H("bn epilogue", next(k))))
    outs.append(net.op("LRN", [x], {"size": 4, "alpha": 0.5, "beta": 0.75, "bias": 1.0, "activation": None},
                       name=H("lrn", next(k))))
    col = net.op("OnnxSlice", [x], {"starts": [-1], "ends": [-2], "axes": [3], "steps": [-1]}, name=H("slice", next(k)))
    for op in ("OnnxAdd", "OnnxSub", "OnnxMul", "OnnxDiv"):     # broadcasting (templates/c/onnx.c.j2)
        outs.append(net.op(op, [x, col], name=H(op, next(k))))
    corner = net.op("OnnxSlice", [x], {"starts": [0, 0, 0], "ends": [1, 1, 1], "axes": [0, 1, 2]}, name=H("c", next(k)))
    scale = net.op("OnnxReshape", [corner], {"shape": (6,)}, name=H("onnx reshape", next(k)))
    outs.append(net.op("OnnxLayerNormalization", [x, scale, scale], {"axis": 3, "epsilon": 1e-5},
                       name=H("ln", next(k))))
    outs.append(net.op("OnnxTranspose", [x], {"perm": (0, 3, 2, 1)}, name=H("onnx transpose", next(k))))
    xt = net.op("OnnxTranspose", [x], {"perm": (0, 1, 3, 2)}, name=H("onnx t", next(k)))
    outs.append(net.op("OnnxMatMul", [x, xt], name=H("onnx matmul", next(k))))
    outs.append(net.op("OnnxErf", [x], name=H("onnx erf", next(k))))
    outs.append(net.op("OnnxNode", [x], {"op": "OnnxMul", "attrs": {}, "slots": (("x", 0), ("p", "in0", "float32")),
                                         "shapes": ((3, 6, 6),), "batch_keys": ()},
                       {"in0": _normal(net.rng, (3, 1, 1))}, name=H("onnx node", next(k))))
    # QAT: a Conv with fake-quantized weights (SAT, scaled) and an LSQ activation quantizer
    sat = ("SAT", (("apply_quantization", True), ("apply_scaling", True), ("quant_mode", "Default"), ("range", 15)))
    qconv = net.op("Conv", [x], {"stride": (1, 1), "padding": (0, 0), "dilation": (1, 1), "sub_sample": (1, 1),
                                 "groups": 1, "mapping": None, "activation": None, "weight_quantizer": sat},
                   {"weights": _normal(net.rng, (2, 3, 3, 3), 0.3)}, name=H("qat conv", next(k)))
    outs.append(net.op("FakeQuantize", [qconv], {"quantizer": ("LSQ", (("range", 15),))},
                       {"quant_param": np.array([0.2], dtype=np.float32)}, name=H("fake quantize", next(k))))
    return net.output(*outs)


def onnx_model(path):
    """Conv, Relu, MaxPool, Flatten, Gemm, Softmax; every ONNX name (graph, nodes, tensors,
    initializers) hostile."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    t = {n: H(n, i) for i, n in enumerate(["x", "w", "b", "conv", "relu", "pool", "flat", "fw", "fb", "fc", "y"])}
    inits = [numpy_helper.from_array(a, t[n]) for n, a in [
        ("w", (rng.standard_normal((4, 1, 3, 3)) * 0.3).astype(np.float32)),
        ("b", rng.standard_normal(4).astype(np.float32)),
        ("fw", (rng.standard_normal((3, 36)) * 0.2).astype(np.float32)),
        ("fb", rng.standard_normal(3).astype(np.float32))]]
    nodes = [helper.make_node("Conv", [t["x"], t["w"], t["b"]], [t["conv"]], name=H("node conv", 1),
                              kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", [t["conv"]], [t["relu"]], name=H("node relu", 2)),
             helper.make_node("MaxPool", [t["relu"]], [t["pool"]], name=H("node pool", 3), kernel_shape=[2, 2],
                              strides=[2, 2]),
             helper.make_node("Flatten", [t["pool"]], [t["flat"]], name=H("node flatten", 4)),
             helper.make_node("Gemm", [t["flat"], t["fw"], t["fb"]], [t["fc"]], name=H("node gemm", 5), transB=1),
             helper.make_node("Softmax", [t["fc"]], [t["y"]], name=H("node softmax", 6), axis=1)]
    graph = helper.make_graph(nodes, H("graph", 7) + "g" * 300,
                              [helper.make_tensor_value_info(t["x"], TensorProto.FLOAT, ["N", 1, 6, 6])],
                              [helper.make_tensor_value_info(t["y"], TensorProto.FLOAT, ["N", 3])], inits)
    opsets = [helper.make_opsetid("", 13)]
    model = helper.make_model(graph, opset_imports=opsets)
    model.ir_version = helper.find_min_ir_version_for(opsets)
    onnx.save(model, path)
    return path


INI_SECTIONS = [f"c1 */ int {MARK} /* y", f"p2 (touch x) `id` \\ ??/ ' \u00e9\U0001f600 {MARK} \\ x",
                f"f3 {{}} HOME {MARK} ??/"]     # what the INI parser accepts: no ; # = , [ ] " $( or newline


def ini_file(path):
    text = "[sp]\nSizeX=8\nSizeY=8\nNbChannels=1\nBatchSize=2\n"
    text += f"[{INI_SECTIONS[0]}]\nInput=sp\nType=Conv\nKernelDims=3 3\nNbOutputs=4\nActivationFunction=Rectifier\n"
    text += f"[{INI_SECTIONS[1]}]\nInput={INI_SECTIONS[0]}\nType=Pool\nPoolDims=2 2\nStride=2\nNbOutputs=4\n"
    text += f"Pooling=Max\n[{INI_SECTIONS[2]}]\nInput={INI_SECTIONS[1]}\nType=Fc\nNbOutputs=3\n"
    path.write_text(text, encoding="utf-8")
    return str(path)


def _make(folder, *args):
    r = subprocess.run(["make", *args], cwd=folder, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, f"make {' '.join(args)} failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"


def _run(folder, binary, *args):
    r = subprocess.run([os.path.join(folder, binary), *args], cwd=folder, capture_output=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    return r.stdout


def int_network(provider):
    """A network of hostile cell names whose int8 export renders every integer template: a standalone
    Activation, an ElemWise Sum, a Concat, a multi-input Conv, a max Pool, a Reshape, an Fc and a Softmax."""
    from n2d2.activation import Linear, Rectifier
    from n2d2.cells import Activation, Conv, ElemWise, Fc, Pool2d, Reshape, Sequence, Softmax

    k = iter(range(100))
    c1 = Conv(1, 3, [3, 3], activation=Linear(), name=H("conv", next(k)))
    act = Activation(activation=Rectifier(), name=H("act", next(k)))
    c2 = Conv(3, 3, [1, 1], activation=Linear(), name=H("conv", next(k)))
    add = ElemWise(operation="Sum", name=H("sum", next(k)))
    cat = Activation(activation=Linear(), name=H("concat", next(k)))     # several inputs: a Concat
    c3 = Conv(6, 2, [1, 1], activation=Rectifier(), name=H("conv", next(k)))
    pool = Pool2d(pool_dims=[2, 2], stride_dims=[2, 2], pooling="Max", name=H("pool", next(k)))
    reshape = Reshape([2 * 2 * 2, 1, 1], name=H("reshape", next(k)))
    fc = Fc(8, 3, activation=Linear(), name=H("fc", next(k)))
    softmax = Softmax(with_loss=True, name=H("softmax", next(k)))

    class Net(Sequence):
        def __call__(self, x):
            a = c1(x)
            s = add(n2d2.Interface([act(a), c2(a)]))
            return softmax(fc(reshape(pool(c3(cat(n2d2.Interface([s, a])))))))

    dn = Net([c1, act, c2, add, cat, c3, pool, reshape, fc, softmax]).to_deepnet_cell(provider)
    dn._name = H("int network", 2)
    return dn


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    """Everything generated from hostile names, while recording the templates used."""
    from n2d2.cells.deepnet_cell import DeepNetCell
    from n2d2.codegen.cuda_backend import compile_check, find_nvcc
    from n2d2.export import export_c, export_cpp_stm32
    from n2d2.frontends.ini import IniWarning, load_ini
    from tests.test_cuda_backend import EMU, run_training

    tmp = tmp_path_factory.mktemp("hostile")
    out = {}
    cwd = os.getcwd()
    with render.record_renders() as seen:
        long_name = H("graph", 3) + "g" * 300          # finding 9a: must not become a 300-char file name
        out["c training"] = check_training(zoo(long_name)).source
        out["c inference"] = check_inference(zoo(long_name)).source
        out["cuda training"] = run_training(zoo(long_name).g, EMU, steps=1).source
        if find_nvcc() is not None:
            compile_check(out["cuda training"])

        database = n2d2.database.Numpy()
        rng = np.random.default_rng(1)
        database.load([rng.random((1, 6, 6)).astype(np.float32) for _ in range(4)], [0, 1, 2, 0], partition="Test")
        provider = n2d2.provider.DataProvider(database, [6, 6, 1], batch_size=2)
        dn = DeepNetCell.load_from_ONNX(provider, onnx_model(str(tmp / "hostile.onnx")))
        dn._name = H("network", 5)                  # the network name reaches the Makefile and README
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", IniWarning)
            ini_dn = load_ini(ini_file(tmp / "hostile.ini"), backend="numpy")
        ini_dn._name = H("ini network", 1)
        try:
            os.chdir(tmp)
            out["onnx export"] = export_c(dn, export_folder_name="onnx_export")
            out["ini export"] = export_c(ini_dn, export_nb_stimuli_max=0, export_folder_name="ini_export")
            # the integer export's templates, every one (tests/test_export_int.py checks the ONNX one too)
            out["int8 export"] = export_c(int_network(provider), nb_bits=8, calibration=-1,
                                          export_folder_name="int8_export")
            out["stm32 export"] = export_cpp_stm32(int_network(provider), nb_bits=8, calibration=-1,
                                                   export_folder_name="stm32_export")
        finally:
            os.chdir(cwd)
    out["onnx graph"] = dn.get_graph()
    out["rendered"] = seen
    return out


def test_c_backend_program_contains_the_names(generated):
    assert_contained(generated["c training"], "C backend, training")
    assert_contained(generated["c inference"], "C backend, inference")


def test_cuda_source_contains_the_names(generated):
    assert_contained(generated["cuda training"], "CUDA program", cpp=True)


def test_the_onnx_names_reached_the_graph(generated):
    g = generated["onnx graph"]
    assert any(MARK in n for n in g.nodes()) and any(MARK in p for p in g.params) and MARK in g.name


@pytest.mark.parametrize("which", ["onnx export", "ini export"])
def test_export_builds_runs_and_contains_the_names(generated, which):
    folder = generated[which]
    for rel in ("src/network.c", "src/weights.c", "src/main.c", "include/network.h", "include/weights.h"):
        with open(os.path.join(folder, rel), encoding="ascii") as f:     # generated C is ASCII only
            text = f.read()
        if rel in ("src/network.c", "src/weights.c", "include/network.h"):
            assert_contained(text, f"{which}: {rel}")
        else:
            assert not TOKEN.search(_code_tokens(text, cpp=False)), rel
    with open(os.path.join(folder, "Makefile"), encoding="ascii") as f:
        makefile = f.read().splitlines()
    hits = [i for i, line in enumerate(makefile) if MARK in line]
    assert hits and all(makefile[i].startswith("# ") and not makefile[i].endswith("\\") for i in hits)
    with open(os.path.join(folder, "README.md"), encoding="ascii") as f:
        readme = [line for line in f.read().splitlines() if MARK in line]
    assert readme and all(re.fullmatch(r"# Exported network `[^`]*` .*|\| \d+ \| `[^`|]*` \| \w+ \|", line)
                          for line in readme), readme
    _make(folder)
    _run(folder, "bin/network_test", "-q")
    _make(folder, "BIN=bin/network_test_prof", "PROFILE=1")       # the NETWORK_PROFILE string literals
    profile = _run(folder, "bin/network_test_prof", "-q")
    assert MARK.encode() in profile and b"Kernel profile" in profile


def test_int8_export_builds_runs_and_keeps_the_names_in_comments(generated):
    folder = generated["int8 export"]
    for rel in ("src/network.c", "include/network.h", "include/weights.h"):
        with open(os.path.join(folder, rel), encoding="ascii") as f:
            assert_contained(f.read(), f"int8 export: {rel}")
    _make(folder)
    assert b"Success rate" in _run(folder, "bin/network_test", "-q")


def test_stm32_export_keeps_the_names_in_comments(generated):
    folder = generated["stm32 export"]
    for rel in ("src/network.c", "include/network.h"):
        with open(os.path.join(folder, rel), encoding="ascii") as f:
            assert_contained(f.read(), f"stm32 export: {rel}")
    for rel in ("src/main.c", "src/startup.c"):
        with open(os.path.join(folder, rel), encoding="ascii") as f:
            assert not TOKEN.search(_code_tokens(f.read(), cpp=False)), rel
    with open(os.path.join(folder, "Makefile"), encoding="ascii") as f:
        makefile = f.read().splitlines()
    assert all(line.startswith("# ") and not line.endswith("\\") for line in makefile if MARK in line)


def test_every_template_was_rendered_with_hostile_names(generated):
    files = {os.path.relpath(os.path.join(root, f), TEMPLATES).replace(os.sep, "/")
             for root, _, fs in os.walk(TEMPLATES) for f in fs if not f.endswith((".pyc", ".pyo"))}
    assert files, TEMPLATES
    missing = sorted(files - generated["rendered"])
    assert not missing, f"templates not exercised by the hostile-names run (extend zoo()): {missing}"


NAME_FIELDS = re.compile(r"\b(?:graph_name|network_name)\b|\.(?:node|nodes|of|label|labels)\b")
SANITISED = re.compile(r"\|\s*(?:c_comment|c_string|md_code|cident|length)\b"
                       r"|map\(\s*[\"'](?:c_comment|c_string|md_code|cident)")


def test_templates_print_model_names_only_through_a_sanitiser():
    """Static half of the discipline: a `{{ }}` that prints a graph/network/node name names a
    sanitiser filter (the run above catches what this pattern cannot see)."""
    raw = []
    for root, _, fs in os.walk(TEMPLATES):
        for f in fs:
            with open(os.path.join(root, f), encoding="utf-8") as fh:
                for number, line in enumerate(fh, 1):
                    for expr in re.findall(r"{{(.*?)}}", line):
                        if NAME_FIELDS.search(expr) and not SANITISED.search(expr):
                            raw.append(f"{os.path.relpath(os.path.join(root, f), TEMPLATES)}:{number}: {{{{{expr}}}}}")
    assert not raw, "names printed raw:\n" + "\n".join(raw)
