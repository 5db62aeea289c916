"""Dense-layer kernels (fusedtrain.ops.dense_forward / dense_backward).

Every result is compared element by element with the NumPy reference
(fusedtrain.reference.dense) evaluated in float64 on the same inputs, under
a per-element error bound derived from the operations (see ``z_bound`` and
``act_bound``) rather than one blanket tolerance:

* GEMM: OpenBLAS and NumPy sum in different orders, so the GEMM is bounded
  with the probabilistic rounding-error bound of Higham & Mary (2019, "A new
  approach to probabilistic rounding error analysis", SIAM J. Sci. Comput.
  41(5)): |fl(a.b) - a.b| <= lam * sqrt(K) * u * sum_k |a_k b_k|, which holds
  with probability >= 1 - 2 exp(-lam^2 / 2) per element. lam = 8 (failure
  probability ~1e-14 per element; the data is seeded anyway). The bound is
  doubled: the float64 reference has its own rounding error.
* epilogue: the activation's Lipschitz constant times the GEMM bound, plus a
  few ulps of the activation's own evaluation (relative to |y| and |z|: 1 +
  erf(z / sqrt 2) cancels for z << 0, so gelu's error is relative to |z|).

A tighter test (``test_epilogue_against_its_own_gemm``) isolates the fused
epilogue from the GEMM: it applies the reference activation to the kernel's
own identity output, so only a few ulps of the activation remain.

Backward: dz = dy * act'(saved) is bounded the same way, then propagated
through dw = x.T @ dz, dx = dz @ w.T and db = sum(dz); central finite
differences in float64 check the whole chain rule independently of the
reference.
"""

from __future__ import annotations

import ctypes
import math
import zlib

import numpy as np
import pytest

import fusedtrain
from fusedtrain import ops
from fusedtrain.reference import dense as ref

DTYPES = (np.float32, np.float64)
UNIT = {np.dtype(np.float32): 2.0**-24, np.dtype(np.float64): 2.0**-53}  # unit roundoff
LAM = 8.0  # Higham & Mary's lambda

# (name, activation, kwargs): every activation and variant of dense_forward
ACTS = [
    ("identity", "identity", {}),
    ("relu", "relu", {}),
    ("leaky0.01", "leaky_relu", {"negative_slope": 0.01}),
    ("leaky0.2", "leaky_relu", {"negative_slope": 0.2}),
    ("sigmoid", "sigmoid", {}),
    ("tanh", "tanh", {}),
    ("gelu", "gelu", {}),
    ("gelu_tanh", "gelu", {"approximate": "tanh"}),
    ("softmax", "softmax", {}),
]
ACT_IDS = [a[0] for a in ACTS]

# (B, in, out): every B in {1, 7, 33, 1000}; 7, 33 and 1000 each as in and as out
SHAPES = [(1, 7, 1000), (1, 1000, 7), (7, 33, 7), (7, 1000, 33), (33, 7, 33), (33, 1000, 7),
          (1000, 7, 33), (1000, 33, 7)]


def u_of(dtype) -> float:
    return UNIT[np.dtype(dtype)]


def rng_for(*key) -> np.random.Generator:
    return np.random.default_rng(zlib.crc32(repr(key).encode()))


def layer(rng, B, n_in, n_out, dtype, bias=True, scale=1.0):
    """x (B, in) ~ N(0, scale^2), w (in, out) ~ N(0, 1/in) (so z ~ N(0, scale^2)),
    b (out,) ~ N(0, 0.25) or None."""
    x = (rng.standard_normal((B, n_in)) * scale).astype(dtype)
    w = (rng.standard_normal((n_in, n_out)) / math.sqrt(n_in)).astype(dtype)
    b = (rng.standard_normal(n_out) * 0.5).astype(dtype) if bias else None
    return x, w, b


def f64(a):
    return None if a is None else np.asarray(a, dtype=np.float64)


# ---------------------------------------------------------------------------
# error bounds
# ---------------------------------------------------------------------------
def gemm_bound(a_abs, b_abs, K, u):
    """lam * sqrt(K + 1) * u * (|a| @ |b|): one GEMM (plus one added term)."""
    return LAM * math.sqrt(K + 1) * u * (a_abs @ b_abs)


def z_bound(x, w, b, u):
    """Per-element bound on |z_kernel - z_exact|, z = x @ w + b, both sides rounded."""
    s = np.abs(f64(x)) @ np.abs(f64(w))
    if b is not None:
        s = s + np.abs(f64(b))
    return 2 * LAM * math.sqrt(x.shape[1] + 1) * u * s


# |act'| bounds (Lipschitz constants); gelu's derivative peaks at 1.1289
LIP = {"identity": 1.0, "relu": 1.0, "sigmoid": 0.25, "tanh": 1.0, "gelu": 1.13, "softmax": 1.0}


def act_bound(act, kw, z, y, zb, u):
    """Per-element bound on |y_kernel - act(z_exact)| given |z_kernel - z_exact| <= zb."""
    if act == "softmax":
        # d log y_j = dz_j - sum_k y_k dz_k, so |dy_j| <= y_j (2 max_row(zb)); then
        # rounding of v = z + b (relative to |z| and the row max), of exp, and of
        # the row sum (out terms)
        n = z.shape[1]
        zmax = np.abs(z).max(axis=1, keepdims=True)
        eps = 2.2 * zb.max(axis=1, keepdims=True) + u * (4 * (np.abs(z) + zmax) + n + 8)
        return y * eps + 1e-300
    lip = max(1.0, kw.get("negative_slope", 0.0)) if act == "leaky_relu" else LIP[act]
    return lip * zb + 8 * u * (np.abs(y) + np.abs(z)) + 1e-300


