"""Metrics against sklearn.metrics on random data, top-k by a direct check,
input forms and argument checks."""

from __future__ import annotations

import zlib

import numpy as np
import pytest

from fusedtrain import metrics

skm = pytest.importorskip("sklearn.metrics")


def rng_for(*key) -> np.random.Generator:
    return np.random.default_rng(zlib.crc32(repr(key).encode()))


def random_labels(rng, n, c, skip=()):
    """Labels in [0, c), none equal to a class in ``skip``."""
    allowed = np.setdiff1d(np.arange(c), skip)
    return rng.choice(allowed, size=n)


def noisy_predictions(rng, y, c, p_right=0.6):
    """Right with probability ``p_right``, else a random class."""
    wrong = rng.integers(0, c, size=y.shape[0])
    return np.where(rng.random(y.shape[0]) < p_right, y, wrong)


CASES = [(n, c) for n in (1, 7, 200, 1001) for c in (2, 3, 10)]


# ---------------------------------------------------------------------------
# accuracy
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("n, c", CASES)
def test_accuracy_labels_and_scores(n, c):
    rng = rng_for("acc", n, c)
    y = random_labels(rng, n, c)
    scores = rng.standard_normal((n, c))
    scores[np.arange(n), y] += rng.random(n)  # better than chance
    want = skm.accuracy_score(y, scores.argmax(1))
    assert metrics.accuracy(y, scores) == want
    assert metrics.accuracy(y, scores.argmax(1)) == want
    assert metrics.accuracy(y.tolist(), scores.tolist()) == want
    assert metrics.accuracy(y.astype(np.float32), scores.astype(np.float32)) == want
    onehot = np.eye(c)[y]
    assert metrics.accuracy(onehot, scores) == want
    assert metrics.accuracy(y[:, None], scores.argmax(1)[:, None]) == want


def test_accuracy_binary_scores_threshold():
    rng = rng_for("bin")
    y = rng.integers(0, 2, 500)
    p = rng.random(500)
    want = skm.accuracy_score(y, (p > 0.5).astype(int))
    assert metrics.accuracy(y, p) == want
    assert metrics.accuracy(y.astype(np.float64), p[:, None]) == want
    assert metrics.accuracy(y, p, threshold=0.3) == skm.accuracy_score(y, (p > 0.3).astype(int))
    # logits with threshold 0
    z = rng.standard_normal(500)
    assert metrics.accuracy(y, z, threshold=0.0) == skm.accuracy_score(y, (z > 0).astype(int))
    # exactly at the threshold is class 0
    assert metrics.accuracy([0, 1], [0.5, 0.5]) == 0.5
    with pytest.raises(ValueError, match=r"y_true labels must be < 2 \(binary scores\); received 2"):
        metrics.accuracy([0, 2], [0.1, 0.9])


# ---------------------------------------------------------------------------
# top-k
# ---------------------------------------------------------------------------
def top_k_direct(y, scores, k):
    """Per sample: the true class is in the first k of a stable descending
    sort that puts the higher index first among ties."""
    hits = 0
    for yi, row in zip(y, scores):
        order = sorted(range(len(row)), key=lambda j: (-row[j], -j))
        hits += yi in order[:k]
    return hits / len(y)


@pytest.mark.parametrize("k", [1, 2, 3, 5, 10, 11])
@pytest.mark.parametrize("ties", [False, True])
def test_top_k_accuracy(k, ties):
    rng = rng_for("topk", k, ties)
    n, c = 300, 10
    y = rng.integers(0, c, n)
    scores = rng.integers(0, 4, (n, c)).astype(np.float64) if ties else rng.standard_normal((n, c))
    got = metrics.top_k_accuracy(y, scores, k=k)
    assert got == top_k_direct(y, scores, k)
    if k < c:  # sklearn warns that k >= C is meaningless (a perfect score)
        assert got == skm.top_k_accuracy_score(y, scores, k=k, labels=np.arange(c))
    else:
        assert got == 1.0
    if not ties:  # (argmax breaks ties to the lower index, top-k to the higher)
        assert metrics.top_k_accuracy(y, scores, k=1) == metrics.accuracy(y, scores)


