"""A small benchmark harness: validate, then time interleaved competitors.

The method (STYLE.md item 20, after llm.c's ``dev/cuda``):

1. **Validate before timing.** Every competitor takes one step from inputs
   identical to the reference's, and each buffer it writes is compared with
   the NumPy reference (:func:`validate`); a mismatch raises
   :class:`ValidationError` and nothing is timed.
2. **Warm up** each competitor (first-touch page faults, lazy state, caches).
3. **Interleave.** Each repeat (a *round*) times one call of every competitor
   with ``time.perf_counter_ns``; the start position rotates from round to
   round. Drift of a shared machine (other jobs, frequency, page cache) then
   hits every competitor alike instead of whichever happened to run last.
4. **Report the median**, the 10th and 90th percentiles and, per competitor,
   the ratio of its time to a baseline's: both the ratio of the medians and the
   median of the per-round ratios (``paired_ratio``, which cancels drift that
   is slower than one round).

The helpers here know nothing about optimizers; ``bench/optim.py`` uses them.
"""

from __future__ import annotations

import datetime
import gc
import json
import math
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np

__all__ = [
    "ValidationError",
    "check_close",
    "validate",
    "measure",
    "machine_info",
    "markdown_table",
    "write_json",
    "write_text",
    "format_ns",
    "add_size_args",
    "warn_openblas_env",
    "write_results",
]

#: default float32 tolerances of :func:`validate`
RTOL_F32 = 1e-5
ATOL_F32 = 1e-6

# compared this many elements at a time, so that checking a 64M-element buffer
# needs no 64M-element temporaries
_CHUNK = 1 << 22


class ValidationError(AssertionError):
    """A competitor's result differs from the reference: do not time it."""


# ---------------------------------------------------------------------------
# validation
# ---------------------------------------------------------------------------
def check_close(label: str, actual: np.ndarray, expected: np.ndarray, *, rtol: float = RTOL_F32,
                atol: float = ATOL_F32) -> float:
    """Checks ``|actual - expected| <= atol + rtol * |expected|`` element by element.

    NaN or inf anywhere in ``actual`` fails (unless ``expected`` has the same
    non-finite value there). Returns the largest absolute difference. Raises
    :class:`ValidationError` naming ``label``, the shapes/dtypes or the first
    failing chunk's worst elements (numpy.testing's report).
    """
    actual = np.asarray(actual)
    expected = np.asarray(expected)
    if actual.shape != expected.shape:
        raise ValidationError(f"{label}: expected shape {expected.shape}, received {actual.shape}")
    if actual.dtype != expected.dtype:
        raise ValidationError(f"{label}: expected dtype {expected.dtype}, received {actual.dtype}")
    a = actual.reshape(-1)
    e = expected.reshape(-1)
    worst = 0.0
    for lo in range(0, a.size, _CHUNK):
        ac, ec = a[lo:lo + _CHUNK], e[lo:lo + _CHUNK]
        with np.errstate(invalid="ignore", over="ignore"):  # inf - inf: judged below
            diff = np.subtract(ac, ec)
        np.abs(diff, out=diff)
        tol = np.abs(ec)
        tol *= rtol
        tol += atol
        ok = diff <= tol  # NaN compares False
        if ok.all():
            if diff.size:
                worst = max(worst, float(diff.max()))
            continue
        # equal non-finite values (inf == inf, NaN where NaN is expected) pass
        ok |= ~np.isfinite(ec) & ((ac == ec) | (np.isnan(ac) & np.isnan(ec)))
        if not ok.all():
            bad = np.flatnonzero(~ok)
            first = int(bad[0]) + lo
            try:
                np.testing.assert_allclose(ac, ec, rtol=rtol, atol=atol, verbose=True)
                detail = ""
            except AssertionError as exc:
                detail = str(exc)
            raise ValidationError(
                f"{label}: {bad.size} of {ac.size} elements in [{lo}, {lo + ac.size}) differ "
                f"beyond rtol={rtol:g}, atol={atol:g}; first at flat index {first}: "
                f"received {a[first]!r}, expected {e[first]!r}\n{detail}")
        finite = diff[np.isfinite(diff)]
        if finite.size:
            worst = max(worst, float(finite.max()))
    return worst


def validate(competitor: str, actual: Mapping[str, Sequence[np.ndarray]],
             expected: Mapping[str, Sequence[np.ndarray]], *, rtol: float = RTOL_F32,
             atol: float = ATOL_F32) -> dict:
    """Compares every buffer list of one competitor with the reference's.

    ``actual`` and ``expected`` map a buffer name (``"params"``,
    ``"exp_avg"``, ...) to a list of arrays, one per tensor. Every name in
    ``expected`` must be present in ``actual`` with the same number of arrays.
    Returns ``{"max_abs_err": {name: float}, "rtol": ..., "atol": ...}`` for the
    record; raises :class:`ValidationError` on the first mismatch.
    """
    errs = {}
    for name, exp_list in expected.items():
        if name not in actual:
            raise ValidationError(f"{competitor}: buffer {name!r} missing from its result "
                                  f"(received {sorted(actual)})")
        act_list = actual[name]
        if len(act_list) != len(exp_list):
            raise ValidationError(f"{competitor}.{name}: expected {len(exp_list)} arrays, "
                                  f"received {len(act_list)}")
        worst = 0.0
        for i, (a, e) in enumerate(zip(act_list, exp_list)):
            worst = max(worst, check_close(f"{competitor}.{name}[{i}]", a, e, rtol=rtol, atol=atol))
        errs[name] = worst
    return {"max_abs_err": errs, "rtol": rtol, "atol": atol}


