"""`onnx` stays optional below the ONNX frontends, and the ONNX errors live in one place.

The errors (and `_onnx()`) sit in `n2d2.frontends.onnx_errors`, below `onnx_import`, so that
`onnx_limits` and `onnx_export` (which `DeepNetCell` imports) need not import the importer;
`onnx_import` re-exports them. `onnx_import` itself imports `n2d2.onnx_backend` (which imports
onnx) only when a generic node is converted: the INI builder imports `onnx_import` for its
[onnx] sections, and INI networks must not need onnx.
"""
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HEAVY = ("onnx", "onnxruntime", "torch", "cupy", "mpi4py", "matplotlib")


def _python(code: str) -> str:
    env = dict(os.environ, PYTHONPATH=ROOT)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.mark.parametrize("module", ["n2d2.frontends.onnx_import", "n2d2.frontends.ini.builder",
                                    "n2d2.frontends.onnx_export", "n2d2.cells.deepnet_cell", "n2d2.export"])
def test_frontends_do_not_load_optional_packages_on_import(module):
    out = _python(f"import sys, {module}\n"
                  f"print(sorted({{m.split('.')[0] for m in sys.modules}} & set({HEAVY!r})))\n")
    assert out.strip() == "[]", f"import {module} loads {out.strip()}"


def test_frontends_import_without_onnx_and_say_what_is_missing():
    out = _python("import sys\n"
                  "sys.modules['onnx'] = None  # as if not installed\n"
                  "import n2d2.frontends.ini.builder, n2d2.frontends.onnx_import, n2d2.export\n"
                  "from n2d2.frontends.onnx_import import _onnx\n"
                  "try:\n"
                  "    _onnx()\n"
                  "except RuntimeError as e:\n"
                  "    print(e)\n")
    assert "needs the 'onnx' package" in out


def test_errors_are_reexported_by_onnx_import():
    from n2d2.error_handler import ModelFileError
    from n2d2.frontends import onnx_errors, onnx_export, onnx_import, onnx_limits

    for name in ("ONNXError", "ONNXFormatError", "ONNXUnsupportedError", "_onnx"):
        assert getattr(onnx_import, name) is getattr(onnx_errors, name), name
    assert onnx_export.ONNXUnsupportedError is onnx_import.ONNXUnsupportedError
    assert issubclass(onnx_import.ONNXFormatError, onnx_import.ONNXError)
    assert issubclass(onnx_import.ONNXUnsupportedError, onnx_import.ONNXError)
    assert issubclass(onnx_import.ONNXError, ModelFileError)
    # the limits raise the importer's error class (caught as such by load_model's callers)
    with pytest.raises(onnx_import.ONNXFormatError, match="negative dimension"):
        onnx_limits.check_dims([2, -3], "tensor 'w'", 32)
    with pytest.raises(onnx_import.ONNXFormatError, match="rank 33"):
        onnx_limits.check_dims([1] * 33, "tensor 'w'", 32)
