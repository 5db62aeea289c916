"""Checkpoints: model parameters, optimizer state, training position
(epoch, step, shuffling RNG, dropout streams), schedule state and history in
one ``.npz`` file (no pickles).

Writes are atomic: the file is written to a temporary file in the same
directory, flushed to disk, then renamed over the target, so a crash
mid-write never leaves a truncated checkpoint in place of a good one.
Loading checks everything against the model first and changes nothing when
the file does not match.
"""

from __future__ import annotations

import io
import json
import os
import tempfile

import numpy as np

from . import optim as _optim
from .backend import to_host

__all__ = ["save", "load", "FORMAT", "VERSION"]

FORMAT = "fusedtrain.checkpoint"
VERSION = 1


def _jsonable(v):
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, np.generic):
        return v.item()
    return v


def _layout(model):
    """What must match between a checkpoint and a model: layer types and
    parameter shapes."""
    return [[type(layer).__name__, [[name, list(shape)] for name, shape in layer.param_specs()]]
            for layer in model.layers]


def _dropouts(model):
    from .nn.layers import Dropout

    return [layer for layer in model.layers if isinstance(layer, Dropout)]


def save(path, model, optimizer=None) -> None:
    """Write ``model`` (and ``optimizer``, default model.optimizer) to ``path``."""
    optimizer = optimizer if optimizer is not None else model.optimizer
    arrays = {"params": model.param_arena}
    meta = {
        "format": FORMAT,
        "version": VERSION,
        "dtype": str(model.dtype),
        "layout": _layout(model),
        "layers": _jsonable(model.config()),
        "dropout": [[d.seed, d.offset] for d in _dropouts(model)],
        "train_state": None,
        "optimizer": None,
        "schedule": None,
        "history": model.history.to_dict() if model.history is not None else None,
    }
    st = model.train_state
    if st is not None:
        meta["train_state"] = {"epoch": st["epoch"], "step": st["step"],
                               "rng": _jsonable(st["rng"].bit_generator.state)}
        scaler = st.get("loss_scaler")  # fit(loss_scale="dynamic") keeps it here
        if scaler is not None:
            meta["train_state"]["loss_scaler"] = _jsonable(scaler.state_dict())
    if optimizer is not None:
        sd = optimizer.state_dict()
        state_meta = {}
        for idx, entry in sd["state"].items():
            state_meta[str(idx)] = {"step": float(entry["step"]),
                                    "buffers": [k for k in entry if k != "step"]}
            for k, arr in entry.items():
                if k != "step":
                    arrays[f"optim.{idx}.{k}"] = to_host(arr)
        meta["optimizer"] = {"class": type(optimizer).__name__,
                             "param_groups": _jsonable(sd["param_groups"]),
                             "state": state_meta}
    sched = getattr(model, "schedule", None)
    if sched is not None and hasattr(sched, "state_dict"):
        meta["schedule"] = {"class": type(sched).__name__, "state": _jsonable(sched.state_dict())}
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)

    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            buf = io.BytesIO()
            np.savez(buf, **arrays)
            f.write(buf.getbuffer())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def _read(path):
    try:
        with np.load(os.fspath(path), allow_pickle=False) as z:
            files = {k: z[k] for k in z.files}
    except (OSError, ValueError) as exc:
        raise ValueError(f"checkpoint {os.fspath(path)!r}: not a readable fusedtrain checkpoint ({exc})") from None
    if "meta" not in files or "params" not in files:
        raise ValueError(f"checkpoint {os.fspath(path)!r}: not a fusedtrain checkpoint (no meta/params)")
    try:
        meta = json.loads(files.pop("meta").tobytes().decode())
    except ValueError:
        raise ValueError(f"checkpoint {os.fspath(path)!r}: corrupt metadata") from None
    if meta.get("format") != FORMAT or meta.get("version") != VERSION:
        raise ValueError(f"checkpoint {os.fspath(path)!r}: format {meta.get('format')!r} version "
                         f"{meta.get('version')!r}; expected {FORMAT!r} version {VERSION}")
    return meta, files


def load(path, model) -> dict:
    """Restore a checkpoint into ``model`` (parameters, optimizer, training
    position, schedule state, history). Returns the checkpoint's metadata.
    Raises ValueError, changing nothing, if it does not match the model."""
    meta, files = _read(path)
    name = os.fspath(path)
    if meta["layout"] != _layout(model):
        raise ValueError(f"checkpoint {name!r}: layers {meta['layout']} do not match the model's "
                         f"{_layout(model)}")
    params = files["params"]
    if params.shape != model.param_arena.shape:
        raise ValueError(f"checkpoint {name!r}: {params.shape[0]} parameters; the model has "
                         f"{model.param_arena.size}")
    dropouts = _dropouts(model)
    if len(meta["dropout"]) != len(dropouts):
        raise ValueError(f"checkpoint {name!r}: {len(meta['dropout'])} dropout layers; the model has {len(dropouts)}")

    # build the optimizer aside and load its state: this validates it
    new_opt = None
    om = meta["optimizer"]
    if om is not None:
        cls = getattr(_optim, om["class"], None)
        if not (isinstance(cls, type) and issubclass(cls, _optim.Optimizer)):
            raise ValueError(f"checkpoint {name!r}: unknown optimizer class {om['class']!r}")
        plist = model.parameters()
        groups = []
        for g in om["param_groups"]:
            idx = g["params"]
            if any(not isinstance(i, int) or not 0 <= i < len(plist) for i in idx):
                raise ValueError(f"checkpoint {name!r}: optimizer parameter indices {idx} out of range")
            hyper = {k: (tuple(v) if isinstance(v, list) else v) for k, v in g.items() if k != "params"}
            groups.append({"params": [plist[i] for i in idx], **hyper})
        new_opt = cls(groups)
        state = {}
        for idx, entry in om["state"].items():
            state[int(idx)] = {"step": entry["step"],
                               **{k: files[f"optim.{idx}.{k}"] for k in entry["buffers"]}}
        sd_groups = [{**{k: (tuple(v) if isinstance(v, list) else v) for k, v in g.items()}}
                     for g in om["param_groups"]]
        new_opt.load_state_dict({"state": state, "param_groups": sd_groups})

    train_state = None
    if meta["train_state"] is not None:
        rng = np.random.default_rng()
        try:
            rng.bit_generator.state = meta["train_state"]["rng"]
        except (TypeError, ValueError, KeyError) as exc:
            raise ValueError(f"checkpoint {name!r}: bad RNG state ({exc})") from None
        train_state = {"epoch": int(meta["train_state"]["epoch"]),
                       "step": int(meta["train_state"]["step"]), "rng": rng}
        scaler_state = meta["train_state"].get("loss_scaler")
        if scaler_state is not None:
            from .amp import DynamicLossScaler

            try:
                scaler = DynamicLossScaler()
                scaler.load_state_dict(scaler_state)
            except (TypeError, ValueError, KeyError) as exc:
                raise ValueError(f"checkpoint {name!r}: bad loss scaler state ({exc})") from None
            train_state["loss_scaler"] = scaler

    # everything checked: apply
    from .train import History

    np.copyto(model.param_arena, params.astype(model.dtype, copy=False))
    for layer, (seed, offset) in zip(dropouts, meta["dropout"]):
        layer.seed, layer.offset = int(seed), int(offset)
    model.optimizer = new_opt
    model.train_state = train_state
    model.history = History.from_dict(meta["history"]) if meta["history"] else None
    model.pending_schedule_state = meta["schedule"]
    return meta
