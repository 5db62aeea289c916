"""Benchmark of the fused optimizer steps (float32, CPU).

For Adam, AdamW, SGD (momentum 0.9), RMSProp and Adagrad, and for flat arrays
of 256K, 1M, 16M and 64M elements, a flat array of ResNet-50's size and
ResNet-50's 161 parameter tensors, this times one optimizer step of:

* ``fusedtrain``       fusedtrain.ops.<opt>_ over the list (one fused call)
* ``null kernel``      fusedtrain._core.null_step_: the same memory traffic with
                       trivial math, the memory ceiling
* ``torch fused``      torch.optim.<Opt>(fused=True)  (n/a for RMSprop)
* ``torch foreach``    torch.optim.<Opt>(foreach=True)
* ``numpy reference``  fusedtrain.reference.<opt>, looping over the arrays
                       (few samples at the large sizes: it is slow)
* ``fusedtrain flat``  (ResNet-50 list only) fusedtrain on one flat array of the
                       same 25,557,032 elements, for the list / flat ratio

Every competitor steps its own copy of identical data. Before anything is
timed, every competitor takes one step from identical inputs and each buffer
it writes is checked against the NumPy reference (the null kernel against its
own definition) -- on a 256K array and a small ResNet-50-shaped list first,
then at every timed size. See bench/README.md.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python bench/optim.py [--quick]
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

import fusedtrain
from fusedtrain import _core, ops, reference

# bench/ itself: `python bench/<script>.py` puts the script's directory first on sys.path
import harness as H

try:
    import torch
except ImportError:  # the torch columns become n/a
    torch = None

DTYPE = np.float32
#: the step count of the validation step; states are made up as if
#: ``FIRST_STEP - 1`` steps had run (so bias corrections and SGD's
#: first-step rule are not the trivial case)
FIRST_STEP = 10

FT = "fusedtrain"
NULL = "null kernel"
FUSED = "torch fused"
FOREACH = "torch foreach"
REF = "numpy reference"
FT_FLAT = "fusedtrain flat"


# ---------------------------------------------------------------------------
# optimizers under test
# ---------------------------------------------------------------------------
@dataclass(frozen=True)
class OptSpec:
    name: str                      # fusedtrain.ops.<name>_, fusedtrain.reference.<name>
    label: str
    states: tuple[str, ...]        # state buffers, in ops/reference argument order
    torch_keys: tuple[str, ...]    # the same buffers' keys in torch's optimizer state
    positive: tuple[str, ...]      # states that must start >= 0
    bytes_per_element: int         # effective traffic: reads + writes, float32
    hyper: dict                    # shared by every competitor; torch.optim's names
    torch_class: str
    takes_step: bool               # ops/reference take step=
    torch_fused: bool              # torch 2.13 CPU supports fused=True
    torch_step: bool = True        # torch's state holds "step" (all but SGD)


# Small learning rates keep values finite over hundreds of steps, but large
# enough that one step moves the parameters far more than the validation
# tolerance (checked: see _check_sensitive).
OPTIMIZERS = {
    s.name: s
    for s in (
        OptSpec("adam", "Adam", ("exp_avg", "exp_avg_sq"), ("exp_avg", "exp_avg_sq"),
                ("exp_avg_sq",), 28,
                dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0), "Adam", True, True),
        OptSpec("adamw", "AdamW", ("exp_avg", "exp_avg_sq"), ("exp_avg", "exp_avg_sq"),
                ("exp_avg_sq",), 28,
                dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2), "AdamW", True,
                True),
        OptSpec("sgd", "SGD (momentum 0.9)", ("momentum_buffer",), ("momentum_buffer",), (), 20,
                dict(lr=1e-3, momentum=0.9), "SGD", True, True, torch_step=False),
        OptSpec("rmsprop", "RMSProp", ("square_avg",), ("square_avg",), ("square_avg",), 20,
                dict(lr=1e-3, alpha=0.99, eps=1e-8), "RMSprop", False, False),
        OptSpec("adagrad", "Adagrad", ("state_sum",), ("sum",), ("state_sum",), 20,
                dict(lr=1e-3, lr_decay=0.0, eps=1e-10), "Adagrad", True, True),
    )
}

for _s in OPTIMIZERS.values():  # bytes/element = (params, states) read+written, grads read
    assert _s.bytes_per_element == 4 * (2 * (1 + len(_s.states)) + 1), _s


# ---------------------------------------------------------------------------
# sizes
# ---------------------------------------------------------------------------
def resnet50_shapes(width: int = 64, num_classes: int = 1000) -> list[tuple[int, ...]]:
    """Parameter shapes of torchvision's resnet50 (``width=64``), in
    ``named_parameters()`` order: stem conv + BN, 16 bottleneck blocks
    (conv1/bn1, conv2/bn2, conv3/bn3, then downsample conv/BN in each stage's
    first block), fc weight and bias. A smaller ``width`` gives the same
    161-tensor structure, smaller."""
    shapes: list[tuple[int, ...]] = []

    def conv_bn(cout: int, cin: int, k: int) -> None:
        shapes.extend([(cout, cin, k, k), (cout,), (cout,)])

    conv_bn(width, 3, 7)
    inplanes = width
    for stage, blocks in enumerate((3, 4, 6, 3)):
        planes = width * 2**stage
        for b in range(blocks):
            conv_bn(planes, inplanes, 1)
            conv_bn(planes, planes, 3)
            conv_bn(planes * 4, planes, 1)
            if b == 0:
                conv_bn(planes * 4, inplanes, 1)
            inplanes = planes * 4
    shapes.extend([(num_classes, inplanes), (num_classes,)])
    return shapes


RESNET50 = resnet50_shapes()
RESNET50_TOTAL = 25_557_032
assert len(RESNET50) == 161, len(RESNET50)
assert sum(4 == len(s) for s in RESNET50) == 53 and sum(1 == len(s) for s in RESNET50) == 107
assert sum(math.prod(s) for s in RESNET50) == RESNET50_TOTAL, sum(math.prod(s) for s in RESNET50)
RESNET50_SMALL = resnet50_shapes(width=4, num_classes=10)  # validation: 96,782 elements
RESNET50_W32 = resnet50_shapes(width=32)  # --quick: half the channels, 6,917,640 elements
assert len(RESNET50_SMALL) == 161 and len(RESNET50_W32) == 161


@dataclass(frozen=True)
class Size:
    key: str
    label: str
    shapes: tuple[tuple[int, ...], ...]

    @property
    def elements(self) -> int:
        return sum(math.prod(s) for s in self.shapes)

    @property
    def is_list(self) -> bool:
        return len(self.shapes) > 1


def parse_size(token: str) -> Size:
    """``256K``, ``1M``, ``1000003`` (flat, K = 2**10, M = 2**20),
    ``flat-resnet50`` (flat, 25,557,032), ``resnet50`` (161 tensors), or the
    same structure with half the channels (``resnet50-w32``) or 1/16 of them
    and 10 classes (``resnet50-small``)."""
    t = token.strip()
    if t.lower() == "resnet50":
        return Size("resnet50", "resnet50 list (161 tensors)", tuple(RESNET50))
    if t.lower() == "resnet50-small":
        return Size("resnet50-small", "resnet50-small list (161 tensors)", tuple(RESNET50_SMALL))
    if t.lower() == "resnet50-w32":
        return Size("resnet50-w32", "resnet50-w32 list (161 tensors)", tuple(RESNET50_W32))
    if t.lower() == "flat-resnet50":
        return Size("flat-resnet50", "flat 25.6M (resnet50 total)", ((RESNET50_TOTAL,),))
    mult = {"K": 2**10, "M": 2**20}.get(t[-1:].upper(), 1)
    digits = t[:-1] if mult > 1 else t
    try:
        n = int(digits) * mult
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"size: expected e.g. 256K, 1M, 1000003, flat-resnet50 or resnet50; received {token!r}"
        ) from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"size: expected at least 1 element; received {token!r}")
    return Size(t.upper() if mult > 1 else str(n), f"flat {t.upper() if mult > 1 else n}", ((n,),))


DEFAULT_SIZES = ("256K", "1M", "16M", "64M", "flat-resnet50", "resnet50")
QUICK_SIZES = ("256K", "1M", "resnet50-w32")
VALIDATION_SIZES = ("256K", "resnet50-small")


@dataclass(frozen=True)
class Plan:
    repeats: int   # interleaved rounds
    warmup: int
    ref_samples: int | None  # cap on the NumPy reference's samples (None: every round)
    max_time: float | None = None  # seconds of rounds per row, then stop (--quick)


def plan_for(elements: int, quick: bool) -> Plan:
    """Repeats by size: many where a step takes microseconds, few where it
    takes a good fraction of a second; the whole default run stays well under
    10 minutes on a 2-core machine."""
    if quick:
        if elements <= 300_000:
            return Plan(60, 5, None, 1.5)
        if elements <= 1_200_000:
            return Plan(40, 3, 10, 1.5)
        return Plan(5, 1, 1, 1.5)
    if elements <= 300_000:
        return Plan(300, 20, None)
    if elements <= 1_200_000:
        return Plan(200, 10, 50)
    if elements <= 5_000_000:
        return Plan(100, 5, 10)
    if elements <= 20_000_000:
        return Plan(41, 3, 5)
    if elements <= 40_000_000:
        return Plan(21, 2, 3)
    return Plan(15, 2, 3)


# ---------------------------------------------------------------------------
# data and competitors
# ---------------------------------------------------------------------------
def make_pool(elements: int, seed: int) -> list[np.ndarray]:
    """Four flat standard-normal float32 arrays, shared by all optimizers of one size."""
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(elements, dtype=DTYPE) for _ in range(4)]


@dataclass
class Problem:
    """Initial values of one optimizer at one size: flat arrays and their
    per-tensor views. Competitors copy these, so all start identical."""
    spec: OptSpec
    size: Size
    flat: dict[str, np.ndarray]
    lists: dict[str, list[np.ndarray]] = field(init=False)

    def __post_init__(self):
        offsets = np.cumsum([0] + [math.prod(s) for s in self.size.shapes])
        self.lists = {
            k: [a[offsets[i]:offsets[i + 1]].reshape(s) for i, s in enumerate(self.size.shapes)]
            for k, a in self.flat.items()
        }

    @property
    def buffers(self) -> tuple[str, ...]:
        return ("params", "grads") + self.spec.states

    def copies(self) -> dict[str, list[np.ndarray]]:
        """Separate C-contiguous arrays, one per tensor, for one competitor."""
        return {k: [np.array(v, copy=True) for v in vs] for k, vs in self.lists.items()}

    def split(self, flat: dict[str, np.ndarray]) -> dict[str, list[np.ndarray]]:
        """Views of flat arrays in this problem's tensor shapes."""
        offsets = np.cumsum([0] + [math.prod(s) for s in self.size.shapes])
        return {k: [a[offsets[i]:offsets[i + 1]].reshape(s)
                    for i, s in enumerate(self.size.shapes)] for k, a in flat.items()}


