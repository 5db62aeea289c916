"""Loss and dropout kernels: forward and backward fused in one call.

Every function takes NumPy arrays (float32 or float64, C-contiguous; nothing
is converted) -- or GPU arrays (CuPy, torch CUDA tensors: the CUDA kernels,
on the caller's current stream, results on the same device) -- and returns
``(loss, gradient)``: ``loss`` is a Python float
for ``reduction="mean"`` or ``"sum"`` and an array for ``"none"``, and the
gradient is that of the returned loss (for ``"none"``, of its sum).
Semantics follow ``torch.nn.functional``. On the GPU the losses wait for the
caller's stream (one 32-byte read-back) to return the loss as a float and to
raise on a bad label having written nothing, as on the CPU; dropout never
waits. Missing outputs are allocated on the input's device (CuPy arrays, or
torch tensors for torch input); reduction scratch is cached per device and
stream. Element math runs in the input
dtype; ``mean`` / ``sum`` are accumulated in double over fixed blocks summed
in a fixed order, so results do not depend on the thread count. Options are
checked here, arrays in the compiled module; a call that raises has written
nothing.

Re-exported by :mod:`fusedtrain.ops`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, overload

from . import _validate as V
from .backend import module_for

if TYPE_CHECKING:
    from typing import Literal

    from .ops import Array, ArrayT

__all__ = ["softmax_cross_entropy", "bce_with_logits", "mse", "dropout", "dropout_backward"]

_REDUCTIONS = ("mean", "sum", "none")
_U64 = 1 << 64


def _reduction(value) -> str:
    if not (isinstance(value, str) and value in _REDUCTIONS):
        raise ValueError(f"reduction must be one of 'mean', 'sum', 'none'; received {value!r}")
    return value


def _integer(name: str, value, low: int, high: int) -> int:
    """An int in [low, high)."""
    if type(value) is int and low <= value < high:  # fast path: runs on every batch
        return value
    return V.integer(name, value, low, high - 1)


@overload
def softmax_cross_entropy(logits: ArrayT, labels: Array, weight: ArrayT | None = None,
                          ignore_index: int = -100, label_smoothing: float = 0.0,
                          reduction: Literal["mean", "sum"] = "mean",
                          out: ArrayT | None = None) -> tuple[float, ArrayT]: ...
@overload
def softmax_cross_entropy(logits: ArrayT, labels: Array, weight: ArrayT | None = None,
                          ignore_index: int = -100, label_smoothing: float = 0.0, *,
                          reduction: Literal["none"],
                          out: ArrayT | None = None) -> tuple[ArrayT, ArrayT]: ...
@overload
def softmax_cross_entropy(logits: ArrayT, labels: Array, weight: ArrayT | None = None,
                          ignore_index: int = -100, label_smoothing: float = 0.0,
                          reduction: str = "mean",
                          out: ArrayT | None = None) -> tuple[float | ArrayT, ArrayT]: ...
def softmax_cross_entropy(logits: ArrayT, labels: Array, weight: ArrayT | None = None,
                          ignore_index: int = -100, label_smoothing: float = 0.0,
                          reduction: str = "mean",
                          out: ArrayT | None = None) -> tuple[float | ArrayT, ArrayT]:
    """Softmax cross-entropy with integer labels, forward and backward in one pass.

    ``logits`` is (N, C); ``labels`` is (N,) of any integer dtype, each in
    [0, C) or equal to ``ignore_index``. As ``torch.nn.functional.cross_entropy``::

        logp = log_softmax(logits)                      (row-wise)
        loss_i = (1 - eps) * w[y_i] * -logp[i, y_i] + (eps / C) * sum_c w[c] * -logp[i, c]
        loss_i = 0 for rows with y_i == ignore_index
        mean = sum_i loss_i / sum_{i not ignored} w[y_i];   sum = sum_i loss_i

    (``w`` = ``weight``, all ones when None; ``eps`` = ``label_smoothing``).
    With every row ignored, ``mean`` is NaN, as in torch. The gradient is
    ``(softmax - smoothed one-hot) * w / D``, zero on ignored rows, computed in
    the same pass over each row.

    Args:
      logits: (N, C) float32 or float64.
      labels: (N,) integer array.
      weight: optional (C,) class weights, logits' dtype.
      ignore_index: label value whose rows are skipped (default -100).
      label_smoothing: eps in [0, 1] (default 0).
      reduction: "mean" (default), "sum" or "none".
      out: optional (N, C) buffer of logits' dtype for the gradient; may be
        ``logits`` itself (the gradient overwrites the logits in place); must
        not otherwise overlap any input.

    Returns:
      ``(loss, dlogits)``: loss a float ("mean", "sum") or an (N,) array
      ("none"); dlogits the gradient of the loss (of its sum for "none").

    Raises ValueError naming ``labels``, the bad value and its row when a
    label is out of range; nothing is written then.
    """
    red = _reduction(reduction)
    eps = V.in_range("label_smoothing", label_smoothing, 0.0, 1.0, True)
    ig = _integer("ignore_index", ignore_index, -(1 << 63), 1 << 63)
    return module_for(logits, "logits").softmax_cross_entropy(logits, labels, weight, out, ig, eps,
                                                           red)


@overload
def bce_with_logits(logits: ArrayT, targets: ArrayT,
                    reduction: Literal["mean", "sum"] = "mean") -> tuple[float, ArrayT]: ...
@overload
def bce_with_logits(logits: ArrayT, targets: ArrayT, reduction: Literal["none"]) -> tuple[ArrayT, ArrayT]: ...
@overload
def bce_with_logits(logits: ArrayT, targets: ArrayT, reduction: str = "mean") -> tuple[float | ArrayT, ArrayT]: ...
def bce_with_logits(logits: ArrayT, targets: ArrayT, reduction: str = "mean") -> tuple[float | ArrayT, ArrayT]:
    """Binary cross-entropy on logits, forward and backward.

    Per element, in the stable form of ``torch.nn.functional.binary_cross_entropy_with_logits``::

        loss = max(x, 0) - x * t + log1p(exp(-|x|))
        dloss/dx = sigmoid(x) - t          (divided by x.size for "mean")

    ``logits`` and ``targets`` have any shape, the same shape and dtype.
    Finite for any finite logits (e.g. +-1e4); NaN propagates.

    Returns ``(loss, dlogits)``: loss a float ("mean", "sum") or an array of
    logits' shape ("none").
    """
    red = _reduction(reduction)
    return module_for(logits, "logits").bce_with_logits(logits, targets, red)


@overload
def mse(pred: ArrayT, target: ArrayT,
        reduction: Literal["mean", "sum"] = "mean") -> tuple[float, ArrayT]: ...
@overload
def mse(pred: ArrayT, target: ArrayT, reduction: Literal["none"]) -> tuple[ArrayT, ArrayT]: ...
@overload
def mse(pred: ArrayT, target: ArrayT, reduction: str = "mean") -> tuple[float | ArrayT, ArrayT]: ...
def mse(pred: ArrayT, target: ArrayT, reduction: str = "mean") -> tuple[float | ArrayT, ArrayT]:
    """Mean squared error, forward and backward (``torch.nn.functional.mse_loss``)::

        loss = (pred - target) ** 2
        dloss/dpred = 2 * (pred - target)     (divided by pred.size for "mean")

    Returns ``(loss, dpred)``: loss a float ("mean", "sum") or an array of
    pred's shape ("none").
    """
    red = _reduction(reduction)
    return module_for(pred, "pred").mse(pred, target, red)


def dropout(x: ArrayT, p: float, seed: int, offset: int = 0, out: ArrayT | None = None,
            mask_out: Array | None = None) -> tuple[ArrayT, Array]:
    """Inverted dropout with a counter-based mask: ``y = x * mask / (1 - p)``.

    Element ``i`` is dropped with probability ``p``, decided by word ``i % 4``
    of Philox4x32-10 (Salmon et al., SC'11) at counter ``(i // 4, offset)``
    (two 64-bit halves) and key ``seed``: kept when the word is
    ``>= round(p * 2**32)``. The mask therefore depends only on ``seed``,
    ``offset`` and the element index -- the same for any thread count and on
    the GPU. Use a new ``offset`` (or seed) for every call that needs a new
    mask, e.g. ``offset = step``.

    Args:
      x: float32 or float64 array of any shape.
      p: drop probability in [0, 1); p = 0 keeps every element.
      seed: int in [0, 2**64), the Philox key.
      offset: int in [0, 2**64), the high half of the Philox counter.

      out, mask_out: optional preallocated outputs (x's dtype and shape; a
        bool array of x's shape), reused across batches; ``out`` may be ``x``.

    Returns:
      ``(y, mask)``: ``y`` like ``x``; ``mask`` a bool array of x's shape,
      True where the element is kept (pass it to :func:`dropout_backward`).
    """
    p = V.in_range("p", p, 0.0, 1.0, False)
    seed = _integer("seed", seed, 0, _U64)
    offset = _integer("offset", offset, 0, _U64)
    return module_for(x, "x").dropout(x, p, seed, offset, out, mask_out)


def dropout_backward(dy: ArrayT, mask: Array, p: float, out: ArrayT | None = None) -> ArrayT:
    """Gradient of :func:`dropout`: ``dx = dy * mask / (1 - p)``.

    ``mask`` is the bool array :func:`dropout` returned (uint8 0/1 is
    accepted too), of dy's shape; ``p`` the same drop probability. ``out``
    takes a preallocated dx (dy's dtype and shape; it may be dy itself).
    """
    p = V.in_range("p", p, 0.0, 1.0, False)
    return module_for(dy, "dy").dropout_backward(dy, mask, p, out)
