"""The training kernels' fast paths on the C backend against the numpy reference (float32,
relative error 1e-5, gradients included), with the geometry flags asserted so that each path
really runs: image-mode convolutions whose weight gradient is a product of dot products along
the pixels (DWNT, at most 16 outputs per group) and whose col2im keeps each input plane in
vector registers (C2I, planes up to 16 wide: stride, dilation, padding, groups, concatenated
inputs, batches that leave a ragged last block)."""
import numpy as np
import pytest

from tests.test_c_backend import (
    ACTIVATIONS,
    Net,
    Suite,
    _training_outputs,
    build_training_graph,
    c_backend,
    check_inference,
    check_training,
    run_c_training,
    run_numpy_training,
)

pytestmark = pytest.mark.skipif(not c_backend.available(), reason="needs a C compiler")

LENET_TABLE = np.random.default_rng(3).random((6, 16)) < 0.6
LENET_TABLE[:, 5] = False   # an output without input

# name: (input shape, outputs, conv kwargs, expected DWNT, expected C2I)
CONV_CASES = {
    # LeNet's conv2 shape on an odd batch and map: 13x13 -> 9x9, blocks of images with padded columns
    "table_5x5_valid": ((5, 6, 13, 13), 16, dict(k=(5, 5), mapping=LENET_TABLE, activation=ACTIVATIONS["relu"]),
                        True, True),
    # stride and dilation on padded planes (Wp = 16): the register col2im's lane tables
    "stride2_dilation_pad": ((3, 4, 11, 12), 6, dict(k=(3, 3), stride=(2, 2), dilation=(1, 2), padding=(1, 2),
                                                    activation=ACTIVATIONS["tanh"]), True, True),
    # more than 16 outputs: the transposed weight-gradient GEMM, still the register col2im
    "outputs_20": ((3, 5, 9, 9), 20, dict(k=(3, 3), padding=(1, 1), bias=False), False, True),
    "groups": ((2, 6, 10, 10), 8, dict(k=(3, 3), groups=2, padding=(1, 1), activation=ACTIVATIONS["relu"]),
               True, True),
    # a plane wider than 16: the plain col2im
    "wide_plane": ((2, 3, 18, 18), 5, dict(k=(3, 3), stride=(2, 2), padding=(1, 1)), True, False),
}


@pytest.fixture(scope="module")
def conv_suite():
    suite = Suite(seed=15)
    for case, (shape, o, kw, _, _) in CONV_CASES.items():
        suite.add(case, lambda net, shape=shape, o=o, kw=kw: [net.conv(net.source(shape), o, **kw)])
    suite.add("two_inputs", lambda net: [net.conv([net.source((3, 2, 12, 12), "a"), net.source((3, 3, 12, 12), "b")],
                                                  7, k=(5, 5), activation=ACTIVATIONS["relu"])])
    return suite.run()


@pytest.mark.parametrize("case", sorted(CONV_CASES))
def test_image_conv_training_paths(conv_suite, case):
    p, (y,) = conv_suite.check(case)
    g = p.geometry[y]
    _, _, _, dwnt, c2i = CONV_CASES[case]
    assert g["MODE"] == "image"
    assert g["DWNT"] == dwnt
    assert (g["C2I"] is not None) == c2i


def test_image_conv_connection_table_skips_unconnected_blocks():
    """A connection table in image mode (CONN): the forward tiles skip the blocks none of their
    rows reads, the data and weight gradients run per input channel on the outputs it feeds.
    LeNet.ini's table, and a random one with a channel that feeds nothing and an output that
    reads nothing (its rows of the products are empty), on a batch with a ragged last block."""
    from n2d2.models.lenet import CONV2_TABLE

    dead = np.random.default_rng(5).random((6, 16)) < 0.5
    dead[2, :] = False
    dead[:, 7] = False
    suite = Suite(seed=16)
    for name, table, n in (("lenet", np.array(CONV2_TABLE, dtype=bool), 11), ("dead", dead, 13)):
        suite.add(name, lambda net, table=table, n=n: [
            net.conv(net.source((n, 6, 14, 14)), 16, k=(5, 5), mapping=table, activation=ACTIVATIONS["relu"])])
    suite = suite.run()
    for name in ("lenet", "dead"):
        p, (y,) = suite.check(name)
        g = p.geometry[y]
        assert g["MODE"] == "image" and g["DWNT"] and g["CONN"] is not None and g["NB"] > 1
        assert g["N"] % g["NB"] != 0   # a ragged last block


