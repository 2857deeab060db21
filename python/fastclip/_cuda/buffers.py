"""CUDA buffers: DLPack producers viewed as CuPy arrays, and the checks made before any is touched.

Every buffer becomes a CuPy array with ``cupy.from_dlpack`` (zero copy) on the producer's stream
(:func:`fastclip._cuda.streams.stream_for`). bfloat16 crosses as ``uint16`` bits (torch
``t.view(torch.uint16)``; a CuPy ``ml_dtypes.bfloat16`` array is re-viewed). In-place calls reject
two buffers whose byte ranges intersect (:func:`check_disjoint`), as the CPU binding does.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from .._frameworks import exportable
from .kernels import BF16, F16, F32, F64
from .streams import cupy, stream_for

__all__ = ["CODE_NAMES", "Buffer", "as_buffers", "byte_span", "check_buffers", "check_disjoint", "writable_buffers"]

#: The dtype name of each storage code.
CODE_NAMES = {F32: "float32", F64: "float64", F16: "float16", BF16: "bfloat16"}
_NP_DTYPES = {np.dtype(np.float32): F32, np.dtype(np.float64): F64, np.dtype(np.float16): F16}


def _storage_dtype(code: int) -> np.dtype:
    if code == BF16:
        import ml_dtypes

        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(CODE_NAMES[code])


def byte_span(ptr: int, shape: Sequence[int], strides: Sequence[int], itemsize: int) -> tuple[int, int]:
    """The bytes ``[lo, hi)`` that a strided array spans (its whole extent); empty if no element."""
    if any(n == 0 for n in shape):
        return ptr, ptr
    lo = ptr + sum((n - 1) * s for n, s in zip(shape, strides) if s < 0)
    hi = ptr + sum((n - 1) * s for n, s in zip(shape, strides) if s > 0) + itemsize
    return lo, hi


def check_disjoint(spans: Sequence[tuple[int, int]], name: str, positions: Sequence[int]) -> None:
    """``ValueError`` if two byte ranges ``[lo, hi)`` overlap (empty ones never do), naming both
    buffers by their positions: an in-place call would modify the shared memory twice. The one
    overlap check of the CUDA path (the CPU binding makes the same one in Rust)."""
    order = sorted((lo, hi, i) for i, (lo, hi) in enumerate(spans) if hi > lo)
    reach: tuple[int, int] | None = None
    for lo, hi, i in order:
        if reach is not None and lo < reach[0]:
            a, b = sorted((positions[i], positions[reach[1]]))
            raise ValueError(
                f"{name}[{a}] and {name}[{b}] share memory (their byte ranges overlap; interleaved strided views "
                "count too); an in-place call would modify it twice. Pass each buffer once"
            )
        if reach is None or hi > reach[0]:
            reach = (hi, i)


class Buffer:
    """One CUDA gradient buffer: a CuPy array over the producer's memory (``uint16`` bits for
    bfloat16), its dtype code, the stream to work on, and the producer (kept alive)."""

    __slots__ = ("array", "code", "device_id", "source", "stream")

    def __init__(self, array: Any, code: int, stream: Any, device_id: int, source: Any) -> None:
        self.array = array
        self.code = code
        self.stream = stream
        self.device_id = device_id
        self.source = source

    @property
    def dtype(self) -> np.dtype:
        """The gradient's dtype (``ml_dtypes.bfloat16`` for bfloat16, although ``array`` holds bits)."""
        return _storage_dtype(self.code)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.array.shape)

    @property
    def size(self) -> int:
        return int(self.array.size)

    @property
    def span(self) -> tuple[int, int]:
        a = self.array
        return byte_span(int(a.data.ptr), a.shape, a.strides, a.itemsize)

    def __repr__(self) -> str:
        return f"Buffer({CODE_NAMES[self.code]}, shape={tuple(self.array.shape)}, cuda:{self.device_id})"


def as_buffers(objs: Sequence[Any], name: str = "grads", positions: Sequence[int] | None = None) -> list[Buffer]:
    """CUDA DLPack producers as :class:`Buffer` objects (zero copy), all on one device and stream.

    Raises ``ImportError`` if CuPy is missing, ``ValueError`` if the buffers are on different
    devices, ``TypeError`` for a dtype other than float16/bfloat16/float32/float64.
    """
    cp = cupy()
    pos = list(positions) if positions is not None else list(range(len(objs)))
    if not objs:
        return []
    devices = [int(o.__dlpack_device__()[1]) for o in objs]
    for d, p in zip(devices, pos):
        if d != devices[0]:
            raise ValueError(
                f"{name}[{pos[0]}] is on cuda:{devices[0]} and {name}[{p}] on cuda:{d}; "
                "clip each device's buffers in a separate call"
            )
    dev = devices[0]
    stream = stream_for(cp, objs, dev)
    out = []
    bf16_name = "bfloat16"
    with cp.cuda.Device(dev), stream:
        for o, p in zip(objs, pos):
            o, bf16 = exportable(o)
            try:
                arr = cp.from_dlpack(o)
            except (BufferError, RuntimeError, TypeError, ValueError) as e:
                raise TypeError(f"{name}[{p}] cannot be viewed as a CuPy array through DLPack: {e}") from e
            dt = np.dtype(arr.dtype)
            if bf16 and dt == np.dtype(np.uint16):
                code = BF16
            elif dt.name == bf16_name and dt.itemsize == 2:
                arr, code = arr.view(cp.uint16), BF16
            elif dt in _NP_DTYPES:
                code = _NP_DTYPES[dt]
            else:
                raise TypeError(
                    f"{name}[{p}] has dtype {dt}; fastclip works on float16, bfloat16 (ml_dtypes), float32 and "
                    "float64 gradients"
                )
            out.append(Buffer(arr, code, stream, dev, o))
    return out


def check_buffers(buffers: Any, name: str, positions: Sequence[int] | None) -> tuple[list[Buffer], list[int]]:
    """``buffers`` as a list of :class:`Buffer` and their caller positions; ``TypeError`` naming
    the argument (and the position) for anything else."""
    if not isinstance(buffers, (list, tuple)):
        raise TypeError(f"{name} must be a list or tuple of fastclip._cuda.Buffer")
    for i, b in enumerate(buffers):
        if not isinstance(b, Buffer):
            raise TypeError(f"{name}[{i}] must be a fastclip._cuda.Buffer, not {type(b).__name__}")
    pos = list(positions) if positions is not None else list(range(len(buffers)))
    return list(buffers), pos


def writable_buffers(buffers: Any, name: str, positions: Sequence[int] | None) -> tuple[list[Buffer], list[int]]:
    """:func:`check_buffers`, then :func:`check_disjoint` (for in-place calls)."""
    bufs, pos = check_buffers(buffers, name, positions)
    check_disjoint([b.span for b in bufs], name, pos)
    return bufs, pos
