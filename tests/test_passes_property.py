"""Property test: on random valid graphs, every pass and both default pipelines keep the
numpy executor's outputs (inference) and outputs plus input and parameter gradients (training)."""
import numpy as np
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st

from n2d2.ir.graph import GraphError
from n2d2.ir.passes import PASSES, PIPELINES, PassManager
from tests.test_passes import LEAKY, LINEAR, LOGISTIC, RELU, SATURATION, TANH, Builder, assert_equivalent

RELU6 = ("Rectifier", (("clipping", 6.0), ("leak_slope", 0.0)))
SPECS = [None, None, None, LINEAR, RELU, RELU, LEAKY, TANH, LOGISTIC, LINEAR, SATURATION, RELU6]
# the motifs that the passes rewrite (conv_bn, pad_pool, residual) come up more often
KINDS = ["conv", "conv_bn", "conv_bn", "deconv_bn", "fc", "pool", "bn", "act", "pad", "pad_pool", "pad_pool",
         "pad_pool", "residual", "residual", "sum", "dropout", "identity", "scaling"]


def _shape(b, name):
    return b.g.output_types(name)[0].shape


def _layer(draw, b, kind, name, src, values, state):
    """Add one layer (or a small motif) reading `src`; returns the name of its output."""
    spec = draw(st.sampled_from(SPECS))
    c = _shape(b, src)[1]
    if kind in ("conv", "conv_bn", "residual"):
        same = kind == "residual"
        out = c if same else draw(st.integers(1, 4))
        k = 3 if same else draw(st.integers(1, 3))
        kw = dict(k=k, stride=1 if same else draw(st.integers(1, 2)), padding=1 if same else draw(st.integers(0, 1)),
                  dilation=1 if same else draw(st.integers(1, 2)), bias=draw(st.booleans()))
        if not same and c % 2 == 0 and out % 2 == 0 and draw(st.booleans()):
            kw["groups"] = 2
        if not same and draw(st.integers(0, 3)) == 0:
            kw["sub_sample"] = 2
        if kind == "conv":
            return b.conv(name, src, out, activation=spec, **kw)
        conv = b.conv(name + "_c", src, out, **kw)
        if kind == "conv_bn":
            return b.bn(name, conv, activation=spec)
        if draw(st.booleans()):
            conv = b.bn(name + "_bn", conv)
        total = b.add(name + "_sum", [conv, src] if draw(st.booleans()) else [src, conv])
        return b.act(name, total, draw(st.sampled_from([RELU, LEAKY, TANH])))
    if kind == "deconv_bn":
        out = draw(st.integers(1, 4))
        groups = 2 if c % 2 == 0 and out % 2 == 0 and draw(st.booleans()) else 1
        d = b.deconv(name + "_d", src, out, k=draw(st.integers(1, 3)), stride=draw(st.integers(1, 2)),
                     padding=draw(st.integers(0, 1)), groups=groups, bias=draw(st.booleans()))
        return b.bn(name, d, activation=spec)
    if kind == "fc":
        return b.fc(name, src, draw(st.integers(1, 4)), bias=draw(st.booleans()), activation=spec)
    if kind in ("pool", "pad_pool"):
        pool = draw(st.integers(1, 3))
        if kind == "pad_pool":
            pool = max(pool, 2)
            if draw(st.integers(0, 2)) == 0:
                src = b.act(name + "_r", src, RELU)
            p = draw(st.integers(1, 2))
            q = p if draw(st.integers(0, 3)) else draw(st.integers(0, 2))
            src = b.pad(name + "_p", src, p, p, q, q)
        return b.pool(name, src, draw(st.sampled_from(["Max", "Average"])), pool=pool, stride=draw(st.integers(1, 2)),
                      padding=draw(st.integers(0, pool - 1)))
    if kind == "bn":
        return b.bn(name, src, activation=spec)
    if kind == "act":
        srcs = [src] + _same_spatial(b, src, values, draw)
        return b.act(name, srcs, spec)
    if kind == "pad":
        t, l_ = draw(st.integers(-1, 2)), draw(st.integers(0, 2))
        bot = t if draw(st.integers(0, 3)) else draw(st.integers(0, 2))
        return b.pad(name, src, t, bot, l_, l_)
    if kind == "sum":
        others = [v for v in values if v != src and _shape(b, v) == _shape(b, src)]
        other = draw(st.sampled_from(others)) if others else src
        unit = draw(st.booleans())
        weights = [1.0, 1.0] if unit else [float(draw(st.sampled_from([0.5, -1.0, 2.0]))),
                                           [float(v) for v in b.rng.standard_normal(c)]]
        shifts = [0.0, 0.0] if unit else [[float(v) for v in b.rng.standard_normal(c)], 0.25]
        return b.add(name, [src, other], weights, shifts, activation=spec)
    if kind == "dropout":
        if state["dropouts"]:   # one at most: masks are drawn in execution order
            return None
        state["dropouts"] += 1
        srcs = [src] + _same_spatial(b, src, values, draw)
        extra = {"activation": spec} if spec is not None else {}
        return b.op(name, "Dropout", srcs, dropout=0.3, **extra)
    if kind == "identity":
        extra = {"activation": spec} if spec is not None else {}
        if draw(st.integers(0, 3)) == 0:
            extra["back_propagate"] = False   # stops gradients: kept in training
        return b.op(name, "Identity", src, **extra)
    if kind == "scaling":
        clipped = draw(st.integers(0, 3)) == 0
        return b.scaling(name, src, [float(v) for v in b.rng.standard_normal(c)],
                         clipping=[1.0] * c if clipped else None, activation=spec if draw(st.booleans()) else None)
    raise AssertionError(kind)


