"""BatchNorm + Epilogue as one op (n2d2.ops.batchnorm_epilogue, the C backend's training pass
`fuse_batchnorm_epilogue`): the pass on the numpy executor (outputs and gradients before and
after), where it must not apply, and the C kernel against the unfused graph on the reference
(float32, fresh random inputs, NaN and Inf included, moving statistics)."""
import numpy as np
import pytest

from n2d2.ir import ops as op_registry
from n2d2.ir.autodiff import build_training_graph
from n2d2.ir.passes import PASSES, fuse_batchnorm_epilogue
from tests.test_c_backend import (
    ACTIVATIONS,
    Net,
    _normal,
    c_backend,
    run_c_training,
    run_numpy_training,
)
from tests.test_passes import assert_equivalent, unchanged

RELU = ACTIVATIONS["relu"]
SWISH = ("Swish", ())


LINEAR = ("Linear", (("clipping", 0.0),))   # what the BatchNorm cells carry (an identity)


def _bn(net, x, momentum=0.1, activation=LINEAR, name="bn"):
    ch = net.g.output_types(x)[0].shape[1]
    params = {"scales": 1 + _normal(net.rng, (ch,), 0.2), "biases": _normal(net.rng, (ch,)),
              "means": _normal(net.rng, (ch,), 0.1), "variances": 1 + net.rng.random(ch).astype(np.float32)}
    return net.op("BatchNorm", [x], {"epsilon": 1e-5, "momentum": momentum, "unbiased": False,
                                     "activation": activation}, params, name=name)


def _block(steps=None, shape=(4, 3, 5, 6), momentum=0.1, source=True, residuals=1, seed=21, relu_bn=False):
    """x -> [1x1 conv] -> [BatchNorm + ReLU] -> BatchNorm -> Epilogue(bn, residuals..., steps)
    (ResNet's block end by default: + residual, ReLU)."""
    net = Net(seed=seed)
    x = net.source(shape, "x") if source else net.input(shape, "x")
    res = [net.source(shape, f"r{k}") for k in range(residuals)]
    if relu_bn:
        x = _bn(net, x, momentum, activation=RELU, name="bn_relu")
    bn = _bn(net, x, momentum)
    steps = steps or (("add", 1, 1.0, 0.0), ("activation", RELU))
    y = net.op("Epilogue", [bn] + res, {"steps": steps, "activation": LINEAR}, name="epi")
    net.output(y)
    return net, bn, y


STEPS = {
    "sum_relu": None,
    # per-channel coefficients, two residuals, an activation whose derivative needs its input
    # (the backward recomputes the chain from the normalised value), then one that reads y
    "swish_two_residuals": (("scale", (0.5, -1.0, 2.0)), ("add", 2, 0.5, (0.1, 0.2, 0.3)), ("activation", SWISH),
                            ("bias", 0.3), ("add", 1, (1.0, 2.0, 3.0), 0.0), ("activation", ACTIVATIONS["tanh"])),
}


@pytest.mark.parametrize("case", STEPS)
@pytest.mark.parametrize("momentum", [0.1, 0.0])
def test_pass_is_exact_on_the_reference(case, momentum):
    net, bn, y = _block(STEPS[case], momentum=momentum, residuals=2 if STEPS[case] else 1)
    g = net.g
    out = fuse_batchnorm_epilogue(g, mode="training")
    assert bn not in out.nodes() and out.op(y) == "BatchNormEpilogue"
    assert out.inputs_of(y) == g.inputs_of(bn) + g.inputs_of(y)[1:]
    assert dict(out.nx.nodes[y]["params"]) == dict(g.nx.nodes[bn]["params"])
    out.verify()
    feeds = {k: v.astype(np.float64) for k, v in net.feeds.items()}
    for p in g.params.values():
        p.array = p.array.astype(np.float64)
    assert_equivalent(g, out, feeds, training=True, tol=1e-12)
    assert_equivalent(g, out, feeds, training=False, tol=1e-12)
    assert "fuse_batchnorm_epilogue" in PASSES and "fuse_batchnorm_epilogue" in c_backend.CBackend.training_passes


def test_pass_preconditions():
    net = Net(seed=22)
    x = net.source((2, 3, 4, 4), "x")
    r = net.source((2, 3, 4, 4), "r")
    relu = {"steps": (("add", 1, 1.0, 0.0), ("activation", RELU)), "activation": None}
    b1 = _bn(net, x, activation=RELU, name="bn_act")                    # BatchNorm with its own activation
    e1 = net.op("Epilogue", [b1, r], relu)
    b2 = _bn(net, x, name="bn_twice")                                   # read by the Epilogue and a Conv
    e2 = net.op("Epilogue", [b2, r], relu)
    c2 = net.conv(b2, 3)
    b3 = _bn(net, x, name="bn_residual")                                # an Epilogue's residual, not its input 0
    e3 = net.op("Epilogue", [r, b3], relu)
    b4 = _bn(net, x, name="bn_sync")                                    # synchronised
    net.g.attrs(b4)["synchronised"] = True
    e4 = net.op("Epilogue", [b4, r], relu)
    b5 = _bn(net, x, name="bn_out")                                     # a graph output
    e5 = net.op("Epilogue", [b5, r], relu)
    b6 = _bn(net, x, name="bn_conv")                                    # read by a Conv only
    c6 = net.conv(b6, 3)
    b7 = _bn(net, x, name="bn_stop")                                    # the Epilogue stops gradients
    e7 = net.op("Epilogue", [b7, r], dict(relu, back_propagate=False))
    net.output(e1, e2, c2, e3, e4, b5, e5, c6, e7)
    unchanged(net.g, fuse_batchnorm_epilogue(net.g, mode="training"))
    assert fuse_batchnorm_epilogue(net.g, mode="inference").op(e7) == "BatchNormEpilogue"


