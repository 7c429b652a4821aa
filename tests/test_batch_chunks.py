"""Batch chunking of inference graphs (n2d2.ir.batch_chunks, InferenceProgram on C): where the
plan cuts, that the prefix chunks and the suffix compute the whole graph's outputs (numpy
executor and C, NaN/Inf included), and where it declines."""
import numpy as np
import pytest

from n2d2.codegen import c_backend, numpy_exec
from n2d2.codegen.programs import InferenceProgram
from n2d2.ir import batch_chunks
from n2d2.ir.passes.shape_inference import rebatch
from tests.test_passes import Builder

pytestmark = pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")   # NaN inputs

RELU = ("Rectifier", (("clipping", 0.0), ("leak_slope", 0.0)))
RELU6 = ("Rectifier", (("clipping", 6.0), ("leak_slope", 0.0)))


def inverted_residual_net(batch=5, dtype="float32", seed=0):
    """MobileNet-like: expand 1x1 + ReLU6, depthwise 3x3 + ReLU6, project 1x1, residual add,
    a strided 3x3, a global average pool and an Fc (the last two compute-heavy enough to stay
    whole-batch only through the budgets)."""
    b = Builder(seed=seed, dtype=dtype)
    x = b.input("x", (batch, 4, 12, 12))
    e = b.conv("expand", x, 24, k=1, activation=RELU6)
    d = b.conv("dw", e, 24, k=3, padding=1, groups=24, activation=RELU6)
    p = b.conv("project", d, 4, k=1)
    s = b.add("residual", [p, x])
    c = b.conv("down", s, 8, k=3, stride=2, padding=1, activation=RELU)
    g = b.pool("gap", c, kind="Average", pool=6, stride=6)
    y = b.fc("fc", g, 10)
    b.g.set_outputs([y])
    return b


def with_non_finite(x):
    """`x` with a NaN in image 0, +Inf in image 2 and -Inf in the last image."""
    x = x.copy()
    x[0, 1, 3, 4] = np.nan
    x[2, 0, 7, 7] = np.inf
    x[-1, 3, 0, 0] = -np.inf
    return x


def run_chunked_reference(graph, chunk_plan, feeds):
    """The graph's outputs computed as the chunked program does, on the numpy executor."""
    prefix, suffix, cut_inputs = batch_chunks.split(graph, chunk_plan)
    gathered = {t: [] for t in chunk_plan.cut}
    for start in range(0, chunk_plan.batch, chunk_plan.chunk):
        stop = min(chunk_plan.batch, start + chunk_plan.chunk)
        part = rebatch(prefix, stop - start)
        outs = numpy_exec.run(part, {k: v[start:stop] for k, v in feeds.items() if k in part.inputs})
        for t, value in zip(part.outputs, outs):
            gathered[t].append(value)
    gathered = {t: np.concatenate(v) for t, v in gathered.items()}
    if suffix is None:
        return [gathered[t] for t in graph.outputs]
    rest = numpy_exec.run(suffix, {**{name: gathered[t] for t, name in cut_inputs.items()},
                                   **{k: v for k, v in feeds.items() if k in suffix.inputs}})
    found = dict(zip(suffix.outputs, rest))
    return [found[t] if t in found else gathered[t] for t in graph.outputs]


def test_plan_cuts_after_the_last_step_over_budget():
    b = inverted_residual_net()
    g = b.g
    # live around the depthwise convolution: x, its expansion and its output, (4 + 24 + 24) x 12 x 12
    # floats = 29952 bytes per image; the residual add's step holds 12 x 144 floats per image
    plan = batch_chunks.plan(g, live_budget=60000, chunk_budget=60000)
    assert plan is not None and plan.batch == 5
    assert plan.prefix == ["x", "expand", "dw", "project"]
    assert plan.chunk == 2   # 3 chunks: 2, 2, 1
    inside = set(plan.prefix)
    for name in g.nodes():
        if name not in inside:
            assert all(src in inside or src not in plan.prefix for src, _ in g.inputs_of(name))
    # every tensor the rest reads from the prefix crosses the cut (the graph input: read directly)
    crossing = {(src, out) for name in g.nodes() if name not in inside
                for src, out in g.inputs_of(name) if src in inside and src != "x"}
    assert crossing == set(plan.cut) == {("project", 0)}


