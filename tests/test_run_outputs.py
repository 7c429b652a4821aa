"""What a training run leaves and prints: statistics of the cells inside a DeepNetCell, a loss
and success curve per partition over the whole run, stimulus-weighted success, one learning-rate
line per change, `n2d2 --version`, `--output` mistakes, `n2d2 export` and the README's script."""
import os
import re
import subprocess
import sys

import numpy as np
import pytest

import n2d2
from n2d2 import cli
from n2d2.utils import reset_name_counters
from tests.test_cli import ACCURACY_LINE, ENV, REPO, _run

MNIST = os.path.join(REPO, "data", "mnist")


def _read_pairs(path) -> list:
    with open(path) as f:
        return [tuple(float(v) for v in line.split()) for line in f if line.strip()]


@pytest.fixture(scope="module")
def lenet_run(tmp_path_factory):
    """One small `n2d2 train` run of the lenet model (C backend, 2 epochs)."""
    tmp = tmp_path_factory.mktemp("run")
    out_dir = tmp / "run"
    rc, out, err = _run(["train", "--model", "lenet", "--epochs", "2", "--batch-size", "64", "--limit-train", "2000",
                         "--limit-test", "300", "--output", str(out_dir), "--no-progress", "--backend", "c"], tmp)
    assert rc == 0, err
    return {"dir": out_dir, "out": out, "tmp": tmp}


def test_stats_describe_the_cells_inside_the_deepnet_cell(lenet_run):
    out_dir = lenet_run["dir"]
    with open(out_dir / "stats" / "stats.log") as f:
        log = f.read()
    with open(out_dir / "model.txt") as f:
        model = f.read()
    total = re.search(r"Total params:\s+([\d,]+)", model).group(1).replace(",", "")
    assert total == "61754"
    assert f"Total number of parameters: {total}\n" in log
    macs = re.search(r"Total computing:\s+([\d,]+) MAC", model).group(1).replace(",", "")
    assert f"Total number of connections (MACs per image): {macs}\n" in log
    rows = [line.split() for line in open(out_dir / "stats" / "stats.dat").read().splitlines()[1:]]
    names = [r[0] for r in rows]
    assert names[:3] == ["Conv_0", "BatchNorm2d_0", "Pool2d_0"] and names[-1] == "softmax"
    assert "Total number of cells: %d\n" % len(rows) in log
    assert dict((r[0], int(r[1])) for r in rows)["Conv_0"] == 4 * 150     # float32 bytes of 6x1x5x5


