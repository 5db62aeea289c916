#!/usr/bin/env python
"""GPU benchmarks: fusedtrain's CUDA kernels on CuPy arrays against torch on
CUDA, cuBLAS alone and a same-traffic null kernel.

Method (bench/harness.py's, for the GPU):

1. **Validate before timing.** Each fusedtrain kernel takes one step from
   inputs identical to the NumPy reference's (``fusedtrain.reference``) and
   is compared with it; a mismatch raises and nothing is timed.
2. **Time on the device** with CUDA events around each call, on CuPy's
   current stream (torch shares it: ``torch.cuda.ExternalStream``).
3. **Flush L2 between calls**: a buffer of 4x the L2 size is overwritten
   before each timed call, so every call starts from DRAM.
4. **Interleave** the competitors round by round (the start rotates), many
   rounds, and report medians, p10 / p90 and the ratio to a baseline.

Sections:

* ``optim``: one float32 step of Adam, AdamW, SGD (momentum 0.9): fusedtrain
  (one multi-tensor call) vs torch ``fused=True`` and ``foreach=True`` vs
  ``_cuda.null_step_`` (the same bytes read and written, trivial math: the
  memory ceiling), on flat arrays and on ResNet-50's 161 tensors.
* ``dense``: forward (relu, gelu) and backward of a dense layer: fusedtrain
  vs the bare cuBLAS GEMMs it needs (``cupy.matmul``) vs torch
  (``addmm`` + activation; the three backward products).
* ``ce``: softmax cross-entropy forward + backward: fusedtrain vs torch
  (``F.cross_entropy`` + autograd) vs an unfused CuPy version.

Without a CUDA device (or CuPy) the script says so and exits with status 0.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np

# bench/ itself: `python bench/<script>.py` puts the script's directory first on sys.path
import harness as H

OUT = Path(__file__).resolve().parent / "results"


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def gpu_modules():
    """(fusedtrain, cupy, torch-or-None), or exit(0) with a message."""
    import fusedtrain
    import fusedtrain.reference  # noqa: F401  (ft.reference below)

    if not fusedtrain.cuda_available():
        status = fusedtrain.build_info().get("cuda_status", {})
        print("bench/gpu.py: no usable CUDA device "
              f"({status.get('message') or status.get('error') or 'none found'}); "
              "nothing to time.")
        sys.exit(0)
    try:
        import cupy as cp

        cp.cuda.runtime.getDeviceCount()
    except Exception as exc:  # not installed, or no runtime for it
        print(f"bench/gpu.py: CuPy is needed on the GPU ({exc}); "
              'pip install "fusedtrain[cuda]". Nothing to time.')
        sys.exit(0)
    try:
        import torch

        torch = torch if torch.cuda.is_available() else None
    except ImportError:
        torch = None
    return fusedtrain, cp, torch


# ---------------------------------------------------------------------------
# device timing
# ---------------------------------------------------------------------------
class DeviceTimer:
    """CUDA-event timing of single calls on the current stream, each after
    an L2 flush."""

    def __init__(self, cp):
        self.cp = cp
        l2 = cp.cuda.Device().attributes.get("L2CacheSize", 64 << 20)
        self.flush_buf = cp.empty(max(4 * l2, 64 << 20) // 4, dtype=np.float32)
        self.start, self.end = cp.cuda.Event(), cp.cuda.Event()

    def time_ns(self, fn) -> float:
        self.flush_buf.fill(1.0)  # evicts the previous call's data from L2
        self.start.record()
        fn()
        self.end.record()
        self.end.synchronize()
        return self.cp.cuda.get_elapsed_time(self.start, self.end) * 1e6

    def measure(self, comps: dict, repeats: int, warmup: int, baseline: str) -> dict:
        names = list(comps)
        for _ in range(warmup):
            for n in names:
                comps[n]()
        self.cp.cuda.get_current_stream().synchronize()
        raw = {n: [] for n in names}
        for r in range(repeats):
            for j in range(len(names)):
                n = names[(r + j) % len(names)]
                raw[n].append(self.time_ns(comps[n]))
        out = {}
        for n in names:
            out[n] = H._stats(raw[n])
            out[n]["raw_ns"] = raw[n]
        base = np.asarray(raw[baseline])
        for n in names:
            out[n]["ratio"] = out[n]["median_ns"] / out[baseline]["median_ns"]
            out[n]["paired_ratio"] = float(np.median(np.asarray(raw[n]) / base))
        return out


# ---------------------------------------------------------------------------
# optimizers
# ---------------------------------------------------------------------------
OPTIMS = {
    # name: (fusedtrain.ops fn, reference fn, states, hyper, torch class, torch state keys)
    "adam": ("adam_", "adam", ("exp_avg", "exp_avg_sq"), {}, "Adam", ("exp_avg", "exp_avg_sq")),
    "adamw": ("adamw_", "adamw", ("exp_avg", "exp_avg_sq"), {"weight_decay": 1e-2}, "AdamW",
              ("exp_avg", "exp_avg_sq")),
    "sgd": ("sgd_", "sgd", ("momentum_buffer",), {"momentum": 0.9}, "SGD", ("momentum_buffer",)),
}


def optim_shapes(size: str) -> list:
    if size == "resnet50":
        from optim import resnet50_shapes  # bench/optim.py

        return resnet50_shapes()
    return [(int(size),)]


def optim_case(ft, cp, torch, timer, name, size, repeats, warmup):
    fn_name, ref_name, states, hyper, tcls, tkeys = OPTIMS[name]
    rng = np.random.default_rng(0)
    shapes = optim_shapes(size)
    host = {"params": [(0.05 * rng.standard_normal(s)).astype(np.float32) for s in shapes],
            "grads": [(0.1 * rng.standard_normal(s)).astype(np.float32) for s in shapes]}
    for st in states:
        host[st] = [np.zeros(s, np.float32) for s in shapes]
    kw = dict(hyper, lr=1e-3, step=1)
    ops = getattr(ft.ops, fn_name)
    ref = getattr(ft.reference, ref_name)

    # validate one step against the reference
    dev = {k: [cp.asarray(a) for a in v] for k, v in host.items()}
    ops(dev["params"], dev["grads"], *[dev[s] for s in states], **kw)
    want = {k: [a.copy() for a in v] for k, v in host.items()}
    for i in range(len(shapes)):
        ref(want["params"][i], want["grads"][i], *[want[s][i] for s in states], **kw)
    H.validate(f"fusedtrain {name}", {k: [cp.asnumpy(a) for a in dev[k]] for k in want},
               {k: want[k] for k in ["params", *states]}, rtol=1e-5, atol=1e-7)

    step = {"t": 1}

    def fused_step():
        step["t"] += 1
        ops(dev["params"], dev["grads"], *[dev[s] for s in states], **dict(kw, step=step["t"]))

    null_written = [dev["params"]] + [dev[s] for s in states]
    comps = {"fusedtrain": fused_step,
             "null kernel": lambda: ft.backend._cuda.null_step_(
                 null_written, dev["grads"], cp.cuda.get_current_stream().ptr)}
    if torch is not None:
        for variant in ("fused", "foreach"):
            params = [torch.nn.Parameter(torch.as_tensor(cp.asnumpy(a), device="cuda"))
                      for a in dev["params"]]
            for p, g in zip(params, dev["grads"]):
                p.grad = torch.as_tensor(cp.asnumpy(g), device="cuda")
            opt = getattr(torch.optim, tcls)(params, lr=1e-3, **hyper, **{variant: True})
            comps[f"torch {variant}"] = opt.step
    res = timer.measure(comps, repeats, warmup, baseline="fusedtrain")
    total = sum(math.prod(s) for s in shapes)
    bytes_moved = total * 4 * (2 * (1 + len(states)) + 1)  # read+write params/states, read grads
    return {"section": "optim", "case": f"{name} {size}", "elements": total,
            "bytes": bytes_moved, "results": res}


# ---------------------------------------------------------------------------
# dense layers
# ---------------------------------------------------------------------------
def dense_case(ft, cp, torch, timer, B, n_in, n_out, act, repeats, warmup):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((B, n_in)).astype(np.float32)
    w = (rng.standard_normal((n_in, n_out)) / math.sqrt(n_in)).astype(np.float32)
    b = (0.5 * rng.standard_normal(n_out)).astype(np.float32)
    dy = rng.standard_normal((B, n_out)).astype(np.float32)
    gx, gw, gb, gdy = (cp.asarray(a) for a in (x, w, b, dy))
    y, saved = ft.ops.dense_forward(gx, gw, gb, act)
    want_y, want_z = ft.reference.dense_forward(x.astype(np.float64), w.astype(np.float64),
                                                      b.astype(np.float64), act)
    tol = 1e-4 * math.sqrt(n_in)
    H.check_close(f"fusedtrain dense {act} y", cp.asnumpy(y).astype(np.float64), want_y,
                  rtol=tol, atol=tol)
    dx, dw, db = ft.ops.dense_backward(gdy, gx, gw, saved, act)
    want = ft.reference.dense_backward(dy.astype(np.float64), x.astype(np.float64),
                                             w.astype(np.float64), want_z, act)
    for label, got, exp, k in (("dx", dx, want[0], n_out), ("dw", dw, want[1], B),
                               ("db", db, want[2], B)):
        t = 1e-4 * math.sqrt(k)
        H.check_close(f"fusedtrain dense {act} {label}", cp.asnumpy(got).astype(np.float64), exp,
                      rtol=t, atol=t * float(np.abs(exp).max()))

    out = cp.empty((B, n_out), np.float32)
    dx_o, dw_o, db_o = cp.empty_like(gx), cp.empty_like(gw), cp.empty_like(gb)
    ws = cp.empty((B, n_out), np.float32)
    comps = {
        "fusedtrain fwd": lambda: ft.ops.dense_forward(gx, gw, gb, act, out=out),
        "cuBLAS GEMM alone": lambda: cp.matmul(gx, gw, out=out),
        "fusedtrain bwd": lambda: ft.ops.dense_backward(gdy, gx, gw, saved, act, dw_out=dw_o,
                                                        db_out=db_o, dx_out=dx_o, workspace=ws),
        "cuBLAS bwd GEMMs alone": lambda: (cp.matmul(gx.T, gdy, out=dw_o),
                                           cp.matmul(gdy, gw.T, out=dx_o)),
    }
    if torch is not None:
        tx, tw, tb, tdy = (torch.as_tensor(a, device="cuda") for a in (x, w, b, dy))
        tact = torch.relu if act == "relu" else torch.nn.functional.gelu

        def torch_fwd():
            return tact(torch.addmm(tb, tx, tw))

        tz = torch.addmm(tb, tx, tw)

        def torch_bwd():
            tzz = tz.detach().requires_grad_(True)
            (g,) = torch.autograd.grad(tact(tzz), tzz, tdy)
            return g @ tw.T, tx.T @ g, g.sum(0)

        comps["torch fwd"] = torch_fwd
        comps["torch bwd"] = torch_bwd
    res = timer.measure(comps, repeats, warmup, baseline="fusedtrain fwd")
    return {"section": "dense", "case": f"{act} B={B} in={n_in} out={n_out}",
            "flops_fwd": 2 * B * n_in * n_out, "results": res}


# ---------------------------------------------------------------------------
# softmax cross-entropy
# ---------------------------------------------------------------------------
def ce_case(ft, cp, torch, timer, N, C, repeats, warmup):
    rng = np.random.default_rng(2)
    x = (3 * rng.standard_normal((N, C))).astype(np.float32)
    y = rng.integers(0, C, N)
    gx, gy = cp.asarray(x), cp.asarray(y)
    loss, grad = ft.ops.softmax_cross_entropy(gx, gy)
    want_loss, want_grad = ft.reference.softmax_cross_entropy(x, y)
    H.check_close("fusedtrain ce loss", np.asarray(loss, np.float64),
                  np.asarray(want_loss, np.float64), rtol=1e-5, atol=0)
    H.check_close("fusedtrain ce grad", cp.asnumpy(grad), want_grad, rtol=1e-5,
                  atol=1e-5 * float(np.abs(want_grad).max()))
    out = cp.empty_like(gx)
    rows = cp.arange(N)

    def cupy_unfused():
        m = gx.max(axis=1, keepdims=True)
        e = cp.exp(gx - m)
        s = e.sum(axis=1, keepdims=True)
        g = e / s
        g[rows, gy] -= 1
        g /= N
        return float((cp.log(s[:, 0]) - (gx[rows, gy] - m[:, 0])).mean()), g

    comps = {"fusedtrain": lambda: ft.ops.softmax_cross_entropy(gx, gy, out=out),
             "cupy unfused": cupy_unfused}
    if torch is not None:
        tx, ty = torch.as_tensor(x, device="cuda"), torch.as_tensor(y, device="cuda")

        def torch_ce():
            t = tx.detach().requires_grad_(True)
            loss = torch.nn.functional.cross_entropy(t, ty)
            (g,) = torch.autograd.grad(loss, t)
            return float(loss), g  # float(): the same read-back fusedtrain does

        comps["torch"] = torch_ce
    res = timer.measure(comps, repeats, warmup, baseline="fusedtrain")
    return {"section": "ce", "case": f"N={N} C={C}", "results": res}


# ---------------------------------------------------------------------------
# report
# ---------------------------------------------------------------------------
def report(rows: list) -> str:
    lines = []
    for sec in ("optim", "dense", "ce"):
        sec_rows = [r for r in rows if r["section"] == sec]
        if not sec_rows:
            continue
        table = []
        for r in sec_rows:
            for name, st in r["results"].items():
                extra = ""
                if sec == "optim":
                    extra = f"{r['bytes'] / st['median_ns']:.0f} GB/s"
                table.append([r["case"], name, H.format_ns(st["median_ns"]),
                              H.format_ns(st["p10_ns"]), H.format_ns(st["p90_ns"]),
                              f"{st['paired_ratio']:.2f}", extra])
        lines.append(f"## {sec}\n")
        lines.append(H.markdown_table(["case", "competitor", "median", "p10", "p90",
                                       "time / baseline", "bandwidth"], table))
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sections", nargs="+", default=["optim", "dense", "ce"],
                    choices=["optim", "dense", "ce"])
    ap.add_argument("--optimizers", nargs="+", default=list(OPTIMS), choices=list(OPTIMS))
    ap.add_argument("--sizes", nargs="+", default=["1048576", "16777216", "67108864", "resnet50"])
    ap.add_argument("--repeats", type=int, default=101)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--quick", action="store_true", help="few sizes and repeats (smoke test)")
    ap.add_argument("--no-torch", action="store_true")
    ap.add_argument("--out", default=str(OUT))
    args = ap.parse_args(argv)

    ft, cp, torch = gpu_modules()
    if args.no_torch:
        torch = None
    if torch is not None:  # torch launches on CuPy's current stream
        stream = torch.cuda.ExternalStream(cp.cuda.get_current_stream().ptr)
        torch.cuda.set_stream(stream)
    if args.quick:
        args.sizes, args.repeats, args.warmup = ["1048576", "resnet50"], 11, 3
    timer = DeviceTimer(cp)
    rows = []
    if "optim" in args.sections:
        for name in args.optimizers:
            for size in args.sizes:
                log(f"optim {name} {size}")
                rows.append(optim_case(ft, cp, torch, timer, name, size, args.repeats,
                                       args.warmup))
    if "dense" in args.sections:
        shapes = [(4096, 1024, 1024), (256, 4096, 4096)] if not args.quick else [(1024, 512, 512)]
        for (B, n_in, n_out) in shapes:
            for act in ("relu", "gelu"):
                log(f"dense {act} {B}x{n_in}x{n_out}")
                rows.append(dense_case(ft, cp, torch, timer, B, n_in, n_out, act, args.repeats,
                                       args.warmup))
    if "ce" in args.sections:
        shapes = [(4096, 1000), (65536, 10), (512, 32000)] if not args.quick else [(4096, 1000)]
        for (N, C) in shapes:
            log(f"ce {N}x{C}")
            rows.append(ce_case(ft, cp, torch, timer, N, C, args.repeats, args.warmup))

    text = report(rows)
    print(text)
    stem = "gpu_quick" if args.quick else "gpu"
    info = H.machine_info()
    info["gpu"] = cp.cuda.runtime.getDeviceProperties(cp.cuda.Device().id)["name"].decode()
    H.write_json(Path(args.out) / f"{stem}.json", {"machine": info, "rows": rows})
    H.write_text(Path(args.out) / f"{stem}.md", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
