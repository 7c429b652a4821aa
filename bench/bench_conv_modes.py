"""Batch-1 inference convolutions: the plane mode (n2d2/ops/conv.py PLANE_BYTES) against the mode
the C backend picks without it, kernel by kernel.

Each case is one convolution compiled twice (plane allowed / `PLANE_BYTES` set to -1); its
kernel (`n2d2_node_2`, after the source convolution of tests/test_c_backend.Net) is called
through ctypes in batches of 100, timed by process CPU time, best of `--batches` batches and of
two interleaved rounds, one thread (N2D2_THREADS=1). The outputs of the two programs are compared
first. Usable under load (CPU time, best of many); not a test.

    python bench/bench_conv_modes.py [--batches 40] [--plane-bytes N] [case ...]
"""
import argparse
import ctypes
import os
import sys
import time

from bench_lenet_infer import best_batch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

CASES = {
    # name: (input shape, outputs, Net.conv kwargs)
    "lenet_conv1": ((1, 1, 32, 32), 6, dict(k=(5, 5), bias=False, activation="relu")),
    "lenet_conv2_table": ((1, 6, 14, 14), 16, dict(k=(5, 5), bias=False, activation="relu", mapping="lenet")),
    "lenet_conv2_dense": ((1, 6, 14, 14), 16, dict(k=(5, 5), bias=False, activation="relu")),
    "3x3_pad1_5to6_23x21": ((1, 5, 23, 21), 6, dict(k=(3, 3), padding=(1, 1))),
    "3x3_dil21_b2": ((2, 3, 20, 18), 4, dict(k=(3, 3), dilation=(2, 1), padding=(2, 1), bias=False)),
    "5x5_valid_3to4_12x12": ((1, 3, 12, 12), 4, dict(k=(5, 5), bias=False)),
    "5x5_valid_3to5_7x7": ((1, 3, 7, 7), 5, dict(k=(5, 5))),
    "3x3_pad1_16to16_16x16": ((1, 16, 16, 16), 16, dict(k=(3, 3), padding=(1, 1))),
    "3x3_pad1_32to32_8x8": ((1, 32, 8, 8), 32, dict(k=(3, 3), padding=(1, 1))),
    "3x3_pad1_8to16_32x32": ((1, 8, 32, 32), 16, dict(k=(3, 3), padding=(1, 1))),
}


def program(case, plane_bytes):
    import numpy as np

    import n2d2.ops.conv as conv
    from tests.test_c_backend import ACTIVATIONS, Net, c_backend

    shape, o, kw = CASES[case]
    kw = dict(kw)
    if "activation" in kw:
        kw["activation"] = ACTIVATIONS[kw["activation"]]
    if kw.get("mapping") == "lenet":
        kw["mapping"] = np.random.default_rng(3).random((6, 16)) < 0.6
    saved = conv.PLANE_BYTES
    conv.PLANE_BYTES = plane_bytes
    try:
        net = Net(seed=1)
        net.output(net.conv(net.source(shape), o, **kw))
        p = c_backend.CProgram(net.g, [net.g.topological_order()])
    finally:
        conv.PLANE_BYTES = saved
    p.feed(net.feeds)
    p.run_phase(0)
    f = p._lib.n2d2_node_2
    f.argtypes = [ctypes.c_void_p] * 4
    f.restype = None
    return p, f, p.geometry[net.g.topological_order()[-1]]["MODE"]


def best(f, args, batches, calls=100):
    """us per call, fastest batch by process CPU time (bench_lenet_infer.best_batch)."""
    return best_batch(f, calls, batches, time.process_time, args)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batches", type=int, default=40)
    ap.add_argument("--plane-bytes", type=int, default=None, help="PLANE_BYTES of the plane build")
    ap.add_argument("cases", nargs="*", help=f"default: all of {', '.join(CASES)}")
    args = ap.parse_args()
    os.environ["N2D2_THREADS"] = "1"
    import numpy as np

    import n2d2.ops.conv as conv

    plane_bytes = conv.PLANE_BYTES if args.plane_bytes is None else args.plane_bytes
    print(f"{'case':24s} {'with plane':>18s} {'without':>18s}  ratio (1 thread, process CPU time, us per call)")
    for case in args.cases or CASES:
        pa, fa, ma = program(case, plane_bytes)
        pb, fb, mb = program(case, -1)
        ya, yb = (p.view(p.graph.outputs[0]) for p in (pa, pb))
        assert np.allclose(ya, yb, rtol=1e-4, atol=1e-4 * float(np.abs(yb).max())), case
        ta = tb = float("inf")
        for _ in range(2):
            ta = min(ta, best(fa, pa._call_args(), args.batches))
            tb = min(tb, best(fb, pb._call_args(), args.batches))
        print(f"{case:24s} {ma:>7s} {ta:8.2f} us {mb:>7s} {tb:8.2f} us  {ta / tb:.2f}", flush=True)


if __name__ == "__main__":
    main()
