"""The optimizer objects (fusedtrain.optim.*) on GPU arrays.

CPU-run: groups of stand-in GPU arrays (``__cuda_array_interface__`` only)
are accepted and checked as NumPy groups are; NumPy and GPU arrays cannot
share a group; a step on stand-ins reaches the CUDA kernel's checks and, with
no device, raises having committed no state. GPU (skipped without a device
and CuPy): every optimizer on CuPy arrays steps as the same optimizer on
NumPy arrays, state buffers are CuPy arrays on the parameter's device, and
state_dict / load_state_dict round-trip between the two.
"""

from __future__ import annotations

import numpy as np
import pytest

import fusedtrain
from fusedtrain import backend, optim
from test_cuda import FakeGpuArray, needs_cuda_module, needs_gpu

OPTIMIZERS = [
    (optim.Adam, {"lr": 0.01, "amsgrad": True, "weight_decay": 0.1}),
    (optim.AdamW, {"lr": 0.01}),
    (optim.SGD, {"lr": 0.1, "momentum": 0.9, "nesterov": True}),
    (optim.SGD, {"lr": 0.1}),
    (optim.RMSprop, {"lr": 0.01, "centered": True, "momentum": 0.5}),
    (optim.Adagrad, {"lr": 0.1, "lr_decay": 0.01}),
]
IDS = [f"{cls.__name__}-{i}" for i, (cls, _) in enumerate(OPTIMIZERS)]


# ===========================================================================
# CPU-run: stand-ins
# ===========================================================================
def test_stand_in_params_are_accepted():
    opt = optim.Adam([FakeGpuArray((3,), "<f4"), FakeGpuArray((2, 2), "<f4")], lr=0.1)
    assert len(opt.params) == 2


def test_a_single_gpu_array_must_be_wrapped():
    with pytest.raises(TypeError, match="received a single array"):
        optim.SGD(FakeGpuArray((3,)), lr=0.1)


def test_numpy_and_gpu_arrays_cannot_share_a_group():
    with pytest.raises(TypeError, match=r"param_groups\[0\]\['params'\]\[1\]: expected a GPU "
                                        r"array like param_groups\[0\]\['params'\]\[0\], "
                                        r"received numpy.ndarray"):
        optim.SGD([FakeGpuArray((3,)), np.zeros(3)], lr=0.1)
    with pytest.raises(TypeError, match=r"\[1\]: expected a numpy.ndarray like .*received "
                                        r"test_cuda.FakeGpuArray"):
        optim.SGD([np.zeros(3), FakeGpuArray((3,))], lr=0.1)


@pytest.mark.parametrize("array,exc,match", [
    (FakeGpuArray((3,), "<i4"), TypeError, "expected dtype float32 or float64, received int32"),
    (FakeGpuArray((3,), readonly=True), ValueError, "expected a writable C-contiguous array"),
    (FakeGpuArray((3, 2), strides=(8, 24)), ValueError, "expected a writable C-contiguous"),
])
def test_gpu_param_checks(array, exc, match):
    with pytest.raises(exc, match=r"param_groups\[0\]\['params'\]\[0\]: " + match):
        optim.Adam([array])


def test_cpu_torch_tensors_are_not_gpu_arrays():
    torch = pytest.importorskip("torch")
    with pytest.raises(TypeError, match=r"\[0\]: expected a numpy.ndarray or a GPU array \(CuPy, "
                                        r"torch CUDA tensor\), received Parameter"):
        optim.Adam([torch.nn.Parameter(torch.zeros(3))])


def test_contiguous_strides_are_accepted():
    optim.Adam([FakeGpuArray((3, 2), strides=(16, 8)), FakeGpuArray((1, 4), strides=(99, 8))])


@needs_cuda_module
@pytest.mark.skipif(fusedtrain.cuda_available(), reason="a device is present")
@pytest.mark.parametrize("cls,hyper", OPTIMIZERS, ids=IDS)
def test_stand_in_step_reaches_the_kernel_and_commits_nothing(cls, hyper, monkeypatch):
    made = []

    def fake_full_like(p, fill):
        a = FakeGpuArray(p.shape, p.__cuda_array_interface__["typestr"])
        made.append(a)
        return a

    monkeypatch.setattr(backend, "full_like", fake_full_like)
    params = [FakeGpuArray((5,)), FakeGpuArray((2, 3))]
    opt = cls(params, **hyper)
    with pytest.raises(RuntimeError, match="no CUDA device is available"):
        opt.step([FakeGpuArray((5,)), FakeGpuArray((2, 3))])
    assert opt.state == {}  # the step count and the buffers were not committed
    # the kernel's argument checks ran first: a wrong gradient shape is a ValueError
    with pytest.raises(ValueError, match=r"grads\[1\]: expected shape \(2, 3\)"):
        opt.step([FakeGpuArray((5,)), FakeGpuArray((3, 2))])


@needs_cuda_module
def test_numpy_gradient_for_gpu_params_is_rejected(monkeypatch):
    monkeypatch.setattr(backend, "full_like",
                        lambda p, fill: FakeGpuArray(p.shape, p.__cuda_array_interface__["typestr"]))
    opt = optim.SGD([FakeGpuArray((4,))], lr=0.1, momentum=0.9)
    with pytest.raises(TypeError, match=r"grads\[0\]: expected a GPU array like params\[0\], "
                                        r"received numpy.ndarray"):
        opt.step([np.zeros(4)])


# ===========================================================================
# GPU
# ===========================================================================
def _cupy():
    return pytest.importorskip("cupy")


def _problem(dtype, key):
    rng = np.random.default_rng(key)
    shapes = [(7,), (3, 5), (1000,)]
    params = [rng.standard_normal(s).astype(dtype) for s in shapes]
    grads = [[rng.standard_normal(s).astype(dtype) for s in shapes] for _ in range(4)]
    return params, grads


