"""Sequential model: layers over one parameter arena and one gradient arena."""

from __future__ import annotations

import threading

import numpy as np

from typing import TYPE_CHECKING

from .layers import BatchNorm, Dense, Dropout, Layer, LayerNorm

if TYPE_CHECKING:  # the types of the public signatures (never evaluated at run time)
    import os
    from collections.abc import Iterable, Mapping, Sequence
    from typing import Any, Literal

    from numpy.typing import ArrayLike, DTypeLike, NDArray

    from ..callbacks import Callback, History
    from ..optim import Optimizer
    from ..train import LossScaleSpec, LossSpec, Metric, Metrics, ScheduleSpec

__all__ = ["Sequential"]


class Sequential:
    """A stack of layers whose parameters live in one flat array.

    ``Sequential([Dense(784, 256, activation="relu"), Dropout(0.1),
    Dense(256, 10)])``. Every parameter is a view into ``param_arena`` and
    every gradient a view into ``grad_arena`` (same layout), so an optimizer
    given ``model.parameters()`` steps the whole model in one fused call.
    Parameters are initialised from ``seed`` (a numpy Generator).
    """

    def __init__(self, layers: Iterable[Layer], dtype: DTypeLike = np.float32, seed: int = 0) -> None:
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
            elif isinstance(layer, (BatchNorm, LayerNorm)):
                # keeps the width; before any Dense it takes the input's
                if width is not None and layer.num_features != width:
                    raise ValueError(f"layers[{i}]: {type(layer).__name__} num_features="
                                     f"{layer.num_features} does not match the previous "
                                     f"layer's output width {width}")
                width = layer.num_features
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
        # buffers (BatchNorm's running statistics): outside the arena, not stepped
        self._buffers = []
        for i, layer in enumerate(layers):
            for name, shape, value in layer.buffer_specs():
                buf = np.full(tuple(shape), value, dtype=dtype)
                setattr(layer, name, buf)
                self._buffers.append((f"{i}.{name}", buf))
        #: the run's :class:`fusedtrain.train.TrainState` (optimizer, step
        #: count, schedule, RNG, history, ...): None until the first fit or
        #: checkpoint load
        self.train_state = None
        # fit, evaluate and predict hold it: calls on one model from several
        # threads run one at a time (the layers reuse their buffers)
        self._lock = threading.RLock()

    # -------------------------------------------- the training state's parts
    @property
    def optimizer(self):
        """The optimizer of the training state (None before training)."""
        return self.train_state.optimizer if self.train_state is not None else None

    @optimizer.setter
    def optimizer(self, value):
        self._state().optimizer = value

    @property
    def history(self):
        """The :class:`fusedtrain.train.History` of the training state (None
        before training)."""
        return self.train_state.history if self.train_state is not None else None

    @history.setter
    def history(self, value):
        self._state().history = value

    @property
    def stop_training(self) -> bool:
        """Set True (from a callback) to end fit after the current epoch."""
        return self.train_state.stop_training if self.train_state is not None else False

    @stop_training.setter
    def stop_training(self, value):
        self._state().stop_training = bool(value)

    def _state(self):
        if self.train_state is None:
            from ..train import TrainState

            self.train_state = TrainState()
        return self.train_state

    def __getstate__(self):  # pickle, copy.deepcopy: the lock is made anew
        state = self.__dict__.copy()
        del state["_lock"]
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._lock = threading.RLock()

    # ---------------------------------------------------------- parameters
    def parameters(self) -> list[NDArray[Any]]:
        """Per-layer parameter views (tiling ``param_arena``), in order."""
        return list(self._params)

    def gradients(self) -> list[NDArray[Any]]:
        """Per-layer gradient views (tiling ``grad_arena``), in the order of parameters()."""
        return list(self._grads)

    def named_parameters(self) -> list[tuple[str, NDArray[Any]]]:
        return list(zip(self._names, self._params))

    def named_buffers(self) -> list[tuple[str, NDArray[Any]]]:
        """("<layer index>.<name>", array) of every buffer: state of the
        layers that is not a parameter (BatchNorm's running_mean and
        running_var), in the model's dtype; saved in checkpoints."""
        return list(self._buffers)

    @property
    def input_dim(self) -> int | None:
        for l in self.layers:
            if isinstance(l, Dense):
                return l.in_features
            if isinstance(l, (BatchNorm, LayerNorm)):
                return l.num_features
        return None

    @property
    def output_dim(self) -> int | None:
        for l in reversed(self.layers):
            if isinstance(l, Dense):
                return l.out_features
            if isinstance(l, (BatchNorm, LayerNorm)):
                return l.num_features
        return None

    def zero_grad(self) -> None:
        self.grad_arena.fill(0)

    # ------------------------------------------------------ forward/backward
    def forward(self, x: NDArray[Any], training: bool = False) -> NDArray[Any]:
        """The model's output for a batch x (B, in). Each layer keeps one
        output buffer (of the largest batch seen) and returns a view of its
        first B rows: copy what you keep. Not for concurrent use: fit,
        evaluate and predict take the model's lock."""
        for layer in self.layers:
            x = layer.forward(x, training)
        return x

    __call__ = forward

    def backward(self, dy: NDArray[Any], accumulate: bool = False) -> None:
        """Backpropagate d loss / d output; writes every gradient view (adds
        to them when accumulate=True). The first layer's dx is skipped."""
        last = len(self.layers) - 1
        first_with_params = next(i for i, l in enumerate(self.layers) if l.param_specs() or i == last)
        for i in range(last, -1, -1):
            dy = self.layers[i].backward(dy, need_dx=i > first_with_params, accumulate=accumulate)
            if i <= first_with_params:
                break

    # ------------------------------------------------------------ training
    def fit(self, x: ArrayLike, y: ArrayLike, loss: LossSpec = "cross_entropy",
            optimizer: Optimizer | str | None = None, lr: float | None = None, epochs: int = 10,
            batch_size: int = 128, shuffle: bool = True, seed: int = 0,
            validation_data: tuple[ArrayLike, ArrayLike] | None = None,
            validation_split: float | None = None, metrics: Metrics = ("accuracy",),
            schedule: ScheduleSpec = None, callbacks: Iterable[Callback] = (), progress: bool = True,
            clip_norm: float | None = None, accumulate_steps: int = 1,
            loss_scale: LossScaleSpec = None,
            on_nonfinite: Literal["raise", "skip", "ignore"] = "raise",
            verbose: int | Literal["auto"] | None = None, sample_weight: ArrayLike | None = None,
            class_weight: Mapping[int, float] | Sequence[float] | None = None,
            initial_epoch: int | None = None) -> History:
        """Train the model; returns the History. The arguments are those of
        :func:`fusedtrain.train.fit` (see it for each one)."""
        from ..train import fit

        return fit(self, x, y, loss=loss, optimizer=optimizer, lr=lr, epochs=epochs,
                   batch_size=batch_size, shuffle=shuffle, seed=seed,
                   validation_data=validation_data, validation_split=validation_split,
                   metrics=metrics, schedule=schedule, callbacks=callbacks, progress=progress,
                   clip_norm=clip_norm, accumulate_steps=accumulate_steps,
                   loss_scale=loss_scale, on_nonfinite=on_nonfinite, verbose=verbose,
                   sample_weight=sample_weight, class_weight=class_weight,
                   initial_epoch=initial_epoch)

    def evaluate(self, x: ArrayLike, y: ArrayLike, loss: LossSpec = "cross_entropy",
                 metrics: Metrics | Mapping[str, Metric] = ("accuracy",), batch_size: int = 1024,
                 sample_weight: ArrayLike | None = None) -> dict[str, float]:
        """Loss and metrics on (x, y); see :func:`fusedtrain.train.evaluate`."""
        from ..train import evaluate

        return evaluate(self, x, y, loss=loss, metrics=metrics, batch_size=batch_size,
                        sample_weight=sample_weight)

    def predict(self, x: ArrayLike, batch_size: int = 1024) -> NDArray[np.floating[Any]]:
        """Model outputs for x, in batches; a new array (thread-safe: see
        :func:`fusedtrain.train.predict`)."""
        from ..train import predict

        return predict(self, x, batch_size=batch_size)

    # ------------------------------------------------------------ weights
    def count_params(self) -> int:
        """The number of parameters (every layer's)."""
        return int(self.param_arena.size)

    def get_weights(self) -> list[NDArray[Any]]:
        """Copies of the parameters, in the order of :meth:`parameters`
        (per Dense layer: weight (in, out), then bias (out,) when it has one;
        per BatchNorm / LayerNorm with an affine: weight (C,), bias (C,)).
        BatchNorm's running statistics are buffers, not parameters: see
        :meth:`named_buffers`."""
        return [p.copy() for p in self._params]

    def set_weights(self, weights: Sequence[ArrayLike]) -> None:
        """Assign ``weights`` (a list like :meth:`get_weights`'s: one array
        per parameter, the same shapes, real numbers; cast to the model's
        dtype). Everything is checked first: on error (ValueError / TypeError
        naming the entry) no parameter has changed. The optimizer's state
        is left as it is."""
        weights = list(weights)
        if len(weights) != len(self._params):
            raise ValueError(f"weights: expected a list of {len(self._params)} arrays (one per "
                             f"parameter: {', '.join(self._names)}); received {len(weights)}")
        checked = []
        for i, (w, p, name) in enumerate(zip(weights, self._params, self._names)):
            a = np.asarray(w)
            if a.dtype.kind not in "iuf":
                raise TypeError(f"weights[{i}] ({name}): expected a real numeric array; received "
                                f"dtype {a.dtype}")
            if a.shape != p.shape:
                raise ValueError(f"weights[{i}] ({name}): expected shape {p.shape}; received "
                                 f"{a.shape}")
            checked.append(a)
        with self._lock:
            for a, p in zip(checked, self._params):
                np.copyto(p, a, casting="unsafe")

    def summary(self, print_fn=None) -> None:
        """Print a table of the layers (type and settings, output shape,
        parameter count) and the totals, with ``print_fn`` (default print)."""
        rows = [("Layer", "Output shape", "Params")]
        width = None
        for i, layer in enumerate(self.layers):
            n = sum(int(np.prod(shape)) for _, shape in layer.param_specs())
            if isinstance(layer, Dense):
                width = layer.out_features
                act = layer.activation
                what = f"Dense({layer.in_features} -> {layer.out_features}" \
                       + ("" if act in ("identity", "linear") else f", {act}") \
                       + ("" if layer.use_bias else ", no bias") + ")"
            elif isinstance(layer, Dropout):
                what = f"Dropout(p={layer.p:g})"
            elif isinstance(layer, BatchNorm):
                width = layer.num_features
                act = layer.activation
                what = f"BatchNorm({width}" + ("" if act in ("identity", "linear") else f", {act}") \
                       + ("" if layer.affine else ", no affine") + ")"
            elif isinstance(layer, LayerNorm):
                width = layer.num_features
                what = f"LayerNorm({width}" + ("" if layer.elementwise_affine
                                               else ", no affine") + ")"
            else:
                what = type(layer).__name__
            rows.append((f"({i}) {what}", f"(None, {width})" if width else "?", f"{n:,}"))
        cols = [max(len(r[k]) for r in rows) for k in range(3)]
        line = "-" * (sum(cols) + 4)
        fmt = lambda r: f"{r[0]:<{cols[0]}}  {r[1]:<{cols[1]}}  {r[2]:>{cols[2]}}"  # noqa: E731
        total = self.count_params()
        text = "\n".join(["Sequential", line, fmt(rows[0]), line, *map(fmt, rows[1:]), line,
                          f"Total params: {total:,} ({self.dtype}, "
                          f"{total * self.dtype.itemsize:,} bytes)",
                          f"Trainable params: {total:,}"])
        (print_fn or print)(text)

    def save(self, path: str | os.PathLike[str], optimizer: Optimizer | None = None) -> None:
        """Write model, optimizer, schedule position and RNG state to one file,
        atomically; see :mod:`fusedtrain.checkpoint`."""
        from ..checkpoint import save

        save(path, self, optimizer)

    def load(self, path: str | os.PathLike[str]) -> dict[str, object]:
        """Restore a checkpoint written by :meth:`save` into this model (and its
        optimizer); raises and changes nothing if it does not match."""
        from ..checkpoint import load

        return load(path, self)

    def config(self) -> list:
        return [(type(l).__name__, l.config()) for l in self.layers]

    def __repr__(self):
        body = "\n".join(f"  ({i}) {l!r}" for i, l in enumerate(self.layers))
        return f"Sequential(\n{body}\n)  # {self.param_arena.size} parameters, {self.dtype}"
