"""n2d2.export.export_cpp_stm32: LeNet int8 (and int4) as a bare-metal Cortex-M7 project. The ELF
links with arm-none-eabi-gcc (static arena, const weights: data + bss fit 512 KiB of RAM, text +
data 2 MiB of flash); the network code is the integer C export's, byte for byte; built for the
host (`make emulator`) it gives the integer simulation's outputs on the embedded stimuli, bit for
bit. Without arm-none-eabi-gcc the tests fail and say so (.ci/run installs it)."""
import os
import re
import shutil
import subprocess
import warnings

import numpy as np
import pytest

import n2d2
from n2d2.codegen.compiler import find_compiler
from n2d2.export import export_cpp, export_cpp_stm32, list_exportable_cell
from n2d2.quantization.ptq import quantize_network
from tests.conftest import trained_lenet

NB = 6          # embedded stimuli
RAM = 512 * 1024
FLASH = 2 * 1024 * 1024
CROSS = "arm-none-eabi-gcc"


def _require_cross():
    if shutil.which(CROSS) is None or shutil.which("arm-none-eabi-size") is None:
        pytest.fail(f"{CROSS} / arm-none-eabi-size not found: the STM32 export cannot be built. Install them with "
                    "`apt-get install -y --no-install-recommends gcc-arm-none-eabi libnewlib-arm-none-eabi` "
                    "(.ci/run does it)")


