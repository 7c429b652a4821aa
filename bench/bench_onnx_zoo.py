"""The torchvision classifiers at 224x224 through `DeepNetCell.load_from_ONNX` on C, against
onnxruntime (best of 1 and 2 threads), PyTorch eager and torch.compile (inductor): inference
time per batch, first-call times, relative error and top-1 agreement (issue 15's rows).

Each architecture (torchvision==0.28.0, installed with --no-deps; its op registrations stubbed)
gets torch's default initialisation with BatchNorm statistics away from the identity, and is
exported once per batch size (legacy exporter, opset 17) into --cache. Every runner works in a
process of its own (this script re-run with --peer), on the same random batch:
  n2d2      the model imported (generic ONNX nodes on), on a fresh compile cache unless
            --warm-cache: its first run (compiling) is timed apart, then the best of --repeat;
  ort       onnxruntime (CPUExecutionProvider) with 1, then 2 intra-op threads (best kept);
  torch     PyTorch eager (no_grad), its default threads;
  compile   torch.compile (inductor, default mode): the first call (compiling) apart, then
            the best of --repeat.
The n2d2 runner also reports the nodes that fell back to numpy, and with --profile its
slowest C kernels (N2D2_PROFILE, wall time). --before DIR adds a column: the same n2d2 runner
on another checkout (e.g. `git worktree add /tmp/before <commit>`), in the same moment.

Run from the repository root, e.g. `python bench/bench_onnx_zoo.py --models resnet18 mobilenet_v2
--batches 1 16` (see --help; every model with every peer takes many minutes on a small machine).
"""
import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import warnings

import numpy as np
from repo_info import git_commit

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
# a runner of --before measures another checkout's n2d2 (its path in N2D2_BENCH_TREE)
sys.path.insert(0, os.environ.get("N2D2_BENCH_TREE") or ROOT)

# The n2d2 and onnxruntime runners (--peer) never import the test module, which imports torch:
# torch's libgomp, loaded first,
# would be the OpenMP runtime n2d2's kernels bind to, with torch's spin settings instead of n2d2's
# GOMP_SPINCOUNT (a busy-waiting team that burnt 2-3x the CPU of one thread under load). The torch
# runners build the model in their own process.
RUNNER = "--peer" in sys.argv
if not RUNNER or sys.argv[sys.argv.index("--peer") + 1] in ("torch", "compile"):
    from tests.test_onnx_torchvision import ARCHITECTURES, IMPORT_ERROR, MODELS, _randomised  # noqa: E402
    # issue 15's larger networks, beside the test's architectures
    MODEL_BUILDERS = dict(ARCHITECTURES, resnet50=lambda m: m.resnet50(), mnasnet1_0=lambda m: m.mnasnet1_0())
PEERS = ("ort", "torch", "compile")


def build(name):
    return _randomised(MODEL_BUILDERS[name](MODELS))


def export(name, cache, size, batch):
    import torch

    path = os.path.join(cache, f"{name}_{size}.onnx" if batch == 1 else f"{name}_{size}_b{batch}.onnx")
    if not os.path.exists(path):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(build(name), (torch.randn(batch, 3, size, size),), path + ".tmp", dynamo=False,
                              opset_version=17)
        os.replace(path + ".tmp", path)
    return path


def batch_input(batch, size):
    return np.random.default_rng(0).standard_normal((batch, 3, size, size)).astype(np.float32)


CLOCK = time.perf_counter   # time.process_time with --cpu-time


def best(fn, repeat):
    times = []
    out = None
    for _ in range(repeat):
        t = CLOCK()
        out = fn()
        times.append(CLOCK() - t)
    return min(times), out