# ---------------------------------------------------------------------------
# timing
# ---------------------------------------------------------------------------
def _stats(ns: Sequence[int]) -> dict:
    x = np.asarray(ns, dtype=np.float64)
    p10, p50, p90 = np.percentile(x, [10, 50, 90])
    return {
        "samples": int(x.size),
        "median_ns": float(p50),
        "p10_ns": float(p10),
        "p90_ns": float(p90),
        "min_ns": float(x.min()),
        "mean_ns": float(x.mean()),
    }


def measure(competitors: Mapping[str, Callable[[], object]], repeats: int, warmup: int = 3,
            min_time: float = 0.0, *, baseline: str | None = None,
            max_samples: Mapping[str, int] | None = None, max_repeats: int | None = None,
            warmup_by_name: Mapping[str, int] | None = None,
            max_time: float | None = None) -> dict:
    """Times interleaved competitors; returns ``{name: stats}``.

    ``competitors`` maps a name to a callable doing one unit of work (one
    optimizer step). Each is first called ``warmup`` times (round-robin;
    ``warmup_by_name`` overrides per name). Then rounds run: each round times
    one call of every competitor with ``time.perf_counter_ns``, starting one
    position later than the previous round. Rounds continue until at least
    ``repeats`` have run and the rounds have taken ``min_time`` seconds, but
    never beyond ``max_repeats`` rounds (default ``max(repeats, 10 * repeats)``
    when ``min_time`` is set). ``max_samples[name]`` caps how many rounds a slow
    competitor takes part in (its samples are then spread evenly over the
    rounds). ``max_time`` (seconds of wall time for all rounds) stops early,
    after at least 3 rounds: a time budget for smoke tests. The garbage
    collector is off while timing.

    Per competitor: ``samples``, ``median_ns``, ``p10_ns``, ``p90_ns``,
    ``min_ns``, ``mean_ns``, ``raw_ns`` (in round order) and, when
    ``baseline`` is given, ``ratio`` (median / baseline median) and
    ``paired_ratio`` (median over the rounds both ran of time / baseline
    time). A ratio above 1 means slower than the baseline.
    """
    if not competitors:
        raise ValueError("competitors: expected at least one, received none")
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1; received {repeats}")
    names = list(competitors)
    if baseline is not None and baseline not in competitors:
        raise ValueError(f"baseline: expected one of {names}, received {baseline!r}")
    max_samples = dict(max_samples or {})
    warmup_by_name = dict(warmup_by_name or {})
    if max_repeats is None:
        max_repeats = 10 * repeats if min_time > 0 else repeats
    max_repeats = max(max_repeats, repeats)

    for w in range(max(warmup, *warmup_by_name.values()) if warmup_by_name else warmup):
        for name in names:
            if w < warmup_by_name.get(name, warmup):
                competitors[name]()

    def takes_part(name: str, r: int) -> bool:
        cap = max_samples.get(name)
        if cap is None:
            return True
        if len(samples[name]) >= cap:
            return False
        if cap >= repeats:
            return True
        # spread `cap` samples over the first `repeats` rounds: the rounds
        # where floor(r * cap / repeats) steps up
        return r < repeats and (r == 0 or (r * cap) // repeats != ((r - 1) * cap) // repeats)

    samples: dict[str, list[tuple[int, int]]] = {n: [] for n in names}
    timer = time.perf_counter_ns
    gc_was_enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        spent = 0
        r = 0
        start = time.perf_counter()
        while r < repeats or (spent < min_time * 1e9 and r < max_repeats):
            if max_time is not None and r >= 3 and time.perf_counter() - start > max_time:
                break
            k = r % len(names)
            for name in names[k:] + names[:k]:
                if not takes_part(name, r):
                    continue
                fn = competitors[name]
                t0 = timer()
                fn()
                t1 = timer()
                samples[name].append((r, t1 - t0))
                spent += t1 - t0
            r += 1
    finally:
        if gc_was_enabled:
            gc.enable()

    out = {}
    for name in names:
        if not samples[name]:
            continue
        st = _stats([t for _, t in samples[name]])
        st["raw_ns"] = [t for _, t in samples[name]]
        out[name] = st
    if baseline is not None:
        base = dict(samples[baseline])
        for name, st in out.items():
            st["ratio"] = st["median_ns"] / out[baseline]["median_ns"]
            pairs = [t / base[r] for r, t in samples[name] if r in base]
            st["paired_ratio"] = float(np.median(pairs)) if pairs else math.nan
    return out


# ---------------------------------------------------------------------------
# machine info
# ---------------------------------------------------------------------------
def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _cpu_flags() -> list[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return sorted(f for f in flags if f.startswith(("avx", "fma", "sse4")))
    except OSError:
        pass
    return []


def _mem_total_gib() -> float | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return None


def _git_commit(repo: Path) -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True,
                             text=True, timeout=10)
        if out.returncode != 0:
            return None
        dirty = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--",
                                "csrc", "python", "CMakeLists.txt"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return out.stdout.strip() + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def machine_info() -> dict:
    """What ran the benchmark: package build, library versions, CPU, threads, date."""
    import fusedtrain

    info: dict = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "fusedtrain": fusedtrain.build_info(),
        "fusedtrain_threads": fusedtrain.get_num_threads(),
        "fusedtrain_file": fusedtrain.__file__,
        "git_commit": _git_commit(Path(__file__).resolve().parent.parent),
        "numpy": np.__version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpu_model": _cpu_model(),
        "cpu_simd_flags": _cpu_flags(),
        "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "mem_total_gib": _mem_total_gib(),
        "loadavg_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "env": {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "OMP_PROC_BIND", "OMP_PLACES",
                                               "OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE",
                                               "MKL_NUM_THREADS")},
    }
    try:
        import torch

        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
        info["torch_interop_threads"] = torch.get_num_interop_threads()
        info["torch_parallel_info"] = torch.__config__.parallel_info().strip().splitlines()[:8]
    except ImportError:
        info["torch"] = None
    return info


