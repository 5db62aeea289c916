"""fit / evaluate / predict, callbacks and history for :class:`fusedtrain.nn.Sequential`.

A training step is: gather the batch into a preallocated buffer, forward
through the fused dense kernels, one fused loss call (loss and gradient),
backward into the model's gradient arena, and one fused optimizer call over
the whole model. Nothing is allocated per batch once the buffers for the
batch shapes exist.
"""

from __future__ import annotations

import csv
import json
import math
import numbers
import sys
import time

import numpy as np

from . import _core
from . import amp as _amp
from . import metrics as _metrics
from . import ops as _ops
from . import optim as _optim
from . import schedules as _schedules
from .nn import losses as _losses

__all__ = ["fit", "evaluate", "predict", "cross_validate", "History", "Callback",
           "EarlyStopping", "ModelCheckpoint", "HistoryLogger"]

OPTIMIZERS = {"adam": _optim.Adam, "adamw": _optim.AdamW, "sgd": _optim.SGD,
              "rmsprop": _optim.RMSProp, "adagrad": _optim.Adagrad}


# ---------------------------------------------------------------------------
# history and callbacks
# ---------------------------------------------------------------------------
class History:
    """Per-epoch records: ``history.history["loss"]``, ``["val_accuracy"]``,
    ``["lr"]``, ``["time"]``, ..."""

    def __init__(self):
        self.history: dict[str, list] = {}
        self.epochs: list[int] = []

    def append(self, epoch: int, logs: dict) -> None:
        self.epochs.append(epoch)
        for k, v in logs.items():
            self.history.setdefault(k, []).append(v)

    def __getitem__(self, key):
        return self.history[key]

    def plot(self, path) -> None:
        """Write a PNG of the loss and metric curves (needs matplotlib:
        ``pip install "fusedtrain[examples]"``)."""
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError as exc:  # optional extra
            raise ImportError('History.plot needs matplotlib: pip install "fusedtrain[examples]"') from exc
        names = [k for k in self.history if k not in ("lr", "time") and not k.startswith("val_")]
        fig, axes = plt.subplots(1, len(names), figsize=(5 * len(names), 3.6), squeeze=False)
        for ax, name in zip(axes[0], names):
            ax.plot(self.epochs, self.history[name], marker="o", label=f"train {name}")
            if "val_" + name in self.history:
                ax.plot(self.epochs, self.history["val_" + name], marker="o", label=f"validation {name}")
            ax.set_xlabel("epoch")
            ax.set_title(name)
            ax.grid(alpha=0.3)
            ax.legend()
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)

    def to_dict(self) -> dict:
        return {"epochs": list(self.epochs), "history": {k: list(v) for k, v in self.history.items()}}

    @classmethod
    def from_dict(cls, d: dict) -> "History":
        h = cls()
        h.epochs = list(d.get("epochs", []))
        h.history = {k: list(v) for k, v in d.get("history", {}).items()}
        return h


class Callback:
    """Hooks called by fit. Set ``model.stop_training = True`` to stop."""

    def on_train_begin(self, model, logs=None):
        pass

    def on_epoch_end(self, epoch, logs, model):
        pass

    def on_train_end(self, model, logs=None):
        pass


def _monitor_mode(monitor, mode):
    if mode not in ("auto", "min", "max"):
        raise ValueError(f"mode must be 'auto', 'min' or 'max'; received {mode!r}")
    if mode == "auto":
        mode = "max" if any(s in monitor for s in ("acc", "auc", "f1", "precision", "recall")) else "min"
    return mode


def _improved(value, best, mode, min_delta):
    if best is None:
        return True
    return value < best - min_delta if mode == "min" else value > best + min_delta


