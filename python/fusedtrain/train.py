"""fit / evaluate / predict for :class:`fusedtrain.nn.Sequential`, and the
one object that holds a training run's state (:class:`TrainState`).

The package reads top-down: ``cli -> train -> nn / optim -> ops -> backend
-> _core / _cuda``; :mod:`fusedtrain.checkpoint` writes a model and its
:class:`TrainState` to a file and reads them back.

A training step is: gather the batch into a preallocated buffer, forward
through the fused dense kernels, one fused loss call (loss and gradient),
backward into the model's gradient arena, and one fused optimizer call over
the whole model. Nothing is allocated per batch once the buffers for the
batch shapes exist.
"""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING

import numpy as np

from . import _validate as V
from . import amp as _amp
from . import metrics as _metrics
from . import ops as _ops
from . import optim as _optim
from . import schedules as _schedules
from .callbacks import (HOOKS, Callback, EarlyStopping, History, HistoryLogger, Hooks,
                        ModelCheckpoint, _Progress)
from .nn import losses as _losses

if TYPE_CHECKING:  # the types of the public signatures (never evaluated at run time)
    from collections.abc import Callable, Iterable, Mapping, Sequence
    from typing import Any, Literal, Union

    from numpy.typing import ArrayLike, NDArray

    from .nn.model import Sequential

    #: a loss: a name of fusedtrain.nn.losses.get or a Loss
    LossSpec = Union[str, _losses.Loss]
    #: a metric: a name of fusedtrain.metrics.get or f(y_true, outputs) -> number
    Metric = Union[str, Callable[[NDArray[Any], NDArray[Any]], float]]
    Metrics = Union[str, Iterable[Metric], None]
    #: a name of fusedtrain.schedules.get, a schedule, or f(step) -> lr
    ScheduleSpec = Union[str, _schedules.Schedule, Callable[[int], float], None]
    #: "dynamic", a static scale or a DynamicLossScaler
    LossScaleSpec = Union[Literal["dynamic"], float, _amp.DynamicLossScaler, None]
    Optimizer = _optim.Optimizer

__all__ = ["fit", "evaluate", "predict", "cross_validate", "TrainState", "History", "Callback",
           "EarlyStopping", "ModelCheckpoint", "HistoryLogger", "ON_NONFINITE"]

#: what fit does with a step whose loss or gradients are inf / NaN
ON_NONFINITE = ("raise", "skip", "ignore")

_DEFAULT_LR = 1e-3  # of an optimizer fit creates without an lr


# ---------------------------------------------------------------------------
# the training state
# ---------------------------------------------------------------------------
class TrainState:
    """Everything a training run carries from one optimizer step to the
    next, in one object: ``model.train_state`` (None before the first
    :func:`fit` or checkpoint load). :mod:`fusedtrain.checkpoint` writes it
    whole and reads it back whole, so a resumed run continues exactly where
    the saved one stopped.

    Attributes:

    ``epoch``, ``step``
        Epochs completed and optimizer steps taken (a step skipped for
        overflow or a non-finite loss counts: it consumed its batches).
    ``rng``
        The shuffling generator (``numpy.random.Generator``); None until
        the first fit makes it from its ``seed``.
    ``optimizer``
        The :class:`fusedtrain.optim.Optimizer` over the model's parameters.
    ``schedule``
        The schedule object the last fit set the learning rate from (None:
        none). ``schedule_name`` is the name it was built from (None for a
        schedule object) and ``base_lr`` the learning rate a named schedule
        starts from: fixed when the name is first used, so a later fit (or
        a resumed run) continues the same curve instead of restarting it
        from an annealed learning rate.
    ``pending_schedule``
        ``(class name, state)`` of a schedule object read from a
        checkpoint; loaded into the next schedule object of that class fit
        is given.
    ``loss_scaler``
        The :class:`fusedtrain.amp.DynamicLossScaler` of
        ``fit(loss_scale="dynamic")``.
    ``history``
        The :class:`fusedtrain.callbacks.History` of every epoch so far.
    ``nonfinite_steps``
        Optimizer steps skipped so far for a non-finite loss or gradient
        (``fit(on_nonfinite="skip")``).
    ``stop_training``
        Set by a callback to end fit after the current epoch.

    ``state["epoch"]``, ``state["step"]``, ``state["rng"]`` and
    ``state["loss_scaler"]`` read the attributes of those names.
    """

    _ITEMS = ("epoch", "step", "rng", "loss_scaler")

    def __init__(self):
        self.epoch = 0
        self.step = 0
        self.rng = None
        self.optimizer = None
        self.schedule = None
        self.schedule_name = None
        self.base_lr = None
        self.pending_schedule = None
        self.loss_scaler = None
        self.history = History()
        self.nonfinite_steps = 0
        self.stop_training = False

    def __getitem__(self, key):
        if key not in self._ITEMS:
            raise KeyError(key)
        return getattr(self, key)

    def get(self, key, default=None):
        value = self[key] if key in self._ITEMS else None
        return default if value is None else value

    def __repr__(self) -> str:
        opt = type(self.optimizer).__name__ if self.optimizer is not None else None
        sched = self.schedule_name or (type(self.schedule).__name__ if self.schedule else None)
        return (f"TrainState(epoch={self.epoch}, step={self.step}, optimizer={opt}, "
                f"schedule={sched}, nonfinite_steps={self.nonfinite_steps})")


