"""Batch and layer normalization kernels, as torch.nn.functional.batch_norm /
layer_norm, on 2-d arrays x of shape (B, C): NumPy arrays (``_core``) or GPU
arrays (CuPy, torch CUDA; ``_cuda``, on the caller's current stream).

Statistics are accumulated in double in two passes (mean, then the centred
sum of squares: no E[x^2] - E[x]^2 cancellation for large means); column
reductions use a fixed blocking of rows chosen by the shape and add the
blocks in a fixed order, so results are bitwise the same for any thread
count. The kernels' scratch (partial column sums, at most 2 x 64 x C doubles)
is a thread_local buffer of the calling thread, grown once and kept: with
``out`` / ``dx_out`` / ``dweight_out`` / ``dbias_out`` given, a call allocates
only the small (C,) or (B,) ``mean`` / ``rstd`` arrays it returns in
``saved`` (and, for gelu, the (B, C) pre-activation).

Every argument is checked before anything is written: a call that raises
changes no output and no running statistic. On the GPU the kernels follow
the CPU's blocking and order of every sum, so the statistics, running
statistics and parameter gradients are bitwise the CPU's by construction
(not yet verified on a device); outputs through
sigmoid / tanh / gelu may differ from the CPU's by the device's
transcendental functions' rounding. The GPU's scratch is the backend's
cached workspace; mean / rstd (and every missing output) are allocated on
the first array's device.

Re-exported by :mod:`fusedtrain.ops`; runs through
:func:`fusedtrain.backend.module_for`, like every kernel.
"""

from __future__ import annotations

import math

from . import _validate as V
from ._ops_dense import _IDENTITY, _SOFTMAX, _act_kwargs
from .backend import module_for

__all__ = ["batch_norm_forward", "batch_norm_backward", "layer_norm_forward",
           "layer_norm_backward"]


def _eps(eps) -> float:
    v = V.real("eps", eps)
    if not (0.0 < v < math.inf):
        raise ValueError(f"eps must be a finite number > 0; received {v!r}")
    return v


def _norm_act(activation, kw):
    code, slope = _act_kwargs(activation, kw)
    if code == _SOFTMAX:
        raise ValueError("activation 'softmax' is not allowed after a normalization; use one of "
                         "'identity', 'linear', None, 'relu', 'leaky_relu', 'sigmoid', 'tanh', "
                         "'gelu'")
    return code, slope


def batch_norm_forward(x, weight, bias, running_mean, running_var, training=True, momentum=0.1,
                       eps=1e-5, activation="identity", out=None, **act_kwargs):
    """Batch normalization of each column of x (B, C), then an activation;
    returns ``(y, saved)``.

    Training: mean and biased variance of each column over the batch,
    y = act((x - mean) / sqrt(var + eps) * weight + bias); running_mean /
    running_var (C,), when given, are updated in place as torch does:
    ``new = (1 - momentum) * old + momentum * batch``, the running variance
    taking the unbiased batch variance. B = 1 raises ValueError. Eval
    (training=False): the running statistics (required) normalise, nothing is
    changed. weight, bias (C,): both arrays or both None (no affine).
    Defaults: momentum=0.1 (in [0, 1]), eps=1e-5 (finite, > 0).

    ``activation``: as :func:`fusedtrain.ops.dense_forward` (identity / linear
    / None, relu, leaky_relu (``negative_slope``), sigmoid, tanh, gelu
    (``approximate``)); softmax is refused. ``saved`` is ``(mean, rstd, s)``:
    the statistics used ((C,) float64 arrays for either dtype, so the
    backward recentres x as exactly as the forward; rstd = 1 / sqrt(var +
    eps)) and the
    activation's saved value s as dense's convention has it (None for
    identity, the pre-activation for gelu, y itself otherwise).

    Passes over memory: training reads x three times (mean, centred squares,
    output) and writes y once; eval reads x once.
    """
    code, slope = _norm_act(activation, act_kwargs)
    training = V.flag("training", training)
    momentum = V.in_range("momentum", momentum, 0.0, 1.0, True)
    eps = _eps(eps)
    y, mean, rstd, z = module_for(x, "x").batch_norm_forward(
        x, weight, bias, running_mean, running_var, training, momentum, eps, code, slope, out)
    s = None if code == _IDENTITY else (z if z is not None else y)
    return y, (mean, rstd, s)


def batch_norm_backward(dy, x, saved, weight, activation="identity", dx_out=None,
                        dweight_out=None, dbias_out=None, accumulate=False, **act_kwargs):
    """Gradients of :func:`batch_norm_forward` in training mode (through the
    batch statistics); returns ``(dx, dweight, dbias)``.

    dy is (B, C); ``saved`` what the forward returned; weight (C,) or None
    (then dweight and dbias are None). With dz = dy * act'(s):
    dbias = sum_rows dz, dweight = sum_rows dz * xhat and
    dx = weight * rstd * (dz - mean_rows(dz) - xhat * mean_rows(dz * xhat)).
    ``dx_out`` / ``dweight_out`` / ``dbias_out`` take preallocated outputs;
    accumulate=True adds dweight and dbias into them (gradient accumulation).

    Passes over memory: two over dy, x and s (column sums, then dx); dx
    written once.
    """
    code, slope = _norm_act(activation, act_kwargs)
    mean, rstd, s = _unpack("batch_norm_forward", saved, 3)
    return module_for(dy, "dy").batch_norm_backward(
        dy, x, mean, rstd, s, weight, code, slope, dx_out, dweight_out, dbias_out,
        V.flag("accumulate", accumulate))


def layer_norm_forward(x, weight, bias, eps=1e-5, out=None):
    """Layer normalization of each row of x (B, C) over its C elements;
    returns ``(y, saved)``.

    y = (x - mean) / sqrt(var + eps) * weight + bias with the row's mean and
    biased variance; weight, bias (C,) both arrays or both None. ``saved`` is
    ``(mean, rstd)``, (B,) float64 arrays for either dtype. Default eps=1e-5 (finite, > 0).

    Passes over memory: one read of x (each row is read three times while
    it is in cache: mean, centred squares, output) and one write of y.
    """
    eps = _eps(eps)
    y, mean, rstd = module_for(x, "x").layer_norm_forward(x, weight, bias, eps, out)
    return y, (mean, rstd)


def layer_norm_backward(dy, x, saved, weight, dx_out=None, dweight_out=None, dbias_out=None,
                        accumulate=False):
    """Gradients of :func:`layer_norm_forward`; returns ``(dx, dweight,
    dbias)`` (dweight, dbias None without weight).

    With g = dy * weight: dx = rstd * (g - mean_cols(g) - xhat *
    mean_cols(g * xhat)); dweight = sum_rows dy * xhat, dbias = sum_rows dy.
    Outputs and ``accumulate`` as :func:`batch_norm_backward`.

    Passes over memory: one read of dy and x (each row twice while in
    cache), dx written once.
    """
    mean, rstd = _unpack("layer_norm_forward", saved, 2)
    return module_for(dy, "dy").layer_norm_backward(
        dy, x, mean, rstd, weight, dx_out, dweight_out, dbias_out,
        V.flag("accumulate", accumulate))


def _unpack(forward: str, saved, n: int):
    if not isinstance(saved, tuple) or len(saved) != n:
        raise TypeError(f"saved must be the {n}-tuple that {forward} returned; received "
                        f"{type(saved).__name__}")
    return saved
