"""History, callbacks and the progress display of :func:`fusedtrain.train.fit`.

A callback sees the model after every epoch; it stops training with
``model.stop_training = True`` (kept in the model's
:class:`fusedtrain.train.TrainState`).
"""

from __future__ import annotations

import csv
import json
import sys

import numpy as np

from . import _validate as V

__all__ = ["History", "Callback", "EarlyStopping", "ModelCheckpoint", "HistoryLogger"]


# ---------------------------------------------------------------------------
# history and callbacks
# ---------------------------------------------------------------------------
class History:
    """Per-epoch records: ``history.history["loss"]``, ``["val_accuracy"]``,
    ``["lr"]``, ``["time"]``, ..."""

    def __init__(self) -> None:
        self.history: dict[str, list[float]] = {}
        self.epochs: list[int] = []

    def append(self, epoch: int, logs: dict) -> None:
        self.epochs.append(epoch)
        for k, v in logs.items():
            self.history.setdefault(k, []).append(v)

    def __getitem__(self, key: str) -> list[float]:
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
        """The inverse of :meth:`to_dict`; ValueError naming what is wrong
        (a checkpoint's history is read through it)."""
        if not isinstance(d, dict) or set(d) != {"epochs", "history"}:
            raise ValueError("history: expected a dict with keys 'epochs' and 'history'; "
                             f"received {_describe(d)}")
        epochs, records = d["epochs"], d["history"]
        if not isinstance(epochs, list) or not all(_is_int(e) and e >= 1 for e in epochs):
            raise ValueError("history['epochs']: expected a list of ints >= 1")
        if not isinstance(records, dict):
            raise ValueError(f"history['history']: expected a dict; received {_describe(records)}")
        for k, v in records.items():
            if not isinstance(v, list) or len(v) > len(epochs) \
                    or not all(_is_real(x) for x in v):
                raise ValueError(f"history['history'][{k!r}]: expected a list of at most "
                                 f"{len(epochs)} numbers (one per epoch)")
        h = cls()
        h.epochs = list(epochs)
        h.history = {k: list(v) for k, v in records.items()}
        return h


def _is_int(x) -> bool:
    return type(x) is int


def _is_real(x) -> bool:
    return type(x) in (int, float)


def _describe(x) -> str:
    return f"{type(x).__name__} {x!r:.60}"


class Callback:
    """Hooks called by fit. ``self.model`` is the model being trained (set
    by fit before the first hook); set ``self.model.stop_training = True``
    to stop after the current epoch.

    Override any of the hooks; fit calls only those a subclass overrides.
    Two signatures are accepted, told apart by the parameters of the
    method, once at the start of fit:

    - Keras's: ``on_train_begin(self, logs=None)``,
      ``on_epoch_end(self, epoch, logs=None)``,
      ``on_train_end(self, logs=None)`` (the model is ``self.model``);
    - fusedtrain's own: ``on_train_begin(self, model, logs=None)``,
      ``on_epoch_end(self, epoch, logs, model)``,
      ``on_train_end(self, model, logs=None)`` -- an ``on_epoch_end`` with
      three parameters after self, or an ``on_train_begin`` /
      ``on_train_end`` whose first parameter is not called ``logs``.

    ``on_epoch_begin(self, epoch, logs=None)``,
    ``on_train_batch_begin(self, batch, logs=None)`` and
    ``on_train_batch_end(self, batch, logs=None)`` take Keras's signature
    (``batch``: the batch's index in its epoch, from 0; the batch-end logs
    hold this batch's ``loss``). ``epoch`` counts from 0 over the model's
    whole training (it goes on across fit calls and checkpoints); ``logs``
    of on_epoch_end are the epoch's logged values (``loss``, the metrics,
    ``val_*``, ``lr``, ``time``), of on_train_end the last epoch's.
    """

    #: the model being trained (set by fit)
    model = None

    def on_train_begin(self, model=None, logs=None):
        pass

    def on_epoch_begin(self, epoch, logs=None):
        pass

    def on_train_batch_begin(self, batch, logs=None):
        pass

    def on_train_batch_end(self, batch, logs=None):
        pass

    def on_epoch_end(self, epoch, logs=None, model=None):
        pass

    def on_train_end(self, model=None, logs=None):
        pass


#: the hooks fit calls, in the order of a run
HOOKS = ("on_train_begin", "on_epoch_begin", "on_train_batch_begin", "on_train_batch_end",
         "on_epoch_end", "on_train_end")


