"""Per-kernel CPU time of the C max-pool forward kernels (`N2D2_PROFILE=cpu` accounting, one
thread, fresh random inputs), microseconds per call, as one JSON line:

    N2D2_THREADS=1 PYTHONPATH=$PWD python bench/bench_pool.py [calls]

Before/after a kernel change: run it from a copy of each tree (`git archive REV n2d2 tests bench`)
in turn, a few rounds, in the same script (the numbers in bench/RESULTS.md were taken so)."""
import json
import sys

from tests.test_c_backend import Net, c_backend
from tests.test_nan_propagation import _pool

# name: (input shape, window, stride, padding)
CASES = {"lenet_pool1_2x2_28x28_b128": ((128, 6, 28, 28), (2, 2), (2, 2), (0, 0)),
         "lenet_pool2_2x2_10x10_b128": ((128, 16, 10, 10), (2, 2), (2, 2), (0, 0)),
         "stem_3x3_s2_p1_56x56_b8": ((8, 64, 56, 56), (3, 3), (2, 2), (1, 1)),
         "global_7x7_b64x512": ((64, 512, 7, 7), (7, 7), (1, 1), (0, 0))}


def main(calls=200):
    net = Net(seed=5, name="bench_pool")
    ys = {k: _pool(net, s, "Max", kk, st, pd, act="relu") for k, (s, kk, st, pd) in CASES.items()}
    net.output(*ys.values())
    p = c_backend.CProgram(net.g, [net.g.topological_order()], profile=2)   # 2: CPU time
    p.feed(net.feeds)
    for _ in range(calls):
        p.run_phase(0)
    prof = p.profile()
    print(json.dumps({k: round(prof[y][1] / prof[y][0], 1) for k, y in ys.items()}))


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 200)
