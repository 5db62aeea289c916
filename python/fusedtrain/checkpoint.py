"""Checkpoints: a model's parameters, buffers and dropout streams with its
whole :class:`fusedtrain.train.TrainState` (optimizer and its state, epoch
and step, shuffling RNG, schedule, loss scaler, history) in one ``.npz``
file (no pickles; ``numpy.load`` reads it too).

The buffers (BatchNorm's running statistics) are the members
``buffers.<layer index>.<name>``, one per buffer of the model's layers and
none for a model without them (so a file of a model without BatchNorm is
what it was before they existed: the version stays 2).

Writes are atomic and streamed (:mod:`fusedtrain._archive`): the file is
written member by member to a temporary file in the same directory, flushed
to disk, then renamed over the target, so a crash mid-write never leaves a
truncated checkpoint in place of a good one; the temporaries an interrupted
save left behind are removed by the next save of the same file.

Loading reads the whole file into new objects and checks every field of it
against the model before anything is assigned: a file that is damaged,
crafted, or does not fit the model raises ValueError naming the file and
what is wrong, and the model (parameters, dropout streams, training state)
is then exactly as it was.
"""

from __future__ import annotations

import json
import math
import os
from typing import TYPE_CHECKING

import numpy as np

from . import _archive
from . import amp as _amp
from . import optim as _optim
from .callbacks import History
from .train import TrainState

if TYPE_CHECKING:  # the types of the public signatures (never evaluated at run time)
    from .nn.model import Sequential

__all__ = ["save", "load", "FORMAT", "VERSION"]

FORMAT = "fusedtrain.checkpoint"
VERSION = 2  # 2: the schedule may be a name with its base lr; nonfinite_steps
_READS = (1, 2)

_UINT64 = 2**64


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


# ---------------------------------------------------------------------------
# save
# ---------------------------------------------------------------------------
def save(path: str | os.PathLike[str], model: Sequential,
         optimizer: _optim.Optimizer | None = None) -> None:
    """Write ``model`` and its training state to ``path`` (``optimizer``,
    default the state's, is saved as the state's optimizer; it must step
    the model's parameters). The model is not changed."""
    state = model.train_state
    if optimizer is None:
        optimizer = state.optimizer if state is not None else None
    elif not isinstance(optimizer, _optim.Optimizer):
        raise TypeError(f"optimizer: expected a fusedtrain.optim.Optimizer or None; received "
                        f"{type(optimizer).__name__}")
    elif state is None:
        state = TrainState()  # an optimizer before any training: step 0
    members = {"params": model.param_arena}
    for name, buf in model.named_buffers():
        members[f"buffers.{name}"] = buf
    opt_meta = None
    if optimizer is not None:
        index = _param_index(model, optimizer)
        sd = optimizer.state_dict()
        state_meta = {}
        for idx, entry in sd["state"].items():
            state_meta[str(idx)] = {"step": float(entry["step"]),
                                    "buffers": [k for k in entry if k != "step"]}
            for k, arr in entry.items():
                if k != "step":
                    members[f"optim.{idx}.{k}"] = _to_host(arr)
        for gi, g in enumerate(sd["param_groups"]):
            bad = [k for k, v in g.items() if k != "params" and not _plain(v)]
            if bad:
                raise ValueError(
                    f"optimizer: param_groups[{gi}][{bad[0]!r}] is {type(g[bad[0]]).__name__} "
                    f"{g[bad[0]]!r:.60}; a checkpoint stores numbers, bools and tuples of them "
                    "(a learning-rate schedule goes to fit(schedule=...), which checkpoints "
                    "keep)")
        # the state is keyed by the optimizer's own parameter indices; the
        # groups list the model's parameter index of each of their parameters
        groups = _jsonable(sd["param_groups"])
        for g in groups:
            g["params"] = [index[i] for i in g["params"]]
        opt_meta = {"class": type(optimizer).__name__, "param_groups": groups,
                    "state": state_meta}
    meta = {
        "format": FORMAT,
        "version": VERSION,
        "dtype": str(model.dtype),
        "layout": _layout(model),
        "layers": _jsonable(model.config()),
        "dropout": [[d.seed, d.offset] for d in _dropouts(model)],
        "train_state": _state_meta(state),
        "optimizer": opt_meta,
        "schedule": _schedule_meta(state),
        "history": state.history.to_dict() if state is not None else None,
    }
    members["meta"] = json.dumps(meta).encode()
    _archive.write(path, members)


