"""Gradient clipping: the global norm of a list of gradients, clipping by
that norm (torch.nn.utils.clip_grad_norm_) and clipping by value
(torch.nn.utils.clip_grad_value_), in place, over NumPy arrays (the CPU
kernels) or GPU arrays (CuPy arrays, torch CUDA tensors: the CUDA kernels).

All arrays of one call share one dtype (float32 or float64) and are
C-contiguous; clipping writes them in place, so they must be writable and
must not share memory. Nothing is converted, and a call that raises has
changed nothing.

Re-exported by :mod:`fusedtrain.ops`; every call goes through
:func:`fusedtrain.backend.module_for`, which picks ``_core`` or the GPU
adapter (whose norm and clipping methods take ``_core``'s arguments).
"""

from __future__ import annotations

import math

from typing import TYPE_CHECKING, overload

from . import _validate as V
from .backend import is_array, module_for

if TYPE_CHECKING:
    from collections.abc import Sequence
    from typing import Any

    from numpy.typing import NDArray

    from .ops import Arrays, GpuArray

__all__ = ["global_norm", "clip_grad_norm_", "clip_grad_value_"]


def _grads(grads) -> list:
    if isinstance(grads, (list, tuple)):
        return list(grads)
    if is_array(grads):
        return [grads]
    raise TypeError("grads: expected an array or a list of arrays, received "
                    f"{type(grads).__module__}.{type(grads).__name__}")


def _norm_type(value) -> float:
    if isinstance(value, str) and value.strip().lower() in ("inf", "+inf"):
        return math.inf
    p = V.real("norm_type", value)
    if not p > 0:
        raise ValueError(f"norm_type must be a number > 0 or inf; received {value!r}")
    return p


def _foreach(value) -> None:
    if value is not None and value is not True and value is not False:
        raise TypeError(f"foreach must be None or a bool; received {type(value).__name__} {value!r}")


def _module(first):
    """module_for(grads[0]), with a hint for a torch CPU tensor."""
    try:
        return module_for(first, "grads[0]")
    except TypeError as exc:
        if type(first).__module__.startswith("torch"):
            raise TypeError(f"{exc} (pass tensor.numpy(), or use fusedtrain.torch.clip_grad_norm_ "
                            "on parameters)") from None
        raise


@overload
def global_norm(grads: NDArray[Any] | Sequence[NDArray[Any]], norm_type: float = 2.0) -> float: ...
@overload
def global_norm(grads: GpuArray | Sequence[GpuArray], norm_type: float = 2.0) -> GpuArray: ...
def global_norm(grads: Arrays, norm_type: float = 2.0) -> float | GpuArray:
    """The ``norm_type``-norm of all elements of ``grads`` taken together.

    ``||g||_p = (sum over every element x of every array |x|^p)^(1/p)``;
    norm_type=inf gives ``max |x|``. Default norm_type=2.0. Equal to
    torch.nn.utils.get_total_norm (the norm of the per-array norms).

    One pass over memory. The sum is accumulated in float64 in a fixed
    blocked order (csrc/include/fusedtrain/norm_math.h), so the result is the
    same bits for any number of threads, and on the GPU the same bits as on
    the CPU (norm types 1, 2 and inf). A NaN anywhere gives NaN, an inf gives
    inf (NaN wins for norm_type=inf too). Empty arrays add nothing (torch
    raises for norm_type=inf on an empty tensor).

    Returns a Python float for NumPy arrays, a 0-d float64 GPU array
    (computed without synchronising) for GPU arrays; 0.0 for an empty list.
    """
    p = _norm_type(norm_type)
    grads = _grads(grads)
    if not grads:
        return 0.0
    return _module(grads[0]).global_norm(grads, p)


def _nonfinite_error(p: float) -> RuntimeError:
    return RuntimeError(
        f"clip_grad_norm_: the total norm of order {p:g} of the gradients is non-finite "
        "(NaN or inf), so it cannot be clipped; the gradients were left unchanged. Pass "
        "error_if_nonfinite=False to scale them by the non-finite norm anyway, as torch does")


