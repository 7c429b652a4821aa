"""bench/gpu_check.sh (issue 16's prepared GPU script): its syntax, and its dry mode (GPU_CHECK_DRY=1) on the
steps that are quick without a GPU: environment report, install (skipped), the device check on the CUDA host
emulator (a DeepNetCell on the cuda backend counted launching kernels, with the numpy backend's outputs, and
the cuda backend refused without a device), one emulated training step, and a step selection / summary."""
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "bench" / "gpu_check.sh"
BASH = shutil.which("bash")

pytestmark = pytest.mark.skipif(BASH is None or shutil.which("timeout") is None, reason="needs bash and timeout")


def test_script_syntax():
    r = subprocess.run([BASH, "-n", str(SCRIPT)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    if shutil.which("shellcheck"):
        r = subprocess.run(["shellcheck", "-S", "warning", str(SCRIPT)], capture_output=True, text=True)
        assert r.returncode == 0, r.stdout


def _dry(tmp_path, only, budget=300):
    out = tmp_path / "out"
    env = dict(os.environ, OUT=str(out), GPU_CHECK_DRY="1", GPU_CHECK_ONLY=only, GPU_CHECK_BUDGET=str(budget))
    r = subprocess.run([BASH, str(SCRIPT)], capture_output=True, text=True, env=env, timeout=600, cwd=tmp_path)
    return r, out


def test_dry_mode_runs_the_steps_that_need_no_gpu(tmp_path):
    pytest.importorskip("torch")
    r, out = _dry(tmp_path, "env,install,device,memcheck,racecheck,nccl")
    summary = (out / "summary.txt").read_text()
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    lines = {line.split()[0]: line for line in summary.splitlines()}
    assert list(lines) == ["env", "install", "device", "memcheck", "racecheck", "nccl"]
    assert all(" ok " in lines[s] for s in ("env", "install", "device", "memcheck")), summary
    assert "SKIPPED" in lines["racecheck"]
    logs = sorted(p.name for p in out.glob("*.log"))
    assert logs[:3] == ["01_env.log", "02_install.log", "03_device.log"] and "08_memcheck.log" in logs
    assert "pytest" in (out / "01_env.log").read_text() and "data/mnist" in (out / "01_env.log").read_text()
    device = json.loads((out / "gpu_check_device.json").read_text())
    assert device["ok"] and device["device_launches"] > 0 and device["nodes_on_numpy"] == []
    assert "CUDA device" in device["refusal_without_device"] and device["rel_error_vs_numpy"] < 1e-5
    step = json.loads((out / "gpu_check_step.json").read_text())
    assert step["ok"] and step["launches"] == step["kernels"] > 0


def test_a_failing_step_is_recorded_and_the_run_goes_on(tmp_path):
    """A step that fails (here: pip missing from an empty PATH stand-in) counts in the exit status and the
    summary; later steps still run; an exhausted budget skips the rest."""
    fake = tmp_path / "bin"
    fake.mkdir()
    py = fake / "python"
    py.write_text("#!/bin/sh\nexit 7\n")
    py.chmod(0o755)
    out = tmp_path / "out"
    env = dict(os.environ, OUT=str(out), GPU_CHECK_DRY="1", GPU_CHECK_ONLY="install,nccl,pytest_full",
               PYTHON=str(py))
    r = subprocess.run([BASH, str(SCRIPT)], capture_output=True, text=True, env=env, timeout=120)
    summary = (out / "summary.txt").read_text()
    assert r.returncode == 3, summary                       # install, nccl and pytest_full failed
    assert "install      FAILED rc 7" in summary and "pytest_full  FAILED rc 7" in summary
    assert "nccl         FAILED rc 7" in summary                 # bench/nccl_check.py, byte-compiled in dry mode
    env["GPU_CHECK_BUDGET"] = "5"
    r = subprocess.run([BASH, str(SCRIPT)], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0 and "SKIPPED (budget of 5s spent)" in (out / "summary.txt").read_text()
