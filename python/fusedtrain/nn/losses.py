"""Losses for the training loop: each returns (loss, gradient w.r.t. the
model output) from one fused kernel call, writing the gradient into a buffer
reused across batches of the same shape."""

from __future__ import annotations

import numpy as np

from .. import ops

__all__ = ["Loss", "CrossEntropy", "BinaryCrossEntropy", "MeanSquaredError", "get", "LOSSES"]


class Loss:
    name = ""

    def __init__(self):
        self._grad = {}

    def _buffer(self, outputs):
        buf = self._grad.get(outputs.shape)
        if buf is None or buf.dtype != outputs.dtype:
            buf = self._grad[outputs.shape] = np.empty_like(outputs)
        return buf

    def __call__(self, outputs, targets):
        """(mean loss as a float, d loss / d outputs)."""
        raise NotImplementedError

    def check_targets(self, targets, n_outputs):
        """Validate the whole target array once, before training starts."""
        return targets

    def __repr__(self):
        return f"{type(self).__name__}()"


class CrossEntropy(Loss):
    """Softmax cross-entropy on logits (N, C) with integer labels (N,)."""

    name = "cross_entropy"

    def __init__(self, label_smoothing=0.0, weight=None):
        super().__init__()
        self.label_smoothing = label_smoothing
        self.weight = weight

    def __call__(self, outputs, targets):
        return ops.softmax_cross_entropy(outputs, targets, weight=self.weight,
                                         label_smoothing=self.label_smoothing,
                                         out=self._buffer(outputs))

    def check_targets(self, targets, n_outputs):
        targets = np.asarray(targets)
        if targets.ndim != 1 or not np.issubdtype(targets.dtype, np.integer):
            raise ValueError("y: expected a 1-d array of integer class labels for cross_entropy; "
                             f"received {targets.dtype} array of shape {targets.shape}")
        if targets.size and (targets.min() < 0 or targets.max() >= n_outputs):
            raise ValueError(f"y: labels must be in [0, {n_outputs}); received values in "
                             f"[{targets.min()}, {targets.max()}]")
        return targets


class BinaryCrossEntropy(Loss):
    """Binary cross-entropy on logits; targets in [0, 1] of the output's shape."""

    name = "bce"

    def __call__(self, outputs, targets):
        return ops.bce_with_logits(outputs, targets)

    def check_targets(self, targets, n_outputs):
        return _float_targets(targets, n_outputs, "bce")


class MeanSquaredError(Loss):
    name = "mse"

    def __call__(self, outputs, targets):
        return ops.mse(outputs, targets)

    def check_targets(self, targets, n_outputs):
        return _float_targets(targets, n_outputs, "mse")


def _float_targets(targets, n_outputs, name):
    targets = np.asarray(targets)
    if targets.ndim == 1 and n_outputs == 1:
        targets = targets.reshape(-1, 1)
    if targets.ndim != 2 or targets.shape[1] != n_outputs:
        raise ValueError(f"y: expected shape (N, {n_outputs}) for {name}; received {targets.shape}")
    return targets


LOSSES = {"cross_entropy": CrossEntropy, "categorical_crossentropy": CrossEntropy,
          "bce": BinaryCrossEntropy, "binary_crossentropy": BinaryCrossEntropy,
          "mse": MeanSquaredError, "mean_squared_error": MeanSquaredError}


def get(loss) -> Loss:
    if isinstance(loss, Loss):
        return loss
    if isinstance(loss, str) and loss in LOSSES:
        return LOSSES[loss]()
    raise ValueError(f"loss must be one of {', '.join(map(repr, LOSSES))} or a Loss; "
                     f"received {loss!r}")
