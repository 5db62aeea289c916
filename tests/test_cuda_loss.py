"""The CUDA losses and dropout: fusedtrain._cuda's loss kernels and the
dispatch of fusedtrain.ops.{softmax_cross_entropy, bce_with_logits, mse,
dropout, dropout_backward}.

* CPU-run (no GPU needed): every defect of a call gives the same exception
  and message on stand-in GPU arrays (objects with only a
  ``__cuda_array_interface__``) as on NumPy arrays; NumPy and GPU arrays
  mixed in one call raise before anything runs; a valid call checks every
  argument and then raises RuntimeError without a device; the host-side
  launch arithmetic (workspace sizes, grids).
* GPU (skipped without a device and CuPy): every kernel against the NumPy
  reference at the CPU tests' tolerances, the loss a float as on the CPU,
  bad labels raising with nothing written, in-place gradients, and the
  dropout mask equal to the CPU's bit for bit.
"""

from __future__ import annotations

import numpy as np
import pytest

import fusedtrain
from fusedtrain import backend, ops, reference
from test_cuda import FakeGpuArray, needs_cuda_module, needs_gpu
from test_loss import RTOL, DTYPES, assert_close, rng_for

TYPESTR = {np.dtype(np.float32): "<f4", np.dtype(np.float64): "<f8",
           np.dtype(np.int64): "<i8", np.dtype(np.int32): "<i4", np.dtype(np.uint8): "|u1",
           np.dtype(np.bool_): "|b1", np.dtype(np.int8): "|i1"}


def fake_like(a: np.ndarray, **kw) -> FakeGpuArray:
    """A stand-in with a's shape and dtype (and its strides when a is a view)."""
    strides = None if a.flags.c_contiguous else a.strides
    return FakeGpuArray(a.shape, TYPESTR[a.dtype], strides=strides,
                        readonly=not a.flags.writeable, **kw)


# ===========================================================================
# CPU-run: the checks on stand-ins give the CPU's messages
# ===========================================================================
def _ce_args():
    rng = rng_for("ce-args")
    return {"logits": rng.standard_normal((4, 3)), "labels": np.array([0, 2, 1, 0]),
            "weight": np.ones(3), "out": np.zeros((4, 3))}


def _pair_args(a="pred", b="target"):
    rng = rng_for("pair-args")
    return {a: rng.standard_normal((3, 5)), b: rng.standard_normal((3, 5))}


def _dropout_args():
    return {"x": np.zeros((3, 5)), "out": np.zeros((3, 5)),
            "mask_out": np.zeros((3, 5), dtype=bool)}


def _dropout_backward_args():
    return {"dy": np.zeros((3, 5)), "mask": np.ones((3, 5), dtype=bool), "out": np.zeros((3, 5))}


CALLS = {
    "softmax_cross_entropy": (_ce_args, lambda a: ops.softmax_cross_entropy(
        a["logits"], a["labels"], weight=a["weight"], out=a["out"])),
    "bce_with_logits": (lambda: _pair_args("logits", "targets"),
                        lambda a: ops.bce_with_logits(a["logits"], a["targets"])),
    "mse": (_pair_args, lambda a: ops.mse(a["pred"], a["target"])),
    "dropout": (_dropout_args, lambda a: ops.dropout(a["x"], 0.5, 7, out=a["out"],
                                                     mask_out=a["mask_out"])),
    "dropout_backward": (_dropout_backward_args,
                         lambda a: ops.dropout_backward(a["dy"], a["mask"], 0.5, out=a["out"])),
}


def _f32(a, name):
    a[name] = a[name].astype(np.float32)


def _reshape(a, name):
    a[name] = np.zeros((2,) + a[name].shape, a[name].dtype)


def _strided(a, name):
    a[name] = np.zeros((a[name].shape[0] * 2,) + a[name].shape[1:], a[name].dtype)[::2]


def _readonly(a, name):
    a[name].flags.writeable = False


def _int_dtype(a, name):
    a[name] = a[name].astype(np.int8 if a[name].dtype.kind == "f" else np.float64)


