"""Loss scaling and mixed precision in the optimizer kernels: grad_scale,
found_inf, float16 / bfloat16 params with float32 master weights (states in
float32 or bfloat16), rounding to nearest even checked bit for bit against
NumPy's and ml_dtypes' conversions, stochastic rounding (unbiased,
deterministic, independent of the thread count), and the optimizer objects'
master_weights option."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest

import fusedtrain
from fusedtrain import _core, ops, optim, reference
from conftest import (SPEC, SPECS, assert_state_dict_equal, assert_unchanged, copy_states,
                      hyper_id, kernel_step, make_rng, make_states, random_list, reference_step,
                      snapshot)

BF16 = np.dtype(ml_dtypes.bfloat16)
F16 = np.dtype(np.float16)
NARROW = (F16, BF16)
STATE_DTYPES = (np.dtype(np.float32), BF16)


def narrow_id(d) -> str:
    return np.dtype(d).name


# ---------------------------------------------------------------------------
# helpers: a mixed-precision call and its reference
# ---------------------------------------------------------------------------
def mixed_setup(spec, hyper, shapes, pdtype, sdtype, rng):
    """float32 masters, narrow params rounded from them, states of sdtype."""
    masters = random_list(rng, shapes, np.float32)
    params = [m.astype(pdtype) for m in masters]
    states = {k: [a.astype(sdtype) for a in v]
              for k, v in make_states(spec, hyper, masters).items()}
    return params, masters, states


def mixed_kernel_step(spec, params, grads, masters, states, hyper, step, **extra):
    kw = dict(spec.ops_kwargs(hyper))
    if spec.takes_step:
        kw["step"] = step
    spec.op(params, grads, **states, **kw, master_params=masters, **extra)


def state_order(spec, hyper):
    """The reference's positional state arguments (None where unused)."""
    names = {"sgd": ("momentum_buffer",), "adam": ("exp_avg", "exp_avg_sq", "max_exp_avg_sq"),
             "adamw": ("exp_avg", "exp_avg_sq", "max_exp_avg_sq"),
             "rmsprop": ("square_avg", "grad_avg", "momentum_buffer"),
             "adagrad": ("state_sum",)}[spec.name]
    return names


def mixed_reference_step(spec, params, grads, masters, states, hyper, step, dtype=np.float32):
    kw = dict(spec.ops_kwargs(hyper))
    if spec.takes_step:
        kw["step"] = step
    order = state_order(spec, hyper)
    with np.errstate(all="ignore"):
        for i, (p, g, m) in enumerate(zip(params, grads, masters)):
            st = [states[n][i] if n in states else None for n in order]
            while st and st[-1] is None:
                st.pop()
            reference.mixed(spec.ref, p, g, m, *st, dtype=dtype, **kw)


def bits(a):
    return np.ascontiguousarray(a).view(np.uint8).tobytes()


def assert_bitwise(got, want, what):
    for i, (g, w) in enumerate(zip(got, want)):
        assert g.dtype == w.dtype, f"{what}[{i}] dtype {g.dtype} != {w.dtype}"
        if bits(g) != bits(w):
            gf, wf = g.astype(np.float64), w.astype(np.float64)
            bad = np.flatnonzero((gf != wf) & ~(np.isnan(gf) & np.isnan(wf)))
            raise AssertionError(f"{what}[{i}]: {bad.size} elements differ, first at "
                                 f"{bad[:3]}: {gf.ravel()[bad[:3]]} vs {wf.ravel()[bad[:3]]}")


