"""Shared helpers of the fusedtrain tests.

The table ``SPECS`` describes every optimizer once (optax's
``_OPTIMIZERS_UNDER_TEST`` habit): its fused kernel in ``fusedtrain.ops``, its
NumPy reference in ``fusedtrain.reference``, its optimizer class, the state
buffers each variant uses, the grid of variant flags that test_ops.py sweeps,
one "heavy" variant with every buffer and term switched on, and
hyperparameters that make it converge on a quadratic.

Hyperparameter dicts use the optimizer classes' vocabulary (so Adagrad's
``initial_accumulator_value`` is one of them); ``spec.ops_kwargs`` strips what
the functional API does not take. State buffers are named with the ops
keyword names (``state_sum`` for Adagrad); ``spec.optim_name`` maps them to
the state_dict keys (``sum``).

``toy_data`` and ``toy_mlp`` are the small classification problem and MLP
that the model, training, checkpoint and callback tests share.
"""

from __future__ import annotations

import dataclasses
import itertools
import zlib
from typing import Callable

import numpy as np
import pytest

from fusedtrain import ops, optim, reference
from fusedtrain.nn import Dense, Dropout, Sequential

DTYPES = (np.float32, np.float64)

# Kernel vs reference. Both evaluate the same operations in the same order,
# with the per-step scalars computed in double and rounded once (no FP
# contraction in the build), so they agree bitwise on this machine; the
# tolerances leave a few ulps of room only, for a libm or NumPy that rounds a
# per-step scalar (pow, sqrt) differently.
TOL = {
    np.dtype(np.float32): dict(rtol=1e-6, atol=1e-7),
    np.dtype(np.float64): dict(rtol=1e-13, atol=1e-15),
}


def tol(dtype) -> dict:
    return TOL[np.dtype(dtype)]


def dtype_id(dtype) -> str:
    return np.dtype(dtype).name


# ---------------------------------------------------------------------------
# random data
# ---------------------------------------------------------------------------
def make_rng(*key) -> np.random.Generator:
    """A Generator seeded from ``key`` (stable across runs and processes)."""
    return np.random.default_rng(zlib.crc32(repr(key).encode()))


def random_array(rng: np.random.Generator, shape, dtype, scale: float = 1.0) -> np.ndarray:
    """Normal values; about one element in ten set to exactly zero (the
    sign(0) = 0 case of the L1 term)."""
    a = np.asarray(rng.standard_normal(shape) * scale)
    a[rng.random(shape) < 0.1] = 0.0
    return np.ascontiguousarray(a, dtype=dtype)


def random_list(rng, shapes, dtype, scale: float = 1.0) -> list:
    return [random_array(rng, s, dtype, scale) for s in shapes]


# ---------------------------------------------------------------------------
# the optimizer table
# ---------------------------------------------------------------------------
def _grid(**axes) -> list[dict]:
    keys = list(axes)
    return [dict(zip(keys, values)) for values in itertools.product(*axes.values())]


def _sgd_grid() -> list[dict]:
    out = []
    # (momentum, dampening, nesterov): Nesterov needs momentum and no dampening
    for momentum, dampening, nesterov in [(0.0, 0.0, False), (0.0, 0.1, False), (0.9, 0.0, False),
                                          (0.9, 0.1, False), (0.9, 0.0, True)]:
        for rest in _grid(weight_decay=[0.0, 0.01], maximize=[False, True], l1=[0.0, 1e-3]):
            out.append(dict(lr=0.05, momentum=momentum, dampening=dampening, nesterov=nesterov, **rest))
    return out


def _adam_grid(**fixed) -> list[dict]:
    # betas=(0.3, 0.9): lerp weight 1 - beta1 = 0.7 >= 0.5 takes the other
    # branch of the lerp (from the end point)
    return [dict(lr=0.01, eps=1e-8, **fixed, **g) for g in _grid(
        betas=[(0.9, 0.999), (0.3, 0.9)], amsgrad=[False, True], maximize=[False, True],
        weight_decay=[0.0, 0.1], l1=[0.0, 1e-3])]


def _rmsprop_grid() -> list[dict]:
    # alpha=0.4: the centered grad_avg lerp weight 1 - alpha >= 0.5
    return [dict(lr=0.01, eps=1e-8, **g) for g in _grid(
        alpha=[0.99, 0.4], centered=[False, True], momentum=[0.0, 0.9], weight_decay=[0.0, 0.01],
        maximize=[False, True], l1=[0.0, 1e-3])]


