"""LeNet at batch 1: the integer C export's int8 kernels (each path: AVX-512 VNNI, AVX-VNNI, AVX2,
portable C) and its 4-bit export against the float32 C export, side by side.

The network is bench/bench_export.py's: N2D2's LeNet.ini (`n2d2.models.LeNetINI` + Softmax) from
seed 1, 32x32 MNIST stimuli. It is exported with `n2d2.export.export_c` as float32 and, calibrated
on 100 stimuli, as 8-bit (and 4-bit) integers; every project is built with `make` (-O3, ARCHFLAGS
as listed) and its test program timed on the same exported MNIST test stimuli:
`bin/network_test -q -r PASSES` times every `network_run` call and prints the best pass's mean time
per stimulus. A round runs every contender once, interleaved, so that they share the machine's
load; the best round is reported along with the median, and the ratio to the float32 export of the
same round (the first contender's). `--clock cpu` (default) times with the thread's CPU time (`-c`): on a machine shared
with other jobs, time spent waiting for a core is left out; `--clock wall` uses CLOCK_MONOTONIC.

Run from the repository root: `python bench/bench_int8_kernels.py` (see --help).
"""
import argparse
import datetime
import os
import re
import statistics
import subprocess
import sys
import tempfile
import warnings

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import n2d2  # noqa: E402

# (label, folder key, ARCHFLAGS)
CONTENDERS = [("float32 C export (-march=native)", "f32", "-march=native"),
              ("int8 avx512vnni (-march=native)", "i8", "-march=native"),
              ("int8 avxvnni (-march=x86-64-v3 -mavxvnni)", "i8", "-march=x86-64-v3 -mavxvnni"),
              ("int8 avx2 (-march=x86-64-v3)", "i8", "-march=x86-64-v3"),
              ("float32 C export (-march=x86-64-v3)", "f32", "-march=x86-64-v3"),
              ("int8 portable C (-march=native -DN2D2_INT_PORTABLE)", "i8", "-march=native -DN2D2_INT_PORTABLE"),
              ("int4 avx512vnni (-march=native)", "i4", "-march=native")]


def build(folder: str, nb_stimuli: int, mode: str) -> dict:
    from n2d2.cells import Sequence, Softmax
    from n2d2.models import LeNetINI

    n2d2.global_variables.seed = 1
    database = n2d2.database.MNIST(data_path=n2d2.datasets.mnist_path())
    provider = n2d2.provider.DataProvider(database, [32, 32, 1], batch_size=1)
    provider.add_transformation(n2d2.transform.Rescale(width=32, height=32))
    dn = Sequence([LeNetINI(), Softmax(with_loss=True)]).to_deepnet_cell(provider)
    out = {"f32": n2d2.export.export_c(dn, export_folder_name=os.path.join(folder, "f32"),
                                       export_nb_stimuli_max=nb_stimuli)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for key, nb in (("i8", 8), ("i4", 4)):
            # export_c refuses FLOAT_MULT (as upstream); export_cpp writes the same project
            export = n2d2.export.export_cpp if mode == "FLOAT_MULT" else n2d2.export.export_c
            out[key] = export(dn, nb_bits=nb, calibration=100, act_scaling_mode=mode,
                              export_folder_name=os.path.join(folder, key), export_nb_stimuli_max=nb_stimuli)
    return out


def compile_all(projects: dict) -> list:
    """One binary per contender: bin/<index> built with its ARCHFLAGS."""
    binaries = []
    for i, (label, key, flags) in enumerate(CONTENDERS):
        binary = f"bin/bench_{i}"
        subprocess.run(["make", "-s", f"ARCHFLAGS={flags}", f"BIN={binary}"], cwd=projects[key], check=True,
                       capture_output=True, text=True)
        binaries.append((label, projects[key], binary))
    return binaries


def run(folder: str, binary: str, passes: int, cpu: bool) -> float:
    out = subprocess.run([f"./{binary}", "-q", "-r", str(passes)] + (["-c"] if cpu else []), cwd=folder,
                         capture_output=True, text=True, check=True).stdout
    return float(re.search(r"Best pass time per stimulus = ([0-9.]+) us", out).group(1))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--passes", type=int, default=5)
    parser.add_argument("--stimuli", type=int, default=1000)
    parser.add_argument("--mode", default="SINGLE_SHIFT", help="act_scaling_mode of the integer exports")
    parser.add_argument("--clock", choices=("cpu", "wall"), default="cpu")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        binaries = compile_all(build(tmp, args.stimuli, args.mode))
        times = {label: [] for label, _, _ in binaries}
        ratios = {label: [] for label, _, _ in binaries}
        for _ in range(args.rounds):
            this = {label: run(folder, binary, args.passes, args.clock == "cpu") for label, folder, binary in binaries}
            for label, t in this.items():
                times[label].append(t)
                ratios[label].append(t / this[binaries[0][0]])
    now = datetime.datetime.now(datetime.timezone.utc)
    print(f"LeNet batch 1, {args.stimuli} MNIST stimuli, {args.rounds} rounds x {args.passes} passes, "
          f"{args.clock} clock, integer mode {args.mode}; {now:%Y-%m-%d %H:%M} UTC")
    print(f"{'contender':55s} {'best us':>8s} {'median us':>10s} {'ratio (best round)':>19s} {'median ratio':>13s}")
    for label, _, _ in binaries:
        print(f"{label:55s} {min(times[label]):8.2f} {statistics.median(times[label]):10.2f} "
              f"{min(ratios[label]):19.2f} {statistics.median(ratios[label]):13.2f}")


if __name__ == "__main__":
    main()
