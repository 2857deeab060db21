"""What the benchmark compares: fastclip, the NumPy way, and torch.nn.utils (when importable).

Every norm clip shrinks the gradients by a factor just under 1 each call (the threshold follows
the data down by 0.1%, :class:`Shrinking`), so every call really writes and the data never drifts
towards subnormals.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import numpy as np

from .. import _fastclip
from ..functional import clip_grad_norm_

__all__ = [
    "EPS",
    "OPS",
    "Shrinking",
    "fastclip_global",
    "fastclip_per_tensor",
    "fastclip_value",
    "implementations",
    "numpy_global",
    "numpy_per_tensor",
    "numpy_value",
    "sumsq_numpy",
    "torch_impls",
    "torch_module",
]

#: torch's ``clip_grad_norm_`` epsilon: ``coef = max_norm / (total + EPS)``.
EPS = 1e-6
#: The operations, in the order they are reported.
OPS = ("global", "per-tensor", "value")


class Shrinking:
    """A clip threshold that is always 0.1% under the current norm(s)."""

    def __init__(self, norm: float) -> None:
        self.value = norm

    def next(self) -> float:
        self.value *= 0.999
        return self.value


def fastclip_global(gs: list[np.ndarray], c: float) -> float:
    return clip_grad_norm_(gs, c)  # the public call (one fused extension call for a list of arrays)


def fastclip_per_tensor(gs: list[np.ndarray], c: float) -> None:
    each, _ = _fastclip.norms(gs, 2.0, True)
    _fastclip.scale_(gs, [c / max(n, c) for n in each])


def fastclip_value(gs: list[np.ndarray], v: float) -> None:
    _fastclip.clamp_(gs, -v, v)


def sumsq_numpy(g: np.ndarray) -> float:
    """``sum g^2`` the NumPy way (``np.dot``; float16 through float32, as NumPy's own overflows)."""
    f = g.reshape(-1)
    if f.dtype == np.float16:  # NumPy's own float16 dot accumulates in float16 and overflows
        f = f.astype(np.float32)
    return float(np.dot(f, f))


def numpy_global(gs: list[np.ndarray], c: float) -> float:
    total = math.sqrt(sum(sumsq_numpy(g) for g in gs))
    coef = min(1.0, c / (total + EPS))
    for g in gs:
        g *= g.dtype.type(coef)
    return total


def numpy_per_tensor(gs: list[np.ndarray], c: float) -> None:
    for g in gs:
        n = math.sqrt(sumsq_numpy(g))
        g *= g.dtype.type(c / max(n, c))


def numpy_value(gs: list[np.ndarray], v: float) -> None:
    for g in gs:
        np.clip(g, -v, v, out=g)


def torch_module() -> Any:
    """``torch`` if it imports, else ``None`` (the torch column is then left out)."""
    try:
        import torch  # type: ignore[import-not-found, unused-ignore]
    except Exception:
        return None
    return torch


def torch_impls(torch: Any) -> dict[str, Callable[..., Any]]:
    """torch.nn.utils on zero-copy views of the same buffers (parameters whose .grad is the view)."""

    def params(gs: list[np.ndarray]) -> list[Any]:
        ps = []
        for g in gs:
            t = torch.from_numpy(g)
            # a stride-0 parameter of the right shape: no second copy of the data
            p = torch.nn.Parameter(torch.zeros(1, dtype=t.dtype).expand(t.shape))
            p.grad = t
            ps.append(p)
        return ps

    # The parameters of the last workload, with the list they were made for. Keeping the list itself
    # (not its id) matters: once a workload's list is freed, the next one may get the same id.
    cache: list[Any] = [None, None]

    def get(gs: list[np.ndarray]) -> list[Any]:
        if cache[0] is not gs:
            cache[0], cache[1] = gs, params(gs)
        return cache[1]

    def glob(gs: list[np.ndarray], c: float) -> None:
        torch.nn.utils.clip_grad_norm_(get(gs), c)

    def per(gs: list[np.ndarray], c: float) -> None:
        for p in get(gs):
            torch.nn.utils.clip_grad_norm_([p], c)

    def value(gs: list[np.ndarray], v: float) -> None:
        torch.nn.utils.clip_grad_value_(get(gs), v)

    return {"global": glob, "per-tensor": per, "value": value}


def implementations(torch: Any = None) -> dict[str, dict[str, Callable[..., Any]]]:
    """``{peer: {op: f(grads, threshold)}}``: fastclip, NumPy, and torch when ``torch`` is given."""
    impls: dict[str, dict[str, Callable[..., Any]]] = {
        "fastclip": {"global": fastclip_global, "per-tensor": fastclip_per_tensor, "value": fastclip_value},
        "numpy": {"global": numpy_global, "per-tensor": numpy_per_tensor, "value": numpy_value},
    }
    if torch is not None:
        impls["torch"] = torch_impls(torch)
    return impls
