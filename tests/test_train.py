"""The training loop: one fused step against a NumPy reference step, fit on
digits, checkpoints (resume, atomic write, mismatch), callbacks, bad input,
the CLI."""

import json
import os

import numpy as np
import pytest
from numpy.testing import assert_allclose, assert_array_equal

import fusedtrain as ft
from fusedtrain import checkpoint, cli, reference, schedules
from fusedtrain.nn import Dense, Dropout, Sequential
from fusedtrain.nn.losses import CrossEntropy
from fusedtrain.train import EarlyStopping, HistoryLogger, ModelCheckpoint, cross_validate


def _data(n=96, d=8, c=5, seed=0, dtype=np.float64):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d)).astype(dtype)
    w = rng.standard_normal((d, c))
    y = np.argmax(x @ w + 0.1 * rng.standard_normal((n, c)), axis=1).astype(np.int64)
    return x, y


def _mlp(dtype=np.float64, dropout=0.0, seed=0, hidden=16):
    layers = [Dense(8, hidden, activation="relu")]
    if dropout:
        layers.append(Dropout(dropout))
    layers.append(Dense(hidden, 5))
    return Sequential(layers, dtype=dtype, seed=seed)


# ---------------------------------------------------------------------------
# one step equals the NumPy reference
# ---------------------------------------------------------------------------
def _reference_step(params, x, y, state, step, lr):
    w1, b1, w2, b2 = params
    h, z1 = reference.dense_forward(x, w1, b1, "relu")
    out, z2 = reference.dense_forward(h, w2, b2, "identity")
    _, dout = reference.softmax_cross_entropy(out, y)
    dh, dw2, db2 = reference.dense_backward(dout, h, w2, z2, "identity")
    _, dw1, db1 = reference.dense_backward(dh, x, w1, z1, "relu")
    for p, g, (m, v) in zip(params, [dw1, db1, dw2, db2], state):
        reference.adam(p, g, m, v, step=step, lr=lr)


@pytest.mark.parametrize("dtype,rtol", [(np.float64, 1e-12), (np.float32, 2e-5)])
def test_training_step_matches_numpy_reference(dtype, rtol):
    x, y = _data(dtype=dtype)
    model = _mlp(dtype)
    params = [p.copy() for p in model.parameters()]
    state = [(np.zeros_like(p), np.zeros_like(p)) for p in params]
    opt = ft.optim.Adam(model.parameters(), lr=1e-2)
    loss = CrossEntropy()
    for step in range(1, 4):
        out = model.forward(x, training=True)
        _, dout = loss(out, y)
        model.backward(dout)
        opt.step(model.gradients())
        _reference_step(params, x, y, state, step, 1e-2)
        for got, want in zip(model.parameters(), params):
            assert_allclose(got, want, rtol=rtol, atol=rtol * 1e-2)


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


def test_parameters_tile_one_arena_and_optimizer_steps_it_whole():
    model = _mlp(np.float32)
    views = model.parameters()
    assert all(v.base is model.param_arena for v in views)
    assert sum(v.size for v in views) == model.param_arena.size
    assert all(g.base is model.grad_arena for g in model.gradients())
    opt = ft.optim.Adam(views)
    assert opt._arena[0] is model.param_arena


def test_forward_reuses_output_buffers():
    x, _ = _data()
    model = _mlp()
    y1 = model.forward(x)
    y2 = model.forward(x)
    assert y1 is y2  # the same preallocated buffer for the same batch size


def test_predict_batches_equal_one_forward():
    x, _ = _data(n=50)
    model = _mlp()
    whole = model.forward(x).copy()
    assert_allclose(model.predict(x, batch_size=7), whole, rtol=1e-12)


# ---------------------------------------------------------------------------
# digits
# ---------------------------------------------------------------------------
def test_cli_default_reaches_097_on_digits(capsys):
    pytest.importorskip("sklearn")
    assert cli.main(["train", "--quiet"]) == 0
    out = capsys.readouterr().out
    acc = float(out.split("test accuracy")[1].split()[0])
    assert acc >= 0.97, out


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
# checkpoints
# ---------------------------------------------------------------------------
def _resume_setup():
    x, y = _data(n=80, dtype=np.float32)
    sched = schedules.CosineAnnealing(1e-2, total_steps=40)
    return x, y, sched


