"""Which compiled module runs a call, and what the build contains."""

from __future__ import annotations

import numpy as np

from . import _core
from ._version import __version__

try:  # the CUDA module is optional at build time and at run time
    from . import _cuda
except ImportError as exc:  # built without CUDA, or its import failed
    _cuda = None
    _cuda_import_error = str(exc)
else:
    _cuda_import_error = None


def cuda_available() -> bool:
    """True when the CUDA module was built and a CUDA device can be used.

    Never raises: without a driver or a device it returns False.
    """
    if _cuda is None:
        return False
    try:
        return bool(_cuda.is_available())
    except Exception:
        return False


def set_num_threads(n: int) -> None:
    """Set the number of threads the CPU kernels use (n >= 1)."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)):
        raise TypeError(f"n: expected an int >= 1, received {type(n).__name__}")
    _core.set_num_threads(int(n))


def get_num_threads() -> int:
    """Number of threads the CPU kernels use."""
    return _core.get_num_threads()


def build_info() -> dict:
    """What this build is and what it found at run time.

    Keys: ``version``, ``simd`` (the SIMD level the kernels dispatch to on this
    CPU: ``avx512f``, ``avx2`` or ``baseline``), ``num_threads``, ``openmp``
    (the OpenMP version date), ``compiler``, ``cuda_built``,
    ``cuda_available`` and ``cuda_status`` (the device query's result).
    """
    info = {"version": __version__}
    info.update(_core.build_info())
    info["cuda_built"] = _cuda is not None
    info["cuda_available"] = cuda_available()
    if _cuda is not None:
        info["cuda_status"] = dict(_cuda.status())
    else:
        info["cuda_status"] = {"error": _cuda_import_error or "built without CUDA"}
    return info


def module_for(first) -> object:
    """The compiled module that runs kernels on arrays like `first`."""
    if isinstance(first, np.ndarray):
        return _core
    raise TypeError(
        "params[0]: expected a numpy.ndarray, received " f"{type(first).__module__}.{type(first).__name__}"
    )
