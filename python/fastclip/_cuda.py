"""The CUDA path: the same ``norms`` / ``scale_`` / ``clamp_`` as ``fastclip._fastclip``, on CuPy.

Imported by :mod:`fastclip._buffers` only when a CUDA buffer shows up; importing this module does
not import CuPy (:func:`cupy` does, on first use), so its pure host-side logic is testable on
any machine.

How one call runs (multi_tensor_apply style, one kernel launch for any number of tensors):

- Every buffer becomes a CuPy array with ``cupy.from_dlpack`` (zero copy), on the producer's
  stream: for torch tensors ``torch.cuda.current_stream()`` wrapped in
  ``cupy.cuda.ExternalStream``, otherwise CuPy's current stream. bfloat16 crosses as ``uint16``
  bits (torch ``t.view(torch.uint16)``; a CuPy ``ml_dtypes.bfloat16`` array is re-viewed).
- A *block table* cuts each tensor into chunks of :data:`CHUNK` elements; block ``b`` handles
  elements ``[block_start[b], block_start[b] + CHUNK)`` of tensor ``block_tensor[b]``. The
  tables (and the tensors' pointer, size and dtype-code tables) are built on the host by
  :func:`block_table`, uploaded once and cached by the tuple of pointers.
- ``fastclip_norm_partials`` writes, for every block, ``sum |x|^p`` and ``max |x|`` in float64
  (fixed per-thread order, fixed shared-memory tree: deterministic). The host adds each tensor's
  blocks in block order, then combines tensors with overflow-safe scaling (:func:`finish_norms`).
  A tensor whose plain sum is out of range (float64 entries ~1e200 or ~1e-200, or large p) is
  redone scaled by 1/max|x| (largest term 1), as the CPU kernels do.
- ``fastclip_apply`` scales (``x <- x * f``) or clamps (``x <- min(max(x, lo), hi)``, NaN stays
  NaN) every tensor in place, rounding as the CPU path does: the factor is rounded to float32 for
  float32/float16/bfloat16 (float64 stays float64), the product rounded once to the storage dtype
  (nearest-even); clamp bounds are first rounded to the storage dtype.
- Non-contiguous views are worked on through a contiguous copy that is written back, as on the CPU.

float16 is converted with the PTX ``cvt`` instructions and bfloat16 by shifting its bits, so the
kernels need no CUDA header.
"""

from __future__ import annotations

import math
import sys
import warnings
from collections import OrderedDict
from collections.abc import Callable, Sequence
from functools import cache
from typing import Any

import numpy as np

from ._buffers import exportable, is_torch_tensor

__all__ = [
    "CHUNK",
    "KERNEL_SOURCE",
    "Buffer",
    "as_buffers",
    "block_table",
    "clamp_",
    "cupy",
    "finish_norms",
    "norms",
    "scale_",
]

#: Elements per block (per entry of the block table).
CHUNK = 16384
#: Threads per block; the shared-memory reduction assumes a power of two.
THREADS = 256
#: A plain sum below this (2^-900) may have lost terms to underflow: redo it scaled (as the CPU).
SAFE_MIN = 2.0**-900

#: dtype codes shared with the kernels.
F32, F64, F16, BF16 = 0, 1, 2, 3
_CODE_NAMES = {F32: "float32", F64: "float64", F16: "float16", BF16: "bfloat16"}
_ITEMSIZE = {F32: 4, F64: 8, F16: 2, BF16: 2}
_NP_DTYPES = {np.dtype(np.float32): F32, np.dtype(np.float64): F64, np.dtype(np.float16): F16}

#: Norm kernel modes.
MODE_P1, MODE_P2, MODE_P, MODE_MAX = 0, 1, 2, 3
#: Apply kernel operations.
OP_SCALE, OP_CLAMP = 0, 1

INSTALL_HINT = "pip install 'fastclip-rs[cuda]' (which installs cupy-cuda12x)"


def cupy() -> Any:
    """The ``cupy`` module; ``ImportError`` saying what to install if it is missing."""
    try:
        import cupy as cp  # type: ignore[import-not-found, unused-ignore]
    except ImportError as e:
        raise ImportError(f"fastclip needs CuPy for CUDA buffers: {INSTALL_HINT}") from e
    return cp


