"""fusedtrain.optim against torch.optim (single-tensor path, foreach=False):
five steps from the same params and gradients give the same params and the
same state buffers. torch has no L1 term, so l1 stays 0 here."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import DTYPES, SPECS, dtype_id, hyper_id, make_rng, random_list

torch = pytest.importorskip("torch")

SHAPES = [(7,), (3, 11), (1,), (1000,)]
TORCH_RTOL = {np.dtype(np.float32): 1e-5, np.dtype(np.float64): 1e-10}


def assert_close_to_torch(got, want, rtol, what):
    """Relative tolerance per element, plus the same tolerance relative to the
    array's largest magnitude: an element that comes out of cancellation (a
    centered RMSProp momentum buffer near 0 among entries near 20, say)
    carries rounding of the size of its inputs, and torch's kernels may fuse
    multiply-adds where fusedtrain rounds twice."""
    atol = rtol * float(np.max(np.abs(want), initial=0.0))
    np.testing.assert_allclose(got, want, rtol=rtol, atol=atol, err_msg=what)


def _cases():
    out = []
    for spec in SPECS:
        variants = [h for h in spec.grid if h["l1"] == 0] + [{**spec.heavy, "l1": 0.0}]
        seen = []
        for h in variants:
            if h not in seen:
                seen.append(h)
                out.append(pytest.param(spec, h, id=f"{spec.name}-{hyper_id(h) or 'plain'}"))
    return out


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("spec,hyper", _cases())
def test_matches_torch_optim(spec, hyper, dtype):
    rng = make_rng("torch", spec.name, hyper_id(hyper), dtype_id(dtype))
    params = random_list(rng, SHAPES, dtype)
    grads_seq = [random_list(rng, SHAPES, dtype) for _ in range(5)]

    tparams = [torch.nn.Parameter(torch.from_numpy(p.copy())) for p in params]
    torch_hyper = {k: v for k, v in hyper.items() if k != "l1"}
    topt = getattr(torch.optim, spec.torch_name)(tparams, foreach=False, **torch_hyper)
    opt = spec.cls(params, **hyper)
    for grads in grads_seq:
        for tp, g in zip(tparams, grads):
            tp.grad = torch.from_numpy(g.copy())
        topt.step()
        opt.step(grads)

    rtol = TORCH_RTOL[np.dtype(dtype)]
    state = opt.state_dict()["state"]
    for i, (p, tp) in enumerate(zip(params, tparams)):
        want = tp.detach().numpy()
        assert p.dtype == want.dtype
        assert_close_to_torch(p, want, rtol, f"params[{i}]")
        tstate = topt.state[tp]
        for name, value in state[i].items():
            if name == "step":
                if "step" in tstate:  # torch's SGD keeps no step
                    assert value == float(tstate["step"])
                continue
            assert_close_to_torch(value, tstate[name].numpy(), rtol, f"{name}[{i}]")