def make_problem(spec: OptSpec, size: Size, pool: list[np.ndarray]) -> Problem:
    """params ~ 0.05 N(0,1) (weight-like), grads ~ 0.1 N(0,1), states as after
    a few steps: non-negative ones ~ 0.01 N^2, others ~ 0.1 N(0,1)."""
    flat = {"params": DTYPE(0.05) * pool[0], "grads": DTYPE(0.1) * pool[1]}
    for j, st in enumerate(spec.states):
        x = pool[2 + j]
        flat[st] = DTYPE(0.01) * x * x if st in spec.positive else DTYPE(0.1) * x
    return Problem(spec, size, flat)


@dataclass
class Competitor:
    name: str
    step: Callable[[], None]                          # one optimizer step
    result: Callable[[], dict[str, list[np.ndarray]]]  # written buffers, per tensor
    kind: str = "optimizer"                           # or "null"


def _counter(start: int) -> Callable[[], int]:
    t = [start - 1]

    def nxt() -> int:
        t[0] += 1
        return t[0]

    return nxt


def fusedtrain_competitor(pb: Problem, flat: bool = False) -> Competitor:
    spec = pb.spec
    if flat:
        fl = {k: v.copy() for k, v in pb.flat.items()}
        arr = {k: [v] for k, v in fl.items()}
        result_views = pb.split({k: fl[k] for k in ("params",) + spec.states})
    else:
        arr = pb.copies()
        result_views = {k: arr[k] for k in ("params",) + spec.states}
    fn = getattr(ops, spec.name + "_")
    P, G, S = arr["params"], arr["grads"], [arr[s] for s in spec.states]
    hyper = spec.hyper
    nxt = _counter(FIRST_STEP)
    if spec.takes_step:
        def step():
            fn(P, G, *S, step=nxt(), **hyper)
    else:
        def step():
            fn(P, G, *S, **hyper)
    return Competitor(FT_FLAT if flat else FT, step, lambda: result_views)