# (call, argument, defect) triples
DEFECTS = [
    ("softmax_cross_entropy", "logits", _f32),  # then weight/out mismatch
    ("softmax_cross_entropy", "logits", _reshape),
    ("softmax_cross_entropy", "labels", _reshape),
    ("softmax_cross_entropy", "labels", _int_dtype),
    ("softmax_cross_entropy", "labels", _strided),
    ("softmax_cross_entropy", "weight", _f32),
    ("softmax_cross_entropy", "weight", _reshape),
    ("softmax_cross_entropy", "out", _f32),
    ("softmax_cross_entropy", "out", _readonly),
    ("softmax_cross_entropy", "out", _reshape),
    ("softmax_cross_entropy", "logits", _strided),
    ("bce_with_logits", "targets", _f32),
    ("bce_with_logits", "targets", _reshape),
    ("bce_with_logits", "logits", _int_dtype),
    ("mse", "target", _f32),
    ("mse", "target", _strided),
    ("mse", "pred", _strided),
    ("dropout", "x", _int_dtype),
    ("dropout", "out", _f32),
    ("dropout", "out", _readonly),
    ("dropout", "out", _reshape),
    ("dropout", "mask_out", _int_dtype),
    ("dropout", "mask_out", _reshape),
    ("dropout_backward", "mask", _int_dtype),
    ("dropout_backward", "mask", _reshape),
    ("dropout_backward", "out", _f32),
    ("dropout_backward", "out", _readonly),
    ("dropout_backward", "dy", _int_dtype),
]


def defect_errors(calls, call, arg, defect):
    """(CPU error, stand-in error) of `call` with `defect` applied to `arg`.
    `calls` maps a call name to (make the NumPy arguments, run with them)."""
    make, run = calls[call]
    cpu = make()
    defect(cpu, arg)
    with pytest.raises((TypeError, ValueError)) as cpu_err:
        run(cpu)
    gpu = {k: fake_like(v) for k, v in make().items()}
    spoilt = make()
    defect(spoilt, arg)
    gpu[arg] = fake_like(spoilt[arg])
    with pytest.raises((TypeError, ValueError, RuntimeError)) as gpu_err:
        run(gpu)
    return cpu_err.value, gpu_err.value


def assert_same_error(calls, call, arg, defect):
    cpu, gpu = defect_errors(calls, call, arg, defect)
    assert type(gpu) is type(cpu)
    assert str(gpu).replace("cupy.", "numpy.") == str(cpu)


def assert_numpy_in_gpu_call_raises(calls, call):
    """A NumPy second argument after a GPU first one: TypeError naming both."""
    make, run = calls[call]
    args = make()
    names = list(args)
    gpu = {k: fake_like(v) for k, v in args.items()}
    gpu[names[1]] = args[names[1]]
    with pytest.raises(TypeError, match=rf"^{names[1]}: expected a GPU array like {names[0]}, "
                                        r"received numpy.ndarray$"):
        run(gpu)


def assert_gpu_in_numpy_call_raises(calls, call):
    make, run = calls[call]
    args = make()
    names = list(args)
    args[names[1]] = fake_like(args[names[1]])
    with pytest.raises(TypeError, match=rf"^{names[1]}: expected a numpy.ndarray, received "):
        run(args)


@needs_cuda_module
@pytest.mark.parametrize("call,arg,defect", DEFECTS,
                         ids=[f"{c}-{a}-{d.__name__[1:]}" for c, a, d in DEFECTS])
def test_defect_gives_the_cpu_message(call, arg, defect):
    assert_same_error(CALLS, call, arg, defect)


@needs_cuda_module
@pytest.mark.parametrize("call", list(CALLS))
def test_numpy_array_in_a_gpu_call(call):
    assert_numpy_in_gpu_call_raises(CALLS, call)


@pytest.mark.parametrize("call", list(CALLS))
def test_gpu_array_in_a_numpy_call(call):
    assert_gpu_in_numpy_call_raises(CALLS, call)


@pytest.mark.parametrize("call", list(CALLS))
def test_unknown_first_argument(call):
    make, run = CALLS[call]
    args = make()
    first = list(args)[0]
    args[first] = args[first].tolist()
    with pytest.raises(TypeError, match=rf"^{first}: expected a numpy.ndarray or a GPU array"):
        run(args)