def test_each_partition_has_its_own_loss_curve(lenet_run):
    target = lenet_run["dir"] / "Target"
    learn = _read_pairs(target / "Loss_Learn.dat")
    validation = _read_pairs(target / "Loss_Validation.dat")
    test = _read_pairs(target / "Loss_Test.dat")
    nb_steps = len(learn)
    assert [s for s, _ in learn] == list(range(1, nb_steps + 1))
    # one point per validation pass, at the Learn step where it ran; the test pass after training
    assert [s for s, _ in validation] == [nb_steps // 2, nb_steps]
    assert [s for s, _ in test] == [nb_steps]
    assert validation != learn[:2] and open(target / "Loss_Validation.png", "rb").read() != \
        open(target / "Loss_Learn.png", "rb").read()


def test_learn_success_covers_the_whole_run(lenet_run):
    target = lenet_run["dir"] / "Target"
    learn = _read_pairs(target / "Success_Learn.dat")
    assert len(learn) == len(_read_pairs(target / "Loss_Learn.dat"))      # every batch of both epochs
    assert len(_read_pairs(target / "Validation_LearningSuccess.dat")) == len(learn)
    assert learn[0][0] < 0.5           # the first batches of epoch 1 are near chance


def test_learning_rate_change_printed_once(lenet_run):
    lines = [line for line in lenet_run["out"].splitlines() if line.startswith("Learning rate after")]
    # lenet anneals once per epoch: one change after epoch 1 and one after epoch 2, for all 17 parameters
    assert len(lines) == 2 and len(set(lines)) == 2, lines


def test_export_rebuilds_the_run_and_scores_like_it(lenet_run):
    accuracy = float(ACCURACY_LINE.search(lenet_run["out"]).group(1))
    project = lenet_run["tmp"] / "lenet_c"
    rc, out, err = _run(["export", str(lenet_run["dir"]), "--output", str(project), "--nb-stimuli", "300"],
                        lenet_run["tmp"])
    assert rc == 0, err
    assert f"make -C {project} run" in out
    build = subprocess.run(["make", "-s", "-C", str(project), "run"], capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stderr
    m = re.search(r"Success rate = (\d+\.\d+)% \((\d+) scored\)", build.stdout)
    assert m and int(m.group(2)) == 300
    assert abs(float(m.group(1)) - accuracy) < 1e-6, (build.stdout, accuracy)
    rc, out, err = _run(["export", str(lenet_run["dir"]), "--output", str(project)], lenet_run["tmp"])
    assert rc == 1 and "already exists" in err and "Traceback" not in err


def test_export_of_a_folder_that_is_not_a_run(tmp_path, capsys):
    assert cli.main(["export", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "no summary.json" in err and len(err.strip().splitlines()) == 1


def test_version(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["--version"])
    assert e.value.code == 0
    assert capsys.readouterr().out.strip() == f"n2d2 {n2d2.__version__}"


@pytest.mark.parametrize("kind", ["file", "under_a_file"])
def test_output_that_cannot_be_a_folder_is_one_line(tmp_path, capsys, kind):
    target = tmp_path / "taken"
    target.write_text("keep me")
    path = target if kind == "file" else target / "sub"
    assert cli.main(["train", "--epochs", "1", "--limit-train", "100", "--limit-test", "10",
                     "--output", str(path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("n2d2 train: error: --output ") and len(err.strip().splitlines()) == 1
    assert target.read_text() == "keep me"


# -- Score: per-batch average (upstream) and stimulus-weighted success ------------------------
def test_success_rate_is_stimulus_weighted_and_average_success_per_batch():
    reset_name_counters()
    db = n2d2.database.MNIST(data_path=MNIST)
    provider = n2d2.provider.DataProvider(db, [28, 28, 1], batch_size=64)
    provider.set_partition("Test")
    target = n2d2.target.Score(provider)
    fc = n2d2.cells.Fc(784, 10)
    softmax = n2d2.cells.Softmax(with_loss=True)
    fc.test()
    for idx in (0, 64, 9990):                            # two full batches and a partial one (10 images)
        target(softmax(fc(provider.read_batch(idx))))
    m = target.get_confusion_matrix()
    assert m.sum() == 64 + 64 + 10
    assert target.get_success_rate() == pytest.approx(np.trace(m) / m.sum())
    per_batch = target._score("Test").success
    assert len(per_batch) == 3
    assert target.get_average_success() == pytest.approx(np.mean(per_batch))


def test_readme_first_script_prints_its_loss_and_accuracy(tmp_path):
    text = open(os.path.join(REPO, "README.md")).read()
    start = text.index("```python", text.index("## A first script")) + len("```python")
    script = text[start:text.index("```", start)]
    (tmp_path / "data").symlink_to(os.path.join(REPO, "data"))  # the script's data_path="data/mnist"
    proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=ENV, capture_output=True, text=True,
                          timeout=300)  # not in REPO: the script's Score target writes its log folder
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert len([line for line in lines if re.match(r"batch \d+: loss \d+\.\d+, success", line)]) == 5
    accuracy = float(re.fullmatch(r"Test accuracy: (\d+\.\d\d) %", lines[-1]).group(1))
    assert accuracy > 80.0


def test_diverging_training_is_one_line_naming_the_cell(tmp_path):
    rc, out, err = _run(["train", "--epochs", "1", "--limit-train", "600", "--limit-test", "50", "--learning-rate",
                         "1e30", "--no-progress", "--output", str(tmp_path / "run")], tmp_path)
    assert rc == 1 and "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith("n2d2 train: error:")]
    assert len(lines) == 1 and "not finite" in lines[0], err
