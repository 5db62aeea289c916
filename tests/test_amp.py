"""fusedtrain.amp: the dynamic loss scaler (growth, backoff, skipped steps)
and fit(loss_scale=...)."""

from __future__ import annotations

import numpy as np
import pytest
from numpy.testing import assert_array_equal

import fusedtrain as ft
from fusedtrain.amp import DynamicLossScaler
from fusedtrain.nn import Dense, Sequential
from conftest import SPECS, assert_state_dict_equal, make_rng, random_list, snapshot, assert_unchanged


def test_defaults_are_torch_defaults():
    s = DynamicLossScaler()
    assert (s.scale, s.growth_factor, s.backoff_factor, s.growth_interval) == (2.0**16, 2.0, 0.5, 2000)


def test_growth_after_interval_of_clean_steps():
    s = DynamicLossScaler(init_scale=8.0, growth_interval=3)
    for _ in range(2):
        s.update(False)
    assert s.scale == 8.0 and s.good_steps == 2
    s.update(False)
    assert s.scale == 16.0 and s.good_steps == 0
    for _ in range(3):
        s.update(False)
    assert s.scale == 32.0


def test_backoff_on_overflow_restarts_the_count():
    s = DynamicLossScaler(init_scale=8.0, growth_interval=3)
    s.update(False)
    s.update(False)
    s.update(True)
    assert s.scale == 4.0 and s.good_steps == 0 and s.skipped_steps == 1
    s.update(False)
    s.update(False)
    assert s.scale == 4.0  # the two clean steps before the overflow no longer count
    s.update(False)
    assert s.scale == 8.0


def test_growth_stops_short_of_inf():
    s = DynamicLossScaler(init_scale=2.0**1023, growth_interval=1)
    s.update(False)
    assert s.scale == 2.0**1023


def test_state_dict_round_trip():
    s = DynamicLossScaler(init_scale=4.0, growth_interval=5)
    s.update(False)
    s.update(True)
    t = DynamicLossScaler()
    t.load_state_dict(s.state_dict())
    assert t.state_dict() == s.state_dict()


@pytest.mark.parametrize("kwargs,match", [
    (dict(init_scale=0.0), "init_scale"), (dict(init_scale=np.inf), "init_scale"),
    (dict(growth_factor=0.5), "growth_factor"), (dict(backoff_factor=0.0), "backoff_factor"),
    (dict(backoff_factor=2.0), "backoff_factor"), (dict(growth_interval=0), "growth_interval"),
    (dict(growth_interval=1.5), "growth_interval")])
def test_bad_arguments(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        DynamicLossScaler(**kwargs)


@pytest.mark.parametrize("spec", SPECS, ids=repr)
def test_scaler_step_equals_unscaled_step_and_skips_overflow(spec):
    rng = make_rng("scaler-step", spec.name)
    shapes = [(7,), (3, 11)]
    params = random_list(rng, shapes, np.float32)
    plain = [p.copy() for p in params]
    opt, ref = spec.cls(params, **spec.heavy), spec.cls(plain, **spec.heavy)
    scaler = DynamicLossScaler(init_scale=1024.0, growth_interval=2)
    for t in range(3):
        grads = random_list(rng, shapes, np.float32)
        assert scaler.step(opt, [g * np.float32(scaler.scale) for g in grads])
        ref.step(grads)
        for a, b in zip(params, plain):
            assert a.tobytes() == b.tobytes()
    assert scaler.scale == 2048.0
    before, snap = opt.state_dict(), snapshot(params)
    grads = random_list(rng, shapes, np.float32)
    grads[1][0, 3] = np.inf
    assert not scaler.step(opt, grads)
    assert_unchanged(params, snap)
    assert_state_dict_equal(opt.state_dict(), before)
    assert scaler.scale == 1024.0 and scaler.skipped_steps == 1


# ---------------------------------------------------------------------------
# fit(loss_scale=...)
# ---------------------------------------------------------------------------
def _data(n=96, d=8, c=5, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d))
    y = np.argmax(x @ rng.standard_normal((d, c)), axis=1).astype(np.int64)
    return x, y


def _mlp(dtype=np.float64):
    return Sequential([Dense(8, 16, activation="relu"), Dense(16, 5)], dtype=dtype, seed=0)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("loss_scale", ["dynamic", 256.0])
def test_fit_with_loss_scale_equals_fit_without(loss_scale, dtype):
    """Scaling by a power of two and unscaling in the step is exact."""
    x, y = _data()
    a, b = _mlp(dtype), _mlp(dtype)
    ha = a.fit(x, y, optimizer="adam", lr=1e-2, epochs=3, batch_size=16, progress=False)
    hb = b.fit(x, y, optimizer="adam", lr=1e-2, epochs=3, batch_size=16, progress=False,
               loss_scale=loss_scale)
    assert_array_equal(a.param_arena, b.param_arena)
    assert ha["loss"] == hb["loss"]
    assert hb["loss_scale"] == [2.0**16 if loss_scale == "dynamic" else 256.0] * 3
    assert "loss_scale" not in ha.history


def test_fit_overflowing_scale_skips_every_step_and_backs_off():
    x, y = _data()
    model = _mlp(np.float32)
    before = model.param_arena.copy()
    # beyond float32: the scaled loss gradient is inf, every step overflows
    scaler = DynamicLossScaler(init_scale=2.0**140, growth_interval=10**6)
    history = model.fit(x, y, epochs=1, batch_size=48, progress=False, loss_scale=scaler)
    assert scaler.skipped_steps == 2 and scaler.scale == 2.0**138
    assert history["loss_scale"] == [2.0**138]
    assert_array_equal(model.param_arena, before)
    assert model.optimizer.state_dict()["state"] == {}