KERNEL_SOURCE = r"""
typedef unsigned short fc_u16;
typedef unsigned long long fc_u64;

__device__ __forceinline__ float fc_h2f(fc_u16 h) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
    return f;
}
__device__ __forceinline__ fc_u16 fc_f2h(float f) {  // round to nearest even
    fc_u16 h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f));
    return h;
}
__device__ __forceinline__ float fc_bf2f(fc_u16 b) { return __uint_as_float(((unsigned)b) << 16); }
__device__ __forceinline__ fc_u16 fc_f2bf(float f) {  // round to nearest even; NaN stays quiet NaN
    unsigned x = __float_as_uint(f);
    if ((x & 0x7fffffffu) > 0x7f800000u) return (fc_u16)((x >> 16) | 0x40u);
    if ((x & 0x8000u) && (x & 0x17fffu)) return (fc_u16)((x >> 16) + 1u);
    return (fc_u16)(x >> 16);
}

template <int CODE> __device__ __forceinline__ double fc_load(const void* p, long long i);
template <> __device__ __forceinline__ double fc_load<0>(const void* p, long long i) {
    return (double)((const float*)p)[i];
}
template <> __device__ __forceinline__ double fc_load<1>(const void* p, long long i) {
    return ((const double*)p)[i];
}
template <> __device__ __forceinline__ double fc_load<2>(const void* p, long long i) {
    return (double)fc_h2f(((const fc_u16*)p)[i]);
}
template <> __device__ __forceinline__ double fc_load<3>(const void* p, long long i) {
    return (double)fc_bf2f(((const fc_u16*)p)[i]);
}

// NaN-sticky max: once NaN, stays NaN.
__device__ __forceinline__ double fc_max(double m, double v) { return (v > m || v != v) ? v : m; }

template <int CODE, int MODE>
__device__ __forceinline__ void fc_accumulate(const void* p, long long lo, long long hi, double s1, double s2,
                                              double pw, double* sum, double* mx) {
    double acc = 0.0, m = 0.0;
    for (long long i = lo + threadIdx.x; i < hi; i += blockDim.x) {
        double v = fabs(fc_load<CODE>(p, i));
        m = fc_max(m, v);
        if (MODE == 0) acc += v * s1 * s2;
        else if (MODE == 1) { double w = v * s1 * s2; acc += w * w; }
        else if (MODE == 2) acc += pow(v * s1 * s2, pw);
    }
    *sum = acc;
    *mx = m;
}

template <int CODE>
__device__ __forceinline__ void fc_accumulate_mode(int mode, const void* p, long long lo, long long hi, double s1,
                                                   double s2, double pw, double* sum, double* mx) {
    switch (mode) {
        case 0: fc_accumulate<CODE, 0>(p, lo, hi, s1, s2, pw, sum, mx); break;
        case 1: fc_accumulate<CODE, 1>(p, lo, hi, s1, s2, pw, sum, mx); break;
        case 2: fc_accumulate<CODE, 2>(p, lo, hi, s1, s2, pw, sum, mx); break;
        default: fc_accumulate<CODE, 3>(p, lo, hi, s1, s2, pw, sum, mx); break;
    }
}

// One block per block-table entry: sum (|x| s1 s2)^p (mode 0: p = 1, 1: p = 2, 2: any p, 3: none)
// and max |x| of CHUNK elements of one tensor, in float64, written to out_sum/out_max[block].
extern "C" __global__ void fastclip_norm_partials(
        const fc_u64* ptrs, const long long* sizes, const int* codes, const double* s1, const double* s2,
        const int* block_tensor, const long long* block_start, long long chunk, int mode, double pw,
        double* out_sum, double* out_max) {
    __shared__ double sh_sum[FC_THREADS];
    __shared__ double sh_max[FC_THREADS];
    const int t = block_tensor[blockIdx.x];
    const long long lo = block_start[blockIdx.x];
    const long long hi = min(lo + chunk, sizes[t]);
    const void* p = (const void*)ptrs[t];
    double sum = 0.0, mx = 0.0;
    switch (codes[t]) {
        case 0: fc_accumulate_mode<0>(mode, p, lo, hi, s1[t], s2[t], pw, &sum, &mx); break;
        case 1: fc_accumulate_mode<1>(mode, p, lo, hi, s1[t], s2[t], pw, &sum, &mx); break;
        case 2: fc_accumulate_mode<2>(mode, p, lo, hi, s1[t], s2[t], pw, &sum, &mx); break;
        default: fc_accumulate_mode<3>(mode, p, lo, hi, s1[t], s2[t], pw, &sum, &mx); break;
    }
    sh_sum[threadIdx.x] = sum;
    sh_max[threadIdx.x] = mx;
    __syncthreads();
    for (int half = blockDim.x / 2; half > 0; half >>= 1) {  // fixed tree: deterministic
        if (threadIdx.x < half) {
            sh_sum[threadIdx.x] += sh_sum[threadIdx.x + half];
            sh_max[threadIdx.x] = fc_max(sh_max[threadIdx.x], sh_max[threadIdx.x + half]);
        }
        __syncthreads();
    }
    if (threadIdx.x == 0) {
        out_sum[blockIdx.x] = sh_sum[0];
        out_max[blockIdx.x] = sh_max[0];
    }
}

// In place, one block per block-table entry. op 0: x <- x * a[t]; op 1: x <- clamp(x, a[t], b[t]),
// NaN unchanged. a and b are already rounded on the host (factor to float32 unless float64,
// bounds to the storage dtype), so each element is rounded once, as on the CPU.
template <int CODE>
__device__ __forceinline__ void fc_apply_one(void* p, long long lo, long long hi, int op, double a, double b) {
    for (long long i = lo + threadIdx.x; i < hi; i += blockDim.x) {
        if (CODE == 1) {
            double* q = (double*)p;
            double x = q[i];
            if (op == 0) q[i] = x * a;
            else if (x < a) q[i] = a;
            else if (x > b) q[i] = b;
        } else if (CODE == 0) {
            float* q = (float*)p;
            float x = q[i];
            if (op == 0) q[i] = x * (float)a;
            else if (x < (float)a) q[i] = (float)a;
            else if (x > (float)b) q[i] = (float)b;
        } else {
            fc_u16* q = (fc_u16*)p;
            float x = CODE == 2 ? fc_h2f(q[i]) : fc_bf2f(q[i]);
            float y;
            if (op == 0) y = x * (float)a;
            else if (x < (float)a) y = (float)a;
            else if (x > (float)b) y = (float)b;
            else continue;  // unchanged: keep the exact bits (NaN payloads too)
            q[i] = CODE == 2 ? fc_f2h(y) : fc_f2bf(y);
        }
    }
}

extern "C" __global__ void fastclip_apply(
        const fc_u64* ptrs, const long long* sizes, const int* codes, const double* a, const double* b,
        const int* block_tensor, const long long* block_start, long long chunk, int op) {
    const int t = block_tensor[blockIdx.x];
    const long long lo = block_start[blockIdx.x];
    const long long hi = min(lo + chunk, sizes[t]);
    void* p = (void*)ptrs[t];
    switch (codes[t]) {
        case 0: fc_apply_one<0>(p, lo, hi, op, a[t], b[t]); break;
        case 1: fc_apply_one<1>(p, lo, hi, op, a[t], b[t]); break;
        case 2: fc_apply_one<2>(p, lo, hi, op, a[t], b[t]); break;
        default: fc_apply_one<3>(p, lo, hi, op, a[t], b[t]); break;
    }
}
""".replace("FC_THREADS", str(THREADS))


