#!/usr/bin/env python3
"""CUDA backend vs PyTorch eager on the same GPU: LeNet training at batch 128, ResNet-20 at 1024.

One self-contained script for a lent GPU: it installs nothing and uses the repository as it is.

1. Checks: a few training steps of LeNet and ResNet-20 (small batches) through the CUDA program
   against the numpy executor, step for step (outputs, parameter gradients, parameters after the
   SGD update; relative errors printed, the run stops above 1e-4).
2. Timing: n2d2 `CudaProgram` training steps (forward, softmax cross-entropy seed on the device,
   backward, fused SGD update; every phase replayed as a CUDA graph) vs PyTorch eager (same
   architectures as /work/shared/bench/anchor_gpu.py, SGD momentum 0.9, weight decay 5e-4,
   cuDNN benchmark mode), timed with CUDA events after warm-up; medians of per-step times.
   Goals: >= 5x PyTorch for LeNet b128, >= 1.0x for ResNet-20 b1024.

    python bench/bench_cuda.py [--steps 30] [--warmup 5] [--only lenet,resnet20] [--profile] [--json out.json]
    python bench/bench_cuda.py --dry-run      # no GPU needed: graphs, sources, nvcc compile

`--dry-run` does the CPU-side work only: builds the training graphs at the benchmark batch sizes,
renders the CUDA sources, compiles them with nvcc (device code, as NVRTC sees it) and prints the
kernel counts and arena sizes. With $OUT set, the figures are also written to $OUT/bench_cuda.json.
"""
import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

from repo_info import git_commit

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, REPO)

import numpy as np  # noqa: E402

LR, MOMENTUM, DECAY = 0.05, 0.9, 5e-4
SIZES = {"lenet": ((1, 32, 32), 128), "resnet20": ((3, 32, 32), 1024)}


