"""Host arithmetic of the CUDA norms (NumPy and ``math`` only: no CuPy, no GPU).

The norm kernel writes, per block of the block table, ``sum (|x| s1 s2)^p`` and ``max |x|`` in
float64. Here those partials become each tensor's norm and the total, with the same guarantees
as the CPU engine: blocks added in block order (deterministic), a tensor whose plain sum is out of
range redone in the scaled form (largest term 1), tensors combined without overflow or underflow
unless the result itself does. :func:`compute_norms` drives it all given a ``launch`` callable
(the device kernel, or a NumPy stand-in in the tests).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np

from .kernels import CUDA_BLOCK_ELEMS, MODE_MAX, MODE_P, MODE_P1, MODE_P2

__all__ = [
    "SAFE_MIN",
    "BlockTable",
    "Launch",
    "block_table",
    "compute_norms",
    "finish_norms",
    "needs_rescale",
    "norm_mode",
    "per_tensor_partials",
    "rescale_factors",
    "tensor_norm",
    "total_of",
]

#: A plain sum below this (2^-900) may have lost terms to underflow: redo it scaled. The CPU
#: kernels' ``SAFE_MIN`` (``rust/src/kernels/reduce.rs``), which the extension does not export;
#: tests/test_cuda.py checks the two agree.
SAFE_MIN = 2.0**-900


class BlockTable:
    """Where each block works: ``block_tensor[b]``, ``block_start[b]``, and each tensor's first
    block and block count (``first_block[t]``, ``nblocks[t]``)."""

    __slots__ = ("block_start", "block_tensor", "first_block", "nblocks")

    def __init__(self, block_tensor: np.ndarray, block_start: np.ndarray, first_block: np.ndarray,
                 nblocks: np.ndarray) -> None:  # fmt: skip
        self.block_tensor = block_tensor
        self.block_start = block_start
        self.first_block = first_block
        self.nblocks = nblocks

    def __len__(self) -> int:
        return len(self.block_tensor)


def block_table(sizes: Sequence[int], chunk: int = CUDA_BLOCK_ELEMS) -> BlockTable:
    """Cut tensors of ``sizes`` elements into blocks of at most ``chunk`` elements, in tensor
    order then element order. Tensor ``t`` gets ``ceil(sizes[t] / chunk)`` blocks (none if empty).
    Raises ``ValueError`` for ``chunk <= 0`` or a negative size.

    >>> t = block_table([5, 0, 2], chunk=4)
    >>> t.block_tensor.tolist(), t.block_start.tolist(), t.first_block.tolist(), t.nblocks.tolist()
    ([0, 0, 2], [0, 4, 0], [0, 2, 2], [2, 0, 1])
    """
    if chunk <= 0:
        raise ValueError(f"chunk must be > 0, got {chunk}")
    n = np.asarray(sizes, dtype=np.int64).reshape(-1)
    if (n < 0).any():
        raise ValueError("sizes must be >= 0")
    nblocks = (n + chunk - 1) // chunk
    first = np.zeros(len(n), dtype=np.int64)
    if len(n):
        np.cumsum(nblocks[:-1], out=first[1:])
    total = int(nblocks.sum())
    block_tensor = np.repeat(np.arange(len(n), dtype=np.int32), nblocks)
    block_start = (np.arange(total, dtype=np.int64) - np.repeat(first, nblocks)) * chunk
    return BlockTable(block_tensor, block_start, first, nblocks)


def per_tensor_partials(table: BlockTable, block_sum: np.ndarray, block_max: np.ndarray
                        ) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """Each tensor's (sum, max) from its blocks' partials, added in block order (NaN propagates
    through both). Empty tensors give (0, 0)."""
    k = len(table.nblocks)
    sums = np.zeros(k, dtype=np.float64)
    maxes = np.zeros(k, dtype=np.float64)
    has = table.nblocks > 0
    if has.any():
        starts = table.first_block[has]
        sums[has] = np.add.reduceat(np.asarray(block_sum, dtype=np.float64), starts)
        maxes[has] = np.maximum.reduceat(np.asarray(block_max, dtype=np.float64), starts)
    return sums, maxes


def needs_rescale(sums: np.ndarray, maxes: np.ndarray, p: float) -> np.ndarray:
    """Tensors whose plain sum of |x|^p may have overflowed or lost terms to underflow
    (not finite, or below :data:`SAFE_MIN`), and that hold a finite non-zero max (so a sum
    scaled by 1/max is safe: its largest term is 1). Never for p = inf."""
    if math.isinf(p):
        return np.zeros(len(sums), dtype=bool)
    with np.errstate(invalid="ignore"):
        in_range = np.isfinite(sums) & (sums >= SAFE_MIN)
    return ~in_range & ~np.isnan(sums) & np.isfinite(maxes) & (maxes > 0)


def rescale_factors(max_abs: float) -> tuple[float, float, float]:
    """``(m, s1, s2)`` with ``m = max_abs`` and ``s1 * s2 = 1/m`` split so that neither factor
    overflows (``1/m`` alone does for subnormal ``m``): ``m = f * 2^e``, ``s1 = 2^-(e/2)``,
    ``s2 = 2^-(e - e/2) / f``. The largest scaled term ``|x| * s1 * s2`` is then 1 (to rounding),
    so no order p, however large, underflows it away (as the CPU kernels' sum of (|x|/m)^p)."""
    f, e = math.frexp(max_abs)
    h = int(e / 2)
    return max_abs, math.ldexp(1.0, -h), math.ldexp(1.0 / f, -(e - h))


def tensor_norm(total: float, scale: float, p: float) -> float:
    """The norm a tensor partial stands for: ``scale * total^(1/p)``, or ``total`` (the max) for
    p = inf. NaN stays NaN."""
    if math.isinf(p) or math.isnan(total):
        return total
    root = math.sqrt(total) if p == 2.0 else total if p == 1.0 else total ** (1.0 / p)
    return root * scale


def total_of(norms: Sequence[float], p: float) -> float:
    """The p-norm of all tensors together from their norms ``n_t``: ``max_t n_t`` for p = inf,
    else ``M * (sum_t (n_t / M)^p)^(1/p)`` with ``M = max_t n_t`` (no overflow or underflow
    unless the result itself does), summed exactly with ``math.fsum``. NaN wins over inf."""
    if not norms:
        return 0.0
    if any(math.isnan(n) for n in norms):
        return math.nan
    m = max(norms)
    if math.isinf(p) or m == 0.0 or math.isinf(m):
        return m
    if p == 1.0:
        try:
            return math.fsum(norms)
        except OverflowError:  # a sum of non-negative finite terms past the float64 range
            return math.inf
    s = math.fsum((n / m) ** p for n in norms)
    return m * (math.sqrt(s) if p == 2.0 else s ** (1.0 / p))


def finish_norms(sums: np.ndarray, maxes: np.ndarray, scales: np.ndarray, p: float) -> tuple[list[float], float]:
    """Per-tensor norms and the total from per-tensor partials ``(sum, max, scale)``: for p = inf
    the norm is the max; otherwise ``scale * sum^(1/p)``."""
    src = maxes if math.isinf(p) else sums
    per = [tensor_norm(float(s), float(c), p) for s, c in zip(src, scales)]
    return per, total_of(per, p)


def norm_mode(p: float) -> int:
    """The norm kernel's mode for order ``p``."""
    return MODE_MAX if math.isinf(p) else MODE_P2 if p == 2.0 else MODE_P1 if p == 1.0 else MODE_P


#: ``launch(indices, table, mode, s1, s2) -> (block_sum, block_max)``: run the norm kernel over the
#: tensors ``indices`` (cut as ``table``), with per-tensor scale factors ``s1``, ``s2``.
Launch = Callable[[Sequence[int], BlockTable, int, np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]


def compute_norms(sizes: Sequence[int], p: float, launch: Launch) -> tuple[list[float], float]:
    """Per-tensor norms and the total for tensors of ``sizes`` elements, given ``launch`` (the
    device kernel, or a NumPy stand-in in tests). One launch over all tensors; a second one, scaled
    by 1/max|x| per tensor, over the tensors whose plain sum is out of range (see :func:`needs_rescale`).
    """
    k = len(sizes)
    mode = norm_mode(p)
    table = block_table(sizes)
    ones = np.ones(k, dtype=np.float64)
    sums, maxes = per_tensor_partials(table, *launch(range(k), table, mode, ones, ones))
    scales = np.ones(k, dtype=np.float64)
    redo = np.flatnonzero(needs_rescale(sums, maxes, p))
    if len(redo):
        s1 = np.empty(len(redo))
        s2 = np.empty(len(redo))
        for j, i in enumerate(redo):
            scales[i], s1[j], s2[j] = rescale_factors(float(maxes[i]))
        sub = block_table([sizes[int(i)] for i in redo])
        sums[redo], _ = per_tensor_partials(sub, *launch(redo.tolist(), sub, mode, s1, s2))
    return finish_norms(sums, maxes, scales, p)