def _plain(v) -> bool:
    """A hyperparameter a checkpoint can hold (JSON): a number, a bool, None,
    a string, or a tuple / list of them."""
    if isinstance(v, (list, tuple)):
        return all(_plain(x) for x in v)
    return v is None or isinstance(v, (bool, int, float, str, np.generic))


def _param_index(model, optimizer) -> list:
    """The model's index of each of the optimizer's parameters."""
    where = {id(p): i for i, p in enumerate(model.parameters())}
    index = [where.get(id(p)) for p in optimizer.params]
    if None in index or len(index) != len(where):
        raise ValueError("optimizer: expected an optimizer over this model's parameters "
                         f"(built with model.parameters()); received {type(optimizer).__name__} "
                         f"over {len(index)} arrays, {index.count(None)} of them not the model's")
    return index


def _to_host(a):
    from .backend import to_host

    return np.ascontiguousarray(to_host(a))


def _state_meta(state):
    if state is None:
        return None
    out = {"epoch": state.epoch, "step": state.step,
           "rng": _jsonable(state.rng.bit_generator.state) if state.rng is not None else None,
           "nonfinite_steps": state.nonfinite_steps}
    if state.loss_scaler is not None:
        out["loss_scaler"] = _jsonable(state.loss_scaler.state_dict())
    return out


def _schedule_meta(state):
    if state is None:
        return None
    if state.schedule_name is not None:
        return {"name": state.schedule_name, "base_lr": state.base_lr}
    sched = state.schedule
    if sched is not None and hasattr(sched, "state_dict"):
        return {"class": type(sched).__name__, "state": _jsonable(sched.state_dict())}
    if state.pending_schedule is not None:  # loaded, not yet used: kept as it came
        return {"class": state.pending_schedule[0], "state": state.pending_schedule[1]}
    return None


# ---------------------------------------------------------------------------
# load: parse and check everything into new objects, then assign
# ---------------------------------------------------------------------------
class _Parser:
    """Checks of the metadata's fields; every failure is a ValueError that
    names the file and the field."""

    def __init__(self, name):
        self.name = name

    def fail(self, what):
        raise ValueError(f"checkpoint {self.name!r}: {what}")

    def dict(self, value, where, required, optional=()):
        if not isinstance(value, dict):
            self.fail(f"{where}: expected a JSON object; received {_kind(value)}")
        missing = [k for k in required if k not in value]
        extra = sorted(set(value) - set(required) - set(optional))
        if missing or extra:
            self.fail(f"{where}: expected the keys {list(required)} (and optionally "
                      f"{list(optional)}); missing {missing}, unexpected {extra}")
        return value

    def int(self, value, where, low=0, high=2**63 - 1):
        if type(value) is not int or not low <= value <= high:
            self.fail(f"{where}: expected an int in [{low}, {high}]; received {_kind(value)}")
        return value

    def real(self, value, where, low=-math.inf, finite=True):
        if type(value) not in (int, float) or (finite and not math.isfinite(value)) \
                or not value >= low:
            self.fail(f"{where}: expected a {'finite ' if finite else ''}number >= {low:g}; "
                      f"received {_kind(value)}")
        return float(value)

    def list(self, value, where, length=None):
        if not isinstance(value, list) or (length is not None and len(value) != length):
            want = f"a list of {length}" if length is not None else "a list"
            self.fail(f"{where}: expected {want}; received {_kind(value)}")
        return value

    def obj(self, value, where):
        if not isinstance(value, dict):
            self.fail(f"{where}: expected a JSON object; received {_kind(value)}")
        return value

    def str(self, value, where):
        if not isinstance(value, str):
            self.fail(f"{where}: expected a string; received {_kind(value)}")
        return value


def _kind(value) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text[:60]}{'...' if len(text) > 60 else ''}"


_KEYS = ("format", "version", "dtype", "layout", "layers", "dropout", "train_state", "optimizer",
         "schedule", "history")


