"""Losses for the training loop: each returns (loss, gradient w.r.t. the
model output), writing the gradient into a buffer reused across batches of
the same shape.

By default the classification losses take **logits** (``from_logits=True``):
the last layer has no activation and the loss applies softmax / sigmoid
inside one fused kernel call (faster and numerically stabler). With
``from_logits=False`` they take **probabilities** -- the outputs of a last
``Dense(..., activation="softmax")`` (cross-entropy) or ``"sigmoid"``
(binary cross-entropy), as Keras's losses by default -- computed in NumPy
with the probabilities clipped to ``[1e-7, 1 - 1e-7]`` inside the log.
:func:`fusedtrain.train.fit` refuses the two mixes that would silently train
the wrong thing: a softmax (sigmoid) output layer with a logits loss (the
activation applied twice) and a probability loss on an output layer without
it.

Names (:func:`get`):

- ``"cross_entropy"``, ``"sparse_categorical_crossentropy"``: softmax
  cross-entropy with integer class labels, shape (N,).
- ``"categorical_crossentropy"``: the same with one-hot targets, shape
  (N, C) (each row a single 1; read as the labels they encode).
- ``"bce"``, ``"binary_crossentropy"``: binary cross-entropy, targets in
  [0, 1] of the output's shape.
- ``"mse"``, ``"mean_squared_error"``: mean squared error.

Per-sample weights (``fit(sample_weight=..., class_weight=...)``): the loss
is ``sum_i s_i * loss_i / N`` over a batch of N samples (``loss_i`` the
sample's loss, the mean over its outputs for bce and mse) -- Keras's
"sum over batch size" reduction, so all-ones weights give the unweighted
mean -- and the gradient rows are scaled to match.
"""

from __future__ import annotations

import numpy as np

from .. import ops
from ._buffers import _Rows

__all__ = ["Loss", "CrossEntropy", "CategoricalCrossEntropy", "BinaryCrossEntropy",
           "MeanSquaredError", "get", "LOSSES"]

#: probabilities are clipped to [_EPS, 1 - _EPS] inside the logs (Keras's epsilon)
_EPS = 1e-7


class Loss:
    name = ""
    #: the output activation a probability loss needs on the last layer
    #: (None: the loss takes any outputs)
    expects_activation = None

    def __init__(self):
        self._bufs = _Rows()  # the gradient: one buffer, of the largest batch seen

    def _takes(self, activation: str, from_logits) -> None:
        """Logits (from_logits=True) or the outputs of ``activation``."""
        if from_logits is not True and from_logits is not False:
            raise TypeError(f"from_logits must be a bool; received {type(from_logits).__name__} "
                            f"{from_logits!r}")
        self.from_logits = from_logits
        self.expects_activation = None if from_logits else activation

    def _buffer(self, outputs):
        return self._bufs.get("grad", outputs.shape[0], outputs.shape[1:], outputs.dtype)

    def __call__(self, outputs, targets, sample_weight=None):
        """(loss as a float, d loss / d outputs): the mean loss, or with
        ``sample_weight`` (N,) ``sum_i w_i * loss_i / N``."""
        if sample_weight is None:
            return self._mean(outputs, targets)
        loss, grad = self._per_element(outputs, targets)  # loss_i, d(sum loss_i)/d out
        n = len(outputs)
        w = np.asarray(sample_weight, dtype=outputs.dtype).reshape((n,) + (1,) * (grad.ndim - 1))
        per_row = grad[0].size if grad.ndim > 1 and loss.ndim > 1 else 1  # mean over outputs
        scale = w / (n * per_row)
        grad *= scale
        value = float(np.sum(loss.reshape(n, -1) * scale.reshape(n, 1))) if n else float("nan")
        return value, grad

    def _mean(self, outputs, targets):
        raise NotImplementedError

    def _per_element(self, outputs, targets):
        """(per-sample or per-element losses, gradient of their sum)."""
        raise NotImplementedError

    def check_targets(self, targets, n_outputs):
        """Validate the whole target array once, before training starts."""
        return targets

    def __repr__(self):
        return f"{type(self).__name__}()"


def _probs(outputs, low=_EPS, high=1.0 - _EPS):
    return np.clip(outputs, low, high)


