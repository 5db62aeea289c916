"""Normalisation layers (nn/layers.py BatchNorm, LayerNorm) in models: forward
and backward against the NumPy references, training / inference modes (the
running statistics move in fit only), a model that trains, checkpoints
(running statistics saved and restored bitwise, a resumed fit bitwise an
uninterrupted one, crafted buffers refused with nothing changed),
load_model, bad arguments."""

import json

import numpy as np
import pytest
from numpy.testing import assert_allclose, assert_array_equal

from fusedtrain import _archive, ops, reference
from fusedtrain.nn import BatchNorm, Dense, Dropout, LayerNorm, Sequential, load_model
from fusedtrain.nn.saving import LAYERS
from fusedtrain.train import ModelCheckpoint

from conftest import toy_data

pytestmark = pytest.mark.skipif(
    not all(hasattr(m, "batch_norm_forward") and hasattr(m, "layer_norm_forward")
            for m in (ops, reference)),
    reason="the normalisation kernels (fusedtrain.ops.batch_norm_forward, ...) are not built")

RTOL = {np.dtype(np.float32): 2e-5, np.dtype(np.float64): 1e-12}


def _close(got, want, dtype):
    r = RTOL[np.dtype(dtype)]
    assert_allclose(got, want, rtol=r, atol=r)


def _norm_mlp(dtype=np.float32, seed=0, dropout=0.0, affine=True):
    """Dense -> BatchNorm(relu) -> [Dropout] -> Dense(relu) -> LayerNorm -> Dense."""
    layers = [Dense(8, 16, bias=False), BatchNorm(16, activation="relu", affine=affine)]
    if dropout:
        layers.append(Dropout(dropout))
    layers += [Dense(16, 12, activation="relu"), LayerNorm(12, elementwise_affine=affine),
               Dense(12, 5)]
    return Sequential(layers, dtype=dtype, seed=seed)


def _stats(model):
    return [b.copy() for _, b in model.named_buffers()]


# ---------------------------------------------------------------------------
# the layers against the references
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("activation,act_kwargs", [
    ("identity", {}), (None, {}), ("relu", {}), ("leaky_relu", {"negative_slope": 0.2}),
    ("sigmoid", {}), ("tanh", {}), ("gelu", {}), ("gelu", {"approximate": "tanh"})])
