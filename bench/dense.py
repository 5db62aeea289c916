"""Benchmark of the dense-layer kernels (float32, relu, CPU).

For B in {32, 128, 1024} and layers 784->256, 256->256, 256->10 this times
one forward and one backward pass of:

forward  (y = relu(x @ w + b), x (B, in), w (in, out), b (out,))
* ``fusedtrain``      ops.dense_forward(x, w, b, "relu", out=y): GEMM + fused
                      bias/relu epilogue
* ``sgemm``           the bare cblas_sgemm of the same OpenBLAS library
                      (scipy-openblas32's libscipy_openblas), called through
                      ctypes: no bias, no activation. The target baseline.
* ``ft identity``     ops.dense_forward(x, w, None, "identity", out=y): meant
                      to be the bare GEMM through fusedtrain's own binding (no
                      epilogue runs for identity without a bias); validated
                      bitwise against ``sgemm`` before it is timed
* ``numpy``           np.maximum(x @ w + b, 0)  (NumPy's own OpenBLAS build)
* ``torch``           torch.relu(nn.Linear(x)) under torch.no_grad()

backward (dy (B, out) given, saved = y)
* ``fusedtrain``      ops.dense_backward(dy, x, w, y, "relu", dw_out=, db_out=,
                      dx_out=, workspace=): one pass dz = dy * (y > 0) with db,
                      then dw = x.T @ dz and dx = dz @ w.T, every output and
                      the dz scratch preallocated (as fusedtrain.nn's layers
                      call it, and as the sgemms below write theirs)
* ``sgemm``           the two bare sgemms alone (dw = x.T @ dy, dx = dy @ w.T)
                      through ctypes into preallocated outputs. The target.
* ``ft identity``     ops.dense_backward(dy, x, w, None, "identity", ...): the
                      two GEMMs plus the db column sums, no activation
* ``numpy``           dz = dy * (y > 0); dw = x.T @ dz; db = dz.sum(0);
                      dx = dz @ w.T
* ``torch``           the functional equivalent of autograd's Linear+ReLU
                      backward, called directly WITHOUT autograd (no graph,
                      no engine): dz = aten.threshold_backward(dy, y, 0);
                      gW = dz.T @ x; gb = dz.sum(0); gx = dz @ W

Before timing, every competitor's outputs are checked element by element
against the NumPy reference evaluated in float64 (rtol 1e-5 and an atol from
the GEMM's rounding-error bound lam * sqrt(K) * u * max(|a| @ |b|), lam = 8).
A competitor that fails is reported and not timed. Each timed sample runs a
competitor ``inner`` times in a row (inner chosen so a sample takes >= ~20 us;
the same for all competitors of a row). Competitors that share a thread pool
are interleaved call by call (bench/harness.py); the three pools (fusedtrain's
OpenBLAS, NumPy's OpenBLAS, torch's OpenMP) take turns in blocks, with a short
sleep between blocks, because spinning pools on 2 cores stall one another
(see ``time_row``). The median per-call time is reported.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python bench/dense.py [--quick]
"""

from __future__ import annotations

import argparse
import ctypes
import math
import os
import sys
import time
import zlib
from pathlib import Path

import numpy as np

import fusedtrain
from fusedtrain import ops
from fusedtrain.nn import init
from fusedtrain.reference import dense as ref

# bench/ itself: `python bench/<script>.py` puts the script's directory first on sys.path
import harness as H

try:
    import torch
except ImportError:  # the torch column becomes n/a
    torch = None

F32 = np.float32
U32 = 2.0**-24
LAM = 8.0
RTOL = 1e-5
LAYERS = [(784, 256), (256, 256), (256, 10)]
BATCHES = [32, 128, 1024]
FT, SGEMM, IDENT, NP_, TORCH = "fusedtrain", "sgemm", "ft identity", "numpy", "torch"
TARGET = 1.05


