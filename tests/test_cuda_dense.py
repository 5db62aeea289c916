"""Dense layers on the GPU: fusedtrain._cuda_blas (cuBLASLt, opened at run
time) and the dispatch of fusedtrain.ops.dense_forward / dense_backward.

* CPU-run: the module is built and imports without cuBLAS; every defect of a
  call gives the CPU's exception and message on stand-in GPU arrays; NumPy
  and GPU arrays mixed in a call raise before anything runs; a valid call
  without cuBLASLt raises RuntimeError naming the library and the install
  command; where the wheel's library is looked for; and the column-major
  cuBLASLt products behind the row-major GEMMs (gemm_plan), emulated with
  NumPy on flat buffers, equal the row-major products.
* GPU (skipped without a device, CuPy and cuBLASLt): forward and backward of
  every activation against the reference under test_dense.py's error bounds.
"""

from __future__ import annotations

import importlib
import os
import shutil
import sys

import numpy as np
import pytest

import fusedtrain
from fusedtrain import backend, ops
from test_cuda import FakeGpuArray
from test_cuda_loss import (assert_gpu_in_numpy_call_raises, assert_numpy_in_gpu_call_raises,
                            assert_same_error, fake_like)
from test_dense import (ACT_IDS, ACTS, DTYPES, assert_within, backward_bounds, backward_case,
                        check_forward, f64, layer, rng_for, u_of)
from fusedtrain.reference import dense as ref

try:
    from fusedtrain import _cuda_blas
except ImportError:
    _cuda_blas = None

needs_blas_module = pytest.mark.skipif(_cuda_blas is None,
                                       reason="fusedtrain was built without _cuda_blas")


def _blas_ready() -> bool:
    if not fusedtrain.cuda_available() or _cuda_blas is None:
        return False
    try:
        backend._cuda_blas_module()
    except RuntimeError:
        return False
    return _cuda_blas.loaded()


needs_gpu_blas = pytest.mark.skipif(not _blas_ready(), reason="no CUDA device or no cuBLASLt")


# ===========================================================================
# CPU-run
# ===========================================================================
@pytest.mark.skipif(shutil.which("nvcc") is None, reason="no nvcc on PATH: a CPU-only build")
def test_cuda_blas_module_is_built_and_imports_without_cublas():
    assert _cuda_blas is not None
    assert isinstance(_cuda_blas.loaded(), bool)


def test_import_does_not_load_the_dense_module():
    import subprocess

    code = ("import sys, numpy as np, fusedtrain\n"
            "from fusedtrain import ops\n"
            "fusedtrain.build_info()\n"
            "ops.dense_forward(np.ones((2, 3)), np.ones((3, 4)))\n"
            "print('_cuda_blas' in ' '.join(sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"


@needs_blas_module
def test_load_reports_every_candidate():
    if _cuda_blas.loaded():
        pytest.skip("cuBLASLt is already loaded")
    msg = _cuda_blas.load(["/nonexistent/libcublasLt.so.13", "libfusedtrain-missing.so"])
    assert "/nonexistent/libcublasLt.so.13" in msg and "libfusedtrain-missing.so" in msg
    assert not _cuda_blas.loaded()
    assert _cuda_blas.library_path() == ""


def test_candidates_look_in_the_cuda13_wheel_layout(tmp_path, monkeypatch):
    lib = tmp_path / "nvidia" / "cu13" / "lib"
    lib.mkdir(parents=True)
    (lib / "libcublasLt.so.13").write_bytes(b"")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "nvidia", raising=False)
    importlib.invalidate_caches()
    found = backend.cublaslt_candidates()
    assert str(lib / "libcublasLt.so.13") in found
    assert found[-1] == ""  # the dynamic loader's own search comes last
    assert all(p == "" or os.path.exists(p) for p in found)


