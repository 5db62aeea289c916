"""fusedtrain.torch beyond C-contiguous float32 / float64: dense permuted
parameters (channels_last) stepped in place with their gradients and states
in the parameter's memory order, and float16 / bfloat16 parameters stepped
as torch's fused optimizers step them (float32 math, the parameter rounded
to its dtype after each step)."""

from __future__ import annotations

import copy

import numpy as np
import pytest

torch = pytest.importorskip("torch")
ft = pytest.importorskip("fusedtrain.torch")

CLASSES = ["SGD", "Adam", "AdamW", "RMSprop", "Adagrad"]
HYPER = {"SGD": dict(lr=0.05, momentum=0.9, weight_decay=0.01),
         "Adam": dict(lr=0.01, weight_decay=0.01, amsgrad=True),
         "AdamW": dict(lr=0.01),
         "RMSprop": dict(lr=0.01, momentum=0.5, centered=True),
         "Adagrad": dict(lr=0.1, lr_decay=0.01)}


def assert_close(got, want, rtol=1e-5):
    """Per element, plus rtol times the largest magnitude (as
    test_torch_parity.py: cancellation in centered RMSProp)."""
    torch.testing.assert_close(got, want, rtol=rtol, atol=rtol * float(want.abs().max()))


def conv_model(seed):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 6, 3), torch.nn.ReLU(),
                               torch.nn.Conv2d(6, 4, 3, bias=False), torch.nn.Flatten(),
                               torch.nn.Linear(4 * 4 * 4, 3))


def train_pair(name, memory_format, steps=6):
    ours = conv_model(0).to(memory_format=memory_format)
    theirs = copy.deepcopy(ours)
    opt = getattr(ft, name)(ours.parameters(), **HYPER[name])
    ref = getattr(torch.optim, name)(theirs.parameters(), foreach=False, **HYPER[name])
    ptrs = [p.data_ptr() for p in ours.parameters()]
    views = [p.detach() for p in ours.parameters()]  # the parameters' storage
    gen = torch.Generator().manual_seed(1)
    for _ in range(steps):
        x = torch.randn(5, 3, 8, 8, generator=gen).to(memory_format=memory_format)
        for model, o in ((ours, opt), (theirs, ref)):
            o.zero_grad()
            model(x).square().mean().backward()
            o.step()
    return ours, theirs, opt, ref, ptrs, views


@pytest.mark.parametrize("name", CLASSES)
def test_channels_last_matches_torch_in_place(name):
    ours, theirs, opt, ref, ptrs, views = train_pair(name, torch.channels_last)
    params = list(ours.parameters())
    assert not params[0].is_contiguous()  # the case under test: a permuted layout
    assert params[0].is_contiguous(memory_format=torch.channels_last)
    assert [p.data_ptr() for p in params] == ptrs  # the parameters' own storage was updated
    for p, q, v in zip(params, theirs.parameters(), views):
        assert p.stride() == q.stride()
        assert torch.equal(p.detach(), v)
        assert_close(p.detach(), q.detach())
        mine, want = opt.state[p], ref.state[q]
        assert sorted(mine) == sorted(want)
        for k, t in want.items():
            if k == "step":
                assert float(mine[k]) == float(t)
                continue
            assert mine[k].stride() == p.stride(), k  # in the parameter's memory order
            assert_close(mine[k], t)


@pytest.mark.parametrize("name", CLASSES)
def test_channels_last_and_contiguous_give_the_same_bits(name):
    """The same values and gradients in either layout: the same bits (the
    step is element-wise; only the memory order differs)."""
    gen = torch.Generator().manual_seed(2)
    init = torch.randn(3, 4, 5, 6, generator=gen)
    a = torch.nn.Parameter(init.contiguous(memory_format=torch.channels_last))
    b = torch.nn.Parameter(init.clone())
    oa, ob = getattr(ft, name)([a], **HYPER[name]), getattr(ft, name)([b], **HYPER[name])
    for _ in range(4):
        g = torch.randn(3, 4, 5, 6, generator=gen)
        a.grad, b.grad = g.contiguous(memory_format=torch.channels_last), g
        oa.step()
        ob.step()
    assert torch.equal(a.detach(), b.detach())
    for k, t in ob.state[b].items():
        assert torch.equal(oa.state[a][k], t), k