# ---------------------------------------------------------------------------
# argument checks
# ---------------------------------------------------------------------------
def _clip_norm(value):
    """None (no clipping) or a finite max_norm > 0."""
    return None if value is None else V.positive("clip_norm", value)


def _on_nonfinite(value) -> str:
    if not isinstance(value, str) or value not in ON_NONFINITE:
        raise ValueError(f"on_nonfinite must be one of {list(ON_NONFINITE)}; received {value!r}")
    return value


def _lr(value):
    """None (the optimizer's own) or a finite lr >= 0."""
    if value is None:
        return None
    v = V.at_least("lr", value)
    if not math.isfinite(v):
        raise ValueError(f"lr must be a finite number >= 0; received {v!r}")
    return v


def _inputs(model, x, name="x") -> NDArray[Any]:
    x = np.asarray(x)
    if x.ndim != 2:
        raise ValueError(f"{name}: expected a 2-d array (samples, features); received shape {x.shape}")
    if model.input_dim is not None and x.shape[1] != model.input_dim:
        raise ValueError(f"{name}: expected {model.input_dim} features per sample; received {x.shape[1]}")
    if not np.issubdtype(x.dtype, np.number) or np.issubdtype(x.dtype, np.complexfloating):
        raise TypeError(f"{name}: expected a real numeric array; received dtype {x.dtype}")
    return np.ascontiguousarray(x, dtype=model.dtype)


def _targets(model, loss, x, y, name="y") -> NDArray[Any]:
    y = np.asarray(y)
    if len(y) != len(x):
        raise ValueError(f"{name}: expected {len(x)} targets (one per sample of x); received {len(y)}")
    y = loss.check_targets(y, model.output_dim)
    if np.issubdtype(y.dtype, np.floating):
        y = np.ascontiguousarray(y, dtype=model.dtype)
    else:
        y = np.ascontiguousarray(y)
    return y



def _owns_model(opt, model) -> None:
    """opt must step exactly the model's parameters, in the model's order
    (fit hands it the model's gradients in that order)."""
    mine = model.parameters()
    theirs = opt.params
    if len(theirs) != len(mine) or any(a is not b for a, b in zip(theirs, mine)):
        raise ValueError(
            f"optimizer: expected an optimizer over this model's {len(mine)} parameters "
            f"(built with model.parameters()); received {type(opt).__name__} over "
            f"{len(theirs)} other arrays")


def _optimizer(model, state, optimizer, lr):
    """The optimizer this fit steps, and whether it is new (not yet in the
    state). None continues the state's optimizer (a new Adam when there is
    none); a name continues the state's optimizer when it is of that class
    and makes a new one otherwise; an Optimizer object is used as it is."""
    current = state.optimizer if state is not None else None
    if isinstance(optimizer, _optim.Optimizer):
        _owns_model(optimizer, model)
        return optimizer, optimizer is not current
    if optimizer is None:
        if current is not None:
            return current, False
        cls = _optim.Adam
    else:
        try:
            cls = _optim.get(optimizer)
        except (TypeError, ValueError):
            raise ValueError(f"optimizer must be one of {list(_optim.NAMES)} or an Optimizer; "
                             f"received {optimizer!r:.80}") from None
        if type(current) is cls:
            return current, False  # continue with its state
    return cls(model.parameters(), lr=_DEFAULT_LR if lr is None else lr), True


def _loss_scaler(loss_scale, state):
    """None, or the scaler fit steps through: "dynamic" (kept in the train
    state, so a later fit goes on with its scale), a number (a static scale
    that still skips overflowing steps) or a DynamicLossScaler."""
    if loss_scale is None:
        return None
    if isinstance(loss_scale, _amp.DynamicLossScaler):
        return loss_scale
    if isinstance(loss_scale, str) and loss_scale == "dynamic":
        kept = state.loss_scaler if state is not None else None
        return kept if kept is not None else _amp.DynamicLossScaler()
    if isinstance(loss_scale, (int, float, np.floating, np.integer)) \
            and not isinstance(loss_scale, bool):
        return _amp.DynamicLossScaler(loss_scale, growth_factor=1.0, backoff_factor=1.0)
    raise ValueError("loss_scale must be None, 'dynamic', a number > 0 or a DynamicLossScaler; "
                     f"received {loss_scale!r}")


