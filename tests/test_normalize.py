"""Batch and layer normalization kernels (fusedtrain.ops.batch_norm_* /
layer_norm_*).

Every output (y, the saved statistics and activation value, the running
statistics, dx, dweight, dbias) is compared element by element with the
NumPy reference (fusedtrain.reference.normalize) evaluated in float64 on the
same inputs, for float32 and float64, at shapes that are not multiples of the
SIMD width, with every option. Then: central finite differences in float64,
torch.nn.functional parity (forward, autograd backward, running statistics
over several steps, eval), bad input raising with nothing changed, bitwise
equality across thread counts, and a large mean in float32.

The GPU twins (fusedtrain._cuda): CPU-run, every defect of a call gives the
CPU's exception and message on stand-in GPU arrays, a NumPy array in a GPU
call raises, and a valid call checks everything then raises without a
device. On a device (skipped without one and CuPy): every output against the
CPU kernels, bitwise where the math is + - * / (statistics, running
statistics, parameter gradients, identity / relu / leaky_relu), at the
reference tolerance through exp / tanh / erf; a call that raises changes
nothing on the device.
"""

from __future__ import annotations

import re

import numpy as np
import pytest

import fusedtrain
from fusedtrain import backend, ops
from fusedtrain.reference import normalize as ref
from test_cuda import FakeGpuArray, needs_cuda_module
from test_cuda_loss import (
    _f32, _int_dtype, _readonly, _reshape, _strided, assert_numpy_in_gpu_call_raises,
    assert_same_error, fake_like)

DTYPES = (np.float32, np.float64)
# error allowed relative to the reference array's largest magnitude, per dtype:
# a few hundred roundings of the kernel's dtype (float64 statistics sum
# up to 1000 terms)
TOL = {np.dtype(np.float32): 3e-5, np.dtype(np.float64): 1e-12}
SMALL = [(2, 1), (7, 3), (33, 17)]
LARGE = [(256, 1000), (1000, 5)]
ACTS = [
    ("identity", "identity", {}),
    ("none", None, {}),
    ("relu", "relu", {}),
    ("leaky0.2", "leaky_relu", {"negative_slope": 0.2}),
    ("sigmoid", "sigmoid", {}),
    ("tanh", "tanh", {}),
    ("gelu", "gelu", {}),
    ("gelu_tanh", "gelu", {"approximate": "tanh"}),
]
ACT_IDS = [a[0] for a in ACTS]


def close(name, got, want, dtype):
    assert got is not None and want is not None, name
    got64 = np.asarray(got, dtype=np.float64)
    want = np.asarray(want, dtype=np.float64)
    assert got64.shape == want.shape, (name, got64.shape, want.shape)
    scale = max(1.0, float(np.max(np.abs(want), initial=0.0)))
    err = np.abs(got64 - want)
    tol = TOL[np.dtype(dtype)] * scale
    assert np.all(err <= tol), f"{name}: max error {err.max():.3g} > {tol:.3g}"


def data(shape, dtype, seed=0, affine=True):
    rng = np.random.default_rng(seed)
    B, C = shape
    x = (rng.standard_normal(shape) * 2 + 0.5).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    w = (rng.standard_normal(C) + 1).astype(dtype) if affine else None
    b = rng.standard_normal(C).astype(dtype) if affine else None
    rm = rng.standard_normal(C).astype(dtype)
    rv = (rng.random(C) + 0.5).astype(dtype)
    return x, dy, w, b, rm, rv


def f64(a):
    return None if a is None else np.asarray(a, dtype=np.float64).copy()