def _cases():
    out = []
    for spec in SPECS:
        grid = spec.grid
        for hyper in [spec.heavy, grid[0], grid[len(grid) // 2], grid[-1]]:
            out.append(pytest.param(spec, hyper, id=f"{spec.name}-{hyper_id(hyper) or 'plain'}"))
    return out


CASES = _cases()
SIZES = {"1": [(1,)], "7": [(7,)], "22": [(22,)], "mixed": [(1,), (7,), (22,), (10, 100), (0,), ()]}


# ---------------------------------------------------------------------------
# conversions, bit for bit (through the kernel: SGD with lr=0 and a zero
# gradient writes the master, unchanged, rounded into the param)
# ---------------------------------------------------------------------------
def round_through_kernel(x32, dtype, **extra):
    x32 = np.ascontiguousarray(x32, np.float32)
    p = np.zeros(x32.shape, dtype)
    m = x32.copy()
    ops.sgd_(p, np.zeros(x32.shape, dtype), step=1, lr=0.0, master_params=m, **extra)
    nan = np.isnan(x32)  # the step's arithmetic may quiet a signalling NaN
    assert bits(m[~nan]) == bits(x32[~nan]) and np.isnan(m[nan]).all()
    return p


def f32(*bit_patterns):
    return np.array(bit_patterns, np.uint32).view(np.float32)


F16_CASES = {
    "exact": [0.0, -0.0, 1.0, -2.5, 65504.0, 2.0**-14, 2.0**-24],
    "ties-to-even": [1 + 2**-11, 1 + 3 * 2**-11, -(1 + 2**-11), 2048 + 1, 2048 + 3],
    "near-ties": [np.nextafter(np.float32(1 + 2**-11), np.float32(2)),
                  np.nextafter(np.float32(1 + 2**-11), np.float32(0))],
    "max-finite": [65504.0, 65519.0, np.nextafter(np.float32(65520), np.float32(0)), -65519.0],
    "overflow": [65520.0, 65536.0, 1e6, 3.4e38, -65520.0, np.inf, -np.inf],
    "subnormal": [2.0**-25, 3 * 2.0**-25, 2.0**-24 * 1.5, 2.0**-24 * 2.5, 2.0**-15, 1e-6,
                  -1e-6, 2.0**-14 - 2.0**-25, np.nextafter(np.float32(2.0**-25), np.float32(1)),
                  2.0**-26, 1e-40, -1e-45],
    "quiet-nan": list(f32(0x7FC00000, 0xFFC00000, 0x7FE00000, 0x7FC02000)),
}
BF16_CASES = {
    "exact": [0.0, -0.0, 1.0, -2.5, 3.3895313892515355e38, 2.0**-126, 2.0**-133],
    "ties-to-even": [1 + 2**-8, 1 + 3 * 2**-8, -(1 + 2**-8), 256 + 1, 256 + 3],
    "near-ties": [np.nextafter(np.float32(1 + 2**-8), np.float32(2)),
                  np.nextafter(np.float32(1 + 2**-8), np.float32(0))],
    "max-finite": list(f32(0x7F7F7FFF, 0x7F7F8000, 0xFF7F7FFF)),
    "overflow": list(f32(0x7F7F8001, 0x7F7FFFFF, 0xFF7FFFFF)) + [np.inf, -np.inf],
    "subnormal": [1e-40, -1e-40, 1e-45, 2.0**-127 + 2.0**-140, 5e-39],
    "quiet-nan": list(f32(0x7FC00000, 0xFFC00000, 0x7FE00000, 0x7FC12345)),
}


@pytest.mark.parametrize("dtype,case", [(F16, k) for k in F16_CASES] + [(BF16, k) for k in BF16_CASES],
                         ids=lambda v: v if isinstance(v, str) else narrow_id(v))
def test_round_to_nearest_even_chosen_values(dtype, case):
    values = (F16_CASES if dtype == F16 else BF16_CASES)[case]
    x = np.array(values, np.float32)
    got = round_through_kernel(x, dtype)
    with np.errstate(all="ignore"):
        want = x.astype(dtype)  # NumPy's float16 / ml_dtypes' bfloat16: both to nearest even
    assert got.view(np.uint16).tolist() == want.view(np.uint16).tolist(), [hex(v) for v in x.view(np.uint32)]


@pytest.mark.parametrize("dtype", NARROW, ids=narrow_id)
def test_round_to_nearest_even_random_bit_patterns(dtype):
    rng = make_rng("rne", narrow_id(dtype))
    x = rng.integers(0, 2**32, 1 << 19, dtype=np.uint64).astype(np.uint32).view(np.float32)
    got = round_through_kernel(x, dtype)
    with np.errstate(all="ignore"):
        want = x.astype(dtype)
    nan = np.isnan(x)
    assert np.array_equal(got.view(np.uint16)[~nan], want.view(np.uint16)[~nan])
    # NaN stays NaN with its sign (the step's arithmetic may quiet a signalling NaN first)
    assert np.isnan(got[nan].astype(np.float32)).all()
    assert np.array_equal(np.signbit(got[nan].astype(np.float32)), np.signbit(x[nan]))


@pytest.mark.parametrize("dtype", NARROW, ids=narrow_id)
@pytest.mark.parametrize("offset", [0, 5, 31])
def test_round_to_nearest_even_chosen_values_inside_long_arrays(dtype, offset):
    """Long arrays go through the CPU's conversion instructions block by block
    (16 or 32 elements), and a block holding a NaN or a subnormal through the
    portable conversion: each chosen value sits alone in a block of ordinary
    numbers, at a different lane each time, and the array starts `offset`
    elements into a block."""
    cases = F16_CASES if dtype == F16 else BF16_CASES
    values = np.array([v for vs in cases.values() for v in vs], np.float32)
    rng = make_rng("rne-blocks", narrow_id(dtype), offset)
    x = rng.standard_normal(offset + 64 * len(values)).astype(np.float32)
    for j, v in enumerate(values):
        x[offset + 64 * j + (7 * j) % 64] = v
    got = round_through_kernel(x, dtype)
    with np.errstate(all="ignore"):
        want = x.astype(dtype)
    assert np.array_equal(got.view(np.uint16), want.view(np.uint16))


@pytest.mark.parametrize("dtype,stride", [("bfloat16", 3), ("float16", 13)])
def test_conversion_instructions_agree_on_every_bit_pattern(dtype, stride):
    """Every rounding path this CPU can run (AVX512-BF16, AVX-512 / F16C
    vcvtps2ph with their fix-up blocks, the portable loop) gives the portable
    conversion's bits on every stride-th float32 bit pattern, in blocks
    starting at every alignment; for float16, every widening path (F16C
    vcvtph2ps) too, on all 65,536 patterns."""
    info = fusedtrain.build_info()
    assert info["narrow_bf16"] in ("avx512bf16", "portable")
    assert info["narrow_half"] in ("avx512f", "f16c", "portable")
    assert info["widen_half"] in ("f16c", "portable")
    assert _core._lowp_selfcheck(dtype, stride) == 0


def test_lowp_selfcheck_rejects_bad_arguments():
    with pytest.raises(ValueError, match="dtype"):
        _core._lowp_selfcheck("float32", 1)
    with pytest.raises(ValueError, match="stride"):
        _core._lowp_selfcheck("float16", 0)


@pytest.mark.parametrize("dtype", NARROW, ids=narrow_id)
def test_widening_every_bit_pattern(dtype):
    """The gradient is widened exactly: SGD with lr=1, maximize=True and a zero
    master leaves master = float32(grad) for every 16-bit pattern."""
    g = np.arange(65536, dtype=np.uint32).astype(np.uint16).view(dtype)
    p = np.zeros(g.shape, dtype)
    m = np.zeros(g.shape, np.float32)
    ops.sgd_(p, g, step=1, lr=1.0, maximize=True, master_params=m)
    want = g.astype(np.float32)
    finite = np.isfinite(want)
    assert np.array_equal(m[finite], want[finite])
    assert np.array_equal(np.isnan(m), np.isnan(want))
    assert np.array_equal(m[np.isinf(want)], want[np.isinf(want)])


# ---------------------------------------------------------------------------
# every optimizer, every variant family, both narrow dtypes, both state dtypes
# ---------------------------------------------------------------------------
def run_mixed_and_compare(spec, hyper, shapes, pdtype, sdtype, steps, key):
    rng = make_rng(*key)
    params, masters, states = mixed_setup(spec, hyper, shapes, pdtype, sdtype, rng)
    rp, rm, rs = [p.copy() for p in params], [m.copy() for m in masters], copy_states(states)
    exact = sdtype == np.float32
    if exact:  # float64 run of the same update (states float32 between steps)
        xp, xm, xs = [p.copy() for p in params], [m.copy() for m in masters], copy_states(states)
    for step in range(1, steps + 1):
        grads = [g.astype(pdtype) for g in random_list(rng, shapes, np.float32)]
        before = snapshot(grads)
        mixed_kernel_step(spec, params, grads, masters, states, hyper, step)
        mixed_reference_step(spec, rp, grads, rm, rs, hyper, step)
        assert_unchanged(grads, before)
        assert_bitwise(masters, rm, f"step {step} master")
        assert_bitwise(params, rp, f"step {step} params")
        for name in states:
            assert_bitwise(states[name], rs[name], f"step {step} {name}")
        if exact:
            mixed_reference_step(spec, xp, grads, xm, xs, hyper, step, dtype=np.float64)
            for a, b in zip(masters, xm):
                np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-6)
            for a, b in zip(params, xp):  # within one rounding of the narrow type
                np.testing.assert_allclose(a.astype(np.float32), b.astype(np.float32),
                                           rtol=2 * float(np.finfo(pdtype).eps), atol=1e-6)
    for p in params:
        assert p.dtype == pdtype


@pytest.mark.parametrize("sdtype", STATE_DTYPES, ids=narrow_id)
@pytest.mark.parametrize("pdtype", NARROW, ids=narrow_id)
@pytest.mark.parametrize("size", list(SIZES), ids=str)
@pytest.mark.parametrize("spec,hyper", CASES)
def test_mixed_matches_reference(spec, hyper, size, pdtype, sdtype):
    run_mixed_and_compare(spec, hyper, SIZES[size], pdtype, sdtype, steps=3,
                          key=("mixed", spec.name, hyper_id(hyper), size, narrow_id(pdtype),
                               narrow_id(sdtype)))


@pytest.mark.parametrize("sdtype", STATE_DTYPES, ids=narrow_id)
@pytest.mark.parametrize("pdtype", NARROW, ids=narrow_id)
@pytest.mark.parametrize("spec", SPECS, ids=repr)
def test_mixed_matches_reference_large(spec, pdtype, sdtype):
    run_mixed_and_compare(spec, spec.heavy, [(1000003,)], pdtype, sdtype, steps=2,
                          key=("mixed-large", spec.name, narrow_id(pdtype), narrow_id(sdtype)))


@pytest.mark.parametrize("spec", SPECS, ids=repr)
def test_mixed_thread_count_does_not_change_results(spec, restore_threads):
    shapes = [(1000003,), (17,), (300_001,), (0,), (70_000,)]
    rng = make_rng("mixed-threads", spec.name)
    start = mixed_setup(spec, spec.heavy, shapes, BF16, np.float32, rng)
    grads = [g.astype(BF16) for g in random_list(rng, shapes, np.float32)]
    results = []
    for n in (1, 2, 3):
        fusedtrain.set_num_threads(n)
        params, masters = [p.copy() for p in start[0]], [m.copy() for m in start[1]]
        states = copy_states(start[2])
        for step in (1, 2):
            mixed_kernel_step(spec, params, grads, masters, states, spec.heavy, step,
                              stochastic_rounding=True, seed=11)
        results.append([bits(a) for a in params + masters + [a for v in states.values() for a in v]])
    assert results[1] == results[0] and results[2] == results[0]


# ---------------------------------------------------------------------------
# grad_scale
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("scale", [2.0**16, 2.0**-3, 1024.0])
@pytest.mark.parametrize("spec,hyper", CASES)
def test_grad_scale_equals_the_unscaled_step(spec, hyper, scale):
    """Scaling the gradients by a power of two and passing grad_scale gives,
    bit for bit, the step on the unscaled gradients."""
    rng = make_rng("scale", spec.name, hyper_id(hyper), scale)
    shapes = [(7,), (22,), (3, 5)]
    params = random_list(rng, shapes, np.float32)
    states = make_states(spec, hyper, params)
    p2, s2 = [p.copy() for p in params], copy_states(states)
    for step in (1, 2, 3):
        grads = random_list(rng, shapes, np.float32)
        kernel_step(spec, params, grads, states, hyper, step)
        scaled = [g * np.float32(scale) for g in grads]
        kw = dict(spec.ops_kwargs(hyper), grad_scale=scale)
        if spec.takes_step:
            kw["step"] = step
        spec.op(p2, scaled, **s2, **kw)
    assert_bitwise(p2, params, "params")
    for k in states:
        assert_bitwise(s2[k], states[k], k)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=narrow_id)
