"""C kernels of OnnxMatMul and OnnxErf (templates/c/onnx.c.j2, KINDs matmul and erf), and the
OnnxNode wrapper running them: forward and every gradient against the numpy reference on fresh
random inputs (weights shared by a batch, batched activations on both sides, batch broadcasting
both ways, 1-D operands, N and K not multiples of the SGEMM tile, the thread team), NaN / inf as
the reference; their CUDA kernels on the host emulator (and nvcc), with the stated refusal of a
MatMul backward whose operand several batch products share; the ConvNeXt block imported, trained
and exported with them."""
import numpy as np
import pytest

from tests.conftest import rel_err
from tests.test_onnx_kernels import check_standalone_export

c_backend = pytest.importorskip("n2d2.codegen.c_backend")
pytestmark = pytest.mark.skipif(not c_backend.available(), reason="needs a C compiler")


def _const(net, array, name="const"):
    return net.op("OnnxConstant", [], {}, {"value": np.asarray(array, np.float32)}, name=name)


def _reshape(net, x, shape):
    return net.op("OnnxReshape", [x], {"shape": shape})


def _matmul_cases(net):
    """(node, what): products of a [2, 3, 4, 5] activation (and views of it) by weights and
    activations."""
    rng = net.rng
    x = net.source((2, 3, 4, 5), "x")            # [N, C, H, W]
    y = net.source((2, 3, 5, 4), "y")
    cases = [
        (x, _const(net, rng.standard_normal((5, 7)), "w57"), "[2,3,4,5] x [5,7] (shared weight)"),
        (x, _const(net, rng.standard_normal((5, 37)), "w537"), "N = 37 (one full strip and a ragged one)"),
        (x, _const(net, rng.standard_normal((5, 64)), "w564"), "N = 64 (full strips only)"),
        (x, y, "[2,3,4,5] x [2,3,5,4] (both batched)"),
        (x, _const(net, rng.standard_normal((3, 5, 6)), "w356"), "[2,3,4,5] x [3,5,6] (B broadcast over N)"),
        (_const(net, rng.standard_normal((4, 3)), "a43"), _reshape(net, x, (2, 3, 20)),
         "[4,3] x [2,3,20] (A shared)"),
        (_reshape(net, x, (2, 1, 4, 15)), _const(net, rng.standard_normal((3, 15, 2)), "b3"),
         "[2,1,4,15] x [3,15,2] (both broadcast)"),
        (x, _const(net, rng.standard_normal(5), "v5"), "[2,3,4,5] x [5] (1-D B)"),
        (_const(net, rng.standard_normal(5), "v5a"), y, "[5] x [2,3,5,4] (1-D A)"),
    ]
    return [(net.op("OnnxMatMul", [a, b], {}), what) for a, b, what in cases]


def test_matmul_and_erf_forward_and_backward_match_the_reference():
    from tests.test_c_backend import Net, check_training

    net = Net(seed=31, name="matmul")
    cases = _matmul_cases(net)
    x = net.source((2, 3, 4, 5), "xe")
    erf = net.op("OnnxErf", [x], {})
    nodes = [n for n, _ in cases] + [erf]
    net.output(*nodes)
    p = check_training(net, tol=2e-5, expect_c=nodes)
    for node, what in cases:
        assert p.where[f"grad:{node}"] == "c", what
        assert p.geometry[node]["KIND"] == "matmul", what
    assert p.where[f"grad:{erf}"] == "c" and p.geometry[erf]["KIND"] == "erf"
    g = p.geometry[cases[0][0]]
    assert g["BATCH"] == 1 and g["M"] == 24          # a shared weight: one product of N C H rows
    assert p.geometry[cases[3][0]]["BATCH"] == 6


def test_matmul_geometry():
    from n2d2.ir.tensor_ops import _matmul_geometry

    g = _matmul_geometry("m", [(2, 3, 4, 5), (3, 5, 6)], (2, 3, 4, 6))
    assert (g["BATCH"], g["M"], g["K"], g["N"], g["ABC"], g["BBC"]) == (6, 4, 5, 6, False, True)
    assert g["BAX"] == [(3, 2, 60, 0), (1, 3, 20, 30)]
    g = _matmul_geometry("m", [(7,), (7,)], ())
    assert (g["BATCH"], g["M"], g["K"], g["N"]) == (1, 1, 7, 1)
    assert "empty" in _matmul_geometry("m", [(2, 0, 5), (5, 3)], (2, 0, 3)).reason


def test_large_matmul_and_erf_use_the_thread_team():
    from tests.test_c_backend import Net, check_training

    net = Net(seed=32, name="mmlarge")
    x = net.source((2, 96, 16, 16), "x")
    t = net.op("OnnxTranspose", [x], {"perm": (0, 2, 3, 1)})
    w = _const(net, net.rng.standard_normal((96, 100)) / 10, "w")     # N = 100: a ragged strip
    m = net.op("OnnxMatMul", [t, w], {})
    e = net.op("OnnxErf", [m], {})
    net.output(e)
    p = check_training(net, tol=2e-5, expect_c=[m, e])
    assert p.geometry[m]["PAR"] and p.geometry[e]["PAR"] and p.geometry[m]["M"] == 512