def check_batch_norm(shape, dtype, act, kw, affine, running, training, accumulate=False):
    x, dy, w, b, rm, rv = data(shape, dtype, affine=affine)
    rm_r, rv_r = f64(rm), f64(rv)
    if not running:
        rm = rv = rm_r = rv_r = None
    y, saved = ops.batch_norm_forward(x, w, b, rm, rv, training=training, momentum=0.3,
                                      activation=act, **kw)
    yr, sr = ref.batch_norm_forward(f64(x), f64(w), f64(b), rm_r, rv_r, training=training,
                                    momentum=0.3, activation=act, **kw)
    assert y.dtype == dtype and y.shape == shape
    close("y", y, yr, dtype)
    close("saved mean", saved[0], sr[0], dtype)
    close("saved rstd", saved[1], sr[1], dtype)
    if act in (None, "identity"):
        assert saved[2] is None
    elif act == "gelu":
        close("saved z", saved[2], sr[2], dtype)
    else:
        assert saved[2] is y
    if running:
        close("running_mean", rm, rm_r, dtype)
        close("running_var", rv, rv_r, dtype)
    if not training:
        return
    kwargs = {}
    if accumulate and affine:
        dw0 = np.full(shape[1], 0.25, dtype)
        db0 = np.full(shape[1], -0.5, dtype)
        kwargs = {"dweight_out": dw0, "dbias_out": db0, "accumulate": True}
    dx, dw, db = ops.batch_norm_backward(dy, x, saved, w, activation=act, **kwargs, **kw)
    dxr, dwr, dbr = ref.batch_norm_backward(f64(dy), f64(x), sr, f64(w), activation=act, **kw)
    close("dx", dx, dxr, dtype)
    if not affine:
        assert dw is None and db is None
        return
    if accumulate:
        assert dw is kwargs["dweight_out"] and db is kwargs["dbias_out"]
        dwr, dbr = dwr + 0.25, dbr - 0.5
    close("dweight", dw, dwr, dtype)
    close("dbias", db, dbr, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SMALL)
@pytest.mark.parametrize("name,act,kw", ACTS, ids=ACT_IDS)
@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("mode", ["train", "train_norunning", "eval"])
def test_batch_norm_matches_reference(dtype, shape, name, act, kw, affine, mode):
    check_batch_norm(shape, dtype, act, kw, affine, running=mode != "train_norunning",
                     training=mode != "eval", accumulate=affine and shape[0] == 7)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", LARGE)
@pytest.mark.parametrize("name,act,kw", [ACTS[0], ACTS[2], ACTS[6]], ids=["identity", "relu", "gelu"])
def test_batch_norm_large_shapes(dtype, shape, name, act, kw):
    check_batch_norm(shape, dtype, act, kw, affine=True, running=True, training=True,
                     accumulate=name == "relu")
    check_batch_norm(shape, dtype, act, kw, affine=False, running=True, training=False)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SMALL + LARGE)
@pytest.mark.parametrize("affine,accumulate", [(True, False), (True, True), (False, False)],
                         ids=["affine", "accumulate", "plain"])
def test_layer_norm_matches_reference(dtype, shape, affine, accumulate):
    x, dy, w, b, _, _ = data(shape, dtype, seed=1, affine=affine)
    y, saved = ops.layer_norm_forward(x, w, b)
    yr, sr = ref.layer_norm_forward(f64(x), f64(w), f64(b))
    assert y.dtype == dtype
    close("y", y, yr, dtype)
    close("saved mean", saved[0], sr[0], dtype)
    close("saved rstd", saved[1], sr[1], dtype)
    kwargs = {}
    if accumulate:
        kwargs = {"dweight_out": np.full(shape[1], 0.25, dtype),
                  "dbias_out": np.full(shape[1], -0.5, dtype), "accumulate": True}
    dx_out = np.empty_like(x)
    dx, dw, db = ops.layer_norm_backward(dy, x, saved, w, dx_out=dx_out, **kwargs)
    assert dx is dx_out
    dxr, dwr, dbr = ref.layer_norm_backward(f64(dy), f64(x), sr, f64(w))
    close("dx", dx, dxr, dtype)
    if not affine:
        assert dw is None and db is None
        return
    if accumulate:
        dwr, dbr = dwr + 0.25, dbr - 0.5
    close("dweight", dw, dwr, dtype)
    close("dbias", db, dbr, dtype)


