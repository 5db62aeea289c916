"""Evaluation metrics on NumPy arrays, vectorised (no Python loop over
samples). Each returns a Python float (or, for per-class results, float64
arrays).

Inputs:

- ``y_true`` holds class labels: an (N,) or (N, 1) array of ints >= 0
  (floats with integer values, such as 0.0 / 1.0 targets, are accepted), or
  an (N, C) one-hot array, read by argmax.
- ``y_pred`` of the classification metrics is either labels (an integer or
  bool (N,) / (N, 1) array), or scores: an (N, C) array with C >= 2 is read
  by argmax; a floating (N,) / (N, 1) array holds binary scores (probabilities
  of class 1), read as class 1 where ``score > threshold`` (default 0.5; pass
  ``threshold=0.0`` for logits).

Every metric raises ValueError when ``y_true`` and ``y_pred`` differ in
length, are empty, or hold labels out of range, and TypeError for
non-numeric input. The values agree with ``sklearn.metrics`` (see each
function). :func:`get` maps the names a training loop uses to callables
``f(y_true, scores) -> float``.
"""

from __future__ import annotations

import numpy as np

from . import _validate

__all__ = [
    "accuracy",
    "top_k_accuracy",
    "confusion_matrix",
    "precision_recall_f1",
    "roc_auc",
    "mse",
    "mae",
    "get",
    "NAMES",
]


# ---------------------------------------------------------------------------
# input checks
# ---------------------------------------------------------------------------
def _array(name: str, x) -> np.ndarray:
    if hasattr(x, "__cuda_array_interface__") and hasattr(x, "get"):
        x = x.get()  # a CuPy array: metrics are cheap, compute them on the host
    a = np.asarray(x)
    if a.dtype.kind not in "biuf":
        raise TypeError(f"{name} must be a numeric array; received dtype {a.dtype}")
    if a.ndim == 0:
        raise ValueError(f"{name} must be an array with one row per sample; received a scalar {a!r}")
    return a


def _same_length(a: np.ndarray, b: np.ndarray, name_a: str, name_b: str) -> int:
    if a.shape[0] != b.shape[0]:
        raise ValueError(
            f"{name_a} and {name_b} must have the same number of samples; "
            f"received {a.shape[0]} and {b.shape[0]}"
        )
    if a.shape[0] == 0:
        raise ValueError(f"{name_a} and {name_b} must not be empty; received 0 samples")
    return a.shape[0]


def _as_int_labels(name: str, a: np.ndarray) -> np.ndarray:
    """Integer-valued ``a`` (1-D) as int64, checked >= 0."""
    if a.dtype.kind == "f":
        if a.size and not (np.all(np.isfinite(a)) and np.array_equal(a, np.floor(a))):
            bad = float(a[~(np.isfinite(a) & (a == np.floor(a)))][0])
            raise ValueError(f"{name} must hold integer class labels; received the value {bad!r}")
    a = a.astype(np.int64, copy=False)
    if a.size and a.min() < 0:
        raise ValueError(f"{name} must hold class labels >= 0; received {int(a.min())}")
    return a


def _true_labels(y_true, name: str = "y_true") -> np.ndarray:
    a = _array(name, y_true)
    if a.ndim == 2 and a.shape[1] >= 2:
        return np.argmax(a, axis=1)  # one-hot rows
    if a.ndim == 2 and a.shape[1] == 1:
        a = a[:, 0]
    if a.ndim != 1:
        raise ValueError(f"{name} must have shape (N,), (N, 1) or (N, C); received shape {a.shape}")
    return _as_int_labels(name, a)


def _pred_labels(y_pred, threshold: float, name: str = "y_pred"):
    """(labels, number of classes the shape implies or None)."""
    a = _array(name, y_pred)
    if a.ndim == 2 and a.shape[1] >= 2:
        return np.argmax(a, axis=1), a.shape[1]
    if a.ndim == 2 and a.shape[1] == 1:
        a = a[:, 0]
    if a.ndim != 1:
        raise ValueError(f"{name} must have shape (N,), (N, 1) or (N, C); received shape {a.shape}")
    if a.dtype.kind == "f":  # binary scores
        return (a > threshold).astype(np.int64), 2
    return _as_int_labels(name, a), None


def _threshold(value) -> float:
    return _validate.real("threshold", value)


def _check_below(name: str, labels: np.ndarray, n: int, what: str) -> None:
    top = int(labels.max())
    if top >= n:
        raise ValueError(f"{name} labels must be < {n} ({what}); received {top}")


def _classes(y_true, y_pred, num_classes, threshold, name_pred: str = "y_pred"):
    """Checked (true labels, predicted labels, number of classes)."""
    t = _true_labels(y_true)
    p, implied = _pred_labels(y_pred, _threshold(threshold), name_pred)
    _same_length(t, p, "y_true", name_pred)
    if num_classes is None:
        if implied is not None:
            _check_below("y_true", t, implied,
                         "binary scores" if implied == 2 else f"the number of columns of {name_pred}")
            c = implied
        else:
            c = int(max(t.max(), p.max())) + 1
    else:
        c = _validate.integer("num_classes", num_classes, 1, or_none=True)
        _check_below("y_true", t, c, f"num_classes={c}")
        _check_below(name_pred, p, c, f"num_classes={c}")
    return t, p, c


