"""Which compiled module runs a call, and what the build contains.

Layout, top-down: ``cli -> train -> nn / optim / torch -> ops -> backend ->
_core (CPU) / _cuda, _cuda_blas (GPU)``. This module is the bottom Python
layer: :func:`module_for` is the one dispatcher between the CPU and the GPU
(``_core`` itself for NumPy arrays, a :class:`CudaModule` adapter with
``_core``'s method names for GPU arrays), and the array helpers the layers
above use to make state buffers in a parameter's own library and device.
Nothing here imports anything above it.
"""

from __future__ import annotations

import importlib.util
import math
import os

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


# The device query's CUDA error codes (cudaError_t) in plain words: what a
# user without a GPU (or with a broken setup) needs to read, instead of the
# runtime's text ("CUDA driver version is insufficient for CUDA runtime
# version" is what a machine with no driver at all gets).
_CUDA_ERRORS = {
    2: "out of memory while starting CUDA",
    3: "the CUDA driver failed to initialise",
    34: "no CUDA driver (only its stub library was found)",
    35: "no CUDA driver (or one older than this build's CUDA runtime {runtime})",
    46: "the CUDA devices are busy or unavailable (exclusive-process mode?)",
    100: "no CUDA device",
    101: "no CUDA device among those CUDA_VISIBLE_DEVICES names",
    222: "the CUDA driver is older than this build's CUDA runtime {runtime} (PTX too new)",
    803: "the CUDA driver and its kernel module have different versions (reboot or reinstall)",
    804: "this GPU does not support CUDA forward compatibility (driver older than runtime {runtime})",
    999: "unknown CUDA error (often missing GPU device nodes, e.g. a container started without them)",
}


def _runtime_name(version) -> str:
    """CUDART_VERSION (12040) as "12.4"."""
    if isinstance(version, int) and version > 0:
        return f"{version // 1000}.{version % 1000 // 10}"
    return "unknown"


def _cuda_status(raw: dict) -> dict:
    """The device query's result for build_info: ``device_count``, ``error``
    (the cudaError_t code, 0 for none), ``message`` (in plain words: "no
    CUDA driver", "no CUDA device", ...; empty when devices were found),
    ``runtime_message`` (the CUDA runtime's own text for the code, kept as
    it is) and ``runtime_version`` (CUDART_VERSION, e.g. 12040)."""
    out = dict(raw)
    code, count = out.get("error", 0), out.get("device_count", 0)
    out["runtime_message"] = out.get("message", "")
    runtime = _runtime_name(out.get("runtime_version"))
    if isinstance(code, int) and code in _CUDA_ERRORS:
        words = _CUDA_ERRORS[code].format(runtime=runtime)
    elif code:
        words = f"CUDA error {code}: {out['runtime_message'] or 'no description'}"
    elif not count:
        words = "no CUDA device"
    else:
        words = ""
    out["message"] = words
    return out


def build_info() -> dict:
    """What this build is and what it found at run time.

    Keys: ``version``, ``simd`` (the SIMD level the kernels dispatch to on this
    CPU: ``avx512f``, ``avx2`` or ``baseline``), ``num_threads``, ``openmp``
    (the OpenMP version date), ``compiler``, ``cuda_built``, ``cuda_blas_built``
    (the dense layers' module on cuBLASLt),
    ``cuda_available`` and ``cuda_status``: the device query's result,
    ``device_count``, ``error`` (the CUDA error code), ``message`` (why no
    device is usable, in plain words: "no CUDA driver", "no CUDA device",
    ...), ``runtime_message`` (the CUDA runtime's own text) and
    ``runtime_version``; without the CUDA module, ``error`` and ``message``
    say why (built without CUDA, or its import error).
    """
    info = {"version": __version__}
    info.update(_core.build_info())
    info["cuda_built"] = _cuda is not None
    # the dense layers' module, found without importing it (it opens cuBLASLt
    # only at the first dense call on the GPU)
    info["cuda_blas_built"] = importlib.util.find_spec("fusedtrain._cuda_blas") is not None
    info["cuda_available"] = cuda_available()
    if _cuda is not None:
        info["cuda_status"] = _cuda_status(dict(_cuda.status()))
    else:
        why = _cuda_import_error or "built without CUDA"
        info["cuda_status"] = {"error": why, "message": why}
    return info


