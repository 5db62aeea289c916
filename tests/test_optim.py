"""fusedtrain.optim: the shared properties of every optimizer object, table
driven across all of them (optax's _OPTIMIZERS_UNDER_TEST): dtype kept, state
shapes stable, a quadratic converges, state_dict round-trips; plus parameter
groups, learning-rate edits, agreement with the functional kernels and the
NumPy references, and Adagrad's initial accumulator."""

from __future__ import annotations

import numpy as np
import pytest

from fusedtrain import optim
from conftest import (DTYPES, SPEC, SPECS, assert_buffers_close, assert_state_dict_equal,
                      dtype_id, hyper_id, kernel_step, make_rng, make_states, random_list,
                      reference_step)

SHAPES = [(7,), (3, 11), (1,), (1000,)]


def _full_hyper(spec, hyper):
    """``hyper`` completed with the class defaults (what the object runs)."""
    return {**spec.cls.defaults_, **hyper}


def _variants(spec):
    """Defaults, the heavy variant, and a few of the grid."""
    grid = spec.grid
    out, seen = [], []
    for h in [{}, spec.heavy] + [grid[i] for i in (1, len(grid) // 2, len(grid) - 1)]:
        if _full_hyper(spec, h) not in seen:
            seen.append(_full_hyper(spec, h))
            out.append(h)
    return out


VARIANTS = [pytest.param(spec, hyper, id=f"{spec.name}-{hyper_id(hyper) or 'defaults'}")
            for spec in SPECS for hyper in _variants(spec)]


def _ops_hyper(spec, hyper):
    h = dict(hyper)
    if spec.name != "adagrad":
        h.pop("initial_accumulator_value", None)
    return h


def _state_of(opt, spec, hyper, n):
    """The object's state as {ops name: [array per param]}."""
    state = opt.state_dict()["state"]
    names = spec.state_names(hyper)
    return {name: [state[i][spec.optim_name(name)] for i in range(n)] for name in names}


# ---------------------------------------------------------------------------
# table-driven shared properties
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("spec,hyper", VARIANTS)
def test_dtype_kept_and_updated_in_place(spec, hyper, dtype):
    rng = make_rng("dtype", spec.name, hyper_id(hyper), dtype_id(dtype))
    params = random_list(rng, SHAPES, dtype)
    before = [p.copy() for p in params]
    opt = spec.cls(params, **hyper)
    for _ in range(3):
        opt.step(random_list(rng, SHAPES, dtype))
    assert all(a is b for a, b in zip(opt.params, params))  # the caller's arrays, in place
    for p, b in zip(params, before):
        assert p.dtype == dtype and p.flags.c_contiguous
        assert not np.array_equal(p, b)
    for entry in opt.state_dict()["state"].values():
        for name, value in entry.items():
            if name != "step":
                assert value.dtype == dtype, name


@pytest.mark.parametrize("spec,hyper", VARIANTS)
def test_state_shapes_stable(spec, hyper):
    rng = make_rng("shapes", spec.name, hyper_id(hyper))
    params = random_list(rng, SHAPES, np.float32)
    opt = spec.cls(params, **hyper)
    assert opt.state_dict()["state"] == {}  # nothing before the first step
    names = {spec.optim_name(n) for n in spec.state_names(_full_hyper(spec, hyper))}
    for t in range(1, 5):
        opt.step(random_list(rng, SHAPES, np.float32))
        sd = opt.state_dict()
        assert sorted(sd["state"]) == list(range(len(params)))
        for i, p in enumerate(params):
            entry = sd["state"][i]
            assert set(entry) == {"step"} | names
            assert entry["step"] == float(t) and isinstance(entry["step"], float)
            for name in names:
                assert entry[name].shape == p.shape
        # and the live view agrees
        assert sorted(opt.state) == list(range(len(params)))


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("spec", SPECS, ids=repr)
def test_quadratic_converges(spec, dtype):
    """f(p) = 0.5 * ||p - target||^2, gradient p - target."""
    rng = make_rng("quadratic", spec.name)
    p = (rng.standard_normal(50) * 3).astype(dtype)
    target = rng.standard_normal(50).astype(dtype)
    start = np.linalg.norm(p - target)
    opt = spec.cls([p], **spec.converge)
    for _ in range(300):
        opt.step([p - target])
    assert np.linalg.norm(p - target) < 1e-3 * start


@pytest.mark.parametrize("groups", [1, 2], ids=lambda g: f"{g}groups")
@pytest.mark.parametrize("spec,hyper", VARIANTS)
def test_state_dict_round_trip(spec, hyper, groups):
    """k steps, save, load into a fresh optimizer over a copy of the params,
    n more steps: bitwise identical to an uninterrupted run."""
    k, n = 3, 4
    rng = make_rng("roundtrip", spec.name, hyper_id(hyper))
    params = random_list(rng, SHAPES, np.float64)
    grads = [random_list(rng, SHAPES, np.float64) for _ in range(k + n)]

    def build(ps):
        if groups == 1:
            return spec.cls(ps, **hyper)
        lr = _full_hyper(spec, hyper)["lr"]
        return spec.cls([{"params": ps[:2]}, {"params": ps[2:], "lr": lr / 3}], **hyper)

    opt = build(params)
    for g in grads[:k]:
        opt.step(g)
    saved = opt.state_dict()
    copies = [p.copy() for p in params]
    for g in grads[k:]:
        opt.step(g)

    fresh = build(copies)
    fresh.load_state_dict(saved)
    for g in grads[k:]:
        fresh.step(g)
    for a, b in zip(params, copies):
        assert a.tobytes() == b.tobytes()
    assert_state_dict_equal(fresh.state_dict(), opt.state_dict())


@pytest.mark.parametrize("spec", SPECS, ids=repr)
def test_state_dict_is_a_snapshot(spec):
    """state_dict() returns copies: editing it, or stepping on, changes
    neither the other."""
    rng = make_rng("snapshot", spec.name)
    params = random_list(rng, SHAPES, np.float64)
    opt = spec.cls(params, **spec.heavy)
    opt.step(random_list(rng, SHAPES, np.float64))
    sd = opt.state_dict()
    keep = opt.state_dict()
    for entry in sd["state"].values():
        for name, value in entry.items():
            if name != "step":
                value[...] = 123.0
    sd["param_groups"][0]["lr"] = 99.0
    assert_state_dict_equal(opt.state_dict(), keep)
    opt.step(random_list(rng, SHAPES, np.float64))
    for entry in keep["state"].values():
        assert entry["step"] == 1.0


@pytest.mark.parametrize("spec", SPECS, ids=repr)
def test_state_dict_layout_is_torch(spec):
    rng = make_rng("layout", spec.name)
    params = random_list(rng, SHAPES, np.float64)
    opt = spec.cls([{"params": params[:1]}, {"params": params[1:], "lr": 0.5}], **spec.heavy)
    opt.step(random_list(rng, SHAPES, np.float64))
    sd = opt.state_dict()
    assert set(sd) == {"state", "param_groups"}
    assert [g["params"] for g in sd["param_groups"]] == [[0], [1, 2, 3]]
    assert sd["param_groups"][1]["lr"] == 0.5
    for g in sd["param_groups"]:
        assert set(g) == set(spec.cls.defaults_) | {"params"}
    assert sorted(sd["state"]) == [0, 1, 2, 3]


# ---------------------------------------------------------------------------
# against the functional kernels and the references
# ---------------------------------------------------------------------------
def _run_reference(spec, hyper, params, grads_seq, lrs=None, via_kernel=False):
    """Step copies of ``params`` with the reference (or the ops kernel) from
    the state an optimizer object starts with; ``lrs[t]`` overrides lr."""
    hyper = _ops_hyper(spec, _full_hyper(spec, hyper))
    ps = [p.copy() for p in params]
    states = make_states(spec, hyper, ps)
    for t, grads in enumerate(grads_seq, start=1):
        h = dict(hyper, lr=lrs[t - 1]) if lrs is not None else hyper
        if via_kernel:
            kernel_step(spec, ps, grads, states, h, t)
        else:
            reference_step(spec, ps, grads, states, h, t)
    return ps, states


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("spec,hyper", [pytest.param(s, h, id=f"{s.name}-{hyper_id(h) or 'plain'}")
                                        for s in SPECS for h in s.grid])
def test_object_matches_ops_and_reference(spec, hyper, dtype):
    rng = make_rng("object", spec.name, hyper_id(hyper), dtype_id(dtype))
    params = random_list(rng, SHAPES, dtype)
    grads_seq = [random_list(rng, SHAPES, dtype) for _ in range(4)]
    start = [p.copy() for p in params]
    opt = spec.cls(params, **hyper)
    for g in grads_seq:
        opt.step(g)
    full = _full_hyper(spec, hyper)
    got_states = _state_of(opt, spec, full, len(params))

    kp, ks = _run_reference(spec, hyper, start, grads_seq, via_kernel=True)
    for a, b in zip(params, kp):
        assert a.tobytes() == b.tobytes()
    for name in ks:
        for a, b in zip(got_states[name], ks[name]):
            assert a.tobytes() == b.tobytes(), name

    rp, rs = _run_reference(spec, hyper, start, grads_seq)
    assert_buffers_close(params, got_states, rp, rs, dtype)


@pytest.mark.parametrize("spec", SPECS, ids=repr)
def test_param_groups_with_different_lr(spec):
    """Each group matches the reference run with its own lr (and its own
    other hyperparameters), and steps with its own count."""
    rng = make_rng("groups", spec.name)
    params = random_list(rng, SHAPES, np.float64)
    grads_seq = [random_list(rng, SHAPES, np.float64) for _ in range(4)]
    start = [p.copy() for p in params]
    base = spec.heavy
    lr2 = base["lr"] * 0.25
    opt = spec.cls([{"params": params[:2]}, {"params": params[2:], "lr": lr2}], **base)
    for g in grads_seq:
        opt.step(g)
    assert opt.param_groups[0]["lr"] == base["lr"] and opt.param_groups[1]["lr"] == lr2
    states = _state_of(opt, spec, _full_hyper(spec, base), len(params))
    for sl, lr in ((slice(0, 2), base["lr"]), (slice(2, 4), lr2)):
        rp, rs = _run_reference(spec, dict(base, lr=lr), start[sl], [g[sl] for g in grads_seq])
        assert_buffers_close(params[sl], {k: v[sl] for k, v in states.items()}, rp, rs, np.float64)


@pytest.mark.parametrize("spec", SPECS, ids=repr)
def test_param_group_with_its_own_flags(spec):
    """A group may switch a variant flag the other group leaves off."""
    flags = {"sgd": dict(momentum=0.9), "adam": dict(amsgrad=True), "adamw": dict(amsgrad=True),
             "rmsprop": dict(centered=True, momentum=0.5), "adagrad": dict(lr_decay=0.1)}[spec.name]
    rng = make_rng("group-flags", spec.name)
    params = random_list(rng, SHAPES, np.float64)
    grads_seq = [random_list(rng, SHAPES, np.float64) for _ in range(3)]
    start = [p.copy() for p in params]
    opt = spec.cls([{"params": params[:2]}, {"params": params[2:], **flags}])
    for g in grads_seq:
        opt.step(g)
    for sl, hyper in ((slice(0, 2), {}), (slice(2, 4), flags)):
        full = _full_hyper(spec, hyper)
        sd_state = opt.state_dict()["state"]
        idx = range(sl.start, sl.stop)
        states = {n: [sd_state[i][spec.optim_name(n)] for i in idx] for n in spec.state_names(full)}
        assert all(set(sd_state[i]) == {"step"} | {spec.optim_name(n) for n in spec.state_names(full)}
                   for i in idx)
        rp, rs = _run_reference(spec, hyper, start[sl], [g[sl] for g in grads_seq])
        assert_buffers_close(params[sl], states, rp, rs, np.float64)


@pytest.mark.parametrize("spec", SPECS, ids=repr)
def test_lr_edit_between_steps_takes_effect(spec):
    rng = make_rng("lr-edit", spec.name)
    params = random_list(rng, SHAPES, np.float64)
    grads_seq = [random_list(rng, SHAPES, np.float64) for _ in range(5)]
    start = [p.copy() for p in params]
    lr = spec.heavy["lr"]
    lrs = [lr, lr, lr * 0.1, lr * 0.1, lr * 3]
    opt = spec.cls(params, **spec.heavy)
    for g, this_lr in zip(grads_seq, lrs):
        opt.param_groups[0]["lr"] = this_lr
        opt.step(g)
    states = _state_of(opt, spec, _full_hyper(spec, spec.heavy), len(params))
    rp, rs = _run_reference(spec, spec.heavy, start, grads_seq, lrs=lrs)
    assert_buffers_close(params, states, rp, rs, np.float64)
    # and it differs from a run that kept the first lr
    kp, _ = _run_reference(spec, spec.heavy, start, grads_seq)
    assert not np.allclose(params[-1], kp[-1])


@pytest.mark.parametrize("init", [0.0, 0.1, 2.5])
def test_adagrad_initial_accumulator_value(init):
    spec = SPEC["adagrad"]
    rng = make_rng("adagrad-init", init)
    params = random_list(rng, SHAPES, np.float64)
    grads_seq = [random_list(rng, SHAPES, np.float64) for _ in range(3)]
    start = [p.copy() for p in params]
    opt = optim.Adagrad(params, lr=0.1, initial_accumulator_value=init)
    opt.step(grads_seq[0])
    for s, g in zip(opt.state_dict()["state"].values(), grads_seq[0]):
        np.testing.assert_array_equal(s["sum"], init + g * g)
    for g in grads_seq[1:]:
        opt.step(g)
    hyper = dict(lr=0.1, initial_accumulator_value=init)
    rp, rs = _run_reference(spec, hyper, start, grads_seq)
    states = _state_of(opt, spec, _full_hyper(spec, hyper), len(params))
    assert_buffers_close(params, states, rp, rs, np.float64)


def test_adagrad_initial_accumulator_value_per_group():
    a, b = np.zeros(3), np.zeros(3)
    g = np.full(3, 0.5)
    opt = optim.Adagrad([{"params": [a], "initial_accumulator_value": 1.0}, {"params": [b]}],
                        lr=0.1, initial_accumulator_value=0.25)
    opt.step([g, g.copy()])
    state = opt.state_dict()["state"]
    np.testing.assert_array_equal(state[0]["sum"], 1.25)
    np.testing.assert_array_equal(state[1]["sum"], 0.5)


def test_rmsprop_torch_spelling():
    assert optim.RMSprop is optim.RMSProp


@pytest.mark.parametrize("spec", SPECS, ids=repr)
def test_defaults_are_torch_defaults(spec):
    torch_defaults = {
        "sgd": dict(lr=1e-3, momentum=0.0, dampening=0.0, nesterov=False, weight_decay=0.0),
        "adam": dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, amsgrad=False),
        "adamw": dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, amsgrad=False),
        "rmsprop": dict(lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0.0, momentum=0.0,
                        centered=False),
        "adagrad": dict(lr=1e-2, lr_decay=0.0, weight_decay=0.0, initial_accumulator_value=0.0,
                        eps=1e-10),
    }[spec.name]
    d = spec.cls.defaults_
    for k, v in torch_defaults.items():
        assert d[k] == v, k
    assert d["maximize"] is False and d["l1"] == 0.0