def test_top_k_small():
    scores = np.array([[0.1, 0.5, 0.4], [0.3, 0.3, 0.3], [0.2, 0.2, 0.6]])
    # sample 0: class 2 is second; sample 1: all tied, class 0 ranks last;
    # sample 2: class 0 ties class 1, which ranks ahead of it
    assert metrics.top_k_accuracy([2, 0, 0], scores, k=1) == 0.0
    assert metrics.top_k_accuracy([2, 0, 0], scores, k=2) == pytest.approx(1 / 3)
    assert metrics.top_k_accuracy([2, 0, 0], scores, k=3) == 1.0
    assert metrics.top_k_accuracy([1, 1, 2], scores, k=1) == pytest.approx(2 / 3)


# ---------------------------------------------------------------------------
# confusion matrix, precision / recall / f1
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("n, c", CASES)
def test_confusion_matrix(n, c):
    rng = rng_for("cm", n, c)
    y = random_labels(rng, n, c)
    p = noisy_predictions(rng, y, c)
    want = skm.confusion_matrix(y, p, labels=np.arange(c))
    got = metrics.confusion_matrix(y, p, num_classes=c)
    assert got.dtype == np.int64 and got.shape == (c, c)
    np.testing.assert_array_equal(got, want)
    top = max(y.max(), p.max()) + 1
    np.testing.assert_array_equal(metrics.confusion_matrix(y, p), want[:top, :top])
    scores = np.eye(c)[p] + 0.01 * rng.random((n, c))
    np.testing.assert_array_equal(metrics.confusion_matrix(y, scores), want)


@pytest.mark.parametrize("n, c", CASES + [(50, 12)])
def test_precision_recall_f1(n, c):
    rng = rng_for("prf", n, c)
    # leave a class out of y_true and another out of both (when there is room)
    skip = (1,) if c >= 3 else ()
    y = random_labels(rng, n, c, skip=skip)
    p = noisy_predictions(rng, y, c, p_right=0.5)
    if c >= 3:
        p[p == 2] = 0  # class 2 never predicted; class 1 may be, never true
    kw = dict(zero_division=0)
    P, R, F, _ = skm.precision_recall_fscore_support(y, p, labels=np.arange(c), average=None, **kw)
    gp, gr, gf = metrics.precision_recall_f1(y, p, num_classes=c, average=None)
    for got, want in ((gp, P), (gr, R), (gf, F)):
        assert got.dtype == np.float64 and got.shape == (c,)
        np.testing.assert_allclose(got, want, rtol=1e-15, atol=0)
    macro = skm.precision_recall_fscore_support(y, p, average="macro", **kw)[:3]
    got_macro = metrics.precision_recall_f1(y, p)
    np.testing.assert_allclose(got_macro, macro, rtol=1e-14)
    # num_classes beyond the labels seen adds classes that are left out of the macro mean
    np.testing.assert_allclose(metrics.precision_recall_f1(y, p, num_classes=c + 3), macro, rtol=1e-14)
    assert all(type(v) is float for v in got_macro)
    assert got_macro[0] == pytest.approx(skm.precision_score(y, p, average="macro", **kw), rel=1e-14)
    assert got_macro[1] == pytest.approx(skm.recall_score(y, p, average="macro", **kw), rel=1e-14)
    assert got_macro[2] == pytest.approx(skm.f1_score(y, p, average="macro", **kw), rel=1e-14)


def test_precision_recall_f1_zero_division():
    # class 1 never predicted (precision 0/0), class 2 never true (recall 0/0)
    p, r, f = metrics.precision_recall_f1([0, 0, 1, 1], [0, 2, 0, 0], num_classes=3, average=None)
    np.testing.assert_array_equal(p, [1 / 3, 0.0, 0.0])
    np.testing.assert_array_equal(r, [0.5, 0.0, 0.0])
    np.testing.assert_allclose(f, [0.4, 0.0, 0.0])


# ---------------------------------------------------------------------------
# ROC AUC
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("n", [2, 3, 10, 101, 5000])
@pytest.mark.parametrize("ties", ["none", "some", "heavy"])
def test_roc_auc(n, ties):
    rng = rng_for("auc", n, ties)
    y = rng.integers(0, 2, n)
    y[0], y[1] = 0, 1  # both classes
    if ties == "none":
        s = rng.standard_normal(n) + 0.5 * y
    elif ties == "some":
        s = np.round(rng.standard_normal(n) + 0.5 * y, 1)
    else:
        s = rng.integers(0, 3, n) + y * rng.integers(0, 2, n)
    want = skm.roc_auc_score(y, s)
    got = metrics.roc_auc(y, s)
    assert type(got) is float
    assert got == pytest.approx(want, rel=1e-13, abs=1e-15)
    assert metrics.roc_auc(y.astype(np.float32), s[:, None]) == got
    s2 = np.stack([-np.asarray(s, float), s], axis=1)
    assert metrics.roc_auc(y, s2) == got