@pytest.mark.parametrize("live_budget, chunk_budget", [(60000, 60000), (60000, 1), (1, 1)])
def test_chunked_graphs_compute_the_whole_graph(live_budget, chunk_budget):
    """Prefix chunks + suffix on the numpy executor (float64) = the whole graph, with NaN and
    Inf kept in their own images."""
    b = inverted_residual_net(dtype="float64")
    g = b.g
    plan = batch_chunks.plan(g, live_budget=live_budget, chunk_budget=chunk_budget)
    assert plan is not None and plan.chunk < plan.batch
    for feeds in (b.feeds, {"x": with_non_finite(b.feeds["x"])}):
        want = numpy_exec.run(g, feeds)
        got = run_chunked_reference(g, plan, feeds)
        for w, y in zip(want, got):
            assert w.shape == y.shape
            np.testing.assert_array_equal(np.isnan(y), np.isnan(w))
            np.testing.assert_allclose(y, w, rtol=1e-12, atol=1e-12)


def test_whole_graph_as_prefix():
    """Every node over budget: the prefix is the whole graph and there is no suffix."""
    b = inverted_residual_net(dtype="float64")
    plan = batch_chunks.plan(b.g, live_budget=1, chunk_budget=1)
    prefix, suffix, cut_inputs = batch_chunks.split(b.g, plan)
    assert plan.chunk == 1 and suffix is None and cut_inputs == {}
    assert prefix.outputs == b.g.outputs


def test_plan_declines():
    b = inverted_residual_net()
    assert batch_chunks.plan(b.g, live_budget=1 << 30, chunk_budget=1 << 30) is None   # fits the caches
    assert batch_chunks.plan(b.g, live_budget=0, chunk_budget=1) is None               # switched off
    one = inverted_residual_net(batch=1)
    assert batch_chunks.plan(one.g, live_budget=1, chunk_budget=1) is None               # nothing to split
    assert batch_chunks.plan(b.g, live_budget=60000, chunk_budget=1 << 30) is None      # one chunk = the batch
    # a compute-bound front (many multiply-adds per output value) keeps the whole batch
    heavy = Builder(dtype="float32")
    x = heavy.input("x", (4, 64, 8, 8))
    y = heavy.conv("c1", x, 64, k=3, padding=1)
    heavy.g.set_outputs([heavy.conv("c2", y, 64, k=3, padding=1)])
    assert batch_chunks._macs_per_output(heavy.g, heavy.g.topological_order()) > batch_chunks.MEMORY_BOUND_MACS
    assert batch_chunks.plan(heavy.g, live_budget=1, chunk_budget=1) is None
    # an op that mixes the images of a batch (not per sample) stops the prefix before it
    mixed = Builder(dtype="float32")
    x = mixed.input("x", (4, 3, 8, 8))
    t = mixed.op("t", "Transpose", x, perm=(0, 1, 3, 2))
    mixed.g.set_outputs([mixed.conv("c", t, 2, k=1)])
    assert batch_chunks.plan(mixed.g, live_budget=1, chunk_budget=1) is None


