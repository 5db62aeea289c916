"""Bad input: every rejected call raises ValueError or TypeError whose message
names the argument, and changes nothing: params, gradients and every state
buffer stay bitwise as they were (for optimizer objects, the state_dict too).

The bad element sits in the LAST position of a three-array list, so an
implementation that updates array by array and checks as it goes would have
modified the first two before raising. For optimizer objects with two
parameter groups the bad gradient belongs to the second group, so the first
group's kernel must not have run.
"""

from __future__ import annotations

import math
import re

import numpy as np
import pytest

from conftest import (SPEC, SPECS, assert_state_dict_equal, assert_unchanged, kernel_step,
                      make_rng, random_list, snapshot)

SHAPES = [(5,), (6,), (3, 4)]  # the last one 2-D, so a Fortran-order array can have its shape
ERRORS = (ValueError, TypeError)


def expect_error(fn, arrays, name, types=ERRORS, extra_check=None, labels=None):
    """Run ``fn``, which must raise one of ``types``; then check that nothing
    in ``arrays`` changed (first: that is the worse failure) and that the
    message names ``name``."""
    snap = snapshot(arrays)
    with pytest.raises(types) as info:
        fn()
    assert_unchanged(arrays, snap, labels)
    if extra_check is not None:
        extra_check()
    message = str(info.value)
    assert name in message, f"message does not name {name!r}: {message!r}"
    return info.value


# ---------------------------------------------------------------------------
# a valid functional call, to be spoiled one argument at a time
# ---------------------------------------------------------------------------
class Call:
    """A valid ``spec.op`` call over three arrays (the heavy variant: every
    state buffer in use); states hold arbitrary values so that any write
    shows."""

    def __init__(self, spec, dtype=np.float64, hyper=None):
        rng = make_rng("bad", spec.name)
        self.spec = spec
        self.hyper = dict(spec.heavy if hyper is None else hyper)
        self.slots = {"params": random_list(rng, SHAPES, dtype),
                      "grads": random_list(rng, SHAPES, dtype)}
        for name in spec.state_names(self.hyper):
            self.slots[name] = [np.abs(a) + 0.5 for a in random_list(rng, SHAPES, dtype)]
        self.step = 3

    def run(self):
        s = dict(self.slots)
        params, grads = s.pop("params"), s.pop("grads")
        kernel_step(self.spec, params, grads, s, self.hyper, self.step)

    def arrays(self):
        return [a for v in self.slots.values() if v is not None for a in v
                if isinstance(a, np.ndarray)]

    def expect(self, name, types=ERRORS):
        return expect_error(self.run, self.arrays(), name, types, labels=self.labels())

    def labels(self):
        return [f"{k}[{i}]" for k, v in self.slots.items() if v is not None
                for i, a in enumerate(v) if isinstance(a, np.ndarray)]


def _call_ids():
    out = []
    for spec in SPECS:
        for slot in ["params", "grads"] + list(spec.state_names(spec.heavy)):
            out.append(pytest.param(spec, slot, id=f"{spec.name}-{slot}"))
    return out


CALL_SLOTS = _call_ids()
WRITTEN_SLOTS = [p for p in CALL_SLOTS if p.values[1] != "grads"]


# ---------------------------------------------------------------------------
# array replacements: each returns a bad stand-in for the good array `a`
# ---------------------------------------------------------------------------
def _unaligned(a):
    buf = np.zeros(a.nbytes + 1, np.uint8)
    out = buf[1:].view(a.dtype).reshape(a.shape)
    out[...] = a
    assert not out.flags.aligned
    return out


def _strided(a):
    out = np.zeros(a.shape[:-1] + (2 * a.shape[-1],), a.dtype)[..., ::2]
    out[...] = a
    return out


BAD_ARRAYS = {
    # dtype
    "int64": (lambda a: a.astype(np.int64), TypeError),
    "float16": (lambda a: a.astype(np.float16), TypeError),
    "mixed-float32": (lambda a: a.astype(np.float32), TypeError),  # one float32 in a float64 list
    # same kind and size, but not in native byte order: read as native floats
    # it gives garbage (its dtype.num is the native one's)
    "byteswapped": (lambda a: a.astype(a.dtype.newbyteorder()), TypeError),
    # layout
    "strided": (_strided, ValueError),
    "fortran": (np.asfortranarray, ValueError),
    "unaligned": (_unaligned, ValueError),
    # not an array
    "list": (lambda a: a.tolist(), TypeError),
}


