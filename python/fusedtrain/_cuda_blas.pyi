"""fusedtrain dense-layer kernels on the GPU (cuBLASLt, loaded at run time).

Type stub of the compiled module, written from csrc/bind/cuda_dense_bind.cpp
(built only where a CUDA compiler is found; tests/test_typing.py checks these
names against the bind source, and against the module where it is built).
Arrays, ``empty``, ``workspace``, ``dry_run`` and ``stream`` are as in
fusedtrain._cuda. Users call these through fusedtrain.ops.
"""

from collections.abc import Callable, Sequence
from typing import Any, Literal, Protocol, TypedDict

class _GpuArray(Protocol):
    @property
    def __cuda_array_interface__(self) -> dict[str, Any]: ...

_Empty = Callable[[tuple[int, ...], str], _GpuArray]
_Workspace = Callable[[int], _GpuArray]
_Operand = Literal["x", "w", "dz"]

class _GemmPlan(TypedDict):
    a: _Operand
    b: _Operand
    ta: bool
    tb: bool
    m: int
    n: int
    k: int
    lda: int
    ldb: int
    ldd: int

def load(candidates: Sequence[str]) -> str:
    """Open libcublasLt from the first path that works ('' = the loader's own
    search for libcublasLt.so.13); returns '' on success, else why each failed."""

def loaded() -> bool:
    """Whether cuBLASLt is loaded."""

def library_path() -> str:
    """The libcublasLt file in use ('' when none)."""

def workspace_bytes(B: int, out: int, backward: bool) -> int:
    """Scratch bytes of one dense call: cuBLASLt's, plus the bias-gradient partial sums."""

def gemm_plan(
    which: Literal["forward", "dw", "dx"], B: int, in_features: int, out_features: int
) -> _GemmPlan:
    """The column-major cuBLASLt product behind a row-major dense GEMM."""

def dense_forward(
    x: _GpuArray,
    w: _GpuArray,
    b: _GpuArray | None,
    out: _GpuArray | None,
    act_code: int,
    slope: float,
    empty: _Empty,
    workspace: _Workspace,
    dry_run: bool,
    stream: int,
) -> tuple[_GpuArray, _GpuArray | None] | None:
    """(y, saved): y = act(x @ w + b) on the GPU; None after a dry run."""

def dense_backward(
    dy: _GpuArray,
    x: _GpuArray,
    w: _GpuArray,
    saved: _GpuArray | None,
    act_code: int,
    slope: float,
    need_dx: bool,
    dw_out: _GpuArray | None,
    db_out: _GpuArray | None,
    accumulate: bool,
    dx_out: _GpuArray | None,
    dz_workspace: _GpuArray | None,
    empty: _Empty,
    workspace: _Workspace,
    dry_run: bool,
    stream: int,
) -> tuple[_GpuArray | None, _GpuArray, _GpuArray] | None:
    """(dx, dw, db) of a dense layer on the GPU; None after a dry run."""