# ---------------------------------------------------------------------------
# classification
# ---------------------------------------------------------------------------
def accuracy(y_true, y_pred, threshold: float = 0.5) -> float:
    """Fraction of samples whose predicted class equals ``y_true``.

    ``y_pred`` is labels, (N, C) scores (argmax) or binary scores
    (``score > threshold`` is class 1; then ``y_true`` must be 0/1). Equals
    ``sklearn.metrics.accuracy_score`` on the labels.
    """
    t, p, _ = _classes(y_true, y_pred, None, threshold)
    return float(np.mean(t == p))


def top_k_accuracy(y_true, scores, k: int = 5) -> float:
    """Fraction of samples whose true class is among the ``k`` highest of
    its row of ``scores`` (N, C).

    Ties are broken as ``sklearn.metrics.top_k_accuracy_score`` does: among
    equal scores the class with the higher index ranks first, so a true class
    tied at the k-th place counts only if it wins that tie-break (a constant
    model does not score 100%). ``k >= C`` gives 1.0.
    """
    k = _validate.integer("k", k, 1)
    t = _true_labels(y_true)
    s = _array("scores", scores)
    if s.ndim != 2 or s.shape[1] < 2:
        raise ValueError(f"scores must have shape (N, C) with C >= 2; received shape {s.shape}")
    n = _same_length(t, s, "y_true", "scores")
    c = s.shape[1]
    _check_below("y_true", t, c, "the number of columns of scores")
    own = s[np.arange(n), t][:, None]
    # rank of the true class (0 = first): classes scored higher, plus the tied
    # ones with a higher index
    rank = np.count_nonzero(s > own, axis=1) + np.count_nonzero(
        (s == own) & (np.arange(c)[None, :] > t[:, None]), axis=1)
    return float(np.mean(rank < k))


def confusion_matrix(y_true, y_pred, num_classes: int | None = None, threshold: float = 0.5) -> np.ndarray:
    """(C, C) int64 counts, ``cm[i, j]`` = samples of true class ``i``
    predicted as ``j`` (``sklearn.metrics.confusion_matrix`` with
    ``labels=range(C)``).

    ``C`` is ``num_classes``, or else the number of columns of (N, C) scores,
    2 for binary scores, or 1 + the largest label seen.
    """
    t, p, c = _classes(y_true, y_pred, num_classes, threshold)
    return np.bincount(t * c + p, minlength=c * c).reshape(c, c)