# ----------------------------------------------------------------------------------------------
# Pure host-side logic (no CuPy): block tables and the combination of partial sums.


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


def block_table(sizes: Sequence[int], chunk: int = CHUNK) -> BlockTable:
    """Cut tensors of ``sizes`` elements into blocks of at most ``chunk`` elements, in tensor
    order then element order. Tensor ``t`` gets ``ceil(sizes[t] / chunk)`` blocks (none if empty).

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
    """Tensors whose plain sum of |x|^p may have overflowed or lost terms to underflow, and that
    hold a finite non-zero max (so a sum scaled by 1/max is safe: its largest term is 1).
    Never for p = inf."""
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


def check_disjoint(spans: Sequence[tuple[int, int]], name: str, positions: Sequence[int]) -> None:
    """``ValueError`` if two byte ranges ``[lo, hi)`` overlap (empty ones never do), naming both
    buffers by their positions: an in-place call would modify the shared memory twice."""
    order = sorted((lo, hi, i) for i, (lo, hi) in enumerate(spans) if hi > lo)
    reach: tuple[int, int] | None = None
    for lo, hi, i in order:
        if reach is not None and lo < reach[0]:
            a, b = sorted((positions[i], positions[reach[1]]))
            raise ValueError(
                f"{name}[{a}] and {name}[{b}] share memory; an in-place call would modify it twice. "
                "Pass each buffer once"
            )
        if reach is None or hi > reach[0]:
            reach = (hi, i)


def byte_span(ptr: int, shape: Sequence[int], strides: Sequence[int], itemsize: int) -> tuple[int, int]:
    """The bytes ``[lo, hi)`` that a strided array spans (its whole extent); empty if no element."""
    if any(n == 0 for n in shape):
        return ptr, ptr
    lo = ptr + sum((n - 1) * s for n, s in zip(shape, strides) if s < 0)
    hi = ptr + sum((n - 1) * s for n, s in zip(shape, strides) if s > 0) + itemsize
    return lo, hi


def check_norm_type(p: float) -> float:
    """``p`` as a float: > 0 or +inf; ``ValueError`` otherwise (as the CPU binding)."""
    p = float(p)
    if not (p > 0):
        raise ValueError(f"norm_type must be a number > 0 or inf, got {p}")
    return p


# ----------------------------------------------------------------------------------------------
# Buffers and device work (CuPy).


def _storage_dtype(code: int) -> np.dtype:
    if code == BF16:
        import ml_dtypes

        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(_CODE_NAMES[code])


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
        return f"Buffer({_CODE_NAMES[self.code]}, shape={tuple(self.array.shape)}, cuda:{self.device_id})"


def _stream_for(cp: Any, objs: Sequence[Any], device_id: int) -> Any:
    """torch's current stream on the device when any producer is a torch tensor (work is then
    ordered with torch's kernels); otherwise CuPy's current stream."""
    if any(is_torch_tensor(o) for o in objs):
        torch = sys.modules["torch"]
        ts = torch.cuda.current_stream(device_id)
        if hasattr(cp.cuda.Stream, "from_external") and hasattr(ts, "__cuda_stream__"):
            return cp.cuda.Stream.from_external(ts)  # CuPy >= 14: the CUDA stream protocol
        with warnings.catch_warnings():  # ExternalStream is deprecated from CuPy 14 on
            warnings.simplefilter("ignore", DeprecationWarning)
            return cp.cuda.ExternalStream(ts.cuda_stream, device_id)
    with cp.cuda.Device(device_id):
        return cp.cuda.get_current_stream()


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
    stream = _stream_for(cp, objs, dev)
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


def _check_list(buffers: Any, name: str, positions: Sequence[int] | None) -> tuple[list[Buffer], list[int]]:
    if not isinstance(buffers, (list, tuple)):
        raise TypeError(f"{name} must be a list or tuple of fastclip._cuda.Buffer")
    for i, b in enumerate(buffers):
        if not isinstance(b, Buffer):
            raise TypeError(f"{name}[{i}] must be a fastclip._cuda.Buffer, not {type(b).__name__}")
    pos = list(positions) if positions is not None else list(range(len(buffers)))
    return list(buffers), pos


@cache
def _kernels(device_id: int) -> tuple[Any, Any]:
    """The two kernels, compiled once per device (CuPy also caches the binary on disk)."""
    cp = cupy()
    with cp.cuda.Device(device_id):
        mod = cp.RawModule(code=KERNEL_SOURCE)
        return mod.get_function("fastclip_norm_partials"), mod.get_function("fastclip_apply")


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
    """Tables for contiguous ``arrays``, cached by (device, pointers, sizes, codes): a training
    loop's gradients keep their addresses, so the upload happens once."""
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


