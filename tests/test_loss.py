"""Loss kernels (fusedtrain.ops.softmax_cross_entropy, bce_with_logits, mse)
against their NumPy references (fusedtrain.reference), against central finite
differences, against torch.nn.functional when torch is installed, and with bad
input.

The kernels' exp / log1p / log are polynomials accurate to about 1 ulp and
sums run in a different order than NumPy's, so kernel and reference agree to
a few ulps, not bitwise: float64 to rtol 1e-12, float32 to 1e-5 (atol scaled
by the largest gradient element, for the elements that cancel to ~0).
"""

from __future__ import annotations

import itertools
import zlib

import numpy as np
import pytest

import fusedtrain
from fusedtrain import _core, ops, reference

DTYPES = (np.float32, np.float64)
RTOL = {np.dtype(np.float32): 1e-5, np.dtype(np.float64): 1e-12}
REDUCTIONS = ("mean", "sum", "none")
# (N, C): one row, odd sizes, a long row, short rows. Float32 rows of up to
# 16 classes run 16 rows at a time where 16 rows are left (the rest, one at
# a time): (33, 7), (48, 16), (19, 2) and (1000, 10) take both paths.
CE_SHAPES = ((1, 1), (1, 7), (7, 33), (33, 7), (3, 1000), (1000, 10), (48, 16), (19, 2))


def rng_for(*key) -> np.random.Generator:
    return np.random.default_rng(zlib.crc32(repr(key).encode()))


def dname(dtype) -> str:
    return np.dtype(dtype).name


def assert_close(got, want, dtype, what=""):
    """Element by element; atol scaled by the largest |want| (elements that
    cancel to ~0, like the label's gradient, carry the rounding of 1)."""
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape, what
    rtol = RTOL[np.dtype(dtype)]
    finite = want[np.isfinite(want)]
    scale = float(np.max(np.abs(finite))) if finite.size else 1.0
    np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol * scale + 1e-30, err_msg=what)


def assert_loss_close(got, want, dtype, reduction, what=""):
    if reduction == "none":
        assert isinstance(got, np.ndarray) and got.dtype == np.dtype(dtype), what
        assert_close(got, want, dtype, what)
    else:
        assert type(got) is float, what
        np.testing.assert_allclose(got, want, rtol=RTOL[np.dtype(dtype)], atol=1e-30,
                                   err_msg=what)


@pytest.fixture
def threads_restored():
    n = fusedtrain.get_num_threads()
    yield n
    fusedtrain.set_num_threads(n)


def ce_data(n, c, dtype, *, ignored=False, scale=3.0, key=0):
    rng = rng_for("ce", n, c, dname(dtype), ignored, key)
    x = np.ascontiguousarray(rng.standard_normal((n, c)) * scale, dtype=dtype)
    y = rng.integers(0, c, n).astype(np.int64)
    if ignored and n > 1:
        y[rng.random(n) < 0.3] = -100
        y[0] = -100
    w = np.ascontiguousarray(rng.random(c) + 0.25, dtype=dtype)
    return x, y, w


# ---------------------------------------------------------------------------
# softmax cross-entropy
# ---------------------------------------------------------------------------
CE_OPTIONS = [dict(weighted=wt, label_smoothing=ls, reduction=r, ignored=ig)
              for wt, ls, r, ig in itertools.product((False, True), (0.0, 0.1), REDUCTIONS,
                                                     (False, True))]


def opt_id(o):
    return "-".join([("w" if o["weighted"] else "nw"), f"ls{o['label_smoothing']:g}",
                     o["reduction"], ("ig" if o["ignored"] else "all")])


