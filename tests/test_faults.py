"""Faults of the layers above the kernels: non-finite steps in fit, an
optimizer over other arrays, resume against an uninterrupted run (every
schedule name, optimizer and clip / accumulate / loss-scale combination),
damaged and crafted checkpoints, concurrent predict, bounded layer buffers."""

import threading
import tracemalloc

import numpy as np
import pytest
from numpy.testing import assert_array_equal

import fusedtrain as ft
from fusedtrain import _archive, schedules
from fusedtrain.train import ModelCheckpoint
from conftest import toy_data, toy_mlp


def _snapshot(model):
    """What a failed call must leave as it was."""
    st = model.train_state
    return (model.param_arena.copy(), st,
            None if st is None else (st.epoch, st.step, st.optimizer, st.history.to_dict()),
            None if st is None or st.optimizer is None else st.optimizer.state_dict())


def _assert_unchanged(model, snap):
    params, st, fields, osd = snap
    assert_array_equal(model.param_arena, params)
    assert model.train_state is st
    if st is not None:
        assert (st.epoch, st.step, st.optimizer, st.history.to_dict()) == fields
    if osd is not None:
        now = model.optimizer.state_dict()
        assert now["param_groups"] == osd["param_groups"]
        for k, entry in osd["state"].items():
            for name, v in entry.items():
                assert_array_equal(now["state"][k][name], v)


# ---------------------------------------------------------------------------
# non-finite steps
# ---------------------------------------------------------------------------
def _nan_data(row=20):
    x, y = toy_data(n=64, dtype=np.float32)
    x[row, 3] = np.nan  # one NaN "pixel": batch 2 of 16 without shuffling
    return x, y


@pytest.mark.parametrize("clip_norm", [None, 1.0])
@pytest.mark.parametrize("loss_scale", [None, "dynamic"])
def test_nan_input_raises_naming_epoch_and_batch_with_the_model_as_before(clip_norm, loss_scale):
    x, y = _nan_data()
    kw = dict(batch_size=16, shuffle=False, progress=False, clip_norm=clip_norm,
              loss_scale=loss_scale, optimizer="adam", lr=1e-2)
    model = toy_mlp(np.float32)
    with pytest.raises(FloatingPointError, match="epoch 1, batch 2"):
        model.fit(x, y, epochs=1, **kw)
    # the first batch's step was taken, the second's was not
    ref = toy_mlp(np.float32)
    ref.fit(x[:16], y[:16], epochs=1, **kw)
    assert_array_equal(model.param_arena, ref.param_arena)
    assert np.isfinite(model.param_arena).all()
    assert model.optimizer.state_dict()["state"][0]["step"] == 1


@pytest.mark.parametrize("clip_norm", [None, 1.0])
@pytest.mark.parametrize("loss_scale", [None, "dynamic", 2.0**8])
@pytest.mark.parametrize("accumulate_steps", [1, 2])
def test_skip_leaves_out_nonfinite_steps_and_counts_them(clip_norm, loss_scale, accumulate_steps):
    x, y = _nan_data()
    model = toy_mlp(np.float32)
    hist = model.fit(x, y, epochs=2, batch_size=16, shuffle=False, progress=False,
                     clip_norm=clip_norm, loss_scale=loss_scale, on_nonfinite="skip",
                     accumulate_steps=accumulate_steps)
    assert np.isfinite(model.param_arena).all()
    assert hist["nonfinite_steps"] == [1, 1]  # the window holding batch 2, each epoch
    assert model.train_state.nonfinite_steps == 2
    assert all(np.isfinite(v) for v in hist["loss"])  # the skipped batch is left out
    # the logged loss is the mean over the other batches
    assert np.isfinite(hist["accuracy"]).all()
    windows = 4 // accumulate_steps
    assert model.train_state.step == 2 * windows
    assert model.optimizer.state_dict()["state"][0]["step"] == 2 * (windows - 1)


def test_ignore_applies_the_nonfinite_step():
    x, y = _nan_data()
    model = toy_mlp(np.float32)
    hist = model.fit(x, y, epochs=1, batch_size=16, shuffle=False, progress=False,
                     on_nonfinite="ignore")
    assert np.isnan(model.param_arena).any() and np.isnan(hist["loss"][0])


def _poison_gradient(model, call):
    """Make the gradient non-finite (with a finite loss) on backward call
    number ``call``."""
    real = model.backward
    count = [0]

    def backward(dy, accumulate=False):
        real(dy, accumulate=accumulate)
        count[0] += 1
        if count[0] == call:
            model.grad_arena[5] = np.inf

    model.backward = backward