def _contiguous(cp: Any, buffers: list[Buffer]) -> list[Any]:
    """Each buffer's array, or a contiguous copy of a strided one (to be written back)."""
    return [b.array if b.array.flags.c_contiguous else cp.ascontiguousarray(b.array) for b in buffers]


#: ``launch(indices, table, mode, s1, s2) -> (block_sum, block_max)``: run the norm kernel over the
#: tensors ``indices`` (cut as ``table``), with per-tensor scale factors ``s1``, ``s2``.
Launch = Callable[[Sequence[int], BlockTable, int, np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]


def norm_mode(p: float) -> int:
    """The norm kernel's mode for order ``p``."""
    return MODE_MAX if math.isinf(p) else MODE_P2 if p == 2.0 else MODE_P1 if p == 1.0 else MODE_P


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


def norms(
    buffers: Any,
    norm_type: float = 2.0,
    per_tensor: bool = True,
    name: str = "grads",
    positions: Sequence[int] | None = None,
) -> tuple[list[float], float]:
    """Each buffer's p-norm (if ``per_tensor``, else ``[]``) and the total p-norm, as floats.

    Same contract as ``fastclip._fastclip.norms``: accumulated in float64, NaN anywhere gives
    NaN, inf gives inf, an empty list gives ``([], 0.0)``. One kernel launch for all tensors (a
    second, over the few tensors that need it, for out-of-range float64 sums).
    """
    p = check_norm_type(norm_type)
    bufs, _ = _check_list(buffers, name, positions)
    if not bufs:
        return [], 0.0
    cp = cupy()
    dev, stream = bufs[0].device_id, bufs[0].stream
    with cp.cuda.Device(dev), stream:
        arrays = _contiguous(cp, bufs)
        codes = [b.code for b in bufs]
        kernel = _kernels(dev)[0]

        def launch(idx: Sequence[int], table: BlockTable, mode: int, s1: np.ndarray, s2: np.ndarray
                   ) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
            t = _tables(cp, [arrays[i] for i in idx], [codes[i] for i in idx], dev)
            n = len(t.block)
            out_sum = cp.empty(n, dtype=cp.float64)
            out_max = cp.empty(n, dtype=cp.float64)
            if n:
                kernel(
                    (n,), (THREADS,),
                    (t.ptrs, t.sizes, t.codes, cp.asarray(s1), cp.asarray(s2), t.block_tensor, t.block_start,
                     np.int64(CHUNK), np.int32(mode), np.float64(p), out_sum, out_max),
                )  # fmt: skip
            return out_sum.get(), out_max.get()  # waits for the stream

        per, total = compute_norms([int(a.size) for a in arrays], p, launch)
    return (per if per_tensor else []), total


def _apply(bufs: list[Buffer], op: int, a: np.ndarray, b: np.ndarray) -> None:
    """Run ``fastclip_apply`` over ``bufs`` (one launch), writing strided buffers back."""
    cp = cupy()
    dev, stream = bufs[0].device_id, bufs[0].stream
    with cp.cuda.Device(dev), stream:
        arrays = _contiguous(cp, bufs)
        t = _tables(cp, arrays, [x.code for x in bufs], dev)
        if len(t.block):
            _kernels(dev)[1](
                (len(t.block),), (THREADS,),
                (t.ptrs, t.sizes, t.codes, cp.asarray(a), cp.asarray(b), t.block_tensor, t.block_start,
                 np.int64(CHUNK), np.int32(op)),
            )  # fmt: skip
        for buf, arr in zip(bufs, arrays):
            if arr is not buf.array:
                buf.array[...] = arr


def _writable(buffers: Any, name: str, positions: Sequence[int] | None) -> tuple[list[Buffer], list[int]]:
    bufs, pos = _check_list(buffers, name, positions)
    check_disjoint([b.span for b in bufs], name, pos)
    return bufs, pos


def round_factor(factor: float, code: int) -> float:
    """The factor as the kernels multiply by it: float64 for float64 buffers, else rounded to
    float32 (as the CPU kernels and torch do)."""
    if code == F64:
        return float(factor)
    with np.errstate(over="ignore"):
        return float(np.float32(factor))


def scale_(buffers: Any, factors: float | Sequence[float], name: str = "grads",
           positions: Sequence[int] | None = None) -> None:  # fmt: skip
    """``buffers[i] *= factors[i]`` in place (one factor for all if a float); a factor of exactly 1
    leaves its buffer untouched. Raises ``ValueError`` for overlapping buffers or a wrong number
    of factors, before anything is modified."""
    bufs, _ = _writable(buffers, name, positions)
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
    _apply([bufs[i] for i in keep], OP_SCALE, a, a)


def dtype_bounds(lo: float, hi: float, code: int) -> tuple[float, float]:
    """``lo`` and ``hi`` rounded to the storage dtype exactly as the CPU kernels round them (taken
    from the CPU kernels themselves: ``-inf`` and ``+inf`` clamped come out as the bounds)."""
    from . import _fastclip

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


def clamp_(buffers: Any, lo: float, hi: float, name: str = "grads", positions: Sequence[int] | None = None) -> None:
    """Clamp every element to ``[lo, hi]`` in place (bounds rounded to each buffer's dtype); NaN
    stays NaN. Raises ``ValueError`` for ``lo > hi`` or NaN bounds and for overlapping buffers,
    before anything is modified."""
    lo, hi = float(lo), float(hi)
    if math.isnan(lo) or math.isnan(hi) or lo > hi:
        raise ValueError(f"clamp bounds must satisfy lo <= hi, got lo={lo}, hi={hi}")
    bufs, _ = _writable(buffers, name, positions)
    keep = [i for i, b in enumerate(bufs) if b.array.size]
    if not keep:
        return
    bounds = {c: dtype_bounds(lo, hi, c) for c in {bufs[i].code for i in keep}}
    a = np.array([bounds[bufs[i].code][0] for i in keep], dtype=np.float64)
    b = np.array([bounds[bufs[i].code][1] for i in keep], dtype=np.float64)
    _apply([bufs[i] for i in keep], OP_CLAMP, a, b)
