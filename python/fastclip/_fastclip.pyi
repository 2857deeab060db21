"""Stubs for the compiled extension ``fastclip._fastclip`` (thin bindings over the Rust core)."""

from collections.abc import Sequence

import numpy as np

__all__ = ["CHUNK", "PARALLEL_MIN", "clamp_", "isa", "norms", "scale_"]

CHUNK: int
PARALLEL_MIN: int

def norms(
    arrays: list[np.ndarray] | tuple[np.ndarray, ...],
    norm_type: float = 2.0,
    per_tensor: bool = True,
    name: str = "grads",
    positions: Sequence[int] | None = None,
) -> tuple[list[float], float]:
    """Each array's p-norm and the total p-norm (float64). Raises TypeError/ValueError."""

def scale_(
    arrays: list[np.ndarray] | tuple[np.ndarray, ...],
    factors: float | Sequence[float],
    name: str = "grads",
    positions: Sequence[int] | None = None,
) -> None:
    """arrays[i] *= factors[i] in place (one factor for all if a float)."""

def clamp_(
    arrays: list[np.ndarray] | tuple[np.ndarray, ...],
    lo: float,
    hi: float,
    name: str = "grads",
    positions: Sequence[int] | None = None,
) -> None:
    """Clamp every element to [lo, hi] in place; NaN stays NaN."""

def isa() -> str:
    """The instruction set in use."""