# ---------------------------------------------------------------------------
# parameter arenas: params that tile one flat array are stepped as one array
# ---------------------------------------------------------------------------
ARENA_SHAPES = [(3, 4), (7,), (1,), (100,), (2, 3, 5)]


def _tile(flat, shapes=ARENA_SHAPES):
    """Consecutive views of ``flat`` with the given shapes, covering it."""
    out, offset = [], 0
    for s in shapes:
        n = int(np.prod(s))
        out.append(flat[offset:offset + n].reshape(s))
        offset += n
    assert offset == flat.size
    return out


ARENA_SIZE = sum(int(np.prod(s)) for s in ARENA_SHAPES)


@pytest.mark.parametrize("grads_tiled", ["always", "never", "alternating", "reused",
                                         "reused alternating"])
@pytest.mark.parametrize("spec,hyper", VARIANTS)
def test_arena_matches_separate_arrays(spec, hyper, grads_tiled):
    """An optimizer over views that tile one array gives, bitwise, what it
    gives over separate arrays, whether the gradients tile one array too or
    not, in new arrays each step or in the same buffers refilled (as a
    training loop passes them; "reused alternating": two sets of buffers,
    one tiling an array, one not, in turn); its state is views of flat
    buffers but reads the same."""
    rng = make_rng("arena", spec.name, hyper_id(hyper), grads_tiled)
    flat = random_list(rng, [(ARENA_SIZE,)], np.float64)[0]
    arena = _tile(flat)
    separate = [p.copy() for p in arena]
    opt_a, opt_s = spec.cls(arena, **hyper), spec.cls(separate, **hyper)
    kept_flat = np.zeros(ARENA_SIZE)
    kept_tiled = _tile(kept_flat)
    kept_separate = [np.zeros_like(g) for g in kept_tiled]
    for t in range(5):
        gflat = random_list(rng, [(ARENA_SIZE,)], np.float64)[0]
        if grads_tiled.startswith("reused"):
            grads = kept_tiled if grads_tiled == "reused" or t % 2 == 0 else kept_separate
            for g, new in zip(grads, _tile(gflat)):
                g[...] = new
        else:
            tiled = grads_tiled == "always" or (grads_tiled == "alternating" and t % 2 == 0)
            grads = _tile(gflat) if tiled else [g.copy() for g in _tile(gflat)]
        opt_a.step(grads)
        opt_s.step([g.copy() for g in grads])
        for a, s in zip(arena, separate):
            assert a.tobytes() == s.tobytes()
        assert_state_dict_equal(opt_a.state_dict(), opt_s.state_dict())
    assert all(a.base is flat for a in arena)  # still the caller's views