def parse(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dry-run", action="store_true", help="no GPU: build, render and nvcc-compile only")
    ap.add_argument("--steps", type=int, default=30, help="timed steps per contender")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--only", default="lenet,resnet20")
    ap.add_argument("--no-check", action="store_true", help="skip the checks against numpy")
    ap.add_argument("--profile", action="store_true", help="also time every node alone (slowest first)")
    ap.add_argument("--json", default=None)
    return ap.parse_args(argv)


# -- graphs ------------------------------------------------------------------------------------------
def network(name):
    """The n2d2 network (cells) of a benchmark, with SGD solvers, ending in Softmax(with_loss)."""
    import n2d2
    from n2d2.cells import Sequence, Softmax
    from n2d2.solver import SGD

    n2d2.global_variables.seed = 3
    if name == "lenet":
        from n2d2.models import LeNetINI

        model = LeNetINI(mapping=False, name="LeNet")
    else:
        from n2d2.models import ResNet20

        model = ResNet20(name="ResNet20")
    model.set_solver(SGD(learning_rate=LR, momentum=MOMENTUM, decay=DECAY))
    return Sequence([model, Softmax(with_loss=True)])


def training_graph(name, batch):
    """The training graph of a benchmark network (traced at batch 1, then rebatched) as
    DeepNetCell.fit builds it: live training passes, then autodiff."""
    import n2d2
    from n2d2.cells.deepnet_cell import rebatch
    from n2d2.cells.deepnet_cell import training_graph as fit_training_graph
    from n2d2.ir.trace import trace

    shape, _ = SIZES[name]
    net = network(name)
    net.test()
    y = net(n2d2.Tensor([1] + list(shape)))
    graph = trace(y.get_deepnet(), name=name, input_names=["input"]).graph
    return fit_training_graph(rebatch(graph, batch) if batch != 1 else graph)


def phases(tg):
    return [tg.forward_nodes, list(tg.grad_inputs.values()) + tg.backward_nodes, tg.update_nodes]


def program(tg, device, graphs=True):
    from n2d2.codegen.cuda_backend import CudaProgram

    return CudaProgram(tg.graph, phases(tg), training=True, device=device, graphs=graphs)


class RenderOnly:
    """A stand-in device for the dry run: renders, loads nothing, allocates a tiny host arena."""

    name = "render-only"
    xp = np

    def is_array(self, a):
        return isinstance(a, np.ndarray) and a.dtype == np.float32 and a.flags.c_contiguous

    def load(self, source, names):
        return {}

    def zeros(self, nbytes):
        return np.zeros(1, dtype=np.uint8)

    def view(self, arena, offset, shape, dtype):
        return None

    def table(self, pointers):
        return None


def dry_run(args):
    from n2d2.codegen.cuda_backend import compile_check, find_nvcc

    report = {}
    for name in args.only.split(","):
        shape, batch = SIZES[name]
        t0 = time.perf_counter()
        tg = training_graph(name, batch)
        prog = program(tg, RenderOnly())
        t1 = time.perf_counter()
        fallback = [n for n, w in prog.where.items() if w != "cuda"]
        entry = {"batch": batch, "nodes": len(prog.where), "kernels": len(prog.kernels),
                 "source_chars": len(prog.source), "arena_MB": round(prog.arena_bytes / 2 ** 20, 1),
                 "numpy_fallback_nodes": fallback, "build_render_s": round(t1 - t0, 2)}
        if find_nvcc() is not None:
            t2 = time.perf_counter()
            path = compile_check(prog.source, mode="cubin" if name == "lenet" else "ptx")
            entry["nvcc_s"] = round(time.perf_counter() - t2, 2)
            entry["source"] = path
        else:
            entry["nvcc"] = "not found: sources rendered, not compiled"
        report[name] = entry
        print(f"{name} b{batch}: {entry}", flush=True)
        if fallback:
            raise SystemExit(f"{name}: nodes without CUDA kernels: {fallback}")
    return report


# -- checks ------------------------------------------------------------------------------------------
def rel(a, b):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    nb = np.linalg.norm(b)
    return float(np.linalg.norm(a - b) / nb) if nb > 0 else float(np.linalg.norm(a))


def check(name, batch, steps=2):
    """Max relative error of `steps` CUDA training steps vs the numpy executor (twin parameters)."""
    import cupy as cp

    import n2d2
    from n2d2.codegen.cuda_backend import CupyDevice
    from n2d2.codegen.numpy_exec import Session
    from n2d2.ir.graph import Param

    tg = training_graph(name, batch)
    ref = training_graph(name, batch)
    for pname, p in tg.graph.params.items():      # the same initial values on both sides
        ref.graph.params[pname] = Param(p.array.copy(), p.trainable, p.owner, p.role,
                                        p.solver.copy() if p.solver else None)
        p.array = cp.asarray(p.array)
    prog = program(tg, CupyDevice())
    rng = np.random.default_rng(0)
    shape, _ = SIZES[name]
    worst = 0.0
    for step in range(steps):
        x = rng.standard_normal((batch,) + shape).astype(np.float32)
        seed = {k: rng.standard_normal(tg.graph.output_types(k[0])[k[1]].shape).astype(np.float32)
                for k in tg.grad_inputs}
        n2d2.global_variables.seed = 10 + step
        s = Session(ref.graph, training=True, order=ref.forward_nodes)
        s.feed({ref.graph.inputs[0]: x})
        s.run_nodes(ref.forward_nodes)
        s.feed({ref.grad_inputs[k]: v for k, v in seed.items()})
        s.run_nodes(ref.backward_nodes)
        s.batch_size = batch
        n2d2.global_variables.seed = 10 + step
        prog.feed({tg.graph.inputs[0]: cp.asarray(x)})
        prog.run_phase(0, batch)
        errors = {f"output {t}": rel(prog.view(t).get(), s.values[t[0]][t[1]]) for t in tg.graph.outputs}
        prog.feed({tg.grad_inputs[k]: cp.asarray(v) for k, v in seed.items()})
        prog.run_phase(1, batch)
        for pname, (gnode, k) in tg.param_grads.items():
            errors[f"grad {pname}"] = rel(prog.view((gnode, k)).get(), s.values[gnode][k])
        prog.run_phase(2, batch)
        s.run_nodes(ref.update_nodes)
        for pname, p in tg.graph.params.items():
            errors[f"param {pname}"] = rel(p.array.get(), ref.graph.params[pname].array)
        key, err = max(errors.items(), key=lambda kv: kv[1])
        print(f"  check {name} b{batch} step {step}: max rel error {err:.2e} ({key})", flush=True)
        worst = max(worst, err)
    if not worst < 1e-4:
        raise SystemExit(f"{name}: CUDA results differ from numpy (max rel error {worst:.2e})")
    return worst


# -- timing ------------------------------------------------------------------------------------------
def time_steps(step, steps, warmup):
    import cupy as cp

    for _ in range(warmup):
        step()
    cp.cuda.Device().synchronize()
    times = []
    for _ in range(steps):
        a, b = cp.cuda.Event(), cp.cuda.Event()
        a.record()
        step()
        b.record()
        b.synchronize()
        times.append(cp.cuda.get_elapsed_time(a, b))
    return statistics.median(times), min(times), max(times)


def n2d2_step(name, batch):
    import cupy as cp

    from n2d2.codegen.cuda_backend import CupyDevice

    tg = training_graph(name, batch)
    for p in tg.graph.params.values():
        p.array = cp.asarray(p.array)
    prog = program(tg, CupyDevice(), graphs=True)
    shape, _ = SIZES[name]
    rng = np.random.default_rng(0)
    x = cp.asarray(rng.standard_normal((batch,) + shape).astype(np.float32))
    labels = cp.asarray(rng.integers(0, 10, batch))
    onehot = cp.zeros((batch, 10, 1, 1), dtype=cp.float32)
    onehot[cp.arange(batch), labels] = 1.0
    out = tg.graph.outputs[0]
    seed_input = tg.grad_inputs[out]
    seed = cp.empty((batch, 10, 1, 1), dtype=cp.float32)

    def step():
        prog.feed({tg.graph.inputs[0]: x})
        prog.run_phase(0, batch)
        cp.subtract(prog.view(out), onehot, out=seed)     # softmax - onehot: the cross-entropy seed
        prog.feed({seed_input: seed})
        prog.run_phase(1, batch)
        prog.run_phase(2, batch)
    return step, prog


def torch_step(name, batch):
    import torch
    import torch.nn.functional as F

    torch.backends.cudnn.benchmark = True
    torch.manual_seed(0)
    import torch_peers

    model = torch_peers.lenet() if name == "lenet" else torch_peers.resnet20()
    model = model.cuda().train()
    shape, _ = SIZES[name]
    x = torch.randn(batch, *shape, device="cuda")
    y = torch.randint(0, 10, (batch,), device="cuda")
    opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM, weight_decay=DECAY)

    def step():
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()
    return step