@pytest.mark.skipif(not c_backend.available(), reason="needs a C compiler")
@pytest.mark.parametrize("live_budget, chunk_budget", [(60000, 60000), (1, 1)])
def test_c_program_chunked_equals_unchunked(monkeypatch, live_budget, chunk_budget):
    """The C InferenceProgram in chunks (with a smaller last chunk) gives the unchunked
    program's outputs and the float64 reference's, NaN/Inf included."""
    b = inverted_residual_net(dtype="float32", seed=4)
    g = b.g
    whole = InferenceProgram(g, "c", chunking=False)
    assert whole.chunks is None
    monkeypatch.setenv("N2D2_CHUNK_LIVE_BYTES", str(live_budget))
    monkeypatch.setenv("N2D2_CHUNK_BYTES", str(chunk_budget))
    chunked = InferenceProgram(g, "c")
    assert chunked.chunks is not None and chunked.chunks.chunk < chunked.chunks.batch
    chunk = chunked.chunks.chunk
    assert len(chunked.programs) == 1 + (5 % chunk > 0) + (chunked._suffix is not None)
    rng = np.random.default_rng(7)
    for x in (rng.standard_normal((5, 4, 12, 12)).astype(np.float32),
              with_non_finite(rng.standard_normal((5, 4, 12, 12)).astype(np.float32))):
        want = whole.run({"x": x})[0]
        for _ in range(2):   # a second run reuses the gathered buffers' layout
            got = chunked.run({"x": x})[0]
            np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
        ref = numpy_exec.run(g, {"x": x.astype(np.float64)})[0]
        finite = np.isfinite(ref)
        np.testing.assert_array_equal(np.isnan(got), np.isnan(ref))
        assert np.linalg.norm(got[finite] - ref[finite]) <= 1e-5 * np.linalg.norm(ref[finite])


def test_only_the_c_backend_chunks(monkeypatch):
    monkeypatch.setenv("N2D2_CHUNK_LIVE_BYTES", "1")
    monkeypatch.setenv("N2D2_CHUNK_BYTES", "1")
    b = inverted_residual_net()
    assert InferenceProgram(b.g, "numpy").chunks is None


def test_per_sample_ops():
    """The ops declared per sample (their references treat each image alone in inference)."""
    from n2d2.ir import ops as op_registry
    defs = op_registry.definitions()
    assert {n for n, op in defs.items() if op.per_sample} == {
        "Activation", "BatchNorm", "Concat", "Conv", "Deconv", "Dropout", "ElemWise", "Epilogue", "Fc",
        "Identity", "LRN", "Padding", "Pool", "Reshape", "Resize", "Scaling", "Softmax"}


@pytest.mark.skipif(not c_backend.available(), reason="needs a C compiler")
def test_prefix_that_cannot_be_rebatched_runs_whole(monkeypatch):
    """A prefix whose shape rules refuse the chunk's batch: one program on the whole batch."""
    import n2d2.codegen.programs as programs
    from n2d2.ir.types import GraphError

    def refuse(graph, batch_size):
        raise GraphError(f"'{graph.name}' is bound to its batch")

    monkeypatch.setenv("N2D2_CHUNK_LIVE_BYTES", "1")
    monkeypatch.setattr(programs, "rebatch", refuse)
    b = inverted_residual_net()
    program = InferenceProgram(b.g, "c")
    assert program.chunks is None and len(program.programs) == 1
    want = numpy_exec.run(b.g, b.feeds)[0]
    np.testing.assert_allclose(program.run(b.feeds)[0], want, rtol=1e-4, atol=1e-5)


def test_plan_declines_when_the_heavy_part_passes_an_op_mixing_images():
    """Steps over budget after a node that is not per sample: chunking the part before it would
    leave the rest of the traffic, so the plan declines."""
    b = Builder(dtype="float32")
    x = b.input("x", (4, 8, 12, 12))
    c = b.conv("c", x, 8, k=1)              # live: x + c = 36864 bytes
    c2 = b.conv("c2", c, 1, k=1)            # c + c2 = 20736
    t = b.op("t", "Transpose", c2, perm=(0, 1, 3, 2))   # c2 + t = 4608
    b.g.set_outputs([b.conv("after", t, 1, k=1)])       # t + after = 4608
    plan = batch_chunks.plan(b.g, live_budget=10000, chunk_budget=1)
    assert plan is not None and plan.prefix == ["x", "c", "c2"]
    assert batch_chunks.plan(b.g, live_budget=4000, chunk_budget=1) is None
