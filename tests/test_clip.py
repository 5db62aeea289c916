"""Gradient clipping: fusedtrain.ops.global_norm, clip_grad_norm_ and
clip_grad_value_ against the NumPy references (fusedtrain.reference.clip) and,
when torch is installed, against torch.nn.utils; thread-count determinism,
non-finite norms, bad input; the CUDA kernels on stand-ins (argument checks)
and, with a GPU, against the CPU bit for bit."""

from __future__ import annotations

import math

import numpy as np
import pytest

import fusedtrain
from fusedtrain import backend, ops
from fusedtrain.reference import clip as ref
from conftest import DTYPES, assert_unchanged, dtype_id, make_rng, random_list, snapshot

SIZES = (1, 7, 22, 1000003)
MIXED = [(7,), (3, 11), (0,), (1,), (2048,), (2049,), (64, 65), (4097,)]
NORM_TYPES = (2.0, 1.0, math.inf, 3.0, 0.5)
# float64 accumulation in another order than NumPy's: float64 rounding only
NORM_RTOL = 1e-12


def _lists():
    return [pytest.param([(n,)], id=f"n{n}") for n in SIZES] + [pytest.param(MIXED, id="mixed")]


# ---------------------------------------------------------------------------
# global norm
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("norm_type", NORM_TYPES, ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("shapes", _lists())
def test_global_norm_matches_reference(shapes, dtype, norm_type):
    grads = random_list(make_rng("norm", str(shapes), dtype_id(dtype), norm_type), shapes, dtype)
    snap = snapshot(grads)
    got = ops.global_norm(grads, norm_type)
    assert type(got) is float
    want = ref.global_norm(grads, norm_type)
    rtol = NORM_RTOL if norm_type in (1.0, 2.0, math.inf) else 1e-10  # pow rounds
    assert got == pytest.approx(want, rel=rtol, abs=0)
    assert_unchanged(grads, snap)


def test_global_norm_single_array_and_empty():
    g = np.arange(5, dtype=np.float32)
    assert ops.global_norm(g) == pytest.approx(math.sqrt(30.0), rel=1e-15)
    assert ops.global_norm([]) == 0.0
    assert ops.global_norm([np.zeros((0,), np.float32)]) == 0.0
    assert ops.global_norm([np.zeros(3)], "inf") == 0.0


def test_global_norm_accumulates_in_float64():
    """1e6 float32 ones: a float32 running sum would be off; float64 is exact."""
    g = np.ones(1_000_003, dtype=np.float32)
    assert ops.global_norm([g], 1.0) == 1_000_003.0
    assert ops.global_norm([g]) == math.sqrt(1_000_003.0)
    big = np.full(10, 1e30, dtype=np.float32)  # squares overflow float32, not float64
    assert ops.global_norm([big]) == pytest.approx(math.sqrt(10) * float(np.float32(1e30)), rel=1e-15)


def _blocked_norm(grads, p):
    """The kernels' exact order (csrc/include/fusedtrain/norm_math.h) in plain
    Python over NumPy: blocks of 2048, 16 lanes, halving, 512 final lanes."""
    def term(x):
        x = np.abs(x.astype(np.float64))
        return x * x if p == 2.0 else x

    def fold(lanes):
        lanes = list(lanes)
        w = len(lanes) // 2
        while w >= 1:
            for l in range(w):
                lanes[l] = max(lanes[l], lanes[l + w]) if math.isinf(p) else lanes[l] + lanes[l + w]
            w //= 2
        return lanes[0]

    partials = []
    for g in grads:
        x = term(g.ravel())
        for b in range(0, x.size, 2048):
            blk = x[b:b + 2048]
            lanes = [0.0] * 16
            for j, v in enumerate(blk):  # in element order per lane
                lanes[j % 16] = max(lanes[j % 16], float(v)) if math.isinf(p) else lanes[j % 16] + float(v)
            partials.append(fold(lanes))
    lanes = [0.0] * 512
    for b, v in enumerate(partials):
        lanes[b % 512] = max(lanes[b % 512], v) if math.isinf(p) else lanes[b % 512] + v
    total = fold(lanes)
    return math.sqrt(total) if p == 2.0 else total


@pytest.mark.parametrize("norm_type", (2.0, 1.0, math.inf), ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_global_norm_is_the_documented_blocked_order(dtype, norm_type):
    """Bitwise: the kernel adds in exactly the order norm_math.h documents."""
    shapes = [(7,), (5000,), (0,), (2048,), (3, 700)]
    grads = random_list(make_rng("blocked", dtype_id(dtype), norm_type), shapes, dtype, scale=3.0)
    assert ops.global_norm(grads, norm_type) == _blocked_norm(grads, norm_type)


@pytest.mark.parametrize("norm_type", NORM_TYPES, ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_global_norm_independent_of_thread_count(dtype, norm_type, restore_threads):
    rng = make_rng("threads", dtype_id(dtype), norm_type)
    grads = random_list(rng, [(1000003,), (7,), (300, 1001), (2049,)], dtype)
    results = []
    for n in (1, 2, 3, 4, 7):
        fusedtrain.set_num_threads(n)
        results.append(ops.global_norm(grads, norm_type))
    assert len({r.hex() for r in results}) == 1, results


@pytest.mark.parametrize("bad,expect", [(np.nan, "nan"), (np.inf, "inf"), (-np.inf, "inf")])
@pytest.mark.parametrize("norm_type", NORM_TYPES, ids=str)
def test_global_norm_non_finite(bad, expect, norm_type):
    grads = random_list(make_rng("nonfinite"), MIXED, np.float32)
    grads[4][100] = bad
    got = ops.global_norm(grads, norm_type)
    assert (math.isnan(got) if expect == "nan" else got == math.inf)
    grads[1][0, 3] = np.nan  # NaN wins over inf, for max too
    assert math.isnan(ops.global_norm(grads, norm_type))


# ---------------------------------------------------------------------------
# clip_grad_norm_
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("max_norm", (0.5, 1e3), ids=("clips", "no-op"))
@pytest.mark.parametrize("norm_type", NORM_TYPES, ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("shapes", _lists())
def test_clip_grad_norm_matches_reference(shapes, dtype, norm_type, max_norm):
    grads = random_list(make_rng("clip", str(shapes), dtype_id(dtype), norm_type), shapes, dtype)
    want_total = ref.global_norm(grads, norm_type)
    want, _ = ref.clip_grad_norm(grads, max_norm, norm_type, ops.global_norm(grads, norm_type))
    total = ops.clip_grad_norm_(grads, max_norm, norm_type)
    assert total == pytest.approx(want_total, rel=1e-10, abs=0)
    for i, (g, w) in enumerate(zip(grads, want)):
        assert g.dtype == dtype
        np.testing.assert_array_equal(g, w, err_msg=f"grads[{i}]")
    if max_norm < 1e3:
        assert ops.global_norm(grads, norm_type) <= max_norm * (1 + 1e-6)


def test_clip_grad_norm_single_array_and_empty():
    g = np.array([3.0, 4.0])
    assert ops.clip_grad_norm_(g, 1.0) == 5.0
    np.testing.assert_allclose(g, [0.6, 0.8], rtol=1e-6)
    assert ops.clip_grad_norm_([], 1.0) == 0.0


@pytest.mark.parametrize("bad", (np.nan, np.inf))
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_clip_grad_norm_non_finite(bad, dtype):
    grads = random_list(make_rng("clip-nonfinite"), MIXED, dtype)
    grads[4][5] = bad
    snap = snapshot(grads)
    with pytest.raises(RuntimeError, match="non-finite"):
        ops.clip_grad_norm_(grads, 1.0, error_if_nonfinite=True)
    assert_unchanged(grads, snap)
    want, _ = ref.clip_grad_norm(grads, 1.0)
    with np.errstate(invalid="ignore"):
        total = ops.clip_grad_norm_(grads, 1.0)
    assert math.isnan(total) if bad != bad else total == math.inf
    for g, w in zip(grads, want):
        np.testing.assert_array_equal(g, w)  # NaN everywhere, or zeros (NaN where inf*0)
    if bad == bad:  # inf: coefficient 0
        finite = np.concatenate([g.ravel() for g in want])
        assert np.isnan(finite).sum() == 1 and np.all(finite[~np.isnan(finite)] == 0)


def _torch():
    return pytest.importorskip("torch")


@pytest.mark.parametrize("max_norm", (0.5, 2.0, 1e3))
@pytest.mark.parametrize("norm_type", (2.0, 1.0, math.inf, 3.0), ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_clip_grad_norm_matches_torch(dtype, norm_type, max_norm):
    t = _torch()
    # torch has no inf norm of an empty tensor (it raises); here it adds nothing
    shapes = [s for s in MIXED if s != (0,)] if math.isinf(norm_type) else MIXED
    grads = random_list(make_rng("torch-clip", dtype_id(dtype), norm_type), shapes, dtype)
    params = [t.nn.Parameter(t.zeros(g.shape, dtype=t.from_numpy(g).dtype)) for g in grads]
    for p, g in zip(params, grads):
        p.grad = t.from_numpy(g.copy())
    want_total = float(t.nn.utils.clip_grad_norm_(params, max_norm, norm_type, foreach=False))
    total = ops.clip_grad_norm_(grads, max_norm, norm_type)
    rtol = 1e-5 if dtype == np.float32 else 1e-12
    assert total == pytest.approx(want_total, rel=rtol)
    for i, (p, g) in enumerate(zip(params, grads)):
        np.testing.assert_allclose(g, p.grad.numpy(), rtol=rtol, atol=0, err_msg=f"grads[{i}]")


@pytest.mark.parametrize("bad", (np.nan, np.inf, -np.inf))
def test_clip_grad_norm_non_finite_like_torch(bad):
    t = _torch()
    grads = random_list(make_rng("torch-nonfinite"), MIXED, np.float32)
    grads[6][1, 2] = bad
    tgrads = [t.from_numpy(g.copy()) for g in grads]
    params = [t.nn.Parameter(t.zeros(g.shape)) for g in grads]
    for p, g in zip(params, tgrads):
        p.grad = g
    with pytest.raises(RuntimeError):
        t.nn.utils.clip_grad_norm_(params, 1.0, error_if_nonfinite=True)
    with pytest.raises(RuntimeError):
        ops.clip_grad_norm_(grads, 1.0, error_if_nonfinite=True)
    want_total = float(t.nn.utils.clip_grad_norm_(params, 1.0))
    with np.errstate(invalid="ignore"):
        total = ops.clip_grad_norm_(grads, 1.0)
    assert (math.isnan(total) and math.isnan(want_total)) or total == want_total
    for g, p in zip(grads, params):
        np.testing.assert_array_equal(g, p.grad.numpy())


# ---------------------------------------------------------------------------
# clip_grad_value_
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("shapes", _lists())
def test_clip_grad_value_matches_reference(shapes, dtype):
    grads = random_list(make_rng("value", str(shapes), dtype_id(dtype)), shapes, dtype, scale=2.0)
    if grads[-1].size > 3:
        grads[-1].ravel()[:3] = [np.nan, np.inf, -np.inf]
    want = ref.clip_grad_value(grads, 0.75)
    assert ops.clip_grad_value_(grads, 0.75) is None
    for g, w in zip(grads, want):
        np.testing.assert_array_equal(g, w)
        assert np.nanmax(np.abs(g), initial=0.0) <= 0.75


def test_clip_grad_value_matches_torch():
    t = _torch()
    grads = random_list(make_rng("torch-value"), MIXED, np.float32, scale=2.0)
    grads[1][0, :3] = [np.nan, np.inf, -np.inf]
    params = [t.nn.Parameter(t.zeros(g.shape)) for g in grads]
    for p, g in zip(params, grads):
        p.grad = t.from_numpy(g.copy())
    t.nn.utils.clip_grad_value_(params, 0.3)
    ops.clip_grad_value_(grads, 0.3)
    for g, p in zip(grads, params):
        np.testing.assert_array_equal(g, p.grad.numpy())


# ---------------------------------------------------------------------------
# bad input: a clear error naming the argument, and nothing changed
# ---------------------------------------------------------------------------
def _expect(fn, grads, types, *words):
    snap = snapshot(grads)
    with pytest.raises(types) as info:
        fn()
    assert_unchanged(grads, snap)
    for w in words:
        assert w in str(info.value), (w, str(info.value))
    return info.value


@pytest.mark.parametrize("max_norm", (0.0, -1.0, np.nan))
def test_max_norm_must_be_positive(max_norm):
    grads = random_list(make_rng("bad"), [(5,), (6,)], np.float32)
    _expect(lambda: ops.clip_grad_norm_(grads, max_norm), grads, ValueError,
            "max_norm", "> 0", "received")


@pytest.mark.parametrize("norm_type", (0.0, -2.0, np.nan, "two"))
def test_bad_norm_type(norm_type):
    grads = random_list(make_rng("bad"), [(5,), (6,)], np.float32)
    types = TypeError if isinstance(norm_type, str) else ValueError
    _expect(lambda: ops.clip_grad_norm_(grads, 1.0, norm_type), grads, types, "norm_type")
    _expect(lambda: ops.global_norm(grads, norm_type), grads, types, "norm_type")


def test_bad_scalar_types():
    grads = random_list(make_rng("bad"), [(5,)], np.float32)
    _expect(lambda: ops.clip_grad_norm_(grads, "1"), grads, TypeError, "max_norm", "str")
    _expect(lambda: ops.clip_grad_norm_(grads, 1.0, error_if_nonfinite="yes"), grads, TypeError,
            "error_if_nonfinite")
    _expect(lambda: ops.clip_grad_norm_(grads, 1.0, foreach=1), grads, TypeError, "foreach")
    _expect(lambda: ops.clip_grad_value_(grads, -0.5), grads, ValueError, "clip_value", "-0.5")
    _expect(lambda: ops.clip_grad_value_(grads, None), grads, TypeError, "clip_value", "NoneType")
    with pytest.raises(TypeError, match="grads: expected an array or a list of arrays, received"):
        ops.global_norm({"a": 1})


def _bad_arrays():
    a = np.ones((3, 4), np.float32)
    ro = np.ones(4, np.float32)
    ro.flags.writeable = False
    return [
        pytest.param(a.T, ValueError, ("grads[1]", "C-contiguous", "non-contiguous"), id="transposed"),
        pytest.param(np.ones(8, np.float32)[::2], ValueError, ("grads[1]", "C-contiguous"), id="strided"),
        pytest.param(np.ones(4, np.float64), TypeError, ("grads[1]", "float32", "float64"), id="dtype"),
        pytest.param(np.ones(4, np.float16), TypeError, ("grads[1]", "float32", "float16"), id="float16"),
        pytest.param(np.ones(4, np.int32), TypeError, ("grads[1]", "int32"), id="int32"),
        pytest.param([1.0, 2.0], TypeError, ("grads[1]", "numpy.ndarray", "list"), id="list"),
        pytest.param(ro, ValueError, ("grads[1]", "writable", "read-only"), id="read-only"),
    ]


@pytest.mark.parametrize("bad,types,words", _bad_arrays())
@pytest.mark.parametrize("fn", ("global_norm", "clip_grad_norm_", "clip_grad_value_"))
def test_bad_array(fn, bad, types, words):
    grads = [np.ones(5, np.float32) * 3, bad, np.ones(2, np.float32)]
    if fn == "global_norm" and "read-only" in words:  # reading a read-only array is fine
        assert ops.global_norm(grads) == pytest.approx(math.sqrt(45 + 4 + 2))
        return
    call = {"global_norm": lambda: ops.global_norm(grads),
            "clip_grad_norm_": lambda: ops.clip_grad_norm_(grads, 0.1),
            "clip_grad_value_": lambda: ops.clip_grad_value_(grads, 0.1)}[fn]
    arrays = [g for g in grads if isinstance(g, np.ndarray)]
    _expect(call, arrays, types, *words)


def test_shared_memory_is_rejected():
    """Scaling one buffer twice would clip it twice: views that overlap raise."""
    base = np.ones(10, np.float32) * 5
    grads = [base[:6], base[4:]]
    _expect(lambda: ops.clip_grad_norm_(grads, 0.1), [base], ValueError, "grads[0]", "grads[1]",
            "share memory")


def test_torch_tensor_is_not_taken_by_the_numpy_path():
    t = _torch()
    g = t.ones(4)
    with pytest.raises(TypeError, match=r"grads\[0\]: expected a numpy.ndarray or a GPU array"
                                        r".*received torch.Tensor.*tensor.numpy\(\)"):
        ops.clip_grad_norm_([g], 1.0)
    with pytest.raises(TypeError, match=r"grads\[0\]: expected a numpy.ndarray.*received builtins.float"):
        ops.global_norm([1.0])


# ---------------------------------------------------------------------------
# CUDA: argument checks on stand-ins (no GPU needed), the kernels with a GPU
# ---------------------------------------------------------------------------
HAS_CUDA_MODULE = getattr(backend, "_cuda", None) is not None
needs_cuda_module = pytest.mark.skipif(not HAS_CUDA_MODULE, reason="built without the _cuda module")
needs_gpu = pytest.mark.skipif(not fusedtrain.cuda_available(), reason="no CUDA device")


class _Fake:
    """A stand-in GPU array (only __cuda_array_interface__, a fake pointer)."""

    _next = [0x7E00_0000_0000]

    def __init__(self, shape, typestr="<f4", readonly=False, strides=None):
        self._next[0] += 1 << 20
        self.__cuda_array_interface__ = {"shape": tuple(shape), "typestr": typestr,
                                         "data": (self._next[0], readonly), "strides": strides,
                                         "version": 3}


@needs_cuda_module
@pytest.mark.skipif(fusedtrain.cuda_available(), reason="fake pointers fail the device check on a GPU")
def test_cuda_bindings_check_before_the_device():
    cuda = backend._cuda
    out = _Fake((), "<f8")
    grads = [_Fake((5,)), _Fake((3, 4))]
    for call in (lambda: cuda.global_norm(grads, 2.0, out, 0),
                 lambda: cuda.clip_by_norm_(grads, out, 1.0, False, 0),
                 lambda: cuda.scale_(grads, 0.5, False, 0),
                 lambda: cuda.clamp_(grads, -1.0, 1.0, False, 0)):
        with pytest.raises(RuntimeError, match="no CUDA device is available"):
            call()
    cuda.clip_by_norm_(grads, out, 1.0, True, 0)  # a dry run checks only
    bad = [_Fake((5,)), _Fake((4,), "<f8")]
    with pytest.raises(TypeError, match=r"grads\[1\]: expected dtype float32 \(the dtype of grads\[0\]\), received float64"):
        cuda.global_norm(bad, 2.0, out, 0)
    strided = [_Fake((5,)), _Fake((4,), strides=(8,))]
    with pytest.raises(ValueError, match=r"grads\[1\]: expected a C-contiguous array"):
        cuda.scale_(strided, 0.5, False, 0)
    with pytest.raises(ValueError, match=r"grads\[1\]: expected a writable array"):
        cuda.clamp_([_Fake((5,)), _Fake((4,), readonly=True)], -1.0, 1.0, False, 0)
    with pytest.raises(TypeError, match=r"out: expected one float64 element, received dtype float32"):
        cuda.global_norm(grads, 2.0, _Fake((), "<f4"), 0)
    with pytest.raises(ValueError, match="norm_type"):
        cuda.global_norm(grads, -1.0, out, 0)


@needs_gpu
@pytest.mark.parametrize("norm_type", (2.0, 1.0, math.inf), ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_cuda_global_norm_equals_cpu_bitwise(dtype, norm_type):
    cupy = pytest.importorskip("cupy")
    shapes = [(1,), (7,), (22,), (1000003,), (0,), (300, 1001)] + [(65,)] * 200  # > one table
    grads = random_list(make_rng("gpu-norm", dtype_id(dtype)), shapes, dtype)
    dgrads = [cupy.asarray(g) for g in grads]
    got = ops.global_norm(dgrads, norm_type)
    assert float(got) == ops.global_norm(grads, norm_type)
    for _ in range(3):  # deterministic run to run
        assert float(ops.global_norm(dgrads, norm_type)) == float(got)


@needs_gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_cuda_clipping_equals_cpu(dtype):
    cupy = pytest.importorskip("cupy")
    grads = random_list(make_rng("gpu-clip", dtype_id(dtype)), MIXED, dtype)
    dgrads = [cupy.asarray(g) for g in grads]
    total = ops.clip_grad_norm_(dgrads, 0.5)
    assert float(total) == ops.clip_grad_norm_(grads, 0.5)
    for g, d in zip(grads, dgrads):
        np.testing.assert_array_equal(cupy.asnumpy(d), g)
    ops.clip_grad_value_(dgrads, 0.01)
    ops.clip_grad_value_(grads, 0.01)
    for g, d in zip(grads, dgrads):
        np.testing.assert_array_equal(cupy.asnumpy(d), g)
    dgrads[3][0] = cupy.nan
    with pytest.raises(RuntimeError, match="non-finite"):
        ops.clip_grad_norm_(dgrads, 0.5, error_if_nonfinite=True)


class _Recorder:
    """Stands in for the _cuda module: records each call."""

    def __init__(self):
        self.calls = []

    def __getattr__(self, name):
        return lambda *args: self.calls.append((name, args))


def test_gpu_orchestration_on_stand_ins(monkeypatch):
    """The GPU path: the norm goes to a device scalar and is read on the
    device by the scaling kernel, on the caller's stream; the writable
    check (a dry run) comes first; nothing is read back on the host unless
    error_if_nonfinite=True."""
    rec = _Recorder()
    out = object()
    monkeypatch.setattr(backend, "_cuda", rec)
    monkeypatch.setattr(backend, "_device_present", True)
    monkeypatch.setattr(backend, "_current_stream", lambda first: 0xABC)
    # the GPU adapter's allocator (CuPy or torch) makes the 0-d float64 result
    monkeypatch.setattr(backend.CudaModule, "_empty", lambda self, shape, typestr: out)
    grads = [_Fake((5,)), _Fake((3, 4))]
    assert ops.global_norm(grads, 1.0) is out
    assert rec.calls == [("global_norm", (grads, 1.0, out, 0xABC))]
    rec.calls.clear()
    assert ops.clip_grad_norm_(grads, 2.0, "inf") is out
    assert rec.calls == [("clip_by_norm_", (grads, out, 2.0, True, 0)),
                         ("global_norm", (grads, math.inf, out, 0xABC)),
                         ("clip_by_norm_", (grads, out, 2.0, False, 0xABC))]
    rec.calls.clear()
    ops.clip_grad_value_(grads, 0.25)
    assert rec.calls == [("clamp_", (grads, -0.25, 0.25, False, 0xABC))]


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_low_precision_gradients_are_refused(dtype):
    """Clipping has no float16 / bfloat16 variant: such lists raise, unchanged."""
    import ml_dtypes  # noqa: F401  (registers bfloat16 with NumPy)

    g = np.ones(5, dtype=np.dtype(dtype))
    before = g.copy()
    for call in (lambda: ops.global_norm([g]), lambda: ops.clip_grad_norm_([g], 0.5)):
        with pytest.raises(TypeError, match=rf"grads\[0\]: expected dtype float32 or float64, "
                                            rf"received {dtype}"):
            call()
    assert g.tobytes() == before.tobytes()
