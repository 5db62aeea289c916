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

Memory layouts. A step is element-wise, so a parameter only needs to be
dense: C-contiguous, or a permutation of a contiguous layout
(``channels_last`` convolution weights, a transposed matrix). A permuted
parameter is stepped in place through a 1-d view of its memory in storage
order (``p.permute(order).view(-1)``: no copy), with its gradient and its
state buffers read in the same order -- so they must be laid out as the
parameter. States are made that way (``memory_format=preserve_format``,
as torch.optim does), and a gradient from autograd is (torch lays a dense
parameter's gradient out as the parameter). A gradient laid out otherwise
raises ValueError naming the parameter (reading it would need a copy); a
state buffer laid out otherwise (a model moved to channels_last after its
optimizer had state) is replaced once by a copy in the parameter's layout,
which the step stores in ``optimizer.state`` and updates from then on.

float16 / bfloat16 parameters are stepped as torch's fused optimizers
(``torch.optim.Adam(fused=True)``) step them: the math in float32 from the
parameter as it is, the result rounded to nearest even into the parameter;
the gradient in the parameter's dtype. bfloat16 parameters keep their
states in bfloat16, as torch does (rounded after each update): Adam and
AdamW give torch's fused results bit for bit. Differences from torch: the
kernels keep narrow states in bfloat16 or float32 only, so float16
parameters keep float32 states (torch: float16; more precise here, twice
the memory; torch's float16 states loaded by ``load_state_dict`` are
taken in float32 at the next step), and each narrow step first widens the
parameter into a float32 scratch buffer, which the kernel uses as its master
weights and then rounds into the parameter (one extra pass over the
parameter; the buffer is not state and is not saved). No float32 master
weights persist between steps, as in torch: for those, use
:mod:`fusedtrain.optim` with ``master_weights=True``.

What is refused, with an error naming the parameter (never a hidden copy):
sparse gradients (RuntimeError), dtypes other than float32 / float64 /
float16 / bfloat16 (TypeError), parameters that are not dense (ValueError),
a gradient on another device or with another shape, dtype or memory layout
than its parameter. Everything is checked before the first kernel runs, so
a step that raises has changed no parameter and no state.

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
_NARROW = (_torch.float16, _torch.bfloat16)  # stepped through float32 master weights
_DTYPES = _FLOATS + _NARROW


def _scalar(x):
    """A hyperparameter that may be a 0-d tensor (torch allows Tensor lr)."""
    return x.item() if isinstance(x, _torch.Tensor) else x


def _check_tensor(t, where: str) -> None:
    """t must be a strided (not sparse) tensor of a dtype the kernels step."""
    if t.layout != _torch.strided:
        raise RuntimeError(f"{where}: expected a dense tensor, received a {t.layout} tensor "
                           "(sparse gradients are not supported; use torch.optim.SparseAdam)")
    if t.dtype not in _DTYPES:
        raise TypeError(f"{where}: expected dtype torch.float32, torch.float64, torch.float16 or "
                        f"torch.bfloat16, received {t.dtype}")


def _order(t, where: str):
    """How t's memory is laid out: None when it is C-contiguous; else the
    permutation of its dimensions that makes it C-contiguous (its dimensions
    by decreasing stride: (0, 2, 3, 1) for a channels_last 4-d tensor) when t
    is dense -- non-overlapping and covering one block of memory, in
    another order. Anything else raises ValueError: an element-wise step
    needs every element once, in place."""
    if t.is_contiguous():
        return None
    order = tuple(sorted(range(t.dim()), key=lambda d: -t.stride(d)))  # stable
    if not t.permute(order).is_contiguous():
        raise ValueError(f"{where}: expected a dense tensor, contiguous or a permutation of a "
                         "contiguous layout such as channels_last (updated in place, never "
                         f"copied), received strides {tuple(t.stride())} for shape "
                         f"{tuple(t.shape)}")
    return order


def _same_layout(t, order) -> bool:
    """t is laid out in memory as the tensor whose layout ``order`` is (t of
    the same shape): the same strides wherever the size is not 1."""
    return t.is_contiguous() if order is None else t.permute(order).is_contiguous()


def _flat(t, order):
    """t detached, as the kernels read it: itself when C-contiguous, else a
    1-d view of its memory in storage order (no copy: ``view`` refuses what
    it cannot view)."""
    t = t.detach()
    return t if order is None else t.permute(order).view(-1)


_BF16 = None  # numpy's bfloat16 (ml_dtypes), imported on first use


def _array(t, order=None):
    """The zero-copy array the kernels take: a NumPy view of a CPU tensor
    (bfloat16 through ml_dtypes), the (detached) tensor itself on a GPU; a
    1-d view in storage order for a dense permuted tensor."""
    global _BF16
    t = _flat(t, order)
    if t.device.type == "cpu":
        if t.dtype == _torch.bfloat16:  # torch gives no NumPy view of bfloat16
            if _BF16 is None:
                import ml_dtypes

                _BF16 = np.dtype(ml_dtypes.bfloat16)
            return t.view(_torch.int16).numpy().view(_BF16)
        return t.numpy()
    if t.device.type == "cuda":
        return t
    raise TypeError(f"expected a CPU or CUDA tensor, received a tensor on {t.device}")


def _grad_array(p, g, where: str, order):
    """The gradient's array, checked against its parameter (``order``: the
    parameter's layout): the same dtype, device, shape and memory layout."""
    _check_tensor(g, where + ".grad")
    if g.dtype != p.dtype:
        raise TypeError(f"{where}.grad: expected dtype {p.dtype} (the parameter's), received {g.dtype}")
    if g.device != p.device:
        raise ValueError(f"{where}.grad: expected a tensor on {p.device} (the parameter's), "
                         f"received one on {g.device}")
    if g.shape != p.shape:
        raise ValueError(f"{where}.grad: expected shape {tuple(p.shape)} (the parameter's), "
                         f"received {tuple(g.shape)}")
    if not _same_layout(g, order):
        raise ValueError(f"{where}.grad: expected the parameter's memory layout (strides "
                         f"{tuple(p.stride())}{', contiguous' if order is None else ''}), received "
                         f"strides {tuple(g.stride())}: the kernels read the gradient element by "
                         "element in the parameter's memory order, and a gradient laid out "
                         "otherwise would need a copy (make it with "
                         "torch.empty_like(param, memory_format=torch.preserve_format))")
    return _array(g, order)


class _Entry:
    """What one parameter's update needs, checked once and cached until the
    parameter's storage, its state dict or a tensor in it changes: the
    parameter's array, its state buffers' arrays, the step this update is,
    and the bucket key."""

    __slots__ = ("param", "seen", "state", "new", "ptr", "strides", "order", "array", "names",
                 "buffers", "next", "step_array", "key", "watch", "master", "master_array", "source")

    def valid(self, seen, names, p) -> bool:
        if self.seen is not seen or self.names != names or self.ptr != p.data_ptr() \
                or self.strides != p.stride():
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
    @staticmethod
    def _state_dtype(p):
        """The dtype of p's state buffers: p's, except float32 for float16
        params (the kernels keep narrow states in bfloat16 or float32)."""
        return _torch.float32 if p.dtype == _torch.float16 else p.dtype

    def _new_state(self, p, h: dict) -> dict:
        state = {}
        if self._counts_steps:  # torch's scalar dtype: float32 unless the default is float64
            dtype = _torch.float64 if _torch.get_default_dtype() == _torch.float64 else _torch.float32
            state["step"] = _torch.tensor(0.0, dtype=dtype)
        for name in self._state_names(h):  # laid out as p, as torch.optim makes them
            state[name] = _torch.full_like(p, self._initial_value(name, h),
                                           dtype=self._state_dtype(p),
                                           memory_format=_torch.preserve_format)
        return state

    def _state_buffer(self, p, t, order, where: str):
        """The state buffer t checked against p; one of another dtype or
        memory layout (torch's load_state_dict casts states to the param's
        dtype; a model moved to channels_last keeps its states' layout) is
        returned as a new tensor in p's layout and state dtype, which the
        step stores in the state in its place; None when t is usable as
        it is."""
        if not isinstance(t, _torch.Tensor):
            raise TypeError(f"{where}: expected a tensor, received {type(t).__name__}")
        _check_tensor(t, where)
        if t.shape != p.shape or t.device != p.device:
            raise ValueError(f"{where}: expected shape {tuple(p.shape)} on {p.device} (the "
                             f"parameter's), received shape {tuple(t.shape)} on {t.device}")
        dtype = self._state_dtype(p)
        if t.dtype == dtype and _same_layout(t, order):
            return None
        return _torch.empty_like(p, dtype=dtype, memory_format=_torch.preserve_format).copy_(t)

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
        order = _order(p, where)
        e = _Entry()
        e.param, e.seen, e.names, e.ptr, e.strides = p, seen, names, p.data_ptr(), p.stride()
        e.order, e.array = order, _array(p, order)
        e.master = e.master_array = e.source = None
        if p.dtype in _NARROW:  # the kernels' float32 master weights: a scratch buffer
            e.source = _flat(p, order)
            e.master = _torch.empty(e.source.shape, dtype=_torch.float32, device=p.device)
            e.master_array = _array(e.master)
        e.next = self._next_step(seen)  # from the state as it is before this step
        state, e.new = seen, not seen
        if e.new:
            state = self._new_state(p, h)
        else:
            missing = [n for n in names if state.get(n) is None]
            if missing:  # a variant switched on later (amsgrad, momentum, centered)
                state = {**state, **{n: v for n, v in self._new_state(p, h).items() if n in missing}}
                e.new = True
        relaid = {}
        for n in names:
            t = self._state_buffer(p, state[n], order, f"{where} state[{n!r}]")
            if t is not None:
                relaid[n] = t
        if relaid:  # stored in the state at the commit
            state = {**state, **relaid}
            e.new = True
        e.state = state
        e.buffers = tuple(_array(state[n], order) for n in names)
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
            self._last[gi] = (seq, self._after(step), last[2], last[3], last[4])
            return [(step, last[2], grads, last[3], seq, last[4])]
        buckets: dict = {}
        for e, ga in zip(seq, grads):
            b = buckets.get((e.key, e.next))
            if b is None:
                masters = [] if e.master is not None else None
                b = buckets[(e.key, e.next)] = (e.next, [], [], [[] for _ in names], [], masters)
            b[1].append(e.array)
            b[2].append(ga)
            for lst, a in zip(b[3], e.buffers):
                lst.append(a)
            b[4].append(e)
            if b[5] is not None:
                b[5].append(e.master_array)
        out = list(buckets.values())
        # one bucket: its entries advance together, to this step count
        self._last[gi] = (seq, self._after(out[0][0]), out[0][1], out[0][3], out[0][5]) \
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
                if e is None or not e.valid(seen, names, p):
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
                if ga is None:  # the descriptive checks: raise, or the array
                    ga = _grad_array(p, g, f"param_groups[{gi}]['params'][{i}]", e.order)
                seq.append(e)
                grads.append(ga)
            plans.append((h, names, self._buckets(gi, seq, grads, names)))
        # every tensor checked: run, then commit new states and step counts
        for h, names, buckets in plans:
            for step, params, grads, bufs, done, masters in buckets:
                extra = _NO_EXTRA
                if masters is not None:  # narrow params: the master widened from the param
                    for e in done:
                        e.master.copy_(e.source)
                    extra = {"master_params": masters}
                _ops.fused_step(self._kernel, params, grads, dict(zip(names, bufs)), step, h,
                                extra)
                for e in done:
                    self._commit(e)
        return loss


_NO_EXTRA: dict = {}


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
        return {n: _torch.zeros_like(p, dtype=self._state_dtype(p),
                                     memory_format=_torch.preserve_format)
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
    ``step``, ``exp_avg``, ``exp_avg_sq``, ``max_exp_avg_sq`` (amsgrad), laid
    out as the parameter. bfloat16 parameters: as ``torch.optim.Adam(fused=True)``
    (float32 math, bfloat16 states), the same bits; float16 parameters keep
    float32 states (see the module docstring).
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
        order = _order(g, where + ".grad")  # any dense layout: norms and clamps are element-wise
        if grads and (g.dtype != grads[0][1].dtype or g.device != grads[0][1].device):
            raise TypeError(f"{where}.grad: expected {grads[0][1].dtype} on {grads[0][1].device} "
                            f"(the first gradient's), received {g.dtype} on {g.device}; clip "
                            "each dtype and device separately")
        grads.append((order, g))
    return [_array(g, order) for order, g in grads], (grads[0][1] if grads else None)


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

