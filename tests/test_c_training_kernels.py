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
    Suite,
    c_backend,
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