# ---------------------------------------------------------------------------
# the dispatcher: which module runs a kernel on arrays like the first one
# ---------------------------------------------------------------------------
def module_for(first, name: str = "params[0]") -> object:
    """What runs kernels on arrays like ``first`` (the argument called ``name``).

    This is the one place that decides CPU or GPU. A ``numpy.ndarray`` gets
    ``_core`` itself (one isinstance check: the CPU path pays nothing for the
    GPU's existence). An object exposing ``__cuda_array_interface__`` (a CuPy
    array, a torch CUDA tensor) gets a :class:`CudaModule`: the same method
    names and positional arguments as ``_core`` -- optimizer steps, losses,
    dropout, dense layers, batch / layer normalization, norms and clipping -- calling ``_cuda`` /
    ``_cuda_blas`` with the outputs allocated, the workspace and the caller's
    current stream added. The compiled modules check every array of the call,
    with the CPU path's messages, before they launch anything, so a NumPy
    array mixed into a GPU call raises TypeError naming it ("grads[2]:
    expected a GPU array like params[0], received numpy.ndarray"); a NumPy
    call with a GPU array in it is rejected the same way by ``_core``.
    Without the CUDA module the GPU call raises RuntimeError here; without a
    device, after the argument checks.
    """
    if isinstance(first, np.ndarray):
        return _core
    if _has_cai(first):
        if _cuda is None:
            raise RuntimeError(
                f"{name} is a GPU array, but fusedtrain was built without CUDA "
                f"({_cuda_import_error or 'no CUDA compiler at build time'}); rebuild with nvcc "
                "on PATH (-Ccmake.define.FUSEDTRAIN_CUDA=ON) or pass NumPy arrays")
        return CudaModule(first)
    raise TypeError(
        f"{name}: expected a numpy.ndarray or a GPU array (an object with "
        f"__cuda_array_interface__), received {type(first).__module__}.{type(first).__name__}")


def _is_torch(x) -> bool:
    return type(x).__module__.startswith("torch")


def _has_cai(x) -> bool:
    """x is a GPU array. A torch CUDA tensor counts even when it requires
    grad (torch then refuses it a __cuda_array_interface__: see _plain)."""
    if _is_torch(x):
        return bool(getattr(x, "is_cuda", False))
    return hasattr(x, "__cuda_array_interface__")


def _plain(x):
    """What the kernels are given: a torch tensor that requires grad (an
    nn.Parameter) as ``x.detach()``, a view of the same memory that exposes
    ``__cuda_array_interface__`` (so in-place updates reach the parameter);
    anything else as it is."""
    return x.detach() if _is_torch(x) and x.requires_grad else x


def _plain_lists(args):
    return [[_plain(a) for a in v] if isinstance(v, (list, tuple)) else _plain(v) for v in args]


_cupy = None  # the cupy module once imported; False when it cannot be


def _cupy_module(required: bool = True):
    """CuPy, imported on first use (the only place fusedtrain imports it).
    None when it cannot be imported and ``required`` is False; RuntimeError
    saying how to install it when it is required."""
    global _cupy
    if _cupy is None:
        try:
            import cupy
        except Exception:  # not installed, or no usable CUDA runtime for it
            cupy = False
        _cupy = cupy
    if _cupy is False:
        if not required:
            return None
        raise RuntimeError("fusedtrain needs CuPy to allocate GPU outputs: "
                           'pip install "fusedtrain[cuda]" (or cupy-cuda13x)')
    return _cupy


