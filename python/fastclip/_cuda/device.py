"""Device work: the tables the kernels read, and one launch of each kernel.

The tensor tables (pointers, sizes, dtype codes) and the block table are built on the host,
uploaded once and cached by (device, pointers, sizes, codes): a training loop's gradients keep
their addresses. Non-contiguous buffers are worked on through a contiguous copy that the caller
writes back (:func:`contiguous`), as on the CPU.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import numpy as np

from .buffers import Buffer
from .kernels import CUDA_BLOCK_ELEMS, THREADS, compiled
from .partials import block_table

__all__ = ["apply", "contiguous", "norm_partials"]


class _Tables:
    """Device copies of the tensor tables (pointers, sizes, codes) and the block table."""

    __slots__ = ("block", "block_start", "block_tensor", "codes", "ptrs", "sizes")

    def __init__(self, cp: Any, ptrs: list[int], sizes: list[int], codes: list[int]) -> None:
        self.block = block_table(sizes)
        self.ptrs = cp.asarray(np.asarray(ptrs, dtype=np.uint64))
        self.sizes = cp.asarray(np.asarray(sizes, dtype=np.int64))
        self.codes = cp.asarray(np.asarray(codes, dtype=np.int32))
        self.block_tensor = cp.asarray(self.block.block_tensor)
        self.block_start = cp.asarray(self.block.block_start)


_TABLE_CACHE: OrderedDict[tuple[Any, ...], _Tables] = OrderedDict()
_TABLE_CACHE_SIZE = 16


def _tables(cp: Any, arrays: list[Any], codes: list[int], device_id: int) -> _Tables:
    """Tables for contiguous ``arrays``, cached by (device, pointers, sizes, codes)."""
    ptrs = [int(a.data.ptr) for a in arrays]
    sizes = [int(a.size) for a in arrays]
    key = (device_id, tuple(ptrs), tuple(sizes), tuple(codes))
    t = _TABLE_CACHE.get(key)
    if t is None:
        t = _Tables(cp, ptrs, sizes, codes)
        _TABLE_CACHE[key] = t
        if len(_TABLE_CACHE) > _TABLE_CACHE_SIZE:
            _TABLE_CACHE.popitem(last=False)
    else:
        _TABLE_CACHE.move_to_end(key)
    return t


def contiguous(cp: Any, buffers: list[Buffer]) -> list[Any]:
    """Each buffer's array, or a contiguous copy of a strided one (to be written back)."""
    return [b.array if b.array.flags.c_contiguous else cp.ascontiguousarray(b.array) for b in buffers]


def norm_partials(cp: Any, arrays: list[Any], codes: list[int], device_id: int, mode: int, p: float,
                  s1: np.ndarray, s2: np.ndarray) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """One ``fastclip_norm_partials`` launch over contiguous ``arrays`` (cut by :func:`block_table`
    of their sizes), with per-array scale factors ``s1``, ``s2``: each block's ``(sum, max)`` on the
    host. Runs on the current device and stream, and waits for it."""
    t = _tables(cp, arrays, codes, device_id)
    n = len(t.block)
    out_sum = cp.empty(n, dtype=cp.float64)
    out_max = cp.empty(n, dtype=cp.float64)
    if n:
        compiled(device_id)[0](
            (n,), (THREADS,),
            (t.ptrs, t.sizes, t.codes, cp.asarray(s1), cp.asarray(s2), t.block_tensor, t.block_start,
             np.int64(CUDA_BLOCK_ELEMS), np.int32(mode), np.float64(p), out_sum, out_max),
        )  # fmt: skip
    return out_sum.get(), out_max.get()  # waits for the stream


def apply(cp: Any, bufs: list[Buffer], op: int, a: np.ndarray, b: np.ndarray) -> None:
    """One ``fastclip_apply`` launch over ``bufs`` (op and per-buffer operands ``a``, ``b``, already
    rounded), on the buffers' device and stream; strided buffers are written back."""
    dev, stream = bufs[0].device_id, bufs[0].stream
    with cp.cuda.Device(dev), stream:
        arrays = contiguous(cp, bufs)
        t = _tables(cp, arrays, [x.code for x in bufs], dev)
        if len(t.block):
            compiled(dev)[1](
                (len(t.block),), (THREADS,),
                (t.ptrs, t.sizes, t.codes, cp.asarray(a), cp.asarray(b), t.block_tensor, t.block_start,
                 np.int64(CUDA_BLOCK_ELEMS), np.int32(op)),
            )  # fmt: skip
        for buf, arr in zip(bufs, arrays):
            if arr is not buf.array:
                buf.array[...] = arr
