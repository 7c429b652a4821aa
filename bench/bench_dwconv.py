#!/usr/bin/env python3
"""Per-layer C inference kernels of an ONNX model (MobileNet V2 by default), grouped by mode.

The model exported by bench_onnx_zoo.py (its cache) is imported into n2d2's C backend with one
thread (or `--threads`); every kernel is timed by the program's profile (`N2D2_PROFILE=cpu`: the
calling thread's CPU time, steady on a loaded machine; wall time with more threads), best of
`--repeat` calls. Prints the depthwise ("direct")
convolutions one by one, then the totals per convolution mode and for everything else, so that a
kernel change can be measured layer by layer. Not a test; no torch in this process.

    python bench/bench_dwconv.py [--model mobilenet_v2] [--batches 1 16] [--repeat 10] [--threads 1]
"""
import argparse
import atexit
import os
import sys

ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
ap.add_argument("--model", default="mobilenet_v2")
ap.add_argument("--batches", nargs="+", type=int, default=[1, 16])
ap.add_argument("--repeat", type=int, default=10)
ap.add_argument("--threads", type=int, default=1, help="more than 1: kernels timed by wall time")
ap.add_argument("--size", type=int, default=224)
ap.add_argument("--cache", default=os.path.join(os.path.expanduser("~"), ".cache", "n2d2_onnx_zoo"))
ARGS = ap.parse_args()
os.environ["N2D2_PROFILE"] = "cpu" if ARGS.threads == 1 else "1"
os.environ["N2D2_THREADS"] = os.environ["OMP_NUM_THREADS"] = str(ARGS.threads)
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import numpy as np  # noqa: E402

import n2d2  # noqa: E402
from n2d2.cells.deepnet_cell import DeepNetCell  # noqa: E402
from n2d2.provider import TensorPlaceholder  # noqa: E402


def layers(batch):
    """{node: (best us, mode, geometry)} of one model at one batch size."""
    name = f"{ARGS.model}_{ARGS.size}.onnx" if batch == 1 else f"{ARGS.model}_{ARGS.size}_b{batch}.onnx"
    path = os.path.join(ARGS.cache, name)
    if not os.path.exists(path):
        sys.exit(f"{path} is missing: run bench/bench_onnx_zoo.py --models {ARGS.model} --batches {batch} first")
    provider = n2d2.provider.DataProvider(n2d2.database.Numpy(), [ARGS.size, ARGS.size, 3], batch_size=batch)
    dn = DeepNetCell.load_from_ONNX(provider, path, backend="c", generic_ops=True)
    dn.test()
    x = np.random.default_rng(0).standard_normal((batch, 3, ARGS.size, ARGS.size)).astype(np.float32)
    tensor = n2d2.Tensor.from_numpy(x)
    TensorPlaceholder(tensor)
    dn(tensor)
    progs = [c for key, p in dn._programs.items() if key[0] == "inference"
             for c in getattr(p, "programs", [p._c])]   # (batch chunks: several programs)
    for p in progs:
        atexit.unregister(p.print_profile)
    best = {}
    for _ in range(ARGS.repeat):
        before = {id(p): p.profile() for p in progs}
        dn(tensor)
        for p in progs:
            for node, (_, t_us, _) in p.profile().items():
                dt = t_us - before[id(p)].get(node, (0, 0.0, ""))[1]
                geo = p.geometry.get(node, {})
                mode = geo.get("MODE", "-") if isinstance(geo, dict) else "-"
                if node not in best or dt < best[node][0]:
                    best[node] = (dt, mode, geo)
    return best


def main():
    for batch in ARGS.batches:
        best = layers(batch)
        clock = "CPU time of one thread (N2D2_PROFILE=cpu)" if ARGS.threads == 1 else f"wall, {ARGS.threads} threads"
        print(f"# {ARGS.model} b{batch}: best of {ARGS.repeat}, {clock}")
        print("| depthwise layer | C x H x W | stride | us |")
        print("|---|---|---:|---:|")
        for node, (us, mode, g) in best.items():
            if mode == "direct":
                print(f"| {node} | {g['C']}x{g['H']}x{g['W']} | {g['SX']} | {us:.0f} |")
        totals = {}
        for us, mode, _ in best.values():
            totals[mode] = totals.get(mode, 0.0) + us
        total = sum(totals.values())
        print("| mode | us | share |")
        print("|---|---:|---:|")
        for mode, us in sorted(totals.items(), key=lambda kv: -kv[1]):
            print(f"| {mode} | {us:.0f} | {100 * us / total:.0f} % |")
        print(f"| all kernels | {total:.0f} | |")


if __name__ == "__main__":
    main()