@pytest.mark.parametrize("spec,hyper", VARIANTS)
def test_arena_state_dict_round_trip(spec, hyper):
    """Save from an arena optimizer, load into an arena optimizer and into
    one over separate arrays: all continue bitwise alike."""
    rng = make_rng("arena-roundtrip", spec.name, hyper_id(hyper))
    flat = random_list(rng, [(ARENA_SIZE,)], np.float64)[0]
    grads = [_tile(g) for g in random_list(rng, [(ARENA_SIZE,)] * 6, np.float64)]
    opt = spec.cls(_tile(flat), **hyper)
    for g in grads[:3]:
        opt.step(g)
    saved = opt.state_dict()
    flat2 = flat.copy()
    separate = [p.copy() for p in _tile(flat)]
    opt2, opt3 = spec.cls(_tile(flat2), **hyper), spec.cls(separate, **hyper)
    opt2.load_state_dict(saved)
    opt3.load_state_dict(saved)
    for g in grads[3:]:
        opt.step(g)
        opt2.step(g)
        opt3.step([x.copy() for x in g])
    assert flat.tobytes() == flat2.tobytes()
    assert all(a.tobytes() == b.tobytes() for a, b in zip(_tile(flat), separate))
    assert_state_dict_equal(opt2.state_dict(), opt.state_dict())
    assert_state_dict_equal(opt3.state_dict(), opt.state_dict())


