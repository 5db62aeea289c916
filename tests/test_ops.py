"""fusedtrain.ops: every fused kernel against its NumPy reference, element by
element, every output buffer (params and every state), over several steps,
for every variant flag, both dtypes and sizes that are not multiples of the
SIMD width; plus random (hypothesis) cases, thread-count determinism and
zero-size arrays."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fusedtrain
from fusedtrain import ops
from conftest import (DTYPES, SPEC, SPECS, assert_buffers_close, assert_unchanged, copy_states,
                      dtype_id, hyper_id, kernel_step, make_rng, make_states, random_list,
                      reference_step, snapshot)

# single arrays are passed bare (the one-array form of the API); the mixed
# list is stepped in one call, zero-size, 0-d and 2-D arrays included
SHAPES = {
    "1": [(1,)],
    "7": [(7,)],
    "22": [(22,)],
    "mixed": [(1,), (7,), (22,), (10, 100), (3, 11), (0,), ()],
}


def run_and_compare(spec, hyper, shapes, dtype, steps, key, first_step=1):
    """Step the kernel (one call over the list) and the reference (per
    array) side by side from the same start with fresh gradients each step;
    compare every buffer after every step."""
    rng = make_rng(*key)
    params = random_list(rng, shapes, dtype)
    states = make_states(spec, hyper, params, rng)
    ref_params = [p.copy() for p in params]
    ref_states = copy_states(states)
    single = len(shapes) == 1
    for step in range(first_step, first_step + steps):
        grads = random_list(rng, shapes, dtype)
        grads_before = snapshot(grads)
        kernel_step(spec, params, grads, states, hyper, step, single=single)
        reference_step(spec, ref_params, grads, ref_states, hyper, step)
        assert_unchanged(grads, grads_before)  # gradients are read only
        assert_buffers_close(params, states, ref_params, ref_states, dtype, what=f"step {step}:")
    for a in params + [a for v in states.values() for a in v]:
        assert np.isfinite(a).all()


CASES = [pytest.param(spec, hyper, id=f"{spec.name}-{hyper_id(hyper) or 'plain'}")
         for spec in SPECS for hyper in spec.grid]


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("shapes", list(SHAPES.values()), ids=list(SHAPES))
@pytest.mark.parametrize("spec,hyper", CASES)
def test_matches_reference(spec, hyper, shapes, dtype):
    run_and_compare(spec, hyper, shapes, dtype, steps=4,
                    key=(spec.name, hyper_id(hyper), str(shapes), dtype_id(dtype)))


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("spec", SPECS, ids=repr)
def test_matches_reference_large(spec, dtype):
    """1000003 elements: split across threads, SIMD body plus a ragged tail."""
    run_and_compare(spec, spec.heavy, [(1000003,)], dtype, steps=3,
                    key=("large", spec.name, dtype_id(dtype)))


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("spec", [s for s in SPECS if s.takes_step], ids=repr)
def test_matches_reference_late_steps(spec, dtype):
    """Steps far from 1: bias corrections and lr decay at large t."""
    run_and_compare(spec, spec.heavy, SHAPES["mixed"], dtype, steps=2,
                    key=("late", spec.name, dtype_id(dtype)), first_step=12345)


# ---------------------------------------------------------------------------
# random cases (hypothesis)
# ---------------------------------------------------------------------------
_unit = st.floats(0.0, 1.0, exclude_max=True)
_small = st.one_of(st.just(0.0), st.floats(1e-6, 0.5))
_eps = st.one_of(st.just(0.0), st.floats(1e-12, 1e-2))


@st.composite
def _sgd_hyper(draw):
    nesterov = draw(st.booleans())
    momentum = draw(st.floats(0.01, 0.99)) if nesterov else draw(st.one_of(st.just(0.0), st.floats(0, 0.99)))
    dampening = 0.0 if nesterov else draw(st.floats(0.0, 1.0))
    return dict(lr=draw(st.floats(0, 1)), momentum=momentum, dampening=dampening, nesterov=nesterov,
                weight_decay=draw(_small), maximize=draw(st.booleans()), l1=draw(_small))


@st.composite
def _adam_hyper(draw):
    return dict(lr=draw(st.floats(0, 0.1)), betas=(draw(_unit), draw(_unit)), eps=draw(_eps),
                weight_decay=draw(_small), amsgrad=draw(st.booleans()),
                maximize=draw(st.booleans()), l1=draw(_small))


@st.composite
def _rmsprop_hyper(draw):
    return dict(lr=draw(st.floats(0, 0.1)), alpha=draw(st.floats(0, 1)), eps=draw(_eps),
                weight_decay=draw(_small), momentum=draw(st.one_of(st.just(0.0), st.floats(0, 0.99))),
                centered=draw(st.booleans()), maximize=draw(st.booleans()), l1=draw(_small))


@st.composite
def _adagrad_hyper(draw):
    return dict(lr=draw(st.floats(0, 1)), lr_decay=draw(_small), weight_decay=draw(_small),
                eps=draw(_eps), maximize=draw(st.booleans()), l1=draw(_small),
                initial_accumulator_value=draw(st.floats(0, 1)))


HYPER = {"sgd": _sgd_hyper(), "adam": _adam_hyper(), "adamw": _adam_hyper(),
         "rmsprop": _rmsprop_hyper(), "adagrad": _adagrad_hyper()}


@pytest.mark.parametrize("spec", SPECS, ids=repr)
@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(),
       sizes=st.lists(st.integers(0, 3000), min_size=1, max_size=4),
       dtype=st.sampled_from(DTYPES),
       first_step=st.one_of(st.just(1), st.integers(1, 10**6)),
       steps=st.integers(1, 3),
       scale=st.sampled_from([1e-30, 1e-4, 1.0, 100.0, 1e15]),
       seed=st.integers(0, 2**32 - 1))
def test_matches_reference_random(spec, data, sizes, dtype, first_step, steps, scale, seed):
    hyper = data.draw(HYPER[spec.name], label="hyper")
    rng = np.random.default_rng(seed)
    shapes = [(n,) for n in sizes]
    params = random_list(rng, shapes, dtype, scale)
    states = make_states(spec, hyper, params, rng)
    ref_params = [p.copy() for p in params]
    ref_states = copy_states(states)
    for step in range(first_step, first_step + steps):
        grads = random_list(rng, shapes, dtype, scale)
        kernel_step(spec, params, grads, states, hyper, step)
        reference_step(spec, ref_params, grads, ref_states, hyper, step)
        assert_buffers_close(params, states, ref_params, ref_states, dtype, what=f"step {step}:")


# ---------------------------------------------------------------------------
# threads and zero-size arrays
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("spec", SPECS, ids=repr)
def test_thread_count_does_not_change_results(spec, dtype, restore_threads):
    """~3M elements over several arrays: 1, 2, 3 and 8 threads split the list at
    different places; every buffer must come out bitwise identical."""
    shapes = [(1000003,), (17,), (999_999,), (31, 1001), (700_001,), (0,), (269_003,)]
    rng = make_rng("threads", spec.name, dtype_id(dtype))
    params0 = random_list(rng, shapes, dtype)
    grads = [random_list(rng, shapes, dtype) for _ in range(2)]
    results = []
    for n in (1, 2, 3, 8):
        fusedtrain.set_num_threads(n)
        assert fusedtrain.get_num_threads() == n
        params = [p.copy() for p in params0]
        states = make_states(spec, spec.heavy, params)
        for step, g in enumerate(grads, start=1):
            kernel_step(spec, params, g, states, spec.heavy, step)
        results.append([a.tobytes() for a in params + [a for v in states.values() for a in v]])
    assert results[1] == results[0]
    assert results[2] == results[0]
    assert results[3] == results[0]


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("spec", SPECS, ids=repr)
def test_zero_size_arrays_are_a_no_op(spec, dtype):
    shapes = [(0,), (0, 3), (4, 0)]
    params = [np.empty(s, dtype) for s in shapes]
    grads = [np.empty(s, dtype) for s in shapes]
    states = make_states(spec, spec.heavy, params)
    kernel_step(spec, params, grads, states, spec.heavy, 1)
    kernel_step(spec, params[:1], grads[:1], {k: v[:1] for k, v in states.items()}, spec.heavy, 2,
                single=True)
    for a in params + grads + [a for v in states.values() for a in v]:
        assert a.size == 0 and a.dtype == dtype


@pytest.mark.parametrize("spec", SPECS, ids=repr)
def test_zero_size_array_leaves_neighbours_to_the_kernel(spec):
    """A zero-size array between two others: its neighbours are updated as if
    it were absent."""
    rng = make_rng("zero-neighbours", spec.name)
    shapes = [(5,), (0,), (9,)]
    params = random_list(rng, shapes, np.float64)
    grads = random_list(rng, shapes, np.float64)
    states = make_states(spec, spec.heavy, params)
    alone_p = [params[0].copy(), params[2].copy()]
    alone_s = {k: [v[0].copy(), v[2].copy()] for k, v in states.items()}
    kernel_step(spec, params, grads, states, spec.heavy, 1)
    kernel_step(spec, alone_p, [grads[0], grads[2]], alone_s, spec.heavy, 1)
    for got, want in zip([params[0], params[2]], alone_p):
        assert got.tobytes() == want.tobytes()
    for k in states:
        assert states[k][0].tobytes() == alone_s[k][0].tobytes()
        assert states[k][2].tobytes() == alone_s[k][1].tobytes()


def test_spec_table_covers_every_optimizer():
    assert set(SPEC) == {"sgd", "adam", "adamw", "rmsprop", "adagrad"}
    for spec in SPECS:
        assert hasattr(fusedtrain.ops, spec.op.__name__)


# ---------------------------------------------------------------------------
# subnormal flushing (fusedtrain.set_flush_denormal)
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("flush", [True, False])
def test_flush_denormal(flush):
    tiny = np.float32(1e-39)  # subnormal in float32
    assert 0 < tiny < np.finfo(np.float32).tiny
    p = np.zeros(1000, np.float32)
    g = np.zeros_like(p)
    m = np.full_like(p, tiny)
    v = np.zeros_like(p)
    want = [a.copy() for a in (p, g, m, v)]
    fusedtrain.reference.adam(*want, step=3, lr=1e-3)
    before = fusedtrain.get_flush_denormal()
    try:
        fusedtrain.set_flush_denormal(flush)
        assert fusedtrain.get_flush_denormal() is flush
        fusedtrain.ops.adam_(p, g, m, v, step=3, lr=1e-3)
    finally:
        fusedtrain.set_flush_denormal(before)
    if flush:
        assert np.all(m == 0)  # read as zero, written as zero
    else:
        assert np.array_equal(m, want[2]) and np.all(m > 0)  # exact IEEE, as the reference


def test_flush_denormal_bad_argument():
    with pytest.raises(TypeError, match="on: expected a bool"):
        fusedtrain.set_flush_denormal(1)


# ---------------------------------------------------------------------------
# grad_scale whose reciprocal is not finite and nonzero in the compute type
# ---------------------------------------------------------------------------
def _ops_call(name, dtype, grad_scale):
    """One call of ops.<name> on fresh arrays; returns (call, arrays)."""
    p, g = np.ones(4, dtype), np.ones(4, dtype)
    s1, s2 = np.zeros(4, dtype), np.zeros(4, dtype)
    fn = getattr(ops, name)
    if name == "sgd_":
        call = lambda: fn([p], [g], [s1], step=1, lr=0.1, momentum=0.9, grad_scale=grad_scale)
    elif name in ("adam_", "adamw_"):
        call = lambda: fn([p], [g], [s1], [s2], step=1, grad_scale=grad_scale)
    elif name == "rmsprop_":
        call = lambda: fn([p], [g], [s1], grad_scale=grad_scale)
    else:
        call = lambda: fn([p], [g], [s1], step=1, grad_scale=grad_scale)
    return call, [p, g, s1, s2]


OPT_FUNCS = ["sgd_", "adam_", "adamw_", "rmsprop_", "adagrad_"]


@pytest.mark.parametrize("name", OPT_FUNCS)
@pytest.mark.parametrize("dtype,scale", [(np.float32, 1e-40), (np.float32, 2.0**-150),
                                         (np.float32, 1e46), (np.float32, 1e300),
                                         (np.float64, 5e-324), (np.float64, 1e-310)])
def test_grad_scale_with_unusable_reciprocal_is_refused(name, dtype, scale):
    """1 / grad_scale rounded to the compute type would be inf or 0 (params
    turned into -inf, or gradients erased): ValueError naming grad_scale,
    nothing written."""
    call, arrays = _ops_call(name, dtype, scale)
    before = [a.copy() for a in arrays]
    with pytest.raises(ValueError, match="grad_scale"):
        call()
    for a, b in zip(arrays, before):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("name", OPT_FUNCS)
@pytest.mark.parametrize("dtype,scale", [(np.float32, 2.0**-126), (np.float32, 2.0**126),
                                         (np.float32, 3e-39), (np.float64, 1e-300),
                                         (np.float64, 1e300)])
def test_grad_scale_at_the_edges_gives_finite_params(name, dtype, scale):
    call, arrays = _ops_call(name, dtype, scale)
    with np.errstate(all="ignore"):
        call()
    assert np.isfinite(arrays[0]).all()


def test_grad_scale_1e_minus_40_example_from_the_issue():
    p = np.ones(4, np.float32)
    with pytest.raises(ValueError, match=r"grad_scale.*reciprocal.*float32.*1e-40"):
        ops.sgd_([p], [np.ones(4, np.float32)], step=1, lr=0.1, grad_scale=1e-40)
    np.testing.assert_array_equal(p, np.ones(4, np.float32))


def test_narrow_params_compute_in_float32_for_grad_scale():
    """float16 params with float32 masters: the reciprocal is a float32."""
    p = np.ones(4, np.float16)
    master = np.ones(4, np.float32)
    with pytest.raises(ValueError, match="grad_scale"):
        ops.sgd_([p], [np.ones(4, np.float16)], step=1, lr=0.1, grad_scale=1e-40,
                 master_params=[master])
    np.testing.assert_array_equal(master, np.ones(4, np.float32))


def test_fused_step_is_the_route_of_every_public_function(monkeypatch):
    """ops.<opt>_ ends in ops.fused_step, the one place with each kernel's
    argument list (the optimizer objects and the torch adapter call it too)."""
    seen = []
    real = ops.fused_step
    monkeypatch.setattr(ops, "fused_step", lambda kernel, *a, **k: (seen.append(kernel),
                                                                    real(kernel, *a, **k)))
    for name in OPT_FUNCS:
        _ops_call(name, np.float64, 1.0)[0]()
    assert seen == ["sgd", "adam", "adam", "rmsprop", "adagrad"]
