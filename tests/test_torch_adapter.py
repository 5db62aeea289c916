"""fusedtrain.torch: the torch.optim drop-ins against torch.optim over many
steps and every option, state_dict exchange both ways, parameter groups,
learning-rate edits, closures, skipped parameters, zero-copy in-place
updates, bad input, and the torch.nn.utils clipping drop-ins."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest

from conftest import DTYPES, SPECS, dtype_id, hyper_id, make_rng

torch = pytest.importorskip("torch")
ft = pytest.importorskip("fusedtrain.torch")

SHAPES = [(7,), (3, 11), (1,), (1000,), (2, 3, 4)]
STEPS = 25
RTOL = {np.dtype(np.float32): 1e-5, np.dtype(np.float64): 1e-10}
TORCH_DTYPE = {np.dtype(np.float32): torch.float32, np.dtype(np.float64): torch.float64}
CLASS = {"sgd": "SGD", "adam": "Adam", "adamw": "AdamW", "rmsprop": "RMSprop", "adagrad": "Adagrad"}


def assert_close(got, want, rtol, what):
    """As test_torch_parity.py: per element, plus rtol times the largest
    magnitude (cancellation in centered RMSProp)."""
    got = got.detach().numpy() if isinstance(got, torch.Tensor) else got
    want = want.detach().numpy() if isinstance(want, torch.Tensor) else want
    atol = rtol * float(np.max(np.abs(want), initial=0.0))
    np.testing.assert_allclose(got, want, rtol=rtol, atol=atol, err_msg=what)


def _cases():
    out = []
    for spec in SPECS:
        seen = []
        for h in [dict(g) for g in spec.grid if g.get("l1", 0) == 0] + [{**spec.heavy}]:
            h.pop("l1", None)
            if h not in seen:
                seen.append(h)
                out.append(pytest.param(spec.name, h, id=f"{spec.name}-{hyper_id(h) or 'plain'}"))
    out.append(pytest.param("adam", dict(lr=0.01, weight_decay=0.1, decoupled_weight_decay=True),
                            id="adam-decoupled_weight_decay"))
    return out


def make_pair(name, hyper, dtype, shapes=SHAPES, seed="pair", groups=1):
    """Identical parameters for torch.optim and fusedtrain.torch."""
    rng = make_rng(seed, name, hyper_id(hyper), dtype_id(dtype))
    init = [np.ascontiguousarray(rng.standard_normal(s), dtype=dtype) for s in shapes]
    ours = [torch.nn.Parameter(torch.from_numpy(a.copy())) for a in init]
    theirs = [torch.nn.Parameter(torch.from_numpy(a.copy())) for a in init]

    def grouped(ps):
        if groups == 1:
            return ps
        half = len(ps) // 2
        return [{"params": ps[:half]}, {"params": ps[half:], "lr": hyper.get("lr", 1e-3) * 0.5}]

    opt = getattr(ft, CLASS[name])(grouped(ours), **hyper)
    ref = getattr(torch.optim, CLASS[name])(grouped(theirs), foreach=False, **hyper)
    return ours, theirs, opt, ref, rng


def set_grads(ours, theirs, rng, skip=()):
    for i, (p, q) in enumerate(zip(ours, theirs)):
        if i in skip:
            p.grad = q.grad = None
            continue
        g = torch.from_numpy(np.ascontiguousarray(rng.standard_normal(p.shape), dtype=p.detach().numpy().dtype))
        p.grad, q.grad = g.clone(), g.clone()


def assert_same(ours, theirs, opt, ref, dtype, what=""):
    rtol = RTOL[np.dtype(dtype)]
    for i, (p, q) in enumerate(zip(ours, theirs)):
        assert p.dtype == q.dtype
        assert_close(p, q, rtol, f"{what}params[{i}]")
        mine, want = opt.state.get(p, {}), ref.state.get(q, {})
        assert sorted(mine) == sorted(want), (i, sorted(mine), sorted(want))
        for k, v in want.items():
            if k == "step":
                assert mine[k].dtype == v.dtype and mine[k].shape == v.shape == ()
                assert float(mine[k]) == float(v)
            elif v is None:
                assert mine[k] is None
            else:
                assert mine[k].dtype == v.dtype and mine[k].shape == v.shape
                assert_close(mine[k], v, rtol, f"{what}state[{i}][{k!r}]")


# ---------------------------------------------------------------------------
# against torch.optim
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("name,hyper", _cases())
def test_matches_torch_optim(name, hyper, dtype):
    ours, theirs, opt, ref, rng = make_pair(name, hyper, dtype, groups=2)
    for _ in range(STEPS):
        set_grads(ours, theirs, rng)
        opt.step()
        ref.step()
    assert_same(ours, theirs, opt, ref, dtype)


@pytest.mark.parametrize("name", list(CLASS))
def test_signature_and_param_groups_match_torch(name):
    import inspect

    mine = inspect.signature(getattr(ft, CLASS[name]).__init__).parameters
    theirs = inspect.signature(getattr(torch.optim, CLASS[name]).__init__).parameters
    assert list(mine) == list(theirs)
    for k, v in theirs.items():
        assert mine[k].kind == v.kind, k
        if v.default is not inspect.Parameter.empty:
            assert mine[k].default == v.default, k
    p = torch.nn.Parameter(torch.ones(3))
    a = getattr(ft, CLASS[name])([p]).state_dict()
    b = getattr(torch.optim, CLASS[name])([p]).state_dict()
    assert a["param_groups"] == b["param_groups"]
    assert sorted(a["state"]) == sorted(b["state"])


@pytest.mark.parametrize("name", list(CLASS))
def test_lr_changes_skipped_params_and_closure(name):
    hyper = {"sgd": dict(lr=0.1, momentum=0.9), "adam": dict(lr=0.01), "adamw": dict(lr=0.01),
             "rmsprop": dict(lr=0.01, momentum=0.5), "adagrad": dict(lr=0.1)}[name]
    ours, theirs, opt, ref, rng = make_pair(name, hyper, np.float32, groups=2)
    for k in range(12):
        set_grads(ours, theirs, rng, skip=(1,) if k < 5 else (3,) if k % 3 == 0 else ())
        for o in (opt, ref):
            for gi, g in enumerate(o.param_groups):
                g["lr"] = hyper["lr"] * (0.9 ** k) * (gi + 1)
        snapshot = [p.detach().clone() for p in ours]
        loss_ours = opt.step(lambda: torch.tensor(float(k)))
        ref.step()
        assert float(loss_ours) == float(k)
        if k < 5:  # grad None: untouched, and no state created (as torch)
            assert torch.equal(ours[1], snapshot[1])
            assert (ours[1] in opt.state) == (theirs[1] in ref.state)
    assert_same(ours, theirs, opt, ref, np.float32)


def test_closure_runs_with_grad_enabled():
    w = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
    opt = ft.SGD([w], lr=0.1)

    def closure():
        opt.zero_grad()
        loss = (w * w).sum()
        loss.backward()
        return loss

    loss = opt.step(closure)
    assert loss.item() == 5.0
    torch.testing.assert_close(w.detach(), torch.tensor([0.8, -1.6]))


@pytest.mark.parametrize("name", list(CLASS))
def test_zero_copy_in_place(name):
    ps = [torch.nn.Parameter(torch.randn(s)) for s in SHAPES]
    views = [p.detach().numpy() for p in ps]
    ptrs = [p.data_ptr() for p in ps]
    opt = getattr(ft, CLASS[name])(ps, lr=0.1)
    before = [v.copy() for v in views]
    for _ in range(3):
        for p in ps:
            p.grad = torch.randn(p.shape)
        opt.step()
    assert [p.data_ptr() for p in ps] == ptrs
    for p, v, b in zip(ps, views, before):
        assert np.shares_memory(p.detach().numpy(), v)
        np.testing.assert_array_equal(p.detach().numpy(), v)
        assert not np.array_equal(v, b)


def test_one_fused_call_per_group(monkeypatch):
    calls = []
    real = ft._ops.fused_step  # the one route to the kernels
    monkeypatch.setattr(ft._ops, "fused_step",
                        lambda *a, **k: (calls.append(len(a[1])), real(*a, **k)))
    ps = [torch.nn.Parameter(torch.randn(s)) for s in SHAPES]
    opt = ft.Adam([{"params": ps[:2]}, {"params": ps[2:], "lr": 0.1}])
    for p in ps:
        p.grad = torch.randn(p.shape)
    opt.step()
    assert calls == [2, 3]


# ---------------------------------------------------------------------------
# state_dict exchange
# ---------------------------------------------------------------------------
def _roundtrip(sd):
    buf = io.BytesIO()
    torch.save(sd, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


@pytest.mark.parametrize("direction", ("torch-to-ours", "ours-to-torch"))
@pytest.mark.parametrize("name,hyper", [
    ("adam", dict(lr=0.01, amsgrad=True, weight_decay=0.1)), ("adamw", dict(lr=0.01)),
    ("sgd", dict(lr=0.05, momentum=0.9, nesterov=True)),
    ("rmsprop", dict(lr=0.01, centered=True, momentum=0.5)),
    ("adagrad", dict(lr=0.1, lr_decay=0.01, initial_accumulator_value=0.1))])
def test_state_dict_exchange(name, hyper, direction):
    ours, theirs, opt, ref, rng = make_pair(name, hyper, np.float32, groups=2)
    src, dst = (ref, opt) if direction == "torch-to-ours" else (opt, ref)
    for _ in range(5):
        set_grads(ours, theirs, rng)
        src.step()
    # the destination's params take the source's values, its state the source's state
    for p, q in zip(ours, theirs):
        with torch.no_grad():
            (p if dst is opt else q).copy_(q if dst is opt else p)
    dst.load_state_dict(_roundtrip(src.state_dict()))
    for _ in range(5):
        set_grads(ours, theirs, rng)
        opt.step()
        ref.step()
    assert_same(ours, theirs, opt, ref, np.float32)
    sd = opt.state_dict()
    for entry in sd["state"].values():
        if "step" in entry:
            assert entry["step"].dtype == torch.float32 and entry["step"].shape == ()


def test_deepcopy_and_pickle():
    import copy
    import pickle

    ours, theirs, opt, ref, rng = make_pair("adam", dict(lr=0.01), np.float64)
    for _ in range(3):
        set_grads(ours, theirs, rng)
        opt.step()
        ref.step()
    for clone in (copy.deepcopy(opt), pickle.loads(pickle.dumps(opt))):
        assert type(clone) is ft.Adam
        assert float(clone.state_dict()["state"][0]["step"]) == 3.0
    twin = copy.deepcopy({"params": ours, "opt": opt})
    set_grads(twin["params"], theirs, rng)
    twin["opt"].step()
    ref.step()
    assert_same(twin["params"], theirs, twin["opt"], ref, np.float64)


def test_state_tensor_replaced_between_steps():
    """A state tensor swapped for another (as code moving optimizer state
    does) is the one the next step updates."""
    ours, theirs, opt, ref, rng = make_pair("adam", dict(lr=0.01), np.float32)
    for k in range(4):
        set_grads(ours, theirs, rng)
        opt.step()
        ref.step()
        if k == 1:
            for s in opt.state.values():
                s["exp_avg"] = s["exp_avg"].clone()
                s["step"] = s["step"].clone()
            p = ours[2]
            with torch.no_grad():
                p.data = p.data.clone()  # a new storage for a parameter
    assert_same(ours, theirs, opt, ref, np.float32)


# ---------------------------------------------------------------------------
# bad input: the error names the tensor; nothing changes
# ---------------------------------------------------------------------------
def _two_groups(make_bad):
    good = [torch.nn.Parameter(torch.randn(4)), torch.nn.Parameter(torch.randn(3, 2))]
    bad = make_bad()
    for p in good:
        p.grad = torch.randn(p.shape)
    return good, bad


def _expect_nothing_changed(opt, params, types, *words):
    before = [p.detach().clone() for p in params]
    state_before = {k: {n: (v.clone() if isinstance(v, torch.Tensor) else v) for n, v in s.items()}
                    for k, s in enumerate(opt.state.values())}
    n_state = len(opt.state)
    with pytest.raises(types) as info:
        opt.step()
    for p, b in zip(params, before):
        assert torch.equal(p.detach(), b)
    assert len(opt.state) == n_state
    for k, s in enumerate(opt.state.values()):
        for n, v in s.items():
            if isinstance(v, torch.Tensor):
                assert torch.equal(v, state_before[k][n])
    for w in words:
        assert w in str(info.value), (w, str(info.value))


def _gapped_param():
    p = torch.nn.Parameter(torch.randn(3, 8)[:, ::2])  # not dense: every other element
    p.grad = torch.randn(3, 4)
    return p


def _grad_in_another_layout():
    p = torch.nn.Parameter(torch.randn(3, 4).t())  # dense, permuted: stepped in place
    p.grad = torch.randn(4, 3)  # but its gradient is C-ordered
    return p


def _noncontiguous_grad():
    p = torch.nn.Parameter(torch.randn(4, 3))
    p.grad = torch.randn(3, 4).t()
    return p


def _sparse_grad():
    p = torch.nn.Parameter(torch.randn(5))
    p.grad = torch.randn(5).to_sparse()
    return p


def _complex():
    p = torch.nn.Parameter(torch.randn(5, dtype=torch.complex64))
    p.grad = torch.randn(5, dtype=torch.complex64)
    return p


def _grad_dtype():
    p = torch.nn.Parameter(torch.randn(5))
    p.grad_dtype = None  # torch refuses a gradient of another dtype unless told
    p.grad = torch.randn(5, dtype=torch.float64)
    return p


BAD = [
    pytest.param(_gapped_param, ValueError, ("param_groups[1]['params'][0]", "dense", "strides (8, 2)"), id="gapped-param"),
    pytest.param(_noncontiguous_grad, ValueError, ("param_groups[1]['params'][0].grad", "memory layout", "contiguous", "strides (1, 4)"), id="noncontiguous-grad"),
    pytest.param(_grad_in_another_layout, ValueError, ("param_groups[1]['params'][0].grad", "memory layout (strides (1, 4))", "received strides (3, 1)"), id="grad-layout"),
    pytest.param(_sparse_grad, RuntimeError, ("param_groups[1]['params'][0].grad", "sparse"), id="sparse-grad"),
    pytest.param(_complex, TypeError, ("param_groups[1]['params'][0]", "torch.float32", "torch.complex64"), id="complex64"),
    pytest.param(_grad_dtype, TypeError, (".grad", "torch.float32", "torch.float64"), id="grad-dtype"),
]


@pytest.mark.parametrize("name", list(CLASS))
@pytest.mark.parametrize("make_bad,types,words", BAD)
def test_bad_tensor_raises_and_changes_nothing(name, make_bad, types, words):
    good, bad = _two_groups(make_bad)
    opt = getattr(ft, CLASS[name])([{"params": good}, {"params": [bad]}], lr=0.1)
    _expect_nothing_changed(opt, good + [bad], types, *words)


def test_bad_hyperparameters():
    p = [torch.nn.Parameter(torch.randn(3))]
    with pytest.raises(ValueError, match=r"lr must be >= 0; received -0.1"):
        ft.Adam(p, lr=-0.1)
    with pytest.raises(ValueError, match=r"betas\[1\] must be in \[0, 1\); received 1.5"):
        ft.AdamW(p, betas=(0.9, 1.5))
    with pytest.raises(ValueError, match="nesterov"):
        ft.SGD(p, nesterov=True)
    with pytest.raises(ValueError, match="differentiable"):
        ft.Adam(p, differentiable=True)
    with pytest.raises(ValueError, match="initial_accumulator_value"):
        ft.Adagrad(p, initial_accumulator_value=-1.0)
    opt = ft.RMSprop(p)
    p[0].grad = torch.randn(3)
    opt.param_groups[0]["alpha"] = 2.0
    with pytest.raises(ValueError, match=r"alpha must be in \[0, 1\]; received 2.0"):
        opt.step()
    assert not opt.state


def test_tensor_lr_and_no_copy_for_views_of_one_storage():
    flat = torch.zeros(10)
    ps = [flat[:4], flat[4:]]  # contiguous views of one buffer: fine, updated in place
    opt = ft.SGD(ps, lr=torch.tensor(0.5))
    for p in ps:
        p.grad = torch.ones(p.shape)
    opt.step()
    assert torch.equal(flat, torch.full((10,), -0.5))


# ---------------------------------------------------------------------------
# clipping drop-ins
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("norm_type", (2.0, 1.0, math.inf))
def test_clip_grad_norm_like_torch(norm_type):
    rng = make_rng("adapter-clip", norm_type)
    ours = [torch.nn.Parameter(torch.zeros(s)) for s in SHAPES]
    theirs = [torch.nn.Parameter(torch.zeros(s)) for s in SHAPES]
    set_grads(ours, theirs, rng, skip=(2,))
    got = ft.clip_grad_norm_(ours, 1.0, norm_type)
    want = torch.nn.utils.clip_grad_norm_(theirs, 1.0, norm_type)
    assert got.dtype == want.dtype and got.shape == ()
    assert float(got) == pytest.approx(float(want), rel=1e-6)
    for p, q in zip(ours, theirs):
        if q.grad is not None:
            torch.testing.assert_close(p.grad, q.grad, rtol=1e-6, atol=0)
    for p, q in zip(ours, theirs):
        if q.grad is not None:
            p.grad = q.grad.clone()
    ft.clip_grad_value_(ours, 0.01)
    torch.nn.utils.clip_grad_value_(theirs, 0.01)
    for p, q in zip(ours, theirs):
        if q.grad is not None:
            assert torch.equal(p.grad, q.grad)


def test_clip_rejects_mixed_dtypes_and_bad_max_norm():
    a = torch.nn.Parameter(torch.zeros(3))
    b = torch.nn.Parameter(torch.zeros(3, dtype=torch.float64))
    a.grad, b.grad = torch.ones(3), torch.ones(3, dtype=torch.float64)
    with pytest.raises(TypeError, match=r"parameters\[1\].grad: expected torch.float32"):
        ft.clip_grad_norm_([a, b], 1.0)
    with pytest.raises(ValueError, match="max_norm"):
        ft.clip_grad_norm_([a], 0.0)
    assert torch.equal(a.grad, torch.ones(3))
    with pytest.raises(ValueError, match="dense"):
        ft.clip_grad_value_([_with_grad(torch.ones(4, 8)[:, ::2])], 0.5)
    assert float(ft.clip_grad_norm_([torch.nn.Parameter(torch.zeros(2))], 1.0)) == 0.0


def _with_grad(g):
    p = torch.nn.Parameter(torch.zeros(g.shape))
    p.grad = g
    return p


def test_missing_torch_is_a_clear_import_error():
    import subprocess
    import sys

    code = ("import sys; sys.modules['torch'] = None\n"
            "try:\n    import fusedtrain.torch\nexcept ImportError as e:\n    print(e)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert 'fusedtrain.torch needs PyTorch: pip install "fusedtrain[torch]"' in out.stdout


def test_import_fusedtrain_does_not_import_torch():
    import subprocess
    import sys

    code = "import sys, fusedtrain; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.skipif(not (torch.cuda.is_available() and __import__("fusedtrain").cuda_available()),
                    reason="no CUDA device")
@pytest.mark.parametrize("name", list(CLASS))
def test_cuda_tensors_match_cpu(name):
    cpu = [torch.nn.Parameter(torch.randn(s, dtype=torch.float64)) for s in SHAPES]
    gpu = [torch.nn.Parameter(p.detach().cuda()) for p in cpu]
    a, b = getattr(ft, CLASS[name])(cpu, lr=0.05), getattr(ft, CLASS[name])(gpu, lr=0.05)
    ptrs = [p.data_ptr() for p in gpu]
    for _ in range(5):
        for p, q in zip(cpu, gpu):
            p.grad = torch.randn(p.shape, dtype=torch.float64)
            q.grad = p.grad.cuda()
        a.step()
        b.step()
    assert [p.data_ptr() for p in gpu] == ptrs
    for p, q in zip(cpu, gpu):
        torch.testing.assert_close(q.detach().cpu(), p.detach(), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("name,flags", [
    ("adam", dict(foreach=True)), ("adam", dict(fused=True)), ("adamw", dict(capturable=True)),
    ("sgd", dict(fused=False, foreach=False)), ("rmsprop", dict(capturable=False, foreach=True)),
    ("adagrad", dict(fused=True))])
def test_torch_only_flags_are_accepted_and_kept(name, flags):
    """foreach / fused / capturable change nothing here (always one fused
    call); they are kept in the param groups for the state_dict."""
    hyper = dict(lr=0.01)
    ours, theirs, opt, ref, rng = make_pair(name, hyper, np.float32)
    opt2 = getattr(ft, CLASS[name])([torch.nn.Parameter(p.detach().clone()) for p in ours],
                                    **hyper, **flags)
    for k, v in flags.items():
        assert opt2.param_groups[0][k] == v
    ours2 = opt2.param_groups[0]["params"]
    for _ in range(3):
        set_grads(ours, theirs, rng)
        for p, q in zip(ours2, ours):
            p.grad = q.grad.clone()
        opt.step()
        opt2.step()
    for p, q in zip(ours2, ours):
        assert torch.equal(p, q)


def test_lr_scheduler_and_named_parameters():
    """torch's LR schedulers drive the drop-in (warnings are errors here: no
    'scheduler before optimizer' warning), and named parameters work."""
    ours, theirs, opt, ref, rng = make_pair("sgd", dict(lr=0.1, momentum=0.9), np.float64)
    s1 = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
    s2 = torch.optim.lr_scheduler.StepLR(ref, step_size=2, gamma=0.5)
    for _ in range(6):
        set_grads(ours, theirs, rng)
        opt.step()
        ref.step()
        s1.step()
        s2.step()
        assert opt.param_groups[0]["lr"] == ref.param_groups[0]["lr"]
    assert_same(ours, theirs, opt, ref, np.float64)
    m = torch.nn.Linear(3, 2)
    named = ft.AdamW(m.named_parameters(), lr=0.1)
    m(torch.randn(4, 3)).sum().backward()
    named.step()
    assert named.state_dict()["param_groups"][0]["param_names"] == ["weight", "bias"]
