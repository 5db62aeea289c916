"""The package's types: py.typed and the stubs of the compiled modules, and
``mypy --strict`` over a small user script (tests/typing/user_script.py)
that uses the public API.

The stubs (python/fusedtrain/_core.pyi, _cuda.pyi, _cuda_blas.pyi) must
declare exactly the functions the modules export: checked against the
built ``_core``, against the bind sources (csrc/bind/*.cpp) for all three,
and against ``_cuda`` / ``_cuda_blas`` where they are built.
"""

from __future__ import annotations

import ast
import importlib
import re
import sys
import time
from pathlib import Path

import pytest

import fusedtrain

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = Path(fusedtrain.__file__).resolve().parent
BIND = ROOT / "csrc" / "bind"
USER_SCRIPT = Path(__file__).resolve().parent / "typing" / "user_script.py"

# the bind sources of each compiled module
SOURCES = {
    "_core": ["core_module.cpp", "optim_bind.cpp", "chunk_bind.cpp", "dense_bind.cpp",
              "loss_bind.cpp", "norm_bind.cpp", "normalize_bind.cpp", "gather_bind.cpp", "bench_bind.cpp"],
    "_cuda": ["cuda_module.cpp", "cuda_optim_bind.cpp", "cuda_loss_bind.cpp",
              "cuda_normalize_bind.cpp", "cuda_norm_bind.cpp", "cuda_bench_bind.cpp"],
    "_cuda_blas": ["cuda_dense_bind.cpp"],
}

# m.def("name", ...) and the optimizer steps' def_step(m, "name", ...)
_DEF = re.compile(r'\b(?:m\.def|def_step)\(\s*(?:m,\s*)?"(\w+)"')


def stub_names(module: str) -> set[str]:
    """The functions the stub declares (overloads once); its other top-level
    names (type helpers) must be private."""
    tree = ast.parse((PACKAGE / f"{module}.pyi").read_text())
    names = set()
    for node in tree.body:
        if isinstance(node, ast.FunctionDef):
            names.add(node.name)
        elif isinstance(node, ast.ClassDef):
            assert node.name.startswith("_"), f"{module}.pyi: class {node.name} is not private"
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for t in targets:
                assert isinstance(t, ast.Name) and t.id.startswith("_"), \
                    f"{module}.pyi: line {node.lineno} defines a public name"
    return names


def source_names(module: str) -> set[str]:
    names: set[str] = set()
    for f in SOURCES[module]:
        names |= set(_DEF.findall((BIND / f).read_text()))
    return names


def module_names(mod: object) -> set[str]:
    return {n for n in dir(mod) if not (n.startswith("__") and n.endswith("__"))}


def test_py_typed_marker():
    assert (PACKAGE / "py.typed").is_file()


@pytest.mark.parametrize("module", sorted(SOURCES))
def test_stub_matches_bind_sources(module):
    if not BIND.is_dir():
        pytest.skip("csrc/bind is not beside the tests")
    assert stub_names(module) == source_names(module)


def test_core_stub_matches_built_module():
    from fusedtrain import _core

    assert stub_names("_core") == module_names(_core)
    # the sources' names are the module's: the pattern above misses no binding
    if BIND.is_dir():
        assert source_names("_core") == module_names(_core)


@pytest.mark.parametrize("module", ["_cuda", "_cuda_blas"])
def test_cuda_stub_matches_built_module(module):
    try:
        mod = importlib.import_module(f"fusedtrain.{module}")
    except ImportError:
        pytest.skip(f"fusedtrain.{module} is not built")
    assert stub_names(module) == module_names(mod)


def test_user_script_passes_mypy_strict(tmp_path):
    """``mypy --strict`` over a typed user script: the public signatures type
    it, and its assert_type checks fail if a fusedtrain call gives ``Any``
    (--strict alone would let an ``Any`` result pass silently)."""
    api = pytest.importorskip("mypy.api")
    args = ["--strict", "--no-incremental", "--cache-dir", str(tmp_path / "mypy_cache"),
            "--python-executable", sys.executable, "--no-error-summary",
            "--show-error-codes", str(USER_SCRIPT)]
    start = time.perf_counter()
    out, err, status = api.run(args)
    took = time.perf_counter() - start
    assert status == 0, f"mypy {' '.join(args)} ({took:.1f} s):\n{out}{err}"