def assert_within(label, got, expected, bound):
    got = np.asarray(got)
    assert got.shape == expected.shape, f"{label}: shape {got.shape}, expected {expected.shape}"
    with np.errstate(all="ignore"):  # inf - inf in a broken result: report it, don't warn
        err = np.abs(f64(got) - expected)
        bad = ~(err <= bound)  # NaN fails
    if bad.any():
        i = np.unravel_index(np.flatnonzero(bad)[0], got.shape)
        with np.errstate(all="ignore"):
            ratios = np.where(np.isnan(err), np.inf, err / bound)
        ratio = ratios.max()
        raise AssertionError(
            f"{label}: {int(bad.sum())} of {got.size} elements beyond the bound (worst "
            f"error/bound {ratio:.3g}); first at {tuple(int(k) for k in i)}: got "
            f"{got[i]!r}, expected {expected[i]!r}, bound {bound[i]:.3g}")


def reference_forward(x, w, b, act, kw):
    """(y, z) of the reference in float64 on the inputs as given."""
    y, z = ref.dense_forward(f64(x), f64(w), f64(b), act, **kw)
    return y, z


def check_forward(x, w, b, act, kw, y, label=""):
    u = u_of(x.dtype)
    y_ref, z_ref = reference_forward(x, w, b, act, kw)
    zb = z_bound(x, w, b, u)
    assert y.dtype == x.dtype and y.shape == y_ref.shape and y.flags.c_contiguous
    assert_within(f"{label} y", y, y_ref, act_bound(act, kw, z_ref, y_ref, zb, u))


# ---------------------------------------------------------------------------
# forward
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("act_id,act,kw", ACTS, ids=ACT_IDS)
@pytest.mark.parametrize("B,n_in,n_out", SHAPES, ids=lambda s: str(s))
def test_forward_matches_reference(B, n_in, n_out, act_id, act, kw, bias, dtype):
    x, w, b = layer(rng_for("fwd", B, n_in, n_out, act_id, bias, np.dtype(dtype).name),
                    B, n_in, n_out, dtype, bias)
    snap = [a.copy() for a in (x, w) + ((b,) if bias else ())]
    y, saved = ops.dense_forward(x, w, b, act, **kw)
    check_forward(x, w, b, act, kw, y, f"{act_id} B={B} {n_in}->{n_out}")
    for before, after in zip(snap, (x, w) + ((b,) if bias else ())):
        assert np.array_equal(before, after), "an input was modified"
    if act == "identity":
        assert saved is None
    elif act == "gelu":  # the pre-activation
        u = u_of(dtype)
        _, z_ref = reference_forward(x, w, b, act, kw)
        assert saved is not y and saved.dtype == x.dtype
        assert_within("saved z", saved, z_ref, z_bound(x, w, b, u))
    else:
        assert saved is y


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("act_id,act,kw", ACTS, ids=ACT_IDS)
def test_epilogue_against_its_own_gemm(act_id, act, kw, dtype):
    """y = act(v) with v the kernel's own identity output (x @ w + b): this
    separates the fused epilogue from the GEMM, leaving a few ulps of the
    activation. B=700, out=256 spans three epilogue blocks."""
    x, w, b = layer(rng_for("epi", act_id, np.dtype(dtype).name), 700, 64, 256, dtype, scale=2.0)
    v, _ = ops.dense_forward(x, w, b, "identity")
    y, _ = ops.dense_forward(x, w, b, act, **kw)
    v64 = f64(v)
    expected = ref.activation(v64, act, **kw)
    u = u_of(dtype)
    if act == "softmax":
        n = v.shape[1]
        vmax = np.abs(v64).max(axis=1, keepdims=True)
        bound = expected * u * (4 * (np.abs(v64) + vmax) + n + 8)
    else:
        bound = 8 * u * (np.abs(expected) + np.abs(v64))
    assert_within(f"{act_id} y", y, expected, bound)


@pytest.mark.parametrize("act_id,act,kw", ACTS, ids=ACT_IDS)
@pytest.mark.parametrize("B,n_in,n_out", [(700, 50, 256), (1000, 20, 100), (3, 5, 70000)],
                         ids=["3blocks", "2blocks", "out>block"])
def test_forward_across_epilogue_blocks(B, n_in, n_out, act_id, act, kw):
    """The forward runs the GEMM and the epilogue on blocks of ~65536 outputs
    (700x256: blocks of 256, 256 and 188 rows; 1000x100: 655 and 345; out=70000:
    one row per block); every row must match the reference."""
    dtype = np.float32
    x, w, b = layer(rng_for("blocks", B, n_out, act_id), B, n_in, n_out, dtype)
    y, _ = ops.dense_forward(x, w, b, act, **kw)
    check_forward(x, w, b, act, kw, y, f"{act_id} B={B} {n_in}->{n_out}")


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("act_id,act,kw", ACTS, ids=ACT_IDS)
def test_forward_writes_into_out(act_id, act, kw, dtype):
    x, w, b = layer(rng_for("out", act_id, np.dtype(dtype).name), 33, 7, 33, dtype)
    out = np.full((33, 33), np.nan, dtype=dtype)
    y, saved = ops.dense_forward(x, w, b, act, out=out, **kw)
    assert y is out
    if act not in ("identity", "gelu"):
        assert saved is out
    check_forward(x, w, b, act, kw, out, act_id)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_forward_without_bias_equals_zero_bias(dtype):
    """b=None must mean no bias: the same bits as an explicit zero bias."""
    for act_id, act, kw in ACTS:
        x, w, _ = layer(rng_for("nobias", act_id), 33, 7, 1000, dtype, bias=False)
        y0, _ = ops.dense_forward(x, w, np.zeros(1000, dtype), act, **kw)
        y1, _ = ops.dense_forward(x, w, None, act, **kw)
        assert np.array_equal(y0, y1), f"{act_id}: b=None differs from b=zeros"