@pytest.mark.parametrize("bad", list(BAD_ARRAYS))
@pytest.mark.parametrize("spec,slot", CALL_SLOTS)
def test_bad_array_in_last_position(spec, slot, bad):
    make, types = BAD_ARRAYS[bad]
    call = Call(spec)
    call.slots[slot][-1] = make(call.slots[slot][-1])
    call.expect(f"{slot}[2]", types)


@pytest.mark.parametrize("spec", SPECS, ids=repr)
def test_mixed_dtypes_float32_list_with_float64_state(spec):
    """The list's dtype is params[0]'s: float32 params with one float64 state."""
    call = Call(spec, dtype=np.float32)
    slot = spec.state_names(spec.heavy)[-1]
    call.slots[slot][-1] = call.slots[slot][-1].astype(np.float64)
    call.expect(f"{slot}[2]", TypeError)


@pytest.mark.parametrize("spec", SPECS, ids=repr)
def test_float16_params_without_master_weights(spec):
    """float16 params step only through float32 master weights."""
    call = Call(spec)
    for slot in call.slots:
        call.slots[slot] = [a.astype(np.float16) for a in call.slots[slot]]
    err = call.expect("master_params", ValueError)
    assert "float16" in str(err) and "received None" in str(err)


@pytest.mark.parametrize("spec", SPECS, ids=repr)
def test_int_params(spec):
    call = Call(spec)
    for slot in call.slots:
        call.slots[slot] = [a.astype(np.int32) for a in call.slots[slot]]
    err = call.expect("params[0]", TypeError)
    assert "float32, float64, float16 or bfloat16" in str(err) and "int32" in str(err)


@pytest.mark.parametrize("shape", [(4, 3), (3, 5), (12,)], ids=str)
@pytest.mark.parametrize("spec,slot", [p for p in CALL_SLOTS if p.values[1] != "params"])
def test_mismatched_shape(spec, slot, shape):
    call = Call(spec)
    call.slots[slot][-1] = np.zeros(shape)
    call.expect(f"{slot}[2]", ValueError)


@pytest.mark.parametrize("spec", SPECS, ids=repr)
def test_mismatched_shape_zero_size(spec):
    """Zero-size arrays are still checked: (0, 4) is not (4, 0)."""
    call = Call(spec)
    call.slots["params"][-1] = np.zeros((0, 4))
    for slot in call.slots:
        if slot != "params":
            call.slots[slot][-1] = np.zeros((0, 4))
    call.slots["grads"][-1] = np.zeros((4, 0))
    call.expect("grads[2]", ValueError)


@pytest.mark.parametrize("how", ["shorter", "longer"])
@pytest.mark.parametrize("spec,slot", CALL_SLOTS)
def test_mismatched_list_lengths(spec, slot, how):
    call = Call(spec)
    if how == "shorter":
        call.slots[slot] = call.slots[slot][:-1]
    else:
        call.slots[slot] = call.slots[slot] + [call.slots[slot][-1].copy()]
    # the params list sets the length: a wrong one is reported on the next list
    call.expect("grads" if slot == "params" else slot, ValueError)


@pytest.mark.parametrize("spec,slot", WRITTEN_SLOTS)
def test_read_only_array(spec, slot):
    call = Call(spec)
    call.slots[slot][-1].flags.writeable = False
    call.expect(f"{slot}[2]", ValueError)


@pytest.mark.parametrize("spec", SPECS, ids=repr)
def test_read_only_grads_are_accepted(spec):
    """Gradients are only read: read-only ones are fine, and are not written."""
    call = Call(spec)
    for g in call.slots["grads"]:
        g.flags.writeable = False
    before = snapshot(call.slots["grads"])
    call.run()
    assert_unchanged(call.slots["grads"], before)


@pytest.mark.parametrize("spec,slot", [p for p in CALL_SLOTS if p.values[1] != "params"])
def test_same_array_as_its_param(spec, slot):
    call = Call(spec)
    call.slots[slot][-1] = call.slots["params"][-1]
    err = call.expect(f"{slot}[2]", ValueError)
    assert "params[2]" in str(err)  # both sides of the aliasing are named


