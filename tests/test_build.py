"""What the build contains and reports: build_info, the optional CUDA module,
cuda_available and the kernel thread count."""

from __future__ import annotations

import importlib
import os
import shutil

import numpy as np
import pytest

import fusedtrain

# a GPU is visible to this process only through a device node
HAS_GPU_NODE = os.path.exists("/dev/nvidia0") or os.path.exists("/dev/nvidiactl")


def test_build_info_keys_and_types():
    info = fusedtrain.build_info()
    expected = {"version": str, "simd": str, "num_threads": int, "flush_denormal": bool,
                "openmp": int, "compiler": str,
                "blas": str, "blas_threads": int, "narrow_bf16": str, "narrow_half": str,
                "widen_half": str, "philox": str,
                "cuda_built": bool, "cuda_blas_built": bool, "cuda_available": bool,
                "cuda_status": dict}
    assert set(info) == set(expected)
    for key, typ in expected.items():
        assert type(info[key]) is typ, key
    assert info["version"] == fusedtrain.__version__
    assert info["simd"] in {"avx512f", "avx2", "baseline"}
    assert info["num_threads"] == fusedtrain.get_num_threads() >= 1
    assert info["openmp"] >= 200805  # an OpenMP version date (yyyymm), 3.0 or later
    assert info["compiler"]
    assert "OpenBLAS" in info["blas"]
    assert info["blas_threads"] == 1  # serial GEMMs inside fusedtrain's own threads
    assert info["narrow_bf16"] in {"avx512bf16", "portable"}
    assert info["narrow_half"] in {"avx512f", "f16c", "portable"}
    assert info["widen_half"] in {"f16c", "portable"}
    assert info["philox"] in {"avx512f", "portable"}
    assert info["cuda_available"] == fusedtrain.cuda_available()


def test_build_info_is_fresh_per_call(restore_threads):
    fusedtrain.set_num_threads(1)
    assert fusedtrain.build_info()["num_threads"] == 1


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="no nvcc on PATH: a CPU-only build is expected")
def test_cuda_module_built_when_nvcc_is_on_path():
    info = fusedtrain.build_info()
    assert info["cuda_built"] is True
    assert info["cuda_blas_built"] is True
    cuda = importlib.import_module("fusedtrain._cuda")
    status = info["cuda_status"]
    assert set(status) >= {"device_count", "error", "message", "runtime_version"}
    assert isinstance(status["device_count"], int) and status["device_count"] >= 0
    assert isinstance(status["message"], str)
    assert cuda.device_count() == status["device_count"]
    assert (status["device_count"] > 0) == fusedtrain.cuda_available()


def test_cuda_status_without_cuda_module_has_error():
    info = fusedtrain.build_info()
    if not info["cuda_built"]:
        assert isinstance(info["cuda_status"].get("error"), str) and info["cuda_status"]["error"]


def test_cuda_available_is_a_bool_and_does_not_raise():
    value = fusedtrain.cuda_available()
    assert isinstance(value, bool)
    if not HAS_GPU_NODE:
        assert value is False
        status = fusedtrain.build_info()["cuda_status"]
        assert status.get("device_count", 0) == 0


def test_set_get_num_threads_round_trip(restore_threads):
    for n in (1, 2, 3, 7, 1):
        fusedtrain.set_num_threads(n)
        assert fusedtrain.get_num_threads() == n
    fusedtrain.set_num_threads(np.int64(2))
    assert fusedtrain.get_num_threads() == 2


@pytest.mark.parametrize("bad,exc", [(0, ValueError), (-1, ValueError), (1.5, TypeError),
                                     (True, TypeError), ("2", TypeError)])
def test_set_num_threads_rejects(bad, exc, restore_threads):
    before = fusedtrain.get_num_threads()
    with pytest.raises(exc, match="n"):
        fusedtrain.set_num_threads(bad)
    assert fusedtrain.get_num_threads() == before


def test_kernels_run_single_threaded(restore_threads):
    """A step works with one thread (and a result that matches two threads
    is covered by test_ops.py::test_thread_count_does_not_change_results)."""
    fusedtrain.set_num_threads(1)
    p, g = np.ones(100_000), np.full(100_000, 2.0)
    fusedtrain.ops.sgd_(p, g, step=1, lr=0.5)
    assert (p == 0.0).all()


class _FakeCuda:
    """A stand-in for fusedtrain._cuda whose device query returns ``status``."""

    def __init__(self, **status):
        self._status = status

    def status(self):
        return dict(self._status)

    def is_available(self):
        return self._status["device_count"] > 0


@pytest.mark.parametrize("code,raw,words", [
    (35, "CUDA driver version is insufficient for CUDA runtime version",
     "no CUDA driver (or one older than this build's CUDA runtime 12.4)"),
    (100, "no CUDA-capable device is detected", "no CUDA device"),
    (34, "CUDA driver is a stub library", "no CUDA driver (only its stub library was found)"),
    (999, "unknown error", "unknown CUDA error"),
    (12345, "something new", "CUDA error 12345: something new"),
])
def test_cuda_status_in_plain_words_with_the_raw_text_kept(monkeypatch, code, raw, words):
    from fusedtrain import backend

    monkeypatch.setattr(backend, "_cuda", _FakeCuda(device_count=0, error=code, message=raw,
                                                    runtime_version=12040))
    info = fusedtrain.build_info()
    status = info["cuda_status"]
    assert info["cuda_built"] is True and info["cuda_available"] is False
    assert status["message"].startswith(words)
    assert status["runtime_message"] == raw
    assert status["error"] == code and status["device_count"] == 0
    assert status["runtime_version"] == 12040


def test_cuda_status_with_devices_and_without_any(monkeypatch):
    from fusedtrain import backend

    monkeypatch.setattr(backend, "_cuda", _FakeCuda(device_count=2, error=0, message="",
                                                    runtime_version=12080))
    status = fusedtrain.build_info()["cuda_status"]
    assert status["message"] == "" and status["runtime_message"] == "" and status["device_count"] == 2
    monkeypatch.setattr(backend, "_cuda", _FakeCuda(device_count=0, error=0, message="",
                                                    runtime_version=12080))
    assert fusedtrain.build_info()["cuda_status"]["message"] == "no CUDA device"
    monkeypatch.setattr(backend, "_cuda", None)
    monkeypatch.setattr(backend, "_cuda_import_error", None)
    status = fusedtrain.build_info()["cuda_status"]
    assert status == {"error": "built without CUDA", "message": "built without CUDA"}
