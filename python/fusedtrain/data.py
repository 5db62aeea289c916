"""Small datasets and mini-batching for the training loop.

- :func:`load_digits`: scikit-learn's bundled 8x8 digits (no download).
- :func:`load_mnist`: MNIST from files already on disk (IDX or ``mnist.npz``);
  this module never downloads anything.
- :func:`batches`: one epoch of (optionally shuffled) mini-batches.
- :func:`train_val_split`: a seeded random hold-out split.

Random choices take ``rng``/``seed`` as ``None`` (fresh OS entropy), an int
seed, or a ``numpy.random.Generator`` (used, and advanced, as it is).
"""

from __future__ import annotations

import gzip
import math
import numbers
import os
import struct
import zlib

import numpy as np

from . import _archive, _validate

__all__ = ["load_digits", "load_mnist", "batches", "train_val_split", "MNIST_FILES"]


# ---------------------------------------------------------------------------
# argument checks
# ---------------------------------------------------------------------------
def _generator(name: str, rng) -> np.random.Generator:
    if isinstance(rng, np.random.Generator):
        return rng
    if rng is None:
        return np.random.default_rng()
    if isinstance(rng, bool) or not isinstance(rng, numbers.Integral):
        raise TypeError(f"{name} must be None, an int seed or a numpy.random.Generator; "
                        f"received {type(rng).__name__} {rng!r:.80}")
    if rng < 0:
        raise ValueError(f"{name} must be a seed >= 0; received {rng}")
    return np.random.default_rng(int(rng))


def _float_dtype(dtype) -> np.dtype:
    try:
        dt = np.dtype(dtype)
    except TypeError:
        raise TypeError(f"dtype must be a NumPy floating dtype; received {dtype!r}") from None
    if dt.kind != "f":
        raise ValueError(f"dtype must be a floating dtype (float32 or float64); received {dt}")
    return dt


def _fraction(name: str, value) -> float:
    v = _validate.real(name, value)
    if not 0.0 < v < 1.0:
        raise ValueError(f"{name} must be in (0, 1); received {v!r}")
    return v


def _num_samples(x, y) -> int:
    for name, a in (("x", x), ("y", y)):
        if a is not None and (not hasattr(a, "shape") or len(a.shape) == 0):
            raise TypeError(f"{name} must be an array with one row per sample; "
                            f"received {type(a).__name__} {a!r:.80}")
    n = x.shape[0]
    if y is not None and y.shape[0] != n:
        raise ValueError(f"x and y must have the same number of samples; received {n} and {y.shape[0]}")
    return n


def _split_size(fraction: float, n: int, name: str) -> int:
    """round(fraction * n) clipped to [1, n - 1], so both parts are non-empty."""
    if n < 2:
        raise ValueError(f"{name} needs at least 2 samples to split; received {n}")
    return min(max(1, round(fraction * n)), n - 1)


# ---------------------------------------------------------------------------
# digits
# ---------------------------------------------------------------------------
def _stratified_test_indices(y: np.ndarray, n_test: int, rng: np.random.Generator) -> np.ndarray:
    """``n_test`` indices, each class represented in proportion to its size.

    Class ``c`` of ``n_c`` samples gives ``floor(n_test * n_c / n)`` test
    samples; the remaining ones go to the classes with the largest remainders
    (ties to the lower class). The samples within each class are drawn at
    random.
    """
    classes, counts = np.unique(y, return_counts=True)
    exact = n_test * counts / y.shape[0]
    take = np.floor(exact).astype(np.int64)
    short = n_test - int(take.sum())
    take[np.argsort(-(exact - take), kind="stable")[:short]] += 1
    picked = []
    for c, k in zip(classes, take):  # one pass per class, not per sample
        members = np.flatnonzero(y == c)
        picked.append(rng.permutation(members)[:k])
    return np.concatenate(picked)