def test_image_conv_concatenated_inputs(conv_suite):
    p, (y,) = conv_suite.check("two_inputs")
    g = p.geometry[y]
    assert g["MODE"] == "image" and g["DWNT"] and g["C2I"] is not None and len(g["inputs"]) == 2


def test_image_conv_im2col_row_by_row(conv_suite):
    """Small unpadded stride-1 planes of one input (ROWCOL): the block's im2col is copied row by
    row of the matrix across its images, forward and backward, against the reference; padded,
    strided or concatenated inputs keep the per-image copy."""
    for case, rowcol in (("table_5x5_valid", True), ("stride2_dilation_pad", False), ("two_inputs", False)):
        p, (y,) = conv_suite.check(case)
        g = p.geometry[y]
        assert g["MODE"] == "image" and g["ROWCOL"] == rowcol and g["NB"] > 1, (case, g)


# activations whose derivative C expression is a condition (a select): (name, parameters)
SELECT_DERIVATIVES = [("Rectifier", {}), ("Rectifier", {"leak_slope": 0.1}), ("Rectifier", {"clipping": 6.0}),
                      ("Rectifier", {"leak_slope": 0.1, "clipping": 6.0}), ("Linear", {"clipping": 2.0}),
                      ("Saturation", {}), ("HardSigmoid", {})]


def test_activation_derivative_loops_vectorise(tmp_path):
    """The backward kernels multiply gradients by the table's derivative expressions, in place
    (`dz[i] *= f'`) or into another buffer (`dx[i] = dy[i] * f'`). Written as selects
    (`c ? 1.0f : 0.0f`), gcc turned those products into branches on the data and left the loops
    scalar on AVX2 (LeNet's ReLU backward took 3 ms of a 10 ms step on AMD EPYC): every such
    loop must vectorise with the backend's own flags."""
    import re
    import subprocess

    from n2d2.codegen import compiler
    from n2d2.codegen.render import cfloat, render
    from n2d2.ops import activation as table

    lines = [render("c/runtime.c.j2")]
    for k, (name, params) in enumerate(SELECT_DERIVATIVES):
        d = table.c_derivative(dict(params, name=name), "yf[i]", None, cfloat)
        lines.append(f"void inplace_{k}(float *dz, const float *restrict yf, long n)\n"
                     f"{{ for (long i = 0; i < n; ++i) dz[i] *= {d}; }}")
        lines.append(f"void product_{k}(float *dx, const float *dy, const float *restrict yf, long n)\n"
                     f"{{ for (long i = 0; i < n; ++i) {{ const float d = dy[i] * {d}; dx[i] = d; }} }}")
    src = tmp_path / "dact.c"
    src.write_text("#include <math.h>\n#include <stdint.h>\n#include <string.h>\n" + "\n".join(lines) + "\n")
    flags = [f for f in compiler.default_flags() if f not in ("-shared", "-fPIC") and not f.startswith("-W")]
    out = subprocess.run([compiler.find_compiler(), *flags, "-fopt-info-vec-optimized", "-c", str(src), "-o",
                          str(tmp_path / "dact.o")], capture_output=True, text=True, check=True).stderr
    vectorised = {int(m) for m in re.findall(r"dact\.c:(\d+):\d+: optimized: loop vectorized", out)}
    text = src.read_text().splitlines()
    loops = [i + 1 for i, line in enumerate(text) if line.startswith("{ for (long i")]
    assert len(loops) == 2 * len(SELECT_DERIVATIVES)
    scalar = [text[i - 2] for i in loops if i not in vectorised]
    assert not scalar, f"derivative loops left scalar: {scalar}"


