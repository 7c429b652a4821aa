"""Inference in batch chunks (n2d2.ir.batch_chunks) against the same graph run whole, in one
process, rounds interleaved (usable on a loaded machine with --threads 1 --cpu-time).

For each model (an ONNX file of bench_onnx_zoo.py's cache, e.g. mobilenet_v2_224.onnx; export
it first with that bench), the inference graph at --batch is compiled unchunked and with each
--budgets pair (live MiB, chunk MiB: `N2D2_CHUNK_LIVE_BYTES`, `N2D2_CHUNK_BYTES`; "default"
for the built-in ones); prints the cut each plan makes, the largest difference from the
unchunked outputs and the best time of --rounds, as a ratio to unchunked.

  python bench/bench_batch_chunks.py --models mobilenet_v2 resnet18 --batch 16 --threads 1 --cpu-time
"""
import argparse
import os
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["mobilenet_v2"])
    parser.add_argument("--cache", default=os.path.expanduser("~/.cache/n2d2_onnx_zoo"))
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--budgets", nargs="+", default=["default"], help="LIVE_MIB,CHUNK_MIB or 'default'")
    parser.add_argument("--threads", type=int, default=0, help="N2D2_THREADS (0: the default team)")
    parser.add_argument("--cpu-time", action="store_true", help="process CPU time instead of wall time")
    args = parser.parse_args()
    if args.threads:
        os.environ["N2D2_THREADS"] = str(args.threads)
        os.environ["OMP_NUM_THREADS"] = str(args.threads)
    import n2d2
    from n2d2.cells.deepnet_cell import DeepNetCell
    from n2d2.codegen.programs import InferenceProgram

    clock = time.process_time if args.cpu_time else time.perf_counter
    print(f"# bench_batch_chunks: b{args.batch}, best of {args.rounds} interleaved rounds, "
          f"{'CPU' if args.cpu_time else 'wall'} time, threads {args.threads or 'default'}, "
          f"N2D2_CFLAGS={os.environ.get('N2D2_CFLAGS', '')!r}, load {os.getloadavg()[0]:.1f}")
    for model in args.models:
        path = os.path.join(args.cache, f"{model}_{args.size}.onnx")
        provider = n2d2.provider.DataProvider(n2d2.database.Numpy(), [args.size, args.size, 3], batch_size=1)
        dn = DeepNetCell.load_from_ONNX(provider, path, backend="c", generic_ops=True)
        dn.test()
        graph = dn._graph_for("inference", args.batch)
        programs = {"unchunked": InferenceProgram(graph, "c", chunking=False)}
        for budget in args.budgets:
            saved = {k: os.environ.pop(k, None) for k in ("N2D2_CHUNK_LIVE_BYTES", "N2D2_CHUNK_BYTES")}
            if budget != "default":
                live, chunk = budget.split(",")
                os.environ["N2D2_CHUNK_LIVE_BYTES"] = str(int(float(live) * 2 ** 20))
                os.environ["N2D2_CHUNK_BYTES"] = str(int(float(chunk) * 2 ** 20))
            programs[budget] = InferenceProgram(graph, "c")
            for k, v in saved.items():
                if v is not None:
                    os.environ[k] = v
        x = np.random.default_rng(0).standard_normal((args.batch, 3, args.size, args.size)).astype(np.float32)
        feeds = {graph.inputs[0]: x}
        ref = programs["unchunked"].run(feeds)[0]
        best = {}
        for _ in range(args.rounds):
            for name, program in programs.items():
                t = clock()
                program.run(feeds)
                best[name] = min(best.get(name, float("inf")), clock() - t)
        for name, program in programs.items():
            c = getattr(program, "chunks", None)
            cut = "whole" if c is None else f"{len(c.prefix)} nodes to {c.prefix[-1]}, chunks of {c.chunk}"
            diff = float(np.max(np.abs(program.run(feeds)[0] - ref)))
            print(f"| {model} | {name} | {cut} | {best[name] * 1e3:.1f} ms | "
                  f"{best[name] / best['unchunked']:.3f}x | max diff {diff:.1e} |", flush=True)


if __name__ == "__main__":
    main()
