"""Stubs for the compiled extension ``fastclip._fastclip`` (thin bindings over the Rust core)."""

from collections.abc import Callable, Sequence

import numpy as np

__all__ = [
    "CHUNK",
    "PARALLEL_MIN",
    "NotArrays",
    "_test_panic",
    "adam_",
    "clamp_",
    "isa",
    "momentum_",
    "norm_scale_",
    "norms",
    "scale_",
    "sgd_",
]

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

class NotArrays(TypeError):
    """Raised by ``norm_scale_`` when an item is not a numpy.ndarray (nothing was touched): the
    caller converts the list on the general path and calls again."""

def norm_scale_(
    arrays: list[np.ndarray] | tuple[np.ndarray, ...],
    norm_type: float,
    coefficient: Callable[[float], float],
    name: str = "grads",
    positions: Sequence[int] | None = None,
) -> float:
    """The total p-norm, then arrays[i] *= coefficient(total) in place; returns the total.
    Checks as norms() then scale_() would; if coefficient raises, nothing is modified. The
    arrays measured are the arrays scaled, whatever coefficient does to the list; RuntimeError
    if it changed an array (resized it, gave it new data)."""

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

def _test_panic(place: str) -> None:
    """Not API: panic on purpose ("attached", "detached" or "worker") to test that a Rust panic
    reaches Python as RuntimeError. Raises RuntimeError (ValueError for another place)."""

def sgd_(
    params: list[np.ndarray] | tuple[np.ndarray, ...],
    grads: list[np.ndarray] | tuple[np.ndarray, ...],
    lr: float | Sequence[float],
    weight_decay: float | Sequence[float] = ...,
) -> None:
    """p -= lr * (g + weight_decay * p) in place (float32/float64); grads are only read."""

def momentum_(
    params: list[np.ndarray] | tuple[np.ndarray, ...],
    grads: list[np.ndarray] | tuple[np.ndarray, ...],
    velocities: list[np.ndarray] | tuple[np.ndarray, ...],
    lr: float | Sequence[float],
    mu: float,
    nesterov: bool = False,
    weight_decay: float | Sequence[float] = ...,
) -> None:
    """Paddle's momentum update (L2 fused) in place on params and velocities."""

def adam_(
    params: list[np.ndarray] | tuple[np.ndarray, ...],
    grads: list[np.ndarray] | tuple[np.ndarray, ...],
    moment1: list[np.ndarray] | tuple[np.ndarray, ...],
    moment2: list[np.ndarray] | tuple[np.ndarray, ...],
    lr: float | Sequence[float],
    beta1: float,
    beta2: float,
    epsilon: float,
    beta1_pow: float | Sequence[float],
    beta2_pow: float | Sequence[float],
    weight_decay: float | Sequence[float] = ...,
    decoupled: bool = False,
) -> None:
    """Paddle's Adam (coupled L2) or AdamW (decoupled) update in place on params and moments."""