def test_fit_dynamic_scaler_continues_across_fits():
    x, y = _data()
    model = _mlp()
    model.fit(x, y, epochs=1, batch_size=32, progress=False, loss_scale="dynamic")
    scaler = model.train_state["loss_scaler"]
    assert scaler.good_steps == 3
    model.fit(x, y, epochs=1, batch_size=32, progress=False, loss_scale="dynamic")
    assert model.train_state["loss_scaler"] is scaler and scaler.good_steps == 6


@pytest.mark.parametrize("bad", ["static", -1.0, 0.0, True, [2.0]])
def test_fit_bad_loss_scale(bad):
    x, y = _data()
    model = _mlp()
    before = model.param_arena.copy()
    with pytest.raises((ValueError, TypeError), match="(loss_scale|init_scale)"):
        model.fit(x, y, progress=False, loss_scale=bad)
    assert_array_equal(model.param_arena, before)


def test_found_nonfinite_bad_input():
    with pytest.raises(TypeError, match=r"arrays\[1\]: expected dtype float32"):
        ft.amp.found_nonfinite([np.zeros(3, np.float32), np.zeros(3, np.float64)])
    with pytest.raises(TypeError, match=r"arrays\[0\]"):
        ft.amp.found_nonfinite([np.zeros(3, np.int32)])


# ---------------------------------------------------------------------------
# the scale's floor, and load_state_dict's checks
# ---------------------------------------------------------------------------
def test_backoff_stops_at_min_scale():
    """~150 overflows in a row would take 2^16 below float32's reciprocal
    range (and ~1100 to 0.0): the scale stops at min_scale, and the steps
    keep being skipped."""
    s = DynamicLossScaler()
    for _ in range(1200):
        s.update(True)
    assert s.scale == s.min_scale == 2.0**-24
    assert s.skipped_steps == 1200
    s = DynamicLossScaler(min_scale=1.0)
    for _ in range(40):
        s.update(True)
    assert s.scale == 1.0


def test_scaler_at_its_floor_keeps_skipping_and_params_stay_finite():
    from fusedtrain import optim

    p = np.ones(4, np.float32)
    opt = optim.SGD([p], lr=0.1)
    s = DynamicLossScaler(init_scale=1.0, min_scale=2.0**-24)
    bad = [np.full(4, np.inf, np.float32)]
    for _ in range(60):
        assert s.step(opt, bad) is False
    assert s.scale == 2.0**-24
    np.testing.assert_array_equal(p, np.ones(4, np.float32))
    assert s.step(opt, [np.full(4, 2.0**-24, np.float32)]) is True  # unscaled: gradient 1
    np.testing.assert_allclose(p, np.full(4, 0.9, np.float32))


@pytest.mark.parametrize("kw", [dict(min_scale=0.0), dict(min_scale=-1.0), dict(min_scale=1e-40),
                                dict(min_scale=float("inf")), dict(min_scale=float("nan")),
                                dict(init_scale=0.5, min_scale=1.0)])
def test_bad_min_scale(kw):
    with pytest.raises(ValueError, match="min_scale|init_scale"):
        DynamicLossScaler(**kw)


def test_state_dict_carries_min_scale():
    s = DynamicLossScaler(min_scale=0.25)
    t = DynamicLossScaler()
    t.load_state_dict(s.state_dict())
    assert t.min_scale == 0.25 and t.state_dict() == s.state_dict()


def _good_state():
    return DynamicLossScaler(init_scale=8.0, growth_interval=10).state_dict()


@pytest.mark.parametrize("key,value", [
    ("scale", float("inf")), ("scale", 0.0), ("scale", -2.0), ("scale", float("nan")),
    ("scale", "8"), ("scale", None), ("scale", 2.0**-30),
    ("growth_factor", 0.5), ("growth_factor", float("inf")), ("growth_factor", "2"),
    ("backoff_factor", 0.0), ("backoff_factor", 1.5), ("backoff_factor", None),
    ("growth_interval", 0), ("growth_interval", 2.5), ("growth_interval", True),
    ("good_steps", -1), ("good_steps", 1.5), ("good_steps", True), ("good_steps", 10),
    ("good_steps", "3"), ("skipped_steps", -1), ("skipped_steps", 2.0), ("skipped_steps", None),
    ("min_scale", 0.0), ("min_scale", float("nan")), ("min_scale", "1"), ("min_scale", 16.0),
])
def test_load_state_dict_validates_every_entry(key, value):
    s = DynamicLossScaler(init_scale=4.0, growth_interval=5)
    s.update(False)
    before = s.state_dict()
    state = _good_state()
    state[key] = value
    with pytest.raises(ValueError, match=key if key not in ("scale",) else "scale"):
        s.load_state_dict(state)
    assert s.state_dict() == before


@pytest.mark.parametrize("state", [None, [], {"scale": 1.0}, {**_good_state(), "extra": 1}])
def test_load_state_dict_refuses_other_layouts(state):
    s = DynamicLossScaler()
    before = s.state_dict()
    with pytest.raises(ValueError, match="state"):
        s.load_state_dict(state)
    assert s.state_dict() == before
