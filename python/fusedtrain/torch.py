"""torch.optim drop-ins that step torch tensors with fusedtrain's fused kernels.

    import fusedtrain.torch as ft
    opt = ft.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    loss.backward(); opt.step(); opt.zero_grad()

``SGD``, ``Adam``, ``AdamW``, ``RMSprop`` and ``Adagrad`` subclass
``torch.optim.Optimizer`` and take torch.optim's constructor arguments with
torch's defaults; parameter groups, ``zero_grad``, hooks, ``add_param_group``,
``state_dict`` and ``load_state_dict`` are torch's own. The state uses
torch's keys and tensor types (``step`` a float32 0-d CPU tensor,
``exp_avg`` and the other buffers tensors like the parameter), so a
state_dict saved by ``torch.optim.Adam`` loads into ``fusedtrain.torch.Adam``
and the reverse. The update rules are fusedtrain.ops' (torch.optim's, in
torch's order of operations): results agree with torch.optim to float32
rounding.

How a step runs: the parameters of each group that have a gradient are
gathered, per device, dtype and step count (one bucket in the usual case),
into one call of :func:`fusedtrain.ops.fused_step` (the route of
``fusedtrain.ops.<opt>_`` and of the :mod:`fusedtrain.optim` objects) over
the whole list. CPU
tensors are passed as NumPy views (``tensor.numpy()``: zero copies, the
parameter's memory is updated in place); CUDA tensors are passed as they
are, through ``__cuda_array_interface__``, on torch's current stream (no
CuPy needed). Parameters whose ``grad`` is None are skipped, as torch does.

What is refused, with an error naming the parameter (never a hidden copy):
sparse gradients (RuntimeError), dtypes other than float32 / float64
(TypeError), non-contiguous parameters, gradients or states (ValueError),
a gradient on another device or with another shape or dtype than its
parameter. Everything is checked before the first kernel runs, so a step
that raises has changed no parameter and no state.

``foreach``, ``fused`` and ``capturable`` are accepted and kept in the
param groups (the step is always one fused call); ``differentiable=True``
raises ValueError (the kernels run outside autograd). The in-place update
does not bump the parameters' autograd version counters: step between
backward and the next forward, as usual.

Layout: ``fusedtrain.torch -> ops -> backend -> _core / _cuda`` (beside
:mod:`fusedtrain.optim`, whose hooks ``_hyper``, ``_state_names`` and
``_initial_value`` the base class here shares). torch is an optional
dependency: importing this module imports torch.
"""

from __future__ import annotations

import numpy as np

try:
    import torch as _torch  # the real torch (absolute import), not this module
except ImportError as exc:  # torch is an optional extra
    raise ImportError('fusedtrain.torch needs PyTorch: pip install "fusedtrain[torch]" '
                      f"(import torch failed: {exc})") from exc

from . import _validate as V
from . import ops as _ops
from . import optim as _optim

__all__ = ["SGD", "Adam", "AdamW", "RMSprop", "Adagrad", "clip_grad_norm_", "clip_grad_value_"]

_FLOATS = (_torch.float32, _torch.float64)


def _scalar(x):
    """A hyperparameter that may be a 0-d tensor (torch allows Tensor lr)."""
    return x.item() if isinstance(x, _torch.Tensor) else x


def _check_tensor(t, where: str) -> None:
    """t must be a dense, contiguous float32 / float64 tensor."""
    if t.layout != _torch.strided:
        raise RuntimeError(f"{where}: expected a dense tensor, received a {t.layout} tensor "
                           "(sparse gradients are not supported; use torch.optim.SparseAdam)")
    if t.dtype not in _FLOATS:
        raise TypeError(f"{where}: expected dtype torch.float32 or torch.float64, received {t.dtype}")
    if not t.is_contiguous():
        raise ValueError(f"{where}: expected a contiguous tensor (updated in place, never "
                         f"copied), received strides {tuple(t.stride())} for shape {tuple(t.shape)}")


def _array(t):
    """The zero-copy array the kernels take: a NumPy view of a CPU tensor,
    the (detached) tensor itself on a GPU."""
    t = t.detach()
    if t.device.type == "cpu":
        return t.numpy()
    if t.device.type == "cuda":
        return t
    raise TypeError(f"expected a CPU or CUDA tensor, received a tensor on {t.device}")


def _grad_array(p, g, where: str):
    _check_tensor(g, where + ".grad")
    if g.dtype != p.dtype:
        raise TypeError(f"{where}.grad: expected dtype {p.dtype} (the parameter's), received {g.dtype}")
    if g.device != p.device:
        raise ValueError(f"{where}.grad: expected a tensor on {p.device} (the parameter's), "
                         f"received one on {g.device}")
    if g.shape != p.shape:
        raise ValueError(f"{where}.grad: expected shape {tuple(p.shape)} (the parameter's), "
                         f"received {tuple(g.shape)}")
    return _array(g)