def _residual_sum_relu(batch=2):
    """ResNet's block end: Epilogue(x0 + x1, ReLU) of two convolution outputs."""
    net = Net(seed=31)
    a, b = (net.conv(net.source((batch, 4, 6, 6), n), 4, padding=(1, 1)) for n in "ab")
    y = net.op("Epilogue", [a, b], {"steps": (("add", 1, 1.0, 0.0), ("activation", ACTIVATIONS["relu"])),
                                    "activation": None})
    return net.output(y), y


def test_epilogue_backward_reads_the_last_activation_from_its_output():
    """A chain ending with an activation whose derivative reads its output (ResNet's Sum + ReLU)
    takes that output from the forward's y, against the reference (NaN stays exact through the
    same y: see test_nan_propagation)."""
    net, y = _residual_sum_relu()
    check_training(net, expect_c=[y])


def test_epilogue_backward_loop_vectorises(tmp_path):
    """The residual Sum + ReLU backward loop must vectorise with the backend's flags: recomputing
    the ReLU (`max(z, 0)`) and then its mask made gcc 12 branch on the data (ResNet-20 b128: 64 ms
    of a 520 ms step on AMD EPYC, the forward of the same nodes 4 ms)."""
    import re
    import subprocess

    from n2d2.codegen import compiler

    net, y = _residual_sum_relu(batch=8)
    tg = build_training_graph(net.g)
    module = c_backend.lower(tg.graph, [tg.forward_nodes, list(tg.grad_inputs.values()) + tg.backward_nodes,
                                        tg.update_nodes], training=True)
    src = tmp_path / "ep.c"
    src.write_text(module.source)
    flags = [f for f in compiler.default_flags() if f not in ("-shared", "-fPIC") and not f.startswith("-W")]
    vectorised = set()
    # every translation unit of the program (a kernel sits in one `#if N2D2_PART == k` block)
    for part in sorted({int(k) for k in re.findall(r"N2D2_PART == (\d+)", module.source)} or {0}):
        out = subprocess.run([compiler.find_compiler(), *flags, f"-DN2D2_PART={part}", "-fopt-info-vec-optimized",
                              "-c", str(src), "-o", str(tmp_path / "ep.o")], capture_output=True, text=True,
                             check=True).stderr
        vectorised |= {int(m) for m in re.findall(r"ep\.c:(\d+):\d+: optimized: loop vectorized", out)}
    text = src.read_text().splitlines()
    start = next(i for i, line in enumerate(text) if "(Grad of Epilogue)" in line)
    end = next(i for i in range(start, len(text)) if text[i] == "}")
    loops = [i + 1 for i in range(start, end) if text[i].strip().startswith("for (long i = off;")]
    assert loops, "no element loop found in the Epilogue backward"
    assert all(i in vectorised for i in loops), text[start:end]


@pytest.mark.parametrize("shape,outputs,kwargs", [
    # 5 outputs (a ragged tile of rows), an 18 x 20 grid (a ragged last strip), bias and ReLU
    ((5, 3, 18, 18), 5, dict(padding=(1, 1), activation=ACTIVATIONS["relu"])),
    # 16 outputs (ResNet-20's first stage), a rectangular map, no bias
    ((4, 4, 16, 19), 16, dict(padding=(1, 1), bias=False)),
])
def test_wide_forward_reads_windows_in_place(shape, outputs, kwargs):
    """Wide convolutions with few outputs and junk columns, batch >= 4 (NOPACK: the forward tiles
    read the input windows in place, no packed strip), against the reference."""
    def build():
        net = Net(seed=32)
        y = net.conv(net.source(shape), outputs, **kwargs)
        return net.output(y), y

    net, y = build()
    p = check_training(net, expect_c=[y])
    assert p.geometry[y]["MODE"] == "wide" and p.geometry[y]["NOPACK"], p.geometry[y]
    check_inference(build()[0], expect_c=[y])