# ---------------------------------------------------------------------------
# the bare sgemm of fusedtrain's OpenBLAS, through ctypes
# ---------------------------------------------------------------------------
class Sgemm:
    """cblas_sgemm of scipy-openblas32 (the library fusedtrain links), with
    every argument pre-built as a ctypes object so a call costs one foreign
    call and no conversions."""

    ROW_MAJOR, NO_TRANS, TRANS = 101, 111, 112

    def __init__(self):
        import scipy_openblas32

        self.lib = scipy_openblas32.dll if hasattr(scipy_openblas32, "dll") else ctypes.CDLL(
            os.path.join(scipy_openblas32.get_lib_dir(),
                         f"lib{scipy_openblas32.get_library()}.so"))
        self.fn = self.lib.scipy_cblas_sgemm
        self.fn.restype = None
        self.config = self.lib.scipy_openblas_get_config
        self.config.restype = ctypes.c_char_p

    def bind(self, trans_a, trans_b, M, N, K, A, lda, B, ldb, C, ldc, beta=0.0):
        """A zero-argument callable computing C = op(A) @ op(B) (+ beta C)."""
        for arr in (A, B, C):
            assert arr.dtype == F32 and arr.flags.c_contiguous
        args = (ctypes.c_int(self.ROW_MAJOR),
                ctypes.c_int(self.TRANS if trans_a else self.NO_TRANS),
                ctypes.c_int(self.TRANS if trans_b else self.NO_TRANS),
                ctypes.c_int(M), ctypes.c_int(N), ctypes.c_int(K), ctypes.c_float(1.0),
                ctypes.c_void_p(A.ctypes.data), ctypes.c_int(lda),
                ctypes.c_void_p(B.ctypes.data), ctypes.c_int(ldb), ctypes.c_float(beta),
                ctypes.c_void_p(C.ctypes.data), ctypes.c_int(ldc))
        fn = self.fn
        keep = (A, B, C)  # the callable owns its arrays: the raw pointers stay valid

        def call():
            fn(*args)
        call.arrays = keep
        return call


# ---------------------------------------------------------------------------
# one case: data, competitors, validation
# ---------------------------------------------------------------------------
def gemm_atol(a, b):
    """lam * sqrt(K + 1) * u32 * max(|a| @ |b|), a (M, K), b (K, N) in float64."""
    return LAM * math.sqrt(a.shape[1] + 1) * U32 * float((np.abs(a) @ np.abs(b)).max(initial=0))


