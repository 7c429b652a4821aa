"""The C kernels of the QAT fake-quantizers (templates/c/ops/FakeQuantize.c.j2) against the numpy
reference (n2d2.ops.quantizer) on random inputs: the FakeQuantize node (SAT CG-PACT, LSQ) and the
weight quantizers of Conv, Fc and Deconv (SAT in every mode, with and without quantization and
scaling; LSQ), forward values and every gradient, the learned scalars' included."""
import numpy as np
import pytest

import n2d2
from tests.test_c_backend import (
    Suite,
    _conv_attrs,
    _normal,
    _training_outputs,
    c_backend,
    compare,
    run_c_training,
    run_numpy_training,
)

pytestmark = pytest.mark.skipif(not c_backend.available(), reason="needs a C compiler")


def _sat_spec(r, mode="Default", quantize=True, scaling=False):
    return ("SAT", (("apply_quantization", quantize), ("apply_scaling", scaling), ("quant_mode", mode), ("range", r)))


def _fake_quantize(net, x, kind, r, value):
    return net.op("FakeQuantize", [x], {"quantizer": (kind, (("range", r),))},
                  {"quant_param": np.array([value], dtype=np.float32)})


ACT_CASES = {   # name: (input shape, kind, range, alpha or step)
    "sat_4b": ((3, 4, 7, 5), "SAT", 15, 1.3),
    "sat_8b_negative_alpha": ((2, 6, 5, 5), "SAT", 255, -0.8),
    "lsq_4b": ((3, 4, 6, 6), "LSQ", 15, 0.11),
    "lsq_8b": ((2, 5, 4, 7), "LSQ", 255, 0.013),
    "sat_parallel": ((4, 8, 80, 80), "SAT", 15, 1.1),      # above the threshold of the thread team
    "lsq_parallel": ((4, 8, 80, 80), "LSQ", 15, 0.2),
}

WEIGHT_CASES = {   # name: (op, quantizer spec)
    "conv_sat_default_4b": ("Conv", _sat_spec(15)),
    "conv_sat_default_8b_scaled": ("Conv", _sat_spec(255, scaling=True)),
    "conv_sat_clamp": ("Conv", _sat_spec(15, quantize=False)),
    "conv_sat_symmetric": ("Conv", _sat_spec(15, "Symmetric")),
    "conv_sat_asymmetric": ("Conv", _sat_spec(15, "Asymmetric")),
    "conv_sat_asymmetric_clamp": ("Conv", _sat_spec(255, "Asymmetric", quantize=False)),
    "conv_sat_fullrange_scaled": ("Conv", _sat_spec(15, "FullRange", scaling=True)),
    "fc_sat_scaled": ("Fc", _sat_spec(15, scaling=True)),
    "fc_sat_clamp_scaled": ("Fc", _sat_spec(255, quantize=False, scaling=True)),
    "deconv_sat": ("Deconv", _sat_spec(15, "Symmetric", scaling=True)),
    "conv_lsq_4b": ("Conv", ("LSQ", (("range", 15),))),
    "fc_lsq_8b": ("Fc", ("LSQ", (("range", 255),))),
    "deconv_lsq": ("Deconv", ("LSQ", (("range", 15),))),
}


def _weighted(net, op, spec, x=None):
    """A Conv / Fc / Deconv with a weight quantizer (LSQ: a step near its automatic value)."""
    x = x or net.source((3, 4, 7, 6))
    shape = net.g.output_types(x)[0].shape
    c = shape[1]
    if op == "Conv":
        w = _normal(net.rng, (5, c, 3, 3), 0.6)
        attrs = _conv_attrs(padding=(1, 1))
    elif op == "Deconv":
        w = _normal(net.rng, (c, 5, 3, 3), 0.6)
        attrs = {"stride": (2, 2), "padding": (1, 1), "dilation": (1, 1), "groups": 1, "mapping": None,
                 "activation": None}
    else:
        w = _normal(net.rng, (6, int(np.prod(shape[1:]))), 0.3)
        attrs = {"activation": None}
    attrs = dict(attrs, weight_quantizer=spec)
    params = {"weights": w, "biases": _normal(net.rng, (w.shape[1] if op == "Deconv" else w.shape[0],), 0.3)}
    if spec[0] == "LSQ":
        qp = (spec[1][0][1] - 1) // 2
        params["weight_step"] = np.array([1.7 * np.abs(w).mean() / np.sqrt(qp)], dtype=np.float32)
    return net.op(op, [x], attrs, params)


@pytest.fixture(scope="module")
def qat_suite():
    suite = Suite(seed=61)
    for case, (shape, kind, r, value) in ACT_CASES.items():
        suite.add(case, lambda net, shape=shape, kind=kind, r=r, value=value:
                  [_fake_quantize(net, net.source(shape), kind, r, value)])
    for case, (op, spec) in WEIGHT_CASES.items():
        suite.add(case, lambda net, op=op, spec=spec: [_weighted(net, op, spec)])
    return suite.run()


