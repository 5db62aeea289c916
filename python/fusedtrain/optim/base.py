"""Base class of the optimizer objects: parameter groups, state, step() and
torch-compatible state_dict / load_state_dict.

Layout, top-down: ``cli -> train -> nn / optim -> ops -> backend -> _core /
_cuda``. Every step goes through :func:`fusedtrain.ops.fused_step` (one call
per parameter group), as the torch adapter's do. A subclass names its
hyperparameters and defaults (its ``__init__``'s signature, from which
``defaults_`` is read) and its kernel (``_kernel``), and implements the
hooks that :mod:`fusedtrain.torch`'s base class has too, with the same
names and meanings: ``_hyper(group)`` (the validated hyperparameters),
``_state_names(h)`` and ``_initial_value(name, h)``.

Constructors. Each optimizer's ``__init__`` lists its hyperparameters
explicitly, with torch.optim's defaults and torch's positional order (``lr``
second, as in ``Adam(params, 1e-3)``), so that help(), IDEs and
``inspect.signature`` show them; the signature is the one place those
defaults are written: ``defaults_`` is read from it when the class is
defined (:meth:`Optimizer.__init_subclass__`). The mixed-precision keywords
that every optimizer shares (``master_weights``, ``state_dtype``,
``stochastic_rounding``, ``seed``) are written once, here: each subclass
takes them as ``**options`` (typed :class:`Options`, which type checkers and
IDEs expand into the keywords) and hands them to this base class, which
owns their defaults and their checks. Writing them out in every constructor
(as keras does) would repeat four keywords, their defaults and their
documentation five times; a generated signature would be invisible to
static tools.
"""

from __future__ import annotations

import copy
import inspect
import math
import numbers
import operator
import re
import threading
from typing import TYPE_CHECKING, TypedDict

import numpy as np

from .. import _validate as V
from .. import backend as B
from ..ops import fused_step

if TYPE_CHECKING:  # typing.Unpack: Python 3.11 (annotations are never evaluated here)
    from typing import Unpack  # noqa: F401

__all__ = ["Optimizer", "Options"]


