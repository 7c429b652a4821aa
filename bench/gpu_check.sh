#!/usr/bin/env bash
# The GPU check of issue 16: one prepared script for a lent GPU machine (no internet), run from anywhere:
#
#     OUT=/some/folder bash bench/gpu_check.sh          # on the GPU machine (about 8 minutes at most)
#     GPU_CHECK_DRY=1 bash bench/gpu_check.sh           # here, without GPU: the steps that need none
#
# Steps, in priority order (GPU time is short), each time-boxed with `timeout`, its output tee'd to
# $OUT/NN_<step>.log; a failing step is recorded and the next one runs:
#   env         python, pytest / cupy / torch imports (versions), nvidia-smi, nvcc, compute-sanitizer, the data
#   install     pip install --no-deps --no-build-isolation -e .     (dry: skipped, pip's version only)
#   device      CuPy sees a device; a DeepNetCell on the cuda backend runs as counted kernel launches / graph
#               replays, with the numpy backend's outputs (bench/gpu_check.py device; dry: on the host
#               emulator, after checking that the cuda backend is refused without a device)
#   pytest_gpu  the tests that need a GPU (test_gpu_*: CUDA programs vs numpy on the card)
#   bench_cuda  bench/bench_cuda.py --profile: step checks vs numpy, LeNet b128 / ResNet-20 b1024 training vs
#               PyTorch eager (dry: --dry-run --only lenet, nvcc compile)
#   fit         one epoch of DeepNetCell.fit (n2d2 train's LeNet) on data/mnist, CUDA vs C test accuracy
#               (dry: the emulator vs C on 64 images)
#   latency     inference b1 / b64 (LeNet, ResNet-20), CUDA graphs vs PyTorch eager (dry: emulated, tiny)
#   memcheck    compute-sanitizer --tool memcheck over one LeNet b4 training step (if installed;
#               dry: the step on the emulator, whose arena has guard bands)
#   racecheck   compute-sanitizer --tool racecheck over the same step (if installed)
#   nccl        python bench/nccl_check.py (if the file exists; dry: byte-compiled only)
#   pytest_full python -m pytest -q tests/test_cuda_backend.py tests/test_onnx_kernels.py tests/test_lrn.py
#               tests/test_activation_table.py -k cuda  (with the time left; dry: --collect-only)
#
# Environment: OUT (default ./gpu_check_out), GPU_CHECK_DRY=1, GPU_CHECK_BUDGET (seconds for the whole run,
# default 470), GPU_CHECK_ONLY (comma-separated step names), PYTHON (default python). $OUT/summary.txt has
# one line per step (ok / FAILED rc / SKIPPED why, seconds); the exit status is the number of failed steps.
set -u -o pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 99
REPO=$(pwd)
DRY=${GPU_CHECK_DRY:-0}
BUDGET=${GPU_CHECK_BUDGET:-470}
ONLY=${GPU_CHECK_ONLY:-}
PY=${PYTHON:-python}
export OUT=${OUT:-$REPO/gpu_check_out}
mkdir -p "$OUT" || exit 99
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
export N2D2_CACHE=${N2D2_CACHE:-/tmp/n2d2cache-gpucheck}
export MPLBACKEND=Agg PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
START=$SECONDS
SUMMARY=$OUT/summary.txt
: > "$SUMMARY"
FAILED=0
INDEX=0

note() { echo "$*" | tee -a "$SUMMARY"; }

# step NAME LIMIT COMMAND...: run COMMAND under `timeout` (LIMIT seconds, less when the budget runs out)
step() {
    local name=$1 limit=$2 left log t0 rc
    shift 2
    INDEX=$((INDEX + 1))
    if [ -n "$ONLY" ] && [[ ",$ONLY," != *",$name,"* ]]; then
        return 0
    fi
    left=$((BUDGET - (SECONDS - START)))
    if [ "$left" -lt 20 ]; then
        note "$(printf '%-12s SKIPPED (budget of %ss spent)' "$name" "$BUDGET")"
        return 0
    fi
    [ "$limit" -gt "$left" ] && limit=$left
    log=$OUT/$(printf '%02d' "$INDEX")_$name.log
    echo "== $name (limit ${limit}s, $((SECONDS - START))s elapsed): $*" | tee "$log"
    t0=$SECONDS
    timeout -k 10 "$limit" "$@" 2>&1 | tee -a "$log"
    rc=${PIPESTATUS[0]}
    if [ "$rc" -eq 0 ]; then
        note "$(printf '%-12s ok         %4ss' "$name" $((SECONDS - t0)))"
    else
        FAILED=$((FAILED + 1))
        [ "$rc" -eq 124 ] && rc="124 (timed out)"
        note "$(printf '%-12s FAILED rc %s %4ss  (see %s)' "$name" "$rc" $((SECONDS - t0)) "$(basename "$log")")"
    fi
}

skip() {
    INDEX=$((INDEX + 1))
    if [ -n "$ONLY" ] && [[ ",$ONLY," != *",$1,"* ]]; then
        return 0
    fi
    note "$(printf '%-12s SKIPPED (%s)' "$1" "$2")"
}