@pytest.mark.parametrize("spec", SPECS, ids=repr)
def test_arena_per_group(spec):
    """Two groups, each tiling its own arena, with their own lr."""
    rng = make_rng("arena-groups", spec.name)
    f1, f2 = random_list(rng, [(ARENA_SIZE,), (ARENA_SIZE,)], np.float64)
    p1, p2 = _tile(f1), _tile(f2)
    sep = [p.copy() for p in p1 + p2]
    lr = spec.heavy["lr"]
    opt = spec.cls([{"params": p1}, {"params": p2, "lr": lr / 4}], **spec.heavy)
    ref = spec.cls([{"params": sep[:len(p1)]}, {"params": sep[len(p1):], "lr": lr / 4}],
                   **spec.heavy)
    for _ in range(3):
        g1, g2 = random_list(rng, [(ARENA_SIZE,), (ARENA_SIZE,)], np.float64)
        grads = _tile(g1) + _tile(g2)
        opt.step(grads)
        ref.step([g.copy() for g in grads])
    assert all(a.tobytes() == b.tobytes() for a, b in zip(p1 + p2, sep))
    assert_state_dict_equal(opt.state_dict(), ref.state_dict())


# ---------------------------------------------------------------------------
# reliability: loss scales, edited parameter lists, load_state_dict's checks,
# threads, copies
# ---------------------------------------------------------------------------
import copy  # noqa: E402
import json  # noqa: E402
import pickle  # noqa: E402
import threading  # noqa: E402

