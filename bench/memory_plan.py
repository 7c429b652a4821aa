"""Buffer planning figures on MobileNet v2 (224x224, batch 1): planned arena vs. one buffer per
tensor (naive) vs. the live-bytes lower bound.

    python bench/memory_plan.py [--size 224] [--batch 1] [--no-check]

Goals (issue 4): inference, planned within 2 % of the lower bound and at least 4x smaller
than naive; training, planned at least 1.9x smaller than naive on the autodiff training graph
(reported as pending while `n2d2.ir.autodiff` has not landed: the training graph is not
approximated here).

The graph is traced from the model zoo when `n2d2.ir.trace` exists, else built directly with
`Graph.add_op` following the torchvision architecture (conv 3x3/2 32, 17 inverted residual
blocks, conv 1x1 1280, global average pool, dropout, Fc 1000; BatchNorm after each conv with
ReLU6 = Rectifier(clipping=6.0) fused into it, residual adds as ElemWise Sum).
"""
from __future__ import annotations

import argparse
import datetime
import platform
import sys
import time

import numpy as np

sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parent.parent))

SETTING = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))
RELU6 = ("Rectifier", (("clipping", 6.0), ("leak_slope", 0.0)))


def _make_divisible(value: float, divisor: int = 8) -> int:
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


class _Builder:
    """add_op helpers with seeded parameters (small values so activations stay finite)."""

    def __init__(self, graph, seed=0, dtype=np.float32):
        self.g, self.rng, self.dtype = graph, np.random.default_rng(seed), dtype

    def _param(self, name, shape, scale=1.0, offset=0.0, trainable=True):
        from n2d2.solver import SGD

        arr = (offset + scale * self.rng.standard_normal(shape)).astype(self.dtype)
        return self.g.add_param(name, arr, trainable=trainable, owner=name.rsplit(".", 1)[0],
                                solver=SGD() if trainable else None)

    def conv(self, name, x, cout, kernel=1, stride=1, groups=1):
        cin = self.g.output_types(x[0] if isinstance(x, tuple) else x)[0].shape[1]
        fan_in = cin // groups * kernel * kernel
        w = self._param(name + ".weights", (cout, cin // groups, kernel, kernel), scale=np.sqrt(2.0 / fan_in))
        pad = kernel // 2
        return self.g.add_op(name, "Conv", [x], {"stride": (stride, stride), "padding": (pad, pad),
                                                 "dilation": (1, 1), "groups": groups, "mapping": None,
                                                 "activation": None}, {"weights": w})

    def bn(self, name, x, relu6):
        c = self.g.output_types(x)[0].shape[1]
        params = {"scales": self._param(name + ".scales", (c,), 0.1, 1.0),
                  "biases": self._param(name + ".biases", (c,), 0.1),
                  "means": self._param(name + ".means", (c,), 0.1, trainable=False),
                  "variances": self.g.add_param(name + ".variances",
                                                (1.0 + 0.1 * self.rng.random(c)).astype(self.dtype), trainable=False)}
        return self.g.add_op(name, "BatchNorm", [x], {"epsilon": 1e-5, "momentum": 0.1, "unbiased": False,
                                                      "activation": RELU6 if relu6 else None}, params)


def build_mobilenet_v2(size: int = 224, batch: int = 1, alpha: float = 1.0, nb_outputs: int = 1000,
                       seed: int = 0):
    """The MobileNet v2 IR graph built directly with `add_op` (no tracer needed)."""
    from n2d2.ir.graph import Graph

    g = Graph("mobilenet_v2")
    b = _Builder(g, seed)
    x = g.add_input("input", (batch, 3, size, size))
    channels = _make_divisible(32 * alpha)
    x = b.bn("conv1_bn", b.conv("conv1", x, channels, kernel=3, stride=2), True)
    k = 0
    for t, c, n, s in SETTING:
        cout = _make_divisible(c * alpha)
        for i in range(n):
            k += 1
            name, stride, hidden = f"block{k}", (s if i == 0 else 1), channels * t
            y = x
            if t != 1:
                y = b.bn(name + "_expand_bn", b.conv(name + "_expand", y, hidden), True)
            y = b.bn(name + "_dw_bn", b.conv(name + "_dw", y, hidden, kernel=3, stride=stride, groups=hidden), True)
            y = b.bn(name + "_project_bn", b.conv(name + "_project", y, cout), False)
            if stride == 1 and channels == cout:
                y = g.add_op(name + "_sum", "ElemWise", [y, x], {"operation": "Sum", "weights": [1.0, 1.0],
                                                                   "shifts": [0.0, 0.0], "activation": None})
            x, channels = y, cout
    last = _make_divisible(1280 * max(1.0, alpha))
    x = b.bn("conv_last_bn", b.conv("conv_last", x, last), True)
    h, w = g.output_types(x)[0].shape[2:]
    x = g.add_op("pool", "Pool", [x], {"pooling": "Average", "pool": (h, w), "stride": (1, 1), "padding": (0, 0),
                                       "mapping": None, "activation": None})
    x = g.add_op("dropout", "Dropout", [x], {"dropout": 0.2, "activation": None})
    wfc = b._param("fc.weights", (nb_outputs, last), 0.01)
    bfc = b._param("fc.biases", (nb_outputs,), 0.0)
    x = g.add_op("fc", "Fc", [x], {"activation": None}, {"weights": wfc, "biases": bfc})
    g.set_outputs([x])
    return g


def traced_mobilenet_v2(size: int = 224, batch: int = 1):
    """The graph traced from `n2d2.models.MobileNetV2` (test mode), or None without a tracer."""
    try:
        from n2d2.ir.trace import trace
        from n2d2.models.mobilenetv2 import MobileNetV2
        from n2d2.tensor import Tensor
    except ImportError:
        return None
    model = MobileNetV2()
    model.test()
    y = model(Tensor([batch, 3, size, size]))
    return trace(y.get_deepnet(), name="mobilenet_v2", input_names=["input"]).graph


def training_graph(graph):
    """The autodiff training graph, or None while `n2d2.ir.autodiff` has not landed."""
    try:
        from n2d2.ir.autodiff import build_training_graph
    except ImportError:
        return None
    return build_training_graph(graph).graph


def _versions() -> str:
    import networkx

    return (f"Python {platform.python_version()}, numpy {np.__version__}, networkx {networkx.__version__}, "
            f"{platform.platform()}, {platform.processor() or platform.machine()}")


def compare_executors(graph, plan, feeds, training=False) -> float:
    """Largest relative difference between numpy_exec and the arena executor, over the outputs
    and (for a training graph) every parameter after its update. Parameters are restored in
    between, and the global seed reset so that dropout draws the same masks."""
    import n2d2
    from n2d2.codegen import numpy_exec
    from n2d2.codegen.arena_exec import ArenaProgram

    program = ArenaProgram(graph, plan)
    start = {k: p.array.copy() for k, p in graph.params.items()}

    def one(fn):
        for k, p in graph.params.items():
            p.array[...] = start[k]
        n2d2.global_variables.seed = 7
        outs = fn()
        return outs + [graph.params[k].array.copy() for k in sorted(graph.params)]

    ref = one(lambda: numpy_exec.run(graph, feeds, training=training))
    got = one(lambda: program.run(feeds, training=training))
    for k, p in graph.params.items():
        p.array[...] = start[k]
    worst = 0.0
    for a, b in zip(got, ref):
        denom = float(np.linalg.norm(b)) or 1.0
        worst = max(worst, float(np.linalg.norm(np.asarray(a, np.float64) - b) / denom))
    return worst


def main(argv=None) -> int:
    from n2d2.ir import planner
    from n2d2.ir.schedule import schedule

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--no-check", action="store_true", help="skip running the arena executor")
    p.add_argument("--direct", action="store_true", help="build the graph with add_op even if the tracer exists")
    args = p.parse_args(argv)

    print(f"# n2d2 memory plan benchmark, {datetime.date.today().isoformat()}")
    print(f"# {_versions()}")
    print(f"# command: python bench/memory_plan.py {' '.join(argv if argv is not None else sys.argv[1:])}")
    graph = None if args.direct else traced_mobilenet_v2(args.size, args.batch)
    source = "traced from n2d2.models.MobileNetV2"
    if graph is None:
        graph = build_mobilenet_v2(args.size, args.batch)
        source = "built directly with Graph.add_op (tracer not available)"
    graph.verify()
    print(f"# graph: MobileNet v2 {args.size}x{args.size}, batch {args.batch}, inference; {source}")

    t0 = time.perf_counter()
    order = schedule(graph)
    the_plan = planner.plan(graph, order)
    t1 = time.perf_counter()
    planner.validate(graph, the_plan)
    t2 = time.perf_counter()
    report = planner.memory_report(graph, the_plan)
    print(planner.format_memory_report(report))
    print(f"  schedule + plan {1e3 * (t1 - t0):.1f} ms, validate {1e3 * (t2 - t1):.1f} ms")

    ok = True
    within = report["planned"] <= 1.02 * report["lower_bound"]
    smaller = report["naive"] >= 4 * report["planned"]
    print(f"goal inference: planned within 2 % of the lower bound: {'PASS' if within else 'FAIL'} "
          f"({100 * (report['planned_over_lower_bound'] - 1):+.2f} %)")
    print(f"goal inference: planned at least 4x smaller than naive: {'PASS' if smaller else 'FAIL'} "
          f"({report['naive_over_planned']:.2f}x)")
    ok &= within and smaller

    rng = np.random.default_rng(1)
    x = rng.standard_normal(graph.output_types("input")[0].shape).astype(np.float32)
    if not args.no_check:
        err = compare_executors(graph, the_plan, {"input": x})
        print(f"arena executor vs numpy executor (inference): relative difference {err:.2e}")
        ok &= err < 1e-6

    train = training_graph(graph)
    if train is None:
        print("goal training: planned at least 1.9x smaller than naive: PENDING "
              "(n2d2.ir.autodiff.build_training_graph has not landed)")
    else:
        t0 = time.perf_counter()
        tplan = planner.plan(train)
        t1 = time.perf_counter()
        planner.validate(train, tplan)
        treport = planner.memory_report(train, tplan)
        print("# training graph: n2d2.ir.autodiff.build_training_graph of the graph above "
              "(forward in training mode, Grad/AddN/Update nodes)")
        print(planner.format_memory_report(treport))
        print(f"  schedule + plan {1e3 * (t1 - t0):.1f} ms")
        good = treport["naive"] >= 1.9 * treport["planned"]
        print(f"goal training: planned at least 1.9x smaller than naive: {'PASS' if good else 'FAIL'} "
              f"({treport['naive_over_planned']:.2f}x)")
        ok &= good
        if not args.no_check:
            seeds = [n for n in train.inputs if n != "input"]
            feeds = {"input": x}
            for n in seeds:
                feeds[n] = rng.standard_normal(train.output_types(n)[0].shape).astype(np.float32)
            err = compare_executors(train, tplan, feeds, training=True)
            print(f"arena executor vs numpy executor (training step: outputs and updated parameters): "
                  f"relative difference {err:.2e}")
            ok &= err < 1e-6
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
