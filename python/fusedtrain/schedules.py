"""Learning-rate schedules.

Each schedule is a small object whose ``lr(step)`` gives the learning rate of
optimizer step ``step``, counted from 0 (the first step of training is step
0); ``schedule(step)`` is the same call. The training loop calls it before
every step and writes the value into the optimizer's parameter groups.

Every schedule has ``state_dict()`` / ``load_state_dict(state)`` so that a
checkpoint can save any of them the same way. The closed-form schedules have
no state (their ``state_dict()`` is ``{}``); :class:`ReduceOnPlateau` and a
:class:`Warmup` around it do.

==========================  ==================================================
``Constant(lr)``            ``lr``
``ExponentialDecay``        ``lr * gamma ** (step // every)``
``StepDecay``               ``lr * gamma ** (step // step_size)``
``MultiStep``               ``lr * gamma ** (number of milestones <= step)``
``CosineAnnealing``         ``min_lr + (lr - min_lr) * (1 + cos(pi * t)) / 2``
``Warmup(schedule, ...)``   linear ramp, then ``schedule`` shifted by warmup
``ReduceOnPlateau``         divided by ``1 / factor`` when a metric stalls
``Function(f)``             ``f(step)``: any plain callable
==========================  ==================================================

``fit(schedule=f)`` also takes a plain callable ``f(step) -> lr`` (Keras's
habit); it is wrapped in :class:`Function`.

:func:`get` builds one from a name (for the command line).
"""

from __future__ import annotations

import bisect
import math

from . import _validate

__all__ = [
    "Schedule",
    "Constant",
    "ExponentialDecay",
    "StepDecay",
    "MultiStep",
    "CosineAnnealing",
    "Warmup",
    "ReduceOnPlateau",
    "Function",
    "get",
    "NAMES",
]


# ---------------------------------------------------------------------------
# argument checks (the error style of fusedtrain._validate)
# ---------------------------------------------------------------------------
def _int(name: str, value, low: int) -> int:
    return _validate.integer(name, value, low)


def _lr(name: str, value) -> float:
    v = _validate.at_least(name, value, 0.0)
    if not math.isfinite(v):
        raise ValueError(f"{name} must be finite; received {v!r}")
    return v


def _positive(name: str, value) -> float:
    v = _validate.real(name, value)
    if not (v > 0 and math.isfinite(v)):
        raise ValueError(f"{name} must be a finite number > 0; received {v!r}")
    return v


def _step(value) -> int:
    if type(value) is int and value >= 0:  # fast path: called every step
        return value
    return _int("step", value, 0)


def _check_state_keys(owner: str, state, expected) -> None:
    if not isinstance(state, dict):
        raise TypeError(f"{owner}.load_state_dict: state must be a dict; received {type(state).__name__}")
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise ValueError(
            f"{owner}.load_state_dict: state must have the keys {sorted(expected)}; "
            f"missing {missing}, unexpected {unexpected}"
        )