class EarlyStopping(Callback):
    """Stop when ``monitor`` has not improved by more than ``min_delta`` for
    ``patience`` epochs; with restore_best, put back the best epoch's weights."""

    def __init__(self, monitor="val_loss", patience=5, min_delta=0.0, mode="auto",
                 restore_best=True):
        self.monitor = monitor
        self.patience = int(patience)
        self.min_delta = float(min_delta)
        self.mode = _monitor_mode(monitor, mode)
        self.restore_best = restore_best
        self.best = None
        self.best_epoch = None
        self.wait = 0
        self._best_params = None
        self.stopped_epoch = None

    def on_train_begin(self, model, logs=None):
        self.best, self.best_epoch, self.wait, self._best_params = None, None, 0, None
        self.stopped_epoch = None

    def on_epoch_end(self, epoch, logs, model):
        if self.monitor not in logs:
            raise ValueError(f"EarlyStopping: monitor {self.monitor!r} is not among the logged "
                             f"values {sorted(logs)}")
        value = logs[self.monitor]
        if _improved(value, self.best, self.mode, self.min_delta):
            self.best, self.best_epoch, self.wait = value, epoch, 0
            if self.restore_best:
                if self._best_params is None:
                    self._best_params = np.empty_like(model.param_arena)
                np.copyto(self._best_params, model.param_arena)
        else:
            self.wait += 1
            if self.wait >= self.patience:
                self.stopped_epoch = epoch
                model.stop_training = True

    def on_train_end(self, model, logs=None):
        if self.restore_best and self._best_params is not None and self.best_epoch is not None:
            np.copyto(model.param_arena, self._best_params)


class ModelCheckpoint(Callback):
    """Save a checkpoint (model + optimizer + training state) after each
    epoch, or only when ``monitor`` improves (save_best_only). ``path`` may
    contain ``{epoch}``."""

    def __init__(self, path, monitor="val_loss", save_best_only=True, mode="auto"):
        self.path = str(path)
        self.monitor = monitor
        self.save_best_only = save_best_only
        self.mode = _monitor_mode(monitor, mode)
        self.best = None

    def on_epoch_end(self, epoch, logs, model):
        if self.save_best_only:
            value = logs.get(self.monitor)
            if value is None:
                raise ValueError(f"ModelCheckpoint: monitor {self.monitor!r} is not among the "
                                 f"logged values {sorted(logs)}")
            if not _improved(value, self.best, self.mode, 0.0):
                return
            self.best = value
        model.save(self.path.format(epoch=epoch + 1), model.optimizer)


class HistoryLogger(Callback):
    """Append each epoch's logs to a CSV file or a JSON-lines file (by the
    extension: .csv, else JSON lines)."""

    def __init__(self, path):
        self.path = str(path)
        self._keys = None

    def on_epoch_end(self, epoch, logs, model):
        row = {"epoch": epoch + 1, **logs}
        if self.path.endswith(".csv"):
            new = self._keys is None
            if new:
                self._keys = list(row)
            with open(self.path, "w" if new else "a", newline="") as f:
                w = csv.DictWriter(f, fieldnames=self._keys, extrasaction="ignore")
                if new:
                    w.writeheader()
                w.writerow(row)
        else:
            with open(self.path, "a") as f:
                f.write(json.dumps(row) + "\n")


# ---------------------------------------------------------------------------
# progress
# ---------------------------------------------------------------------------
class _Progress:
    """A tqdm bar per epoch on a terminal; one plain line per epoch otherwise
    (CI logs); nothing when disabled."""

    def __init__(self, enabled, epochs, steps):
        self.enabled = enabled
        self.epochs = epochs
        self.steps = steps
        self.bar = None
        self.tty = enabled and sys.stdout.isatty()
        if self.tty:
            try:
                import tqdm  # noqa: F401
            except ImportError:
                self.tty = False

    def start(self, epoch):
        if self.tty:
            from tqdm import tqdm

            self.bar = tqdm(total=self.steps, desc=f"epoch {epoch + 1}/{self.epochs}", leave=True,
                            dynamic_ncols=True, file=sys.stdout)

    def update(self, loss, lr):
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", refresh=False)

    def end(self, epoch, logs):
        if not self.enabled:
            return
        text = "  ".join(f"{k}={_fmt(v)}" for k, v in logs.items())
        if self.bar is not None:
            self.bar.set_postfix_str(text)
            self.bar.close()
            self.bar = None
        else:
            print(f"epoch {epoch + 1}/{self.epochs}  {text}", flush=True)


def _fmt(v):
    if isinstance(v, float):
        return f"{v:.4g}" if abs(v) >= 1e-3 or v == 0 else f"{v:.3e}"
    return str(v)


# ---------------------------------------------------------------------------
# argument checks
# ---------------------------------------------------------------------------
def _int_at_least(name, value, low):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
        raise ValueError(f"{name} must be an int >= {low}; received {value!r}")
    return int(value)