def _schedule(schedule, state, opt, new_opt, lr, total_steps):
    """(schedule object, name, base lr) for this fit. A name is built with
    ``total_steps`` = the steps already taken plus this call's, from the
    learning rate it first started from (kept in the state) unless ``lr``
    is given or the optimizer is new."""
    if schedule is None:
        return None, None, None
    if lr is None:  # fit would write its schedule's numbers over the optimizer's schedule
        for gi, g in enumerate(opt.param_groups):
            if not isinstance(g["lr"], (int, float, np.floating, np.integer)):
                raise ValueError(
                    f"schedule: the optimizer's param_groups[{gi}]['lr'] is a schedule already "
                    f"({g['lr']!r:.60}); give the schedule to fit or to the optimizer, not both")
    if not isinstance(schedule, str):
        if not (callable(getattr(schedule, "lr", None)) and not isinstance(schedule, type)) \
                and callable(schedule):
            schedule = _schedules.Function(schedule)  # a plain step -> lr callable
        _schedules.get(schedule, lr=0.0)  # TypeError unless it has lr(step)
        if isinstance(schedule, _schedules.Function):
            schedule.check(state.step if state is not None else 0)
        return schedule, None, None
    if lr is not None:
        base = lr
    elif not new_opt and state is not None and state.base_lr is not None:
        base = state.base_lr
    else:
        base = float(opt.param_groups[0]["lr"])
    sched = _schedules.get(schedule, lr=base, total_steps=total_steps)
    return sched, schedule.strip().lower(), base


def _metric_fns(metrics):
    if metrics is None:
        return {}
    if isinstance(metrics, str):
        metrics = [metrics]
    out = {}
    for m in metrics:
        if callable(m):
            out[getattr(m, "__name__", "metric")] = m
        else:
            out[m] = _metrics.get(m)
    return out


def _split(x, y, w, validation_data, validation_split, seed, model, loss_fn):
    """(x, y, sample weights or None, validation pair or None) after
    validation_split (the weights of the validation samples are left out)."""
    if validation_data is not None and validation_split is not None:
        raise ValueError("pass validation_data or validation_split, not both")
    if validation_split is not None:
        if isinstance(validation_split, bool) or not isinstance(validation_split, (int, float)) \
                or not 0.0 < validation_split < 1.0:
            raise ValueError(f"validation_split must be in (0, 1); received {validation_split!r}")
        n_val = max(1, int(round(len(x) * validation_split)))
        if n_val >= len(x):
            raise ValueError(f"validation_split={validation_split} leaves no training samples")
        split = np.random.default_rng(seed).permutation(len(x))
        validation_data = (x[split[:n_val]], y[split[:n_val]])
        x, y = np.ascontiguousarray(x[split[n_val:]]), np.ascontiguousarray(y[split[n_val:]])
        if w is not None:
            w = np.ascontiguousarray(w[split[n_val:]])
    if validation_data is None:
        return x, y, w, None
    try:
        xv, yv = validation_data
    except (TypeError, ValueError):
        raise ValueError("validation_data must be a pair (x_val, y_val)") from None
    xv = _inputs(model, xv, "validation_data[0]")
    return x, y, w, (xv, _targets(model, loss_fn, xv, yv, "validation_data[1]"))


def _sample_weights(sample_weight, class_weight, y, loss_fn, dtype, name="sample_weight"):
    """The per-sample loss weights (n,) of ``dtype`` from sample_weight and
    class_weight (their product), or None when neither is given."""
    w = None
    if sample_weight is not None:
        w = np.asarray(sample_weight)
        if w.dtype.kind not in "biuf" or w.dtype.kind == "b":
            raise TypeError(f"{name}: expected a real numeric array; received dtype {w.dtype}")
        if w.shape not in ((len(y),), (len(y), 1)):
            raise ValueError(f"{name}: expected shape ({len(y)},) (one weight per sample); "
                             f"received {w.shape}")
        w = w.reshape(-1).astype(np.float64)
        if not np.all(np.isfinite(w)) or (w.size and w.min() < 0):
            raise ValueError(f"{name}: expected finite weights >= 0")
    if class_weight is not None:
        labels = _class_labels(y, loss_fn)
        if isinstance(class_weight, dict):
            table = {}
            for k, v in class_weight.items():
                key = V.integer("class_weight key", k, 0)
                table[key] = V.at_least(f"class_weight[{key}]", v)
                if not math.isfinite(table[key]):
                    raise ValueError(f"class_weight[{key}] must be finite; received {v!r}")
            present = np.unique(labels)
            missing = [int(c) for c in present if int(c) not in table]
            if missing:
                raise ValueError(f"class_weight: no weight for the classes {missing} of y; give "
                                 "every class present a weight")
            lut = np.zeros(int(max(max(table), labels.max(initial=0))) + 1)
            for k, v in table.items():
                lut[k] = v
        else:
            lut = np.asarray(class_weight, dtype=np.float64)
            if lut.ndim != 1 or not np.all(np.isfinite(lut)) or (lut.size and lut.min() < 0):
                raise ValueError("class_weight: expected a dict {class: weight} or a 1-d sequence "
                                 "of finite weights >= 0 (one per class)")
            if labels.size and labels.max() >= len(lut):
                raise ValueError(f"class_weight: {len(lut)} weights, but y holds class "
                                 f"{int(labels.max())}")
        cw = lut[labels]
        w = cw if w is None else w * cw
    return None if w is None else np.ascontiguousarray(w, dtype=dtype)