def test_identity_without_bias_is_the_gemm():
    x = np.eye(2, dtype=np.float32)
    w = np.array([[1, 2], [3, 4]], dtype=np.float32)
    y, saved = ops.dense_forward(x, w)
    assert saved is None
    assert np.array_equal(y, w), f"eye @ w = {y.tolist()}, expected {w.tolist()}"


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_none_and_linear_are_identity(dtype):
    """activation=None and "linear" are the identity, forward and backward,
    as in nn.Dense; "linear" is listed in ACTIVATIONS and in the error."""
    from fusedtrain._ops_dense import ACTIVATIONS
    from fusedtrain.nn import ACTIVATIONS as LAYER_ACTIVATIONS

    assert "linear" in ACTIVATIONS and ACTIVATIONS == LAYER_ACTIVATIONS
    x, w, b = layer(rng_for("linear"), 9, 5, 7, dtype, bias=True)
    want, saved = ops.dense_forward(x, w, b, "identity")
    dy = np.asarray(rng_for("linear-dy").standard_normal(want.shape), dtype=dtype)
    grads = ops.dense_backward(dy, x, w, saved, "identity")
    for act in (None, "linear"):
        y, s = ops.dense_forward(x, w, b, act)
        assert s is None and np.array_equal(y, want), act
        for got, exp in zip(ops.dense_backward(dy, x, w, s, act), grads):
            assert np.array_equal(got, exp), act
    with pytest.raises(ValueError, match=r"'linear', 'identity', .* or None \(linear\); received 'swish'"):
        ops.dense_forward(x, w, b, "swish")
    with pytest.raises(TypeError, match="negative_slope"):
        ops.dense_forward(x, w, b, None, negative_slope=0.1)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_softmax_rows_sum_to_one(dtype):
    x, w, b = layer(rng_for("softmax", np.dtype(dtype).name), 1000, 33, 1000, dtype, scale=3.0)
    y, saved = ops.dense_forward(x, w, b, "softmax")
    assert saved is y
    assert (y >= 0).all() and (y <= 1).all()
    # the sum of 1000 values each rounded once, summed in float64 here
    np.testing.assert_allclose(f64(y).sum(axis=1), 1.0, rtol=0, atol=(1000 + 8) * u_of(dtype))


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("act_id,act,kw", [a for a in ACTS if a[1] in ("relu", "leaky_relu")],
                         ids=lambda v: v if isinstance(v, str) else "")
def test_relu_saved_is_y(act_id, act, kw, dtype):
    x, w, b = layer(rng_for("relu saved", act_id), 7, 33, 7, dtype)
    y, saved = ops.dense_forward(x, w, b, act, **kw)
    assert saved is y
    neg = f64(x) @ f64(w) + f64(b) < 0
    if act == "relu":
        assert (y[neg] == 0).all() and (y >= 0).all()


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("act_id,act,kw", [a for a in ACTS if a[1] in
                                           ("sigmoid", "tanh", "softmax", "gelu")],
                         ids=lambda v: v if isinstance(v, str) else "")
def test_large_inputs_stay_finite(act_id, act, kw, dtype):
    """|x| up to 1e4 (|z| up to ~1e5): exp overflows inside sigmoid and softmax
    must not leak inf or NaN, in the forward nor the backward."""
    rng = rng_for("large", act_id, np.dtype(dtype).name)
    x, w, b = layer(rng, 64, 33, 17, dtype)
    x = (rng.uniform(-1e4, 1e4, x.shape)).astype(dtype)
    x[0, :] = 1e4  # a row of extremes
    x[1, :] = -1e4
    y, saved = ops.dense_forward(x, w, b, act, **kw)
    assert np.isfinite(y).all(), f"{act_id}: non-finite output"
    if act in ("sigmoid", "softmax"):
        assert (y >= 0).all() and (y <= 1).all()
    if act == "tanh":
        assert (np.abs(y) <= 1).all()
    if act == "softmax":
        np.testing.assert_allclose(f64(y).sum(axis=1), 1.0, rtol=0, atol=32 * u_of(dtype))
    dy = rng.standard_normal(y.shape).astype(dtype)
    dx, dw, db = ops.dense_backward(dy, x, w, saved, act, **kw)
    for name, g in (("dx", dx), ("dw", dw), ("db", db)):
        assert np.isfinite(g).all(), f"{act_id}: non-finite {name}"


# ---------------------------------------------------------------------------
# backward
# ---------------------------------------------------------------------------
def backward_bounds(act, kw, dy, x, w, s, z, dz_ref, u):
    """Bounds on |dx|, |dw|, |db| errors. ``s`` is the saved value rounded to
    the kernel's dtype (relative error u), z the float64 pre-activation."""
    dy, x, w, s = f64(dy), f64(x), f64(w), f64(s)
    if act == "softmax":
        n = dy.shape[1]
        dot = np.abs((dy * s).sum(axis=1, keepdims=True))
        dot_err = (n + 4) * u * np.abs(dy * s).sum(axis=1, keepdims=True)
        dzb = np.abs(s) * (8 * u * (np.abs(dy) + dot) + dot_err) + 8 * u * np.abs(dz_ref)
    else:
        # evaluating act'(s) and the product: a few ulps of |dy| (1 + |s|), which
        # also covers the rounding of s itself (|d act'/ds| * |s| u <= (1 + |s|) u)
        dzb = 16 * u * np.abs(dy) * (1 + np.abs(s))
    B, n_in = x.shape
    n_out = w.shape[1]
    dz_abs = np.abs(dz_ref)
    dwb = 2 * gemm_bound(np.abs(x).T, dz_abs, B, u) + np.abs(x).T @ dzb
    dxb = 2 * gemm_bound(dz_abs, np.abs(w).T, n_out, u) + dzb @ np.abs(w).T
    dbb = 2 * LAM * math.sqrt(B + 1) * u * dz_abs.sum(axis=0) + dzb.sum(axis=0)
    return dxb + 1e-300, dwb + 1e-300, dbb + 1e-300


