"""Scheduling, liveness, buffer planning and the arena executor (n2d2.ir.schedule / planner,
n2d2.codegen.arena_exec).

Every plan is validated and run for real over one arena; its outputs (and, for training
graphs, the updated parameters) must equal the numpy executor's exactly.
"""
import importlib.util
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import n2d2
from n2d2.codegen import numpy_exec
from n2d2.codegen.arena_exec import ArenaProgram
from n2d2.ir import ops as op_registry
from n2d2.ir.graph import Graph
from n2d2.ir.planner import PlanError, format_memory_report, liveness, memory_report, plan, validate
from n2d2.ir.schedule import peak_live_bytes, schedule

RELU = ("Rectifier", (("clipping", 0.0), ("leak_slope", 0.0)))
TANH = ("Tanh", (("alpha", 1.0),))


# -- test-only ops: several outputs, no output --------------------------------------------------
@op_registry.register
class _TestSplit(op_registry.OpDef):
    """Two outputs: the first and second half of the channels."""

    name = "TestSplit"

    def _infer(self, attrs, in_shapes, param_shapes):
        n, c, h, w = in_shapes[0]
        return [(n, c // 2, h, w), (n, c - c // 2, h, w)]

    def forward(self, attrs, xs, params, training=False):
        c = xs[0].shape[1] // 2
        return [xs[0][:, :c] * 2.0, xs[0][:, c:] - 1.0], None


@op_registry.register
class _TestSink(op_registry.OpDef):
    """No output: logs the sum of its input (a side effect the executors must agree on)."""

    name = "TestSink"

    def infer(self, graph, node):
        return []

    def forward(self, attrs, xs, params, training=False):
        attrs["log"].append(float(np.asarray(xs[0], np.float64).sum()))
        return [], None


@op_registry.register
class _TestBump(op_registry.OpDef):
    """No output: adds its input's mean to a parameter in place (like a solver update)."""

    name = "TestBump"
    params = ("param",)

    def infer(self, graph, node):
        return []

    def forward(self, attrs, xs, params, training=False):
        params["param"] += np.float32(xs[0].mean())
        return [], None


# -- graph builders ------------------------------------------------------------------------------
class B:
    """add_op shorthands with seeded parameters."""

    def __init__(self, name="g", seed=0):
        self.g = Graph(name)
        self.rng = np.random.default_rng(seed)

    def input(self, name, shape):
        return self.g.add_input(name, shape)

    def conv(self, name, x, cout, k=1, stride=1):
        src, out = x if isinstance(x, tuple) else (x, 0)
        cin = self.g.output_types(src)[out].shape[1]
        w = self.g.add_param(name + ".w", (self.rng.standard_normal((cout, cin, k, k)) / np.sqrt(cin * k * k))
                             .astype(np.float32))
        return self.g.add_op(name, "Conv", [x], {"stride": (stride, stride), "padding": (k // 2, k // 2),
                                                 "dilation": (1, 1), "groups": 1, "mapping": None,
                                                 "activation": None}, {"weights": w})

    def act(self, name, x, spec=RELU):
        return self.g.add_op(name, "Activation", [x], {"activation": spec})

    def add(self, name, a, b):
        return self.g.add_op(name, "ElemWise", [a, b], {"operation": "Sum", "weights": [1.0, 1.0],
                                                        "shifts": [0.0, 0.0], "activation": None})

    def cat(self, name, xs):
        return self.g.add_op(name, "Concat", list(xs))

    def pool(self, name, x):
        return self.g.add_op(name, "Pool", [x], {"pooling": "Max", "pool": (3, 3), "stride": (1, 1),
                                                 "padding": (1, 1), "mapping": None, "activation": None})


def chain(batch=1):
    b = B("chain")
    x = b.input("x", (batch, 3, 8, 8))
    y = b.act("a1", b.conv("c1", x, 8, 3))
    y = b.act("a2", b.conv("c2", y, 8, 3), TANH)
    y = b.act("a3", b.conv("c3", y, 4))
    b.g.set_outputs([y])
    return b.g


def residual(batch=1):
    b = B("residual")
    x = b.input("x", (batch, 4, 6, 6))
    h = b.act("stem", b.conv("c0", x, 8, 3))
    for i in range(3):
        y = b.act(f"r{i}a", b.conv(f"r{i}c1", h, 16))
        y = b.conv(f"r{i}c2", y, 8, 3)
        h = b.act(f"r{i}out", b.add(f"r{i}sum", y, h))
    b.g.set_outputs([h])
    return b.g


def inception(batch=1):
    """Three branches concatenated, twice (the second concat feeds the first's consumers)."""
    b = B("inception")
    x = b.input("x", (batch, 4, 6, 6))
    h = b.act("stem", b.conv("c0", x, 8))
    for i in range(2):
        p1 = b.conv(f"i{i}b1", h, 4)
        p2 = b.act(f"i{i}b2a", b.conv(f"i{i}b2", h, 6, 3))     # in place, then into a slice
        p3 = b.pool(f"i{i}b3", h)
        h = b.cat(f"i{i}cat", [p1, p2, p3])
    b.g.set_outputs([b.conv("head", h, 2)])
    return b.g


def nested_concat():
    b = B("nested")
    x = b.input("x", (1, 2, 5, 5))
    a = b.conv("a", x, 3)
    c = b.conv("c", x, 2, 3)
    inner = b.cat("inner", [a, c])
    d = b.act("d", b.conv("dc", x, 4))
    outer = b.cat("outer", [b.act("inner_act", inner, TANH), d, x])   # x is an input: copied
    b.g.set_outputs([b.act("out", outer)])
    return b.g


def multi_output():
    """A two-output node feeding a concat and an in-place op; sinks with no output."""
    b = B("multi")
    x = b.input("x", (1, 6, 4, 4))
    s = b.g.add_op("split", "TestSplit", [b.conv("c0", x, 6)])
    lo = b.act("lo", ("split", 0))
    hi = b.act("hi", ("split", 1), TANH)
    b.g.add_op("sink1", "TestSink", [lo], {"log": []})
    cat = b.cat("cat", [lo, ("split", 1), hi])
    s2 = b.g.add_op("split2", "TestSplit", [cat])
    b.g.add_op("sink2", "TestSink", [(s2, 1)], {"log": []})
    y = b.add("sum", (s2, 0), (s2, 0))
    b.g.set_outputs([y, (s, 0)])
    return b.g


GRAPHS = {
    "chain": chain, "chain_b2": lambda: chain(2), "residual": residual, "inception": inception,
    "inception_b2": lambda: inception(2), "nested": nested_concat, "multi_output": multi_output,
}


def feeds_for(graph, seed=0):
    rng = np.random.default_rng(seed)
    return {n: rng.standard_normal(graph.output_types(n)[0].shape).astype(np.float32) for n in graph.inputs}


def sink_logs(graph):
    return {n: list(graph.attrs(n)["log"]) for n in graph.nodes() if graph.op(n) == "TestSink"}


def clear_logs(graph):
    for n in graph.nodes():
        if graph.op(n) == "TestSink":
            graph.attrs(n)["log"].clear()


def assert_same_as_numpy(graph, the_plan, feeds, training=False):
    """Outputs, sink logs and updated parameters of both executors are identical."""
    start = {k: p.array.copy() for k, p in graph.params.items()}

    def one(fn):
        for k, p in graph.params.items():
            p.array[...] = start[k]
        clear_logs(graph)
        n2d2.global_variables.seed = 3
        outs = fn()
        return outs, sink_logs(graph), {k: p.array.copy() for k, p in graph.params.items()}

    program = ArenaProgram(graph, the_plan)
    ref = one(lambda: numpy_exec.run(graph, feeds, training=training))
    got = one(lambda: program.run(feeds, training=training))
    assert len(got[0]) == len(ref[0])
    for a, b in zip(got[0], ref[0]):
        np.testing.assert_array_equal(a, b)
    assert got[1] == ref[1]
    for k in ref[2]:
        np.testing.assert_array_equal(got[2][k], ref[2][k])


# -- schedule ----------------------------------------------------------------------------------
def assert_topological(graph, order):
    assert sorted(order) == sorted(graph.nodes())
    step = {n: i for i, n in enumerate(order)}
    for n in order:
        for src, _ in graph.inputs_of(n):
            assert step[src] < step[n], (src, n)


@pytest.mark.parametrize("name", sorted(GRAPHS))
def test_schedule_is_a_deterministic_topological_order(name):
    graph = GRAPHS[name]()
    order = schedule(graph)
    assert_topological(graph, order)
    assert order[:len(graph.inputs)] == graph.inputs
    assert schedule(GRAPHS[name]()) == order


def test_schedule_of_a_chain_is_the_plain_order():
    graph = chain()
    assert schedule(graph) == graph.topological_order()


def test_schedule_lowers_the_peak_of_a_badly_inserted_graph():
    """Four expand (big) -> reduce (small) branches inserted expands first: the plain order
    keeps all expansions alive, the scheduler finishes one branch before the next."""
    b = B("branches")
    x = b.input("x", (1, 2, 8, 8))
    big = [b.conv(f"expand{i}", x, 32) for i in range(4)]
    small = [b.conv(f"reduce{i}", e, 2) for i, e in enumerate(big)]
    b.g.set_outputs([b.cat("cat", small)])
    order = schedule(b.g)
    assert_topological(b.g, order)
    plain = b.g.topological_order()
    big_bytes = 32 * 64 * 4
    assert peak_live_bytes(b.g, plain) >= 4 * big_bytes
    assert peak_live_bytes(b.g, order) < 2 * big_bytes
    assert order.index("reduce0") == order.index("expand0") + 1


def test_schedule_keeps_the_order_of_nodes_sharing_a_parameter():
    """A no-output node writing a parameter in place must stay after the node reading it,
    though nothing but the parameter links them."""
    b = B("bump")
    x = b.input("x", (1, 2, 4, 4))
    y = b.act("y", x)
    c = b.conv("c", y, 2)
    bump = b.g.add_op("bump", "TestBump", [x], params={"param": "c.w"})
    b.g.set_outputs([b.act("out", c)])
    order = schedule(b.g)
    assert order.index(bump) > order.index(c)
    the_plan = plan(b.g, order)
    validate(b.g, the_plan)
    assert_same_as_numpy(b.g, the_plan, feeds_for(b.g))


# -- liveness and the report ---------------------------------------------------------------------
def tiny():
    """x:[1,4,2,2] -> a = relu(x) -> b = conv1x1(a):[1,8,2,2] -> c = relu(b) (in place)."""
    b = B("tiny")
    x = b.input("x", (1, 4, 2, 2))
    a = b.act("a", x)
    c = b.act("c", b.conv("b", a, 8))
    b.g.set_outputs([c])
    return b.g


def test_liveness_of_a_hand_graph():
    graph = multi_output()
    order = schedule(graph)
    iv = liveness(graph, order)
    step = {n: i for i, n in enumerate(order)}
    last = len(order) - 1
    assert iv[("x", 0)][0] == 0
    assert iv[("split", 0)] == (step["split"], last)              # a graph output
    assert iv[("split", 1)] == (step["split"], max(step["hi"], step["cat"]))
    assert iv[("lo", 0)] == (step["lo"], max(step["sink1"], step["cat"]))
    assert iv[("sum", 0)] == (step["sum"], last)
    assert ("sink1", 0) not in iv
    unused = B("unused")
    x = unused.input("x", (1, 2, 2, 2))
    dead = unused.act("dead", x)
    unused.g.set_outputs([unused.act("y", x)])
    o = schedule(unused.g)
    assert liveness(unused.g, o)[(dead, 0)] == (o.index(dead), o.index(dead))


def test_report_numbers_of_a_hand_computed_graph():
    graph = tiny()
    order = ["x", "a", "b", "c"]
    assert liveness(graph, order) == {("x", 0): (0, 1), ("a", 0): (1, 2), ("b", 0): (2, 3), ("c", 0): (3, 3)}
    p = plan(graph, order)
    assert p.inplace == {("c", 0): ("b", 0)}   # x is a graph input: `a` does not overwrite it
    validate(graph, p)
    r = memory_report(graph, p)
    # tensors 64, 64, 128, 128 B; live per step: 64, 128, 192, 128 (b and c share)
    assert (r["planned"], r["naive"], r["lower_bound"], r["peak_node"]) == (192, 384, 192, "b")
    assert p.offsets == {("b", 0): 0, ("c", 0): 0, ("x", 0): 0, ("a", 0): 128}
    p2 = plan(graph, order, inplace=False)
    validate(graph, p2)
    r2 = memory_report(graph, p2)
    assert (r2["planned"], r2["naive"], r2["lower_bound"]) == (256, 384, 256)
    text = format_memory_report(r)
    assert "planned" in text and "naive" in text and "lower bound" in text and "2.00x" in text
    assert_same_as_numpy(graph, p, feeds_for(graph))


# -- planner on every graph ----------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(GRAPHS))
@pytest.mark.parametrize("inplace,concat", [(True, True), (False, False), (True, False)])
def test_plans_validate_and_run_like_numpy(name, inplace, concat):
    graph = GRAPHS[name]()
    for alignment in (64, 4):
        p = plan(graph, inplace=inplace, concat=concat, alignment=alignment)
        assert validate(graph, p)
        assert p.arena_bytes % alignment == 0
        r = memory_report(graph, p)
        assert r["lower_bound"] <= r["planned"] <= r["naive"] + alignment * len(p.sizes)
        assert_same_as_numpy(graph, p, feeds_for(graph))
        if not inplace:
            assert not p.inplace
        if not concat:
            assert not p.concat_slices


def test_inplace_only_where_the_input_dies():
    graph = residual()
    p = plan(graph)
    for out, src in p.inplace.items():
        assert op_registry.get(graph.op(out[0])).elementwise
        assert p.offsets[out] == p.offsets[src]
        assert p.intervals[src][1] == p.intervals[out][0]
    # a sum overwrites its slot-0 input (the dying conv output), not the shortcut in slot 1
    assert p.inplace[("r0sum", 0)] == ("r0c2", 0) and p.inplace[("r0out", 0)] == ("r0sum", 0)
    assert p.inplace[("stem", 0)] == ("c0", 0)
    # r0c1 reads stem's output, but r0sum reads it again later: nothing overwrites it
    assert ("stem", 0) not in p.inplace.values()
    # graph inputs and outputs are never overwritten
    b = B("io")
    x = b.input("x", (1, 2, 3, 3))
    y = b.act("y", x)
    z = b.act("z", y)
    b.g.set_outputs([y, z])
    assert plan(b.g).inplace == {}


def test_concat_batch1_is_a_no_op_and_batch2_copies():
    g1 = inception(1)
    p = plan(g1)
    assert p.concat_aliased["i0cat"] == [True, True, True]
    cat = ("i0cat", 0)
    h, w = 6, 6
    assert p.concat_slices[("i0b1", 0)] == (cat, 0)
    assert p.concat_slices[("i0b2a", 0)] == (cat, 4 * h * w * 4)
    assert p.concat_slices[("i0b3", 0)] == (cat, 10 * h * w * 4)
    assert p.offsets[("i0b2", 0)] == p.offsets[("i0b2a", 0)]   # in place, inside the slice
    program = ArenaProgram(g1, p)
    kind = {name: k for k, name, _ in program.steps()}
    step = next(s for s in program.steps() if s[1] == "i0cat")
    assert kind["i0cat"] == "copy" and step[2] == []
    g2 = inception(2)
    p2 = plan(g2)
    assert not p2.concat_slices and "i0cat" not in p2.concat_aliased
    assert_same_as_numpy(g2, p2, feeds_for(g2))


def test_nested_and_partial_concat():
    graph = nested_concat()
    p = plan(graph)
    assert p.concat_aliased["inner"] == [True, True]
    assert p.concat_aliased["outer"] == [True, True, False]    # x is a graph input: copied
    root = p.root_of()
    assert root[("a", 0)] == root[("outer", 0)] == root[("inner", 0)]
    validate(graph, p)
    assert_same_as_numpy(graph, p, feeds_for(graph))


# -- the validator fails loudly ------------------------------------------------------------------
def test_validator_names_overlapping_tensors():
    graph = chain()
    p = plan(graph, inplace=False)
    p.offsets[("c2", 0)] = p.offsets[("a1", 0)]       # a1 is read by c2: both live at c2's step
    with pytest.raises(PlanError, match=r"a1:0.*c2:0|c2:0.*a1:0"):
        validate(graph, p)


def test_validator_rejects_bad_plans():
    graph = chain()
    p = plan(graph)
    stale = plan(graph, order=p.order)
    stale.order = list(reversed(p.order))
    with pytest.raises(PlanError, match="before its input"):
        validate(graph, stale)
    small = plan(graph)
    small.arena_bytes -= 64
    with pytest.raises(PlanError, match="does not fit"):
        validate(graph, small)
    skew = plan(graph)
    skew.offsets = {t: o + 4 for t, o in skew.offsets.items()}
    skew.arena_bytes += 64
    with pytest.raises(PlanError, match="aligned to 64"):
        validate(graph, skew)
    res = residual()
    bad = plan(res)
    bad.inplace[("r0c1", 0)] = ("stem", 0)      # Conv is not elementwise
    with pytest.raises(PlanError, match="r0c1"):
        validate(res, bad)
    other = plan(res, inplace=False)
    other.intervals[("stem", 0)] = (0, 0)
    with pytest.raises(PlanError, match="stale"):
        validate(res, other)


def test_arena_executor_exposes_an_unsound_plan():
    """The executor really shares memory: an overlapping plan run unchecked gives wrong outputs."""
    graph = residual()
    p = plan(graph, inplace=False)
    p.offsets[("r1c2", 0)] = p.offsets[("r0out", 0)]   # r0out is still needed by r1sum
    with pytest.raises(PlanError):
        validate(graph, p)
    feeds = feeds_for(graph)
    got = ArenaProgram(graph, p, check=False).run(feeds)[0]
    ref = numpy_exec.run(graph, feeds)[0]
    assert not np.allclose(got, ref)


def test_arena_executor_errors():
    graph = chain()
    program = ArenaProgram(graph)
    with pytest.raises(n2d2.ir.GraphError, match="no value fed for input 'x'"):
        program.run({})
    with pytest.raises(ValueError, match="input 'x'"):
        program.run({"x": np.zeros((1, 3, 4, 4), np.float32)})
    with pytest.raises(n2d2.ir.GraphError, match="not an input"):
        program.run({"x": np.zeros((1, 3, 8, 8), np.float32), "y": np.zeros(1)})
    # repeated runs reuse the arena
    f = feeds_for(graph)
    np.testing.assert_array_equal(program.run(f)[0], program.run(f)[0])


# -- MobileNet v2 (the benchmark's builder) and training graphs ----------------------------------
def _bench():
    path = Path(__file__).resolve().parent.parent / "bench" / "memory_plan.py"
    spec = importlib.util.spec_from_file_location("bench_memory_plan", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_small_mobilenet_v2_inference_and_training():
    bench = _bench()
    graph = bench.build_mobilenet_v2(size=32, alpha=0.35, nb_outputs=10)
    graph.verify()
    p = plan(graph)
    validate(graph, p)
    r = memory_report(graph, p)
    assert r["planned"] <= 1.02 * r["lower_bound"] and r["naive"] >= 4 * r["planned"]
    assert len(p.inplace) >= 10
    assert_same_as_numpy(graph, p, feeds_for(graph))
    autodiff = pytest.importorskip("n2d2.ir.autodiff")
    train = autodiff.build_training_graph(graph).graph
    tp = plan(train)
    validate(train, tp)
    assert memory_report(train, tp)["naive"] >= 1.5 * tp.arena_bytes
    feeds = feeds_for(train, 1)
    assert_same_as_numpy(train, tp, feeds, training=True)


def test_training_graph_with_concat_and_residual():
    autodiff = pytest.importorskip("n2d2.ir.autodiff")
    from n2d2.solver import SGD

    graph = inception()
    for prm in graph.params.values():
        prm.solver = SGD(learning_rate=0.1)
    train = autodiff.build_training_graph(graph).graph
    order = schedule(train)
    step = {n: i for i, n in enumerate(order)}
    for n in train.nodes():
        if train.op(n) == "Update":      # after every node that reads its parameter
            pname = train.attrs(n)["param"]
            for m in train.nodes():
                of = train.attrs(m).get("of") if train.op(m) == "Grad" else m
                if m != n and pname in train.nx.nodes[of]["params"].values():
                    assert step[m] < step[n], (m, n)
    for inplace, concat in [(True, True), (False, False)]:
        tp = plan(train, inplace=inplace, concat=concat)
        validate(train, tp)
        assert_same_as_numpy(train, tp, feeds_for(train, 2), training=True)


# -- random DAGs -----------------------------------------------------------------------------------
@st.composite
def random_graphs(draw):
    seed = draw(st.integers(0, 2 ** 16))
    rng = np.random.default_rng(seed)
    batch = draw(st.sampled_from([1, 1, 2]))
    b = B("random", seed)
    tensors = [(b.input("x0", (batch, draw(st.sampled_from([2, 4])), 4, 4)), 0)]
    if draw(st.booleans()):
        tensors.append((b.input("x1", (batch, 2, 4, 4)), 0))
    n_nodes = draw(st.integers(2, 14))
    for i in range(n_nodes):
        kind = draw(st.sampled_from(["conv", "act", "act", "sum", "concat", "concat", "split", "sink", "identity"]))
        pick = lambda: tensors[draw(st.integers(0, len(tensors) - 1))]  # noqa: E731
        x = pick()
        name = f"n{i}"
        channels = b.g.output_types(x[0])[x[1]].shape[1]
        if kind == "conv":
            tensors.append((b.conv(name, x, int(rng.choice([1, 2, 3, 4])), int(rng.choice([1, 3]))), 0))
        elif kind == "act":
            tensors.append((b.act(name, x, RELU if rng.random() < 0.5 else TANH), 0))
        elif kind == "identity":
            tensors.append((b.g.add_op(name, "Identity", [x]), 0))
        elif kind == "sum":
            same = [t for t in tensors if b.g.output_types(t[0])[t[1]].shape[1] == channels]
            other = same[draw(st.integers(0, len(same) - 1))]
            tensors.append((b.add(name, x, other), 0))
        elif kind == "concat":
            k = draw(st.integers(2, 3))
            tensors.append((b.cat(name, [x] + [pick() for _ in range(k - 1)]), 0))
        elif kind == "split" and channels >= 2:
            s = b.g.add_op(name, "TestSplit", [x])
            tensors += [(s, 0), (s, 1)]
        elif kind == "sink":
            b.g.add_op(name, "TestSink", [x], {"log": []})
        else:
            tensors.append((b.act(name, x), 0))
    produced = [t for t in tensors if b.g.op(t[0]) != "Input"] or [(b.act("last", tensors[-1]), 0)]
    outs = draw(st.lists(st.sampled_from(produced), min_size=1, max_size=3, unique=True))
    b.g.set_outputs(outs)
    return b.g


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(random_graphs(), st.booleans(), st.sampled_from([4, 64]))
def test_random_dags(graph, inplace, alignment):
    graph.verify()
    order = schedule(graph)
    assert_topological(graph, order)
    p = plan(graph, order, inplace=inplace, alignment=alignment)
    assert validate(graph, p)
    r = memory_report(graph, p)
    assert r["lower_bound"] <= r["planned"]
    assert_same_as_numpy(graph, p, feeds_for(graph))
