"""Weight initialisers, seeded by a numpy Generator.

Each takes the shape (fan_in, fan_out) of a dense weight w (y = x @ w) — or
any shape whose first axis is fan_in and whose remaining axes multiply to
fan_out — and returns a new C-contiguous array of `dtype`.

- Glorot / Xavier (Glorot & Bengio, 2010): variance 2 / (fan_in + fan_out);
  uniform on [-a, a] with a = gain * sqrt(6 / (fan_in + fan_out)).
- He / Kaiming (He et al., 2015): variance 2 / fan_in (ReLU gain sqrt(2));
  uniform on [-a, a] with a = gain * sqrt(3 / fan_in), gain = sqrt(2).
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["xavier_uniform", "xavier_normal", "he_uniform", "he_normal", "zeros", "get",
           "INITIALIZERS"]


def _fans(shape) -> tuple[int, int]:
    shape = tuple(int(s) for s in shape)
    if len(shape) < 1 or any(s < 0 for s in shape):
        raise ValueError(f"shape must be a non-empty tuple of sizes >= 0; received {shape!r}")
    fan_in = shape[0]
    fan_out = int(np.prod(shape[1:])) if len(shape) > 1 else 1
    return fan_in, fan_out


def _rng(rng):
    if isinstance(rng, np.random.Generator):
        return rng
    if rng is None or isinstance(rng, (int, np.integer)):
        return np.random.default_rng(rng)
    raise TypeError(f"rng must be a numpy.random.Generator, an int seed or None; received {type(rng).__name__}")


def xavier_uniform(shape, rng=None, dtype=np.float32, gain=1.0):
    fan_in, fan_out = _fans(shape)
    a = gain * math.sqrt(6.0 / max(fan_in + fan_out, 1))
    return _rng(rng).uniform(-a, a, size=shape).astype(dtype)


def xavier_normal(shape, rng=None, dtype=np.float32, gain=1.0):
    fan_in, fan_out = _fans(shape)
    std = gain * math.sqrt(2.0 / max(fan_in + fan_out, 1))
    return (_rng(rng).standard_normal(size=shape) * std).astype(dtype)


def he_uniform(shape, rng=None, dtype=np.float32, gain=math.sqrt(2.0)):
    fan_in, _ = _fans(shape)
    a = gain * math.sqrt(3.0 / max(fan_in, 1))
    return _rng(rng).uniform(-a, a, size=shape).astype(dtype)


def he_normal(shape, rng=None, dtype=np.float32, gain=math.sqrt(2.0)):
    fan_in, _ = _fans(shape)
    std = gain / math.sqrt(max(fan_in, 1))
    return (_rng(rng).standard_normal(size=shape) * std).astype(dtype)


def zeros(shape, rng=None, dtype=np.float32):
    _fans(shape)
    return np.zeros(shape, dtype=dtype)


INITIALIZERS = {
    "xavier_uniform": xavier_uniform,
    "glorot_uniform": xavier_uniform,
    "xavier_normal": xavier_normal,
    "glorot_normal": xavier_normal,
    "he_uniform": he_uniform,
    "kaiming_uniform": he_uniform,
    "he_normal": he_normal,
    "kaiming_normal": he_normal,
    "zeros": zeros,
}


def get(name):
    """The initialiser called `name` (or `name` itself if callable)."""
    if callable(name):
        return name
    if name not in INITIALIZERS:
        raise ValueError(f"init must be one of {', '.join(map(repr, INITIALIZERS))}; received {name!r}")
    return INITIALIZERS[name]