@pytest.mark.skipif(fusedtrain.cuda_available(), reason="a device is present")
@needs_cuda_module
@pytest.mark.parametrize("call", list(CALLS))
def test_valid_gpu_call_checks_then_needs_a_device(call):
    make, run = CALLS[call]
    gpu = {k: fake_like(v) for k, v in make().items()}
    with pytest.raises(RuntimeError, match="no CUDA device is available"):
        run(gpu)


def test_gpu_loss_without_cuda_module(monkeypatch):
    monkeypatch.setattr(backend, "_cuda", None)
    with pytest.raises(RuntimeError, match="logits is a GPU array, but fusedtrain was built "
                                           "without CUDA"):
        ops.softmax_cross_entropy(FakeGpuArray((2, 3)), FakeGpuArray((2,), "<i8"))


@needs_cuda_module
def test_gpu_ce_out_may_be_logits_but_not_overlap_labels():
    logits = FakeGpuArray((4, 3), "<f8")
    labels = FakeGpuArray((4,), "<i8")
    cuda = backend._cuda
    cuda.softmax_cross_entropy(logits, labels, None, logits, -100, 0.0, "mean", None, None, True, 0)
    inside = FakeGpuArray((4, 3), "<f8", ptr=labels.ptr)
    with pytest.raises(ValueError, match="out and labels: expected separate arrays"):
        cuda.softmax_cross_entropy(logits, labels, None, inside, -100, 0.0, "mean", None, None,
                                   True, 0)


@needs_cuda_module
@pytest.mark.parametrize("typestr", ["<i1", "|i1", "|u1", "<u2", "<i4", "<u4", "<i8", "<u8"])
def test_gpu_ce_accepts_every_integer_label_type(typestr):
    backend._cuda.softmax_cross_entropy(FakeGpuArray((4, 3)), FakeGpuArray((4,), typestr), None,
                                        None, -100, 0.0, "sum", None, None, True, 0)


@needs_cuda_module
@pytest.mark.parametrize("typestr", [">i8", "<f4", "|b1", "<i16"])
def test_gpu_ce_rejects_other_label_types(typestr):
    with pytest.raises(TypeError, match="labels: expected an integer dtype"):
        backend._cuda.softmax_cross_entropy(FakeGpuArray((4, 3)), FakeGpuArray((4,), typestr),
                                            None, None, -100, 0.0, "sum", None, None, True, 0)


@needs_cuda_module
def test_dry_run_touches_no_allocator():
    def boom(*_):
        raise AssertionError("allocator called by a dry run")

    cuda = backend._cuda
    x = FakeGpuArray((5,), "<f4")
    assert cuda.mse(x, FakeGpuArray((5,), "<f4"), "mean", boom, boom, True, 0) is None
    assert cuda.dropout(x, 0.1, 1, 2, None, None, boom, True, 0) is None
    assert cuda.dropout_backward(x, FakeGpuArray((5,), "|u1"), 0.1, None, boom, True, 0) is None


