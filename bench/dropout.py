"""Benchmark of dropout, forward and backward (float32, CPU).

Forward ``y, mask = dropout(x, p)`` (p = 0.1, into preallocated buffers where
the library allows) over arrays of 1M and 16M elements:

* ``fusedtrain``     ``fusedtrain.ops.dropout(x, p, seed, offset, out=y, mask_out=m)``:
                     Philox4x32-10 counter-based mask, one pass
* ``numpy``          as a NumPy programmer writes it: ``m = rng.random(n,
                     dtype=float32) >= p; y = x * m * (1 / (1 - p))`` (its own
                     generator, not Philox)
* ``torch``          ``torch.nn.functional.dropout(x, p, training=True)`` (its
                     own generator; its mask is not returned, torch keeps it
                     implicitly as ``y != 0``)
* ``copy``           ``numpy.copyto(y, x)``: reading x and writing y, a floor
                     that leaves out the mask and the generator

Backward ``dx = dy * mask / (1 - p)``: fusedtrain.ops.dropout_backward(out=),
NumPy ``np.multiply(dy, mask, out); dx *= scale``, torch ``dy * mask * scale``.

Before timing, fusedtrain's mask and output are compared with
``fusedtrain.reference.dropout`` bit for bit, and every other competitor's
output with ``x * its mask * scale`` (its mask read from its output) and its
keep rate with 1 - p (within 4 standard deviations). Then the harness warms
up, interleaves the competitors round by round and reports medians and
paired ratios (bench/harness.py). GB/s counts x read, y written and the
1-byte mask written (9 bytes per element forward; dy and mask read, dx
written backward).

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python bench/dropout.py [--quick]
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

import fusedtrain
from fusedtrain import ops, reference

# bench/ itself: `python bench/<script>.py` puts the script's directory first on sys.path
import harness as H

try:
    import torch
except ImportError:  # torch is an optional competitor
    torch = None

P = 0.1
SEED, OFFSET = 1234, 7
FT, NP_, TORCH, COPY = "fusedtrain", "numpy", "torch", "copy"
SIZES = {"1M": 1 << 20, "16M": 16 << 20}
BYTES_FWD, BYTES_BWD = 9, 9


def keep_rate_ok(mask: np.ndarray, p: float) -> bool:
    n = mask.size
    sigma = np.sqrt(p * (1 - p) / n)
    return abs(mask.mean() - (1 - p)) <= 4 * sigma


def forward_competitors(x: np.ndarray) -> tuple[dict, dict]:
    """({name: step}, {name: validation record}); each validated first."""
    n = x.size
    scale = np.float32(1.0 / (1.0 - P))
    y, m = np.empty_like(x), np.empty(x.shape, np.bool_)
    want_y, want_m = reference.dropout(x, P, SEED, OFFSET)

    def ft():
        ops.dropout(x, P, SEED, OFFSET, out=y, mask_out=m)
    ft()
    if not (np.array_equal(m, want_m) and y.tobytes() == want_y.tobytes()):
        raise H.ValidationError("fusedtrain: mask or y differs from reference.dropout")
    record = {FT: "mask and y bit for bit equal to reference.dropout"}

    rng = np.random.default_rng(0)
    ny, nm, u = np.empty_like(x), np.empty(x.shape, np.bool_), np.empty(n, np.float32)

    def numpy_fwd():
        rng.random(out=u, dtype=np.float32)
        np.greater_equal(u, np.float32(P), out=nm)
        np.multiply(x, nm, out=ny)
        np.multiply(ny, scale, out=ny)
    numpy_fwd()
    if not (np.array_equal(ny, x * nm * scale) and keep_rate_ok(nm, P)):
        raise H.ValidationError("numpy: y != x * mask * scale or keep rate off")
    record[NP_] = "y == x * mask * scale; keep rate within 4 sigma"
    comps = {FT: ft, NP_: numpy_fwd}

    if torch is not None:
        tx = torch.from_numpy(x)
        torch.manual_seed(0)
        out = {}

        def torch_fwd():
            out["y"] = torch.nn.functional.dropout(tx, P, training=True)
        torch_fwd()
        ty = out["y"].numpy()
        tm = ty != 0
        if not (np.allclose(ty, x * tm * scale, rtol=1e-6, atol=0) and keep_rate_ok(tm, P)):
            raise H.ValidationError("torch: y != x * mask * scale or keep rate off")
        record[TORCH] = "y == x * (y != 0) * scale (rtol 1e-6); keep rate within 4 sigma"
        comps[TORCH] = torch_fwd

    cy = np.empty_like(x)
    comps[COPY] = lambda: np.copyto(cy, x)
    return comps, record


def backward_competitors(x: np.ndarray) -> tuple[dict, dict]:
    scale = np.float32(1.0 / (1.0 - P))
    _, mask = reference.dropout(x, P, SEED, OFFSET)
    dy = x[::-1].copy()
    dx = np.empty_like(x)
    want = reference.dropout_backward(dy, mask, P)

    def ft():
        ops.dropout_backward(dy, mask, P, out=dx)
    ft()
    if dx.tobytes() != want.tobytes():
        raise H.ValidationError("fusedtrain: dx differs from reference.dropout_backward")
    record = {FT: "dx bit for bit equal to reference.dropout_backward"}
    ndx = np.empty_like(x)

    def numpy_bwd():
        np.multiply(dy, mask, out=ndx)
        np.multiply(ndx, scale, out=ndx)
    numpy_bwd()
    H.check_close("numpy.dx", ndx, want)
    record[NP_] = "dx within float32 tolerance of the reference"
    comps = {FT: ft, NP_: numpy_bwd}
    if torch is not None:
        tdy, tm = torch.from_numpy(dy), torch.from_numpy(mask)
        out = {}

        def torch_bwd():
            out["dx"] = tdy * tm * float(scale)
        torch_bwd()
        H.check_close("torch.dx", out["dx"].numpy(), want)
        record[TORCH] = "dx within float32 tolerance of the reference"
        comps[TORCH] = torch_bwd
    cy = np.empty_like(x)
    comps[COPY] = lambda: np.copyto(cy, dy)
    return comps, record


def render(payload: dict) -> str:
    m = payload["machine"]
    lines = ["# Dropout, forward and backward (float32, CPU)", "",
             f"{m.get('cpu_model', '?')}, {payload['config']['threads']} threads, fusedtrain "
             f"{m.get('fusedtrain', {}).get('simd', '?')} (Philox path "
             f"{fusedtrain.build_info()['philox']}); {payload['config']['torch']}.", "",
             f"p = {P}. Median time per call; GB/s counts 9 bytes per element (x read, y "
             "written, 1-byte mask written; backward: dy and mask read, dx written); "
             "`× numpy`, `× torch` = that competitor's time / fusedtrain's (paired: the median over "
             "rounds of the per-round ratio; > 1: fusedtrain faster); "
             "`vs copy` = fusedtrain's GB/s / numpy.copyto's (which moves 8 bytes per element "
             "and draws no random numbers).", ""]
    names = [FT, NP_, TORCH, COPY]
    headers = ["size", "pass"] + [f"{n}" for n in names] + [
        "fusedtrain GB/s", "× numpy", "× torch", "vs copy"]
    rows = []
    for size, entry in payload["results"].items():
        for pas in ("forward", "backward"):
            res, n = entry[pas], entry["n"]
            t = [H.format_ns(res[x]["median_ns"]) if x in res else "n/a" for x in names]
            ft_ns = res[FT]["median_ns"]
            gbps = BYTES_FWD * n / ft_ns
            copy_gbps = 8 * n / res[COPY]["median_ns"]

            def speed(name):
                return f"{res[name]['paired_ratio']:.2f}" if name in res else "n/a"
            rows.append([size, pas] + t + [f"{gbps:.1f}", speed(NP_), speed(TORCH),
                                             f"{gbps / copy_gbps:.2f}"])
    lines.append(H.markdown_table(headers, rows))
    lines.append("")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    H.add_size_args(ap, SIZES, min_time=1.0, quick_help="1M only, few repeats")
    args = ap.parse_args(argv)
    H.warn_openblas_env()
    if args.quick:
        args.sizes, args.repeats, args.min_time = ["1M"], 7, 0.2
    if args.threads:
        fusedtrain.set_num_threads(args.threads)
    if torch is not None:
        torch.set_num_threads(fusedtrain.get_num_threads())
    results = {}
    for size in args.sizes:
        n = SIZES[size] if size in SIZES else int(size)
        x = np.random.default_rng(1).standard_normal(n, dtype=np.float32)
        entry = {"n": n, "validation": {}}
        for pas, make in (("forward", forward_competitors), ("backward", backward_competitors)):
            comps, record = make(x)
            entry["validation"][pas] = record
            entry[pas] = H.measure(comps, args.repeats, warmup=3, min_time=args.min_time,
                                   baseline=FT)
            print(f"{size} {pas}: " + ", ".join(
                f"{k} {H.format_ns(v['median_ns'])}" for k, v in entry[pas].items()),
                file=sys.stderr)
        results[size] = entry
    payload = {"machine": H.machine_info(),
               "config": {"sizes": args.sizes, "repeats": args.repeats, "p": P,
                          "threads": fusedtrain.get_num_threads(),
                          "torch": f"torch {torch.__version__}" if torch is not None
                          else "torch not installed"},
               "results": results}
    H.write_results(args.out, "dropout", args.quick, payload, render)
    return 0


if __name__ == "__main__":
    sys.exit(main())