class CrossEntropy(Loss):
    """Softmax cross-entropy with integer labels (N,), on logits (N, C) --
    or, with ``from_logits=False``, on probabilities (the outputs of a
    softmax layer). ``weight`` (C,) weights each class and
    ``label_smoothing`` mixes the one-hot target with the uniform one, as
    ``torch.nn.functional.cross_entropy``: the mean is
    ``sum_i loss_i / sum_i weight[y_i]``."""

    name = "cross_entropy"

    def __init__(self, label_smoothing=0.0, weight=None, from_logits=True):
        super().__init__()
        self.label_smoothing = label_smoothing
        self.weight = weight
        self._takes("softmax", from_logits)

    def _mean(self, outputs, targets):
        if self.from_logits:
            return ops.softmax_cross_entropy(outputs, targets, weight=self.weight,
                                             label_smoothing=self.label_smoothing,
                                             out=self._buffer(outputs))
        loss, grad, denom = self._from_probs(outputs, targets)
        grad /= denom
        return float(loss.sum() / denom), grad

    def _per_element(self, outputs, targets):
        if self.from_logits:
            return ops.softmax_cross_entropy(outputs, targets, weight=self.weight,
                                             label_smoothing=self.label_smoothing,
                                             reduction="none")
        loss, grad, _ = self._from_probs(outputs, targets)
        return loss, grad

    def _from_probs(self, probs, labels):
        """Per-row losses, the gradient of their sum and the mean's
        denominator, for probabilities: ``loss_i = -sum_c t_ic log p_ic``
        with ``t_ic = (1 - eps) w[y_i] [c = y_i] + eps / C w[c]``."""
        n, c = probs.shape
        w = (np.ones(c, probs.dtype) if self.weight is None
             else np.asarray(self.weight, dtype=probs.dtype))
        eps = float(self.label_smoothing)
        t = np.zeros((n, c), probs.dtype)
        rows = np.arange(n)
        t[rows, labels] = (1.0 - eps) * w[labels]
        if eps:
            t += (eps / c) * w
        p = _probs(probs, _EPS, 1.0)
        loss = -(t * np.log(p)).sum(axis=1)
        return loss, -t / p, float(w[labels].sum()) if n else float("nan")

    def check_targets(self, targets, n_outputs):
        targets = np.asarray(targets)
        if targets.ndim != 1 or not np.issubdtype(targets.dtype, np.integer):
            hint = ""
            if targets.ndim == 2 and targets.shape[1] == n_outputs:
                hint = " (for one-hot targets use loss='categorical_crossentropy')"
            raise ValueError(f"y: expected a 1-d array of integer class labels for {self.name}; "
                             f"received {targets.dtype} array of shape {targets.shape}{hint}")
        if targets.size and (targets.min() < 0 or targets.max() >= n_outputs):
            raise ValueError(f"y: labels must be in [0, {n_outputs}); received values in "
                             f"[{targets.min()}, {targets.max()}]")
        return targets

    def __repr__(self):
        args = [f"{k}={getattr(self, k)!r}" for k, default in
                (("label_smoothing", 0.0), ("weight", None), ("from_logits", True))
                if getattr(self, k) is not default and getattr(self, k) != default]
        return f"{type(self).__name__}({', '.join(args)})"


class CategoricalCrossEntropy(CrossEntropy):
    """:class:`CrossEntropy` with one-hot targets (N, C): each row holds a
    single 1 and 0 elsewhere; they are read once, before training, as the
    integer labels they encode (the fused kernel takes labels). Soft targets
    (rows that are not one-hot) are refused."""

    name = "categorical_crossentropy"

    def check_targets(self, targets, n_outputs):
        targets = np.asarray(targets)
        if targets.ndim != 2 or targets.shape[1] != n_outputs \
                or targets.dtype.kind not in "biuf":
            hint = ""
            if targets.ndim == 1 and targets.dtype.kind in "iu":
                hint = (" (for integer labels use loss='sparse_categorical_crossentropy' or "
                        "'cross_entropy')")
            raise ValueError(f"y: expected one-hot targets of shape (N, {n_outputs}) for "
                             f"categorical_crossentropy; received {targets.dtype} array of shape "
                             f"{targets.shape}{hint}")
        ones = targets == 1
        if not (np.all(ones.sum(axis=1) == 1) and np.all(ones | (targets == 0))):
            bad = int(np.argmax(~((ones.sum(axis=1) == 1) & np.all(ones | (targets == 0), axis=1))))
            raise ValueError("y: categorical_crossentropy expects one-hot rows (a single 1, zeros "
                             f"elsewhere); row {bad} is {targets[bad].tolist()!r:.120}")
        return np.argmax(ones, axis=1).astype(np.int64)