def profile(prog, batch, top=12):
    """Per-node device time of each phase (every kernel launched alone), slowest first."""
    out = {}
    for index, phase in enumerate(("forward", "backward", "update")):
        times = prog.profile_phase(index, batch)
        total = sum(ms for ms, _ in times.values())
        rows = sorted(times.items(), key=lambda kv: -kv[1][0])
        out[phase] = {node: round(ms, 4) for node, (ms, _) in rows}
        print(f"  {phase}: {total:.3f} ms in {sum(c for _, c in times.values())} launches; slowest:", flush=True)
        for node, (ms, count) in rows[:top]:
            print(f"    {ms:8.4f} ms {100 * ms / max(total, 1e-9):5.1f}%  {count:2d}x  {node} "
                  f"({prog.graph.op(node)})", flush=True)
    return out


def machine():
    info = {"python": platform.python_version(), "date": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
    try:
        info["gpu"] = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version",
                                      "--format=csv,noheader"], capture_output=True, text=True).stdout.strip()
    except OSError:
        pass
    for mod in ("numpy", "cupy", "torch"):
        try:
            info[mod] = __import__(mod).__version__
        except Exception as e:  # noqa: BLE001 (report what is missing, keep going)
            info[mod] = f"missing ({type(e).__name__})"
    info["commit"] = git_commit()
    return info


def main(argv=None):
    args = parse(argv)
    result = {"machine": machine()}
    if args.dry_run:
        result["dry_run"] = dry_run(args)
    else:
        import n2d2

        if not n2d2.global_variables.cuda_available:
            raise SystemExit("no CUDA device visible to CuPy: run with --dry-run on a machine without GPU")
        print(json.dumps(result["machine"]), flush=True)
        if not args.no_check:
            result["check"] = {"lenet": check("lenet", 16), "resnet20": check("resnet20", 8)}
        for name in args.only.split(","):
            _, batch = SIZES[name]
            t0 = time.perf_counter()
            step, prog = n2d2_step(name, batch)
            build = time.perf_counter() - t0
            ours = time_steps(step, args.steps, args.warmup)
            theirs = time_steps(torch_step(name, batch), args.steps, args.warmup)
            ratio = theirs[0] / ours[0]
            goal = 5.0 if name == "lenet" else 1.0
            result[name] = {"batch": batch, "n2d2_ms": ours, "torch_ms": theirs, "speedup": ratio, "goal": goal,
                            "kernels": len(prog.kernels), "build_s": build}
            if args.profile:
                result[name]["profile"] = profile(prog, batch)
            print(f"{name} b{batch}: n2d2 {ours[0]:.3f} ms/step ({batch / ours[0] * 1e3:,.0f} img/s), "
                  f"torch eager {theirs[0]:.3f} ms/step ({batch / theirs[0] * 1e3:,.0f} img/s): "
                  f"{ratio:.2f}x (goal >= {goal}x) [{len(prog.kernels)} kernels, built in {build:.1f} s]",
                  flush=True)
    text = json.dumps(result, indent=1, default=str)
    for path in (args.json, os.path.join(os.environ["OUT"], "bench_cuda.json") if os.environ.get("OUT") else None):
        if path:
            with open(path, "w") as f:
                f.write(text)
    return result


if __name__ == "__main__":
    main()
