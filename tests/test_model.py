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