def load_digits(test_size: float = 0.2, seed=0, dtype=np.float32):
    """scikit-learn's handwritten digits: 1797 samples of 8x8 pixels.

    Returns ``(x_train, y_train), (x_test, y_test)``; ``x`` is (n, 64) of
    ``dtype`` in [0, 1] (the 0..16 pixel counts divided by 16), ``y`` is
    int64 in 0..9.

    The split is stratified: ``round(test_size * 1797)`` test samples (359
    for the default 0.2; scikit-learn's ``train_test_split`` rounds up, to
    360), each digit in proportion to its count, drawn with a
    Generator seeded by ``seed`` (an int, ``None`` or a Generator); both parts
    are in random order. The same seed gives the same split.

    Needs scikit-learn (which ships the data): ``pip install "fusedtrain[examples]"``.
    """
    test_size = _fraction("test_size", test_size)
    rng = _generator("seed", seed)
    dt = _float_dtype(dtype)
    try:
        from sklearn.datasets import load_digits as _sk_load_digits
    except ImportError as e:
        raise ImportError(
            'load_digits needs scikit-learn, which ships the digits data: pip install "fusedtrain[examples]" '
            '(or pip install scikit-learn)'
        ) from e
    x, y = _sk_load_digits(return_X_y=True)
    x = (np.asarray(x, dtype=np.float64) / 16.0).astype(dt)  # / 16 is exact
    y = np.asarray(y, dtype=np.int64)
    n = y.shape[0]
    n_test = _split_size(test_size, n, "test_size")
    test = _stratified_test_indices(y, n_test, rng)
    is_test = np.zeros(n, dtype=bool)
    is_test[test] = True
    test = rng.permutation(test)
    train = rng.permutation(np.flatnonzero(~is_test))
    return (x[train], y[train]), (x[test], y[test])


# ---------------------------------------------------------------------------
# MNIST
# ---------------------------------------------------------------------------
#: the standard IDX file names (each may also be gzipped, with ".gz" added)
MNIST_FILES = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}
_IDX_MAGIC = {3: 0x00000803, 1: 0x00000801}  # unsigned bytes, 3 or 1 dimensions
_IDX_TYPES = {0x08: "unsigned bytes", 0x09: "signed bytes", 0x0B: "int16", 0x0C: "int32",
              0x0D: "float32", 0x0E: "float64"}
_CHUNK = 2**20


def _read_upto(f, n: int) -> bytearray:
    """At most ``n`` bytes from ``f`` (fewer at the end of the data), read
    in pieces: nothing past ``n`` is decompressed or held, and nothing is
    allocated for bytes that are not there."""
    out = bytearray()
    while len(out) < n:
        piece = f.read(min(_CHUNK, n - len(out)))
        if not piece:
            break
        out += piece
    return out


def _read_idx(path: str, ndim: int) -> np.ndarray:
    """An IDX file of unsigned bytes with ``ndim`` dimensions, raw or
    gzipped (``.gz``), checked: the magic number, the dimensions (big-endian
    uint32) and the exact data length.

    The data is read only as far as the dimensions say, plus one byte to
    find out whether the file goes on: a small ``.gz`` that would inflate to
    far more than its header declares is refused without inflating it, and
    a raw file's length is checked before its data is read. Every problem,
    a damaged gzip stream (CRC, truncation) included, raises ValueError
    naming the file.
    """
    want = _IDX_MAGIC[ndim]
    head = 4 + 4 * ndim
    gz = path.endswith(".gz")
    try:
        with (gzip.open(path, "rb") if gz else open(path, "rb")) as f:
            raw = _read_upto(f, head)
            magic = int.from_bytes(raw[:4], "big") if len(raw) >= 4 else None
            if magic is not None and magic != want:
                code = (magic >> 8) & 0xFF
                kind = _IDX_TYPES.get(code, "an unknown type") if magic >> 16 == 0 else "not an IDX file"
                raise ValueError(
                    f"{path}: IDX magic number must be 0x{want:08x} (unsigned bytes, {ndim} dimension"
                    f"{'s' if ndim > 1 else ''}); received 0x{magic:08x} ({kind}, {magic & 0xFF} "
                    f"dimension{'s' if magic & 0xFF != 1 else ''})"
                )
            if len(raw) < head:
                raise ValueError(f"{path}: IDX header must be {head} bytes; received a {len(raw)}-byte file")
            dims = struct.unpack(f">{ndim}I", raw[4:head])
            size = math.prod(dims)  # a Python int: no overflow
            if gz:
                data = _read_upto(f, size + 1)
            else:  # the length is known: check it, then read straight into the array
                body = os.fstat(f.fileno()).st_size - head
                if body != size:
                    raise ValueError(f"{path}: IDX dimensions {dims} need {size} data bytes; received {body}")
                data = np.empty(size, dtype=np.uint8)
                got = f.readinto(memoryview(data))
                data = data[:got or 0]  # shorter only if the file shrank meanwhile
    except (gzip.BadGzipFile, EOFError, zlib.error) as e:
        raise ValueError(f"{path}: not a valid gzip file ({e})") from e
    if len(data) != size:
        received = "more (the data goes on past them)" if len(data) > size else str(len(data))
        raise ValueError(f"{path}: IDX dimensions {dims} need {size} data bytes; received {received}")
    return np.frombuffer(data, dtype=np.uint8).reshape(dims)