# -- runners (one per process) -------------------------------------------------------------------
def run_n2d2(args, x):
    import n2d2
    from n2d2.cells.deepnet_cell import DeepNetCell
    from n2d2.provider import TensorPlaceholder

    t = time.perf_counter()
    provider = n2d2.provider.DataProvider(n2d2.database.Numpy(), [args.size, args.size, 3], batch_size=args.batch)
    dn = DeepNetCell.load_from_ONNX(provider, args.path, backend="c", generic_ops=True)
    dn.test()
    imported = time.perf_counter() - t

    def run():
        tensor = n2d2.Tensor.from_numpy(x)
        TensorPlaceholder(tensor)
        return dn(tensor).to_numpy().reshape(len(x), -1)
    t = time.perf_counter()
    run()
    first = time.perf_counter() - t
    seconds, y = best(run, args.repeat)
    programs = _programs(dn)
    fallbacks = sorted({f"{node}: {why}" for p in programs for node, why in getattr(p, "fallback_reasons", {}).items()})
    result = dict(ms=seconds * 1e3, first_s=first, import_s=imported, fallbacks=fallbacks)
    if args.profile:
        rows = []
        for p in programs:
            if hasattr(p, "profile"):
                rows += [(t_us / max(calls, 1), node, where) for node, (calls, t_us, where) in p.profile().items()]
        rows = sorted(rows, reverse=True)[:args.profile]
        result["profile"] = [f"{us:9.1f} us  {where:5s} {node}" for us, node, where in rows]
    return result, y


def _programs(dn):
    """The compiled inference programs of a DeepNetCell (its program cache; a program run in batch
    chunks has several, `programs`: a --before tree may predate them)."""
    return [c for key, program in dn._programs.items() if key[0] == "inference"
            for c in getattr(program, "programs", [program._c])]


def run_ort(args, x):
    import onnxruntime as ort

    best_ms, y, which = None, None, None
    for threads in (1,) if args.threads == 1 else (1, 2):
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        session = ort.InferenceSession(args.path, opts, providers=["CPUExecutionProvider"])
        feed = session.get_inputs()[0].name
        session.run(None, {feed: x})
        seconds, out = best(lambda: session.run(None, {feed: x})[0], args.repeat)
        if best_ms is None or seconds * 1e3 < best_ms:
            best_ms, y, which = seconds * 1e3, out, threads
    return dict(ms=best_ms, threads=which), y.reshape(len(x), -1)


def run_torch(args, x, compiled):
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    model = build(args.model)
    xt = torch.from_numpy(x)
    if compiled:
        model = torch.compile(model)
    with torch.no_grad():
        t = time.perf_counter()
        model(xt)
        first = time.perf_counter() - t
        seconds, y = best(lambda: model(xt), args.repeat)
    return dict(ms=seconds * 1e3, first_s=first, threads=torch.get_num_threads()), y.numpy().reshape(len(x), -1)


def peer_main(args):
    global CLOCK
    if args.cpu_time:
        CLOCK = time.process_time
    x = batch_input(args.batch, args.size)
    if args.peer == "n2d2":
        result, y = run_n2d2(args, x)
    elif args.peer == "ort":
        result, y = run_ort(args, x)
    else:
        result, y = run_torch(args, x, args.peer == "compile")
    np.save(args.out, y)
    print("RESULT " + json.dumps(result), flush=True)


