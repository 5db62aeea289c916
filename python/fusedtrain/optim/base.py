"""Base class of the optimizer objects: parameter groups, state, step() and
torch-compatible state_dict / load_state_dict.

A subclass names its hyperparameters and defaults, its state buffers, and
implements ``_step_group`` with one fused kernel call over the whole group.
"""

from __future__ import annotations

import copy
import numbers

import numpy as np

__all__ = ["Optimizer"]


class Optimizer:
    """Holds parameter groups and per-parameter state; ``step(grads)`` updates
    every parameter in place, one fused kernel call per group.

    ``params`` is a list of arrays, or a list of dicts (parameter groups, as in
    torch) each with a ``"params"`` list and optional hyperparameters that
    override the constructor's. ``opt.param_groups[i]["lr"] = x`` changes the
    learning rate from the next step on.
    """

    #: hyperparameter names and torch's defaults, set by each subclass
    defaults_: dict = {}

    def __init__(self, params, **hyperparameters):
        unknown = set(hyperparameters) - set(self.defaults_)
        if unknown:
            raise TypeError(
                f"{type(self).__name__}() got unexpected hyperparameters {sorted(unknown)}; "
                f"expected some of {sorted(self.defaults_)}"
            )
        self.defaults = {**self.defaults_, **hyperparameters}
        self._check(self.defaults)
        if isinstance(params, np.ndarray):
            raise TypeError("params: expected a list of arrays or of parameter-group dicts, "
                            "received a single array (wrap it in a list)")
        groups = list(params)
        if not groups:
            raise ValueError("params: expected a non-empty list of arrays, received an empty list")
        if not isinstance(groups[0], dict):
            groups = [{"params": groups}]
        self.param_groups: list[dict] = []
        self._group_state: list[dict] = []  # per group: "step" and one list per buffer
        for g in groups:
            self.add_param_group(g)

    # ------------------------------------------------------------------ groups
    def add_param_group(self, group: dict) -> None:
        if not isinstance(group, dict) or "params" not in group:
            raise TypeError(f"param group: expected a dict with a 'params' list, received {group!r:.80}")
        params = group["params"]
        params = [params] if isinstance(params, np.ndarray) else list(params)
        if not params:
            raise ValueError("param group 'params': expected a non-empty list of arrays, received an empty list")
        unknown = set(group) - set(self.defaults_) - {"params"}
        if unknown:
            raise TypeError(f"param group: unexpected keys {sorted(unknown)}; expected some of {sorted(self.defaults_)}")
        seen = {id(p) for g in self.param_groups for p in g["params"]}
        gi = len(self.param_groups)
        for i, p in enumerate(params):
            where = f"param_groups[{gi}]['params'][{i}]"
            if not isinstance(p, np.ndarray):
                raise TypeError(f"{where}: expected a numpy.ndarray, received {type(p).__name__}")
            if p.dtype not in (np.float32, np.float64):
                raise TypeError(f"{where}: expected dtype float32 or float64, received {p.dtype}")
            if not p.flags.c_contiguous or not p.flags.writeable:
                raise ValueError(f"{where}: expected a writable C-contiguous array (updated in place)")
            if id(p) in seen:
                raise ValueError(f"{where}: this array appears in more than one place")
            seen.add(id(p))
        full = {**self.defaults, **{k: v for k, v in group.items() if k != "params"}}
        self._check(full)
        full["params"] = params
        self.param_groups.append(full)
        self._group_state.append({"step": 0})

    @property
    def params(self) -> list:
        """All parameters, in the order step() expects their gradients."""
        return [p for g in self.param_groups for p in g["params"]]

    # -------------------------------------------------------------------- step
    def step(self, grads) -> None:
        """Update every parameter in place from ``grads`` (one array per
        parameter, in the order of ``params`` flattened across groups)."""
        if isinstance(grads, np.ndarray):
            grads = [grads]
        n = sum(len(g["params"]) for g in self.param_groups)
        if not isinstance(grads, (list, tuple)):
            raise TypeError(f"grads: expected a list of arrays, received {type(grads).__name__}")
        if len(grads) != n:
            raise ValueError(f"grads: expected {n} arrays (one per parameter), received {len(grads)}")
        for group in self.param_groups:  # hyperparameters may have been edited
            self._check(group)
        if len(self.param_groups) > 1:
            # the kernel validates its own group; check the others' gradients
            # too before the first group is updated
            _precheck(self.params, grads)
        start = 0
        for group, gstate in zip(self.param_groups, self._group_state):
            params = group["params"]
            stop = start + len(params)
            step = gstate["step"] + 1
            buffers = self._buffers(group, gstate)
            self._step_group(group, params, grads[start:stop], buffers, step)
            # committed only after the kernel succeeded
            gstate.update(buffers)
            gstate["step"] = step
            start = stop

    def _buffers(self, group, gstate) -> dict:
        """The state lists this group needs now; new ones start as
        ``self._initial_value(name, group)``-filled arrays."""
        out = {}
        for name in self._state_names(group):
            bufs = gstate.get(name)
            if bufs is None:
                fill = self._initial_value(name, group)
                bufs = [np.full_like(p, fill) for p in group["params"]]
            out[name] = bufs
        return out

    # -------------------------------------------------------- subclass hooks
    def _check(self, hyper: dict) -> None:
        """Validate hyperparameters; raise ValueError/TypeError naming them."""
        raise NotImplementedError

    def _state_names(self, group: dict) -> tuple:
        """Names of the state buffers this group's variant uses (torch's keys)."""
        raise NotImplementedError

    def _initial_value(self, name: str, group: dict) -> float:
        return 0.0

    def _step_group(self, group, params, grads, buffers, step) -> None:
        raise NotImplementedError

    # --------------------------------------------------------------- state
    @property
    def state(self) -> dict:
        """Per-parameter state keyed by the parameter's index, as torch's
        state_dict()["state"] (views of the live buffers)."""
        out = {}
        index = 0
        for group, gstate in zip(self.param_groups, self._group_state):
            for i in range(len(group["params"])):
                if gstate["step"] > 0:
                    entry = {"step": float(gstate["step"])}
                    for name in self._state_names(group):
                        if name in gstate:
                            entry[name] = gstate[name][i]
                    out[index] = entry
                index += 1
        return out

    def state_dict(self) -> dict:
        """A snapshot (copies) of the state, in torch.optim's layout:
        ``{"state": {index: {"step": t, buffer: array}}, "param_groups":
        [{hyperparameters..., "params": [indices]}]}``."""
        groups = []
        index = 0
        for group in self.param_groups:
            g = {k: copy.deepcopy(v) for k, v in group.items() if k != "params"}
            g["params"] = list(range(index, index + len(group["params"])))
            index += len(group["params"])
            groups.append(g)
        state = {k: {n: (v.copy() if isinstance(v, np.ndarray) else v) for n, v in e.items()}
                 for k, e in self.state.items()}
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict: dict) -> None:
        """Load a state_dict of the same optimizer class and parameter layout.
        Everything is checked first; on error nothing is changed."""
        if not isinstance(state_dict, dict) or set(state_dict) != {"state", "param_groups"}:
            raise ValueError("state_dict: expected a dict with keys 'state' and 'param_groups', "
                             f"received {type(state_dict).__name__} with keys {sorted(state_dict) if isinstance(state_dict, dict) else None}")
        saved_groups = state_dict["param_groups"]
        if len(saved_groups) != len(self.param_groups):
            raise ValueError(f"state_dict: expected {len(self.param_groups)} param groups, received {len(saved_groups)}")
        new_groups, new_states = [], []
        index = 0
        for gi, (group, saved) in enumerate(zip(self.param_groups, saved_groups)):
            n = len(group["params"])
            if len(saved.get("params", ())) != n:
                raise ValueError(f"state_dict: param_groups[{gi}] has {len(saved.get('params', ()))} "
                                 f"parameters; expected {n}")
            hyper = {k: v for k, v in saved.items() if k != "params"}
            missing = set(self.defaults_) - set(hyper)
            extra = set(hyper) - set(self.defaults_)
            if missing or extra:
                raise ValueError(f"state_dict: param_groups[{gi}] is not from {type(self).__name__}: "
                                 f"missing {sorted(missing)}, unexpected {sorted(extra)}")
            merged = {**group, **hyper}
            self._check(merged)
            names = self._state_names(merged)
            gstate = {"step": 0}
            steps = set()
            for i, key in enumerate(saved["params"]):
                entry = state_dict["state"].get(key)
                if entry is None:
                    continue
                keys = set(entry) - {"step"}
                if "step" not in entry or not keys <= set(names) or not (set(names) - keys <= self._lazy(merged)):
                    raise ValueError(f"state_dict: state[{key!r}] has keys {sorted(entry)}; "
                                     f"{type(self).__name__} expects 'step' and {list(names)}")
                steps.add(_as_step(entry["step"], key))
                p = group["params"][i]
                for name in keys:
                    arr = np.asarray(entry[name])
                    if arr.shape != p.shape:
                        raise ValueError(f"state_dict: state[{key!r}][{name!r}] has shape {arr.shape}; "
                                         f"expected {p.shape} (the parameter's shape)")
                    gstate.setdefault(name, [None] * n)[i] = np.array(arr, dtype=p.dtype, order="C")
            if steps:
                if len(steps) != 1 or any(None in v for k, v in gstate.items() if k != "step"):
                    raise ValueError(f"state_dict: parameters of param_groups[{gi}] must all have state "
                                     f"at the same step; received steps {sorted(steps)}")
                gstate["step"] = steps.pop()
            new_groups.append(merged)
            new_states.append(gstate)
            index += n
        self.param_groups[:] = new_groups
        self._group_state[:] = new_states

    def _lazy(self, group) -> set:
        """State names that may be absent from a saved state (created on use)."""
        return set()

    def __repr__(self) -> str:
        lines = [f"{type(self).__name__} ("]
        for i, g in enumerate(self.param_groups):
            hp = ", ".join(f"{k}={g[k]!r}" for k in self.defaults_)
            lines.append(f"  group {i}: {len(g['params'])} params, {hp}")
        return "\n".join(lines + [")"])


def _precheck(params, grads) -> None:
    for i, (p, g) in enumerate(zip(params, grads)):
        if not isinstance(g, np.ndarray):
            raise TypeError(f"grads[{i}]: expected a numpy.ndarray, received {type(g).__name__}")
        if g.dtype != p.dtype:
            raise TypeError(f"grads[{i}]: expected dtype {p.dtype} (the dtype of its parameter), received {g.dtype}")
        if g.shape != p.shape:
            raise ValueError(f"grads[{i}]: expected shape {p.shape} (the shape of its parameter), received {g.shape}")
        if not g.flags.c_contiguous:
            raise ValueError(f"grads[{i}]: expected a C-contiguous array, received a non-contiguous view")
        if np.may_share_memory(p, g):
            raise ValueError(f"grads[{i}]: shares memory with its parameter; expected a separate array")


def _as_step(value, key) -> int:
    v = value.item() if hasattr(value, "item") else value
    if not isinstance(v, numbers.Real) or v != int(v) or v < 1:
        raise ValueError(f"state_dict: state[{key!r}]['step'] must be a positive whole number; received {value!r}")
    return int(v)
