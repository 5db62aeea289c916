"""Datasets and batching: synthetic MNIST files (IDX raw / gz, npz), digits,
batches and train_val_split."""

from __future__ import annotations

import gzip
import re
import struct
import sys
import tracemalloc

import numpy as np
import pytest

from fusedtrain import data

IDX_NAMES = data.MNIST_FILES  # x_train -> train-images-idx3-ubyte, ...


# ---------------------------------------------------------------------------
# synthetic MNIST
# ---------------------------------------------------------------------------
def idx_bytes(a: np.ndarray) -> bytes:
    """An IDX file of unsigned bytes: magic 0x0000080<ndim>, big-endian dims."""
    a = np.ascontiguousarray(a, dtype=np.uint8)
    return struct.pack(">I", 0x800 + a.ndim) + struct.pack(f">{a.ndim}I", *a.shape) + a.tobytes()


def synthetic_mnist(n_train=5, n_test=3, rows=28, cols=28, seed=0):
    rng = np.random.default_rng(seed)
    return {
        "x_train": rng.integers(0, 256, (n_train, rows, cols), dtype=np.uint8),
        "y_train": rng.integers(0, 10, n_train).astype(np.uint8),
        "x_test": rng.integers(0, 256, (n_test, rows, cols), dtype=np.uint8),
        "y_test": rng.integers(0, 10, n_test).astype(np.uint8),
    }


def write_idx(directory, arrays, gz=(), overrides=None):
    """The four IDX files; names in ``gz`` gzipped; ``overrides`` maps a key
    to raw bytes written instead."""
    overrides = overrides or {}
    for key, name in IDX_NAMES.items():
        raw = overrides.get(key, idx_bytes(arrays[key]) if key in arrays else None)
        if raw is None:
            continue
        if key in gz:
            (directory / (name + ".gz")).write_bytes(gzip.compress(raw))
        else:
            (directory / name).write_bytes(raw)


def check_loaded(loaded, arrays, dtype=np.float32):
    (xtr, ytr), (xte, yte) = loaded
    for x, y, split in ((xtr, ytr, "train"), (xte, yte, "test")):
        src_x, src_y = arrays[f"x_{split}"], arrays[f"y_{split}"]
        n = src_x.shape[0]
        assert x.shape == (n, src_x[0].size) and x.dtype == dtype
        assert y.shape == (n,) and y.dtype == np.int64
        assert x.min() >= 0.0 and x.max() <= 1.0
        np.testing.assert_array_equal(x, src_x.reshape(n, -1).astype(dtype) / dtype(255))
        np.testing.assert_array_equal(np.rint(x * 255).astype(np.uint8), src_x.reshape(n, -1))
        np.testing.assert_array_equal(y, src_y)


@pytest.mark.parametrize("gz", [(), tuple(IDX_NAMES), ("x_train", "y_test")], ids=["raw", "gz", "mixed"])
def test_mnist_idx_round_trip(tmp_path, gz):
    arrays = synthetic_mnist()
    write_idx(tmp_path, arrays, gz=gz)
    check_loaded(data.load_mnist(tmp_path), arrays)
    check_loaded(data.load_mnist(str(tmp_path), dtype=np.float64), arrays, np.float64)


def test_mnist_npz_round_trip(tmp_path):
    arrays = synthetic_mnist(n_train=4, n_test=6, seed=1)
    np.savez(tmp_path / "mnist.npz", **arrays)
    check_loaded(data.load_mnist(tmp_path), arrays)
    check_loaded(data.load_mnist(tmp_path / "mnist.npz"), arrays)
    # any .npz path, flattened images too
    flat = {k: (v.reshape(v.shape[0], -1) if k.startswith("x") else v) for k, v in arrays.items()}
    np.savez_compressed(tmp_path / "other.npz", **flat)
    check_loaded(data.load_mnist(tmp_path / "other.npz"), arrays)


def test_mnist_prefers_complete_idx_then_npz(tmp_path):
    idx, npz = synthetic_mnist(seed=2), synthetic_mnist(seed=3)
    np.savez(tmp_path / "mnist.npz", **npz)
    write_idx(tmp_path, {k: v for k, v in idx.items() if k != "y_test"})  # three of four
    check_loaded(data.load_mnist(tmp_path), npz)
    write_idx(tmp_path, {"y_test": idx["y_test"]})
    check_loaded(data.load_mnist(tmp_path), idx)