def _adagrad_grid() -> list[dict]:
    return [dict(lr=0.1, eps=1e-10, **g) for g in _grid(
        lr_decay=[0.0, 0.01], weight_decay=[0.0, 0.01], maximize=[False, True], l1=[0.0, 1e-3],
        initial_accumulator_value=[0.0, 0.1])]


@dataclasses.dataclass(frozen=True)
class OptSpec:
    name: str
    op: Callable            # fusedtrain.ops.<name>_
    ref: Callable           # fusedtrain.reference.<name>
    cls: type               # fusedtrain.optim.<Class>
    takes_step: bool        # rmsprop_ has no step argument
    state_names: Callable   # hyper -> ops keyword names of the buffers that variant uses
    grid: tuple             # variants swept by test_ops.py
    heavy: dict             # every buffer and every term on
    converge: dict          # converges on 0.5 * ||p - target||^2
    torch_name: str         # torch.optim class name

    def __repr__(self) -> str:  # short test ids
        return self.name

    def ops_kwargs(self, hyper: dict) -> dict:
        return {k: v for k, v in hyper.items() if k != "initial_accumulator_value"}

    def initial_value(self, name: str, hyper: dict) -> float:
        if name == "state_sum":
            return hyper.get("initial_accumulator_value", 0.0)
        return 0.0

    @staticmethod
    def optim_name(name: str) -> str:
        return "sum" if name == "state_sum" else name


SPECS = (
    OptSpec("sgd", ops.sgd_, reference.sgd, optim.SGD, True,
            lambda h: ("momentum_buffer",) if h.get("momentum", 0.0) != 0 else (),
            tuple(_sgd_grid()),
            dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.01, maximize=True, l1=1e-3),
            dict(lr=0.1, momentum=0.9),
            "SGD"),
    OptSpec("adam", ops.adam_, reference.adam, optim.Adam, True,
            lambda h: ("exp_avg", "exp_avg_sq") + (("max_exp_avg_sq",) if h.get("amsgrad") else ()),
            tuple(_adam_grid()),
            dict(lr=0.01, betas=(0.3, 0.9), amsgrad=True, weight_decay=0.1, maximize=True, l1=1e-3),
            dict(lr=0.1),
            "Adam"),
    OptSpec("adamw", ops.adamw_, reference.adamw, optim.AdamW, True,
            lambda h: ("exp_avg", "exp_avg_sq") + (("max_exp_avg_sq",) if h.get("amsgrad") else ()),
            tuple(_adam_grid()),
            dict(lr=0.01, betas=(0.9, 0.999), amsgrad=True, weight_decay=0.1, maximize=True, l1=1e-3),
            dict(lr=0.1, weight_decay=0.0),
            "AdamW"),
    OptSpec("rmsprop", ops.rmsprop_, reference.rmsprop, optim.RMSProp, False,
            lambda h: (("square_avg",) + (("grad_avg",) if h.get("centered") else ())
                       + (("momentum_buffer",) if h.get("momentum", 0.0) > 0 else ())),
            tuple(_rmsprop_grid()),
            dict(lr=0.01, alpha=0.4, centered=True, momentum=0.9, weight_decay=0.01, maximize=True,
                 l1=1e-3),
            dict(lr=0.03, alpha=0.99, centered=True, momentum=0.5),
            "RMSprop"),
    OptSpec("adagrad", ops.adagrad_, reference.adagrad, optim.Adagrad, True,
            lambda h: ("state_sum",),
            tuple(_adagrad_grid()),
            dict(lr=0.1, lr_decay=0.01, weight_decay=0.01, maximize=True, l1=1e-3,
                 initial_accumulator_value=0.1),
            dict(lr=1.0),
            "Adagrad"),
)
SPEC = {s.name: s for s in SPECS}


def hyper_id(hyper: dict) -> str:
    def fmt(v):
        if isinstance(v, tuple):
            return ",".join(f"{x:g}" for x in v)
        return str(v) if isinstance(v, bool) else f"{v:g}"
    short = {"initial_accumulator_value": "init", "weight_decay": "wd", "momentum": "mom",
             "dampening": "damp", "nesterov": "nest", "maximize": "max", "centered": "cent",
             "amsgrad": "ams", "lr_decay": "lrd"}
    return "-".join(f"{short.get(k, k)}={fmt(v)}" for k, v in hyper.items()
                    if k not in ("lr", "eps") and v not in (0.0, False))


