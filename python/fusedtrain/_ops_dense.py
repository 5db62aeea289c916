"""Dense layer kernels: y = act(x @ w + b) and its backward pass.

The GEMMs come from OpenBLAS (NumPy arrays) or cuBLASLt (CuPy arrays, torch
CUDA tensors; cuBLASLt comes from the optional nvidia-cublas wheel,
``pip install "fusedtrain[cuda]"``); the bias, the activation and (backward)
the activation derivative and the bias-gradient column sums are fused into
single passes around them (into cuBLASLt's own epilogue where it has one).

Re-exported by :mod:`fusedtrain.ops`; runs through
:func:`fusedtrain.backend.module_for`, like every kernel.
"""

from __future__ import annotations

from . import _validate as V
from .backend import module_for

__all__ = ["dense_forward", "dense_backward", "ACTIVATIONS"]

# codes of csrc/include/fusedtrain/act_math.h's Act
_IDENTITY, _RELU, _LEAKY, _SIGMOID, _TANH, _GELU_ERF, _GELU_TANH, _SOFTMAX = range(8)
_CODES = {"identity": _IDENTITY, "linear": _IDENTITY, "relu": _RELU, "leaky_relu": _LEAKY,
          "sigmoid": _SIGMOID, "tanh": _TANH, "gelu": _GELU_ERF, "softmax": _SOFTMAX}
#: the activation names; None is "linear", the same as "identity" (no
#: activation), as in :class:`fusedtrain.nn.Dense` (the same tuple)
ACTIVATIONS = ("linear", "identity", "relu", "leaky_relu", "sigmoid", "tanh", "gelu", "softmax")


def activation_code(activation, negative_slope: float = 0.01, approximate: str = "none"):
    """(code, slope) of an activation name (or None: linear) and its keyword
    arguments."""
    if activation is None:
        activation = "linear"
    if not isinstance(activation, str) or activation not in _CODES:
        raise ValueError(f"activation must be one of {', '.join(map(repr, ACTIVATIONS))} or "
                         f"None (linear); received {activation!r}")
    code = _CODES[activation]
    slope = 0.0
    if code == _LEAKY:
        slope = V.at_least("negative_slope", negative_slope)
    if code == _GELU_ERF:
        if approximate not in ("none", "tanh"):
            raise ValueError(f"approximate must be 'none' or 'tanh'; received {approximate!r}")
        code = _GELU_TANH if approximate == "tanh" else _GELU_ERF
    return code, slope


# (code, slope) of each name called without keyword arguments: the common
# call, looked up without the checks below (half a microsecond a call)
_PLAIN = {name: activation_code(name) for name in (*_CODES, None)}


def _act_kwargs(activation, kw):
    if not kw and (activation is None or type(activation) is str):
        plain = _PLAIN.get(activation)
        if plain is not None:
            return plain
    allowed = {"leaky_relu": {"negative_slope"}, "gelu": {"approximate"}}.get(activation, set())
    extra = set(kw) - allowed
    if extra:
        raise TypeError(f"unexpected keyword arguments {sorted(extra)} for activation "
                        f"{activation!r}; it takes {sorted(allowed) or 'none'}")
    return activation_code(activation, **kw)


def dense_forward(x, w, b=None, activation="identity", out=None, **act_kwargs):
    """y = act(x @ w + b); returns ``(y, saved)``.

    x is (B, in), w is (in, out), b is (out,) or None; y is (B, out), written
    to ``out`` when given. ``saved`` is what :func:`dense_backward` needs:
    None for linear / identity, the pre-activation for gelu, y itself
    otherwise. Activations (:data:`ACTIVATIONS`): None, "linear" and
    "identity" (the same: no activation), relu, leaky_relu (``negative_slope=0.01``, >= 0),
    sigmoid, tanh, gelu (``approximate="none"`` or ``"tanh"``), softmax
    (row-wise).
    """
    code, slope = _act_kwargs(activation, act_kwargs)
    y, z = module_for(x, "x").dense_forward(x, w, b, out, code, slope)
    if code == _IDENTITY:
        return y, None
    return y, (z if z is not None else y)


def dense_backward(dy, x, w, saved, activation="identity", need_dx=True, dw_out=None,
                   db_out=None, accumulate=False, dx_out=None, workspace=None, **act_kwargs):
    """Gradients of :func:`dense_forward`; returns ``(dx, dw, db)``.

    dy is (B, out), the gradient of the loss with respect to y. One pass
    computes dz = dy * act'(saved) and db = dz summed over rows; then
    dw = x.T @ dz and dx = dz @ w.T (skipped, dx None, when need_dx=False).
    ``dw_out`` / ``db_out`` / ``dx_out`` take preallocated outputs; with
    accumulate=True dw and db are added to them (gradient accumulation).
    ``workspace`` is an optional (B, out) scratch buffer for dz (reused
    across batches, nothing is allocated per call when all are given).
    ``activation`` as in :func:`dense_forward` (None: linear).
    """
    code, slope = _act_kwargs(activation, act_kwargs)
    return module_for(dy, "dy").dense_backward(
        dy, x, w, saved, code, slope, V.flag("need_dx", need_dx), dw_out, db_out,
        V.flag("accumulate", accumulate), dx_out, workspace)
