"""Rebuild a model from a checkpoint alone: :func:`load_model`."""

from __future__ import annotations

import os

import numpy as np

from . import init as _init
from .layers import BatchNorm, Dense, Dropout, LayerNorm
from .model import Sequential

__all__ = ["load_model", "LAYERS"]

#: the layer classes a checkpoint's "layers" entry may name
LAYERS = {"Dense": Dense, "Dropout": Dropout, "BatchNorm": BatchNorm, "LayerNorm": LayerNorm}


def _fail(path, what):
    raise ValueError(f"checkpoint {os.fspath(path)}: {what}")


def _layer(path, i, entry):
    if not (isinstance(entry, list) and len(entry) == 2 and isinstance(entry[0], str)
            and isinstance(entry[1], dict)):
        _fail(path, f"layers[{i}]: expected [class name, settings]; received {entry!r:.120}")
    kind, cfg = entry
    cls = LAYERS.get(kind)
    if cls is None:
        _fail(path, f"layers[{i}]: unknown layer class {kind!r}; expected one of {sorted(LAYERS)}")
    cfg = dict(cfg)
    if cls is Dense and cfg.get("init") not in _init.INITIALIZERS:
        # a custom initialiser is not stored; the parameters come from the file
        cfg["init"] = None
    try:
        return cls(**cfg)
    except (TypeError, ValueError) as exc:
        _fail(path, f"layers[{i}] {kind}({', '.join(f'{k}={v!r}' for k, v in cfg.items())}): "
                    f"{exc}")


def load_model(path) -> Sequential:
    """A new :class:`Sequential` built from the layers a checkpoint (written
    by ``model.save`` or ``ModelCheckpoint``) records, with the checkpoint
    loaded into it: parameters, dropout streams and the whole training state
    (so ``fit`` goes on where the saved run stopped).

    Raises ValueError naming the file when it cannot be read, records layers
    this version cannot build, or does not load (see
    :func:`fusedtrain.checkpoint.load`)."""
    from .. import _archive

    with _archive.Reader(path) as r:
        try:
            meta = r.json("meta")
        except ValueError as exc:
            raise ValueError(f"checkpoint {exc}") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("layers"), list) \
            or not meta["layers"]:
        _fail(path, "no layer list in its metadata (not a fusedtrain checkpoint?)")
    dtype = meta.get("dtype")
    if dtype not in ("float32", "float64"):
        _fail(path, f"dtype {dtype!r}; expected 'float32' or 'float64'")
    layers = [_layer(path, i, e) for i, e in enumerate(meta["layers"])]
    try:
        model = Sequential(layers, dtype=np.dtype(dtype))
    except (TypeError, ValueError) as exc:
        _fail(path, f"its layers do not make a model: {exc}")
    model.load(path)
    return model