@needs_blas_module
def test_missing_cublas_is_a_clear_error():
    if _cuda_blas.loaded():
        pytest.skip("cuBLASLt is loaded here")
    x, w = FakeGpuArray((4, 3), "<f4"), FakeGpuArray((3, 5), "<f4")
    with pytest.raises(RuntimeError) as info:
        ops.dense_forward(x, w)
    text = str(info.value)
    assert "libcublasLt.so.13" in text and 'pip install "fusedtrain[cuda]"' in text
    with pytest.raises(RuntimeError, match="libcublasLt"):
        ops.dense_backward(FakeGpuArray((4, 5), "<f4"), x, w, None)


def test_gpu_dense_without_cuda_module(monkeypatch):
    monkeypatch.setattr(backend, "_cuda", None)
    with pytest.raises(RuntimeError, match="x is a GPU array, but fusedtrain was built without"):
        ops.dense_forward(FakeGpuArray((2, 3)), FakeGpuArray((3, 4)))


def _fwd_args():
    rng = rng_for("fwd-args")
    return {"x": rng.standard_normal((4, 3)), "w": rng.standard_normal((3, 5)),
            "b": rng.standard_normal(5), "out": np.zeros((4, 5))}


def _bwd_args():
    rng = rng_for("bwd-args")
    return {"dy": rng.standard_normal((4, 5)), "x": rng.standard_normal((4, 3)),
            "w": rng.standard_normal((3, 5)), "saved": rng.standard_normal((4, 5)),
            "dw_out": np.zeros((3, 5)), "db_out": np.zeros(5), "dx_out": np.zeros((4, 3)),
            "workspace": np.zeros((4, 5))}


CALLS = {
    "forward": (_fwd_args, lambda a: ops.dense_forward(a["x"], a["w"], a["b"], "tanh",
                                                       out=a["out"])),
    "backward": (_bwd_args, lambda a: ops.dense_backward(
        a["dy"], a["x"], a["w"], a["saved"], "tanh", dw_out=a["dw_out"], db_out=a["db_out"],
        accumulate=True, dx_out=a["dx_out"], workspace=a["workspace"])),
}


def _f32(a, name):
    a[name] = a[name].astype(np.float32)


def _reshape(a, name):
    a[name] = np.zeros(a[name].shape + (2,), a[name].dtype)


def _transpose(a, name):
    a[name] = np.zeros(a[name].shape[::-1], a[name].dtype)


def _strided(a, name):
    a[name] = np.zeros((a[name].shape[0] * 2,) + a[name].shape[1:], a[name].dtype)[::2]


def _readonly(a, name):
    a[name].flags.writeable = False


def _alias_x(a, name):
    a[name] = a["x"]


DEFECTS = [("forward", "x", _f32), ("forward", "x", _reshape), ("forward", "w", _f32),
           ("forward", "w", _transpose), ("forward", "b", _reshape), ("forward", "b", _f32),
           ("forward", "out", _readonly), ("forward", "out", _transpose),
           ("forward", "out", _strided), ("forward", "w", _strided),
           ("backward", "dy", _f32), ("backward", "x", _transpose), ("backward", "w", _transpose),
           ("backward", "saved", _transpose), ("backward", "saved", _f32),
           ("backward", "dw_out", _readonly), ("backward", "dw_out", _transpose),
           ("backward", "db_out", _reshape), ("backward", "dx_out", _f32),
           ("backward", "workspace", _transpose), ("backward", "dx_out", _strided)]


@needs_blas_module
@pytest.mark.parametrize("call,arg,defect", DEFECTS,
                         ids=[f"{c}-{a}-{d.__name__[1:]}" for c, a, d in DEFECTS])
def test_defect_gives_the_cpu_message(call, arg, defect):
    assert_same_error(CALLS, call, arg, defect)


