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