@pytest.mark.parametrize("dtype", DTYPES, ids=dname)
@pytest.mark.parametrize("shape", CE_SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("opt", CE_OPTIONS, ids=opt_id)
def test_ce_matches_reference(dtype, shape, opt):
    x, y, w = ce_data(*shape, dtype, ignored=opt["ignored"])
    kw = dict(weight=w if opt["weighted"] else None, label_smoothing=opt["label_smoothing"],
              reduction=opt["reduction"])
    x0 = x.copy()
    loss, g = ops.softmax_cross_entropy(x, y, **kw)
    want_loss, want_g = reference.softmax_cross_entropy(x, y, **kw)
    assert np.array_equal(x, x0), "logits were modified"
    assert g.dtype == x.dtype and g.shape == x.shape and g.flags.c_contiguous
    assert_loss_close(loss, want_loss, dtype, opt["reduction"], "loss")
    assert_close(g, want_g, dtype, "dlogits")


@pytest.mark.parametrize("dtype", DTYPES, ids=dname)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_ce_out_buffer_and_in_place(dtype, reduction):
    x, y, w = ce_data(33, 7, dtype, ignored=True)
    kw = dict(weight=w, label_smoothing=0.05, reduction=reduction)
    want_loss, want_g = reference.softmax_cross_entropy(x, y, **kw)

    out = np.full_like(x, 7.0)
    loss, g = ops.softmax_cross_entropy(x, y, out=out, **kw)
    assert g is out
    assert_loss_close(loss, want_loss, dtype, reduction, "out= loss")
    assert_close(out, want_g, dtype, "out= dlogits")

    xi = x.copy()
    loss_i, g_i = ops.softmax_cross_entropy(xi, y, out=xi, **kw)
    assert g_i is xi
    assert_loss_close(loss_i, want_loss, dtype, reduction, "in-place loss")
    assert_close(xi, want_g, dtype, "in-place dlogits")
    # in place and out of place run the same math
    assert np.array_equal(xi, out)
    if reduction == "none":
        assert np.array_equal(loss_i, loss)
    else:
        assert loss_i == loss


@pytest.mark.parametrize("label_dtype", [np.int8, np.int16, np.int32, np.int64, np.uint8,
                                         np.uint16, np.uint32, np.uint64], ids=dname)
def test_ce_label_dtypes(label_dtype):
    x, y, w = ce_data(33, 7, np.float64)
    want = ops.softmax_cross_entropy(x, y, weight=w)
    got = ops.softmax_cross_entropy(x, y.astype(label_dtype), weight=w)
    assert got[0] == want[0]
    assert np.array_equal(got[1], want[1])
    # ignore_index in the labels' own range (255 for uint8)
    ignore = min(int(np.iinfo(label_dtype).max), 2**63 - 1)  # ignore_index is an int64
    yi = y.astype(label_dtype)
    yi[::3] = ignore
    loss, g = ops.softmax_cross_entropy(x, yi, ignore_index=ignore)
    want_loss, want_g = reference.softmax_cross_entropy(x, yi, ignore_index=ignore)
    assert_close(loss, want_loss, np.float64)
    assert_close(g, want_g, np.float64)
    assert not g[::3].any()


@pytest.mark.parametrize("dtype", DTYPES, ids=dname)
def test_ce_ignore_index(dtype):
    x, y, w = ce_data(33, 7, dtype)
    # an ignore_index inside [0, C): every row of class 3 is skipped
    for kw in (dict(), dict(weight=w, label_smoothing=0.2)):
        loss, g = ops.softmax_cross_entropy(x, y, ignore_index=3, **kw)
        want_loss, want_g = reference.softmax_cross_entropy(x, y, ignore_index=3, **kw)
        assert_close(loss, want_loss, dtype)
        assert_close(g, want_g, dtype)
        assert not g[y == 3].any()
        kept = y != 3
        sub_loss, sub_g = ops.softmax_cross_entropy(np.ascontiguousarray(x[kept]), y[kept], **kw)
        assert_close(loss, sub_loss, dtype, "ignored rows must not count in the mean")
        assert_close(g[kept], sub_g, dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=dname)
@pytest.mark.parametrize("weighted", [False, True])
def test_ce_all_ignored(dtype, weighted):
    x, _, w = ce_data(7, 5, dtype)
    y = np.full(7, -100)
    weight = w if weighted else None
    out = np.full_like(x, 3.0)
    loss, g = ops.softmax_cross_entropy(x, y, weight=weight, label_smoothing=0.1, out=out)
    assert np.isnan(loss)  # 0 / 0, as torch
    assert not g.any()
    loss, g = ops.softmax_cross_entropy(x, y, weight=weight, reduction="sum")
    assert loss == 0.0 and not g.any()
    loss, g = ops.softmax_cross_entropy(x, y, weight=weight, reduction="none")
    assert not loss.any() and not g.any()


@pytest.mark.parametrize("dtype", DTYPES, ids=dname)
def test_ce_empty_batch(dtype):
    x = np.zeros((0, 4), dtype)
    y = np.zeros(0, np.int64)
    loss, g = ops.softmax_cross_entropy(x, y)
    assert np.isnan(loss) and g.shape == (0, 4)
    loss, g = ops.softmax_cross_entropy(x, y, reduction="sum")
    assert loss == 0.0
    loss, g = ops.softmax_cross_entropy(x, y, reduction="none")
    assert loss.shape == (0,)


@pytest.mark.parametrize("dtype", DTYPES, ids=dname)
@pytest.mark.parametrize("tiles", [1, 11], ids=["3rows", "33rows"])
def test_ce_large_logits_finite(dtype, tiles):
    x = np.array([[1e4, -1e4, 0.0, 5e3], [-1e4, -1e4, -1e4, -1e4], [1e4, 1e4, -1e4, 0.0]],
                 dtype=dtype)
    y = np.array([1, 2, 3])
    x, y = np.tile(x, (tiles, 1)), np.tile(y, tiles)  # 33 rows: two groups of 16 and one
    w = np.array([1.0, 2.0, 0.5, 1.5], dtype)
    for kw in (dict(), dict(weight=w, label_smoothing=0.3)):
        for reduction in REDUCTIONS:
            loss, g = ops.softmax_cross_entropy(x, y, reduction=reduction, **kw)
            assert np.all(np.isfinite(loss)) and np.all(np.isfinite(g))
            want_loss, want_g = reference.softmax_cross_entropy(x, y, reduction=reduction, **kw)
            assert_close(loss, want_loss, dtype)
            assert_close(g, want_g, dtype)
    # -inf logits (masked classes) are fine as long as the label is not one
    xm = np.array([[0.5, -np.inf, 1.0], [-np.inf, 2.0, -np.inf]], dtype)
    loss, g = ops.softmax_cross_entropy(xm, np.array([0, 1]), reduction="none")
    assert np.all(np.isfinite(loss)) and np.all(np.isfinite(g))
    assert g[0, 1] == 0 and g[1, 0] == 0 and g[1, 2] == 0 and loss[1] == 0


@pytest.mark.parametrize("dtype", DTYPES, ids=dname)
@pytest.mark.parametrize("shape,bad", [((7, 33), (2,)), ((40, 10), (2, 17, 37))],
                         ids=["7x33", "40x10"])
def test_ce_nan_propagates(dtype, shape, bad):
    x, y, w = ce_data(*shape, dtype)
    bad = list(bad)
    x[bad, 5] = np.nan
    for kw in (dict(), dict(weight=w, label_smoothing=0.1)):
        loss, g = ops.softmax_cross_entropy(x, y, reduction="none", **kw)
        assert np.all(np.isnan(loss[bad])) and np.all(np.isfinite(np.delete(loss, bad)))
        assert np.all(np.isnan(g[bad])) and np.all(np.isfinite(np.delete(g, bad, axis=0)))
        for reduction in ("mean", "sum"):
            assert np.isnan(ops.softmax_cross_entropy(x, y, reduction=reduction, **kw)[0])


# ---------------------------------------------------------------------------
# BCE with logits, MSE
# ---------------------------------------------------------------------------
EW_SHAPES = ((1,), (7,), (33, 7), (1000,), (2, 3, 5))


def ew_data(shape, dtype, key=0, scale=4.0):
    rng = rng_for("ew", shape, dname(dtype), key)
    x = np.ascontiguousarray(rng.standard_normal(shape) * scale, dtype=dtype)
    t = np.ascontiguousarray(rng.random(shape), dtype=dtype)
    return x, t


@pytest.mark.parametrize("dtype", DTYPES, ids=dname)
@pytest.mark.parametrize("shape", EW_SHAPES, ids=str)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("kernel", ["bce_with_logits", "mse"])
def test_elementwise_matches_reference(kernel, reduction, shape, dtype):
    x, t = ew_data(shape, dtype)
    if kernel == "bce_with_logits":
        t[..., ::2] = np.round(t[..., ::2])  # hard 0/1 targets too
    x0, t0 = x.copy(), t.copy()
    loss, g = getattr(ops, kernel)(x, t, reduction=reduction)
    want_loss, want_g = getattr(reference, kernel)(x, t, reduction=reduction)
    assert np.array_equal(x, x0) and np.array_equal(t, t0)
    assert g.dtype == x.dtype and g.shape == x.shape
    assert_loss_close(loss, want_loss, dtype, reduction, "loss")
    assert_close(g, want_g, dtype, "grad")


@pytest.mark.parametrize("dtype", DTYPES, ids=dname)
def test_bce_large_logits_finite(dtype):
    x = np.array([1e4, -1e4, 1e4, -1e4, 0.0, 30.0, -30.0, 100.0, -100.0], dtype)
    t = np.array([1.0, 0.0, 0.0, 1.0, 0.5, 1.0, 0.0, 0.3, 0.7], dtype)
    for reduction in REDUCTIONS:
        loss, g = ops.bce_with_logits(x, t, reduction=reduction)
        assert np.all(np.isfinite(loss)) and np.all(np.isfinite(g))
        want_loss, want_g = reference.bce_with_logits(x, t, reduction=reduction)
        assert_close(loss, want_loss, dtype)
        assert_close(g, want_g, dtype)
    # tiny losses keep their relative precision (log1p, not log(1 + e))
    loss, _ = ops.bce_with_logits(np.array([30.0, -30.0], dtype), np.array([1.0, 0.0], dtype),
                                  reduction="none")
    np.testing.assert_allclose(loss, np.log1p(np.exp(-30.0)), rtol=RTOL[np.dtype(dtype)])


@pytest.mark.parametrize("dtype", DTYPES, ids=dname)
@pytest.mark.parametrize("kernel", ["bce_with_logits", "mse"])
def test_elementwise_nan_propagates(kernel, dtype):
    x, t = ew_data((33,), dtype)
    x[4] = np.nan
    t[9] = np.nan
    loss, g = getattr(ops, kernel)(x, t, reduction="none")
    assert np.isnan(loss[4]) and np.isnan(loss[9]) and np.isnan(g[4]) and np.isnan(g[9])
    assert np.isfinite(np.delete(loss, [4, 9])).all()
    for reduction in ("mean", "sum"):
        assert np.isnan(getattr(ops, kernel)(x, t, reduction=reduction)[0])


@pytest.mark.parametrize("kernel", ["bce_with_logits", "mse"])
def test_elementwise_empty(kernel):
    x = np.zeros((0, 3))
    loss, g = getattr(ops, kernel)(x, x.copy())
    assert np.isnan(loss) and g.shape == (0, 3)
    assert getattr(ops, kernel)(x, x.copy(), reduction="sum")[0] == 0.0


# ---------------------------------------------------------------------------
# gradients against central finite differences (float64)
# ---------------------------------------------------------------------------
def numeric_grad(f, x, h=1e-6):
    g = np.zeros_like(x)
    for i in np.ndindex(x.shape):
        old = x[i]
        x[i] = old + h
        up = f(x)
        x[i] = old - h
        down = f(x)
        x[i] = old
        g[i] = (up - down) / (2 * h)
    return g


def total(loss):
    return float(np.sum(loss))  # "none": the gradient is that of the sum


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("opts", [dict(), dict(weighted=True), dict(label_smoothing=0.15),
                                  dict(weighted=True, label_smoothing=0.15, ignored=True)],
                         ids=["plain", "weight", "smooth", "all"])
def test_ce_gradient_finite_differences(reduction, opts):
    x, y, w = ce_data(5, 7, np.float64, ignored=opts.get("ignored", False), key=1)
    kw = dict(weight=w if opts.get("weighted") else None,
              label_smoothing=opts.get("label_smoothing", 0.0), reduction=reduction)
    _, g = ops.softmax_cross_entropy(x, y, **kw)
    num = numeric_grad(lambda z: total(ops.softmax_cross_entropy(z, y, **kw)[0]), x.copy())
    np.testing.assert_allclose(g, num, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("kernel", ["bce_with_logits", "mse"])
def test_elementwise_gradient_finite_differences(kernel, reduction):
    x, t = ew_data((3, 5), np.float64, key=2)
    fn = getattr(ops, kernel)
    _, g = fn(x, t, reduction=reduction)
    num = numeric_grad(lambda z: total(fn(z, t, reduction=reduction)[0]), x.copy())
    np.testing.assert_allclose(g, num, rtol=1e-6, atol=1e-8)


# ---------------------------------------------------------------------------
# determinism: the same bits for any thread count
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES, ids=dname)
def test_deterministic_across_threads(dtype, threads_restored):
    x, y, w = ce_data(4099, 33, dtype, ignored=True, key=3)  # > 2 * 32768 elements
    xs, ys, ws = ce_data(16411, 10, dtype, ignored=True, key=3)  # rows of few classes
    xe, te = ew_data((200003,), dtype, key=3)
    runs = {}
    for nt in (1, 2):
        fusedtrain.set_num_threads(nt)
        res = []
        for reduction in REDUCTIONS:
            res.append(ops.softmax_cross_entropy(x, y, weight=w, label_smoothing=0.1,
                                                 reduction=reduction))
            res.append(ops.softmax_cross_entropy(xs, ys, weight=ws, label_smoothing=0.1,
                                                 reduction=reduction))
            res.append(ops.softmax_cross_entropy(xs, ys, reduction=reduction))
            res.append(ops.bce_with_logits(xe, te, reduction=reduction))
            res.append(ops.mse(xe, te, reduction=reduction))
        runs[nt] = res
    for (l1, g1), (l2, g2) in zip(runs[1], runs[2]):
        assert np.asarray(l1).tobytes() == np.asarray(l2).tobytes()
        assert g1.tobytes() == g2.tobytes()


# ---------------------------------------------------------------------------
# torch.nn.functional
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES, ids=dname)
def test_matches_torch(dtype):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    rtol = 1e-10 if dtype == np.float64 else 2e-5

    def check(ours, theirs_loss, theirs_grad, what):
        loss, g = ours
        np.testing.assert_allclose(np.asarray(loss), theirs_loss.detach().numpy(), rtol=rtol,
                                   atol=rtol * 1e-2, err_msg=what)
        np.testing.assert_allclose(g, theirs_grad.numpy(), rtol=rtol,
                                   atol=rtol * float(np.abs(g).max()), err_msg=what)

    x, y, w = ce_data(33, 7, dtype, ignored=True, key=4)
    y[y == -100] = 4  # ignore_index=4 below: a class index
    y[::5] = -7
    for weighted, eps, reduction in itertools.product((False, True), (0.0, 0.2), REDUCTIONS):
        tx = torch.tensor(x, requires_grad=True)
        tw = torch.tensor(w) if weighted else None
        tl = F.cross_entropy(tx, torch.tensor(y), weight=tw, ignore_index=-7,
                             label_smoothing=eps, reduction=reduction)
        tl.sum().backward()
        ours = ops.softmax_cross_entropy(x, y, weight=w if weighted else None, ignore_index=-7,
                                         label_smoothing=eps, reduction=reduction)
        check(ours, tl, tx.grad, f"cross_entropy weighted={weighted} eps={eps} {reduction}")

    xe, te = ew_data((33, 7), dtype, key=5)
    for reduction in REDUCTIONS:
        tx = torch.tensor(xe, requires_grad=True)
        tl = F.binary_cross_entropy_with_logits(tx, torch.tensor(te), reduction=reduction)
        tl.sum().backward()
        check(ops.bce_with_logits(xe, te, reduction=reduction), tl, tx.grad, f"bce {reduction}")
        tx = torch.tensor(xe, requires_grad=True)
        tl = F.mse_loss(tx, torch.tensor(te), reduction=reduction)
        tl.sum().backward()
        check(ops.mse(xe, te, reduction=reduction), tl, tx.grad, f"mse {reduction}")


