#!/usr/bin/env python3
"""ResNet-20 b128 training step, convolutions per layer shape: n2d2 C against PyTorch, one thread.

For each class of convolution (input channels, map size, outputs, kernel, stride), the forward
and the backward (dx + dW) in ms per step and in GMAC/s, for n2d2's C kernels in the step
(`N2D2_PROFILE=cpu`, the best of `--steps` steps per node) and for the same layers alone in
PyTorch eager (oneDNN; thread CPU time, best of `--steps` + 2 calls, times the class's layer
count). Each side runs in its own process (importing torch first would make our kernels bind
torch's libgomp), with one thread; CPU times stay meaningful on a loaded machine. `--peak` is the
core's GMAC/s for the last column (57.7: the AMD EPYC Zen 4 guest's measured FMA peak). Not a test.

    python bench/profile_resnet20_layers.py [--steps 3] [--peak 57.7]
"""
import argparse
import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def n2d2_side(steps):
    """{class key: [forward ms, backward ms, forward MMAC, backward MMAC, layers]} of n2d2's step."""
    os.environ["N2D2_PROFILE"] = "cpu"
    os.environ["N2D2_THREADS"] = "1"
    sys.path.insert(0, HERE)
    sys.path.insert(0, os.path.dirname(HERE))
    import atexit

    import bench_c

    step = bench_c.resnet_training(False)
    program = step.program
    atexit.unregister(program.print_profile)
    step()
    best = {}
    for _ in range(steps):
        p0 = program.profile()
        step()
        p1 = program.profile()
        for node, (_, us, _) in p1.items():
            best[node] = min(best.get(node, float("inf")), (us - p0.get(node, (0, 0.0, ""))[1]) / 1000)
    graph = program.graph
    out = {}
    for node in graph.nodes():
        if graph.op(node) != "Conv":
            continue
        g = program.geometry.get(node, {})
        key = f"{g['C']}x{g['H']}x{g['W']} -> {g['O']} k{g['KH']}" + (f" s{g['SY']}" if g["SY"] > 1 else "")
        macs = g["N"] * g["O"] * g["HO"] * g["WO"] * g["C"] * g["KH"] * g["KW"] / 1e6
        first = g["C"] == 3   # the stem: no input gradient
        shape = [g["N"], g["C"], g["H"], g["W"], g["O"], g["KH"], g["SY"], g["PY"]]
        row = out.setdefault(key, [0.0, 0.0, 0.0, 0.0, 0, shape])
        row[0] += best.get(node, 0.0)
        row[1] += best.get("grad:" + node, 0.0)
        row[2] += macs
        row[3] += macs * (1 if first else 2)
        row[4] += 1
    return out


def torch_side(steps, classes):
    """{class key: [forward ms, backward ms]}: each class's layer alone in PyTorch eager (1 thread,
    thread CPU time, the best of `steps` + 2 calls, on random inputs): F.conv2d forward, then
    autograd's input and weight gradients."""
    import time

    import torch
    import torch.nn.functional as F

    torch.set_num_threads(1)
    torch.manual_seed(0)
    out = {}
    for key, (n, c, h, w, o, k, stride, pad) in classes.items():
        x = torch.randn(n, c, h, w, requires_grad=c != 3)
        wt = torch.randn(o, c, k, k, requires_grad=True)
        fwd, bwd = float("inf"), float("inf")
        for _ in range(steps + 2):
            t = time.thread_time()
            y = F.conv2d(x, wt, stride=stride, padding=pad)
            fwd = min(fwd, time.thread_time() - t)
            dy = torch.randn_like(y)
            t = time.thread_time()
            torch.autograd.grad(y, [x, wt] if x.requires_grad else [wt], dy)
            bwd = min(bwd, time.thread_time() - t)
        out[key] = [1000 * fwd, 1000 * bwd]
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--peak", type=float, default=57.7, help="the core's GMAC/s")
    ap.add_argument("--side", choices=("n2d2", "torch"), help=argparse.SUPPRESS)
    ap.add_argument("--classes", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.side:
        print(json.dumps(n2d2_side(args.steps) if args.side == "n2d2"
                         else torch_side(args.steps, json.loads(args.classes))))
        return
    env = dict(os.environ, OMP_NUM_THREADS="1")

    def child(side, *extra):
        run = subprocess.run([sys.executable, __file__, "--side", side, "--steps", str(args.steps), *extra],
                             env=env, check=True, capture_output=True, text=True)
        return json.loads(run.stdout.strip().splitlines()[-1])

    ours = child("n2d2")
    theirs = child("torch", "--classes", json.dumps({key: row[5] for key, row in ours.items()}))
    print(f"{'layer class':26s} {'n':>2s} | {'fwd ms':>7s} {'GMAC/s':>6s} {'torch':>7s} | "
          f"{'bwd ms':>7s} {'GMAC/s':>6s} {'torch':>7s} | {'% peak f/b':>10s}")
    tot = [0.0, 0.0, 0.0, 0.0]
    for key, (f, b, fm, bm, count, _) in sorted(ours.items(), key=lambda r: -r[1][1]):
        tf, tb = (count * t for t in theirs[key])
        tot = [tot[0] + f, tot[1] + b, tot[2] + tf, tot[3] + tb]
        print(f"{key:26s} {count:2d} | {f:7.2f} {fm / f:6.1f} {tf:7.2f} | {b:7.2f} {bm / b:6.1f} {tb:7.2f} | "
              f"{100 * fm / f / args.peak:4.0f} {100 * bm / b / args.peak:4.0f}")
    print(f"{'all convolutions':26s}    | {tot[0]:7.2f} {'':6s} {tot[2]:7.2f} | {tot[1]:7.2f} {'':6s} {tot[3]:7.2f} |")


if __name__ == "__main__":
    main()