@pytest.mark.parametrize("spec", SPECS, ids=repr)
def test_grad_scale_any_value_matches_reference(spec, dtype):
    """grad_scale=3: the gradient times the rounded reciprocal, as the reference."""
    rng = make_rng("scale3", spec.name, narrow_id(dtype))
    shapes = [(7,), (1000,)]
    hyper = spec.heavy
    params = random_list(rng, shapes, dtype)
    states = make_states(spec, hyper, params)
    rp, rs = [p.copy() for p in params], copy_states(states)
    for step in (1, 2):
        grads = random_list(rng, shapes, dtype, scale=3.0)
        kw = dict(spec.ops_kwargs(hyper), grad_scale=3.0)
        if spec.takes_step:
            kw["step"] = step
        spec.op(params, grads, **states, **kw)
        reference_step(spec, rp, grads, rs, dict(hyper, grad_scale=3.0), step)
    assert_bitwise(params, rp, "params")
    for k in states:
        assert_bitwise(states[k], rs[k], k)


@pytest.mark.parametrize("bad,exc", [(0.0, ValueError), (-1.0, ValueError), (np.inf, ValueError),
                                     (np.nan, ValueError), ("2", TypeError), (None, TypeError)])
@pytest.mark.parametrize("spec", SPECS, ids=repr)
def test_bad_grad_scale(spec, bad, exc):
    rng = make_rng("bad-scale", spec.name)
    params = random_list(rng, [(5,)], np.float32)
    grads = random_list(rng, [(5,)], np.float32)
    states = make_states(spec, spec.heavy, params)
    arrays = params + grads + [a for v in states.values() for a in v]
    snap = snapshot(arrays)
    kw = dict(spec.ops_kwargs(spec.heavy), grad_scale=bad)
    if spec.takes_step:
        kw["step"] = 1
    with pytest.raises(exc, match="grad_scale"):
        spec.op(params, grads, **states, **kw)
    assert_unchanged(arrays, snap)


