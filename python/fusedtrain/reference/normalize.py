"""Plain NumPy batch and layer normalization (torch.nn.functional semantics),
computed in the input's dtype (float64 in the tests)."""

from __future__ import annotations

import numpy as np

from .dense import activation as _act, activation_grad as _act_grad

__all__ = ["batch_norm_forward", "batch_norm_backward", "layer_norm_forward",
           "layer_norm_backward"]


def batch_norm_forward(x, weight, bias, running_mean, running_var, training=True, momentum=0.1,
                       eps=1e-5, activation="identity", **act_kwargs):
    """(y, (mean, rstd, z)); z is the pre-activation. Updates the running
    statistics in place in training (unbiased variance), as torch."""
    name = activation or "identity"
    if training:
        if x.shape[0] <= 1:
            raise ValueError("Expected more than 1 value per channel when training")
        mean = x.mean(axis=0)
        var = ((x - mean) ** 2).mean(axis=0)
        if running_mean is not None:
            n = x.shape[0]
            running_mean[...] = (1 - momentum) * running_mean + momentum * mean
            running_var[...] = (1 - momentum) * running_var + momentum * var * n / (n - 1)
    else:
        mean, var = running_mean.copy(), running_var.copy()
    rstd = 1 / np.sqrt(var + eps)
    z = (x - mean) * rstd
    if weight is not None:
        z = z * weight + bias
    return _act(z, name, **act_kwargs), (mean, rstd, z)


def batch_norm_backward(dy, x, saved, weight, activation="identity", **act_kwargs):
    """(dx, dweight, dbias) in training mode; saved from the reference forward."""
    mean, rstd, z = saved
    dz = _act_grad(dy, z, activation or "identity", **act_kwargs)
    xhat = (x - mean) * rstd
    n = x.shape[0]
    sdz, sdzx = dz.sum(axis=0), (dz * xhat).sum(axis=0)
    a = rstd if weight is None else weight * rstd
    dx = a * (dz - sdz / n - xhat * sdzx / n)
    if weight is None:
        return dx, None, None
    return dx, sdzx, sdz


def layer_norm_forward(x, weight, bias, eps=1e-5):
    """(y, (mean, rstd)) over each row."""
    mean = x.mean(axis=1)
    var = ((x - mean[:, None]) ** 2).mean(axis=1)
    rstd = 1 / np.sqrt(var + eps)
    y = (x - mean[:, None]) * rstd[:, None]
    if weight is not None:
        y = y * weight + bias
    return y, (mean, rstd)


def layer_norm_backward(dy, x, saved, weight):
    """(dx, dweight, dbias)."""
    mean, rstd = saved
    xhat = (x - mean[:, None]) * rstd[:, None]
    g = dy if weight is None else dy * weight
    c = x.shape[1]
    dx = rstd[:, None] * (g - g.sum(axis=1, keepdims=True) / c
                          - xhat * (g * xhat).sum(axis=1, keepdims=True) / c)
    if weight is None:
        return dx, None, None
    return dx, (dy * xhat).sum(axis=0), dy.sum(axis=0)