def test_other_dense_permutations_and_a_state_in_another_layout():
    base = torch.randn(4, 5, 6)
    p = torch.nn.Parameter(base.permute(2, 0, 1))  # dense, shape (6, 4, 5)
    q = torch.nn.Parameter(p.detach().clone())     # contiguous, the same values
    ptr = p.data_ptr()
    opt, ref = ft.Adam([p], lr=0.1), torch.optim.Adam([q], lr=0.1, foreach=False)
    for k in range(4):
        g = torch.randn(4, 5, 6).permute(2, 0, 1)
        p.grad, q.grad = g, g.contiguous()
        opt.step()
        ref.step()
        if k == 1:  # a state loaded in another layout is laid out as the parameter, kept
            opt.state[p]["exp_avg"] = opt.state[p]["exp_avg"].contiguous()
    assert p.data_ptr() == ptr and p.stride() == base.permute(2, 0, 1).stride()
    assert opt.state[p]["exp_avg"].stride() == p.stride()
    assert_close(p.detach(), q.detach())
    assert_close(opt.state[p]["exp_avg"], ref.state[q]["exp_avg"])


def test_state_dict_of_a_channels_last_model_round_trips_with_torch():
    ours, theirs, opt, ref, *_ = train_pair("AdamW", torch.channels_last, steps=3)
    opt.load_state_dict(ref.state_dict())  # torch's states, as torch keeps them
    for p in ours.parameters():
        for k, t in opt.state[p].items():
            if k != "step":
                assert t.stride() == p.stride()


@pytest.mark.parametrize("name", CLASSES)
def test_gradient_in_another_layout_is_refused_and_nothing_changes(name):
    p = torch.nn.Parameter(torch.randn(2, 3, 4, 5).to(memory_format=torch.channels_last))
    good = torch.nn.Parameter(torch.randn(7))
    good.grad = torch.randn(7)
    p.grad = torch.randn(2, 3, 4, 5)  # contiguous: another memory order than p's
    opt = getattr(ft, name)([good, p], lr=0.1)
    before = [good.detach().clone(), p.detach().clone()]
    n_state = len(opt.state)
    with pytest.raises(ValueError, match=r"params'\]\[1\]\.grad: expected the parameter's "
                                         r"memory layout \(strides \(60, 1, 15, 3\)\), received "
                                         r"strides \(60, 20, 5, 1\)"):
        opt.step()
    assert torch.equal(good.detach(), before[0]) and torch.equal(p.detach(), before[1])
    assert len(opt.state) == n_state
    p.grad = p.grad.contiguous(memory_format=torch.channels_last)  # the same layout: steps
    opt.step()
    assert not torch.equal(p.detach(), before[1])


def test_overlapping_or_gapped_parameters_are_refused():
    gapped = torch.nn.Parameter(torch.randn(4, 8)[:, ::2])
    gapped.grad = torch.randn(4, 4)
    opt = ft.SGD([gapped], lr=0.1)
    before = gapped.detach().clone()
    with pytest.raises(ValueError, match=r"params'\]\[0\]: expected a dense tensor"):
        opt.step()
    assert torch.equal(gapped.detach(), before)