def _class_labels(y, loss_fn):
    """The class of each sample, for class_weight: integer labels (the
    cross-entropies), or the 0 / 1 targets of a single-output bce."""
    if y.ndim == 1 and y.dtype.kind in "iu":
        return y
    if isinstance(loss_fn, _losses.BinaryCrossEntropy) and y.ndim == 2 and y.shape[1] == 1 \
            and np.all((y == 0) | (y == 1)):
        return y[:, 0].astype(np.int64)
    raise ValueError("class_weight applies to class labels (cross_entropy, "
                     "sparse_categorical_crossentropy, categorical_crossentropy) and to 0 / 1 "
                     "targets of a single-output bce; pass sample_weight for other targets")


def _verbose(verbose, progress) -> int:
    """fit's display level from verbose (Keras's 0, 1, 2 or "auto") or,
    when verbose is None, progress (True: 1, False: 0)."""
    if verbose is None:
        return 1 if V.flag("progress", progress) else 0
    if verbose == "auto":
        return 1
    return V.integer("verbose", verbose, 0, 2)


# ---------------------------------------------------------------------------
# the loop
# ---------------------------------------------------------------------------
class _Batcher:
    """Gathers shuffled batches into buffers allocated once per batch size."""

    def __init__(self, x, y, w=None):
        self.arrays = (x, y) if w is None else (x, y, w)
        self._buf = {}

    def get(self, idx):
        """(x rows, y rows) -- and the weights' when there are weights."""
        n = len(idx)
        bufs = self._buf.get(n)
        if bufs is None:
            bufs = self._buf[n] = tuple(np.empty((n,) + a.shape[1:], a.dtype)
                                        for a in self.arrays)
        for src, out in zip(self.arrays, bufs):
            if _parallel_take(src, idx):
                _ops.take_rows(src, idx, out)  # the kernels' threads share the rows
            else:
                np.take(src, idx, axis=0, out=out)
        return bufs


def _parallel_take(src, idx) -> bool:
    """Whether ops.take_rows can gather from src: a C-contiguous NumPy array
    with rows of at least 1 KB (smaller ones are not worth the threads), and
    int64 indices."""
    return (type(src) is np.ndarray and src.ndim >= 1 and src.flags.c_contiguous
            and src.dtype.kind in "fiub" and len(src) > 0 and src.nbytes // len(src) >= 1024
            and idx.dtype == np.int64 and idx.flags.c_contiguous)