# ---------------------------------------------------------------------------
# running a step three ways
# ---------------------------------------------------------------------------
def make_states(spec: OptSpec, hyper: dict, params: list, rng=None) -> dict:
    """The state lists a variant needs, filled as an optimizer starts them.

    With ``rng``, SGD's momentum buffer is filled with garbage instead: its
    contents must be ignored (overwritten) on step 1.
    """
    out = {}
    for name in spec.state_names(hyper):
        if name == "momentum_buffer" and spec.name == "sgd" and rng is not None:
            out[name] = [random_array(rng, p.shape, p.dtype, 10.0) for p in params]
        else:
            out[name] = [np.full_like(p, spec.initial_value(name, hyper)) for p in params]
    return out


def copy_states(states: dict) -> dict:
    return {k: [a.copy() for a in v] for k, v in states.items()}


def kernel_step(spec: OptSpec, params, grads, states: dict, hyper: dict, step: int,
                single: bool = False) -> None:
    """One fused call over the whole list (or over bare arrays if ``single``)."""
    kw = dict(spec.ops_kwargs(hyper))
    if spec.takes_step:
        kw["step"] = step
    if single:
        (p,), (g,) = params, grads
        spec.op(p, g, **{k: v[0] for k, v in states.items()}, **kw)
    else:
        spec.op(params, grads, **states, **kw)


def reference_step(spec: OptSpec, params, grads, states: dict, hyper: dict, step: int) -> None:
    """The NumPy reference, one array at a time."""
    kw = dict(spec.ops_kwargs(hyper))
    if spec.takes_step:
        kw["step"] = step
    with np.errstate(all="ignore"):  # NaN/inf cases are compared, not warned about
        for i, (p, g) in enumerate(zip(params, grads)):
            spec.ref(p, g, **{k: v[i] for k, v in states.items()}, **kw)


def assert_buffers_close(got_params, got_states, want_params, want_states, dtype, what="") -> None:
    """Every buffer (params and every state), element by element."""
    t = tol(dtype)
    assert set(got_states) == set(want_states)
    pairs = [("params", got_params, want_params)] + [
        (k, got_states[k], want_states[k]) for k in sorted(got_states)]
    for name, got, want in pairs:
        assert len(got) == len(want)
        for i, (g, w) in enumerate(zip(got, want)):
            assert g.dtype == np.dtype(dtype), f"{name}[{i}] dtype {g.dtype}"
            assert g.shape == w.shape
            np.testing.assert_allclose(g, w, err_msg=f"{what} {name}[{i}]", **t)


# ---------------------------------------------------------------------------
# "nothing changed" checks
# ---------------------------------------------------------------------------
def snapshot(arrays) -> list:
    """Bitwise copies of every array (dtype, shape and bytes)."""
    return [(a.dtype, a.shape, a.tobytes()) for a in arrays]


def assert_unchanged(arrays, snap, labels=None) -> None:
    assert len(arrays) == len(snap)
    labels = labels or [f"array {i}" for i in range(len(arrays))]
    for label, a, (dtype, shape, data) in zip(labels, arrays, snap):
        assert a.dtype == dtype and a.shape == shape, f"{label} changed dtype/shape"
        assert a.tobytes() == data, f"{label} was modified"


def assert_state_dict_equal(a: dict, b: dict) -> None:
    """Two state_dicts equal, arrays bitwise (dtype, shape, bytes)."""
    assert type(a) is type(b)
    if isinstance(a, dict):
        assert list(a) == list(b)
        for k in a:
            assert_state_dict_equal(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            assert_state_dict_equal(x, y)
    elif isinstance(a, np.ndarray):
        assert a.dtype == b.dtype and a.shape == b.shape
        assert a.tobytes() == b.tobytes()
    else:
        assert a == b or (a != a and b != b)


# ---------------------------------------------------------------------------
# a toy classification problem and the small MLP that learns it (the model,
# training, checkpoint and callback tests)
# ---------------------------------------------------------------------------
def toy_data(n=96, d=8, c=5, seed=0, dtype=np.float64):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d)).astype(dtype)
    w = rng.standard_normal((d, c))
    y = np.argmax(x @ w + 0.1 * rng.standard_normal((n, c)), axis=1).astype(np.int64)
    return x, y


def toy_mlp(dtype=np.float64, dropout=0.0, seed=0, hidden=16):
    layers = [Dense(8, hidden, activation="relu")]
    if dropout:
        layers.append(Dropout(dropout))
    layers.append(Dense(hidden, 5))
    return Sequential(layers, dtype=dtype, seed=seed)


@pytest.fixture
def restore_threads():
    import fusedtrain

    n = fusedtrain.get_num_threads()
    yield n
    fusedtrain.set_num_threads(n)