def _make(folder, *args):
    r = subprocess.run(["make", *args], cwd=folder, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, f"make {' '.join(args)} in {folder}:\n{r.stdout}\n{r.stderr}"
    return r.stdout + r.stderr


@pytest.fixture(scope="module")
def lenet():
    return trained_lenet(seed=2, steps=60, nb_test=NB)


def _export(dn, folder, nb_bits, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return export_cpp_stm32(dn, nb_bits=nb_bits, calibration=100, export_folder_name=folder,
                                export_nb_stimuli_max=NB, **kw)


def _sizes(stdout):
    m = re.search(r"^\s*(\d+)\s+(\d+)\s+(\d+)\s+\d+\s+[0-9a-f]+\s+bin/n2d2_stm32\.elf\s*$", stdout, re.M)
    assert m, f"no arm-none-eabi-size line in:\n{stdout}"
    return tuple(int(v) for v in m.groups())


def test_cross_compiler_is_installed():
    _require_cross()


@pytest.mark.parametrize("nb_bits, mode", [(8, "FLOAT_MULT"), (4, "DOUBLE_SHIFT")])
def test_lenet_stm32_links_and_its_code_equals_the_simulation(lenet, tmp_path, nb_bits, mode):
    _require_cross()
    if shutil.which("make") is None or find_compiler() is None:
        pytest.fail("make and a host C compiler are needed to build the STM32 export")
    folder = _export(lenet["dn"], str(tmp_path / f"stm32_{nb_bits}"), nb_bits, act_scaling_mode=mode)
    for rel in ("Makefile", "README.md", "stm32.ld", "src/startup.c", "src/main.c", "src/network.c",
                "include/network.h", "include/weights.h", "include/test_stimulus.h", "include/test_labels.h"):
        assert os.path.isfile(os.path.join(folder, rel)), rel
    assert not os.path.exists(os.path.join(folder, "stimuli"))
    code = "".join(re.sub(r"/\*.*?\*/", "", open(os.path.join(folder, "src", f)).read(), flags=re.S)
                   for f in ("network.c", "main.c", "startup.c"))
    for forbidden in ("malloc", "calloc", "fopen", "fread", "FILE"):
        assert re.search(rf"\b{forbidden}\b", code) is None, forbidden

    # the Cortex-M7 ELF, and its footprint
    text, data, bss = _sizes(_make(folder))
    elf = os.path.join(folder, "bin", "n2d2_stm32.elf")
    assert os.path.isfile(elf) and open(elf, "rb").read(4) == b"\x7fELF"
    assert data + bss <= RAM, (data, bss)
    assert text + data <= FLASH, (text, data)
    arena = int(re.search(r"#define NETWORK_ARENA_BYTES (\d+)", open(os.path.join(folder, "include", "network.h"))
                          .read()).group(1))
    assert bss >= arena
    print(f"\nLeNet int{nb_bits} {mode} STM32 ELF: text {text} data {data} bss {bss} (arena {arena})")
    # the network object alone needs no allocator, no I/O
    obj = str(tmp_path / f"network{nb_bits}.o")
    subprocess.run([CROSS, "-mcpu=cortex-m7", "-mthumb", "-mfloat-abi=hard", "-mfpu=fpv5-d16", "-O2", "-std=c11",
                    "-ffp-contract=off", "-Iinclude", "-c", "src/network.c", "-o", obj], cwd=folder, check=True)
    undefined = subprocess.run(["arm-none-eabi-nm", "-u", obj], capture_output=True, text=True, check=True).stdout
    names = {line.split()[-1] for line in undefined.splitlines() if line.strip()}
    # libc: string functions and trunc; libgcc: the EABI helpers (64-bit division, double -> int64)
    assert {n for n in names if not n.startswith("__aeabi_")} <= {"trunc", "memcpy", "memset", "memmove"}, names

    # the same code on the host: the simulation's outputs on the embedded stimuli
    _make(folder, "emulator")
    r = subprocess.run([os.path.join(folder, "bin", "n2d2_stm32_emulator")], cwd=folder, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        net = quantize_network(lenet["dn"], nb_bits=nb_bits, calibration=100, act_scaling_mode=mode)
    x, y = lenet["x"], lenet["y"]
    xq = net.quantize_input(x)
    ref = net.run(xq).reshape(NB, -1)
    out = np.array([[int(v) for v in line.split(":")[1].split()]
                    for line in r.stdout.splitlines() if line.startswith("outputs ")])
    assert out.shape == ref.shape, r.stdout
    assert np.array_equal(out, ref), int(np.sum(out != ref))
    assert np.std(ref) > 0
    predicted = [int(v) for v in re.findall(r"Predicted class: (\d+)\.", r.stdout)]
    assert predicted == np.argmax(ref, axis=1).tolist()
    success = int(re.search(r"Success: (\d+) / (\d+) scored", r.stdout).group(1))
    assert success == int(np.sum(np.argmax(ref, axis=1) == y))
    assert "Start benchmark." in r.stdout and "End benchmark." in r.stdout

    # the embedded stimuli are the simulation's quantized inputs, the labels the Test labels
    stim = open(os.path.join(folder, "include", "test_stimulus.h")).read()
    body = stim[stim.index("= {"):]
    values = [int(v) for v in re.findall(r"-?\d+", re.sub(r"/\*.*?\*/", "", body))]
    assert np.array_equal(np.array(values), xq.reshape(-1))
    labels = open(os.path.join(folder, "include", "test_labels.h")).read()
    assert [int(v) for v in re.findall(r"-?\d+", labels[labels.index("= {"):])] == y.tolist()

    # one generator: the network code is the integer C export's, byte for byte
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        host = export_cpp(lenet["dn"], nb_bits=nb_bits, calibration=100, act_scaling_mode=mode,
                          export_folder_name=str(tmp_path / f"host_{nb_bits}"), export_nb_stimuli_max=0)
    for rel in ("src/network.c", "include/weights.h", "include/network.h"):
        assert open(os.path.join(folder, rel)).read() == open(os.path.join(host, rel)).read(), rel


def test_folder_name_parameters_and_refusals(lenet, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        folder = export_cpp_stm32(lenet["dn"], lenet["provider"], optimize_buffer_memory=False, calibration=20,
                                  export_nb_stimuli_max=2)
    assert folder == str(tmp_path / "export_CPP_STM32_int8")
    assert "#define TEST_NB_STIMULI 2" in open(os.path.join(folder, "include", "test_stimulus.h")).read()
    # FLOAT_MULT is the default scaling, as export_cpp
    assert "FLOAT_MULT" in open(os.path.join(folder, "src", "network.c")).read()
    with pytest.raises(FileExistsError):
        export_cpp_stm32(lenet["dn"], calibration=20)
    with pytest.raises(NotImplementedError, match="float STM32"):
        export_cpp_stm32(lenet["dn"], nb_bits=-32)
    with pytest.raises(n2d2.error_handler.WrongInputType):
        export_cpp_stm32(lenet["dn"], optimize_buffer_memory="yes")
    with pytest.raises(n2d2.error_handler.WrongValue):
        export_cpp_stm32(lenet["dn"], calibration=20, act_scaling_mode="BOGUS", export_folder_name="x")


def test_no_stimulus_still_builds(lenet, tmp_path):
    _require_cross()
    folder = _export(lenet["dn"], str(tmp_path / "none"), 8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        folder = export_cpp_stm32(lenet["dn"], calibration=20, export_folder_name=folder, export_nb_stimuli_max=0,
                                  overwrite=True)
    assert "#define TEST_NB_STIMULI 0" in open(os.path.join(folder, "include", "test_stimulus.h")).read()
    _make(folder)
    _make(folder, "emulator")
    r = subprocess.run([os.path.join(folder, "bin", "n2d2_stm32_emulator")], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0 and "Success: 0 / 0 scored" in r.stdout


def test_list_exportable_cell_stm32(capsys):
    list_exportable_cell("CPP_STM32")
    table = capsys.readouterr().out
    assert re.search(r"^Conv\s+\| Yes \(integer\)", table, re.M)
