"""The training losses of nn/losses.py: logits and probabilities
(from_logits), the Keras names and target layouts, per-sample weights, and
fit's refusal of an output layer that disagrees with its loss."""

import numpy as np
import pytest
from numpy.testing import assert_allclose, assert_array_equal

from fusedtrain.nn import Dense, Sequential, losses
from fusedtrain.nn.losses import (BinaryCrossEntropy, CategoricalCrossEntropy, CrossEntropy,
                                  MeanSquaredError)

from conftest import toy_data as _data, toy_mlp as _mlp


def _softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _num_grad(f, x, h=1e-6):
    g = np.zeros_like(x)
    for i in np.ndindex(x.shape):
        up, down = x.copy(), x.copy()
        up[i] += h
        down[i] -= h
        g[i] = (f(up) - f(down)) / (2 * h)
    return g


def _model(act, out=5):
    return Sequential([Dense(8, 16, activation="relu"), Dense(16, out, activation=act)],
                      dtype=np.float64, seed=0)


# ---------------------------------------------------------------------------
# probabilities (from_logits=False)
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("kw", [{}, {"label_smoothing": 0.1},
                                {"weight": np.array([1.0, 2.0, 0.5, 1.0, 3.0])}])
def test_cross_entropy_on_probabilities_equals_it_on_logits(kw):
    rng = np.random.default_rng(0)
    z = rng.standard_normal((7, 5))
    y = rng.integers(0, 5, 7)
    want, _ = CrossEntropy(**kw)(z, y)
    got, g = CrossEntropy(from_logits=False, **kw)(_softmax(z), y)
    assert got == pytest.approx(want, rel=1e-12)
    loss = CrossEntropy(from_logits=False, **kw)
    assert_allclose(g, _num_grad(lambda p: loss(p, y)[0], _softmax(z)), rtol=1e-5, atol=1e-8)


def test_bce_on_probabilities_equals_it_on_logits():
    rng = np.random.default_rng(1)
    z = rng.standard_normal((6, 3))
    t = rng.random((6, 3))
    want, _ = BinaryCrossEntropy()(z, t)
    p = 1 / (1 + np.exp(-z))
    got, g = BinaryCrossEntropy(from_logits=False)(p, t)
    assert got == pytest.approx(want, rel=1e-12)
    assert_allclose(g, _num_grad(lambda q: BinaryCrossEntropy(from_logits=False)(q, t)[0], p),
                    rtol=1e-5, atol=1e-9)


def test_softmax_output_with_probability_loss_trains_as_logits():
    x, y = _data()
    a, b = _model(None), _model("softmax")
    ha = a.fit(x, y, epochs=3, batch_size=16, lr=1e-2, progress=False)
    hb = b.fit(x, y, epochs=3, batch_size=16, lr=1e-2, progress=False,
               loss=CrossEntropy(from_logits=False))
    assert_allclose(hb["loss"], ha["loss"], rtol=1e-9)
    assert_allclose(b.param_arena, a.param_arena, rtol=1e-8, atol=1e-12)


def test_sigmoid_output_with_probability_bce_trains():
    x, y = _data()
    t = (y[:, None] == np.arange(5)).astype(np.float64)
    model = _model("sigmoid")
    h = model.fit(x, t, epochs=5, batch_size=16, lr=1e-2, progress=False, metrics=(),
                  loss=BinaryCrossEntropy(from_logits=False))
    assert h["loss"][-1] < h["loss"][0]


# ---------------------------------------------------------------------------
# the output layer and the loss must agree
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("act,loss,fix", [
    ("softmax", "cross_entropy", "from_logits=False"),
    ("softmax", "sparse_categorical_crossentropy", "from_logits=False"),
    ("sigmoid", "bce", "from_logits=False"),
    (None, CrossEntropy(from_logits=False), "activation='softmax'"),
    ("relu", BinaryCrossEntropy(from_logits=False), "activation='sigmoid'"),
])
def test_fit_refuses_an_output_layer_the_loss_disagrees_with(act, loss, fix):
    x, y = _data()
    if "bce" in str(loss) or isinstance(loss, BinaryCrossEntropy):
        y = (y[:, None] == np.arange(5)).astype(np.float64)
    model = _model(act)
    before = model.param_arena.copy()
    with pytest.raises(ValueError, match=r"layers\[1\] Dense") as exc:
        model.fit(x, y, epochs=1, loss=loss, progress=False, metrics=())
    assert fix in str(exc.value)
    assert model.train_state is None
    assert_array_equal(model.param_arena, before)
    with pytest.raises(ValueError, match=r"layers\[1\]"):
        model.evaluate(x, y, loss=loss, metrics=())