@pytest.mark.parametrize("training", [True, False])
def test_batch_norm_layer_matches_the_reference(dtype, affine, activation, act_kwargs, training):
    rng = np.random.default_rng(1)
    model = Sequential([BatchNorm(5, momentum=0.2, eps=1e-3, affine=affine,
                                  activation=activation, **act_kwargs)], dtype=dtype)
    bn = model.layers[0]
    if affine:
        bn.weight[...] = rng.uniform(0.5, 1.5, 5)
        bn.bias[...] = rng.standard_normal(5)
    bn.running_mean[...] = rng.standard_normal(5)
    bn.running_var[...] = rng.uniform(0.5, 2.0, 5)
    x = rng.standard_normal((7, 5)).astype(dtype) * 3 + 1
    dy = rng.standard_normal((7, 5)).astype(dtype)
    rm, rv = bn.running_mean.copy(), bn.running_var.copy()
    w = bn.weight.copy() if affine else None
    b = bn.bias.copy() if affine else None
    want, saved = reference.batch_norm_forward(x, w, b, rm, rv, training=training, momentum=0.2,
                                               eps=1e-3, activation=activation, **act_kwargs)
    got = bn.forward(x, training)
    _close(got, want, dtype)
    _close(bn.running_mean, rm, dtype)
    _close(bn.running_var, rv, dtype)
    if not training:
        assert_array_equal(bn.running_mean, rm)  # left alone in inference
        with pytest.raises(ValueError, match="training mode"):
            bn.backward(dy)
        return
    dx_want, dw_want, db_want = reference.batch_norm_backward(dy, x, saved, w,
                                                              activation=activation, **act_kwargs)
    dx = bn.backward(dy)
    _close(dx, dx_want, dtype)
    if affine:
        _close(bn.grad_weight, dw_want, dtype)
        _close(bn.grad_bias, db_want, dtype)
        bn.backward(dy, accumulate=True)  # adds to the gradient views
        _close(bn.grad_weight, 2 * dw_want, dtype)
        _close(bn.grad_bias, 2 * db_want, dtype)
    else:
        assert model.count_params() == 0


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("affine", [True, False])
def test_layer_norm_layer_matches_the_reference(dtype, affine):
    rng = np.random.default_rng(2)
    model = Sequential([LayerNorm(6, eps=1e-4, elementwise_affine=affine)], dtype=dtype)
    ln = model.layers[0]
    if affine:
        ln.weight[...] = rng.uniform(0.5, 1.5, 6)
        ln.bias[...] = rng.standard_normal(6)
    w = ln.weight.copy() if affine else None
    b = ln.bias.copy() if affine else None
    x = rng.standard_normal((9, 6)).astype(dtype) * 2 - 1
    dy = rng.standard_normal((9, 6)).astype(dtype)
    want, saved = reference.layer_norm_forward(x, w, b, eps=1e-4)
    for training in (True, False):  # the same in both modes
        _close(ln.forward(x, training), want, dtype)
    dx_want, dw_want, db_want = reference.layer_norm_backward(dy, x, saved, w)
    _close(ln.backward(dy), dx_want, dtype)
    if affine:
        _close(ln.grad_weight, dw_want, dtype)
        _close(ln.grad_bias, db_want, dtype)
        ln.backward(dy, accumulate=True)
        _close(ln.grad_weight, 2 * dw_want, dtype)
        _close(ln.grad_bias, 2 * db_want, dtype)
    assert model.named_buffers() == []


def test_norm_parameters_live_in_the_arena_and_buffers_outside():
    model = _norm_mlp(np.float64)
    names = [n for n, _ in model.named_parameters()]
    assert names == ["0.weight", "1.weight", "1.bias", "2.weight", "2.bias", "3.weight",
                     "3.bias", "4.weight", "4.bias"]
    bn, ln = model.layers[1], model.layers[3]
    for layer in (bn, ln):
        assert layer.weight.base is model.param_arena and layer.grad_weight.base is model.grad_arena
        assert_array_equal(layer.weight, 1.0)
        assert_array_equal(layer.bias, 0.0)
    assert [n for n, _ in model.named_buffers()] == ["1.running_mean", "1.running_var"]
    assert bn.running_mean.dtype == np.float64 and bn.running_mean.base is None
    assert_array_equal(bn.running_mean, 0.0)
    assert_array_equal(bn.running_var, 1.0)
    assert model.input_dim == 8 and model.output_dim == 5
    lines = []
    model.summary(print_fn=lines.append)
    assert "BatchNorm(16, relu)" in lines[0] and "LayerNorm(12)" in lines[0]


# ---------------------------------------------------------------------------
# training and inference modes
# ---------------------------------------------------------------------------
def test_running_statistics_move_in_fit_only():
    x, y = toy_data(n=80, dtype=np.float32)
    model = _norm_mlp()
    before = _stats(model)
    model.predict(x)
    model.evaluate(x, y)
    model.forward(x, training=False)
    for a, b in zip(before, _stats(model)):
        assert_array_equal(a, b)
    model.fit(x, y, epochs=1, batch_size=16, progress=False, validation_split=0.25)
    after = _stats(model)
    assert all(not np.array_equal(a, b) for a, b in zip(before, after))
    # inference uses the running statistics: predict is the eval-mode formula
    bn = model.layers[1]
    h = x @ model.layers[0].weight
    want = np.maximum((h - bn.running_mean) / np.sqrt(bn.running_var + bn.eps) * bn.weight
                      + bn.bias, 0)
    got = bn.forward(model.layers[0].forward(x, False), False)
    _close(got, want, np.float32)
    for a, b in zip(after, _stats(model)):
        assert_array_equal(a, b)


