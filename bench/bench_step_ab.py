#!/usr/bin/env python3
"""Paired before/after of Python-level changes to the LeNet training step, in one process.

A change of a few tens of microseconds in a 6 ms step is lost in the spread of separate
processes on a loaded machine. Here the functions named by `--swap` are taken from revision
`--base` (their module's source from `git show`, executed as a separate module) and swapped in
and out of the running n2d2, alternating blocks of `--steps` training steps (the order of each
pair alternates too); the figure is the median of the paired block ratios new/old, thread time
of the main thread (one thread: `N2D2_THREADS=1`). Only functions whose old code runs against
the current objects can be swapped (methods of unchanged classes, module functions).

Contenders as in bench/bench_step_trace.py: eager (the compiled eager loop), deepnetcell (its
step), fit (`_run_epoch` blocks of the Learn pass; the prefetch thread is not counted). Not a test.

    python bench/bench_step_ab.py --base d39b4ab [--pairs 40] [--steps 20] [--contenders eager,deepnetcell,fit]
        [--swap n2d2/target.py:Score._process_labels ...]
"""
import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
import types

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
# the functions branch pyloop changed (issue 15)
DEFAULT_SWAPS = ["n2d2/target.py:Score._process_labels", "n2d2/cells/deepnet_cell.py:DeepNetCell._sync_cells",
                 "n2d2/cells/deepnet_cell.py:DeepNetCell._sync_quantizers",
                 "n2d2/provider/data_provider.py:DataProvider._static_stimuli",
                 "n2d2/provider/data_provider.py:DataProvider._to_float", "n2d2/eager_compile.py:on_step_end"]


def _parse():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", required=True, help="the revision of the old functions")
    ap.add_argument("--pairs", type=int, default=40)
    ap.add_argument("--steps", type=int, default=20, help="training steps per block")
    ap.add_argument("--contenders", default="eager,deepnetcell,fit")
    ap.add_argument("--swap", nargs="+", default=DEFAULT_SWAPS, metavar="FILE:NAME")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    return ap.parse_args()


def _old_module(path, rev, cache={}):
    """The module `path` of revision `rev`, executed apart from the imported one."""
    if (path, rev) not in cache:
        src = subprocess.run(["git", "-C", REPO, "show", f"{rev}:{path}"], capture_output=True, text=True,
                             check=True).stdout
        module = types.ModuleType(f"_old_{len(cache)}")
        module.__file__ = path
        exec(compile(src, path, "exec"), module.__dict__)
        cache[(path, rev)] = module
    return cache[(path, rev)]


def _swaps(specs, rev):
    """[(owner, attribute, old value, new value)] of every `FILE:[Class.]name`."""
    import importlib

    out = []
    for spec in specs:
        path, name = spec.split(":")
        current = importlib.import_module(path[:-3].replace("/", "."))
        old = _old_module(path, rev)
        if "." in name:
            cls, attr = name.split(".")
            owner, old_owner = getattr(current, cls), getattr(old, cls)
        else:
            owner, old_owner, attr = current, old, name
            for shared in ("_providers", "stats"):   # module state the old function must share
                if hasattr(current, shared):
                    setattr(old, shared, getattr(current, shared))
        out.append((owner, attr, old_owner.__dict__[attr], owner.__dict__[attr]))
    return out


def child(args):
    os.environ["TQDM_DISABLE"] = "1"
    os.chdir(tempfile.mkdtemp(prefix="bench_ab_"))
    sys.path.insert(0, HERE)
    from lenet_mnist_setup import NB_BATCHES, mnist_provider, step_contender

    import n2d2

    swaps = _swaps(args.swap, args.base)

    def use(old):
        for owner, attr, before, after in swaps:
            setattr(owner, attr, before if old else after)

    provider = mnist_provider()
    net, target = step_contender(args.child, provider)
    if args.child == "fit":
        def block(k):
            net._run_epoch("Learn", True, nb_max=k * provider.get_batch_size(), check_finite=True)
    else:
        state = {"i": 0}

        def block(k):
            for _ in range(k):
                x = provider.read_batch((state["i"] % NB_BATCHES) * provider.get_batch_size())
                state["i"] += 1
                loss = target(net(x))
                loss.back_propagate()
                loss.update()
    for old in (True, False):   # warm-up: programs built, caches filled
        use(old)
        block(10)
    times, ratios = {True: [], False: []}, []
    for r in range(args.pairs):
        got = {}
        for old in ((True, False) if r % 2 == 0 else (False, True)):
            use(old)
            t = time.thread_time()
            block(args.steps)
            got[old] = (time.thread_time() - t) / args.steps
            times[old].append(got[old])
        ratios.append(got[False] / got[True])
    use(False)
    old_ms, new_ms = (1e3 * statistics.median(times[k]) for k in (True, False))
    print(f"| {args.child} | {old_ms:.3f} | {new_ms:.3f} | {statistics.median(ratios):.3f} "
          f"[{min(ratios):.2f}-{max(ratios):.2f}] | "
          f"{n2d2.eager_compile.stats.training_replays} |")


def main():
    args = _parse()
    if args.child:
        child(args)
        return
    print(f"# base {args.base}; {args.pairs} pairs of {args.steps}-step blocks, thread time, N2D2_THREADS=1; "
          f"load average {os.getloadavg()[0]:.1f}; swapped: {', '.join(args.swap)}")
    print("| contender | old ms/step (median) | new ms/step (median) | new/old, median of pairs [min-max] | "
          "compiled eager steps |")
    print("|---|---:|---:|---:|---:|")
    env = dict(os.environ, N2D2_THREADS="1", OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", PYTHONPATH=REPO)
    for name in [n for n in args.contenders.split(",") if n]:
        argv = [sys.executable, os.path.abspath(__file__), "--child", name, "--base", args.base, "--pairs",
                str(args.pairs), "--steps", str(args.steps), "--swap", *args.swap]
        out = subprocess.run(argv, env=env, capture_output=True, text=True)
        lines = [ln for ln in out.stdout.splitlines() if ln.startswith("| ")]
        if not lines:
            sys.exit(f"{name} failed:\n{out.stderr}")
        print(lines[-1], flush=True)


if __name__ == "__main__":
    main()