def reference_competitor(pb: Problem) -> Competitor:
    spec = pb.spec
    arr = pb.copies()
    fn = getattr(reference, spec.name)
    P, G = arr["params"], arr["grads"]
    S = [arr[s] for s in spec.states]
    rows = list(zip(P, G, *S))
    hyper = spec.hyper
    nxt = _counter(FIRST_STEP)

    def step():
        kw = dict(hyper, step=nxt()) if spec.takes_step else hyper
        for bufs in rows:
            fn(*bufs, **kw)

    return Competitor(REF, step, lambda: {k: arr[k] for k in ("params",) + spec.states})


def null_competitor(pb: Problem) -> Competitor:
    """Same traffic as the step: params and states read and written, grads read."""
    arr = pb.copies()
    written = [arr["params"]] + [arr[s] for s in pb.spec.states]
    read = arr["grads"]
    null_step = _core.null_step_

    def step():
        null_step(written, read)

    names = ("params",) + pb.spec.states
    return Competitor(NULL, step, lambda: {k: arr[k] for k in names}, kind="null")


def null_expected(pb: Problem) -> dict[str, list[np.ndarray]]:
    """What one null_step_ does, written in NumPy: w0 += x; w_k = w_k * 0.5 + x."""
    g = pb.lists["grads"]
    out = {"params": [p + x for p, x in zip(pb.lists["params"], g)]}
    for s in pb.spec.states:
        out[s] = [w * DTYPE(0.5) + x for w, x in zip(pb.lists[s], g)]
    return out