# ---------------------------------------------------------------------------
# found_inf: the step is skipped, everything stays bitwise as it was
# ---------------------------------------------------------------------------
FOUND = {"true": True, "one": 1.0, "nan": float("nan"), "array-inf": np.array([np.inf], np.float32),
         "array-1": np.ones(1, np.float32), "array-0d": np.array(2.0, np.float32)}
NOT_FOUND = {"false": False, "zero": 0.0, "none": None, "array-0": np.zeros(1, np.float32)}


def _all_layouts():
    out = []
    for spec in SPECS:
        out.append(pytest.param(spec, np.float32, None, id=f"{spec.name}-float32"))
        out.append(pytest.param(spec, np.float64, None, id=f"{spec.name}-float64"))
        for p in NARROW:
            for s in STATE_DTYPES:
                out.append(pytest.param(spec, p, s, id=f"{spec.name}-{narrow_id(p)}-{narrow_id(s)}"))
    return out


@pytest.mark.parametrize("found", list(FOUND))
@pytest.mark.parametrize("spec,pdtype,sdtype", _all_layouts())
def test_found_inf_skips_the_step(spec, pdtype, sdtype, found):
    rng = make_rng("found", spec.name, narrow_id(pdtype), found)
    shapes = [(7,), (22,), (3, 5)]
    hyper = spec.heavy
    if sdtype is None:
        params = random_list(rng, shapes, pdtype)
        masters, states = None, make_states(spec, hyper, params)
        states = {k: [a + np.asarray(0.25, a.dtype) for a in v] for k, v in states.items()}
    else:
        params, masters, states = mixed_setup(spec, hyper, shapes, pdtype, sdtype, rng)
    grads = [g.astype(pdtype) for g in random_list(rng, shapes, np.float32)]
    arrays = params + grads + (masters or []) + [a for v in states.values() for a in v]
    snap = snapshot(arrays)
    kw = dict(spec.ops_kwargs(hyper), found_inf=FOUND[found], grad_scale=4.0)
    if spec.takes_step:
        kw["step"] = 5
    if masters is not None:
        kw["master_params"] = masters
    spec.op(params, grads, **states, **kw)
    assert_unchanged(arrays, snap)