def backward_case(key, B, n_in, n_out, act, kw, dtype):
    """Inputs whose saved value is the reference's, rounded to ``dtype``, so the
    comparison isolates the backward kernel."""
    rng = rng_for("bwd", *key)
    x, w, b = layer(rng, B, n_in, n_out, dtype)
    dy = rng.standard_normal((B, n_out)).astype(dtype)
    y64, z64 = reference_forward(x, w, b, act, kw)
    saved = None if act == "identity" else (z64 if act == "gelu" else y64).astype(dtype)
    return dy, x, w, saved, z64


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("act_id,act,kw", ACTS, ids=ACT_IDS)
@pytest.mark.parametrize("B,n_in,n_out", [(1, 7, 1000), (7, 1000, 33), (33, 33, 7),
                                          (1000, 7, 33), (2048, 5, 300)], ids=lambda s: str(s))
def test_backward_matches_reference(B, n_in, n_out, act_id, act, kw, dtype):
    dy, x, w, saved, z64 = backward_case((B, n_in, n_out, act_id, np.dtype(dtype).name),
                                         B, n_in, n_out, act, kw, dtype)
    inputs = [a.copy() for a in (dy, x, w) + ((saved,) if saved is not None else ())]
    dx, dw, db = ops.dense_backward(dy, x, w, saved, act, **kw)
    dz_ref = ref.activation_grad(f64(dy), z64, act, **kw)
    dx_ref, dw_ref, db_ref = dz_ref @ f64(w).T, f64(x).T @ dz_ref, dz_ref.sum(axis=0)
    dxb, dwb, dbb = backward_bounds(act, kw, dy, x, w, saved if saved is not None else z64,
                                    z64, dz_ref, u_of(dtype))
    for name, got, exp, bound in (("dx", dx, dx_ref, dxb), ("dw", dw, dw_ref, dwb),
                                  ("db", db, db_ref, dbb)):
        assert got.dtype == dy.dtype and got.flags.c_contiguous, name
        assert_within(f"{act_id} {name}", got, exp, bound)
    for before, after in zip(inputs, (dy, x, w) + ((saved,) if saved is not None else ())):
        assert np.array_equal(before, after), "an input was modified"


@pytest.mark.parametrize("act_id,act,kw", ACTS, ids=ACT_IDS)
def test_backward_matches_finite_differences(act_id, act, kw):
    """L = sum(y * R) in float64, so dL/dy = R; every entry of dx, dw and db
    against central differences of the fused forward."""
    rng = rng_for("fd", act_id)
    B, n_in, n_out = 4, 5, 6
    for _ in range(100):  # keep every |z| away from relu's kink (resample otherwise)
        x, w, b = layer(rng, B, n_in, n_out, np.float64)
        if np.abs(x @ w + b).min() > 0.05:
            break
    R = rng.standard_normal((B, n_out))
    y, saved = ops.dense_forward(x, w, b, act, **kw)
    dx, dw, db = ops.dense_backward(R, x, w, saved, act, **kw)

    def loss():
        return float((ops.dense_forward(x, w, b, act, **kw)[0] * R).sum())

    h = 1e-6
    for name, p, g in (("x", x, dx), ("w", w, dw), ("b", b, db)):
        fd = np.empty_like(p)
        for i in np.ndindex(p.shape):
            keep = p[i]
            p[i] = keep + h
            lp = loss()
            p[i] = keep - h
            lm = loss()
            p[i] = keep
            fd[i] = (lp - lm) / (2 * h)
        # truncation O(h^2) and cancellation ~1e-16 * |L| / h: 1e-8 is ample
        np.testing.assert_allclose(g, fd, rtol=1e-6, atol=1e-8, err_msg=f"{act_id} d{name}")


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("act_id,act,kw", ACTS, ids=ACT_IDS)
def test_backward_need_dx_false(act_id, act, kw, dtype):
    dy, x, w, saved, _ = backward_case(("nodx", act_id), 33, 7, 33, act, kw, dtype)
    dx, dw, db = ops.dense_backward(dy, x, w, saved, act, need_dx=False, **kw)
    assert dx is None
    dx1, dw1, db1 = ops.dense_backward(dy, x, w, saved, act, **kw)
    assert dx1.shape == x.shape
    assert np.array_equal(dw, dw1) and np.array_equal(db, db1)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("act_id,act,kw", ACTS, ids=ACT_IDS)
