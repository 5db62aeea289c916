"""Layers over the fused kernels.

A layer declares its parameters (name, shape, initialiser); the model that
holds it allocates every parameter of every layer in one flat array and
every gradient in another, and hands each layer views into them. Forward
keeps what backward needs; backward writes the parameter gradients straight
into the gradient views (no copies) and returns the gradient of its input.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from .. import _validate as V
from .. import ops
from .._ops_dense import _act_kwargs, activation_code
from . import init as _init
from ._buffers import _Rows

if TYPE_CHECKING:  # the types of the public signatures (never evaluated at run time)
    from collections.abc import Callable
    from typing import Any

    from numpy.typing import NDArray

__all__ = ["Layer", "Dense", "Dropout", "BatchNorm", "LayerNorm", "ACTIVATIONS"]

#: the activations of :class:`Dense` (None means "linear", as "identity")
ACTIVATIONS = ("linear", "identity", "relu", "leaky_relu", "sigmoid", "tanh", "gelu", "softmax")


class Layer:
    """Base class: no parameters, identity forward/backward.

    ``layer.trainable`` is always True: freezing a layer is not supported
    (setting it False raises). fit steps the whole parameter arena with one
    optimizer, and a frozen layer's parameters would still move under
    momentum and weight decay unless the optimizer were built over the
    other layers alone, which a checkpoint (an optimizer over every
    parameter of the model) cannot hold. To keep some layers fixed, compute
    their outputs once and fit a model of the remaining layers on them.
    """

    @property
    def trainable(self) -> bool:
        return True

    @trainable.setter
    def trainable(self, value):
        if value is True or value is False:
            if value:
                return
            raise ValueError(
                f"{type(self).__name__}.trainable = False is not supported: fit steps every "
                "parameter of the model with one optimizer, so a frozen layer would still move "
                "(momentum, weight decay). To keep layers fixed, compute their outputs once "
                "(predict with a model of those layers) and fit a model of the remaining "
                "layers on them")
        raise TypeError(f"trainable must be a bool; received {type(value).__name__} {value!r}")

    #: (name, shape) of each parameter, set by subclasses
    def param_specs(self) -> list:
        return []

    def initialize(self, name: str, shape: tuple, rng, dtype) -> np.ndarray:
        raise NotImplementedError

    def bind(self, name: str, param: np.ndarray, grad: np.ndarray) -> None:
        setattr(self, name, param)
        setattr(self, "grad_" + name, grad)

    #: (name, shape, initial value) of each buffer: state that is not a
    #: parameter (not stepped, outside the arena) but is part of the model
    #: (BatchNorm's running statistics); the model allocates them in its
    #: dtype, binds them as attributes and checkpoints them
    def buffer_specs(self) -> list:
        return []

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

    ``activation``: one of :data:`ACTIVATIONS` -- None, "linear" and
    "identity" are the same (no activation) -- with keyword arguments such
    as ``negative_slope`` (leaky_relu) or ``approximate`` (gelu) passed
    through. A last layer with "softmax" (or "sigmoid") outputs
    probabilities and needs a loss with ``from_logits=False`` (see
    :mod:`fusedtrain.nn.losses`); without an activation it outputs logits.
    ``init``: an initialiser name of :mod:`fusedtrain.nn.init` or a
    callable ``f(shape, rng, dtype)``; by default he_uniform for the ReLU
    family and xavier_uniform otherwise. Biases start at zero; ``bias=False``
    (or Keras's spelling ``use_bias=False``) leaves the bias out.
    """

    def __init__(self, in_features: int, out_features: int, activation: str | None = "identity",
                 init: str | Callable[..., NDArray[Any]] | None = None, bias: bool = True,
                 use_bias: bool | None = None, **act_kwargs: Any) -> None:
        self.in_features = V.integer("in_features", in_features, 1)
        self.out_features = V.integer("out_features", out_features, 1)
        if activation is None:
            activation = "linear"
        if not isinstance(activation, str) or activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {', '.join(map(repr, ACTIVATIONS))} or "
                             f"None (linear); received {activation!r}")
        activation_code(activation, **act_kwargs)  # validates the keyword arguments
        self.activation = activation
        self.act_kwargs = dict(act_kwargs)
        if init is None:
            init = "he_uniform" if activation in ("relu", "leaky_relu") else "xavier_uniform"
        self._init = _init.get(init)
        self.init = init if isinstance(init, str) else getattr(init, "__name__", "custom")
        if use_bias is not None:
            use_bias = V.flag("use_bias", use_bias)
            if bias is not True and V.flag("bias", bias) != use_bias:
                raise ValueError(f"bias={bias!r} and use_bias={use_bias!r} disagree: pass one")
            bias = use_bias
        self.use_bias = V.flag("bias", bias)
        self._bufs = _Rows()  # output, dx, dz workspace
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
        out = self._bufs.get("out", x.shape[0], (self.out_features,), self.weight.dtype)
        y, saved = ops.dense_forward(x, self.weight, self.bias, self.activation, out=out,
                                     **self.act_kwargs)
        self._x, self._saved = x, saved
        return y

    def backward(self, dy, need_dx=True, accumulate=False):
        n, dt = dy.shape[0], self.weight.dtype
        dx_out = self._bufs.get("dx", n, (self.in_features,), dt) if need_dx else None
        workspace = None
        if self.activation not in ("identity", "linear"):
            workspace = self._bufs.get("dz", n, (self.out_features,), dt)
        dx, _, _ = ops.dense_backward(dy, self._x, self.weight, self._saved, self.activation,
                                      need_dx=need_dx, dw_out=self.grad_weight,
                                      db_out=self.grad_bias, accumulate=accumulate,
                                      dx_out=dx_out, workspace=workspace, **self.act_kwargs)
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

    def __init__(self, p: float = 0.5) -> None:
        self.p = V.in_range("p", p, 0.0, 1.0, False)
        self.seed = 0
        self.offset = 0
        self._mask = None
        self._bufs = _Rows()  # y, mask, dx

    def forward(self, x, training):
        if not training or self.p == 0.0:
            self._mask = None
            return x
        n, tail = x.shape[0], x.shape[1:]
        y, self._mask = ops.dropout(x, self.p, self.seed, self.offset,
                                    out=self._bufs.get("y", n, tail, x.dtype),
                                    mask_out=self._bufs.get("mask", n, tail, np.dtype(bool)))
        self._dx = self._bufs.get("dx", n, tail, x.dtype)
        self.offset += 1
        return y

    def backward(self, dy, need_dx=True, accumulate=False):
        if self._mask is None:
            return dy
        return ops.dropout_backward(dy, self._mask, self.p, out=self._dx)

    def config(self):
        return {"p": self.p}