# ---------------------------------------------------------------------------
# host-side launch arithmetic
# ---------------------------------------------------------------------------
@needs_cuda_module
@pytest.mark.parametrize("n", [0, 1, 7, 4096, 4097, 10**6])
def test_workspace_sizes(n):
    cuda = backend._cuda
    assert cuda.ce_workspace_bytes(n) == 8 * (4 + 3 * n)  # header, index, w_y, loss per row
    assert cuda.elementwise_workspace_bytes(n) == 8 * (4 + -(-n // 4096))


@needs_cuda_module
@pytest.mark.parametrize("work,per_block", [(0, 256), (1, 256), (256, 256), (257, 256),
                                            (10**12, 256), (2**40, 1)])
def test_grid_covers_the_work_within_the_limit(work, per_block):
    grid = backend._cuda.grid_for(work, per_block)
    assert 1 <= grid <= 2**20
    assert grid == max(1, min(2**20, -(-work // per_block)))


@needs_cuda_module
@pytest.mark.parametrize("dtype", [np.int8, np.uint8, np.int16, np.uint16, np.int32, np.uint32,
                                   np.int64, np.uint64])
def test_bad_label_text_is_the_value(dtype):
    info = np.iinfo(dtype)
    for v in {info.min, info.max, 0, 1, -1 if info.min < 0 else 2, info.max // 3}:
        raw = np.array([v], dtype=np.dtype(dtype).newbyteorder("<")).tobytes()
        assert backend._cuda.label_bytes_text(raw, info.min < 0) == str(int(v))


# ===========================================================================
# GPU: the kernels against the NumPy reference
# ===========================================================================
def _cupy():
    return pytest.importorskip("cupy")


def assert_loss_close(got, want, dtype, reduction, what=""):
    if reduction == "none":
        cp = _cupy()
        assert isinstance(got, cp.ndarray) and got.dtype == np.dtype(dtype), what
        assert_close(cp.asnumpy(got), want, dtype, what)
    else:
        assert type(got) is float, what
        np.testing.assert_allclose(got, want, rtol=RTOL[np.dtype(dtype)], atol=1e-30,
                                   err_msg=what)


CE_SHAPES = ((1, 1), (1, 7), (7, 33), (33, 7), (3, 1000), (1000, 10), (2, 5000))


@needs_gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("shape", CE_SHAPES, ids=str)
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_gpu_softmax_cross_entropy(dtype, shape, weighted, smoothing, reduction):
    cp = _cupy()
    rng = rng_for("gpu-ce", shape, dtype)
    n, c = shape
    x = (rng.standard_normal(shape) * 3).astype(dtype)
    y = rng.integers(0, c, n)
    if n > 2:
        y[::3] = -100  # some ignored rows
    w = (rng.random(c) + 0.5).astype(dtype) if weighted else None
    want_loss, want_grad = reference.softmax_cross_entropy(x, y, w, -100, smoothing, reduction)
    loss, grad = ops.softmax_cross_entropy(cp.asarray(x), cp.asarray(y),
                                           None if w is None else cp.asarray(w),
                                           label_smoothing=smoothing, reduction=reduction)
    assert_loss_close(loss, want_loss, dtype, reduction)
    assert_close(cp.asnumpy(grad), want_grad, dtype)


@needs_gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_gpu_ce_in_place_and_label_dtypes(dtype):
    cp = _cupy()
    rng = rng_for("gpu-ce-in-place", dtype)
    x = rng.standard_normal((50, 13)).astype(dtype)
    want_loss, want_grad = reference.softmax_cross_entropy(x, rng_for("y").integers(0, 13, 50))
    for ldt in (np.int64, np.int32, np.uint8, np.int16, np.uint64):
        labels = cp.asarray(rng_for("y").integers(0, 13, 50).astype(ldt))
        g = cp.asarray(x)
        loss, out = ops.softmax_cross_entropy(g, labels, out=g)
        assert out is g
        assert_loss_close(loss, want_loss, dtype, "mean")
        assert_close(cp.asnumpy(g), want_grad, dtype)


@needs_gpu
def test_gpu_ce_bad_label_raises_and_writes_nothing():
    cp = _cupy()
    x = cp.asarray(rng_for("bad").standard_normal((6, 4)))
    before = x.copy()
    out = cp.full((6, 4), 7.0)
    with pytest.raises(ValueError, match=r"labels: expected class indices in \[0, 4\) or "
                                         r"ignore_index \(-100\), received -3 at row 2"):
        ops.softmax_cross_entropy(x, cp.asarray([0, 1, -3, 9, 0, 1]), out=out)
    assert bool((out == 7.0).all())
    with pytest.raises(ValueError, match="received -3 at row 2"):
        ops.softmax_cross_entropy(x, cp.asarray([0, 1, -3, 9, 0, 1]), out=x)
    assert bool((x == before).all())


@needs_gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_gpu_ce_all_rows_ignored_mean_is_nan(dtype):
    cp = _cupy()
    loss, grad = ops.softmax_cross_entropy(cp.zeros((3, 4), dtype), cp.full(3, -100))
    assert np.isnan(loss)
    assert bool((grad == 0).all())


@needs_gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("n", [0, 1, 7, 4096, 4097, 100003])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("kind", ["bce", "mse"])
def test_gpu_elementwise_losses(dtype, n, reduction, kind):
    cp = _cupy()
    rng = rng_for("gpu-elem", kind, n, dtype)
    a = (rng.standard_normal(n) * 4).astype(dtype)
    b = (rng.random(n) if kind == "bce" else rng.standard_normal(n)).astype(dtype)
    ours, ref = (ops.bce_with_logits, reference.bce_with_logits) if kind == "bce" else \
        (ops.mse, reference.mse)
    with np.errstate(all="ignore"):
        want_loss, want_grad = ref(a, b, reduction)
    loss, grad = ours(cp.asarray(a), cp.asarray(b), reduction=reduction)
    if n == 0 and reduction == "mean":
        assert np.isnan(loss)
    else:
        assert_loss_close(loss, want_loss, dtype, reduction)
    assert_close(cp.asnumpy(grad), want_grad, dtype)


@needs_gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("shape", [(1,), (3,), (4,), (1001,), (64, 129), (5, 1 << 16)], ids=str)
@pytest.mark.parametrize("p", [0.0, 0.1, 0.5, 0.9])
def test_gpu_dropout_equals_the_cpu_bit_for_bit(dtype, shape, p):
    cp = _cupy()
    x = rng_for("gpu-drop", shape).standard_normal(shape).astype(dtype)
    seed, offset = 0x1234_5678_9ABC_DEF0, (1 << 40) + 3
    y_cpu, m_cpu = ops.dropout(x, p, seed, offset)
    y_gpu, m_gpu = ops.dropout(cp.asarray(x), p, seed, offset)
    assert m_gpu.dtype == np.bool_
    np.testing.assert_array_equal(cp.asnumpy(m_gpu), m_cpu)
    np.testing.assert_array_equal(cp.asnumpy(y_gpu).view(np.uint8), y_cpu.view(np.uint8))
    np.testing.assert_array_equal(m_cpu, reference.dropout_mask(shape, p, seed, offset))
    dy = rng_for("gpu-drop-dy", shape).standard_normal(shape).astype(dtype)
    dx_cpu = ops.dropout_backward(dy, m_cpu, p)
    dx_gpu = ops.dropout_backward(cp.asarray(dy), m_gpu, p)
    np.testing.assert_array_equal(cp.asnumpy(dx_gpu).view(np.uint8), dx_cpu.view(np.uint8))


@needs_gpu
def test_gpu_dropout_in_place_and_preallocated():
    cp = _cupy()
    x = rng_for("gpu-drop-ip").standard_normal((33, 7))
    y_cpu, m_cpu = ops.dropout(x, 0.3, 5, 6)
    g = cp.asarray(x)
    mask = cp.zeros((33, 7), dtype=bool)
    y, m = ops.dropout(g, 0.3, 5, 6, out=g, mask_out=mask)
    assert y is g and m is mask
    np.testing.assert_array_equal(cp.asnumpy(g), y_cpu)
    np.testing.assert_array_equal(cp.asnumpy(mask), m_cpu)
    dx = ops.dropout_backward(g, mask.view(cp.uint8), 0.3, out=g)
    assert dx is g


@needs_gpu
def test_gpu_losses_run_on_the_current_stream():
    cp = _cupy()
    x = cp.asarray(rng_for("stream").standard_normal((64, 10)))
    y = cp.asarray(rng_for("stream-y").integers(0, 10, 64))
    want = ops.softmax_cross_entropy(cp.asnumpy(x), cp.asnumpy(y))[0]
    stream = cp.cuda.Stream(non_blocking=True)
    with stream:
        loss, _ = ops.softmax_cross_entropy(x, y)
        dy, mask = ops.dropout(x, 0.5, 1, 2)
    stream.synchronize()
    np.testing.assert_allclose(loss, want, rtol=1e-12)


@needs_gpu
def test_gpu_losses_on_torch_cuda_tensors():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("torch without CUDA")
    x = rng_for("torch-ce").standard_normal((16, 5))
    y = rng_for("torch-ce-y").integers(0, 5, 16)
    want_loss, want_grad = reference.softmax_cross_entropy(x, y)
    tx = torch.tensor(x, device="cuda", requires_grad=True)  # no __cuda_array_interface__
    loss, grad = ops.softmax_cross_entropy(tx, torch.tensor(y, device="cuda"))
    assert isinstance(grad, torch.Tensor) and grad.is_cuda
    np.testing.assert_allclose(loss, want_loss, rtol=1e-12)
    assert_close(grad.cpu().numpy(), want_grad, np.float64)
    ym, mask = ops.dropout(tx, 0.5, 3, 4)
    np.testing.assert_array_equal(mask.cpu().numpy(), ops.dropout(x, 0.5, 3, 4)[1])