def test_mnist_missing_files(tmp_path):
    with pytest.raises(FileNotFoundError) as e:
        data.load_mnist(tmp_path)
    msg = str(e.value)
    for name in IDX_NAMES.values():
        assert name in msg
    assert "mnist.npz" in msg and str(tmp_path) in msg and "does not download" in msg
    write_idx(tmp_path, {k: v for k, v in synthetic_mnist().items() if k.startswith("x")})
    with pytest.raises(FileNotFoundError, match=r"\['train-labels-idx1-ubyte\[.gz\]', 't10k-labels-idx1-ubyte\[.gz\]'\]"):
        data.load_mnist(tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        data.load_mnist(tmp_path / "nowhere")


def header(magic, *dims):
    return struct.pack(">I", magic) + struct.pack(f">{len(dims)}I", *dims)


@pytest.mark.parametrize("key, raw, message", [
    ("x_train", header(0x801, 5), r"IDX magic number must be 0x00000803 \(unsigned bytes, 3 dimensions\); received 0x00000801"),
    ("y_train", header(0x803, 5, 28, 28), r"IDX magic number must be 0x00000801 \(unsigned bytes, 1 dimension\); received 0x00000803"),
    ("x_test", header(0x0D03, 3, 28, 28) + bytes(3 * 784 * 4), "received 0x00000d03"),  # float32 IDX
    ("x_train", b"\x00\x00\x08", "IDX header must be 16 bytes; received a 3-byte file"),
    ("x_train", header(0x803, 5, 28), "IDX header must be 16 bytes; received a 12-byte file"),
    ("y_test", header(0x801, 3) + bytes(2), r"IDX dimensions \(3,\) need 3 data bytes; received 2"),
    ("x_test", header(0x803, 3, 28, 28) + bytes(3 * 784 + 1), r"need 2352 data bytes; received 2353"),
], ids=["images-magic", "labels-magic", "float-idx", "short-magic", "short-dims", "truncated", "trailing"])
def test_mnist_corrupt_header(tmp_path, key, raw, message):
    write_idx(tmp_path, synthetic_mnist(), overrides={key: raw})
    with pytest.raises(ValueError, match=message) as e:
        data.load_mnist(tmp_path)
    assert IDX_NAMES[key] in str(e.value)


def test_mnist_corrupt_gzip(tmp_path):
    arrays = synthetic_mnist()
    write_idx(tmp_path, arrays)
    (tmp_path / IDX_NAMES["y_train"]).unlink()
    (tmp_path / (IDX_NAMES["y_train"] + ".gz")).write_bytes(b"not gzip at all")
    with pytest.raises(ValueError, match="not a valid gzip file"):
        data.load_mnist(tmp_path)
    truncated = gzip.compress(idx_bytes(arrays["y_train"]))[:-10]
    (tmp_path / (IDX_NAMES["y_train"] + ".gz")).write_bytes(truncated)
    with pytest.raises(ValueError, match="not a valid gzip file"):
        data.load_mnist(tmp_path)


def test_mnist_inconsistent_arrays(tmp_path):
    arrays = synthetic_mnist(n_train=5)
    write_idx(tmp_path, arrays, overrides={"y_train": idx_bytes(np.zeros(4))})
    with pytest.raises(ValueError, match="x_train has 5 images but y_train has 4 labels") as e:
        data.load_mnist(tmp_path)
    assert str(e.value).startswith(f"{tmp_path / IDX_NAMES['x_train']} and {tmp_path / IDX_NAMES['y_train']}: ")
    other = tmp_path / "sub"
    other.mkdir()
    write_idx(other, {**arrays, "x_test": np.zeros((3, 14, 14))})
    with pytest.raises(ValueError, match="train and test images differ in size; received 784 and 196") as e:
        data.load_mnist(other)
    assert IDX_NAMES["x_test"] in str(e.value) and IDX_NAMES["x_train"] in str(e.value)


def test_mnist_bad_npz(tmp_path):
    arrays = synthetic_mnist()
    np.savez(tmp_path / "a.npz", **{k: v for k, v in arrays.items() if k != "y_test"})
    with pytest.raises(ValueError, match=r"a.npz: must hold the arrays .*; missing \['y_test'\]"):
        data.load_mnist(tmp_path / "a.npz")
    np.savez(tmp_path / "b.npz", **{**arrays, "x_train": arrays["x_train"] / 255.0})
    with pytest.raises(ValueError, match="b.npz: x_train must be uint8 pixels; received float64"):
        data.load_mnist(tmp_path / "b.npz")
    (tmp_path / "c.npz").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="c.npz: not a readable zip archive"):
        data.load_mnist(tmp_path / "c.npz")
    np.save(tmp_path / "d.npy", arrays["x_train"])
    with pytest.raises(ValueError, match="d.npy: a single .npy array, not a .npz archive"):
        data.load_mnist(tmp_path / "d.npy")
    # other members are neither needed nor read
    np.savez(tmp_path / "e.npz", **arrays, extra=np.array([object()], dtype=object))
    check_loaded(data.load_mnist(tmp_path / "e.npz"), arrays)