def _find(directory: str, name: str):
    for candidate in (name, name + ".gz"):
        p = os.path.join(directory, candidate)
        if os.path.isfile(p):
            return p
    return None


def _load_npz(path: str) -> dict:
    """The four arrays of an MNIST ``.npz``, through the checked archive
    reader: a damaged file, a crafted header (a huge or overflowing shape,
    an object dtype) or a missing array raises ValueError naming the file;
    other members are not read."""
    with _archive.Reader(path) as r:
        missing = [k for k in MNIST_FILES if k not in r]
        if missing:
            raise ValueError(f"{path}: must hold the arrays {list(MNIST_FILES)}; missing {missing}")
        return {k: r.array(k) for k in MNIST_FILES}


def _check_split(split: str, x: np.ndarray, y: np.ndarray, x_src: str, y_src: str) -> None:
    """One split's images and labels, each problem a ValueError naming the
    file(s) it is in."""
    both = x_src if x_src == y_src else f"{x_src} and {y_src}"
    if x.dtype != np.uint8:
        raise ValueError(f"{x_src}: x_{split} must be uint8 pixels; received {x.dtype}")
    if y.dtype.kind not in "iu":
        raise ValueError(f"{y_src}: y_{split} must be integer labels; received {y.dtype}")
    if x.ndim not in (2, 3):
        raise ValueError(f"{x_src}: x_{split} must be (n, rows, cols) or (n, pixels); received shape {x.shape}")
    if y.ndim != 1:
        raise ValueError(f"{y_src}: y_{split} must be (n,); received shape {y.shape}")
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"{both}: x_{split} has {x.shape[0]} images but y_{split} has {y.shape[0]} labels")
    if x.shape[0] == 0:
        raise ValueError(f"{x_src}: x_{split} has no images")
    if math.prod(x.shape[1:]) == 0:
        raise ValueError(f"{x_src}: x_{split} images have no pixels; received shape {x.shape}")
    lo, hi = int(y.min()), int(y.max())
    if lo < 0 or hi > _MAX_LABEL:
        raise ValueError(f"{y_src}: y_{split} labels must be class indices in [0, {_MAX_LABEL}]; "
                         f"received labels from {lo} to {hi}")


_MAX_LABEL = 255  # what an IDX label byte holds


