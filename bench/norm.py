"""Benchmark of batch and layer normalization, forward + backward (float32, CPU).

For x of shape (128, 256), (1024, 1024), (8192, 1024) and (65536, 64) this
times one forward + backward (affine, no activation; batch norm in training
mode with running statistics) of:

* ``fusedtrain``       ops.batch_norm_forward / batch_norm_backward (or the
                       layer_norm pair) into preallocated outputs
* ``torch``            F.batch_norm / F.layer_norm then .backward(), on
                       torch.from_numpy views (gradients reset each call),
                       when torch is installed
* ``numpy reference``  fusedtrain.reference.normalize on the same float32 arrays
* ``copy``             numpy.copyto of an array of x's size (read + write once)

fusedtrain and torch run on the same number of threads (2 by default).
Before anything is timed every competitor's y, dx, dweight and dbias are
checked against the float64 reference. Then the competitors are timed
interleaved (bench/harness.py: warm-up, rotating order, medians).

Roofline: a forward + backward must at least read x and write y (forward),
read dy and x and write dx (backward): ``bytes = 5 * B * C * 4``; the
machine's bandwidth is the copy's (``2 * B * C * 4 / t``) and
``roofline ratio = (bytes / t_fusedtrain) / bandwidth``. The batch-norm
kernels make 4 passes forward (3 reads of x in training, 1 write) and 5
backward (2 reads each of dy and x, 1 write), so their ceiling is about 5/9;
the layer-norm kernels read each row from memory once (1 + 1 forward, 2 + 1
backward), so theirs is 1.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python bench/norm.py [--quick]

Writes bench/results/norm.md and norm.json (``--quick``: norm_quick.*).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

import fusedtrain
from fusedtrain import ops
from fusedtrain.reference import normalize as ref

import harness as H

try:
    import torch
    import torch.nn.functional as F
except ImportError:
    torch = None

DTYPE = np.float32
SHAPES = ((128, 256), (1024, 1024), (8192, 1024), (65536, 64))
FT, TORCH, REF, COPY = "fusedtrain", "torch", "numpy reference", "copy"
RTOL, ATOL = 1e-4, 1e-4


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def bench_shape(kind: str, b: int, c: int, repeats: int, use_torch: bool, rng) -> dict:
    x = (rng.standard_normal((b, c)) * 2 + 1).astype(DTYPE)
    dy = rng.standard_normal((b, c)).astype(DTYPE)
    w = (rng.standard_normal(c) + 1).astype(DTYPE)
    bias = rng.standard_normal(c).astype(DTYPE)
    rm, rv = np.zeros(c, DTYPE), np.ones(c, DTYPE)
    y, dx, dw, db = (np.empty_like(x), np.empty_like(x), np.empty_like(w), np.empty_like(w))
    x64, dy64, w64, b64 = (a.astype(np.float64) for a in (x, dy, w, bias))
    bn = kind == "batch_norm"

    def run_ft():
        if bn:
            _, s = ops.batch_norm_forward(x, w, bias, rm, rv, out=y)
            return (y, *ops.batch_norm_backward(dy, x, s, w, dx_out=dx, dweight_out=dw,
                                                dbias_out=db))
        _, s = ops.layer_norm_forward(x, w, bias, out=y)
        return (y, *ops.layer_norm_backward(dy, x, s, w, dx_out=dx, dweight_out=dw,
                                            dbias_out=db))

    def run_ref(xx=x, dd=dy, ww=w, bb=bias):
        if bn:
            yy, s = ref.batch_norm_forward(xx, ww, bb, None, None)
            return (yy, *ref.batch_norm_backward(dd, xx, s, ww))
        yy, s = ref.layer_norm_forward(xx, ww, bb)
        return (yy, *ref.layer_norm_backward(dd, xx, s, ww))

    if use_torch:
        tx = torch.from_numpy(x).requires_grad_(True)
        tw = torch.from_numpy(w).requires_grad_(True)
        tb = torch.from_numpy(bias).requires_grad_(True)
        tdy = torch.from_numpy(dy)
        trm, trv = torch.zeros(c), torch.ones(c)

        def run_torch():
            tx.grad = tw.grad = tb.grad = None
            if bn:
                ty = F.batch_norm(tx, trm, trv, tw, tb, training=True)
            else:
                ty = F.layer_norm(tx, (c,), tw, tb)
            ty.backward(tdy)
            return ty

    # ---- validate ----
    want = run_ref(x64, dy64, w64, b64)
    errs = {}
    got = {FT: run_ft(), REF: run_ref()}
    if use_torch:
        ty = run_torch()
        got[TORCH] = (ty.detach().numpy(), tx.grad.numpy(), tw.grad.numpy(), tb.grad.numpy())
    for name, outs in got.items():
        errs[name] = {}
        for label, a, e in zip(("y", "dx", "dweight", "dbias"), outs, want):
            scale = max(1.0, float(np.abs(e).max()))
            errs[name][label] = H.check_close(f"{name}.{label}", np.asarray(a, np.float64), e,
                                              rtol=RTOL, atol=ATOL * scale)
    dst = np.empty_like(x)
    np.copyto(dst, x)

    competitors = {FT: run_ft, REF: run_ref, COPY: lambda: np.copyto(dst, x)}
    if use_torch:
        competitors[TORCH] = run_torch
    ref_samples = max(3, min(repeats, int(2e7 // (b * c))))
    stats = H.measure(competitors, repeats, warmup=3, baseline=FT,
                      max_samples={REF: ref_samples}, warmup_by_name={REF: 1})
    t = {n: st["median_ns"] * 1e-9 for n, st in stats.items()}
    model_bytes = 5 * x.nbytes
    bw = 2 * x.nbytes / t[COPY]
    return {
        "kernel": kind, "B": b, "C": c, "median_s": t, "validation": errs,
        "bytes_model": model_bytes, "bandwidth_copy_GBs": bw / 1e9,
        "fusedtrain_GBs": model_bytes / t[FT] / 1e9, "roofline_ratio": model_bytes / t[FT] / bw,
        "speedup_vs_numpy": t[REF] / t[FT],
        "speedup_vs_torch": t[TORCH] / t[FT] if use_torch else None,
        "stats": {n: {k: v for k, v in st.items() if k != "raw_ns"} for n, st in stats.items()},
    }


def render(rows: list[dict], info: dict, use_torch: bool) -> str:
    fmt = H.format_ns
    headers = ["kernel", "B", "C", "fusedtrain", "torch", "NumPy ref", "copy", "copy GB/s",
               "fusedtrain GB/s", "roofline ratio", "× torch", "× NumPy"]
    body = []
    for r in rows:
        t = r["median_s"]
        body.append([r["kernel"], r["B"], r["C"], fmt(t[FT] * 1e9),
                     fmt(t[TORCH] * 1e9) if use_torch else "n/a", fmt(t[REF] * 1e9),
                     fmt(t[COPY] * 1e9), f"{r['bandwidth_copy_GBs']:.1f}",
                     f"{r['fusedtrain_GBs']:.1f}", f"{r['roofline_ratio']:.2f}",
                     f"{r['speedup_vs_torch']:.2f}" if use_torch else "n/a",
                     f"{r['speedup_vs_numpy']:.1f}"])
    ft = info["fusedtrain"]
    la = info.get("loadavg_start")
    return "\n".join([
        "# fusedtrain batch / layer normalization, forward + backward (float32, CPU)",
        "",
        f"{info['cpu_model']}, {info['cpu_affinity']} cores usable, fusedtrain {ft['version']} "
        f"({ft['simd']}, {info['fusedtrain_threads']} threads), NumPy {info['numpy']}, "
        + (f"torch {info['torch']} ({info['torch_threads']} threads)" if use_torch else "no torch")
        + (f"; load average at start {' / '.join(f'{v:.2f}' for v in la)}" if la else "")
        + f"; {info['date']}.",
        "",
        "Median time of one forward + backward (affine, identity activation; batch norm in "
        "training mode with running statistics), every competitor validated against the "
        "float64 reference first and timed interleaved. `copy GB/s`: numpy.copyto of x "
        "(2 × x bytes / t, single-threaded); `fusedtrain GB/s` = 5 × x bytes (read x, write "
        "y; read dy and x, write dx) / t; `roofline ratio` = fusedtrain GB/s / copy GB/s. "
        "Batch norm makes 9 passes over (B, C) arrays (forward: 3 reads of x for the two-pass "
        "statistics and the output, 1 write; backward: 2 reads each of dy and x, 1 write), "
        "so its ratio is bounded near 5/9 once x leaves the caches; layer norm makes 5. "
        "`× torch`, `× NumPy`: their time / fusedtrain's.",
        "",
        H.markdown_table(headers, body, "lrr" + "r" * 9),
        "",
        "Load average at the end: "
        + (" / ".join(f"{v:.2f}" for v in info["loadavg_end"]) if info.get("loadavg_end")
           else "n/a")
        + ". The machine is shared: with other work on its cores every multi-threaded "
        "competitor waits at its barriers, and the figures scatter from run to run.",
    ])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="the two smaller shapes, few repeats")
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--threads", type=int, default=2, help="fusedtrain and torch threads")
    ap.add_argument("--no-torch", action="store_true")
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = ap.parse_args(argv)

    H.warn_openblas_env()
    fusedtrain.set_num_threads(args.threads)
    use_torch = torch is not None and not args.no_torch
    if use_torch:
        torch.set_num_threads(args.threads)
    info = H.machine_info()
    rng = np.random.default_rng(20261208)
    shapes = SHAPES[:2] if args.quick else SHAPES
    rows = []
    for kind in ("batch_norm", "layer_norm"):
        for b, c in shapes:
            repeats = args.repeats or (5 if args.quick else (30 if b * c <= 2**20 else 11))
            log(f"{kind} B={b} C={c}: validating and timing ({repeats} rounds)")
            row = bench_shape(kind, b, c, repeats, use_torch, rng)
            log(f"  fusedtrain {H.format_ns(row['median_s'][FT] * 1e9)}, "
                f"roofline ratio {row['roofline_ratio']:.2f}")
            rows.append(row)
    info["loadavg_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    text = render(rows, info, use_torch)
    print(text)
    stem = "norm_quick" if args.quick else "norm"
    H.write_text(args.out / f"{stem}.md", text)
    H.write_json(args.out / f"{stem}.json", {
        "benchmark": "batch / layer normalization forward + backward, float32",
        "machine": info,
        "config": {"shapes": [list(s) for s in shapes], "dtype": "float32",
                   "threads": args.threads, "torch": use_torch},
        "results": rows,
    })
    log(f"wrote {args.out / (stem + '.md')} and {stem}.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