def _norm_input(layer, x):
    if x.ndim != 2 or x.shape[1] != layer.num_features:
        raise ValueError(f"{layer!r}: expected input of shape (batch, {layer.num_features}), "
                         f"received {x.shape}")


class BatchNorm(Layer):
    """Batch normalisation over the batch axis of (B, C) inputs, as
    ``torch.nn.BatchNorm1d``, with an activation fused after it:
    y = act((x - mean) / sqrt(var + eps) * weight + bias).

    In training (fit) mean and var are the batch's (var biased), and the
    running statistics are updated in place:
    ``running = (1 - momentum) * running + momentum * batch`` (the running
    variance takes the unbiased batch variance; a batch whose statistics
    are not finite leaves them as they were). In inference (evaluate,
    predict) the running statistics are used and left alone. ``weight``
    (init 1) and ``bias`` (init 0) are parameters (``affine=False``: none);
    ``running_mean`` (init 0) and ``running_var`` (init 1) are buffers,
    saved in checkpoints. ``activation``: one of :data:`ACTIVATIONS` but
    softmax, with keyword arguments as :class:`Dense`'s (None, "linear" and
    "identity": none). Defaults: momentum=0.1, eps=1e-5 (torch's). Backward
    follows a training forward (through the batch statistics); after an
    inference forward it raises. Ioffe & Szegedy, 2015.
    """

    def __init__(self, num_features: int, momentum: float = 0.1, eps: float = 1e-5,
                 affine: bool = True, activation: str | None = "identity",
                 **act_kwargs: Any) -> None:
        self.num_features = V.integer("num_features", num_features, 1)
        self.momentum = V.in_range("momentum", momentum, 0.0, 1.0, True)
        self.eps = V.positive("eps", eps)
        self.affine = V.flag("affine", affine)
        if activation is None:
            activation = "linear"
        allowed = [a for a in ACTIVATIONS if a != "softmax"]
        if not isinstance(activation, str) or activation not in allowed:
            raise ValueError(f"activation must be one of {', '.join(map(repr, allowed))} or None "
                             f"(linear); received {activation!r}")
        _act_kwargs(activation, act_kwargs)  # the keyword arguments: those it takes, valid
        self.activation = activation
        self.act_kwargs = dict(act_kwargs)
        self.weight = self.bias = self.grad_weight = self.grad_bias = None
        self.running_mean = self.running_var = None
        self._pending = None  # scratch running statistics of a training forward
        self._training = False
        self._bufs = _Rows()  # output, dx
        self._x = self._saved = None

    def param_specs(self):
        c = (self.num_features,)
        return [("weight", c), ("bias", c)] if self.affine else []

    def initialize(self, name, shape, rng, dtype):
        return (np.ones if name == "weight" else np.zeros)(shape, dtype=dtype)

    def buffer_specs(self):
        c = (self.num_features,)
        return [("running_mean", c, 0.0), ("running_var", c, 1.0)]

    def _act(self):
        return "identity" if self.activation == "linear" else self.activation

    def forward(self, x, training):
        _norm_input(self, x)
        if training and x.shape[0] < 2:
            raise ValueError(f"{self!r}: expected more than 1 sample per batch in training (the "
                             f"batch variance of 1 sample is 0); received a batch of shape "
                             f"{x.shape}")
        out = self._bufs.get("out", x.shape[0], (self.num_features,), self.running_mean.dtype)
        rm, rv = self.running_mean, self.running_var
        if training:
            # the kernel updates copies; they replace the running statistics
            # only when finite, so that a batch holding inf / NaN (a step fit
            # refuses or skips) leaves them as they were
            if self._pending is None or self._pending[0].dtype != rm.dtype:
                self._pending = (np.empty_like(rm), np.empty_like(rv))
            rm, rv = self._pending
            np.copyto(rm, self.running_mean)
            np.copyto(rv, self.running_var)
        y, saved = ops.batch_norm_forward(x, self.weight, self.bias, rm, rv,
                                          training=bool(training), momentum=self.momentum,
                                          eps=self.eps, activation=self._act(), out=out,
                                          **self.act_kwargs)
        if training and np.isfinite(rm).all() and np.isfinite(rv).all():
            np.copyto(self.running_mean, rm)
            np.copyto(self.running_var, rv)
        self._x, self._saved, self._training = x, saved, bool(training)
        return y

    def backward(self, dy, need_dx=True, accumulate=False):
        if not self._training:
            raise ValueError(f"{self!r}: backward follows a forward in training mode "
                             "(training=True); the last forward was in inference mode")
        dx_out = self._bufs.get("dx", dy.shape[0], (self.num_features,), dy.dtype)
        dx, _, _ = ops.batch_norm_backward(dy, self._x, self._saved, self.weight,
                                           activation=self._act(), dx_out=dx_out,
                                           dweight_out=self.grad_weight,
                                           dbias_out=self.grad_bias, accumulate=accumulate,
                                           **self.act_kwargs)
        return dx

    def config(self):
        cfg = {"num_features": self.num_features, "momentum": self.momentum, "eps": self.eps,
               "affine": self.affine, "activation": self.activation}
        cfg.update(self.act_kwargs)
        return cfg