class _Entry:
    """What one parameter's update needs, checked once and cached until the
    parameter's storage, its state dict or a tensor in it changes: the
    parameter's array, its state buffers' arrays, the step this update is,
    and the bucket key."""

    __slots__ = ("param", "seen", "state", "new", "ptr", "array", "names", "buffers", "next",
                 "step_array", "key", "watch")

    def valid(self, seen, names, ptr) -> bool:
        if self.seen is not seen or self.names != names or self.ptr != ptr:
            return False
        for k, t in self.watch:  # a state tensor replaced in place (moved, reloaded by hand)
            if seen.get(k) is not t:
                return False
        return True


class _FusedOptimizer(_torch.optim.Optimizer):
    """Shared machinery: the subclasses name their kernel and their state
    buffers; each bucket is one :func:`fusedtrain.ops.fused_step` call. The
    hooks are those of :class:`fusedtrain.optim.Optimizer`, with the same
    names and meanings: ``_hyper``, ``_state_names``, ``_initial_value``."""

    #: the kernel of fusedtrain.ops.fused_step, set by each subclass
    _kernel = ""
    #: the state has a ``step`` counter (all but SGD)
    _counts_steps = True

    def __init__(self, params, defaults: dict):
        if defaults.get("differentiable"):
            raise ValueError(f"differentiable=True is not supported by fusedtrain.torch."
                             f"{type(self).__name__}: the fused kernels run outside autograd")
        self._hyper(defaults)  # raises ValueError / TypeError naming the bad one
        self._entries: dict = {}
        self._last: dict = {}  # group index -> the lists of its last single-bucket call
        super().__init__(params, defaults)

    # ------------------------------------------------------ subclass hooks
    def _hyper(self, group: dict) -> dict:
        """The group's hyperparameters, validated, as plain Python numbers
        under the names fusedtrain.ops.fused_step reads; raises
        ValueError/TypeError naming the bad one."""
        raise NotImplementedError

    def _state_names(self, h: dict) -> tuple:
        """torch's keys of the state buffers this variant uses."""
        raise NotImplementedError

    def _initial_value(self, name: str, h: dict) -> float:
        return 0.0

    # ------------------------------------------------------------- helpers
    def _new_state(self, p, h: dict) -> dict:
        state = {}
        if self._counts_steps:  # torch's scalar dtype: float32 unless the default is float64
            dtype = _torch.float64 if _torch.get_default_dtype() == _torch.float64 else _torch.float32
            state["step"] = _torch.tensor(0.0, dtype=dtype)
        for name in self._state_names(h):
            state[name] = _torch.full_like(p, self._initial_value(name, h),
                                           memory_format=_torch.contiguous_format)
        return state

    def _next_step(self, state) -> int:
        """The step count this update is (1 on the first), from the state
        before the update."""
        s = state.get("step") if state else None
        if s is None:
            return 1
        return int(s.item() if isinstance(s, _torch.Tensor) else s) + 1

    def _entry(self, p, seen, h: dict, names: tuple, where: str) -> _Entry:
        """Checks p and its state (creating what is missing, uncommitted)."""
        _check_tensor(p, where)
        e = _Entry()
        e.param, e.seen, e.names, e.ptr, e.array = p, seen, names, p.data_ptr(), _array(p)
        e.next = self._next_step(seen)  # from the state as it is before this step
        state, e.new = seen, not seen
        if e.new:
            state = self._new_state(p, h)
        else:
            missing = [n for n in names if state.get(n) is None]
            if missing:  # a variant switched on later (amsgrad, momentum, centered)
                state = {**state, **{n: v for n, v in self._new_state(p, h).items() if n in missing}}
                e.new = True
        for n in names:
            _check_tensor(state[n], f"{where} state[{n!r}]")
        e.state = state
        e.buffers = tuple(_array(state[n]) for n in names)
        st = state.get("step")
        e.step_array = None
        if isinstance(st, _torch.Tensor) and st.device.type == "cpu" and st.dim() == 0:
            e.step_array = st.numpy()  # written in place after each update
        e.key = (p.device, p.dtype)
        e.watch = tuple(state.items()) if not e.new else ()
        return e

    def _after(self, step: int) -> int:
        """The step count of the update after ``step``."""
        return step + 1 if self._counts_steps else 2  # SGD: 2 once the buffer exists

    def _commit(self, e: _Entry) -> None:
        """After the kernel ran: keep a new state, advance the step."""
        p = e.param
        if e.new:
            if e.state:  # SGD without momentum keeps no state, as torch
                self.state[p] = e.state
                e.seen = e.state
                e.watch = tuple(e.state.items())
            e.new = False
        if self._counts_steps:
            if e.step_array is not None:
                e.step_array[()] = e.next
            else:
                e.state["step"].fill_(e.next)
        e.next = self._after(e.next)

    def _buckets(self, gi: int, seq: list, grads: list, names: tuple) -> list:
        """The fused calls of group gi: (step, params, grads, buffer lists,
        entries), one per device, dtype and step count. When the group was
        one bucket last step, with the same entries (compared by identity),
        now one step further, its lists are reused: only the gradients are new."""
        last = self._last.get(gi)
        if last is not None and seq and seq[0].next == last[1] and last[0] == seq:
            step = seq[0].next
            self._last[gi] = (seq, self._after(step), last[2], last[3])
            return [(step, last[2], grads, last[3], seq)]
        buckets: dict = {}
        for e, ga in zip(seq, grads):
            b = buckets.get((e.key, e.next))
            if b is None:
                b = buckets[(e.key, e.next)] = (e.next, [], [], [[] for _ in names], [])
            b[1].append(e.array)
            b[2].append(ga)
            for lst, a in zip(b[3], e.buffers):
                lst.append(a)
            b[4].append(e)
        out = list(buckets.values())
        # one bucket: its entries advance together, to this step count
        self._last[gi] = (seq, self._after(out[0][0]), out[0][1], out[0][3]) \
            if len(out) == 1 else None
        return out

    def load_state_dict(self, state_dict) -> None:
        self._last.clear()
        self._entries.clear()
        super().load_state_dict(state_dict)

    def __setstate__(self, state: dict) -> None:  # copy.deepcopy, pickle
        super().__setstate__(state)
        self._entries, self._last = {}, {}

    # ---------------------------------------------------------------- step
    @_torch.no_grad()
    def step(self, closure=None):
        """One update of every parameter that has a gradient; one fused call
        per parameter group (per device and dtype within it). ``closure``
        re-evaluates the model and returns the loss, as in torch.optim."""
        loss = None
        if closure is not None:
            with _torch.enable_grad():
                loss = closure()
        entries = self._entries
        state_get = self.state.get
        plans = []
        for gi, group in enumerate(self.param_groups):
            h = self._hyper(group)
            names = self._state_names(h)
            seq, grads = [], []  # entries and gradient arrays, in order
            for i, p in enumerate(group["params"]):
                g = p.grad
                if g is None:
                    continue
                seen = state_get(p)
                e = entries.get(p)
                if e is None or not e.valid(seen, names, p.data_ptr()):
                    e = entries[p] = self._entry(p, seen, h, names, f"param_groups[{gi}]['params'][{i}]")
                pa = e.array
                ga = None
                if type(pa) is np.ndarray:  # a CPU parameter: the fast path for its gradient
                    try:
                        ga = g.numpy()  # refuses sparse, GPU and requires_grad tensors
                    except (RuntimeError, TypeError):
                        ga = None
                    if ga is not None and not (ga.dtype == pa.dtype and ga.shape == pa.shape
                                               and ga.flags.c_contiguous):
                        ga = None
                if ga is None:  # the descriptive checks: raise, or the GPU's array
                    ga = _grad_array(p, g, f"param_groups[{gi}]['params'][{i}]")
                seq.append(e)
                grads.append(ga)
            plans.append((h, names, self._buckets(gi, seq, grads, names)))
        # every tensor checked: run, then commit new states and step counts
        for h, names, buckets in plans:
            for step, params, grads, bufs, done in buckets:
                _ops.fused_step(self._kernel, params, grads, dict(zip(names, bufs)), step, h)
                for e in done:
                    self._commit(e)
        return loss