def load_mnist(path, dtype=np.float32):
    """MNIST from local files; nothing is downloaded.

    ``path`` is a directory holding either the four IDX files of
    :data:`MNIST_FILES` (each raw or gzipped with ``.gz``; used when all four
    are there) or a Keras-style ``mnist.npz`` (arrays ``x_train``,
    ``y_train``, ``x_test``, ``y_test``) — or the path of such a ``.npz``
    file itself.

    Returns ``(x_train, y_train), (x_test, y_test)``: ``x`` is (n, rows *
    cols) = (n, 784) of ``dtype``, the uint8 pixels divided by 255 into
    [0, 1]; ``y`` is int64.

    Raises FileNotFoundError naming the files looked for when they are not
    there, and ValueError naming the file for a corrupt or inconsistent one:
    IDX magic number (type code, number of dimensions), dimensions and data
    length (read no further than the dimensions say, so a gzip bomb is not
    inflated), a damaged gzip stream or ``.npz`` archive (see
    ``fusedtrain._archive``), pixel and label dtypes and shapes, image and
    label counts, no images or no pixels, labels outside [0, 255], train and
    test images of different sizes.
    """
    dt = _float_dtype(dtype)
    path = _archive._path(path)
    if os.path.isfile(path):
        arrays = _load_npz(path)
        sources = dict.fromkeys(MNIST_FILES, path)
    elif os.path.isdir(path):
        found = {k: _find(path, name) for k, name in MNIST_FILES.items()}
        npz = os.path.join(path, "mnist.npz")
        if all(found.values()):
            arrays = {k: _read_idx(p, 3 if k.startswith("x") else 1) for k, p in found.items()}
            sources = found
        elif os.path.isfile(npz):
            arrays = _load_npz(npz)
            sources = dict.fromkeys(MNIST_FILES, npz)
        else:
            missing = [f"{MNIST_FILES[k]}[.gz]" for k, p in found.items() if p is None]
            raise FileNotFoundError(
                f"MNIST not found in {path}: looked for the IDX files {missing} "
                f"(all four of {list(MNIST_FILES.values())} are needed) or mnist.npz; "
                "fusedtrain does not download data"
            )
    else:
        raise FileNotFoundError(
            f"MNIST path {path} does not exist: expected a directory with the IDX files "
            f"{list(MNIST_FILES.values())} (or .gz) or mnist.npz, or the path of a .npz file"
        )

    for split in ("train", "test"):
        _check_split(split, arrays[f"x_{split}"], arrays[f"y_{split}"],
                     sources[f"x_{split}"], sources[f"y_{split}"])
    xs = {split: arrays[f"x_{split}"] for split in ("train", "test")}
    pixels = {split: math.prod(x.shape[1:]) for split, x in xs.items()}
    if pixels["train"] != pixels["test"]:
        where = sorted({sources["x_train"], sources["x_test"]})
        raise ValueError(f"{' and '.join(where)}: train and test images differ in size; received "
                         f"{pixels['train']} and {pixels['test']} pixels")
    out = []
    for split in ("train", "test"):
        x = xs[split]
        x = x.reshape(x.shape[0], pixels[split]).astype(dt) / dt.type(255)
        out.append((x, arrays[f"y_{split}"].astype(np.int64)))
    return out[0], out[1]


# ---------------------------------------------------------------------------
# batching and splitting
# ---------------------------------------------------------------------------
def batches(x, y, batch_size: int, shuffle: bool = True, rng=None, drop_last: bool = False):
    """One epoch of mini-batches ``(xb, yb)`` of ``batch_size`` rows (the
    last one smaller unless ``drop_last``), covering every sample once.

    With ``shuffle`` the order is one ``rng.permutation(n)`` drawn at this
    call (``rng``: None, an int seed or a Generator, which advances, so
    passing the same Generator every epoch gives a new order each epoch);
    batches are then fancy-indexed copies. Without it they are slices
    (views) in order. ``y`` may be None (yields ``(xb, None)``).

    Arguments are checked here, not at the first ``next()``.
    """
    batch_size = _validate.integer("batch_size", batch_size, 1)
    shuffle = _validate.flag("shuffle", shuffle)
    drop_last = _validate.flag("drop_last", drop_last)
    n = _num_samples(x, y)
    order = _generator("rng", rng).permutation(n) if shuffle else None
    stop = n - n % batch_size if drop_last else n
    return _batches(x, y, batch_size, order, stop)


def _batches(x, y, batch_size, order, stop):
    for start in range(0, stop, batch_size):
        end = min(start + batch_size, stop)
        if order is None:
            yield x[start:end], (None if y is None else y[start:end])
        else:
            idx = order[start:end]
            yield x[idx], (None if y is None else y[idx])


def train_val_split(x, y, validation_split: float, seed=0):
    """A random hold-out split: ``(x_train, y_train), (x_val, y_val)``.

    ``round(validation_split * n)`` samples (clipped to [1, n - 1]) go to
    the validation part, chosen by a permutation from ``seed`` (None, an int
    or a Generator); both parts keep the permuted order. Not stratified: ``y``
    may be targets of any kind. ``validation_split`` must be in (0, 1).
    """
    validation_split = _fraction("validation_split", validation_split)
    if y is None:
        raise TypeError("y must be an array with one row per sample; received None")
    n = _num_samples(x, y)
    n_val = _split_size(validation_split, n, "validation_split")
    perm = _generator("seed", seed).permutation(n)
    val, train = perm[:n_val], perm[n_val:]
    return (x[train], y[train]), (x[val], y[val])