class _Run:
    """One call of :func:`fit`: everything checked and set up by
    :meth:`setup` (which changes nothing of the model), then
    :meth:`epoch` per epoch and :meth:`optimizer_step` per window of
    ``accumulate_steps`` batches."""

    def __init__(self, model, x, y, loss, optimizer, lr, epochs, batch_size, shuffle, seed,
                 validation_data, validation_split, metrics, schedule, callbacks, progress,
                 clip_norm, accumulate_steps, loss_scale, on_nonfinite, verbose=None,
                 sample_weight=None, class_weight=None, initial_epoch=None):
        self.model = model
        self.loss_fn = _losses.get(loss)
        _losses.check_output_layer(model, self.loss_fn)
        x = _inputs(model, x)
        y = _targets(model, self.loss_fn, x, y)
        self.epochs = V.integer("epochs", epochs, 0)
        self.initial_epoch = None
        if initial_epoch is not None:
            self.initial_epoch = V.integer("initial_epoch", initial_epoch, 0)
            done = model.train_state.epoch if model.train_state is not None else 0
            if done and self.initial_epoch != done:
                raise ValueError(f"initial_epoch: the model has trained {done} epochs; received "
                                 f"{self.initial_epoch} (pass {done}, or leave it out)")
            if self.epochs < self.initial_epoch:
                raise ValueError(f"epochs: with initial_epoch={self.initial_epoch}, epochs is the "
                                 f"last epoch's number and must be >= {self.initial_epoch}; "
                                 f"received {self.epochs}")
            self.epochs -= self.initial_epoch
        self.batch_size = V.integer("batch_size", batch_size, 1)
        self.shuffle = V.flag("shuffle", shuffle)
        seed = V.uint64("seed", seed)
        self.clip_norm = _clip_norm(clip_norm)
        self.accumulate = V.integer("accumulate_steps", accumulate_steps, 1)
        self.on_nonfinite = _on_nonfinite(on_nonfinite)
        lr = _lr(lr)
        w = _sample_weights(sample_weight, class_weight, y, self.loss_fn, model.dtype)
        self.x, self.y, self.w, self.validation = _split(x, y, w, validation_data,
                                                         validation_split, seed, model,
                                                         self.loss_fn)
        if len(self.x) == 0:
            raise ValueError("x: expected at least one training sample; received 0")
        self.metric_fns = _metric_fns(metrics)
        self.callbacks = list(callbacks or ())
        for i, cb in enumerate(self.callbacks):
            if not isinstance(cb, Callback) and not any(callable(getattr(cb, h, None))
                                                        for h in HOOKS):
                raise TypeError(f"callbacks[{i}]: expected a fusedtrain.train.Callback (or an "
                                f"object with any of the methods {list(HOOKS)}); received "
                                f"{type(cb).__name__}")
        self.hooks = Hooks(self.callbacks, model)
        self.verbose = _verbose(verbose, progress)
        batches = math.ceil(len(self.x) / self.batch_size)
        self.batches_per_epoch = batches
        steps_per_epoch = math.ceil(batches / self.accumulate)  # optimizer steps

        old = model.train_state
        self.opt, new_opt = _optimizer(model, old, optimizer, lr)
        self.scaler = _loss_scaler(loss_scale, old)
        self.keep_scaler = isinstance(loss_scale, str)
        taken = old.step if old is not None else 0
        self.sched, self.sched_name, self.base_lr = _schedule(
            schedule, old, self.opt, new_opt, lr, taken + self.epochs * steps_per_epoch)
        pending = old.pending_schedule if old is not None else None
        self.load_pending = (self.sched is not None and self.sched_name is None and pending
                             and pending[0] == type(self.sched).__name__
                             and hasattr(self.sched, "load_state_dict"))
        if self.load_pending:
            self.sched.load_state_dict(pending[1])  # checked there; resumed from a checkpoint
        self.lr = lr
        self.seed = seed

    def commit(self) -> TrainState:
        """Everything checked: the model's train state takes this fit's
        optimizer, schedule and scaler."""
        model = self.model
        state = model.train_state
        if state is None:
            state = model.train_state = TrainState()
        if state.rng is None:
            state.rng = np.random.default_rng(self.seed)
        if self.lr is not None:
            for g in self.opt.param_groups:
                g["lr"] = self.lr
        state.optimizer = self.opt
        state.schedule = self.sched
        state.schedule_name, state.base_lr = self.sched_name, self.base_lr
        if self.load_pending or self.sched_name is not None:
            state.pending_schedule = None
        if self.keep_scaler:
            state.loss_scaler = self.scaler  # "dynamic": the scale goes on in the next fit
        state.stop_training = False
        if self.initial_epoch is not None and state.epoch == 0:
            state.epoch = self.initial_epoch  # the count the run goes on from
        self.state = state
        self.grads = model.gradients()
        self.arena = model.grad_arena  # the gradients as one array: one check, one clip
        # the layers' buffers (BatchNorm's running statistics) as they were
        # before the current window: put back when its step is not taken
        self.buffers = [a for _, a in model.named_buffers()] \
            if self.on_nonfinite != "ignore" else []
        self.buffers_before = [np.empty_like(a) for a in self.buffers]
        return state

    # ------------------------------------------------------------------ steps
    def optimizer_step(self, loss_ok: bool, where: str) -> bool:
        """One optimizer step from the gradient arena (the window's summed
        gradients); returns whether it was taken. A step whose loss or
        gradients are inf / NaN is never applied silently: with a loss
        scaler, an overflow of the scaled gradients skips it and backs the
        scale off (the scaler's job); otherwise ``on_nonfinite`` decides."""
        opt, scaler, grads = self.opt, self.scaler, self.grads
        check = self.on_nonfinite != "ignore"
        if check and not loss_ok:
            return self._nonfinite("loss", where)
        if scaler is None:
            if self.clip_norm is not None:
                total = _ops.clip_grad_norm_(self.arena, self.clip_norm)
                bad = check and not math.isfinite(total)
            else:
                bad = check and _amp.found_nonfinite(self.arena)
            if bad:
                return self._nonfinite("gradient", where)
            opt.step(grads)
            return True
        if self.clip_norm is None:
            return scaler.step(opt, grads)  # unscaled inside the fused step
        # as torch's GradScaler.unscale_ before clipping
        arena = self.arena
        with np.errstate(over="ignore", invalid="ignore"):
            arena *= arena.dtype.type(1.0 / scaler.scale)
        found = _amp.found_nonfinite(self.arena)
        if not found:
            _ops.clip_grad_norm_(self.arena, self.clip_norm)
        opt.step(grads, found_inf=found)
        scaler.update(found)
        return not found

    def _nonfinite(self, what: str, where: str) -> bool:
        for a, before in zip(self.buffers, self.buffers_before):
            np.copyto(a, before)  # the window's forward passes moved them
        if self.on_nonfinite == "raise":
            raise FloatingPointError(
                f"fit: non-finite {what} (inf or NaN) at {where}; the step was not taken, so "
                "the parameters, the optimizer state and the layers' running statistics are as "
                "they were before it. Check the "
                "data and the learning rate, or pass on_nonfinite='skip' to skip such steps")
        self.skipped += 1
        self.state.nonfinite_steps += 1
        return False

    # ------------------------------------------------------------------ epochs
    def epoch(self, batcher, bar) -> dict:
        """One pass over the training data; returns the epoch's logs."""
        model, state, loss_fn = self.model, self.state, self.loss_fn
        opt, sched, metric_fns = self.opt, self.sched, self.metric_fns
        n, bs = len(self.x), self.batch_size
        window = bs * self.accumulate  # samples of one optimizer step
        epoch = state.epoch
        t0 = time.perf_counter()
        order = state.rng.permutation(n) if self.shuffle else np.arange(n)
        bar.start(epoch)
        self.skipped = 0
        total_loss, counted = 0.0, 0
        sums = {k: 0.0 for k in metric_fns}
        window_ok = True
        hooks = self.hooks
        batch_begin, batch_end = hooks.on_train_batch_begin, hooks.on_train_batch_end
        weighted = self.w is not None
        wb = None
        for start in range(0, n, bs):
            idx = order[start:start + bs]
            if batch_begin:
                hooks.call(batch_begin, start // bs, {"size": len(idx)})
            if weighted:
                xb, yb, wb = batcher.get(idx)
            else:
                xb, yb = batcher.get(idx)
            w0 = start - start % window
            first = start == w0  # the window's first batch
            last = start + bs >= min(n, w0 + window)
            if first:
                window_ok = True
                for a, before in zip(self.buffers, self.buffers_before):
                    np.copyto(before, a)
                if sched is not None:
                    new_lr = float(sched.lr(state.step))
                    for g in opt.param_groups:
                        g["lr"] = new_lr
            out = model.forward(xb, training=True)
            batch_loss, dout = loss_fn(out, yb) if wb is None else loss_fn(out, yb, wb)
            batch_loss = float(batch_loss)
            ok = math.isfinite(batch_loss)
            if ok or self.on_nonfinite == "ignore":
                for k, f in metric_fns.items():  # before backward: out is still this batch's
                    sums[k] += f(yb, out) * len(idx)
                total_loss += batch_loss * len(idx)
                counted += len(idx)
            b = start // bs + 1
            if not ok and self.on_nonfinite == "raise":
                self._nonfinite("loss", f"epoch {epoch + 1}, batch {b}")
            window_ok = window_ok and ok
            if self.accumulate > 1:
                # this batch's share of the window's mean loss
                dout *= len(idx) / (min(n, w0 + window) - w0)
            if self.scaler is not None:
                with np.errstate(over="ignore", invalid="ignore"):  # inf: a skipped step
                    dout *= dout.dtype.type(self.scaler.scale)
            model.backward(dout, accumulate=not first)
            if last:
                b0 = w0 // bs + 1
                where = f"epoch {epoch + 1}, " + (f"batch {b}" if b0 == b else f"batches {b0}-{b}")
                self.optimizer_step(window_ok, where)
                state.step += 1
            bar.update(batch_loss, opt.last_lr())
            if batch_end:
                hooks.call(batch_end, start // bs, {"size": len(idx), "loss": batch_loss})
        logs = {"loss": total_loss / counted if counted else math.nan}
        logs.update({k: (v / counted if counted else math.nan) for k, v in sums.items()})
        if self.validation is not None:
            xv, yv = self.validation
            logs.update({"val_" + k: v for k, v in
                         evaluate(model, xv, yv, loss=loss_fn, metrics=metric_fns).items()})
        logs["lr"] = opt.last_lr()
        if self.scaler is not None:
            logs["loss_scale"] = self.scaler.scale
        if self.on_nonfinite == "skip":
            logs["nonfinite_steps"] = self.skipped
        logs["time"] = time.perf_counter() - t0
        state.epoch += 1
        if sched is not None and hasattr(sched, "observe"):
            sched.observe(logs.get("val_loss", logs["loss"]))
        state.history.append(epoch + 1, logs)
        bar.end(epoch, logs)
        return logs

    def train(self) -> History:
        state = self.commit()
        hooks = self.hooks
        hooks.bind()
        hooks.call(hooks.on_train_begin, None, {})
        batcher = _Batcher(self.x, self.y, self.w)
        bar = _Progress(self.verbose, state.epoch + self.epochs, self.batches_per_epoch)
        logs = {}
        for _ in range(self.epochs):
            epoch = state.epoch
            hooks.call(hooks.on_epoch_begin, epoch, {})
            logs = self.epoch(batcher, bar)
            hooks.call(hooks.on_epoch_end, epoch, logs)
            if state.stop_training:
                break
        hooks.call(hooks.on_train_end, None, dict(logs))
        return state.history


def fit(model: Sequential, x: ArrayLike, y: ArrayLike, loss: LossSpec = "cross_entropy",
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
    """Train ``model`` on (x, y); returns the :class:`History` (also model.history).

    Every argument is checked before anything changes: a call that raises
    ValueError / TypeError has changed neither the model nor its state.

    loss: a name -- "cross_entropy" or "sparse_categorical_crossentropy"
    (integer labels), "categorical_crossentropy" (one-hot targets), "bce" /
    "binary_crossentropy", "mse" / "mean_squared_error" -- or a
    :class:`fusedtrain.nn.losses.Loss`. The losses take logits (a last layer
    without activation); for a last ``activation="softmax"`` (``"sigmoid"``)
    pass ``CrossEntropy(from_logits=False)`` (``BinaryCrossEntropy(...)``):
    fit refuses the mixes that would apply the activation twice or not at
    all, naming the layer.
    metrics: names of :func:`fusedtrain.metrics.get` ("accuracy" or "acc",
    ...) or callables ``f(y_true, outputs)``; each is logged under the name
    given (``val_`` + it on the validation data).
    optimizer: an Optimizer over exactly ``model.parameters()`` (ValueError
    otherwise), or a name of :func:`fusedtrain.optim.get` ("adam", "adamw",
    "sgd", "rmsprop", "adagrad"): the model's current optimizer (from an
    earlier fit or a loaded checkpoint) when it is of that class, with its
    state, else a new one. None (default) continues the model's optimizer,
    whatever its class; a new Adam when it has none.
    lr: None (default) keeps the optimizer's learning rate (1e-3 for one
    fit creates); a number sets every parameter group's lr first.
    schedule: None (keep the optimizer's lr), a name for
    :func:`fusedtrain.schedules.get`, or a schedule object; it sets every
    group's lr before each step from the global step count (ReduceOnPlateau
    observes ``val_loss``, else ``loss``, once per epoch). A name spans the
    steps already taken plus this call's (``total_steps``), starting from
    the lr it started from the first time (``TrainState.base_lr``), so a run
    stopped and resumed follows the same curve as one that never stopped.
    A plain callable ``f(step) -> lr`` works too (``step`` counts the
    optimizer steps taken before this one, from 0, over the whole run); it
    is called once before training, to check it returns a finite number
    >= 0 (ValueError otherwise, with nothing changed), and each value is
    checked as it is used.
    Training continues where an earlier fit (or a loaded checkpoint) left
    off: the step count, the optimizer, the shuffling RNG, the dropout
    streams and a dynamic loss scale go on (see :class:`TrainState`).

    clip_norm: None (default) or max_norm > 0: before each optimizer step
    the gradients are clipped to that global L2 norm with
    :func:`fusedtrain.ops.clip_grad_norm_` (one fused call over the model's
    gradient arena): ``g = g * min(clip_norm / (||g|| + 1e-6), 1)``.
    accumulate_steps: k >= 1 (default 1). Gradients of k consecutive batches
    are summed in the gradient arena, then the optimizer steps once. Each
    batch's loss gradient is weighted by its share of the samples of its
    window (``len(batch) / samples in the k batches``), so the step equals
    one step on a batch of k * batch_size samples (the mean loss over them;
    the last window of an epoch may hold fewer batches). The step count (and
    with it the schedule) advances once per optimizer step.
    loss_scale: None (default: no scaling), "dynamic" (a
    :class:`fusedtrain.amp.DynamicLossScaler` with torch's defaults), a
    number (a static scale) or a DynamicLossScaler. The loss gradient is
    multiplied by the scale before backward; the optimizer unscales inside
    its fused step, and a step whose gradients hold inf or NaN is skipped
    (the dynamic scale then halves; it doubles after 2000 clean steps).
    The epoch logs gain ``loss_scale``. With clip_norm too, the gradients
    are unscaled first (one pass over the arena, as torch's
    ``GradScaler.unscale_``), checked for inf / NaN, clipped and stepped.
    on_nonfinite: what a step whose loss or (unscaled) gradients hold inf
    or NaN does -- such a step is never applied silently:

    - ``"raise"`` (default): FloatingPointError naming the epoch and the
      batch; the step is not taken, so the parameters and the optimizer
      state are those before it.
    - ``"skip"``: the step is not taken and training goes on; the epoch logs
      gain ``nonfinite_steps`` (the count) and the skipped batches are left
      out of the logged loss and metrics.
    - ``"ignore"``: no check (the step is applied, NaN and all).

    With a loss scaler, gradients that overflow are the scaler's business
    (the step is skipped and the scale backs off); a non-finite loss still
    goes by on_nonfinite. Without one, the check costs one pass over the
    gradients (none with clip_norm, whose norm tells).

    verbose: Keras's display levels -- 0 nothing, 1 (or "auto") a progress
    bar per epoch on a terminal (``tqdm.auto``'s in a notebook) and one line
    per epoch, 2 one line per epoch; each line fits the terminal's width.
    None (default) takes it from ``progress``: True is 1, False is 0.
    sample_weight: None or (N,) finite weights >= 0, one per sample of x;
    class_weight: None, a dict ``{class: weight}`` (every class of y needs
    one) or a sequence indexed by class, for integer (or one-hot) labels and
    0 / 1 bce targets. The sample's weight is the product of the two; the
    loss (logged and minimised) is Keras's ``sum_i w_i * loss_i / N`` over
    each batch of N samples, so all-ones weights give the plain mean.
    Metrics and the validation loss are unweighted. With validation_split,
    the weights of the samples held out are left out.
    initial_epoch: None (default: ``epochs`` is the number of epochs this
    call runs) or Keras's meaning: ``epochs`` is the number of the last
    epoch and the call runs ``epochs - initial_epoch`` of them. It must
    equal the epochs the model has trained (``model.train_state.epoch``); a
    model that has not trained starts its epoch count there.

    callbacks: :class:`Callback` objects (Keras's hook signatures accepted,
    with ``self.model`` set; see :class:`Callback`), called in order.

    Calls on one model (fit, evaluate, predict) from several threads run one
    at a time (a lock per model).
    """
    with model._lock:
        run = _Run(model, x, y, loss, optimizer, lr, epochs, batch_size, shuffle, seed,
                   validation_data, validation_split, metrics, schedule, callbacks, progress,
                   clip_norm, accumulate_steps, loss_scale, on_nonfinite, verbose,
                   sample_weight, class_weight, initial_epoch)
        return run.train()


def predict(model: Sequential, x: ArrayLike, batch_size: int = 1024) -> NDArray[np.floating[Any]]:
    """Model outputs (inference mode) for every row of x, as a new array.

    Safe to call from several threads on one model: the calls run one at a
    time (the model's layers reuse their output buffers)."""
    x = _inputs(model, x)
    batch_size = V.integer("batch_size", batch_size, 1)
    with model._lock:
        return _predict(model, x, batch_size)


def _predict(model, x, batch_size):
    out = None
    for start in range(0, len(x), batch_size):
        yb = model.forward(x[start:start + batch_size], training=False)
        if out is None:
            out = np.empty((len(x),) + yb.shape[1:], dtype=yb.dtype)
        out[start:start + len(yb)] = yb
    if out is None:
        out = np.empty((0, model.output_dim or 0), dtype=model.dtype)
    return out


def evaluate(model: Sequential, x: ArrayLike, y: ArrayLike, loss: LossSpec = "cross_entropy",
             metrics: Metrics | Mapping[str, Metric] = ("accuracy",), batch_size: int = 1024,
             sample_weight: ArrayLike | None = None) -> dict[str, float]:
    """{"loss": mean loss, metric: value, ...} on (x, y) in inference mode.

    sample_weight: None or (N,) weights; the loss is then
    ``sum_i w_i * loss_i / N`` (as fit's); the metrics are unweighted."""
    loss_fn = _losses.get(loss)
    _losses.check_output_layer(model, loss_fn)
    x = _inputs(model, x)
    y = _targets(model, loss_fn, x, y)
    w = _sample_weights(sample_weight, None, y, loss_fn, model.dtype)
    metric_fns = metrics if isinstance(metrics, dict) else _metric_fns(metrics)
    batch_size = V.integer("batch_size", batch_size, 1)
    with model._lock:
        scores = _predict(model, x, batch_size)
    total = 0.0
    for start in range(0, len(x), batch_size):
        part = slice(start, start + batch_size)
        args = (scores[part], y[part]) if w is None else (scores[part], y[part], w[part])
        total += float(loss_fn(*args)[0]) * len(y[part])
    out = {"loss": total / max(len(x), 1)}
    for k, f in metric_fns.items():
        out[k] = float(f(y, scores))
    return out


def cross_validate(make_model, x, y, k=5, seed=0, **fit_kwargs):
    """k-fold cross-validation: for each fold, a fresh ``make_model()`` is fit
    on the other folds and evaluated on this one. Returns a list of per-fold
    result dicts (from :func:`evaluate`) and their mean as the last item's
    companion: ``{"folds": [...], "mean": {...}}``."""
    x = np.asarray(x)
    y = np.asarray(y)
    k = V.integer("k", k, 2)
    if len(x) != len(y):
        raise ValueError(f"y: expected {len(x)} targets (one per sample of x); received {len(y)}")
    if len(x) < k:
        raise ValueError(f"k={k} folds need at least {k} samples; received {len(x)}")
    folds = np.array_split(np.random.default_rng(seed).permutation(len(x)), k)
    loss = fit_kwargs.get("loss", "cross_entropy")
    metrics = fit_kwargs.get("metrics", ("accuracy",))
    results = []
    for i in range(k):
        test = folds[i]
        train = np.concatenate([folds[j] for j in range(k) if j != i])
        model = make_model()
        model.fit(x[train], y[train], **{"progress": False, **fit_kwargs})
        results.append(evaluate(model, x[test], y[test], loss=loss, metrics=metrics))
    mean = {key: float(np.mean([r[key] for r in results])) for key in results[0]}
    return {"folds": results, "mean": mean}