def _current_stream(first) -> int:
    """The stream the caller works on, as an integer handle: torch's current
    stream for a torch tensor, else CuPy's current stream when CuPy imports,
    else 0 (the legacy default stream)."""
    if _is_torch(first):
        import torch

        return int(torch.cuda.current_stream(first.device).cuda_stream)
    cp = _cupy_module(required=False)
    return 0 if cp is None else int(cp.cuda.get_current_stream().ptr)


_device_present = None


def _has_device() -> bool:
    global _device_present
    if _device_present is None:
        _device_present = cuda_available()
    return _device_present


def _device_id(x) -> int:
    """The CUDA device of a CuPy array or torch tensor; CuPy's current device
    for other GPU arrays."""
    if _is_torch(x):
        return int(x.device.index)
    dev = getattr(x, "device", None)
    if dev is not None and hasattr(dev, "id"):
        return int(dev.id)
    return int(_cupy_module().cuda.runtime.getDevice())


# Reduction scratch, one buffer per (library, device, stream), grown by
# doubling: a loss call in a training loop allocates nothing after the first.
# Calls on one stream are ordered, so they can share it; the losses wait for
# their stream before they return, so the buffer is free again by then.
_workspaces: dict = {}

_TORCH_DTYPES = {"<f4": "float32", "<f8": "float64", "|b1": "bool", "|u1": "uint8"}