from fusedtrain import _validate  # noqa: E402


def _arrays(rng, shapes=((5,), (3, 2), (4,)), dtype=np.float32):
    return random_list(rng, list(shapes), dtype)


@pytest.mark.parametrize("spec", SPECS, ids=repr)
@pytest.mark.parametrize("dtype,scale", [(np.float32, 1e-40), (np.float32, 1e46),
                                         (np.float64, 5e-324)])
def test_object_refuses_grad_scale_with_unusable_reciprocal(spec, dtype, scale):
    rng = make_rng("scale", spec.name)
    params = _arrays(rng, dtype=dtype)
    opt = spec.cls([{"params": params[:1]}, {"params": params[1:]}], **spec.heavy)
    opt.step(_arrays(rng, dtype=dtype))
    before, pbefore = opt.state_dict(), [p.copy() for p in params]
    with pytest.raises(ValueError, match="grad_scale"):
        opt.step(_arrays(rng, dtype=dtype), grad_scale=scale)
    assert_state_dict_equal(opt.state_dict(), before)
    for p, b in zip(params, pbefore):
        np.testing.assert_array_equal(p, b)


def _fresh_reference(spec, params, grads_seq):
    """What a new optimizer over copies of ``params`` does with grads_seq."""
    copies = [p.copy() for p in params]
    ref = spec.cls(copies, **spec.heavy)
    for grads in grads_seq:
        ref.step(grads)
    return copies