# ---------------------------------------------------------------------------
# writers
# ---------------------------------------------------------------------------
def format_ns(ns: float) -> str:
    """A time in the unit that gives 3-4 significant digits: ns, µs, ms or s."""
    if not math.isfinite(ns):
        return "n/a"
    for unit, scale in (("s", 1e9), ("ms", 1e6), ("µs", 1e3)):
        if ns >= scale:
            return f"{ns / scale:.3g} {unit}"
    return f"{ns:.0f} ns"


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[object]],
                   align: str | None = None) -> str:
    """A GitHub markdown table; ``align`` is one letter per column (l, r, c)."""
    align = align or "l" + "r" * (len(headers) - 1)
    marks = {"l": ":--", "r": "--:", "c": ":-:"}
    cells = [[str(c) for c in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[j]) for r in cells) for j in range(len(headers))]

    def line(r):
        return "| " + " | ".join(c.ljust(w) if a == "l" else c.rjust(w)
                                 for c, w, a in zip(r, widths, align)) + " |"

    out = [line(cells[0]),
           "| " + " | ".join(marks[a].rjust(w, "-") if a == "r" else marks[a].ljust(w, "-")
                            for a, w in zip(align, widths)) + " |"]
    out += [line(r) for r in cells[1:]]
    return "\n".join(out)


def _jsonable(x):
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (np.floating, float)):
        v = float(x)
        return v if math.isfinite(v) else None
    return x


def write_json(path: str | Path, payload: dict) -> Path:
    """Writes ``payload`` as indented JSON (NaN/inf become null)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_jsonable(payload), indent=1, ensure_ascii=False) + "\n")
    return path


def write_text(path: str | Path, text: str) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text if text.endswith("\n") else text + "\n")
    return path


# ---------------------------------------------------------------------------
# command line
# ---------------------------------------------------------------------------
#: set on these machines for old OpenBLAS builds; they force a slower kernel
OPENBLAS_SLOW_VARS = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")


def warn_openblas_env() -> None:
    """Warns on stderr for each OpenBLAS variable that slows the GEMMs down."""
    for var in OPENBLAS_SLOW_VARS:
        if os.environ.get(var):
            print(f"warning: {var}={os.environ[var]} is set; it slows OpenBLAS down "
                  f"(run under env -u {var})", file=sys.stderr)


def add_size_args(ap, sizes, *, min_time: float, quick_help: str) -> None:
    """The options of the array-size benchmarks: --sizes (names of ``sizes``
    or element counts), --repeats, --min-time, --threads, --quick, --out."""
    ap.add_argument("--sizes", nargs="+", default=list(sizes))
    ap.add_argument("--repeats", type=int, default=21)
    ap.add_argument("--min-time", type=float, default=min_time)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--quick", action="store_true", help=quick_help)
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))


def write_results(out_dir, stem: str, quick: bool, payload: dict, render) -> str:
    """Writes ``<stem>[_quick].json`` and the ``.md`` that ``render(payload)``
    gives into ``out_dir``, prints the latter and returns it."""
    name = f"{stem}_quick" if quick else stem
    write_json(Path(out_dir) / f"{name}.json", payload)
    text = render(payload)
    write_text(Path(out_dir) / f"{name}.md", text)
    print(text)
    return text