@overload
def clip_grad_norm_(grads: NDArray[Any] | Sequence[NDArray[Any]], max_norm: float,
                    norm_type: float = 2.0, error_if_nonfinite: bool = False,
                    foreach: bool | None = None) -> float: ...
@overload
def clip_grad_norm_(grads: GpuArray | Sequence[GpuArray], max_norm: float,
                    norm_type: float = 2.0, error_if_nonfinite: bool = False,
                    foreach: bool | None = None) -> GpuArray: ...
def clip_grad_norm_(grads: Arrays, max_norm: float, norm_type: float = 2.0,
                    error_if_nonfinite: bool = False,
                    foreach: bool | None = None) -> float | GpuArray:
    """Scale ``grads`` in place so that their global norm is at most ``max_norm``.

    As torch.nn.utils.clip_grad_norm_::

        total = global_norm(grads, norm_type)
        coef = min(max_norm / (total + 1e-6), 1)      (in the gradients' dtype)
        g = g * coef                                  for every gradient

    and returns ``total``: a Python float (float64 accumulation) for NumPy
    arrays, a 0-d float64 GPU array for GPU arrays. Defaults:
    norm_type=2.0, error_if_nonfinite=False. The coefficient is computed as
    torch computes it, ``max_norm * (1 / (total + 1e-6))`` clamped at 1 in
    float32 for float32 gradients, so the clipped values match torch's.

    Non-finite norms follow torch: with error_if_nonfinite=True a NaN or inf
    norm raises RuntimeError and nothing is changed; otherwise a NaN norm
    makes every gradient NaN and an infinite norm multiplies them by 0.
    ``foreach`` is accepted for torch's signature and ignored (the kernel is
    always one fused call).

    Differences from torch: ``max_norm`` must be > 0 (ValueError; torch
    accepts 0 and negative values, which zero or flip the gradients). When
    the coefficient is exactly 1 the CPU skips the multiplication (x * 1 is
    x), saving a pass; the GPU always multiplies, reading the norm on the
    device with no synchronisation (unless error_if_nonfinite=True, which has
    to look at it on the host, as torch's does).
    """
    max_norm = V.real("max_norm", max_norm)
    if not max_norm > 0:
        raise ValueError(f"max_norm must be > 0 (the largest norm the gradients may keep); "
                         f"received {max_norm!r}")
    p = _norm_type(norm_type)
    error_if_nonfinite = V.flag("error_if_nonfinite", error_if_nonfinite)
    _foreach(foreach)
    grads = _grads(grads)
    if not grads:
        return 0.0
    # one call: every array checked (writable too), the norm, the scaling --
    # which is skipped when error_if_nonfinite and the norm is not finite
    total = _module(grads[0]).clip_grad_norm_(grads, max_norm, p, error_if_nonfinite)
    if error_if_nonfinite and not math.isfinite(float(total)):
        raise _nonfinite_error(p)  # nothing was scaled
    return total


def clip_grad_value_(grads: Arrays, clip_value: float, foreach: bool | None = None) -> None:
    """Clamp every element of ``grads`` to ``[-clip_value, clip_value]`` in place.

    As torch.nn.utils.clip_grad_value_: ``g = clamp(g, -clip_value,
    clip_value)``; NaN stays NaN, +-inf become +-clip_value. Returns None.
    ``foreach`` is accepted for torch's signature and ignored.

    Difference from torch: ``clip_value`` must be >= 0 (ValueError; torch
    accepts a negative value and then sets every element to it).
    """
    c = V.real("clip_value", clip_value)
    if not c >= 0:
        raise ValueError(f"clip_value must be >= 0 (the largest magnitude kept); received {clip_value!r}")
    _foreach(foreach)
    grads = _grads(grads)
    if not grads:
        return None
    _module(grads[0]).clamp_(grads, -c, c)
    return None