def test_training_forward_refuses_a_batch_of_one_sample():
    model = _norm_mlp()
    x = np.ones((1, 8), np.float32)
    before = _stats(model)
    with pytest.raises(ValueError, match="more than 1 sample"):
        model.forward(x, training=True)
    for a, b in zip(before, _stats(model)):
        assert_array_equal(a, b)
    assert model.forward(x, training=False).shape == (1, 5)  # inference takes one


def test_a_nonfinite_batch_leaves_the_running_statistics_as_they_were():
    x, y = toy_data(n=64, dtype=np.float32)
    x[20, 3] = np.nan  # batch 2 of 16 without shuffling
    kw = dict(batch_size=16, shuffle=False, progress=False, optimizer="adam", lr=1e-2)
    model = _norm_mlp()
    with pytest.raises(FloatingPointError, match="epoch 1, batch 2"):
        model.fit(x, y, epochs=1, **kw)
    ref = _norm_mlp()
    ref.fit(x[:16], y[:16], epochs=1, **kw)  # the first batch's step alone
    assert_array_equal(model.param_arena, ref.param_arena)
    for a, b in zip(_stats(model), _stats(ref)):
        assert a.tobytes() == b.tobytes()
    skipped = _norm_mlp()
    skipped.fit(x, y, epochs=2, on_nonfinite="skip", **kw)
    assert all(np.isfinite(b).all() for b in _stats(skipped))
    assert np.isfinite(skipped.predict(x[:16])).all()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_a_model_with_both_norms_trains(dtype):
    x, y = toy_data(n=160, dtype=dtype)
    model = _norm_mlp(dtype, dropout=0.1)
    hist = model.fit(x, y, optimizer="adam", lr=1e-2, epochs=12, batch_size=32, progress=False)
    assert hist["loss"][-1] < 0.5 * hist["loss"][0]
    assert model.evaluate(x, y)["accuracy"] > 0.85


# ---------------------------------------------------------------------------
# checkpoints
# ---------------------------------------------------------------------------
def _trained(tmp_path, name="m.npz"):
    x, y = toy_data(n=64, dtype=np.float32)
    model = _norm_mlp(dropout=0.1)
    model.fit(x, y, optimizer="adam", lr=1e-2, epochs=2, batch_size=16, progress=False)
    path = tmp_path / name
    model.save(path)
    return model, path


def test_checkpoint_round_trip_is_bitwise(tmp_path):
    model, path = _trained(tmp_path)
    with _archive.Reader(path) as r:
        assert {n for n in r.names if n.startswith("buffers.")} == {
            "buffers.1.running_mean", "buffers.1.running_var"}
    other = _norm_mlp(dropout=0.1, seed=5)
    other.load(path)
    assert other.param_arena.tobytes() == model.param_arena.tobytes()
    for a, b in zip(_stats(model), _stats(other)):
        assert a.tobytes() == b.tobytes()
    again = tmp_path / "again.npz"
    other.save(again)
    with _archive.Reader(path) as a, _archive.Reader(again) as b:
        assert a.json("meta") == b.json("meta") and a.names == b.names
        for n in a.names:
            if n != "meta":
                assert a.array(n).tobytes() == b.array(n).tobytes()


def test_load_model_rebuilds_both_layers(tmp_path):
    model, path = _trained(tmp_path)
    assert {"BatchNorm", "LayerNorm"} <= set(LAYERS)
    rebuilt = load_model(path)
    assert json.loads(json.dumps(rebuilt.config())) == json.loads(json.dumps(model.config()))
    assert isinstance(rebuilt.layers[1], BatchNorm) and rebuilt.layers[1].activation == "relu"
    assert isinstance(rebuilt.layers[4], LayerNorm)
    assert rebuilt.param_arena.tobytes() == model.param_arena.tobytes()
    for a, b in zip(_stats(model), _stats(rebuilt)):
        assert a.tobytes() == b.tobytes()
    x, _ = toy_data(n=20, dtype=np.float32)
    assert_array_equal(rebuilt.predict(x), model.predict(x))


