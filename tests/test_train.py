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


# ---------------------------------------------------------------------------
# Keras's arguments
# ---------------------------------------------------------------------------
def test_sequential_methods_spell_out_trains_signatures():
    import inspect

    from fusedtrain import train

    for name in ("fit", "evaluate", "predict"):
        mine = list(inspect.signature(getattr(Sequential, name)).parameters.values())[1:]
        theirs = list(inspect.signature(getattr(train, name)).parameters.values())[1:]
        assert [(p.name, p.default, p.kind) for p in mine] == \
            [(p.name, p.default, p.kind) for p in theirs], name


def test_zero_sample_weights_leave_samples_out():
    x, y = _data()
    half = len(x) // 2
    w = np.r_[np.ones(half), np.zeros(len(x) - half)]
    a, b = _mlp(), _mlp()
    # sum(w_i l_i) / N: half the weight of a mean over the first half alone
    a.fit(x, y, optimizer="sgd", lr=0.1, epochs=3, batch_size=len(x), sample_weight=w,
          progress=False)
    b.fit(x[:half], y[:half], optimizer="sgd", lr=0.05, epochs=3, batch_size=len(x),
          progress=False)
    np.testing.assert_allclose(a.param_arena, b.param_arena, rtol=1e-10, atol=1e-12)


def test_class_weight_is_a_per_sample_weight_of_the_label():
    x, y = _data()
    cw = {0: 1.0, 1: 2.0, 2: 0.5, 3: 1.0, 4: 3.0}
    a, b = _mlp(), _mlp()
    ha = a.fit(x, y, epochs=2, batch_size=16, class_weight=cw, progress=False)
    hb = b.fit(x, y, epochs=2, batch_size=16, progress=False,
               sample_weight=np.array([cw[c] for c in y]))
    assert ha["loss"] == hb["loss"]
    assert_array_equal(a.param_arena, b.param_arena)
    lw = np.array([cw[c] for c in y])
    per = np.array([a.evaluate(x[i:i + 1], y[i:i + 1])["loss"] for i in range(len(x))])
    assert a.evaluate(x, y, sample_weight=lw)["loss"] == pytest.approx(np.mean(lw * per))


@pytest.mark.parametrize("kwargs,error,match", [
    ({"class_weight": {0: 1.0}}, ValueError, r"no weight for the classes \[1, 2, 3, 4\]"),
    ({"class_weight": [1.0, 1.0]}, ValueError, "2 weights, but y holds class 4"),
    ({"sample_weight": np.ones(3)}, ValueError, r"expected shape \(96,\)"),
    ({"sample_weight": -np.ones(96)}, ValueError, "finite weights >= 0"),
    ({"sample_weight": np.array(["a"] * 96)}, TypeError, "sample_weight"),
    ({"verbose": 3}, ValueError, "verbose"),
    ({"initial_epoch": 5, "epochs": 3}, ValueError, "epochs: with initial_epoch=5"),
    ({"schedule": lambda step: -1.0}, ValueError, "lr at step 0"),
    ({"schedule": lambda step: "fast"}, TypeError, "returned str"),
])
def test_keras_arguments_checked_before_anything_changes(kwargs, error, match):
    x, y = _data()
    model = _mlp()
    before = model.param_arena.copy()
    with pytest.raises(error, match=match):
        model.fit(x, y, progress=False, **kwargs)
    assert model.train_state is None
    assert_array_equal(model.param_arena, before)


def test_initial_epoch_has_kerass_meaning():
    x, y = _data()
    model = _mlp()
    hist = model.fit(x, y, epochs=3, initial_epoch=1, progress=False)
    assert hist.epochs == [2, 3] and model.train_state.epoch == 3
    model.fit(x, y, epochs=5, initial_epoch=3, progress=False)
    assert hist.epochs == [2, 3, 4, 5]
    with pytest.raises(ValueError, match="has trained 5 epochs; received 2"):
        model.fit(x, y, epochs=6, initial_epoch=2, progress=False)


def test_schedule_as_a_plain_callable():
    x, y = _data()
    model = _mlp()
    steps = []

    def lr(step):
        steps.append(step)
        return 0.01 / (1 + step)

    hist = model.fit(x, y, epochs=2, batch_size=32, schedule=lr, progress=False)
    assert steps[1:] == list(range(6))  # the check, then each step
    assert hist["lr"] == [0.01 / 3, 0.01 / 6]


def test_metric_logged_under_the_name_given():
    x, y = _data()
    hist = _mlp().fit(x, y, epochs=1, metrics=["acc"], validation_split=0.25, progress=False)
    assert hist["acc"] and hist["val_acc"] and "accuracy" not in hist.history


def test_verbose_levels(capsys):
    x, y = _data()
    _mlp().fit(x, y, epochs=2, verbose=0)
    assert capsys.readouterr().out == ""
    _mlp().fit(x, y, epochs=2, verbose=2, progress=False)  # verbose decides
    assert len(capsys.readouterr().out.splitlines()) == 2
    _mlp().fit(x, y, epochs=2, verbose=1)  # not a terminal: lines
    assert capsys.readouterr().out.startswith("epoch 1/2")