@pytest.mark.parametrize("spec", SPECS, ids=repr)
@pytest.mark.parametrize("arena", [False, True], ids=["arrays", "arena"])
def test_replaced_parameter_is_followed(spec, arena):
    """As torch.optim: an array put in place of another in param_groups is
    stepped from then on, with fresh state counting its steps from 1; the
    others keep theirs."""
    rng = make_rng("replace", spec.name, str(arena))
    shapes = [(5,), (3, 2), (4,)]
    if arena:
        flat = rng.standard_normal(15).astype(np.float32)
        params = [flat[:5], flat[5:11].reshape(3, 2), flat[11:]]
    else:
        params = _arrays(rng, shapes)
    opt = spec.cls(params, **spec.heavy)
    seq = [_arrays(rng, shapes) for _ in range(5)]
    keep = [p.copy() for p in params]
    for g in seq[:2]:
        opt.step(g)
    old = params[1]
    new = rng.standard_normal((3, 2)).astype(np.float32)
    start = new.copy()
    opt.param_groups[0]["params"][1] = new
    old_after = old.copy()
    for g in seq[2:]:
        opt.step(g)
    np.testing.assert_array_equal(old, old_after)  # no longer stepped
    np.testing.assert_allclose(new, _fresh_reference(spec, [start], [[g[1]] for g in seq[2:]])[0],
                               rtol=1e-6, atol=1e-7)
    others = _fresh_reference(spec, [keep[0], keep[2]], [[g[0], g[2]] for g in seq])
    np.testing.assert_allclose(params[0], others[0], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(params[2], others[1], rtol=1e-6, atol=1e-7)
    state = opt.state_dict()["state"]
    assert state[1]["step"] == 3.0 and state[0]["step"] == 5.0


@pytest.mark.parametrize("spec", SPECS, ids=repr)
def test_replaced_list_and_appended_parameter_are_followed(spec):
    rng = make_rng("replace-list", spec.name)
    params = _arrays(rng)
    opt = spec.cls(params, **spec.heavy)
    opt.step(_arrays(rng))
    fresh = _arrays(rng)
    starts = [p.copy() for p in fresh]
    opt.param_groups[0]["params"] = fresh  # the whole list
    g = _arrays(rng)
    opt.step(g)
    np.testing.assert_allclose(fresh[0], _fresh_reference(spec, [starts[0]], [[g[0]]])[0],
                               rtol=1e-6, atol=1e-7)
    extra = rng.standard_normal(6).astype(np.float32)
    start = extra.copy()
    opt.param_groups[0]["params"].append(extra)
    g = _arrays(rng) + [rng.standard_normal(6).astype(np.float32)]
    opt.step(g)
    np.testing.assert_allclose(extra, _fresh_reference(spec, [start], [[g[3]]])[0],
                               rtol=1e-6, atol=1e-7)
    assert len(opt.state_dict()["state"]) == 4
    with pytest.raises(ValueError, match="expected 4 arrays"):
        opt.step(_arrays(rng))


@pytest.mark.parametrize("spec", SPECS, ids=repr)
def test_bad_replacement_raises_and_changes_nothing(spec):
    rng = make_rng("replace-bad", spec.name)
    params = _arrays(rng)
    opt = spec.cls(params, **spec.heavy)
    opt.step(_arrays(rng))
    before, pbefore = opt.state_dict(), [p.copy() for p in params]
    cases = [(np.zeros((3, 2), np.int32), TypeError, "float32 or float64"),
             (np.zeros((3, 2), np.float32)[:, :1], ValueError, "C-contiguous"),
             (params[0], ValueError, "more than one place"),
             ([1.0, 2.0], TypeError, "numpy.ndarray"),
             (np.zeros((7,), np.float32), ValueError, r"grads\[1\]")]  # shape of its gradient
    for bad, exc, match in cases:
        opt.param_groups[0]["params"][1] = bad
        with pytest.raises(exc, match=match):
            opt.step(_arrays(rng))
        opt.param_groups[0]["params"][1] = params[1]
        assert_state_dict_equal(opt.state_dict(), before)
        for p, b in zip(params, pbefore):
            np.testing.assert_array_equal(p, b)


def _stepped(spec, groups=1):
    rng = make_rng("load", spec.name)
    params = _arrays(rng)
    opt = spec.cls(params if groups == 1 else [{"params": params[:1]}, {"params": params[1:]}],
                   **spec.heavy)
    for _ in range(2):
        opt.step(_arrays(rng))
    return opt, params


def _expect_bad_load(opt, params, sd, match):
    before, pbefore = opt.state_dict(), [p.copy() for p in params]
    with pytest.raises(ValueError, match=match):
        opt.load_state_dict(sd)
    assert_state_dict_equal(opt.state_dict(), before)
    for p, b in zip(params, pbefore):
        np.testing.assert_array_equal(p, b)


def _a_buffer(sd, i=0):
    return next(k for k in sd["state"][i] if k != "step")


@pytest.mark.parametrize("spec", SPECS, ids=repr)
def test_load_state_dict_refuses_bad_buffers(spec):
    opt, params = _stepped(spec)
    for bad in [np.array([None] * 5, dtype=object), np.array(["a"] * 5), np.ones(5, bool),
                np.ones(5, np.int64), "12345", None]:
        sd = opt.state_dict()
        sd["state"][0][_a_buffer(sd)] = bad
        _expect_bad_load(opt, params, sd, r"state\[0\]")


@pytest.mark.parametrize("spec", SPECS, ids=repr)
@pytest.mark.parametrize("step", [float("inf"), float("nan"), True, 2**70, 2.0**63, 1.5, -1, "3",
                                  None, np.array([1.0, 2.0])], ids=repr)
def test_load_state_dict_refuses_bad_steps(spec, step):
    opt, params = _stepped(spec)
    sd = opt.state_dict()
    sd["state"][1]["step"] = step
    _expect_bad_load(opt, params, sd, r"state\[1\]\['step'\]")


@pytest.mark.parametrize("spec", SPECS, ids=repr)
def test_load_state_dict_refuses_bad_indices(spec):
    opt, params = _stepped(spec)
    sd = opt.state_dict()
    sd["param_groups"][0]["params"] = [0, 0, 2]
    _expect_bad_load(opt, params, sd, "more than once")
    for bad in ([0, 1, 3], [0, 1, True], [0, 1, 2.0], [0, 1, -1], [0, 1, "2"]):
        sd = opt.state_dict()
        sd["param_groups"][0]["params"] = bad
        _expect_bad_load(opt, params, sd, r"param_groups\[0\]\['params'\]\[2\]")
    sd = opt.state_dict()
    sd["state"][7] = sd["state"][0]
    _expect_bad_load(opt, params, sd, "state key 7")
    sd = opt.state_dict()
    sd["state"]["0"] = sd["state"][0]
    _expect_bad_load(opt, params, sd, "twice")
    sd = opt.state_dict()
    sd["state"] = [sd["state"][0]]
    _expect_bad_load(opt, params, sd, r"state_dict\['state'\]")


@pytest.mark.parametrize("spec", SPECS, ids=repr)
def test_load_state_dict_refuses_bad_hyperparameter_types(spec):
    opt, params = _stepped(spec, groups=2)
    for key, value in [("lr", "0.1"), ("lr", None), ("maximize", "yes"), ("lr", float("nan"))]:
        sd = opt.state_dict()
        sd["param_groups"][1][key] = value
        _expect_bad_load(opt, params, sd, rf"param_groups\[1\].*{key}")


@pytest.mark.parametrize("spec", SPECS, ids=repr)
def test_load_state_dict_after_a_json_round_trip(spec):
    """JSON turns the state keys into strings and the arrays into lists:
    they load as the indices and arrays they were (not silently dropped)."""
    opt, params = _stepped(spec)
    sd = opt.state_dict()
    text = json.dumps({"state": {k: {n: (v.tolist() if isinstance(v, np.ndarray) else v)
                                     for n, v in e.items()} for k, e in sd["state"].items()},
                       "param_groups": sd["param_groups"]})
    other, _ = _stepped(spec)
    other.load_state_dict(json.loads(text))
    assert_state_dict_equal(other.state_dict()["state"], sd["state"])  # (betas: a list now)


@pytest.mark.parametrize("spec", SPECS, ids=repr)
def test_concurrent_steps_serialize(spec):
    """4 threads x 30 steps on one optimizer: 120 steps, the same result as
    120 steps in a row (the gradients are the same each step)."""
    rng = make_rng("threads", spec.name)
    params = _arrays(rng, ((2000,), (500,)))
    grads = _arrays(rng, ((2000,), (500,)))
    twin = [p.copy() for p in params]
    opt = spec.cls(params, **spec.heavy)
    ref = spec.cls(twin, **spec.heavy)
    for _ in range(120):
        ref.step(grads)
    barrier = threading.Barrier(4)

    def work():
        barrier.wait()
        for _ in range(30):
            opt.step(grads)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if spec.name != "sgd" or spec.heavy.get("momentum"):
        assert all(e["step"] == 120.0 for e in opt.state_dict()["state"].values())
    for p, q in zip(params, twin):
        np.testing.assert_array_equal(p, q)


@pytest.mark.parametrize("spec", SPECS, ids=repr)
@pytest.mark.parametrize("how", ["deepcopy", "pickle"])
@pytest.mark.parametrize("arena", [False, True], ids=["arrays", "arena"])
def test_copies_step_like_the_original(spec, how, arena):
    rng = make_rng("copy", spec.name, how, str(arena))
    if arena:
        flat = rng.standard_normal(11).astype(np.float32)
        params = [flat[:5], flat[5:]]
    else:
        params = _arrays(rng, ((5,), (6,)))
    opt = spec.cls(params, **spec.heavy)
    opt.step(_arrays(rng, ((5,), (6,))))
    twin = copy.deepcopy(opt) if how == "deepcopy" else pickle.loads(pickle.dumps(opt))
    g = _arrays(rng, ((5,), (6,)))
    opt.step(g)
    twin.step(g)
    for p, q in zip(opt.params, twin.params):
        assert p is not q
        np.testing.assert_array_equal(p, q)
    assert_state_dict_equal(twin.state_dict(), opt.state_dict())


def test_edited_hyperparameter_is_checked_again():
    params = [np.zeros(3, np.float32)]
    opt = optim.Adam(params)
    opt.step([np.ones(3, np.float32)])
    opt.param_groups[0]["betas"] = (1.5, 0.999)
    with pytest.raises(ValueError, match=r"betas\[0\]"):
        opt.step([np.ones(3, np.float32)])
    opt.param_groups[0]["betas"] = [0.9, 0.999]  # a list, edited in place afterwards
    opt.step([np.ones(3, np.float32)])
    opt.param_groups[0]["betas"][0] = 1.5
    with pytest.raises(ValueError, match=r"betas\[0\]"):
        opt.step([np.ones(3, np.float32)])
    assert _validate.grad_scale(1.0) == 1.0


# ---------------------------------------------------------------------------
# constructors: explicit hyperparameters, lr positional, shared options once
# ---------------------------------------------------------------------------
_TORCH_POSITIONAL = {
    "sgd": ["lr", "momentum", "dampening", "weight_decay", "nesterov"],
    "adam": ["lr", "betas", "eps", "weight_decay", "amsgrad"],
    "adamw": ["lr", "betas", "eps", "weight_decay", "amsgrad"],
    "rmsprop": ["lr", "alpha", "eps", "weight_decay", "momentum", "centered"],
    "adagrad": ["lr", "lr_decay", "weight_decay", "initial_accumulator_value", "eps"],
}


@pytest.mark.parametrize("spec", SPECS, ids=repr)
def test_signature_lists_the_hyperparameters_with_their_defaults(spec):
    import inspect

    P = inspect.Parameter
    params = inspect.signature(spec.cls).parameters
    names = list(params)
    assert names[0] == "params" and params["params"].kind is P.POSITIONAL_OR_KEYWORD
    assert names[-1] == "options" and params["options"].kind is P.VAR_KEYWORD
    listed = {k: p.default for k, p in params.items() if k not in ("params", "options")}
    assert listed == spec.cls.defaults_
    assert list(listed) == list(spec.cls.defaults_)
    # torch's positional hyperparameters in torch's order; the rest keyword-only
    positional = [k for k, p in params.items() if p.kind is P.POSITIONAL_OR_KEYWORD][1:]
    assert positional == _TORCH_POSITIONAL[spec.name]
    assert positional[0] == "lr"
    for k in ("maximize", "l1"):
        assert params[k].kind is P.KEYWORD_ONLY
    # the shared options are written once, in the base class
    shared = set(inspect.signature(optim.Optimizer).parameters) - {"params", "hyperparameters"}
    assert shared == {"master_weights", "state_dtype", "stochastic_rounding", "seed"}
    assert not shared & set(params)


@pytest.mark.parametrize("spec", SPECS, ids=repr)
def test_lr_positional_as_in_torch(spec):
    p = np.zeros(3, np.float32)
    a = spec.cls([p], 0.125)
    b = spec.cls([p.copy()], lr=0.125)
    assert a.param_groups[0]["lr"] == b.param_groups[0]["lr"] == 0.125
    assert a.defaults == b.defaults
    g = np.ones(3, np.float32)
    a.step([g])
    b.step([g])
    np.testing.assert_array_equal(a.params[0], b.params[0])


def test_every_positional_hyperparameter_and_the_options():
    p = np.zeros(4, np.float32)
    opt = optim.SGD([p], 0.5, 0.9, 0.1, 0.01, False)
    assert {k: opt.defaults[k] for k in ("lr", "momentum", "dampening", "weight_decay", "nesterov")} \
        == dict(lr=0.5, momentum=0.9, dampening=0.1, weight_decay=0.01, nesterov=False)
    bf16 = __import__("ml_dtypes").bfloat16
    opt = optim.AdamW([np.zeros(4, bf16)], 1e-2, master_weights=True, state_dtype="bfloat16",
                      stochastic_rounding=True, seed=3)
    assert opt.defaults["weight_decay"] == 1e-2 and opt.defaults["lr"] == 1e-2
    with pytest.raises(TypeError, match=r"unexpected keyword arguments \['momentum'\].*"
                                        r"'master_weights'"):
        optim.Adam([p], momentum=0.9)
    with pytest.raises(TypeError):
        optim.Adam([p], 1e-3, (0.9, 0.999), 1e-8, 0.0, False, False)  # maximize is keyword-only


def test_a_subclass_defaults_come_from_its_signature():
    class Plain(optim.SGD):
        def __init__(self, params, lr=0.25, momentum=0.5, *, nesterov=True, **options):
            super().__init__(params, lr, momentum, nesterov=nesterov, **options)

    assert Plain.defaults_ == {**optim.SGD.defaults_, "lr": 0.25, "momentum": 0.5,
                               "nesterov": True}
    p = np.ones(2)
    opt = Plain([p])
    opt.step([np.ones(2)])
    np.testing.assert_array_equal(p, 1 - 0.25 * (1 + 0.5))  # Nesterov's first step
    with pytest.raises(TypeError, match="needs a default"):
        class NoDefault(optim.SGD):  # noqa: F841
            def __init__(self, params, lr, **options):
                super().__init__(params, lr, **options)


# ---------------------------------------------------------------------------
# a schedule as the optimizer's lr (as Keras's learning_rate=schedule)
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("name", optim.NAMES)
def test_schedule_as_lr_equals_setting_lr_before_each_step(name):
    from fusedtrain import schedules

    rng = np.random.default_rng(5)
    sched = schedules.CosineAnnealing(0.05, total_steps=6)
    p_a = [rng.standard_normal(7).astype(np.float32), rng.standard_normal((3, 4)).astype(np.float32)]
    p_b = [p.copy() for p in p_a]
    a = optim.get(name)(p_a, lr=sched)
    b = optim.get(name)(p_b, lr=0.05)
    for t in range(6):
        grads = [rng.standard_normal(p.shape).astype(np.float32) for p in p_a]
        b.param_groups[0]["lr"] = sched.lr(t)
        a.step(grads)
        b.step(grads)
        assert a.last_lr() == sched.lr(t)
        for x, y in zip(p_a, p_b):
            np.testing.assert_array_equal(x, y)
    assert a.param_groups[0]["lr"] is sched


def test_callable_lr_and_its_checks():
    p = [np.ones(5, np.float32)]
    opt = optim.SGD(p, lambda t: 0.1 * 0.5 ** t)
    g = [np.ones(5, np.float32)]
    opt.step(g)
    opt.step(g)
    np.testing.assert_allclose(p[0], 1 - 0.1 - 0.05)
    bad = optim.SGD([np.ones(5, np.float32)], lambda t: -1.0 if t == 1 else 0.1)
    q = bad.param_groups[0]["params"][0]
    bad.step(g)
    before = q.copy()
    with pytest.raises(ValueError, match="lr must be >= 0"):
        bad.step(g)  # the schedule's value at step 1 is checked like any lr
    np.testing.assert_array_equal(q, before)
    with pytest.raises(TypeError, match="lr"):
        optim.Adam([np.ones(2)], lr="fast")


def test_schedule_lr_in_fit_and_checkpoints(tmp_path):
    from conftest import toy_data, toy_mlp
    from fusedtrain import schedules

    x, y = toy_data(n=64)
    model = toy_mlp()
    sched = schedules.StepDecay(0.05, step_size=2, gamma=0.5)
    opt = optim.Adam(model.parameters(), lr=sched)
    hist = model.fit(x, y, optimizer=opt, epochs=2, batch_size=32, progress=False)
    assert hist["lr"] == [sched.lr(1), sched.lr(3)]
    before = model.param_arena.copy()
    with pytest.raises(ValueError, match="schedule"):  # two schedules: refused, nothing changed
        model.fit(x, y, optimizer=opt, schedule="cosine", progress=False)
    np.testing.assert_array_equal(model.param_arena, before)
    with pytest.raises(ValueError, match=r"param_groups\[0\]\['lr'\]"):
        model.save(tmp_path / "m.npz")
    assert not list(tmp_path.iterdir())
