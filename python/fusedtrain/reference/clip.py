"""Plain NumPy gradient clipping: the readable definition of
fusedtrain.ops.global_norm, clip_grad_norm_ and clip_grad_value_.

The norm is accumulated in float64 with NumPy's own summation (a different
order from the kernels' fixed blocking, so agreement is to float64 rounding,
not bitwise); the clip coefficient is computed in the gradients' dtype as
torch.nn.utils.clip_grad_norm_ computes it.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["global_norm", "clip_coef", "clip_grad_norm", "clip_grad_value"]


def global_norm(grads, norm_type=2.0) -> float:
    """(sum of |x|^p over every element of every array)^(1/p); max |x| for
    p = inf. NaN anywhere gives NaN."""
    p = float(norm_type)
    xs = [np.abs(np.asarray(g, dtype=np.float64).ravel()) for g in grads]
    if not xs or all(x.size == 0 for x in xs):
        return 0.0
    x = np.concatenate(xs)
    if np.isnan(x).any():
        return math.nan
    if math.isinf(p):
        return float(x.max())
    if p == 2.0:
        return float(np.sqrt(np.sum(x * x)))
    if p == 1.0:
        return float(np.sum(x))
    return float(np.sum(x ** p) ** (1.0 / p))


def clip_coef(total_norm: float, max_norm: float, dtype) -> np.generic:
    """min(max_norm * (1 / (total_norm + 1e-6)), 1) in ``dtype``; NaN kept."""
    T = np.dtype(dtype).type
    with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
        coef = (T(1) / (T(total_norm) + T(1e-6))) * T(max_norm)
    return coef if not coef > T(1) else T(1)


def clip_grad_norm(grads, max_norm, norm_type=2.0, total_norm=None):
    """(clipped copies of grads, total norm): g * clip_coef(total, max_norm).
    ``total_norm`` replaces the computed norm (to compare the scaling alone
    with a kernel whose float64 sum rounds differently in the last place)."""
    total = global_norm(grads, norm_type) if total_norm is None else float(total_norm)
    out = []
    for g in grads:
        g = np.asarray(g)
        with np.errstate(invalid="ignore", over="ignore"):
            out.append(g * clip_coef(total, max_norm, g.dtype))
    return out, total


def clip_grad_value(grads, clip_value):
    """Clamped copies of grads: min(max(g, -c), c), NaN kept."""
    out = []
    for g in grads:
        g = np.asarray(g)
        T = g.dtype.type
        c = T(clip_value)
        out.append(np.where(g < -c, -c, np.where(g > c, c, g)).astype(g.dtype))
    return out