def _positional(method):
    """(names of the positional parameters, whether it takes *args); None
    when the signature cannot be read."""
    import inspect

    try:
        params = inspect.signature(method).parameters.values()
    except (TypeError, ValueError):
        return None
    names = [p.name for p in params
             if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return names, any(p.kind == p.VAR_POSITIONAL for p in params)


def hook(cb, name, model):
    """A function ``f(index_or_None, logs)`` that calls ``cb``'s hook
    ``name`` in the signature the hook was written for, or None when the
    callback does not override it."""
    method = getattr(cb, name, None)
    if method is None or not callable(method):
        return None
    base = getattr(Callback, name)
    if getattr(type(cb), name, None) is base:
        return None  # the base's no-op
    sig = _positional(method)
    names, star = sig if sig is not None else ([], True)
    if name in ("on_train_begin", "on_train_end"):
        if names and names[0] != "logs":  # fusedtrain's (model, logs=None)
            if len(names) >= 2 or star:
                return lambda i, logs: method(model, logs)
            return lambda i, logs: method(model)
        if names or star:
            return lambda i, logs: method(logs)
        return lambda i, logs: method()
    if name == "on_epoch_end" and len(names) >= 3:  # fusedtrain's (epoch, logs, model)
        return lambda i, logs: method(i, logs, model)
    if len(names) >= 2 or star:
        return lambda i, logs: method(i, logs)
    if len(names) == 1:
        return lambda i, logs: method(i)
    return lambda i, logs: method()


class Hooks:
    """The hooks of a list of callbacks, each a list of calls (empty for a
    hook no callback overrides, so fit skips it at no cost)."""

    def __init__(self, callbacks, model):
        self.callbacks = list(callbacks)
        self.model = model
        for name in HOOKS:
            setattr(self, name, [f for f in (hook(cb, name, model) for cb in self.callbacks)
                                 if f is not None])

    def bind(self) -> None:
        """Set ``cb.model`` on every callback (fit calls it as training begins)."""
        for cb in self.callbacks:
            try:
                cb.model = self.model
            except AttributeError:  # a read-only property of the callback's own
                pass

    @staticmethod
    def call(calls, index, logs) -> None:
        for f in calls:
            f(index, logs)


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

    def __init__(self, monitor: str = "val_loss", patience: int = 5, min_delta: float = 0.0,
                 mode: str = "auto", restore_best: bool = True) -> None:
        self.monitor = monitor
        self.patience = V.integer("patience", patience, 0)
        self.min_delta = V.at_least("min_delta", min_delta)
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
#: the width a line is fitted to when the terminal's is unknown or 0
DEFAULT_WIDTH = 80


def terminal_width() -> int:
    """The terminal's width in columns; 80 when it is unknown or reported
    as 0 (some CI runners and pseudo-terminals)."""
    import shutil

    try:
        cols = shutil.get_terminal_size((DEFAULT_WIDTH, 24)).columns
    except (OSError, ValueError):
        cols = 0
    return cols if cols > 0 else DEFAULT_WIDTH


def _in_notebook() -> bool:
    """Whether this runs in a Jupyter kernel (IPython's ZMQ shell)."""
    ipython = sys.modules.get("IPython")
    if ipython is None:
        return False
    try:
        shell = ipython.get_ipython()
    except Exception:  # an IPython too old or half imported: not a notebook
        return False
    return shell is not None and type(shell).__name__ == "ZMQInteractiveShell"


def _bar_class():
    """tqdm's class for this output: ``tqdm.auto`` (widgets) in a notebook,
    the console bar on a terminal; None otherwise (plain lines) or without
    tqdm."""
    notebook = _in_notebook()
    if not notebook and not sys.stdout.isatty():
        return None
    try:
        if notebook:
            from tqdm.auto import tqdm
        else:
            from tqdm import tqdm
    except ImportError:
        return None
    return tqdm


# abbreviations used when a line does not fit
_SHORT = {"accuracy": "acc", "top_k_accuracy": "top5", "precision": "prec", "recall": "rec",
          "loss_scale": "scale", "nonfinite_steps": "skipped"}
# the values left out first, in order, when a line does not fit
_OPTIONAL = ("time", "lr", "loss_scale")


def epoch_line(epoch, epochs, logs, width) -> str:
    """One line for an epoch's logs that fits ``width`` columns: the time,
    then the learning rate and the loss scale are left out, then names are
    shortened and values rounded to 3 digits, until it fits (a line still
    too long is cut, ending in "...")."""
    head = f"epoch {epoch + 1}/{epochs}"
    items = list(logs.items())
    for level in range(len(_OPTIONAL) + 3):
        drop = set(_OPTIONAL[:level])
        short = level > len(_OPTIONAL)
        digits = 3 if level > len(_OPTIONAL) + 1 else 4
        sep = " " if short else "  "
        parts = [head]
        for k, v in items:
            if k in drop:
                continue
            if short:
                base = k[4:] if k.startswith("val_") else k
                k = ("val_" if k.startswith("val_") else "") + _SHORT.get(base, base)
            parts.append(f"{k}={_fmt(v, digits)}")
        line = sep.join(parts)
        if len(line) <= width:
            return line
    return line[:max(width - 3, 0)] + "..."


class _Progress:
    """What fit shows (``verbose``): 0 nothing; 1 a tqdm bar per epoch on a
    terminal (``tqdm.auto``'s in a notebook) and one line per epoch; 2 one
    line per epoch only (logs, CI). Each epoch's line fits the terminal's
    width (80 columns when it is unknown or 0)."""

    def __init__(self, verbose, epochs, steps):
        self.verbose = verbose
        self.enabled = verbose > 0
        self.epochs = epochs
        self.steps = steps
        self.bar = None
        self.bar_cls = _bar_class() if verbose == 1 else None
        self.tty = self.bar_cls is not None

    def start(self, epoch):
        if self.bar_cls is not None:
            # a notebook's widget takes its own width (its ncols are pixels)
            size = {} if _in_notebook() else {"ncols": terminal_width(), "file": sys.stdout}
            self.bar = self.bar_cls(total=self.steps, desc=f"epoch {epoch + 1}/{self.epochs}",
                                    leave=False, **size)

    def update(self, loss, lr):
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", refresh=False)

    def end(self, epoch, logs):
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        # one column spare: a line exactly as wide as the terminal wraps on some
        print(epoch_line(epoch, self.epochs, logs, terminal_width() - 1), flush=True)


def _fmt(v, digits=4):
    if isinstance(v, float):
        return f"{v:.{digits}g}" if abs(v) >= 1e-3 or v == 0 else f"{v:.{digits - 1}e}"
    return str(v)