# ---------------------------------------------------------------------------
# bad input: the error names the argument; nothing is written
# ---------------------------------------------------------------------------
def _ce_bad_cases():
    x, y, w = ce_data(6, 4, np.float32)
    xd = x.astype(np.float64)
    big = np.zeros((12, 4), np.float32)
    y_huge = y.astype(np.uint64)
    y_huge[2] = 2**63 + 5  # above INT64_MAX
    return [
        # (id, kwargs, exception, text that must appear)
        ("logits-list", dict(logits=x.tolist()), TypeError, "logits"),
        ("logits-int", dict(logits=x.astype(np.int32)), TypeError, "logits"),
        ("logits-f16", dict(logits=x.astype(np.float16)), TypeError, "logits"),
        ("logits-1d", dict(logits=x[0].copy()), ValueError, "logits"),
        ("logits-strided", dict(logits=np.asfortranarray(x)), ValueError, "logits"),
        ("logits-no-classes", dict(logits=np.zeros((6, 0), np.float32)), ValueError, "logits"),
        ("logits-byteswapped", dict(logits=x.astype(">f4")), TypeError, "logits"),
        ("labels-float", dict(labels=y.astype(np.float32)), TypeError, "labels"),
        ("labels-byteswapped", dict(labels=y.astype(">i8")), TypeError, "labels"),
        ("labels-bool", dict(labels=y > 1), TypeError, "labels"),
        ("labels-short", dict(labels=y[:5].copy()), ValueError, "labels"),
        ("labels-2d", dict(labels=y.reshape(2, 3)), ValueError, "labels"),
        ("labels-strided", dict(labels=np.repeat(y, 2)[::2]), ValueError, "labels"),
        ("labels-list", dict(labels=y.tolist()), TypeError, "labels"),
        ("labels-too-big", dict(labels=np.where(np.arange(6) == 3, 4, y)), ValueError,
         "received 4 at row 3"),
        ("labels-negative", dict(labels=np.where(np.arange(6) == 5, -1, y)), ValueError,
         "received -1 at row 5"),
        ("labels-huge-u64", dict(labels=y_huge), ValueError, f"received {2**63 + 5} at row 2"),
        ("weight-shape", dict(weight=w[:3].copy()), ValueError, "weight"),
        ("weight-dtype", dict(weight=w.astype(np.float64)), TypeError, "weight"),
        ("weight-strided", dict(weight=np.repeat(w, 2)[::2]), ValueError, "weight"),
        ("out-shape", dict(out=np.zeros((6, 5), np.float32)), ValueError, "out"),
        ("out-dtype", dict(out=np.zeros((6, 4), np.float64)), TypeError, "out"),
        ("out-readonly", dict(out=np.zeros((6, 4), np.float32)), ValueError, "out"),
        ("out-strided", dict(out=np.zeros((6, 8), np.float32)[:, ::2]), ValueError, "out"),
        ("out-overlaps-logits", dict(logits=big[:6], out=big[3:9]), ValueError, "out"),
        ("out-aliases-weight", dict(weight=big[0], out=big[:6]), ValueError, "out"),
        ("reduction", dict(reduction="avg"), ValueError,
         "reduction must be one of 'mean', 'sum', 'none'; received 'avg'"),
        ("reduction-none-object", dict(reduction=None), ValueError, "reduction"),
        ("label_smoothing", dict(label_smoothing=1.5), ValueError, "label_smoothing"),
        ("label_smoothing-neg", dict(label_smoothing=-0.1), ValueError, "label_smoothing"),
        ("label_smoothing-str", dict(label_smoothing="0.1"), TypeError, "label_smoothing"),
        ("ignore_index-float", dict(ignore_index=-100.0), TypeError, "ignore_index"),
        ("f64-logits-f32-weight", dict(logits=xd, weight=w), TypeError, "weight"),
    ]


