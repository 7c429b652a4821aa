"""NaN and +-Inf propagate through every compiled kernel as through the numpy reference.

Fresh random inputs get a NaN, a +Inf and a -Inf at random positions; the C backend (forward
and gradients), the exported C program and the CUDA source under the host emulator must put
NaN / +Inf / -Inf exactly where the numpy executor does (values elsewhere are checked by the
backends' own tests). Every op's input comes through a depthwise 1x1 convolution, which keeps
each poisoned value at its pixel and channel and gives the input a gradient.
"""
import numpy as np
import pytest

import n2d2
from n2d2.ir import epilogue  # noqa: F401  (registers the Epilogue op)
from n2d2.ir.autodiff import build_training_graph
from tests.test_c_backend import (
    ACTIVATIONS,
    DECONV_CASES,
    Net,
    _conv_attrs,
    _deconv_case,
    _normal,
    _rng,
    _training_outputs,
    c_backend,
    run_c_training,
    run_numpy_training,
)

pytestmark = pytest.mark.skipif(not c_backend.available(), reason="needs a C compiler")


def pattern(a):
    """0 where finite, 1 NaN, 2 +Inf, 3 -Inf."""
    a = np.asarray(a)
    return np.select([np.isnan(a), a == np.inf, a == -np.inf], [1, 2, 3], 0).astype(np.int8)


def poison(rng, a, count=1):
    """a with `count` NaN, +Inf and -Inf each at random distinct positions."""
    a = a.copy()
    flat = a.reshape(-1)
    pos = rng.choice(flat.size, 3 * count, replace=False)
    flat[pos[:count]] = np.nan
    flat[pos[count:2 * count]] = np.inf
    flat[pos[2 * count:]] = -np.inf
    return a


def assert_same_pattern(ref, out, what, skip=()):
    """Every tensor: the same NaN / +Inf / -Inf positions; at least one holds a non-finite value."""
    bad, poisoned = [], 0
    for t, value in ref.items():
        if t in skip:
            continue
        p, q = pattern(value), pattern(out[t])
        assert p.shape == q.shape, (t, p.shape, q.shape)
        poisoned += bool(p.any())
        if not np.array_equal(p, q):
            where = np.argwhere(p != q)[:3].tolist()
            bad.append(f"{t}: {int((p != q).sum())} differ, e.g. at {where} (numpy {p[tuple(where[0])]} "
                       f"vs {what} {q[tuple(where[0])]}; 1 NaN, 2 +Inf, 3 -Inf)")
    assert not bad, f"{what} vs numpy:\n" + "\n".join(bad)
    assert poisoned, "no tensor held a non-finite value: the test would not see a hidden one"


