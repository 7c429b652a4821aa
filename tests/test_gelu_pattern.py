"""The decomposed GELU (x * 0.5 * (1 + Erf(x / sqrt 2)): Div, Erf, Add, Mul, Mul, as PyTorch
exports nn.GELU below opset 20) becomes one Gelu activation: in the legalize pass of
`n2d2.onnx_backend` (then fused into its producer) and in `DeepNetCell.load_from_ONNX`. Outputs
against onnxruntime; the variants (0.5 first, Mul by 1/sqrt 2, commuted operands) and the
refusals (an intermediate read elsewhere, a wrong constant)."""
import collections

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
torch = pytest.importorskip("torch")

from torch import nn  # noqa: E402

from n2d2 import onnx_backend  # noqa: E402
from n2d2.codegen import numpy_exec  # noqa: E402
from n2d2.ir.passes import optimize  # noqa: E402
from n2d2.ir.passes.legalize_onnx import legalize_onnx  # noqa: E402
from tests.conftest import rel_err  # noqa: E402
from tests.test_onnx_import import W, make_model, torch_export  # noqa: E402


class ConvGelu(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1, self.act, self.c2 = nn.Conv2d(3, 8, 3, padding=1), nn.GELU(), nn.Conv2d(8, 4, 1)

    def forward(self, x):
        return self.c2(self.act(self.c1(x)))


def _ops(graph):
    return collections.Counter(graph.op(n) for n in graph.nodes())


def _ort(path, x):
    s = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    name = s.get_inputs()[0].name
    return np.concatenate([s.run(None, {name: x[i:i + 1]})[0] for i in range(len(x))]), name


@pytest.fixture(scope="module")
def gelu_model(tmp_path_factory):
    path = torch_export(ConvGelu(), (3, 6, 5), str(tmp_path_factory.mktemp("gelu") / "gelu.onnx"), 17)
    model = onnx.load(path)
    assert [n.op_type for n in model.graph.node if n.op_type in ("Erf", "Gelu")] == ["Erf"]   # decomposed
    return path


def test_legalize_makes_one_gelu_fused_into_the_conv(gelu_model):
    x = np.random.default_rng(41).standard_normal((2, 3, 6, 5)).astype(np.float32)
    ref, name = _ort(gelu_model, x)
    graph = onnx_backend.prepare(onnx.load(gelu_model)).build({name: x})
    legal = legalize_onnx(graph)
    ops = _ops(legal)
    assert ops["Activation"] == 1 and not any(op.startswith("Onnx") for op in ops), ops
    (act,) = [n for n in legal.nodes() if legal.op(n) == "Activation"]
    assert legal.attrs(act)["activation"][0] == "Gelu"
    assert rel_err(np.asarray(numpy_exec.run(legal, {name: x})[0]), ref) < 1e-5
    opt = optimize(legal)
    assert "Activation" not in _ops(opt)
    assert [opt.attrs(n)["activation"][0] for n in opt.nodes() if opt.op(n) == "Conv"
            and opt.attrs(n).get("activation")] == ["Gelu"]
    rep = onnx_backend.prepare(onnx.load(gelu_model), backend="c")
    assert rel_err(rep.run([x])[0], ref) < 1e-5


def test_load_from_onnx_gives_a_gelu_activation(gelu_model):
    from n2d2.cells.deepnet_cell import DeepNetCell
    from n2d2.cells.nn.onnx_node import OnnxNode
    from tests.test_onnx_import import provider_for, run_cell

    x = np.random.default_rng(42).standard_normal((2, 3, 6, 5)).astype(np.float32)
    ref, _ = _ort(gelu_model, x)
    for backend in ("numpy", "c"):
        dn = DeepNetCell.load_from_ONNX(provider_for((3, 6, 5), 2), gelu_model, backend=backend)
        cells = list(dn)
        assert not any(isinstance(c, OnnxNode) for c in cells), cells
        acts = [type(c.get_parameter("activation")).__name__ for c in cells if hasattr(c, "get_parameter")
                and c._config.get("activation") is not None]
        assert acts == ["Gelu"], acts
        assert rel_err(run_cell(dn, x).reshape(ref.shape), ref) < 1e-5


def _pattern(variant):
    """A Conv then a decomposed GELU (one of its export variants), then a Conv."""
    from onnx import helper

    node = helper.make_node
    div = node("Div", ["c", "sqrt2"], ["dv"]) if variant != "mul_inv" else node("Mul", ["inv", "c"], ["dv"])
    tail = {"torch": [node("Mul", ["c", "e1"], ["g0"]), node("Mul", ["g0", "half"], ["g"])],
            "half_first": [node("Mul", ["half", "c"], ["h"]), node("Mul", ["e1", "h"], ["g"])],
            "mul_inv": [node("Mul", ["e1", "c"], ["g0"]), node("Mul", ["half", "g0"], ["g"])],
            "wrong_half": [node("Mul", ["c", "e1"], ["g0"]), node("Mul", ["g0", "one"], ["g"])],
            "shared": [node("Mul", ["c", "e1"], ["g0"]), node("Mul", ["g0", "half"], ["g1"]),
                       node("Add", ["g1", "e"], ["g"])]}[variant]
    nodes = [node("Conv", ["x", "w"], ["c"]), div, node("Erf", ["dv"], ["e"]), node("Add", ["one", "e"], ["e1"])] \
        + tail + [node("Conv", ["g", "w2"], ["y"])]
    f = np.float32
    inits = {"w": W(4, 3, 1, 1), "w2": W(2, 4, 1, 1, seed=1), "sqrt2": np.array(np.sqrt(2), f),
             "inv": np.array(1 / np.sqrt(2), f), "one": np.array(1, f), "half": np.array(0.5, f)}
    inits = {k: v for k, v in inits.items() if any(k in n.input for n in nodes)}
    return make_model(nodes, inits, [3, 5, 4], 17)


@pytest.mark.parametrize("variant,fused", [("torch", True), ("half_first", True), ("mul_inv", True),
                                           ("wrong_half", False), ("shared", False)])
def test_variants_and_refusals(tmp_path, variant, fused):
    model = _pattern(variant)
    path = str(tmp_path / f"{variant}.onnx")
    onnx.save(model, path)
    x = np.random.default_rng(43).standard_normal((2, 3, 5, 4)).astype(np.float32)
    ref, name = _ort(path, x)
    legal = legalize_onnx(onnx_backend.prepare(model).build({name: x}))
    ops = _ops(legal)
    assert (ops["Activation"] == 1 and "OnnxErf" not in ops) if fused else ops["OnnxErf"] == 1, ops
    assert rel_err(np.asarray(numpy_exec.run(legal, {name: x})[0]), ref) < 1e-5


@pytest.mark.parametrize("variant,fused", [("torch", True), ("half_first", True), ("mul_inv", True),
                                           ("wrong_half", False), ("shared", False)])
def test_load_from_onnx_matches_the_same_pattern(tmp_path, variant, fused):
    """`load_from_ONNX` finds the decomposed GELU with the legalize pass's own pattern
    (`gelu_pattern` on a view of the ONNX graph): every variant the pass fuses is one Gelu
    activation (fused into the Conv), the refusals keep their Erf (an OnnxNode cell)."""
    from n2d2.cells.deepnet_cell import DeepNetCell
    from n2d2.cells.nn.onnx_node import OnnxNode
    from tests.test_onnx_import import provider_for, run_cell

    path = str(tmp_path / f"{variant}.onnx")
    onnx.save(_pattern(variant), path)
    x = np.random.default_rng(44).standard_normal((2, 3, 5, 4)).astype(np.float32)
    ref, _ = _ort(path, x)
    dn = DeepNetCell.load_from_ONNX(provider_for((3, 5, 4), 2), path)
    cells = list(dn)
    erf = [c for c in cells if isinstance(c, OnnxNode) and c.get_name() == "e"]
    gelu = [c.get_name() for c in cells if type(c._config.get("activation")).__name__ == "Gelu"]
    if fused:
        assert gelu == ["c"] and not erf, [(c.get_name(), c.get_type()) for c in cells]
        assert [c.get_name() for c in cells] == ["c", "y"]
    else:
        assert erf and not gelu
    assert rel_err(run_cell(dn, x).reshape(ref.shape), ref) < 1e-5
