#!/usr/bin/env python3
"""Micro-benchmark: n2d2's conv ops (numpy) vs PyTorch eager (CPU), in one process.

Times, at batch 128 unless told otherwise:
  ops    forward + backward of LeNet's three convolutions (conv1 without input gradient, as the
         first layer of a network), of a MobileNet depthwise 3x3 layer and of a transposed
         convolution, n2d2.ops vs torch.nn.functional;
  lenet  one eager LeNet training step (Conv/Pool2d/Fc cells, softmax cross-entropy seeded by
         hand, SGD update) vs the same network in torch.

The two libraries alternate call by call so that both see the same machine load; figures are
the median (and min) over the repeats, ratio = n2d2 / torch (lower is better). Not a test.

    python bench/bench_conv_ops.py [--threads 2] [--batch 128] [--repeats 30] [--sections ops,lenet]
                                   [--clock wall|process]
"""
import argparse
import os
import sys
import time


def _parse():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--sections", default="ops,lenet")
    ap.add_argument("--clock", choices=("wall", "process"), default="wall",
                    help="process: CPU time of this process (steadier on a busy machine with --threads 1)")
    return ap.parse_args()


ARGS = _parse()
for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[var] = str(ARGS.threads)
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import n2d2  # noqa: E402
from n2d2.ops import conv as conv_ops  # noqa: E402
from n2d2.ops import deconv as deconv_ops  # noqa: E402

torch.set_num_threads(ARGS.threads)
CLOCK = time.process_time if ARGS.clock == "process" else time.perf_counter


def compare(name, n2d2_fn, torch_fn, repeats=ARGS.repeats):
    """Alternate the two callables; print median/min times and the ratio."""
    for _ in range(3):
        n2d2_fn()
        torch_fn()
    a, b = [], []
    for _ in range(repeats):
        t = CLOCK()
        n2d2_fn()
        a.append(CLOCK() - t)
        t = CLOCK()
        torch_fn()
        b.append(CLOCK() - t)
    ma, mb = np.median(a) * 1e3, np.median(b) * 1e3
    print(f"{name:44s} n2d2 {ma:8.3f} ms (min {min(a) * 1e3:7.3f})   torch {mb:8.3f} ms (min {min(b) * 1e3:7.3f})"
          f"   ratio {ma / mb:5.2f} (min {min(a) / min(b):5.2f})", flush=True)
    return ma, mb


def _like(y, rng):
    """A random gradient laid out as `y` is (as the next layer's backward would give it)."""
    dy = np.empty_like(y)
    dy[...] = rng.standard_normal(y.shape, dtype=np.float32)
    return dy