@pytest.mark.parametrize("offset", [1, 6, 11], ids=lambda o: f"offset{o}")
@pytest.mark.parametrize("spec,slot", [p for p in CALL_SLOTS if p.values[1] != "params"])
def test_overlapping_views_of_one_buffer(spec, slot, offset):
    """The param and another buffer are different arrays over overlapping
    memory of one base buffer."""
    call = Call(spec)
    base = np.zeros(12 + offset)
    p = base[:12].reshape(3, 4)
    other = base[offset:offset + 12].reshape(3, 4)
    p[...] = call.slots["params"][-1]
    call.slots["params"][-1] = p
    call.slots[slot][-1] = other
    expect_error(call.run, call.arrays() + [base], f"{slot}[2]", ValueError)


@pytest.mark.parametrize("spec", SPECS, ids=repr)
def test_overlap_across_positions(spec):
    """grads[2] overlapping params[1] (another position) also shares memory."""
    call = Call(spec)
    base = np.zeros(6 + 12)
    call.slots["params"][1] = base[:6]
    call.slots["grads"][-1] = base[3:15].reshape(3, 4)
    expect_error(call.run, call.arrays() + [base], "grads[2]", ValueError)


@pytest.mark.parametrize("spec", SPECS, ids=repr)
def test_first_param_not_an_array(spec):
    call = Call(spec)
    call.slots["params"][0] = call.slots["params"][0].tolist()
    call.expect("params[0]", TypeError)


@pytest.mark.parametrize("spec", SPECS, ids=repr)
def test_empty_lists(spec):
    call = Call(spec)
    for slot in call.slots:
        call.slots[slot] = []
    expect_error(call.run, [], "params", ValueError)


@pytest.mark.parametrize("spec", SPECS, ids=repr)
def test_empty_state_list(spec):
    call = Call(spec)
    slot = spec.state_names(spec.heavy)[-1]
    call.slots[slot] = []
    call.expect(slot, ValueError)


# ---------------------------------------------------------------------------
# hyperparameters and missing buffers (functional API)
# ---------------------------------------------------------------------------
COMMON_BAD = [
    (dict(lr=-0.1), "lr", ValueError),
    (dict(lr=math.nan), "lr", ValueError),
    (dict(lr="0.1"), "lr", TypeError),
    (dict(weight_decay=-0.01), "weight_decay", ValueError),
    (dict(l1=-1e-3), "l1", ValueError),
    (dict(maximize="yes"), "maximize", TypeError),
]
STEP_BAD = [
    (dict(step=0), "step", ValueError),
    (dict(step=-2), "step", ValueError),
    (dict(step=1.5), "step", TypeError),
]
SPECIFIC_BAD = {
    "sgd": [
        (dict(momentum=-0.5), "momentum", ValueError),
        (dict(momentum=math.nan), "momentum", ValueError),
        (dict(nesterov=True, momentum=0.0), "nesterov", ValueError),
        (dict(nesterov=True, momentum=0.9, dampening=0.1), "nesterov", ValueError),
    ],
    "adam": [
        (dict(betas=(1.0, 0.999)), "betas[0]", ValueError),
        (dict(betas=(-0.1, 0.999)), "betas[0]", ValueError),
        (dict(betas=(0.9, 1.0)), "betas[1]", ValueError),
        (dict(betas=(0.9, 1.5)), "betas[1]", ValueError),
        (dict(betas=(0.9, math.nan)), "betas[1]", ValueError),
        (dict(betas=0.9), "betas", ValueError),
        (dict(eps=-1e-8), "eps", ValueError),
        (dict(eps=math.nan), "eps", ValueError),
    ],
    "rmsprop": [
        (dict(alpha=1.5), "alpha", ValueError),
        (dict(alpha=-0.1), "alpha", ValueError),
        (dict(alpha=math.nan), "alpha", ValueError),
        (dict(momentum=-0.5), "momentum", ValueError),
        (dict(eps=-1e-8), "eps", ValueError),
    ],
    "adagrad": [
        (dict(lr_decay=-0.1), "lr_decay", ValueError),
        (dict(eps=-1e-10), "eps", ValueError),
    ],
}
SPECIFIC_BAD["adamw"] = SPECIFIC_BAD["adam"]


def _hyper_cases():
    out = []
    for spec in SPECS:
        cases = COMMON_BAD + (STEP_BAD if spec.takes_step else []) + SPECIFIC_BAD[spec.name]
        for change, name, exc in cases:
            label = ",".join(f"{k}={v!r}" for k, v in change.items())
            out.append(pytest.param(spec, change, name, exc, id=f"{spec.name}-{label}"))
    return out


