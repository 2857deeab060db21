"""Every docstring example in the package runs (``doctest`` over every module of ``fastclip``).

Modules that need an optional stack (torch, CuPy, mpi4py, matplotlib, Paddle) are skipped where it
is missing; everything else must import and every example must pass.
"""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import fastclip
import pytest

OPTIONAL = {"torch", "cupy", "mpi4py", "matplotlib", "paddle", "jax"}


def _module_names() -> list[str]:
    names = ["fastclip"]
    for info in pkgutil.walk_packages(fastclip.__path__, "fastclip."):
        names.append(info.name)
    return sorted(names)


def _doctests() -> list[tuple[str, str]]:
    out = []
    for name in _module_names():
        try:
            mod = importlib.import_module(name)
        except ImportError as e:
            if e.name and e.name.split(".")[0] in OPTIONAL:
                out.append((name, f"<skip: {e.name}>"))
                continue
            raise
        for t in doctest.DocTestFinder(exclude_empty=True).find(mod, name):
            if t.examples and t.name.startswith(name):
                out.append((name, t.name))
    return out


CASES = _doctests()


def test_examples_were_found():
    assert sum(1 for _, t in CASES if not t.startswith("<skip")) >= 20


@pytest.mark.parametrize(("module", "test_name"), CASES, ids=[t for _, t in CASES])
def test_docstring_example(module: str, test_name: str) -> None:
    if test_name.startswith("<skip"):
        pytest.skip(f"{module} needs {test_name[7:-1]}")
    mod = importlib.import_module(module)
    tests = {t.name: t for t in doctest.DocTestFinder(exclude_empty=True).find(mod, module)}
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    result = runner.run(tests[test_name], out=lambda s: print(s, end=""))
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples failed in {test_name}"
