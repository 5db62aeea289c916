"""Sequential and its layers (nn/model.py, nn/layers.py): one training step
against a NumPy reference step, the parameter and gradient arenas, reused
output buffers, batched predict, bad layer stacks."""

import numpy as np
import pytest
from numpy.testing import assert_allclose

import fusedtrain as ft
from fusedtrain import reference
from fusedtrain.nn import Dense, Dropout, Sequential
from fusedtrain.nn.losses import CrossEntropy

from conftest import toy_data as _data, toy_mlp as _mlp


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


# ---------------------------------------------------------------------------
# arenas and buffers
# ---------------------------------------------------------------------------
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
# bad input
# ---------------------------------------------------------------------------
def test_bad_layers():
    with pytest.raises(ValueError, match="activation"):
        Dense(3, 4, activation="swishy")
    with pytest.raises(ValueError, match="in_features=5"):
        Sequential([Dense(3, 4), Dense(5, 2)])
    with pytest.raises(ValueError, match="p must be in"):
        Dropout(1.0)


def test_freezing_a_layer_is_refused_with_the_reason():
    layer = Dense(3, 4)
    assert layer.trainable is True
    layer.trainable = True  # a no-op
    with pytest.raises(ValueError, match="trainable = False is not supported"):
        layer.trainable = False
    with pytest.raises(TypeError, match="trainable must be a bool"):
        layer.trainable = "no"
    assert layer.trainable is True and Dropout(0.1).trainable is True


# ---------------------------------------------------------------------------
# Keras's habits: activation None, use_bias, weights, summary, load_model
# ---------------------------------------------------------------------------
def test_activation_none_and_linear_are_identity():
    x, _ = _data()
    for act in (None, "linear"):
        a = Sequential([Dense(8, 3, activation=act)], dtype=np.float64)
        b = Sequential([Dense(8, 3)], dtype=np.float64)
        assert_allclose(a.predict(x), b.predict(x), rtol=0)
    with pytest.raises(ValueError, match="'linear', 'identity', .*or None"):
        Dense(3, 4, activation="swish")


def test_use_bias_false():
    layer = Dense(3, 4, use_bias=False)
    model = Sequential([layer])
    assert [n for n, _ in model.named_parameters()] == ["0.weight"] and layer.bias is None
    assert layer.config()["bias"] is False
    with pytest.raises(ValueError, match="disagree"):
        Dense(3, 4, bias=False, use_bias=True)


def test_get_set_weights_and_count_params():
    a, b = _mlp(seed=0), _mlp(seed=1)
    assert a.count_params() == 8 * 16 + 16 + 16 * 5 + 5
    w = a.get_weights()
    assert [x.shape for x in w] == [(8, 16), (16,), (16, 5), (5,)]
    w[0][...] = 7.0  # copies: the model is untouched
    assert not np.any(a.parameters()[0] == 7.0)
    b.set_weights(a.get_weights())
    assert np.array_equal(a.param_arena, b.param_arena)
    before = b.param_arena.copy()
    bad = a.get_weights()
    for weights, error, match in [
            (bad[:3], ValueError, "expected a list of 4 arrays"),
            (bad[:3] + [np.zeros(4)], ValueError, r"weights\[3\] \(1.bias\): expected shape \(5,\)"),
            (bad[:3] + [np.array(["x"] * 5)], TypeError, r"weights\[3\]")]:
        with pytest.raises(error, match=match):
            b.set_weights([np.full_like(bad[0], 3.0)] + list(weights[1:]))
        assert np.array_equal(b.param_arena, before)  # nothing changed, not even weights[0]


def test_summary(capsys):
    model = Sequential([Dense(8, 16, activation="relu"), Dropout(0.5), Dense(16, 5, use_bias=False)])
    out = []
    assert model.summary(print_fn=out.append) is None
    text = out[0]
    assert "Dense(8 -> 16, relu)" in text and "Dropout(p=0.5)" in text
    assert "Dense(16 -> 5, no bias)" in text and "Total params: 224" in text
    model.summary()
    assert "Total params: 224" in capsys.readouterr().out


def test_load_model_rebuilds_from_the_checkpoint(tmp_path):
    from fusedtrain.nn import load_model

    x, y = _data()
    model = Sequential([Dense(8, 16, activation="leaky_relu", negative_slope=0.2), Dropout(0.2),
                        Dense(16, 5, use_bias=False)], dtype=np.float64, seed=3)
    model.fit(x, y, epochs=2, progress=False)
    model.save(tmp_path / "m.npz")
    again = load_model(tmp_path / "m.npz")
    assert again.config() == model.config() and again.dtype == np.float64
    assert_allclose(again.param_arena, model.param_arena, rtol=0)
    model.fit(x, y, epochs=1, progress=False)
    again.fit(x, y, epochs=1, progress=False)
    assert np.array_equal(again.param_arena, model.param_arena)  # the run goes on the same
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="junk.npz"):
        load_model(tmp_path / "junk.npz")