@pytest.mark.parametrize("spec,change,name,exc", _hyper_cases())
def test_bad_hyperparameter(spec, change, name, exc):
    call = Call(spec)
    change = dict(change)
    if "step" in change:
        call.step = change.pop("step")
    call.hyper.update(change)
    call.expect(name, exc)


MISSING_BUFFER = [
    ("adam", dict(amsgrad=True), "max_exp_avg_sq"),
    ("adamw", dict(amsgrad=True), "max_exp_avg_sq"),
    ("sgd", dict(momentum=0.9), "momentum_buffer"),
    ("rmsprop", dict(momentum=0.9), "momentum_buffer"),
    ("rmsprop", dict(centered=True), "grad_avg"),
]


@pytest.mark.parametrize("name,flags,buffer", MISSING_BUFFER,
                         ids=[f"{n}-{b}" for n, _, b in MISSING_BUFFER])
def test_missing_buffer(name, flags, buffer):
    spec = SPEC[name]
    call = Call(spec, hyper={**spec.heavy, **flags})
    call.slots[buffer] = None
    call.expect(buffer, ValueError)


# ---------------------------------------------------------------------------
# optimizer objects
# ---------------------------------------------------------------------------
def _optimizer(spec, groups=2, dtype=np.float64, shapes=((5,), (6,), (3, 4), (3, 4)), hyper=None):
    """An optimizer over four params (two groups: [p0, p1] and [p2, p3],
    the second with its own lr) that has taken one good step."""
    rng = make_rng("bad-optim", spec.name)
    params = random_list(rng, shapes, dtype)
    hyper = dict(spec.heavy if hyper is None else hyper)
    if groups == 2:
        opt = spec.cls([{"params": params[:2]}, {"params": params[2:], "lr": hyper["lr"] / 2}], **hyper)
    else:
        opt = spec.cls(params, **hyper)
    opt.step(random_list(rng, shapes, dtype))
    return opt, params, random_list(rng, shapes, dtype)


def _expect_step_error(opt, params, grads, name, types=ERRORS):
    sd = opt.state_dict()
    arrays = [(f"params[{i}]", p) for i, p in enumerate(params)]
    if isinstance(grads, list):
        arrays += [(f"grads[{i}]", g) for i, g in enumerate(grads) if isinstance(g, np.ndarray)]
    expect_error(lambda: opt.step(grads), [a for _, a in arrays], name, types,
                 extra_check=lambda: assert_state_dict_equal(opt.state_dict(), sd),
                 labels=[n for n, _ in arrays])


def _grad_replacements():
    out = dict(BAD_ARRAYS)
    out["shape"] = (lambda a: np.zeros((4, 3)), ValueError)
    return out


GRAD_BAD = _grad_replacements()


@pytest.mark.parametrize("groups", [1, 2], ids=lambda g: f"{g}groups")
@pytest.mark.parametrize("bad", list(GRAD_BAD))
@pytest.mark.parametrize("spec", SPECS, ids=repr)
def test_optimizer_bad_grad_last(spec, bad, groups):
    make, types = GRAD_BAD[bad]
    opt, params, grads = _optimizer(spec, groups)
    grads[-1] = make(grads[-1])
    _expect_step_error(opt, params, grads, "grads[3]", types)


@pytest.mark.parametrize("groups", [1, 2], ids=lambda g: f"{g}groups")
@pytest.mark.parametrize("spec", SPECS, ids=repr)
def test_optimizer_grad_is_its_param(spec, groups):
    opt, params, grads = _optimizer(spec, groups)
    grads[-1] = params[-1]
    _expect_step_error(opt, params, grads, "grads[3]", ValueError)


@pytest.mark.parametrize("groups", [1, 2], ids=lambda g: f"{g}groups")
@pytest.mark.parametrize("spec", SPECS, ids=repr)
def test_optimizer_grad_overlaps_its_param(spec, groups):
    rng = make_rng("overlap-optim", spec.name)
    base = np.zeros(12 + 6)
    params = random_list(rng, [(5,), (6,), (3, 4)], np.float64)
    p3 = base[:12].reshape(3, 4)
    p3[...] = rng.standard_normal((3, 4))
    params.append(p3)
    hyper = dict(spec.heavy)
    if groups == 2:
        opt = spec.cls([{"params": params[:2]}, {"params": params[2:]}], **hyper)
    else:
        opt = spec.cls(params, **hyper)
    opt.step([np.ones_like(p) for p in params])
    grads = [np.ones_like(p) for p in params[:3]] + [base[6:18].reshape(3, 4)]
    _expect_step_error(opt, params + [base], grads, "grads[3]", ValueError)


