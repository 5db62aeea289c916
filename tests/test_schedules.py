"""Learning-rate schedules: each against its formula, ReduceOnPlateau's
rules and state, get(), and argument checks."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fusedtrain import schedules
from fusedtrain.schedules import (
    Constant,
    CosineAnnealing,
    ExponentialDecay,
    MultiStep,
    ReduceOnPlateau,
    StepDecay,
    Warmup,
)

STEPS = (0, 1, 2, 3, 7, 9, 10, 11, 29, 30, 99, 100, 101, 1000)


# ---------------------------------------------------------------------------
# closed forms
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("schedule, formula", [
    (Constant(0.3), lambda s: 0.3),
    (ExponentialDecay(0.5, 0.9), lambda s: 0.5 * 0.9 ** s),
    (ExponentialDecay(0.5, 0.9, every=10), lambda s: 0.5 * 0.9 ** (s // 10)),
    (StepDecay(1.0, 30), lambda s: 1.0 * 0.1 ** (s // 30)),
    (StepDecay(0.2, 7, gamma=0.5), lambda s: 0.2 * 0.5 ** (s // 7)),
    (MultiStep(0.1, [10, 30, 100]), lambda s: 0.1 * 0.1 ** sum(m <= s for m in (10, 30, 100))),
    (MultiStep(0.1, [], gamma=0.5), lambda s: 0.1),
    (CosineAnnealing(0.1, 100),
     lambda s: 0.0 + 0.1 * (1 + math.cos(math.pi * min(s, 100) / 100)) / 2),
    (CosineAnnealing(1.0, 30, min_lr=0.1),
     lambda s: 0.1 + 0.9 * (1 + math.cos(math.pi * min(s, 30) / 30)) / 2),
], ids=repr)
def test_closed_form(schedule, formula):
    for s in STEPS:
        got = schedule.lr(s)
        assert type(got) is float
        assert got == pytest.approx(formula(s), rel=1e-14, abs=1e-300), s
        assert schedule(s) == got
        assert schedule.lr(np.int64(s)) == got
    assert schedule.state_dict() == {}
    schedule.load_state_dict({})


def test_cosine_end_points():
    c = CosineAnnealing(0.4, 50, min_lr=0.01)
    assert c.lr(0) == 0.4
    assert c.lr(25) == pytest.approx(0.205, rel=1e-14)
    assert c.lr(50) == c.lr(10_000) == pytest.approx(0.01, rel=1e-14)
    lrs = [c.lr(s) for s in range(51)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))


def test_multistep_milestone_boundaries():
    m = MultiStep(1.0, (5, 8), gamma=0.5)
    assert [m.lr(s) for s in (0, 4, 5, 7, 8, 9)] == [1.0, 1.0, 0.5, 0.5, 0.25, 0.25]


def test_warmup_ramp_then_shifted_schedule():
    inner = CosineAnnealing(0.1, 90)
    w = Warmup(inner, 10, start_factor=0.2)
    for s in range(10):
        assert w.lr(s) == pytest.approx(0.1 * (0.2 + 0.8 * s / 10), rel=1e-14)
    for s in (10, 11, 50, 100, 200):
        assert w.lr(s) == inner.lr(s - 10)
    assert w.lr(10) == 0.1  # continuous: the ramp ends where the schedule starts
    assert Warmup(inner, 10).lr(0) == 0.0  # default start_factor 0


def test_warmup_zero_steps_and_callable():
    inner = StepDecay(1.0, 3)
    w = Warmup(inner, 0)
    assert [w.lr(s) for s in range(8)] == [inner.lr(s) for s in range(8)]
    f = Warmup(lambda step: 2.0 / (1 + step), 4, start_factor=0.5)
    assert [f.lr(s) for s in range(6)] == pytest.approx([1.0, 1.25, 1.5, 1.75, 2.0, 1.0])


def test_warmup_state_is_the_wrapped_schedule_state():
    inner = ReduceOnPlateau(1.0, patience=0)
    w = Warmup(inner, 5)
    inner.observe(1.0)
    inner.observe(2.0)  # drops to 0.1
    sd = w.state_dict()
    assert sd == {"schedule": inner.state_dict()}
    other = Warmup(ReduceOnPlateau(1.0, patience=0), 5)
    other.load_state_dict(sd)
    assert other.lr(5) == pytest.approx(0.1) and other.lr(0) == 0.0
    assert Warmup(Constant(1.0), 3).state_dict() == {"schedule": {}}
    with pytest.raises(ValueError, match="no state"):
        Warmup(lambda s: 1.0, 3).load_state_dict({"schedule": {"x": 1}})
    with pytest.raises(ValueError, match="missing"):
        w.load_state_dict({})


# ---------------------------------------------------------------------------
# ReduceOnPlateau
# ---------------------------------------------------------------------------
def run(sched, values):
    return [sched.observe(v) for v in values]


def test_plateau_patience():
    r = ReduceOnPlateau(1.0, factor=0.5, patience=2, min_delta=0.0)
    # improve, improve, then 3 bad epochs: reduced on the third (> patience)
    assert run(r, [5.0, 4.0, 4.0, 4.5, 4.0]) == [1.0, 1.0, 1.0, 1.0, 0.5]
    assert r.num_bad_epochs == 0 and r.best == 4.0
    # the counter restarts after a reduction
    assert run(r, [4.0, 4.0, 4.0]) == [0.5, 0.5, 0.25]
    assert r.lr(0) == r.lr(12345) == 0.25


def test_plateau_improvement_resets_counter_and_min_delta():
    r = ReduceOnPlateau(1.0, factor=0.1, patience=1, min_delta=0.1)
    # 0.95 is not better than 1.0 by more than min_delta: bad; 0.85 is good
    assert run(r, [1.0, 0.95, 0.85, 0.8, 0.79]) == [1.0, 1.0, 1.0, 1.0, pytest.approx(0.1)]
    assert r.best == 0.85


def test_plateau_cooldown():
    r = ReduceOnPlateau(1.0, factor=0.5, patience=0, min_delta=0.0, cooldown=2)
    lrs = run(r, [1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0])
    # patience 0: each bad epoch reduces, except the 2 cooldown epochs after one
    assert lrs == [1.0, 0.5, 0.5, 0.5, 0.25, 0.25, 0.25]


def test_plateau_min_lr():
    r = ReduceOnPlateau(1.0, factor=0.1, patience=0, min_delta=0.0, min_lr=0.05)
    assert run(r, [1.0, 2.0, 2.0, 2.0]) == [1.0, pytest.approx(0.1), 0.05, 0.05]


def test_plateau_mode_max():
    r = ReduceOnPlateau(0.1, factor=0.5, patience=1, min_delta=0.01, mode="max")
    assert run(r, [0.5, 0.6, 0.605, 0.6, 0.7, 0.69]) == [0.1, 0.1, 0.1, 0.05, 0.05, 0.05]
    assert r.best == 0.7


def test_plateau_nan_is_not_an_improvement():
    r = ReduceOnPlateau(1.0, factor=0.5, patience=1)
    assert run(r, [float("nan"), float("nan"), 3.0]) == [1.0, 0.5, 0.5]
    assert r.best == 3.0


def test_plateau_accepts_numpy_values():
    r = ReduceOnPlateau(1.0)
    r.observe(np.float32(2.0))
    r.observe(np.array(1.0))
    assert r.best == 1.0
    with pytest.raises(TypeError, match="value must be a real number"):
        r.observe("1.0")


def test_plateau_state_round_trip():
    values = [3.0, 2.0, 2.5, 2.4, 2.6, 2.7, 1.0, 1.5, 1.6, 1.7, 1.8, 1.9]
    kw = dict(factor=0.5, patience=1, cooldown=1, min_lr=0.01)
    a = ReduceOnPlateau(1.0, **kw)
    run(a, values[:5])
    sd = a.state_dict()
    assert set(sd) == {"lr", "best", "num_bad_epochs", "cooldown_counter", "num_observations"}
    b = ReduceOnPlateau(1.0, **kw)
    b.load_state_dict(sd)
    assert b.state_dict() == sd
    assert run(a, values[5:]) == run(b, values[5:])
    assert a.state_dict() == b.state_dict()


def test_plateau_load_state_dict_checks_before_changing():
    r = ReduceOnPlateau(1.0)
    before = r.state_dict()
    with pytest.raises(ValueError, match=r"missing \['num_observations'\], unexpected \['extra'\]"):
        r.load_state_dict({**{k: v for k, v in before.items() if k != "num_observations"}, "extra": 1})
    with pytest.raises(ValueError, match=r"state\['num_bad_epochs'\] must be an int >= 0; received -1"):
        r.load_state_dict({**before, "lr": 0.5, "num_bad_epochs": -1})
    with pytest.raises(TypeError, match="state must be a dict"):
        r.load_state_dict([("lr", 1.0)])
    assert r.state_dict() == before


# ---------------------------------------------------------------------------
# get
# ---------------------------------------------------------------------------
def test_get_names():
    assert schedules.NAMES == ("constant", "exponential", "step", "multistep", "cosine", "warmup_cosine")
    T = 1000
    c = schedules.get("constant", 0.1)
    assert isinstance(c, Constant) and c.lr(10**6) == 0.1
    e = schedules.get("exponential", 0.1, T)
    assert isinstance(e, ExponentialDecay) and e.lr(T) == pytest.approx(0.001, rel=1e-9)
    s = schedules.get("step", 0.1, T)
    assert isinstance(s, StepDecay) and s.step_size == 334
    m = schedules.get("multistep", 0.1, T)
    assert isinstance(m, MultiStep) and m.milestones == (500, 750)
    cos = schedules.get("cosine", 0.1, T)
    assert isinstance(cos, CosineAnnealing) and cos.total_steps == T and cos.lr(T) == 0.0
    w = schedules.get("Warmup_Cosine", 0.1, T)
    assert isinstance(w, Warmup) and w.warmup_steps == 50 and w.schedule.total_steps == 950
    assert w.lr(0) == 0.0 and w.lr(50) == 0.1 and w.lr(T) == 0.0


@pytest.mark.parametrize("name", schedules.NAMES)
@pytest.mark.parametrize("total", [1, 2, 3, 7])
def test_get_small_totals(name, total):
    s = schedules.get(name, 0.5, total)
    lrs = [s.lr(i) for i in range(total + 2)]
    assert all(0.0 <= v <= 0.5 for v in lrs)


def test_get_passes_objects_through():
    r = ReduceOnPlateau(0.1)
    assert schedules.get(r, 123.0) is r
    assert isinstance(schedules.get(None, 0.2), Constant)


def test_get_errors():
    with pytest.raises(ValueError, match=r"unknown schedule 'linear'; expected one of \['constant', "):
        schedules.get("linear", 0.1, 10)
    with pytest.raises(ValueError, match="schedule 'cosine' needs total_steps"):
        schedules.get("cosine", 0.1)
    with pytest.raises(ValueError, match="total_steps must be an int >= 1; received 0"):
        schedules.get("cosine", 0.1, 0)
    with pytest.raises(TypeError, match="schedule must be a name"):
        schedules.get(3, 0.1)
    with pytest.raises(TypeError, match="schedule must be a name"):
        schedules.get(Constant, 0.1)  # the class, not an instance
    with pytest.raises(ValueError, match="lr must be >= 0; received -1.0"):
        schedules.get("constant", -1.0)


# ---------------------------------------------------------------------------
# argument checks
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("make, exc, message", [
    (lambda: Constant(-1.0), ValueError, "lr must be >= 0; received -1.0"),
    (lambda: Constant(float("nan")), ValueError, "lr must be >= 0; received nan"),
    (lambda: Constant(float("inf")), ValueError, "lr must be finite; received inf"),
    (lambda: Constant("0.1"), TypeError, "lr must be a real number; received str '0.1'"),
    (lambda: Constant(True), TypeError, "lr must be a real number; received bool"),
    (lambda: ExponentialDecay(0.1, 0.0), ValueError, "gamma must be a finite number > 0; received 0.0"),
    (lambda: ExponentialDecay(0.1, 0.9, every=0), ValueError, "every must be an int >= 1; received 0"),
    (lambda: ExponentialDecay(0.1, 0.9, every=2.0), TypeError, "every must be an int >= 1; received float 2.0"),
    (lambda: StepDecay(0.1, 0), ValueError, "step_size must be an int >= 1; received 0"),
    (lambda: StepDecay(0.1, 10, gamma=-0.5), ValueError, "gamma must be a finite number > 0; received -0.5"),
    (lambda: MultiStep(0.1, 10), TypeError, "milestones must be a sequence of ints >= 1; received int 10"),
    (lambda: MultiStep(0.1, [10, 5]), ValueError, r"milestones must be strictly increasing; received \[10, 5\]"),
    (lambda: MultiStep(0.1, [5, 5]), ValueError, "strictly increasing"),
    (lambda: MultiStep(0.1, [0, 5]), ValueError, r"milestones\[0\] must be an int >= 1; received 0"),
    (lambda: MultiStep(0.1, [1.5]), TypeError, r"milestones\[0\] must be an int >= 1; received float 1.5"),
    (lambda: CosineAnnealing(0.1, 0), ValueError, "total_steps must be an int >= 1; received 0"),
    (lambda: CosineAnnealing(0.1, 10, min_lr=0.2), ValueError, r"min_lr must be <= lr \(0.1\); received 0.2"),
    (lambda: CosineAnnealing(0.1, 10, min_lr=-0.1), ValueError, "min_lr must be >= 0; received -0.1"),
    (lambda: Warmup(0.1, 10), TypeError, "schedule must be a schedule"),
    (lambda: Warmup(Constant, 10), TypeError, "schedule must be a schedule"),
    (lambda: Warmup(Constant(0.1), -1), ValueError, "warmup_steps must be an int >= 0; received -1"),
    (lambda: Warmup(Constant(0.1), 5, start_factor=1.5), ValueError,
     r"start_factor must be in \[0, 1\]; received 1.5"),
    (lambda: ReduceOnPlateau(0.1, factor=1.0), ValueError, r"factor must be in \(0, 1\); received 1.0"),
    (lambda: ReduceOnPlateau(0.1, factor=0.0), ValueError, r"factor must be in \(0, 1\); received 0.0"),
    (lambda: ReduceOnPlateau(0.1, patience=-1), ValueError, "patience must be an int >= 0; received -1"),
    (lambda: ReduceOnPlateau(0.1, min_delta=-1e-3), ValueError, "min_delta must be >= 0; received -0.001"),
    (lambda: ReduceOnPlateau(0.1, mode="lower"), ValueError, "mode must be 'min' or 'max'; received 'lower'"),
    (lambda: ReduceOnPlateau(0.1, cooldown=1.5), TypeError, "cooldown must be an int >= 0; received float 1.5"),
    (lambda: ReduceOnPlateau(0.1, min_lr=1.0), ValueError, r"min_lr must be <= lr \(0.1\); received 1.0"),
])
def test_bad_arguments(make, exc, message):
    with pytest.raises(exc, match=message):
        make()


@pytest.mark.parametrize("schedule", [
    Constant(0.1), ExponentialDecay(0.1, 0.5), StepDecay(0.1, 2), MultiStep(0.1, [3]),
    CosineAnnealing(0.1, 10), Warmup(Constant(0.1), 3), ReduceOnPlateau(0.1),
], ids=lambda s: type(s).__name__)
def test_bad_step(schedule):
    with pytest.raises(ValueError, match="step must be an int >= 0; received -1"):
        schedule.lr(-1)
    with pytest.raises(TypeError, match="step must be an int >= 0; received float 1.0"):
        schedule.lr(1.0)
    with pytest.raises(TypeError, match="step must be an int >= 0; received bool True"):
        schedule(True)


def test_closed_form_state_must_be_empty():
    with pytest.raises(ValueError, match=r"unexpected \['lr'\]"):
        Constant(0.1).load_state_dict({"lr": 0.2})


def test_function_schedule_wraps_a_plain_callable():
    f = schedules.get(lambda step: 0.1 * 0.5 ** step, 0.0)
    assert isinstance(f, schedules.Function) and f.lr(2) == 0.025 and f(3) == 0.0125
    assert f.state_dict() == {}
    with pytest.raises(ValueError, match="lr at step 1 must be finite"):
        schedules.Function(lambda step: float("inf")).lr(1)
    with pytest.raises(TypeError, match="returned NoneType"):
        schedules.Function(lambda step: None).lr(0)
    with pytest.raises(TypeError, match="f must be a callable"):
        schedules.Function(3)
