"""Benchmark of the mixed-precision optimizer step (CPU).

Adam over bfloat16 params with float32 master weights and float32 states
(``fusedtrain.ops.adam_(..., master_params=...)``), on flat arrays, against:

* ``mixed null``    ``_core.null_mixed_step_``: the same memory traffic (bfloat16
                    params written, bfloat16 grads read, float32 master and two
                    float32 states read and written; 28 bytes per element) with
                    trivial math -- the memory ceiling of this step
* ``fp32 Adam``     ``fusedtrain.ops.adam_`` on float32 params, grads and states
                    (28 bytes per element too: 4 + 4 read-write buffers of 4
                    bytes, minus nothing) -- what mixed precision costs
* ``fp32 null``     ``_core.null_step_`` with float32 Adam's traffic
* ``bf16-state Adam`` bfloat16 params, float32 master, bfloat16 states (20 bytes
                    per element)
* ``fp16 mixed Adam`` float16 params and grads, float32 master and states (28
                    bytes per element, as bfloat16 mixed Adam)
* ``DeepSpeedCPUAdam`` (when deepspeed and its cpu_adam extension load): float32
                    params and states, as ZeRO-Offload steps them on the CPU
* ``DeepSpeedCPUAdam bf16`` its bfloat16 mode: bfloat16 params and grads,
                    float32 states, no master weights (the bfloat16 param is
                    updated in place: 22 bytes per element)

Before anything is timed, each competitor takes one step from identical inputs
and every buffer it writes is compared with the NumPy reference
(``fusedtrain.reference.mixed`` / ``reference.adam``; the null kernels with
their definitions in NumPy), bit for bit for fusedtrain. Then the harness
warms up, interleaves the competitors round by round, and reports medians
and paired ratios (bench/harness.py).

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python bench/mixed.py [--quick]
"""

from __future__ import annotations

import argparse
import sys

import ml_dtypes
import numpy as np

import fusedtrain
from fusedtrain import _core, ops, reference

# bench/ itself: `python bench/<script>.py` puts the script's directory first on sys.path
import harness as H

BF16 = np.dtype(ml_dtypes.bfloat16)
HYPER = dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
STEP = 10  # states made up as if 9 steps had run

MIXED = "bf16 mixed Adam"
MIXED_NULL = "mixed null"
F32 = "fp32 Adam"
F32_NULL = "fp32 null"
BF16_STATES = "bf16-state Adam"
F16_MIXED = "fp16 mixed Adam"
DEEPSPEED = "DeepSpeedCPUAdam"
DEEPSPEED_BF16 = "DeepSpeedCPUAdam bf16"
BYTES = {MIXED: 28, MIXED_NULL: 28, F32: 28, F32_NULL: 28, BF16_STATES: 20, F16_MIXED: 28,
         DEEPSPEED: 28, DEEPSPEED_BF16: 22}

SIZES = {"1M": 1 << 20, "16M": 16 << 20, "64M": 64 << 20}


def _data(n, seed=0):
    rng = np.random.default_rng(seed)
    master = rng.standard_normal(n, dtype=np.float32)
    grad = (rng.standard_normal(n, dtype=np.float32) * 1e-2)
    m = rng.standard_normal(n, dtype=np.float32) * 1e-3
    v = np.abs(rng.standard_normal(n, dtype=np.float32)) * 1e-5
    return master, grad, m, v


