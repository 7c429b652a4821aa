"""The C backend against the numpy executor (the reference ops), op by op and on whole networks.

Every op with a C kernel runs in a small training graph (a trainable 1x1 convolution in front of
each input, so that input gradients exist), forward and backward, on fresh random inputs; every
forward output and every gradient (inputs and parameters) must match the numpy executor within
a relative error of 1e-5 (float32). LeNet (models/LeNet.ini) and ResNet-20 train three SGD steps
on both backends, dropout included (both draw the masks from the same generator).
"""
import atexit
import os
import subprocess

import numpy as np
import pytest

import n2d2
from n2d2.codegen import compiler
from n2d2.codegen.numpy_exec import Session
from n2d2.ir import epilogue  # noqa: F401  (registers the Epilogue op)
from n2d2.ir.autodiff import build_training_graph
from n2d2.ir.graph import Graph
from tests.conftest import rel_err

c_backend = pytest.importorskip("n2d2.codegen.c_backend")
pytestmark = pytest.mark.skipif(not c_backend.available(), reason="needs a C compiler")

ACTIVATIONS = {
    "none": None,
    "linear_clip": ("Linear", (("clipping", 0.7),)),
    "relu": ("Rectifier", (("clipping", 0.0), ("leak_slope", 0.0))),
    "leaky_clip": ("Rectifier", (("clipping", 0.9), ("leak_slope", 0.1))),
    "tanh": ("Tanh", (("alpha", 1.5),)),
    "logistic": ("Logistic", ()),
    "saturation": ("Saturation", (("threshold", 0.6),)),
    "softplus": ("Softplus", ()),
}


def _rng(seed=0):
    return np.random.default_rng(seed)


def _normal(rng, shape, scale=1.0):
    return (rng.standard_normal(shape) * scale).astype(np.float32)


