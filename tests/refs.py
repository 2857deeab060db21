"""Independent references (float64 NumPy, ``math.fsum``, ``decimal``) and small test utilities.

Nothing here calls fastclip: every expected value in the tests comes from these references.
Test modules import them with ``from refs import ...`` (pytest puts ``tests/`` on ``sys.path``);
``conftest.py`` holds only fixtures.
"""

from __future__ import annotations

import decimal
import math
from collections.abc import Iterable, Iterator
from fractions import Fraction
from typing import Any

import ml_dtypes
import numpy as np

BF16 = np.dtype(ml_dtypes.bfloat16)
FLOAT_DTYPES = [np.dtype(np.float16), BF16, np.dtype(np.float32), np.dtype(np.float64)]
#: The total norm must agree with the reference within this relative error.
REL = 1e-12
EPS = 1e-6  # torch's epsilon in the clip coefficient


def dtype_id(dt: Any) -> str:
    return np.dtype(dt).name


def eps_of(dtype: Any) -> float:
    """Machine epsilon of a float dtype, bfloat16 included."""
    return float(ml_dtypes.finfo(np.dtype(dtype)).eps)


def as_f64(a: np.ndarray) -> np.ndarray:
    """Every element as an exact float64 (f16/bf16/f32 widen exactly)."""
    return np.asarray(a).astype(np.float64).ravel()


def ref_norm(arrays: Iterable[np.ndarray], p: float) -> float:
    """The p-norm of all elements together, independent of fastclip.

    ``norm = M * (sum r_i^p)^(1/p)`` with ``M = max |x|`` and ``r_i = |x_i| / M <= 1``, each ratio formed
    from the exact split ``|x| = m * 2**e`` (``np.frexp``) as ``(m_i / m_M) * 2**(e_i - E)``, so that
    nothing overflows and the largest term is exactly 1 (no underflow to a zero sum, whatever p);
    the sum is ``math.fsum``. Relative error a few ulps.
    """
    xs = [as_f64(a) for a in arrays]
    x = np.concatenate(xs) if xs else np.zeros(0)
    if x.size == 0:
        return 0.0
    ax = np.abs(x)
    if np.isnan(ax).any():
        return math.nan
    if math.isinf(p):
        return float(ax.max())
    if np.isinf(ax).any():
        return math.inf
    nz = ax[ax > 0]
    if nz.size == 0:
        return 0.0
    m, e = np.frexp(nz)
    k = int(np.argmax(nz))
    with np.errstate(under="ignore"):
        r = (m / m[k]) * np.exp2((e - e[k]).astype(np.float64))
        terms = r**p
    root = math.fsum(terms.tolist()) ** (1.0 / p)
    m_root, e_root = math.frexp(root * float(m[k]))
    try:
        return math.ldexp(m_root, e_root + int(e[k]))
    except OverflowError:
        return math.inf


def exact_l2(values: Iterable[float]) -> float:
    """The correctly rounded 2-norm of a few float64 values: exact sum of squares (``Fraction``),
    square root to 60 significant digits (``decimal``), then one rounding to float64."""
    s = sum((Fraction(float(v)) ** 2 for v in values), Fraction(0))
    if s == 0:
        return 0.0
    ctx = decimal.Context(prec=60, Emin=-999999, Emax=999999)
    root = ctx.sqrt(ctx.divide(decimal.Decimal(s.numerator), decimal.Decimal(s.denominator)))
    return float(root)


def assert_rel(got: float, want: float, rel: float = REL) -> None:
    """``got`` equals ``want`` within ``rel`` relative (or one ulp); NaN matches NaN, inf matches inf."""
    assert isinstance(got, float), type(got)
    if math.isnan(want):
        assert math.isnan(got), (got, want)
    elif math.isinf(want) or want == 0.0:
        assert got == want, (got, want)
    else:
        # One ulp of slack for subnormal results, whose relative precision is below ``rel``.
        assert abs(got - want) <= max(rel * abs(want), math.ulp(want)), (got, want, abs(got - want) / abs(want))


def torch_coef(max_norm: float, total: float) -> float:
    """torch's ``clamp(max_norm / (total + 1e-6), max=1.0)``: NaN propagates (``min`` would drop it);
    fastclip's documented exception: ``max_norm = inf`` never scales (measures only)."""
    if math.isinf(max_norm):
        return 1.0
    c = max_norm / (total + EPS)
    return c if (math.isnan(c) or c < 1.0) else 1.0


