"""Every ```python block of README.md runs, in order, in one namespace (as a
reader would paste them into one session), in a temporary directory: the
README's examples stay true.

A block that needs what this machine lacks is skipped, told by its content:
torch (``fusedtrain.torch``, ``import torch``), a GPU (``cupy``, ``cuda``)
or scikit-learn (``load_digits``). Blocks written as a session (``>>>``)
have their statements run, but their printed output is not compared: it is
this machine's (``build_info()``: SIMD level, thread count, compiler).
"""

import doctest
import importlib.util
import os
import pathlib
import re
import traceback

import pytest

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"
_FENCE = re.compile(r"^```python[ \t]*\n(.*?)^```", re.S | re.M)


def _blocks():
    text = README.read_text()
    return [(text.count("\n", 0, m.start()) + 2, m.group(1)) for m in _FENCE.finditer(text)]


def _needs(code):
    """Why the block cannot run here, or None."""
    if ("fusedtrain.torch" in code or re.search(r"^\s*import torch", code, re.M)) \
            and importlib.util.find_spec("torch") is None:
        return "needs torch"
    if re.search(r"\bcupy\b|\.cuda\b|device=.cuda", code):
        import fusedtrain

        if not fusedtrain.cuda_available():
            return "needs a GPU"
    if "load_digits" in code and importlib.util.find_spec("sklearn") is None:
        return "needs scikit-learn"
    return None


def _source(code):
    """The statements of a ``>>>`` session block (output lines dropped)."""
    examples = doctest.DocTestParser().get_examples(code)
    return "".join(e.source for e in examples)


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    """{README line of the block: None (ran), "skip: why" or the failure}."""
    out = {}
    namespace = {"__name__": "readme"}
    cwd = os.getcwd()
    os.chdir(tmp_path_factory.mktemp("readme"))
    try:
        for line, code in _blocks():
            why = _needs(code)
            if why is not None:
                out[line] = "skip: " + why
                continue
            src = _source(code) if code.lstrip().startswith(">>>") else code
            try:
                exec(compile(src, f"README.md:{line}", "exec"), namespace)
                out[line] = None
            except Exception:
                out[line] = traceback.format_exc(limit=-3)
    finally:
        os.chdir(cwd)
    return out


def test_readme_has_python_blocks():
    assert len(_blocks()) >= 5


@pytest.mark.parametrize("line", [line for line, _ in _blocks()], ids=lambda l: f"README.md:{l}")
def test_readme_block(line, results):
    result = results[line]
    if isinstance(result, str) and result.startswith("skip: "):
        pytest.skip(result[6:])
    assert result is None, f"the README block at line {line} fails:\n{result}"