class CudaModule:
    """The GPU's adapter: ``_core``'s kernels under ``_core``'s names and
    positional arguments, run by ``_cuda`` (``_cuda_blas`` for the dense
    layers). It adds what the GPU call needs and the CPU call does not: the
    caller's current stream (appended after every positional argument), the
    allocator of missing outputs (CuPy, or torch for torch tensors, on the
    first array's device) and the cached reduction workspace.

    The optimizer steps and ``found_nonfinite_`` end their positional
    arguments with ``dry_run`` (the bindings' convention, shared with
    ``_core``): a dry run checks every argument and launches nothing, so it
    needs no stream and no device. Without a device a real call still checks
    every argument, then raises RuntimeError.
    """

    __slots__ = ("_first", "_torch", "_stream_handle")

    def __init__(self, first):
        self._first = first
        self._torch = _is_torch(first)
        self._stream_handle = None

    def _stream(self, dry_run=False) -> int:
        if dry_run or not _has_device():
            return 0  # nothing will be launched (_cuda raises without a device)
        if self._stream_handle is None:
            self._stream_handle = _current_stream(self._first)
        return self._stream_handle

    # ------------------------------------------------ optimizer steps
    def _step(self, kernel, args, kwargs):
        if self._torch:
            args = _plain_lists(args)
            kwargs = dict(zip(kwargs, _plain_lists(tuple(kwargs.values()))))
        return kernel(*args, self._stream(args[-1]), **kwargs)

    def adam_(self, *args, **kwargs):
        return self._step(_cuda.adam_, args, kwargs)

    def sgd_(self, *args, **kwargs):
        return self._step(_cuda.sgd_, args, kwargs)

    def rmsprop_(self, *args, **kwargs):
        return self._step(_cuda.rmsprop_, args, kwargs)

    def adagrad_(self, *args, **kwargs):
        return self._step(_cuda.adagrad_, args, kwargs)

    def found_nonfinite_(self, arrays, out, dry_run=False):
        return self._step(_cuda.found_nonfinite_, (arrays, out, dry_run), {})

    # ------------------------------------------------ norms and clipping
    def global_norm(self, grads, p):
        """The norm as a 0-d float64 GPU array (computed without synchronising)."""
        grads = [_plain(g) for g in grads]
        out = self._empty((), "<f8")
        _cuda.global_norm(grads, p, out, self._stream())
        return out

    def clip_grad_norm_(self, grads, max_norm, p, error_if_nonfinite):
        """As ``_core.clip_grad_norm_``: returns the total norm (a 0-d
        float64 GPU array); scales nothing when error_if_nonfinite and the
        norm is not finite (then read on the host)."""
        grads = [_plain(g) for g in grads]
        total = self._empty((), "<f8")
        _cuda.clip_by_norm_(grads, total, max_norm, True, 0)  # the checks, first
        stream = self._stream()
        _cuda.global_norm(grads, p, total, stream)
        if error_if_nonfinite and not math.isfinite(float(total)):
            return total
        _cuda.clip_by_norm_(grads, total, max_norm, False, stream)
        return total

    def clamp_(self, grads, low, high):
        _cuda.clamp_([_plain(g) for g in grads], low, high, False, self._stream())

    # ------------------------------------------------ allocation
    def _empty(self, shape, typestr):
        dtype = np.dtype(typestr)
        if self._torch:
            import torch

            tdt = getattr(torch, _TORCH_DTYPES[dtype.str])
            return torch.empty(tuple(shape), dtype=tdt, device=self._first.device)
        cp = _cupy_module()
        with cp.cuda.Device(_device_id(self._first)):
            return cp.empty(tuple(shape), dtype=dtype)

    def _workspace(self, nbytes):
        key = (self._torch, _device_id(self._first), self._stream())
        buf = _workspaces.get(key)
        if buf is None or buf.__cuda_array_interface__["shape"][0] < nbytes:
            size = max(int(nbytes), 4096)
            if buf is not None:
                size = max(size, 2 * buf.__cuda_array_interface__["shape"][0])
            buf = self._empty((size,), "|u1")
            _workspaces[key] = buf
        return buf

    # ------------------------------------------------ losses, dropout, dense
    def softmax_cross_entropy(self, logits, labels, weight, out, ignore_index, label_smoothing,
                              reduction):
        logits, labels, weight, out = map(_plain, (logits, labels, weight, out))
        return _cuda.softmax_cross_entropy(logits, labels, weight, out, ignore_index,
                                           label_smoothing, reduction, self._empty,
                                           self._workspace, False, self._stream())

    def bce_with_logits(self, logits, targets, reduction):
        logits, targets = _plain(logits), _plain(targets)
        return _cuda.bce_with_logits(logits, targets, reduction, self._empty, self._workspace,
                                     False, self._stream())

    def mse(self, pred, target, reduction):
        pred, target = _plain(pred), _plain(target)
        return _cuda.mse(pred, target, reduction, self._empty, self._workspace, False,
                         self._stream())

    def dropout(self, x, p, seed, offset, out, mask_out):
        x, out, mask_out = map(_plain, (x, out, mask_out))
        return _cuda.dropout(x, p, seed, offset, out, mask_out, self._empty, False,
                             self._stream())

    def dropout_backward(self, dy, mask, p, out):
        dy, mask, out = map(_plain, (dy, mask, out))
        return _cuda.dropout_backward(dy, mask, p, out, self._empty, False, self._stream())

    # ------------------------------------------------ batch / layer normalization
    def batch_norm_forward(self, x, weight, bias, running_mean, running_var, training, momentum,
                           eps, code, slope, out):
        x, weight, bias, running_mean, running_var, out = map(
            _plain, (x, weight, bias, running_mean, running_var, out))
        return _cuda.batch_norm_forward(x, weight, bias, running_mean, running_var, training,
                                        momentum, eps, code, slope, out, self._empty,
                                        self._workspace, False, self._stream())

    def batch_norm_backward(self, dy, x, mean, rstd, s, weight, code, slope, dx_out,
                            dweight_out, dbias_out, accumulate):
        dy, x, mean, rstd, s, weight, dx_out, dweight_out, dbias_out = map(
            _plain, (dy, x, mean, rstd, s, weight, dx_out, dweight_out, dbias_out))
        return _cuda.batch_norm_backward(dy, x, mean, rstd, s, weight, code, slope, dx_out,
                                         dweight_out, dbias_out, accumulate, self._empty,
                                         self._workspace, False, self._stream())

    def layer_norm_forward(self, x, weight, bias, eps, out):
        x, weight, bias, out = map(_plain, (x, weight, bias, out))
        return _cuda.layer_norm_forward(x, weight, bias, eps, out, self._empty, False,
                                        self._stream())

    def layer_norm_backward(self, dy, x, mean, rstd, weight, dx_out, dweight_out, dbias_out,
                            accumulate):
        dy, x, mean, rstd, weight, dx_out, dweight_out, dbias_out = map(
            _plain, (dy, x, mean, rstd, weight, dx_out, dweight_out, dbias_out))
        return _cuda.layer_norm_backward(dy, x, mean, rstd, weight, dx_out, dweight_out,
                                         dbias_out, accumulate, self._empty, self._workspace,
                                         False, self._stream())

    def dense_forward(self, x, w, b, out, code, slope):
        x, w, b, out = map(_plain, (x, w, b, out))
        blas = _cuda_blas_module()
        if not blas.loaded():  # check the arguments, then say what is missing
            blas.dense_forward(x, w, b, out, code, slope, None, None, True, 0)
            _require_cublaslt(blas)
        return blas.dense_forward(x, w, b, out, code, slope, self._empty, self._workspace, False,
                                  self._stream())

    def dense_backward(self, dy, x, w, saved, code, slope, need_dx, dw_out, db_out, accumulate,
                       dx_out, workspace):
        blas = _cuda_blas_module()
        args = tuple(map(_plain, (dy, x, w, saved, code, slope, need_dx, dw_out, db_out,
                                  accumulate, dx_out, workspace)))
        if not blas.loaded():
            blas.dense_backward(*args, None, None, True, 0)
            _require_cublaslt(blas)
        return blas.dense_backward(*args, self._empty, self._workspace, False, self._stream())