def test_backward_accumulates(act_id, act, kw, dtype):
    """accumulate=True adds into dw_out / db_out (which are returned, the same
    objects); accumulate=False overwrites them."""
    rng = rng_for("acc", act_id, np.dtype(dtype).name)
    # B = 600: more than OpenBLAS's K block, so the GEMM adds into C in steps
    B = 600
    dy, x, w, saved, z64 = backward_case(("acc", act_id), B, 33, 7, act, kw, dtype)
    _, dw_fresh, db_fresh = ops.dense_backward(dy, x, w, saved, act, **kw)
    dw_prev = rng.standard_normal(dw_fresh.shape).astype(dtype)
    db_prev = rng.standard_normal(db_fresh.shape).astype(dtype)
    dw_out, db_out = dw_prev.copy(), db_prev.copy()
    dx, dw, db = ops.dense_backward(dy, x, w, saved, act, dw_out=dw_out, db_out=db_out,
                                    accumulate=True, **kw)
    assert dw is dw_out and db is db_out
    u = u_of(dtype)
    dz_abs = np.abs(ref.activation_grad(f64(dy), z64, act, **kw))
    for name, got, prev, fresh in (("dw", dw, dw_prev, dw_fresh), ("db", db, db_prev, db_fresh)):
        expected = f64(prev) + f64(fresh)
        # the rounding of the sum; for dw also the GEMM's partial sums, which
        # are added to prev instead of to 0
        bound = 4 * u * (np.abs(f64(prev)) + np.abs(f64(fresh))) + 1e-300
        if name == "dw":
            bound = bound + 2 * gemm_bound(np.abs(f64(x)).T, dz_abs, B, u)
        assert_within(f"{act_id} {name}", got, expected, bound)
    # accumulate=False with the same buffers overwrites them
    ops.dense_backward(dy, x, w, saved, act, dw_out=dw_out, db_out=db_out, **kw)
    assert np.array_equal(dw_out, dw_fresh) and np.array_equal(db_out, db_fresh)


# ---------------------------------------------------------------------------
# determinism
# ---------------------------------------------------------------------------
def _openblas_threads():
    """(get, set) of the OpenBLAS the kernels call (scipy-openblas32), or None."""
    try:
        import scipy_openblas32

        lib = scipy_openblas32.dll if hasattr(scipy_openblas32, "dll") else ctypes.CDLL(
            scipy_openblas32.get_lib_dir() + "/lib" + scipy_openblas32.get_library() + ".so")
        return lib.scipy_openblas_get_num_threads, lib.scipy_openblas_set_num_threads
    except (ImportError, AttributeError, OSError):
        return None


@pytest.fixture
def restore_threads():
    """Setters of fusedtrain's and OpenBLAS's thread counts; both restored after."""
    ft_before = fusedtrain.get_num_threads()
    blas = _openblas_threads()
    blas_before = blas[0]() if blas else None
    yield {"fusedtrain": fusedtrain.set_num_threads,
           "openblas": (lambda n: blas[1](ctypes.c_int(n))) if blas else None}
    fusedtrain.set_num_threads(ft_before)
    if blas:
        blas[1](ctypes.c_int(blas_before))


def _run_layer(x, w, b, dy, saved, act, kw):
    y, _ = ops.dense_forward(x, w, b, act, **kw)
    dx, dw, db = ops.dense_backward(dy, x, w, saved, act, **kw)
    return {"y": y, "dx": dx, "dw": dw, "db": db}


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("act_id,act,kw", ACTS, ids=ACT_IDS)
@pytest.mark.parametrize("B", [700, 20, 2048],
                         ids=["row-tiles", "column-tiles", "threaded-grad-pass"])
def test_thread_count_does_not_change_results(act_id, act, kw, dtype, B, restore_threads):
    """fusedtrain.set_num_threads(1) and (2) give the same bits: the tiles
    (of rows; of columns for a batch too small for two row tiles) depend on
    the shape only, and each tile is one serial GEMM and its epilogue. At
    B = 2048 (B * n_out >= 2^19) the backward's activation-gradient pass runs
    on both threads too."""
    n_in, n_out = 300, 257
    dy, x, w, saved, _ = backward_case(("threads", act_id, np.dtype(dtype).name, B), B, n_in,
                                       n_out, act, kw, dtype)
    b = rng_for("threads b").standard_normal(n_out).astype(dtype)
    results = []
    for n in (1, 2):
        restore_threads["fusedtrain"](n)
        results.append(_run_layer(x, w, b, dy, saved, act, kw))
    for name in results[0]:
        assert results[0][name].tobytes() == results[1][name].tobytes(), \
            f"{act_id}: {name} differs between 1 and 2 threads"


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("act_id,act,kw", [ACTS[1], ACTS[8]], ids=["relu", "softmax"])
def test_openblas_thread_count(act_id, act, kw, dtype, restore_threads):
    """OpenBLAS's own thread count (1 vs 2) changes which GEMM kernel and
    partition it uses, and with them the bits of y, dx and dw (measured:
    700x300 @ 300x257 in float64, 64x784 @ 784x256 in both dtypes): these
    agree within the GEMM bound only. db is summed by fusedtrain, rows in
    order in double, so it keeps its bits."""
    if restore_threads["openblas"] is None:
        pytest.skip("scipy-openblas32's thread setter not found")
    B, n_in, n_out = 700, 300, 257
    dy, x, w, saved, _ = backward_case(("blas threads", act_id, np.dtype(dtype).name), B, n_in,
                                       n_out, act, kw, dtype)
    b = np.zeros(n_out, dtype)
    results = []
    for n in (1, 2):
        restore_threads["openblas"](n)
        results.append(_run_layer(x, w, b, dy, saved, act, kw))
    r1, r2 = results
    assert r1["db"].tobytes() == r2["db"].tobytes(), f"{act_id}: db differs"
    u = u_of(dtype)
    y_ref, z_ref = reference_forward(x, w, b, act, kw)
    zb = z_bound(x, w, b, u)
    assert_within("y", r1["y"], f64(r2["y"]), 2 * act_bound(act, kw, z_ref, y_ref, zb, u))
    dz = np.abs(ref.activation_grad(f64(dy), z_ref, act, **kw)) * 1.01
    assert_within("dw", r1["dw"], f64(r2["dw"]), 2 * gemm_bound(np.abs(f64(x)).T, dz, B, u))
    assert_within("dx", r1["dx"], f64(r2["dx"]),
                  2 * gemm_bound(dz, np.abs(f64(w)).T, n_out, u))