@pytest.mark.parametrize("clip_norm", [None, 0.5])
def test_nonfinite_gradient_with_finite_loss_raises(clip_norm):
    x, y = toy_data(n=64, dtype=np.float32)
    model = toy_mlp(np.float32)
    _poison_gradient(model, 3)
    with pytest.raises(FloatingPointError, match="gradient.*epoch 1, batch 3"):
        model.fit(x, y, epochs=1, batch_size=16, shuffle=False, progress=False,
                  clip_norm=clip_norm)
    assert np.isfinite(model.param_arena).all()
    assert model.optimizer.state_dict()["state"][0]["step"] == 2


def test_nonfinite_gradient_with_a_scaler_is_an_overflow_not_an_error():
    x, y = toy_data(n=64, dtype=np.float32)
    model = toy_mlp(np.float32)
    _poison_gradient(model, 3)
    hist = model.fit(x, y, epochs=1, batch_size=16, shuffle=False, progress=False,
                     loss_scale="dynamic")
    assert model.train_state.loss_scaler.skipped_steps == 1
    assert hist["loss_scale"] == [2.0**15] and np.isfinite(model.param_arena).all()


def test_on_nonfinite_bad_value_changes_nothing():
    x, y = toy_data(n=32, dtype=np.float32)
    model = toy_mlp(np.float32)
    snap = _snapshot(model)
    for bad in ("warn", None, 1):
        with pytest.raises(ValueError, match="on_nonfinite"):
            model.fit(x, y, progress=False, on_nonfinite=bad)
        _assert_unchanged(model, snap)


# ---------------------------------------------------------------------------
# the optimizer fit steps
# ---------------------------------------------------------------------------
def test_optimizer_over_another_models_parameters_raises():
    x, y = toy_data(n=32)
    model, other = toy_mlp(), toy_mlp(seed=1)
    snap = _snapshot(model)
    with pytest.raises(ValueError, match="optimizer: expected an optimizer over this model's"):
        model.fit(x, y, optimizer=ft.optim.Adam(other.parameters()), progress=False)
    _assert_unchanged(model, snap)
    with pytest.raises(ValueError, match="optimizer"):  # a subset of the model's
        model.fit(x, y, optimizer=ft.optim.SGD(model.parameters()[:2]), progress=False)
    _assert_unchanged(model, snap)
    with pytest.raises(ValueError, match="optimizer"):
        model.save("never-written.npz", ft.optim.Adam(other.parameters()))


@pytest.mark.parametrize("name", ft.optim.NAMES)
def test_fit_without_optimizer_continues_the_models_optimizer(name):
    x, y = toy_data(n=32)
    model = toy_mlp()
    model.fit(x, y, optimizer=name, lr=0.05, epochs=1, progress=False)
    opt = model.optimizer
    model.fit(x, y, epochs=1, progress=False)
    assert model.optimizer is opt and type(opt) is ft.optim.get(name)
    assert opt.param_groups[0]["lr"] == 0.05


def test_explicit_lr_sets_the_continued_optimizers_lr():
    x, y = toy_data(n=32)
    model = toy_mlp()
    model.fit(x, y, optimizer="sgd", lr=0.05, epochs=1, progress=False)
    model.fit(x, y, lr=0.01, epochs=1, progress=False)
    assert model.optimizer.param_groups[0]["lr"] == 0.01


# ---------------------------------------------------------------------------
# resume == never stopped
# ---------------------------------------------------------------------------
def _resume_matches(tmp_path, epochs=4, stop=2, resume_optimizer="same", **kw):
    """Train ``epochs`` epochs straight through, saving after each; then
    resume a fresh model from the checkpoint after ``stop`` epochs and train
    the rest. Everything must be bitwise the same."""
    x, y = toy_data(n=80, dtype=np.float32)
    kw = dict(batch_size=16, progress=False, **kw)
    full = toy_mlp(np.float32, dropout=0.2)
    full.fit(x, y, epochs=epochs, callbacks=[ModelCheckpoint(tmp_path / "e{epoch}.npz",
                                                             save_best_only=False)], **kw)
    resumed = toy_mlp(np.float32, dropout=0.2, seed=99)  # everything comes from the file
    resumed.load(tmp_path / f"e{stop}.npz")
    if resume_optimizer is None:
        kw["optimizer"] = None
    resumed.fit(x, y, epochs=epochs - stop, **kw)
    assert_array_equal(resumed.param_arena, full.param_arena)
    a, b = full.optimizer.state_dict(), resumed.optimizer.state_dict()
    assert a["param_groups"] == b["param_groups"]
    for k, entry in a["state"].items():
        for name, v in entry.items():
            assert_array_equal(b["state"][k][name], v)
    assert resumed.history.to_dict()["history"]["loss"] == full.history.to_dict()["history"]["loss"]
    assert resumed.train_state.step == full.train_state.step
    return full, resumed