def test_out_buffers_are_written():
    x, dy, w, b, rm, rv = data((9, 4), np.float32)
    out = np.empty_like(x)
    y, _ = ops.batch_norm_forward(x, w, b, rm, rv, out=out)
    assert y is out
    out2 = np.empty_like(x)
    y2, _ = ops.layer_norm_forward(x, w, b, out=out2)
    assert y2 is out2


# --- finite differences (float64) -----------------------------------------

def _fd(f, a, eps=1e-6):
    g = np.zeros_like(a)
    it = np.nditer(a, flags=["multi_index"])
    for _ in it:
        i = it.multi_index
        old = a[i]
        a[i] = old + eps
        fp = f()
        a[i] = old - eps
        fm = f()
        a[i] = old
        g[i] = (fp - fm) / (2 * eps)
    return g


@pytest.mark.parametrize("name,act,kw", [ACTS[0], ACTS[3], ACTS[4], ACTS[6], ACTS[7]],
                         ids=["identity", "leaky", "sigmoid", "gelu", "gelu_tanh"])
def test_batch_norm_backward_finite_differences(name, act, kw):
    x, _, w, b, _, _ = data((6, 3), np.float64, seed=3)
    r = np.random.default_rng(4).standard_normal(x.shape)

    def loss():
        return float((ops.batch_norm_forward(x, w, b, None, None, activation=act, **kw)[0]
                      * r).sum())

    _, saved = ops.batch_norm_forward(x, w, b, None, None, activation=act, **kw)
    dx, dw, db = ops.batch_norm_backward(r, x, saved, w, activation=act, **kw)
    np.testing.assert_allclose(dx, _fd(loss, x), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(dw, _fd(loss, w), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(db, _fd(loss, b), rtol=1e-6, atol=1e-7)


def test_layer_norm_backward_finite_differences():
    x, _, w, b, _, _ = data((4, 5), np.float64, seed=5)
    r = np.random.default_rng(6).standard_normal(x.shape)

    def loss():
        return float((ops.layer_norm_forward(x, w, b)[0] * r).sum())

    _, saved = ops.layer_norm_forward(x, w, b)
    dx, dw, db = ops.layer_norm_backward(r, x, saved, w)
    np.testing.assert_allclose(dx, _fd(loss, x), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(dw, _fd(loss, w), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(db, _fd(loss, b), rtol=1e-6, atol=1e-7)


# --- torch parity -----------------------------------------------------------

TORCH_ACTS = [("identity", "identity", {}, lambda F, z: z),
              ("relu", "relu", {}, lambda F, z: F.relu(z)),
              ("gelu", "gelu", {}, lambda F, z: F.gelu(z))]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name,act,kw,tact", TORCH_ACTS, ids=[a[0] for a in TORCH_ACTS])
def test_batch_norm_torch_parity(dtype, name, act, kw, tact):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    x, dy, w, b, rm, rv = data((33, 17), dtype, seed=7)
    trm, trv = torch.tensor(rm), torch.tensor(rv)
    for step in range(3):
        xs = x + np.asarray(step, dtype)
        xt = torch.tensor(xs, requires_grad=True)
        wt = torch.tensor(w, requires_grad=True)
        bt = torch.tensor(b, requires_grad=True)
        yt = tact(F, F.batch_norm(xt, trm, trv, wt, bt, training=True, momentum=0.1, eps=1e-5))
        yt.backward(torch.tensor(dy))
        y, saved = ops.batch_norm_forward(xs, w, b, rm, rv, activation=act, **kw)
        dx, dw, db = ops.batch_norm_backward(dy, xs, saved, w, activation=act, **kw)
        for nm, got, want in [("y", y, yt), ("dx", dx, xt.grad), ("dweight", dw, wt.grad),
                              ("dbias", db, bt.grad), ("running_mean", rm, trm),
                              ("running_var", rv, trv)]:
            close(nm, got, want.detach().double().numpy(), dtype)
    yt = tact(F, F.batch_norm(torch.tensor(x), trm, trv, torch.tensor(w), torch.tensor(b),
                              training=False))
    rm0, rv0 = rm.copy(), rv.copy()
    y, _ = ops.batch_norm_forward(x, w, b, rm, rv, training=False, activation=act, **kw)
    close("eval y", y, yt.double().numpy(), dtype)
    assert np.array_equal(rm, rm0) and np.array_equal(rv, rv0)


@pytest.mark.parametrize("dtype", DTYPES)
def test_layer_norm_torch_parity(dtype):
    torch = pytest.importorskip("torch")
    x, dy, w, b, _, _ = data((33, 17), dtype, seed=8)
    xt = torch.tensor(x, requires_grad=True)
    wt = torch.tensor(w, requires_grad=True)
    bt = torch.tensor(b, requires_grad=True)
    yt = torch.nn.functional.layer_norm(xt, (17,), wt, bt, eps=1e-5)
    yt.backward(torch.tensor(dy))
    y, saved = ops.layer_norm_forward(x, w, b)
    dx, dw, db = ops.layer_norm_backward(dy, x, saved, w)
    for nm, got, want in [("y", y, yt), ("dx", dx, xt.grad), ("dweight", dw, wt.grad),
                          ("dbias", db, bt.grad)]:
        close(nm, got, want.detach().double().numpy(), dtype)


# --- bad input: raises, names the argument, changes nothing -----------------

def _bad_calls():
    x, dy, w, b, rm, rv = data((5, 3), np.float32)
    ro = rm.copy()
    ro.flags.writeable = False
    out = np.zeros_like(x)
    f64x = x.astype(np.float64)
    _, saved = ops.batch_norm_forward(x, w, b, None, None)
    _, lsaved = ops.layer_norm_forward(x, w, b)
    arrays = [x, dy, w, b, rm, rv, out]
    bn = ops.batch_norm_forward
    return arrays, [
        (ValueError, "momentum", lambda: bn(x, w, b, rm, rv, momentum=1.5)),
        (ValueError, "momentum", lambda: bn(x, w, b, rm, rv, momentum=-0.1)),
        (ValueError, "eps", lambda: bn(x, w, b, rm, rv, eps=0.0)),
        (ValueError, "eps", lambda: bn(x, w, b, rm, rv, eps=float("inf"))),
        (ValueError, "eps", lambda: ops.layer_norm_forward(x, w, b, eps=float("nan"))),
        (ValueError, "per channel", lambda: bn(x[:1].copy(), w, b, rm, rv)),
        (ValueError, "weight", lambda: bn(x, w[:2].copy(), b, rm, rv)),
        (TypeError, "bias", lambda: bn(x, w, b.astype(np.float64), rm, rv)),
        (ValueError, "running_var", lambda: bn(x, w, b, rm, rv[:2].copy())),
        (ValueError, "running_mean", lambda: bn(x, w, b, ro, rv)),
        (ValueError, "running_mean", lambda: bn(x, w, b, None, None, training=False)),
        (ValueError, "running_var", lambda: bn(x, w, b, rm, None)),
        (ValueError, "x", lambda: bn(np.asfortranarray(np.ones((5, 3), np.float32)), w, b, rm, rv)),
        (TypeError, "x", lambda: bn(x.astype(np.int32), None, None, rm, rv)),
        (ValueError, "out", lambda: bn(x, w, b, rm, rv, out=np.zeros((5, 4), np.float32))),
        (TypeError, "out", lambda: bn(x, w, b, rm, rv, out=np.zeros((5, 3)))),
        (ValueError, "out", lambda: bn(x, w, b, rm, rv, out=x)),
        (ValueError, "activation", lambda: bn(x, w, b, rm, rv, activation="softmax")),
        (ValueError, "activation", lambda: bn(x, w, b, rm, rv, activation="swish")),
        (TypeError, "x", lambda: bn(f64x, w, b, rm, rv)),
        (ValueError, "dweight_out", lambda: ops.batch_norm_backward(
            dy, x, saved, w, dbias_out=np.zeros(3, np.float32), accumulate=True)),
        (ValueError, "dx_out", lambda: ops.batch_norm_backward(dy, x, saved, w, dx_out=dy)),
        (ValueError, "saved[2]", lambda: ops.batch_norm_backward(dy, x, saved, w,
                                                                 activation="relu")),
        (TypeError, "saved", lambda: ops.batch_norm_backward(dy, x, saved[:2], w)),
        (ValueError, "x", lambda: ops.layer_norm_backward(dy, x[:4].copy(), lsaved, w)),
        (ValueError, "bias", lambda: ops.layer_norm_forward(x, w, None)),
        (ValueError, "out", lambda: ops.layer_norm_forward(x, w, b, out=out[:, :2])),
    ]


def test_bad_input_raises_and_changes_nothing():
    arrays, calls = _bad_calls()
    before = [a.copy() for a in arrays]
    for exc, word, call in calls:
        with pytest.raises(exc, match=re.escape(word)):
            call()
        for a, a0 in zip(arrays, before):
            assert np.array_equal(a, a0)


# --- determinism, NaN, large means ------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(8192, 64), (300, 1000), (1000, 5)])
def test_bitwise_same_for_any_thread_count(dtype, shape):
    x, dy, w, b, rm, rv = data(shape, dtype, seed=9)
    results = []
    n0 = fusedtrain.get_num_threads()
    try:
        for n in (1, 2):
            fusedtrain.set_num_threads(n)
            m, v = rm.copy(), rv.copy()
            y, s = ops.batch_norm_forward(x, w, b, m, v, activation="gelu")
            g = ops.batch_norm_backward(dy, x, s, w, activation="gelu")
            ly, ls = ops.layer_norm_forward(x, w, b)
            lg = ops.layer_norm_backward(dy, x, ls, w)
            results.append([y, s[0], s[1], s[2], m, v, *g, ly, *ls, *lg])
    finally:
        fusedtrain.set_num_threads(n0)
    for a, c in zip(*results):
        assert a.tobytes() == c.tobytes()


def test_nan_propagates():
    x, dy, w, b, rm, rv = data((7, 3), np.float32)
    x[2, 1] = np.nan
    y, s = ops.batch_norm_forward(x, w, b, rm, rv)
    assert np.isnan(y[:, 1]).all() and not np.isnan(y[:, [0, 2]]).any()
    assert np.isnan(rm[1]) and np.isnan(rv[1])
    ly, _ = ops.layer_norm_forward(x, w, b)
    assert np.isnan(ly[2]).all() and not np.isnan(np.delete(ly, 2, axis=0)).any()


@pytest.mark.parametrize("shape", [(1000, 5), (5, 1000)])
def test_large_mean_float32(shape):
    rng = np.random.default_rng(10)
    x = (1e4 + rng.standard_normal(shape) * 1e-2).astype(np.float32)
    dy = rng.standard_normal(shape).astype(np.float32)
    y, s = ops.batch_norm_forward(x, None, None, None, None)
    yr, sr = ref.batch_norm_forward(f64(x), None, None, None, None)
    close("batch y", y, yr, np.float32)
    dx, _, _ = ops.batch_norm_backward(dy, x, s, None)
    close("batch dx", dx, ref.batch_norm_backward(f64(dy), f64(x), sr, None)[0], np.float32)
    y, s = ops.layer_norm_forward(x, None, None)
    yr, sr = ref.layer_norm_forward(f64(x), None, None)
    close("layer y", y, yr, np.float32)
    dx, _, _ = ops.layer_norm_backward(dy, x, s, None)
    close("layer dx", dx, ref.layer_norm_backward(f64(dy), f64(x), sr, None)[0], np.float32)


# ===========================================================================
# GPU twins (_cuda): CPU-run argument checks on stand-ins, then the device
# ===========================================================================


def _bn_fwd_args():
    x, _, w, b, rm, rv = data((5, 3), np.float64)
    return {"x": x, "weight": w, "bias": b, "running_mean": rm, "running_var": rv,
            "out": np.zeros_like(x)}


def _bn_bwd_args():
    x, dy, w, _, _, _ = data((5, 3), np.float64)
    return {"dy": dy, "x": x, "mean": np.zeros(3), "rstd": np.ones(3), "s": np.zeros_like(x),
            "weight": w, "dx_out": np.zeros_like(x), "dweight_out": np.zeros(3),
            "dbias_out": np.zeros(3)}


def _ln_fwd_args():
    x, _, w, b, _, _ = data((5, 3), np.float64)
    return {"x": x, "weight": w, "bias": b, "out": np.zeros_like(x)}


def _ln_bwd_args():
    x, dy, w, _, _, _ = data((5, 3), np.float64)
    return {"dy": dy, "x": x, "mean": np.zeros(5), "rstd": np.ones(5), "weight": w,
            "dx_out": np.zeros_like(x), "dweight_out": np.zeros(3), "dbias_out": np.zeros(3)}


NORM_CALLS = {
    "batch_norm_forward": (_bn_fwd_args, lambda a: ops.batch_norm_forward(
        a["x"], a["weight"], a["bias"], a["running_mean"], a["running_var"], out=a["out"])),
    "batch_norm_backward": (_bn_bwd_args, lambda a: ops.batch_norm_backward(
        a["dy"], a["x"], (a["mean"], a["rstd"], a["s"]), a["weight"], activation="relu",
        dx_out=a["dx_out"], dweight_out=a["dweight_out"], dbias_out=a["dbias_out"])),
    "layer_norm_forward": (_ln_fwd_args, lambda a: ops.layer_norm_forward(
        a["x"], a["weight"], a["bias"], out=a["out"])),
    "layer_norm_backward": (_ln_bwd_args, lambda a: ops.layer_norm_backward(
        a["dy"], a["x"], (a["mean"], a["rstd"]), a["weight"], dx_out=a["dx_out"],
        dweight_out=a["dweight_out"], dbias_out=a["dbias_out"])),
}

NORM_DEFECTS = [
    (call, arg, defect)
    for call, (make, _) in NORM_CALLS.items()
    for arg in make()
    for defect in (_f32, _reshape, _int_dtype, _strided)
] + [
    ("batch_norm_forward", "running_mean", _readonly),
    ("batch_norm_forward", "running_var", _readonly),
    ("batch_norm_forward", "out", _readonly),
    ("batch_norm_backward", "dx_out", _readonly),
    ("batch_norm_backward", "dweight_out", _readonly),
    ("layer_norm_forward", "out", _readonly),
    ("layer_norm_backward", "dbias_out", _readonly),
]


@needs_cuda_module
@pytest.mark.parametrize("call,arg,defect", NORM_DEFECTS,
                         ids=[f"{c}-{a}-{d.__name__[1:]}" for c, a, d in NORM_DEFECTS])
def test_gpu_defect_gives_the_cpu_message(call, arg, defect):
    assert_same_error(NORM_CALLS, call, arg, defect)


@needs_cuda_module
@pytest.mark.parametrize("call", list(NORM_CALLS))
def test_numpy_array_in_a_gpu_norm_call(call):
    assert_numpy_in_gpu_call_raises(NORM_CALLS, call)


@needs_cuda_module
def test_gpu_batch_norm_one_row_in_training_raises():
    x = FakeGpuArray((1, 3), "<f4")
    rm, rv = FakeGpuArray((3,), "<f4"), FakeGpuArray((3,), "<f4")
    with pytest.raises(ValueError, match="Expected more than 1 value per channel"):
        ops.batch_norm_forward(x, None, None, rm, rv)


@needs_cuda_module
def test_gpu_norm_dry_run_checks_only():
    cuda = backend._cuda
    x = FakeGpuArray((4, 3), "<f8")
    assert cuda.batch_norm_forward(x, None, None, None, None, True, 0.1, 1e-5, 0, 0.0, None,
                                   None, None, True, 0) is None
    assert cuda.layer_norm_forward(x, None, None, 1e-5, None, None, True, 0) is None
    with pytest.raises(ValueError, match="out and x: expected separate arrays"):
        cuda.layer_norm_forward(x, None, None, 1e-5, x, None, True, 0)


@pytest.mark.skipif(fusedtrain.cuda_available(), reason="a device is present")
@needs_cuda_module
@pytest.mark.parametrize("call", list(NORM_CALLS))
def test_valid_gpu_norm_call_checks_then_needs_a_device(call):
    make, run = NORM_CALLS[call]
    gpu = {k: fake_like(v) for k, v in make().items()}
    with pytest.raises(RuntimeError, match="no CUDA device is available"):
        run(gpu)


def test_gpu_norm_without_cuda_module(monkeypatch):
    monkeypatch.setattr(backend, "_cuda", None)
    with pytest.raises(RuntimeError, match="x is a GPU array, but fusedtrain was built "
                                           "without CUDA"):
        ops.batch_norm_forward(FakeGpuArray((2, 3)), None, None, None, None)
    with pytest.raises(RuntimeError, match="x is a GPU array, but fusedtrain was built "
                                           "without CUDA"):
        ops.layer_norm_forward(FakeGpuArray((2, 3)), None, None)


# --- on a device: every output against the CPU kernels ----------------------
needs_gpu = pytest.mark.skipif(not fusedtrain.cuda_available(), reason="no CUDA device")

# activations whose math is + - * / and comparisons only: the GPU's results
# are the CPU's bit for bit; the others go through the device's exp / tanh /
# erf and are compared at the reference tolerance
BITWISE_ACTS = {"identity", "none", "relu", "leaky0.2"}
GPU_SHAPES = [(2, 1), (7, 3), (33, 17), (1000, 5), (256, 1000), (20000, 3)]


def _same(name, got, want, dtype, bitwise):
    got = got.get() if hasattr(got, "get") else np.asarray(got)
    if bitwise:
        assert got.dtype == want.dtype and np.array_equal(got, want, equal_nan=True), name
    else:
        close(name, got, want, dtype)


@needs_gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", GPU_SHAPES)
@pytest.mark.parametrize("name,act,kw", ACTS, ids=ACT_IDS)
@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("mode", ["train", "train_norunning", "eval"])
def test_gpu_batch_norm_matches_cpu(dtype, shape, name, act, kw, affine, mode):
    cp = pytest.importorskip("cupy")
    training, running = mode != "eval", mode != "train_norunning"
    x, dy, w, b, rm, rv = data(shape, dtype, affine=affine)
    if not running:
        rm = rv = None
    g = (lambda a: None if a is None else cp.asarray(a))
    gx, gdy, gw, gb, grm, grv = map(g, (x, dy, w, b, rm, rv))
    y, saved = ops.batch_norm_forward(x, w, b, rm, rv, training=training, momentum=0.3,
                                      activation=act, **kw)
    gy, gsaved = ops.batch_norm_forward(gx, gw, gb, grm, grv, training=training, momentum=0.3,
                                        activation=act, **kw)
    bit = name in BITWISE_ACTS
    _same("y", gy, y, dtype, bit)
    _same("saved mean", gsaved[0], saved[0], dtype, True)
    _same("saved rstd", gsaved[1], saved[1], dtype, True)
    if saved[2] is None:
        assert gsaved[2] is None
    else:
        _same("saved s", gsaved[2], saved[2], dtype, bit)
    if running:
        _same("running_mean", grm, rm, dtype, True)
        _same("running_var", grv, rv, dtype, True)
    if not training:
        return
    for accumulate in (False, True):
        kwargs, gkwargs = {}, {}
        if accumulate and affine:
            kwargs = {"dweight_out": np.full(shape[1], 0.25, dtype),
                      "dbias_out": np.full(shape[1], -0.5, dtype), "accumulate": True}
            gkwargs = {k: g(v) if k != "accumulate" else v for k, v in kwargs.items()}
        # the backward from the CPU's saved values on both sides, so that the
        # gradients compare bitwise wherever the activation's do
        gs = (cp.asarray(saved[0]), cp.asarray(saved[1]), g(saved[2]))
        dx, dw, db = ops.batch_norm_backward(dy, x, saved, w, activation=act, **kwargs, **kw)
        gdx, gdw, gdb = ops.batch_norm_backward(gdy, gx, gs, gw, activation=act, **gkwargs, **kw)
        _same("dx", gdx, dx, dtype, bit)
        if affine:
            _same("dweight", gdw, dw, dtype, bit)
            _same("dbias", gdb, db, dtype, bit)
            if accumulate:
                assert gdw is gkwargs["dweight_out"] and gdb is gkwargs["dbias_out"]
        else:
            assert gdw is None and gdb is None


@needs_gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", GPU_SHAPES + [(3, 4099)])
@pytest.mark.parametrize("affine", [True, False])
def test_gpu_layer_norm_matches_cpu(dtype, shape, affine):
    cp = pytest.importorskip("cupy")
    x, dy, w, b, _, _ = data(shape, dtype, affine=affine)
    g = (lambda a: None if a is None else cp.asarray(a))
    y, saved = ops.layer_norm_forward(x, w, b)
    gy, gsaved = ops.layer_norm_forward(g(x), g(w), g(b))
    _same("y", gy, y, dtype, True)
    _same("saved mean", gsaved[0], saved[0], dtype, True)
    _same("saved rstd", gsaved[1], saved[1], dtype, True)
    yr, sr = ref.layer_norm_forward(f64(x), f64(w), f64(b))
    close("y vs reference", gy.get(), yr, dtype)
    for accumulate in (False, True):
        kwargs, gkwargs = {}, {}
        if accumulate and affine:
            kwargs = {"dweight_out": np.full(shape[1], 0.25, dtype),
                      "dbias_out": np.full(shape[1], -0.5, dtype), "accumulate": True}
            gkwargs = {k: g(v) if k != "accumulate" else v for k, v in kwargs.items()}
        dx, dw, db = ops.layer_norm_backward(dy, x, saved, w, **kwargs)
        gdx, gdw, gdb = ops.layer_norm_backward(g(dy), g(x), gsaved, g(w), **gkwargs)
        _same("dx", gdx, dx, dtype, True)
        if affine:
            _same("dweight", gdw, dw, dtype, True)
            _same("dbias", gdb, db, dtype, True)
        else:
            assert gdw is None and gdb is None


@needs_gpu
def test_gpu_bad_input_changes_nothing():
    cp = pytest.importorskip("cupy")
    x, _, w, b, rm, rv = data((1, 3), np.float32)
    gx, gw, gb, grm, grv = map(cp.asarray, (x, w, b, rm, rv))
    out = cp.full((1, 3), 7.0, cp.float32)
    with pytest.raises(ValueError, match="per channel"):
        ops.batch_norm_forward(gx, gw, gb, grm, grv, out=out)
    assert np.array_equal(grm.get(), rm) and np.array_equal(grv.get(), rv)
    assert bool((out == 7.0).all())
    with pytest.raises(ValueError, match="momentum"):
        ops.batch_norm_forward(cp.asarray(data((4, 3), np.float32)[0]), gw, gb, grm, grv,
                               momentum=2.0)
    assert np.array_equal(grm.get(), rm) and np.array_equal(grv.get(), rv)
