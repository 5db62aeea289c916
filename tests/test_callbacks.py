"""The fit callbacks (train.py): EarlyStopping, ModelCheckpoint,
HistoryLogger."""

import json

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
