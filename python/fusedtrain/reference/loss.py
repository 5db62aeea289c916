"""Plain NumPy losses and dropout: the readable definition the kernels are
tested and benchmarked against.

Each loss returns ``(loss, gradient)`` like :mod:`fusedtrain.ops`: the loss a
Python float for ``reduction="mean"`` / ``"sum"`` and an array for
``"none"``, the gradient that of the returned loss (of its sum for "none").
Element math is in the input dtype and the reductions in float64, as in the
kernels, so results agree with them to rounding (the kernels' exp and log1p
are polynomials accurate to about 1 ulp, NumPy's are libm's).

Dropout's Philox4x32-10 is written here from its definition (Salmon et al.,
SC'11), in uint64 NumPy arithmetic, so that the kernels' masks can be checked
against it bit for bit.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "softmax_cross_entropy",
    "bce_with_logits",
    "mse",
    "philox4x32_10",
    "dropout_mask",
    "dropout",
    "dropout_backward",
]


def _reduce(loss: np.ndarray, reduction: str, count) -> float | np.ndarray:
    """float64 sum ("sum"), sum / count ("mean"), or the array itself ("none")."""
    if reduction == "none":
        return loss
    total = loss.sum(dtype=np.float64)
    if reduction == "sum":
        return float(total)
    return float(np.float64(total) / np.float64(count))  # 0 / 0 -> nan, as torch


def softmax_cross_entropy(logits, labels, weight=None, ignore_index=-100, label_smoothing=0.0,
                          reduction="mean"):
    """Softmax cross-entropy with integer labels (torch.nn.functional.cross_entropy).

    loss_i = (1 - eps) w[y_i] (log S_i - xs_{i,y_i}) + (eps / C) (W log S_i - sum_c w_c xs_{i,c}),
    xs = x - rowmax(x), S = sum_c exp(xs), W = sum_c w_c; 0 on ignored rows;
    "mean" divides by D = sum of w[y_i] over the rows not ignored.
    """
    with np.errstate(all="ignore"):  # NaN / inf inputs are compared, not warned about
        T = logits.dtype.type
        n, c = logits.shape
        labels = np.asarray(labels).astype(np.int64)
        rows = np.arange(n)
        kept = labels != ignore_index
        y = np.where(kept, labels, 0)
        w = np.ones(c, dtype=logits.dtype) if weight is None else weight
        eps = float(label_smoothing)

        xs = logits - logits.max(axis=1, keepdims=True)
        e = np.exp(xs)
        s = e.sum(axis=1, dtype=np.float64)
        log_s = np.log(s)
        w_y = w[y].astype(np.float64)
        w_total = w.sum(dtype=np.float64)
        hard = (1.0 - eps) * w_y
        loss = hard * (log_s - xs[rows, y].astype(np.float64))
        if eps != 0:  # (eps = 0 would turn -inf logits into 0 * inf)
            loss += (eps / c) * (w_total * log_s - (w * xs).sum(axis=1, dtype=np.float64))
        loss = np.where(kept, loss, 0.0)

        denom = w_y[kept].sum()
        scale = 1.0 / np.float64(denom) if reduction == "mean" else 1.0
        coef_e = ((hard + (eps / c) * w_total) * scale / s).astype(T)
        grad = e * coef_e[:, None]
        if eps != 0:
            grad -= T(eps / c * scale) * w
        grad[rows, y] -= (hard * scale).astype(T)
        grad[~kept] = 0

        if reduction == "none":
            return loss.astype(T), grad
        return _reduce(loss, reduction, denom), grad


def bce_with_logits(logits, targets, reduction="mean"):
    """Binary cross-entropy with logits, stable form:
    loss = max(x, 0) - x t + log1p(exp(-|x|)), dloss/dx = sigmoid(x) - t."""
    with np.errstate(all="ignore"):
        T = logits.dtype.type
        x, t = logits, targets
        e = np.exp(-np.abs(x))
        loss = np.maximum(x, T(0)) - x * t + np.log1p(e)
        r = T(1) / (T(1) + e)
        sigmoid = np.where(x >= 0, r, e * r)
        scale = T(1.0 / np.float64(x.size)) if reduction == "mean" else T(1)
        grad = (sigmoid - t) * scale
        return _reduce(loss, reduction, x.size), grad


def mse(pred, target, reduction="mean"):
    """Mean squared error: loss = (p - t)^2, dloss/dp = 2 (p - t)."""
    with np.errstate(all="ignore"):
        T = pred.dtype.type
        d = pred - target
        scale = T(2.0 / np.float64(pred.size)) if reduction == "mean" else T(2)
        return _reduce(d * d, reduction, pred.size), scale * d


# ---------------------------------------------------------------------------
# Philox4x32-10 and dropout
# ---------------------------------------------------------------------------
_M0, _M1 = np.uint64(0xD2511F53), np.uint64(0xCD9E8D57)   # round multipliers
_W0, _W1 = np.uint64(0x9E3779B9), np.uint64(0xBB67AE85)   # Weyl key increments
_LO32 = np.uint64(0xFFFFFFFF)
_SHIFT = np.uint64(32)


def philox4x32_10(counter, key) -> np.ndarray:
    """Philox4x32 with 10 rounds: counter (..., 4) and key (..., 2) uint32 words
    (broadcast against each other) to (..., 4) uint32 random words.

    Each round: (hi0, lo0) = M0 * c0, (hi1, lo1) = M1 * c2 (64-bit products),
    c = (hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0); the key is bumped by
    (W0, W1) mod 2^32 between rounds.
    """
    counter = np.asarray(counter, dtype=np.uint64)
    key = np.asarray(key, dtype=np.uint64)
    c0, c1, c2, c3 = (counter[..., i] for i in range(4))
    k0, k1 = key[..., 0], key[..., 1]
    for r in range(10):
        if r:
            k0 = (k0 + _W0) & _LO32
            k1 = (k1 + _W1) & _LO32
        p0 = c0 * _M0  # < 2^64: exact in uint64
        p1 = c2 * _M1
        c0, c1, c2, c3 = ((p1 >> _SHIFT) ^ c1 ^ k0, p1 & _LO32,
                          (p0 >> _SHIFT) ^ c3 ^ k1, p0 & _LO32)
    return np.stack(np.broadcast_arrays(c0, c1, c2, c3), axis=-1).astype(np.uint32)


def dropout_threshold(p: float) -> int:
    """Drop threshold round(p * 2^32), at most 2^32 - 1: a word below it drops."""
    t = p * 4294967296.0 + 0.5
    return 0xFFFFFFFF if t >= 4294967295.0 else int(t)


def dropout_mask(shape, p, seed, offset=0) -> np.ndarray:
    """The keep-mask of fusedtrain.ops.dropout: element i (flat, C order) uses
    word i % 4 of philox4x32_10(counter=(j_lo, j_hi, offset_lo, offset_hi),
    key=(seed_lo, seed_hi)), j = i // 4, and is kept when it is >= the threshold."""
    n = int(np.prod(shape, dtype=np.int64))
    j = np.arange((n + 3) // 4, dtype=np.uint64)
    off, sd = np.uint64(offset), np.uint64(seed)
    counter = np.stack([j & _LO32, j >> _SHIFT,
                        np.full_like(j, off & _LO32), np.full_like(j, off >> _SHIFT)], axis=-1)
    key = np.array([sd & _LO32, sd >> _SHIFT], dtype=np.uint64)
    words = philox4x32_10(counter, key).reshape(-1)[:n]
    return (words >= np.uint32(dropout_threshold(p))).reshape(shape)


def dropout(x, p, seed, offset=0):
    """y = x * mask / (1 - p), the scale 1 / (1 - p) rounded once to x's dtype;
    returns (y, mask)."""
    mask = dropout_mask(x.shape, p, seed, offset)
    return dropout_backward(x, mask, p), mask


def dropout_backward(dy, mask, p):
    """dx = dy * mask / (1 - p)."""
    T = dy.dtype.type
    with np.errstate(all="ignore"):
        return dy * np.where(mask, T(1.0 / (1.0 - p)), T(0))
