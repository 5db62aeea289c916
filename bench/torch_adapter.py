"""Benchmark of the torch.optim drop-ins (fusedtrain.torch) and of gradient
clipping, on torch CPU tensors (float32).

Optimizer step, for Adam, AdamW and SGD (momentum 0.9) over ResNet-50's 161
parameter tensors (``resnet50_shapes()`` of bench/optim.py; 25,557,032
elements) and the same structure at a quarter of the width:

* ``fusedtrain.torch``  fusedtrain.torch.<Opt>(params).step(): the drop-in
* ``fusedtrain.ops``    fusedtrain.ops.<opt>_ over NumPy views of the same
                        kind of data (the kernel alone, no torch bookkeeping)
* ``torch fused``       torch.optim.<Opt>(params, fused=True).step()  (the baseline)
* ``torch foreach``     torch.optim.<Opt>(params, foreach=True).step()

Clipping, over the same lists of gradients:

* ``fusedtrain.torch``  fusedtrain.torch.clip_grad_norm_(params, max_norm)
  (max_norm 1.0 on the first call, 1% less on each later one, so that every
  call scales)
* ``torch foreach``     torch.nn.utils.clip_grad_norm_(params, max_norm, foreach=True) (the baseline)
* ``torch``             torch.nn.utils.clip_grad_norm_(params, max_norm, foreach=False)

and the norm alone: fusedtrain.ops.global_norm vs torch.nn.utils.get_total_norm.

Every competitor works on its own copy of identical data. Before timing,
each takes one step (one clip) from identical inputs and every buffer it
writes is checked against fusedtrain.reference (harness.validate). Then the
competitors are timed interleaved (harness.measure) and the report gives
medians and the median of per-round ratios to the baseline.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python bench/torch_adapter.py [--quick]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

import fusedtrain
from fusedtrain import ops, reference

# bench/ itself: `python bench/<script>.py` puts the script's directory first on sys.path
import harness as H
from optim import OPTIMIZERS, log, machine_line, resnet50_shapes

try:
    import torch

    import fusedtrain.torch as ftt
except ImportError:  # pragma: no cover - the benchmark needs torch
    sys.exit("bench/torch_adapter.py needs torch (pip install torch==2.13.0)")

ADAPTER = "fusedtrain.torch"
OPS = "fusedtrain.ops"
FUSED = "torch fused"
FOREACH = "torch foreach"
TORCH = "torch"
SIZES = {"resnet50": resnet50_shapes(), "resnet50-w16": resnet50_shapes(width=16)}
QUICK_SIZES = ("resnet50-w16",)
OPTS = ("adam", "adamw", "sgd")
MAX_NORM = 1.0  # far below the norm of the data: the first clip scales
SHRINK = 0.99  # max_norm of the k-th clip: MAX_NORM * SHRINK**k (every clip scales)


def make_data(shapes, seed):
    rng = np.random.default_rng(seed)
    params = [(0.05 * rng.standard_normal(s)).astype(np.float32) for s in shapes]
    grads = [(0.1 * rng.standard_normal(s)).astype(np.float32) for s in shapes]
    return params, grads


def _tensors(arrays, requires_grad=False):
    out = [torch.from_numpy(a.copy()) for a in arrays]
    return [torch.nn.Parameter(t) for t in out] if requires_grad else out


# ---------------------------------------------------------------------------
# optimizer step
# ---------------------------------------------------------------------------
def optimizer_competitors(name, params, grads):
    """name -> (step callable, result callable giving {"params", state...})."""
    spec = OPTIMIZERS[name]
    comps = {}

    def torch_like(cls, **kw):
        ps = _tensors(params, requires_grad=True)
        for p, g in zip(ps, _tensors(grads)):
            p.grad = g
        opt = cls(ps, **spec.hyper, **kw)

        def result():
            out = {"params": [p.detach().numpy() for p in ps]}
            for state, key in zip(spec.states, spec.torch_keys):
                out[state] = [opt.state[p][key].numpy() for p in ps]
            return out

        return opt.step, result

    comps[ADAPTER] = torch_like(getattr(ftt, spec.torch_class))
    comps[FUSED] = torch_like(getattr(torch.optim, spec.torch_class), fused=True)
    comps[FOREACH] = torch_like(getattr(torch.optim, spec.torch_class), foreach=True)

    ps = [p.copy() for p in params]
    gs = [g.copy() for g in grads]
    states = {s: [np.zeros_like(p) for p in ps] for s in spec.states}
    step = [0]
    fn = getattr(ops, spec.name + "_")

    def ops_step():
        step[0] += 1
        fn(ps, gs, *states.values(), step=step[0], **spec.hyper)

    comps[OPS] = (ops_step, lambda: {"params": ps, **states})
    return comps


def optimizer_expected(name, params, grads):
    spec = OPTIMIZERS[name]
    ps = [p.copy() for p in params]
    states = {s: [np.zeros_like(p) for p in ps] for s in spec.states}
    fn = getattr(reference, spec.name)
    for i, (p, g) in enumerate(zip(ps, grads)):
        fn(p, g, *(states[s][i] for s in spec.states), step=1, **spec.hyper)
    return {"params": ps, **states}


# ---------------------------------------------------------------------------
# clipping
# ---------------------------------------------------------------------------
def clip_competitors(grads):
    comps = {}

    def with_params(fn, **kw):
        ps = [torch.nn.Parameter(torch.zeros(g.shape)) for g in grads]
        for p, g in zip(ps, _tensors(grads)):
            p.grad = g
        calls = [0]

        def clip():
            # max_norm shrinks by 1% per call, so every call scales (after a
            # clip to a fixed max_norm the next coefficient would be 1)
            fn(ps, MAX_NORM * SHRINK ** calls[0], **kw)
            calls[0] += 1

        return clip, (lambda: {"grads": [p.grad.numpy() for p in ps]})

    comps[ADAPTER] = with_params(ftt.clip_grad_norm_)
    comps[FOREACH] = with_params(torch.nn.utils.clip_grad_norm_, foreach=True)
    comps[TORCH] = with_params(torch.nn.utils.clip_grad_norm_, foreach=False)
    return comps


def norm_competitors(grads):
    gs = [g.copy() for g in grads]
    ts = _tensors(grads)
    return {OPS: (lambda: ops.global_norm(gs), None),
            FOREACH: (lambda: torch.nn.utils.get_total_norm(ts, foreach=True), None),
            TORCH: (lambda: torch.nn.utils.get_total_norm(ts, foreach=False), None)}


# ---------------------------------------------------------------------------
# the run
# ---------------------------------------------------------------------------
def validate(comps, expected, **tol):
    out = {}
    for name, (step, result) in comps.items():
        step()
        out[name] = H.validate(name, result(), expected, **tol)
    return out


def run_row(kind, label, size, comps, baseline, repeats, warmup, max_time, validation):
    fns = {name: c[0] for name, c in comps.items()}
    res = H.measure(fns, repeats=repeats, warmup=warmup, baseline=baseline, max_time=max_time)
    row = {"kind": kind, "name": label, "size": size, "baseline": baseline,
           "validation": validation, "timings": res, "loadavg_after": list(os.getloadavg())}
    speed = {n: 1 / r["paired_ratio"] for n, r in res.items()}  # > 1: faster than the baseline
    log(f"  {kind:9s} {label:6s} {size:13s} " + "  ".join(
        f"{n} {H.format_ns(r['median_ns'])} ({speed[n]:.2f}x)" for n, r in res.items()))
    return row


def table(rows, names):
    head = ["what", "tensors"] + [f"{n} median" for n in names] + \
        [f"speed-up vs {rows[0]['baseline']}" if rows else "speed-up"]
    out = []
    for r in rows:
        t = r["timings"]
        cells = [r["name"], r["size"]]
        cells += [H.format_ns(t[n]["median_ns"]) if n in t else "n/a" for n in names]
        cells.append(", ".join(f"{n} {1 / t[n]['paired_ratio']:.2f}×" for n in names
                               if n in t and n != r["baseline"]))
        out.append(cells)
    return H.markdown_table(head, out)


def render(rows, info, command, elapsed):
    opt_rows = [r for r in rows if r["kind"] == "optimizer"]
    clip_rows = [r for r in rows if r["kind"] == "clip"]
    norm_rows = [r for r in rows if r["kind"] == "norm"]
    return "\n".join([
        "# fusedtrain.torch and clipping vs torch (float32, CPU tensors)",
        "",
        machine_line(info),
        "",
        f"Command: `{' '.join(command)}` · {elapsed:.0f} s · medians of interleaved rounds; "
        "speed-up = median over rounds of baseline time / competitor time (> 1: faster than "
        "the baseline). Every competitor was validated against fusedtrain.reference first. "
        f"Load average (1 min) at start {info['loadavg_start'][0]:.2f}, at end "
        f"{info['loadavg_end'][0]:.2f} on {info['cpu_affinity']} CPUs (a shared machine: "
        "compare ratios within a row, not times across runs). See bench/README.md.",
        "",
        "## Optimizer step (baseline: torch.optim fused=True)",
        "",
        table(opt_rows, [ADAPTER, OPS, FUSED, FOREACH]),
        "",
        f"## clip_grad_norm_ (max_norm {MAX_NORM} × {SHRINK}^call: every call scales; "
        "baseline: torch foreach=True)",
        "",
        table(clip_rows, [ADAPTER, FOREACH, TORCH]),
        "",
        "## Global norm alone (baseline: torch.nn.utils.get_total_norm foreach=True)",
        "",
        table(norm_rows, [OPS, FOREACH, TORCH]),
        "",
    ])


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="smoke test: the quarter-width list, "
                    "few rounds; writes torch_adapter_quick.{md,json}")
    ap.add_argument("--repeats", type=int, default=None, help="interleaved rounds per row")
    ap.add_argument("--threads", type=int, help="threads for fusedtrain and torch")
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    command = ["python", "bench/torch_adapter.py", *argv]
    if args.threads is not None:
        fusedtrain.set_num_threads(args.threads)
        torch.set_num_threads(args.threads)
    for var in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE"):
        if var in os.environ:
            log(f"warning: {var} is set; run with env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE")
    info = H.machine_info()
    log(machine_line(info))
    start = time.perf_counter()
    rows = []
    for k, size in enumerate(QUICK_SIZES if args.quick else SIZES):
        shapes = SIZES[size]
        n = sum(int(np.prod(s)) for s in shapes)
        label = f"{len(shapes)} ({n / 1e6:.1f}M)"
        big = n > 10_000_000
        repeats = args.repeats or (5 if args.quick else 21 if big else 61)
        max_time = 20.0 if args.quick else None
        params, grads = make_data(shapes, args.seed + k)
        log(f"{size}: {len(shapes)} tensors, {n:,} elements, {repeats} rounds")
        for name in OPTS:
            comps = optimizer_competitors(name, params, grads)
            val = validate(comps, optimizer_expected(name, params, grads))
            rows.append(run_row("optimizer", name, label, comps, FUSED, repeats, 3, max_time, val))
            del comps
        comps = clip_competitors(grads)
        want, _ = reference.clip.clip_grad_norm(grads, MAX_NORM)
        val = validate(comps, {"grads": want})
        rows.append(run_row("clip", "clip", label, comps, FOREACH, repeats, 3, max_time, val))
        del comps
        comps = norm_competitors(grads)
        want = reference.clip.global_norm(grads)
        val = {}
        for name, (fn, _) in comps.items():
            got = float(fn())
            # torch accumulates float32 sums in float32 (2e-5 off at 25.6M elements here);
            # fusedtrain in float64
            if abs(got - want) > (1e-12 if name == OPS else 1e-4) * want:
                raise H.ValidationError(f"{name}: global norm {got!r}, expected {want!r}")
            val[name] = {"norm": got, "expected": want}
        rows.append(run_row("norm", "norm", label, comps, FOREACH, repeats, 3, max_time, val))
    elapsed = time.perf_counter() - start
    info["loadavg_end"] = list(os.getloadavg())
    text = render(rows, info, command, elapsed)
    stem = "torch_adapter_quick" if args.quick else "torch_adapter"
    md = H.write_text(args.out / f"{stem}.md", text)
    js = H.write_json(args.out / f"{stem}.json", {
        "machine": info, "config": {"command": command, "dtype": "float32", "seed": args.seed,
                                    "max_norm": MAX_NORM, "max_norm_shrink": SHRINK, "hyper": {n: OPTIMIZERS[n].hyper for n in OPTS}},
        "rows": rows, "elapsed_s": elapsed})
    print(text)
    log(f"wrote {md} and {js} ({elapsed:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