def test_nan_and_inf_as_in_the_reference():
    from n2d2.codegen import numpy_exec
    from tests.test_c_backend import Net

    net = Net(seed=33, name="mmnan")
    x = net.input((2, 3, 4, 5))
    m = net.op("OnnxMatMul", [x, _const(net, net.rng.standard_normal((5, 40)), "w")], {})
    e = net.op("OnnxErf", [x], {})
    net.output(m, e)
    net.feeds[x][0, 1, 3, 2] = np.nan
    net.feeds[x][1, 0, 1, 1] = np.inf
    net.feeds[x][1, 2, 1, 1] = -np.inf
    ref = numpy_exec.run(net.g, net.feeds)
    p = c_backend.CProgram(net.g, [net.g.topological_order()])
    p.feed(net.feeds)
    p.run_phase(0)
    outs = [p.view(t) for t in net.g.outputs]
    for node, out, r in zip((m, e), outs, ref):
        assert p.where[node] == "c"
        assert np.array_equal(np.isnan(out), np.isnan(r)), node
        assert np.isnan(out).any(), node
        inf = np.isinf(r)
        assert np.array_equal(out[inf], r[inf]), node
        fin = np.isfinite(r)
        assert rel_err(out[fin], r[fin]) < 1e-5, node
    assert outs[1][1, 0, 1, 1] == 1.0 and outs[1][1, 2, 1, 1] == -1.0   # erf(+-inf), as the reference


def test_wrapped_matmul_and_erf_run_in_c_and_their_cuda_lowering():
    from n2d2.ir.tensor_ops import OnnxMatMul, OnnxNode
    from tests.test_c_backend import Net, check_training

    net = Net(seed=34, name="mmnode")
    x = net.source((2, 3, 4, 5), "x")
    w = net.rng.standard_normal((5, 33)).astype(np.float32)
    mm = net.op("OnnxNode", [x], {"op": "OnnxMatMul", "attrs": {}, "slots": (("x", 0), ("p", "weights", "float32")),
                                  "shapes": ((3, 4, 5),), "batch_keys": ()}, {"weights": w})
    er = net.op("OnnxNode", [x], {"op": "OnnxErf", "attrs": {}, "slots": (("x", 0),), "shapes": ((3, 4, 5),),
                                  "batch_keys": ()})
    net.output(mm, er)
    p = check_training(net, tol=2e-5, expect_c=[mm, er])
    assert p.where[f"grad:{mm}"] == "c" and p.geometry[mm]["KIND"] == "matmul"
    assert p.where[f"grad:{er}"] == "c" and p.geometry[er]["KIND"] == "erf"
    assert OnnxNode().lower_cuda(net.g, er, False)["KIND"] == "erf"
    assert OnnxNode().lower_cuda(net.g, mm, True)["KIND"] == "matmul"
    assert OnnxMatMul().cuda_refusal(dict(ABC=False, BBC=True), True)
    assert OnnxMatMul().cuda_refusal(dict(ABC=False, BBC=True), False) is None


def test_cuda_matmul_and_erf_match_the_reference_on_the_emulator():
    """MatMul's and Erf's CUDA kernels (cuda/onnx.cu.j2, parts mm / mm_da / mm_db, erf / erf_dx),
    alone and in an OnnxNode, run by the host emulator against the numpy reference, forward and
    backward; compiled by nvcc where there is one. A MatMul whose operand is shared by several
    batch products falls back in training, saying why."""
    from n2d2.codegen.cuda_backend import compile_check, find_nvcc
    from n2d2.solver import SGD
    from tests.test_c_backend import Net
    from tests.test_cuda_backend import EMU, run_training

    net = Net(seed=39, name="cudamm")
    rng = net.rng
    x = net.source((2, 3, 4, 5), "x")
    er = net.op("OnnxErf", [x], {})
    wrapped = net.op("OnnxNode", [x], {"op": "OnnxErf", "attrs": {}, "slots": (("x", 0),), "shapes": ((3, 4, 5),),
                                       "batch_keys": ()})
    both = net.op("OnnxMatMul", [x, net.op("OnnxTranspose", [x], {"perm": (0, 1, 3, 2)})], {})
    shared = net.op("OnnxMatMul", [x, _const(net, rng.standard_normal((5, 37)), "w")], {})
    vec = net.op("OnnxMatMul", [x, _const(net, rng.standard_normal(5), "v")], {})
    node = net.op("OnnxNode", [x], {"op": "OnnxMatMul", "attrs": {}, "slots": (("x", 0), ("p", "weights", "float32")),
                                    "shapes": ((3, 4, 5),), "batch_keys": ()},
                  {"weights": rng.standard_normal((5, 6)).astype(np.float32)})
    bcast = net.op("OnnxMatMul", [x, _const(net, rng.standard_normal((3, 5, 2)), "b3")], {})
    nodes = [er, wrapped, both, shared, vec, node]
    net.output(*nodes, bcast)
    for param in net.g.params.values():
        if net.g.op(param.owner) == "OnnxConstant":
            param.solver = SGD(learning_rate=0.0, momentum=0.0)   # as in test_onnx_kernels
    prog = run_training(net.g, EMU, steps=1, tol=5e-5)
    assert all(prog.where[n] == "cuda" and prog.where[f"grad:{n}"] == "cuda" for n in nodes), prog.where
    assert prog.where[bcast] == "numpy" and "shared by several batch products" in prog.fallback_reasons[bcast]
    if find_nvcc() is not None:
        compile_check(prog.source)


def test_standalone_export_runs_the_convnext_block(tmp_path, monkeypatch):
    """`export_c` of the imported ConvNeXt block (its MatMul OnnxNode cells on the matmul kernel,
    its GELU one activation): built by make, run on the exported stimuli, outputs as onnxruntime's."""
    check_standalone_export(tmp_path, monkeypatch, "convnext_block", seed=38)