def test_clipping_takes_permuted_gradients_in_place():
    p = torch.nn.Parameter(torch.zeros(2, 3, 4, 5).to(memory_format=torch.channels_last))
    q = torch.nn.Parameter(torch.zeros(2, 3, 4, 5))
    g = torch.randn(2, 3, 4, 5)
    p.grad, q.grad = g.contiguous(memory_format=torch.channels_last), g.clone()
    ptr = p.grad.data_ptr()
    total = ft.clip_grad_norm_([p], 0.5)
    want = torch.nn.utils.clip_grad_norm_([q], 0.5)
    assert float(total) == pytest.approx(float(want), rel=1e-6)
    assert p.grad.data_ptr() == ptr
    torch.testing.assert_close(p.grad, q.grad, rtol=1e-6, atol=0)


# ---------------------------------------------------------------------------
# float16 / bfloat16 parameters
# ---------------------------------------------------------------------------
SHAPES = [(7,), (33, 5), (1000,)]
ULP = {torch.bfloat16: 2.0 ** -7, torch.float16: 2.0 ** -10}


def narrow_pair(name, hyper, dtype, ref_flags, seed=0):
    gen = torch.Generator().manual_seed(seed)
    init = [torch.randn(s, generator=gen).to(dtype) for s in SHAPES]
    ours = [torch.nn.Parameter(t.clone()) for t in init]
    theirs = [torch.nn.Parameter(t.clone()) for t in init]
    opt = getattr(ft, name)(ours, **hyper)
    ref = getattr(torch.optim, name)(theirs, **hyper, **ref_flags)
    return ours, theirs, opt, ref, gen


def set_grads(ours, theirs, gen, dtype):
    for p, q in zip(ours, theirs):
        g = torch.randn(p.shape, generator=gen).to(dtype)
        p.grad, q.grad = g.clone(), g.clone()


@pytest.mark.parametrize("name,hyper", [
    ("Adam", dict(lr=0.01)), ("Adam", dict(lr=0.01, weight_decay=0.1, amsgrad=True)),
    ("AdamW", dict(lr=0.01, weight_decay=0.1)), ("Adam", dict(lr=0.01, maximize=True))])
def test_bfloat16_matches_torch_fused_adam_bitwise(name, hyper):
    """torch's fused Adam on bfloat16: states in bfloat16, float32 math, the
    parameter rounded to bfloat16 after each step; the same bits here."""
    ours, theirs, opt, ref, gen = narrow_pair(name, hyper, torch.bfloat16, dict(fused=True))
    ptrs = [p.data_ptr() for p in ours]
    for _ in range(20):
        set_grads(ours, theirs, gen, torch.bfloat16)
        opt.step()
        ref.step()
    assert [p.data_ptr() for p in ours] == ptrs
    for p, q in zip(ours, theirs):
        assert p.dtype == torch.bfloat16 and torch.equal(p.detach(), q.detach())
        assert sorted(opt.state[p]) == sorted(ref.state[q])
        for k, t in ref.state[q].items():
            assert opt.state[p][k].dtype == t.dtype, k
            assert torch.equal(opt.state[p][k], t), k


class Float32Math:
    """torch.optim in float32 over narrow params: each step widens the
    params and the states, steps them in float32 and rounds them back (the
    params to their dtype, the states to ``state_dtype``): what torch's
    fused optimizers do for bfloat16 (torch has no fused RMSprop, and its
    fused CPU SGD with momentum on bfloat16 disagrees with its own
    single-tensor SGD, so the semantics are checked against this)."""

    def __init__(self, name, params, hyper, state_dtype):
        self.params = params
        self.wide = [torch.nn.Parameter(p.detach().float()) for p in params]
        self.opt = getattr(torch.optim, name)(self.wide, foreach=False, **hyper)
        self.state_dtype = state_dtype

    def step(self):
        with torch.no_grad():
            for p, w in zip(self.params, self.wide):
                w.copy_(p)
                w.grad = p.grad.float()
            self.opt.step()
            for p, w in zip(self.params, self.wide):
                p.copy_(w)
                for k, t in self.opt.state[w].items():
                    if k != "step" and isinstance(t, torch.Tensor):
                        t.copy_(t.to(self.state_dtype))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("name", CLASSES)