def _read(path, model):
    """(meta, params, buffers, dropout streams, TrainState or None) from the
    file, every field checked against ``model``."""
    try:
        return _parse(path, model)
    except ValueError as exc:
        text = str(exc)
        if text.startswith("checkpoint "):
            raise
        raise ValueError(f"checkpoint {text}") from None  # the archive's: "<path>: <problem>"


def _parse(path, model):
    name = os.fspath(path)
    P = _Parser(name)
    with _archive.Reader(path) as r:
        meta = r.json("meta")
        P.dict(meta, "metadata", ("format", "version"), _KEYS)
        if meta["format"] != FORMAT or meta["version"] not in _READS:
            P.fail(f"format {meta.get('format')!r} version {meta.get('version')!r}; expected "
                   f"{FORMAT!r} version {' or '.join(map(str, _READS))}")
        P.dict(meta, "metadata", _KEYS)
        if meta["layout"] != _layout(model):
            P.fail(f"layers {meta['layout']!r:.200} do not match the model's {_layout(model)}")
        dropouts = _dropouts(model)
        streams = P.list(meta["dropout"], "dropout")
        if len(streams) != len(dropouts):
            P.fail(f"{len(streams)} dropout layers; the model has {len(dropouts)}")
        streams = [(P.int(P.list(s, f"dropout[{i}]", 2)[0], f"dropout[{i}] seed", 0, _UINT64 - 1),
                    P.int(s[1], f"dropout[{i}] offset", 0, _UINT64 - 1))
                   for i, s in enumerate(streams)]
        expected = {"meta", "params"}
        params = _array(r, P, "params", (model.param_arena.size,))
        # the buffers the model's layers have (the layout, checked above,
        # names the layers): each present, floating, of its shape; none other
        buffers = []
        for name, buf in model.named_buffers():
            member = f"buffers.{name}"
            buffers.append(_array(r, P, member, buf.shape))
            expected.add(member)
        state, members = _train_state(r, P, meta, model)
        expected |= members
        extra = r.unexpected(expected)
        if extra:
            P.fail(f"unexpected members {extra}")
    return meta, params, buffers, streams, state


def _array(r, P, member, shape=None):
    """A floating member (of ``shape`` when given), its header checked
    before it is read."""
    if member not in r:
        P.fail(f"member {member!r} is missing")
    got_shape, dtype = r.header(member)
    if dtype.kind != "f" or (shape is not None and tuple(got_shape) != tuple(shape)):
        want = f" of shape {tuple(shape)}" if shape is not None else ""
        P.fail(f"member {member!r} holds {dtype} of shape {tuple(got_shape)}; expected a "
               f"floating array{want}")
    return r.array(member)


def _train_state(r, P, meta, model):
    """(TrainState or None, the optimizer members it read)."""
    ts, om, sm, hm = (meta[k] for k in ("train_state", "optimizer", "schedule", "history"))
    if ts is None:
        if om is not None or sm is not None or hm is not None:
            P.fail("an optimizer, schedule or history without a train_state")
        return None, set()
    P.dict(ts, "train_state", ("epoch", "step", "rng"), ("loss_scaler", "nonfinite_steps"))
    state = TrainState()
    state.epoch = P.int(ts["epoch"], "train_state epoch")
    state.step = P.int(ts["step"], "train_state step")
    state.nonfinite_steps = P.int(ts.get("nonfinite_steps", 0), "train_state nonfinite_steps")
    if ts["rng"] is not None:
        P.dict(ts["rng"], "train_state rng", ("bit_generator", "state"), ("has_uint32", "uinteger"))
        rng = np.random.default_rng()
        try:
            rng.bit_generator.state = ts["rng"]
        except Exception as exc:  # the generator's own checks, whatever they raise
            P.fail(f"train_state rng: not a {type(rng.bit_generator).__name__} state ({exc})")
        state.rng = rng
    if ts.get("loss_scaler") is not None:
        scaler = _amp.DynamicLossScaler()
        try:
            scaler.load_state_dict(ts["loss_scaler"])
        except (TypeError, ValueError, KeyError) as exc:
            P.fail(f"train_state loss_scaler: {exc}")
        state.loss_scaler = scaler
    if hm is not None:
        try:
            state.history = History.from_dict(hm)
        except ValueError as exc:
            P.fail(str(exc))
    if sm is not None:
        if not isinstance(sm, dict) or "name" in sm:
            P.dict(sm, "schedule", ("name", "base_lr"))
            from .schedules import NAMES

            if sm["name"] not in NAMES:
                P.fail(f"schedule name {sm['name']!r}; expected one of {list(NAMES)}")
            state.schedule_name = sm["name"]
            state.base_lr = P.real(sm["base_lr"], "schedule base_lr", 0.0)
        else:
            P.dict(sm, "schedule", ("class", "state"))
            state.pending_schedule = (P.str(sm["class"], "schedule class"),
                                      P.obj(sm["state"], "schedule state"))
    members = set()
    if om is not None:
        state.optimizer, members = _optimizer(r, P, om, model)
    return state, members