@pytest.mark.parametrize("extra", [{}, {"accumulate_steps": 2, "clip_norm": 0.5},
                                   {"loss_scale": "dynamic", "optimizer": "sgd"}])
def test_resume_with_norm_layers_is_bitwise(tmp_path, extra):
    """As test_faults' _resume_matches: 4 epochs saved after each; a fresh
    model resumed from epoch 2 ends bitwise where the uninterrupted run did
    (parameters, running statistics, optimizer state, history)."""
    x, y = toy_data(n=80, dtype=np.float32)
    kw = dict(batch_size=16, progress=False, optimizer="adamw", lr=0.01, schedule="cosine",
              validation_split=0.2)
    kw.update(extra)
    full = _norm_mlp(dropout=0.2)
    full.fit(x, y, epochs=4, callbacks=[ModelCheckpoint(tmp_path / "e{epoch}.npz",
                                                        save_best_only=False)], **kw)
    resumed = _norm_mlp(dropout=0.2, seed=99)  # everything comes from the file
    resumed.load(tmp_path / "e2.npz")
    resumed.fit(x, y, epochs=2, **kw)
    assert_array_equal(resumed.param_arena, full.param_arena)
    for a, b in zip(_stats(full), _stats(resumed)):
        assert a.tobytes() == b.tobytes()
    a, b = full.optimizer.state_dict(), resumed.optimizer.state_dict()
    assert a["param_groups"] == b["param_groups"]
    for k, entry in a["state"].items():
        for name, v in entry.items():
            assert_array_equal(b["state"][k][name], v)
    ha, hb = full.history.to_dict(), resumed.history.to_dict()
    for h in (ha, hb):
        del h["history"]["time"]  # wall-clock seconds
    assert ha == hb
    assert resumed.train_state.step == full.train_state.step


def _rewrite(src, dst, edit):
    with _archive.Reader(src) as r:
        meta = r.json("meta")
        members = {n: r.array(n) for n in r.names if n != "meta"}
    edit(members)
    members["meta"] = json.dumps(meta).encode()
    _archive.write(dst, members)
    return dst


@pytest.mark.parametrize("edit,words", [
    (lambda m: m.pop("buffers.1.running_var"), "'buffers.1.running_var' is missing"),
    (lambda m: m.__setitem__("buffers.1.running_mean", np.zeros(15, np.float32)), "shape"),
    (lambda m: m.__setitem__("buffers.1.running_mean", np.zeros((16, 1), np.float32)), "shape"),
    (lambda m: m.__setitem__("buffers.1.running_var", np.ones(16, np.int32)),
     "buffers.1.running_var"),
    (lambda m: m.__setitem__("buffers.1.running_var", np.ones(16, bool)), "floating"),
    (lambda m: m.__setitem__("buffers.4.running_mean", np.zeros(12, np.float32)), "unexpected"),
    (lambda m: m.__setitem__("buffers.1.other", np.zeros(16, np.float32)), "unexpected"),
])
def test_crafted_buffers_raise_and_change_nothing(tmp_path, edit, words):
    _, path = _trained(tmp_path)
    bad = _rewrite(path, tmp_path / "bad.npz", edit)
    x, y = toy_data(n=48, dtype=np.float32)
    model = _norm_mlp(dropout=0.1, seed=7)
    model.fit(x, y, epochs=1, batch_size=16, progress=False, optimizer="sgd")
    params, stats, state = model.param_arena.copy(), _stats(model), model.train_state
    with pytest.raises(ValueError, match="checkpoint") as info:
        model.load(bad)
    assert words in str(info.value) and str(bad) in str(info.value)
    assert_array_equal(model.param_arena, params)
    for a, b in zip(stats, _stats(model)):
        assert a.tobytes() == b.tobytes()
    assert model.train_state is state


