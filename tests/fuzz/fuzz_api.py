"""Coverage-guided fuzzing of fastclip's public API (atheris), and the checker it shares with pytest.

Every input decodes (through an ``atheris.FuzzedDataProvider``, or :class:`RandomProvider` where
atheris is absent) into one call of ``get_total_norm``, ``clip_grad_norm_``,
``clip_grads_with_norm_``, ``clip_grad_value_`` or ``ClipGradByValue/ByNorm/ByGlobalNorm`` on a
structured input: 0..8 buffers of every dtype (valid: float16, bfloat16, float32, float64; invalid:
ints, bool, complex, longdouble, big-endian floats, float8, object), 0-size and 0-D shapes,
non-contiguous views (steps, permuted and negative strides, stride 0, self-overlapping views),
unaligned and read-only buffers, aliasing (one array twice, overlapping views of one base),
values across the exponent range (NaN, inf, subnormals, 1e300), bad and odd thresholds and norm
types, passed as a list, tuple, list subclass, deque, generator or one item, as arrays, objects
with ``.grad``, or ``fastclip.Parameter``\\ s.

Every buffer lives in a raw ``uint8`` block that the harness owns. The rule checked:

- the call raises ``TypeError``/``ValueError``/``RuntimeError`` and every raw block (and every
  object array) is bit-identical to before, or
- it returns and the result matches an independent reference: the total norm (float64, scaled by
  the largest magnitude, ``math.fsum``) within a relative tolerance; every clipped element equal to
  the reference ``x * factor`` (factor rounded to float32 unless the grad is float64) or
  ``clamp(x, round(lo), round(hi))`` rounded once to the dtype (NaN matches NaN); every byte
  outside the clipped buffers untouched; Paddle's returned pairs and ``last_stats`` as documented.

On top, a model of the documented errors says whether the call must raise (a non-number, NaN or
negative threshold; an unsupported dtype or byte order; an unaligned, read-only or overlapping
buffer for an in-place call; an item that is not a buffer; ``error_if_nonfinite`` with a
non-finite total) or must succeed; a disagreement is a finding. Anything else (another exception
type, a crash, a hang) is a finding too.

Run it (``make fuzz`` / ``make fuzz-smoke``)::

    python tests/fuzz/fuzz_api.py [--keep-going] [libFuzzer flags: -seed=1 -max_total_time=60 ...] CORPUS_DIR...
    python tests/fuzz/fuzz_api.py --replay FILE...      # decode and check FILEs, printing each case

``--keep-going`` prints each distinct finding once and continues instead of stopping at the first.
Known issues (:data:`KNOWN_ISSUES`) are findings reported to the lead and tolerated by name, each
for exactly the input shape it describes, so that ``make test`` stays green until they are fixed.
"""

from __future__ import annotations

import collections
import hashlib
import math
import os
import random
import struct
import sys
from decimal import Decimal
from fractions import Fraction
from typing import Any, Callable

import ml_dtypes
import numpy as np
import numpy.random  # imported before instrument_imports: only fastclip is instrumented

try:
    import atheris
except ImportError:  # the pytest replay works without it
    atheris = None

if atheris is not None and __name__ == "__main__":
    with atheris.instrument_imports():  # Python coverage of fastclip guides the fuzzer
        import fastclip as fc
else:
    import fastclip as fc

F16 = np.dtype(np.float16)
BF16 = np.dtype(ml_dtypes.bfloat16)
F32 = np.dtype(np.float32)
F64 = np.dtype(np.float64)
VALID = (F32, F64, F16, BF16)
INVALID = (
    np.dtype(np.int32),
    np.dtype(np.int64),
    np.dtype(np.uint8),
    np.dtype(np.bool_),
    np.dtype(np.complex64),
    np.dtype(np.complex128),
    np.dtype(np.longdouble),
    np.dtype(">f4"),
    np.dtype(">f8"),
    np.dtype(">f2"),
    np.dtype(ml_dtypes.float8_e4m3fn),
    np.dtype(np.int16),
    np.dtype(object),
)
#: (significand bits, minimum normal exponent, maximum exponent) of the non-float64 dtypes.
FORMATS = {F16: (11, -14, 15), BF16: (8, -126, 127), F32: (24, -126, 127)}

ALLOWED_ERRORS = (TypeError, ValueError, RuntimeError)

#: Findings reported to the lead, tolerated here until fixed; each names the exact shape it covers.
KNOWN_ISSUES: dict[str, str] = {
    "overflow-int-threshold": (
        "an int too large for a float (10**400) as a threshold, norm_type or total_norm raises "
        "OverflowError from _checks.number (float(value)), not TypeError/ValueError; nothing is modified"
    ),
    "numpy-bool-threshold": (
        "np.bool_ is accepted as a number (np.True_ -> 1.0) although bool is rejected with TypeError"
    ),
    "paddle-noop-skips-inplace-checks": (
        "ClipGradByNorm/ByGlobalNorm with no factor != 1 never call scale_, so read-only or shared "
        "(overlapping, passed twice) grads are accepted instead of the documented ValueError; "
        "nothing is modified"
    ),
}