class Options(TypedDict, total=False):
    """The keyword arguments every optimizer takes besides its
    hyperparameters (mixed precision; see :class:`Optimizer`)."""

    master_weights: bool
    state_dtype: str
    stochastic_rounding: bool
    seed: int

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
    learning rate from the next step on. ``lr`` may also be a schedule (a
    :mod:`fusedtrain.schedules` object, or a callable ``step -> lr``), as
    Keras's ``learning_rate=schedule``: each step of a group uses its value
    at the steps the group has taken (0 for the first), checked as any lr;
    :meth:`last_lr` tells the value of the last step. Checkpoints store
    numbers only: give a schedule to ``fit(schedule=...)`` to have it
    saved. Replacing, appending or removing
    arrays in ``opt.param_groups[i]["params"]`` (or replacing the list) is
    followed at the next step, as torch.optim does: arrays still in the group
    keep their state, a new array gets fresh state and counts its own steps
    from 1; it is checked as the constructor checks parameters, and a step
    that raises has changed nothing (the change is taken up by the next step
    that succeeds).

    Thread safety: ``step``, ``state_dict``, ``load_state_dict`` and
    ``add_param_group`` hold a per-optimizer lock, so steps from several
    threads run one after the other (the kernels release the GIL; without
    the lock two steps could read the same step count). The parameters and
    gradients themselves are not locked: do not write them from another
    thread during a step.

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

    #: hyperparameter names and torch's defaults: read from each subclass's
    #: ``__init__`` signature (a subclass without an ``__init__`` of its own
    #: may set it instead, and take its hyperparameters as keywords)
    defaults_: dict = {}
    #: the kernel of fusedtrain.ops.fused_step, set by each subclass
    _kernel: str = ""

    def __init_subclass__(cls, **kwargs):
        """``defaults_`` from the subclass's own ``__init__``: every parameter
        after ``params`` but ``**options``, with its default, then those of
        the parent class's ``defaults_`` that the signature does not list (a
        subclass that narrows its signature still passes them on)."""
        super().__init_subclass__(**kwargs)
        init = cls.__dict__.get("__init__")
        if init is None:
            return
        defaults = {}
        for name, p in list(inspect.signature(init).parameters.items())[2:]:
            if p.kind is inspect.Parameter.VAR_KEYWORD:
                continue
            if p.kind is inspect.Parameter.VAR_POSITIONAL or p.default is inspect.Parameter.empty:
                raise TypeError(f"{cls.__name__}.__init__: hyperparameter {name!r} needs a default "
                                "(the signature gives defaults_)")
            defaults[name] = p.default
        inherited = getattr(super(cls, cls), "defaults_", {})
        cls.defaults_ = {**defaults, **{k: v for k, v in inherited.items() if k not in defaults}}

    def __init__(self, params, *, master_weights=False, state_dtype="float32",
                 stochastic_rounding=False, seed=0, **hyperparameters):
        self._lock = threading.Lock()
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
                f"{type(self).__name__}() got unexpected keyword arguments {sorted(unknown)}; "
                f"expected some of {sorted(self.defaults_)} (hyperparameters) or "
                f"{sorted(Options.__annotations__)} (options)"
            )
        self.defaults = {**self.defaults_, **hyperparameters}
        self._h(self.defaults)
        if B.is_array(params):
            raise TypeError("params: expected a list of arrays or of parameter-group dicts, "
                            "received a single array (wrap it in a list)")
        groups = list(params)
        if not groups:
            raise ValueError("params: expected a non-empty list of arrays, received an empty list")
        if not isinstance(groups[0], dict):
            groups = [{"params": groups}]
        self.param_groups: list[dict] = []
        # per group: "step" (or "steps", one per parameter, once they differ),
        # one list per state buffer, and "_flat" (the arrays an arena's state
        # lists are views of)
        self._group_state: list[dict] = []
        self._arena: list = []  # per group: the flat array its params tile, or None
        self._known: list = []  # per group: the params the state above belongs to
        # per group: the last gradient list seen and the array it tiles (a
        # training loop passes the same gradient buffers every step)
        self._grad_arena: dict = {}
        self._hyper_keys = tuple(self.defaults_)
        self._hyper_cache: dict = {}  # per group: (the values checked, the checked dict)
        for g in groups:
            self._add_param_group(g)

    # ------------------------------------------------------------------ groups
    def add_param_group(self, group: dict) -> None:
        with self._lock:
            self._add_param_group(group)

    def _add_param_group(self, group: dict) -> None:
        if not isinstance(group, dict) or "params" not in group:
            raise TypeError(f"param group: expected a dict with a 'params' list, received {group!r:.80}")
        params = self._checked_params(len(self.param_groups), group["params"])
        unknown = set(group) - set(self.defaults_) - {"params"}
        if unknown:
            raise TypeError(f"param group: unexpected keys {sorted(unknown)}; expected some of {sorted(self.defaults_)}")
        full = {**self.defaults, **{k: v for k, v in group.items() if k != "params"}}
        self._h(full)
        full["params"] = params
        self.param_groups.append(full)
        self._group_state.append({"step": 0})
        self._arena.append(_tiling(params))
        self._known.append(tuple(params))

    def _checked_params(self, gi: int, params) -> list:
        """Group gi's parameter list, checked: arrays of one kind that the
        kernels update in place, none appearing twice in the optimizer."""
        params = [params] if B.is_array(params) else list(params)
        if not params:
            raise ValueError(f"param_groups[{gi}]['params']: expected a non-empty list of arrays, "
                             "received an empty list")
        seen = {id(p) for i, g in enumerate(self.param_groups) if i != gi for p in g["params"]}
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
        return params

    @property
    def params(self) -> list:
        """All parameters, in the order step() expects their gradients."""
        return [p for g in self.param_groups for p in g["params"]]

    # -------------------------------------------------------------------- step
    def step(self, grads, grad_scale=1.0, found_inf=None) -> None:
        """Update every parameter in place from ``grads`` (one array per
        parameter, in the order of ``params`` flattened across groups).

        ``grad_scale``: the gradients are of a loss scaled by it; the kernels
        multiply them by ``1 / grad_scale``, rounded to the compute type
        (float32, or float64 for float64 params): a scale whose reciprocal is
        not finite and nonzero there raises ValueError. ``found_inf``: a bool,
        a number or a 1-element float32 array (NumPy, or GPU: then read back
        once, as torch's GradScaler does); when nonzero the step is skipped
        after the argument checks (params, states, master weights and the
        step count unchanged). Everything is checked before anything is
        written: a step that raises has changed nothing."""
        with self._lock:
            extra = {}
            scale = V.grad_scale(grad_scale)
            if scale != 1.0:
                extra["grad_scale"] = scale
            if found_inf is None:
                skip = False
            else:
                skip = V.found_inf(B.to_host(found_inf) if B.is_gpu_array(found_inf) else found_inf)
            if B.is_array(grads):
                grads = [grads]
            groups = self.param_groups
            records = []  # per group: (params, arena, gstate, known), or None: as it is
            changed = False
            for gi, group in enumerate(groups):
                ps, known = group["params"], self._known[gi]
                if type(ps) is list and len(ps) == len(known) and all(map(operator.is_, ps, known)):
                    records.append(None)
                else:
                    records.append(self._follow(gi, ps))
                    changed = True
            if not changed:
                n = len(groups[0]["params"]) if len(groups) == 1 else \
                    sum(len(g["params"]) for g in groups)
            else:
                n = sum(len(r[0]) if r else len(g["params"]) for g, r in zip(groups, records))
            if not isinstance(grads, (list, tuple)):
                raise TypeError(f"grads: expected a list of arrays, received {type(grads).__name__}")
            if len(grads) != n:
                raise ValueError(f"grads: expected {n} arrays (one per parameter), received {len(grads)}")
            hypers = [self._checked_hyper(gi, group) for gi, group in enumerate(groups)]
            if scale != 1.0:  # its reciprocal in each group's compute type
                for group in groups:
                    V.grad_scale(scale, B.computes_in_double(group["params"][0]))
            plans = []
            start = 0
            for gi, (h, record) in enumerate(zip(hypers, records)):
                if record is None:
                    params, arena, gstate = groups[gi]["params"], self._arena[gi], self._group_state[gi]
                else:
                    params, arena, gstate = record[0], record[1], record[2]
                stop = start + len(params)
                buffers, flats = self._buffers(h, params, arena, gstate)
                plans.append((h, params, grads[start:stop], buffers, flats, gstate, arena))
                start = stop
            calls = [self._calls(gi, plan, records[gi] is None) for gi, plan in enumerate(plans)]
            if skip or len(calls) > 1 or len(calls[0]) > 1 or calls[0][0][4]:
                # every array of every group is checked before anything is
                # written (one kernel call validates only its own lists)
                for gi, (h, params, group_grads, buffers, _, gstate, _) in enumerate(plans):
                    try:
                        self._fused(h, params, group_grads, buffers, _next_step(gstate, 0),
                                    extra, dry_run=True)
                    except (TypeError, ValueError) as exc:
                        if len(plans) == 1:
                            raise
                        # the kernel numbers the group's arrays from 0: renumber
                        offset = sum(len(p[1]) for p in plans[:gi])
                        msg = _ITEM.sub(lambda m: f"{m.group(1)}[{int(m.group(2)) + offset}]", str(exc))
                        raise type(exc)(f"param_groups[{gi}]: {msg}") from None
            if skip:
                return  # checked; nothing is written, the step count stays
            for (h, _, _, buffers, flats, gstate, _), group_calls in zip(plans, calls):
                for params, group_grads, bufs, step, _ in group_calls:
                    self._fused(h, params, group_grads, bufs, step, extra)
                # committed only after the kernel succeeded
                gstate.update(buffers)
                gstate["_flat"] = flats
                steps = gstate.get("steps")
                if steps is None:
                    gstate["step"] += 1
                else:
                    gstate["steps"] = steps = [s + 1 for s in steps]
                    if all(s == steps[0] for s in steps):  # together again
                        gstate["step"] = steps[0]
                        del gstate["steps"]
            if changed:
                for gi, record in enumerate(records):
                    if record is not None:
                        groups[gi]["params"] = record[0]
                        self._arena[gi], self._group_state[gi], self._known[gi] = record[1:]
                        self._grad_arena.pop(gi, None)

    def _checked_hyper(self, gi, group) -> dict:
        """self._hyper(group), validated again only when a value was edited
        (kept while every value is the same immutable object as last time)."""
        lr = group["lr"]
        if not isinstance(lr, numbers.Real):  # a schedule: evaluated at this group's step
            return self._h(group, _taken(self._group_state[gi]))
        keys = self._hyper_keys
        values = tuple(map(group.__getitem__, keys))
        cached = self._hyper_cache.get(gi)
        if cached is not None and all(map(operator.is_, values, cached[0])):
            return cached[1]
        h = self._hyper(group)
        if all(type(v) in _IMMUTABLE or (type(v) is tuple and all(type(x) in _IMMUTABLE for x in v))
               for v in values):
            self._hyper_cache[gi] = (values, h)
        else:
            self._hyper_cache.pop(gi, None)
        return h

    def _h(self, group, t=0) -> dict:
        """``self._hyper(group)`` with a schedule lr evaluated at step ``t``
        (the steps the group has taken: 0 for its first)."""
        lr = group["lr"]
        if isinstance(lr, numbers.Real):
            return self._hyper(group)
        return self._hyper({**group, "lr": _lr_at(lr, t)})

    def last_lr(self, group: int = 0) -> float:
        """The learning rate of param group ``group``'s last step (of its
        next one before any): its ``lr``, or its schedule evaluated there."""
        lr = self.param_groups[group]["lr"]
        if isinstance(lr, numbers.Real):
            return float(lr)
        return float(_lr_at(lr, max(_taken(self._group_state[group]) - 1, 0)))

    def _fused(self, h, params, grads, buffers, step, extra, dry_run=False):
        """One fusedtrain.ops.fused_step call: the master weights and the
        rounding options join the keyword arguments."""
        if self._master:
            buffers = dict(buffers)
            extra = dict(extra, master_params=buffers.pop(MASTER))
            if self._stochastic:
                extra.update(stochastic_rounding=True, seed=self._seed, rng_offset=step)
        fused_step(self._kernel, params, grads, buffers, step, h, extra, dry_run=dry_run)

    def _calls(self, gi, plan, cached: bool) -> list:
        """The kernel calls of one group: (params, grads, buffers, step,
        arena) -- one call, over the flat arrays when the group's parameters,
        gradients and states each tile one array; one per step count when its
        parameters have different ones (replaced parameters count from 1)."""
        h, params, group_grads, buffers, flats, gstate, arena = plan
        steps = gstate.get("steps")
        if steps is None:
            step = gstate["step"] + 1
            if arena is not None and len(flats) == len(buffers):  # every state flat too
                arena = self._arena_call(gi, plan, cached)
                if arena is not None:
                    return [(*arena, step, True)]
            return [(params, group_grads, buffers, step, False)]
        out = []
        for s in sorted(set(steps)):
            idx = [i for i, t in enumerate(steps) if t == s]
            out.append(([params[i] for i in idx], [group_grads[i] for i in idx],
                        {k: [v[i] for i in idx] for k, v in buffers.items()}, s + 1, False))
        return out

    def _names(self, h) -> tuple:
        """The group's state names, the master weights last."""
        names = self._state_names(h)
        return names + (MASTER,) if self._master else names

    def _dtype_of(self, name, param_dtype):
        if name == MASTER:
            return _F32
        return self._state_dtype if self._master else param_dtype

    def _arena_call(self, gi, plan, cached: bool):
        """(params, grads, buffers) as single flat arrays when the group's
        parameters, gradients and states each tile one array, else None."""
        group_grads, flats, arena = plan[2], plan[4], plan[6]
        last = self._grad_arena.get(gi) if cached else None
        if last is not None and len(last[0]) == len(group_grads) \
                and all(map(operator.is_, last[0], group_grads)):
            grad_arena = last[1]  # the same arrays (kept alive here): the same tiling
        else:
            grad_arena = _tiling(group_grads)
            if cached:
                self._grad_arena[gi] = (tuple(group_grads), grad_arena)
        if grad_arena is None or grad_arena.size != arena.size:
            return None
        return [arena], [grad_arena], {k: [v] for k, v in flats.items()}

    def _fresh(self, name, h, p):
        """A new state buffer for parameter p."""
        if name == MASTER:
            return p.astype(_F32)  # the param, widened
        fill = self._initial_value(name, h)
        if B.is_gpu_array(p):
            return B.full_like(p, fill)
        return np.full(p.shape, fill, dtype=self._dtype_of(name, p.dtype))

    def _buffers(self, h, params, arena, gstate):
        """The state lists this group needs now (new ones filled with
        ``self._initial_value(name, h)``), and for a group whose parameters
        tile one arena, the flat arrays those lists are views of."""
        out, flats = {}, {}
        old_flats = gstate.get("_flat", {})
        for name in self._names(h):
            bufs = gstate.get(name)
            flat = old_flats.get(name)
            if bufs is None and arena is not None:
                if name == MASTER:
                    flat = arena.astype(_F32)
                else:
                    flat = np.full(arena.size, self._initial_value(name, h),
                                   dtype=self._dtype_of(name, arena.dtype))
                bufs = _views(flat, params)
            elif bufs is None:
                bufs = [self._fresh(name, h, p) for p in params]
            out[name] = bufs
            if flat is not None:
                flats[name] = flat
        return out, flats

    def _follow(self, gi, params):
        """The record of group gi after its parameter list was edited: the
        checked list, its arena, its state (arrays still in the group keep
        theirs; new ones get fresh state, at step 0) and the list itself.
        Nothing is assigned here: the step commits it."""
        checked = self._checked_params(gi, params)
        params = params if type(params) is list else checked  # the caller's list, kept
        old, gstate = self._known[gi], self._group_state[gi]
        arena = _tiling(params)
        names = [k for k in gstate if k not in ("step", "steps", "_flat")]
        steps_old = gstate.get("steps") or [gstate["step"]] * len(old)
        where = {id(p): j for j, p in enumerate(old)}
        h = self._h(self.param_groups[gi], _taken(self._group_state[gi]))
        new = {"step": 0}
        if names or any(steps_old):
            steps = []
            for name in names:
                new[name] = []
            for p in params:
                j = where.get(id(p))
                steps.append(steps_old[j] if j is not None else 0)
                for name in names:
                    new[name].append(gstate[name][j] if j is not None else self._fresh(name, h, p))
            if all(s == steps[0] for s in steps):
                new["step"] = steps[0]
            else:
                new["steps"] = steps
            if arena is not None and names:  # keep the states flat, as views
                new["_flat"] = _flatten(new, names, params, arena, self._dtype_of)
        return params, arena, new, tuple(params)

    # -------------------------------------------------------- subclass hooks
    # (fusedtrain.torch's base class has the same hooks, with the same meanings)
    def _hyper(self, group: dict) -> dict:
        """The group's hyperparameters, validated, as plain Python numbers
        under the names fusedtrain.ops.fused_step reads; raises
        ValueError/TypeError naming the bad one."""
        raise NotImplementedError

    def _state_names(self, h: dict) -> tuple:
        """Names of the state buffers this variant uses (torch's keys)."""
        raise NotImplementedError

    def _initial_value(self, name: str, h: dict) -> float:
        return 0.0

    # --------------------------------------------------------------- state
    @property
    def state(self) -> dict:
        """Per-parameter state keyed by the parameter's index, as torch's
        state_dict()["state"] (views of the live buffers)."""
        out = {}
        index = 0
        for group, gstate in zip(self.param_groups, self._group_state):
            n = len(group["params"])
            steps = gstate.get("steps") or [gstate["step"]] * n
            names = self._names(group)  # the raw group has the keys _state_names reads
            for i in range(n):
                if steps[i] > 0:
                    entry = {"step": float(steps[i])}
                    for name in names:
                        if name in gstate:
                            entry[name] = gstate[name][i]
                    out[index] = entry
                index += 1
        return out

    def state_dict(self) -> dict:
        """A snapshot (copies) of the state, in torch.optim's layout:
        ``{"state": {index: {"step": t, buffer: array}}, "param_groups":
        [{hyperparameters..., "params": [indices]}]}``."""
        with self._lock:
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

        Everything is checked first, and any problem raises ValueError naming
        the entry, having changed nothing: the layout (``state`` and
        ``param_groups``), each group's hyperparameters (as the constructor
        checks them), its ``params`` (ints, each index once, as many as the
        group has), the state keys (parameter indices: ints, or strings of
        digits as a JSON round trip leaves them), each ``step`` (a whole
        number in [1, 2^63), not a bool) and each buffer (a floating-point
        array of the parameter's shape). Parameters without an entry get
        fresh state."""
        with self._lock:
            self._load_state_dict(state_dict)

    def _load_state_dict(self, state_dict) -> None:
        if not isinstance(state_dict, dict) or set(state_dict) != {"state", "param_groups"}:
            raise ValueError("state_dict: expected a dict with keys 'state' and 'param_groups', "
                             f"received {type(state_dict).__name__} with keys {sorted(map(str, state_dict)) if isinstance(state_dict, dict) else None}")
        saved_groups, saved_state = state_dict["param_groups"], state_dict["state"]
        if not isinstance(saved_groups, (list, tuple)):
            raise ValueError(f"state_dict['param_groups']: expected a list, received "
                             f"{type(saved_groups).__name__}")
        if not isinstance(saved_state, dict):
            raise ValueError(f"state_dict['state']: expected a dict, received {type(saved_state).__name__}")
        if len(saved_groups) != len(self.param_groups):
            raise ValueError(f"state_dict: expected {len(self.param_groups)} param groups, received {len(saved_groups)}")
        total = sum(len(g["params"]) for g in self.param_groups)
        state = {}
        for key, entry in saved_state.items():
            k = _index(key, total)
            if k in state:
                raise ValueError(f"state_dict: state has parameter {k} twice (keys {k!r} and {str(k)!r})")
            if not isinstance(entry, dict):
                raise ValueError(f"state_dict: state[{key!r}]: expected a dict, received {type(entry).__name__}")
            state[k] = (key, entry)
        used = set()
        new_groups, new_states = [], []
        for gi, (group, saved) in enumerate(zip(self.param_groups, saved_groups)):
            if not isinstance(saved, dict):
                raise ValueError(f"state_dict: param_groups[{gi}]: expected a dict, received "
                                 f"{type(saved).__name__}")
            n = len(group["params"])
            indices = saved.get("params")
            if not isinstance(indices, (list, tuple)) or len(indices) != n:
                got = len(indices) if isinstance(indices, (list, tuple)) else repr(indices)
                raise ValueError(f"state_dict: param_groups[{gi}] has {got} parameters; expected {n}")
            for j, k in enumerate(indices):
                if isinstance(k, bool) or not isinstance(k, numbers.Integral) or not 0 <= k < total:
                    raise ValueError(f"state_dict: param_groups[{gi}]['params'][{j}] must be a "
                                     f"parameter index, an int in [0, {total}); received {k!r}")
                if int(k) in used:
                    raise ValueError(f"state_dict: param_groups[{gi}]['params'][{j}]: index {k} "
                                     "appears more than once")
                used.add(int(k))
            hyper = {k: v for k, v in saved.items() if k != "params"}
            missing = set(self.defaults_) - set(hyper)
            extra = set(hyper) - set(self.defaults_)
            if missing or extra:
                raise ValueError(f"state_dict: param_groups[{gi}] is not from {type(self).__name__}: "
                                 f"missing {sorted(missing)}, unexpected {sorted(map(str, extra))}")
            merged = {**group, **copy.deepcopy(hyper)}
            try:
                h = self._h(merged, 0 if isinstance(merged["lr"], numbers.Real)
                            else _saved_step(state, indices))
            except (TypeError, ValueError) as exc:
                raise ValueError(f"state_dict: param_groups[{gi}]: {exc}") from None
            names = self._names(h)
            gstate = {"step": 0}
            steps = [0] * n
            for i, k in enumerate(indices):
                key, entry = state.get(int(k), (None, None))
                if entry is None:
                    continue
                keys = set(entry) - {"step"}
                if "step" not in entry or not keys <= set(names) or not (set(names) - keys <= self._lazy(h)):
                    raise ValueError(f"state_dict: state[{key!r}] has keys {sorted(map(str, entry))}; "
                                     f"{type(self).__name__} expects 'step' and {list(names)}")
                steps[i] = _as_step(entry["step"], key)
                p = group["params"][i]
                for name in keys:
                    gstate.setdefault(name, [None] * n)[i] = self._loaded(entry[name], p, name, key)
            for name in list(gstate):  # parameters without an entry: fresh state
                if name != "step":
                    gstate[name] = [a if a is not None else self._fresh(name, h, p)
                                    for a, p in zip(gstate[name], group["params"])]
            if all(s == steps[0] for s in steps):
                gstate["step"] = steps[0]
            else:
                gstate["steps"] = steps
            arena = self._arena[gi]
            if arena is not None:  # keep the states flat, as views
                gstate["_flat"] = _flatten(gstate, [m for m in names if m in gstate],
                                           group["params"], arena, self._dtype_of)
            new_groups.append(merged)
            new_states.append(gstate)
        unused = sorted(set(state) - used)
        if unused:
            raise ValueError(f"state_dict: state has entries for parameters {unused}, which no "
                             "param group lists")
        self.param_groups[:] = new_groups
        self._group_state[:] = new_states
        self._known[:] = [tuple(g["params"]) for g in new_groups]
        self._grad_arena.clear()
        self._hyper_cache.clear()

    def _loaded(self, value, p, name, key):
        """A saved buffer, checked, as a new array in p's library, dtype and
        device (a GPU state loads from NumPy and the other way round)."""
        where = f"state_dict: state[{key!r}][{name!r}]"
        if B.is_array(value):
            arr = value
        else:
            try:
                arr = np.asarray(value)
            except (TypeError, ValueError) as exc:
                raise ValueError(f"{where}: expected a floating-point array; received "
                                 f"{type(value).__name__} ({exc})") from None
        dtype = _dtype_name(arr)
        if dtype not in _FLOAT_NAMES:
            raise ValueError(f"{where}: expected a floating-point array (float16, bfloat16, "
                             f"float32 or float64); received dtype {dtype}")
        if tuple(arr.shape) != tuple(p.shape):
            raise ValueError(f"{where} has shape {tuple(arr.shape)}; "
                             f"expected {tuple(p.shape)} (the parameter's shape)")
        if B.is_gpu_array(p):
            return B.copy_like(p, arr)
        return np.array(B.to_host(arr), dtype=self._dtype_of(name, p.dtype), order="C")

    def _lazy(self, h) -> set:
        """State names that may be absent from a saved state (created on use)."""
        return set()

    # --------------------------------------------------------- copy, pickle
    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        del state["_lock"]  # a lock cannot be copied or pickled
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()
        # a copy of an arena view is no longer a view: tile again, or step
        # the arrays one by one
        self._known = [tuple(g["params"]) for g in self.param_groups]
        self._grad_arena = {}
        self._hyper_cache = {}
        for gi, group in enumerate(self.param_groups):
            arena = _tiling(group["params"])
            gstate = self._group_state[gi]
            if arena is not self._arena[gi]:
                self._arena[gi] = arena
                names = [k for k in gstate if k not in ("step", "steps", "_flat")]
                gstate["_flat"] = (_flatten(gstate, names, group["params"], arena, self._dtype_of)
                                   if arena is not None and names else {})

    def __repr__(self) -> str:
        lines = [f"{type(self).__name__} ("]
        for i, g in enumerate(self.param_groups):
            hp = ", ".join(f"{k}={g[k]!r}" for k in self.defaults_)
            lines.append(f"  group {i}: {len(g['params'])} params, {hp}")
        return "\n".join(lines + [")"])


_FLOAT_NAMES = ("float16", "bfloat16", "float32", "float64")
_IMMUTABLE = (float, int, bool, str, np.float64, np.float32, np.int64, np.bool_, type(None))


def _dtype_name(arr) -> str:
    if isinstance(arr, np.ndarray):
        return arr.dtype.name
    if B.is_gpu_array(arr):
        dt = getattr(arr, "dtype", None)
        name = str(dt).replace("torch.", "") if dt is not None else ""
        return name
    return str(getattr(arr, "dtype", type(arr).__name__))


def _index(key, total: int) -> int:
    """A state key: a parameter index (an int, or a string of digits as JSON
    leaves it) in [0, total)."""
    k = key
    if isinstance(key, str) and key.isascii() and key.isdigit():
        k = int(key)
    if isinstance(k, bool) or not isinstance(k, numbers.Integral) or not 0 <= k < total:
        raise ValueError(f"state_dict: state key {key!r} must be a parameter index, an int in "
                         f"[0, {total})")
    return int(k)


def _lr_at(lr, t):
    """A schedule's learning rate at step ``t``: ``lr.lr(t)`` for a schedule
    object, ``lr(t)`` for a callable ``step -> lr`` (as Keras evaluates a
    LearningRateSchedule at ``optimizer.iterations``). Anything else is
    returned as it is, for the hyperparameter checks to name."""
    fn = getattr(lr, "lr", None)
    if not callable(fn):
        fn = lr if callable(lr) and not isinstance(lr, type) else None
    return lr if fn is None else fn(t)


def _taken(gstate) -> int:
    """Steps a group has taken (its most advanced parameter's)."""
    steps = gstate.get("steps")
    return max(steps) if steps else gstate["step"]


def _saved_step(state, indices) -> int:
    """The step a state_dict's group has taken (0 without state)."""
    taken = 0
    for k in indices:
        entry = state.get(int(k), (None, None))[1]
        step = entry.get("step") if isinstance(entry, dict) else None
        if isinstance(step, numbers.Real) and math.isfinite(step):  # checked later, whole
            taken = max(taken, int(step))
    return taken


def _next_step(gstate, i) -> int:
    steps = gstate.get("steps")
    return (steps[i] if steps is not None else gstate["step"]) + 1


def _flatten(gstate, names, params, arena, dtype_of) -> dict:
    """Copy the state lists ``names`` of gstate into one flat array each,
    replacing them by views of it (the arena call steps the flat arrays)."""
    flats = {}
    for name in names:
        flats[name] = flat = np.empty(arena.size, dtype=dtype_of(name, arena.dtype))
        views = _views(flat, params)
        for v, arr in zip(views, gstate[name]):
            v[...] = arr
        gstate[name] = views
    return flats


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
    """A saved step count: a whole number in [1, 2^63) (a float, as torch
    saves it, or a 0-d array / tensor of one), not a bool."""
    v = value
    if not isinstance(v, (bool, np.bool_)) and hasattr(v, "item") and getattr(v, "size", 1) == 1:
        v = v.item()
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, numbers.Real) \
            or not math.isfinite(v) or v != int(v) or not 1 <= int(v) < 2**63:
        raise ValueError(f"state_dict: state[{key!r}]['step'] must be a whole number in [1, 2**63) "
                         f"(the count of steps taken); received {type(value).__name__} {value!r}")
    return int(v)