# ---------------------------------------------------------------------------
# cuBLASLt for the dense layers: _cuda_blas is imported at the first dense
# call on GPU arrays, and opens libcublasLt from the nvidia-cublas wheel (the
# "cuda" extra) or a CUDA installation
# ---------------------------------------------------------------------------
_CUBLASLT = "libcublasLt.so.13"
_INSTALL_HINT = 'pip install "fusedtrain[cuda]"'


def cublaslt_candidates() -> list:
    """Where libcublasLt may be, in the order tried: the nvidia-cublas wheel
    (CUDA 13 wheels keep their libraries in nvidia/cu13/lib; nvidia/cublas/lib
    as the CUDA 12 wheels did), $CUDA_HOME / $CUDA_PATH, /usr/local/cuda, and
    last '' -- the dynamic loader's own search (LD_LIBRARY_PATH, ldconfig)."""
    paths = []
    spec = importlib.util.find_spec("nvidia")
    for base in (spec.submodule_search_locations or []) if spec is not None else []:
        paths += [os.path.join(base, sub, "lib", _CUBLASLT) for sub in ("cu13", "cublas")]
    for env in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(env):
            paths.append(os.path.join(os.environ[env], "lib64", _CUBLASLT))
    paths.append(os.path.join("/usr/local/cuda/lib64", _CUBLASLT))
    return [p for p in paths if os.path.exists(p)] + [""]


_cuda_blas = None
_cublaslt_error = None  # why loading failed, once tried


def _cuda_blas_module():
    """The _cuda_blas module, imported (and cuBLASLt loaded) on first use."""
    global _cuda_blas, _cublaslt_error
    if _cuda_blas is None:
        try:
            from . import _cuda_blas as blas
        except ImportError as exc:
            raise RuntimeError(
                "dense layers on the GPU need fusedtrain's _cuda_blas module, which is not "
                f"available ({exc}); rebuild with nvcc on PATH "
                "(-Ccmake.define.FUSEDTRAIN_CUDA=ON) or pass NumPy arrays") from None
        _cublaslt_error = blas.load(cublaslt_candidates()) or None
        _cuda_blas = blas
    return _cuda_blas


def _require_cublaslt(blas) -> None:
    if not blas.loaded():
        raise RuntimeError(
            f"dense layers on the GPU need cuBLASLt ({_CUBLASLT}, from the nvidia-cublas "
            f"wheel), which could not be loaded: {_cublaslt_error}. Install it with: "
            f"{_INSTALL_HINT}")