@needs_blas_module
def test_overlapping_outputs_give_the_cpu_message():
    cpu = _bwd_args()
    with pytest.raises(ValueError) as cpu_err:
        ops.dense_backward(cpu["dy"], cpu["x"], cpu["w"], cpu["saved"], "tanh",
                           dw_out=cpu["dw_out"], db_out=cpu["db_out"], dx_out=cpu["x"])
    g = {k: fake_like(v) for k, v in cpu.items()}
    with pytest.raises(ValueError) as gpu_err:
        ops.dense_backward(g["dy"], g["x"], g["w"], g["saved"], "tanh", dw_out=g["dw_out"],
                           db_out=g["db_out"], dx_out=g["x"])
    assert str(gpu_err.value) == str(cpu_err.value)


@needs_blas_module
@pytest.mark.parametrize("call", list(CALLS))
def test_numpy_array_in_a_gpu_call(call):
    assert_numpy_in_gpu_call_raises(CALLS, call)


@pytest.mark.parametrize("call", list(CALLS))
def test_gpu_array_in_a_numpy_call(call):
    assert_gpu_in_numpy_call_raises(CALLS, call)


# ---------------------------------------------------------------------------
# the column-major products, emulated on the host
# ---------------------------------------------------------------------------
def _colmajor(buf, rows, cols, ld):
    """The column-major (rows, cols) matrix with leading dimension ld in buf."""
    return np.stack([buf[j * ld:j * ld + rows] for j in range(cols)], axis=1) if cols else \
        np.zeros((rows, 0))


@needs_blas_module
@pytest.mark.parametrize("B,n_in,n_out", [(1, 1, 1), (4, 3, 5), (7, 1, 9), (2, 6, 1), (5, 8, 3)])
@pytest.mark.parametrize("which", ["forward", "dw", "dx"])
def test_gemm_plan_computes_the_row_major_product(which, B, n_in, n_out):
    rng = rng_for("plan", which, B, n_in, n_out)
    arrays = {"x": rng.standard_normal((B, n_in)), "w": rng.standard_normal((n_in, n_out)),
              "dz": rng.standard_normal((B, n_out))}
    want = {"forward": arrays["x"] @ arrays["w"], "dw": arrays["x"].T @ arrays["dz"],
            "dx": arrays["dz"] @ arrays["w"].T}[which]
    p = _cuda_blas.gemm_plan(which, B, n_in, n_out)
    m, n, k = p["m"], p["n"], p["k"]
    a_stored = (k, m) if p["ta"] else (m, k)
    b_stored = (n, k) if p["tb"] else (k, n)
    A = _colmajor(arrays[p["a"]].reshape(-1), *a_stored, p["lda"])
    Bm = _colmajor(arrays[p["b"]].reshape(-1), *b_stored, p["ldb"])
    D = (A.T if p["ta"] else A) @ (Bm.T if p["tb"] else Bm)  # (m, n) column-major result
    out = np.zeros(want.size)
    for j in range(n):  # store D column by column with ld ldd, read back row-major
        out[j * p["ldd"]:j * p["ldd"] + m] = D[:, j]
    np.testing.assert_allclose(out.reshape(want.shape), want, rtol=1e-12, atol=1e-12)
    assert p["lda"] >= a_stored[0] and p["ldb"] >= b_stored[0] and p["ldd"] >= m


@needs_blas_module
def test_workspace_holds_cublas_scratch_and_the_bias_partials():
    base = _cuda_blas.workspace_bytes(1, 1, False)
    assert base >= 32 << 20
    assert _cuda_blas.workspace_bytes(129, 10, True) == base + 3 * 10 * 8  # 3 tiles of 64 rows


# ===========================================================================
# GPU
# ===========================================================================
def _cupy():
    return pytest.importorskip("cupy")


GPU_SHAPES = [(1, 7, 1000), (7, 33, 7), (33, 1000, 7), (1000, 33, 7), (130, 64, 65)]


