#!/usr/bin/env python3
"""Per-layer C convolution kernels vs PyTorch: ResNet-20's 3x3 layers at batch 128.

For each shape, a two-layer network (a 1x1 convolution, so that the measured layer must also
compute its input gradient, then the 3x3 layer) is traced and compiled to a C training program;
the 3x3 layer's forward and backward kernels are timed with the program's per-kernel profile
(`N2D2_PROFILE=1`, wall time), the best of `--repeats` steps. PyTorch: `conv2d` forward and
its backward (input and weight gradients) on the same shapes, best of as many calls. GFLOP/s
count 2 x MACs (forward) and 4 x MACs (backward: input and weight gradients). The mode column
is the one `n2d2.codegen.c_backend` picked (see WIDE_MIN_EFFICIENCY there). Not a test.

    python bench/bench_c_conv.py [--threads 2] [--repeats 12] [--batch 128]
"""
import argparse
import atexit
import os
import sys
import time

ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
ap.add_argument("--threads", type=int, default=2)
ap.add_argument("--repeats", type=int, default=12)
ap.add_argument("--batch", type=int, default=128)
ARGS = ap.parse_args()
os.environ["N2D2_PROFILE"] = "1"
os.environ["N2D2_THREADS"] = str(ARGS.threads)
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import numpy as np  # noqa: E402
import torch  # noqa: E402

import n2d2  # noqa: E402
from n2d2.cells import Conv, Sequence  # noqa: E402
from n2d2.codegen.programs import TrainingProgram  # noqa: E402
from n2d2.ir.autodiff import build_training_graph  # noqa: E402
from n2d2.ir.trace import trace  # noqa: E402
from n2d2.solver import SGD  # noqa: E402

# (input channels, output channels, map size, stride): ResNet-20's 3x3 convolutions
SHAPES = [(16, 16, 32, 1), (32, 32, 16, 1), (64, 64, 8, 1), (16, 32, 32, 2), (32, 64, 16, 2)]


def n2d2_layer(c, o, h, s, x, dy):
    """(forward s, backward s, mode) of the C kernels of one 3x3 layer."""
    conv = Conv(c, o, [3, 3], stride_dims=[s, s], padding_dims=[1, 1], no_bias=True)
    net = Sequence([Conv(c, c, [1, 1], no_bias=True), conv])
    net.set_solver(SGD(learning_rate=0.0))
    graph = trace(net(n2d2.Tensor(list(x.shape))).get_deepnet()).graph
    tg = build_training_graph(graph)
    program = TrainingProgram(tg, "c")
    cp = program._c
    atexit.unregister(cp.print_profile)
    name = conv.get_name()
    best_f = best_b = float("inf")
    for step in range(ARGS.repeats + 3):
        p0 = cp.profile()
        program.forward({tg.graph.inputs[0]: x})
        program.backward({tg.graph.outputs[0]: dy})
        p1 = cp.profile()
        if step >= 3:
            best_f = min(best_f, (p1[name][1] - p0[name][1]) / 1e6)
            best_b = min(best_b, (p1["grad:" + name][1] - p0["grad:" + name][1]) / 1e6)
    return best_f, best_b, cp.geometry[name]["MODE"]


def torch_layer(c, o, s, x, dy):
    xt = torch.from_numpy(x).requires_grad_(True)
    wt = torch.from_numpy(np.random.default_rng(1).standard_normal((o, c, 3, 3)).astype(np.float32))
    wt.requires_grad_(True)
    dyt = torch.from_numpy(dy)
    best_f = best_b = float("inf")
    for step in range(ARGS.repeats + 3):
        t0 = time.perf_counter()
        y = torch.nn.functional.conv2d(xt, wt, stride=s, padding=1)
        t1 = time.perf_counter()
        y.backward(dyt)
        t2 = time.perf_counter()
        xt.grad = wt.grad = None
        if step >= 3:
            best_f, best_b = min(best_f, t1 - t0), min(best_b, t2 - t1)
    return best_f, best_b


def main():
    torch.set_num_threads(ARGS.threads)
    print(f"# {ARGS.threads} thread(s), batch {ARGS.batch}, best of {ARGS.repeats}; torch {torch.__version__}")
    print("| layer | mode | n2d2 fwd ms (GFLOP/s) | torch fwd ms (GFLOP/s) | n2d2 bwd ms (GFLOP/s) "
          "| torch bwd ms (GFLOP/s) |")
    print("|---|---|---:|---:|---:|---:|")
    for c, o, h, s in SHAPES:
        rng = np.random.default_rng(0)
        ho = (h - 1) // s + 1
        x = rng.standard_normal((ARGS.batch, c, h, h)).astype(np.float32)
        dy = rng.standard_normal((ARGS.batch, o, ho, ho)).astype(np.float32)
        gflop = 2 * ARGS.batch * o * ho * ho * c * 9 / 1e9
        nf, nb, mode = n2d2_layer(c, o, h, s, x, dy)
        tf, tb = torch_layer(c, o, s, x, dy)
        print(f"| {c}->{o} {h}x{h} stride {s} | {mode} | {1e3 * nf:.2f} ({gflop / nf:.0f}) | {1e3 * tf:.2f} "
              f"({gflop / tf:.0f}) | {1e3 * nb:.2f} ({2 * gflop / nb:.0f}) | {1e3 * tb:.2f} ({2 * gflop / tb:.0f}) |")


if __name__ == "__main__":
    main()