def _optimizer(r, P, om, model):
    """A new optimizer over the model's parameters with the file's state
    loaded (its own load_state_dict checks the state against it)."""
    P.dict(om, "optimizer", ("class", "param_groups", "state"))
    known = {c.__name__: c for c in map(_optim.get, _optim.NAMES)}
    cls = known.get(P.str(om["class"], "optimizer class"))
    if cls is None:
        P.fail(f"unknown optimizer class {om['class']!r}; expected one of {sorted(known)}")
    plist = model.parameters()
    seen = []
    groups = []
    for gi, g in enumerate(P.list(om["param_groups"], "optimizer param_groups")):
        if "params" not in P.obj(g, f"optimizer param_groups[{gi}]"):
            P.fail(f"optimizer param_groups[{gi}]: no 'params'")
        idx = [P.int(i, f"optimizer param_groups[{gi}] params", 0, len(plist) - 1)
               for i in P.list(g["params"], f"optimizer param_groups[{gi}] params")]
        seen += idx
        hyper = {k: (tuple(v) if isinstance(v, list) else v) for k, v in g.items() if k != "params"}
        groups.append({"params": [plist[i] for i in idx], **hyper})
    if sorted(seen) != list(range(len(plist))):
        P.fail(f"optimizer param_groups' params are {seen}; expected each of the model's "
               f"{len(plist)} parameter indices exactly once")
    # the state's keys are the optimizer's own parameter indices
    P.obj(om["state"], "optimizer state")
    state, members = {}, set()
    for key, entry in om["state"].items():
        if not key.isdigit() or int(key) >= len(plist):
            P.fail(f"optimizer state key {key!r}: expected a parameter index below {len(plist)}")
        P.dict(entry, f"optimizer state[{key}]", ("step", "buffers"))
        step = P.real(entry["step"], f"optimizer state[{key}] step", 1.0)
        buffers = {}
        for b in P.list(entry["buffers"], f"optimizer state[{key}] buffers"):
            member = f"optim.{key}.{P.str(b, f'optimizer state[{key}] buffers')}"
            buffers[b] = _array(r, P, member)  # its shape: checked by load_state_dict
            members.add(member)
        state[int(key)] = {"step": step, **buffers}
    try:
        opt = cls(groups)
        opt.load_state_dict({"state": state, "param_groups": [
            {**{k: v for k, v in g.items() if k != "params"}, "params": list(range(
                sum(len(h["params"]) for h in groups[:gi]),
                sum(len(h["params"]) for h in groups[:gi + 1])))}
            for gi, g in enumerate(groups)]})
    except (TypeError, ValueError, KeyError) as exc:
        P.fail(f"optimizer {om['class']}: {exc}")
    return opt, members


def load(path: str | os.PathLike[str], model: Sequential) -> dict[str, object]:
    """Restore a checkpoint into ``model``: parameters, buffers, dropout
    streams and the whole :class:`fusedtrain.train.TrainState` (optimizer with its
    state, epoch, step, RNG, schedule, loss scaler, history), which replaces
    the model's. Returns the checkpoint's metadata (a dict).

    Raises ValueError naming the file and what is wrong when the file is
    damaged or does not fit the model; then nothing is changed."""
    with model._lock:
        meta, params, buffers, streams, state = _read(path, model)
        # everything checked: assign
        np.copyto(model.param_arena, params, casting="same_kind")
        for (_, buf), saved in zip(model.named_buffers(), buffers):
            np.copyto(buf, saved, casting="same_kind")
        for layer, (seed, offset) in zip(_dropouts(model), streams):
            layer.seed, layer.offset = seed, offset
        model.train_state = state
    return meta