def _flag(name, value):
    return V.flag(name, False if value is None else value)


def _common(group) -> None:
    """The keyword flags every optimizer accepts: foreach / fused None or a
    bool, capturable and differentiable bools."""
    for name in ("foreach", "fused"):
        if name in group and group[name] is not None:
            V.flag(name, group[name])
    for name in ("capturable", "differentiable"):
        if name in group:
            _flag(name, group[name])
    if group.get("differentiable"):
        raise ValueError("differentiable=True is not supported: the fused kernels run outside autograd")


class SGD(_FusedOptimizer):
    """torch.optim.SGD on fusedtrain.ops.sgd_ (momentum, dampening,
    Nesterov, weight decay, maximize)::

        d = g + weight_decay * p                       (g = -g if maximize)
        buf = d (first step), else momentum * buf + (1 - dampening) * d
        d = d + momentum * buf (nesterov) or buf;   p = p - lr * d

    Defaults: lr=1e-3, momentum=0, dampening=0, weight_decay=0,
    nesterov=False, maximize=False. State: ``momentum_buffer`` (momentum != 0).
    """

    _kernel = "sgd"
    _counts_steps = False

    def __init__(self, params, lr=1e-3, momentum=0.0, dampening=0.0, weight_decay=0.0,
                 nesterov=False, *, maximize=False, foreach=None, differentiable=False,
                 fused=None):
        super().__init__(params, dict(lr=lr, momentum=momentum, dampening=dampening,
                                      weight_decay=weight_decay, nesterov=nesterov,
                                      maximize=maximize, foreach=foreach,
                                      differentiable=differentiable, fused=fused))

    def _hyper(self, group):
        _common(group)
        return V.sgd(_scalar(group["lr"]), group["momentum"], group["dampening"],
                     group.get("nesterov", False), _scalar(group["weight_decay"]), 0.0,
                     group.get("maximize", False))

    _state_names = staticmethod(_optim.SGD._state_names)

    def _new_state(self, p, h):
        return {n: _torch.zeros_like(p, memory_format=_torch.contiguous_format)
                for n in self._state_names(h)}

    def _next_step(self, state):
        # torch sets the buffer to d on its first use: ops.sgd_'s step 1, then 2
        return 1 if not state or state.get("momentum_buffer") is None else 2