def test_buffers_in_a_file_of_a_model_without_them_are_refused(tmp_path):
    from conftest import toy_mlp

    x, y = toy_data(n=48, dtype=np.float32)
    plain = toy_mlp(np.float32)
    plain.fit(x, y, epochs=1, batch_size=16, progress=False)
    path = tmp_path / "plain.npz"
    plain.save(path)
    with _archive.Reader(path) as r:
        assert not any(n.startswith("buffers.") for n in r.names)  # as before BatchNorm
    toy_mlp(np.float32, seed=3).load(path)
    bad = _rewrite(path, tmp_path / "bad.npz",
                   lambda m: m.__setitem__("buffers.0.running_mean", np.zeros(16, np.float32)))
    other = toy_mlp(np.float32, seed=3)
    snapshot = other.param_arena.copy()
    with pytest.raises(ValueError, match="unexpected members"):
        other.load(bad)
    assert_array_equal(other.param_arena, snapshot)


def test_a_norm_model_refuses_a_checkpoint_of_another_layout(tmp_path):
    _, path = _trained(tmp_path)
    for other in (_norm_mlp(dropout=0.1, affine=False),  # no weight / bias
                  Sequential([Dense(8, 16, bias=False), LayerNorm(16), Dropout(0.1),
                              Dense(16, 12, activation="relu"), LayerNorm(12), Dense(12, 5)])):
        params, stats = other.param_arena.copy(), _stats(other)
        with pytest.raises(ValueError, match="do not match"):
            other.load(path)
        assert_array_equal(other.param_arena, params)
        for a, b in zip(stats, _stats(other)):
            assert a.tobytes() == b.tobytes()


# ---------------------------------------------------------------------------
# bad arguments
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("make,exc,words", [
    (lambda: BatchNorm(0), ValueError, "num_features"),
    (lambda: BatchNorm(4.0), TypeError, "num_features"),
    (lambda: BatchNorm(True), TypeError, "num_features"),
    (lambda: BatchNorm(4, momentum=1.5), ValueError, "momentum"),
    (lambda: BatchNorm(4, momentum=-0.1), ValueError, "momentum"),
    (lambda: BatchNorm(4, momentum="x"), TypeError, "momentum"),
    (lambda: BatchNorm(4, eps=0.0), ValueError, "eps"),
    (lambda: BatchNorm(4, eps=float("nan")), ValueError, "eps"),
    (lambda: BatchNorm(4, affine="yes"), TypeError, "affine"),
    (lambda: BatchNorm(4, activation="swish"), ValueError, "activation"),
    (lambda: BatchNorm(4, activation="softmax"), ValueError, "activation"),
    (lambda: BatchNorm(4, activation="relu", negative_slope=0.1), TypeError, "negative_slope"),
    (lambda: BatchNorm(4, activation="leaky_relu", negative_slope=-1.0), ValueError, "slope"),
    (lambda: LayerNorm(-1), ValueError, "num_features"),
    (lambda: LayerNorm(4, eps=-1e-5), ValueError, "eps"),
    (lambda: LayerNorm(4, elementwise_affine=None), TypeError, "elementwise_affine"),
    (lambda: Sequential([Dense(8, 16), BatchNorm(15)]), ValueError, "num_features=15"),
    (lambda: Sequential([LayerNorm(7), Dense(8, 4)]), ValueError, "in_features=8"),
    (lambda: Sequential([Dense(8, 4), Dropout(0.1), LayerNorm(5)]), ValueError, "width 4"),
])
def test_bad_arguments(make, exc, words):
    with pytest.raises(exc, match=words):
        make()


def test_norm_layer_first_takes_the_input_width_and_checks_the_input():
    model = Sequential([BatchNorm(8), Dense(8, 3)])
    assert model.input_dim == 8
    with pytest.raises(ValueError, match=r"\(batch, 8\)"):
        model.forward(np.ones((4, 7), np.float32))
    assert model.forward(np.ones((4, 8), np.float32)).shape == (4, 3)
    assert repr(model.layers[0]) == ("BatchNorm(num_features=8, momentum=0.1, eps=1e-05, "
                                     "affine=True, activation='identity')")