class Problem:
    """Identical inputs for every competitor, each with its own copies."""

    def __init__(self, n):
        self.n = n
        self.master, self.grad32, self.m, self.v = _data(n)
        self.param16 = self.master.astype(BF16)
        self.grad16 = self.grad32.astype(BF16)
        self.param_h = self.master.astype(np.float16)
        self.grad_h = self.grad32.astype(np.float16)

    def narrow(self, dtype):
        """(params, grads) in the narrow dtype: bfloat16 or float16."""
        return (self.param16, self.grad16) if dtype == BF16 else (self.param_h, self.grad_h)

    def mixed(self, state_dtype=np.float32, dtype=BF16):
        p, g = self.narrow(dtype)
        st = dict(p=p.copy(), g=g, master=self.master.copy(),
                  m=self.m.astype(state_dtype), v=self.v.astype(state_dtype))

        def step():
            ops.adam_(st["p"], st["g"], st["m"], st["v"], step=STEP, master_params=st["master"],
                      **HYPER)
        return step, st

    def mixed_null(self):
        st = dict(p=self.param16.copy(), g=self.grad16, master=self.master.copy(),
                  m=self.m.copy(), v=self.v.copy())
        lists = ([st["p"]], [st["g"]], [[st["master"]], [st["m"]], [st["v"]]])

        def step():
            _core.null_mixed_step_(*lists)
        return step, st

    def f32(self):
        st = dict(p=self.master.copy(), g=self.grad32, m=self.m.copy(), v=self.v.copy())

        def step():
            ops.adam_(st["p"], st["g"], st["m"], st["v"], step=STEP, **HYPER)
        return step, st

    def f32_null(self):
        st = dict(p=self.master.copy(), g=self.grad32, m=self.m.copy(), v=self.v.copy())
        lists = ([[st["p"]], [st["m"]], [st["v"]]], [st["g"]])

        def step():
            _core.null_step_(*lists)
        return step, st

    def deepspeed(self, bf16=False):
        """DeepSpeedCPUAdam over float32 params, or (bf16) over bfloat16
        params and grads with its default float32 states."""
        import torch
        from deepspeed.ops.adam import DeepSpeedCPUAdam

        if bf16:
            p = torch.nn.Parameter(torch.from_numpy(self.master.copy()).to(torch.bfloat16))
            p.grad = torch.from_numpy(self.grad32.copy()).to(torch.bfloat16)
        else:
            p = torch.nn.Parameter(torch.from_numpy(self.master.copy()))
            p.grad = torch.from_numpy(self.grad32.copy())
        b1, b2 = HYPER["betas"]
        opt = DeepSpeedCPUAdam([p], lr=HYPER["lr"], betas=(b1, b2), eps=HYPER["eps"],
                               weight_decay=0.0, adamw_mode=False)
        opt.state[p]["step"] = STEP - 1
        opt.state[p]["exp_avg"] = torch.from_numpy(self.m.copy())
        opt.state[p]["exp_avg_sq"] = torch.from_numpy(self.v.copy())
        st = dict(p=p.data.view(torch.int16).numpy().view(BF16) if bf16 else p.data.numpy(),
                  m=opt.state[p]["exp_avg"].numpy(), v=opt.state[p]["exp_avg_sq"].numpy())
        return opt.step, st


# ---------------------------------------------------------------------------
# validation: one step from identical inputs against the references
# ---------------------------------------------------------------------------
def expected_mixed(pb: Problem, state_dtype=np.float32, dtype=BF16) -> dict:
    p, g = pb.narrow(dtype)
    p, master = p.copy(), pb.master.copy()
    m, v = pb.m.astype(state_dtype), pb.v.astype(state_dtype)
    reference.mixed(reference.adam, p, g, master, m, v, step=STEP, **HYPER)
    return {"params": [p.astype(np.float32)], "master": [master], "exp_avg": [m.astype(np.float32)],
            "exp_avg_sq": [v.astype(np.float32)]}


def expected_bf16_in_place(pb: Problem) -> dict:
    """The bfloat16 param updated in place (no master weights): the mixed
    step from master = the widened bfloat16 param (DeepSpeed's own order of
    operations: compared to within one bfloat16 ulp)."""
    p = pb.param16.copy()
    master = p.astype(np.float32)
    m, v = pb.m.copy(), pb.v.copy()
    reference.mixed(reference.adam, p, pb.grad16, master, m, v, step=STEP, **HYPER)
    return {"params": [p.astype(np.float32)], "exp_avg": [m], "exp_avg_sq": [v]}


def expected_f32(pb: Problem) -> dict:
    p, m, v = pb.master.copy(), pb.m.copy(), pb.v.copy()
    reference.adam(p, pb.grad32, m, v, step=STEP, **HYPER)
    return {"params": [p], "exp_avg": [m], "exp_avg_sq": [v]}


def expected_mixed_null(pb: Problem) -> dict:
    """w0 += x; w_k = w_k * 0.5 + x; params = the top 16 bits of w0."""
    x = pb.grad16.astype(np.float32)
    master = pb.master + x
    p = (master.view(np.uint32) >> 16).astype(np.uint16).view(BF16)
    return {"params": [p.astype(np.float32)], "master": [master],
            "exp_avg": [pb.m * np.float32(0.5) + x], "exp_avg_sq": [pb.v * np.float32(0.5) + x]}


