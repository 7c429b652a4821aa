#!/usr/bin/env python3
"""Training throughput of LeNet (32x32x1, batch 128, SGD momentum): n2d2 vs PyTorch CPU eager.

Contenders, in one process, timed in turns (repeat r runs k steps of each, so all see the same
machine load):
  n2d2 eager          the cells called one by one (Sequence -> Softmax -> Score target,
                      back_propagate, update): the eager loop, which n2d2.eager_compile runs
                      as the compiled training program from its third step; "compile off"
                      the same loop with global_variables.eager_compile = False (the eager tape);
  n2d2 DeepNetCell    the same Sequence traced to the IR and run as a compiled training program
                      (forward, backward, update phases) on the numpy executor, and on the C
                      backend when it is available (`--backends`);
  torch eager         the same architecture in torch.nn.functional, SGD(momentum, weight_decay).
With `--separate R`, every contender instead runs alone in its own process, one process after
another, R rounds: in one process the frameworks' thread pools disturb each other (OpenBLAS
threads still spinning after the numpy contender, torch's libgomp, which n2d2's generated
libraries share once torch is imported), which a user's training loop does not see.
With `--fit E`, the whole `DeepNetCell.fit` loop instead: "n2d2 fit (c)" times one `fit(E)` (per
epoch: a shuffled Learn pass through the prefetching provider, Score target, non-finite check,
validation pass, best weights kept and written; checkpoint off) after a warm-up `fit(1)`
(compile); "torch fit loop" E such epochs in PyTorch over the same tensors (the provider's
Learn and Validation partitions, preloaded): a shuffled pass of batches `x[idx]`,
cross-entropy, SGD step, accuracy count, then the validation pass under no_grad, after a
warm-up epoch. Each alone in its own process
(`--separate` rounds, at least 1); img/s = E * (Learn + Validation images) / time of the E epochs.
Then, in a subprocess, torch eager again with fixed glibc malloc thresholds
(MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_TRIM_THRESHOLD_=1073741824), as the CPU anchors do
(/work/shared/bench/CPU-ANCHORS.md: torch's LeNet step is bimodal without them).

Architecture (both sides): conv 1->6 5x5, ReLU, max-pool 2x2, conv 6->16 5x5 (dense, i.e.
`LeNetINI(mapping=False)`), ReLU, max-pool, conv 16->120 5x5, ReLU, fc 120->84, ReLU,
dropout 0.5, fc 84->10, softmax cross-entropy; no biases; SGD lr 0.05, momentum 0.9, weight
decay 5e-4. Data: 8 MNIST batches (rescaled to 32x32) cycled; n2d2 reads them through its
DataProvider (cached partition: one fancy index + conversion per batch), torch gets tensors.

Figures: images/s = batch / median step time over the repeats (min..max in brackets);
ratio = n2d2 img/s / torch img/s (higher is better). `--clock process` times the CPU of this
process (steadier on a busy machine; use it with `--threads 1`); `--clock wall` needs a quiet
machine. Not a test.

    python bench/bench_training.py [--threads 1] [--clock process] [--repeats 15] [--steps 8]
                                   [--backends numpy,c] [--separate 2] [--profile] [--json out.json]
    python bench/bench_training.py --fit 3 [--separate 2] [--threads 1] [--clock process]
"""
import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

from lenet_mnist_setup import DECAY, LR, MOMENTUM, NB_BATCHES, mnist_provider, n2d2_network
from repo_info import git_commit

MALLOC_TUNED = {"MALLOC_MMAP_THRESHOLD_": "33554432", "MALLOC_TRIM_THRESHOLD_": "1073741824"}
HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)


def _parse(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=1, help="BLAS / torch threads (default 1)")
    ap.add_argument("--clock", choices=("wall", "process"), default="process")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=15, help="timed repeats per contender")
    ap.add_argument("--steps", type=int, default=8, help="training steps per repeat")
    ap.add_argument("--backends", default="numpy,c", help="DeepNetCell backends to time (those available)")
    ap.add_argument("--no-malloc-child", action="store_true", help="skip the torch+malloc subprocess")
    ap.add_argument("--profile", action="store_true", help="also cProfile the n2d2 contenders (untimed run)")
    ap.add_argument("--json", default=None, help="write the raw figures there")
    ap.add_argument("--separate", type=int, default=0, metavar="ROUNDS",
                    help="run every contender alone in its own process (no other framework's threads "
                         "in it), ROUNDS rounds of one process per contender")
    ap.add_argument("--fit", type=int, default=0, metavar="EPOCHS",
                    help="time whole DeepNetCell.fit epochs (C backend) against a PyTorch epoch loop instead")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    return ap.parse_args(argv)


