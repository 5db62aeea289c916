"""fit(..., clip_norm=..., accumulate_steps=k): gradient accumulation equals
one big batch, clipping runs once per step over the gradient arena and
equals a hand-written loop with the NumPy reference, bad arguments raise
before anything is trained."""

from __future__ import annotations

import numpy as np
import pytest

import fusedtrain as ft
from fusedtrain import ops
from fusedtrain.nn import Dense, Sequential
from fusedtrain.nn.losses import CrossEntropy
from fusedtrain.reference import clip as ref_clip


def _data(n, d=8, c=5, seed=0, dtype=np.float64):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d)).astype(dtype)
    w = rng.standard_normal((d, c))
    y = np.argmax(x @ w + 0.1 * rng.standard_normal((n, c)), axis=1).astype(np.int64)
    return x, y


def _mlp(dtype=np.float64, seed=0):
    return Sequential([Dense(8, 16, activation="relu"), Dense(16, 5)], dtype=dtype, seed=seed)


def _fit(model, x, y, **kw):
    return model.fit(x, y, epochs=kw.pop("epochs", 2), shuffle=False, progress=False,
                     metrics=(), **kw)


@pytest.mark.parametrize("optimizer", ("sgd", "adam"))
@pytest.mark.parametrize("n", (64, 70), ids=("whole-windows", "short-last-window"))
@pytest.mark.parametrize("dtype,rtol", [(np.float64, 1e-11), (np.float32, 2e-5)])
def test_accumulation_equals_one_big_batch(n, optimizer, dtype, rtol):
    x, y = _data(n, dtype=dtype)
    small, big = _mlp(dtype), _mlp(dtype)
    _fit(small, x, y, optimizer=optimizer, lr=0.05, batch_size=8, accumulate_steps=4)
    _fit(big, x, y, optimizer=optimizer, lr=0.05, batch_size=32)
    assert small.train_state["step"] == big.train_state["step"] == 2 * -(-n // 32)
    np.testing.assert_allclose(small.param_arena, big.param_arena, rtol=rtol,
                               atol=rtol * np.abs(big.param_arena).max())
    assert not np.array_equal(small.param_arena, _mlp(dtype).param_arena)


def test_accumulation_with_uneven_batches_in_a_window():
    """batch_size 5, k 3 over 13 samples: windows of 15 samples cut at 13 (5+5+3)."""
    x, y = _data(13)
    small, big = _mlp(), _mlp()
    _fit(small, x, y, optimizer="sgd", lr=0.1, batch_size=5, accumulate_steps=3, epochs=3)
    _fit(big, x, y, optimizer="sgd", lr=0.1, batch_size=15, epochs=3)
    np.testing.assert_allclose(small.param_arena, big.param_arena, rtol=1e-12, atol=1e-14)


def test_accumulate_steps_one_is_the_plain_loop():
    x, y = _data(40)
    a, b = _mlp(), _mlp()
    _fit(a, x, y, batch_size=8)
    _fit(b, x, y, batch_size=8, accumulate_steps=1, clip_norm=None)
    np.testing.assert_array_equal(a.param_arena, b.param_arena)


def _manual(model, x, y, batch_size, clip_norm, epochs, lr):
    """The loop fit runs, by hand, with the NumPy reference clipping."""
    opt = ft.optim.Adam(model.parameters(), lr=lr)
    loss = CrossEntropy()
    norms = []
    for _ in range(epochs):
        for start in range(0, len(x), batch_size):
            out = model.forward(x[start:start + batch_size], training=True)
            _, dout = loss(out, y[start:start + batch_size])
            model.backward(dout)
            clipped, total = ref_clip.clip_grad_norm([model.grad_arena], clip_norm)
            model.grad_arena[...] = clipped[0]
            norms.append(total)
            opt.step(model.gradients())
    return norms


@pytest.mark.parametrize("dtype,rtol", [(np.float64, 1e-10), (np.float32, 1e-4)])
def test_clip_norm_matches_a_manual_loop(dtype, rtol, monkeypatch):
    x, y = _data(48, dtype=dtype)
    model, manual = _mlp(dtype), _mlp(dtype)
    calls = []
    real = ops.clip_grad_norm_

    def spy(grads, max_norm, *a, **k):
        calls.append((grads, max_norm))
        return real(grads, max_norm, *a, **k)

    monkeypatch.setattr(ops, "clip_grad_norm_", spy)
    _fit(model, x, y, optimizer="adam", lr=0.01, batch_size=16, clip_norm=0.05)
    norms = _manual(manual, x, y, 16, 0.05, 2, 0.01)
    assert len(calls) == 6  # one call per optimizer step
    assert all(g is model.grad_arena and m == 0.05 for g, m in calls)  # the flat arena
    assert max(norms) > 0.05  # clipping did something
    np.testing.assert_allclose(model.param_arena, manual.param_arena, rtol=rtol,
                               atol=rtol * np.abs(manual.param_arena).max())


def test_clip_norm_with_accumulation_clips_the_summed_gradient(monkeypatch):
    x, y = _data(32)
    model = _mlp()
    seen = []
    real = ops.clip_grad_norm_
    def spy(g, m, *a, **k):
        seen.append(real(g, m, *a, **k))
        return seen[-1]

    monkeypatch.setattr(ops, "clip_grad_norm_", spy)
    _fit(model, x, y, batch_size=4, accumulate_steps=4, clip_norm=1e-3, epochs=1)
    assert len(seen) == 2 and all(s > 1e-3 for s in seen)


@pytest.mark.parametrize("kw,exc,words", [
    (dict(clip_norm=0.0), ValueError, ("clip_norm", "> 0", "0.0")),
    (dict(clip_norm=-1), ValueError, ("clip_norm", "-1")),
    (dict(clip_norm=float("nan")), ValueError, ("clip_norm", "nan")),
    (dict(clip_norm="1"), TypeError, ("clip_norm", "str")),
    (dict(clip_norm=True), TypeError, ("clip_norm", "bool")),
    (dict(accumulate_steps=0), ValueError, ("accumulate_steps", "int >= 1", "0")),
    (dict(accumulate_steps=2.0), ValueError, ("accumulate_steps", "2.0")),
    (dict(accumulate_steps=True), ValueError, ("accumulate_steps", "True")),
])
def test_bad_arguments_raise_before_training(kw, exc, words):
    x, y = _data(16)
    model = _mlp()
    before = model.param_arena.copy()
    with pytest.raises(exc) as info:
        _fit(model, x, y, **kw)
    for w in words:
        assert w in str(info.value), (w, str(info.value))
    np.testing.assert_array_equal(model.param_arena, before)
    assert model.train_state is None


def test_cli_passes_clip_norm_and_accumulate_steps(monkeypatch, capsys):
    from fusedtrain import cli

    seen = {}
    real = ft.train.fit

    def spy(model, x, y, **kw):
        seen.update(kw)
        return real(model, x, y, **kw)

    monkeypatch.setattr(ft.train, "fit", spy)
    assert cli.main(["train", "--quiet", "--epochs", "1", "--clip-norm", "2.5",
                     "--accumulate-steps", "3"]) == 0
    assert seen["clip_norm"] == 2.5 and seen["accumulate_steps"] == 3


@pytest.mark.parametrize("accumulate_steps", [1, 2])
def test_clip_norm_with_a_loss_scale_clips_as_without(accumulate_steps):
    """With loss_scale and clip_norm, fit unscales the gradients (by a power
    of two: exactly), clips and steps: the run matches the unscaled one."""
    x, y = _data(48, dtype=np.float64)
    plain, scaled = _mlp(np.float64), _mlp(np.float64)
    kw = dict(optimizer="adam", lr=0.01, batch_size=8, clip_norm=0.05,
              accumulate_steps=accumulate_steps)
    _fit(plain, x, y, **kw)
    history = _fit(scaled, x, y, loss_scale=1024.0, **kw)
    assert history.history["loss_scale"][-1] == 1024.0
    np.testing.assert_array_equal(scaled.param_arena, plain.param_arena)