# ---------------------------------------------------------------------------
# array helpers for the optimizer objects: state buffers made by the
# parameter's own library, on its device
# ---------------------------------------------------------------------------
_FLOAT_TYPESTRS = {"<f4": "float32", "<f8": "float64"}


def is_gpu_array(x) -> bool:
    return not isinstance(x, np.ndarray) and _has_cai(x)


def computes_in_double(x) -> bool:
    """Whether the kernels' arithmetic for parameters like ``x`` is float64
    (float64 parameters) rather than float32 (float32, float16, bfloat16)."""
    if isinstance(x, np.ndarray):
        return x.dtype == np.float64
    if _is_torch(x):
        return str(x.dtype) == "torch.float64"
    cai = getattr(x, "__cuda_array_interface__", None)
    return isinstance(cai, dict) and cai.get("typestr") == "<f8"


def is_array(x) -> bool:
    """A NumPy array or a GPU array (CuPy array, torch CUDA tensor)."""
    return isinstance(x, np.ndarray) or _has_cai(x)


def gpu_array_problem(x) -> str | None:
    """Why a GPU array cannot be a parameter (updated in place), or None:
    float32/float64, C-contiguous, writable -- read from its interface."""
    cai = _plain(x).__cuda_array_interface__
    typestr = cai.get("typestr")
    if typestr not in _FLOAT_TYPESTRS:
        try:
            name = np.dtype(typestr).name
        except TypeError:
            name = repr(typestr)
        return f"expected dtype float32 or float64, received {name}"
    strides = cai.get("strides")
    shape = tuple(cai.get("shape", ()))
    contiguous = True
    if strides is not None:
        expect = np.dtype(typestr).itemsize
        for extent, stride in zip(reversed(shape), reversed(tuple(strides))):
            if extent != 1 and stride != expect:
                contiguous = False
            expect *= extent
        contiguous = contiguous or 0 in shape
    if not contiguous or cai.get("data", (0, False))[1]:
        return "expected a writable C-contiguous array (updated in place)"
    return None


def full_like(p, fill):
    """An array of p's shape, dtype, library and device filled with `fill`."""
    if isinstance(p, np.ndarray):
        return np.full_like(p, fill)
    if _is_torch(p):
        import torch

        return torch.full_like(p, fill, memory_format=torch.contiguous_format)
    cp = _cupy_module()
    with cp.cuda.Device(_device_id(p)):
        return cp.full(tuple(p.shape), fill, dtype=np.dtype(p.__cuda_array_interface__["typestr"]))


def to_host(a) -> np.ndarray:
    """A NumPy copy of a NumPy, CuPy or torch array (what state_dict files hold)."""
    if isinstance(a, np.ndarray):
        return a
    if _is_torch(a):
        return a.detach().cpu().numpy()
    if hasattr(a, "__cuda_array_interface__"):
        return _cupy_module().asnumpy(a)
    return np.asarray(a)


def copy_like(p, value):
    """A new C-contiguous array with value's contents in p's library, dtype
    and device (value: a NumPy, CuPy or torch array of p's shape)."""
    if isinstance(p, np.ndarray):
        return np.array(to_host(value), dtype=p.dtype, order="C")
    if _is_torch(p):
        import torch

        src = value if _is_torch(value) else torch.from_numpy(np.ascontiguousarray(to_host(value)))
        return src.to(device=p.device, dtype=p.dtype, copy=True).contiguous()
    cp = _cupy_module()
    with cp.cuda.Device(_device_id(p)):
        src = value if hasattr(value, "__cuda_array_interface__") else to_host(value)
        return cp.array(src, dtype=np.dtype(p.__cuda_array_interface__["typestr"]), order="C")


def copy_array(a):
    """A copy of a NumPy, CuPy or torch array (other values as they are)."""
    if _is_torch(a):
        return a.clone()
    return a.copy() if is_array(a) else a