@pytest.mark.parametrize("case", sorted(ACT_CASES) + sorted(WEIGHT_CASES))
def test_qat_kernel_equals_the_reference(qat_suite, case):
    p, (node,) = qat_suite.check(case, tol=2e-5)
    assert not p.fallback_reasons
    # the learned scalar's gradient was computed (and compared) in C
    grad = f"grad:{node}"
    roles = qat_suite.tg.graph.attrs(grad)["roles"]
    assert ("quant_param" in roles) or ("weights" in roles)
    if case.startswith(("sat", "lsq")) or "lsq" in case:
        k = roles.index("quant_param" if "quant_param" in roles else "weight_step")
        inputs = sum(qat_suite.tg.graph.attrs(grad)["input_needs"])
        t = (grad, inputs + k)
        assert abs(float(qat_suite.ref[t][0])) > 0 and t in qat_suite.out


def test_lsq_automatic_step_initialisation_in_c():
    """A NaN step is initialised by the first training forward (2 mean|v| / sqrt(Qp)), stored in
    the parameter, and that forward and its backward use it: C equals the reference, activation
    and weight quantizers."""
    from tests.test_c_backend import Net

    net = Net(seed=71, name="lsq_init")
    y = _fake_quantize(net, net.source((2, 3, 6, 5)), "LSQ", 15, np.nan)
    z = _weighted(net, "Fc", ("LSQ", (("range", 15),)), x=y)
    step = net.g.node(z).params["weight_step"]
    net.g.params[step].array[...] = np.nan
    net.output(z)
    tg, seeds = _training_outputs(net)
    steps = [net.g.node(y).params["quant_param"], step]
    ref = run_numpy_training(tg, net.feeds, seeds)
    initialised = [net.g.params[s].array.copy() for s in steps]
    assert all(np.isfinite(v).all() and v[0] > 0 for v in initialised)
    for s in steps:
        net.g.params[s].array[...] = np.nan
    out, p = run_c_training(tg, net.feeds, seeds)
    for s, v in zip(steps, initialised):
        assert abs(net.g.params[s].array[0] - v[0]) <= 1e-6 * v[0]
    compare(tg, p, ref, out, 2e-5, expect_c=(y, z))


def test_inference_program_runs_the_quantizers_in_c():
    """Test mode: the quantized weights and activations in C equal the reference (no gradient)."""
    from tests.test_c_backend import Net, check_inference

    net = Net(seed=72, name="qat_infer")
    x = _weighted(net, "Conv", _sat_spec(15, "Default"))
    y = _fake_quantize(net, x, "SAT", 15, 2.0)
    z = _weighted(net, "Fc", ("LSQ", (("range", 255),)), x=y)
    net.output(z)
    p = check_inference(net, tol=2e-5, expect_c=(x, y, z))
    assert not p.fallback_reasons
    n2d2.global_variables.seed = 0


# -- CUDA: the same kernels on the host emulator, and compiled by nvcc ---------------------------------
def _cuda_qat_graph():
    from tests.test_c_backend import Net

    net = Net(seed=81, name="qat_cuda")
    x = _weighted(net, "Conv", _sat_spec(15, "Default", scaling=True))
    y = _fake_quantize(net, x, "SAT", 15, 1.4)
    z = _weighted(net, "Conv", _sat_spec(255, "Asymmetric"), x=y)
    u = _fake_quantize(net, z, "LSQ", 15, np.nan)                # initialised by the first step
    v = _weighted(net, "Conv", _sat_spec(15, "FullRange", quantize=False), x=u)   # (no CUDA Deconv)
    w = _weighted(net, "Fc", ("LSQ", (("range", 15),)), x=v)
    net.g.params[net.g.node(w).params["weight_step"]].array[...] = np.nan
    net.output(w)
    return net.g


def test_cuda_kernels_on_the_host_emulator_equal_the_reference():
    """Two training steps (forward, every gradient, SGD updates of the weights and of the learned
    scalars) of a graph with every kind of quantizer: the emulated CUDA program equals numpy."""
    from tests.test_cuda_backend import EMU, run_training

    g = _cuda_qat_graph()
    prog = run_training(g, EMU, steps=2, tol=2e-5)
    assert not prog.fallback_reasons
    quantized = [n for n in prog.graph.nx if prog.graph.op(n) == "FakeQuantize"
                 or prog.graph.attrs(n).get("weight_quantizer") is not None]
    assert len(quantized) == 6 and all(prog.where[n] == "cuda" for n in quantized)
    assert all(prog.where[f"grad:{n}"] == "cuda" for n in quantized)


def test_cuda_qat_source_compiles_with_nvcc():
    from tests.test_cuda_backend import HAVE_NVCC, _RenderOnly

    if not HAVE_NVCC:
        pytest.skip("needs nvcc")
    from n2d2.codegen.cuda_backend import CudaProgram, compile_check
    from n2d2.ir.autodiff import build_training_graph

    tg = build_training_graph(_cuda_qat_graph())
    prog = CudaProgram(tg.graph, [tg.forward_nodes, list(tg.grad_inputs.values()) + tg.backward_nodes,
                                  tg.update_nodes], training=True, device=_RenderOnly())
    assert "sat_max_part" in prog.source and "lsq_init" in prog.source and "bwd_final" in prog.source
    compile_check(prog.source)