def spawn(args, peer, model, batch, path, out, env):
    cmd = [sys.executable, os.path.abspath(__file__), "--peer", peer, "--model", model, "--batch", str(batch),
           "--path", path, "--out", out, "--size", str(args.size), "--repeat", str(args.repeat),
           "--profile", str(args.profile), "--threads", str(args.threads)] + (["--cpu-time"] if args.cpu_time else [])
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=args.timeout)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        return {"error": f"{peer} exited {proc.returncode}: {' / '.join(tail)}"}, None
    return json.loads(lines[-1][len("RESULT "):]), np.load(out)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["resnet18", "mobilenet_v2"],
                        choices=None if RUNNER else sorted(MODEL_BUILDERS))
    parser.add_argument("--batches", nargs="+", type=int, default=[1])
    parser.add_argument("--peers", nargs="*", default=list(PEERS), choices=PEERS)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--profile", type=int, default=0, help="print the N slowest C kernels of each model")
    parser.add_argument("--warm-cache", action="store_true", help="n2d2 compiles into its usual cache")
    parser.add_argument("--before", help="another checkout of n2d2 to measure beside this one")
    parser.add_argument("--threads", type=int, default=0,
                        help="1: every runner on one thread (n2d2 N2D2_THREADS=1, onnxruntime 1 intra-op thread, "
                             "torch.set_num_threads(1)); 0: their defaults (onnxruntime: best of 1 and 2)")
    parser.add_argument("--cpu-time", action="store_true",
                        help="time with the process's CPU time instead of wall time (steadier on a busy machine "
                             "with --threads 1)")
    parser.add_argument("--timeout", type=int, default=1800, help="seconds per runner process")
    parser.add_argument("--cache", default=os.path.join(os.path.expanduser("~"), ".cache", "n2d2_onnx_zoo"))
    # one runner (internal)
    parser.add_argument("--peer", choices=("n2d2",) + PEERS, help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--path", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.peer:
        return peer_main(args)
    if MODELS is None:
        sys.exit(f"torchvision is not importable ({IMPORT_ERROR}): pip install --no-deps torchvision==0.28.0")

    os.makedirs(args.cache, exist_ok=True)
    print(f"# bench_onnx_zoo: {args.size}x{args.size}, best of {args.repeat}, "
          f"{'CPU' if args.cpu_time else 'wall'} time, threads {args.threads or 'default'}; commit {git_commit()}; "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; load average "
          f"{os.getloadavg()[0]:.1f} at start")
    before = f"before ({args.before}) ms | before / ort | " if args.before else ""
    print(f"| model | batch | n2d2 C ms | onnxruntime ms (threads) | n2d2 / ort | {before}PyTorch eager ms | "
          "torch.compile ms | n2d2 first call s | torch.compile first call s | rel. error vs ort | same top-1 |")
    print("|---|---|---|---|---|---|---|---|---|---|---|" + ("---|---|" if args.before else ""))
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            for batch in args.batches:
                path = export(name, args.cache, args.size, batch)
                env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
                if args.threads:
                    env.update(N2D2_THREADS=str(args.threads), OMP_NUM_THREADS=str(args.threads))
                if args.profile:
                    env["N2D2_PROFILE"] = "1"
                    env.pop("N2D2_PROFILE_AT_EXIT", None)
                n2d2_env = dict(env)
                if not args.warm_cache:
                    n2d2_env["N2D2_CACHE"] = tempfile.mkdtemp(dir=tmp)
                ours, y = spawn(args, "n2d2", name, batch, path, os.path.join(tmp, "n2d2.npy"), n2d2_env)
                peers = {}
                if args.before:
                    before_env = dict(n2d2_env, N2D2_BENCH_TREE=os.path.abspath(args.before))
                    if not args.warm_cache:
                        before_env["N2D2_CACHE"] = tempfile.mkdtemp(dir=tmp)
                    peers["before"] = spawn(args, "n2d2", name, batch, path, os.path.join(tmp, "before.npy"),
                                            before_env)
                for peer in ["ort"] + [p for p in args.peers if p != "ort"]:
                    peers[peer] = spawn(args, peer, name, batch, path, os.path.join(tmp, f"{peer}.npy"), env)
                ref = peers["ort"][1]
                err = top1 = "?"
                if y is not None and ref is not None:
                    err = f"{float(np.linalg.norm(y - ref) / np.linalg.norm(ref)):.1e}"
                    top1 = str(bool((y.argmax(1) == ref.argmax(1)).all()))

                def ms(result):
                    if "error" in result:
                        return "-" if result["error"] == "not run" else "error"
                    return f"{result['ms']:.1f}"
                ort = peers["ort"][0]
                ratio = f"{ours['ms'] / ort['ms']:.2f}x" if "error" not in ours and "error" not in ort else "?"
                if args.before:
                    old = peers["before"][0]
                    ratio += f" | {ms(old)} | " + (f"{old['ms'] / ort['ms']:.2f}x" if "error" not in old
                                                   and "error" not in ort else "?")
                compiled = peers.get("compile", ({"error": "not run"}, None))[0]
                eager = peers.get("torch", ({"error": "not run"}, None))[0]
                print(f"| {name} | {batch} | {ms(ours)} | {ms(ort)} ({ort.get('threads', '?')}) | {ratio} | "
                      f"{ms(eager)} | {ms(compiled)} | {ours.get('first_s', float('nan')):.1f} | "
                      f"{compiled.get('first_s', float('nan')):.1f} | {err} | {top1} |", flush=True)
                for result, who in [(ours, "n2d2")] + [(r, p) for p, (r, _) in peers.items()]:
                    if "error" in result:
                        print(f"#   {name} b{batch} {who}: {result['error']}", flush=True)
                for line in ours.get("fallbacks", []):
                    print(f"#   {name} b{batch} numpy fallback: {line}", flush=True)
                for line in ours.get("profile", []):
                    print(f"#   {name} b{batch} {line}", flush=True)


if __name__ == "__main__":
    main()