@pytest.mark.parametrize("found", list(NOT_FOUND))
@pytest.mark.parametrize("spec", SPECS, ids=repr)
def test_found_inf_false_steps(spec, found):
    rng = make_rng("not-found", spec.name, found)
    params = random_list(rng, [(7,)], np.float32)
    grads = random_list(rng, [(7,)], np.float32)
    states = make_states(spec, spec.heavy, params)
    rp, rs = [p.copy() for p in params], copy_states(states)
    kernel_step(spec, rp, grads, rs, spec.heavy, 1)
    kw = dict(spec.ops_kwargs(spec.heavy), found_inf=NOT_FOUND[found])
    if spec.takes_step:
        kw["step"] = 1
    spec.op(params, grads, **states, **kw)
    assert_bitwise(params, rp, "params")


@pytest.mark.parametrize("bad,exc", [
    ("yes", TypeError), ([1.0], TypeError), (np.ones(2, np.float32), TypeError),
    (np.ones(1, np.float64), TypeError), (np.ones((1, 2), np.float32), TypeError),
    (np.ones(1, np.int32), TypeError)], ids=["str", "list", "two-elements", "float64", "shape-1x2",
                                              "int32"])
@pytest.mark.parametrize("spec", SPECS, ids=repr)
def test_bad_found_inf(spec, bad, exc):
    rng = make_rng("bad-found", spec.name)
    params = random_list(rng, [(5,), (6,)], np.float32)
    grads = random_list(rng, [(5,), (6,)], np.float32)
    states = make_states(spec, spec.heavy, params)
    arrays = params + grads + [a for v in states.values() for a in v]
    snap = snapshot(arrays)
    kw = dict(spec.ops_kwargs(spec.heavy), found_inf=bad)
    if spec.takes_step:
        kw["step"] = 1
    with pytest.raises(exc) as info:
        spec.op(params, grads, **states, **kw)
    assert_unchanged(arrays, snap)
    msg = str(info.value)
    assert "found_inf" in msg and "expected" in msg and "received" in msg


# ---------------------------------------------------------------------------
# stochastic rounding
# ---------------------------------------------------------------------------
def neighbours(x32, dtype):
    """The representable values of dtype just below and above |x| (toward
    zero and away from it), with x's sign."""
    x32 = np.asarray(x32, np.float32)
    a = np.abs(x32)
    near = a.astype(dtype)
    lo = np.where(near.astype(np.float32) > a, np.nextafter(near, dtype.type(0)), near)
    hi = np.where(lo.astype(np.float32) == a, lo, np.nextafter(lo, dtype.type(np.inf)))
    sign = np.where(np.signbit(x32), -1, 1).astype(np.float32)
    return (lo.astype(np.float32) * sign), (hi.astype(np.float32) * sign)


@pytest.mark.parametrize("dtype", NARROW, ids=narrow_id)
def test_stochastic_rounding_picks_a_neighbour(dtype):
    rng = make_rng("sr-neighbour", narrow_id(dtype))
    x = (rng.standard_normal(100_000) * np.exp(rng.uniform(-20, 8, 100_000))).astype(np.float32)
    got = round_through_kernel(x, dtype, stochastic_rounding=True, seed=3).astype(np.float32)
    lo, hi = neighbours(x, dtype)
    assert np.all((got == lo) | (got == hi))
    exact = x.astype(dtype).astype(np.float32) == x
    assert np.array_equal(got[exact], x[exact])  # representable values stay put


SR_VALUES = {
    F16: [1 + 2**-12, 1 + 0.3 * 2**-10, -3.7, 1000.1, 2.0**-20 * 1.3, 2.0**-24 * 0.37,
          6e-8 * 0.001, 65000.3],
    BF16: [1 + 2**-10, 1 + 0.3 * 2**-7, -3.7, 1000.1, 1e-38 * 1.7, 1e-40, 3.0e38],
}


@pytest.mark.parametrize("dtype", NARROW, ids=narrow_id)
def test_stochastic_rounding_is_unbiased(dtype):
    """Mean of n stochastic roundings of x is x within 4 standard deviations
    of the mean of a two-point distribution."""
    n = 200_000
    for v in SR_VALUES[dtype]:
        x = np.float32(v)
        lo, hi = (float(t[0]) for t in neighbours(np.array([x]), dtype))
        got = round_through_kernel(np.full(n, x), dtype, stochastic_rounding=True, seed=7,
                                   rng_offset=9).astype(np.float64)
        assert set(np.unique(got)) <= {lo, hi}
        ulp = hi - lo
        p = (float(x) - lo) / ulp if ulp else 0.0
        sigma = abs(ulp) * np.sqrt(p * (1 - p) / n)
        assert abs(got.mean() - float(x)) <= 4 * sigma + 1e-12 * abs(float(x)), (v, got.mean(), sigma)