# ---------------------------------------------------------------------------
# bad input: ValueError / TypeError naming the argument; nothing written
# ---------------------------------------------------------------------------
ERRORS = (ValueError, TypeError)


class Fwd:
    """A valid dense_forward call (B=5, in=7, out=3, relu) to spoil."""

    def __init__(self, dtype=np.float32, n_in=7):
        rng = rng_for("bad fwd")
        self.args = dict(zip(("x", "w", "b"), layer(rng, 5, n_in, 3, dtype)))
        self.args["out"] = np.full((5, 3), 7.0, dtype=dtype)
        self.args["activation"] = "relu"
        self.kw = {}

    def run(self):
        a = self.args
        return ops.dense_forward(a["x"], a["w"], a["b"], a["activation"], out=a["out"],
                                 **self.kw)


class Bwd:
    """A valid dense_backward call (B=5, in=7, out=3, relu) with dw_out/db_out."""

    def __init__(self, dtype=np.float32):
        rng = rng_for("bad bwd")
        x, w, b = layer(rng, 5, 7, 3, dtype)
        y, saved = ops.dense_forward(x, w, b, "relu")
        self.args = dict(dy=rng.standard_normal((5, 3)).astype(dtype), x=x, w=w, saved=saved,
                         dw_out=np.full((7, 3), 7.0, dtype=dtype),
                         db_out=np.full((3,), 7.0, dtype=dtype))
        self.activation = "relu"
        self.kw = {}

    def run(self):
        a = self.args
        return ops.dense_backward(a["dy"], a["x"], a["w"], a["saved"], self.activation,
                                  dw_out=a["dw_out"], db_out=a["db_out"], **self.kw)


def transposed(a):
    """A non-contiguous view with a's shape (and values)."""
    return np.ascontiguousarray(a.T).T if a.ndim == 2 else np.repeat(a, 2)[::2]


def readonly(a):
    a = a.copy()
    a.flags.writeable = False
    return a


def _arrays(call):
    return [v for v in call.args.values() if isinstance(v, np.ndarray)]


def expect_error(call, names, types=ERRORS):
    """``call.run()`` raises one of ``types`` naming one of ``names``, and every
    array passed in (outputs and inputs) stays bitwise as it was."""
    arrays = _arrays(call)
    snap = [a.tobytes() for a in arrays]
    with pytest.raises(types) as info:
        call.run()
    for a, before in zip(arrays, snap):
        assert a.tobytes() == before, "a buffer was modified by a call that raised"
    names = (names,) if isinstance(names, str) else names
    msg = str(info.value)
    assert any(n in msg for n in names), f"message does not name {names}: {msg!r}"
    return info.value


def spoil_fwd(**changes):
    def make(dtype=np.float32):
        c = Fwd(dtype)
        for k, v in changes.items():
            if k == "kw":
                c.kw = v
            else:
                c.args[k] = v(c.args) if callable(v) else v
        return c
    return make


F32, F64 = np.float32, np.float64
FWD_BAD = {
    # shapes
    "w rows != x cols": (spoil_fwd(w=lambda a: np.ones((6, 3), F32)), "w", ValueError),
    "w 1-d": (spoil_fwd(w=lambda a: np.ones(7, F32)), "w", ValueError),
    "x 1-d": (spoil_fwd(x=lambda a: np.ones(7, F32)), "x", ValueError),
    "x 3-d": (spoil_fwd(x=lambda a: np.ones((1, 5, 7), F32)), "x", ValueError),
    "b wrong length": (spoil_fwd(b=lambda a: np.ones(4, F32)), "b", ValueError),
    "b 2-d": (spoil_fwd(b=lambda a: np.ones((1, 3), F32)), "b", ValueError),
    "out wrong shape": (spoil_fwd(out=lambda a: np.zeros((5, 4), F32)), "out", ValueError),
    "out wrong rows": (spoil_fwd(out=lambda a: np.zeros((6, 3), F32)), "out", ValueError),
    # dtypes
    "x int64": (spoil_fwd(x=lambda a: a["x"].astype(np.int64)), "x", TypeError),
    "x float16": (spoil_fwd(x=lambda a: a["x"].astype(np.float16)), "x", TypeError),
    "w float64 with x float32": (spoil_fwd(w=lambda a: a["w"].astype(F64)), "w", TypeError),
    "w int64": (spoil_fwd(w=lambda a: a["w"].astype(np.int64)), "w", TypeError),
    "b float64": (spoil_fwd(b=lambda a: a["b"].astype(F64)), "b", TypeError),
    "out float64": (spoil_fwd(out=lambda a: a["out"].astype(F64)), "out", TypeError),
    "out float16": (spoil_fwd(out=lambda a: a["out"].astype(np.float16)), "out", TypeError),
    # not arrays
    "x a list": (spoil_fwd(x=lambda a: a["x"].tolist()), "x", TypeError),
    "b a list": (spoil_fwd(b=lambda a: a["b"].tolist()), "b", TypeError),
    # layout
    "x transposed": (spoil_fwd(x=lambda a: transposed(a["x"])), "x", ValueError),
    "w transposed": (spoil_fwd(w=lambda a: transposed(a["w"])), "w", ValueError),
    "b strided": (spoil_fwd(b=lambda a: transposed(a["b"])), "b", ValueError),
    "out transposed": (spoil_fwd(out=lambda a: transposed(a["out"])), "out", ValueError),
    "out read-only": (spoil_fwd(out=lambda a: readonly(a["out"])), "out", ValueError),
    # activation
    "unknown activation": (spoil_fwd(activation="swish"), "activation", ValueError),
    "activation a number": (spoil_fwd(activation=0), "activation", ValueError),
    "relu takes no negative_slope": (spoil_fwd(kw={"negative_slope": 0.1}), "negative_slope",
                                     TypeError),
    "relu takes no approximate": (spoil_fwd(kw={"approximate": "tanh"}), "approximate", TypeError),
    "leaky_relu takes no approximate": (spoil_fwd(activation="leaky_relu",
                                                  kw={"approximate": "tanh"}),
                                        "approximate", TypeError),
    "gelu takes no negative_slope": (spoil_fwd(activation="gelu", kw={"negative_slope": 0.1}),
                                     "negative_slope", TypeError),
    "negative negative_slope": (spoil_fwd(activation="leaky_relu", kw={"negative_slope": -0.1}),
                                "negative_slope", ValueError),
    "NaN negative_slope": (spoil_fwd(activation="leaky_relu", kw={"negative_slope": math.nan}),
                           "negative_slope", ValueError),
    "str negative_slope": (spoil_fwd(activation="leaky_relu", kw={"negative_slope": "0.1"}),
                           "negative_slope", TypeError),
    "unknown approximate": (spoil_fwd(activation="gelu", kw={"approximate": "fast"}),
                            "approximate", ValueError),
}