@pytest.mark.parametrize("schedule", schedules.NAMES)
@pytest.mark.parametrize("optimizer", ft.optim.NAMES)
def test_resume_every_schedule_name_and_optimizer(tmp_path, schedule, optimizer):
    full, resumed = _resume_matches(tmp_path, optimizer=optimizer, lr=0.02, schedule=schedule)
    assert full.history["lr"] == resumed.history["lr"]


@pytest.mark.parametrize("optimizer", ft.optim.NAMES)
def test_resume_without_naming_the_optimizer_continues_the_checkpoints(tmp_path, optimizer):
    _resume_matches(tmp_path, optimizer=optimizer, lr=0.02, schedule="cosine",
                    resume_optimizer=None)


@pytest.mark.parametrize("clip_norm", [None, 0.5])
@pytest.mark.parametrize("accumulate_steps", [1, 3])
@pytest.mark.parametrize("loss_scale", [None, "dynamic", 2.0**10])
def test_resume_clip_accumulate_loss_scale(tmp_path, clip_norm, accumulate_steps, loss_scale):
    _resume_matches(tmp_path, optimizer="adamw", lr=0.01, schedule="warmup_cosine",
                    clip_norm=clip_norm, accumulate_steps=accumulate_steps, loss_scale=loss_scale)


def test_resume_reduce_on_plateau_object(tmp_path):
    # a stateful schedule object: its state comes back from the checkpoint
    # into the schedule of the same class that the resumed fit is given
    x, y = toy_data(n=80, dtype=np.float32)
    kw = dict(batch_size=16, progress=False, optimizer="sgd", lr=0.5, validation_split=0.25)
    full = toy_mlp(np.float32)
    full.fit(x, y, epochs=5, callbacks=[ModelCheckpoint(tmp_path / "e{epoch}.npz",
                                                        save_best_only=False)],
             schedule=schedules.ReduceOnPlateau(0.5, factor=0.5, patience=0), **kw)
    resumed = toy_mlp(np.float32)
    resumed.load(tmp_path / "e3.npz")
    resumed.fit(x, y, epochs=2, schedule=schedules.ReduceOnPlateau(0.5, factor=0.5, patience=0),
                **kw)
    assert_array_equal(resumed.param_arena, full.param_arena)
    assert resumed.history["lr"] == full.history["lr"]


# ---------------------------------------------------------------------------
# damaged and crafted checkpoints
# ---------------------------------------------------------------------------
@pytest.fixture
def saved(tmp_path):
    x, y = toy_data(n=48, dtype=np.float32)
    model = toy_mlp(np.float32, dropout=0.1)
    model.fit(x, y, epochs=2, batch_size=16, progress=False, optimizer="rmsprop",
              schedule="cosine", loss_scale="dynamic")
    path = tmp_path / "good.npz"
    model.save(path)
    return path


def _rewrite(src, dst, edit_meta=None, edit_members=None):
    with _archive.Reader(src) as r:
        meta = r.json("meta")
        members = {n: r.array(n) for n in r.names if n != "meta"}
    if edit_meta:
        edit_meta(meta)
    if edit_members:
        edit_members(members)
    import json

    members["meta"] = json.dumps(meta).encode()
    _archive.write(dst, members)
    return dst


def _set(path, value):
    def edit(meta):
        d = meta
        for k in path[:-1]:
            d = d[k]
        if value is _DELETE:
            del d[path[-1]]
        else:
            d[path[-1]] = value
    return edit


_DELETE = object()

