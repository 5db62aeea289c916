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