def test_from_logits_must_be_a_bool():
    with pytest.raises(TypeError, match="from_logits"):
        CrossEntropy(from_logits="no")
    with pytest.raises(TypeError, match="from_logits"):
        BinaryCrossEntropy(from_logits=0)


# ---------------------------------------------------------------------------
# Keras names and target layouts
# ---------------------------------------------------------------------------
def test_keras_loss_names():
    assert type(losses.get("sparse_categorical_crossentropy")) is CrossEntropy
    assert type(losses.get("categorical_crossentropy")) is CategoricalCrossEntropy
    assert type(losses.get("binary_crossentropy")) is BinaryCrossEntropy
    assert type(losses.get("mean_squared_error")) is MeanSquaredError
    assert type(losses.get("mse")) is MeanSquaredError


def test_categorical_crossentropy_takes_one_hot_and_trains_as_sparse():
    x, y = _data()
    onehot = np.eye(5)[y]
    a, b = _mlp(), _mlp()
    ha = a.fit(x, y, loss="sparse_categorical_crossentropy", epochs=2, batch_size=16,
               progress=False)
    hb = b.fit(x, onehot, loss="categorical_crossentropy", epochs=2, batch_size=16,
               progress=False)
    assert ha["loss"] == hb["loss"] and ha["accuracy"] == hb["accuracy"]
    assert_array_equal(a.param_arena, b.param_arena)
    assert b.evaluate(x, onehot, loss="categorical_crossentropy") == a.evaluate(x, y)


def test_categorical_and_sparse_targets_are_told_apart():
    x, y = _data()
    model = _mlp()
    with pytest.raises(ValueError, match="sparse_categorical_crossentropy"):
        model.fit(x, y, loss="categorical_crossentropy", progress=False)
    with pytest.raises(ValueError, match="categorical_crossentropy"):
        model.fit(x, np.eye(5)[y], loss="sparse_categorical_crossentropy", progress=False)
    soft = np.full((len(x), 5), 0.2)
    with pytest.raises(ValueError, match="one-hot rows.*row 0"):
        model.fit(x, soft, loss="categorical_crossentropy", progress=False)
    assert model.train_state is None


# ---------------------------------------------------------------------------
# per-sample weights
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("loss,make", [
    (CrossEntropy(), lambda rng: rng.integers(0, 4, 6)),
    (CrossEntropy(from_logits=False), lambda rng: rng.integers(0, 4, 6)),
    (BinaryCrossEntropy(), lambda rng: rng.random((6, 4))),
    (MeanSquaredError(), lambda rng: rng.standard_normal((6, 4))),
])
def test_weighted_loss_is_kerass_sum_over_batch_size(loss, make):
    rng = np.random.default_rng(2)
    z = rng.standard_normal((6, 4))
    if getattr(loss, "from_logits", True) is False:
        z = _softmax(z)
    t = make(rng)
    w = rng.random(6) * 2
    # each sample's own loss, then Keras's reduction sum(w_i l_i) / N
    per = np.array([type(loss)(**({} if getattr(loss, "from_logits", True) else
                                   {"from_logits": False}))(z[i:i + 1], t[i:i + 1])[0]
                    for i in range(6)])
    got, g = loss(z, t, w)
    assert got == pytest.approx(np.sum(w * per) / 6, rel=1e-10)
    assert_allclose(g, _num_grad(lambda q: loss(q, t, w)[0], z), rtol=1e-5, atol=1e-9)
    same, _ = loss(z, t, np.ones(6))
    assert same == pytest.approx(loss(z, t)[0], rel=1e-12)