ARGS = _parse()
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = str(ARGS.threads)
sys.path.insert(0, REPO)

import numpy as np  # noqa: E402

CLOCK = time.process_time if ARGS.clock == "process" else time.perf_counter


# -- data ------------------------------------------------------------------------------------------
def torch_batches(provider):
    import torch

    out = []
    for i in range(NB_BATCHES):
        x = provider.read_batch(i * provider.get_batch_size())
        y = provider.get_labels().to_numpy().reshape(-1).astype(np.int64)
        out.append((torch.from_numpy(x.to_numpy().copy()), torch.from_numpy(y)))
    return out


# -- contenders --------------------------------------------------------------------------------------
def n2d2_step_fn(provider, net, target):
    state = {"i": 0}
    batch = provider.get_batch_size()

    def step():
        x = provider.read_batch((state["i"] % NB_BATCHES) * batch)
        state["i"] += 1
        loss = target(net(x))
        loss.back_propagate()
        loss.update()
    return step


def _compile_off(step):
    """`step` run with the eager loop compiler off (its own provider: plans are per provider)."""
    import n2d2

    def run():
        previous = n2d2.global_variables.eager_compile
        n2d2.global_variables.eager_compile = False
        try:
            step()
        finally:
            n2d2.global_variables.eager_compile = previous
    return run


def _twin(provider):
    """Another provider over the same database and partition. Each contender reads its own:
    `n2d2.eager_compile` keeps a loop's compiled plan per provider, and a batch read for another
    contender in between would send the eager loop's next step back to the eager path."""
    import n2d2

    twin = n2d2.provider.DataProvider(provider.get_database(), [32, 32, 1], batch_size=provider.get_batch_size())
    twin.add_transformation(n2d2.transform.Rescale(width=32, height=32))
    twin.set_partition("Learn")
    return twin


def n2d2_contenders(provider, backends):
    import n2d2

    out = {}
    net = n2d2_network()
    net.learn()
    out["n2d2 eager (cells)"] = n2d2_step_fn(provider, net, n2d2.target.Score(provider))
    twin = _twin(provider)
    net_off = n2d2_network()
    net_off.learn()
    out["n2d2 eager (cells), compile off"] = _compile_off(n2d2_step_fn(twin, net_off, n2d2.target.Score(twin)))
    for backend in backends:
        dn = n2d2_network().to_deepnet_cell(_twin(provider))
        try:
            dn.set_backend(backend)
            dn.learn()
            step = n2d2_step_fn(dn.get_provider(), dn, dn.get_target())
            step()
        except Exception as e:  # a backend that is not there (no compiler, work in progress)
            print(f"# DeepNetCell backend {backend!r} skipped: {type(e).__name__}: {str(e).splitlines()[0][:200]}",
                  file=sys.stderr)
            continue
        out[f"n2d2 DeepNetCell ({backend})"] = step
    return out


def torch_contender(batches):
    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    torch.manual_seed(1)
    torch.set_num_threads(ARGS.threads)

    class LeNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(1, 6, 5, bias=False)
            self.conv2 = nn.Conv2d(6, 16, 5, bias=False)
            self.conv3 = nn.Conv2d(16, 120, 5, bias=False)
            self.fc1 = nn.Linear(120, 84, bias=False)
            self.drop = nn.Dropout(0.5)
            self.fc2 = nn.Linear(84, 10, bias=False)
            for m in (self.conv1, self.conv2, self.conv3, self.fc1):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")

        def forward(self, x):
            x = F.max_pool2d(F.relu(self.conv1(x)), 2, 2)
            x = F.max_pool2d(F.relu(self.conv2(x)), 2, 2)
            x = F.relu(self.conv3(x)).flatten(1)
            x = self.drop(F.relu(self.fc1(x)))
            return self.fc2(x)

    model = LeNet()
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM, weight_decay=DECAY)
    state = {"i": 0}
    nb = len(batches)

    def step():
        x, y = batches[state["i"] % nb]
        state["i"] += 1
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    step.model, step.opt = model, opt
    return step