@pytest.mark.parametrize("groups", [1, 2], ids=lambda g: f"{g}groups")
@pytest.mark.parametrize("spec", SPECS, ids=repr)
def test_optimizer_grad_overlaps_another_param(spec, groups):
    """grads[3] over the memory of params[2] (same group when there are two)."""
    opt, params, grads = _optimizer(spec, groups)
    grads[-1] = params[2].reshape(3, 4)
    _expect_step_error(opt, params, grads, "grads[3]", ValueError)


@pytest.mark.parametrize("groups", [1, 2], ids=lambda g: f"{g}groups")
@pytest.mark.parametrize("spec", SPECS, ids=repr)
def test_optimizer_same_grad_array_twice(spec, groups):
    """One array passed as the gradient of two params: the kernel rejects
    buffers that share memory, so the step must be rejected as a whole."""
    opt, params, grads = _optimizer(spec, groups)
    grads[-1] = grads[-2]
    _expect_step_error(opt, params, grads, "grads[3]", ValueError)


@pytest.mark.parametrize("n", [3, 5])
@pytest.mark.parametrize("spec", SPECS, ids=repr)
def test_optimizer_wrong_number_of_grads(spec, n):
    opt, params, grads = _optimizer(spec)
    grads = (grads + [grads[-1].copy()])[:n]
    _expect_step_error(opt, params, grads, "grads", ValueError)


@pytest.mark.parametrize("spec", SPECS, ids=repr)
def test_optimizer_grads_not_a_list(spec):
    opt, params, grads = _optimizer(spec)
    _expect_step_error(opt, params, {i: g for i, g in enumerate(grads)}, "grads", TypeError)


@pytest.mark.parametrize("groups", [1, 2], ids=lambda g: f"{g}groups")
@pytest.mark.parametrize("spec", SPECS, ids=repr)
def test_optimizer_param_made_read_only(spec, groups):
    """The last param turned read-only after construction."""
    opt, params, grads = _optimizer(spec, groups)
    params[-1].flags.writeable = False
    _expect_step_error(opt, params, grads, "params", ValueError)


def _edits(spec):
    out = [("lr", -1.0, "lr"), ("lr", math.nan, "lr"), ("weight_decay", -1.0, "weight_decay")]
    if spec.name in ("adam", "adamw"):
        out += [("betas", (1.5, 0.999), "betas[0]"), ("betas", (0.9, -0.5), "betas[1]"),
                ("eps", -1.0, "eps")]
    if spec.name == "sgd":
        out += [("momentum", -0.9, "momentum"), ("dampening", 0.5, "nesterov")]
    if spec.name == "rmsprop":
        out += [("alpha", 1.5, "alpha"), ("momentum", -0.9, "momentum")]
    if spec.name == "adagrad":
        out += [("lr_decay", -1.0, "lr_decay")]
    return [pytest.param(spec, k, v, n, id=f"{spec.name}-{k}={v!r}") for k, v, n in out]


@pytest.mark.parametrize("spec,key,value,name", [p for s in SPECS for p in _edits(s)])
def test_optimizer_bad_edited_hyperparameter_in_second_group(spec, key, value, name):
    opt, params, grads = _optimizer(spec)
    opt.param_groups[1][key] = value
    _expect_step_error(opt, params, grads, name)


@pytest.mark.parametrize("spec,key,value,name", [p for s in SPECS for p in _edits(s)])
def test_optimizer_bad_hyperparameter_in_constructor(spec, key, value, name):
    rng = make_rng("ctor", spec.name)
    params = random_list(rng, SHAPES, np.float64)
    hyper = {**spec.heavy, key: value}
    expect_error(lambda: spec.cls(params, **hyper), params, name)
    # in a param group of its own
    expect_error(lambda: spec.cls([{"params": params[:2]}, {"params": params[2:], key: value}],
                                  **spec.heavy), params, name)


