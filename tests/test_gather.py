"""The training loop's batch gather, _core.take_rows (out = src[idx] on the
kernels' threads): equal to numpy.take for every dtype and row shape, on one
and two threads; bad input raises naming the argument and writes nothing."""

from __future__ import annotations

import numpy as np
import pytest

import fusedtrain
from fusedtrain import _core
from fusedtrain.train import _parallel_take


@pytest.fixture
def threads_restored():
    n = fusedtrain.get_num_threads()
    yield
    fusedtrain.set_num_threads(n)


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int64, np.uint8])
@pytest.mark.parametrize("row_shape", [(), (7,), (784,), (3, 5, 2)])
@pytest.mark.parametrize("threads", [1, 2])
def test_take_rows_equals_numpy_take(dtype, row_shape, threads, threads_restored):
    fusedtrain.set_num_threads(threads)
    rng = np.random.default_rng(hash((np.dtype(dtype).name, row_shape)) % 2**32)
    src = (rng.standard_normal((1000,) + row_shape) * 100).astype(dtype)
    for n in (0, 1, 129, 1000):
        idx = rng.integers(0, len(src), n).astype(np.int64)
        out = np.full((n,) + row_shape, 7, dtype)
        assert _core.take_rows(src, idx, out) is out
        assert np.array_equal(out, np.take(src, idx, axis=0))


def test_take_rows_large_batch_on_two_threads(threads_restored):
    fusedtrain.set_num_threads(2)
    src = np.arange(4096 * 512, dtype=np.float32).reshape(4096, 512)
    idx = np.random.default_rng(3).permutation(4096)
    out = np.empty_like(src)
    _core.take_rows(src, idx, out)
    assert np.array_equal(out, src[idx])


def _args():
    src = np.arange(40, dtype=np.float32).reshape(10, 4)
    return src, np.array([3, 1, 9], np.int64), np.zeros((3, 4), np.float32)


@pytest.mark.parametrize("mutate, exc, text", [
    (lambda s, i, o: (s, np.array([3, 10, 1], np.int64), o), IndexError,
     "idx[1]: expected a row index in [0, 10), received 10"),
    (lambda s, i, o: (s, np.array([-1, 0, 1], np.int64), o), IndexError, "idx[0]"),
    (lambda s, i, o: (s, i.astype(np.int32), o), TypeError, "idx: expected dtype int64"),
    (lambda s, i, o: (s, i.reshape(3, 1), o), ValueError, "idx: expected a 1-d array"),
    (lambda s, i, o: (s, i, o.astype(np.float64)), TypeError, "out: expected dtype float32"),
    (lambda s, i, o: (s, i, np.zeros((3, 5), np.float32)), ValueError,
     "out: expected shape (3, 4)"),
    (lambda s, i, o: (s, i, np.zeros((4, 4), np.float32)), ValueError, "out: expected shape"),
    (lambda s, i, o: (s, i, np.zeros((4, 3), np.float32).T[:3]), ValueError,
     "out: expected a C-contiguous array"),
    (lambda s, i, o: (np.asfortranarray(np.zeros((10, 4), np.float32)), i, o), ValueError,
     "src: expected a C-contiguous array"),
    (lambda s, i, o: (s, i, s[:3]), ValueError, "out"),
    (lambda s, i, o: (s.tolist(), i, o), TypeError, "src: expected a numpy.ndarray"),
    (lambda s, i, o: (s.astype(object), i, o.astype(object)), TypeError,
     "src: expected a numeric or bool dtype"),
    (lambda s, i, o: (np.zeros((), np.float32), i, o), ValueError,
     "src: expected an array of rows"),
])
def test_take_rows_bad_input_writes_nothing(mutate, exc, text):
    src, idx, out = mutate(*_args())
    snap = np.array(out, copy=True) if isinstance(out, np.ndarray) else None
    with pytest.raises(exc) as info:
        _core.take_rows(src, idx, out)
    assert text in str(info.value)
    if snap is not None:
        assert np.array_equal(out, snap)


def test_read_only_out_is_refused():
    src, idx, out = _args()
    out.flags.writeable = False
    with pytest.raises(ValueError, match="out: expected a writable array"):
        _core.take_rows(src, idx, out)


def test_the_training_loop_uses_it_for_rows_of_1kb_and_more():
    idx = np.arange(4, dtype=np.int64)
    assert _parallel_take(np.zeros((10, 256), np.float32), idx)
    assert not _parallel_take(np.zeros((10, 255), np.float32), idx)  # rows under 1 KB
    assert not _parallel_take(np.zeros(10, np.int64), idx)  # labels
    assert not _parallel_take(np.zeros((256, 10), np.float32).T, idx)  # not C-contiguous
    assert not _parallel_take(np.zeros((10, 256), np.float32), idx.astype(np.int32))


def test_ops_take_rows_is_the_kernel_and_refuses_other_arrays():
    src = np.arange(12, dtype=np.float32).reshape(6, 2)
    idx = np.array([5, 0, 3], dtype=np.int64)
    out = np.empty((3, 2), np.float32)
    assert fusedtrain.ops.take_rows(src, idx, out) is out
    assert np.array_equal(out, src[idx])
    before = out.copy()
    with pytest.raises(IndexError, match=r"idx\[1\]"):
        fusedtrain.ops.take_rows(src, np.array([0, 6, 1], np.int64), out)
    assert np.array_equal(out, before)
    with pytest.raises(TypeError, match="src: expected a numpy.ndarray"):
        fusedtrain.ops.take_rows(src.tolist(), idx, out)
