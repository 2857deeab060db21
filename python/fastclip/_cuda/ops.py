"""The CUDA backend's three operations: ``norms``, ``scale_``, ``clamp_`` (the contract is
:class:`fastclip._backend.Backend`; the CPU extension implements the same one)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from .. import _checks
from . import device
from .buffers import Buffer, check_buffers, writable_buffers
from .kernels import OP_CLAMP, OP_SCALE
from .partials import BlockTable, compute_norms
from .rounding import dtype_bounds, round_factor
from .streams import cupy

__all__ = ["clamp_", "norms", "scale_"]


def norms(
    arrays: list[Buffer] | tuple[Buffer, ...],
    norm_type: float = 2.0,
    per_tensor: bool = True,
    name: str = "grads",
    positions: Sequence[int] | None = None,
) -> tuple[list[float], float]:
    """Each buffer's p-norm (if ``per_tensor``, else ``[]``) and the total p-norm, as floats.

    Same contract as ``fastclip._fastclip.norms``: accumulated in float64, NaN anywhere gives
    NaN, inf gives inf, an empty list gives ``([], 0.0)``. One kernel launch for all tensors (a
    second, over the few tensors that need it, for out-of-range float64 sums). Raises
    ``ValueError`` for a norm type that is not > 0 and ``TypeError`` for an item that is not a
    :class:`Buffer`.
    """
    p = _checks.norm_type(norm_type)
    bufs, _ = check_buffers(arrays, name, positions)
    if not bufs:
        return [], 0.0
    cp = cupy()
    dev, stream = bufs[0].device_id, bufs[0].stream
    with cp.cuda.Device(dev), stream:
        contiguous = device.contiguous(cp, bufs)
        codes = [b.code for b in bufs]

        def launch(idx: Sequence[int], table: BlockTable, mode: int, s1: np.ndarray, s2: np.ndarray
                   ) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
            return device.norm_partials(cp, [contiguous[i] for i in idx], [codes[i] for i in idx], dev, mode, p, s1, s2)

        per, total = compute_norms([int(a.size) for a in contiguous], p, launch)
    return (per if per_tensor else []), total


def scale_(
    arrays: list[Buffer] | tuple[Buffer, ...],
    factors: float | Sequence[float],
    name: str = "grads",
    positions: Sequence[int] | None = None,
) -> None:
    """``arrays[i] *= factors[i]`` in place (one factor for all if a float); a factor of exactly 1
    leaves its buffer untouched. The factor is rounded to float32 unless the buffer is float64,
    the product rounded once to the storage dtype. Raises ``ValueError`` for overlapping buffers
    or a wrong number of factors, before anything is modified."""
    bufs, _ = writable_buffers(arrays, name, positions)
    if isinstance(factors, (int, float, np.floating, np.integer)):
        fs = [float(factors)] * len(bufs)
    else:
        fs = [float(f) for f in factors]
        if len(fs) != len(bufs):
            raise ValueError(f"got {len(fs)} factors for {len(bufs)} arrays")
    keep = [i for i, f in enumerate(fs) if f != 1.0 and bufs[i].array.size]
    if not keep:
        return
    a = np.array([round_factor(fs[i], bufs[i].code) for i in keep], dtype=np.float64)
    device.apply(cupy(), [bufs[i] for i in keep], OP_SCALE, a, a)


def clamp_(
    arrays: list[Buffer] | tuple[Buffer, ...],
    lo: float,
    hi: float,
    name: str = "grads",
    positions: Sequence[int] | None = None,
) -> None:
    """Clamp every element to ``[lo, hi]`` in place (bounds rounded to each buffer's dtype); NaN
    stays NaN. Raises ``ValueError`` for ``lo > hi`` or NaN bounds and for overlapping buffers,
    before anything is modified."""
    lo, hi = float(lo), float(hi)
    if math.isnan(lo) or math.isnan(hi) or lo > hi:
        raise ValueError(f"clamp bounds must satisfy lo <= hi, got lo={lo}, hi={hi}")
    bufs, _ = writable_buffers(arrays, name, positions)
    keep = [i for i, b in enumerate(bufs) if b.array.size]
    if not keep:
        return
    bounds = {c: dtype_bounds(lo, hi, c) for c in {bufs[i].code for i in keep}}
    a = np.array([bounds[bufs[i].code][0] for i in keep], dtype=np.float64)
    b = np.array([bounds[bufs[i].code][1] for i in keep], dtype=np.float64)
    device.apply(cupy(), [bufs[i] for i in keep], OP_CLAMP, a, b)
