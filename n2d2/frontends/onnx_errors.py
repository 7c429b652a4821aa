"""The ONNX frontends' errors and their access to the optional `onnx` package.

Kept apart from `onnx_import` so that the modules below it (`onnx_limits`, `onnx_export`, which
`DeepNetCell` imports) can raise them without importing the importer, which sits above
`DeepNetCell`; `onnx_import` re-exports them (`from n2d2.frontends.onnx_import import ONNXError`).
Imports numpy-free code only: `onnx` loads when `_onnx()` is called.
"""
from n2d2.error_handler import ModelFileError


class ONNXError(ModelFileError):
    """Base of the ONNX frontend errors; the message names the file and, where one is at fault,
    the node (its name, op type and first output)."""


class ONNXFormatError(ONNXError):
    """The file is not a valid ONNX model (unreadable, truncated, rejected by the checker or
    by shape inference, refers to tensors that do not exist)."""


class ONNXUnsupportedError(ONNXError):
    """A valid model that n2d2 cannot represent exactly; the message says what is supported."""


def _onnx():
    try:
        import onnx
    except ImportError:
        raise RuntimeError("ONNX import needs the 'onnx' package (pip install n2d2[onnx])") from None
    return onnx


def _first_line(e) -> str:
    """An exception as one short line for an error message (its type, its first lines)."""
    text = str(e).strip()
    lines = [ln for ln in text.splitlines() if ln.strip()]
    return f"{type(e).__name__}: " + (" ".join(lines[:3]) if lines else "(no message)")