def test_roc_auc_small_exact():
    assert metrics.roc_auc([0, 1], [0.2, 0.8]) == 1.0
    assert metrics.roc_auc([0, 1], [0.8, 0.2]) == 0.0
    assert metrics.roc_auc([0, 1, 0, 1], [0.5, 0.5, 0.5, 0.5]) == 0.5
    # pairs (neg, pos): (0.1, 0.4) win, (0.1, 0.35) win, (0.4, 0.4) tie, (0.4, 0.35) loss
    assert metrics.roc_auc([0, 1, 0, 1], [0.1, 0.4, 0.4, 0.35]) == 0.625


def test_roc_auc_errors():
    with pytest.raises(ValueError, match="needs both classes in y_true; received 0 positives and 3 negatives"):
        metrics.roc_auc([0, 0, 0], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match=r"y_true labels must be < 2 \(binary labels 0/1\); received 2"):
        metrics.roc_auc([0, 1, 2], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="scores must not contain NaN"):
        metrics.roc_auc([0, 1], [0.1, float("nan")])
    with pytest.raises(ValueError, match=r"scores must have shape \(N,\), \(N, 1\) or \(N, 2\); received shape \(2, 3\)"):
        metrics.roc_auc([0, 1], np.zeros((2, 3)))
    with pytest.raises(ValueError, match="y_true and scores must have the same number of samples; received 2 and 3"):
        metrics.roc_auc([0, 1], [0.1, 0.2, 0.3])


# ---------------------------------------------------------------------------
# regression
# ---------------------------------------------------------------------------
def test_mse_mae():
    rng = rng_for("reg")
    a = rng.standard_normal((100, 3))
    b = rng.standard_normal((100, 3)).astype(np.float32)
    assert metrics.mse(a, b) == pytest.approx(skm.mean_squared_error(a, b), rel=1e-12)
    assert metrics.mae(a, b) == pytest.approx(skm.mean_absolute_error(a, b), rel=1e-12)
    v, w = a[:, 0], b[:, :1]
    assert metrics.mse(v, w) == pytest.approx(skm.mean_squared_error(v, w[:, 0]), rel=1e-12)
    assert metrics.mae(w, v) == pytest.approx(skm.mean_absolute_error(v, w[:, 0]), rel=1e-12)
    assert metrics.mse([1, 2, 3], [1, 2, 5]) == pytest.approx(4 / 3)
    assert metrics.mae([1, 2, 3], [1, 2, 5]) == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match=r"same shape; received \(100, 3\) and \(100, 2\)"):
        metrics.mse(a, b[:, :2])
    with pytest.raises(ValueError, match="y_true and y_pred must have the same number of samples; received 100 and 99"):
        metrics.mae(a, b[:99])


# ---------------------------------------------------------------------------
# checks shared by the classification metrics
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("fn", [
    metrics.accuracy, metrics.confusion_matrix, metrics.precision_recall_f1,
], ids=lambda f: f.__name__)
def test_classification_input_checks(fn):
    with pytest.raises(ValueError, match="y_true and y_pred must have the same number of samples; received 3 and 2"):
        fn([0, 1, 1], [0, 1])
    with pytest.raises(ValueError, match="must not be empty"):
        fn([], [])
    with pytest.raises(ValueError, match="y_true must hold class labels >= 0; received -1"):
        fn([0, -1], [0, 1])
    with pytest.raises(ValueError, match="y_pred must hold class labels >= 0; received -2"):
        fn([0, 1], [0, -2])
    with pytest.raises(ValueError, match="y_true must hold integer class labels; received the value 0.5"):
        fn([0.0, 0.5], [0, 1])
    with pytest.raises(ValueError, match=r"y_true labels must be < 3 \(the number of columns of y_pred\); received 3"):
        fn([0, 3], np.zeros((2, 3)))
    with pytest.raises(ValueError, match=r"y_true must have shape \(N,\), \(N, 1\) or \(N, C\); received shape \(2, 1, 1\)"):
        fn(np.zeros((2, 1, 1)), [0, 1])
    with pytest.raises(TypeError, match="y_pred must be a numeric array; received dtype <U1"):
        fn([0, 1], ["a", "b"])
    with pytest.raises(ValueError, match="y_true must be an array with one row per sample; received a scalar"):
        fn(1, [1])
    with pytest.raises(TypeError, match="threshold must be a real number; received str"):
        fn([0, 1], [0.2, 0.7], threshold="0.5")