def test_adagrad_negative_initial_accumulator_value():
    params = random_list(make_rng("ctor-adagrad"), SHAPES, np.float64)
    expect_error(lambda: SPEC["adagrad"].cls(params, initial_accumulator_value=-1.0), params,
                 "initial_accumulator_value", ValueError)


BAD_PARAMS = {
    "int64": (lambda a: a.astype(np.int64), TypeError),
    "float16": (lambda a: a.astype(np.float16), TypeError),
    "byteswapped": (lambda a: a.astype(a.dtype.newbyteorder()), TypeError),
    "strided": (_strided, ValueError),
    "fortran": (np.asfortranarray, ValueError),
    "read-only": (lambda a: np.frombuffer(a.tobytes(), a.dtype).reshape(a.shape), ValueError),
    "list": (lambda a: a.tolist(), TypeError),
}


@pytest.mark.parametrize("bad", list(BAD_PARAMS))
@pytest.mark.parametrize("spec", SPECS, ids=repr)
def test_optimizer_constructor_bad_param_last(spec, bad):
    make, types = BAD_PARAMS[bad]
    params = random_list(make_rng("ctor-param", spec.name), SHAPES, np.float64)
    params[-1] = make(params[-1])
    arrays = [p for p in params if isinstance(p, np.ndarray)]
    expect_error(lambda: spec.cls(params, **spec.heavy), arrays, "['params'][2]", types)


@pytest.mark.parametrize("spec", SPECS, ids=repr)
def test_optimizer_constructor_rejects_repeated_param_empty_and_bare_array(spec):
    params = random_list(make_rng("ctor-dup", spec.name), SHAPES, np.float64)
    expect_error(lambda: spec.cls(params + [params[0]], **spec.heavy), params, "['params'][3]",
                 ValueError)
    expect_error(lambda: spec.cls([], **spec.heavy), params, "params", ValueError)
    expect_error(lambda: spec.cls(params[0], **spec.heavy), params, "params", TypeError)
    expect_error(lambda: spec.cls(params, bogus=1.0), params, "bogus", TypeError)


# ---------------------------------------------------------------------------
# load_state_dict
# ---------------------------------------------------------------------------
OTHER = {"sgd": "adam", "adam": "sgd", "adamw": "rmsprop", "rmsprop": "adagrad", "adagrad": "sgd"}


def _expect_load_error(opt, params, sd, name, types=ValueError):
    before = opt.state_dict()
    expect_error(lambda: opt.load_state_dict(sd), params, name, types,
                 extra_check=lambda: assert_state_dict_equal(opt.state_dict(), before))


@pytest.mark.parametrize("spec", SPECS, ids=repr)
def test_load_state_dict_from_another_optimizer(spec):
    opt, params, _ = _optimizer(spec)
    other, _, _ = _optimizer(SPEC[OTHER[spec.name]])
    _expect_load_error(opt, params, other.state_dict(), "state_dict")


@pytest.mark.parametrize("spec", SPECS, ids=repr)
def test_load_state_dict_wrong_shapes(spec):
    opt, params, _ = _optimizer(spec)
    sd = opt.state_dict()
    name = next(k for k in sd["state"][3] if k != "step")
    sd["state"][3][name] = np.zeros((4, 3))
    _expect_load_error(opt, params, sd, repr(name))


@pytest.mark.parametrize("spec", SPECS, ids=repr)
def test_load_state_dict_wrong_number_of_groups(spec):
    opt, params, _ = _optimizer(spec, groups=2)
    one, _, _ = _optimizer(spec, groups=1)
    _expect_load_error(opt, params, one.state_dict(), "param groups")
    three = opt.state_dict()
    three["param_groups"].append(dict(three["param_groups"][-1]))
    _expect_load_error(opt, params, three, "param groups")


@pytest.mark.parametrize("spec", SPECS, ids=repr)
def test_load_state_dict_wrong_number_of_params_in_a_group(spec):
    opt, params, _ = _optimizer(spec, groups=2)
    sd = opt.state_dict()
    sd["param_groups"][1]["params"] = sd["param_groups"][1]["params"][:1]
    _expect_load_error(opt, params, sd, "param_groups[1]")