class Case:
    def __init__(self, B, n_in, n_out, seed, sgemm: Sgemm):
        rng = np.random.default_rng(seed)
        self.B, self.n_in, self.n_out = B, n_in, n_out
        self.label = f"{n_in}→{n_out}"
        x = rng.standard_normal((B, n_in)).astype(F32)
        w = init.he_normal((n_in, n_out), rng=rng)
        b = (0.1 * rng.standard_normal(n_out)).astype(F32)
        dy = rng.standard_normal((B, n_out)).astype(F32)
        self.x, self.w, self.b, self.dy = x, w, b, dy
        x64, w64, b64, dy64 = (a.astype(np.float64) for a in (x, w, b, dy))
        # the reference, in float64
        self.y_ref, z_ref = ref.dense_forward(x64, w64, b64, "relu")
        self.xw_ref = x64 @ w64
        self.y = self.y_ref.astype(F32)  # saved for every backward competitor
        y_pos = self.y > 0  # the mask every backward competitor sees
        dz_ref = dy64 * y_pos
        self.dx_ref, self.dw_ref, self.db_ref = dz_ref @ w64.T, x64.T @ dz_ref, dz_ref.sum(0)
        self.dx_id_ref, self.dw_id_ref, self.db_id_ref = dy64 @ w64.T, x64.T @ dy64, dy64.sum(0)
        # tolerances
        xw_abs = np.abs(x64) @ np.abs(w64)
        self.atol_y = LAM * math.sqrt(n_in + 2) * U32 * float((xw_abs + np.abs(b64)).max())
        self.atol_dw = gemm_atol(x64.T, np.abs(dy64))
        self.atol_dx = gemm_atol(np.abs(dy64), w64.T)
        self.atol_db = LAM * math.sqrt(B + 1) * U32 * float(np.abs(dy64).sum(0).max())
        self.sgemm = sgemm

    # -- forward ------------------------------------------------------------
    def forward_competitors(self):
        x, w, b = self.x, self.w, self.b
        B, n_in, n_out = self.B, self.n_in, self.n_out
        out = {name: np.zeros((B, n_out), F32) for name in (FT, SGEMM, IDENT)}
        comp = {
            FT: lambda: ops.dense_forward(x, w, b, "relu", out=out[FT]),
            SGEMM: self.sgemm.bind(False, False, B, n_out, n_in, x, n_in, w, n_out, out[SGEMM],
                                   n_out),
            IDENT: lambda: ops.dense_forward(x, w, None, "identity", out=out[IDENT]),
            NP_: lambda: np.maximum(x @ w + b, 0),
        }
        results = {FT: lambda: out[FT], SGEMM: lambda: out[SGEMM], IDENT: lambda: out[IDENT]}
        if torch is not None:
            lin = torch.nn.Linear(n_in, n_out)
            with torch.no_grad():
                lin.weight.copy_(torch.from_numpy(np.ascontiguousarray(w.T)))
                lin.bias.copy_(torch.from_numpy(b))
            xt = torch.from_numpy(x)

            def torch_fwd():
                with torch.no_grad():
                    return torch.relu(lin(xt))

            comp[TORCH] = torch_fwd
        return comp, results

    def validate_forward(self, comp, results):
        """{name: None (valid) or the reason it is not timed}; runs each once."""
        status = {}
        for name, fn in comp.items():
            got = fn()
            if name in results:
                got = results[name]()
            if name == TORCH:
                got = got.numpy()
            expected = self.xw_ref if name in (SGEMM, IDENT) else self.y_ref
            try:
                H.check_close(f"forward {self.label} B={self.B} {name}", np.asarray(got, F32),
                              expected.astype(F32), rtol=RTOL, atol=self.atol_y)
                status[name] = None
            except H.ValidationError as exc:
                status[name] = f"failed validation, {str(exc).splitlines()[0]}"
        # the identity path must be the bare GEMM: the same bits as sgemm
        if status.get(IDENT) is None and status.get(SGEMM) is None:
            if not np.array_equal(results[IDENT](), results[SGEMM]()):
                status[IDENT] = "not the bare GEMM: its y differs from cblas_sgemm's bits"
        return status

    # -- backward -----------------------------------------------------------
    def backward_competitors(self):
        x, w, y, dy = self.x, self.w, self.y, self.dy
        B, n_in, n_out = self.B, self.n_in, self.n_out
        dw = {n: np.zeros((n_in, n_out), F32) for n in (FT, SGEMM, IDENT)}
        db = {n: np.zeros(n_out, F32) for n in (FT, IDENT)}
        dx_sg = np.zeros((B, n_in), F32)
        dx = {n: np.zeros((B, n_in), F32) for n in (FT, IDENT)}
        dz_ws = np.zeros((B, n_out), F32)
        last = {}
        sg_dw = self.sgemm.bind(True, False, n_in, n_out, B, x, n_in, dy, n_out, dw[SGEMM], n_out)
        sg_dx = self.sgemm.bind(False, True, B, n_in, n_out, dy, n_out, w, n_out, dx_sg, n_in)

        def ft():
            last[FT] = ops.dense_backward(dy, x, w, y, "relu", dw_out=dw[FT], db_out=db[FT],
                                          dx_out=dx[FT], workspace=dz_ws)

        def sgemm2():
            sg_dw()
            sg_dx()

        def ident():
            last[IDENT] = ops.dense_backward(dy, x, w, None, "identity", dw_out=dw[IDENT],
                                             db_out=db[IDENT], dx_out=dx[IDENT])

        def numpy_bwd():
            dz = dy * (y > 0)
            last[NP_] = (dz @ w.T, x.T @ dz, dz.sum(0))

        comp = {FT: ft, SGEMM: sgemm2, IDENT: ident, NP_: numpy_bwd}
        results = {FT: lambda: last[FT], SGEMM: lambda: (dx_sg, dw[SGEMM], None),
                   IDENT: lambda: last[IDENT], NP_: lambda: last[NP_]}
        if torch is not None:
            xt, dyt, yt = torch.from_numpy(x), torch.from_numpy(dy), torch.from_numpy(y)
            Wt = torch.from_numpy(np.ascontiguousarray(w.T))  # nn.Linear's (out, in)
            thr = torch.ops.aten.threshold_backward

            def torch_bwd():
                with torch.no_grad():
                    dz = thr(dyt, yt, 0)
                    last[TORCH] = (dz.mm(Wt), dz.t().mm(xt), dz.sum(0))

            comp[TORCH] = torch_bwd
            results[TORCH] = lambda: tuple(t.numpy() for t in last[TORCH])
        return comp, results

    def validate_backward(self, comp, results):
        status = {}
        for name, fn in comp.items():
            fn()
            dx, dw, db = results[name]()
            if name == TORCH:
                dw = dw.T
            ident = name in (SGEMM, IDENT)
            exp = ((self.dx_id_ref, self.dw_id_ref, self.db_id_ref) if ident
                   else (self.dx_ref, self.dw_ref, self.db_ref))
            try:
                for what, got, e, atol in (("dx", dx, exp[0], self.atol_dx),
                                           ("dw", dw, exp[1], self.atol_dw),
                                           ("db", db, exp[2], self.atol_db)):
                    if got is None:  # sgemm computes no db
                        continue
                    H.check_close(f"backward {self.label} B={self.B} {name} {what}",
                                  np.asarray(got, F32), e.astype(F32), rtol=RTOL, atol=atol)
                status[name] = None
            except H.ValidationError as exc:
                status[name] = f"failed validation, {str(exc).splitlines()[0]}"
        return status