ENV_PY='
import importlib, platform, sys
print("python", platform.python_version(), sys.executable)
missing = []
for mod in ("numpy", "pytest", "cupy", "torch", "jinja2", "networkx", "onnx", "onnxruntime"):
    try:
        version = getattr(importlib.import_module(mod), "__version__", "?")
        print(f"{mod:12s} {version}")
    except Exception as e:
        print(f"{mod:12s} MISSING ({type(e).__name__}: {e})")
        missing.append(mod)
try:
    import torch
    print("torch.cuda", torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")
except Exception as e:
    print("torch.cuda", "?", e)
needed = ("pytest", "torch") if sys.argv[1] == "1" else ("pytest", "cupy", "torch")
bad = [m for m in needed if m in missing]
sys.exit(f"missing: {bad}" if bad else 0)
'

env_report() {
    "$PY" -c "$ENV_PY" "$DRY"
    local rc=$?
    echo "-- git: $(git -C "$REPO" rev-parse HEAD 2>/dev/null || echo 'not a git checkout')"
    echo "-- nvidia-smi:"; nvidia-smi 2>&1 | head -25 || true
    echo "-- nvcc: $(command -v nvcc || echo none)"; nvcc --version 2>/dev/null | tail -2
    echo "-- compute-sanitizer: ${SANITIZER:-none}"
    echo "-- data/mnist:"; (cd "$REPO/data/mnist" && md5sum -c MD5SUMS) 2>&1 | tail -5
    return $rc
}

SANITIZER=$(command -v compute-sanitizer || true)
for candidate in "${CUDA_HOME:-/usr/local/cuda}/bin/compute-sanitizer" /usr/local/cuda*/bin/compute-sanitizer \
                 /usr/local/cuda*/compute-sanitizer/compute-sanitizer; do
    if [ -z "$SANITIZER" ] && [ -x "$candidate" ]; then
        SANITIZER=$candidate
    fi
done

export PY DRY REPO SANITIZER ENV_PY
export -f env_report

echo "gpu_check: repository $REPO, OUT=$OUT, dry=$DRY, budget ${BUDGET}s${ONLY:+, only $ONLY}"

step env 45 bash -c env_report

if [ "$DRY" = 1 ]; then
    step install 30 bash -c "'$PY' -m pip --version && echo 'dry: pip install -e . skipped (it would change this environment)'"
    step device 150 "$PY" bench/gpu_check.py device --emulate
    step pytest_gpu 120 "$PY" -m pytest -q -p no:cacheprovider -rs --junitxml="$OUT/pytest_gpu.xml" \
        tests/test_cuda_backend.py tests/test_lrn.py -k gpu
    step bench_cuda 300 "$PY" bench/bench_cuda.py --dry-run --only lenet
    step fit 400 "$PY" bench/gpu_check.py fit --emulate --batch-size 16 --limit-train 64 --limit-test 32 \
        --tolerance 10
    step latency 200 "$PY" bench/gpu_check.py latency --emulate --nets lenet --batches 1,4 --rounds 2 --warmup 1
    step memcheck 150 "$PY" bench/gpu_check.py step --emulate
    skip racecheck "dry: no compute-sanitizer run without a GPU"
    if [ -f bench/nccl_check.py ]; then
        step nccl 30 "$PY" -m py_compile bench/nccl_check.py
    else
        skip nccl "bench/nccl_check.py not in this checkout"
    fi
    step pytest_full 120 "$PY" -m pytest -q -p no:cacheprovider --collect-only tests/test_cuda_backend.py \
        tests/test_onnx_kernels.py tests/test_lrn.py tests/test_activation_table.py -k cuda
else
    step install 90 "$PY" -m pip install --no-deps --no-build-isolation -e .
    step device 90 "$PY" bench/gpu_check.py device
    step pytest_gpu 150 "$PY" -m pytest -q -p no:cacheprovider -rs --junitxml="$OUT/pytest_gpu.xml" \
        tests/test_cuda_backend.py tests/test_lrn.py -k gpu
    step bench_cuda 200 "$PY" bench/bench_cuda.py --profile
    step fit 180 "$PY" bench/gpu_check.py fit
    step latency 90 "$PY" bench/gpu_check.py latency
    if [ -n "$SANITIZER" ]; then
        step memcheck 100 "$SANITIZER" --tool memcheck --error-exitcode 3 --print-limit 20 \
            "$PY" bench/gpu_check.py step
        step racecheck 100 "$SANITIZER" --tool racecheck --error-exitcode 3 --print-limit 20 \
            "$PY" bench/gpu_check.py step
    else
        skip memcheck "compute-sanitizer not found"
        skip racecheck "compute-sanitizer not found"
    fi
    if [ -f bench/nccl_check.py ]; then
        step nccl 90 "$PY" bench/nccl_check.py
    else
        skip nccl "bench/nccl_check.py not in this checkout"
    fi
    step pytest_full 300 "$PY" -m pytest -q -p no:cacheprovider -rs --junitxml="$OUT/pytest_full.xml" \
        tests/test_cuda_backend.py tests/test_onnx_kernels.py tests/test_lrn.py tests/test_activation_table.py \
        -k cuda
fi

echo "== summary ($((SECONDS - START))s, $FAILED failed step(s)); logs in $OUT"
cat "$SUMMARY"
exit "$FAILED"
