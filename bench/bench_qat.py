#!/usr/bin/env python3
"""4-bit SAT quantization-aware training of upstream's SAT LeNet on MNIST, on the C backend.

Upstream's flow (python/examples/sat_lenet/, reference section 5b): LeNet-5 with BatchNorm,
Conv(1,6,5x5) BN MaxPool Conv(6,16,5x5) BN MaxPool Conv(16,120,5x5) Dropout BN Fc(120,84)
Dropout Fc(84,10), no biases, MNIST 32x32 (Rescale), 10 % of Learn as Validation, batch 256.
  phase 1 (clamp): SATCell(apply_quantization=False) on every Conv / Fc (Fc with apply_scaling),
          BatchNorm + Rectifier; weights exported;
  phase 2 (quantize): the same graph with SATCell(apply_quantization=True, range=15) (the first
          Conv and the last Fc range=255: 8 bits), BatchNorm + Linear(quantizer=SATAct(alpha=6,
          range=15)) (4-bit activations); phase 1's weights imported; trained again.
Test accuracy of the quantized (fake-quantized, QAT) network after phase 2, per seed, and the mean.

Differences from upstream, for time: `--clamp-epochs` / `--quant-epochs` (upstream 100 + 100) and
SGD with momentum and a learning rate decaying per epoch to 4 % (upstream: lr 0.05, no momentum,
no decay over 100 epochs); `--upstream-solver` uses upstream's plain SGD(0.05). fit keeps the
best-validation weights of each phase, as upstream's scripts (they validate every epoch).

After training, `--fuse` quantizes the QAT network to 8-bit integers from its learned ranges
(n2d2.quantizer.fuse_qat; fc1 and fc2, which QAT leaves float, are measured on 256 Validation
stimuli) and reports the integer simulation's accuracy;
`--export DIR` also writes the integer C program (export_c(nb_bits=8, qat_sat=True)), builds and
runs it on the 10,000 Test images and compares its outputs with the simulation bit for bit.

    python bench/bench_qat.py [--seeds 1 2] [--clamp-epochs 12] [--quant-epochs 60] [--backend c]
                              [--fuse [--scaling FIXED_MULT32] [--export DIR]]
"""
import argparse
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
from repo_info import git_commit

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

import n2d2  # noqa: E402
from n2d2 import training  # noqa: E402
from n2d2.activation import Linear, Rectifier  # noqa: E402
from n2d2.cells import BatchNorm2d, Conv, Dropout, Fc, Pool2d, Sequence, Softmax  # noqa: E402
from n2d2.export import export_c  # noqa: E402
from n2d2.quantization.ptq import read_stimuli  # noqa: E402
from n2d2.quantizer import SATAct, SATCell, fuse_qat  # noqa: E402
from n2d2.solver import SGD  # noqa: E402


def sat_lenet(quantize: bool):
    """Upstream's SAT LeNet; `quantize`: phase 2 (4-bit weights and activations, first and last
    layers' weights 8-bit), else phase 1 (clamp)."""
    def wq(r, scaling=False):
        if quantize:
            return SATCell(apply_scaling=scaling, apply_quantization=True, range=r)
        return SATCell(apply_scaling=scaling, apply_quantization=False)

    def act():
        return Linear(quantizer=SATAct(alpha=6.0, range=15)) if quantize else Rectifier()

    return Sequence([
        Conv(1, 6, [5, 5], no_bias=True, activation=Linear(), quantizer=wq(255), name="conv1"),
        BatchNorm2d(6, activation=act(), name="bn1"),
        Pool2d([2, 2], stride_dims=[2, 2], pooling="Max", name="pool1"),
        Conv(6, 16, [5, 5], no_bias=True, activation=Linear(), quantizer=wq(15), name="conv2"),
        BatchNorm2d(16, activation=act(), name="bn2"),
        Pool2d([2, 2], stride_dims=[2, 2], pooling="Max", name="pool2"),
        Conv(16, 120, [5, 5], no_bias=True, activation=Linear(), quantizer=wq(15), name="conv3"),
        Dropout(dropout=0.5, name="drop1"),
        BatchNorm2d(120, activation=act(), name="bn3"),
        Fc(120, 84, no_bias=True, activation=Linear(), quantizer=wq(15, True), name="fc1"),
        Dropout(dropout=0.5, name="drop2"),
        Fc(84, 10, no_bias=True, activation=Linear(), quantizer=wq(255, True), name="fc2"),
        Softmax(with_loss=True, name="softmax"),
    ], name="sat_lenet")


def _solver(args, epochs, epoch_size):
    if args.upstream_solver:
        return SGD(learning_rate=0.05)
    decay = 0.04 ** (1.0 / max(1, epochs - 1))
    return SGD(learning_rate=args.lr, momentum=0.9, learning_rate_policy="StepDecay",
               learning_rate_step_size=epoch_size, learning_rate_decay=decay)


def _phase(args, provider, quantize, epochs, weights_in, weights_out, workdir):
    model = sat_lenet(quantize)
    if weights_in:
        model.import_free_parameters(weights_in, ignore_not_exists=True)
    model.set_solver(_solver(args, epochs, provider.get_database().get_nb_stimuli("Learn")))
    target = training.EpochReport(provider, epochs, name="Target", out=print)
    dn = model.to_deepnet_cell(provider, target)
    dn.set_backend(args.backend)
    cwd = os.getcwd()
    os.chdir(workdir)
    try:
        target.start()
        start = time.perf_counter()
        dn.fit(epochs, checkpoint=None)
        seconds = time.perf_counter() - start
        dn.run_test()
    finally:
        os.chdir(cwd)
    accuracy, nb = training.partition_accuracy(target, "Test")
    if weights_out:
        model.export_free_parameters(weights_out, verbose=False)
    if args.backend == "c":
        program = dn._program("training", provider.get_batch_size())
        reasons = program._c.fallback_reasons
        print(f"  C backend: {sum(w == 'c' for w in program._c.where.values())} nodes compiled, "
              f"fallbacks: {reasons or 'none'}")
    return 100.0 * accuracy, nb, seconds, dn