@pytest.mark.parametrize("dtype", NARROW, ids=narrow_id)
def test_stochastic_rounding_is_deterministic(dtype):
    rng = make_rng("sr-det", narrow_id(dtype))
    x = rng.standard_normal(50_001).astype(np.float32)
    a = round_through_kernel(x, dtype, stochastic_rounding=True, seed=5, rng_offset=2)
    b = round_through_kernel(x, dtype, stochastic_rounding=True, seed=5, rng_offset=2)
    c = round_through_kernel(x, dtype, stochastic_rounding=True, seed=6, rng_offset=2)
    d = round_through_kernel(x, dtype, stochastic_rounding=True, seed=5, rng_offset=3)
    assert bits(a) == bits(b)
    assert bits(a) != bits(c) and bits(a) != bits(d)


def test_stochastic_rounding_numbers_elements_across_the_list():
    """The stream is indexed by the position in the concatenated list: one
    array or the same data split in pieces round alike."""
    rng = make_rng("sr-split")
    x = rng.standard_normal(10_007).astype(np.float32)
    whole = round_through_kernel(x, BF16, stochastic_rounding=True, seed=1)
    pieces = np.split(x, [3, 4000, 4001])
    ps = [np.zeros(p.shape, BF16) for p in pieces]
    ms = [p.copy() for p in pieces]
    ops.sgd_(ps, [np.zeros(p.shape, BF16) for p in pieces], step=1, lr=0.0, master_params=ms,
             stochastic_rounding=True, seed=1)
    assert bits(np.concatenate(ps)) == bits(whole)


@pytest.mark.parametrize("bad,name,exc", [(-1, "seed", ValueError), (1.5, "seed", TypeError),
                                          (2**64, "seed", ValueError)])
def test_bad_seed(bad, name, exc):
    p, m = np.zeros(3, BF16), np.zeros(3, np.float32)
    with pytest.raises(exc, match=name):
        ops.sgd_(p, np.zeros(3, BF16), step=1, master_params=m, stochastic_rounding=True, seed=bad)


# ---------------------------------------------------------------------------
# bad input specific to mixed precision: nothing changes, the message names
# the argument, what was expected and what was received
# ---------------------------------------------------------------------------
class MixedCall:
    def __init__(self, spec, pdtype=BF16, sdtype=np.float32):
        rng = make_rng("mixed-bad", spec.name)
        self.spec = spec
        self.hyper = spec.heavy
        shapes = [(5,), (6,), (3, 4)]
        self.params, self.masters, self.states = mixed_setup(spec, self.hyper, shapes, pdtype,
                                                             sdtype, rng)
        self.grads = [g.astype(pdtype) for g in random_list(rng, shapes, np.float32)]

    def arrays(self):
        return (self.params + self.grads + list(self.masters or [])
                + [a for v in self.states.values() for a in v])

    def expect(self, name, exc, *fragments):
        arrays = self.arrays()
        snap = snapshot(arrays)
        with pytest.raises(exc) as info:
            mixed_kernel_step(self.spec, self.params, self.grads, self.masters, self.states,
                              self.hyper, 3)
        assert_unchanged(arrays, snap)
        msg = str(info.value)
        assert name in msg, msg
        for f in fragments:
            assert f in msg, msg
        return msg


@pytest.mark.parametrize("spec", SPECS, ids=repr)
def test_master_of_another_dtype(spec):
    c = MixedCall(spec)
    c.masters[-1] = c.masters[-1].astype(np.float64)
    c.expect("master_params[2]", TypeError, "expected dtype float32", "received float64")


@pytest.mark.parametrize("spec", SPECS, ids=repr)
def test_master_of_the_wrong_shape(spec):
    c = MixedCall(spec)
    c.masters[-1] = np.zeros(12, np.float32)
    c.expect("master_params[2]", ValueError, "expected shape (3, 4)", "received (12,)")


@pytest.mark.parametrize("spec", SPECS, ids=repr)
def test_master_read_only(spec):
    c = MixedCall(spec)
    c.masters[-1].flags.writeable = False
    c.expect("master_params[2]", ValueError, "writable")


@pytest.mark.parametrize("spec", SPECS, ids=repr)
def test_master_list_too_short(spec):
    c = MixedCall(spec)
    c.masters = c.masters[:2]
    c.expect("master_params", ValueError, "expected 3 arrays")


@pytest.mark.parametrize("spec", SPECS, ids=repr)
def test_master_sharing_memory_with_its_param(spec):
    c = MixedCall(spec)
    c.params[0] = c.masters[0].view(BF16)[:5]
    c.expect("share memory", ValueError)


