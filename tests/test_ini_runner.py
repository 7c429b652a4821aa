"""The INI runner (`n2d2 run MODEL.ini -learn N -log M -test`): stimuli budget, validation with
best weights, test, logs in the output folder, command line and errors."""
import os
import subprocess
import sys
import time

import numpy as np
import pytest

from n2d2.frontends.ini import runner
from tests.conftest import SHARED_MODELS, small_cnn_ini

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LENET = os.path.join(SHARED_MODELS, "LeNet.ini")

# two classes of 8x8 images: bright top half or bright bottom half
TINY_DATABASE = "Type=DIR_Database\nDataPath=data\nLearn=0.6\nValidation={validation}\nLoadInMemory=1"


def tiny_model(tmp_path, validation=0.2, per_class=30):
    from PIL import Image

    rng = np.random.default_rng(0)
    for label in ("bottom", "top"):
        folder = tmp_path / "data" / label
        folder.mkdir(parents=True, exist_ok=True)
        for k in range(per_class):
            img = rng.integers(0, 90, (8, 8))
            rows = slice(0, 4) if label == "top" else slice(4, 8)
            img[rows] += 150
            Image.fromarray(img.astype(np.uint8), mode="L").save(folder / f"{k}.png")
    path = tmp_path / "tiny.ini"
    path.write_text(small_cnn_ini(TINY_DATABASE.format(validation=validation), size=8, batch=8, conv="KernelDims=3 3",
                                  classes=2))
    return str(path)


def test_run_learns_validates_tests_and_logs(tmp_path, capsys):
    model = tiny_model(tmp_path)
    out = tmp_path / "out"
    cwd = os.getcwd()
    result = runner.run(model, learn=300, log=100, test=True, output=str(out), seed=3, backend="numpy")
    assert os.getcwd() == cwd
    text = capsys.readouterr().out
    assert f"Output folder: {out}" in text
    assert text.count("Validation Sensitivity:") == 3  # every 100 of the 300 stimuli
    assert "Test success rate:" in text
    assert result["learned"] == 300
    assert result["test"] > 0.8 and result["validation"] > 0.8
    target_dir = out / "softmax.Target"
    for name in ("ConfusionMatrix_Test.dat", "ConfusionMatrix_Test.png", "Success_Test.dat", "Success_Validation.dat",
                 "Success_Validation.png", "Success_Learn.dat", "ConfusionMatrix_Validation.dat"):
        assert (target_dir / name).is_file(), name
    assert (out / "stats" / "stats.dat").is_file()
    assert (out / "weights_init" / "conv1_weights.syntxt").is_file()
    assert (out / "weights_validation" / "fc_weights.syntxt").is_file()
    dn = result["deepnet"]
    matrix = dn.get_target().get_confusion_matrix("Test")
    assert matrix.sum() == 12 and result["test"] == np.trace(matrix) / 12  # exact, not a mean of batches
    # the weights kept are the best validation's: re-importing them changes nothing
    before = dn["fc"]._weights.copy()
    dn.import_free_parameters(str(out / "weights_validation"))
    assert np.allclose(before, dn["fc"]._weights, atol=1e-6)


def test_run_without_validation_keeps_the_last_weights(tmp_path, capsys):
    model = tiny_model(tmp_path, validation=0.0)
    result = runner.run(model, learn=50, log=1000, output=str(tmp_path / "o"), backend="numpy")
    text = capsys.readouterr().out
    assert "Validation" not in text.replace("validation on", "")
    assert result["learned"] == 50 and result["validation"] is None and result["test"] is None
    assert (tmp_path / "o" / "weights" / "fc_weights.syntxt").is_file()


def test_budget_longer_than_an_epoch_continues_over_passes(tmp_path, capsys):
    model = tiny_model(tmp_path, validation=0.0, per_class=10)  # 12 learning stimuli
    result = runner.run(model, learn=40, log=40, output=str(tmp_path / "o"), backend="numpy")
    assert result["learned"] == 40
    assert "Learning 40 stimuli (3.33 epochs of 12)" in capsys.readouterr().out


