"""`n2d2 train --resume RUN_DIR`: a run killed after a checkpoint, resumed, ends with the weights
of the run that was never interrupted (numpy backend: bit for bit)."""
import os
import signal
import time

from tests.test_cli import ACCURACY_LINE, _finish, _run, _start

ARGS = ["train", "--epochs", "3", "--limit-train", "640", "--limit-test", "128", "--batch-size", "64",
        "--no-progress", "--seed", "5"]


def _weights(folder):
    return {f: (folder / f).read_bytes() for f in sorted(os.listdir(folder))}


def test_killed_run_resumes_to_the_uninterrupted_result(tmp_path):
    straight = _start(ARGS + ["--output", str(tmp_path / "straight")], tmp_path)
    victim = _start(ARGS + ["--output", str(tmp_path / "victim")], tmp_path)
    checkpoint = tmp_path / "victim" / "checkpoint.npz"
    deadline = time.monotonic() + 200
    while not checkpoint.exists() and victim.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert checkpoint.exists(), "no checkpoint after the first epoch"
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert not (tmp_path / "victim" / "summary.json").exists()   # it did not finish
    rc, out, err = _finish(straight)
    assert rc == 0, err

    rc, resumed_out, err = _run(["train", "--resume", str(tmp_path / "victim"), "--backend", "numpy"], tmp_path)
    assert rc == 0, err
    assert "Resuming from" in resumed_out
    assert _weights(tmp_path / "victim" / "weights") == _weights(tmp_path / "straight" / "weights")
    assert resumed_out.strip().splitlines()[-1] == out.strip().splitlines()[-1]
    assert ACCURACY_LINE.fullmatch(out.strip().splitlines()[-1])
    epochs = (tmp_path / "victim" / "epochs.tsv").read_text().splitlines()
    assert len(epochs) == 4                      # header + all three epochs, the saved ones included


def test_resume_of_a_folder_that_is_no_run_is_one_line_error(tmp_path):
    rc, _, err = _run(["train", "--resume", str(tmp_path)], tmp_path, timeout=60)
    assert rc == 1 and err.startswith("n2d2 train: error: --resume ") and "arguments.json" in err
    assert err.count("\n") == 1