@pytest.mark.parametrize("spec", SPECS, ids=repr)
def test_grads_of_another_dtype_than_narrow_params(spec):
    c = MixedCall(spec)
    c.grads[-1] = c.grads[-1].astype(np.float32)
    c.expect("grads[2]", TypeError, "expected dtype bfloat16", "received float32")


@pytest.mark.parametrize("spec", SPECS, ids=repr)
def test_params_of_one_narrow_dtype_mixed_with_another(spec):
    c = MixedCall(spec)
    c.params[-1] = c.params[-1].astype(np.float16)
    c.expect("params[2]", TypeError, "expected dtype bfloat16", "received float16")


@pytest.mark.parametrize("spec", SPECS, ids=repr)
def test_float64_states_for_narrow_params(spec):
    c = MixedCall(spec, sdtype=np.float64)
    first = list(c.states)[0]
    c.expect(f"{first}[0]", TypeError, "float32 or bfloat16", "received float64")


@pytest.mark.parametrize("spec", SPECS, ids=repr)
def test_states_of_two_dtypes(spec):
    c = MixedCall(spec)
    last = list(c.states)[-1]
    c.states[last][-1] = c.states[last][-1].astype(BF16)
    c.expect(f"{last}[2]", TypeError, "expected dtype float32", "received bfloat16")


@pytest.mark.parametrize("spec", SPECS, ids=repr)
def test_master_weights_with_float32_params(spec):
    rng = make_rng("master-f32", spec.name)
    params = random_list(rng, [(5,)], np.float32)
    grads = random_list(rng, [(5,)], np.float32)
    states = make_states(spec, spec.heavy, params)
    arrays = params + grads + [a for v in states.values() for a in v]
    snap = snapshot(arrays)
    kw = dict(spec.ops_kwargs(spec.heavy), master_params=[p.copy() for p in params])
    if spec.takes_step:
        kw["step"] = 1
    with pytest.raises(ValueError, match=r"master_params: expected None for float32 params"):
        spec.op(params, grads, **states, **kw)
    assert_unchanged(arrays, snap)


@pytest.mark.parametrize("spec", SPECS, ids=repr)
def test_narrow_params_without_master_weights(spec):
    c = MixedCall(spec)
    c.masters = None
    c.expect("master_params", ValueError, "bfloat16", "received None")


# ---------------------------------------------------------------------------
# found_nonfinite: the fused check over a gradient list
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [np.float32, np.float64, F16, BF16], ids=narrow_id)
def test_found_nonfinite(dtype):
    rng = make_rng("nonfinite", narrow_id(dtype))
    arrays = [a.astype(dtype) for a in random_list(rng, [(1000003,), (7,), (0,)], np.float32)]
    assert fusedtrain.amp.found_nonfinite(arrays) is False
    for bad in (np.inf, -np.inf, np.nan):
        for i, pos in ((0, 999_999), (1, 6), (0, 0)):
            keep = arrays[i][pos]
            arrays[i][pos] = bad
            assert fusedtrain.amp.found_nonfinite(arrays) is True
            arrays[i][pos] = keep
    big = np.full(10, np.finfo(np.float16).max if dtype == F16 else 1e30, dtype)
    assert fusedtrain.amp.found_nonfinite([big]) is False


