"""The training loop (train.py): fit against hand-written steps, fit on
digits with history and metrics, the history plot, cross-validation, the
progress output, bad arguments and bad data.

Callbacks are tested in test_callbacks.py, checkpoints in
test_checkpoint.py, the layers and Sequential in test_model.py, the CLI in
test_cli.py."""

import numpy as np
import pytest
from numpy.testing import assert_array_equal

import fusedtrain as ft
from fusedtrain.nn import Dense, Sequential
from fusedtrain.nn.losses import CrossEntropy
from fusedtrain.train import cross_validate

from conftest import toy_data as _data, toy_mlp as _mlp


# ---------------------------------------------------------------------------
# fit
# ---------------------------------------------------------------------------
def test_fit_full_batch_equals_manual_steps():
    x, y = _data()
    a, b = _mlp(), _mlp()
    a.fit(x, y, optimizer="sgd", lr=0.1, epochs=3, batch_size=len(x), shuffle=False, progress=False)
    opt = ft.optim.SGD(b.parameters(), lr=0.1)
    loss = CrossEntropy()
    for _ in range(3):
        _, d = loss(b.forward(x, training=True), y)
        b.backward(d)
        opt.step(b.gradients())
    assert_array_equal(a.param_arena, b.param_arena)


# ---------------------------------------------------------------------------
# digits
# ---------------------------------------------------------------------------
def test_fit_history_and_metrics_on_digits():
    pytest.importorskip("sklearn")
    (xtr, ytr), (xte, yte) = ft.data.load_digits(seed=0)
    model = Sequential([Dense(64, 64, activation="relu"), Dense(64, 10)], seed=1)
    hist = model.fit(xtr, ytr, epochs=3, batch_size=64, validation_data=(xte, yte),
                     metrics=["accuracy", "f1"], progress=False)
    for key in ("loss", "accuracy", "f1", "val_loss", "val_accuracy", "val_f1", "lr", "time"):
        assert len(hist[key]) == 3
    assert hist["loss"][-1] < hist["loss"][0]
    res = model.evaluate(xte, yte, metrics=["accuracy"])
    assert res["accuracy"] == pytest.approx(hist["val_accuracy"][-1])


# ---------------------------------------------------------------------------
# history, cross-validation, progress
# ---------------------------------------------------------------------------
def test_history_plot_writes_png(tmp_path):
    pytest.importorskip("matplotlib")
    x, y = _data()
    model = _mlp()
    hist = model.fit(x, y, epochs=2, validation_split=0.2, progress=False)
    hist.plot(tmp_path / "h.png")
    assert (tmp_path / "h.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cross_validate_folds():
    x, y = _data(n=60)
    res = cross_validate(lambda: _mlp(), x, y, k=3, epochs=2, batch_size=16)
    assert len(res["folds"]) == 3
    assert res["mean"]["accuracy"] == pytest.approx(np.mean([f["accuracy"] for f in res["folds"]]))


def test_progress_plain_lines_when_not_a_terminal(capsys):
    x, y = _data()
    _mlp().fit(x, y, epochs=2, progress=True)
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith("epoch 1/2") and "loss=" in lines[0]


# ---------------------------------------------------------------------------
# bad input
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs,match", [
    ({"batch_size": 0}, "batch_size"),
    ({"loss": "hinge"}, "loss"),
    ({"optimizer": "lbfgs"}, "optimizer"),
    ({"validation_split": 1.5}, "validation_split"),
    ({"validation_split": 0.0}, "validation_split"),
    ({"epochs": -1}, "epochs"),
])
def test_fit_bad_arguments(kwargs, match):
    x, y = _data()
    model = _mlp()
    before = model.param_arena.copy()
    with pytest.raises(ValueError, match=match):
        model.fit(x, y, progress=False, **kwargs)
    assert_array_equal(model.param_arena, before)


def test_fit_bad_data():
    x, y = _data()
    model = _mlp()
    with pytest.raises(ValueError, match="y: expected 96 targets"):
        model.fit(x, y[:-1], progress=False)
    with pytest.raises(ValueError, match="integer class labels"):
        model.fit(x, y.astype(np.float64), progress=False)
    with pytest.raises(ValueError, match=r"labels must be in \[0, 5\)"):
        model.fit(x, y + 3, progress=False)
    with pytest.raises(ValueError, match="features"):
        model.fit(x[:, :5], y, progress=False)