def torch_competitor(pb: Problem, variant: str) -> Competitor:
    """torch.optim with foreach=True or fused=True on its own copy of the data
    (torch.from_numpy shares memory), p.grad set once, state preset to the
    problem's values at step FIRST_STEP - 1."""
    spec = pb.spec
    arr = pb.copies()
    params = [torch.nn.Parameter(torch.from_numpy(p)) for p in arr["params"]]
    for p, g in zip(params, arr["grads"]):
        p.grad = torch.from_numpy(g)
    cls = getattr(torch.optim, spec.torch_class)
    opt = cls(params, **spec.hyper, **{variant: True})
    for i, p in enumerate(params):
        st = opt.state[p]
        st.clear()
        if spec.torch_step:
            st["step"] = torch.tensor(float(FIRST_STEP - 1), dtype=torch.float32)
        for name, key in zip(spec.states, spec.torch_keys):
            st[key] = torch.from_numpy(arr[name][i])

    def result():
        out = {"params": [p.detach().numpy() for p in params]}
        for name, key in zip(spec.states, spec.torch_keys):
            out[name] = [opt.state[p][key].numpy() for p in params]
        return out

    return Competitor(FUSED if variant == "fused" else FOREACH, opt.step, result)


def build_competitors(pb: Problem, with_torch: bool = True) -> dict[str, Competitor]:
    comps = {c.name: c for c in (fusedtrain_competitor(pb), null_competitor(pb))}
    if with_torch and torch is not None:
        if pb.spec.torch_fused:
            comps[FUSED] = torch_competitor(pb, "fused")
        comps[FOREACH] = torch_competitor(pb, "foreach")
    comps[REF] = reference_competitor(pb)
    if pb.size.is_list:
        comps[FT_FLAT] = fusedtrain_competitor(pb, flat=True)
    return comps