def bench_ops():
    rng = np.random.default_rng(0)
    n = ARGS.batch
    print(f"\n== conv ops, forward + backward, batch {n} ==")
    total = [0.0, 0.0]
    layers = [("LeNet conv1 1->6 5x5 32x32 (no dx)", (n, 1, 32, 32), (6, 1, 5, 5), 1, 0, 1, False),
              ("LeNet conv2 6->16 5x5 14x14", (n, 6, 14, 14), (16, 6, 5, 5), 1, 0, 1, True),
              ("LeNet conv3 16->120 5x5 5x5", (n, 16, 5, 5), (120, 16, 5, 5), 1, 0, 1, True)]
    for name, xs, ws, stride, pad, groups, need_dx in layers + [
            ("depthwise 3x3 128ch 28x28 (batch/4)", (max(n // 4, 1), 128, 28, 28), (128, 1, 3, 3), 1, 1, 128, True),
            ("conv 3x3 32->64 stride 2 28x28 (batch/4)", (max(n // 4, 1), 32, 28, 28), (64, 32, 3, 3), 2, 1, 1, True)]:
        x = rng.random(xs, dtype=np.float32)
        w = (rng.standard_normal(ws, dtype=np.float32) * 0.1)
        b = rng.standard_normal(ws[0], dtype=np.float32)
        y, _ = conv_ops.conv2d_forward(x, w, b, stride, pad, 1, 1, groups)
        dy = _like(y, rng)
        xt = torch.from_numpy(x).requires_grad_(need_dx)
        wt = torch.from_numpy(w).requires_grad_()
        bt = torch.from_numpy(b).requires_grad_()
        dyt = torch.from_numpy(np.ascontiguousarray(dy))

        def run_n2d2():
            _, ctx = conv_ops.conv2d_forward(x, w, b, stride, pad, 1, 1, groups)
            conv_ops.conv2d_backward(dy, ctx, need_dx=need_dx)

        def run_torch():
            yt = F.conv2d(xt, wt, bt, stride=stride, padding=pad, groups=groups)
            torch.autograd.grad(yt, [xt, wt, bt] if need_dx else [wt, bt], dyt)

        ma, mb = compare(name, run_n2d2, run_torch)
        if name.startswith("LeNet"):
            total[0] += ma
            total[1] += mb
    print(f"{'LeNet convs together':44s} n2d2 {total[0]:8.3f} ms   torch {total[1]:8.3f} ms   "
          f"ratio {total[0] / total[1]:5.2f}")

    x = rng.random((max(n // 4, 1), 64, 14, 14), dtype=np.float32)
    w = rng.standard_normal((64, 32, 4, 4), dtype=np.float32) * 0.1
    y, _ = deconv_ops.conv_transpose2d_forward(x, w, None, 2, 1)
    dy = _like(y, rng)
    xt, wt = torch.from_numpy(x).requires_grad_(), torch.from_numpy(w).requires_grad_()
    dyt = torch.from_numpy(np.ascontiguousarray(dy))

    def deconv_n2d2():
        _, ctx = deconv_ops.conv_transpose2d_forward(x, w, None, 2, 1)
        deconv_ops.conv_transpose2d_backward(dy, ctx)

    def deconv_torch():
        torch.autograd.grad(F.conv_transpose2d(xt, wt, stride=2, padding=1), [xt, wt], dyt)

    compare("deconv 4x4 s2 64->32 14x14 (batch/4)", deconv_n2d2, deconv_torch)


def bench_lenet():
    from n2d2.activation import Rectifier
    from n2d2.cells import Conv, Fc, Pool2d
    from n2d2.solver import SGD

    n = ARGS.batch
    print(f"\n== LeNet eager training step, batch {n} (conv/pool/fc cells, hand-seeded softmax CE, SGD) ==")
    rng = np.random.default_rng(1)
    xs = [rng.random((n, 1, 32, 32), dtype=np.float32) for _ in range(4)]
    ys = [rng.integers(0, 10, n) for _ in range(4)]
    onehots = [np.eye(10, dtype=np.float32)[y] for y in ys]
    sgd = SGD(learning_rate=0.05, momentum=0.9)
    cells = [Conv(1, 6, [5, 5], activation=Rectifier(), no_bias=True, solver=sgd),
             Pool2d([2, 2], stride_dims=[2, 2], pooling="Max"),
             Conv(6, 16, [5, 5], activation=Rectifier(), no_bias=True, solver=sgd),
             Pool2d([2, 2], stride_dims=[2, 2], pooling="Max"),
             Conv(16, 120, [5, 5], activation=Rectifier(), no_bias=True, solver=sgd),
             Fc(120, 84, activation=Rectifier(), no_bias=True, solver=sgd),
             Fc(84, 10, no_bias=True, solver=sgd)]
    state = {"i": 0}

    def step_n2d2():
        i = state["i"] = (state["i"] + 1) % len(xs)
        t = n2d2.Tensor._wrap(xs[i])
        for cell in cells:
            t = cell(t)
        z = t.to_numpy().reshape(n, 10)
        p = np.exp(z - z.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        net = t.get_deepnet()
        net.seed_gradient(t, (p - onehots[i]).reshape(n, 10, 1, 1))
        net.back_propagate()
        net.update()

    model = torch.nn.Sequential(
        torch.nn.Conv2d(1, 6, 5, bias=False), torch.nn.ReLU(), torch.nn.MaxPool2d(2, 2),
        torch.nn.Conv2d(6, 16, 5, bias=False), torch.nn.ReLU(), torch.nn.MaxPool2d(2, 2),
        torch.nn.Conv2d(16, 120, 5, bias=False), torch.nn.ReLU(), torch.nn.Flatten(),
        torch.nn.Linear(120, 84, bias=False), torch.nn.ReLU(), torch.nn.Linear(84, 10, bias=False))
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    txs = [torch.from_numpy(x) for x in xs]
    tys = [torch.from_numpy(y) for y in ys]

    def step_torch():
        i = state["i"]
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(txs[i]), tys[i], reduction="sum")
        loss.backward()
        opt.step()

    compare("LeNet train step", step_n2d2, step_torch)
    try:
        import cProfile
        import pstats

        prof = cProfile.Profile()
        prof.enable()
        for _ in range(20):
            step_n2d2()
        prof.disable()
        print("\nn2d2 step profile (20 steps, top 12 by total time):")
        pstats.Stats(prof).sort_stats("tottime").print_stats(12)
    except Exception as e:  # profiling is a bonus
        print(f"(profile unavailable: {e})")


def main():
    print(f"n2d2 conv benchmark: threads={ARGS.threads} batch={ARGS.batch} repeats={ARGS.repeats} clock={ARGS.clock}; "
          f"numpy {np.__version__}, torch {torch.__version__}, load average {os.getloadavg()}")
    sections = ARGS.sections.split(",")
    if "ops" in sections:
        bench_ops()
    if "lenet" in sections:
        bench_lenet()


if __name__ == "__main__":
    main()