@needs_gpu_blas
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("act_id,act,kw", ACTS, ids=ACT_IDS)
@pytest.mark.parametrize("B,n_in,n_out", GPU_SHAPES, ids=str)
def test_gpu_forward_matches_reference(B, n_in, n_out, act_id, act, kw, bias, dtype):
    cp = _cupy()
    x, w, b = layer(rng_for("gpu-fwd", B, n_in, n_out, act_id), B, n_in, n_out, dtype, bias)
    y, saved = ops.dense_forward(cp.asarray(x), cp.asarray(w),
                                 None if b is None else cp.asarray(b), act, **kw)
    assert isinstance(y, cp.ndarray) and y.dtype == dtype
    check_forward(x, w, b, act, kw, cp.asnumpy(y), act_id)
    if act == "gelu":
        z = f64(x) @ f64(w) + (0 if b is None else f64(b))
        np.testing.assert_allclose(cp.asnumpy(saved), z, rtol=1e-3 if dtype == np.float32 else
                                   1e-10, atol=1e-3 if dtype == np.float32 else 1e-10)
    elif act != "identity":
        assert saved is y


@needs_gpu_blas
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("act_id,act,kw", ACTS, ids=ACT_IDS)
@pytest.mark.parametrize("B,n_in,n_out", [(1, 7, 1000), (7, 1000, 33), (33, 33, 7),
                                          (200, 20, 65)], ids=str)
@pytest.mark.parametrize("accumulate", [False, True])
def test_gpu_backward_matches_reference(B, n_in, n_out, act_id, act, kw, dtype, accumulate):
    cp = _cupy()
    dy, x, w, saved, z64 = backward_case((B, n_in, n_out, act_id, np.dtype(dtype).name, "gpu"),
                                         B, n_in, n_out, act, kw, dtype)
    g = cp.asarray
    kwargs = dict(kw)
    dw0 = np.full((n_in, n_out), 0.5, dtype)
    db0 = np.full(n_out, -0.25, dtype)
    if accumulate:
        kwargs.update(dw_out=g(dw0), db_out=g(db0), accumulate=True)
    dx, dw, db = ops.dense_backward(g(dy), g(x), g(w), None if saved is None else g(saved), act,
                                    **kwargs)
    dz_ref = ref.activation_grad(f64(dy), z64, act, **kw)
    dx_ref, dw_ref, db_ref = dz_ref @ f64(w).T, f64(x).T @ dz_ref, dz_ref.sum(axis=0)
    if accumulate:
        dw_ref, db_ref = dw_ref + f64(dw0), db_ref + f64(db0)
    dxb, dwb, dbb = backward_bounds(act, kw, dy, x, w, saved if saved is not None else z64,
                                    z64, dz_ref, u_of(dtype))
    for name, got, exp, bound in (("dx", dx, dx_ref, dxb), ("dw", dw, dw_ref, dwb),
                                  ("db", db, db_ref, dbb)):
        assert got.dtype == dtype, name
        assert_within(f"gpu {act_id} {name}", cp.asnumpy(got), exp,
                      bound + (u_of(dtype) * np.abs(exp) if accumulate else 0))


@needs_gpu_blas
@pytest.mark.parametrize("act_id,act,kw", ACTS, ids=ACT_IDS)
def test_gpu_backward_need_dx_false_and_preallocated(act_id, act, kw):
    cp = _cupy()
    dy, x, w, saved, _ = backward_case(("gpu-prealloc", act_id), 9, 5, 6, act, kw, np.float64)
    g = cp.asarray
    want = ops.dense_backward(dy, x, w, saved, act, **kw)
    dw, db, ws = cp.zeros((5, 6)), cp.zeros(6), cp.zeros((9, 6))
    dx, dw2, db2 = ops.dense_backward(g(dy), g(x), g(w), None if saved is None else g(saved), act,
                                      need_dx=False, dw_out=dw, db_out=db, workspace=ws, **kw)
    assert dx is None and dw2 is dw and db2 is db
    np.testing.assert_allclose(cp.asnumpy(dw), want[1], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(cp.asnumpy(db), want[2], rtol=1e-12, atol=1e-12)