def _divide(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    out = np.zeros(num.shape, dtype=np.float64)
    np.divide(num, den, out=out, where=den > 0)
    return out


def precision_recall_f1(y_true, y_pred, num_classes: int | None = None, average: str | None = "macro",
                        threshold: float = 0.5):
    """``(precision, recall, f1)`` of each class, from the confusion matrix::

        precision = tp / (tp + fp)      recall = tp / (tp + fn)
        f1 = 2 tp / (2 tp + fp + fn)

    with 0 where a denominator is 0 (scikit-learn's ``zero_division=0``).

    ``average=None`` returns three float64 arrays of length ``C`` (see
    :func:`confusion_matrix`). ``average="macro"`` returns three floats, each
    the unweighted mean over the classes that occur in ``y_true`` or in the
    predictions; a class in neither has no defined score and is left out.
    Both agree with ``sklearn.metrics.precision_recall_fscore_support``
    (``labels=range(C)`` for per class, default labels for macro).
    """
    if average not in ("macro", None):
        raise ValueError(f"average must be 'macro' or None; received {average!r}")
    t, p, c = _classes(y_true, y_pred, num_classes, threshold)
    cm = np.bincount(t * c + p, minlength=c * c).reshape(c, c)
    tp = np.diag(cm).astype(np.float64)
    n_pred = cm.sum(axis=0)
    n_true = cm.sum(axis=1)
    precision = _divide(tp, n_pred)
    recall = _divide(tp, n_true)
    f1 = _divide(2.0 * tp, n_true + n_pred)
    if average is None:
        return precision, recall, f1
    seen = (n_true + n_pred) > 0
    return float(precision[seen].mean()), float(recall[seen].mean()), float(f1[seen].mean())


def roc_auc(y_true, scores) -> float:
    """Area under the ROC curve of binary labels ``y_true`` (0/1) against
    ``scores`` (higher means class 1): the Mann-Whitney U statistic,

        AUC = (sum of the ranks of the positives - P (P + 1) / 2) / (P N)

    with tied scores given their average rank, so a positive-negative pair
    with equal scores counts 1/2 — the same value as
    ``sklearn.metrics.roc_auc_score`` (computed exactly in integers and
    rounded once). ``scores`` is (N,), (N, 1), or (N, 2) (column 1 is the
    positive class). Both classes must occur in ``y_true``; NaN scores are
    rejected.
    """
    t = _true_labels(y_true)
    s = _array("scores", scores)
    if s.ndim == 2 and s.shape[1] in (1, 2):
        s = s[:, -1]
    if s.ndim != 1:
        raise ValueError(f"scores must have shape (N,), (N, 1) or (N, 2); received shape {s.shape}")
    n = _same_length(t, s, "y_true", "scores")
    _check_below("y_true", t, 2, "binary labels 0/1")
    if s.dtype.kind == "f" and np.isnan(s).any():
        raise ValueError("scores must not contain NaN")
    n_pos = int(np.count_nonzero(t))
    n_neg = n - n_pos
    if n_pos == 0 or n_neg == 0:
        raise ValueError(
            f"roc_auc needs both classes in y_true; received {n_pos} positives and {n_neg} negatives")
    order = np.argsort(s, kind="stable")
    ss = s[order]
    starts_group = np.empty(n, dtype=bool)
    starts_group[0] = True
    np.not_equal(ss[1:], ss[:-1], out=starts_group[1:])
    starts = np.flatnonzero(starts_group)
    ends = np.append(starts[1:], n)
    # twice the average 1-based rank of each group of equal scores (an integer)
    rank2_group = starts + ends + 1
    rank2 = np.empty(n, dtype=np.int64)
    rank2[order] = rank2_group[np.cumsum(starts_group) - 1]
    u2 = int(rank2[t == 1].sum()) - n_pos * (n_pos + 1)  # 2 U
    return u2 / (2 * n_pos * n_neg)


# ---------------------------------------------------------------------------
# regression
# ---------------------------------------------------------------------------
def _regression(y_true, y_pred):
    a = _array("y_true", y_true)
    b = _array("y_pred", y_pred)
    _same_length(a, b, "y_true", "y_pred")
    if a.shape != b.shape:
        if a.ndim + b.ndim == 3 and a.size == b.size:  # (N,) against (N, 1)
            a, b = a.reshape(-1), b.reshape(-1)
        else:
            raise ValueError(f"y_true and y_pred must have the same shape; received {a.shape} and {b.shape}")
    return a.astype(np.float64, copy=False), b


def mse(y_true, y_pred) -> float:
    """Mean of ``(y_true - y_pred) ** 2`` over every element, in float64.
    Shapes must match ((N,) against (N, 1) is allowed)."""
    a, b = _regression(y_true, y_pred)
    d = a - b
    return float(np.mean(d * d))


def mae(y_true, y_pred) -> float:
    """Mean of ``|y_true - y_pred|`` over every element, in float64.
    Shapes must match ((N,) against (N, 1) is allowed)."""
    a, b = _regression(y_true, y_pred)
    return float(np.mean(np.abs(a - b)))


# ---------------------------------------------------------------------------
# by name
# ---------------------------------------------------------------------------
def _named(name: str, fn):
    fn.__name__ = fn.__qualname__ = name
    return fn


_REGISTRY = {
    "accuracy": _named("accuracy", lambda y_true, scores: accuracy(y_true, scores)),
    "top_k_accuracy": _named("top_k_accuracy", lambda y_true, scores: top_k_accuracy(y_true, scores, k=5)),
    "precision": _named("precision", lambda y_true, scores: precision_recall_f1(y_true, scores)[0]),
    "recall": _named("recall", lambda y_true, scores: precision_recall_f1(y_true, scores)[1]),
    "f1": _named("f1", lambda y_true, scores: precision_recall_f1(y_true, scores)[2]),
    "roc_auc": _named("roc_auc", lambda y_true, scores: roc_auc(y_true, scores)),
    "mse": _named("mse", lambda y_true, scores: mse(y_true, scores)),
    "mae": _named("mae", lambda y_true, scores: mae(y_true, scores)),
    "acc": _named("acc", lambda y_true, scores: accuracy(y_true, scores)),  # Keras's name
}

#: names accepted by :func:`get`
NAMES = tuple(_REGISTRY)


def get(name):
    """The metric ``f(y_true, scores) -> float`` called ``name`` (its
    ``__name__`` is ``name``, a key for a training history); a callable is
    returned as it is.

    ``"accuracy"`` (or ``"acc"``, Keras's short name), ``"top_k_accuracy"`` (k=5), ``"precision"``,
    ``"recall"``, ``"f1"`` (macro averages), ``"roc_auc"``, ``"mse"``,
    ``"mae"``.
    """
    if callable(name):
        return name
    if not isinstance(name, str):
        raise TypeError(f"metric must be a name (one of {list(NAMES)}) or a callable; "
                        f"received {type(name).__name__} {name!r:.80}")
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown metric {name!r}; expected one of {list(NAMES)}") from None
