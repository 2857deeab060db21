"""Both backends (the CPU extension and the CUDA path) implement ``fastclip._backend.Backend``.

Statically (mypy checks each module against the protocol, and that swapping their buffer types is
rejected) and at run time (``inspect``: parameter names, kinds and defaults, which mypy does not
compare), plus the argument checks that need no buffer, on both backends side by side.
"""

from __future__ import annotations

import importlib
import inspect
import math
import pkgutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import fastclip
import pytest
from fastclip import _cuda, _fastclip
from fastclip._backend import Backend

ROOT = Path(__file__).resolve().parent.parent
BACKENDS = {"cpu": _fastclip, "cuda": _cuda}
OPS = ("norms", "scale_", "clamp_")

CONFORMANCE = """\
import numpy as np
from fastclip import _cuda, _fastclip
from fastclip._backend import Backend

cpu: Backend[np.ndarray] = _fastclip
cuda: Backend[_cuda.Buffer] = _cuda
# The protocol is not vacuous: each backend is rejected for the other's buffers.
wrong_cpu: Backend[_cuda.Buffer] = _fastclip  # type: ignore[assignment]
wrong_cuda: Backend[np.ndarray] = _cuda  # type: ignore[assignment]
"""


def _params(f: Any, drop_self: bool = False) -> list[tuple[str, Any, Any]]:
    ps = list(inspect.signature(f).parameters.values())
    if drop_self:
        ps = ps[1:]
    return [(p.name, p.kind, p.default) for p in ps]


@pytest.mark.parametrize("backend", list(BACKENDS))
@pytest.mark.parametrize("op", OPS)
def test_signatures_match_the_protocol(backend: str, op: str) -> None:
    want = _params(getattr(Backend, op), drop_self=True)
    assert want[0][0] == "arrays" and want[-2:] == [
        ("name", inspect.Parameter.POSITIONAL_OR_KEYWORD, "grads"),
        ("positions", inspect.Parameter.POSITIONAL_OR_KEYWORD, None),
    ]
    assert _params(getattr(BACKENDS[backend], op)) == want


def test_both_backends_conform_under_mypy(tmp_path: Path) -> None:
    pytest.importorskip("mypy")
    snippet = tmp_path / "backends_conform.py"
    snippet.write_text(CONFORMANCE)
    r = subprocess.run(
        [sys.executable, "-m", "mypy", "--follow-imports=silent", "--warn-unused-ignores", "--no-error-summary",
         "--cache-dir", str(ROOT / ".mypy_cache"), str(ROOT / "python" / "fastclip" / "_backend.py"), str(snippet)],
        capture_output=True, text=True, timeout=600, cwd=ROOT,
        env={"MYPYPATH": str(ROOT / "python"), "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr


# The checks both backends make before touching a buffer, on inputs that need no GPU.


@pytest.mark.parametrize("backend", list(BACKENDS))
def test_argument_errors_are_the_same_on_both_backends(backend: str) -> None:
    ops = BACKENDS[backend]
    for p in (0.0, -1.0, math.nan):
        with pytest.raises(ValueError, match="norm_type must be"):
            ops.norms([], p)
    with pytest.raises(TypeError, match=r"^grads must be a list or tuple of "):
        ops.norms(5)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"^g must be a list or tuple of "):
        ops.scale_("x", 0.5, "g")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"^got 1 factors for 0 arrays$"):
        ops.scale_([], [0.5])
    for lo, hi in ((1.0, -1.0), (math.nan, 1.0), (-1.0, math.nan)):
        with pytest.raises(ValueError, match=r"^clamp bounds must satisfy lo <= hi, got lo="):
            ops.clamp_([], lo, hi)
    assert ops.norms([], 2.0) == ([], 0.0)
    assert ops.norms((), math.inf, False) == ([], 0.0)
    ops.scale_([], 0.5)
    ops.clamp_([], -1.0, 1.0)


# No constant with one name and two values anywhere in the package (nor against the extension).


def _modules() -> list[ModuleType]:
    mods = [fastclip]
    for info in pkgutil.walk_packages(fastclip.__path__, "fastclip."):
        try:
            mods.append(importlib.import_module(info.name))
        except ImportError as e:  # an adapter for an optional stack that is not installed
            if (e.name or "").split(".")[0] not in {"torch", "cupy", "mpi4py", "paddle", "matplotlib"}:
                raise
    return mods


def test_no_constant_has_two_values() -> None:
    seen: dict[str, tuple[Any, str]] = {}
    for mod in _modules():
        for name, value in vars(mod).items():
            if not (name.isupper() and isinstance(value, (int, float, str)) and not isinstance(value, bool)):
                continue
            if name in seen:
                first, where = seen[name]
                assert value == first, f"{name} is {first!r} in {where} and {value!r} in {mod.__name__}"
            else:
                seen[name] = (value, mod.__name__)
    assert "CHUNK" in seen and seen["CHUNK"][0] == _fastclip.CHUNK