def scaled_ref(g: np.ndarray, coef: float) -> np.ndarray:
    """``g * coef`` as fastclip must compute it: float64 in float64; float32 times ``float32(coef)``;
    f16/bf16 times ``float32(coef)`` exactly (in float64), then rounded once to the half type
    (torch and ml_dtypes round twice, through a float32 product; fastclip does not)."""
    with np.errstate(all="ignore"):
        if g.dtype == np.float64:
            return g * np.float64(coef)
        if g.dtype == np.float32:
            return g * np.float32(coef)
        return round_once(g.astype(np.float64) * np.float64(np.float32(coef)), g.dtype)


def round_once(v: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """float64 values rounded once to ``dtype`` (nearest, ties to even; past the largest finite
    value by half an ulp or more, to inf; NaN stays NaN), found by search over the type's positive
    values. ml_dtypes' float64 -> bfloat16 cast rounds twice (through float32), so it is no reference."""
    bits = np.arange(0x8000, dtype=np.uint16)
    with np.errstate(all="ignore"):
        grid = bits.view(dtype).astype(np.float64)
    top = int(np.argmax(np.isinf(grid)))  # first inf pattern
    ext = grid[: top + 1].copy()
    ext[top] = 2 * ext[top - 1] - ext[top - 2]  # inf stands one ulp past the largest finite value
    a = np.abs(v)
    hi = np.clip(np.searchsorted(ext, a, side="left"), 1, top)
    lo = hi - 1
    exact = ext[hi] == a
    dl, dh = a - ext[lo], ext[hi] - a
    pick = np.where(exact | (dh < dl) | ((dh == dl) & (hi % 2 == 0)), hi, lo).astype(np.uint16)
    pick |= np.where(np.signbit(v), 0x8000, 0).astype(np.uint16)
    out = pick.view(dtype)
    nan = np.isnan(v)
    out[nan] = v[nan].astype(dtype)  # keeps the sign (x86: inf * 0 is a negative NaN)
    return out


def bound(v: float, dtype: np.dtype) -> np.generic:
    """A clamp bound rounded to the array's dtype (f16/bf16 round once from float64)."""
    with np.errstate(over="ignore"):
        return np.array(v, dtype=np.float64).astype(dtype)[()]


def clamp_ref(g: np.ndarray, clip_value: float) -> np.ndarray:
    """``x < lo -> lo; x > hi -> hi; else x`` with bounds rounded to the dtype: NaN kept, +-inf to the
    bounds, an element equal to a bound (e.g. -0.0 vs +0.0) left as it was."""
    lo, hi = bound(-clip_value, g.dtype), bound(clip_value, g.dtype)
    out = g.copy()
    with np.errstate(invalid="ignore"):
        out[g < lo] = lo
        out[g > hi] = hi
    return out


def bits(a: np.ndarray) -> bytes:
    """The array's raw element bytes in logical order (NaN payloads and signed zeros included)."""
    return np.ascontiguousarray(a).view(np.uint8).tobytes()


def same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and a.dtype == b.dtype and bits(a) == bits(b)


class Param:
    """A parameter-like object with a ``.grad``, as torch's ``model.parameters()`` yields."""

    def __init__(self, grad: np.ndarray | None) -> None:
        self.grad = grad


class OnceIterable:
    """An iterable that may be iterated only once: a second ``iter()`` raises."""

    def __init__(self, items: Iterable[Any]) -> None:
        self._items = list(items)
        self.iterations = 0

    def __iter__(self) -> Iterator[Any]:
        self.iterations += 1
        if self.iterations > 1:
            raise AssertionError("grads iterated twice")
        return iter(self._items)


def random_arrays(rng: np.random.Generator, dtype: Any, sizes: Iterable[int], scale: float = 1.0) -> list[np.ndarray]:
    dt = np.dtype(dtype)
    return [(rng.standard_normal(n) * scale).astype(dt) for n in sizes]


class DLPackProducer:
    """The smallest DLPack producer over a NumPy array: what torch / JAX CPU tensors look like to
    fastclip (``__dlpack__`` + ``__dlpack_device__``, nothing else)."""

    def __init__(self, arr: np.ndarray) -> None:
        self.arr = arr

    def __dlpack__(self, **kwargs: Any) -> Any:
        return self.arr.__dlpack__(**kwargs)

    def __dlpack_device__(self) -> Any:
        return self.arr.__dlpack_device__()
