"""Checkpoints (checkpoint.py): a resumed fit is bitwise identical to an
uninterrupted one (dynamic loss scaler included), an interrupted write keeps
the old file, a mismatched or corrupt file raises and changes nothing."""

import os

import numpy as np
import pytest
from numpy.testing import assert_array_equal

from fusedtrain import checkpoint, schedules

from conftest import toy_data as _data, toy_mlp as _mlp


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