class BinaryCrossEntropy(Loss):
    """Binary cross-entropy, targets in [0, 1] of the output's shape, on
    logits -- or, with ``from_logits=False``, on probabilities (the outputs
    of a sigmoid layer). The mean is over every element."""

    name = "bce"

    def __init__(self, from_logits=True):
        super().__init__()
        self._takes("sigmoid", from_logits)

    def _mean(self, outputs, targets):
        if self.from_logits:
            return ops.bce_with_logits(outputs, targets)
        loss, grad = self._per_element(outputs, targets)
        grad /= max(outputs.size, 1)
        return float(loss.mean()), grad

    def _per_element(self, outputs, targets):
        if self.from_logits:
            return ops.bce_with_logits(outputs, targets, reduction="none")
        p = _probs(outputs)
        loss = -(targets * np.log(p) + (1.0 - targets) * np.log1p(-p))
        return loss, (p - targets) / (p * (1.0 - p))

    def check_targets(self, targets, n_outputs):
        return _float_targets(targets, n_outputs, self.name)

    def __repr__(self):
        return f"{type(self).__name__}({'' if self.from_logits else 'from_logits=False'})"


class MeanSquaredError(Loss):
    name = "mse"

    def _mean(self, outputs, targets):
        return ops.mse(outputs, targets)

    def _per_element(self, outputs, targets):
        return ops.mse(outputs, targets, reduction="none")

    def check_targets(self, targets, n_outputs):
        return _float_targets(targets, n_outputs, self.name)


def _float_targets(targets, n_outputs, name):
    targets = np.asarray(targets)
    if targets.ndim == 1 and n_outputs == 1:
        targets = targets.reshape(-1, 1)
    if targets.ndim != 2 or targets.shape[1] != n_outputs:
        raise ValueError(f"y: expected shape (N, {n_outputs}) for {name}; received {targets.shape}")
    return targets


LOSSES = {"cross_entropy": CrossEntropy, "sparse_categorical_crossentropy": CrossEntropy,
          "categorical_crossentropy": CategoricalCrossEntropy,
          "bce": BinaryCrossEntropy, "binary_crossentropy": BinaryCrossEntropy,
          "mse": MeanSquaredError, "mean_squared_error": MeanSquaredError}


def get(loss) -> Loss:
    """The loss called ``loss`` (a new object; see the module's list of
    names), or ``loss`` itself when it is a :class:`Loss`."""
    if isinstance(loss, Loss):
        return loss
    if isinstance(loss, str) and loss in LOSSES:
        return LOSSES[loss]()
    raise ValueError(f"loss must be one of {', '.join(map(repr, LOSSES))} or a Loss; "
                     f"received {loss!r}")


def check_output_layer(model, loss) -> None:
    """ValueError when the model's last layer and the loss disagree about
    logits and probabilities: a softmax / sigmoid output with a loss on
    logits (the activation would be applied twice), or a loss on
    probabilities without that output activation."""
    from .layers import Dense

    last = next(((i, l) for i, l in reversed(list(enumerate(model.layers)))
                 if isinstance(l, Dense)), None)
    if last is None:
        return
    i, layer = last
    act = layer.activation
    kind = type(loss).__name__
    if isinstance(loss, (CrossEntropy, BinaryCrossEntropy)) and loss.from_logits:
        needs = "softmax" if isinstance(loss, CrossEntropy) else "sigmoid"
        if act in ("softmax", "sigmoid"):
            raise ValueError(
                f"layers[{i}] {layer!r} outputs {act} probabilities, and the loss {kind} takes "
                f"logits (it applies {needs} itself), so {act} would be applied twice. Remove "
                f"activation={act!r} from the last layer (recommended: faster and stabler; "
                f"predict then returns logits), or pass loss={kind}(from_logits=False)")
    elif loss.expects_activation is not None and act != loss.expects_activation:
        raise ValueError(
            f"the loss {kind}(from_logits=False) takes probabilities, but layers[{i}] {layer!r} "
            f"has activation {act!r}: give the last layer activation="
            f"{loss.expects_activation!r}, or use {kind}() on its logits")