def npz_with(tmp_path, name="m.npz", **changes):
    arrays = {**synthetic_mnist(), **changes}
    np.savez(tmp_path / name, **arrays)
    return tmp_path / name


@pytest.mark.parametrize("changes, message", [
    (dict(y_train=np.array([0, 1, 2, 3, -1])), r"y_train labels must be class indices in \[0, 255\]; "
                                                "received labels from -1 to 3"),
    (dict(y_test=np.array([0, 10**12, 2])), r"received labels from 0 to 1000000000000"),
    (dict(y_test=np.array([0.0, 1.0, 2.0])), "y_test must be integer labels; received float64"),
    (dict(y_train=np.zeros((5, 1), np.uint8)), r"y_train must be \(n,\); received shape \(5, 1\)"),
    (dict(x_train=np.zeros(5, np.uint8)), r"x_train must be \(n, rows, cols\) or \(n, pixels\); received shape \(5,\)"),
    (dict(x_train=np.zeros((5, 2, 2, 2), np.uint8)), "received shape"),
    (dict(x_train=np.zeros((0, 28, 28), np.uint8), y_train=np.zeros(0, np.uint8)), "x_train has no images"),
    (dict(x_test=np.zeros((3, 0, 28), np.uint8)), r"x_test images have no pixels; received shape \(3, 0, 28\)"),
    (dict(y_test=np.zeros(4, np.uint8)), "x_test has 3 images but y_test has 4 labels"),
    (dict(x_test=np.zeros((3, 28, 27), np.uint8)), "train and test images differ in size; received 784 and 756"),
    (dict(x_test=np.zeros((3, 2), ">u2")), "dtype >u2 is big-endian"),
], ids=["negative-label", "huge-label", "float-labels", "2d-labels", "1d-images", "4d-images", "no-images",
        "no-pixels", "count", "size", "big-endian"])
def test_mnist_npz_inconsistent(tmp_path, changes, message):
    path = npz_with(tmp_path, **changes)
    with pytest.raises(ValueError, match=message) as e:
        data.load_mnist(path)
    assert str(e.value).startswith(f"{path}: ")


def zip_with_member(path, name: str, member: bytes, **arrays):
    import zipfile

    np.savez(path, **arrays)
    with zipfile.ZipFile(path, "a") as zf:
        zf.writestr(name + ".npy", member)


def npy_header(descr: str, shape: tuple) -> bytes:
    text = repr({"descr": descr, "fortran_order": False, "shape": shape}).encode() + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(text)) + text


@pytest.mark.parametrize("descr, shape, message", [
    ("|u1", (10**13, 28, 28), r"declares shape \(10000000000000, 28, 28\) of uint8 \(7840000000000000 bytes\); "
                              "the member holds 16"),
    ("|u1", (2**40, 2**40, 2**40), r"the member holds 16"),
    ("|O", (2,), "dtype object is not allowed"),
])
def test_mnist_npz_crafted_header(tmp_path, descr, shape, message):
    arrays = synthetic_mnist()
    path = tmp_path / "mnist.npz"
    zip_with_member(path, "x_train", npy_header(descr, shape) + bytes(16),
                    **{k: v for k, v in arrays.items() if k != "x_train"})
    with pytest.raises(ValueError, match=message) as e:
        data.load_mnist(tmp_path)
    assert str(e.value).startswith(f"{path}: member 'x_train'")