class Adam(_FusedOptimizer):
    """torch.optim.Adam on fusedtrain.ops.adam_ / adamw_ (Kingma & Ba, 2015;
    AMSGrad: Reddi et al., 2018)::

        g = g + weight_decay * p    (or p = p * (1 - lr * weight_decay) when
                                     decoupled_weight_decay)    (g = -g if maximize)
        m = m + (1 - beta1) (g - m);  v = beta2 v + (1 - beta2) g^2
        p = p - lr / (1 - beta1^t) * m / (sqrt(max(vmax, v)) / sqrt(1 - beta2^t) + eps)

    Defaults: lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0,
    amsgrad=False, maximize=False, decoupled_weight_decay=False. State:
    ``step``, ``exp_avg``, ``exp_avg_sq``, ``max_exp_avg_sq`` (amsgrad).
    """

    _kernel = "adam"

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
                 amsgrad=False, *, foreach=None, maximize=False, capturable=False,
                 differentiable=False, fused=None, decoupled_weight_decay=False):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                                      amsgrad=amsgrad, maximize=maximize, foreach=foreach,
                                      capturable=capturable, differentiable=differentiable,
                                      fused=fused, decoupled_weight_decay=decoupled_weight_decay))

    def _hyper(self, group):
        _common(group)
        betas = tuple(_scalar(b) for b in group["betas"])
        h = V.adam(_scalar(group["lr"]), betas, group["eps"], _scalar(group["weight_decay"]), 0.0,
                   group.get("amsgrad", False), group.get("maximize", False))
        h["decoupled"] = V.flag("decoupled_weight_decay", group.get("decoupled_weight_decay", False))
        return h

    _state_names = staticmethod(_optim.Adam._state_names)



class AdamW(Adam):
    """torch.optim.AdamW: :class:`Adam` with decoupled weight decay
    (Loshchilov & Hutter, 2019), ``p = p * (1 - lr * weight_decay)`` before
    the Adam update. Defaults as Adam except weight_decay=1e-2."""

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2,
                 amsgrad=False, *, maximize=False, foreach=None, capturable=False,
                 differentiable=False, fused=None):
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                         amsgrad=amsgrad, foreach=foreach, maximize=maximize,
                         capturable=capturable, differentiable=differentiable, fused=fused,
                         decoupled_weight_decay=True)


class RMSprop(_FusedOptimizer):
    """torch.optim.RMSprop on fusedtrain.ops.rmsprop_ (Hinton, Lecture 6e;
    centered: Graves, 2013)::

        sq = alpha sq + (1 - alpha) g^2;  avg = sqrt(sq - ga^2) (centered) or sqrt(sq)
        buf = momentum buf + g / (avg + eps), p = p - lr buf   (momentum > 0)
        p = p - lr g / (avg + eps)                              (otherwise)

    Defaults: lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0, momentum=0,
    centered=False, maximize=False. State: ``step``, ``square_avg``,
    ``momentum_buffer`` (momentum > 0), ``grad_avg`` (centered).
    """

    _kernel = "rmsprop"

    def __init__(self, params, lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0.0, momentum=0.0,
                 centered=False, capturable=False, foreach=None, maximize=False,
                 differentiable=False):
        super().__init__(params, dict(lr=lr, momentum=momentum, alpha=alpha, eps=eps,
                                      centered=centered, weight_decay=weight_decay,
                                      capturable=capturable, foreach=foreach, maximize=maximize,
                                      differentiable=differentiable))

    def _hyper(self, group):
        _common(group)
        return V.rmsprop(_scalar(group["lr"]), group["alpha"], group["eps"],
                         _scalar(group["weight_decay"]), group["momentum"],
                         group.get("centered", False), 0.0, group.get("maximize", False))

    _state_names = staticmethod(_optim.RMSProp._state_names)