def expected_f32_null(pb: Problem) -> dict:
    x = pb.grad32
    return {"params": [pb.master + x], "exp_avg": [pb.m * np.float32(0.5) + x],
            "exp_avg_sq": [pb.v * np.float32(0.5) + x]}


def result_of(st: dict) -> dict:
    out = {"params": [np.asarray(st["p"]).astype(np.float32)],
           "exp_avg": [np.asarray(st["m"]).astype(np.float32)],
           "exp_avg_sq": [np.asarray(st["v"]).astype(np.float32)]}
    if "master" in st:
        out["master"] = [st["master"]]
    return out


def competitors(pb: Problem, with_deepspeed: bool) -> dict:
    """{name: (step, state, expected, rtol, atol)}, each validated."""
    out = {
        MIXED: (*pb.mixed(), lambda: expected_mixed(pb), 0.0, 0.0),
        MIXED_NULL: (*pb.mixed_null(), lambda: expected_mixed_null(pb), 0.0, 0.0),
        F32: (*pb.f32(), lambda: expected_f32(pb), 0.0, 0.0),
        F32_NULL: (*pb.f32_null(), lambda: expected_f32_null(pb), 0.0, 0.0),
        BF16_STATES: (*pb.mixed(BF16), lambda: expected_mixed(pb, BF16), 0.0, 0.0),
        F16_MIXED: (*pb.mixed(dtype=np.float16),
                    lambda: expected_mixed(pb, dtype=np.float16), 0.0, 0.0),
    }
    if with_deepspeed:
        step, st = pb.deepspeed()
        out[DEEPSPEED] = (step, st, lambda: expected_f32(pb), 1e-5, 1e-6)
        step, st = pb.deepspeed(bf16=True)
        # one bfloat16 ulp of the params (2^-7 relative) for DeepSpeed's rounding
        out[DEEPSPEED_BF16] = (step, st, lambda: expected_bf16_in_place(pb), 2.0 ** -7, 1e-6)
    return out


def validate_all(comps: dict) -> dict:
    record = {}
    for name, (step, st, expected, rtol, atol) in comps.items():
        step()
        record[name] = H.validate(name, result_of(st), expected(), rtol=rtol, atol=atol)
    return record


def deepspeed_status() -> tuple[bool, str]:
    try:
        import torch  # noqa: F401
        from deepspeed.ops.adam import DeepSpeedCPUAdam
        import torch as _t

        p = _t.nn.Parameter(_t.zeros(8))
        p.grad = _t.ones(8)
        DeepSpeedCPUAdam([p], lr=1e-3).step()
        import deepspeed

        return True, f"deepspeed {deepspeed.__version__}"
    except Exception as exc:  # not installed, or its C++ extension did not build
        return False, f"DeepSpeedCPUAdam unavailable: {type(exc).__name__}: {str(exc)[:200]}"


# ---------------------------------------------------------------------------
# report
# ---------------------------------------------------------------------------
def _gbps(res, name, n):
    st = res.get(name)
    return "n/a" if st is None else f"{BYTES[name] * n / st['median_ns']:.1f}"


