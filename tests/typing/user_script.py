"""A small training script written the way a user writes one, fully typed.

tests/test_typing.py runs ``mypy --strict`` over it (it is type-checked, not
run by pytest), so that the public API's signatures reach the user's code
with no ``Any`` coming from fusedtrain: every value below has a real type.
It also runs as a plain script (``python tests/typing/user_script.py``).
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from fusedtrain import checkpoint, nn, ops, optim, schedules
from fusedtrain.callbacks import EarlyStopping, History

if sys.version_info >= (3, 11):
    from typing import assert_type
else:  # a dependency of mypy
    from typing_extensions import assert_type


def make_data(n: int, features: int, classes: int,
              seed: int) -> tuple[NDArray[np.float32], NDArray[np.int64]]:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, features), dtype=np.float32)
    w = rng.standard_normal((features, classes), dtype=np.float32)
    y = np.argmax(x @ w, axis=1).astype(np.int64)
    return x, y


def train_model(x: NDArray[np.float32], y: NDArray[np.int64], classes: int) -> nn.Sequential:
    model = nn.Sequential([nn.Dense(x.shape[1], 32, activation="relu"), nn.Dropout(0.1),
                           nn.Dense(32, classes)], seed=1)
    schedule = schedules.CosineAnnealing(1e-2, total_steps=40)
    assert_type(schedule(0), float)
    history = model.fit(x, y, loss="cross_entropy", optimizer="adam", epochs=4, batch_size=32,
                        schedule=schedule, clip_norm=1.0, validation_split=0.2,
                        metrics=("accuracy",), progress=False,
                        callbacks=[EarlyStopping(monitor="val_loss", patience=2)])
    assert_type(history, History)
    losses = history.history["loss"]
    assert_type(losses, list[float])
    assert len(losses) >= 1
    scores = model.evaluate(x, y, metrics=("accuracy",))
    assert_type(scores, dict[str, float])
    assert 0.0 <= scores["accuracy"] <= 1.0
    out = model.predict(x[:5])
    assert_type(out, NDArray[np.floating[Any]])
    assert_type(model.parameters(), list[NDArray[Any]])
    assert out.shape == (5, classes)
    return model


def step_by_hand(classes: int) -> float:
    rng = np.random.default_rng(0)
    params: list[NDArray[np.float32]] = [rng.standard_normal(7).astype(np.float32),
                                         np.zeros((3, 4), np.float32)]
    grads = [np.ones_like(p) for p in params]
    # an optimizer object over NumPy arrays
    opt = optim.Adam(params, lr=1e-3, weight_decay=1e-4)
    opt.step(grads)
    # the functional kernel over its own state
    exp_avg = [np.zeros_like(p) for p in params]
    exp_avg_sq = [np.zeros_like(p) for p in params]
    ops.adam_(params, grads, exp_avg, exp_avg_sq, step=1, lr=1e-3, betas=(0.9, 0.999))
    norm = ops.clip_grad_norm_(grads, max_norm=1.0)
    assert_type(norm, float)
    # a fused loss: (loss, gradient)
    # declared types: the results' types follow the inputs' (the dtype kept)
    logits: NDArray[np.float32] = rng.standard_normal((8, classes)).astype(np.float32)
    labels: NDArray[np.int64] = rng.integers(0, classes, 8)
    loss, dlogits = ops.softmax_cross_entropy(logits, labels)
    assert_type(loss, float)
    assert_type(dlogits, NDArray[np.float32])
    per_row, _ = ops.mse(logits, np.zeros_like(logits), reduction="none")
    assert_type(per_row, NDArray[np.float32])
    y, mask = ops.dropout(logits, 0.5, seed=0)
    assert_type(ops.dropout_backward(y, mask, 0.5), NDArray[np.float32])
    assert dlogits.shape == logits.shape and per_row.shape == logits.shape
    return loss + norm


def round_trip(model: nn.Sequential, directory: Path) -> None:
    path = directory / "model.ftz"
    checkpoint.save(path, model)
    meta = checkpoint.load(path, model)
    assert_type(meta, dict[str, object])
    assert meta


def main() -> None:
    classes = 3
    x, y = make_data(256, 10, classes, seed=0)
    model = train_model(x, y, classes)
    total = step_by_hand(classes)
    assert np.isfinite(total)
    with tempfile.TemporaryDirectory() as d:
        round_trip(model, Path(d))


if __name__ == "__main__":
    main()