@pytest.mark.parametrize("shape,kwargs", [
    # LeNet's conv1: 32 x 32 -> 28 x 28, ReLU, no bias
    ((5, 1, 32, 32), dict(k=(5, 5), bias=False, activation=ACTIVATIONS["relu"])),
    # a padded 30-wide input (grid 32), two channels, bias and tanh
    ((4, 2, 20, 30), dict(padding=(1, 1), activation=ACTIVATIONS["tanh"])),
])
def test_wide_forward_six_maps_two_row_strips(shape, kwargs):
    """Six output maps on a 32-wide grid with an even number of rows (LeNet's conv1): with
    AVX-512 the forward runs strips of two grid rows, one 6 x 4 tile each, against the reference."""
    def build():
        net = Net(seed=33)
        y = net.conv(net.source(shape), 6, **kwargs)
        return net.output(y), y

    net, y = build()
    p = check_training(net, expect_c=[y])
    g = p.geometry[y]
    assert g["MODE"] == "wide" and g["NOPACK"] and not g["SPLIT"], g
    assert g["OG"] == 6 and g["Wp"] == 32 and g["LW"] % 64 == 0, g
    check_inference(build()[0], expect_c=[y])


@pytest.mark.parametrize("shape,outputs,kwargs", [
    # padded planes, bias and ReLU
    ((2, 3, 16, 18), 16, dict(padding=(1, 1), activation=ACTIVATIONS["relu"])),
    # two groups of 16 outputs (dW^T per group)
    ((2, 4, 16, 16), 32, dict(padding=(1, 1), groups=2, bias=False)),
    # no padding: the windows are read from the input planes themselves
    ((3, 3, 18, 18), 16, dict(activation=ACTIVATIONS["tanh"])),
])
def test_wide_weight_gradient_by_broadcasts(shape, outputs, kwargs):
    """Wide convolutions with a multiple of 16 outputs per group (DWB: dW^T = im2col dz^T, the
    windows broadcast against rows of dz^T) against the reference."""
    net = Net(seed=33)
    y = net.conv(net.source(shape), outputs, **kwargs)
    p = check_training(net.output(y), expect_c=[y])
    assert p.geometry[y]["MODE"] == "wide" and p.geometry[y]["DWB"], p.geometry[y]


@pytest.mark.parametrize("poison", ["weights", "input"])
def test_wide_backward_nonfinite_exact_in_a_team(poison, monkeypatch):
    """A wide convolution's backward run by a team of two (DWB, and the dx test for non-finite
    values made while dx is copied out, OR-reduced over the threads): an Inf weight or input gives
    NaN / Inf exactly where the reference has them, and the finite values agree."""
    monkeypatch.setenv("N2D2_THREADS", "2")
    net = Net(seed=34)
    y = net.conv(net.source((4, 16, 32, 32)), 16, padding=(1, 1), bias=False)
    net.output(y)
    if poison == "weights":
        net.g.params[f"{y}.weights"].array[3, 5, 0, 2] = np.inf
    else:
        net.feeds[next(iter(net.feeds))][1, 2, 0, 31] = -np.inf
    tg, seeds = _training_outputs(net)
    ref = run_numpy_training(tg, net.feeds, seeds)
    out, p = run_c_training(tg, net.feeds, seeds)
    g = p.geometry[y]
    assert g["MODE"] == "wide" and g["DWB"] and g["PARB"] and p.nthreads == 2, g

    def kind(a):
        return np.select([np.isnan(a), a == np.inf, a == -np.inf], [1, 2, 3], 0)

    nonfinite = 0
    for t, r in ref.items():
        assert np.array_equal(kind(r), kind(out[t])), t
        fin = kind(r) == 0
        np.testing.assert_allclose(out[t][fin], r[fin], rtol=1e-4, atol=1e-4 * np.abs(r[fin]).max())
        nonfinite += int((~fin).sum())
    assert nonfinite