@pytest.mark.parametrize("case", _ce_bad_cases(), ids=lambda c: c[0])
def test_ce_bad_input(case):
    name, over, exc, text = case
    x, y, w = ce_data(6, 4, np.float32)
    kw = dict(logits=x, labels=y, weight=None, out=np.full_like(x, 5.0))
    kw.update(over)
    if name == "out-readonly":
        kw["out"].flags.writeable = False
    arrays = [a for a in kw.values() if isinstance(a, np.ndarray)]
    snap = [a.tobytes() for a in arrays]
    with pytest.raises(exc) as info:
        ops.softmax_cross_entropy(**kw)
    assert text in str(info.value), str(info.value)
    assert [a.tobytes() for a in arrays] == snap, "an array was modified"


def test_ce_bad_label_in_place_leaves_logits():
    x, y, _ = ce_data(40, 5, np.float64)
    y[37] = 5
    x0 = x.copy()
    with pytest.raises(ValueError, match=r"labels: .*\[0, 5\).*received 5 at row 37"):
        ops.softmax_cross_entropy(x, y, out=x)
    assert np.array_equal(x, x0)


@pytest.mark.parametrize("kernel, a, b", [("bce_with_logits", "logits", "targets"),
                                          ("mse", "pred", "target")])
def test_elementwise_bad_input(kernel, a, b):
    fn = getattr(ops, kernel)
    x, t = ew_data((6, 4), np.float32)
    cases = [
        ({a: x.tolist()}, TypeError, a),
        ({a: x.astype(np.int64)}, TypeError, a),
        ({a: np.asfortranarray(x)}, ValueError, a),
        ({b: t.astype(np.float64)}, TypeError, b),
        ({b: t.T.copy()}, ValueError, b),
        ({b: t.reshape(24)}, ValueError, b),
        ({b: np.asfortranarray(t)}, ValueError, b),
        ({b: t.tolist()}, TypeError, b),
        ({"reduction": "mea"}, ValueError, "reduction must be one of 'mean', 'sum', 'none'"),
    ]
    for over, exc, text in cases:
        kw = {a: x, b: t}
        kw.update(over)
        snap = x.tobytes(), t.tobytes()
        with pytest.raises(exc) as info:
            fn(**kw)
        assert text in str(info.value), (over, str(info.value))
        assert (x.tobytes(), t.tobytes()) == snap


def test_short_exponential_is_the_general_one_where_the_losses_use_it():
    """The losses take exp of x - max(x) and of -|x| only (x <= 0, or NaN),
    with a shorter form of the polynomial (no overflow end, no exponent
    clamp): bit for bit the general one on every float32 input there and on
    float64 ones across the range, at its underflow end and on NaNs."""
    assert _core._exp_selfcheck() == 0


def test_exp_selfcheck_rejects_a_bad_stride():
    with pytest.raises(ValueError, match="stride64"):
        _core._exp_selfcheck(0)
