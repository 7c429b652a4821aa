"""Graph passes on hand-built graphs: each pass where it applies and where its precondition
fails, comparing the numpy executor's outputs (and, for the passes exact in training, input
and parameter gradients) before and after."""
import re

import numpy as np
import pytest

import n2d2
from n2d2.codegen import numpy_exec
from n2d2.ir import ops as op_registry
from n2d2.ir.graph import Graph, GraphError
from n2d2.ir.passes import (
    PIPELINES,
    PassManager,
    dead_node_elimination,
    fold_batchnorm,
    fold_padding,
    fuse_activation,
    fuse_elementwise_chains,
    optimize,
    remove_dropout,
    remove_identities,
    shape_inference,
)
from n2d2.scaling import FloatingPointScaling
from tests.conftest import rel_err, requires_cuda

RELU = ("Rectifier", (("clipping", 0.0), ("leak_slope", 0.0)))
LEAKY = ("Rectifier", (("clipping", 0.0), ("leak_slope", 0.1)))
TANH = ("Tanh", (("alpha", 1.0),))
LINEAR = ("Linear", (("clipping", 0.0),))
SATURATION = ("Saturation", (("threshold", 1.0),))
LOGISTIC = ("Logistic", ())


# -- building --------------------------------------------------------------------------------------
class Builder:
    """Builds graphs with random parameters (seeded, never zeros) in one dtype."""

    def __init__(self, seed=0, dtype="float64", name="g"):
        self.g = Graph(name)
        self.rng = np.random.default_rng(seed)
        self.dtype = dtype
        self.feeds = {}

    def _rand(self, *shape, scale=1.0):
        return (self.rng.standard_normal(shape) * scale).astype(self.dtype)

    def channels(self, srcs):
        return sum(self.g.output_types(s)[0].shape[1] for s in srcs)

    def input(self, name, shape, low=None):
        self.g.add_input(name, shape, self.dtype)
        x = self._rand(*shape)
        self.feeds[name] = np.abs(x) + 0.1 if low == 0 else x
        return name

    def param(self, name, array, trainable=True):
        return self.g.add_param(name, array, trainable)

    def conv(self, name, srcs, out, k=3, stride=1, padding=0, dilation=1, bias=True, groups=1, mapping=None,
             sub_sample=1, activation=None):
        srcs = [srcs] if isinstance(srcs, str) else srcs
        c = self.channels(srcs)
        params = {"weights": self.param(f"{name}.w", self._rand(out, c // groups, k, k, scale=1 / np.sqrt(c * k * k)))}
        if bias:
            params["biases"] = self.param(f"{name}.b", self._rand(out))
        attrs = {"stride": _pair(stride), "padding": _pair(padding), "dilation": _pair(dilation),
                 "sub_sample": _pair(sub_sample), "groups": groups, "mapping": mapping}
        if activation is not None:
            attrs["activation"] = activation
        return self.g.add_op(name, "Conv", srcs, attrs, params)

    def deconv(self, name, srcs, out, k=3, stride=1, padding=0, dilation=1, bias=True, groups=1, mapping=None,
               activation=None):
        """Transposed convolution; weights [C_in, out/groups, k, k]."""
        srcs = [srcs] if isinstance(srcs, str) else srcs
        c = self.channels(srcs)
        params = {"weights": self.param(f"{name}.w", self._rand(c, out // groups, k, k, scale=1 / np.sqrt(c * k * k)))}
        if bias:
            params["biases"] = self.param(f"{name}.b", self._rand(out))
        attrs = {"stride": _pair(stride), "padding": _pair(padding), "dilation": _pair(dilation), "groups": groups,
                 "mapping": mapping}
        if activation is not None:
            attrs["activation"] = activation
        return self.g.add_op(name, "Deconv", srcs, attrs, params)

    def fc(self, name, srcs, out, bias=True, activation=None):
        srcs = [srcs] if isinstance(srcs, str) else srcs
        size = sum(int(np.prod(self.g.output_types(s)[0].shape[1:])) for s in srcs)
        params = {"weights": self.param(f"{name}.w", self._rand(out, size, scale=1 / np.sqrt(size)))}
        if bias:
            params["biases"] = self.param(f"{name}.b", self._rand(out))
        return self.g.add_op(name, "Fc", srcs, {"activation": activation} if activation else {}, params)

    def bn(self, name, srcs, activation=None, momentum=0.1):
        srcs = [srcs] if isinstance(srcs, str) else srcs
        c = self.channels(srcs)
        params = {"scales": self.param(f"{name}.scales", 1 + 0.5 * self._rand(c)),
                  "biases": self.param(f"{name}.biases", self._rand(c)),
                  "means": self.param(f"{name}.means", self._rand(c), False),
                  "variances": self.param(f"{name}.variances", (0.5 + self.rng.random(c)).astype(self.dtype), False)}
        attrs = {"epsilon": 1e-5, "momentum": momentum}
        if activation is not None:
            attrs["activation"] = activation
        return self.g.add_op(name, "BatchNorm", srcs, attrs, params)

    def pool(self, name, srcs, kind="Max", pool=2, stride=2, padding=0, activation=None, mapping=None):
        srcs = [srcs] if isinstance(srcs, str) else srcs
        attrs = {"pooling": kind, "pool": _pair(pool), "stride": _pair(stride), "padding": _pair(padding),
                 "mapping": mapping}
        if activation is not None:
            attrs["activation"] = activation
        return self.g.add_op(name, "Pool", srcs, attrs)

    def op(self, name, op, srcs, **attrs):
        srcs = [srcs] if isinstance(srcs, str) else srcs
        return self.g.add_op(name, op, srcs, attrs)

    def act(self, name, srcs, spec):
        return self.op(name, "Activation", srcs, activation=spec)

    def pad(self, name, srcs, top, bot, left, right, activation=None):
        extra = {"activation": activation} if activation is not None else {}
        return self.op(name, "Padding", srcs, top=top, bot=bot, left=left, right=right, **extra)

    def add(self, name, srcs, weights=None, shifts=None, activation=None, operation="Sum"):
        weights = [1.0] * len(srcs) if weights is None else weights
        shifts = [0.0] * len(srcs) if shifts is None else shifts
        extra = {"activation": activation} if activation is not None else {}
        return self.op(name, "ElemWise", srcs, operation=operation, weights=weights, shifts=shifts, **extra)

    def scaling(self, name, srcs, scales, clipping=None, activation=None):
        s = FloatingPointScaling(list(scales), is_clipped=clipping is not None, clipping=clipping)
        extra = {"activation": activation} if activation is not None else {}
        return self.op(name, "Scaling", srcs, scaling=s, **extra)

    def outputs(self, *names):
        self.g.set_outputs(list(names))
        return self.g


def _pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


# -- running ---------------------------------------------------------------------------------------
def gradients(graph, feeds, dys, training=True, seed=3):
    """(outputs, {input: gradient}, {param name: gradient}) by the op definitions' backward."""
    n2d2.global_variables.seed = seed  # same Dropout masks before and after a pass
    outs, values, saved = numpy_exec.run(graph, feeds, training=training, keep=True)
    grads = {}
    for (name, out), dy in zip(graph.outputs, dys):
        grads[(name, out)] = grads[(name, out)] + dy if (name, out) in grads else dy
    param_grads = {}
    for name in reversed(graph.topological_order()):
        node = graph.node(name)
        if node.op == "Input":
            continue
        node_dys = [grads.get((name, i)) for i in range(len(node.outputs))]
        if all(d is None for d in node_dys):
            continue
        node_dys = [np.zeros(t.shape, t.dtype) if d is None else d for d, t in zip(node_dys, node.outputs)]
        ins = graph.inputs_of(name)
        params = {role: graph.params[p].array for role, p in node.params.items()}
        dxs, pgs = op_registry.get(node.op).backward(node.attrs, saved[name], node_dys, [True] * len(ins), params)
        if node.attrs.get("back_propagate", True) is False:   # the cell sends no gradient back
            dxs = [None] * len(ins)
        for src, dx in zip(ins, dxs):
            if dx is not None:
                grads[src] = grads[src] + dx if src in grads else dx
        for role, g in pgs.items():
            p = node.params[role]
            param_grads[p] = param_grads[p] + g if p in param_grads else g
    return outs, {n: grads.get((n, 0)) for n in graph.inputs}, param_grads


def _restore(graph):
    """Snapshot every parameter array (a training BatchNorm updates its statistics in place)."""
    snapshot = {name: np.array(p.array, copy=True) for name, p in graph.params.items()}

    def restore():
        for name, a in snapshot.items():
            graph.params[name].array[...] = a
    return restore


def _err(a, b) -> float:
    """rel_err with the norm floored at 1e-3: a gradient that is zero in exact arithmetic (a bias
    before a BatchNorm) comes out as sums of O(1) terms cancelling to ~1e-15, whose relative error is
    meaningless; the feeds and output gradients are O(1), so 1e-3 * tol is still a tight bound."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-3))


def assert_equivalent(before, after, feeds, training=False, tol=1e-9, grads=None):
    """Outputs of `before` and `after` agree; in training (by default) so do the gradients of
    the inputs and of the parameters they share."""
    grads = training if grads is None else grads
    if not grads:
        n2d2.global_variables.seed = 3
        a = numpy_exec.run(before, feeds, training=training)
        n2d2.global_variables.seed = 3
        b = numpy_exec.run(after, feeds, training=training)
        assert len(a) == len(b)
        for x, y in zip(a, b):
            assert x.shape == y.shape
            assert _err(y, x) < tol, _err(y, x)
        return
    restore = _restore(before)
    rng = np.random.default_rng(11)
    dys = [rng.standard_normal(before.output_types(n)[o].shape) for n, o in before.outputs]
    try:
        a, ga, pa = gradients(before, feeds, dys, training)
        restore()
        b, gb, pb = gradients(after, feeds, dys, training)
    finally:
        restore()
    for x, y in zip(a, b):
        assert _err(y, x) < tol, _err(y, x)
    for name in before.inputs:
        if ga[name] is None:
            assert gb[name] is None or not np.any(gb[name])
        else:
            assert _err(gb[name], ga[name]) < tol, (name, _err(gb[name], ga[name]))
    for p in set(pa) & set(pb):
        assert _err(pb[p], pa[p]) < tol, (p, _err(pb[p], pa[p]))
    assert set(pb) <= set(pa) | set(after.params) - set(before.params)


def ops_of(graph):
    return sorted(graph.op(n) for n in graph.nodes())


def unchanged(before, after):
    """Same nodes, ops, attrs, params and edges."""
    assert before.dump() == after.dump()


# -- shape inference -------------------------------------------------------------------------------
def test_shape_inference_fills_untyped_nodes_and_keeps_outputs():
    b = Builder()
    x = b.input("x", (2, 3, 8, 8))
    b.conv("c", x, 4)
    g = b.outputs("c")
    g.add_node("p", "Pool", ["c"], {"pooling": "Max", "pool": (2, 2), "stride": (2, 2), "padding": (0, 0)})
    g.add_node("a", "Activation", ["p"], {"activation": RELU})
    g.set_outputs(["a"])
    out = shape_inference(g)
    assert out.output_types("p")[0].shape == (2, 4, 3, 3)
    assert out.output_types("a")[0].shape == (2, 4, 3, 3) and out.output_types("a")[0].dtype == "float64"
    assert g.output_types("a") == []  # the input graph is not modified
    out.verify()
    assert numpy_exec.run(out, b.feeds)[0].shape == (2, 4, 3, 3)


def test_shape_inference_names_the_node_on_mismatch():
    b = Builder()
    x = b.input("x", (2, 3, 8, 8))
    b.conv("c", x, 4)
    b.act("r", "c", RELU)
    g = b.outputs("r")
    g.nx.nodes["r"]["outputs"] = [type(g.output_types("r")[0])((2, 4, 6, 7), "float64")]
    with pytest.raises(GraphError, match="'r'"):
        shape_inference(g)
    fixed = shape_inference(g, strict=False)
    assert fixed.output_types("r")[0].shape == (2, 4, 6, 6)
    # a parameter that no longer matches its input
    g2 = b.outputs("c")
    g2.params["c.w"].array = np.ones((4, 5, 3, 3))
    with pytest.raises(GraphError, match="'c'"):
        shape_inference(g2)


# -- dead nodes ------------------------------------------------------------------------------------
def test_dead_node_elimination():
    b = Builder()
    x = b.input("x", (2, 3, 6, 6))
    b.input("unused", (2, 1, 4, 4))
    b.conv("c", x, 4, padding=1)
    b.act("dead1", "c", TANH)
    b.pool("dead2", "dead1")
    b.act("r", "c", RELU)
    g = b.outputs("r")
    out = dead_node_elimination(g)
    assert set(out.nodes()) == {"x", "unused", "c", "r"}
    assert out.inputs == ["x", "unused"]
    assert "dead1" in g.nodes()
    assert_equivalent(g, out, b.feeds)
    assert_equivalent(g, out, b.feeds, training=True)
    unchanged(out, dead_node_elimination(out))


# -- identities and dropout ------------------------------------------------------------------------
def test_remove_identities():
    b = Builder()
    x = b.input("x", (2, 3, 5, 5))
    y = b.input("y", (2, 2, 5, 5))
    b.op("i1", "Identity", x)
    b.conv("c", "i1", 4, padding=1)
    b.op("i2", "Identity", "c", activation=TANH)       # -> Activation(Tanh)
    b.act("cat", ["i2", y], None)                          # -> Concat
    b.act("lin", "cat", LINEAR)                            # identity spec: removed
    b.op("i3", "Identity", "lin")                          # a graph output
    g = b.outputs("i3", "i2")
    out = remove_identities(g)
    assert "i1" not in out.nodes() and "lin" not in out.nodes() and "i3" not in out.nodes()
    assert out.op("i2") == "Activation" and out.attrs("i2") == {"activation": TANH}
    assert out.op("cat") == "Concat"
    assert out.outputs == [("cat", 0), ("i2", 0)]
    assert out.inputs_of("c") == [("x", 0)]
    assert g.op("i2") == "Identity"
    out.verify()
    assert_equivalent(g, out, b.feeds)
    assert_equivalent(g, out, b.feeds, training=True)


def test_remove_identities_keeps_real_activations():
    b = Builder()
    x = b.input("x", (2, 3, 5, 5))
    b.act("a", x, ("Linear", (("clipping", 0.5),)))
    g = b.outputs("a")
    unchanged(g, remove_identities(g))


def test_remove_dropout_inference_only():
    b = Builder()
    x = b.input("x", (2, 3, 5, 5))
    y = b.input("y", (2, 2, 5, 5))
    b.conv("c", x, 4, padding=1)
    b.op("d1", "Dropout", "c", dropout=0.5)
    b.op("d2", "Dropout", ["d1", y], dropout=0.3)                       # -> Concat
    b.op("d3", "Dropout", "d2", dropout=0.2, activation=RELU)           # -> Activation
    b.op("d4", "Dropout", ["d3", y], dropout=0.2, activation=LOGISTIC)  # -> Activation over 2
    g = b.outputs("d4")
    out = remove_dropout(g, mode="inference")
    assert "d1" not in out.nodes()
    assert out.op("d2") == "Concat" and out.inputs_of("d2") == [("c", 0), ("y", 0)]
    assert out.op("d3") == "Activation" and out.attrs("d3") == {"activation": RELU}
    assert out.op("d4") == "Activation" and len(out.inputs_of("d4")) == 2
    out.verify()
    assert_equivalent(g, out, b.feeds)
    # gradients of the inference graph (Dropout is the identity there too)
    assert_equivalent(g, out, b.feeds, training=False, grads=True)
    unchanged(g, remove_dropout(g, mode="training"))
    with pytest.raises(ValueError):
        remove_dropout(g, mode="eval")


# -- batch-norm folding ----------------------------------------------------------------------------
@pytest.mark.parametrize("case", ["plain", "nobias", "groups", "mapping", "stride", "linear", "float32"])
def test_fold_batchnorm_conv(case):
    dtype = "float32" if case == "float32" else "float64"
    b = Builder(seed=1, dtype=dtype)
    x = b.input("x", (3, 4, 7, 7))
    kw = {"nobias": dict(bias=False), "groups": dict(groups=2), "stride": dict(stride=2, padding=1, dilation=2),
          "mapping": dict(mapping=np.random.default_rng(0).random((4, 6)) > 0.4),
          "linear": dict(activation=LINEAR)}.get(case, {})
    b.conv("c", x, 6, **kw)
    b.bn("bn", "c", activation=LEAKY)
    g = b.outputs("bn")
    originals = {k: np.array(p.array, copy=True) for k, p in g.params.items()}
    out = fold_batchnorm(g)
    assert ops_of(out) == ["Conv", "Input"]
    assert out.attrs("c")["activation"] == LEAKY
    assert out.outputs == [("c", 0)]
    new_w, new_b = out.node("c").params["weights"], out.node("c").params["biases"]
    assert new_w != "c.w" and new_b not in ("c.b",) and new_w in out.params and new_b in out.params
    assert out.params[new_w].array.dtype == np.dtype(dtype)
    for k, a in originals.items():   # the shared arrays are untouched
        np.testing.assert_array_equal(g.params[k].array, a)
    out.verify()
    assert_equivalent(g, out, b.feeds, tol=1e-5 if dtype == "float32" else 1e-10)


def test_fold_batchnorm_fc_and_inference_gradients():
    b = Builder(seed=2)
    x = b.input("x", (4, 3, 2, 2))
    b.fc("f", x, 5, bias=False)
    b.bn("bn", "f")
    b.act("r", "bn", TANH)
    g = b.outputs("r")
    out = fold_batchnorm(g)
    assert ops_of(out) == ["Activation", "Fc", "Input"]
    assert "activation" not in out.attrs("f")
    assert_equivalent(g, out, b.feeds, tol=1e-10)
    assert_equivalent(g, out, b.feeds, training=False, grads=True, tol=1e-10)


def test_fold_batchnorm_preconditions():
    b = Builder(seed=3)
    x = b.input("x", (2, 3, 6, 6))
    b.conv("c_act", x, 4, activation=RELU)              # fused activation before the BN
    b.bn("bn1", "c_act")
    b.conv("c_shared", x, 4)                            # another consumer
    b.bn("bn2", "c_shared")
    b.act("other", "c_shared", TANH)
    b.conv("c_out", x, 4)                               # a graph output
    b.bn("bn3", "c_out")
    b.conv("c_sub", x, 4, sub_sample=2)                 # sub-sampling scales the bias
    b.bn("bn4", "c_sub")
    b.conv("c_a", x, 2)
    b.conv("c_b", x, 2)
    b.bn("bn5", ["c_a", "c_b"])                         # two inputs (a concatenation)
    b.pool("p", x)
    b.bn("bn6", "p")                                    # not a weighted producer
    g = b.outputs("bn1", "bn2", "other", "bn3", "c_out", "bn4", "bn5", "bn6")
    unchanged(g, fold_batchnorm(g))
    b.conv("c_ok", x, 4)
    b.bn("bn7", "c_ok")
    g = b.outputs("bn1", "bn7")
    unchanged(g, fold_batchnorm(g, mode="training"))
    out = fold_batchnorm(g)
    assert "bn7" not in out.nodes() and "bn1" in out.nodes()
    assert_equivalent(g, out, b.feeds)


@pytest.mark.parametrize("groups,bias", [(1, False), (2, True), (1, "mapping")])
def test_fold_batchnorm_deconv(groups, bias):
    b = Builder(seed=4)
    x = b.input("x", (2, 4, 5, 5))
    mapping = np.random.default_rng(1).random((4, 6)) > 0.4 if bias == "mapping" else None
    b.deconv("d", x, 6, stride=2, padding=1, groups=groups, bias=bool(bias), mapping=mapping, activation=LINEAR)
    b.bn("bn", "d", activation=RELU)
    g = b.outputs("bn")
    out = fold_batchnorm(g)
    assert ops_of(out) == ["Deconv", "Input"]
    assert out.attrs("d")["activation"] == RELU
    assert_equivalent(g, out, b.feeds)


# -- padding folding -------------------------------------------------------------------------------
@pytest.mark.parametrize("conv_kw", [dict(), dict(padding=1), dict(padding=(-1, 1), stride=2),
                                     dict(dilation=2, groups=3), dict(padding=-2)])
def test_fold_padding_into_conv(conv_kw):
    b = Builder(seed=5)
    x = b.input("x", (2, 3, 9, 8))
    b.pad("pad", x, 2, 2, 1, 1)
    b.conv("c", "pad", 3, **conv_kw)
    g = b.outputs("c")
    out = fold_padding(g)
    assert ops_of(out) == ["Conv", "Input"]
    own = _pair(conv_kw.get("padding", 0))
    assert out.attrs("c")["padding"] == (own[0] + 2, own[1] + 1)
    out.verify()
    assert_equivalent(g, out, b.feeds)
    assert_equivalent(g, out, b.feeds, training=True)
    unchanged(out, fold_padding(out, mode="training"))


def test_fold_padding_into_pools():
    b = Builder(seed=6)
    x = b.input("x", (2, 3, 7, 7))
    b.pad("pa", x, 1, 1, 2, 2)
    b.pool("avg", "pa", "Average", pool=3, stride=2, padding=1)
    b.conv("c", x, 3, padding=1, activation=RELU)
    b.pad("pm", "c", 1, 1, 1, 1)
    b.pool("max", "pm", "Max", pool=2, stride=1)
    b.act("r", x, RELU)
    b.pad("pm2", "r", 2, 2, 2, 2)
    b.pool("max2", "pm2", "Max", pool=2, stride=2)   # windows wholly inside the padding
    mapping = np.random.default_rng(2).random((3, 4)) > 0.5
    b.pad("pmap", x, 1, 1, 1, 1)
    b.pool("avgmap", "pmap", "Average", pool=2, stride=1, mapping=mapping)
    b.pad("pmap2", "r", 1, 1, 0, 0)
    b.pool("maxmap", "pmap2", "Max", pool=3, stride=2, mapping=mapping)
    g = b.outputs("avg", "max", "max2", "avgmap", "maxmap")
    out = fold_padding(g)
    assert ops_of(out) == ["Activation", "Conv", "Input"] + ["Pool"] * 5
    assert out.attrs("avg")["padding"] == (2, 3) and out.attrs("max")["padding"] == (1, 1)
    assert_equivalent(g, out, b.feeds)
    # training: only the Average pool folds (Max ties with a padded zero change the gradient)
    tr = fold_padding(g, mode="training")
    assert "pa" not in tr.nodes() and "pmap" not in tr.nodes()
    assert {"pm", "pm2", "pmap2"} <= set(tr.nodes())
    assert_equivalent(g, tr, b.feeds, training=True)


def test_fold_padding_preconditions():
    b = Builder(seed=7)
    x = b.input("x", (2, 3, 7, 7))
    b.pad("asym", x, 1, 2, 1, 1)
    b.conv("c1", "asym", 2)
    b.pad("neg", x, -1, -1, 0, 0)
    b.conv("c2", "neg", 2)
    b.pad("act", x, 1, 1, 1, 1, activation=LOGISTIC)
    b.conv("c3", "act", 2)
    b.pad("signed", x, 1, 1, 1, 1)
    b.pool("mx", "signed", "Max", pool=3, stride=1)          # input may be negative
    b.pad("two", x, 1, 1, 1, 1)
    b.pad("two_b", x, 1, 1, 1, 1)
    b.conv("c4", ["two", "two_b"], 2, k=1, padding=1)        # Conv reads two inputs
    b.act("a", "two", TANH)                                  # not a Conv / Pool
    g = b.outputs("c1", "c2", "c3", "mx", "c4", "a")
    unchanged(g, fold_padding(g))


def test_fold_padding_shared_and_concatenated():
    b = Builder(seed=8)
    x = b.input("x", (2, 3, 6, 6))
    y = b.input("y", (2, 2, 6, 6))
    b.pad("p", [x, y], 1, 1, 2, 2)
    b.conv("c", "p", 4)
    b.act("t", "p", TANH)
    g = b.outputs("c", "t")
    out = fold_padding(g)
    assert out.inputs_of("c") == [("x", 0), ("y", 0)]
    assert "p" in out.nodes()   # still read by "t"
    assert_equivalent(g, out, b.feeds)
    assert_equivalent(g, out, b.feeds, training=True)


# -- activation fusion -----------------------------------------------------------------------------
def test_fuse_activation_into_producers():
    b = Builder(seed=9)
    x = b.input("x", (2, 3, 6, 6))
    b.conv("c", x, 4, padding=1)
    b.act("a1", "c", RELU)
    b.bn("bn", "a1")
    b.act("a2", "bn", TANH)
    b.pool("p", "a2", "Average")
    b.act("a3", "p", LOGISTIC)
    b.conv("c2", x, 4, padding=1, k=3, stride=2)
    b.add("e", ["a3", "c2"], weights=[0.5, 2.0], shifts=[0.1, 0.0])
    b.act("a4", "e", LEAKY)
    b.fc("f", "a4", 3, activation=LINEAR)                  # identity spec: replaced
    b.act("a5", "f", SATURATION)
    g = b.outputs("a5")
    out = fuse_activation(g)
    assert not any(out.op(n) == "Activation" for n in out.nodes())
    assert [out.attrs(n)["activation"] for n in ("c", "bn", "p", "e", "f")] == [RELU, TANH, LOGISTIC, LEAKY,
                                                                                SATURATION]
    assert out.outputs == [("f", 0)]
    out.verify()
    assert_equivalent(g, out, b.feeds)
    assert_equivalent(g, out, b.feeds, training=True)


def test_fuse_activation_idempotent_and_preconditions():
    b = Builder(seed=10)
    x = b.input("x", (2, 3, 6, 6))
    b.conv("c", x, 4, padding=1, activation=RELU)
    b.act("again", "c", RELU)               # relu(relu(z)) == relu(z): removed
    b.act("other", "c", TANH)               # c already has an activation: kept
    b.conv("c2", x, 4)
    b.act("t", "c2", TANH)                  # c2 has another consumer: kept
    b.act("s", "c2", LOGISTIC)
    b.conv("c3", x, 2, padding=1)
    b.act("cat", ["c3", "c"], RELU)         # two inputs (concatenation): kept
    b.conv("c4", x, 4, padding=1, activation=LEAKY)
    b.act("leak2", "c4", LEAKY)             # leaky is not idempotent: kept
    b.op("pad", "Padding", x, top=1, bot=1, left=1, right=1)
    b.act("tp", "pad", TANH)                # Padding is not a producer that fuses
    b.conv("c5", x, 4)
    b.act("out", "c5", TANH)
    g = b.outputs("again", "other", "t", "s", "cat", "leak2", "tp", "c5", "out")   # c5 is an output
    out = fuse_activation(g)
    assert "again" not in out.nodes()
    assert out.outputs[0] == ("c", 0)
    assert {"other", "t", "s", "cat", "leak2", "tp", "out"} <= set(out.nodes())
    assert_equivalent(g, out, b.feeds)
    assert_equivalent(g, out, b.feeds, training=True)


# -- elementwise chains ----------------------------------------------------------------------------
def test_fuse_residual_block():
    """Conv -> ElemWise(Sum, residual) -> Activation becomes Conv -> Epilogue(conv, residual)."""
    b = Builder(seed=11)
    x = b.input("x", (2, 4, 6, 6))
    b.conv("c1", x, 4, padding=1, activation=RELU)
    b.conv("c2", "c1", 4, padding=1)
    b.add("sum", ["c2", x])
    b.act("relu", "sum", RELU)
    g = b.outputs("relu")
    out = fuse_elementwise_chains(g)
    assert ops_of(out) == ["Conv", "Conv", "Epilogue", "Input"]
    assert out.inputs_of("relu") == [("c2", 0), ("x", 0)]
    assert out.attrs("relu")["steps"] == (("add", 1, 1.0, 0.0), ("activation", RELU))
    out.verify()
    before, after = numpy_exec.run(g, b.feeds)[0], numpy_exec.run(out, b.feeds)[0]
    np.testing.assert_array_equal(before, after)   # same arithmetic, same order
    assert_equivalent(g, out, b.feeds, training=True, tol=1e-12)


def test_fuse_chain_with_scaling_coefficients_and_three_inputs():
    b = Builder(seed=12, dtype="float32")
    x = b.input("x", (2, 3, 5, 5))
    r = b.input("r", (2, 4, 5, 5))
    b.fc("f", x, 4)
    b.conv("c", x, 4, padding=1)
    b.add("s1", [r, "c"], weights=[0.5, [1.0, 2.0, -1.0, 0.5]], shifts=[[0.1, 0.2, 0.3, 0.4], 0.2])
    b.scaling("sc", "s1", [0.5, 1.5, 2.0, -1.0])
    b.act("t", "sc", TANH)
    b.add("s2", ["t", r], weights=[2.0, -1.0], activation=LOGISTIC)
    b.conv("c3", x, 4, padding=1)
    b.add("s3", [r, "c3", "s2"], weights=[1.0, 0.5, 0.25], shifts=[0.0, 0.1, 0.0])
    b.add("fc_sum", ["f"], weights=[3.0], shifts=[1.0])
    g = b.outputs("s3", "fc_sum")
    out = fuse_elementwise_chains(g)
    # the chain from c runs through s1, sc, t, s2 and on into s3 (s2's only consumer), which
    # brings c3 in as a residual; fc_sum becomes an Epilogue of scale and bias steps
    assert ops_of(out) == ["Conv", "Conv", "Epilogue", "Epilogue", "Fc", "Input", "Input"]
    assert out.inputs_of("s3") == [("c", 0), ("r", 0), ("r", 0), ("r", 0), ("c3", 0)]
    assert out.attrs("fc_sum")["steps"] == (("scale", 3.0), ("bias", 1.0))
    out.verify()
    assert_equivalent(g, out, b.feeds, tol=1e-6)
    assert_equivalent(g, out, b.feeds, training=True, tol=1e-6)


def test_fuse_chain_preconditions():
    b = Builder(seed=13)
    x = b.input("x", (2, 3, 5, 5))
    b.conv("c", x, 3, padding=1)
    b.add("s", ["c", x])
    b.act("a", "c", TANH)                                      # conv read twice
    b.conv("c2", x, 3, padding=1)
    b.add("prod", ["c2", x], operation="Prod")                 # not a Sum
    b.conv("c3", x, 3, padding=1)
    b.scaling("clip", "c3", [1.0, 2.0, 3.0], clipping=[1.0, 1.0, 1.0])  # clipped scaling
    b.conv("c4", x, 3, padding=1)
    b.act("only_act", "c4", TANH)                              # nothing but an activation
    b.pool("p", x, "Average", 1, 1)
    b.add("after_pool", ["p", x])                              # not after a Conv / Fc
    b.conv("c5", x, 3, padding=1)
    b.add("s5", ["c5", x])
    g = b.outputs("s", "a", "prod", "clip", "only_act", "after_pool", "c5", "s5")   # c5 is an output
    unchanged(g, fuse_elementwise_chains(g))


def test_epilogue_matches_finite_differences():
    from n2d2.ir.epilogue import Epilogue

    rng = np.random.default_rng(0)
    xs = [rng.standard_normal((2, 3, 2, 2)) for _ in range(3)]
    attrs = {"steps": (("scale", (0.5, -1.0, 2.0)), ("add", 2, 0.5, (0.1, 0.2, 0.3)), ("activation", TANH),
                       ("bias", 0.3), ("add", 1, (1.0, 2.0, 3.0), 0.0), ("add", 2, -1.0, 0.0),
                       ("activation", LOGISTIC))}
    op = Epilogue()
    ys, saved = op.forward(attrs, xs, {}, training=True)
    dy = rng.standard_normal(ys[0].shape)
    dxs, _ = op.backward(attrs, saved, [dy], [True, True, True], {})
    h = 1e-6
    for k in range(3):
        num = np.zeros_like(xs[k])
        for idx in np.ndindex(xs[k].shape):
            plus = [x.copy() for x in xs]
            minus = [x.copy() for x in xs]
            plus[k][idx] += h
            minus[k][idx] -= h
            num[idx] = ((op.forward(attrs, plus, {})[0][0] - op.forward(attrs, minus, {})[0][0]) * dy).sum() / (2 * h)
        assert rel_err(dxs[k], num) < 1e-7
    with pytest.raises(GraphError, match="'e'"):
        g = Graph()
        g.add_input("a", (1, 3, 2, 2))
        g.add_op("e", "Epilogue", ["a"], {"steps": (("add", 1, 1.0, 0.0),)})


# -- back_propagate=False ---------------------------------------------------------------------------
def test_training_passes_keep_nodes_that_stop_gradients():
    """A node with back_propagate=False sends no gradient to its inputs: in training it is
    neither removed nor merged (in inference it is)."""
    b = Builder(seed=15)
    x = b.input("x", (2, 3, 6, 6))
    b.conv("c0", x, 3, padding=1)
    b.op("id", "Identity", "c0", back_propagate=False)
    b.op("pad", "Padding", "id", top=1, bot=1, left=1, right=1, back_propagate=False)
    b.conv("c1", "pad", 3)
    b.op("act", "Activation", "c1", activation=TANH, back_propagate=False)
    b.conv("c2", "act", 3, padding=1)
    b.op("sum", "ElemWise", ["c2", x], operation="Sum", weights=[1.0, 1.0], shifts=[0.0, 0.0], back_propagate=False)
    b.act("r", "sum", RELU)
    g = b.outputs("r")
    kept = {"id": "Identity", "pad": "Padding", "act": "Activation", "sum": "ElemWise"}
    for name in ("remove_identities", "fold_padding", "fuse_activation", "fuse_elementwise_chains", None):
        out = optimize(g, mode="training") if name is None else PassManager(pipeline=[name], mode="training").run(g)
        assert {n: out.op(n) for n in kept if n in out.nodes()} == kept, name
        assert_equivalent(g, out, b.feeds, training=True)
    # merging *into* a node that stops gradients is fine: relu(sum) still sends none back
    assert out.attrs("sum")["activation"] == RELU
    out = optimize(g)
    assert ops_of(out) == ["Conv", "Conv", "Conv", "Epilogue", "Input"]
    assert_equivalent(g, out, b.feeds)


def test_training_graph_of_the_optimised_graph_gives_the_same_parameter_gradients():
    """Through `n2d2.ir.autodiff`: the Epilogue and the fused nodes differentiate like the
    original graph."""
    autodiff = pytest.importorskip("n2d2.ir.autodiff")
    from n2d2.solver import SGD

    b, g = resnet_like(seed=16)
    for p in g.params.values():
        p.solver = SGD()
    out = optimize(g, mode="training")
    assert "Epilogue" in ops_of(out)
    rng = np.random.default_rng(5)
    seed = rng.standard_normal(g.output_types("scale")[0].shape)
    restore = _restore(g)
    grads = []
    for graph in (g, out):
        restore()
        tg = autodiff.build_training_graph(graph)
        session = numpy_exec.Session(tg.graph, training=True)
        session.feed(dict(b.feeds, **{name: seed for name in tg.grad_inputs.values()}))
        n2d2.global_variables.seed = 3
        session.run_nodes(tg.forward_nodes + tg.backward_nodes)
        grads.append({p: session.values[node][k] for p, (node, k) in tg.param_grads.items()})
    restore()
    assert set(grads[0]) == set(grads[1]) and len(grads[0]) > 10
    for p in grads[0]:
        assert rel_err(grads[1][p], grads[0][p]) < 1e-9, p


# -- manager ---------------------------------------------------------------------------------------
def resnet_like(dtype="float64", seed=14):
    b = Builder(seed=seed, dtype=dtype)
    x = b.input("x", (2, 3, 8, 8))
    b.pad("pad", x, 1, 1, 1, 1)
    b.conv("c0", "pad", 4, bias=False)
    b.bn("bn0", "c0")
    b.act("r0", "bn0", RELU)
    b.op("id", "Identity", "r0")
    b.conv("c1", "id", 4, padding=1)
    b.bn("bn1", "c1", activation=RELU)
    b.op("drop", "Dropout", "bn1", dropout=0.3)
    b.conv("c2", "drop", 4, padding=1)
    b.bn("bn2", "c2")
    b.add("sum", ["bn2", "id"])
    b.act("r2", "sum", RELU)
    b.pad("pad2", "r2", 1, 1, 1, 1)
    b.pool("mp", "pad2", "Max", pool=3, stride=2)
    b.act("dead", "mp", TANH)
    b.fc("fc", "mp", 5)
    b.scaling("scale", "fc", [0.5] * 5)
    return b, b.outputs("scale")


def test_inference_pipeline_on_a_residual_network():
    b, g = resnet_like()
    lines = []
    pm = PassManager(debug=True, log=lines.append)
    out = pm.run(g)
    assert len(lines) == len(PIPELINES["inference"])
    for line, name in zip(lines, PIPELINES["inference"]):
        assert re.fullmatch(rf"pass {name}: \d+ -> \d+ nodes, \d+\.\d+ ms", line), line
    assert ops_of(out) == ["Conv", "Conv", "Conv", "Epilogue", "Epilogue", "Fc", "Input", "Pool"]
    assert out.attrs("c0")["padding"] == (1, 1) and out.attrs("c0")["activation"] == RELU
    assert out.attrs("mp")["padding"] == (1, 1)
    assert [h[0] for h in pm.history] == list(PIPELINES["inference"])
    assert len(g.nodes()) == 18   # untouched
    assert_equivalent(g, out, b.feeds, tol=1e-10)
    b32, g32 = resnet_like("float32")
    assert_equivalent(g32, optimize(g32), b32.feeds, tol=1e-5)


def test_training_pipeline_keeps_batchnorm_and_dropout():
    b, g = resnet_like()
    out = optimize(g, mode="training", debug=True)
    ops = ops_of(out)
    assert ops.count("BatchNorm") == 3 and ops.count("Dropout") == 1
    assert "Identity" not in ops and "Padding" in ops   # Max pool padding kept in training
    assert out.attrs("c0")["padding"] == (1, 1)
    assert_equivalent(g, out, b.feeds, training=True, tol=1e-10)


def test_manager_configuration():
    b, g = resnet_like()
    pm = PassManager(disable=["fold_batchnorm"])
    assert "fold_batchnorm" not in pm.names
    assert ops_of(pm.run(g)).count("BatchNorm") == 3
    pm.enable("fold_batchnorm")
    assert ops_of(pm.run(g)).count("BatchNorm") == 0
    with pytest.raises(ValueError, match="unknown pass"):
        PassManager(pipeline=["shape_inference", "no_such_pass"])
    with pytest.raises(ValueError, match="not in the pipeline"):
        PassManager(pipeline=["shape_inference"]).disable("fold_batchnorm")
    calls = []

    def count(graph):
        calls.append(len(graph.nodes()))
        return graph

    pm = PassManager(pipeline=["remove_identities", count, ("again", count)], mode="training")
    pm.enable("remove_dropout", index=0)          # exact no-op in training
    out = pm.run(g)
    assert pm.names == ["remove_dropout", "remove_identities", "count", "again"]
    assert calls == [17, 17] and ops_of(out).count("Dropout") == 1
    with pytest.raises(ValueError):
        PassManager(mode="eval")


def test_debug_mode_names_the_breaking_pass():
    b, g = resnet_like()

    def breaks_shapes(graph):
        graph = graph.copy()
        graph.nx.nodes["c1"]["outputs"] = []
        return graph

    with pytest.raises(GraphError, match="after pass 'breaks_shapes'.*'c1'"):
        PassManager(pipeline=["remove_identities", breaks_shapes], debug=True).run(g)
    PassManager(pipeline=["remove_identities", breaks_shapes]).run(g)   # not checked without debug


@requires_cuda
def test_optimised_graph_on_cupy_arrays():
    """BN folding keeps folded parameters on the device; the Epilogue runs on CuPy."""
    import cupy as cp

    b, g = resnet_like("float32")
    (expected,) = numpy_exec.run(optimize(g), b.feeds)
    for p in g.params.values():
        p.array = cp.asarray(p.array)
    out = optimize(g)
    assert all(isinstance(out.params[p].array, cp.ndarray) for n in out.nodes() for p in out.node(n).params.values())
    (y,) = numpy_exec.run(out, {k: cp.asarray(v) for k, v in b.feeds.items()})
    assert rel_err(cp.asnumpy(y), expected) < 1e-5