# ---------------------------------------------------------------------------
# validation
# ---------------------------------------------------------------------------
def _check_sensitive(pb: Problem, expected: dict[str, list[np.ndarray]]) -> float:
    """The validation step must move the parameters by much more than the
    tolerance, or a competitor that skipped the update would pass. Returns
    median |dp| / median tolerance."""
    head = 1 << 20  # a sample of each tensor is enough for a median
    after = [a.reshape(-1)[:head] for a in expected["params"]]
    before = [b.reshape(-1)[:head] for b in pb.lists["params"]]
    dp = np.concatenate([np.abs(a - b) for a, b in zip(after, before)])
    tol = np.concatenate([H.ATOL_F32 + H.RTOL_F32 * np.abs(a) for a in after])
    ratio = float(np.median(dp) / np.median(tol))
    if not ratio > 10:
        raise H.ValidationError(
            f"{pb.spec.name} @ {pb.size.label}: one step moves params by only {ratio:.3g}x the "
            "tolerance (median); raise lr so that validation can see a wrong update")
    return ratio


def validate_problem(pb: Problem, comps: dict[str, Competitor]) -> dict:
    """One step of every competitor from identical inputs, checked against
    the reference's step (the null kernel: against null_expected, exactly)."""
    ref = comps[REF]
    ref.step()
    expected = ref.result()  # not stepped again before the checks below are done
    record = {"update_over_tolerance": _check_sensitive(pb, expected)}
    null_exp = None
    for name, c in comps.items():
        if name == REF:
            continue
        c.step()
        if c.kind == "null":
            null_exp = null_exp or null_expected(pb)
            record[name] = H.validate(name, c.result(), null_exp, rtol=0.0, atol=0.0)
        else:
            record[name] = H.validate(name, c.result(), expected)
    return record


# ---------------------------------------------------------------------------
# the run
# ---------------------------------------------------------------------------
def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def run_size(size: Size, specs: list[OptSpec], plan: Plan, args, seed: int) -> list[dict]:
    rows = []
    t0 = time.perf_counter()
    pool = make_pool(size.elements, seed)
    for spec in specs:
        t1 = time.perf_counter()
        pb = make_problem(spec, size, pool)
        comps = build_competitors(pb, with_torch=not args.no_torch)
        val = validate_problem(pb, comps)
        t2 = time.perf_counter()
        fns = {name: c.step for name, c in comps.items()}
        max_samples = {}
        if args.no_reference_timing:
            max_samples[REF] = 0
        elif plan.ref_samples is not None:
            max_samples[REF] = plan.ref_samples
        res = H.measure(fns, plan.repeats, plan.warmup, args.min_time, baseline=FT,
                        max_samples=max_samples, max_time=plan.max_time,
                        warmup_by_name={REF: 0 if args.no_reference_timing
                                        else 1 if plan.ref_samples is not None else plan.warmup})
        t3 = time.perf_counter()
        for name, c in comps.items():  # hundreds of steps later, still finite?
            for buf, arrays in c.result().items():
                if not all(np.isfinite(a).all() for a in arrays):
                    raise H.ValidationError(f"{name}.{buf}: non-finite values after timing "
                                            f"{spec.name} @ {size.label}; lower lr")
        nbytes = spec.bytes_per_element * size.elements
        for st in res.values():
            st["gbps"] = nbytes / st["median_ns"]
        row = {
            "optimizer": spec.name,
            "label": spec.label,
            "size": size.key,
            "size_label": size.label,
            "elements": size.elements,
            "tensors": len(size.shapes),
            "bytes_per_element": spec.bytes_per_element,
            "bytes_per_step": nbytes,
            "hyper": spec.hyper,
            "repeats": plan.repeats,
            "rounds": max(st["samples"] for st in res.values()),
            "validation": val,
            "competitors": res,
            "ratios": ratios(res),
            "seconds": {"setup_and_validation": t2 - t1, "timing": t3 - t2},
            "loadavg_after": list(os.getloadavg()),  # > CPUs: something else ran too
        }
        rows.append(row)
        ft = res[FT]
        log(f"  {spec.name:8s} {size.label:30s} fusedtrain {H.format_ns(ft['median_ns']):>9s} "
            f"{ft['gbps']:6.1f} GB/s | " + " ".join(
                f"{k}={v:.2f}" for k, v in row["ratios"].items() if v is not None)
            + f"  [{t2 - t1:.1f}s + {t3 - t2:.1f}s]")
        del comps, pb, fns
        gc.collect()
    del pool
    gc.collect()
    log(f"  ({size.label}: {time.perf_counter() - t0:.1f} s)")
    return rows