def _integer_export(args, dn, provider, seed):
    """fuse_qat (the learned ranges; the layers QAT left float measured on 256 Validation stimuli):
    the integer simulation's Test accuracy, and with
    --export the exported C program (built, run on every Test stimulus, compared bit for bit)."""
    x, y = read_stimuli(provider, "Test", -1)
    net = fuse_qat(dn, provider, args.scaling)
    out = {"simulation": 100.0 * net.accuracy(x, y)}
    print(f"seed {seed}: fuse_qat ({args.scaling}, 8-bit integers, learned ranges; fc1 / fc2 measured on "
          f"{net.options['unlearned_ranges']}): integer simulation {out['simulation']:.2f} % on {len(x)} Test images")
    if args.export:
        folder = export_c(dn, nb_bits=8, qat_sat=True, act_scaling_mode=args.scaling, overwrite=True,
                          export_folder_name=os.path.join(args.export, f"seed{seed}"), export_nb_stimuli_max=-1)
        subprocess.run(["make", "-s"], cwd=folder, check=True, capture_output=True)
        run = subprocess.run([os.path.join(folder, "bin", "network_test"), "-q", "-d", str(len(x)), "outputs.bin"],
                             cwd=folder, check=True, capture_output=True, text=True)
        got = np.fromfile(os.path.join(folder, "outputs.bin"), dtype="<i4").reshape(len(x), -1)
        ref = net.run(net.quantize_input(x)).reshape(len(x), -1)
        rate = re.search(r"Success rate = ([0-9.]+)%", run.stdout).group(1)
        exact = bool(np.array_equal(got, ref))
        out["program"] = f"{rate} %, {'bit-exact' if exact else 'DIFFERS'}"
        print(f"seed {seed}: exported int8 C program ({folder}): success rate {rate} %, outputs "
              f"{'equal the simulation bit for bit' if exact else 'DIFFER from the simulation'}")
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--clamp-epochs", type=int, default=12)
    ap.add_argument("--quant-epochs", type=int, default=60)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--upstream-solver", action="store_true", help="plain SGD(0.05) as upstream")
    ap.add_argument("--backend", default="c", choices=("c", "numpy", "cuda"))
    ap.add_argument("--data", default=os.environ.get("N2D2_MNIST", "/work/shared/data/mnist"))
    ap.add_argument("--limit", type=int, default=0, help="learn / test images (0: all; smoke runs)")
    ap.add_argument("--fuse", action="store_true", help="fuse_qat after training: the int8 simulation's accuracy")
    ap.add_argument("--scaling", default="FIXED_MULT32", help="act_scaling_mode of the fused network")
    ap.add_argument("--export", default=None, help="with --fuse: export the int8 C program under this folder, "
                    "build, run and compare it with the simulation")
    args = ap.parse_args(argv)
    print(f"bench_qat: commit {git_commit()}, {platform.node()} {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}, {time.strftime('%Y-%m-%d %H:%M:%S %Z')}")
    solver = "SGD(0.05)" if args.upstream_solver else f"SGD({args.lr}, momentum 0.9, decay per epoch to 4 %)"
    print(f"  clamp {args.clamp_epochs} + quantize {args.quant_epochs} epochs, batch {args.batch}, backend "
          f"{args.backend}, solver {solver}")
    results = []
    for seed in args.seeds:
        n2d2.global_variables.seed = seed
        db = n2d2.database.MNIST(data_path=args.data, validation=0.1)
        if args.limit:
            training.apply_limits(db, args.limit, args.limit, 0.1)
        provider = n2d2.provider.DataProvider(db, [32, 32, 1], batch_size=args.batch)
        provider.add_transformation(n2d2.transform.Rescale(width=32, height=32))
        with tempfile.TemporaryDirectory(prefix="bench_qat_") as work:
            clamped = os.path.join(work, "weights_clamped")
            acc1, _, t1, _ = _phase(args, provider, False, args.clamp_epochs, None, clamped, work)
            print(f"seed {seed}: clamp phase test accuracy {acc1:.2f} % ({t1:.0f} s)")
            acc2, nb, t2, dn = _phase(args, provider, True, args.quant_epochs, clamped, None, work)
            print(f"seed {seed}: 4-bit SAT (W4A4, first/last weights 8-bit) test accuracy {acc2:.2f} % on {nb} "
                  f"images ({t2:.0f} s)")
            integer = _integer_export(args, dn, provider, seed) if args.fuse else {}
        results.append((seed, acc1, acc2, t1 + t2, integer))
    print("\nseed | clamp phase | 4-bit SAT (QAT model) | fused int8 simulation | exported program | training time")
    for seed, a1, a2, t, integer in results:
        print(f"{seed} | {a1:.2f} % | {a2:.2f} % | {integer.get('simulation', float('nan')):.2f} % | "
              f"{integer.get('program', 'not run')} | {t:.0f} s")
    mean = statistics.mean(r[2] for r in results)
    print(f"mean 4-bit SAT test accuracy over {len(results)} seeds: {mean:.2f} % (target >= 99.2 %)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