def test_resume_is_bitwise_identical(tmp_path):
    x, y, sched = _resume_setup()
    full = _mlp(np.float32, dropout=0.2)
    full.fit(x, y, optimizer="adam", epochs=4, batch_size=16, schedule=sched, progress=False)

    first = _mlp(np.float32, dropout=0.2)
    first.fit(x, y, optimizer="adam", epochs=2, batch_size=16, schedule=sched, progress=False)
    path = tmp_path / "ckpt.npz"
    first.save(path)

    resumed = _mlp(np.float32, dropout=0.2, seed=123)  # different init: all comes from the file
    resumed.load(path)
    resumed.fit(x, y, epochs=2, batch_size=16, schedule=sched, progress=False)
    assert_array_equal(resumed.param_arena, full.param_arena)
    assert resumed.train_state["epoch"] == 4
    sd_a, sd_b = full.optimizer.state_dict(), resumed.optimizer.state_dict()
    for k in sd_a["state"]:
        for name, v in sd_a["state"][k].items():
            assert_array_equal(sd_b["state"][k][name], v)
    assert resumed.history["loss"] == pytest.approx(full.history["loss"])


def test_resume_keeps_the_dynamic_loss_scaler(tmp_path):
    """fit(loss_scale="dynamic") keeps its scaler in the train state; a
    checkpoint carries it, so a resumed run goes on with the same scale and
    counts (and the same parameters) as an uninterrupted one."""
    x, y, _ = _resume_setup()
    kw = dict(optimizer="adam", batch_size=16, progress=False, loss_scale="dynamic")
    full = _mlp(np.float32)
    full.fit(x, y, epochs=4, **kw)

    first = _mlp(np.float32)
    first.fit(x, y, epochs=2, **kw)
    scaler = first.train_state["loss_scaler"]
    scaler.scale, scaler.good_steps = 2.0 ** 12, 7  # as if it had backed off: must survive
    path = tmp_path / "scaled.npz"
    first.save(path)

    resumed = _mlp(np.float32, seed=5)
    resumed.load(path)
    assert resumed.train_state["loss_scaler"].state_dict() == scaler.state_dict()
    resumed.fit(x, y, epochs=2, **kw)
    assert resumed.train_state["loss_scaler"].good_steps == 7 + 10  # 2 epochs of 5 steps
    assert resumed.history["loss_scale"][-1] == 2.0 ** 12
    full_sd = full.train_state["loss_scaler"].state_dict()
    assert full_sd["good_steps"] == 20 and full_sd["scale"] == 2.0 ** 16


def test_atomic_write_keeps_old_checkpoint_on_failure(tmp_path, monkeypatch):
    x, y, _ = _resume_setup()
    model = _mlp(np.float32)
    model.fit(x, y, epochs=1, progress=False)
    path = tmp_path / "model.npz"
    model.save(path)
    before = path.read_bytes()

    def boom(*args, **kwargs):
        raise OSError("disk full")

    model.fit(x, y, epochs=1, progress=False)
    monkeypatch.setattr(checkpoint.os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        model.save(path)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["model.npz"]  # no temporary left behind


def test_load_mismatch_raises_and_changes_nothing(tmp_path):
    x, y, _ = _resume_setup()
    small = _mlp(np.float32, hidden=16)
    small.fit(x, y, epochs=1, progress=False)
    small.save(tmp_path / "a.npz")
    other = _mlp(np.float32, hidden=12)
    snapshot = other.param_arena.copy()
    with pytest.raises(ValueError, match="do not match"):
        other.load(tmp_path / "a.npz")
    assert_array_equal(other.param_arena, snapshot)
    assert other.optimizer is None and other.train_state is None

    (tmp_path / "junk.npz").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="checkpoint"):
        other.load(tmp_path / "junk.npz")
    assert_array_equal(other.param_arena, snapshot)


# ---------------------------------------------------------------------------
# callbacks
# ---------------------------------------------------------------------------
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


def test_bad_layers():
    with pytest.raises(ValueError, match="activation"):
        Dense(3, 4, activation="swishy")
    with pytest.raises(ValueError, match="in_features=5"):
        Sequential([Dense(3, 4), Dense(5, 2)])
    with pytest.raises(ValueError, match="p must be in"):
        Dropout(1.0)


def test_cli_info(capsys):
    assert cli.main(["info"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["version"] == ft.__version__ and "simd" in info and "blas" in info


def test_cli_save_resume_and_plot(tmp_path, capsys):
    pytest.importorskip("sklearn")
    ck, png = str(tmp_path / "c.npz"), str(tmp_path / "c.png")
    args = ["train", "--quiet", "--hidden", "32", "--batch-size", "128", "--dropout", "0.1"]
    assert cli.main(args + ["--epochs", "2", "--save", ck]) == 0
    assert cli.main(args + ["--epochs", "3", "--resume", ck, "--plot", png]) == 0
    out = capsys.readouterr().out
    assert "resumed at epoch 2" in out and os.path.exists(png)


def test_cli_bad_arguments(capsys):
    with pytest.raises(SystemExit):
        cli.main(["train", "--optimizer", "nope"])
    with pytest.raises(SystemExit):
        cli.main(["train", "--hidden", "12,x"])
    assert cli.main(["train", "--data", "mnist", "--data-dir", "/nonexistent"]) == 2
    assert "mnist" in capsys.readouterr().err.lower()