@needs_gpu
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("cls,hyper", OPTIMIZERS, ids=IDS)
def test_gpu_optimizer_matches_the_cpu_object(cls, hyper, dtype):
    cp = _cupy()
    params, grads = _problem(dtype, 1)
    gpu_params = [cp.asarray(p) for p in params]
    cpu_opt = cls(params, **hyper)
    gpu_opt = cls(gpu_params, **hyper)
    for step_grads in grads:
        cpu_opt.step(step_grads)
        gpu_opt.step([cp.asarray(g) for g in step_grads])
    rtol = 1e-5 if dtype == np.float32 else 1e-12
    for p, g in zip(params, gpu_params):
        np.testing.assert_allclose(cp.asnumpy(g), p, rtol=rtol, atol=rtol)
    for idx, entry in gpu_opt.state.items():
        for name, buf in entry.items():
            if name == "step":
                continue
            assert isinstance(buf, cp.ndarray) and buf.dtype == dtype
            np.testing.assert_allclose(cp.asnumpy(buf), cpu_opt.state[idx][name], rtol=rtol,
                                       atol=rtol)


@needs_gpu
@pytest.mark.parametrize("cls,hyper", OPTIMIZERS, ids=IDS)
def test_gpu_state_dict_round_trips(cls, hyper):
    cp = _cupy()
    params, grads = _problem(np.float64, 2)
    a = cls([cp.asarray(p) for p in params], **hyper)
    for g in grads[:2]:
        a.step([cp.asarray(x) for x in g])
    sd = a.state_dict()
    # a copy: stepping on does not change the snapshot
    before = {k: {n: (cp.asnumpy(v) if n != "step" else v) for n, v in e.items()}
              for k, e in sd["state"].items()}
    b_params = [p.copy() for p in a.params]
    a.step([cp.asarray(x) for x in grads[2]])
    for k, e in sd["state"].items():
        for n, v in e.items():
            if n != "step":
                np.testing.assert_array_equal(cp.asnumpy(v), before[k][n])
    # loads into a GPU optimizer and into a NumPy one
    b = cls(b_params, **hyper)
    b.load_state_dict(sd)
    cpu = cls([cp.asnumpy(p) for p in b_params], **hyper)
    cpu.load_state_dict(sd)
    b.step([cp.asarray(x) for x in grads[2]])
    cpu.step(grads[2])
    for pa, pb, pc in zip(a.params, b.params, cpu.params):
        np.testing.assert_array_equal(cp.asnumpy(pb), cp.asnumpy(pa))
        np.testing.assert_allclose(pc, cp.asnumpy(pa), rtol=1e-12, atol=1e-12)


@needs_gpu
def test_gpu_optimizer_on_torch_cuda_tensors():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("torch without CUDA")
    params, grads = _problem(np.float32, 3)
    # nn.Parameters (they require grad: torch gives them no __cuda_array_interface__)
    tp = [torch.nn.Parameter(torch.tensor(p, device="cuda")) for p in params]
    opt = optim.Adam(tp, lr=0.01)
    ref = optim.Adam(params, lr=0.01)
    for g in grads:
        opt.step([torch.tensor(x, device="cuda") for x in g])
        ref.step(g)
    for t, p in zip(tp, params):
        np.testing.assert_allclose(t.detach().cpu().numpy(), p, rtol=1e-5, atol=1e-6)
    assert all(isinstance(b, torch.Tensor) for e in opt.state.values()
               for n, b in e.items() if n != "step")


# ===========================================================================
# the GPU benchmark's null kernel and its no-GPU exit
# ===========================================================================
@needs_cuda_module
def test_null_step_checks_like_the_cpu_one():
    cuda = backend._cuda
    with pytest.raises(ValueError, match="written: expected 1 to 4 lists of arrays, received 0"):
        cuda.null_step_([], [FakeGpuArray((3,))], 0)
    with pytest.raises(ValueError, match=r"read\[0\]: expected shape \(3,\)"):
        cuda.null_step_([[FakeGpuArray((3,))]], [FakeGpuArray((4,))], 0)
    if not fusedtrain.cuda_available():
        with pytest.raises(RuntimeError, match="no CUDA device"):
            cuda.null_step_([[FakeGpuArray((3,))]], [FakeGpuArray((3,))], 0)


@pytest.mark.skipif(fusedtrain.cuda_available(), reason="a device is present")
def test_gpu_benchmark_exits_cleanly_without_a_device():
    import os
    import subprocess
    import sys

    script = os.path.join(os.path.dirname(__file__), os.pardir, "bench", "gpu.py")
    done = subprocess.run([sys.executable, script, "--quick"], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert "nothing to time" in done.stdout


@needs_gpu
def test_gpu_null_step_matches_numpy():
    cp = _cupy()
    rng = np.random.default_rng(5)
    w = [rng.standard_normal(1001) for _ in range(3)]
    x = rng.standard_normal(1001)
    gw = [cp.asarray(a) for a in w]
    backend._cuda.null_step_([[a] for a in gw], [cp.asarray(x)],
                             cp.cuda.get_current_stream().ptr)
    np.testing.assert_array_equal(cp.asnumpy(gw[0]), w[0] + x)
    for a, b in zip(gw[1:], w[1:]):
        np.testing.assert_array_equal(cp.asnumpy(a), b * 0.5 + x)


def test_master_weights_take_numpy_params_only():
    with pytest.raises(TypeError, match=r"param_groups\[0\]\['params'\]\[0\]: master_weights=True "
                                        r"takes NumPy float16 / bfloat16 parameters"):
        optim.Adam([FakeGpuArray((3,), "<f2")], lr=0.1, master_weights=True)