CRAFTED = [
    (("history",), [1, 2], "history"),
    (("history",), _DELETE, "history"),
    (("history", "epochs"), ["x"], "epochs"),
    (("dropout", 0, 0), "seed", "dropout"),
    (("dropout", 0, 0), -1, "dropout"),
    (("dropout", 0, 0), 2**70, "dropout"),
    (("dropout", 0, 1), 1.5, "dropout"),
    (("train_state", "epoch"), -1, "epoch"),
    (("train_state", "epoch"), 2.0, "epoch"),
    (("train_state", "step"), 1.5, "step"),
    (("train_state", "step"), True, "step"),
    (("train_state", "nonfinite_steps"), -3, "nonfinite_steps"),
    (("train_state", "rng"), {"bit_generator": "PCG64", "state": 3}, "rng"),
    (("train_state", "rng"), "x", "rng"),
    (("train_state", "loss_scaler", "scale"), -1.0, "loss_scaler"),
    (("train_state", "loss_scaler"), {"scale": 1.0}, "loss_scaler"),
    (("train_state",), None, "train_state"),
    (("optimizer", "class"), "Adam", "optimizer"),
    (("optimizer", "class"), "Optimizer", "optimizer"),
    (("optimizer", "class"), "os", "optimizer"),
    (("optimizer", "param_groups", 0, "params"), [0, 0, 1, 2], "params"),
    (("optimizer", "param_groups", 0, "params"), [0, 1, 2], "params"),
    (("optimizer", "param_groups", 0, "params"), [0, 1, 2, True], "params"),
    (("optimizer", "param_groups", 0, "lr"), "fast", "lr"),
    (("optimizer", "param_groups", 0, "lr"), -1.0, "lr"),
    (("optimizer", "param_groups", 0, "alpha"), 7.0, "alpha"),
    (("optimizer", "state", "0", "step"), 2.0**70, "step"),
    (("optimizer", "state", "0", "step"), 1.5, "step"),
    (("optimizer", "state", "0", "step"), float("inf"), "step"),
    (("optimizer", "state", "0", "buffers"), ["square_avg", "nope"], "nope"),
    (("schedule", "name"), "linear", "schedule"),
    (("schedule", "base_lr"), -0.5, "base_lr"),
    (("schedule",), {"class": 3, "state": {}}, "schedule"),
    (("layout",), [], "layers"),
    (("version",), 99, "version"),
    (("format",), "npz", "format"),
    (("extra_key",), 1, "unexpected"),
]


@pytest.mark.parametrize("where,value,words", CRAFTED,
                         ids=[f"{'.'.join(map(str, w))}={'del' if v is _DELETE else repr(v)[:20]}"
                              for w, v, _ in CRAFTED])
def test_crafted_metadata_raises_value_error_and_changes_nothing(saved, tmp_path, where, value,
                                                                  words):
    bad = _rewrite(saved, tmp_path / "bad.npz", edit_meta=_set(where, value))
    x, y = toy_data(n=48, dtype=np.float32)
    model = toy_mlp(np.float32, dropout=0.1, seed=7)
    model.fit(x, y, epochs=1, batch_size=16, progress=False, optimizer="sgd")
    snap = _snapshot(model)
    seeds = [(l.seed, l.offset) for l in model.layers if isinstance(l, ft.nn.Dropout)]
    with pytest.raises(ValueError, match="checkpoint") as info:
        model.load(bad)
    assert words in str(info.value) and str(bad) in str(info.value)
    _assert_unchanged(model, snap)
    assert seeds == [(l.seed, l.offset) for l in model.layers if isinstance(l, ft.nn.Dropout)]


@pytest.mark.parametrize("edit,words", [
    (lambda m: m.__setitem__("params", m["params"][:-1]), "params"),
    (lambda m: m.__setitem__("params", m["params"].astype(np.int32)), "params"),
    (lambda m: m.pop("optim.0.square_avg"), "optim.0.square_avg"),
    (lambda m: m.__setitem__("optim.0.square_avg", np.zeros(3, np.float32)), "shape"),
    (lambda m: m.__setitem__("optim.1.square_avg", m["optim.1.square_avg"].astype(bool)),
     "optim.1.square_avg"),
    (lambda m: m.__setitem__("stray", np.zeros(2)), "stray"),
])
def test_crafted_members_raise_value_error(saved, tmp_path, edit, words):
    bad = _rewrite(saved, tmp_path / "bad.npz", edit_members=edit)
    model = toy_mlp(np.float32, dropout=0.1, seed=7)
    snap = _snapshot(model)
    with pytest.raises(ValueError, match="checkpoint") as info:
        model.load(bad)
    assert words in str(info.value)
    _assert_unchanged(model, snap)