# ---------------------------------------------------------------------------
# optimizer objects with master weights
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("state_dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("pdtype", NARROW, ids=narrow_id)
@pytest.mark.parametrize("spec", SPECS, ids=repr)
def test_object_master_weights_match_ops(spec, pdtype, state_dtype):
    rng = make_rng("obj-master", spec.name, narrow_id(pdtype), state_dtype)
    shapes = [(7,), (3, 11), (1,)]
    start = random_list(rng, shapes, np.float32)
    params = [s.astype(pdtype) for s in start]
    hyper = spec.heavy
    opt = spec.cls(params, master_weights=True, state_dtype=state_dtype, **hyper)
    sdtype = np.dtype(np.float32) if state_dtype == "float32" else BF16
    # the functional run from the same start: masters are the params widened
    rp = [p.copy() for p in params]
    rm = [p.astype(np.float32) for p in params]
    rs = {k: [a.astype(sdtype) for a in v]
          for k, v in make_states(spec, hyper, rm).items()}
    for step in (1, 2, 3):
        grads = [g.astype(pdtype) for g in random_list(rng, shapes, np.float32)]
        opt.step(grads, grad_scale=2.0)
        mixed_kernel_step(spec, rp, grads, rm, rs, spec.ops_kwargs(hyper), step, grad_scale=2.0)
    assert_bitwise(params, rp, "params")
    state = opt.state_dict()["state"]
    for i in range(len(params)):
        assert_bitwise([state[i]["master_param"]], [rm[i]], "master")
        for k in rs:
            assert_bitwise([state[i][spec.optim_name(k)]], [rs[k][i]], k)


@pytest.mark.parametrize("mixed", [False, True], ids=["float32", "bf16-master"])
@pytest.mark.parametrize("spec", SPECS, ids=repr)
def test_object_found_inf_changes_nothing(spec, mixed):
    rng = make_rng("obj-found", spec.name, mixed)
    shapes = [(7,), (3, 11)]
    dtype = BF16 if mixed else np.float32
    params = [p.astype(dtype) for p in random_list(rng, shapes, np.float32)]
    opt = spec.cls(params, master_weights=mixed, **spec.heavy)
    for _ in range(2):
        opt.step([g.astype(dtype) for g in random_list(rng, shapes, np.float32)])
    before_sd = opt.state_dict()
    snap = snapshot(params)
    opt.step([g.astype(dtype) for g in random_list(rng, shapes, np.float32)],
             found_inf=np.array([np.inf], np.float32))
    assert_unchanged(params, snap)
    assert_state_dict_equal(opt.state_dict(), before_sd)
    assert all(e["step"] == 2.0 for e in opt.state_dict()["state"].values())


@pytest.mark.parametrize("spec", SPECS, ids=repr)
def test_object_master_state_dict_round_trip(spec):
    rng = make_rng("obj-master-rt", spec.name)
    shapes = [(7,), (3, 11)]
    params = [p.astype(BF16) for p in random_list(rng, shapes, np.float32)]
    grads = [[g.astype(BF16) for g in random_list(rng, shapes, np.float32)] for _ in range(5)]
    opt = spec.cls(params, master_weights=True, **spec.heavy)
    for g in grads[:2]:
        opt.step(g)
    saved = opt.state_dict()
    copies = [p.copy() for p in params]
    for g in grads[2:]:
        opt.step(g)
    fresh = spec.cls(copies, master_weights=True, **spec.heavy)
    fresh.load_state_dict(saved)
    for g in grads[2:]:
        fresh.step(g)
    assert_bitwise(copies, params, "params")
    assert_state_dict_equal(fresh.state_dict(), opt.state_dict())


@pytest.mark.parametrize("spec", SPECS, ids=repr)
def test_object_narrow_params_need_master_weights(spec):
    p = np.zeros(3, BF16)
    with pytest.raises(TypeError, match=r"master_weights=True"):
        spec.cls([p], **spec.heavy)


def test_object_bad_state_dtype():
    with pytest.raises(ValueError, match=r"state_dtype"):
        optim.Adam([np.zeros(3, BF16)], master_weights=True, state_dtype="float16")
    with pytest.raises(ValueError, match=r"state_dtype"):
        optim.Adam([np.zeros(3, np.float32)], state_dtype="bfloat16")


def test_null_mixed_step_does_what_the_benchmark_says():
    """The mixed-precision memory ceiling of bench/mixed.py: w0 += x,
    w_k = w_k * 0.5 + x, params = the top 16 bits of w0 (x = widened grad)."""
    rng = make_rng("null-mixed")
    w = random_list(rng, [(1001,)] * 3, np.float32)
    g = random_list(rng, [(1001,)], np.float32)[0].astype(BF16)
    p = np.zeros(1001, BF16)
    want = [w[0] + g.astype(np.float32)] + [a * np.float32(0.5) + g.astype(np.float32) for a in w[1:]]
    fusedtrain._core.null_mixed_step_([p], [g], [[a] for a in w])
    for a, b in zip(w, want):
        assert bits(a) == bits(b)
    assert bits(p) == bits((want[0].view(np.uint32) >> 16).astype(np.uint16))
    with pytest.raises(TypeError, match=r"params\[0\]: expected dtype bfloat16"):
        fusedtrain._core.null_mixed_step_([p.astype(np.float16)], [g.astype(np.float16)], [[w[0]]])


# ---------------------------------------------------------------------------
# random cases (hypothesis): any hyperparameters, sizes and scales
# ---------------------------------------------------------------------------
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from test_ops import HYPER  # noqa: E402


@pytest.mark.parametrize("spec", SPECS, ids=repr)
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), sizes=st.lists(st.integers(0, 3000), min_size=1, max_size=3),
       pdtype=st.sampled_from(NARROW), sdtype=st.sampled_from(STATE_DTYPES),
       grad_scale=st.sampled_from([1.0, 2.0**10, 3.0]), seed=st.integers(0, 2**32 - 1))
def test_mixed_matches_reference_random(spec, data, sizes, pdtype, sdtype, grad_scale, seed):
    hyper = data.draw(HYPER[spec.name], label="hyper")
    rng = np.random.default_rng(seed)
    shapes = [(n,) for n in sizes]
    params, masters, states = mixed_setup(spec, hyper, shapes, pdtype, sdtype, rng)
    rp, rm, rs = [p.copy() for p in params], [m.copy() for m in masters], copy_states(states)
    for step in (1, 2):
        grads = [(g * np.float32(grad_scale)).astype(pdtype)
                 for g in random_list(rng, shapes, np.float32)]
        with np.errstate(all="ignore"):
            mixed_kernel_step(spec, params, grads, masters, states, hyper, step,
                              grad_scale=grad_scale)
        mixed_reference_step(spec, rp, grads, rm, rs, dict(hyper, grad_scale=grad_scale), step)
        assert_bitwise(masters, rm, "master")
        assert_bitwise(params, rp, "params")
        for name in states:
            assert_bitwise(states[name], rs[name], name)
