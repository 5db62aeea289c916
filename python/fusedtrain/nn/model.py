"""Sequential model: layers over one parameter arena and one gradient arena."""

from __future__ import annotations

import numpy as np

from .layers import Dense, Dropout, Layer

__all__ = ["Sequential"]


class Sequential:
    """A stack of layers whose parameters live in one flat array.

    ``Sequential([Dense(784, 256, activation="relu"), Dropout(0.1),
    Dense(256, 10)])``. Every parameter is a view into ``param_arena`` and
    every gradient a view into ``grad_arena`` (same layout), so an optimizer
    given ``model.parameters()`` steps the whole model in one fused call.
    Parameters are initialised from ``seed`` (a numpy Generator).
    """

    def __init__(self, layers, dtype=np.float32, seed=0):
        layers = list(layers)
        if not layers:
            raise ValueError("layers: expected a non-empty list of layers, received an empty list")
        for i, layer in enumerate(layers):
            if not isinstance(layer, Layer):
                raise TypeError(f"layers[{i}]: expected a fusedtrain.nn layer, received {type(layer).__name__}")
        dtype = np.dtype(dtype)
        if dtype not in (np.float32, np.float64):
            raise TypeError(f"dtype must be float32 or float64; received {dtype}")
        width = None
        for i, layer in enumerate(layers):
            if isinstance(layer, Dense):
                if width is not None and layer.in_features != width:
                    raise ValueError(f"layers[{i}]: in_features={layer.in_features} does not match "
                                     f"the previous layer's output width {width}")
                width = layer.out_features
        self.layers = layers
        self.dtype = dtype
        self.seed = seed
        specs = [(layer, name, tuple(shape)) for layer in layers for name, shape in layer.param_specs()]
        sizes = [int(np.prod(shape)) for _, _, shape in specs]
        self.param_arena = np.empty(sum(sizes), dtype=dtype)
        self.grad_arena = np.zeros(sum(sizes), dtype=dtype)
        self._params, self._grads, self._names = [], [], []
        rng = np.random.default_rng(seed)
        offset = 0
        for (layer, name, shape), n in zip(specs, sizes):
            p = self.param_arena[offset:offset + n].reshape(shape)
            g = self.grad_arena[offset:offset + n].reshape(shape)
            p[...] = layer.initialize(name, shape, rng, dtype)
            layer.bind(name, p, g)
            self._params.append(p)
            self._grads.append(g)
            self._names.append(f"{layers.index(layer)}.{name}")
            offset += n
        for layer in layers:
            if isinstance(layer, Dropout):
                layer.seed = int(rng.integers(0, 2**63 - 1))
        self.optimizer = None
        self.history = None
        self.train_state = None  # set by fit: epoch, step, shuffle RNG state

    # ---------------------------------------------------------- parameters
    def parameters(self) -> list:
        """Per-layer parameter views (tiling ``param_arena``), in order."""
        return list(self._params)

    def gradients(self) -> list:
        """Per-layer gradient views (tiling ``grad_arena``), in the order of parameters()."""
        return list(self._grads)

    def named_parameters(self) -> list:
        return list(zip(self._names, self._params))

    @property
    def input_dim(self):
        first = next((l for l in self.layers if isinstance(l, Dense)), None)
        return first.in_features if first else None

    @property
    def output_dim(self):
        last = next((l for l in reversed(self.layers) if isinstance(l, Dense)), None)
        return last.out_features if last else None

    def zero_grad(self):
        self.grad_arena.fill(0)

    # ------------------------------------------------------ forward/backward
    def forward(self, x, training=False):
        """The model's output for a batch x (B, in). Output buffers are reused
        across calls with the same batch size: copy what you keep."""
        for layer in self.layers:
            x = layer.forward(x, training)
        return x

    __call__ = forward

    def backward(self, dy, accumulate=False):
        """Backpropagate d loss / d output; writes every gradient view (adds
        to them when accumulate=True). The first layer's dx is skipped."""
        last = len(self.layers) - 1
        first_with_params = next(i for i, l in enumerate(self.layers) if l.param_specs() or i == last)
        for i in range(last, -1, -1):
            dy = self.layers[i].backward(dy, need_dx=i > first_with_params, accumulate=accumulate)
            if i <= first_with_params:
                break

    # ------------------------------------------------------------ training
    def fit(self, x, y, **kwargs):
        """Train the model; see :func:`fusedtrain.train.fit` for the keyword
        arguments (loss, optimizer, lr, epochs, batch_size, ..., clip_norm,
        accumulate_steps)."""
        from ..train import fit

        return fit(self, x, y, **kwargs)

    def evaluate(self, x, y, **kwargs):
        """Loss and metrics on (x, y); see :func:`fusedtrain.train.evaluate`."""
        from ..train import evaluate

        return evaluate(self, x, y, **kwargs)

    def predict(self, x, batch_size=1024):
        """Model outputs for x, in batches; a new array."""
        from ..train import predict

        return predict(self, x, batch_size=batch_size)

    def save(self, path, optimizer=None):
        """Write model, optimizer, schedule position and RNG state to one file,
        atomically; see :mod:`fusedtrain.checkpoint`."""
        from ..checkpoint import save

        save(path, self, optimizer)

    def load(self, path):
        """Restore a checkpoint written by :meth:`save` into this model (and its
        optimizer); raises and changes nothing if it does not match."""
        from ..checkpoint import load

        return load(path, self)

    def config(self) -> list:
        return [(type(l).__name__, l.config()) for l in self.layers]

    def __repr__(self):
        body = "\n".join(f"  ({i}) {l!r}" for i, l in enumerate(self.layers))
        return f"Sequential(\n{body}\n)  # {self.param_arena.size} parameters, {self.dtype}"
