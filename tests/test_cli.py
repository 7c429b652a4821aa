"""`n2d2 train`: the real command line on the bundled MNIST with small budgets, reproducibility,
exit codes and one-line errors, the files a run leaves."""
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

import n2d2
from n2d2 import cli

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Two shared cores: BLAS / OpenMP threads spinning against other processes make a run several
# times slower, so the subprocesses use one.
ENV = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1",
           PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
ACCURACY_LINE = re.compile(r"Test accuracy: (\d+\.\d\d) % \((\d+) images\)")


def _start(args, cwd):
    if args[:1] == ["train"] and "--backend" not in args:
        # The numpy executor (the reference): these tests are about the command line, and
        # compiling a C program per network would double their time.
        args = args + ["--backend", "numpy"]
    return subprocess.Popen([sys.executable, "-m", "n2d2", *args], cwd=cwd, env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _finish(proc, timeout=240):
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def _run(args, cwd, timeout=240):
    return _finish(_start(args, cwd), timeout)


# -- a real training run ----------------------------------------------------------------------------
def test_small_budget_run_learns_and_writes_its_outputs(tmp_path):
    out_dir = tmp_path / "run"
    rc, out, err = _run(["train", "--model", "lenet", "--database", "mnist", "--epochs", "2", "--batch-size", "32",
                         "--limit-train", "3000", "--limit-test", "1000", "--output", str(out_dir)], tmp_path)
    assert rc == 0, err
    lines = out.strip().splitlines()
    m = ACCURACY_LINE.fullmatch(lines[-1])
    assert m, lines[-1]
    accuracy, nb = float(m.group(1)), int(m.group(2))
    assert nb == 1000 and accuracy > 80.0
    assert f"Output folder: {out_dir}" in lines
    assert "2700 learn, 300 validation, 1000 test" in lines[0]
    epochs = [line for line in lines if line.startswith("Epoch ")]
    assert [e.split(":")[0] for e in epochs] == ["Epoch 1/2", "Epoch 2/2"]
    assert all(re.search(r"validation success \d+\.\d\d % \(300 images\), \d+ img/s", e) for e in epochs)
    assert "img/s" in err and "loss=" in err            # the progress bar
    assert "Traceback" not in err

    for name in ("model.txt", "epochs.tsv", "summary.json", "stats/stats.log", "stats/stats.dat",
                 "Target/ConfusionMatrix_Test.dat", "Target/ConfusionMatrix_Test.png",
                 "Target/ConfusionMatrix_Test_score.dat", "Target/ConfusionMatrix_Validation.dat",
                 "Target/Success_Validation.dat", "Target/Success_Validation.png", "Target/Loss_Learn.dat",
                 "Target/Loss_Learn.png", "Target/Success_Learn.png", "Target/Success_Test.dat",
                 "weights/Conv_0_weights.syntxt", "weights/Fc_1_weights.syntxt",
                 "weights/BatchNorm2d_2_variances.syntxt"):
        assert (out_dir / name).is_file(), name
    final = sorted(os.listdir(out_dir / "weights"))
    assert len(final) == 5 + 3 * 4 + 1                  # 3 Conv + 2 Fc weights, 3 BatchNorm2d x 4, manifest
    assert final == sorted(os.listdir(out_dir / "weights_init")) == sorted(os.listdir(out_dir / "weights_validation"))
    summary = json.loads((out_dir / "summary.json").read_text())
    assert abs(100 * summary["test_accuracy"] - accuracy) < 0.006 and summary["test_images"] == 1000
    assert len(summary["epochs"]) == 2 and summary["arguments"]["batch_size"] == 32
    confusion = [line.split() for line in (out_dir / "Target/ConfusionMatrix_Test.dat").read_text().splitlines()[1:]]
    counts = np.array([int(c[2]) for c in confusion]).reshape(10, 10)
    assert counts.sum() == 1000 and abs(100 * np.trace(counts) / 1000 - accuracy) < 0.006
    assert len((out_dir / "epochs.tsv").read_text().splitlines()) == 3
    assert sorted(os.listdir(tmp_path)) == ["run"]      # nothing written in the working directory


def test_same_seed_same_weights_and_accuracy(tmp_path):
    base = ["train", "--epochs", "1", "--limit-train", "640", "--limit-test", "256", "--batch-size", "64",
            "--no-progress"]
    procs = {name: _start(base + ["--seed", seed, "--output", str(tmp_path / name)], tmp_path)
             for name, seed in (("a", "7"), ("b", "7"), ("c", "8"))}
    results = {name: _finish(p) for name, p in procs.items()}
    for name, (rc, out, err) in results.items():
        assert rc == 0, err
        assert "%|" not in err                           # --no-progress: no bar
    last = {name: r[1].strip().splitlines()[-1] for name, r in results.items()}
    assert last["a"] == last["b"] and ACCURACY_LINE.fullmatch(last["a"])

    def weights(name):
        folder = tmp_path / name / "weights"
        return {f: (folder / f).read_bytes() for f in sorted(os.listdir(folder))}

    a, b, c = weights("a"), weights("b"), weights("c")
    assert len(a) == 17 + 1 and a == b                   # 17 .syntxt files and the set's manifest
    assert all(a[f] != c[f] for f in a)                  # the seed does matter
    assert (tmp_path / "a" / "epochs.tsv").read_text().split("\n")[1].split("\t")[:5] == \
        (tmp_path / "b" / "epochs.tsv").read_text().split("\n")[1].split("\t")[:5]


def test_without_validation_each_epoch_is_still_reported(tmp_path):
    rc, out, err = _run(["train", "--validation", "0", "--epochs", "2", "--limit-train", "256", "--limit-test", "128",
                         "--batch-size", "64", "--no-progress", "--output", str(tmp_path / "run")], tmp_path)
    assert rc == 0, err
    assert "256 learn, 0 validation, 128 test" in out
    epochs = [line for line in out.splitlines() if line.startswith("Epoch ")]
    assert len(epochs) == 2 and all("validation" not in e and re.search(r"learn success \d+\.\d\d %", e)
                                    for e in epochs)
    assert "(no validation: --validation 0; the last epoch's weights are kept)" in out
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["best_epoch"] is None and [e["learn_images"] for e in summary["epochs"]] == [256, 256]
    assert not (tmp_path / "run" / "weights_validation").exists()


def test_resnet20_on_cifar10_files(tmp_path):
    data = tmp_path / "cifar"
    data.mkdir()
    rng = np.random.default_rng(0)
    for name, n in [(f"data_batch_{k}.bin", 8) for k in range(1, 6)] + [("test_batch.bin", 12)]:
        labels = rng.integers(0, 10, n).astype(np.uint8)
        pixels = rng.integers(0, 256, (n, 3072)).astype(np.uint8)
        np.concatenate([labels[:, None], pixels], axis=1).tofile(data / name)
    (data / "batches.meta.txt").write_text("\n".join(f"class{k}" for k in range(10)) + "\n")
    rc, out, err = _run(["train", "--model", "resnet20", "--database", "cifar10", "--data-path", str(data),
                         "--epochs", "1", "--batch-size", "8", "--validation", "0.2", "--no-progress",
                         "--output", str(tmp_path / "run")], tmp_path)
    assert rc == 0, err
    assert "32 learn, 8 validation, 12 test" in out
    assert ACCURACY_LINE.fullmatch(out.strip().splitlines()[-1]).group(2) == "12"
    assert (tmp_path / "run" / "weights").is_dir()


# -- errors -------------------------------------------------------------------------------------------
def _main(args, capsys):
    rc = cli.main(args)
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


@pytest.mark.parametrize("args,message", [
    (["--model", "alexnet"], "unknown model 'alexnet' (known: "),
    (["--database", "imagenet"], "unknown database 'imagenet' (known: cifar10, mnist)"),
    (["--model", "resnet20"], "model 'resnet20' does not fit database 'mnist'"),
    (["--model", "lenet", "--database", "cifar10", "--data-path", "."], "model 'lenet' does not fit database"),
])
def test_unknown_or_unfit_model_or_database(args, message, capsys):
    rc, out, err = _main(["train"] + args, capsys)
    assert rc == 1
    assert err.startswith("n2d2 train: error: ") and message in err and err.count("\n") == 1
    assert out == "" and os.listdir(".") == []


def test_missing_data_files_are_named(tmp_path, capsys):
    folder = tmp_path / "empty"
    folder.mkdir()
    (folder / "train-images-idx3-ubyte.gz").write_bytes(b"")
    rc, _, err = _main(["train", "--data-path", str(folder)], capsys)
    assert rc == 1 and err.count("\n") == 1
    assert f"MNIST files missing in {folder}: train-labels-idx1-ubyte, t10k-images-idx3-ubyte, " \
           "t10k-labels-idx1-ubyte" in err
    rc, _, err = _main(["train", "--data-path", str(tmp_path / "nowhere")], capsys)
    assert rc == 1 and "no such folder" in err and str(tmp_path / "nowhere") in err


def test_corrupt_data_file_is_one_line(tmp_path, capsys):
    folder = tmp_path / "bad"
    folder.mkdir()
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                 "t10k-labels-idx1-ubyte"):
        (folder / name).write_bytes(b"\x00\x00\x08\x03 not an idx file")
    rc, _, err = _main(["train", "--data-path", str(folder), "--output", str(tmp_path / "out")], capsys)
    assert rc == 1 and err.count("\n") == 1
    assert f"cannot read MNIST from {folder}" in err
    assert not (tmp_path / "out").exists()


