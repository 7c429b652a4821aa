"""A C program compiled as several translation units (gcc in parallel, then linked) computes
exactly what the one-unit build computes; small programs stay one unit."""
import numpy as np
import pytest

import n2d2
from n2d2.codegen import c_backend, compiler

pytestmark = pytest.mark.skipif(not c_backend.available(), reason="no C compiler")


def _lenet_step(batch=8):
    """One LeNet.ini training step (forward, loss seed, backward, SGD update) on the C backend;
    returns (program source, output, every parameter after the update)."""
    from n2d2.cells import Sequence, Softmax
    from n2d2.cells.deepnet_cell import training_graph
    from n2d2.codegen.programs import TrainingProgram
    from n2d2.ir.trace import trace
    from n2d2.models.lenet import LeNetINI
    from n2d2.solver import SGD

    n2d2.global_variables.seed = 1
    net = Sequence([LeNetINI(mapping=True), Softmax(with_loss=True)])
    net.set_solver(SGD(learning_rate=0.05, momentum=0.9, decay=0.0005))
    tg = training_graph(trace(net(n2d2.Tensor([batch, 1, 32, 32])).get_deepnet()).graph)
    program = TrainingProgram(tg, "c")
    rng = np.random.default_rng(0)
    x = rng.random((batch, 1, 32, 32), dtype=np.float32)
    y = program.forward({tg.graph.inputs[0]: x})[0].copy()
    program.backward({tg.graph.outputs[0]: y - rng.random(y.shape, dtype=np.float32)})
    program.update()
    params = {k: np.array(p.array) for k, p in tg.graph.params.items()}
    return program._c.source, y, params


def test_a_program_built_in_parts_computes_the_same(monkeypatch, tmp_path):
    monkeypatch.setenv("N2D2_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("N2D2_CC_JOBS", "1")
    whole_source, y1, p1 = _lenet_step()
    assert "#if N2D2_PART == " not in whole_source
    monkeypatch.setenv("N2D2_CC_JOBS", "3")
    monkeypatch.setattr(c_backend, "_PART_CHARS", 1)
    parts_source, y3, p3 = _lenet_step()
    assert "#if N2D2_PART == 2" in parts_source  # three units
    np.testing.assert_array_equal(y1, y3)
    assert p1.keys() == p3.keys()
    for k in p1:
        np.testing.assert_array_equal(p1[k], p3[k], err_msg=k)


def test_split_parts_balances_and_keeps_small_programs_whole(monkeypatch):
    monkeypatch.setenv("N2D2_CC_JOBS", "2")
    small = [{"body": "x" * 100} for _ in range(5)]
    assert c_backend.split_parts(small, 5) == 1 and {f["part"] for f in small} == {0}
    big = [{"body": "x" * n} for n in (30000, 20000, 9000, 2000)]
    assert c_backend.split_parts(big, 4) == 2
    load = [sum(len(f["body"]) for f in big if f["part"] == k) for k in (0, 1)]
    assert abs(load[0] - load[1]) <= 2000 + 200 * 4


def test_build_jobs_reads_the_environment(monkeypatch):
    monkeypatch.setenv("N2D2_CC_JOBS", "7")
    assert compiler.build_jobs() == 7
    monkeypatch.setenv("N2D2_CC_JOBS", "nonsense")
    assert 1 <= compiler.build_jobs() <= 4


def test_a_failing_part_reports_the_compiler_error(monkeypatch, tmp_path):
    monkeypatch.setenv("N2D2_CACHE", str(tmp_path / "cache"))
    source = "#if N2D2_PART == 1\nint broken( {\n#endif\nint n2d2_ok(void) { return 1; }\n"
    with pytest.raises(compiler.CompilerError, match="broken|error"):
        compiler.build_shared_library(source, "parts_fail", parts=2)


def test_immintrin_only_for_kernels_that_name_intrinsics(monkeypatch, tmp_path):
    """<immintrin.h> costs gcc ~0.2 s per unit: a program whose kernels name no intrinsic (LeNet)
    does not include it (runtime.c.j2's masked moves use GCC's builtins); one whose kernels do
    (depthwise convolutions on AVX-512) defines N2D2_INTRINSICS, which includes it."""
    import subprocess

    from n2d2.codegen.c_backend import _INTRINSIC

    monkeypatch.setenv("N2D2_CACHE", str(tmp_path / "cache"))
    source = _lenet_step()[0]
    assert "#define N2D2_INTRINSICS" not in source
    cc = compiler.find_compiler()
    pre = subprocess.run([cc, *compiler.default_flags(), "-E", "-x", "c", "-"], input=source, capture_output=True,
                         text=True, check=True).stdout
    assert "immintrin.h" not in pre
    assert _INTRINSIC.search("v = (n2d2_vfa)_mm512_maskz_loadu_ps((__mmask16)m, p);")
    assert not _INTRINSIC.search("n2d2_mm_rows(a); my_mm512(b);")


def test_split_parts_keeps_kernels_calling_the_same_runtime_helpers_together(monkeypatch):
    """A noinline GEMM helper costs gcc about as much as a kernel, once per unit that calls it:
    kernels calling the same helpers share a unit when the balance allows."""
    monkeypatch.setenv("N2D2_CC_JOBS", "2")
    monkeypatch.setattr(c_backend, "_PART_CHARS", 2000)
    # through an inline wrapper too: n2d2_gemm_rows calls the noinline n2d2_tile_rows
    assert c_backend._helpers_of("n2d2_gemm_rows(1, 2);") == {"n2d2_tile_rows"}
    assert c_backend._helpers_of("n2d2_tile(3);") == {"n2d2_tile"} and not c_backend._helpers_of("n2d2_keep(1, x);")
    fs = [{"body": call + ";" + "x" * (1000 + k)} for k, call in
          enumerate(["n2d2_tile(1)", "n2d2_gemm_rows(1)", "n2d2_tile(2)", "n2d2_gemm_rows(2)"])]
    assert c_backend.split_parts(fs, 4) == 2
    assert fs[0]["part"] == fs[2]["part"] != fs[1]["part"] == fs[3]["part"]