def _compare_c_with_reference(net, y, poison=None):
    """The unfused graph on the reference against the fused one in C, one training step: the
    output, the gradients reaching the sources (the BatchNorm input's and the residuals'), every
    parameter gradient and the moving statistics. `poison(feeds)` may plant non-finite values."""
    feeds = dict(net.feeds)
    if poison is not None:
        poison(feeds)
    tg_ref = build_training_graph(net.g)
    tg = build_training_graph(fuse_batchnorm_epilogue(net.g, mode="training"))
    assert tg.graph.op(y) == "BatchNormEpilogue"
    rng = np.random.default_rng(5)
    seeds = {name: _normal(rng, tg.graph.output_types(name)[0].shape) for name in tg.grad_inputs.values()}
    assert set(seeds) == set(tg_ref.grad_inputs.values())
    sources = [n for n in net.g.nodes() if n.startswith("src_")]

    def wanted(t):
        return [(y, 0)] + [t.graph.inputs_of(f"grad:{s}")[0] for s in sources] + list(t.param_grads.values())

    for t in (tg, tg_ref):
        t.graph.outputs = list(t.graph.outputs) + wanted(t)   # kept from buffer reuse
    before = {k: v.array.copy() for k, v in net.g.params.items()}
    ref = run_numpy_training(tg_ref, feeds, seeds)
    stats_ref = {k: v.array.copy() for k, v in net.g.params.items()}
    for k, v in before.items():
        net.g.params[k].array[...] = v
    out, p = run_c_training(tg, feeds, seeds)
    assert all(p.where[n] == "c" for n in tg.forward_nodes + tg.backward_nodes if tg.graph.op(n) != "Input")
    names = ["y"] + [f"d{s}" for s in sources] + list(tg.param_grads)
    assert list(tg.param_grads) == list(tg_ref.param_grads)
    for name, a, b in zip(names, wanted(tg), wanted(tg_ref)):
        _close(out[a], ref[b], name)
    for k, v in stats_ref.items():
        _close(net.g.params[k].array, v, k)
    return out, p


def _close(out, ref, what):
    out, ref = np.asarray(out, np.float64), np.asarray(ref, np.float64)
    assert np.array_equal(np.isnan(out), np.isnan(ref)), f"{what}: NaN positions differ"
    inf = np.isinf(ref)
    assert np.array_equal(np.isinf(out), inf) and np.array_equal(out[inf], ref[inf]), f"{what}: infinities differ"
    fin = np.isfinite(ref)
    err = np.linalg.norm(out[fin] - ref[fin]) / max(np.linalg.norm(ref[fin]), 1e-30)
    assert err < 1e-5, f"{what}: relative error {err:.2e}"


@pytest.mark.skipif(not c_backend.available(), reason="needs a C compiler")
@pytest.mark.parametrize("case", STEPS)
@pytest.mark.parametrize("momentum", [0.1, 0.0])
def test_c_kernel_matches_the_unfused_reference(case, momentum):
    net, _, y = _block(STEPS[case], momentum=momentum, residuals=2 if STEPS[case] else 1, seed=23)
    _compare_c_with_reference(net, y)


@pytest.mark.skipif(not c_backend.available(), reason="needs a C compiler")
def test_c_kernel_without_the_batchnorm_input_gradient():
    """The BatchNorm reads a graph input (no gradient wanted): the reductions take the chain's
    gradient element by element."""
    net, _, y = _block(source=False, seed=24)
    _compare_c_with_reference(net, y)


@pytest.mark.skipif(not c_backend.available(), reason="needs a C compiler")
@pytest.mark.parametrize("shape", [(3, 2, 4, 5), (3, 2, 16, 17)])   # the statistics in two passes / in one
def test_c_kernel_propagates_nan_and_inf_as_the_reference(shape):
    net, _, y = _block(shape=shape, seed=25)

    def poison(feeds):
        feeds["r0"] = feeds["r0"].copy()
        feeds["r0"][0, 1, 2, 3] = np.inf
        feeds["r0"][1, 0, 0, 0] = -np.inf
        feeds["r0"][2, 1, 1, 1] = np.nan

    out, _ = _compare_c_with_reference(net, y, poison)
    assert np.isnan(out[(y, 0)]).any() and np.isinf(out[(y, 0)]).any()


@pytest.mark.skipif(not c_backend.available(), reason="needs a C compiler")
@pytest.mark.parametrize("momentum", [0.1, 0.0])
def test_batchnorm_kernels_in_a_team_of_two(momentum, monkeypatch):
    """Maps large enough for a team (PAR): two members split 5 channels 2 + 3 and walk their
    ranges image by image, in the BatchNorm + ReLU and in the fused BatchNorm + Epilogue."""
    monkeypatch.setenv("N2D2_THREADS", "2")
    net, _, y = _block(shape=(8, 5, 72, 72), momentum=momentum, seed=26, relu_bn=True)
    _, p = _compare_c_with_reference(net, y)
    assert p.nthreads == 2 and p.geometry[y]["PAR"] and p.geometry["bn_relu"]["PAR"]


def test_the_fused_op_is_declared():
    op = op_registry.get("BatchNormEpilogue")
    assert op_registry.get("BatchNorm").absorbs_chain == "BatchNormEpilogue"
    assert op_registry.get("Epilogue").holds_chain and op.needs_all_param_grads
    assert op.trainable == ("scales", "biases")