def test_cifar10_needs_a_data_path(monkeypatch, capsys):
    monkeypatch.delenv("N2D2_DATA", raising=False)
    rc, _, err = _main(["train", "--model", "resnet20", "--database", "cifar10"], capsys)
    assert rc == 1 and "CIFAR-10 needs --data-path" in err


@pytest.mark.skipif(n2d2.global_variables.cuda_available, reason="a CUDA device is available here")
def test_cuda_without_a_gpu(capsys):
    rc, _, err = _main(["train", "--device", "cuda"], capsys)
    assert rc == 1 and "--device cuda: CUDA is not available" in err and err.count("\n") == 1
    assert n2d2.global_variables.default_model == "Frame"


@pytest.mark.skipif(n2d2.global_variables.cuda_available, reason="a CUDA device is available here")
def test_cuda_backend_without_a_gpu(tmp_path, capsys):
    rc, _, err = _main(["train", "--backend", "cuda", "--output", str(tmp_path / "out")], capsys)
    assert rc == 1 and err.startswith("n2d2 train: error: --backend cuda: ") and err.count("\n") == 1
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("args", [
    [], ["fly"], ["train", "--epochs", "0"], ["train", "--epochs", "two"], ["train", "--batch-size", "-1"],
    ["train", "--validation", "1.0"], ["train", "--learning-rate", "nan"], ["train", "--device", "tpu"],
    ["train", "--backend", "fortran"], ["train", "--valid-metric", "Speed"], ["train", "--bogus"],
])
def test_bad_arguments_exit_2(args, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(args)
    assert e.value.code == 2
    assert "usage: n2d2" in capsys.readouterr().err


def test_console_entry_points(tmp_path):
    rc, _, err = _run(["train", "--model", "nope"], tmp_path, timeout=60)
    assert rc == 1 and "Traceback" not in err
    assert err == "n2d2 train: error: unknown model 'nope' (known: " + ", ".join(
        sorted(["lenet", "lenet-ini", "lenet5", "mobilenetv1", "mobilenetv2", "resnet20", "resnet56"])) + ")\n"
    rc, out, _ = _run(["train", "--help"], tmp_path, timeout=60)
    assert rc == 0 and "--limit-train N" in out and "resnet20" in out and "LeNet.ini" in out
    rc, _, err = _run([], tmp_path, timeout=60)
    assert rc == 2 and "required: VERB" in err


# -- the per-epoch report ------------------------------------------------------------------------------
def test_epoch_report_scores_each_validation_pass_alone(capsys):
    from n2d2.activation import Rectifier
    from n2d2.cells import Fc, Sequence, Softmax
    from n2d2.solver import SGD
    from n2d2.training import EpochReport

    rng = np.random.default_rng(0)
    xs = [rng.random((1, 4, 4)).astype(np.float32) for _ in range(80)]
    ys = [int(x[0, :2].mean() > x[0, 2:].mean()) for x in xs]
    db = n2d2.database.Numpy()
    db.load(xs[:48], ys[:48], partition="Learn")
    db.load(xs[48:68], ys[48:68], partition="Validation")
    db.load(xs[68:], ys[68:], partition="Test")
    provider = n2d2.provider.DataProvider(db, [4, 4, 1], batch_size=16)
    model = Sequence([Fc(16, 8, activation=Rectifier()), Fc(8, 2), Softmax(with_loss=True)])
    model.set_solver(SGD(learning_rate=0.1, momentum=0.9))
    lines = []
    target = EpochReport(provider, 3, out=lines.append)
    dn = model.to_deepnet_cell(provider, target)
    dn.fit(3, valid_metric="Accuracy")
    assert [r["validation_images"] for r in target.epochs] == [20, 20, 20]   # not 20, 40, 60
    assert [r["learn_images"] for r in target.epochs] == [48, 48, 48]
    for r, (_, score) in zip(target.epochs, target.get_validation_points()):
        assert r["validation_metric"] == score
    assert all(line.startswith(f"Epoch {k + 1}/3: learn loss ") and "(20 images)" in line
               for k, line in enumerate(lines))
    dn.run_test()
    m = target.get_confusion_matrix("Test")
    assert m.sum() == 12 and n2d2.training.partition_accuracy(target) == (np.trace(m) / 12, 12)