def test_main_reports_ini_errors_in_one_line(tmp_path, capsys):
    model = tiny_model(tmp_path)
    text = open(model).read().replace("Pooling=Max", "Pooling=Min")
    bad = tmp_path / "bad.ini"
    bad.write_text(text)
    assert runner.main([str(bad), "-test"]) == 1
    err = capsys.readouterr().err
    line = text.splitlines().index("Pooling=Min") + 1
    assert f"n2d2 run: error: {bad}:{line}: [pool1] Pooling='Min' is not a valid value" in err
    assert runner.main([str(tmp_path / "missing.ini")]) == 1
    assert "cannot read the INI file" in capsys.readouterr().err


def test_main_rejects_bad_budgets(tmp_path, capsys):
    model = tiny_model(tmp_path)
    assert runner.main([model, "-learn", "-5"]) == 1
    assert "learn" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        runner.main([model, "-learn", "many"])


def _cli_has_run() -> bool:
    try:
        from n2d2 import cli
    except ImportError:
        return False
    parser = cli.build_parser()
    try:
        return parser.parse_args(["run", "x.ini"]).verb == "run"
    except SystemExit:
        return False


@pytest.mark.parametrize("module", ["n2d2.frontends.ini.runner", "n2d2"])
def test_command_line(tmp_path, module):
    if module == "n2d2" and not _cli_has_run():
        pytest.skip("n2d2.cli has no 'run' verb yet")
    model = tiny_model(tmp_path)
    args = [sys.executable, "-m", module] + (["run"] if module == "n2d2" else [])
    args += [model, "-learn", "48", "-log", "24", "-test", "-o", str(tmp_path / "cli_out"), "-backend", "numpy"]
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""), TQDM_DISABLE="1")
    proc = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "Test success rate:" in proc.stdout
    assert (tmp_path / "cli_out" / "softmax.Target" / "ConfusionMatrix_Test.dat").is_file()


@pytest.mark.slow
@pytest.mark.skipif(not os.path.isfile(LENET), reason="shared INI models not available")
def test_lenet_ini_reaches_99_percent(tmp_path, request):
    """LeNet.ini trained for 10 epochs of its 48000 learning stimuli (validation each epoch, best
    weights kept): at least 99.0 % on the MNIST test set (measured: 99.09 %, 33 min on two shared
    cores with the numpy backend; the INI's own command, -learn 6000000, runs 125 epochs).
    Long: runs with `-m slow` (or N2D2_SLOW_TESTS=1)."""
    if "slow" not in (request.config.getoption("markexpr") or "") and not os.environ.get("N2D2_SLOW_TESTS"):
        pytest.skip("slow end-to-end training: select it with -m slow")
    start = time.perf_counter()
    result = runner.run(LENET, learn=480000, log=48000, test=True, output=str(tmp_path / "lenet"), seed=1,
                        backend="numpy")
    print(f"LeNet.ini: {100 * result['test']:.2f} % in {time.perf_counter() - start:.0f} s")
    assert result["test"] >= 0.99


def test_diverging_run_stops_in_one_line_naming_the_cell(tmp_path):
    """`n2d2 run` trains with fit's non-finite check: a learning rate that blows the weights up
    ends in one line naming the first cell whose output is not finite, not a traceback."""
    model = tiny_model(tmp_path)
    with open(model) as f:
        text = f.read()
    with open(model, "w") as f:
        f.write(text.replace("Solvers.LearningRate=0.05", "Solvers.LearningRate=1e30"))
    args = [sys.executable, "-m", "n2d2", "run", model, "-learn", "48", "-log", "24", "-o", str(tmp_path / "out"),
            "-backend", "numpy"]
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""), TQDM_DISABLE="1")
    proc = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("n2d2 run: error:")]
    assert len(lines) == 1 and "not finite" in lines[0] and "'" in lines[0], proc.stderr