def _same_spatial(b, src, values, draw):
    """Maybe one more input with the batch and H, W of `src` (a concatenation)."""
    others = [v for v in values if v != src and _shape(b, v)[2:] == _shape(b, src)[2:]]
    return [draw(st.sampled_from(others))] if others and draw(st.booleans()) else []


@st.composite
def graphs(draw):
    b = Builder(seed=draw(st.integers(0, 2 ** 16)))
    x = b.input("x", (2, draw(st.integers(1, 3)), draw(st.integers(4, 7)), draw(st.integers(4, 7))))
    values, state = [x], {"dropouts": 0}
    for i in range(draw(st.integers(2, 10))):
        kind = draw(st.sampled_from(KINDS))
        src = values[-1] if draw(st.booleans()) else draw(st.sampled_from(values))   # chains and fan-out
        try:
            out = _layer(draw, b, kind, f"{kind}{i}", src, values, state)
        except GraphError:   # shapes that do not fit: skip the layer
            continue
        if out is not None:
            values.append(out)
    outputs = [values[-1]]
    if len(values) > 2 and draw(st.booleans()):
        outputs.append(draw(st.sampled_from(values[1:-1])))
    return b, b.outputs(*outputs)


def _snapshot(g):
    return g.dump(), {k: np.array(p.array, copy=True) for k, p in g.params.items()}


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(graphs())
def test_passes_preserve_outputs_and_gradients(case):
    b, g = case
    note(g.dump())
    dump, arrays = _snapshot(g)
    for name in PASSES:
        note(f"checking pass {name} (inference)")
        out = PassManager(pipeline=[name], debug=True).run(g)
        assert_equivalent(g, out, b.feeds)
    for name in PIPELINES["training"]:
        note(f"checking pass {name} (training)")
        out = PassManager(pipeline=[name], mode="training").run(g)
        assert_equivalent(g, out, b.feeds, training=True)
    for mode in ("inference", "training"):
        note(f"checking the {mode} pipeline")
        out = PassManager(mode=mode, debug=True).run(g)
        assert_equivalent(g, out, b.feeds, training=mode == "training")
    assert g.dump() == dump   # the input graph and its parameter arrays are left alone
    for k, a in arrays.items():
        np.testing.assert_array_equal(g.params[k].array, a)
