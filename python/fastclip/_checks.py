"""Argument checks shared by the public API: clear errors before any buffer is touched."""

from __future__ import annotations

import math
from typing import Any

__all__ = ["norm_type", "number", "threshold"]


def number(value: Any, name: str) -> float:
    """``value`` as a float; ``TypeError`` naming ``name`` if it is not a real number."""
    if isinstance(value, (str, bytes, bool)) or value is None:
        raise TypeError(f"{name} must be a real number, not {type(value).__name__}")
    try:
        return float(value)
    except (TypeError, ValueError) as e:
        raise TypeError(f"{name} must be a real number, not {type(value).__name__}") from e


def threshold(value: Any, name: str, *, allow_zero: bool = True, allow_inf: bool = True) -> float:
    """A clipping threshold: a real number, not NaN, >= 0 (> 0 unless ``allow_zero``), and finite
    unless ``allow_inf``. Raises ``TypeError`` for non-numbers and ``ValueError`` otherwise."""
    v = number(value, name)
    if math.isnan(v):
        raise ValueError(f"{name} must not be NaN")
    if v < 0 or (v == 0 and not allow_zero):
        raise ValueError(f"{name} must be {'>=' if allow_zero else '>'} 0, got {v!r}")
    if math.isinf(v) and not allow_inf:
        raise ValueError(f"{name} must be finite, got {v!r}")
    return v


def norm_type(value: Any) -> float:
    """A norm order p: a real number > 0, or inf (``float('inf')`` or the string ``'inf'``)."""
    if isinstance(value, str):
        if value.strip().lower() in ("inf", "+inf", "infinity"):
            return math.inf
        raise ValueError(f"norm_type must be a number > 0 or 'inf', got {value!r}")
    p = number(value, "norm_type")
    if not p > 0:
        raise ValueError(f"norm_type must be > 0 or inf, got {p!r}")
    return p
