"""How the CUDA kernels round, chosen on the host so that they round exactly as the CPU engine.

The kernels multiply by the factor in float32 for float32/float16/bfloat16 (float64 for float64)
and round the product once to the storage dtype (nearest even); clamp bounds are rounded to the
storage dtype first. The factor's rounding is float32's own; the bounds' is taken from the CPU
kernels themselves (``fastclip._fastclip.clamp_`` on a probe), so the two paths cannot drift.
"""

from __future__ import annotations

import numpy as np

from .kernels import F16, F32, F64

__all__ = ["dtype_bounds", "round_factor"]


def round_factor(factor: float, code: int) -> float:
    """The factor as the kernels multiply by it: float64 for float64 buffers, else rounded to
    float32 (as the CPU kernels and torch do; beyond float32's range it becomes +-inf)."""
    if code == F64:
        return float(factor)
    with np.errstate(over="ignore"):
        return float(np.float32(factor))


def dtype_bounds(lo: float, hi: float, code: int) -> tuple[float, float]:
    """``lo`` and ``hi`` rounded to the storage dtype exactly as the CPU kernels round them (taken
    from the CPU kernels themselves: ``-inf`` and ``+inf`` clamped come out as the bounds)."""
    from .. import _fastclip

    if code == F64:
        return float(lo), float(hi)
    if code == F32:
        with np.errstate(over="ignore"):
            return float(np.float32(lo)), float(np.float32(hi))
    if code == F16:
        probe = np.array([-np.inf, np.inf], dtype=np.float16)
    else:
        import ml_dtypes

        probe = np.array([-np.inf, np.inf], dtype=ml_dtypes.bfloat16)
    _fastclip.clamp_([probe], lo, hi)
    return float(probe[0]), float(probe[1])