@pytest.mark.parametrize("fn", [metrics.confusion_matrix, metrics.precision_recall_f1],
                         ids=lambda f: f.__name__)
def test_num_classes_checks(fn):
    with pytest.raises(ValueError, match=r"y_true labels must be < 2 \(num_classes=2\); received 2"):
        fn([0, 2], [0, 1], num_classes=2)
    with pytest.raises(ValueError, match=r"y_pred labels must be < 2 \(num_classes=2\); received 4"):
        fn([0, 1], [0, 4], num_classes=2)
    with pytest.raises(ValueError, match="num_classes must be an int >= 1 or None; received 0"):
        fn([0, 0], [0, 0], num_classes=0)
    with pytest.raises(TypeError, match="num_classes must be an int >= 1 or None; received float 2.0"):
        fn([0, 1], [0, 1], num_classes=2.0)


def test_top_k_checks():
    s = np.zeros((2, 4))
    with pytest.raises(ValueError, match="k must be an int >= 1; received 0"):
        metrics.top_k_accuracy([0, 1], s, k=0)
    with pytest.raises(TypeError, match="k must be an int >= 1; received float 2.0"):
        metrics.top_k_accuracy([0, 1], s, k=2.0)
    with pytest.raises(ValueError, match=r"scores must have shape \(N, C\) with C >= 2; received shape \(2,\)"):
        metrics.top_k_accuracy([0, 1], [0.1, 0.2])
    with pytest.raises(ValueError, match=r"y_true labels must be < 4 \(the number of columns of scores\); received 4"):
        metrics.top_k_accuracy([0, 4], s)
    with pytest.raises(ValueError, match="y_true and scores must have the same number of samples; received 3 and 2"):
        metrics.top_k_accuracy([0, 1, 2], s)


def test_precision_recall_f1_average_check():
    with pytest.raises(ValueError, match="average must be 'macro' or None; received 'micro'"):
        metrics.precision_recall_f1([0, 1], [0, 1], average="micro")


# ---------------------------------------------------------------------------
# registry
# ---------------------------------------------------------------------------
def test_get():
    assert metrics.NAMES == ("accuracy", "top_k_accuracy", "precision", "recall", "f1", "roc_auc", "mse", "mae",
                             "acc")
    rng = rng_for("get")
    n, c = 300, 7
    y = rng.integers(0, c, n)
    s = rng.standard_normal((n, c))
    s[np.arange(n), y] += 1.0
    p = s.argmax(1)
    expect = {
        "accuracy": skm.accuracy_score(y, p),
        "top_k_accuracy": skm.top_k_accuracy_score(y, s, k=5, labels=np.arange(c)),
        "precision": skm.precision_score(y, p, average="macro", zero_division=0),
        "recall": skm.recall_score(y, p, average="macro", zero_division=0),
        "f1": skm.f1_score(y, p, average="macro", zero_division=0),
    }
    for name, want in expect.items():
        f = metrics.get(name)
        assert f.__name__ == name
        got = f(y, s)
        assert type(got) is float and got == pytest.approx(want, rel=1e-14), name
    yb = (y % 2).astype(np.float32)
    prob = 1 / (1 + np.exp(-(rng.standard_normal(n) + yb)))
    assert metrics.get("roc_auc")(yb, prob[:, None]) == pytest.approx(skm.roc_auc_score(yb, prob), rel=1e-13)
    assert metrics.get("mse")(prob, yb) == pytest.approx(skm.mean_squared_error(yb, prob), rel=1e-12)
    assert metrics.get("mae")(prob, yb) == pytest.approx(skm.mean_absolute_error(yb, prob), rel=1e-12)


def test_get_errors_and_callables():
    def mine(y_true, scores):
        return 0.0

    assert metrics.get(mine) is mine
    with pytest.raises(ValueError, match=r"unknown metric 'accu'; expected one of \['accuracy', 'top_k_accuracy', "):
        metrics.get("accu")
    acc = metrics.get("acc")  # Keras's short name: accuracy, logged as "acc"
    assert acc.__name__ == "acc" and acc([0, 1, 1], [[1, 0], [0, 1], [1, 0]]) == 2 / 3
    with pytest.raises(TypeError, match="metric must be a name"):
        metrics.get(3)
