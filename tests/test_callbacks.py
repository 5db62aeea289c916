"""The fit callbacks (train.py): EarlyStopping, ModelCheckpoint,
HistoryLogger."""

import json

import pytest
from numpy.testing import assert_array_equal

from fusedtrain.train import EarlyStopping, HistoryLogger, ModelCheckpoint

from conftest import toy_data as _data, toy_mlp as _mlp


def test_early_stopping_restores_best_weights():
    model = _mlp()
    cb = EarlyStopping(monitor="val_loss", patience=2, restore_best=True)
    cb.on_train_begin(model)
    model.stop_training = False
    best = None
    for epoch, val in enumerate([1.0, 0.5, 0.7, 0.8]):
        model.param_arena[...] = epoch  # a distinct model per epoch
        cb.on_epoch_end(epoch, {"val_loss": val}, model)
        if val == 0.5:
            best = model.param_arena.copy()
    assert model.stop_training and cb.best_epoch == 1
    cb.on_train_end(model)
    assert_array_equal(model.param_arena, best)


def test_early_stopping_stops_fit():
    x, y = _data()
    model = _mlp()
    hist = model.fit(x, y, epochs=50, lr=0.0, validation_split=0.25, progress=False,
                     callbacks=[EarlyStopping(patience=2, min_delta=1e-9)])
    assert len(hist["loss"]) == 3  # lr = 0: never improves after the first epoch


def test_checkpoint_and_history_logger_callbacks(tmp_path):
    x, y = _data()
    model = _mlp()
    csv_path, jl_path = tmp_path / "h.csv", tmp_path / "h.jsonl"
    model.fit(x, y, epochs=3, validation_split=0.2, progress=False,
              callbacks=[ModelCheckpoint(tmp_path / "e{epoch}.npz", save_best_only=False),
                         HistoryLogger(csv_path), HistoryLogger(jl_path)])
    assert sorted(p.name for p in tmp_path.glob("e*.npz")) == ["e1.npz", "e2.npz", "e3.npz"]
    lines = csv_path.read_text().strip().splitlines()
    assert lines[0].startswith("epoch,loss") and len(lines) == 4
    rows = [json.loads(l) for l in jl_path.read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3] and "val_loss" in rows[0]


# ---------------------------------------------------------------------------
# Keras's hook signatures, self.model, batch hooks
# ---------------------------------------------------------------------------
def test_keras_signatures_and_batch_hooks():
    from fusedtrain.train import Callback

    calls = []

    class Keras(Callback):
        def on_train_begin(self, logs=None):
            calls.append(("begin", self.model, logs))

        def on_epoch_begin(self, epoch, logs=None):
            calls.append(("epoch_begin", epoch))

        def on_train_batch_begin(self, batch, logs=None):
            calls.append(("batch_begin", batch))

        def on_train_batch_end(self, batch, logs=None):
            calls.append(("batch_end", batch, sorted(logs)))

        def on_epoch_end(self, epoch, logs=None):
            calls.append(("epoch_end", epoch, "loss" in logs))
            if epoch == 1:
                self.model.stop_training = True

        def on_train_end(self, logs=None):
            calls.append(("end", "loss" in logs))

    class Old(Callback):  # fusedtrain's own signatures keep working
        def on_train_begin(self, model, logs=None):
            calls.append(("old_begin", model))

        def on_epoch_end(self, epoch, logs, model):
            calls.append(("old_epoch_end", epoch, model))

    x, y = _data()
    model = _mlp()
    model.fit(x, y, epochs=5, batch_size=48, progress=False, callbacks=[Keras(), Old()])
    assert calls[:2] == [("begin", model, {}), ("old_begin", model)]
    assert calls[2:7] == [("epoch_begin", 0), ("batch_begin", 0), ("batch_end", 0, ["loss", "size"]),
                          ("batch_begin", 1), ("batch_end", 1, ["loss", "size"])]
    assert calls[7:9] == [("epoch_end", 0, True), ("old_epoch_end", 0, model)]
    assert calls[-1] == ("end", True)
    assert sum(c[0] == "epoch_end" for c in calls) == 2  # stopped by self.model


def test_duck_typed_callback_and_bad_callback():
    class Plain:  # no base class: any object with a hook
        n = 0

        def on_epoch_end(self, epoch, logs=None):
            self.n += 1

    x, y = _data()
    cb = Plain()
    _mlp().fit(x, y, epochs=2, progress=False, callbacks=[cb])
    assert cb.n == 2 and cb.model is not None
    with pytest.raises(TypeError, match=r"callbacks\[0\]"):
        _mlp().fit(x, y, epochs=1, progress=False, callbacks=[object()])


def test_epoch_line_fits_the_width():
    from fusedtrain.callbacks import epoch_line

    logs = {"loss": 0.012345, "accuracy": 0.99721, "top_k_accuracy": 1.0, "val_loss": 0.081234,
            "val_accuracy": 0.975, "val_top_k_accuracy": 0.999, "lr": 3e-5, "time": 0.0412}
    for width in (60, 79, 120):
        line = epoch_line(29, 30, logs, width)
        assert len(line) <= width and line.startswith("epoch 30/30")
    assert "val_acc=0.975" in epoch_line(29, 30, logs, 79)
    assert "time=" in epoch_line(29, 30, logs, 200)
    assert epoch_line(0, 1, logs, 20).endswith("...")


def test_progress_width_0_and_notebooks(monkeypatch, capsys):
    import os

    from fusedtrain import callbacks

    monkeypatch.setattr("shutil.get_terminal_size",
                        lambda fallback=(80, 24): os.terminal_size((0, 0)))
    assert callbacks.terminal_width() == 80
    try:
        import tqdm.auto
    except ImportError:  # tqdm is the examples' extra: the plain line still fits
        pass
    else:
        monkeypatch.setattr(callbacks, "_in_notebook", lambda: True)
        assert callbacks._bar_class() is tqdm.auto.tqdm
    logs = {"loss": 0.5, "accuracy": 0.9, "val_loss": 0.6, "val_accuracy": 0.85, "lr": 1e-3,
            "time": 0.1, "nonfinite_steps": 0}
    p = callbacks._Progress(2, 30, 4)
    p.end(0, logs)
    assert len(capsys.readouterr().out.rstrip("\n")) <= 79