class Net:
    """A small IR graph under construction: inputs, then nodes with random parameters."""

    def __init__(self, seed=0, name="net"):
        self.g = Graph(name)
        self.rng = _rng(seed)
        self.feeds = {}

    def input(self, shape, name="input"):
        name = self.g.add_input(self.g.unique_name(name), shape)
        self.feeds[name] = _normal(self.rng, shape)
        return name

    def param(self, node, role, array, trainable=True):
        from n2d2.solver import SGD

        pname = f"{node}.{role}"
        self.g.add_param(pname, np.ascontiguousarray(array, dtype=np.float32), trainable=trainable, owner=node,
                         role=role, solver=SGD(learning_rate=0.01, momentum=0.9) if trainable else None)
        return pname

    def op(self, op, inputs, attrs=None, params=None, name=None):
        name = self.g.unique_name(name or op.lower())
        bound = {role: self.param(name, role, a, trainable=role not in ("means", "variances"))
                 for role, a in (params or {}).items()}
        self.g.add_op(name, op, inputs, attrs or {}, bound)
        return name

    def source(self, shape, name="input"):
        """An input followed by a trainable 1x1 convolution (so that the input gradient exists)."""
        x = self.input(shape, name)
        c = shape[1]
        w = _normal(self.rng, (c, c, 1, 1), 1.0 / np.sqrt(c)) + np.eye(c, dtype=np.float32)[:, :, None, None]
        return self.op("Conv", [x], _conv_attrs(), {"weights": w}, name=f"src_{x}")

    def conv(self, x, o, k=(3, 3), stride=(1, 1), padding=(0, 0), dilation=(1, 1), groups=1, mapping=None,
             bias=True, activation=None):
        xs = [x] if isinstance(x, str) else list(x)
        c = sum(self.g.output_types(v)[0].shape[1] for v in xs)
        params = {"weights": _normal(self.rng, (o, c // groups) + tuple(k), 1.0 / np.sqrt(c * k[0] * k[1] / groups))}
        if bias:
            params["biases"] = _normal(self.rng, (o,), 0.5)
        return self.op("Conv", xs, _conv_attrs(stride, padding, dilation, groups, mapping, activation), params)

    def output(self, *names):
        self.g.set_outputs(list(names))
        return self


def _conv_attrs(stride=(1, 1), padding=(0, 0), dilation=(1, 1), groups=1, mapping=None, activation=None):
    return {"stride": tuple(stride), "padding": tuple(padding), "dilation": tuple(dilation), "sub_sample": (1, 1),
            "groups": groups, "mapping": mapping, "activation": activation}


# -- running both backends -------------------------------------------------------------------------
def _seeds(tg, rng):
    return {name: _normal(rng, tg.graph.output_types(name)[0].shape) for name in tg.grad_inputs.values()}


def _training_outputs(net: Net, seed=3):
    """Training graph whose outputs also list every gradient (so that no buffer is reused)."""
    tg = build_training_graph(net.g)
    extra = [(n, k) for n in tg.backward_nodes for k in range(len(tg.graph.output_types(n)))]
    tg.graph.outputs = list(tg.graph.outputs) + extra
    return tg, _seeds(tg, _rng(seed))


def run_numpy_training(tg, feeds, seeds):
    n2d2.global_variables.seed = 11
    s = Session(tg.graph, training=True, order=tg.forward_nodes)
    s.feed(feeds)
    s.run_nodes(tg.forward_nodes)
    s.feed(seeds)
    s.run_nodes(tg.backward_nodes)
    return {t: np.array(s.values[t[0]][t[1]]) for t in tg.graph.outputs}


def run_c_training(tg, feeds, seeds, program=None):
    n2d2.global_variables.seed = 11
    p = program or c_backend.CProgram(tg.graph, [tg.forward_nodes, list(tg.grad_inputs.values()) + tg.backward_nodes,
                                                 tg.update_nodes], training=True)
    p.feed(feeds)
    p.run_phase(0)
    p.feed(seeds)
    p.run_phase(1)
    return {t: p.view(t).copy() for t in tg.graph.outputs}, p


def compare(tg, p, ref, out, tol=1e-5, expect_c=(), related=None):
    """Every tensor of `ref` (numpy) against `out` (C); with `related`, only the tensors of
    those nodes and of their Grad / AddN nodes."""
    for node in expect_c:
        assert p.where[node] == "c", f"{node} ran on {p.where[node]}"
        assert p.where[f"grad:{node}"] == "c", f"grad:{node} ran on {p.where[f'grad:{node}']}"
    # A C backward kernel turns its incoming gradient into d(pre-activation) in place (that
    # tensor has no other reader); those are checked through the gradients computed from them.
    rewritten = {tg.graph.inputs_of(n)[0] for n in tg.backward_nodes
                 if tg.graph.op(n) == "Grad" and p.where[n] == "c"}
    compared = 0
    for t, value in ref.items():
        if t in rewritten:
            continue
        if related is not None and t[0].split(":", 1)[-1] not in related:
            continue
        assert np.all(np.isfinite(out[t])), f"{t} is not finite"
        err = rel_err(out[t], value)
        assert err < tol, f"{t}: relative error {err:.2e}"
        compared += 1
    assert compared >= 2


def check_training(net: Net, tol=1e-5, expect_c=None):
    """Forward outputs and every gradient of `net`'s training graph: C vs numpy."""
    tg, seeds = _training_outputs(net)
    ref = run_numpy_training(tg, net.feeds, seeds)
    out, p = run_c_training(tg, net.feeds, seeds)
    compare(tg, p, ref, out, tol, expect_c or ())
    return p


class Suite:
    """Independent cases built into one graph, so that they cost one compilation, run once on
    both backends; each case then checks the tensors of its own nodes."""

    def __init__(self, seed):
        self.net = Net(seed=seed, name="suite")
        self.cases = {}
        self.outputs = []

    def add(self, case, build):
        """`build(net)` adds the case's nodes and returns the nodes that must run in C (their
        outputs become graph outputs)."""
        before = set(self.net.g.nodes())
        expect = build(self.net)
        self.cases[case] = (set(self.net.g.nodes()) - before, expect)
        self.outputs += expect
        return self

    def run(self):
        self.net.output(*self.outputs)
        self.tg, seeds = _training_outputs(self.net)
        self.ref = run_numpy_training(self.tg, self.net.feeds, seeds)
        self.out, self.p = run_c_training(self.tg, self.net.feeds, seeds)
        return self

    def check(self, case, tol=1e-5):
        nodes, expect = self.cases[case]
        compare(self.tg, self.p, self.ref, self.out, tol, expect, related=nodes)
        return self.p, expect


def check_inference(net: Net, tol=1e-5, expect_c=None):
    from n2d2.codegen import numpy_exec

    ref = numpy_exec.run(net.g, net.feeds)
    p = c_backend.CProgram(net.g, [net.g.topological_order()])
    p.feed(net.feeds)
    p.run_phase(0)
    for node in expect_c or ():
        assert p.where[node] == "c"
    for t, value in zip(net.g.outputs, ref):
        assert rel_err(p.view(t), value) < tol, f"{t}: relative error {rel_err(p.view(t), value):.2e}"
    return p


# -- Conv --------------------------------------------------------------------------------------------
CONV_CASES = {
    # name: (input shape, outputs, kwargs)
    "3x3_pad_bias_relu": ((2, 3, 9, 11), 5, dict(k=(3, 3), padding=(1, 1), activation=ACTIVATIONS["relu"])),
    "5x5_valid_nobias": ((3, 2, 12, 12), 4, dict(k=(5, 5), bias=False)),
    "stride2_pad": ((2, 3, 11, 9), 6, dict(k=(3, 3), stride=(2, 2), padding=(1, 1), activation=ACTIVATIONS["tanh"])),
    "stride_2x1_nonsquare_kernel": ((2, 2, 10, 13), 3, dict(k=(3, 5), stride=(2, 1), padding=(2, 1))),
    "dilation": ((2, 3, 13, 12), 4, dict(k=(3, 3), dilation=(2, 3), padding=(2, 1),
                                         activation=ACTIVATIONS["leaky_clip"])),
    "groups": ((2, 6, 8, 8), 9, dict(k=(3, 3), groups=3, padding=(1, 1), activation=ACTIVATIONS["softplus"])),
    "depthwise": ((3, 5, 9, 7), 5, dict(k=(3, 3), groups=5, padding=(1, 1), stride=(2, 1))),
    "pointwise": ((2, 7, 6, 5), 10, dict(k=(1, 1), activation=ACTIVATIONS["logistic"])),
    "batch1": ((1, 4, 10, 10), 8, dict(k=(3, 3), padding=(1, 1), activation=ACTIVATIONS["relu"])),
    "fc_mode": ((4, 6, 5, 5), 12, dict(k=(5, 5), activation=ACTIVATIONS["relu"])),
    "fc_mode_batch9_bias": ((9, 3, 4, 3), 7, dict(k=(4, 3))),
    "many_images_per_block": ((20, 3, 6, 6), 5, dict(k=(3, 3), activation=ACTIVATIONS["saturation"])),
    "large_parallel": ((16, 8, 20, 20), 16, dict(k=(3, 3), padding=(1, 1), activation=ACTIVATIONS["relu"])),
    # one 16x16 image per block (P = 256, dz read in place), padded planes; 32 outputs: im2col beats wide
    "image_one_per_block": ((2, 32, 16, 16), 32, dict(k=(3, 3), padding=(1, 1), activation=ACTIVATIONS["relu"])),
    # stride 1 on large maps: implicit im2col ("wide" mode)
    "wide_valid_5x5": ((3, 1, 32, 32), 6, dict(k=(5, 5), activation=ACTIVATIONS["relu"])),
    "wide_pad_dilation": ((2, 3, 20, 18), 4, dict(k=(3, 3), dilation=(2, 1), padding=(2, 1), bias=False)),
    "wide_groups": ((2, 4, 17, 16), 6, dict(k=(3, 3), groups=2, padding=(1, 1), activation=ACTIVATIONS["tanh"])),
    "wide_batch1": ((1, 2, 18, 17), 3, dict(k=(3, 2), padding=(1, 0))),
}
MODES = {"fc_mode": "fc", "fc_mode_batch9_bias": "fc", "depthwise": "direct", "large_parallel": "wide",
         "wide_valid_5x5": "wide", "wide_pad_dilation": "wide", "wide_groups": "wide", "wide_batch1": "wide",
         "3x3_pad_bias_relu": "image", "many_images_per_block": "image", "stride2_pad": "image",
         "image_one_per_block": "image"}


@pytest.fixture(scope="module")
def conv_suite():
    suite = Suite(seed=40)
    for case, (shape, o, kw) in CONV_CASES.items():
        suite.add(case, lambda net, shape=shape, o=o, kw=kw: [net.conv(net.source(shape), o, **kw)])
    return suite.run()


@pytest.mark.parametrize("case", sorted(CONV_CASES))
def test_conv(conv_suite, case):
    p, (y,) = conv_suite.check(case)
    if case in MODES:
        assert p.geometry[y]["MODE"] == MODES[case]


def test_conv_parallel_threshold_is_crossed():
    """`large_parallel` really uses the thread team (the others stay serial)."""
    n, c, h, w = CONV_CASES["large_parallel"][0]
    assert n * 16 * h * w * c * 9 >= c_backend.PARALLEL_MIN_MACS


@pytest.mark.parametrize("batch,size", [(1, 14), (3, 14), (2, 24), (2, 40)])
def test_conv_mapping(batch, size):
    net = Net(seed=5)
    rng = _rng(1)
    mapping = rng.random((6, 16)) < 0.6
    mapping[:, 3] = False          # an output without input
    y = net.conv(net.source((batch, 6, size, size)), 16, k=(5, 5), mapping=mapping, bias=True,
                 activation=ACTIVATIONS["relu"])
    p = check_training(net.output(y), expect_c=[y])
    # 40: the 4 wasted columns of 40 cost 1.6 GEMM rows (wide); 24: 2.7 rows (an im2col is cheaper)
    assert p.geometry[y]["MODE"] == ("wide" if size == 40 else "image")


def test_conv_mapping_fc_mode():
    net = Net(seed=6)
    mapping = _rng(2).random((4, 7)) < 0.5
    y = net.conv(net.source((5, 4, 3, 3)), 7, k=(3, 3), mapping=mapping)
    check_training(net.output(y), expect_c=[y])


@pytest.mark.parametrize("batch,size", [(1, 9), (4, 9), (2, 18)])
def test_conv_several_inputs(batch, size):
    """Inputs concatenated along channels; the middle one needs no gradient (a raw input)."""
    net = Net(seed=7)
    a = net.source((batch, 2, size, 8 + size % 9), "a")
    b = net.input((batch, 3, size, 8 + size % 9), "b")
    c = net.source((batch, 1, size, 8 + size % 9), "c")
    y = net.conv([a, b, c], 4, k=(3, 3), padding=(1, 1), activation=ACTIVATIONS["relu"])
    check_training(net.output(y), expect_c=[y])
    net2 = Net(seed=8)
    a = net2.source((batch, 2, 3, 3), "a")
    b = net2.source((batch, 3, 3, 3), "b")
    y2 = net2.conv([a, b], 6, k=(3, 3))   # fc mode with a gathered input
    check_training(net2.output(y2), expect_c=[y2])


# -- Fc ----------------------------------------------------------------------------------------------
FC_CASES = [(1, True, "relu"), (3, False, "none"), (7, True, "tanh"), (33, True, "leaky_clip"), (64, False, "relu")]


def _fc_case(net, batch, bias, act):
    x = net.source((batch, 5, 3, 2))
    params = {"weights": _normal(net.rng, (37, 30), 0.2)}
    if bias:
        params["biases"] = _normal(net.rng, (37,))
    return [net.op("Fc", [x], {"activation": ACTIVATIONS[act]}, params)]


@pytest.fixture(scope="module")
def fc_suite():
    suite = Suite(seed=41)
    for case in FC_CASES:
        suite.add(case, lambda net, case=case: _fc_case(net, *case))
    return suite.run()


@pytest.mark.parametrize("case", FC_CASES)
def test_fc(fc_suite, case):
    p, (y,) = fc_suite.check(case)
    assert p.geometry[y]["DOT"] == (case[0] <= 4)


def test_fc_several_inputs():
    net = Net(seed=9)
    a = net.source((3, 2, 2, 2), "a")
    b = net.source((3, 5, 1, 1), "b")
    y = net.op("Fc", [a, b], {"activation": ACTIVATIONS["relu"]},
               {"weights": _normal(net.rng, (11, 13), 0.3), "biases": _normal(net.rng, (11,))})
    check_training(net.output(y), expect_c=[y])


# -- Pool --------------------------------------------------------------------------------------------
POOL_CASES = {
    "max_2x2": ("Max", (2, 2), (2, 2), (0, 0), (2, 3, 8, 10)),
    "max_3x3_s2_pad": ("Max", (3, 3), (2, 2), (1, 1), (2, 2, 9, 7)),
    "max_overlap": ("Max", (3, 2), (1, 1), (0, 0), (1, 3, 6, 7)),
    "max_big_pad": ("Max", (2, 2), (2, 2), (2, 1), (2, 2, 5, 6)),
    "avg_2x2": ("Average", (2, 2), (2, 2), (0, 0), (3, 2, 6, 6)),
    "avg_3x3_pad": ("Average", (3, 3), (1, 2), (1, 1), (2, 3, 7, 8)),
    "max_ragged": ("Max", (2, 2), (2, 2), (0, 0), (2, 2, 7, 9)),
}


def _pool_case(net, pooling, pool, stride, pad, shape, mapping=None):
    return [net.op("Pool", [net.source(shape)], {"pooling": pooling, "pool": pool, "stride": stride, "padding": pad,
                                                  "mapping": mapping, "activation": ACTIVATIONS["relu"]})]


@pytest.fixture(scope="module")
def pool_suite():
    suite = Suite(seed=42)
    for case, args in POOL_CASES.items():
        suite.add(case, lambda net, args=args: _pool_case(net, *args))
    for pooling in ("Max", "Average"):
        mapping = _rng(4).random((4, 6)) < 0.5
        mapping[:, 2] = False
        mapping[0, 0] = True
        suite.add(f"mapping_{pooling}", lambda net, pooling=pooling, mapping=mapping: _pool_case(
            net, pooling, (2, 2), (2, 2), (1, 0), (2, 4, 6, 6), mapping))
    return suite.run()


@pytest.mark.parametrize("case", sorted(POOL_CASES))
def test_pool(pool_suite, case):
    pool_suite.check(case)


@pytest.mark.parametrize("act", ["none", "relu"])
def test_max_pool_2x2_ties_go_to_the_first_maximum(act):
    """The 2x2 tiled max backward (its own branch-free loop) on inputs full of ties and
    negative windows: the gradient goes to the first maximum in row-major order, as numpy."""
    net = Net(seed=12)
    x = net.input((2, 3, 8, 10))
    net.feeds[x] = np.round(net.feeds[x]).astype(np.float32)   # integers: many tied windows
    # an identity 1x1 convolution: the pool's input is still the integers, and needs a gradient
    x = net.op("Conv", [x], _conv_attrs(), {"weights": np.eye(3, dtype=np.float32)[:, :, None, None]})
    y = net.op("Pool", [x], {"pooling": "Max", "pool": (2, 2), "stride": (2, 2), "padding": (0, 0),
                             "mapping": None, "activation": ACTIVATIONS[act]})
    z = net.op("Conv", [y], _conv_attrs(), {"weights": _normal(net.rng, (4, 3, 1, 1))})
    tg, seeds = _training_outputs(net.output(z))
    ref = run_numpy_training(tg, net.feeds, seeds)
    out, p = run_c_training(tg, net.feeds, seeds)
    assert p.where[y] == "c" and p.geometry[y]["TILED"]
    compare(tg, p, ref, out, 1e-6, [y])   # a tie sent elsewhere is an O(1) error


@pytest.mark.parametrize("shape", [(2, 3, 8, 10), (1, 2, 4, 4), (2, 2, 6, 36), (3, 2, 2, 32), (4, 3, 8, 10),
                                   (5, 2, 4, 16), (4, 1, 2, 66)])
@pytest.mark.parametrize("values", ["integers", "random", "non-finite"])
def test_max_pool_2x2_by_lanes_matches_numpy(shape, values):
    """The 2x2 tiled max without activation by lanes: the backward (lanes compared with y, rows
    of one partial to three vectors) and, from a batch of 4 on planes up to 16 wide, the
    forward: on integers (ties), random values, and values with NaN and +-Inf in both rows of
    windows (a NaN window's gradient to its first NaN), y as numpy's bit for bit and every
    window's gradient at the position numpy gives it."""
    net = Net(seed=13 + sum(shape))
    x = net.input(shape)
    if values == "integers":
        net.feeds[x] = np.round(net.feeds[x]).astype(np.float32)
    elif values == "non-finite":
        flat = net.feeds[x].reshape(-1)
        pos = net.rng.permutation(flat.size)[: 3 * (flat.size // 8)].reshape(3, -1)
        flat[pos[0]], flat[pos[1]], flat[pos[2]] = np.nan, np.inf, -np.inf
    c = shape[1]
    x = net.op("Conv", [x], _conv_attrs(), {"weights": np.eye(c, dtype=np.float32)[:, :, None, None]})
    y = net.op("Pool", [x], {"pooling": "Max", "pool": (2, 2), "stride": (2, 2), "padding": (0, 0),
                             "mapping": None, "activation": None})
    z = net.op("Conv", [y], _conv_attrs(), {"weights": _normal(net.rng, (4, c, 1, 1))})
    tg, seeds = _training_outputs(net.output(y, z))   # y an output too: compared as it is
    ref = run_numpy_training(tg, net.feeds, seeds)
    out, p = run_c_training(tg, net.feeds, seeds)
    assert p.where[f"grad:{y}"] == "c" and p.geometry[y]["TILED"]
    if values != "non-finite":
        compare(tg, p, ref, out, 1e-6, [y])
    assert np.array_equal(out[(y, 0)], ref[(y, 0)], equal_nan=True)
    dx = (f"grad:{y}", 0)   # the identity convolution's backward leaves it as the pool wrote it
    assert np.isfinite(ref[dx]).all() and np.count_nonzero(ref[dx]) > 0
    # (dz, the pool's incoming gradient, is a product: rounded as the build's conv backward does)
    assert np.array_equal(out[dx] != 0, ref[dx] != 0), "a window's gradient went to another position"
    assert rel_err(out[dx], ref[dx]) < 1e-5


@pytest.mark.parametrize("pooling", ["Max", "Average"])
def test_pool_mapping(pool_suite, pooling):
    pool_suite.check(f"mapping_{pooling}")


# -- element-wise ops ----------------------------------------------------------------------------------
ACTIVATION_CASES = sorted(k for k in ACTIVATIONS if k != "none")


@pytest.fixture(scope="module")
def activation_suite():
    suite = Suite(seed=43)
    for act in ACTIVATION_CASES:
        suite.add(act, lambda net, act=act: [net.op("Activation", [net.source((2, 3, 5, 4))],
                                                     {"activation": ACTIVATIONS[act]})])
    for batch in (1, 2):
        def several(net, batch=batch):
            a, b = net.source((batch, 2, 3, 3), "a"), net.source((batch, 3, 3, 3), "b")
            return [net.op("Activation", [a, b], {"activation": ACTIVATIONS["tanh"]})]
        suite.add(f"several_{batch}", several)
    return suite.run()


@pytest.mark.parametrize("act", ACTIVATION_CASES)
def test_activation(activation_suite, act):
    activation_suite.check(act)


@pytest.mark.parametrize("batch", [1, 2])
def test_activation_several_inputs(activation_suite, batch):
    activation_suite.check(f"several_{batch}")


def test_dropout_training_and_inference():
    net = Net(seed=15)
    y = net.op("Dropout", [net.source((4, 3, 5, 5))], {"dropout": 0.4, "activation": ACTIVATIONS["relu"]})
    p = check_training(net.output(y), expect_c=[y])
    mask = [a for k, a in p._aux.items() if k.endswith(".mask")][0]
    assert 0.3 < 1 - mask.mean() < 0.5
    check_inference(net, expect_c=[y])


def test_reshape_and_concat():
    for batch in (1, 3):
        net = Net(seed=16)
        a, b = net.source((batch, 2, 3, 4), "a"), net.source((batch, 3, 3, 4), "b")
        cat = net.op("Concat", [a, b])
        r = net.op("Reshape", [cat], {"shape": (5, 12, 1), "activation": ACTIVATIONS["softplus"]})
        y = net.conv(r, 2, k=(1, 1))
        check_training(net.output(y), expect_c=[cat, r])
        p = check_inference(net, expect_c=[cat, r])
        if batch == 1:
            assert p.plan.concat_aliased[cat] == [True, True]   # the producers wrote in place


SOFTMAX_CASES = [(True, 0), (False, 0), (False, 2)]


@pytest.mark.parametrize("with_loss,group", SOFTMAX_CASES)
def test_softmax(misc_suite, with_loss, group):
    misc_suite.check(("softmax", with_loss, group))


def check_batchnorm_training(net, inputs, momentum, act, close):
    """A BatchNorm of `inputs` (channels concatenated) trained one step on C and on numpy: its
    forward, backward and moving statistics run on C and pass `close(out, ref, what)`. Returns
    (the BatchNorm node, the parameters before the step)."""
    ch = sum(net.g.output_types(x)[0].shape[1] for x in inputs)
    params = {"scales": 1 + _normal(net.rng, (ch,), 0.2), "biases": _normal(net.rng, (ch,)),
              "means": _normal(net.rng, (ch,), 0.1), "variances": 1 + net.rng.random(ch).astype(np.float32)}
    y = net.op("BatchNorm", inputs, {"epsilon": 1e-5, "momentum": momentum, "unbiased": momentum == 0.3,
                                     "activation": ACTIVATIONS[act]}, params)
    net.output(y)
    before = {k: v.array.copy() for k, v in net.g.params.items()}
    tg, seeds = _training_outputs(net)
    ref = run_numpy_training(tg, net.feeds, seeds)
    after_numpy = {k: v.array.copy() for k, v in net.g.params.items()}
    for k, v in before.items():
        net.g.params[k].array[...] = v
    out, p = run_c_training(tg, net.feeds, seeds)
    assert p.where[y] == "c" and p.where[f"grad:{y}"] == "c"
    for t, value in ref.items():
        close(out[t], value, str(t))
    for k, v in after_numpy.items():   # moving statistics
        close(net.g.params[k].array, v, k)
    return y, before


def _assert_rel_err(out, ref, what):
    assert rel_err(out, ref) < 1e-5, what


@pytest.mark.parametrize("momentum,act", [(0.1, "relu"), (0.0, "none"), (0.3, "tanh")])
def test_batchnorm(momentum, act):
    net = Net(seed=18)
    y, _ = check_batchnorm_training(net, [net.source((4, 3, 5, 6))], momentum, act, _assert_rel_err)
    check_inference(net, expect_c=[y])


def test_batchnorm_statistics_merged_image_by_image():
    """On planes of at least 256 floats the C kernel merges each plane's mean and squared
    deviations image after image (Chan's pairwise update): maps away from zero whose images have
    different means keep the reference's statistics, output and gradients (a dropped between-image
    term would miss most of the variance)."""
    net = Net(seed=19)
    x = net.source((6, 3, 16, 17))
    shift = 8.0 + 3.0 * net.rng.standard_normal((6, 1, 1, 1))
    net.feeds["input"] = (net.feeds["input"] + shift).astype(np.float32)
    check_batchnorm_training(net, [x], 0.1, "none", _assert_rel_err)


ELEMWISE_CASES = {
    "sum_scalar": ("Sum", [1.0, -0.5, 2.0], [0.0, 0.25, -1.0]),
    "sum_per_channel": ("Sum", [[1.0, 2.0, -1.0, 0.5], 0.5, [1.5]], [0.0, [0.1, 0.2, 0.3, 0.4], 0.0]),
    "abssum": ("AbsSum", [1.0, [0.5, -1.0, 2.0, 1.0], 3.0], [0.0, 0.0, 0.0]),
    "euclidean": ("EuclideanSum", [1.0, [0.5, -1.0, 2.0, 1.0], 0.7], [0.0, 0.3, [0.0, 0.1, 0.0, 0.2]]),
    "prod": ("Prod", [1.0, 1.0, 1.0], [0.0, 0.0, 0.0]),
    "max": ("Max", [1.0, 1.0, 1.0], [0.0, 0.0, 0.0]),
}


def _elemwise_case(net, op, weights, shifts):
    xs = [net.source((2, 4, 3, 5), name) for name in "abc"]
    return [net.op("ElemWise", xs, {"operation": op, "weights": weights, "shifts": shifts,
                                    "activation": ACTIVATIONS["leaky_clip"] if op == "Sum" else None})]


@pytest.fixture(scope="module")
def elemwise_suite():
    suite = Suite(seed=44)
    for case, args in ELEMWISE_CASES.items():
        suite.add(case, lambda net, args=args: _elemwise_case(net, *args))
    return suite.run()


@pytest.mark.parametrize("case", sorted(ELEMWISE_CASES))
def test_elemwise(elemwise_suite, case):
    elemwise_suite.check(case)


def test_elemwise_and_addn_on_a_residual():
    """A tensor read twice gets the sum of its gradients (AddN); ElemWise on two outputs."""
    net = Net(seed=20)
    x = net.source((2, 3, 6, 6))
    a = net.conv(x, 3, k=(3, 3), padding=(1, 1), activation=ACTIVATIONS["relu"])
    y = net.op("ElemWise", [a, x], {"operation": "Sum", "weights": [1.0, 1.0], "shifts": [0.0, 0.0],
                                    "activation": ACTIVATIONS["relu"]})
    p = check_training(net.output(y), expect_c=[a, y])
    addn = [n for n in p.graph.nodes() if p.graph.op(n) == "AddN"]
    assert addn and all(p.where[n] == "c" for n in addn)


PADDING_CASES = [(1, 2, 0, 3), (-1, 1, 2, -2)]
TRANSPOSE_CASES = [(1, 0, 2, 3), (2, 0, 1, 3), (0, 2, 1, 3)]
RESIZE_CASES = [("Bilinear", False, (7, 10)), ("BilinearTF", True, (9, 4)), ("BilinearTF", False, (5, 9)),
                ("NearestNeighbor", False, (8, 3))]


@pytest.fixture(scope="module")
def misc_suite():
    """Softmax, Padding, Transpose, Resize and Scaling cases in one program."""
    from n2d2.scaling import FloatingPointScaling

    suite = Suite(seed=45)
    for with_loss, group in SOFTMAX_CASES:
        suite.add(("softmax", with_loss, group), lambda net, w=with_loss, g=group: [
            net.op("Softmax", [net.source((3, 6, 2, 3))], {"with_loss": w, "group_size": g})])
    for top, bot, left, right in PADDING_CASES:
        suite.add(("padding", top, bot, left, right), lambda net, a=(top, bot, left, right): [
            net.op("Padding", [net.source((2, 3, 5, 6))], dict(zip(("top", "bot", "left", "right"), a)))])
    for perm in TRANSPOSE_CASES:
        suite.add(("transpose", perm), lambda net, perm=perm: [
            net.op("Transpose", [net.source((2, 3, 4, 5))], {"perm": perm})])
    for mode, align, size in RESIZE_CASES:
        suite.add(("resize", mode, align, size), lambda net, m=mode, a=align, sz=size: [
            net.op("Resize", [net.source((2, 3, 4, 6))], {"height": sz[0], "width": sz[1], "mode": m,
                                                           "align_corners": a})])
    for clipped in (False, True):
        scaling = FloatingPointScaling([0.5, -1.5, 2.0], is_clipped=clipped,
                                       clipping=[0.8, 1.2, 0.3] if clipped else None)
        suite.add(("scaling", clipped), lambda net, sc=scaling: [
            net.op("Scaling", [net.source((2, 3, 4, 4))], {"scaling": sc})])
    return suite.run()


@pytest.mark.parametrize("top,bot,left,right", PADDING_CASES)
def test_padding(misc_suite, top, bot, left, right):
    misc_suite.check(("padding", top, bot, left, right))


@pytest.mark.parametrize("perm", TRANSPOSE_CASES)
def test_transpose(misc_suite, perm):
    misc_suite.check(("transpose", perm))


@pytest.mark.parametrize("mode,align,size", RESIZE_CASES)
def test_resize(misc_suite, mode, align, size):
    misc_suite.check(("resize", mode, align, size))


@pytest.mark.parametrize("clipped", [False, True])
def test_scaling_floating_point(misc_suite, clipped):
    misc_suite.check(("scaling", clipped))


@pytest.mark.parametrize("batch", [1, 3])
def test_epilogue(batch):
    net = Net(seed=25)
    x0, x1, x2 = (net.source((batch, 3, 4, 5), n) for n in "abc")
    steps = (("scale", (0.5, 2.0, -1.0)), ("bias", 0.25), ("activation", ACTIVATIONS["tanh"]),
             ("add", 1, 1.0, 0.0), ("add", 2, (0.5, 1.0, 1.5), (0.1, 0.0, -0.1)), ("scale", 1.5),
             ("add", 1, -0.5, 0.0), ("activation", ACTIVATIONS["relu"]))
    y = net.op("Epilogue", [x0, x1, x2], {"steps": steps, "activation": None})
    check_training(net.output(y), expect_c=[y])


def test_fallback_nodes_run_on_numpy_between_c_kernels():
    """Ops without a C kernel (Identity, fixed-point Scaling) run on the reference over the arena."""
    from n2d2.scaling import FixedPointScaling

    net = Net(seed=26)
    a = net.conv(net.source((2, 3, 8, 8)), 4, k=(3, 3), padding=(1, 1), activation=ACTIVATIONS["relu"])
    i = net.op("Identity", [a])
    s = net.op("Scaling", [i], {"scaling": FixedPointScaling(4, [3, 5, 7, 9])})
    p = net.op("Pool", [s], {"pooling": "Max", "pool": (2, 2), "stride": (2, 2), "padding": (0, 0), "mapping": None})
    t = net.op("Transpose", [p], {"perm": (1, 0, 2, 3)})
    y = net.op("Fc", [t], {"activation": None}, {"weights": _normal(net.rng, (5, 64), 0.1)})
    net.output(y)
    prog = check_training(net, expect_c=[a, p, t, y])
    assert prog.where[i] == "numpy" and prog.where[s] == "numpy"
    assert prog.where[f"grad:{i}"] == "numpy" and prog.where[f"grad:{s}"] == "numpy"
    check_inference(net)


# -- program behaviour ------------------------------------------------------------------------------
def _tiny_net(seed=27):
    net = Net(seed=seed)
    y = net.conv(net.input((1, 2, 6, 6)), 3, k=(3, 3), activation=ACTIVATIONS["relu"])
    return net.output(y)


def test_compile_cache_is_reused(tmp_path, monkeypatch):
    monkeypatch.setenv("N2D2_CACHE", str(tmp_path / "cache"))
    net = _tiny_net()
    c_backend.CProgram(net.g, [net.g.topological_order()])
    calls = []

    def no_compiler(cmd, *args, **kwargs):
        if "--version" not in cmd:
            calls.append(cmd)
            raise AssertionError("the compiler ran although the library was cached")
        return subprocess.CompletedProcess(cmd, 0, stdout="gcc (cached test) 0\n", stderr="")

    real_run = subprocess.run
    monkeypatch.setattr(compiler.subprocess, "run", lambda cmd, *a, **k: real_run(cmd, *a, **k)
                        if "--version" in cmd else no_compiler(cmd, *a, **k))
    p = check_inference(_tiny_net())
    assert not calls and p.where
    libs = [f for f in os.listdir(tmp_path / "cache") if f.endswith(".so")]
    assert len(libs) == 1


def test_compiler_error_names_the_generated_file(tmp_path, monkeypatch):
    monkeypatch.setenv("N2D2_CACHE", str(tmp_path))
    with pytest.raises(compiler.CompilerError) as info:
        compiler.build_shared_library("this is not C;\n", name="broken")
    message = str(info.value)
    path = [w for w in message.split() if w.endswith(".c:") or w.endswith(".c")][0].rstrip(":")
    assert os.path.exists(path) and path.startswith(str(tmp_path))
    assert "broken" in path


def test_parameter_pointers_follow_replaced_arrays():
    net = _tiny_net()
    p = check_inference(net)
    pname = [k for k in net.g.params if k.endswith("weights")][0]
    net.g.params[pname].array = net.g.params[pname].array * 2.0      # a new array, not an in-place edit
    from n2d2.codegen import numpy_exec

    ref = numpy_exec.run(net.g, net.feeds)[0]
    p.feed(net.feeds)
    p.run_phase(0)
    assert rel_err(p.view(net.g.outputs[0]), ref) < 1e-5


def test_inference_program_prepared_call():
    """InferenceProgram.run through CProgram.inference_call (lookups done once): the outputs are
    fresh copies, follow new inputs, replaced and edited parameter arrays, and a bad feed fails as
    feed() does."""
    from n2d2.codegen import numpy_exec
    from n2d2.codegen.programs import InferenceProgram

    net = _tiny_net(seed=28)
    prog = InferenceProgram(net.g, "c")
    assert prog._call is not None
    x = net.g.inputs[0]
    pname = [k for k in net.g.params if k.endswith("weights")][0]
    first = prog.run(net.feeds)[0]
    assert rel_err(first, numpy_exec.run(net.g, net.feeds)[0]) < 1e-5
    for change in ("input", "replaced", "edited"):
        if change == "input":
            net.feeds[x] = net.feeds[x] + 1.0
        elif change == "replaced":
            net.g.params[pname].array = net.g.params[pname].array * -2.0   # a new array
        else:
            net.g.params[pname].array[0] += 1.0                             # in place
        out = prog.run(net.feeds)[0]
        assert rel_err(out, numpy_exec.run(net.g, net.feeds)[0]) < 1e-5, change
        assert not np.array_equal(out, first), change
    assert rel_err(first, prog.run(net.feeds)[0]) > 1e-3      # the first result was a copy, kept
    with pytest.raises(ValueError):
        prog.run({x: np.zeros((0, 2, 6, 6), np.float32)})
    with pytest.raises(KeyError):
        prog.run({"no such input": net.feeds[x]})


def test_team_size_ignores_torch_set_num_threads(monkeypatch):
    """torch's libgomp.so.1 is the one the generated libraries bind to once torch is imported:
    torch.set_num_threads(1) must not shrink programs built afterwards to one thread."""
    torch = pytest.importorskip("torch")
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("N2D2_THREADS", raising=False)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        net = Net(seed=11)
        y = net.conv(net.source((16, 8, 20, 20)), 16, k=(3, 3), padding=(1, 1), activation=ACTIVATIONS["relu"])
        p = c_backend.CProgram(net.output(y).g, [net.g.topological_order()])
        assert p.nthreads == c_backend.team_size() == len(os.sched_getaffinity(0))
    finally:
        torch.set_num_threads(before)
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert c_backend.team_size() == 3


def test_profile_mode(capsys):
    net = _tiny_net()
    p = c_backend.CProgram(net.g, [net.g.topological_order()], profile=True)
    for _ in range(3):
        p.feed(net.feeds)
        p.run_phase(0)
    prof = p.profile()
    node = net.g.outputs[0][0]
    assert prof[node][0] == 3 and prof[node][1] > 0
    p.print_profile()
    assert node in capsys.readouterr().out


@pytest.mark.parametrize("clock,mode", [("cpu", 2), ("process", 3)])
def test_profile_clock_from_the_environment(monkeypatch, clock, mode):
    """N2D2_PROFILE=cpu times kernels by the calling thread's CPU time, =process by every thread's."""
    monkeypatch.setenv("N2D2_PROFILE", clock)
    net = _tiny_net()
    p = c_backend.CProgram(net.g, [net.g.topological_order()])
    atexit.unregister(p.print_profile)
    for _ in range(2):
        p.feed(net.feeds)
        p.run_phase(0)
    node = net.g.outputs[0][0]
    assert p._profiling == mode and p.profile()[node][0] >= 2 and p.profile()[node][1] > 0


# -- whole networks ---------------------------------------------------------------------------------
def _lenet():
    try:
        from n2d2.models.lenet import LeNetINI

        return LeNetINI()
    except ImportError:   # models not available: the same architecture by hand
        from n2d2.activation import Linear, Rectifier
        from n2d2.cells import Conv, Dropout, Fc, Pool2d, Sequence
        from n2d2.filler import He

        table = np.array([[1, 0, 0, 0, 1, 1, 1, 0, 0, 1, 1, 1, 1, 0, 1, 1],
                          [1, 1, 0, 0, 0, 1, 1, 1, 0, 0, 1, 1, 1, 1, 0, 1],
                          [1, 1, 1, 0, 0, 0, 1, 1, 1, 0, 0, 1, 0, 1, 1, 1],
                          [0, 1, 1, 1, 0, 0, 1, 1, 1, 1, 0, 0, 1, 0, 1, 1],
                          [0, 0, 1, 1, 1, 0, 0, 1, 1, 1, 1, 0, 1, 1, 0, 1],
                          [0, 0, 0, 1, 1, 1, 0, 0, 1, 1, 1, 1, 0, 1, 1, 1]], dtype=bool)
        return Sequence([
            Conv(1, 6, [5, 5], activation=Rectifier(), no_bias=True, weights_filler=He()),
            Pool2d([2, 2], stride_dims=[2, 2], pooling="Max"),
            Conv(6, 16, [5, 5], activation=Rectifier(), no_bias=True, weights_filler=He(),
                 mapping=n2d2.Tensor.from_numpy(table)),
            Pool2d([2, 2], stride_dims=[2, 2], pooling="Max"),
            Conv(16, 120, [5, 5], activation=Rectifier(), no_bias=True, weights_filler=He()),
            Fc(120, 84, activation=Rectifier(), no_bias=True, weights_filler=He()),
            Dropout(dropout=0.5),
            Fc(84, 10, activation=Linear(), no_bias=True)])


def _resnet20():
    try:
        from n2d2.models.resnet import ResNet20

        return ResNet20()
    except ImportError:
        pytest.skip("n2d2.models.resnet is not available")


def _train_three_steps(build, input_shape, nb_classes, solver=None):
    """Parameters after each of 3 SGD steps, numpy then C, from the same initial weights."""
    from n2d2.cells import Sequence, Softmax
    from n2d2.cells.deepnet_cell import training_graph
    from n2d2.ir.trace import trace

    rng = _rng(30)
    x = rng.random(input_shape).astype(np.float32)
    labels = rng.integers(0, nb_classes, input_shape[0])
    onehot = np.eye(nb_classes, dtype=np.float32)[labels].reshape(input_shape[0], nb_classes, 1, 1)
    results = {}
    for backend in ("numpy", "c"):
        n2d2.global_variables.seed = 2
        model = Sequence([build(), Softmax(with_loss=True)])
        if solver is not None:
            model.set_solver(solver())
        out = model(n2d2.Tensor(list(input_shape)))
        graph = trace(out.get_deepnet()).graph
        tg = training_graph(graph)   # what DeepNetCell.fit runs: training passes, then autodiff
        from n2d2.codegen.programs import TrainingProgram

        program = TrainingProgram(tg, backend)
        if backend == "c":
            assert all(w == "c" for w in program._c.where.values()), \
                {k: v for k, v in program._c.where.items() if v != "c"}
        n2d2.global_variables.seed = 9
        steps = []
        for _ in range(3):
            y = program.forward({tg.graph.inputs[0]: x})[0]
            program.backward({tg.graph.outputs[0]: y - onehot})
            program.update()
            # cells get fresh names per build: parameters are matched by their order
            steps.append({i: (k, p.array.copy()) for i, (k, p) in enumerate(tg.graph.params.items())})
        results[backend] = steps
    # Relative 1e-4, plus an absolute 1e-5 per element (RMS): BatchNorm shifts that feed
    # another batch-normalised layer get gradients made of cancellations (their values stay
    # ~1e-3), and one ReLU flipped by rounding (thread count, summation order) moves them all by
    # ~1e-5 in the next step -- seen with both backends' summation orders for some seeds. A wrong
    # kernel moves them by the size of their gradient.
    for step, (ref, got) in enumerate(zip(results["numpy"], results["c"])):
        for i, (name, value) in ref.items():
            diff = float(np.linalg.norm(got[i][1] - value))
            bound = 1e-4 * float(np.linalg.norm(value)) + 1e-5 * np.sqrt(value.size)
            assert diff <= bound, f"step {step + 1}, {name}: |difference| {diff:.2e} > {bound:.2e} " \
                                  f"(relative error {rel_err(got[i][1], value):.2e})"
    return results


def test_lenet_training_matches_numpy():
    _train_three_steps(_lenet, (8, 1, 32, 32), 10)


def test_resnet20_training_matches_numpy():
    from n2d2.solver import SGD

    _train_three_steps(_resnet20, (2, 3, 32, 32), 10, solver=lambda: SGD(learning_rate=0.05, momentum=0.9))


# -- Deconv --------------------------------------------------------------------------------------------
DECONV_CASES = {
    "3x3_s2_pad_bias_relu": ((2, 4, 5, 6), 3, dict(k=(3, 3), stride=(2, 2), padding=(1, 1),
                                                   activation=ACTIVATIONS["relu"])),
    "4x4_s2_nobias": ((3, 2, 4, 4), 5, dict(k=(4, 4), stride=(2, 2), bias=False)),
    "dilation_nonsquare": ((2, 3, 5, 4), 2, dict(k=(3, 2), stride=(1, 2), dilation=(2, 1), padding=(1, 0))),
    "groups": ((2, 4, 4, 5), 6, dict(k=(3, 3), groups=2, padding=(1, 1), activation=ACTIVATIONS["tanh"])),
    "batch1": ((1, 3, 6, 6), 4, dict(k=(2, 2), stride=(2, 2))),
}


def _deconv_case(net, shape, o, kw, mapping=None):
    x = net.source(shape)
    c, k, groups = shape[1], kw["k"], kw.get("groups", 1)
    params = {"weights": _normal(net.rng, (c, o // groups) + k, 1.0 / np.sqrt(c * k[0] * k[1]))}
    if kw.get("bias", True):
        params["biases"] = _normal(net.rng, (o,), 0.5)
    attrs = {"stride": kw.get("stride", (1, 1)), "padding": kw.get("padding", (0, 0)),
             "dilation": kw.get("dilation", (1, 1)), "groups": groups, "mapping": mapping,
             "activation": kw.get("activation")}
    return [net.op("Deconv", [x], attrs, params)]


@pytest.fixture(scope="module")
def deconv_suite():
    from n2d2.ir import ops as op_registry

    if "Deconv" not in op_registry.names():
        pytest.skip("no Deconv op definition")
    suite = Suite(seed=46)
    for case, (shape, o, kw) in DECONV_CASES.items():
        suite.add(case, lambda net, shape=shape, o=o, kw=kw: _deconv_case(net, shape, o, kw))
    mapping = _rng(5).random((4, 5)) < 0.5
    suite.add("mapping", lambda net: _deconv_case(net, (2, 4, 5, 5), 5, dict(k=(3, 3), stride=(2, 2),
                                                                              padding=(1, 1)), mapping))
    return suite.run()


@pytest.mark.parametrize("case", sorted(DECONV_CASES))
def test_deconv(deconv_suite, case):
    deconv_suite.check(case)


def test_deconv_mapping(deconv_suite):
    deconv_suite.check("mapping")


def test_lenet_training_with_adam_matches_numpy():
    """Solvers without a compiled update (Adam) run in Python on the arena's gradients."""
    from n2d2.solver import Adam

    _train_three_steps(_lenet, (8, 1, 32, 32), 10, solver=lambda: Adam(learning_rate=0.01))


def test_sgd_without_momentum_and_with_clamping_matches_numpy():
    from n2d2.solver import SGD

    _train_three_steps(_lenet, (8, 1, 32, 32), 10,
                       solver=lambda: SGD(learning_rate=0.2, clamping="-0.05:0.05"))


def _lenet_mixed_solvers():
    """LeNet whose weighted cells step with different solvers, in turn: SGD with momentum,
    decay and clamping, Adam, SGD without momentum, SGD with a step-decay policy, SGD without
    Polyak momentum (Python only)."""
    from n2d2.solver import SGD, Adam

    solvers = [lambda: SGD(learning_rate=0.05, momentum=0.9, decay=0.05, clamping="-0.2:0.2"),
               lambda: Adam(learning_rate=0.01),
               lambda: SGD(learning_rate=0.1),
               lambda: SGD(learning_rate=0.05, momentum=0.5, learning_rate_policy="StepDecay",
                           learning_rate_step_size=8, learning_rate_decay=0.5),
               lambda: SGD(learning_rate=0.05, momentum=0.9, polyak_momentum=False)]
    model = _lenet()
    cells = [c for c in model._leaf_cells() if hasattr(c, "set_solver")]
    assert len(cells) >= 4
    for k, cell in enumerate(cells):
        cell.set_solver(solvers[k % len(solvers)]())
    return model


def test_mixed_solvers_match_numpy():
    """The SGD updates of a step run in one compiled call, the others in Python in their place."""
    _train_three_steps(_lenet_mixed_solvers, (8, 1, 32, 32), 10)


def test_sgd_updates_are_one_call_per_step(monkeypatch):
    """Consecutive Update nodes form one group; only the solvers without a compiled update
    (Adam, SGD without Polyak momentum) leave it for the interpreter."""
    from n2d2.cells import Sequence, Softmax
    from n2d2.cells.deepnet_cell import training_graph
    from n2d2.codegen.programs import TrainingProgram
    from n2d2.ir.trace import trace
    from n2d2.solver import SGD

    n2d2.global_variables.seed = 3
    model = Sequence([_lenet_mixed_solvers(), Softmax(with_loss=True)])
    tg = training_graph(trace(model(n2d2.Tensor([4, 1, 32, 32])).get_deepnet()).graph)
    program = TrainingProgram(tg, "c")
    c = program._c
    groups = [item for item in c._phase_items[-1] if item[0] == "updates"]
    assert len(groups) == 1 and len(groups[0][1]) == len(tg.update_nodes)
    python_nodes = []
    monkeypatch.setattr(c, "_run_numpy", lambda node, batch_size: python_nodes.append(node))
    x = _rng(4).random((4, 1, 32, 32)).astype(np.float32)
    y = program.forward({tg.graph.inputs[0]: x})[0]
    program.backward({tg.graph.outputs[0]: y})
    program.update()
    expected = [node for node in tg.update_nodes
                if not (type(s := tg.graph.params[tg.graph.attrs(node)["param"]].solver) is SGD
                        and s._config["polyak_momentum"])]
    assert python_nodes == expected and expected


def test_sgd_update_follows_a_replaced_parameter_array():
    """The batched SGD call keeps each parameter's pointers between steps: a parameter array
    replaced between steps (a weight setter) is the one updated, the old one is left alone."""
    from n2d2.cells import Sequence, Softmax
    from n2d2.cells.deepnet_cell import training_graph
    from n2d2.codegen.programs import TrainingProgram
    from n2d2.ir.trace import trace
    from n2d2.solver import SGD

    n2d2.global_variables.seed = 5
    model = Sequence([_lenet(), Softmax(with_loss=True)])
    model.set_solver(SGD(learning_rate=0.1, momentum=0.9))
    tg = training_graph(trace(model(n2d2.Tensor([4, 1, 32, 32])).get_deepnet()).graph)
    program = TrainingProgram(tg, "c")
    x = _rng(6).random((4, 1, 32, 32)).astype(np.float32)

    def step():
        y = program.forward({tg.graph.inputs[0]: x})[0]
        program.backward({tg.graph.outputs[0]: y})
        program.update()

    step()
    param = next(p for p in tg.graph.params.values() if p.solver is not None and p.array.ndim == 4)
    old = param.array
    param.array = old.copy()
    kept, before = old.copy(), param.array.copy()
    step()
    assert np.array_equal(old, kept) and not np.array_equal(param.array, before)


def test_nodes_of_one_geometry_share_a_function_and_odd_names_are_safe():
    net = Net(seed=50, name="g */ x")
    a = net.conv(net.source((2, 3, 6, 6), "in */ a"), 3, k=(3, 3), padding=(1, 1), activation=ACTIVATIONS["relu"])
    b = net.conv(net.source((2, 3, 6, 6), "in */ b"), 3, k=(3, 3), padding=(1, 1), activation=ACTIVATIONS["relu"])
    p = check_training(net.output(a, b), expect_c=[a, b])
    fname = {k["node"]: k["fname"] for k in p.kernels}
    assert fname[a] == fname[b] and fname[f"grad:{a}"] == fname[f"grad:{b}"]


def test_sgd_update_follows_changed_solver_settings():
    """A parameter's compiled SGD update refills its kept arguments each step: momentum, decay,
    clamping and learning rate changed between steps are the ones applied (as `SGD.update`)."""
    import ctypes

    from n2d2.cells import Sequence, Softmax
    from n2d2.cells.deepnet_cell import training_graph
    from n2d2.codegen.c_backend import _sgd_update
    from n2d2.codegen.programs import TrainingProgram
    from n2d2.ir.trace import trace
    from n2d2.solver import SGD

    n2d2.global_variables.seed = 5
    model = Sequence([_lenet(), Softmax(with_loss=True)])
    tg = training_graph(trace(model(n2d2.Tensor([4, 1, 32, 32])).get_deepnet()).graph)
    lib = TrainingProgram(tg, "c")._c._lib
    rng = _rng(7)
    p = rng.standard_normal(300).astype(np.float32)
    grad = rng.standard_normal(300).astype(np.float32)
    ref = p.copy()
    solver, ref_solver = SGD(learning_rate=0.1), SGD(learning_rate=0.1)
    settings = [{}, {"momentum": 0.9}, {"decay": 0.01}, {"clamping": "-0.5:0.5"}, {"learning_rate": 0.3},
                {"momentum": 0.0, "decay": 0.0}, {"clamping": ""}, {"momentum": 0.5}]
    last = None
    for change in settings:
        for key, value in change.items():
            solver.set_parameter(key, value)
            ref_solver.set_parameter(key, value)
        for _ in range(2):
            grad[...] = rng.standard_normal(300).astype(np.float32)
            q = _sgd_update(solver, p, grad, 4, last)
            assert q is not None
            lib.n2d2_sgd_parameters(1, ctypes.byref(q))
            last = q
            ref_solver.update(ref, grad, 4)
            np.testing.assert_allclose(p, ref, rtol=1e-5, atol=1e-6, err_msg=str(change))
