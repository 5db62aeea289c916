"""Layers over the fused kernels.

A layer declares its parameters (name, shape, initialiser); the model that
holds it allocates every parameter of every layer in one flat array and
every gradient in another, and hands each layer views into them. Forward
keeps what backward needs; backward writes the parameter gradients straight
into the gradient views (no copies) and returns the gradient of its input.
"""

from __future__ import annotations

import numbers

import numpy as np

from .. import ops
from .._ops_dense import activation_code
from . import init as _init

__all__ = ["Layer", "Dense", "Dropout"]


def _positive_int(name, value):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be an int >= 1; received {value!r}")
    return int(value)


class Layer:
    """Base class: no parameters, identity forward/backward."""

    #: (name, shape) of each parameter, set by subclasses
    def param_specs(self) -> list:
        return []

    def initialize(self, name: str, shape: tuple, rng, dtype) -> np.ndarray:
        raise NotImplementedError

    def bind(self, name: str, param: np.ndarray, grad: np.ndarray) -> None:
        setattr(self, name, param)
        setattr(self, "grad_" + name, grad)

    def forward(self, x, training: bool):
        return x

    def backward(self, dy, need_dx: bool = True, accumulate: bool = False):
        return dy

    def config(self) -> dict:
        """Constructor arguments, for checkpoints and repr."""
        return {}

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.config().items())
        return f"{type(self).__name__}({args})"


class Dense(Layer):
    """Fully connected layer y = act(x @ weight + bias), weight (in, out).

    ``activation``: identity, relu, leaky_relu, sigmoid, tanh, gelu, softmax
    (keyword arguments such as ``negative_slope`` or ``approximate`` pass
    through). ``init``: an initialiser name of :mod:`fusedtrain.nn.init` or a
    callable ``f(shape, rng, dtype)``; by default he_uniform for the ReLU
    family and xavier_uniform otherwise. Biases start at zero.
    """

    def __init__(self, in_features, out_features, activation="identity", init=None, bias=True,
                 **act_kwargs):
        self.in_features = _positive_int("in_features", in_features)
        self.out_features = _positive_int("out_features", out_features)
        activation_code(activation, **act_kwargs)  # validates name and kwargs
        self.activation = activation
        self.act_kwargs = dict(act_kwargs)
        if init is None:
            init = "he_uniform" if activation in ("relu", "leaky_relu") else "xavier_uniform"
        self._init = _init.get(init)
        self.init = init if isinstance(init, str) else getattr(init, "__name__", "custom")
        self.use_bias = bool(bias)
        self._out = {}  # batch size -> preallocated output
        self._back = {}  # batch size -> preallocated (dx, dz workspace)
        self._x = self._saved = None

    def param_specs(self):
        specs = [("weight", (self.in_features, self.out_features))]
        if self.use_bias:
            specs.append(("bias", (self.out_features,)))
        return specs

    def initialize(self, name, shape, rng, dtype):
        if name == "bias":
            return np.zeros(shape, dtype=dtype)
        return self._init(shape, rng=rng, dtype=dtype)

    def bind(self, name, param, grad):
        super().bind(name, param, grad)
        if not self.use_bias:
            self.bias = None
            self.grad_bias = np.zeros(self.out_features, dtype=param.dtype)  # db scratch

    def forward(self, x, training):
        if x.ndim != 2 or x.shape[1] != self.in_features:
            raise ValueError(f"{self!r}: expected input of shape (batch, {self.in_features}), "
                             f"received {x.shape}")
        out = self._out.get(x.shape[0])
        if out is None:
            out = self._out[x.shape[0]] = np.empty((x.shape[0], self.out_features),
                                                   dtype=self.weight.dtype)
        y, saved = ops.dense_forward(x, self.weight, self.bias, self.activation, out=out,
                                     **self.act_kwargs)
        self._x, self._saved = x, saved
        return y

    def backward(self, dy, need_dx=True, accumulate=False):
        n = dy.shape[0]
        bufs = self._back.get(n)
        if bufs is None:
            dt = self.weight.dtype
            bufs = self._back[n] = (np.empty((n, self.in_features), dt),
                                    np.empty((n, self.out_features), dt))
        dx, _, _ = ops.dense_backward(dy, self._x, self.weight, self._saved, self.activation,
                                      need_dx=need_dx, dw_out=self.grad_weight,
                                      db_out=self.grad_bias, accumulate=accumulate,
                                      dx_out=bufs[0] if need_dx else None,
                                      workspace=bufs[1] if self.activation not in ("identity", "linear") else None,
                                      **self.act_kwargs)
        return dx

    def config(self):
        cfg = {"in_features": self.in_features, "out_features": self.out_features,
               "activation": self.activation, "init": self.init, "bias": self.use_bias}
        cfg.update(self.act_kwargs)
        return cfg


class Dropout(Layer):
    """Inverted dropout: in training, zero each element with probability p and
    scale the rest by 1 / (1 - p); identity in inference.

    Masks come from the counter-based Philox generator: a call's mask depends
    only on (seed, offset, shape); the offset (the high half of the Philox
    counter) advances by one after every training call, and is part of a
    checkpoint.
    """

    def __init__(self, p=0.5):
        if isinstance(p, bool) or not isinstance(p, numbers.Real) or not 0.0 <= p < 1.0:
            raise ValueError(f"p must be in [0, 1); received {p!r}")
        self.p = float(p)
        self.seed = 0
        self.offset = 0
        self._mask = None
        self._bufs = {}  # shape -> preallocated (y, mask, dx)

    def forward(self, x, training):
        if not training or self.p == 0.0:
            self._mask = None
            return x
        bufs = self._bufs.get((x.shape, x.dtype))
        if bufs is None:
            bufs = self._bufs[(x.shape, x.dtype)] = (np.empty_like(x), np.empty(x.shape, bool),
                                                     np.empty_like(x))
        y, self._mask = ops.dropout(x, self.p, self.seed, self.offset, out=bufs[0],
                                    mask_out=bufs[1])
        self._dx = bufs[2]
        self.offset += 1
        return y

    def backward(self, dy, need_dx=True, accumulate=False):
        if self._mask is None:
            return dy
        return ops.dropout_backward(dy, self._mask, self.p, out=self._dx)

    def config(self):
        return {"p": self.p}