@pytest.mark.parametrize("case", list(FWD_BAD), ids=list(FWD_BAD))
def test_forward_bad_input(case):
    make, name, etype = FWD_BAD[case]
    expect_error(make(), name, etype)


def test_forward_out_shares_memory():
    # in == out, so that x, w and out can be views of one another
    def call_with(**arrays):
        c = Fwd(n_in=3)
        c.args.update(arrays)
        return c

    c = Fwd(n_in=3)
    c.args["out"] = c.args["x"]  # out is x
    expect_error(c, "out", ValueError)
    base = np.arange(24, dtype=F32)  # out overlaps the last rows of x
    expect_error(call_with(x=base[:15].reshape(5, 3), out=base[9:24].reshape(5, 3)), "out",
                 ValueError)
    base = np.arange(24, dtype=F32)  # out overlaps w
    expect_error(call_with(w=base[12:21].reshape(3, 3), out=base[:15].reshape(5, 3)), "out",
                 ValueError)
    base = np.arange(18, dtype=F32)  # out overlaps b
    expect_error(call_with(b=base[:3], out=base[2:17].reshape(5, 3)), "out", ValueError)
    # adjacent but disjoint views of one buffer are fine
    y, _ = call_with(b=base[:3], out=base[3:18].reshape(5, 3)).run()
    assert np.shares_memory(y, base)


def spoil_bwd(**changes):
    def make(dtype=np.float32):
        c = Bwd(dtype)
        for k, v in changes.items():
            if k == "kw":
                c.kw = v
            elif k == "activation":
                c.activation = v
            elif k == "accumulate":
                c.kw = dict(c.kw, accumulate=v)
            elif k == "need_dx":
                c.kw = dict(c.kw, need_dx=v)
            else:
                c.args[k] = v(c.args) if callable(v) else v
        return c
    return make


