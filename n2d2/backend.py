"""Where arrays live: numpy on the host, CuPy on a CUDA device.

CuPy is imported lazily so that `import n2d2` needs numpy only. Every reference op in
`n2d2.ops` takes its array module from its inputs through `array_module`.
"""
import numpy as np

_cupy = None
_cupy_checked = False


def cupy_module():
    """Return the cupy module when it is importable and sees a device, else None."""
    global _cupy, _cupy_checked
    if not _cupy_checked:
        _cupy_checked = True
        try:
            import cupy  # noqa: PLC0415 (optional dependency)

            if cupy.cuda.runtime.getDeviceCount() > 0:
                _cupy = cupy
        except Exception:  # no cupy, no driver, or no device
            _cupy = None
    return _cupy


def cuda_available() -> bool:
    return cupy_module() is not None


class CudaUnavailableWarning(UserWarning):
    """A script-level CUDA setting was ignored because no CUDA device is usable here."""


def warn_cpu_fallback(setting: str, stacklevel: int = 3):
    """One warning naming `setting` (e.g. "default_model = 'Frame_CUDA'"): the CPU path is used."""
    import warnings

    warnings.warn(f"{setting}: CUDA is not available (CuPy with a visible device), using Frame (CPU) instead",
                  CudaUnavailableWarning, stacklevel=stacklevel)


def require_cupy():
    cp = cupy_module()
    if cp is None:
        raise RuntimeError("CUDA is not available: CuPy with a visible CUDA device is needed for this operation")
    return cp


def array_module(*arrays):
    """numpy, or cupy when any of `arrays` is a cupy array."""
    cp = _cupy
    if cp is not None:
        for a in arrays:
            if isinstance(a, cp.ndarray):
                return cp
    return np


def to_host(array):
    """A numpy view or copy of `array` (numpy arrays are returned as they are)."""
    if isinstance(array, np.ndarray):
        return array
    return array.get()


def to_device(array, on_gpu: bool):
    """`array` moved to the GPU (on_gpu) or the host."""
    if on_gpu:
        cp = require_cupy()
        return cp.asarray(array)
    return to_host(array)