class LayerNorm(Layer):
    """Layer normalisation over the features of (B, C) inputs, as
    ``torch.nn.LayerNorm(C)``: y = (x - mean) / sqrt(var + eps) * weight +
    bias, mean and (biased) var of each row; the same in training and
    inference. ``weight`` (init 1) and ``bias`` (init 0) are parameters
    (``elementwise_affine=False``: none). Default eps=1e-5. Ba, Kiros &
    Hinton, 2016.
    """

    def __init__(self, num_features: int, eps: float = 1e-5,
                 elementwise_affine: bool = True) -> None:
        self.num_features = V.integer("num_features", num_features, 1)
        self.eps = V.positive("eps", eps)
        self.elementwise_affine = V.flag("elementwise_affine", elementwise_affine)
        self.weight = self.bias = self.grad_weight = self.grad_bias = None
        self._bufs = _Rows()  # output, dx
        self._x = self._saved = None

    def param_specs(self):
        c = (self.num_features,)
        return [("weight", c), ("bias", c)] if self.elementwise_affine else []

    def initialize(self, name, shape, rng, dtype):
        return (np.ones if name == "weight" else np.zeros)(shape, dtype=dtype)

    def forward(self, x, training):
        _norm_input(self, x)
        out = self._bufs.get("out", x.shape[0], (self.num_features,), x.dtype)
        y, saved = ops.layer_norm_forward(x, self.weight, self.bias, eps=self.eps, out=out)
        self._x, self._saved = x, saved
        return y

    def backward(self, dy, need_dx=True, accumulate=False):
        dx_out = self._bufs.get("dx", dy.shape[0], (self.num_features,), dy.dtype)
        dx, _, _ = ops.layer_norm_backward(dy, self._x, self._saved, self.weight, dx_out=dx_out,
                                           dweight_out=self.grad_weight,
                                           dbias_out=self.grad_bias, accumulate=accumulate)
        return dx

    def config(self):
        return {"num_features": self.num_features, "eps": self.eps,
                "elementwise_affine": self.elementwise_affine}