def ratios(res: dict) -> dict:
    """Throughput ratios from the interleaved rounds (paired): > 1 means
    fusedtrain is faster (or, for ft/null, closer to the memory ceiling)."""
    def paired(name):
        return res[name]["paired_ratio"] if name in res else None

    out = {
        "ft_over_null": paired(NULL),
        "ft_vs_torch_fused": paired(FUSED),
        "ft_vs_torch_foreach": paired(FOREACH),
        "ft_vs_numpy": paired(REF),
        "list_over_flat": paired(FT_FLAT),
    }
    return out


# ---------------------------------------------------------------------------
# reports
# ---------------------------------------------------------------------------
def _x(v, digits: int = 2) -> str:
    return "n/a" if v is None or not math.isfinite(v) else f"{v:.{digits}f}×"


def _gbps(res: dict, name: str) -> str:
    return f"{res[name]['gbps']:.1f}" if name in res else "n/a"


def summary_table(rows: list[dict]) -> str:
    headers = ["optimizer", "size", "fusedtrain median (p10–p90)", "fusedtrain GB/s",
               "null GB/s", "torch fused GB/s", "torch foreach GB/s", "NumPy ref GB/s",
               "ft / null", "ft vs torch fused", "ft vs torch foreach", "list / flat"]
    body = []
    for r in rows:
        res, q = r["competitors"], r["ratios"]
        ft = res[FT]
        body.append([
            r["label"], r["size_label"],
            f"{H.format_ns(ft['median_ns'])} ({H.format_ns(ft['p10_ns'])}–{H.format_ns(ft['p90_ns'])})",
            _gbps(res, FT), _gbps(res, NULL), _gbps(res, FUSED), _gbps(res, FOREACH),
            _gbps(res, REF), _x(q["ft_over_null"]), _x(q["ft_vs_torch_fused"]),
            _x(q["ft_vs_torch_foreach"]), _x(q["list_over_flat"]) if r["tensors"] > 1 else "",
        ])
    return H.markdown_table(headers, body, "ll" + "r" * 10)


def detail_table(rows: list[dict]) -> str:
    headers = ["optimizer", "size", "competitor", "samples", "median", "p10", "p90", "GB/s",
               "time / fusedtrain (paired)"]
    body = []
    for r in rows:
        for name, st in r["competitors"].items():
            body.append([r["label"], r["size_label"], name, st["samples"],
                         H.format_ns(st["median_ns"]), H.format_ns(st["p10_ns"]),
                         H.format_ns(st["p90_ns"]), f"{st['gbps']:.1f}",
                         f"{st['paired_ratio']:.3f}"])
    return H.markdown_table(headers, body, "lll" + "r" * 6)