def render(payload: dict) -> str:
    lines = ["# Mixed-precision Adam (CPU)", "",
             f"Machine: {payload['machine'].get('cpu_model', '?')}, "
             f"{payload['config']['threads']} threads, fusedtrain SIMD "
             f"{payload['machine'].get('fusedtrain', {}).get('simd', '?')}. "
             f"{payload['config']['deepspeed']}.", "",
             "Median time of one step; GB/s counts each buffer's bytes read and written "
             "(bfloat16 + float32 master Adam: 28 bytes per element; float32 Adam: 28; "
             "bfloat16 states: 20; float16 + float32 master: 28; DeepSpeed's bfloat16 mode, "
             "no master weights: 22). Ratios are paired (median over rounds of the per-round "
             "time ratio); throughput vs null = null time / Adam time.", ""]
    names = [MIXED, MIXED_NULL, F32, F32_NULL, BF16_STATES, F16_MIXED, DEEPSPEED, DEEPSPEED_BF16]
    headers = ["size"] + [f"{n} ms" for n in names] + [
        "mixed / mixed null (throughput)", "fp32 / fp32 null (throughput)",
        "mixed time / fp32 time", "mixed GB/s", "mixed null GB/s"]
    rows = []
    for size, entry in payload["results"].items():
        res, n = entry["timing"], entry["n"]
        ms = [f"{res[x]['median_ns'] / 1e6:.2f}" if x in res else "n/a" for x in names]
        thr = 1.0 / res[MIXED]["paired_ratio_vs_mixed_null"]
        thr32 = 1.0 / res[F32]["paired_ratio_vs_f32_null"]
        rows.append([size] + ms + [f"{thr:.2f}×", f"{thr32:.2f}×",
                                   f"{res[MIXED]['paired_ratio_vs_f32']:.2f}",
                                   _gbps(res, MIXED, n), _gbps(res, MIXED_NULL, n)])
    lines.append(H.markdown_table(headers, rows))
    lines += ["", "Targets:", ""]
    for t in payload["targets"]:
        lines.append(f"- {'PASS' if t['ok'] else 'FAIL'}: {t['what']} (measured {t['value']:.2f})")
    lines.append("")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    H.add_size_args(ap, SIZES, min_time=2.0, quick_help="1M and 16M, few repeats")
    ap.add_argument("--no-deepspeed", action="store_true")
    args = ap.parse_args(argv)
    H.warn_openblas_env()
    if args.quick:
        args.sizes, args.repeats, args.min_time = ["1M", "16M"], 7, 0.5
    if args.threads:
        fusedtrain.set_num_threads(args.threads)
    ds_ok, ds_note = (False, "DeepSpeed not requested") if args.no_deepspeed else deepspeed_status()
    print(ds_note, file=sys.stderr)

    results = {}
    for size in args.sizes:
        n = SIZES[size] if size in SIZES else int(size)
        pb = Problem(n)
        comps = competitors(pb, ds_ok)
        record = validate_all(comps)
        print(f"{size}: validated {', '.join(comps)}", file=sys.stderr)
        res = H.measure({k: c[0] for k, c in comps.items()}, args.repeats, warmup=3,
                        min_time=args.min_time, baseline=MIXED_NULL)
        for k in res:
            res[k]["paired_ratio_vs_mixed_null"] = res[k].pop("paired_ratio")
            res[k].pop("ratio")
        for base, key in ((F32_NULL, "paired_ratio_vs_f32_null"), (F32, "paired_ratio_vs_f32")):
            base_raw = res[base]["raw_ns"]
            for k in res:
                pairs = [t / b for t, b in zip(res[k]["raw_ns"], base_raw)]
                res[k][key] = float(np.median(pairs))
        results[size] = {"n": n, "validation": record, "timing": res}
        print(f"{size}: mixed {res[MIXED]['median_ns'] / 1e6:.2f} ms, mixed null "
              f"{res[MIXED_NULL]['median_ns'] / 1e6:.2f} ms, fp32 {res[F32]['median_ns'] / 1e6:.2f} ms",
              file=sys.stderr)

    largest = args.sizes[-1]
    thr = 1.0 / results[largest]["timing"][MIXED]["paired_ratio_vs_mixed_null"]
    targets = [{"what": f"{largest}: bf16 + fp32-master Adam ≥ 0.9× its null kernel's throughput",
                "value": thr, "ok": thr >= 0.9}]
    timing = results[largest]["timing"]
    for ds, ours in ((DEEPSPEED_BF16, MIXED), (DEEPSPEED_BF16, BF16_STATES), (DEEPSPEED, F32)):
        if ds in timing:  # speed-up over DeepSpeed: its time / ours, paired
            pairs = [d / o for d, o in zip(timing[ds]["raw_ns"], timing[ours]["raw_ns"])]
            speed = float(np.median(pairs))
            targets.append({"what": f"{largest}: {ours} ≥ 1× {ds} (speed-up)", "value": speed,
                            "ok": speed >= 1.0})
    payload = {"machine": H.machine_info(),
               "config": {"sizes": args.sizes, "repeats": args.repeats, "min_time": args.min_time,
                          "threads": fusedtrain.get_num_threads(), "hyper": HYPER, "step": STEP,
                          "deepspeed": ds_note},
               "results": results, "targets": targets}
    H.write_results(args.out, "mixed", args.quick, payload, render)
    return 0


if __name__ == "__main__":
    sys.exit(main())