def test_mnist_npz_damaged(tmp_path):
    path = npz_with(tmp_path)
    raw = path.read_bytes()
    for cut in range(0, len(raw), 97):
        path.write_bytes(raw[:cut])
        with pytest.raises(ValueError, match=re.escape(str(path))):
            data.load_mnist(path)
    rng = np.random.default_rng(7)
    for _ in range(50):
        b = bytearray(raw)
        b[rng.integers(len(b))] ^= 1 << int(rng.integers(8))
        path.write_bytes(bytes(b))
        try:
            data.load_mnist(path)
        except ValueError as e:
            assert str(e).startswith(f"{path}: ")


def gzip_bomb(head: bytes, inflated: int) -> bytes:
    """``head`` then ``inflated`` zero bytes, as about ``inflated / 1000``
    bytes of gzip: concatenated members of 1 MiB of zeros each."""
    block = gzip.compress(bytes(2**20))
    return gzip.compress(head) + block * (inflated // 2**20)


def test_mnist_gzip_bomb_is_not_inflated(tmp_path):
    arrays = synthetic_mnist(n_train=20)
    write_idx(tmp_path, arrays)
    bomb = gzip_bomb(header(0x803, 20, 28, 28), 2**30)  # 1 GiB behind a 20x28x28 header
    assert len(bomb) < 2 * 2**20
    (tmp_path / IDX_NAMES["x_train"]).unlink()
    (tmp_path / (IDX_NAMES["x_train"] + ".gz")).write_bytes(bomb)
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match=r"IDX dimensions \(20, 28, 28\) need 15680 data bytes; "
                                             r"received more \(the data goes on past them\)") as e:
            data.load_mnist(tmp_path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert str(e.value).startswith(str(tmp_path / (IDX_NAMES["x_train"] + ".gz")))
    assert peak < 8 * 2**20


@pytest.mark.parametrize("gz", [False, True], ids=["raw", "gz"])
@pytest.mark.parametrize("key, raw, message", [
    ("x_train", header(0x803, 2**32 - 1, 2**32 - 1, 2**32 - 1) + bytes(10),
     r"IDX dimensions \(4294967295, 4294967295, 4294967295\) need 79228162458924105385300197375 data bytes; received 10"),
    ("x_train", header(0x803, 2**32 - 1, 2**16, 2**16) + bytes(10), "need 18446744069414584320 data bytes"),
    ("y_test", header(0x801, 2**32 - 1) + bytes(10), r"IDX dimensions \(4294967295,\) need 4294967295 data bytes"),
    ("x_test", header(0x802, 3, 784) + bytes(3 * 784),
     r"IDX magic number must be 0x00000803 .* received 0x00000802 \(unsigned bytes, 2 dimensions\)"),
    ("x_test", header(0x0903, 3, 28, 28) + bytes(3 * 784), r"received 0x00000903 \(signed bytes, 3 dimensions\)"),
    ("y_train", header(0x1234801, 5) + bytes(5), r"received 0x01234801 \(not an IDX file, 1 dimension\)"),
    ("y_train", b"", "IDX header must be 8 bytes; received a 0-byte file"),
], ids=["overflow", "overflow-64", "huge-labels", "2d-images", "signed", "not-idx", "empty"])
def test_mnist_bad_idx(tmp_path, gz, key, raw, message):
    write_idx(tmp_path, synthetic_mnist(), overrides={key: raw}, gz=(key,) if gz else ())
    with pytest.raises(ValueError, match=message) as e:
        data.load_mnist(tmp_path)
    assert str(e.value).startswith(str(tmp_path / (IDX_NAMES[key] + (".gz" if gz else ""))) + ": ")


def test_mnist_bad_gzip_data(tmp_path):
    arrays = synthetic_mnist()
    name = IDX_NAMES["x_test"] + ".gz"
    good = gzip.compress(idx_bytes(arrays["x_test"]))
    cases = {
        "crc": good[:-8] + bytes([good[-8] ^ 1]) + good[-7:],                  # CRC-32 of the trailer
        "length": good[:-4] + bytes([good[-4] ^ 1]) + good[-3:],               # ISIZE of the trailer
        "deflate": good[:20] + bytes([good[20] ^ 0xFF]) + good[21:],           # the compressed stream
        "short-data": gzip.compress(idx_bytes(arrays["x_test"])[:-5]),
        "long-data": gzip.compress(idx_bytes(arrays["x_test"]) + b"\0"),
        "trailing-garbage": good + b"garbage!",
    }
    for what, raw in cases.items():
        write_idx(tmp_path, arrays)
        (tmp_path / IDX_NAMES["x_test"]).unlink()
        (tmp_path / name).write_bytes(raw)
        with pytest.raises(ValueError) as e:
            data.load_mnist(tmp_path)
        assert str(e.value).startswith(f"{tmp_path / name}: "), (what, str(e.value))
    # every truncation of a good file
    for cut in range(0, len(good), 7):
        (tmp_path / name).write_bytes(good[:cut])
        with pytest.raises(ValueError, match=re.escape(str(tmp_path / name))):
            data.load_mnist(tmp_path)


def test_mnist_idx_labels_may_use_the_whole_byte(tmp_path):
    # IDX labels are bytes: 0..255 are all accepted (other label sets than 0..9)
    arrays = synthetic_mnist()
    arrays["y_train"] = np.array([0, 255, 7, 61, 9], np.uint8)
    write_idx(tmp_path, arrays)
    (_, y), _ = data.load_mnist(tmp_path)
    np.testing.assert_array_equal(y, [0, 255, 7, 61, 9])


def test_mnist_bad_path_type():
    with pytest.raises(TypeError, match="path must be a str or os.PathLike path; received int 3"):
        data.load_mnist(3)


def test_mnist_bad_dtype(tmp_path):
    with pytest.raises(ValueError, match="dtype must be a floating dtype .*; received int32"):
        data.load_mnist(tmp_path, dtype=np.int32)


# ---------------------------------------------------------------------------
# digits
# ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def digits():
    pytest.importorskip("sklearn")
    return data.load_digits()


def test_digits_shapes_and_ranges(digits):
    (xtr, ytr), (xte, yte) = digits
    assert xtr.shape == (1438, 64) and xte.shape == (359, 64)  # round(0.2 * 1797) = 359
    assert ytr.shape == (1438,) and yte.shape == (359,)
    assert xtr.dtype == xte.dtype == np.float32
    assert ytr.dtype == yte.dtype == np.int64
    assert xtr.min() == 0.0 and xtr.max() == 1.0 and xte.min() >= 0.0 and xte.max() <= 1.0
    np.testing.assert_array_equal(xtr * 16, np.rint(xtr * 16))  # k / 16 exactly
    assert set(np.unique(ytr)) == set(np.unique(yte)) == set(range(10))


def test_digits_split_is_a_stratified_partition(digits):
    from sklearn.datasets import load_digits as sk

    x, y = sk(return_X_y=True)
    (xtr, ytr), (xte, yte) = digits
    got = np.concatenate([xtr, xte]) * 16
    # the split is a partition: same multiset of (row, label) pairs
    key = lambda xs, ys: sorted(map(bytes, np.column_stack([xs.astype(np.int64), ys]).astype(np.int8)))
    assert key(got, np.concatenate([ytr, yte])) == key(x, y)
    # each class in proportion, to within one sample
    counts = np.bincount(y, minlength=10)
    assert np.all(np.abs(np.bincount(yte, minlength=10) - 359 * counts / 1797) < 1)
    # the test part is not sorted by class
    assert np.any(np.diff(yte) < 0)


def test_digits_reproducible_and_options(digits):
    (xtr, ytr), (xte, yte) = digits
    (xtr2, ytr2), (xte2, yte2) = data.load_digits(seed=0)
    for a, b in ((xtr, xtr2), (ytr, ytr2), (xte, xte2), (yte, yte2)):
        np.testing.assert_array_equal(a, b)
    _, (_, yte3) = data.load_digits(seed=1)
    assert not np.array_equal(yte, yte3)
    (x64, _), (xs, ys) = data.load_digits(test_size=0.5, seed=np.random.default_rng(5), dtype=np.float64)
    assert x64.dtype == np.float64 and xs.shape == (898, 64) and x64.shape == (899, 64)


@pytest.mark.parametrize("kw, exc, message", [
    (dict(test_size=0.0), ValueError, r"test_size must be in \(0, 1\); received 0.0"),
    (dict(test_size=1), ValueError, r"test_size must be in \(0, 1\); received 1.0"),
    (dict(test_size="0.2"), TypeError, "test_size must be a real number"),
    (dict(seed=1.5), TypeError, "seed must be None, an int seed or a numpy.random.Generator; received float 1.5"),
    (dict(dtype=np.uint8), ValueError, "dtype must be a floating dtype"),
])
def test_digits_bad_arguments(kw, exc, message):
    with pytest.raises(exc, match=message):
        data.load_digits(**kw)


def test_digits_without_sklearn(monkeypatch):
    for name in [m for m in sys.modules if m == "sklearn" or m.startswith("sklearn.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "sklearn", None)  # import sklearn raises ImportError
    with pytest.raises(ImportError, match=r'pip install "fusedtrain\[examples\]"'):
        data.load_digits()


# ---------------------------------------------------------------------------
# batches
# ---------------------------------------------------------------------------
def make_xy(n=103, d=3):
    x = np.arange(n * d, dtype=np.float32).reshape(n, d)
    y = np.arange(n, dtype=np.int64)  # y is the row index
    return x, y


@pytest.mark.parametrize("n, bs", [(103, 10), (100, 10), (5, 7), (1, 1), (0, 4)])
@pytest.mark.parametrize("shuffle", [False, True])
def test_batches_cover_every_sample_once(n, bs, shuffle):
    x, y = make_xy(n)
    got = list(data.batches(x, y, bs, shuffle=shuffle, rng=0))
    assert [len(yb) for _, yb in got] == [min(bs, n - i) for i in range(0, n, bs)]
    seen = np.concatenate([yb for _, yb in got]) if got else np.zeros(0, np.int64)
    np.testing.assert_array_equal(np.sort(seen), np.arange(n))
    for xb, yb in got:
        np.testing.assert_array_equal(xb, x[yb])  # rows and labels stay paired
    if not shuffle:
        np.testing.assert_array_equal(seen, np.arange(n))
        if got:
            assert np.shares_memory(got[0][0], x)  # views
    elif n > 10:
        assert not np.array_equal(seen, np.arange(n))


def test_batches_drop_last():
    x, y = make_xy(103)
    got = list(data.batches(x, y, 10, rng=1, drop_last=True))
    assert len(got) == 10 and all(len(yb) == 10 for _, yb in got)
    seen = np.concatenate([yb for _, yb in got])
    assert len(np.unique(seen)) == 100
    # the dropped samples are the tail of the same permutation
    full = np.concatenate([yb for _, yb in data.batches(x, y, 10, rng=1)])
    np.testing.assert_array_equal(seen, full[:100])
    assert list(data.batches(x, y, 200, drop_last=True)) == []
    assert len(list(data.batches(x, y, 103, shuffle=False, drop_last=True))) == 1


def test_batches_reproducible_by_seed():
    x, y = make_xy()
    order = lambda **kw: np.concatenate([yb for _, yb in data.batches(x, y, 16, **kw)])
    np.testing.assert_array_equal(order(rng=7), order(rng=7))
    np.testing.assert_array_equal(order(rng=7), order(rng=np.random.default_rng(7)))
    np.testing.assert_array_equal(order(rng=7), np.random.default_rng(7).permutation(103))
    assert not np.array_equal(order(rng=7), order(rng=8))
    # one Generator across epochs: a new order each epoch, the same sequence of orders
    g1, g2 = np.random.default_rng(3), np.random.default_rng(3)
    e1, e2 = order(rng=g1), order(rng=g1)
    assert not np.array_equal(e1, e2)
    np.testing.assert_array_equal(e1, order(rng=g2))
    np.testing.assert_array_equal(e2, order(rng=g2))


def test_batches_without_y():
    x, _ = make_xy(9)
    got = list(data.batches(x, None, 4, shuffle=False))
    assert [yb for _, yb in got] == [None, None, None]
    np.testing.assert_array_equal(np.concatenate([xb for xb, _ in got]), x)


@pytest.mark.parametrize("kw, exc, message", [
    (dict(batch_size=0), ValueError, "batch_size must be an int >= 1; received 0"),
    (dict(batch_size=-3), ValueError, "batch_size must be an int >= 1; received -3"),
    (dict(batch_size=2.0), TypeError, "batch_size must be an int >= 1; received float 2.0"),
    (dict(batch_size=True), TypeError, "batch_size must be an int >= 1; received bool True"),
    (dict(batch_size=4, rng="seed"), TypeError, "rng must be None, an int seed or a numpy.random.Generator"),
    (dict(batch_size=4, rng=-1), ValueError, "rng must be a seed >= 0; received -1"),
    (dict(batch_size=4, shuffle=None), TypeError, "shuffle must be a bool; received NoneType None"),
    (dict(batch_size=4, drop_last="no"), TypeError, "drop_last must be a bool; received str 'no'"),
])
def test_batches_bad_arguments(kw, exc, message):
    x, y = make_xy(10)
    with pytest.raises(exc, match=message):
        data.batches(x, y, **kw)  # raises at the call, before any next()


def test_batches_length_mismatch():
    x, y = make_xy(10)
    with pytest.raises(ValueError, match="x and y must have the same number of samples; received 10 and 9"):
        data.batches(x, y[:9], 4)
    with pytest.raises(TypeError, match="x must be an array with one row per sample"):
        data.batches([1, 2, 3], None, 4)


# ---------------------------------------------------------------------------
# train_val_split
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("n, split, n_val", [(100, 0.2, 20), (103, 0.1, 10), (10, 0.01, 1), (10, 0.99, 9), (2, 0.5, 1)])
def test_train_val_split(n, split, n_val):
    x, y = make_xy(n)
    (xt, yt), (xv, yv) = data.train_val_split(x, y, split, seed=4)
    assert len(yv) == n_val and len(yt) == n - n_val
    np.testing.assert_array_equal(np.sort(np.concatenate([yt, yv])), np.arange(n))
    np.testing.assert_array_equal(xt, x[yt])
    np.testing.assert_array_equal(xv, x[yv])
    (xt2, yt2), (xv2, yv2) = data.train_val_split(x, y, split, seed=4)
    np.testing.assert_array_equal(yv, yv2)
    np.testing.assert_array_equal(xt, xt2)


def test_train_val_split_seeds_differ():
    x, y = make_xy(200)
    a = data.train_val_split(x, y, 0.25, seed=0)[1][1]
    b = data.train_val_split(x, y, 0.25, seed=1)[1][1]
    assert not np.array_equal(a, b)


@pytest.mark.parametrize("args, exc, message", [
    ((0.0,), ValueError, r"validation_split must be in \(0, 1\); received 0.0"),
    ((1.0,), ValueError, r"validation_split must be in \(0, 1\); received 1.0"),
    ((-0.2,), ValueError, r"validation_split must be in \(0, 1\); received -0.2"),
    ((None,), TypeError, "validation_split must be a real number; received NoneType"),
    ((0.2, "x"), TypeError, "seed must be None, an int seed or a numpy.random.Generator"),
])
def test_train_val_split_bad_arguments(args, exc, message):
    x, y = make_xy(10)
    with pytest.raises(exc, match=message):
        data.train_val_split(x, y, *args)


def test_train_val_split_shape_checks():
    x, y = make_xy(10)
    with pytest.raises(ValueError, match="x and y must have the same number of samples; received 10 and 8"):
        data.train_val_split(x, y[:8], 0.2)
    with pytest.raises(TypeError, match="y must be an array with one row per sample; received None"):
        data.train_val_split(x, None, 0.2)
    with pytest.raises(ValueError, match="validation_split needs at least 2 samples to split; received 1"):
        data.train_val_split(x[:1], y[:1], 0.5)