# ---------------------------------------------------------------------------
# schedules
# ---------------------------------------------------------------------------
class Schedule:
    """Base class: ``lr(step) -> float`` for ``step`` an int >= 0, and an
    empty state. Subclasses implement ``_lr(step)`` with a checked ``step``."""

    def lr(self, step) -> float:
        return self._lr(_step(step))

    def __call__(self, step) -> float:
        return self.lr(step)

    def _lr(self, step: int) -> float:  # pragma: no cover - abstract
        raise NotImplementedError

    def state_dict(self) -> dict:
        """The mutable state, for checkpoints (``{}``: a closed-form schedule
        depends on the step alone)."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        _check_state_keys(type(self).__name__, state, ())

    def _fields(self) -> str:
        return ""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._fields()})"


class Constant(Schedule):
    """``lr(step) = lr`` for every step."""

    def __init__(self, lr: float):
        self.base_lr = _lr("lr", lr)

    def _lr(self, step: int) -> float:
        return self.base_lr

    def _fields(self) -> str:
        return f"lr={self.base_lr!r}"


class ExponentialDecay(Schedule):
    """``lr(step) = lr * gamma ** (step // every)``.

    Defaults: ``every=1`` (decay by ``gamma`` after every step). ``gamma`` is a
    finite number > 0 (below 1 it decays; above 1 it grows, as for a learning
    rate range test).
    """

    def __init__(self, lr: float, gamma: float, every: int = 1):
        self.base_lr = _lr("lr", lr)
        self.gamma = _positive("gamma", gamma)
        self.every = _int("every", every, 1)

    def _lr(self, step: int) -> float:
        return self.base_lr * self.gamma ** (step // self.every)

    def _fields(self) -> str:
        return f"lr={self.base_lr!r}, gamma={self.gamma!r}, every={self.every}"


class StepDecay(Schedule):
    """``lr(step) = lr * gamma ** (step // step_size)``: multiplied by
    ``gamma`` every ``step_size`` steps (torch's ``StepLR``). Default
    ``gamma=0.1``."""

    def __init__(self, lr: float, step_size: int, gamma: float = 0.1):
        self.base_lr = _lr("lr", lr)
        self.step_size = _int("step_size", step_size, 1)
        self.gamma = _positive("gamma", gamma)

    def _lr(self, step: int) -> float:
        return self.base_lr * self.gamma ** (step // self.step_size)

    def _fields(self) -> str:
        return f"lr={self.base_lr!r}, step_size={self.step_size}, gamma={self.gamma!r}"


class MultiStep(Schedule):
    """``lr(step) = lr * gamma ** (number of milestones <= step)``: multiplied
    by ``gamma`` at each milestone step (torch's ``MultiStepLR``).

    ``milestones`` is a strictly increasing sequence of ints >= 1 (may be
    empty). Default ``gamma=0.1``.
    """

    def __init__(self, lr: float, milestones, gamma: float = 0.1):
        self.base_lr = _lr("lr", lr)
        if isinstance(milestones, (str, bytes)) or not hasattr(milestones, "__iter__"):
            raise TypeError(
                "milestones must be a sequence of ints >= 1; "
                f"received {type(milestones).__name__} {milestones!r}"
            )
        ms = [_int(f"milestones[{i}]", m, 1) for i, m in enumerate(milestones)]
        for i in range(1, len(ms)):
            if ms[i] <= ms[i - 1]:
                raise ValueError(f"milestones must be strictly increasing; received {ms}")
        self.milestones = tuple(ms)
        self.gamma = _positive("gamma", gamma)

    def _lr(self, step: int) -> float:
        return self.base_lr * self.gamma ** bisect.bisect_right(self.milestones, step)

    def _fields(self) -> str:
        return f"lr={self.base_lr!r}, milestones={list(self.milestones)}, gamma={self.gamma!r}"


class CosineAnnealing(Schedule):
    """Half a cosine from ``lr`` down to ``min_lr`` over ``total_steps``::

        t = min(step, total_steps) / total_steps
        lr(step) = min_lr + (lr - min_lr) * (1 + cos(pi * t)) / 2

    so ``lr(0) = lr`` and ``lr(step) = min_lr`` from ``total_steps`` on
    (SGDR without restarts: Loshchilov & Hutter, 2017,
    https://arxiv.org/abs/1608.03983). Default ``min_lr=0.0``; it must be
    <= ``lr``.
    """

    def __init__(self, lr: float, total_steps: int, min_lr: float = 0.0):
        self.base_lr = _lr("lr", lr)
        self.total_steps = _int("total_steps", total_steps, 1)
        self.min_lr = _lr("min_lr", min_lr)
        if self.min_lr > self.base_lr:
            raise ValueError(f"min_lr must be <= lr ({self.base_lr!r}); received {self.min_lr!r}")

    def _lr(self, step: int) -> float:
        t = min(step, self.total_steps) / self.total_steps
        return self.min_lr + (self.base_lr - self.min_lr) * (1.0 + math.cos(math.pi * t)) / 2.0

    def _fields(self) -> str:
        return f"lr={self.base_lr!r}, total_steps={self.total_steps}, min_lr={self.min_lr!r}"


class Warmup(Schedule):
    """A linear warm-up in front of another schedule, which then starts from
    its own step 0::

        lr(step) = schedule.lr(0) * (start_factor + (1 - start_factor) * step / warmup_steps)
                                                        for step < warmup_steps
        lr(step) = schedule.lr(step - warmup_steps)    for step >= warmup_steps

    The ramp ends where the wrapped schedule begins, so the curve is
    continuous, and a ``CosineAnnealing(lr, total - warmup_steps)`` inside a
    ``Warmup(..., warmup_steps)`` reaches its end at step ``total`` (the
    ``warmup_cosine`` of :func:`get`; transformers' cosine-with-warmup and
    optax's ``warmup_cosine_decay_schedule`` shift the same way).

    ``schedule`` is any object with a ``lr(step)`` method (or a plain
    callable ``step -> lr``). ``warmup_steps`` is an int >= 0 (0: no warm-up);
    ``start_factor`` in [0, 1], default 0.0: step 0 runs with lr 0.
    The wrapped schedule's state is this one's ``state_dict()["schedule"]``.
    """

    def __init__(self, schedule, warmup_steps: int, start_factor: float = 0.0):
        fn = None
        if not isinstance(schedule, type):  # a class, not an instance, is a mistake
            fn = getattr(schedule, "lr", None)
            if fn is None and callable(schedule):
                fn = schedule
        if not callable(fn):
            raise TypeError(
                "schedule must be a schedule (an object with a lr(step) method) or a callable "
                f"step -> lr; received {type(schedule).__name__} {schedule!r:.80}"
            )
        self.schedule = schedule
        self._inner = fn
        self.warmup_steps = _int("warmup_steps", warmup_steps, 0)
        self.start_factor = _validate.in_range("start_factor", start_factor, 0.0, 1.0, True)

    def _lr(self, step: int) -> float:
        w = self.warmup_steps
        if step >= w:
            return float(self._inner(step - w))
        f = self.start_factor
        return float(self._inner(0)) * (f + (1.0 - f) * step / w)

    def state_dict(self) -> dict:
        sd = getattr(self.schedule, "state_dict", None)
        return {"schedule": sd() if callable(sd) else {}}

    def load_state_dict(self, state: dict) -> None:
        _check_state_keys("Warmup", state, ("schedule",))
        load = getattr(self.schedule, "load_state_dict", None)
        if callable(load):
            load(state["schedule"])
        elif state["schedule"]:
            raise ValueError(
                "Warmup.load_state_dict: the wrapped schedule has no state; "
                f"received {state['schedule']!r:.80}"
            )

    def _fields(self) -> str:
        return f"{self.schedule!r}, warmup_steps={self.warmup_steps}, start_factor={self.start_factor!r}"


class ReduceOnPlateau(Schedule):
    """Multiplies the learning rate by ``factor`` when a monitored value (a
    validation loss, say) stops improving.

    The training loop calls ``observe(value)`` once per epoch; it returns the
    learning rate for the steps that follow, which ``lr(step)`` then returns
    whatever the step. The rule (torch's ``ReduceLROnPlateau`` with an
    absolute threshold)::

        improved = value < best - min_delta     (mode "min")
                   value > best + min_delta     (mode "max")
        if improved: best = value; num_bad_epochs = 0
        else:        num_bad_epochs += 1
        if cooldown_counter > 0:                # just reduced: bad epochs do not count
            cooldown_counter -= 1; num_bad_epochs = 0
        if num_bad_epochs > patience:
            lr = max(lr * factor, min_lr)
            cooldown_counter = cooldown; num_bad_epochs = 0

    So with ``patience=2`` the lr drops on the third epoch in a row without
    improvement (torch's convention; Keras drops it one epoch earlier). A NaN
    value never improves. The first observed value always sets ``best``.

    Defaults: ``factor=0.1`` (in (0, 1)), ``patience=10``, ``min_delta=1e-4``,
    ``mode="min"``, ``cooldown=0``, ``min_lr=0.0`` (<= ``lr``).
    ``state_dict()`` holds the current lr, ``best``, ``num_bad_epochs``,
    ``cooldown_counter`` and ``num_observations``.
    """

    _STATE = ("lr", "best", "num_bad_epochs", "cooldown_counter", "num_observations")

    def __init__(self, lr: float, factor: float = 0.1, patience: int = 10, min_delta: float = 1e-4,
                 mode: str = "min", cooldown: int = 0, min_lr: float = 0.0):
        self.base_lr = _lr("lr", lr)
        self.factor = _validate.real("factor", factor)
        if not 0.0 < self.factor < 1.0:
            raise ValueError(f"factor must be in (0, 1); received {self.factor!r}")
        self.patience = _int("patience", patience, 0)
        self.min_delta = _lr("min_delta", min_delta)
        if mode not in ("min", "max"):
            raise ValueError(f"mode must be 'min' or 'max'; received {mode!r}")
        self.mode = mode
        self.cooldown = _int("cooldown", cooldown, 0)
        self.min_lr = _lr("min_lr", min_lr)
        if self.min_lr > self.base_lr:
            raise ValueError(f"min_lr must be <= lr ({self.base_lr!r}); received {self.min_lr!r}")
        self.current_lr = self.base_lr
        self.best = math.inf if mode == "min" else -math.inf
        self.num_bad_epochs = 0
        self.cooldown_counter = 0
        self.num_observations = 0

    def _lr(self, step: int) -> float:
        return self.current_lr

    def _improved(self, value: float) -> bool:
        if self.mode == "min":
            return value < self.best - self.min_delta
        return value > self.best + self.min_delta

    def observe(self, value) -> float:
        """Record one epoch's monitored value; returns the (possibly reduced)
        learning rate."""
        if hasattr(value, "item") and getattr(value, "size", 1) == 1:
            value = value.item()  # 0-d / 1-element arrays, numpy scalars
        v = _validate.real("value", value)
        self.num_observations += 1
        if self.num_observations == 1 and not math.isnan(v):
            improved = True  # the first value sets best, even +-inf
        else:
            improved = self._improved(v)
        if improved:
            self.best = v
            self.num_bad_epochs = 0
        else:
            self.num_bad_epochs += 1
        if self.cooldown_counter > 0:
            self.cooldown_counter -= 1
            self.num_bad_epochs = 0
        if self.num_bad_epochs > self.patience:
            new_lr = max(self.current_lr * self.factor, self.min_lr)
            if new_lr < self.current_lr:
                self.current_lr = new_lr
                self.cooldown_counter = self.cooldown
            self.num_bad_epochs = 0
        return self.current_lr

    def state_dict(self) -> dict:
        return {
            "lr": self.current_lr,
            "best": self.best,
            "num_bad_epochs": self.num_bad_epochs,
            "cooldown_counter": self.cooldown_counter,
            "num_observations": self.num_observations,
        }

    def load_state_dict(self, state: dict) -> None:
        _check_state_keys("ReduceOnPlateau", state, self._STATE)
        # check everything before changing anything
        lr = _lr("state['lr']", state["lr"])
        best = _validate.real("state['best']", state["best"])
        bad = _int("state['num_bad_epochs']", state["num_bad_epochs"], 0)
        cool = _int("state['cooldown_counter']", state["cooldown_counter"], 0)
        n = _int("state['num_observations']", state["num_observations"], 0)
        self.current_lr, self.best = lr, best
        self.num_bad_epochs, self.cooldown_counter, self.num_observations = bad, cool, n

    def _fields(self) -> str:
        return (f"lr={self.base_lr!r}, factor={self.factor!r}, patience={self.patience}, "
                f"min_delta={self.min_delta!r}, mode={self.mode!r}, cooldown={self.cooldown}, "
                f"min_lr={self.min_lr!r}")


class Function(Schedule):
    """``lr(step) = f(step)`` for a plain callable ``f`` (a function, a
    lambda, a Keras-style ``LearningRateSchedule``): each value is checked
    to be a finite number >= 0 (ValueError naming the step otherwise). Its
    state is empty: a resumed run is given the same callable again."""

    def __init__(self, f):
        if not callable(f):
            raise TypeError(f"f must be a callable step -> lr; received {type(f).__name__} {f!r:.80}")
        self.f = f

    def _lr(self, step: int) -> float:
        value = self.f(step)
        try:
            return _lr(f"the schedule's lr at step {step}", value)
        except TypeError:
            raise TypeError(f"the schedule {self.f!r:.80} returned {type(value).__name__} "
                            f"{value!r:.80} at step {step}; expected a number") from None

    def check(self, step: int) -> float:
        """The lr at ``step``, checked (fit calls it once before training)."""
        return self.lr(step)

    def _fields(self) -> str:
        return repr(self.f)


# ---------------------------------------------------------------------------
# by name
# ---------------------------------------------------------------------------
def _constant(lr, total_steps):
    return Constant(lr)


def _exponential(lr, total_steps):
    # 100x smaller at the last step
    return ExponentialDecay(lr, gamma=0.01 ** (1.0 / total_steps))


def _step_decay(lr, total_steps):
    # x0.1 after each third of training
    return StepDecay(lr, step_size=max(1, math.ceil(total_steps / 3)), gamma=0.1)


def _multistep(lr, total_steps):
    # x0.1 at 50% and at 75% of training (the ResNet recipe)
    ms = sorted({max(1, round(f * total_steps)) for f in (0.5, 0.75)})
    return MultiStep(lr, ms, gamma=0.1)


def _cosine(lr, total_steps):
    return CosineAnnealing(lr, total_steps)


def _warmup_cosine(lr, total_steps):
    # 5% linear warm-up (at least one step when there is room), then cosine to 0
    warmup = min(max(1, round(0.05 * total_steps)), total_steps - 1)
    return Warmup(CosineAnnealing(lr, total_steps - warmup), warmup)


_BUILDERS = {
    "constant": (_constant, False),
    "exponential": (_exponential, True),
    "step": (_step_decay, True),
    "multistep": (_multistep, True),
    "cosine": (_cosine, True),
    "warmup_cosine": (_warmup_cosine, True),
}

#: names accepted by :func:`get`
NAMES = tuple(_BUILDERS)


def get(spec, lr: float, total_steps: int | None = None):
    """A schedule from a name, for the command line; a schedule object (or
    any object with a ``lr(step)`` method) is returned as it is, and ``None``
    gives ``Constant(lr)``.

    Names and the defaults they take from ``total_steps`` (``T``, the number
    of optimizer steps of the whole run; every name but ``"constant"``
    needs it):

    - ``"constant"``: ``Constant(lr)``
    - ``"exponential"``: ``ExponentialDecay(lr, gamma=0.01 ** (1 / T))``, 100x
      smaller at step ``T``
    - ``"step"``: ``StepDecay(lr, step_size=ceil(T / 3), gamma=0.1)``
    - ``"multistep"``: ``MultiStep(lr, [T/2, 3T/4] rounded, gamma=0.1)``
    - ``"cosine"``: ``CosineAnnealing(lr, T)``
    - ``"warmup_cosine"``: ``Warmup(CosineAnnealing(lr, T - W), W)`` with
      ``W = round(0.05 T)`` clipped to [1, T - 1] (0 when ``T == 1``)
    """
    if spec is None:
        return Constant(lr)
    if not isinstance(spec, str):
        if not isinstance(spec, type) and callable(getattr(spec, "lr", None)):
            return spec
        if callable(spec) and not isinstance(spec, type):
            return Function(spec)
        raise TypeError(
            f"schedule must be a name (one of {list(NAMES)}) or a schedule object; "
            f"received {type(spec).__name__} {spec!r:.80}"
        )
    key = spec.strip().lower()
    if key not in _BUILDERS:
        raise ValueError(f"unknown schedule {spec!r}; expected one of {list(NAMES)}")
    build, needs_total = _BUILDERS[key]
    if total_steps is None:
        if needs_total:
            raise ValueError(f"schedule {key!r} needs total_steps (an int >= 1); received None")
    else:
        total_steps = _int("total_steps", total_steps, 1)
    return build(lr, total_steps)
