"""Dropout (fusedtrain.ops.dropout / dropout_backward) and its Philox4x32-10
generator: known-answer vectors of the Random123 distribution for the C++
(fusedtrain/philox.h) and the NumPy implementation, masks equal to the NumPy
reference bit for bit, keep rate, reproducibility, thread independence, bad
input.
"""

from __future__ import annotations

import zlib

import numpy as np
import pytest

import fusedtrain
from fusedtrain import _core, ops, reference

DTYPES = (np.float32, np.float64)
SHAPES = ((1,), (3,), (7,), (33,), (1000,), (5, 7, 3))

# Random123 kat_vectors: philox4x32 10, counter (4 words), key (2 words) -> output
KAT = [
    ((0x00000000, 0x00000000, 0x00000000, 0x00000000), (0x00000000, 0x00000000),
     (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF, 0xFFFFFFFF, 0xFFFFFFFF, 0xFFFFFFFF), (0xFFFFFFFF, 0xFFFFFFFF),
     (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
]


def rng_for(*key) -> np.random.Generator:
    return np.random.default_rng(zlib.crc32(repr(key).encode()))


def dname(dtype) -> str:
    return np.dtype(dtype).name


def data(shape, dtype, key=0):
    return np.ascontiguousarray(rng_for("x", shape, key).standard_normal(shape), dtype=dtype)


@pytest.fixture
def threads_restored():
    n = fusedtrain.get_num_threads()
    yield n
    fusedtrain.set_num_threads(n)


# ---------------------------------------------------------------------------
# Philox4x32-10
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("counter, key, want", KAT, ids=["zeros", "ones", "pi"])
def test_philox_known_answers(counter, key, want):
    assert _core.philox4x32_10_(*counter, *key) == want
    got = reference.philox4x32_10(np.array(counter, np.uint32), np.array(key, np.uint32))
    assert got.dtype == np.uint32 and tuple(int(v) for v in got) == want


def test_philox_reference_vectorised_matches_kernel():
    rng = rng_for("philox")
    counters = rng.integers(0, 2**32, (64, 4), dtype=np.uint64).astype(np.uint32)
    keys = rng.integers(0, 2**32, (64, 2), dtype=np.uint64).astype(np.uint32)
    got = reference.philox4x32_10(counters, keys)
    for c, k, g in zip(counters, keys, got):
        assert _core.philox4x32_10_(*map(int, c), *map(int, k)) == tuple(int(v) for v in g)


def test_philox_vector_paths_match_portable():
    """The CPU draws dropout masks and stochastic-rounding bits 16 Philox
    blocks at a time with AVX-512 where it can: every path gives the portable
    generator's words, at block indices across the 2^32 carry too."""
    assert fusedtrain.build_info()["philox"] in ("avx512f", "portable")
    assert _core._philox_selfcheck() == 0


@pytest.mark.parametrize("n", [4 * 16 * 64 + 5, 3 * 8192 + 1001])
def test_dropout_long_arrays_match_reference(n):
    """Arrays over many 16-block vectors, several chunks and both threads."""
    x = data((n,), np.float32)
    y, mask = ops.dropout(x, 0.3, 99, 5)
    want_y, want_mask = reference.dropout(x, 0.3, 99, 5)
    assert np.array_equal(mask, want_mask)
    assert y.tobytes() == want_y.tobytes()


# ---------------------------------------------------------------------------
# masks and outputs against the reference
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES, ids=dname)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("p", [0.0, 0.1, 0.5, 0.9, 0.999])
def test_dropout_matches_reference(dtype, shape, p):
    x = data(shape, dtype)
    x0 = x.copy()
    for seed, offset in ((0, 0), (12345, 7), (2**64 - 1, 2**64 - 1), (2**40 + 3, 2**33)):
        y, mask = ops.dropout(x, p, seed, offset)
        want_y, want_mask = reference.dropout(x, p, seed, offset)
        assert mask.dtype == np.bool_ and mask.shape == x.shape
        assert y.dtype == x.dtype and y.shape == x.shape
        assert np.array_equal(mask, want_mask), (seed, offset)
        assert y.tobytes() == want_y.tobytes()
        dy = data(shape, dtype, key=1)
        dx = ops.dropout_backward(dy, mask, p)
        assert dx.tobytes() == reference.dropout_backward(dy, mask, p).tobytes()
    assert np.array_equal(x, x0)


def test_dropout_p_zero_keeps_everything():
    x = data((1000,), np.float32)
    y, mask = ops.dropout(x, 0.0, 3, 4)
    assert mask.all() and np.array_equal(y, x)


@pytest.mark.parametrize("p", [0.1, 0.5, 0.8])
def test_dropout_keep_rate(p):
    n = 200_000
    _, mask = ops.dropout(np.ones(n, np.float32), p, 2024, 1)
    keep = mask.mean()
    sigma = np.sqrt(p * (1 - p) / n)
    assert abs(keep - (1 - p)) < 4 * sigma, (keep, 1 - p, sigma)
    # the kept values are scaled by 1 / (1 - p), rounded once to the dtype
    y, mask = ops.dropout(np.ones(1000, np.float32), p, 5)
    assert set(np.unique(y)) <= {np.float32(0), np.float32(1 / (1 - p))}


def test_dropout_reproducible_and_offset_dependent():
    x = data((4096,), np.float32)
    _, a = ops.dropout(x, 0.5, 42, 10)
    _, b = ops.dropout(x, 0.5, 42, 10)
    assert np.array_equal(a, b)
    for seed, offset in ((42, 11), (43, 10), (42, 10 + 2**32)):  # high offset bits count
        _, c = ops.dropout(x, 0.5, seed, offset)
        assert not np.array_equal(a, c), (seed, offset)
        assert 0.4 < (a == c).mean() < 0.6  # independent-looking streams
    # element i depends on (seed, offset, i) only: not on the shape or the dtype
    _, d = ops.dropout(data((64, 64), np.float64), 0.5, 42, 10)
    assert np.array_equal(d.reshape(-1), a)
    _, e = ops.dropout(x[:1001].copy(), 0.5, 42, 10)
    assert np.array_equal(e, a[:1001])


@pytest.mark.parametrize("dtype", DTYPES, ids=dname)
def test_dropout_deterministic_across_threads(dtype, threads_restored):
    x = data((200_003,), dtype)
    out = {}
    for nt in (1, 2):
        fusedtrain.set_num_threads(nt)
        y, mask = ops.dropout(x, 0.3, 99, 5)
        out[nt] = (y.tobytes(), mask.tobytes(), ops.dropout_backward(y, mask, 0.3).tobytes())
    assert out[1] == out[2]


def test_dropout_backward_uint8_mask_and_nan():
    dy = data((33,), np.float64)
    _, mask = ops.dropout(dy, 0.4, 1)
    dx = ops.dropout_backward(dy, mask.astype(np.uint8), 0.4)
    assert np.array_equal(dx, ops.dropout_backward(dy, mask, 0.4))
    # as torch (x * 0): a dropped NaN stays NaN
    x = np.full(64, np.nan)
    y, mask = ops.dropout(x, 0.5, 1)
    assert np.isnan(y).all()


# ---------------------------------------------------------------------------
# bad input
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("kw, exc, text", [
    (dict(p=1.0), ValueError, "p must be in [0, 1); received 1.0"),
    (dict(p=-0.1), ValueError, "p must be in [0, 1)"),
    (dict(p=float("nan")), ValueError, "p must be in [0, 1)"),
    (dict(p="0.5"), TypeError, "p must be a real number"),
    (dict(seed=-1), ValueError, "seed"),
    (dict(seed=2**64), ValueError, "seed"),
    (dict(seed=1.5), TypeError, "seed"),
    (dict(offset=-3), ValueError, "offset"),
    (dict(offset=2**64), ValueError, "offset"),
    (dict(offset=None), TypeError, "offset"),
    (dict(x=np.arange(8)), TypeError, "x"),
    (dict(x=np.ones(8, np.float16)), TypeError, "x"),
    (dict(x=np.ones(16)[::2]), ValueError, "x"),
    (dict(x=[1.0, 2.0]), TypeError, "x"),
], ids=lambda v: str(v)[:40] if not isinstance(v, type) else v.__name__)
def test_dropout_bad_input(kw, exc, text):
    args = dict(x=np.ones(8), p=0.5, seed=1, offset=0)
    args.update(kw)
    with pytest.raises(exc) as info:
        ops.dropout(**args)
    assert text in str(info.value), str(info.value)


def test_dropout_backward_bad_input():
    dy = np.ones((4, 6))
    _, mask = ops.dropout(dy, 0.5, 1)
    cases = [
        (dict(mask=mask.astype(np.int32)), TypeError, "mask"),
        (dict(mask=mask.astype(np.float64)), TypeError, "mask"),
        (dict(mask=mask.T.copy()), ValueError, "mask"),
        (dict(mask=np.repeat(mask, 2, axis=1)[:, ::2]), ValueError, "mask"),
        (dict(mask=mask.tolist()), TypeError, "mask"),
        (dict(dy=dy.astype(np.int64)), TypeError, "dy"),
        (dict(dy=np.asfortranarray(dy)), ValueError, "dy"),
        (dict(p=1.0), ValueError, "p must be in [0, 1)"),
    ]
    for over, exc, text in cases:
        args = dict(dy=dy, mask=mask, p=0.5)
        args.update(over)
        with pytest.raises(exc) as info:
            ops.dropout_backward(**args)
        assert text in str(info.value), (over, str(info.value))


def test_dropout_into_preallocated_buffers():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((33, 7)).astype(np.float32)
    y_ref, m_ref = ops.dropout(x, 0.3, seed=5, offset=2)
    out, mask_out = np.empty_like(x), np.empty(x.shape, bool)
    y, m = ops.dropout(x, 0.3, seed=5, offset=2, out=out, mask_out=mask_out)
    assert y is out and m is mask_out
    assert np.array_equal(y, y_ref) and np.array_equal(m, m_ref)
    dy = rng.standard_normal(x.shape).astype(np.float32)
    dx_out = np.empty_like(dy)
    dx = ops.dropout_backward(dy, m, 0.3, out=dx_out)
    assert dx is dx_out and np.array_equal(dx, ops.dropout_backward(dy, m, 0.3))
    # in place
    xc = x.copy()
    y2, _ = ops.dropout(xc, 0.3, seed=5, offset=2, out=xc)
    assert y2 is xc and np.array_equal(xc, y_ref)


def test_dropout_preallocated_bad():
    x = np.ones((4, 5), np.float32)
    with pytest.raises(ValueError, match="out"):
        ops.dropout(x, 0.5, seed=1, out=np.empty((5, 4), np.float32))
    with pytest.raises(TypeError, match="out"):
        ops.dropout(x, 0.5, seed=1, out=np.empty((4, 5), np.float64))
    with pytest.raises(TypeError, match="mask_out"):
        ops.dropout(x, 0.5, seed=1, mask_out=np.empty((4, 5), np.uint8))
    m = np.ones((4, 5), bool)
    with pytest.raises(ValueError, match="out"):
        ops.dropout_backward(x, m, 0.5, out=np.empty((4, 4), np.float32))