BWD_BAD = {
    # shapes
    "dy cols != w cols": (spoil_bwd(dy=lambda a: np.ones((5, 4), F32)), ("dy", "w"), ValueError),
    "dy rows != x rows": (spoil_bwd(dy=lambda a: np.ones((6, 3), F32)), ("dy", "x"), ValueError),
    "x cols != w rows": (spoil_bwd(x=lambda a: np.ones((5, 6), F32)), ("x", "w"), ValueError),
    "dy 1-d": (spoil_bwd(dy=lambda a: np.ones(3, F32)), "dy", ValueError),
    "saved wrong shape": (spoil_bwd(saved=lambda a: np.ones((5, 4), F32)), "saved", ValueError),
    "saved transposed shape": (spoil_bwd(saved=lambda a: np.ones((3, 5), F32)), "saved",
                               ValueError),
    "saved None for relu": (spoil_bwd(saved=None), "saved", ValueError),
    "saved None for gelu": (spoil_bwd(saved=None, activation="gelu"), "saved", ValueError),
    "saved None for softmax": (spoil_bwd(saved=None, activation="softmax"), "saved", ValueError),
    "dw_out wrong shape": (spoil_bwd(dw_out=lambda a: np.zeros((3, 7), F32)), "dw_out",
                           ValueError),
    "db_out wrong shape": (spoil_bwd(db_out=lambda a: np.zeros(4, F32)), "db_out", ValueError),
    "db_out 2-d": (spoil_bwd(db_out=lambda a: np.zeros((1, 3), F32)), "db_out", ValueError),
    # dtypes
    "dy int64": (spoil_bwd(dy=lambda a: a["dy"].astype(np.int64)), "dy", TypeError),
    "dy float16": (spoil_bwd(dy=lambda a: a["dy"].astype(np.float16)), "dy", TypeError),
    "x float64 with dy float32": (spoil_bwd(x=lambda a: a["x"].astype(F64)), "x", TypeError),
    "w float64 with dy float32": (spoil_bwd(w=lambda a: a["w"].astype(F64)), "w", TypeError),
    "saved float64": (spoil_bwd(saved=lambda a: a["saved"].astype(F64)), "saved", TypeError),
    "dw_out float64": (spoil_bwd(dw_out=lambda a: a["dw_out"].astype(F64)), "dw_out", TypeError),
    "db_out float64": (spoil_bwd(db_out=lambda a: a["db_out"].astype(F64)), "db_out", TypeError),
    # layout
    "dy transposed": (spoil_bwd(dy=lambda a: transposed(a["dy"])), "dy", ValueError),
    "x transposed": (spoil_bwd(x=lambda a: transposed(a["x"])), "x", ValueError),
    "w transposed": (spoil_bwd(w=lambda a: transposed(a["w"])), "w", ValueError),
    "saved transposed": (spoil_bwd(saved=lambda a: transposed(a["saved"])), "saved", ValueError),
    "dw_out transposed": (spoil_bwd(dw_out=lambda a: transposed(a["dw_out"])), "dw_out",
                          ValueError),
    "db_out strided": (spoil_bwd(db_out=lambda a: transposed(a["db_out"])), "db_out", ValueError),
    "dw_out read-only": (spoil_bwd(dw_out=lambda a: readonly(a["dw_out"])), "dw_out", ValueError),
    "db_out read-only": (spoil_bwd(db_out=lambda a: readonly(a["db_out"])), "db_out", ValueError),
    # aliasing
    "dw_out is w": (spoil_bwd(dw_out=lambda a: a["w"]), "dw_out", ValueError),
    "db_out inside dy": (spoil_bwd(db_out=lambda a: a["dy"][0]), "db_out", ValueError),
    # accumulate needs both buffers
    "accumulate without dw_out": (spoil_bwd(dw_out=None, accumulate=True), "dw_out", ValueError),
    "accumulate without db_out": (spoil_bwd(db_out=None, accumulate=True), "db_out", ValueError),
    "need_dx a str": (spoil_bwd(need_dx="yes"), "need_dx", TypeError),
    "accumulate a str": (spoil_bwd(accumulate="yes"), "accumulate", TypeError),
    # activation
    "unknown activation": (spoil_bwd(activation="swish"), "activation", ValueError),
    "unexpected kwarg": (spoil_bwd(kw={"negative_slope": 0.1}), "negative_slope", TypeError),
    "negative negative_slope": (spoil_bwd(activation="leaky_relu",
                                          kw={"negative_slope": -1.0}),
                                "negative_slope", ValueError),
    "unknown approximate": (spoil_bwd(activation="gelu", kw={"approximate": "erf"}),
                            "approximate", ValueError),
}


@pytest.mark.parametrize("case", list(BWD_BAD), ids=list(BWD_BAD))
def test_backward_bad_input(case):
    make, name, etype = BWD_BAD[case]
    expect_error(make(), name, etype)


def test_backward_dw_out_db_out_overlap():
    c = Bwd()
    base = np.full(7 * 3 + 3, 7.0, F32)
    c.args["dw_out"] = base[:21].reshape(7, 3)
    c.args["db_out"] = base[19:22]
    expect_error(c, ("dw_out", "db_out"), ValueError)


def test_backward_dw_out_overlaps_x():
    c = Bwd()
    base = np.zeros(64, F32)
    c.args["x"] = base[:35].reshape(5, 7)
    c.args["x"][...] = 1.0
    c.args["dw_out"] = base[30:51].reshape(7, 3)
    expect_error(c, "dw_out", ValueError)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_valid_calls_of_the_bad_input_tables(dtype):
    """The unspoiled calls the tables start from are valid (so each error above
    comes from the one spoiled argument)."""
    y, saved = Fwd(dtype).run()
    assert y.dtype == dtype
    dx, dw, db = Bwd(dtype).run()
    assert dx.shape == (5, 7) and dw.shape == (7, 3) and db.shape == (3,)


# ---------------------------------------------------------------------------
# preallocated dx and workspace (no allocation per batch in a training loop)
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("act", ["identity", "relu", "gelu", "softmax"])
def test_backward_into_preallocated_dx_and_workspace(act):
    rng = np.random.default_rng(7)
    x = rng.standard_normal((33, 7))
    w = rng.standard_normal((7, 22))
    y, saved = ops.dense_forward(x, w, None, act)
    dy = rng.standard_normal(y.shape)
    dx_ref, dw_ref, db_ref = ops.dense_backward(dy, x, w, saved, act)
    dx_out, ws = np.full((33, 7), np.nan), np.full((33, 22), np.nan)
    dx, dw, db = ops.dense_backward(dy, x, w, saved, act, dx_out=dx_out, workspace=ws)
    assert dx is dx_out
    assert np.array_equal(dx, dx_ref) and np.array_equal(dw, dw_ref) and np.array_equal(db, db_ref)


def test_backward_preallocated_bad():
    rng = np.random.default_rng(8)
    x, w = rng.standard_normal((5, 3)), rng.standard_normal((3, 4))
    y, saved = ops.dense_forward(x, w, None, "relu")
    dy = rng.standard_normal(y.shape)
    with pytest.raises(ValueError, match="dx_out"):
        ops.dense_backward(dy, x, w, saved, "relu", dx_out=np.empty((5, 4)))
    with pytest.raises(ValueError, match="dx_out"):
        ops.dense_backward(dy, x, w, saved, "relu", need_dx=False, dx_out=np.empty((5, 3)))
    with pytest.raises(ValueError, match="workspace and dy"):
        ops.dense_backward(dy, x, w, saved, "relu", workspace=dy)
    with pytest.raises(ValueError, match="dx_out and x"):
        ops.dense_backward(dy, x, w, saved, "relu", dx_out=x)