class PoisonNet(Net):
    def source(self, shape, name="input"):
        """A poisoned input followed by a depthwise 1x1 convolution (keeps every value in place)."""
        x = self.input(shape, name)
        self.feeds[x] = poison(self.rng, self.feeds[x], count=max(1, self.feeds[x].size // 200))
        c = shape[1]
        w = 1.0 + _normal(self.rng, (c, 1, 1, 1), 0.2)
        return self.op("Conv", [x], _conv_attrs(groups=c), {"weights": w}, name=f"src_{x}")


def _rewritten(tg, p):
    """Gradients a C backward kernel rewrote in place (dy -> d(pre-activation)): not comparable."""
    return {tg.graph.inputs_of(n)[0] for n in tg.backward_nodes if tg.graph.op(n) == "Grad" and p.where[n] == "c"}


def check_c(net, expect_c=(), poison_seeds=True, close=()):
    """C vs numpy on `net`'s training graph; the output gradients (seeds) get NaN / Inf too. The
    tensors in `close` must also hold the same finite values."""
    tg, seeds = _training_outputs(net)
    if poison_seeds:
        rng = _rng(31)
        seeds = {k: poison(rng, v) if v.size >= 6 else v for k, v in seeds.items()}
    ref = run_numpy_training(tg, net.feeds, seeds)
    out, p = run_c_training(tg, net.feeds, seeds)
    for node in expect_c:
        assert p.where[node] == "c" and p.where[f"grad:{node}"] == "c", node
    assert_same_pattern(ref, out, "C backend", skip=_rewritten(tg, p))
    for t in close:
        assert np.array_equal(pattern(out[t]), pattern(ref[t])), t
        finite = pattern(ref[t]) == 0
        np.testing.assert_allclose(out[t][finite], ref[t][finite], rtol=1e-4, atol=1e-4, err_msg=str(t))
    return p


MAPPING = np.array([[1, 0, 1, 1], [1, 1, 0, 0], [0, 1, 1, 0]], dtype=bool)   # 3 inputs -> 4 outputs


def _pool(net, shape, pooling, pool, stride, pad, mapping=None, act="relu"):
    return net.op("Pool", [net.source(shape)], {"pooling": pooling, "pool": pool, "stride": stride, "padding": pad,
                                                 "mapping": mapping, "activation": ACTIVATIONS[act]})


def _elemwise(net, op, act=None):
    xs = [net.source((2, 3, 4, 5), name) for name in "abc"]
    return net.op("ElemWise", xs, {"operation": op, "weights": [1.0, -0.5, 2.0], "shifts": [0.0, 0.25, 0.0],
                                   "activation": ACTIVATIONS[act] if act else None})


RELU_CLIP = ("Rectifier", (("clipping", 0.5), ("leak_slope", 0.0)))
CASES = {
    **{f"activation_{a}": (lambda net, a=a: net.op("Activation", [net.source((2, 3, 6, 5))],
                                                    {"activation": ACTIVATIONS[a]}))
       for a in ACTIVATIONS if a != "none"},
    "activation_leaky": lambda net: net.op("Activation", [net.source((2, 3, 6, 5))], {"activation": (
        "Rectifier", (("clipping", 0.0), ("leak_slope", 0.2)))}),
    "conv_relu": lambda net: net.conv(net.source((2, 3, 9, 8)), 4, padding=(1, 1), activation=ACTIVATIONS["relu"]),
    "conv_mapping_leaky": lambda net: net.conv(net.source((2, 3, 8, 8)), 4, k=(5, 5), mapping=MAPPING,
                                               activation=ACTIVATIONS["leaky_clip"]),
    "conv_wide": lambda net: net.conv(net.source((2, 1, 32, 32)), 6, k=(5, 5), activation=ACTIVATIONS["relu"]),
    # batch 1: the epilogue (bias, ReLU / clipped ReLU) fused into the GEMM micro-kernel's stores
    "conv_1x1_full_strips_relu_clip": lambda net: net.conv(net.source((1, 8, 12, 12)), 12, k=(1, 1),
                                                           activation=RELU_CLIP),
    "conv_1x1_small_grid_relu_clip": lambda net: net.conv(net.source((1, 16, 7, 7)), 20, k=(1, 1),
                                                          activation=RELU_CLIP),
    "conv_image_s2_relu": lambda net: net.conv(net.source((1, 3, 20, 20)), 8, padding=(1, 1), stride=(2, 2),
                                               activation=ACTIVATIONS["relu"]),
    "fc_relu": lambda net: net.op("Fc", [net.source((3, 4, 3, 3))], {"activation": ACTIVATIONS["relu"]},
                                  {"weights": _normal(net.rng, (5, 36), 0.3), "biases": _normal(net.rng, (5,))}),
    "max_pool_2x2": lambda net: _pool(net, (2, 3, 8, 10), "Max", (2, 2), (2, 2), (0, 0)),
    "max_pool_2x2_wide": lambda net: _pool(net, (2, 2, 6, 22), "Max", (2, 2), (2, 2), (0, 0)),   # separable
    # no activation: the backward by lanes (y is the window's maximum), rows of 1 to 3 vectors
    "max_pool_2x2_linear": lambda net: _pool(net, (2, 3, 8, 10), "Max", (2, 2), (2, 2), (0, 0), act="none"),
    "max_pool_2x2_wide_linear": lambda net: _pool(net, (2, 2, 6, 36), "Max", (2, 2), (2, 2), (0, 0), act="none"),
    # and from a batch of 4, the forward by lanes too
    "max_pool_2x2_linear_b4": lambda net: _pool(net, (4, 3, 8, 10), "Max", (2, 2), (2, 2), (0, 0), act="none"),
    "max_pool_2x2_wide_linear_b4": lambda net: _pool(net, (4, 2, 6, 28), "Max", (2, 2), (2, 2), (0, 0), act="none"),
    "max_pool_3x3_overlap_pad": lambda net: _pool(net, (2, 3, 7, 8), "Max", (3, 3), (1, 2), (1, 1), act="none"),
    "max_pool_pad_beyond_window": lambda net: _pool(net, (2, 2, 5, 5), "Max", (2, 2), (2, 2), (2, 2), act="none"),
    "max_pool_global": lambda net: _pool(net, (3, 4, 5, 5), "Max", (5, 5), (1, 1), (0, 0), act="none"),
    "max_pool_global_9x7": lambda net: _pool(net, (2, 3, 9, 7), "Max", (9, 7), (1, 1), (0, 0), act="none"),
    "max_pool_mapping": lambda net: _pool(net, (2, 3, 6, 6), "Max", (2, 2), (2, 2), (0, 0), mapping=MAPPING),
    "avg_pool_pad": lambda net: _pool(net, (2, 3, 7, 8), "Average", (3, 3), (1, 2), (1, 1)),
    "avg_pool_mapping": lambda net: _pool(net, (2, 3, 6, 6), "Average", (2, 2), (1, 1), (0, 0), mapping=MAPPING),
    "softmax": lambda net: net.op("Softmax", [net.source((3, 6, 2, 3))], {"with_loss": False, "group_size": 0}),
    "softmax_groups": lambda net: net.op("Softmax", [net.source((3, 6, 2, 3))], {"with_loss": False,
                                                                                "group_size": 2}),
    **{f"elemwise_{op}": (lambda net, op=op: _elemwise(net, op, "relu" if op == "Sum" else None))
       for op in ("Sum", "AbsSum", "EuclideanSum", "Prod", "Max")},
    "batchnorm_relu": lambda net: net.op(
        "BatchNorm", [net.source((4, 3, 5, 6))], {"epsilon": 1e-5, "momentum": 0.1, "unbiased": False,
                                                  "activation": ACTIVATIONS["relu"]},
        {"scales": 1 + _normal(net.rng, (3,), 0.2), "biases": _normal(net.rng, (3,)),
         "means": _normal(net.rng, (3,), 0.1), "variances": 1 + net.rng.random(3).astype(np.float32)}),
    "padding": lambda net: net.op("Padding", [net.source((2, 3, 5, 6))], {"top": 1, "bot": 2, "left": 0, "right": 1}),
    "resize": lambda net: net.op("Resize", [net.source((2, 3, 4, 6))], {"height": 7, "width": 10, "mode": "Bilinear",
                                                                       "align_corners": False}),
    "transpose": lambda net: net.op("Transpose", [net.source((2, 3, 4, 5))], {"perm": (2, 0, 1, 3)}),
}


def _scaling(net):
    from n2d2.scaling import FloatingPointScaling

    sc = FloatingPointScaling([0.5, -1.5, 2.0], is_clipped=True, clipping=[0.8, 1.2, 0.3])
    return net.op("Scaling", [net.source((2, 3, 4, 4))], {"scaling": sc})


CASES["scaling_clipped"] = _scaling


@pytest.mark.parametrize("case", sorted(CASES))
def test_c_kernel_propagates_nan_and_inf_as_numpy(case):
    net = PoisonNet(seed=sum(map(ord, case)))
    y = CASES[case](net)
    check_c(net.output(y), expect_c=[y])


# The wide convolution's weight gradient runs its GEMM over the grid's junk columns and a tail
# padded to 16 pixels, where dz is 0 and x is whatever follows the row or plane (0 * Inf = NaN
# there): one seed can keep every Inf away from those reads, so each shape runs several (Deconv's
# weight gradient too).
CONV_SHAPES = {
    "wide_1x1_tail": lambda net: net.conv(net.source((1, 16, 7, 7)), 20, k=(1, 1), activation=RELU_CLIP),
    "wide_padded_junk_columns": lambda net: net.conv(net.source((1, 8, 10, 10)), 12, padding=(1, 1)),
    "wide_valid_k5_b3": lambda net: net.conv(net.source((3, 2, 20, 20)), 6, k=(5, 5)),
    "wide_mapping": lambda net: net.conv(net.source((1, 3, 12, 12)), 4, padding=(1, 1), mapping=MAPPING),
    "wide_groups_dilation": lambda net: net.conv(net.source((1, 8, 12, 12)), 8, padding=(2, 2), dilation=(2, 2),
                                                 groups=2),
    "wide_two_inputs_b2": lambda net: net.conv([net.source((2, 3, 16, 16), "a"), net.source((2, 2, 16, 16), "b")],
                                               8, padding=(1, 1)),
    "image_b2": lambda net: net.conv(net.source((2, 8, 9, 9)), 12, padding=(1, 1)),
    "image_s2_b1": lambda net: net.conv(net.source((1, 8, 11, 11)), 16, padding=(1, 1), stride=(2, 2)),
    **{f"deconv_{case}": (lambda net, case=case: _deconv_case(net, *DECONV_CASES[case])[0])
       for case in ("3x3_s2_pad_bias_relu", "batch1")},
}


@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest.mark.parametrize("case", sorted(CONV_SHAPES))
def test_c_conv_weight_gradient_propagates_nan_and_inf_as_numpy_on_several_seeds(case, seed):
    net = PoisonNet(seed=seed)
    y = CONV_SHAPES[case](net)
    check_c(net.output(y), expect_c=[y], close=[_dweights(net, y)])


@pytest.mark.parametrize("case", sorted(CONV_SHAPES))
def test_c_conv_weight_gradient_with_non_finite_values_on_plane_edges(case):
    """Finite inputs but an Inf at a plane's first pixel (what the previous plane's tail reads), a
    NaN in the last column (what the junk columns of the row above read) and a -Inf at the last
    pixel: few dW entries are non-finite, and those only."""
    net = PoisonNet(seed=4)
    y = CONV_SHAPES[case](net)
    _poison_edges(net)
    check_c(net.output(y), expect_c=[y], poison_seeds=False, close=[_dweights(net, y)])


@pytest.mark.parametrize("case", ["wide_padded_junk_columns", "wide_groups_dilation", "wide_mapping",
                                  "wide_two_inputs_b2", "image_b2"])
def test_c_conv_input_gradient_with_non_finite_weights(case):
    """Finite inputs, an Inf and a -Inf weight: the wide dx (the zero-padded dz planes convolved
    with the flipped kernel) also met them in windows off the output grid, which the reference
    drops (0 * Inf = NaN at the borders)."""
    net = PoisonNet(seed=5)
    y = CONV_SHAPES[case](net)
    for a in net.feeds.values():
        a[...] = _normal(net.rng, a.shape)
    w = net.g.params[net.g.node(y).params["weights"]].array
    w[0, 0, 0, 0], w[-1, -1, -1, -1] = np.inf, -np.inf
    check_c(net.output(y), expect_c=[y], poison_seeds=False,
            close=[(f"grad:{y}", k) for k in range(len(net.g.inputs_of(y)) + 1)])


@pytest.mark.parametrize("seed", [1, 2])
def test_c_conv_connection_table_blocks_with_and_without_non_finite_values(seed):
    """Image mode with a connection table skips the unconnected blocks only while the block's
    operand is finite (the reference's zeroed weight * Inf is NaN): here the first image holds a
    NaN, a +Inf and a -Inf, the other blocks are finite, and dz gets one of each at random, so
    that both the skipping and the dense products run."""
    from n2d2.models.lenet import CONV2_TABLE

    net = PoisonNet(seed=seed)
    x = net.source((16, 6, 14, 14))
    for a in net.feeds.values():
        a[1:] = _normal(net.rng, a[1:].shape)
    y = net.conv(x, 16, k=(5, 5), mapping=np.array(CONV2_TABLE, dtype=bool), activation=ACTIVATIONS["relu"])
    p = check_c(net.output(y), expect_c=[y], close=[_dweights(net, y)])
    g = p.geometry[y]
    assert g["CONN"] is not None and g["NBLK"] >= 2


def _dweights(net, y):
    """The weight gradient's tensor: the Grad node's output after one per data input."""
    return f"grad:{y}", len(net.g.inputs_of(y))


def _poison_edges(net):
    for a in net.feeds.values():
        n, c, h, w = a.shape
        a[...] = _normal(net.rng, a.shape)
        a[0, c - 1, 0, 0] = np.inf
        a[n - 1, c // 2, h // 2, w - 1] = np.nan
        a[n - 1, 0, h - 1, w - 1] = -np.inf


def _resnet_block_graph(batch):
    from n2d2.activation import Rectifier
    from n2d2.cells import BatchNorm2d, Conv, Fc, Pool2d, Sequence, Softmax
    from n2d2.models.resnet import BuildingBlock
    from tests.test_cuda_backend import traced

    n2d2.global_variables.seed = 7
    net = Sequence([Conv(3, 8, kernel_dims=[3, 3], padding_dims=[1, 1], no_bias=True),
                    BatchNorm2d(8, activation=Rectifier()), BuildingBlock(8, 8), BuildingBlock(8, 16, stride=2),
                    Pool2d(pool_dims=[4, 4], stride_dims=[1, 1], pooling="Average"), Fc(16, 5),
                    Softmax(with_loss=True)])
    return traced(net, (batch, 3, 8, 8))


@pytest.mark.parametrize("name", ["lenet", "resnet_block"])
def test_c_network_training_step_propagates_nan_and_inf_as_numpy(name):
    """A whole training graph (LeNet with its mapped convolution; a residual network) on a
    batch where some stimuli hold NaN / +Inf / -Inf: every activation and gradient."""
    from tests.test_cuda_backend import lenet_graph

    net = Net(seed=9)
    net.g = lenet_graph(3) if name == "lenet" else _resnet_block_graph(3)
    x = net.g.inputs[0]
    feeds = net.rng.standard_normal(net.g.output_types(x)[0].shape).astype(np.float32)
    feeds[1] = poison(net.rng, feeds[1], count=2)   # stimuli 0 and 2 stay finite
    net.feeds = {x: feeds}
    p = check_c(net, poison_seeds=False)   # finite seeds: the gradients' NaN come from the activations
    assert all(w == "c" for w in p.where.values()), {k: w for k, w in p.where.items() if w != "c"}

# -- fit stops on a non-finite loss ------------------------------------------------------------------
def _fit_setup(monkeypatch, tmp_path, nan_stimulus=False, validation=False, lr=0.05):
    from tests.test_deepnet_cell import _model

    monkeypatch.chdir(tmp_path)   # fit writes weights_init/ and weights_validation/ here
    rng = np.random.default_rng(1)
    xs = [rng.random((1, 8, 8)).astype(np.float32) for _ in range(48)]
    if nan_stimulus:
        xs[5][0, 3, 4] = np.nan
    ys = [int(x[0, :4].mean() > x[0, 4:].mean()) for x in xs]
    db = n2d2.database.Numpy()
    db.load(xs[:32], ys[:32], partition="Learn")
    if validation:
        db.load(xs[32:], ys[32:], partition="Validation")
    provider = n2d2.provider.DataProvider(db, [8, 8, 1], batch_size=8)
    model = _model()
    model.set_solver(n2d2.solver.SGD(learning_rate=lr, momentum=0.9))
    return model.to_deepnet_cell(provider)


def _fc_cells(dn):
    from n2d2.cells import Fc

    return [c for c in dn if isinstance(c, Fc)]


@pytest.mark.parametrize("backend", ["c", "numpy"])
def test_fit_stops_naming_the_first_cell_whose_output_is_not_finite(monkeypatch, tmp_path, backend):
    from n2d2.error_handler import NonFiniteError

    dn = _fit_setup(monkeypatch, tmp_path)
    dn.set_backend(backend)
    fc = _fc_cells(dn)[0]
    fc._weights[3, 5] = np.nan     # the convolution and pooling before it stay finite
    with pytest.raises(NonFiniteError, match=f"'{fc.get_name()}'") as e:
        dn.fit(1)
    assert e.value.cell == fc.get_name() and isinstance(e.value, FloatingPointError)


def test_fit_stops_on_a_nan_stimulus(monkeypatch, tmp_path):
    from n2d2.error_handler import NonFiniteError

    dn = _fit_setup(monkeypatch, tmp_path, nan_stimulus=True)
    with pytest.raises(NonFiniteError, match="input stimuli") as e:
        dn.fit(2)
    assert e.value.cell == "input"


def test_fit_stops_when_a_huge_learning_rate_diverges(monkeypatch, tmp_path):
    from n2d2.error_handler import NonFiniteError

    dn = _fit_setup(monkeypatch, tmp_path, lr=1e30)
    with pytest.raises(NonFiniteError, match="first cell whose output is not finite") as e:
        dn.fit(3)
    assert e.value.cell in {c.get_name() for c in dn}


def test_fit_without_the_check_never_keeps_non_finite_weights_as_the_best(monkeypatch, tmp_path):
    dn = _fit_setup(monkeypatch, tmp_path, validation=True)
    _fc_cells(dn)[0]._weights[0, 0] = np.nan
    assert dn.fit(2, check_finite=False) is None          # no validation score was kept
    assert not (tmp_path / "weights_validation").exists()


# -- empty batches and softmax over no channel ----------------------------------------------------------
def _conv_net(batch):
    net = Net(seed=2)
    x = net.input((batch, 3, 5, 5))
    return net, x, net.output(net.conv(x, 2, padding=(1, 1)))


def test_a_batch_of_zero_is_a_clear_value_error_on_every_backend():
    from n2d2.cells import Conv, Fc
    from n2d2.codegen import numpy_exec
    from n2d2.codegen.cuda_backend import CudaProgram
    from tests.test_cuda_backend import _RenderOnly

    empty = np.zeros((0, 3, 5, 5), dtype=np.float32)
    net, x, _ = _conv_net(2)
    with pytest.raises(ValueError, match="input 'input' fed a batch of 0"):
        numpy_exec.run(net.g, {x: empty})
    with pytest.raises(ValueError, match="input 'input' fed a batch of 0"):
        c_backend.CProgram(net.g, [net.g.topological_order()]).feed({x: empty})
    with pytest.raises(ValueError, match="input 'input' fed a batch of 0"):
        CudaProgram(net.g, [net.g.topological_order()], training=False, device=_RenderOnly()).feed({x: empty})
    with pytest.raises(ValueError, match=r"node 'conv' \(Conv\): input 0 \[0, 3, 5, 5\] has a batch of 0"):
        _conv_net(0)   # a graph built for a batch of 0 (what every backend compiles from)
    with pytest.raises(ValueError, match=r"Cell 'c0' \(Conv\): input of shape \[0, 3, 5, 5\] has a batch of 0"):
        Conv(3, 2, [3, 3], name="c0")(n2d2.Tensor([0, 3, 5, 5]))
    with pytest.raises(ValueError, match="Cell 'f0' .* batch of 0"):
        Fc(12, 2, name="f0")(n2d2.Tensor([0, 3, 2, 2]))


def test_a_batch_of_zero_into_a_deepnet_cell_is_a_value_error():
    from n2d2.cells import Sequence

    seq = Sequence([n2d2.cells.Conv(1, 2, [3, 3]), n2d2.cells.Fc(2 * 6 * 6, 3)])
    dn = seq.to_deepnet_cell(n2d2.provider.TensorPlaceholder(n2d2.Tensor([2, 1, 8, 8])))
    empty = n2d2.provider.TensorPlaceholder(n2d2.Tensor.from_numpy(np.zeros((0, 1, 8, 8), dtype=np.float32)))
    with pytest.raises(ValueError, match=r"DeepNetCell .*input of shape \[0, 1, 8, 8\] has a batch of 0"):
        dn(empty.get_data())


def test_softmax_over_zero_channels_is_a_value_error_not_a_zero_division():
    from n2d2.cells import Softmax
    from n2d2.ops.softmax import softmax_forward

    with pytest.raises(ValueError, match=r"Cell 'sm' \(Softmax\): softmax over 0 channels"):
        Softmax(name="sm")(n2d2.Tensor([2, 0, 3, 3]))
    net = Net(seed=3)
    x = net.input((2, 0, 3, 3))
    with pytest.raises(ValueError, match=r"node 'softmax' \(Softmax\): softmax over 0 channels"):
        net.op("Softmax", [x], {"with_loss": False, "group_size": 0})
    with pytest.raises(ValueError, match="Softmax over 0 channels"):
        softmax_forward(np.zeros((2, 0, 3, 3), dtype=np.float32))


# -- the exported C program ----------------------------------------------------------------------------
def test_exported_program_propagates_nan_and_inf_as_numpy(tmp_path, monkeypatch):
    """LeNet-like layers and a residual block, exported, built and run on stimuli holding NaN,
    +Inf and -Inf: the same non-finite outputs (and the same arg-max score) as the numpy backend."""
    import shutil

    from n2d2.activation import Rectifier
    from n2d2.cells import BatchNorm2d, Conv, Fc, Pool2d, Sequence, Softmax
    from n2d2.codegen.compiler import find_compiler
    from n2d2.export import export_c
    from n2d2.models.resnet import BuildingBlock
    from tests.test_export import _make, _run, _stimuli, _success_rate

    if shutil.which("make") is None or find_compiler() is None:
        pytest.skip("needs make and a C compiler")
    monkeypatch.chdir(tmp_path)
    n2d2.global_variables.seed = 2
    rng = np.random.default_rng(5)
    xs = [rng.normal(size=(3, 12, 12)).astype(np.float32) for _ in range(12)]
    for k in (1, 4, 6, 9):    # some stimuli poisoned, the others stay finite
        xs[k] = poison(rng, xs[k])
    xs[6][:, 5:8, 5:8] = -np.inf  # a max-pool window of -inf only
    database = n2d2.database.Numpy()
    database.load(xs[:4], [0, 1, 2, 3], partition="Learn")
    database.load(xs, [i % 5 for i in range(12)], partition="Test")
    provider = n2d2.provider.DataProvider(database, [12, 12, 3], batch_size=4)
    model = Sequence([Conv(3, 8, kernel_dims=[3, 3], padding_dims=[1, 1]), BatchNorm2d(8, activation=Rectifier()),
                      BuildingBlock(8, 8), Pool2d(pool_dims=[2, 2], stride_dims=[2, 2], pooling="Max"),
                      Conv(8, 6, kernel_dims=[3, 3], activation=Rectifier()), Fc(6 * 4 * 4, 5),
                      Softmax(with_loss=True)])
    dn = model.to_deepnet_cell(provider)
    dn.set_backend("numpy")
    folder = export_c(dn, export_folder_name="nan_export")
    _make(folder)
    stdout = _run(folder, "bin/network_test", "-q", "-d", "12", "outputs.bin")
    inputs, labels = _stimuli(folder, (3, 12, 12))
    assert np.array_equal(pattern(inputs), pattern(np.stack(xs)))
    out = np.fromfile(f"{folder}/outputs.bin", dtype="<f4").reshape(12, 5)
    from tests.test_export import _cell_outputs

    expected = _cell_outputs(dn, inputs, 4)
    assert pattern(expected).any() and not pattern(expected[[0, 2, 3]]).any()
    assert np.array_equal(pattern(out), pattern(expected)), (pattern(out), pattern(expected))
    assert _success_rate(stdout) == pytest.approx(100.0 * np.mean(expected.argmax(1) == labels), abs=0.006)


# -- the CUDA source under the host emulator -------------------------------------------------------------
def _cuda_patterns(record, values, what):
    from tests.test_cuda_backend import to_host

    ref = {(node, k): to_host(v) for node, outs in record.items() if node in values
           for k, v in enumerate(values[node]) if v is not None}
    out = {(node, k): to_host(a) for node, outs in record.items() if node in values for k, a in enumerate(outs)}
    assert_same_pattern(ref, {k: out[k] for k in ref}, what)


@pytest.mark.parametrize("name", ["conv", "fc_pool", "elementwise", "bn", "lenet"])
def test_cuda_kernels_propagate_nan_and_inf_as_numpy_under_the_emulator(name):
    """The CUDA source (compiled by g++ for the host emulator) on poisoned inputs: inference,
    then one training step's forward and backward, against the numpy executor."""
    from tests.test_cuda_backend import EMU, ZOO, feeds_for, inference_outputs, inference_program, lenet_graph

    build = (lambda: lenet_graph(2)) if name == "lenet" else ZOO[name]
    rng = np.random.default_rng(8)
    g = build()
    feeds = {k: poison(rng, v, count=2) for k, v in feeds_for(g, rng).items()}
    prog = inference_program(g, EMU)
    _cuda_patterns(*inference_outputs(prog, g, feeds), "CUDA inference")
    _check_cuda_training(build(), feeds, rng)


def _check_cuda_training(g, feeds, rng):
    """One training step's forward and backward of the CUDA source under the emulator against the
    numpy executor (the NaN / Inf pattern of every tensor); returns (numpy values, CUDA record)."""
    from n2d2.codegen.cuda_backend import CudaProgram
    from n2d2.codegen.numpy_exec import Session
    from tests.test_cuda_backend import EMU, clone

    tg, tr = build_training_graph(g), build_training_graph(clone(g))
    seeds = list(tg.grad_inputs.values())
    prog = CudaProgram(tg.graph, [tg.forward_nodes, seeds + tg.backward_nodes, tg.update_nodes], training=True,
                       device=EMU)
    seed_values = {k: rng.standard_normal(g.output_types(k[0])[k[1]].shape).astype(np.float32)
                   for k in tg.grad_inputs}
    n2d2.global_variables.seed = 100
    session = Session(tr.graph, training=True, order=tr.forward_nodes)
    session.feed(feeds)
    session.run_nodes(tr.forward_nodes)
    session.feed({tr.grad_inputs[k]: v for k, v in seed_values.items()})
    session.run_nodes(tr.backward_nodes)
    n2d2.global_variables.seed = 100
    fwd, bwd = {}, {}
    prog.feed(feeds)
    prog.run_phase(0, record=fwd)
    prog.feed({tg.grad_inputs[k]: v for k, v in seed_values.items()})
    prog.run_phase(1, record=bwd)
    _cuda_patterns(fwd, session.values, "CUDA training forward")
    _cuda_patterns(bwd, session.values, "CUDA backward")
    return session.values, bwd


@pytest.mark.parametrize("case", ["wide_1x1_tail", "wide_padded_junk_columns", "wide_two_inputs_b2"])
def test_cuda_conv_weight_gradient_with_non_finite_values_on_plane_edges(case):
    """The C wide kernel's junk-column reads have no CUDA counterpart (its GEMM loads are bounds
    checked, 0 past K): the same edge-poisoned inputs under the emulator, dW values included."""
    from tests.test_cuda_backend import to_host

    net = PoisonNet(seed=4)
    y = CONV_SHAPES[case](net)
    _poison_edges(net)
    values, bwd = _check_cuda_training(net.output(y).g, net.feeds, net.rng)
    node, k = _dweights(net, y)
    ref, out = to_host(values[node][k]), to_host(bwd[node][k])
    assert pattern(ref).any() and not pattern(ref).all()
    finite = pattern(ref) == 0
    np.testing.assert_allclose(out[finite], ref[finite], rtol=1e-4, atol=1e-4)


# -- the finding: C backend vs onnxruntime -------------------------------------------------------------
@pytest.mark.parametrize("backend", ["c", "numpy"])
def test_deepnet_cell_gives_nan_where_onnxruntime_does(tmp_path, backend):
    """A NaN pixel gave NaN on numpy and onnxruntime, but a confident softmax from the C backend."""
    pytest.importorskip("onnxruntime")
    from n2d2.activation import Rectifier
    from n2d2.cells import Conv, ElemWise, Fc, Pool2d, Sequence, Softmax
    from n2d2.tensor import Interface
    from tests.test_onnx_import import provider_for, run_cell, run_ort

    class Net(Sequence):
        def __init__(self):
            self.c1 = Conv(1, 4, [3, 3], activation=Rectifier())
            self.c2 = Conv(1, 4, [3, 3], activation=Rectifier())
            self.mx = ElemWise("Max")
            self.pool = Pool2d([2, 2], stride_dims=[2, 2], pooling="Max")
            self.fc = Fc(4 * 3 * 3, 5)
            self.sm = Softmax()
            super().__init__([self.c1, self.c2, self.mx, self.pool, self.fc, self.sm])

        def __call__(self, x):
            return self.sm(self.fc(self.pool(self.mx(Interface([self.c1(x), self.c2(x)])))))

    n2d2.global_variables.seed = 3
    dn = Net().to_deepnet_cell(provider_for((1, 8, 8)))
    dn.set_backend(backend)
    path = str(tmp_path / "net.onnx")
    dn.export_onnx(path)
    x = np.random.default_rng(0).standard_normal((3, 1, 8, 8)).astype(np.float32)
    x[0, 0, 2, 5] = np.nan
    x[2, 0, 6, 1] = np.inf
    got, expected = run_cell(dn, x), run_ort(path, x)
    assert pattern(expected)[0].all() and not pattern(expected)[1].any()
    assert np.array_equal(pattern(got), pattern(expected)), (pattern(got), pattern(expected))