# ---------------------------------------------------------------------------
# timing
# ---------------------------------------------------------------------------
def repeat(fn, inner):
    if inner == 1:
        return fn

    def run():
        for _ in range(inner):
            fn()
    return run


#: thread pools: fusedtrain's OpenMP threads (fusedtrain and ft identity,
#: interleaved call by call); OpenBLAS's own threads for the bare sgemm;
#: NumPy's OpenBLAS; torch
POOLS = {FT: "fusedtrain", SGEMM: "openblas", IDENT: "fusedtrain", NP_: "numpy",
         TORCH: "torch"}


def inner_count(fn, sample_ns):
    """Calls per timed sample so that one sample of ``fn`` takes >= sample_ns."""
    for _ in range(3):
        fn()
    t0 = time.perf_counter_ns()
    n = 0
    while time.perf_counter_ns() - t0 < 2_000_000 or n < 3:
        fn()
        n += 1
    per_call = (time.perf_counter_ns() - t0) / n
    return int(min(200, max(1, math.ceil(sample_ns / per_call))))


def time_row(comp, status, rounds, block_s, idle_s, sample_ns=20_000, sgemm=None, threads=2):
    """Times the valid competitors of one row; returns {name: stats} per call.

    Two thread pools spinning on 2 cores stall each other for milliseconds
    (OpenBLAS workers busy-wait ~0.1 s after a call), so calls of different
    libraries are not interleaved one by one. Each round runs one block per
    pool, in rotating order: sleep ``idle_s`` (the other pools go quiet),
    then interleave that pool's competitors call by call (harness.measure)
    for ``block_s`` seconds. fusedtrain, sgemm and ft identity share a pool,
    so their ratios come from call-by-call interleaving.
    """
    valid = {n: f for n, f in comp.items() if status.get(n) is None}
    inner = inner_count(valid[FT], sample_ns)
    pools = {}
    for name, fn in valid.items():
        pools.setdefault(POOLS[name], {})[name] = repeat(fn, inner)
    order = list(pools)
    raw = {n: [] for n in valid}
    block_medians = {n: [] for n in valid}
    for r in range(rounds):
        k = r % len(order)
        for pool in order[k:] + order[:k]:
            if pool == "openblas":
                # the bare sgemm runs on OpenBLAS's own threads; fusedtrain
                # keeps that library serial and tiles over its OpenMP threads
                sgemm.lib.scipy_openblas_set_num_threads(threads)
            time.sleep(idle_s)
            st = H.measure(pools[pool], repeats=5, warmup=2, min_time=block_s,
                           max_repeats=100_000)
            if pool == "openblas":
                sgemm.lib.scipy_openblas_set_num_threads(1)
            for name, s in st.items():
                raw[name] += [t / inner for t in s["raw_ns"]]
                block_medians[name].append(s["median_ns"] / inner)
    out = {}
    for name, ns in raw.items():
        x = np.asarray(ns)
        p10, p50, p90 = np.percentile(x, [10, 50, 90])
        bm = np.asarray(block_medians[name])
        out[name] = {"best_block_median_ns": float(bm.min()), "samples": int(x.size),
                     "inner": inner, "median_ns": float(p50), "p10_ns": float(p10),
                     "p90_ns": float(p90), "min_ns": float(x.min()),
                     "blocks": int(bm.size),
                     "disturbed_blocks": int((bm > 2 * bm.min()).sum()),
                     "block_medians_ns": bm.tolist()}  # raw samples: too many for the JSON
    # within fusedtrain's pool the competitors ran call by call in the same
    # blocks: the ratio of their block medians, median over the rounds where
    # neither block was disturbed (a stall hits both alike and pulls the ratio
    # towards 1)
    ft = np.asarray(block_medians[FT])
    for name in out:
        if POOLS[name] == POOLS[FT] and name != FT:
            other = np.asarray(block_medians[name])
            quiet = (ft <= 1.5 * ft.min()) & (other <= 1.5 * other.min())
            if quiet.any():
                out[name]["paired_ratio_ft_over"] = float(np.median(ft[quiet] / other[quiet]))
            out[name]["paired_rounds"] = int(quiet.sum())
    return out


