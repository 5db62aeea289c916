"""Which compiled module runs a call, and what the build contains."""

from __future__ import annotations

import numpy as np

from . import _core
from ._version import __version__

try:  # the CUDA module is optional at build time and at run time
    from . import _cuda
except Exception as exc:  # built without CUDA, or its import failed (never fails the package import)
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


def set_flush_denormal(on: bool) -> None:
    """Flush subnormal numbers to zero in the CPU optimizer loops (default off).

    Optimizer states of weights whose gradient stays 0 (dead ReLU units,
    inputs that are always 0) decay into the subnormal range, where x86
    arithmetic is 10-100x slower; flushed, they become 0 (up to 15% faster
    epochs on MNIST-like data). Off (the default) gives exact IEEE results,
    as torch.optim; on, a subnormal state can meet eps = 0 as a zero.
    """
    if not isinstance(on, (bool, np.bool_)):
        raise TypeError(f"on: expected a bool, received {type(on).__name__}")
    _core.set_flush_denormal(bool(on))


def get_flush_denormal() -> bool:
    """Whether the CPU optimizer loops flush subnormal numbers to zero."""
    return _core.get_flush_denormal()


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
    """What runs kernels on arrays like ``first`` (the first parameter).

    A ``numpy.ndarray`` gets ``_core`` itself (one isinstance check: the CPU
    path pays nothing for the GPU's existence). An object exposing
    ``__cuda_array_interface__`` (a CuPy array, a torch CUDA tensor) gets an
    adapter with the same methods as ``_core`` (``adam_``, ``sgd_``,
    ``rmsprop_``, ``adagrad_``) that calls ``_cuda`` with the caller's
    current stream appended. ``_cuda`` checks every array of the call, with
    the CPU path's messages, before it launches anything, so a NumPy array
    mixed into a GPU call raises TypeError naming it ("grads[2]: expected a
    GPU array like params[0], received numpy.ndarray"); a NumPy call with a
    GPU array in it is rejected the same way by ``_core``. Without the CUDA
    module or without a device, the GPU call raises RuntimeError (after the
    argument checks).
    """
    if isinstance(first, np.ndarray):
        return _core
    if hasattr(first, "__cuda_array_interface__"):
        if _cuda is None:
            raise RuntimeError(
                "params[0] is a GPU array, but fusedtrain was built without CUDA "
                f"({_cuda_import_error or 'no CUDA compiler at build time'}); rebuild with nvcc "
                "on PATH (-Ccmake.define.FUSEDTRAIN_CUDA=ON) or pass NumPy arrays")
        return _CudaOps(first)
    raise TypeError(
        "params[0]: expected a numpy.ndarray or a GPU array (an object with "
        f"__cuda_array_interface__), received {type(first).__module__}.{type(first).__name__}"
    )


_cupy = None  # the cupy module once imported; False when it cannot be


def _current_stream(first) -> int:
    """The stream the caller works on, as an integer handle: torch's current
    stream for a torch tensor, else CuPy's current stream when CuPy imports,
    else 0 (the legacy default stream)."""
    global _cupy
    if type(first).__module__.startswith("torch"):
        import torch

        return int(torch.cuda.current_stream(first.device).cuda_stream)
    if _cupy is None:
        try:
            import cupy
        except Exception:  # not installed, or no usable CUDA runtime for it
            cupy = False
        _cupy = cupy
    if _cupy is False:
        return 0
    return int(_cupy.cuda.get_current_stream().ptr)


class _CudaOps:
    """``_cuda``'s optimizer steps under ``_core``'s signatures: every
    positional argument as ``_core`` takes it (ending with ``dry_run``), the
    stream appended here, keyword arguments passed on. A dry run needs no
    stream and no device."""

    __slots__ = ("_first",)

    def __init__(self, first):
        self._first = first

    def _stream(self, dry_run) -> int:
        if dry_run or not _has_device():
            return 0  # nothing will be launched (_cuda raises without a device)
        return _current_stream(self._first)

    def adam_(self, *args, **kwargs):
        return _cuda.adam_(*args, self._stream(args[-1]), **kwargs)

    def sgd_(self, *args, **kwargs):
        return _cuda.sgd_(*args, self._stream(args[-1]), **kwargs)

    def rmsprop_(self, *args, **kwargs):
        return _cuda.rmsprop_(*args, self._stream(args[-1]), **kwargs)

    def adagrad_(self, *args, **kwargs):
        return _cuda.adagrad_(*args, self._stream(args[-1]), **kwargs)

    def found_nonfinite_(self, arrays, out, dry_run=False):
        return _cuda.found_nonfinite_(arrays, out, dry_run, self._stream(dry_run))


_device_present = None


def _has_device() -> bool:
    global _device_present
    if _device_present is None:
        _device_present = cuda_available()
    return _device_present