class Adagrad(_FusedOptimizer):
    """torch.optim.Adagrad on fusedtrain.ops.adagrad_ (Duchi et al., 2011)::

        sum = sum + g^2;  p = p - lr / (1 + (t - 1) lr_decay) * g / (sqrt(sum) + eps)

    Defaults: lr=1e-2, lr_decay=0, weight_decay=0,
    initial_accumulator_value=0, eps=1e-10, maximize=False. State (created
    at construction, as torch does): ``step``, ``sum``.
    """

    _kernel = "adagrad"

    def __init__(self, params, lr=1e-2, lr_decay=0.0, weight_decay=0.0,
                 initial_accumulator_value=0.0, eps=1e-10, foreach=None, *, maximize=False,
                 differentiable=False, fused=None):
        super().__init__(params, dict(lr=lr, lr_decay=lr_decay, eps=eps,
                                      weight_decay=weight_decay,
                                      initial_accumulator_value=initial_accumulator_value,
                                      foreach=foreach, maximize=maximize,
                                      differentiable=differentiable, fused=fused))
        for group in self.param_groups:
            h = self._hyper(group)
            for p in group["params"]:
                self.state[p] = self._new_state(p, h)

    def _hyper(self, group):
        _common(group)
        h = V.adagrad(_scalar(group["lr"]), group["lr_decay"], _scalar(group["weight_decay"]),
                      group["eps"], 0.0, group.get("maximize", False))
        h["initial_accumulator_value"] = V.at_least(
            "initial_accumulator_value", group.get("initial_accumulator_value", 0.0))
        return h

    _state_names = staticmethod(_optim.Adagrad._state_names)

    def _initial_value(self, name, h):
        return h["initial_accumulator_value"]



# ---------------------------------------------------------------------------
# clipping, as torch.nn.utils
# ---------------------------------------------------------------------------
def _grads_of(parameters) -> list:
    if isinstance(parameters, _torch.Tensor):
        parameters = [parameters]
    grads = []
    for i, p in enumerate(parameters):
        if p.grad is None:
            continue
        where = f"parameters[{i}]"
        g = p.grad
        _check_tensor(g, where + ".grad")
        if grads and (g.dtype != grads[0][1].dtype or g.device != grads[0][1].device):
            raise TypeError(f"{where}.grad: expected {grads[0][1].dtype} on {grads[0][1].device} "
                            f"(the first gradient's), received {g.dtype} on {g.device}; clip "
                            "each dtype and device separately")
        grads.append((where, g))
    return [_array(g) for _, g in grads], (grads[0][1] if grads else None)


def clip_grad_norm_(parameters, max_norm, norm_type=2.0, error_if_nonfinite=False,
                    foreach=None):
    """torch.nn.utils.clip_grad_norm_ on the fused kernels: the gradients of
    ``parameters`` (a tensor or an iterable of tensors; those with grad None
    are skipped) are scaled in place by ``min(max_norm / (total + 1e-6), 1)``;
    returns the total norm as a 0-d tensor of the gradients' dtype. See
    :func:`fusedtrain.ops.clip_grad_norm_` for the semantics (non-finite
    norms, norm_type inf) and the differences (max_norm must be > 0). All
    gradients must share one dtype and device."""
    arrays, first = _grads_of(parameters)
    total = _ops.clip_grad_norm_(arrays, max_norm, norm_type, error_if_nonfinite, foreach)
    if first is None:
        return _torch.tensor(0.0)
    if isinstance(total, _torch.Tensor):
        return total.to(first.dtype)
    return _torch.tensor(total, dtype=first.dtype)


def clip_grad_value_(parameters, clip_value, foreach=None) -> None:
    """torch.nn.utils.clip_grad_value_ on the fused kernels: every gradient
    element clamped to [-clip_value, clip_value] in place (clip_value >= 0)."""
    arrays, _ = _grads_of(parameters)
    _ops.clip_grad_value_(arrays, clip_value, foreach)