# ---------------------------------------------------------------------------
# report
# ---------------------------------------------------------------------------
def fmt_t(st):
    return H.format_ns(st[TIME_KEY]) if st else "n/a"


#: the time reported: the lowest of the per-block medians (a busy neighbour on
#: a shared machine only ever adds time; see time_row)
TIME_KEY = "best_block_median_ns"


def ratio(rows, a, b):
    """fusedtrain / b: the paired per-round ratio within one pool, else the
    ratio of the best-block medians."""
    if a not in rows or b not in rows:
        return math.nan
    if a == FT and "paired_ratio_ft_over" in rows[b]:
        return rows[b]["paired_ratio_ft_over"]
    return rows[a][TIME_KEY] / rows[b][TIME_KEY]


def fmt_r(r, target=None):
    if not math.isfinite(r):
        return "n/a"
    s = f"{r:.3f}"
    if target is not None:
        s += " ✓" if r <= target else " ✗"
    return s


def call_overheads(sgemm: Sgemm):
    """Fixed per-call costs: a 1x1x1 sgemm through ctypes, and a 1x1x1 fusedtrain
    forward (identity) and backward (identity), medians in ns."""
    a = np.ones((1, 1), F32)
    c = np.zeros((1, 1), F32)
    dw, db, dx = np.zeros((1, 1), F32), np.zeros(1, F32), np.zeros((1, 1), F32)
    comp = {"sgemm 1x1x1 (ctypes)": sgemm.bind(False, False, 1, 1, 1, a, 1, a, 1, c, 1),
            "fusedtrain forward 1x1x1 identity": lambda: ops.dense_forward(a, a, None, out=c),
            "fusedtrain backward 1x1x1 identity":
                lambda: ops.dense_backward(a, a, a, None, dw_out=dw, db_out=db, dx_out=dx),
            "fusedtrain forward 1x1x1 relu": lambda: ops.dense_forward(a, a, db, "relu", out=c)}
    st = H.measure({k: repeat(v, 100) for k, v in comp.items()}, repeats=200, warmup=3)
    return {k: v["median_ns"] / 100 for k, v in st.items()}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="few repeats (a smoke test)")
    p.add_argument("--rounds", type=int, default=None,
                   help="rounds per row; each round times one block per library")
    p.add_argument("--block", type=float, default=0.03, help="seconds of timed calls per block")
    p.add_argument("--idle", type=float, default=0.15,
                   help="seconds of sleep before each block (other thread pools go quiet)")
    p.add_argument("--threads", type=int, default=2, help="torch threads (fusedtrain's too)")
    p.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    args = p.parse_args(argv)
    rounds = args.rounds or (3 if args.quick else 12)

    H.warn_openblas_env()
    fusedtrain.set_num_threads(args.threads)
    if torch is not None:
        torch.set_num_threads(args.threads)
    sgemm = Sgemm()

    info = H.machine_info()
    info["openblas_fusedtrain"] = sgemm.config().decode()
    info["openblas_fusedtrain_threads"] = sgemm.lib.scipy_openblas_get_num_threads()
    try:
        import threadpoolctl

        info["threadpools"] = [{k: d.get(k) for k in ("internal_api", "prefix", "filepath",
                                                      "version", "num_threads", "architecture")}
                               for d in threadpoolctl.threadpool_info()]
    except ImportError:
        pass
    if torch is not None:
        info["torch_blas"] = {"mkl": torch.backends.mkl.is_available(),
                              "mkldnn": torch.backends.mkldnn.is_available()}

    t_start = time.perf_counter()
    load0 = os.getloadavg()[0]
    overhead = call_overheads(sgemm)
    # start every pool's threads once (first calls create them)
    warm = Case(64, 256, 256, seed=0, sgemm=sgemm)
    for comp in (warm.forward_competitors()[0], warm.backward_competitors()[0]):
        for name, fn in comp.items():
            if name != IDENT:
                for _ in range(20):
                    fn()
                time.sleep(0.05)
    records, md_rows = [], []
    for n_in, n_out in LAYERS:
        for B in BATCHES:
            case = Case(B, n_in, n_out, seed=zlib.crc32(f"{B} {n_in} {n_out}".encode()), sgemm=sgemm)
            for direction in ("forward", "backward"):
                comp, res = (case.forward_competitors() if direction == "forward"
                             else case.backward_competitors())
                status = (case.validate_forward(comp, res) if direction == "forward"
                          else case.validate_backward(comp, res))
                if status[FT] is not None:
                    raise H.ValidationError(f"fusedtrain {direction} {case.label} B={B}: "
                                            f"{status[FT]}")
                for name, why in status.items():
                    if why is not None:
                        print(f"  {direction} {case.label} B={B} {name}: not timed, {why}",
                              file=sys.stderr)
                stats = time_row(comp, status, rounds, args.block, args.idle, sgemm=sgemm,
                                 threads=args.threads)
                flops = 2 * B * n_in * n_out * (1 if direction == "forward" else 2)
                rec = {"layer": [n_in, n_out], "B": B, "pass": direction, "gemm_flops": flops,
                       "status": status, "stats": stats,
                       "ratio_ft_over": {n: ratio(stats, FT, n) for n in stats if n != FT},
                       "ft_gflops": flops / stats[FT][TIME_KEY],
                       "sgemm_gflops": (flops / stats[SGEMM][TIME_KEY]
                                        if SGEMM in stats else None)}
                rec["target_met"] = (rec["ratio_ft_over"].get(SGEMM, math.inf) <= TARGET)
                records.append(rec)
                md_rows.append([case.label, B, direction,
                                fmt_t(stats.get(FT)), fmt_t(stats.get(SGEMM)),
                                fmt_t(stats.get(IDENT)), fmt_t(stats.get(NP_)),
                                fmt_t(stats.get(TORCH)),
                                fmt_r(ratio(stats, FT, SGEMM), TARGET),
                                fmt_r(ratio(stats, FT, IDENT)), fmt_r(ratio(stats, FT, NP_)),
                                fmt_r(ratio(stats, FT, TORCH))])
                print(f"{case.label} B={B} {direction}: "
                      + ", ".join(f"{n} {fmt_t(s)} ({s['disturbed_blocks']} disturbed)"
                                  for n, s in stats.items()), file=sys.stderr)
    elapsed = time.perf_counter() - t_start

    headers = ["layer", "B", "pass", "fusedtrain", "sgemm", "ft identity", "numpy", "torch",
               "ft / sgemm", "ft / ft identity", "ft / numpy", "ft / torch"]
    table = H.markdown_table(headers, md_rows, align="lrl" + "r" * 9)
    untimed = [f"{n}: {why}" for r in records
               for n, why in r["status"].items() if why is not None]
    met = sum(r["target_met"] for r in records)
    notes = [
        "Time per call (float32, relu; fusedtrain (its OpenMP threads over serial "
        "OpenBLAS tiles), the bare sgemm (OpenBLAS's own threads) and torch on "
        f"{args.threads} threads, NumPy's OpenBLAS on its default): the lowest of the "
        f"{rounds} per-round block medians (a busy neighbour only adds time; the "
        "JSON has every block median, overall medians and how many blocks were "
        "disturbed). "
        "Ratios < 1 mean fusedtrain is faster; ft / ft identity is "
        "the median, over the rounds where neither block was disturbed (> 1.5x its "
        "best), of the ratio within a round (same pool, interleaved call by call); "
        "ft / sgemm, ft / numpy and ft / torch are the ratio of the times shown.",
        "",
        "* **sgemm**: the bare `cblas_sgemm` of the OpenBLAS fusedtrain links "
        "(scipy-openblas32), called through ctypes with pre-built arguments: "
        "forward one GEMM (no bias, no activation), backward the two GEMMs "
        "dw = x.T @ dz and dx = dz @ w.T alone. **ft / sgemm is the target "
        f"(<= {TARGET})**: met in {met} of {len(records)} rows.",
        "* **ft identity**: `dense_forward(x, w, None, \"identity\")` — meant to be "
        "the bare GEMM through fusedtrain's binding (same checks and call overhead "
        "as fusedtrain) — and `dense_backward(..., \"identity\")` (two GEMMs + the "
        "db column sums). The forward is timed only if its y equals cblas_sgemm's "
        "bitwise.",
        "* **numpy**: `np.maximum(x @ w + b, 0)`; backward `dz = dy * (y > 0); "
        "dw = x.T @ dz; db = dz.sum(0); dx = dz @ w.T`. NumPy uses its own "
        "OpenBLAS build (scipy-openblas64, see JSON).",
        "* **torch**: forward `torch.relu(nn.Linear(x))` under `torch.no_grad()`; "
        "backward the functional equivalent of autograd's (threshold_backward, "
        "two mm, sum) called directly, **without autograd** overhead.",
        "* fixed call costs (1x1x1): " + "; ".join(f"{k} {H.format_ns(v)}"
                                                      for k, v in overhead.items()) + ".",
        f"* timing: {rounds} rounds per row; each round runs one block per thread pool "
        "(fusedtrain's OpenBLAS: fusedtrain, sgemm, ft identity; NumPy's OpenBLAS; "
        f"torch's OpenMP) in rotating order: {args.idle:g} s of sleep so the other pools "
        f"stop spinning, then {args.block:g} s of calls, interleaved call by call within "
        "the pool. (Interleaving libraries call by call on 2 cores measures their "
        "spinning pools fighting: ms-long stalls.) Each sample runs a competitor "
        "`inner` times (>= ~20 µs). Every competitor is "
        "validated against the float64 NumPy reference first.",
        f"* load average (1 min) at start / end: {load0:.2f} / {os.getloadavg()[0]:.2f} "
        "(the machine is shared; a busy neighbour stalls 2-thread GEMMs).",
    ]
    n_blocks = sum(st["blocks"] for r in records for st in r["stats"].values())
    n_dist = sum(st["disturbed_blocks"] for r in records for st in r["stats"].values())
    notes.append(f"* blocks whose median exceeds twice the row's best (disturbed): {n_dist} of "
                 f"{n_blocks}.")
    if untimed:
        notes.append("* not timed (failed validation):")
        notes += [f"  * {u}" for u in untimed]
    cpu = info.get("cpu_model")
    header = (f"# fusedtrain dense benchmark\n\n{cpu}, {info.get('cpu_affinity')} CPUs; "
              f"fusedtrain {info['fusedtrain'].get('version')} ({info['fusedtrain'].get('simd')}), "
              f"numpy {info.get('numpy')}, torch {info.get('torch')}, "
              f"{info['openblas_fusedtrain']}; {info.get('date')}\n")
    md = header + "\n" + table + "\n\n" + "\n".join(notes) + "\n"
    print(md)
    out = Path(args.out)
    stem = "dense_quick" if args.quick else "dense"
    H.write_text(out / f"{stem}.md", md)
    H.write_json(out / f"{stem}.json", {
        "benchmark": "dense", "machine": info,
        "config": {"dtype": "float32", "activation": "relu", "layers": LAYERS,
                   "batches": BATCHES, "rounds": rounds, "block_s": args.block,
                   "idle_s": args.idle, "loadavg_end": list(os.getloadavg()),
                   "threads": args.threads, "target_ft_over_sgemm": TARGET, "lam": LAM,
                   "rtol": RTOL},
        "call_overhead_ns": overhead, "results": records, "elapsed_s": elapsed,
        "markdown": md})
    print(f"wrote {out / (stem + '.md')} and {out / (stem + '.json')} in {elapsed:.0f} s",
          file=sys.stderr)


if __name__ == "__main__":
    main()