def test_truncated_and_bit_flipped_checkpoints(saved, tmp_path):
    data = saved.read_bytes()
    rng = np.random.default_rng(0)
    model = toy_mlp(np.float32, dropout=0.1, seed=7)
    snap = _snapshot(model)
    bad = tmp_path / "bad.npz"
    cuts = sorted(set(rng.integers(0, len(data), 40).tolist()) | {0, 1, len(data) - 1})
    for cut in cuts:
        bad.write_bytes(data[:cut])
        with pytest.raises(ValueError, match="checkpoint"):
            model.load(bad)
    for _ in range(60):
        flipped = bytearray(data)
        pos = int(rng.integers(0, len(data)))
        flipped[pos] ^= 1 << int(rng.integers(0, 8))
        bad.write_bytes(bytes(flipped))
        try:
            model.load(bad)
        except ValueError as exc:
            assert "checkpoint" in str(exc)
            _assert_unchanged(model, snap)
        else:  # a flip the format cannot see (e.g. in a zip comment field): loaded whole
            snap = _snapshot(model)


def test_load_then_save_round_trips_every_field(saved, tmp_path):
    model = toy_mlp(np.float32, dropout=0.1, seed=3)
    model.load(saved)
    again = tmp_path / "again.npz"
    model.save(again)
    with _archive.Reader(saved) as a, _archive.Reader(again) as b:
        assert a.json("meta") == b.json("meta")
        assert a.names == b.names
        for n in a.names:
            if n != "meta":
                assert_array_equal(a.array(n), b.array(n))


# ---------------------------------------------------------------------------
# one model, several threads; buffers bounded
# ---------------------------------------------------------------------------
def test_predict_from_several_threads_on_one_model():
    x, y = toy_data(n=300, dtype=np.float32)
    model = toy_mlp(np.float32, hidden=64)
    model.fit(x, y, epochs=1, progress=False)
    sizes = [1, 7, 33, 128, 300]
    expect = {k: model.predict(x[:k], batch_size=50) for k in sizes}
    errors = []

    def work(seed):
        r = np.random.default_rng(seed)
        for _ in range(40):
            k = sizes[int(r.integers(len(sizes)))]
            got = model.predict(x[:k], batch_size=50)
            if not np.array_equal(got, expect[k]):
                errors.append(k)

    threads = [threading.Thread(target=work, args=(s,)) for s in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


def test_layer_buffers_stay_bounded_over_many_batch_sizes():
    x, y = toy_data(n=600, dtype=np.float32)
    model = toy_mlp(np.float32, dropout=0.1, hidden=256)
    model.predict(x)
    model.forward(x, training=True)
    model.evaluate(x, y)
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        for k in range(1, 600, 3):
            model.predict(x[:k], batch_size=1024)
            model.forward(x[:k], training=True)
            model.evaluate(x[:k], y[:k], batch_size=1024)  # the loss's gradient buffer too
        grown = tracemalloc.get_traced_memory()[0] - base
    finally:
        tracemalloc.stop()
    # one buffer per layer and role, of the largest batch: nothing new kept
    assert grown < 64 * 1024, grown


@pytest.mark.parametrize("mode", ["raise", "skip"])
def test_nonfinite_step_leaves_batchnorm_running_statistics_as_before(mode):
    from fusedtrain.nn import BatchNorm, Dense, Sequential

    def model():
        return Sequential([Dense(8, 16), BatchNorm(16, activation="relu"), Dense(16, 5)], seed=0)

    x, y = toy_data(n=64, dtype=np.float32)
    kw = dict(batch_size=16, shuffle=False, progress=False, metrics=())
    poisoned = model()
    _poison_gradient(poisoned, 3)  # a finite loss, a non-finite gradient at batch 3
    ref = model()
    ref.fit(x[:32], y[:32], epochs=1, **kw)  # the two steps before it
    if mode == "raise":
        with pytest.raises(FloatingPointError, match="batch 3"):
            poisoned.fit(x, y, epochs=1, **kw)
        for (name, a), (_, b) in zip(poisoned.named_buffers(), ref.named_buffers()):
            assert_array_equal(a, b, err_msg=name)
        assert_array_equal(poisoned.param_arena, ref.param_arena)
    else:
        poisoned.fit(x, y, epochs=1, on_nonfinite="skip", **kw)
        ref.fit(x[48:], y[48:], epochs=1, **kw)  # then batch 4: batch 3 left no trace
        for (name, a), (_, b) in zip(poisoned.named_buffers(), ref.named_buffers()):
            assert_array_equal(a, b, err_msg=name)
