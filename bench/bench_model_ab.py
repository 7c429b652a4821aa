"""Whole-model inference time of this checkout against another (`--before DIR`), processes of
the two trees alternating, so that a loaded machine's drift falls on both alike.

Each process imports one tree, loads the ONNX model through `DeepNetCell.load_from_ONNX` on C
(one thread, N2D2_THREADS=1; the compiler cache warm after the first round), runs two calls,
then times `--calls` calls by process CPU time and reports its fastest; the best of `--rounds`
processes per tree is compared. bench_onnx_zoo.py runs the trees one after the other, which on a
busy machine moved the same tree by 10-25 % between runs.

    python bench/bench_model_ab.py --before /tmp/before [--model PATH] [--batch 16] [--rounds 4] [--calls 4]
"""
import argparse
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.dirname(os.path.abspath(__file__))
CHILD = r'''
import sys, time
sys.path.insert(1, sys.argv[4])   # onnx_runner (after the tree: its n2d2 first)
from onnx_runner import load_runner
path, batch, calls = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
dn, run = load_runner(path, batch)
run()
run()
best = float("inf")
for _ in range(calls):
    t = time.process_time()
    run()
    best = min(best, time.process_time() - t)
print(best * 1e3)
'''


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--before", required=True, help="another checkout of n2d2")
    ap.add_argument("--model", default=os.path.expanduser("~/.cache/n2d2_onnx_zoo/mobilenet_v2_224.onnx"))
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--calls", type=int, default=10)
    args = ap.parse_args()
    trees = {"after": ROOT, "before": os.path.abspath(args.before)}
    best = dict.fromkeys(trees, float("inf"))
    env = dict(os.environ, N2D2_THREADS="1", OMP_NUM_THREADS="1")
    for r in range(args.rounds):
        for name, tree in trees.items():
            out = subprocess.run([sys.executable, "-c", CHILD, args.model, str(args.batch), str(args.calls), BENCH],
                                 env=dict(env, PYTHONPATH=tree), cwd=tree, capture_output=True, text=True, check=True)
            ms = float(out.stdout.strip().splitlines()[-1])
            best[name] = min(best[name], ms)
            print(f"round {r} {name}: {ms:.1f} ms", flush=True)
    print(f"{os.path.basename(args.model)} batch {args.batch}, 1 thread, CPU time, best of {args.rounds} processes: "
          f"{best['after']:.1f} ms against {best['before']:.1f} ms before: {best['after'] / best['before']:.3f}x "
          f"(N2D2_CFLAGS={os.environ.get('N2D2_CFLAGS', '')!r})")


if __name__ == "__main__":
    main()