class Finding(AssertionError):
    """A violation of the rule; ``key`` groups findings of the same kind."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"[{key}] {message}")
        self.key = key


# ---------------------------------------------------------------------------------------------
# Input decoding


class RandomProvider:
    """The part of ``atheris.FuzzedDataProvider`` the builder uses, drawn from ``random.Random``."""

    def __init__(self, seed: Any) -> None:
        self._r = random.Random(seed)

    def ConsumeIntInRange(self, lo: int, hi: int) -> int:
        return self._r.randint(lo, hi)

    def ConsumeFloat(self) -> float:
        if self._r.random() < 0.3:
            return self._r.choice([0.0, -0.0, math.inf, -math.inf, math.nan, 5e-324, 1.7976931348623157e308])
        return struct.unpack("<d", self._r.getrandbits(64).to_bytes(8, "little"))[0]

    def PickValueInList(self, values: list[Any]) -> Any:
        return self._r.choice(values)


def provider_for(data: bytes) -> Any:
    """An atheris provider for ``data`` where atheris is installed, else a seeded RandomProvider."""
    if atheris is not None:
        return atheris.FuzzedDataProvider(data)
    return RandomProvider(hashlib.sha256(data).digest())


class Draw:
    """Structured choices from a provider. An exhausted atheris provider returns its minimum, so the
    first option of every ``pick`` is the plain one and every ``chance`` is then False."""

    def __init__(self, fdp: Any) -> None:
        self.fdp = fdp
        #: whether this case may hold invalid arguments and buffers (else all valid, to reach the
        #: value checks); decided first by :func:`build`
        self.dirty = False

    def int(self, lo: int, hi: int) -> int:
        return self.fdp.ConsumeIntInRange(lo, hi)

    def chance(self, p: float) -> bool:
        return self.fdp.ConsumeIntInRange(0, 255) >= 256 - round(p * 256)

    def pick(self, values: list[Any] | tuple[Any, ...]) -> Any:
        return values[self.int(0, len(values) - 1)]

    def float(self) -> float:
        return self.fdp.ConsumeFloat()


# ---------------------------------------------------------------------------------------------
# Buffers


class _Sub(np.ndarray):
    """An ndarray subclass (takes the general path, not the exact-type fast path)."""


class Holder:
    """An object with a ``.grad`` (and, for Paddle pairs, maybe a ``need_clip``)."""

    def __init__(self, grad: Any, need_clip: Any = None) -> None:
        self.grad = grad
        if need_clip is not None:
            self.need_clip = need_clip

    def __repr__(self) -> str:
        return f"Holder(grad={describe_obj(self.grad)}{f', need_clip={self.need_clip!r}' if hasattr(self, 'need_clip') else ''})"  # noqa: E501


class Buf:
    """One array the call sees: a typed view of a raw block (or an object array of its own)."""

    def __init__(self, arr: np.ndarray, raw: np.ndarray | None, note: str) -> None:
        self.arr = arr
        self.raw = raw
        self.note = note

    def offset(self) -> int:
        assert self.raw is not None
        return self.arr.__array_interface__["data"][0] - self.raw.__array_interface__["data"][0]

    def extent(self) -> tuple[int, int]:
        """[lo, hi) byte addresses of every element (the whole strided extent); empty for size 0."""
        a = self.arr
        start = a.__array_interface__["data"][0]
        if a.size == 0:
            return (start, start)
        lo = start + sum(min(0, s * (n - 1)) for s, n in zip(a.strides, a.shape))
        hi = start + sum(max(0, s * (n - 1)) for s, n in zip(a.strides, a.shape)) + a.itemsize
        return (lo, hi)

    def view_of(self, raw: np.ndarray) -> np.ndarray:
        """The same geometry over another raw block (a snapshot or the expected result)."""
        a = self.arr
        return np.ndarray(a.shape, a.dtype, buffer=raw, offset=self.offset(), strides=a.strides)

    def describe(self) -> str:
        a = self.arr
        s = f"{a.dtype.name}{'' if a.dtype.isnative else '(' + a.dtype.byteorder + ')'}{list(a.shape)} strides={list(a.strides)}"  # noqa: E501
        if self.raw is not None:
            s += f" raw#{id(self.raw) % 10007} off={self.offset()}"
        if not a.flags.writeable:
            s += " ro"
        if not a.flags.aligned:
            s += " unaligned"
        if type(a) is not np.ndarray:
            s += f" {type(a).__name__}"
        s += f" {self.note}"
        if a.dtype.kind == "f" or a.dtype == BF16:
            snap = _SNAP.get(id(self.raw)) if self.raw is not None else None
            if snap is not None:
                a = self.view_of(snap)  # the values before the call
            if a.size <= 8:
                s += f" {np.asarray(a).astype(np.float64).ravel().tolist()}"
            else:
                s += f" (size {a.size})"
        return s


_BUF_OF: dict[int, Buf] = {}
#: raw block id -> its snapshot before the call being checked (descriptions show those values)
_SNAP: dict[int, np.ndarray] = {}


def describe_obj(obj: Any) -> str:
    b = _BUF_OF.get(id(obj))
    if b is not None and b.arr is obj:
        return f"<{b.describe()}>"
    if isinstance(obj, (Holder, fc.Parameter)):
        return (
            repr(obj)
            if isinstance(obj, Holder)
            else f"Parameter(grad={describe_obj(obj.grad)}, need_clip={obj.need_clip})"
        )
    r = repr(obj)
    return r if len(r) < 60 else r[:57] + "..."


def _values(draw: Draw, dtype: np.dtype, n: int) -> np.ndarray:
    """``n`` float64 values of one regime, to be cast to ``dtype``."""
    rng = np.random.default_rng(draw.int(0, 2**32 - 1))
    if dtype == F64:
        lo_exp, hi_exp, tiny = -1074, 1023, 5e-324
    elif dtype in FORMATS:
        t, emin, emax = FORMATS[dtype]
        lo_exp, hi_exp, tiny = emin - t + 1, emax, 2.0 ** (emin - t + 1)
    else:
        lo_exp, hi_exp, tiny = -20, 20, 1e-6
    regime = draw.pick(["normal", "wide", "special", "zeros", "huge", "tiny", "ints", "same"])
    sign = np.where(rng.random(n) < 0.5, -1.0, 1.0)
    if regime == "normal":
        v = rng.standard_normal(n) * 10.0 ** draw.int(-4, 4)
    elif regime == "wide":  # every binade, beyond both ends of the dtype (cast overflows/underflows)
        v = sign * np.exp2(rng.uniform(lo_exp - 4, hi_exp + 4, n))
    elif regime == "special":
        v = rng.standard_normal(n)
        specials = np.array([math.nan, math.inf, -math.inf, 0.0, -0.0, tiny, -tiny, 1e300, 2.0**hi_exp, 1e-300])
        k = rng.random(n) < 0.3
        v[k] = rng.choice(specials, int(k.sum()))
    elif regime == "zeros":
        v = sign * 0.0
    elif regime == "huge":
        v = sign * np.exp2(hi_exp - rng.uniform(0, 2, n))
    elif regime == "tiny":
        v = sign * tiny * rng.integers(1, 1000, n)
    elif regime == "ints":
        v = rng.integers(-3, 4, n).astype(np.float64)
    else:
        v = np.full(n, draw.pick([1.0, -2.5, math.nan, math.inf, 65504.0, 3.4e38]))
    return v


def _fill(arr: np.ndarray, draw: Draw) -> None:
    d = arr.dtype
    n = arr.size
    if n == 0:
        return
    with np.errstate(all="ignore"):
        if d.kind in "fc" or d in (BF16, np.dtype(ml_dtypes.float8_e4m3fn)):
            v = _values(draw, d if d.isnative else d.newbyteorder("="), n)
            if d.kind == "c":
                v = v + 1j * v[::-1]
            arr[...] = v.astype(d).reshape(arr.shape)
        elif d.kind == "b":
            arr[...] = (np.arange(n) % 3 == 0).reshape(arr.shape)
        else:
            arr[...] = (np.arange(n) % 7 - 3).astype(d).reshape(arr.shape)


def _shape(draw: Draw) -> tuple[int, ...]:
    k = draw.int(0, 99)
    if k < 70:
        return tuple(draw.int(1, 6) for _ in range(draw.int(1, 3)))
    if k < 80:
        return draw.pick([(0,), (3, 0), (0, 2, 2)])
    if k < 88:
        return ()
    if k < 96:
        return (draw.pick([17, 100, 1000, 3001, 9000]),)
    if k < 99:  # around the engine's chunk size (32Ki elements)
        return (draw.pick([32767, 32768, 32769, 65537]),)
    return (draw.pick([262145, 300001]),)  # past PARALLEL_MIN (256Ki elements): the rayon path


class Pool:
    """The raw blocks and buffers of one case."""

    def __init__(self, draw: Draw) -> None:
        self.draw = draw
        self.raws: list[np.ndarray] = []
        self.bufs: list[Buf] = []
        self.objects: list[tuple[np.ndarray, list[Any]]] = []

    def zeros(self, shape: tuple[int, ...]) -> np.ndarray:
        """A float32 array of zeros in a raw block of its own (a Parameter's value)."""
        raw = np.zeros(4 * math.prod(shape) + 8, np.uint8)
        self.raws.append(raw)
        return np.ndarray(shape, F32, buffer=raw, offset=4)

    def new(self) -> Buf:
        d = self.draw
        if self.bufs and d.dirty and d.chance(0.25):  # aliasing: the same array again, or a new view of its memory
            b = d.pick(self.bufs)
            if d.chance(0.5) or b.raw is None:
                return b
            nb = Buf(b.view_of(b.raw), b.raw, "same-memory")
            self.bufs.append(nb)
            return nb
        dtype = d.pick(INVALID) if d.dirty and d.chance(0.12) else d.pick(VALID)
        shape = _shape(d)
        if dtype == np.dtype(object):
            arr = np.empty(shape, object)
            arr[...] = 1.5
            b = Buf(arr, None, "")
            self.objects.append((arr, arr.ravel().tolist()))
            self.bufs.append(b)
            return b
        if self.raws and d.dirty and d.chance(0.2):
            b = self._overlapping(dtype, shape)
            if b is not None:
                return b
        b = self._fresh(dtype, shape)
        if d.dirty and d.chance(0.1):
            b.arr.flags.writeable = False
            b.note += " readonly"
        if d.chance(0.05):
            b.arr = b.arr.view(_Sub)
        _BUF_OF[id(b.arr)] = b
        self.bufs.append(b)
        return b

    def _geometry(self, dtype: np.dtype, shape: tuple[int, ...]) -> tuple[list[int], str]:
        d = self.draw
        isz = dtype.itemsize
        layout = d.pick(["C", "C", "F", "step", "neg", "perm", "zero", "selfover"])
        nd = len(shape)
        if nd == 0 or layout in ("C",):
            order = list(range(nd))
        elif layout == "F":
            order = list(range(nd))[::-1]
        else:
            order = list(range(nd))
            if layout == "perm":
                random.Random(d.int(0, 99)).shuffle(order)
        strides = [0] * nd
        acc = isz
        for ax in reversed(order):
            strides[ax] = acc
            acc *= max(shape[ax], 1)
        if nd and layout == "step":
            ax = d.int(0, nd - 1)
            k = d.int(2, 3)
            strides = [s * k if i <= ax else s for i, s in enumerate(strides)]
        if nd and layout == "neg":
            strides = [-s if d.chance(0.5) or i == 0 else s for i, s in enumerate(strides)]
        if nd and layout == "zero":
            strides[d.int(0, nd - 1)] = 0
        if nd and layout == "selfover":  # a writeable view whose elements share memory
            strides = [isz] * nd
        return strides, layout

    def _fresh(self, dtype: np.dtype, shape: tuple[int, ...]) -> Buf:
        d = self.draw
        strides, layout = self._geometry(dtype, shape)
        n = [max(s, 0) for s in shape]
        lo = sum(min(0, st * (k - 1)) for st, k in zip(strides, n)) if all(n) else 0
        hi = sum(max(0, st * (k - 1)) for st, k in zip(strides, n)) + dtype.itemsize if all(n) else 0
        unaligned = dtype.itemsize > 1 and d.dirty and d.chance(0.06)
        lead = -lo + (dtype.itemsize * d.int(0, 2)) + (1 if unaligned else 0)
        size = lead + hi + dtype.itemsize * d.int(0, 2) + 8
        raw = np.full(size, 0xA5, np.uint8)
        arr = np.ndarray(shape, dtype, buffer=raw, offset=lead, strides=strides)
        _fill(arr, d)
        # padding/gaps keep the 0xA5 pattern, gaps of stepped views too
        self.raws.append(raw)
        return Buf(arr, raw, layout + (" unaligned" if unaligned else ""))

    def _overlapping(self, dtype: np.dtype, shape: tuple[int, ...]) -> Buf | None:
        """A view of an existing raw block at some offset: overlaps other buffers, or sits beside them."""
        d = self.draw
        raw = d.pick(self.raws)
        strides, layout = self._geometry(dtype, shape)
        if not all(shape):
            return None
        lo = sum(min(0, st * (k - 1)) for st, k in zip(strides, shape))
        hi = sum(max(0, st * (k - 1)) for st, k in zip(strides, shape)) + dtype.itemsize
        room = raw.size - (hi - lo)
        if room < 0:
            return None
        start = d.int(0, room // dtype.itemsize) * dtype.itemsize
        start = min(start, room)
        arr = np.ndarray(shape, dtype, buffer=raw, offset=start - lo, strides=strides)
        b = Buf(arr, raw, layout + " view-of-base")
        _BUF_OF[id(b.arr)] = b
        self.bufs.append(b)
        return b


# ---------------------------------------------------------------------------------------------
# Arguments

_MISSING = object()


def _number_class(v: Any) -> str:
    """How fastclip's number check must treat ``v``: "num", "type" (TypeError), "overflow" (an int
    beyond float), "bool" (np.bool_), "any" (deprecated conversions)."""
    if isinstance(v, (bool, str, bytes)) or v is None:
        return "type"
    if isinstance(v, np.bool_):
        return "bool"
    if isinstance(v, int) and abs(v) > 1.7976931348623157e308:
        return "overflow"
    if isinstance(v, np.ndarray):
        return "num" if v.ndim == 0 and v.dtype.kind in "fiu" else "any"
    if isinstance(v, (int, float, Fraction, Decimal, np.floating, np.integer)):
        return "num"
    return "type"


_GOOD_THRESHOLDS = [
    1.0, 0.5, 2, 1e-6, 100.0, 1e6, math.inf, 1e300, 5e-324, 1e-300, 1.7976931348623157e308, 3.0, 10**20,
    np.float32(0.3), np.float16(2.0), np.int64(3), Fraction(1, 3), Decimal("0.1"), np.array(1.5), 1e-45, 65504.0,
    65520.0, 3.4028235e38, 0.0, -0.0, 1e-40, 0.1,
    # just past a float16 / bfloat16 rounding tie: rounding once and rounding through float32 differ
    1 + 2**-11 + 2**-30, 1 + 2**-8 + 2**-30, 3 * (1 + 2**-11 + 2**-30), 2**-20 * (1 + 2**-8 + 2**-30),
]  # fmt: skip
_BAD_THRESHOLDS = [
    -1.0, math.nan, -math.inf, 10**400, -(10**400), True, False, None, "1.0", b"1", np.float64(math.nan),
    np.bool_(True), object(), [1.0], np.array([1.0]), -1e-300, np.float32(-2.0),
]  # fmt: skip
_GOOD_NORM_TYPES = [
    2.0, 1.0, "inf", math.inf, 0.5, 3.0, 2, 1, "INF", " inf", "+inf", "infinity", 1e10, 1100.0, 0.01, 1e-300, 7.5,
    np.float32(2.0), Fraction(3, 2), 1.5, 4,
]  # fmt: skip
_BAD_NORM_TYPES = [0.0, -1.0, math.nan, "-inf", "2", "", -math.inf, True, None, 10**400, np.bool_(True), b"inf", -0.0]


def _threshold_value(draw: Draw) -> Any:
    if draw.chance(0.2):
        v = draw.float()
        return v if draw.dirty else (1.0 if math.isnan(v) else abs(v))
    if draw.dirty and draw.chance(0.6):
        return draw.pick(_BAD_THRESHOLDS)
    return draw.pick(_GOOD_THRESHOLDS)


def _norm_type_value(draw: Draw) -> Any:
    if draw.dirty and draw.chance(0.1):
        return draw.float()
    if draw.dirty and draw.chance(0.5):
        return draw.pick(_BAD_NORM_TYPES)
    return draw.pick(_GOOD_NORM_TYPES)


def _threshold_errors(v: Any, name: str, allow_zero: bool = True, allow_inf: bool = True) -> list[str]:
    """The documented errors (keys) a threshold must raise, "" entries for tolerated oddities."""
    c = _number_class(v)
    if c == "type":
        return [f"TypeError:{name} not a number"]
    if c == "overflow":
        return ["known:overflow-int-threshold"]
    if c == "bool":
        return ["known:numpy-bool-threshold"]
    if c == "any":
        return ["any"]
    f = float(v)
    if math.isnan(f):
        return [f"ValueError:{name} NaN"]
    if f < 0 or (f == 0 and not allow_zero):
        return [f"ValueError:{name} out of range"]
    if math.isinf(f) and not allow_inf:
        return [f"ValueError:{name} infinite"]
    return []


def _norm_type_errors(v: Any) -> tuple[list[str], float]:
    if isinstance(v, str):
        if v.strip().lower() in ("inf", "+inf", "infinity"):
            return [], math.inf
        return ["ValueError:norm_type string"], math.nan
    c = _number_class(v)
    if c == "type":
        return ["TypeError:norm_type not a number"], math.nan
    if c == "overflow":
        return ["known:overflow-int-threshold"], math.inf if v > 0 else math.nan
    if c == "bool":
        return ["known:numpy-bool-threshold"], 1.0
    p = float(v)
    if not p > 0:
        return ["ValueError:norm_type <= 0 or NaN"], math.nan
    return [], p


# ---------------------------------------------------------------------------------------------
# The case


OPS = (
    "clip_grad_norm_",
    "get_total_norm",
    "clip_grads_with_norm_",
    "clip_grad_value_",
    "ClipGradByGlobalNorm",
    "ClipGradByNorm",
    "ClipGradByValue",
)


class Case:
    """One decoded call: what to call, with what, and what the model expects."""

    def __init__(self) -> None:
        self.op = ""
        self.args: dict[str, Any] = {}
        self.container = ""
        self.items: list[Any] = []
        self.pool: Pool
        #: for torch-style calls: the buffers in the order the call sees them (None grads dropped)
        self.buffers: list[Buf] = []
        #: for Paddle calls: (param, grad, position, clipped?) per pair that is a pair
        self.pairs: list[tuple[Any, Any, int, bool]] = []
        #: the caller's position of each of ``buffers``
        self.positions: list[int] = []
        self.errors: list[str] = []
        #: for an error that is the only one of its case: substrings its message must hold (any one
        #: tuple of them), so that it names the argument and the position
        self.must_name: dict[str, list[tuple[str, ...]]] = {}
        self.arg = "grads"
        self.inplace = True
        self.repeat = False
        self.call: Callable[[], Any] = lambda: None

    def need(self, reason: str, *names: tuple[str, ...]) -> None:
        self.errors.append(reason)
        if names:
            self.must_name[reason] = list(names)

    def add_buffer(self, b: Buf, pos: int) -> None:
        self.buffers.append(b)
        self.positions.append(pos)

    def describe(self) -> str:
        args = ", ".join(f"{k}={describe_obj(v)}" for k, v in self.args.items())
        lines = [f"{self.op}({self.container} of {len(self.items)} items; {args})"]
        for i, it in enumerate(self.items):
            pair = isinstance(it, (tuple, list)) and len(it) == 2
            lines.append(f"  [{i}] {'(' + ', '.join(describe_obj(x) for x in it) + ')' if pair else describe_obj(it)}")
        lines.append(f"  model: {'must raise: ' + '; '.join(self.errors) if self.errors else 'must succeed'}")
        return "\n".join(lines)


def _torch_item(draw: Draw, pool: Pool, case: Case, i: int) -> Any:
    """One item of a torch-style ``grads``: an array, an object with .grad, a Parameter, or junk."""
    kind = draw.pick(["array", "array", "holder", "param", "none-grad", "junk"][: 6 if draw.dirty else 5])
    if kind == "junk":
        case.need("TypeError:item is not a buffer", (f"grads[{i}]",))
        return draw.pick([None, 3, "x", [np.zeros(2, np.float32)], 2.5])
    if kind == "none-grad":
        return Holder(None) if draw.chance(0.5) else fc.Parameter(pool.zeros((2,)))
    b = pool.new()
    case.add_buffer(b, i)
    if kind == "array":
        return b.arr
    if kind == "param" and (b.arr.dtype in VALID):
        p = fc.Parameter(pool.zeros(b.arr.shape))  # its value must stay untouched too
        p.grad = b.arr
        return p
    if draw.dirty and draw.chance(0.1):
        case.buffers.pop()
        case.positions.pop()
        case.need("TypeError:.grad is not a buffer", (f"grads[{i}]",))
        return Holder(draw.pick(["g", 1.0, [1.0]]))
    return Holder(b.arr)


def _container(draw: Draw, items: list[Any], case: Case, singles_ok: bool) -> Any:
    kind = draw.pick(["list", "list", "tuple", "generator", "single", "list-subclass", "deque"])
    if kind == "single" and (len(items) != 1 or not singles_ok or isinstance(items[0], list)):
        kind = "list"
    case.container = kind
    if kind == "list":
        return lambda: list(items)
    if kind == "tuple":
        return lambda: tuple(items)
    if kind == "generator":
        return lambda: (x for x in items)
    if kind == "single":
        return lambda: items[0]
    if kind == "deque":
        return lambda: collections.deque(items)

    class _L(list):
        pass

    return lambda: _L(items)


def build(draw: Draw) -> Case:
    case = Case()
    draw.dirty = draw.chance(0.4)
    case.repeat = draw.chance(0.2)  # a training loop: the same call again on the result
    pool = case.pool = Pool(draw)
    case.op = op = draw.pick(OPS)
    n = draw.pick([1, 2, 3, 0, 4, 5, 6, 7, 8])
    if op in ("clip_grad_norm_", "get_total_norm", "clip_grads_with_norm_", "clip_grad_value_"):
        case.items = items = [_torch_item(draw, pool, case, i) for i in range(n)]
        # a single junk item passed alone is a str/None/int argument: still a TypeError
        make = _container(draw, items, case, singles_ok=True)
        case.inplace = op != "get_total_norm"
        if op == "get_total_norm":
            nt = _norm_type_value(draw)
            enf = draw.chance(0.3)
            case.args = {"norm_type": nt, "error_if_nonfinite": enf}
            errs, case.p = _norm_type_errors(nt)
            for e in errs:
                case.need(e, ("norm_type",))
            case.call = lambda: fc.get_total_norm(make(), norm_type=nt, error_if_nonfinite=enf)
        elif op == "clip_grad_norm_":
            mn = _threshold_value(draw)
            nt = _norm_type_value(draw)
            enf = draw.chance(0.3)
            case.args = {"max_norm": mn, "norm_type": nt, "error_if_nonfinite": enf}
            _threshold_needs(case, mn, "max_norm")
            errs, case.p = _norm_type_errors(nt)
            for e in errs:
                case.need(e, ("norm_type",))
            case.call = lambda: fc.clip_grad_norm_(make(), mn, norm_type=nt, error_if_nonfinite=enf)
        elif op == "clip_grads_with_norm_":
            mn = _threshold_value(draw)
            tn = _threshold_value(draw) if draw.chance(0.5) else "ref"
            case.args = {"max_norm": mn, "total_norm": tn}
            _threshold_needs(case, mn, "max_norm")
            if tn != "ref":
                c = _number_class(tn)
                if c == "type":
                    case.need("TypeError:total_norm not a number", ("total_norm",))
                elif c in ("overflow", "bool"):
                    case.errors.append(
                        "known:overflow-int-threshold" if c == "overflow" else "known:numpy-bool-threshold"
                    )
                elif c == "any":
                    case.errors.append("any")
                elif float(tn) < 0:
                    case.need("ValueError:total_norm < 0", ("total_norm",))
            case.call = lambda: fc.clip_grads_with_norm_(make(), mn, case.total_arg)
        else:
            cv = _threshold_value(draw)
            case.args = {"clip_value": cv}
            _threshold_needs(case, cv, "clip_value")
            case.call = lambda: fc.clip_grad_value_(make(), cv)
        for b, i in zip(case.buffers, case.positions):
            _buffer_errors(b, case, i)
        if case.inplace:
            _overlap_errors(case)
        if case.container == "single":  # no position to name then
            case.must_name = {k: [("grads",)] if "grads[" in str(v) else v for k, v in case.must_name.items()}
        return case

    # Paddle: (param, grad) pairs
    case.arg = "params_grads"
    items = []
    for i in range(n):
        kind = draw.pick(
            ["pair", "pair", "pair", "none-grad", "list-pair", "junk", "junk-grad"][: 7 if draw.dirty else 5]
        )
        if kind == "junk":
            case.need("TypeError:not a pair", (f"params_grads[{i}]",))
            items.append(draw.pick([3, (1, 2, 3), "ab", None]))
            continue
        param = draw.pick(
            ["none", "param", "param-noclip", "holder-false", "holder-npfalse", "holder-0", "holder-true"]
        )
        if param == "none":
            p: Any = None
        elif param.startswith("param"):
            p = fc.Parameter(pool.zeros((2,)), need_clip=param == "param")
        else:
            p = Holder(
                None, {"holder-false": False, "holder-npfalse": np.False_, "holder-0": 0, "holder-true": True}[param]
            )
        clipped = getattr(p, "need_clip", True) is not False
        if kind == "none-grad":
            g: Any = None
        elif kind == "junk-grad":
            g = draw.pick(["g", 1.5, [1.0]])
            if clipped:
                case.need("TypeError:grad is not a buffer", (f"params_grads[{i}]",))
        else:
            b = pool.new()
            g = b.arr
            if clipped:
                case.add_buffer(b, i)
                _buffer_errors(b, case, i)
        case.pairs.append((p, g, i, clipped and g is not None))
        items.append([p, g] if kind == "list-pair" else (p, g))
    case.items = items
    make = _container(draw, items, case, singles_ok=False)
    if op == "ClipGradByValue":
        hi = _threshold_value(draw)
        lo = (
            _MISSING
            if draw.chance(0.5)
            else (_threshold_value(draw) if draw.chance(0.5) else -float(hi) if _number_class(hi) == "num" else None)
        )
        case.args = {"max": hi} if lo is _MISSING else {"max": hi, "min": lo}
        for e in _value_bound_errors(hi, None if lo is _MISSING else lo):
            case.need(e)
        if lo is _MISSING:
            case.call = lambda: _call_clip(case, fc.ClipGradByValue, (hi,), make)
        else:
            case.call = lambda: _call_clip(case, fc.ClipGradByValue, (hi, lo), make)
    elif op == "ClipGradByNorm":
        cn = _threshold_value(draw)
        case.args = {"clip_norm": cn}
        _threshold_needs(case, cn, "clip_norm", allow_zero=False, allow_inf=False)
        case.call = lambda: _call_clip(case, fc.ClipGradByNorm, (cn,), make)
    else:
        cn = _threshold_value(draw)
        skip = draw.pick([False, True, np.True_, 1][: 4 if draw.dirty else 2])
        gname = draw.pick(["default_group", "g", 3][: 3 if draw.dirty else 2])
        case.args = {"clip_norm": cn, "auto_skip_clip": skip, "group_name": gname}
        _threshold_needs(case, cn, "clip_norm", allow_zero=False, allow_inf=False)
        if not isinstance(skip, (bool, np.bool_)):  # NumPy bools are bools (_checks.flag)
            case.need("TypeError:auto_skip_clip not a bool", ("auto_skip_clip",))
        if not isinstance(gname, str):
            case.need("TypeError:group_name not a str", ("group_name",))
        case.call = lambda: _call_clip(case, fc.ClipGradByGlobalNorm, (cn, gname, skip), make)
    _overlap_errors(case)
    return case


def _value_bound_errors(hi: Any, lo: Any) -> list[str]:
    """ClipGradByValue(max, min): each bound checked alone (either may be the one reported first),
    then the two together."""
    errs = []
    nums = {}
    for v, name in ((hi, "max"), (lo, "min")):
        if name == "min" and lo is None:
            continue
        c = _number_class(v)
        if c == "type":
            errs.append(f"TypeError:{name} not a number")
        elif c == "overflow":
            errs.append("known:overflow-int-threshold")
        elif c == "any":
            errs.append("any")
        else:
            if c == "bool":
                errs.append("known:numpy-bool-threshold")
            nums[name] = float(v)
            if math.isnan(nums[name]):
                errs.append(f"ValueError:{name} NaN")
    if errs and not all(e.startswith("known:numpy-bool") for e in errs):
        return errs
    h = nums["max"]
    if lo is None:
        if not h > 0:
            return [*errs, "ValueError:max <= 0 without min"]
        lo_f = -h
    else:
        lo_f = nums["min"]
        if lo_f > h:
            return [*errs, "ValueError:min > max"]
    if lo_f == math.inf or h == -math.inf:
        return [*errs, "ValueError:bounds map everything to an infinity"]
    return errs


def _call_clip(case: Case, cls: Any, ctor: tuple[Any, ...], make: Callable[[], Any]) -> Any:
    clip = cls(*ctor)
    case.clip = clip
    return clip(make())


def _threshold_needs(case: Case, v: Any, name: str, allow_zero: bool = True, allow_inf: bool = True) -> None:
    for e in _threshold_errors(v, name, allow_zero, allow_inf):
        case.need(e, (name,))


def _buffer_errors(b: Buf, case: Case, pos: int) -> None:
    a = b.arr
    here = (f"{case.arg}[{pos}]",)
    if a.dtype not in VALID or not a.dtype.isnative:
        case.need(f"TypeError:unsupported dtype at {pos}", here)
    elif a.size and not a.flags.aligned:
        case.need(f"ValueError:unaligned at {pos}", here)
    elif case.inplace and not a.flags.writeable:
        case.need(f"ValueError:read-only at {pos}", here)


def _overlap_errors(case: Case) -> None:
    """Every pair of non-empty buffers whose byte extents intersect (the documented conservative rule)."""
    spans = [(b.extent(), i) for b, i in zip(case.buffers, case.positions) if b.raw is not None]
    spans = [(lo, hi, i) for (lo, hi), i in spans if lo < hi]
    pairs = [
        (f"{case.arg}[{min(i, j)}]", f"{case.arg}[{max(i, j)}]")
        for k, (lo, hi, i) in enumerate(spans)
        for (lo2, hi2, j) in spans[:k]
        if lo < hi2 and lo2 < hi
    ]
    if pairs:
        case.need("ValueError:overlapping buffers", *pairs)


# ---------------------------------------------------------------------------------------------
# References (independent of fastclip: float64 NumPy, math.fsum)


def as_f64(a: np.ndarray) -> np.ndarray:
    return np.asarray(a).astype(np.float64).ravel()


def ref_norm(arrays: list[np.ndarray], p: float) -> float:
    """``(sum |x|^p)^(1/p)`` over all elements (max |x| for p = inf): scaled by the largest
    magnitude M through exact ``frexp`` splits, so the largest term is 1; ``math.fsum``."""
    xs = [as_f64(a) for a in arrays]
    x = np.abs(np.concatenate(xs)) if xs else np.zeros(0)
    if x.size == 0:
        return 0.0
    if np.isnan(x).any():
        return math.nan
    if math.isinf(p):
        return float(x.max())
    if np.isinf(x).any():
        return math.inf
    nz = x[x > 0]
    if nz.size == 0:
        return 0.0
    m, e = np.frexp(nz)
    k = int(np.argmax(nz))
    de = (e - e[k]).astype(np.float64)
    with np.errstate(under="ignore", over="ignore", divide="ignore"):
        ratio = m / m[k]  # in (0.5, 2): exact enough, never underflows
        # r = ratio * 2**de; r**p directly while r is a normal float64, else in the log domain
        # (a ratio of 2**-1100 still gives 2**-11 for p = 0.01: it must not underflow to 0)
        direct = de > -1000
        terms = np.empty_like(ratio)
        terms[direct] = (ratio[direct] * np.exp2(de[direct])) ** p
        terms[~direct] = np.exp2(p * (np.log2(ratio[~direct]) + de[~direct]))
        s = math.fsum(terms.tolist())
    try:
        root = s ** (1.0 / p) if p != 1 else s
    except OverflowError:
        root = math.inf
    if math.isinf(root):  # s**(1/p) alone overflows (small p), M times it may not: in the log domain
        lg = math.log2(s) / p
        whole = math.floor(lg)
        try:
            return math.ldexp(2.0 ** (lg - whole) * float(m[k]), whole + int(e[k]))
        except OverflowError:
            return math.inf
    mr, er = math.frexp(root * float(m[k]))
    try:
        return math.ldexp(mr, er + int(e[k]))
    except OverflowError:
        return math.inf


def round_to(v: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Float64 values rounded once, to nearest even, to ``dtype`` (subnormals and overflow included)."""
    v = np.asarray(v, np.float64)
    if dtype == F64:
        return v.copy()
    t, emin, emax = FORMATS[dtype]
    out = v.copy()
    fin = np.isfinite(v) & (v != 0)
    x = v[fin]
    _, e = np.frexp(x)
    q = np.maximum(e - 1, emin) - (t - 1)
    r = np.ldexp(np.rint(np.ldexp(x, -q)), q)
    big = np.abs(r) > (2.0 - 2.0 ** (1 - t)) * 2.0**emax
    r[big] = np.copysign(math.inf, x[big])
    out[fin] = r
    return out


def lane_factor(f: float, dtype: np.dtype) -> float:
    """The factor as the kernel applies it: float64 for float64 grads, else rounded to float32."""
    if dtype == F64:
        return f
    with np.errstate(over="ignore"):
        return float(np.float32(f))


def ref_scale(x: np.ndarray, f: float) -> np.ndarray:
    """``x * f`` rounded once to x's dtype (the float64 product of a <=24-bit x and a float32 factor
    is exact)."""
    d = x.dtype
    with np.errstate(all="ignore"):
        prod = as_f64(x) * lane_factor(f, d)
    return round_to(prod, d)


def round_bound(v: float, d: np.dtype) -> float:
    """A clamp bound as Paddle's ``Scalar.to<T>()`` makes it (and torch's float opmath): to nearest
    float32 first, then (float16, bfloat16) to nearest of the dtype: two roundings, which differ
    from one just past a tie (1 + 2**-11 + 2**-30 gives 1.0 in float16, not 1 + 2**-10)."""
    if not math.isfinite(v) or d == F64:
        return v
    v32 = round_to(np.array([v]), F32)
    return float(round_to(v32, d)[0]) if d != F32 else float(v32[0])


def ref_clamp(x: np.ndarray, lo: float, hi: float) -> np.ndarray:
    d = x.dtype
    lo_d = round_bound(lo, d)
    hi_d = round_bound(hi, d)
    v = as_f64(x)
    out = np.minimum(np.maximum(v, lo_d), hi_d)
    out[np.isnan(v)] = math.nan
    return out


def norm_tol(p: float, n: int) -> float:
    """Relative tolerance of a float64-accumulated norm over n elements (errors of the sum shrink by
    1/p through the root; partials rescaled by (m1/m2)^p add a few ulps)."""
    return 4e-15 * (16 + math.sqrt(max(n, 1))) * max(1.0, 1.0 / p if p > 0 else 1.0)


def close(got: float, want: float, tol: float) -> bool:
    if math.isnan(want) or math.isnan(got):
        return math.isnan(want) and math.isnan(got)
    if math.isinf(want) or math.isinf(got):
        return got == want
    # a subnormal result has an absolute precision of 2^-1074, not a relative one: a few of those
    return abs(got - want) <= tol * abs(want) + 8 * 5e-324 or (want == 0 and got == 0)


# ---------------------------------------------------------------------------------------------
# The checker


def _torch_coef(max_norm: float, total: float) -> float:
    """torch: ``min(1, max_norm / (total + 1e-6))``, NaN kept; 1.0 (no-op) for max_norm = inf."""
    if math.isinf(max_norm):
        return 1.0
    c = max_norm / (total + 1e-6)
    return c if (c < 1.0 or math.isnan(c)) else 1.0


class Expected:
    """What each clipped buffer must hold after a successful call."""

    def __init__(self) -> None:
        self.values: list[tuple[Buf, np.ndarray, bool]] = []  # (buffer, expected f64 values, sign-exact)

    def scale(self, b: Buf, snap_view: np.ndarray, f: float) -> None:
        if f != 1.0:
            self.values.append((b, ref_scale(snap_view, f), True))

    def clamp(self, b: Buf, snap_view: np.ndarray, lo: float, hi: float) -> None:
        self.values.append((b, ref_clamp(snap_view, lo, hi), False))


def check(case: Case, allow: set[str] | None = None) -> str:
    """Run ``case`` and check the rule; returns "ok", "error" or "known:<issue>"; raises Finding."""
    allow = set(KNOWN_ISSUES) if allow is None else allow
    pool = case.pool
    snaps = [r.copy() for r in pool.raws]
    snap_of = {id(r): s for r, s in zip(pool.raws, snaps)}
    _SNAP.clear()
    _SNAP.update(snap_of)
    case.clip = None
    real = [b for b in case.buffers if b.arr.dtype in VALID and b.arr.dtype.isnative and b.raw is not None]
    # the reference total norm (torch-style) and the total_norm argument it may feed
    p = getattr(case, "p", 2.0)
    valid_p = isinstance(p, float) and p > 0
    views = [b.view_of(snap_of[id(b.raw)]) for b in real]
    ref_total = ref_norm(views, p) if valid_p else math.nan
    if case.op == "clip_grads_with_norm_":
        tn = case.args["total_norm"]
        case.total_arg = (ref_norm(views, 2.0) if real else 0.0) if isinstance(tn, str) and tn == "ref" else tn
        if isinstance(tn, str) and tn == "ref":
            case.args["total_norm"] = case.total_arg
    errors = list(case.errors)
    if case.op in ("clip_grad_norm_", "get_total_norm") and case.args.get("error_if_nonfinite"):
        if not math.isfinite(ref_total):
            errors.append("RuntimeError:non-finite total")
    try:
        result = case.call()
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as e:
        return _check_error(case, e, errors, snaps, allow)
    outcome = _check_success(case, result, errors, snaps, snap_of, real, ref_total, p, allow)
    if case.repeat and outcome == "ok":
        case.repeat = False
        return check(case, allow)
    return outcome


def _unchanged(case: Case, snaps: list[np.ndarray]) -> list[str]:
    bad = [f"raw#{id(r) % 10007}" for r, s in zip(case.pool.raws, snaps) if not np.array_equal(r, s)]
    for arr, before in case.pool.objects:
        if arr.ravel().tolist() != before:
            bad.append("an object array")
    return bad


def _check_error(case: Case, e: BaseException, errors: list[str], snaps: list[np.ndarray], allow: set[str]) -> str:
    changed = _unchanged(case, snaps)
    if changed:
        raise Finding("error-modified", f"{type(e).__name__}: {e}\nbut modified {changed}\n{case.describe()}")
    known = [x[6:] for x in errors if x.startswith("known:")]
    if not isinstance(e, ALLOWED_ERRORS):
        issue = "overflow-int-threshold" if isinstance(e, OverflowError) else ""
        if issue in known and issue in allow:
            return "known:" + issue
        raise Finding(f"exception-type:{type(e).__name__}", f"{type(e).__name__}: {e}\n{case.describe()}")
    if case.clip is not None and case.clip.last_stats is not None:
        raise Finding("stats-after-error", f"last_stats set by a failed call\n{case.describe()}")
    if not errors:
        raise Finding(f"rejected-valid:{type(e).__name__}", f"{type(e).__name__}: {e}\n{case.describe()}")
    types = {x.split(":", 1)[0] for x in errors}
    named = {"TypeError": TypeError, "ValueError": ValueError, "RuntimeError": RuntimeError}
    if not types & {"any", "known"} and not any(isinstance(e, named[t]) for t in types):
        raise Finding(
            f"wrong-error:{type(e).__name__}",
            f"{type(e).__name__}: {e}\nexpected one of {sorted(types)}\n{case.describe()}",
        )
    if len(errors) == 1 and errors[0] in case.must_name:
        msg = str(e)
        if not any(all(n in msg for n in names) for names in case.must_name[errors[0]]):
            raise Finding(
                f"message:{errors[0].split(' at ')[0]}",
                f"{type(e).__name__}: {e}\nshould name one of {case.must_name[errors[0]][:4]}\n{case.describe()}",
            )
    return "error"


def _check_success(case, result, errors, snaps, snap_of, real, ref_total, p, allow) -> str:
    must = [x for x in errors if x != "any" and not x.startswith("known:")]
    known = {x[6:] for x in errors if x.startswith("known:")}
    outcome = "ok"
    if must:
        if (
            case.op in ("ClipGradByNorm", "ClipGradByGlobalNorm")
            and _paddle_noop(case)
            and all(x.startswith(("ValueError:read-only", "ValueError:overlapping buffers")) for x in must)
        ):
            if "paddle-noop-skips-inplace-checks" not in allow:
                raise Finding("accepted-invalid:paddle-noop", f"returned {describe_obj(result)}\n{case.describe()}")
            outcome = "known:paddle-noop-skips-inplace-checks"
        else:
            raise Finding("accepted-invalid", f"returned {describe_obj(result)}\n{case.describe()}")
    for k in sorted(known):
        if k not in allow:
            raise Finding(f"accepted-invalid:{k}", f"returned {describe_obj(result)}\n{case.describe()}")
        if k == "overflow-int-threshold":  # accepted after all (as inf?): only check nothing else changed
            _check_values(case, Expected(), snaps, snap_of, real, loose=True)
            return "known:" + k
        outcome = "known:" + k
    exp = Expected()
    op = case.op
    snapv = {id(b): b.view_of(snap_of[id(b.raw)]) for b in real}
    if op == "get_total_norm" or op == "clip_grad_norm_":
        if not isinstance(result, float) or not close(result, ref_total, norm_tol(p, sum(b.arr.size for b in real))):
            raise Finding(f"norm:{op}", f"got {result!r}, reference {ref_total!r} (p={p})\n{case.describe()}")
        if op == "clip_grad_norm_":
            f = _torch_coef(float(case.args["max_norm"]), result)
            for b in real:
                exp.scale(b, snapv[id(b)], f)
        elif result is not None and not isinstance(result, float):
            raise Finding("result-type", f"{result!r}\n{case.describe()}")
    elif op == "clip_grads_with_norm_":
        if result is not None:
            raise Finding("result-type", f"{result!r}\n{case.describe()}")
        f = _torch_coef(float(case.args["max_norm"]), float(case.total_arg))
        for b in real:
            exp.scale(b, snapv[id(b)], f)
    elif op == "clip_grad_value_":
        if result is not None:
            raise Finding("result-type", f"{result!r}\n{case.describe()}")
        v = float(case.args["clip_value"])
        for b in real:
            exp.clamp(b, snapv[id(b)], -v, v)
    else:
        _check_pairs(case, result)
        _paddle_expect(case, exp, snapv, real)
    _check_values(case, exp, snaps, snap_of, real)
    return outcome


def _paddle_noop(case: Case) -> bool:
    st = case.clip.last_stats if case.clip is not None else None
    return st is not None and st.clipped is not None and not any(st.clipped)


def _check_pairs(case: Case, result: Any) -> None:
    want = [(p, g) for p, g, _, _ in case.pairs if g is not None]
    if not isinstance(result, list) or len(result) != len(want):
        raise Finding("paddle-result", f"returned {result!r}, want {len(want)} pairs\n{case.describe()}")
    for (p, g), r in zip(want, result):
        if not (isinstance(r, tuple) and len(r) == 2 and r[0] is p and r[1] is g):
            raise Finding("paddle-result", f"pair {r!r} is not the input's (param, grad)\n{case.describe()}")


def _paddle_expect(case: Case, exp: Expected, snapv: dict[int, np.ndarray], real: list[Buf]) -> None:
    st = case.clip.last_stats
    positions = tuple(i for _, _, i, c in case.pairs if c)
    if st is None or st.indices != positions:
        raise Finding("paddle-stats", f"indices {getattr(st, 'indices', None)} != {positions}\n{case.describe()}")
    if case.op == "ClipGradByValue":
        if (st.norms, st.scales, st.clipped, st.global_norm) != (None, None, None, None):
            raise Finding("paddle-stats", f"ByValue stats {st}\n{case.describe()}")
        clip = case.clip
        for b in real:
            exp.clamp(b, snapv[id(b)], clip.min, clip.max)
        return
    c = case.clip.clip_norm
    n = len(real)
    if st.norms is None or len(st.norms) != n or st.scales is None or len(st.scales) != n:
        raise Finding("paddle-stats", f"{st}\n{case.describe()}")
    for b, got in zip(real, st.norms):
        want = ref_norm([snapv[id(b)]], 2.0)
        if not close(got, want, norm_tol(2.0, b.arr.size)):
            raise Finding("norm:paddle-per-grad", f"norm {got!r}, reference {want!r}\n{case.describe()}")
    if case.op == "ClipGradByNorm":
        factors = [1.0 if nv <= c else c / nv for nv in st.norms]
    else:
        g = st.global_norm
        want = ref_norm([snapv[id(b)] for b in real], 2.0) if real else 0.0
        if g is None or not close(g, want, norm_tol(2.0, sum(b.arr.size for b in real))):
            raise Finding("norm:paddle-global", f"global_norm {g!r}, reference {want!r}\n{case.describe()}")
        if math.isnan(g):
            f = 1.0 if case.clip.auto_skip_clip else math.nan
        else:
            f = c / g if g > c else 1.0
        factors = [f] * n
    applied = tuple(f if f == 1.0 else lane_factor(f, b.arr.dtype) for f, b in zip(factors, real))
    same = all((a == b) or (math.isnan(a) and math.isnan(b)) for a, b in zip(applied, st.scales))
    if not same or st.clipped != tuple(f != 1.0 for f in factors):
        raise Finding("paddle-stats", f"scales {st.scales} / clipped {st.clipped}, want {applied}\n{case.describe()}")
    for b, f in zip(real, factors):
        exp.scale(b, snapv[id(b)], f)


def _check_values(case: Case, exp: Expected, snaps, snap_of, real, loose: bool = False) -> None:
    pool = case.pool
    covered = {id(r): np.zeros(r.size, bool) for r in pool.raws}
    touched = exp.values if not loose else [(b, None, False) for b in real]
    for b, _, _ in touched:
        m = np.ndarray(b.arr.shape, np.dtype((np.void, b.arr.itemsize)), buffer=covered[id(b.raw)].view(np.uint8),
                       offset=b.offset(), strides=b.arr.strides)  # fmt: skip
        m[...] = b"\x01" * b.arr.itemsize
    for r, s in zip(pool.raws, snaps):
        keep = ~covered[id(r)]
        if not np.array_equal(r[keep], s[keep]):
            where = np.flatnonzero(r[keep] != s[keep])[:5]
            raise Finding(
                "modified-outside", f"bytes {where.tolist()} of raw#{id(r) % 10007} changed\n{case.describe()}"
            )
    for arr, before in pool.objects:
        if arr.ravel().tolist() != before:
            raise Finding("modified-outside", f"an object array changed\n{case.describe()}")
    if loose:
        return
    for b, want, sign_exact in exp.values:
        got = as_f64(b.arr)
        nan_ok = np.isnan(got) & np.isnan(want)
        eq = (got == want) | nan_ok
        if sign_exact:
            eq &= nan_ok | (np.signbit(got) == np.signbit(want))
        if not eq.all():
            k = int(np.flatnonzero(~eq)[0])
            before = as_f64(b.view_of(snap_of[id(b.raw)]))[k]
            raise Finding(
                f"values:{case.op}:{b.arr.dtype.name}",
                f"element {k}: {before!r} became {got[k]!r}, reference {want[k]!r}\n  buffer {b.describe()}\n{case.describe()}",  # noqa: E501
            )


# ---------------------------------------------------------------------------------------------
# Entry points


def one_input(data: bytes, allow: set[str] | None = None) -> str:
    """Decode ``data`` into a case and check it (the fuzz target)."""
    _BUF_OF.clear()
    case = build(Draw(provider_for(data)))
    return check(case, allow)


def one_seed(seed: int, allow: set[str] | None = None) -> str:
    """A deterministic case from an integer seed (no atheris needed)."""
    _BUF_OF.clear()
    case = build(Draw(RandomProvider(seed)))
    return check(case, allow)


def _keep_going_target() -> Callable[[bytes], None]:
    seen: set[str] = set()

    def target(data: bytes) -> None:
        try:
            one_input(data)
        except Finding as f:
            if f.key not in seen:
                seen.add(f.key)
                print(f"\n=== new finding {f.key} (input sha1 {hashlib.sha1(data).hexdigest()}):\n{f}\n", flush=True)
                path = os.environ.get("FUZZ_FINDINGS_DIR")
                if path:
                    os.makedirs(path, exist_ok=True)
                    with open(os.path.join(path, f.key.replace(":", "_")), "wb") as fh:
                        fh.write(data)

    return target


def _instrument_self() -> None:
    """Coverage of the builder too: a new branch there is a new input structure. Only functions
    that compare plain values: atheris' comparison hooks on NumPy arrays (the checker's, the value
    generator's) keep memory growing by megabytes a second."""
    for f in (build, _torch_item, _container, _shape, _number_class, _threshold_errors, _norm_type_errors,
              _value_bound_errors, _buffer_errors, _overlap_errors, _threshold_value, _norm_type_value,
              Pool.new, Pool._geometry, Pool._fresh, Pool._overlapping, Draw.chance, Draw.pick):  # fmt: skip
        atheris.instrument_func(f)


def main(argv: list[str]) -> None:
    if "--replay" in argv:
        for path in argv[argv.index("--replay") + 1 :]:
            with open(path, "rb") as fh:
                data = fh.read()
            _BUF_OF.clear()
            case = build(Draw(provider_for(data)))
            print(f"--- {path}\n{case.describe()}")
            print("=>", check(case))
        return
    if atheris is None:
        sys.exit("atheris is not installed (pip install atheris)")
    keep_going = "--keep-going" in argv
    argv = [a for a in argv if a != "--keep-going"]
    target = _keep_going_target() if keep_going else (lambda data: one_input(data) and None)
    np.seterr(all="ignore")
    _instrument_self()
    atheris.Setup(argv, target)
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv)