TARGETS = (
    # (size key, ratio key, threshold, description)
    ("64M", "ft_over_null", 0.95, "flat 64M: fusedtrain ≥ 0.95× null-kernel throughput"),
    ("64M", "ft_vs_torch_fused", 1.0, "flat 64M: fusedtrain ≥ 1.0× torch fused"),
    ("resnet50", "list_over_flat", 0.95, "resnet50 list: ≥ 0.95× flat throughput"),
    ("resnet50", "ft_vs_torch_fused", 1.0, "resnet50 list: fusedtrain ≥ 1.0× torch fused"),
    ("256K", "ft_vs_torch_fused", 1.5, "flat 256K: fusedtrain ≥ 1.5× torch fused"),
    ("1M", "ft_vs_torch_fused", 1.5, "flat 1M: fusedtrain ≥ 1.5× torch fused"),
)


def target_rows(rows: list[dict]) -> list[dict]:
    out = []
    for size_key, key, thr, desc in TARGETS:
        for r in rows:
            if r["size"] != size_key:
                continue
            v = r["ratios"][key]
            ok = None if v is None else bool(v >= thr)
            out.append({"target": desc, "optimizer": r["label"], "ratio": key, "threshold": thr,
                        "measured": v, "met": ok})
    return out


def targets_table(targets: list[dict]) -> str:
    body = [[t["target"], t["optimizer"], _x(t["measured"], 3),
             "n/a" if t["met"] is None else ("yes" if t["met"] else "**NO**")] for t in targets]
    return H.markdown_table(["target", "optimizer", "measured", "met"], body, "llrl")


def machine_line(info: dict) -> str:
    ft = info["fusedtrain"]
    return (f"{info['date']} · {info['cpu_model']} · {info['cpu_affinity']} CPUs · "
            f"fusedtrain {ft['version']} ({ft['simd']}, {info['fusedtrain_threads']} threads, "
            f"{ft['compiler']}) · torch {info.get('torch')} ({info.get('torch_threads')} threads) · "
            f"numpy {info['numpy']} · python {info['python']}")


def max_load(rows: list[dict]) -> float:
    return max((r["loadavg_after"][0] for r in rows), default=math.nan)