@pytest.mark.parametrize("spec", SPECS, ids=repr)
def test_load_state_dict_missing_state_buffer_or_step(spec):
    opt, params, _ = _optimizer(spec)
    sd = opt.state_dict()
    name = next(k for k in sd["state"][3] if k != "step")
    del sd["state"][3][name]
    _expect_load_error(opt, params, sd, "state[3]")
    sd = opt.state_dict()
    del sd["state"][3]["step"]
    _expect_load_error(opt, params, sd, "state[3]")
    sd = opt.state_dict()
    sd["state"][3]["step"] = 0.0
    _expect_load_error(opt, params, sd, "step")


@pytest.mark.parametrize("spec", SPECS, ids=repr)
def test_load_state_dict_bad_hyperparameter_in_last_group(spec):
    opt, params, _ = _optimizer(spec)
    sd = opt.state_dict()
    sd["param_groups"][1]["lr"] = -1.0
    _expect_load_error(opt, params, sd, "lr")


@pytest.mark.parametrize("spec", SPECS, ids=repr)
def test_load_state_dict_not_a_state_dict(spec):
    opt, params, _ = _optimizer(spec)
    _expect_load_error(opt, params, {"state": {}}, "state_dict")
    _expect_load_error(opt, params, [], "state_dict")


def test_messages_say_expected_and_received():
    """STYLE.md: the argument, what was expected and what was received."""
    call = Call(SPEC["adam"])
    call.hyper["betas"] = (1.5, 0.999)
    err = call.expect("betas[0]")
    assert re.search(r"\[0, 1\).*1\.5", str(err))
    call = Call(SPEC["adam"])
    call.slots["grads"][-1] = call.slots["grads"][-1].astype(np.float32)
    err = call.expect("grads[2]")
    assert "float64" in str(err) and "float32" in str(err)


# ---------------------------------------------------------------------------
# parameter arenas: params that tile one flat array are stepped as one array;
# the per-gradient checks must still hold when the gradients tile one too
# ---------------------------------------------------------------------------
ARENA_SHAPES = [(2,), (3,), (5,)]


def _tile(flat, shapes=ARENA_SHAPES):
    out, offset = [], 0
    for s in shapes:
        n = int(np.prod(s))
        out.append(flat[offset:offset + n].reshape(s))
        offset += n
    return out


def _arena_optimizer(spec):
    rng = make_rng("arena-bad", spec.name)
    flat = random_list(rng, [(10,)], np.float64)[0]
    params = _tile(flat)
    opt = spec.cls(params, **spec.heavy)
    opt.step(_tile(random_list(rng, [(10,)], np.float64)[0]))
    return opt, params, flat, random_list(rng, [(10,)], np.float64)[0]


@pytest.mark.parametrize("shapes", [[(2,), (3,), (5, 1)], [(2,), (5,), (3,)], [(5,), (5,), (0,)]],
                         ids=["last-2d", "swapped-tail", "other-split"])
@pytest.mark.parametrize("spec", SPECS, ids=repr)
def test_arena_grads_with_other_shapes(spec, shapes):
    """Gradients that tile one array of the arena's size, but not with the
    params' shapes, are rejected as separate gradients would be."""
    opt, params, flat, gflat = _arena_optimizer(spec)
    grads = _tile(gflat, shapes)
    bad = next(i for i, (g, p) in enumerate(zip(grads, params)) if g.shape != p.shape)
    _expect_step_error(opt, params + [flat], grads, f"grads[{bad}]", ValueError)


@pytest.mark.parametrize("spec", SPECS, ids=repr)
def test_arena_grads_other_dtype(spec):
    opt, params, flat, gflat = _arena_optimizer(spec)
    grads = _tile(gflat.astype(np.float32))
    _expect_step_error(opt, params + [flat], grads, "grads[", TypeError)


@pytest.mark.parametrize("tiled", [True, False], ids=["tiled-grads", "separate-grads"])
@pytest.mark.parametrize("spec", SPECS, ids=repr)
def test_arena_param_made_read_only(spec, tiled):
    """A param view turned read-only after construction is not written
    through the arena either."""
    opt, params, flat, gflat = _arena_optimizer(spec)
    params[-1].flags.writeable = False
    grads = _tile(gflat) if tiled else [g.copy() for g in _tile(gflat)]
    _expect_step_error(opt, params + [flat], grads, "params", ValueError)


@pytest.mark.parametrize("spec", SPECS, ids=repr)
def test_arena_grads_are_the_params(spec):
    opt, params, flat, _ = _arena_optimizer(spec)
    _expect_step_error(opt, params + [flat], list(params), "grads", ValueError)
