"""`n2d2 run MODEL.ini -export TYPE ...` (N2D2's export options): a small INI MNIST network trained
a few batches, exported as an int8 CPP project that builds with make, runs, and scores what the
Python integer simulation scores on the same stimuli; the float ONNX export equals the network;
option spellings, export parameter files and the refused export types."""
import os
import re
import shutil
import subprocess
import sys
import warnings

import numpy as np
import pytest

from n2d2.codegen.compiler import find_compiler
from n2d2.frontends.ini import IniError, IniWarning, runner
from n2d2.frontends.ini.run_export import (
    REFUSED_EXPORT_TYPES,
    export_folder_name,
    read_export_parameters,
)
from n2d2.quantization.ptq import quantize_network, read_stimuli
from tests.conftest import small_cnn_ini

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NB = 40        # exported Test stimuli
CALIB = 32     # calibration stimuli (two batches)
needs_make = pytest.mark.skipif(shutil.which("make") is None or find_compiler() is None,
                                reason="needs make and a C compiler")

MNIST_INI = small_cnn_ini("Type=MNIST_IDX_Database\nValidation=0.0", size=28, batch=16,
                          conv="KernelDims=5 5\nStride=2", classes=10)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The INI network trained on 1600 stimuli and exported in the same call (`-learn -export CPP`)."""
    root = tmp_path_factory.mktemp("run_export")
    model = root / "mnist.ini"
    model.write_text(MNIST_INI)
    export = dict(export_type="CPP", nb_bits=8, calibration=CALIB, export_nb_stimuli_max=NB)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = runner.run(str(model), learn=1600, log=1600, output=str(root / "out"), seed=1, backend="numpy",
                            export=export)
    return {"model": str(model), "out": root / "out", "result": result}


def _make_run(folder):
    r = subprocess.run(["make", "-s", "-C", str(folder), "run"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, f"make run:\n{r.stdout}\n{r.stderr}"
    m = re.search(r"Success rate = ([0-9.]+)% \((\d+) scored\)", r.stdout)
    assert m, r.stdout
    return float(m.group(1)), int(m.group(2))


def _simulated_rate(dn, **options):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        net = quantize_network(dn, nb_bits=8, calibration=CALIB, **options)
    x, y = read_stimuli(dn.get_provider(), "Test", NB)
    return 100 * net.accuracy(x, y)


@needs_make
def test_learn_then_export_cpp_int8_builds_runs_and_equals_the_simulation(trained):
    folder = trained["out"] / "export_CPP_int8"
    assert trained["result"]["export"] == str(folder)
    assert (folder / "Makefile").is_file() and (folder / "include" / "weights.h").is_file()
    rate, scored = _make_run(folder)
    assert scored == NB
    assert rate == pytest.approx(_simulated_rate(trained["result"]["deepnet"], act_scaling_mode="FLOAT_MULT"),
                                 abs=0.006)
    assert rate > 50   # 1600 stimuli of training


@needs_make
def test_command_line_export_c_int8_with_upstream_spellings(trained, tmp_path):
    """The CLI, N2D2's single-dash options: weights of the run (-w), C int8, Double-shift, no
    unsigned, per-output weights, KL-Divergence clipping, no CLE."""
    out = tmp_path / "cli"
    args = [sys.executable, "-m", "n2d2", "run", trained["model"], "-w", str(trained["out"] / "weights"),
            "-export", "C", "-nbbits", "8", "-calib", str(CALIB), "-db-export", str(NB), "-act-rescaling-mode",
            "Double-shift", "-no-unsigned", "-act-rescale-per-output", "1", "-act-clipping-mode", "KL-Divergence",
            "-no-cle", "-o", str(out)]
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""), TQDM_DISABLE="1")
    proc = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    folder = out / "export_C_int8"
    assert f"C export (8-bit integer) written to {folder}" in proc.stdout
    rate, scored = _make_run(folder)
    dn = trained["result"]["deepnet"]
    expected = _simulated_rate(dn, act_scaling_mode="DOUBLE_SHIFT", no_unsigned=True, act_rescale_per_output=True,
                               act_clipping_mode="KL_DIVERGENCE", cross_layer_equalization=False)
    assert scored == NB and rate == pytest.approx(expected, abs=0.006)
    stimuli = np.fromfile(folder / "stimuli" / "inputs.bin", dtype=np.int8)
    assert stimuli.size == NB * 28 * 28 and stimuli.min() >= -127   # signed inputs (-no-unsigned)


@needs_make
def test_stm32_export_from_the_command_line_runs_on_the_emulator(trained, tmp_path):
    result = runner.run(trained["model"], output=str(tmp_path / "o"), weights=str(trained["out"] / "weights"),
                        backend="numpy", export=dict(export_type="CPP_STM32", calibration=16,
                                                     export_nb_stimuli_max=4, act_scaling_mode="Single-shift"))
    folder = tmp_path / "o" / "export_CPP_STM32_int8"
    assert result["export"] == str(folder)
    assert (folder / "stm32.ld").is_file() and (folder / "include" / "test_stimulus.h").is_file()
    r = subprocess.run(["make", "-s", "-C", str(folder), "emulator"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    run = subprocess.run([str(folder / "bin" / "n2d2_stm32_emulator")], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0 and run.stdout.count("Predicted class:") == 4, run.stdout


def test_float_onnx_export_equals_the_network(trained):
    ort = pytest.importorskip("onnxruntime")
    result = runner.run(trained["model"], output=str(trained["out"]), backend="numpy",
                        export=dict(export_type="ONNX", nb_bits=-32))
    path = trained["out"] / "export_ONNX_float32" / "model.onnx"
    assert result["export"] == str(path.parent) and path.is_file()
    dn = result["deepnet"]    # the run's weights/ imported (N2D2's default without -w)
    x, _ = read_stimuli(dn.get_provider(), "Test", 8)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    ours = session.run(None, {session.get_inputs()[0].name: x})[0]
    dn.test()
    from n2d2.tensor import Tensor
    ref = dn(Tensor.from_numpy(x)).to_numpy()
    np.testing.assert_allclose(ours.reshape(ref.shape), ref, rtol=1e-4, atol=1e-5)


def test_integer_onnx_export_is_a_qdq_model_onnxruntime_runs(trained):
    ort = pytest.importorskip("onnxruntime")
    onnx = pytest.importorskip("onnx")
    result = runner.run(trained["model"], output=str(trained["out"]), backend="numpy",
                        export=dict(export_type="ONNX", nb_bits=8, calibration=32))
    path = trained["out"] / "export_ONNX_int8" / "model.onnx"
    assert result["export"] == str(path.parent) and path.is_file()
    ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    dn = result["deepnet"]
    x, _ = read_stimuli(dn.get_provider(), "Test", 32)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    ours = session.run(None, {session.get_inputs()[0].name: x})[0].reshape(len(x), -1)
    dn.test()
    from n2d2.tensor import Tensor
    ref = dn(Tensor.from_numpy(x)).to_numpy().reshape(len(x), -1)
    assert np.mean(ours.argmax(1) == ref.argmax(1)) >= 0.9


def test_export_without_weights_and_dev_null(trained, tmp_path, capsys):
    # no -learn, no -w, no weights/ in the output folder: N2D2 needs trained weights
    assert runner.main([trained["model"], "-export", "C", "-nbbits", "-32", "-o", str(tmp_path / "o")]) == 1
    assert "no weights/ in" in capsys.readouterr().err
    # -w /dev/null: the initial (filler) weights, as N2D2
    result = runner.run(trained["model"], output=str(tmp_path / "o"), weights=os.devnull, backend="numpy",
                        export=dict(export_type="C", nb_bits=-32, export_nb_stimuli_max=3))
    assert os.path.isfile(os.path.join(result["export"], "src", "network.c"))
    assert os.path.basename(result["export"]) == "export_C_float32"


@pytest.mark.parametrize("args, message", [
    (["-export", "CPP_TensorRT"], REFUSED_EXPORT_TYPES["CPP_TensorRT"]),
    (["-export", "C_HLS"], "-export C_HLS: the Vivado HLS export is not implemented"),
    (["-export", "CPP_Quantization"], "-export CPP -qat-sat exports a SAT-trained network"),
    (["-export", "DNeuro_V3"], "DNeuro"),
    (["-export", "SC_Spike"], "spiking"),
    (["-export", "TFLite"], "unknown export type"),
    (["-export", "ONNX", "-nbbits", "16"], "-export ONNX -nbbits 16: expected 8 or 4 (QDQ model) or -32"),
    (["-export", "CPP", "-nbbits", "-32"], "the float CPP export is not implemented"),
    (["-export", "C", "-act-rescaling-mode", "Floating-point"], "the C export has no float requantization"),
    (["-export", "CPP", "-act-clipping-mode", "Quantile"], "quantile clipping is not implemented"),
    (["-export", "CPP", "-act-rescaling-mode", "Half-shift"], "-act-rescaling-mode Half-shift: expected one of"),
    (["-export", "CPP", "-calib", "-2"], "-calib -2"),
    (["-export", "CPP", "-nbbits", "0"], "-nbbits 0"),
    (["-calib", "10"], "-calib is an export option"),
    (["-qat-sat"], "-qat-sat is an export option"),
])
def test_refusals_name_the_option_before_loading(tmp_path, capsys, args, message):
    # the model does not even exist: the options are checked first
    assert runner.main([str(tmp_path / "absent.ini"), "-o", str(tmp_path / "o")] + args) == 1
    err = capsys.readouterr().err
    assert err.startswith("n2d2 run: error: ") and message in err and "Traceback" not in err


def test_export_parameters_file(tmp_path):
    path = tmp_path / "params.ini"
    path.write_text("OptimizeBufferMemory=0\nMemoryManagerStrategy=OptimizeMaxHoleMaxLifetimeFirst\n"
                    "DilatedWeights=0\n")
    with pytest.warns(IniWarning, match="'OptimizeBufferMemory' changes nothing"):
        values = read_export_parameters(str(path))
    assert values == {"OptimizeBufferMemory": False, "MemoryManagerStrategy": "OptimizeMaxHoleMaxLifetimeFirst",
                      "DilatedWeights": False}
    path.write_text("MemoryAlignment=4\nDilatedWeights=1\n")
    with pytest.raises(IniError, match=r"params.ini:2: .*DilatedWeights=1 is not supported"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", IniWarning)
            read_export_parameters(str(path))
    path.write_text("OptimiseBufferMemory=1\n")
    with pytest.raises(IniError, match="unknown export parameter 'OptimiseBufferMemory'"):
        read_export_parameters(str(path))


def test_folder_names():
    assert export_folder_name("CPP", 8) == "export_CPP_int8"
    assert export_folder_name("CPP_STM32", 4) == "export_CPP_STM32_int4"
    assert export_folder_name("C", -32) == "export_C_float32"
