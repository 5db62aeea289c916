"""Weight initialisers (fusedtrain.nn.init).

Each initialiser is checked for its shape and dtype, seeded reproducibility
and the spread its docstring documents:

* xavier_uniform: U(-a, a), a = gain * sqrt(6 / (fan_in + fan_out))
* xavier_normal:  N(0, std^2), std = gain * sqrt(2 / (fan_in + fan_out))
* he_uniform:     U(-a, a), a = gain * sqrt(3 / fan_in), gain = sqrt(2)
* he_normal:      N(0, std^2), std = gain / sqrt(fan_in), gain = sqrt(2)

The empirical checks use n = 512 * 1024 samples. The sample standard
deviation has relative standard error sqrt((kurtosis - 1) / (4 n)): 0.1 % for
normal values (kurtosis 3), 0.06 % for uniform ones (kurtosis 1.8). The
tolerance, 1 %, is ten standard errors or more, while a wrong formula (a
factor sqrt(2) or sqrt(3), fan_out for fan_in) is off by 20 % or more.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from fusedtrain.nn import init

FAN_IN, FAN_OUT = 512, 1024
BIG = (FAN_IN, FAN_OUT)
N = FAN_IN * FAN_OUT

# name -> (distribution, std as a function of (fan_in, fan_out, gain), default gain)
RANDOM = {
    "xavier_uniform": ("uniform", lambda fi, fo, g: g * math.sqrt(2 / (fi + fo)), 1.0),
    "xavier_normal": ("normal", lambda fi, fo, g: g * math.sqrt(2 / (fi + fo)), 1.0),
    "he_uniform": ("uniform", lambda fi, fo, g: g / math.sqrt(fi), math.sqrt(2)),
    "he_normal": ("normal", lambda fi, fo, g: g / math.sqrt(fi), math.sqrt(2)),
}
ALL = list(RANDOM) + ["zeros"]
ALIASES = {"glorot_uniform": "xavier_uniform", "glorot_normal": "xavier_normal",
           "kaiming_uniform": "he_uniform", "kaiming_normal": "he_normal"}
DTYPES = (np.float32, np.float64)
REL_TOL = 0.01


def fn(name):
    return getattr(init, name)


# ---------------------------------------------------------------------------
# shape and dtype
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("shape", [(7, 33), (1, 1), (33, 7), (5,), (3, 4, 5), (0, 4)],
                         ids=lambda s: "x".join(map(str, s)))
def test_shape_and_default_dtype(name, shape):
    a = fn(name)(shape, rng=0)
    assert a.shape == shape
    assert a.dtype == np.float32
    assert a.flags.c_contiguous and a.flags.writeable
    assert np.isfinite(a).all()


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_dtype(name, dtype):
    a = fn(name)((7, 33), rng=1, dtype=dtype)
    assert a.dtype == dtype and a.shape == (7, 33) and a.flags.c_contiguous


def test_zeros():
    for dtype in DTYPES:
        a = init.zeros((33, 7), dtype=dtype)
        assert a.dtype == dtype and a.shape == (33, 7)
        assert not a.any()
    # rng is accepted (the common signature) and ignored
    assert not init.zeros((4, 5), rng=123).any()


# ---------------------------------------------------------------------------
# seeding
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(RANDOM))
def test_same_seed_same_array(name):
    a = fn(name)((33, 7), rng=1234)
    b = fn(name)((33, 7), rng=1234)
    assert np.array_equal(a, b)
    # a Generator with that seed draws the same values
    c = fn(name)((33, 7), rng=np.random.default_rng(1234))
    assert np.array_equal(a, c)


@pytest.mark.parametrize("name", list(RANDOM))
def test_different_seed_different_array(name):
    a = fn(name)((33, 7), rng=1)
    b = fn(name)((33, 7), rng=2)
    assert not np.array_equal(a, b)
    assert (a != b).mean() > 0.99  # not just one element


@pytest.mark.parametrize("name", list(RANDOM))
def test_generator_advances(name):
    """Successive draws from one Generator differ (each layer gets fresh values)."""
    g = np.random.default_rng(7)
    a = fn(name)((33, 7), rng=g)
    b = fn(name)((33, 7), rng=g)
    assert not np.array_equal(a, b)


@pytest.mark.parametrize("name", list(RANDOM))
def test_no_seed_is_random(name):
    a = fn(name)((33, 7))
    b = fn(name)((33, 7), rng=None)
    assert not np.array_equal(a, b)


# ---------------------------------------------------------------------------
# the documented spread
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("name", list(RANDOM))
def test_empirical_spread(name, dtype):
    dist, std_of, gain = RANDOM[name]
    a = fn(name)(BIG, rng=42, dtype=dtype).astype(np.float64)
    std = std_of(FAN_IN, FAN_OUT, gain)
    # mean: standard error std / sqrt(n); allow 5 of them
    assert abs(a.mean()) < 5 * std / math.sqrt(N), f"{name}: mean {a.mean()}"
    assert a.std() == pytest.approx(std, rel=REL_TOL), f"{name}: std {a.std()}, expected {std}"
    if dist == "uniform":
        bound = std * math.sqrt(3)  # U(-a, a) has std a / sqrt(3)
        # float32 rounding may land on the nearest float32 to a
        slack = bound * (2.0**-23 if dtype == np.float32 else 0.0)
        assert np.abs(a).max() <= bound + slack, f"{name}: {np.abs(a).max()} beyond a = {bound}"
        # n samples reach within a * 1e-4 of the bound (P(miss) = (1 - 1e-4 / 2)^n ~ e^-26)
        assert a.max() > bound * (1 - 1e-4) and a.min() < -bound * (1 - 1e-4)
        # flat: each tenth of [-a, a] holds a tenth of the values (binomial sd ~ 0.04 %)
        hist, _ = np.histogram(a, bins=10, range=(-bound, bound))
        np.testing.assert_allclose(hist / N, 0.1, atol=0.003)
    else:
        # normal: the fourth moment is 3 std^4 (uniform: 1.8), and ~0.27 % lie beyond 3 std
        kurt = ((a - a.mean()) ** 4).mean() / a.var() ** 2
        assert kurt == pytest.approx(3.0, abs=0.05), f"{name}: kurtosis {kurt}"
        assert (np.abs(a) > 3 * std).mean() == pytest.approx(0.0027, abs=0.0005)


@pytest.mark.parametrize("name", list(RANDOM))
def test_gain_scales_the_spread(name):
    dist, std_of, _ = RANDOM[name]
    a = fn(name)(BIG, rng=3, gain=3.0)
    assert a.std(dtype=np.float64) == pytest.approx(std_of(FAN_IN, FAN_OUT, 3.0), rel=REL_TOL)


@pytest.mark.parametrize("name", list(RANDOM))
def test_fans_of_a_higher_rank_shape(name):
    """Shape (fan_in, a, b): fan_out = a * b."""
    dist, std_of, gain = RANDOM[name]
    a = fn(name)((FAN_IN, 32, 32), rng=5)
    assert a.shape == (FAN_IN, 32, 32)
    assert a.std(dtype=np.float64) == pytest.approx(std_of(FAN_IN, 32 * 32, gain), rel=REL_TOL)


def test_xavier_is_symmetric_in_the_fans_he_is_not():
    for name in ("xavier_uniform", "xavier_normal"):
        a = fn(name)((256, 4096), rng=0)
        b = fn(name)((4096, 256), rng=0)
        assert a.std(dtype=np.float64) == pytest.approx(b.std(dtype=np.float64), rel=REL_TOL)
    for name in ("he_uniform", "he_normal"):
        a = fn(name)((256, 4096), rng=0)
        b = fn(name)((4096, 256), rng=0)
        assert a.std(dtype=np.float64) == pytest.approx(4 * b.std(dtype=np.float64), rel=REL_TOL)


# ---------------------------------------------------------------------------
# get() and bad input
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("name", ALL)
def test_get_by_name(name):
    assert init.get(name) is fn(name)
    assert init.INITIALIZERS[name] is fn(name)


@pytest.mark.parametrize("alias", list(ALIASES))
def test_get_alias(alias):
    assert init.get(alias) is fn(ALIASES[alias])


def test_get_callable_passes_through():
    def custom(shape, rng=None, dtype=np.float32):
        return np.ones(shape, dtype)

    assert init.get(custom) is custom
    assert init.get(init.he_normal) is init.he_normal


@pytest.mark.parametrize("bad", ["he", "Xavier_Uniform", "", "glorot"])
def test_get_unknown_name(bad):
    with pytest.raises(ValueError) as info:
        init.get(bad)
    msg = str(info.value)
    assert "init" in msg and repr(bad) in msg, msg
    assert "xavier_uniform" in msg  # says what is accepted


def test_get_non_string_non_callable():
    with pytest.raises((ValueError, TypeError)):
        init.get(None)
    with pytest.raises((ValueError, TypeError)):
        init.get(3)


@pytest.mark.parametrize("name", ALL)
def test_bad_shape(name):
    for shape in [(), (-1, 3), (3, -2)]:
        with pytest.raises(ValueError, match="shape"):
            fn(name)(shape, rng=0)


@pytest.mark.parametrize("name", list(RANDOM))
def test_bad_rng(name):
    for rng in ["seed", 1.5, np.random.RandomState(0)]:
        with pytest.raises(TypeError, match="rng"):
            fn(name)((3, 4), rng=rng)