def test_narrow_params_step_in_float32_and_round(name, dtype):
    """Every optimizer on float16 / bfloat16 params: float32 math from the
    param as it is, the param rounded to its dtype; states bfloat16 for
    bfloat16 params (as torch), float32 for float16 params (the kernels keep
    no float16 states)."""
    state_dtype = torch.bfloat16 if dtype == torch.bfloat16 else torch.float32
    hyper = HYPER[name]
    ours, theirs, opt, _, gen = narrow_pair(name, hyper, dtype, dict(foreach=False))
    emu = Float32Math(name, theirs, hyper, state_dtype)
    ptrs = [p.data_ptr() for p in ours]
    for _ in range(10):
        set_grads(ours, theirs, gen, dtype)
        opt.step()
        emu.step()
    assert [p.data_ptr() for p in ours] == ptrs
    for p, q, w in zip(ours, theirs, emu.wide):
        assert p.dtype == dtype
        # float32 rounding differences may flip a rounding to the narrow type
        torch.testing.assert_close(p.detach().float(), q.detach().float(), rtol=ULP[dtype],
                                   atol=ULP[dtype] * float(q.detach().abs().max()))
        for k, t in emu.opt.state[w].items():
            if k == "step":
                assert float(opt.state[p][k]) == float(t)
                continue
            assert opt.state[p][k].dtype == state_dtype, k
            torch.testing.assert_close(opt.state[p][k].float(), t, rtol=2 * ULP[dtype],
                                       atol=2 * ULP[dtype] * float(t.abs().max()))


def test_narrow_params_follow_writes_to_the_param_and_load_torch_states():
    """No master weights are kept between steps: a parameter written from
    outside (a reloaded model) is stepped from its new value, as torch does;
    torch's float16 states (torch.optim casts loaded states to the param's
    dtype) are taken, kept in float32."""
    ours, theirs, opt, ref, gen = narrow_pair("Adam", dict(lr=0.01), torch.float16,
                                              dict(fused=True))
    for _ in range(3):
        set_grads(ours, theirs, gen, torch.float16)
        opt.step()
        ref.step()
    with torch.no_grad():
        for p, q in zip(ours, theirs):
            p.copy_(q)  # the reference's params, written into ours
    opt.load_state_dict(ref.state_dict())
    for p in ours:
        assert opt.state[p]["exp_avg"].dtype == torch.float16  # as torch's load leaves it
    set_grads(ours, theirs, gen, torch.float16)
    before = [p.detach().clone() for p in ours]
    opt.step()
    for p, b in zip(ours, before):
        assert opt.state[p]["exp_avg"].dtype == torch.float32  # taken in float32
        assert not torch.equal(p.detach(), b)
        assert (p.detach().float() - b.float()).abs().max() < 0.1  # a step from the new value


def test_narrow_and_wide_params_in_one_group_and_a_bad_dtype():
    a = torch.nn.Parameter(torch.randn(5, dtype=torch.bfloat16))
    b = torch.nn.Parameter(torch.randn(5))
    c = torch.nn.Parameter(torch.randn(4, 3, 2, 2, dtype=torch.bfloat16)
                           .to(memory_format=torch.channels_last))
    for p in (a, b, c):
        p.grad = torch.ones_like(p, memory_format=torch.preserve_format)
    opt = ft.SGD([a, b, c], lr=0.5)
    before = [p.detach().clone() for p in (a, b, c)]
    opt.step()
    for p, x in zip((a, b, c), before):
        assert torch.equal(p.detach(), (x.float() - 0.5).to(p.dtype))
    z = torch.nn.Parameter(torch.randn(3, dtype=torch.complex64))
    z.grad = torch.randn(3, dtype=torch.complex64)
    with pytest.raises(TypeError, match="torch.bfloat16, received torch.complex64"):
        ft.SGD([z], lr=0.1).step()