def _clip_norm(value):
    """None (no clipping) or a real max_norm > 0."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"clip_norm must be None or a real number > 0 (the largest gradient "
                        f"norm kept); received {type(value).__name__} {value!r}")
    if not value > 0:
        raise ValueError(f"clip_norm must be None or a real number > 0 (the largest gradient "
                         f"norm kept); received {value!r}")
    return float(value)


def _inputs(model, x, name="x"):
    x = np.asarray(x)
    if x.ndim != 2:
        raise ValueError(f"{name}: expected a 2-d array (samples, features); received shape {x.shape}")
    if model.input_dim is not None and x.shape[1] != model.input_dim:
        raise ValueError(f"{name}: expected {model.input_dim} features per sample; received {x.shape[1]}")
    if not np.issubdtype(x.dtype, np.number) or np.issubdtype(x.dtype, np.complexfloating):
        raise TypeError(f"{name}: expected a real numeric array; received dtype {x.dtype}")
    return np.ascontiguousarray(x, dtype=model.dtype)


def _targets(model, loss, x, y, name="y"):
    y = np.asarray(y)
    if len(y) != len(x):
        raise ValueError(f"{name}: expected {len(x)} targets (one per sample of x); received {len(y)}")
    y = loss.check_targets(y, model.output_dim)
    if np.issubdtype(y.dtype, np.floating):
        y = np.ascontiguousarray(y, dtype=model.dtype)
    else:
        y = np.ascontiguousarray(y)
    return y


def _optimizer(model, optimizer, lr):
    if isinstance(optimizer, _optim.Optimizer):
        return optimizer
    if optimizer is None:
        optimizer = "adam"
    if not isinstance(optimizer, str) or optimizer.lower() not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {', '.join(map(repr, OPTIMIZERS))} or an "
                         f"Optimizer; received {optimizer!r}")
    cls = OPTIMIZERS[optimizer.lower()]
    if type(model.optimizer) is cls:
        return model.optimizer  # continue with its state
    return cls(model.parameters(), lr=lr)


def _loss_scaler(loss_scale, state):
    """None, or the scaler fit steps through: "dynamic" (kept in the train
    state, so a later fit goes on with its scale), a number (a static scale
    that still skips overflowing steps) or a DynamicLossScaler."""
    if loss_scale is None:
        return None
    if isinstance(loss_scale, _amp.DynamicLossScaler):
        return loss_scale
    if isinstance(loss_scale, str) and loss_scale == "dynamic":
        scaler = state.get("loss_scaler")
        if scaler is None:
            scaler = state["loss_scaler"] = _amp.DynamicLossScaler()
        return scaler
    if isinstance(loss_scale, numbers.Real) and not isinstance(loss_scale, bool):
        return _amp.DynamicLossScaler(loss_scale, growth_factor=1.0, backoff_factor=1.0)
    raise ValueError("loss_scale must be None, 'dynamic', a number > 0 or a DynamicLossScaler; "
                     f"received {loss_scale!r}")


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


# ---------------------------------------------------------------------------
# the loop
# ---------------------------------------------------------------------------
class _Batcher:
    """Gathers shuffled batches into buffers allocated once per batch size."""

    def __init__(self, x, y):
        self.x, self.y = x, y
        self._buf = {}

    def get(self, idx):
        n = len(idx)
        bufs = self._buf.get(n)
        if bufs is None:
            bufs = self._buf[n] = (np.empty((n,) + self.x.shape[1:], self.x.dtype),
                                   np.empty((n,) + self.y.shape[1:], self.y.dtype))
        for src, out in zip((self.x, self.y), bufs):
            if _parallel_take(src, idx):
                _core.take_rows(src, idx, out)  # the kernels' threads share the rows
            else:
                np.take(src, idx, axis=0, out=out)
        return bufs


def _parallel_take(src, idx) -> bool:
    """Whether _core.take_rows can gather from src: a C-contiguous NumPy array
    with rows of at least 1 KB (smaller ones are not worth the threads), and
    int64 indices."""
    return (type(src) is np.ndarray and src.ndim >= 1 and src.flags.c_contiguous
            and src.dtype.kind in "fiub" and len(src) > 0 and src.nbytes // len(src) >= 1024
            and idx.dtype == np.int64 and idx.flags.c_contiguous)


def fit(model, x, y, loss="cross_entropy", optimizer=None, lr=1e-3, epochs=10, batch_size=128,
        shuffle=True, seed=0, validation_data=None, validation_split=None, metrics=("accuracy",),
        schedule=None, callbacks=(), progress=True, clip_norm=None, accumulate_steps=1,
        loss_scale=None):
    """Train ``model`` on (x, y); returns the :class:`History` (also model.history).

    loss: "cross_entropy" (integer labels), "bce" or "mse", or a Loss.
    optimizer: an Optimizer over model.parameters(), or a name ("adam",
    "adamw", "sgd", "rmsprop", "adagrad") created with ``lr``; None reuses
    the model's optimizer from an earlier fit or checkpoint (else Adam).
    schedule: None (keep the optimizer's lr), a name for
    :func:`fusedtrain.schedules.get`, or a schedule object; it sets every
    group's lr before each step from the global step count (ReduceOnPlateau
    observes ``val_loss``, else ``loss``, once per epoch).
    Training continues where an earlier fit (or a loaded checkpoint) left
    off: the step count, the shuffling RNG and the dropout streams go on.

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
    """
    loss_fn = _losses.get(loss)
    x = _inputs(model, x)
    y = _targets(model, loss_fn, x, y)
    epochs = _int_at_least("epochs", epochs, 0)
    batch_size = _int_at_least("batch_size", batch_size, 1)
    clip_norm = _clip_norm(clip_norm)
    accumulate_steps = _int_at_least("accumulate_steps", accumulate_steps, 1)
    if validation_data is not None and validation_split is not None:
        raise ValueError("pass validation_data or validation_split, not both")
    if validation_split is not None:
        if isinstance(validation_split, bool) or not isinstance(validation_split, numbers.Real) \
                or not 0.0 < validation_split < 1.0:
            raise ValueError(f"validation_split must be in (0, 1); received {validation_split!r}")
        n_val = max(1, int(round(len(x) * validation_split)))
        if n_val >= len(x):
            raise ValueError(f"validation_split={validation_split} leaves no training samples")
        split = np.random.default_rng(seed).permutation(len(x))
        validation_data = (x[split[:n_val]], y[split[:n_val]])
        x, y = np.ascontiguousarray(x[split[n_val:]]), np.ascontiguousarray(y[split[n_val:]])
    if validation_data is not None:
        try:
            xv, yv = validation_data
        except (TypeError, ValueError):
            raise ValueError("validation_data must be a pair (x_val, y_val)") from None
        xv = _inputs(model, xv, "validation_data[0]")
        yv = _targets(model, loss_fn, xv, yv, "validation_data[1]")
    if len(x) == 0:
        raise ValueError("x: expected at least one training sample; received 0")
    opt = _optimizer(model, optimizer, lr)
    metric_fns = _metric_fns(metrics)
    batches_per_epoch = math.ceil(len(x) / batch_size)
    steps_per_epoch = math.ceil(batches_per_epoch / accumulate_steps)  # optimizer steps

    state = model.train_state
    if state is None:
        state = model.train_state = {"epoch": 0, "step": 0, "rng": np.random.default_rng(seed)}
    scaler = _loss_scaler(loss_scale, state)
    if schedule is None:
        sched = None
    elif isinstance(schedule, str):
        sched = _schedules.get(schedule, lr=opt.param_groups[0]["lr"],
                               total_steps=state["step"] + epochs * steps_per_epoch)
    else:
        sched = schedule
    pending = getattr(model, "pending_schedule_state", None)
    if sched is not None and pending and pending.get("class") == type(sched).__name__ \
            and hasattr(sched, "load_state_dict"):
        sched.load_state_dict(pending["state"])  # resumed from a checkpoint
        model.pending_schedule_state = None
    model.schedule = sched
    model.optimizer = opt
    model.stop_training = False
    history = model.history if isinstance(model.history, History) else History()
    model.history = history
    callbacks = list(callbacks or ())
    for cb in callbacks:
        cb.on_train_begin(model)

    batcher = _Batcher(x, y)
    grads = model.gradients()
    bar = _Progress(progress, state["epoch"] + epochs, batches_per_epoch)
    window = batch_size * accumulate_steps  # samples of one optimizer step
    n = len(x)
    for _ in range(epochs):
        epoch = state["epoch"]
        t0 = time.perf_counter()
        order = state["rng"].permutation(n) if shuffle else np.arange(n)
        bar.start(epoch)
        total_loss = 0.0
        sums = {k: 0.0 for k in metric_fns}
        for start in range(0, n, batch_size):
            idx = order[start:start + batch_size]
            xb, yb = batcher.get(idx)
            first = start % window == 0  # the window's first batch
            last = start + batch_size >= min(n, start - start % window + window)
            if sched is not None and first:
                new_lr = float(sched.lr(state["step"]))
                for g in opt.param_groups:
                    g["lr"] = new_lr
            out = model.forward(xb, training=True)
            batch_loss, dout = loss_fn(out, yb)
            for k, f in metric_fns.items():  # before backward: out is still this batch's
                sums[k] += f(yb, out) * len(idx)
            if accumulate_steps > 1:
                # this batch's share of the window's mean loss
                w0 = start - start % window
                dout *= len(idx) / (min(n, w0 + window) - w0)
            if scaler is not None:
                with np.errstate(over="ignore", invalid="ignore"):  # inf: a skipped step
                    dout *= dout.dtype.type(scaler.scale)
            model.backward(dout, accumulate=not first)
            if last:
                if scaler is None:
                    if clip_norm is not None:
                        _ops.clip_grad_norm_(model.grad_arena, clip_norm)
                    opt.step(grads)
                elif clip_norm is None:
                    scaler.step(opt, grads)  # unscaled inside the fused step
                else:  # as torch's GradScaler.unscale_ before clipping
                    arena = model.grad_arena
                    with np.errstate(over="ignore", invalid="ignore"):
                        arena *= arena.dtype.type(1.0 / scaler.scale)
                    found = _amp.found_nonfinite(grads)
                    if not found:
                        _ops.clip_grad_norm_(arena, clip_norm)
                    opt.step(grads, found_inf=found)
                    scaler.update(found)
                state["step"] += 1
            total_loss += float(batch_loss) * len(idx)
            bar.update(float(batch_loss), opt.param_groups[0]["lr"])
        logs = {"loss": total_loss / n}
        logs.update({k: v / n for k, v in sums.items()})
        if validation_data is not None:
            logs.update({"val_" + k: v for k, v in
                         evaluate(model, xv, yv, loss=loss_fn, metrics=metric_fns).items()})
        logs["lr"] = float(opt.param_groups[0]["lr"])
        if scaler is not None:
            logs["loss_scale"] = scaler.scale
        logs["time"] = time.perf_counter() - t0
        state["epoch"] += 1
        if sched is not None and hasattr(sched, "observe"):
            sched.observe(logs.get("val_loss", logs["loss"]))
        history.append(epoch + 1, logs)
        bar.end(epoch, logs)
        for cb in callbacks:
            cb.on_epoch_end(epoch, logs, model)
        if model.stop_training:
            break
    for cb in callbacks:
        cb.on_train_end(model)
    return history


def predict(model, x, batch_size=1024):
    """Model outputs (inference mode) for every row of x, as a new array."""
    x = _inputs(model, x)
    batch_size = _int_at_least("batch_size", batch_size, 1)
    out = None
    for start in range(0, len(x), batch_size):
        yb = model.forward(x[start:start + batch_size], training=False)
        if out is None:
            out = np.empty((len(x),) + yb.shape[1:], dtype=yb.dtype)
        out[start:start + len(yb)] = yb
    if out is None:
        out = np.empty((0, model.output_dim or 0), dtype=model.dtype)
    return out


def evaluate(model, x, y, loss="cross_entropy", metrics=("accuracy",), batch_size=1024):
    """{"loss": mean loss, metric: value, ...} on (x, y) in inference mode."""
    loss_fn = _losses.get(loss)
    x = _inputs(model, x)
    y = _targets(model, loss_fn, x, y)
    metric_fns = metrics if isinstance(metrics, dict) else _metric_fns(metrics)
    scores = predict(model, x, batch_size=batch_size)
    total = 0.0
    for start in range(0, len(x), batch_size):
        total += float(loss_fn(scores[start:start + batch_size], y[start:start + batch_size])[0]) \
            * len(y[start:start + batch_size])
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
    k = _int_at_least("k", k, 2)
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

