"""Base class of the optimizer objects: parameter groups, state, step() and
torch-compatible state_dict / load_state_dict.

A subclass names its hyperparameters and defaults, its state buffers, and
implements ``_step_group`` with one fused kernel call over the whole group.
"""

from __future__ import annotations

import copy
import numbers
import re

import numpy as np

from .. import _core
from .. import _validate as V
from .. import backend as B
from ..ops import _found_inf  # one definition of the accepted forms

__all__ = ["Optimizer"]

_ITEM = re.compile(r"\b(params|grads|exp_avg|exp_avg_sq|max_exp_avg_sq|momentum_buffer|square_avg"
                   r"|grad_avg|state_sum|master_params)\[(\d+)\]")

_F32 = np.dtype(np.float32)
_PLAIN = (np.dtype(np.float32), np.dtype(np.float64))
MASTER = "master_param"  # the state key of the float32 master weights


def _bfloat16():
    import ml_dtypes

    return np.dtype(ml_dtypes.bfloat16)


def _narrow_dtypes() -> tuple:
    return (np.dtype(np.float16), _bfloat16())


class Optimizer:
    """Holds parameter groups and per-parameter state; ``step(grads)`` updates
    every parameter in place, one fused kernel call per group.

    Parameters are NumPy arrays (the CPU kernels) or GPU arrays -- CuPy
    arrays or torch CUDA tensors (the CUDA kernels, on the caller's current
    stream); one group holds one kind. State buffers are made by the
    parameter's library on its device; ``state_dict()`` copies them as they
    are, and ``load_state_dict`` accepts NumPy or GPU arrays for either kind.

    ``params`` is a list of arrays, or a list of dicts (parameter groups, as in
    torch) each with a ``"params"`` list and optional hyperparameters that
    override the constructor's. ``opt.param_groups[i]["lr"] = x`` changes the
    learning rate from the next step on.

    Mixed precision (keyword-only, for every optimizer):

    ``master_weights`` (default False)
        True for float16 / bfloat16 params (``numpy.float16``,
        ``ml_dtypes.bfloat16``): the optimizer keeps float32 master weights
        (state key ``"master_param"``, copied from the params at the first
        step) and each step updates them and writes the params rounded to
        their dtype (:func:`fusedtrain.ops.adam_` describes the step).
    ``state_dtype`` (default ``"float32"``)
        ``"bfloat16"`` keeps the optimizer states in bfloat16 (rounded to
        nearest even after each float32 update); with master_weights only.
    ``stochastic_rounding`` (default False), ``seed`` (default 0)
        Round the params stochastically (Philox stream ``seed``, counter
        offset the step count) instead of to nearest even.

    ``step(grads, grad_scale=1.0, found_inf=None)``: gradients of a loss
    scaled by ``grad_scale`` are unscaled in the kernel; a true ``found_inf``
    skips the step (nothing changes, the step count included).
    """

    #: hyperparameter names and torch's defaults, set by each subclass
    defaults_: dict = {}

    def __init__(self, params, *, master_weights=False, state_dtype="float32",
                 stochastic_rounding=False, seed=0, **hyperparameters):
        self._master = V.flag("master_weights", master_weights)
        self._stochastic = V.flag("stochastic_rounding", stochastic_rounding)
        self._seed = V.uint64("seed", seed)
        names = {"float32": _F32, "bfloat16": None}
        key = state_dtype if isinstance(state_dtype, str) else str(np.dtype(state_dtype))
        if key not in names:
            raise ValueError(f"state_dtype must be 'float32' or 'bfloat16'; received {state_dtype!r}")
        if key == "bfloat16" and not self._master:
            raise ValueError("state_dtype='bfloat16' needs master_weights=True (bfloat16 states go "
                             "with float16 / bfloat16 params); received master_weights=False")
        self._state_dtype = _F32 if key == "float32" else _bfloat16()
        unknown = set(hyperparameters) - set(self.defaults_)
        if unknown:
            raise TypeError(
                f"{type(self).__name__}() got unexpected hyperparameters {sorted(unknown)}; "
                f"expected some of {sorted(self.defaults_)}"
            )
        self.defaults = {**self.defaults_, **hyperparameters}
        self._check(self.defaults)
        if B.is_array(params):
            raise TypeError("params: expected a list of arrays or of parameter-group dicts, "
                            "received a single array (wrap it in a list)")
        groups = list(params)
        if not groups:
            raise ValueError("params: expected a non-empty list of arrays, received an empty list")
        if not isinstance(groups[0], dict):
            groups = [{"params": groups}]
        self.param_groups: list[dict] = []
        self._group_state: list[dict] = []  # per group: "step" and one list per buffer
        self._arena: list = []  # per group: the flat array its params tile, or None
        # per group: the last gradient list seen and the array it tiles (a
        # training loop passes the same gradient buffers every step)
        self._grad_arena: dict = {}
        for g in groups:
            self.add_param_group(g)

    # ------------------------------------------------------------------ groups
    def add_param_group(self, group: dict) -> None:
        if not isinstance(group, dict) or "params" not in group:
            raise TypeError(f"param group: expected a dict with a 'params' list, received {group!r:.80}")
        params = group["params"]
        params = [params] if B.is_array(params) else list(params)
        if not params:
            raise ValueError("param group 'params': expected a non-empty list of arrays, received an empty list")
        unknown = set(group) - set(self.defaults_) - {"params"}
        if unknown:
            raise TypeError(f"param group: unexpected keys {sorted(unknown)}; expected some of {sorted(self.defaults_)}")
        seen = {id(p) for g in self.param_groups for p in g["params"]}
        gi = len(self.param_groups)
        on_gpu = B.is_gpu_array(params[0])
        for i, p in enumerate(params):
            where = f"param_groups[{gi}]['params'][{i}]"
            if not B.is_array(p):
                raise TypeError(f"{where}: expected a numpy.ndarray or a GPU array (CuPy, torch "
                                f"CUDA tensor), received {type(p).__name__}")
            if B.is_gpu_array(p) != on_gpu:
                raise TypeError(f"{where}: expected {'a GPU array' if on_gpu else 'a numpy.ndarray'} "
                                f"like param_groups[{gi}]['params'][0], received "
                                f"{type(p).__module__}.{type(p).__name__}")
            if on_gpu:
                if self._master:
                    raise TypeError(f"{where}: master_weights=True takes NumPy float16 / bfloat16 "
                                    "parameters (GPU arrays: use fusedtrain.ops with "
                                    "master_params=); received a GPU array")
                problem = B.gpu_array_problem(p)
                if problem is not None:
                    kind = TypeError if problem.startswith("expected dtype") else ValueError
                    raise kind(f"{where}: {problem}")
            elif self._master and p.dtype not in _narrow_dtypes():
                raise TypeError(f"{where}: expected dtype float16 or bfloat16 (master_weights=True), "
                                f"received {p.dtype}")
            elif not self._master and p.dtype not in _PLAIN:
                hint = (" (float16 / bfloat16 params need master_weights=True)"
                        if p.dtype in _narrow_dtypes() else "")
                raise TypeError(f"{where}: expected dtype float32 or float64, received {p.dtype}{hint}")
            elif not p.flags.c_contiguous or not p.flags.writeable:
                raise ValueError(f"{where}: expected a writable C-contiguous array (updated in place)")
            if id(p) in seen:
                raise ValueError(f"{where}: this array appears in more than one place")
            seen.add(id(p))
        full = {**self.defaults, **{k: v for k, v in group.items() if k != "params"}}
        self._check(full)
        full["params"] = params
        self.param_groups.append(full)
        self._group_state.append({"step": 0})
        self._arena.append(_tiling(params))

    @property
    def params(self) -> list:
        """All parameters, in the order step() expects their gradients."""
        return [p for g in self.param_groups for p in g["params"]]

    # -------------------------------------------------------------------- step
    def step(self, grads, grad_scale=1.0, found_inf=None) -> None:
        """Update every parameter in place from ``grads`` (one array per
        parameter, in the order of ``params`` flattened across groups).

        ``grad_scale``: the gradients are of a loss scaled by it; the kernels
        multiply them by ``1 / grad_scale``. ``found_inf``: a bool, a number
        or a 1-element float32 array (NumPy, or GPU: then read back once, as
        torch's GradScaler does); when nonzero the step is skipped after the
        argument checks (params, states, master weights and the step count
        unchanged)."""
        extra = {}
        scale = V.grad_scale(grad_scale)
        if scale != 1.0:
            extra["grad_scale"] = scale
        if B.is_gpu_array(found_inf):
            found_inf = B.to_host(found_inf)
        skip = _found_inf(_core, found_inf)
        if B.is_array(grads):
            grads = [grads]
        n = sum(len(g["params"]) for g in self.param_groups)
        if not isinstance(grads, (list, tuple)):
            raise TypeError(f"grads: expected a list of arrays, received {type(grads).__name__}")
        if len(grads) != n:
            raise ValueError(f"grads: expected {n} arrays (one per parameter), received {len(grads)}")
        for group in self.param_groups:  # hyperparameters may have been edited
            self._check(group)
        plans = []
        start = 0
        for gi, (group, gstate) in enumerate(zip(self.param_groups, self._group_state)):
            stop = start + len(group["params"])
            buffers, flats = self._buffers(gi, group, gstate)
            plans.append((group, gstate, grads[start:stop], buffers, flats, gstate["step"] + 1))
            start = stop
        arenas = [self._arena_call(gi, plan) for gi, plan in enumerate(plans)]
        if skip or len(plans) > 1 or any(a is not None for a in arenas):
            # every array of every group is checked before anything is written
            # (one kernel call validates only its own lists)
            for gi, (group, _, group_grads, buffers, _, step) in enumerate(plans):
                try:
                    self._call(group, group["params"], group_grads, buffers, step, {}, dry_run=True)
                except (TypeError, ValueError) as exc:
                    if len(plans) == 1:
                        raise
                    # the kernel numbers the group's arrays from 0: renumber
                    offset = sum(len(g["params"]) for g in self.param_groups[:gi])
                    msg = _ITEM.sub(lambda m: f"{m.group(1)}[{int(m.group(2)) + offset}]", str(exc))
                    raise type(exc)(f"param_groups[{gi}]: {msg}") from None
        if skip:
            return  # checked; nothing is written, the step count stays
        for (group, gstate, group_grads, buffers, flats, step), arena in zip(plans, arenas):
            if arena is not None:
                # parameters, gradients and states each tile one flat array:
                # step the whole group as a single array
                self._call(group, *arena, step, extra)
            else:
                self._call(group, group["params"], group_grads, buffers, step, extra)
            # committed only after the kernel succeeded
            gstate.update(buffers)
            gstate["_flat"] = flats
            gstate["step"] = step

    def _call(self, group, params, grads, buffers, step, extra, dry_run=False):
        """One kernel call over a group: the master weights and the rounding
        options join the keyword arguments."""
        if self._master:
            buffers = dict(buffers)
            extra = dict(extra, master_params=buffers.pop(MASTER))
            if self._stochastic:
                extra.update(stochastic_rounding=True, seed=self._seed, rng_offset=step)
        self._step_group(group, params, grads, buffers, step, dry_run=dry_run, **extra)

    def _names(self, group) -> tuple:
        """The group's state names, the master weights last."""
        names = self._state_names(group)
        return names + (MASTER,) if self._master else names

    def _dtype_of(self, name, param_dtype):
        if name == MASTER:
            return _F32
        return self._state_dtype if self._master else param_dtype

    def _arena_call(self, gi, plan):
        """(params, grads, buffers) as single flat arrays when the group's
        parameters, gradients and states each tile one array, else None."""
        arena = self._arena[gi]
        if arena is None:
            return None
        group_grads, flats = plan[2], plan[4]
        last = self._grad_arena.get(gi)
        if last is not None and len(last[0]) == len(group_grads) \
                and all(a is b for a, b in zip(last[0], group_grads)):
            grad_arena = last[1]  # the same arrays (kept alive here): the same tiling
        else:
            grad_arena = _tiling(group_grads)
            self._grad_arena[gi] = (tuple(group_grads), grad_arena)
        if grad_arena is None or grad_arena.size != arena.size:
            return None
        return [arena], [grad_arena], {k: [v] for k, v in flats.items()}

    def _buffers(self, gi, group, gstate):
        """The state lists this group needs now (new ones filled with
        ``self._initial_value(name, group)``), and for a group whose
        parameters tile one arena, the flat arrays those lists are views of."""
        out, flats = {}, {}
        arena = self._arena[gi]
        for name in self._names(group):
            bufs = gstate.get(name)
            flat = gstate.get("_flat", {}).get(name)
            if bufs is None and name == MASTER:  # the params, widened
                if arena is not None:
                    flat = arena.astype(_F32)
                    bufs = _views(flat, group["params"])
                else:
                    bufs = [p.astype(_F32) for p in group["params"]]
            elif bufs is None:
                fill = self._initial_value(name, group)
                if arena is not None:
                    flat = np.full(arena.size, fill, dtype=self._dtype_of(name, arena.dtype))
                    bufs = _views(flat, group["params"])
                else:
                    bufs = [B.full_like(p, fill) if B.is_gpu_array(p)
                            else np.full(p.shape, fill, dtype=self._dtype_of(name, p.dtype))
                            for p in group["params"]]
            out[name] = bufs
            if flat is not None:
                flats[name] = flat
        return out, flats

    # -------------------------------------------------------- subclass hooks
    def _check(self, hyper: dict) -> None:
        """Validate hyperparameters; raise ValueError/TypeError naming them."""
        raise NotImplementedError

    def _state_names(self, group: dict) -> tuple:
        """Names of the state buffers this group's variant uses (torch's keys)."""
        raise NotImplementedError

    def _initial_value(self, name: str, group: dict) -> float:
        return 0.0

    def _step_group(self, group, params, grads, buffers, step, dry_run=False) -> None:
        """One fused kernel call over the group (only the argument checks when
        dry_run)."""
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
                    for name in self._names(group):
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
        state = {k: {n: B.copy_array(v) for n, v in e.items()} for k, e in self.state.items()}
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
            names = self._names(merged)
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
                    arr = entry[name] if B.is_array(entry[name]) else np.asarray(entry[name])
                    if tuple(arr.shape) != tuple(p.shape):
                        raise ValueError(f"state_dict: state[{key!r}][{name!r}] has shape {tuple(arr.shape)}; "
                                         f"expected {tuple(p.shape)} (the parameter's shape)")
                    # in the parameter's library, dtype and device (a GPU state
                    # loads from NumPy and the other way round)
                    gstate.setdefault(name, [None] * n)[i] = (
                        B.copy_like(p, arr) if B.is_gpu_array(p)
                        else np.array(B.to_host(arr), dtype=self._dtype_of(name, p.dtype), order="C"))
            if steps:
                if len(steps) != 1 or any(a is None for k, v in gstate.items() if k != "step" for a in v):
                    raise ValueError(f"state_dict: parameters of param_groups[{gi}] must all have state "
                                     f"at the same step; received steps {sorted(steps)}")
                gstate["step"] = steps.pop()
            if self._arena[gi] is not None:  # keep the states flat, as views
                flats = {}
                for name in names:
                    if name in gstate:
                        flats[name] = flat = np.empty(
                            self._arena[gi].size, dtype=self._dtype_of(name, self._arena[gi].dtype))
                        views = _views(flat, group["params"])
                        for v, arr in zip(views, gstate[name]):
                            v[...] = arr
                        gstate[name] = views
                gstate["_flat"] = flats
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


def _tiling(arrays):
    """The 1-d array that `arrays` tile in order (views of consecutive
    pieces covering all of it), or None."""
    base = arrays[0].base if isinstance(arrays[0], np.ndarray) else None
    if not isinstance(base, np.ndarray) or base.ndim != 1 or not base.flags.c_contiguous \
            or not base.flags.writeable or base.dtype != arrays[0].dtype:
        return None
    address = base.__array_interface__["data"][0]
    for a in arrays:
        if not isinstance(a, np.ndarray) or a.base is not base or not a.flags.c_contiguous \
                or a.__array_interface__["data"][0] != address:
            return None
        address += a.nbytes
    return base if address == base.__array_interface__["data"][0] + base.nbytes else None


def _views(flat, params) -> list:
    out, offset = [], 0
    for p in params:
        out.append(flat[offset:offset + p.size].reshape(p.shape))
        offset += p.size
    return out


def _as_step(value, key) -> int:
    v = value.item() if hasattr(value, "item") else value
    if not isinstance(v, numbers.Real) or v != int(v) or v < 1:
        raise ValueError(f"state_dict: state[{key!r}]['step'] must be a positive whole number; received {value!r}")
    return int(v)