def render(rows: list[dict], targets: list[dict], info: dict, command: list[str],
           elapsed: float) -> str:
    parts = [
        "# fusedtrain optimizer step benchmark (float32, CPU)",
        "",
        machine_line(info),
        "",
        f"Command: `{' '.join(command)}` · {elapsed:.0f} s · median of interleaved rounds; "
        "GB/s = effective bytes (Adam/AdamW 28, others 20 per element) × elements / median time; "
        "ratios are medians of per-round time ratios, > 1 = fusedtrain faster. "
        "See bench/README.md.",
        f"Load average (1 min) at start {info['loadavg_start'][0]:.2f}, at end "
        f"{info['loadavg_end'][0]:.2f}, highest after a row {max_load(rows):.2f}, on "
        f"{info['cpu_affinity']} CPUs: above the CPU count, other jobs shared the cores and the "
        "times (less so the ratios) are inflated.",
        "",
        summary_table(rows),
        "",
    ]
    if targets:
        parts += ["## Targets", "", targets_table(targets), ""]
    parts += ["## All competitors", "", detail_table(rows), ""]
    return "\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true",
                    help=f"smoke test (< 60 s): sizes {' '.join(QUICK_SIZES)}, few repeats; "
                         "writes optim_quick.{md,json}")
    ap.add_argument("--sizes", nargs="+", type=parse_size, metavar="SIZE",
                    help=f"default: {' '.join(DEFAULT_SIZES)}")
    ap.add_argument("--optimizers", nargs="+", choices=list(OPTIMIZERS), metavar="OPT",
                    help=f"default: all of {' '.join(OPTIMIZERS)}")
    ap.add_argument("--repeats", type=int, help="interleaved rounds at every size "
                    "(default: by size, 300 at 256K down to 15 at 64M)")
    ap.add_argument("--min-time", type=float, default=0.0,
                    help="keep adding rounds (up to 10x --repeats) until the timed calls "
                         "of one size/optimizer took this many seconds")
    ap.add_argument("--threads", type=int,
                    help="threads for fusedtrain and torch (default: as they start)")
    ap.add_argument("--no-torch", action="store_true", help="skip the torch competitors")
    ap.add_argument("--no-reference-timing", action="store_true",
                    help="validate against the NumPy reference but do not time it")
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results",
                    help="output folder (default bench/results)")
    ap.add_argument("--name", help="output file stem (default optim, or optim_quick with --quick)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--render", type=Path, metavar="JSON",
                    help="only rewrite the markdown report next to a results JSON (after a "
                         "change of format); measures nothing")
    args = ap.parse_args(argv)
    if args.render is not None:
        d = json.loads(args.render.read_text())
        targets = target_rows(d["rows"])
        text = render(d["rows"], targets, d["machine"], d["config"]["command"], d["elapsed_s"])
        md = H.write_text(args.render.with_suffix(".md"), text)
        print(text)
        log(f"wrote {md}")
        return 0
    args.argv = ["python", "bench/optim.py", *argv]
    if args.repeats is not None and args.repeats < 1:
        ap.error(f"--repeats must be >= 1; received {args.repeats}")

    if args.threads is not None:
        fusedtrain.set_num_threads(args.threads)
        if torch is not None:
            torch.set_num_threads(args.threads)
    if torch is None and not args.no_torch:
        log("torch is not installed: torch columns are n/a")
        args.no_torch = True
    for var in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE"):
        if var in os.environ:
            log(f"warning: {var} is set (slows BLAS here); run with "
                "env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE")

    specs = [OPTIMIZERS[n] for n in (args.optimizers or OPTIMIZERS)]
    sizes = args.sizes or [parse_size(s) for s in (QUICK_SIZES if args.quick else DEFAULT_SIZES)]
    info = H.machine_info()
    log(machine_line(info))
    start = time.perf_counter()

    # 1. validate every competitor on a 256K array and a small ResNet-50 list
    #    before anything is timed
    log("validating against fusedtrain.reference (one step from identical inputs) ...")
    preflight = []
    for size in (parse_size(s) for s in VALIDATION_SIZES):
        pool = make_pool(size.elements, args.seed + 1)
        for spec in specs:
            pb = make_problem(spec, size, pool)
            rec = validate_problem(pb, build_competitors(pb, with_torch=not args.no_torch))
            preflight.append({"optimizer": spec.name, "size": size.key, **rec})
            errs = {k: max(v["max_abs_err"].values()) for k, v in rec.items()
                    if isinstance(v, dict)}
            log(f"  ok {spec.name:8s} {size.label:34s} max abs err: "
                + ", ".join(f"{k} {v:.1e}" for k, v in errs.items()))

    # 2. per size: validate again at that size, then time
    rows = []
    for k, size in enumerate(sizes):
        plan = plan_for(size.elements, args.quick)
        if args.repeats is not None:
            plan = Plan(args.repeats, plan.warmup, plan.ref_samples, plan.max_time)
        log(f"{size.label}: {size.elements:,} elements in {len(size.shapes)} tensor(s), "
            f"{plan.repeats} rounds")
        rows += run_size(size, specs, plan, args, args.seed + 100 + k)
    elapsed = time.perf_counter() - start

    info["loadavg_end"] = list(os.getloadavg())
    targets = target_rows(rows)
    text = render(rows, targets, info, args.argv, elapsed)
    stem = args.name or ("optim_quick" if args.quick else "optim")
    md = H.write_text(args.out / f"{stem}.md", text)
    js = H.write_json(args.out / f"{stem}.json", {
        "machine": info,
        "config": {"command": args.argv, "first_step": FIRST_STEP, "dtype": "float32",
                   "rtol": H.RTOL_F32, "atol": H.ATOL_F32, "seed": args.seed,
                   "quick": args.quick, "min_time": args.min_time,
                   "resnet50_shapes": RESNET50},
        "preflight_validation": preflight,
        "rows": rows,
        "targets": targets,
        "elapsed_s": elapsed,
    })
    print(text)
    log(f"wrote {md} and {js} ({elapsed:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
