"""Plain NumPy dense layer, activations and their derivatives."""

from __future__ import annotations

import math

import numpy as np

__all__ = ["activation", "activation_grad", "dense_forward", "dense_backward"]

_erf = np.vectorize(math.erf, otypes=[np.float64])


def activation(z, name="identity", negative_slope=0.01, approximate="none"):
    """act(z) as torch.nn.functional defines it."""
    if name in ("identity", "linear"):
        return z.copy()
    if name == "relu":
        return np.maximum(z, 0)
    if name == "leaky_relu":
        return np.where(z < 0, z * z.dtype.type(negative_slope), z)
    if name == "sigmoid":
        return 1 / (1 + np.exp(-z))
    if name == "tanh":
        return np.tanh(z)
    if name == "gelu" and approximate == "tanh":
        k = math.sqrt(2 / math.pi)
        return 0.5 * z * (1 + np.tanh(k * (z + 0.044715 * z**3)))
    if name == "gelu":
        return (0.5 * z * (1 + _erf(z / math.sqrt(2)))).astype(z.dtype)
    if name == "softmax":
        e = np.exp(z - z.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)
    raise ValueError(f"unknown activation {name!r}")


def activation_grad(dy, z, name="identity", negative_slope=0.01, approximate="none"):
    """dy * act'(z), from the pre-activation z."""
    if name in ("identity", "linear"):
        return dy.copy()
    if name == "relu":
        return dy * (z > 0)
    if name == "leaky_relu":
        return np.where(z > 0, dy, dy * z.dtype.type(negative_slope))
    if name == "sigmoid":
        s = activation(z, "sigmoid")
        return dy * s * (1 - s)
    if name == "tanh":
        return dy * (1 - np.tanh(z) ** 2)
    if name == "gelu" and approximate == "tanh":
        k = math.sqrt(2 / math.pi)
        t = np.tanh(k * (z + 0.044715 * z**3))
        return dy * (0.5 * (1 + t) + 0.5 * z * (1 - t * t) * k * (1 + 3 * 0.044715 * z * z))
    if name == "gelu":
        cdf = 0.5 * (1 + _erf(z / math.sqrt(2)))
        pdf = np.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)
        return (dy * (cdf + z * pdf)).astype(dy.dtype)
    if name == "softmax":
        y = activation(z, "softmax")
        return y * (dy - (dy * y).sum(axis=1, keepdims=True))
    raise ValueError(f"unknown activation {name!r}")


def dense_forward(x, w, b=None, activation_name="identity", **act_kwargs):
    """Returns (y, z): y = act(z), z = x @ w + b."""
    z = x @ w
    if b is not None:
        z = z + b
    return activation(z, activation_name, **act_kwargs), z


def dense_backward(dy, x, w, z, activation_name="identity", **act_kwargs):
    """Returns (dx, dw, db) given the pre-activation z."""
    dz = activation_grad(dy, z, activation_name, **act_kwargs)
    return dz @ w.T, x.T @ dz, dz.sum(axis=0)