# -- whole fit loops (--fit) ------------------------------------------------------------------------
def partition_tensors(provider, partition):
    """(x float32 (N, 1, 32, 32), y int64 (N,)) of a whole partition, as the provider delivers it."""
    provider.set_partition(partition)
    xs, ys = [], []
    for x in provider.prefetch_batches(shuffle=False):
        y = provider.get_labels().to_numpy().reshape(-1)
        xs.append(x.to_numpy()[y >= 0].copy())
        ys.append(y[y >= 0].astype(np.int64))
    return np.concatenate(xs), np.concatenate(ys)


def n2d2_fit_epoch(provider):
    import tempfile

    import n2d2

    os.environ["TQDM_DISABLE"] = "1"
    os.chdir(tempfile.mkdtemp(prefix="bench_fit_"))   # fit writes weights_init/, weights_validation/
    dn = n2d2_network().to_deepnet_cell(provider, n2d2.target.Score(provider))
    dn.set_backend("c")

    def epochs(n):
        with open(os.devnull, "w") as sink:
            stdout, sys.stdout = sys.stdout, sink
            try:
                dn.fit(n, checkpoint=None)
            finally:
                sys.stdout = stdout
    return epochs


def torch_fit_epoch(provider):
    import torch
    import torch.nn.functional as F

    learn, valid = (tuple(torch.from_numpy(a) for a in partition_tensors(provider, p)) for p in ("Learn", "Validation"))
    step = torch_contender([learn])     # the model and optimizer of the step contender
    model, opt = step.model, step.opt
    b = ARGS.batch

    def epoch():
        model.train()
        order = torch.randperm(len(learn[0]))
        hits = 0
        for i in range(0, len(order), b):
            idx = order[i:i + b]
            x, y = learn[0][idx], learn[1][idx]
            out = model(x)
            loss = F.cross_entropy(out, y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            hits += int((out.argmax(1) == y).sum())
        model.eval()
        with torch.no_grad():
            for i in range(0, len(valid[0]), b):
                hits += int((model(valid[0][i:i + b]).argmax(1) == valid[1][i:i + b]).sum())
    return lambda n: [epoch() for _ in range(n)]


FIT_CONTENDERS = {"n2d2 fit (c)": n2d2_fit_epoch, "torch fit loop": torch_fit_epoch}


def measure_fit(name, provider):
    """Seconds per epoch of contender `name`: ARGS.fit epochs in one call, after a warm-up epoch."""
    epochs = FIT_CONTENDERS[name](provider)
    epochs(1)
    load0 = os.getloadavg()[0]
    t = CLOCK()
    epochs(ARGS.fit)
    times = [(CLOCK() - t) / ARGS.fit]
    db = provider.get_database()
    images = db.get_nb_stimuli("Learn") + db.get_nb_stimuli("Validation")
    return {"per_epoch_s": times, "images": images, "load_avg": [load0, os.getloadavg()[0]]}


def main_fit():
    results = {}
    for _ in range(max(1, ARGS.separate)):
        for name in FIT_CONTENDERS:
            argv = [sys.executable, os.path.abspath(__file__), "--child", name, "--fit", str(ARGS.fit),
                    "--threads", str(ARGS.threads), "--clock", ARGS.clock, "--batch", str(ARGS.batch)]
            child = subprocess.run(argv, capture_output=True, text=True)
            line = next((ln for ln in child.stdout.splitlines() if ln.startswith("@@")), None)
            if line is None:
                sys.exit(f"{name} failed:\n{child.stderr}")
            r = json.loads(line[2:])
            entry = results.setdefault(name, {"per_epoch_s": [], "images": r["images"], "load": []})
            entry["per_epoch_s"] += r["per_epoch_s"]
            entry["load"] += r["load_avg"]
    info = machine()
    print(f"# {info.get('cpu', '?')}, {info['nproc']} cores; Python {info['python']}, numpy {info['numpy']}, "
          f"torch {info.get('torch', '-')}; commit {info.get('commit', '?')}; {info['date']}")
    print(f"# whole fit epochs: threads {ARGS.threads}, clock {ARGS.clock}, batch {ARGS.batch}, {ARGS.fit} epochs "
          f"in one call per process after one warm-up epoch, {max(1, ARGS.separate)} round(s), each contender "
          "alone in its process")
    ref = None
    print("| contender | img/s median [min-max] | s/epoch | vs torch fit loop | load average |")
    print("|---|---:|---:|---:|---:|")
    for name in reversed(FIT_CONTENDERS):
        e = results[name]
        med = e["images"] / statistics.median(e["per_epoch_s"])
        ref = ref or med
        lo, hi = e["images"] / max(e["per_epoch_s"]), e["images"] / min(e["per_epoch_s"])
        print(f"| {name} | {med:,.0f} [{lo:,.0f}-{hi:,.0f}] | {statistics.median(e['per_epoch_s']):.2f} | "
              f"{med / ref:.2f}x | {min(e['load']):.1f}-{max(e['load']):.1f} |")
    if ARGS.json:
        with open(ARGS.json, "w") as f:
            json.dump({"machine": info, "args": vars(ARGS), **results}, f, indent=1)


# -- timing ----------------------------------------------------------------------------------------
def measure(contenders: dict) -> dict:
    """Round-robin: each repeat times `steps` steps of every contender in turn."""
    for fn in contenders.values():      # warm-up (programs built, caches filled)
        for _ in range(3):
            fn()
    times = {name: [] for name in contenders}
    wall0, cpu0, load0 = time.perf_counter(), time.process_time(), os.getloadavg()[0]
    for _ in range(ARGS.repeats):
        for name, fn in contenders.items():
            t = CLOCK()
            for _ in range(ARGS.steps):
                fn()
            times[name].append((CLOCK() - t) / ARGS.steps)
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    return {"per_step_s": times, "cpu_share": cpu / wall / ARGS.threads, "load_avg": [load0, os.getloadavg()[0]]}


def img_per_s(per_step):
    med = statistics.median(per_step)
    return ARGS.batch / med, ARGS.batch / max(per_step), ARGS.batch / min(per_step)


def profile(contenders: dict, steps=20):
    import cProfile
    import pstats

    for name, fn in contenders.items():
        if not name.startswith("n2d2"):
            continue
        pr = cProfile.Profile(CLOCK)
        pr.enable()
        for _ in range(steps):
            fn()
        pr.disable()
        stats = pstats.Stats(pr)
        total = stats.total_tt
        print(f"\n## profile: {name}, {steps} steps, {1000 * total / steps:.1f} ms/step under cProfile "
              f"({ARGS.clock} clock)")
        rows = sorted(stats.stats.items(), key=lambda kv: kv[1][2], reverse=True)[:14]
        for (file, line, func), (cc, nc, tt, ct, _) in rows:
            short = os.path.relpath(file, REPO) if file.startswith(REPO) else os.path.basename(file)
            print(f"  {1000 * tt / steps:7.2f} ms/step {100 * tt / total:5.1f}%  {nc / steps:5.1f} calls  "
                  f"{short}:{line}({func})")


def machine() -> dict:
    import numpy

    info = {"python": platform.python_version(), "numpy": numpy.__version__, "machine": platform.machine(),
            "nproc": os.cpu_count(), "date": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
    try:
        with open("/proc/cpuinfo") as f:
            info["cpu"] = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    try:
        import torch

        info["torch"] = torch.__version__
    except ImportError:
        pass
    info["commit"] = git_commit()
    return info


def _run_child(contender, env=None):
    """{per_step_s: {contender: [...]}, cpu_share, load_avg} of `contender` timed alone in a child."""
    argv = [sys.executable, os.path.abspath(__file__), "--child", contender, "--threads", str(ARGS.threads),
            "--clock", ARGS.clock, "--batch", str(ARGS.batch), "--repeats", str(ARGS.repeats),
            "--steps", str(ARGS.steps), "--backends", ARGS.backends]
    child = subprocess.run(argv, env=env, capture_output=True, text=True)
    line = next((ln for ln in child.stdout.splitlines() if ln.startswith("@@")), None)
    if line is None:
        print(child.stderr, file=sys.stderr)
        return None
    return json.loads(line[2:])


def _contenders(provider, batches, only=None):
    backends = [b for b in ARGS.backends.split(",") if b]
    contenders = {} if only == "torch eager" else n2d2_contenders(provider, backends)
    if only in (None, "torch eager"):
        contenders["torch eager"] = torch_contender(batches)
    if only is not None:
        contenders = {k: v for k, v in contenders.items() if k == only}
    return contenders


def main():
    provider = mnist_provider(ARGS.batch)
    if ARGS.fit:
        if ARGS.child:
            print("@@" + json.dumps(measure_fit(ARGS.child, provider)))
        else:
            main_fit()
        return
    batches = torch_batches(provider)
    if ARGS.child:
        print("@@" + json.dumps(measure(_contenders(provider, batches, ARGS.child))))
        return
    malloc_name = "torch eager +malloc (subprocess)"
    if ARGS.separate:
        names = list(_contenders(provider, batches))
        result = {"per_step_s": {}, "cpu_share": 0.0, "load_avg": [os.getloadavg()[0], None]}
        for _ in range(ARGS.separate):
            runs = [(name, name, None) for name in names]
            if not ARGS.no_malloc_child:
                runs.append((malloc_name, "torch eager", dict(os.environ, **MALLOC_TUNED)))
            for label, name, env in runs:
                r = _run_child(name, env)
                if r is not None:
                    result["per_step_s"].setdefault(label, []).extend(r["per_step_s"][name])
                    result["cpu_share"] = max(result["cpu_share"], r["cpu_share"])
        result["load_avg"][1] = os.getloadavg()[0]
        contenders = {}
    else:
        contenders = _contenders(provider, batches)
        result = measure(contenders)
    if not ARGS.no_malloc_child and not ARGS.separate:
        r = _run_child("torch eager", dict(os.environ, **MALLOC_TUNED))
        if r is not None:
            result["per_step_s"][malloc_name] = r["per_step_s"]["torch eager"]
            result["child_cpu_share"] = r["cpu_share"]

    info = machine()
    torch_ref = img_per_s(result["per_step_s"]["torch eager"])[0]
    torch_malloc = result["per_step_s"].get("torch eager +malloc (subprocess)")
    torch_malloc_ref = img_per_s(torch_malloc)[0] if torch_malloc else None
    print(f"# {info.get('cpu', '?')}, {info['nproc']} cores; Python {info['python']}, numpy {info['numpy']}, "
          f"torch {info.get('torch', '-')}; commit {info.get('commit', '?')}; {info['date']}")
    print(f"# threads {ARGS.threads}, clock {ARGS.clock}, batch {ARGS.batch}, {ARGS.repeats} repeats x "
          f"{ARGS.steps} steps" + (f", each contender alone in its own process ({ARGS.separate} rounds)"
                                   if ARGS.separate else ", contenders interleaved in one process")
          + f"; load average {result['load_avg'][0]:.1f} -> {result['load_avg'][1]:.1f}; "
          f"CPU share of this process {100 * result['cpu_share']:.0f} %")
    print("| contender | img/s median [min-max] | ms/step | vs torch | vs torch+malloc |")
    print("|---|---:|---:|---:|---:|")
    for name, per_step in result["per_step_s"].items():
        med, lo, hi = img_per_s(per_step)
        vs_malloc = f"{med / torch_malloc_ref:.2f}x" if torch_malloc_ref else "-"
        print(f"| {name} | {med:,.0f} [{lo:,.0f}-{hi:,.0f}] | {1000 * statistics.median(per_step):.2f} | "
              f"{med / torch_ref:.2f}x | {vs_malloc} |")
    if ARGS.json:
        with open(ARGS.json, "w") as f:
            json.dump({"machine": info, "args": vars(ARGS), **result}, f, indent=1)
    if ARGS.profile:
        profile({k: v for k, v in contenders.items()})


if __name__ == "__main__":
    main()
