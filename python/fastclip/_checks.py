"""Argument checks shared by the public API: clear errors before any buffer is touched.

Every validator of the package lives here; the modules import them. Each takes the value and the
name to show (``"max_norm"``, ``"parameters[1]['beta1']"``) and returns the value normalized
(a ``float``, a ``bool``, a tuple), or raises ``TypeError`` (wrong kind of value) or
``ValueError`` (right kind, bad value) naming the argument.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Iterable
from decimal import Decimal
from typing import Any

import numpy as np

__all__ = [
    "applied",
    "beta",
    "byte_bounds",
    "finite",
    "finite_nonneg",
    "first_overlap",
    "flag",
    "grad_clip",
    "norm_type",
    "number",
    "optional_str",
    "positive",
    "shape",
    "short_repr",
    "text",
    "threshold",
]

try:  # numpy >= 2.0
    from numpy.lib.array_utils import byte_bounds as _byte_bounds
except ImportError:  # numpy 1.24 - 1.26
    _byte_bounds = np.byte_bounds  # type: ignore[attr-defined]


def short_repr(value: Any, limit: int = 40) -> str:
    """``repr(value)``, cut in the middle when longer than ``limit`` (a 400-digit int stays readable)."""
    if isinstance(value, int) and not isinstance(value, bool) and abs(value).bit_length() > 128:
        # str() of a huge int may itself raise (sys.set_int_max_str_digits): count digits from bits
        return f"{'minus ' if value < 0 else ''}an int of about {int(value.bit_length() * math.log10(2)) + 1} digits"
    try:
        r = repr(value)
    except Exception:  # a repr that raises must not hide the real error
        return f"<{type(value).__name__}>"
    return r if len(r) <= limit else f"{r[: limit // 2]}...{r[-limit // 4 :]}"


def _not_a_number(value: Any, name: str, why: str = "") -> TypeError:
    return TypeError(f"{name} must be a real number, not {type(value).__name__}{why}")


def number(value: Any, name: str) -> float:
    """``value`` as a float (NaN and infinities included: the caller decides about those).

    Accepted: ``int``, ``float``, NumPy integer and floating scalars, 0-d numeric arrays,
    ``Fraction``, ``Decimal`` and any object with ``__float__`` or ``__index__``.
    ``TypeError`` for a bool (NumPy's too), a string, ``None``, a complex number, an array with
    elements or an object whose conversion fails; ``ValueError`` for a finite value too large for
    a float (``10**400``, ``Fraction(10**400)``, ``Decimal('1e400')``).
    """
    if value is None or isinstance(value, (str, bytes, bool, np.bool_, complex, np.complexfloating)):
        raise _not_a_number(value, name)
    if isinstance(value, np.ndarray):
        if value.ndim != 0:
            raise _not_a_number(value, name, f" of shape {value.shape}")
        if value.dtype.kind not in "iuf":
            raise _not_a_number(value, name, f" of dtype {value.dtype}")
        value = value[()]
    try:
        v = float(value)
    except OverflowError:
        raise ValueError(f"{name} is too large for a float: {short_repr(value)}") from None
    except Exception as e:  # any failure of __float__ is the caller's wrong argument
        raise _not_a_number(value, name, f" ({type(e).__name__}: {e})") from e
    if math.isinf(v) and _is_finite_number(value):
        raise ValueError(f"{name} is too large for a float: {short_repr(value)}")
    return v


def _is_finite_number(value: Any) -> bool:
    """Whether ``value`` is a finite number of a type whose float conversion gives inf instead of
    raising (``Decimal``, ``np.longdouble``)."""
    if isinstance(value, Decimal):
        return value.is_finite()
    if isinstance(value, np.floating):
        return bool(np.isfinite(value))
    return False


def finite(value: Any, name: str) -> float:
    """A finite real number; ``TypeError`` for a non-number, ``ValueError`` for NaN or an infinity."""
    v = number(value, name)
    if not math.isfinite(v):
        raise ValueError(f"{name} must be finite, got {v!r}")
    return v


def finite_nonneg(value: Any, name: str) -> float:
    """A finite real number >= 0 (a learning rate, a weight decay, a momentum)."""
    v = number(value, name)
    if not (math.isfinite(v) and v >= 0):
        raise ValueError(f"{name} must be a finite number >= 0, got {v!r}")
    return v


def positive(value: Any, name: str) -> float:
    """A finite real number > 0 (an epsilon)."""
    v = number(value, name)
    if not (math.isfinite(v) and v > 0):
        raise ValueError(f"{name} must be a finite number > 0, got {v!r}")
    return v


def beta(value: Any, name: str) -> float:
    """An exponential decay rate in [0, 1)."""
    v = number(value, name)
    if not 0 <= v < 1:
        raise ValueError(f"{name} must be in [0, 1), got {v!r}")
    return v


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


def flag(value: Any, name: str) -> bool:
    """A bool (Python's or NumPy's); ``TypeError`` for anything else, 0 and 1 included."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be a bool, not {type(value).__name__}")
    return bool(value)


def text(value: Any, name: str) -> str:
    """A ``str``."""
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a str, not {type(value).__name__}")
    return value


def optional_str(value: Any, name: str) -> str | None:
    """A ``str`` or ``None``."""
    if value is not None and not isinstance(value, str):
        raise TypeError(f"{name} must be a str or None, not {type(value).__name__}")
    return value


def shape(value: Any, name: str = "shape") -> tuple[int, ...]:
    """An array shape: an int or a sequence of ints >= 0 (NumPy ints too, bools not);
    ``ValueError`` otherwise."""
    dims = (value,) if isinstance(value, (int, np.integer)) else value
    if isinstance(dims, (str, bytes)) or not isinstance(dims, Iterable):
        raise TypeError(f"{name} must be an int or a sequence of ints, not {type(value).__name__}")
    dims = tuple(dims)
    if any(not isinstance(d, (int, np.integer)) or isinstance(d, (bool, np.bool_)) or d < 0 for d in dims):
        raise ValueError(f"{name} must be non-negative ints, got {short_repr(value)}")
    return tuple(int(d) for d in dims)


def grad_clip(value: Any, name: str = "grad_clip") -> Any:
    """``None`` or an instance of :class:`fastclip.ClipGradBase`."""
    from .clip import ClipGradBase  # clip imports this module: resolve the class at call time

    if value is not None and not isinstance(value, ClipGradBase):
        raise TypeError(
            f"{name} should be an instance of ClipGradBase's derived class "
            f"(ClipGradByValue, ClipGradByNorm, ClipGradByGlobalNorm), not {type(value).__name__}"
        )
    return value


# -- values as a kernel applies them ---------------------------------------------------------------


def applied(value: float, dtype: np.dtype) -> Any:
    """``value`` rounded to ``dtype`` as the kernels round it (``f64 as f32``: to nearest, inf
    beyond the largest finite value), a NumPy scalar of that dtype."""
    with np.errstate(over="ignore", under="ignore"):
        return np.dtype(dtype).type(value)


# -- memory ------------------------------------------------------------------------------------------


def byte_bounds(a: np.ndarray) -> tuple[int, int]:
    """``(first, past_last)`` byte addresses that ``a`` spans (a strided view counts its whole
    extent), on NumPy 1.24+ and 2.x alike."""
    lo, hi = _byte_bounds(a)
    return int(lo), int(hi)


#: What :func:`first_overlap` remembers of one array: a weak reference to it, its bounds, and the
#: shape and strides they were computed for.
BoundsCache = dict[int, tuple["weakref.ref[np.ndarray]", int, int, tuple[int, ...], tuple[int, ...]]]


def first_overlap(
    items: Iterable[tuple[np.ndarray, bool, Any]], cache: BoundsCache | None = None
) -> tuple[Any, Any] | None:
    """Two tags of arrays that share a byte where at least one of them is written, or ``None``.

    ``items`` are ``(array, written, tag)``; empty arrays never conflict, and read-only arrays may
    overlap each other. One sort by start address: O(n log n). Byte extents are compared (a
    strided view counts its whole extent, as the extension's own check does), so two interleaved
    views of one base conflict even when they share no element.

    ``cache`` (optional, kept by the caller between calls) remembers the bounds of the arrays of
    the last call, so that a training loop's persistent arrays are not measured again every step
    (``byte_bounds`` costs microseconds per array). An entry is used only for the same array
    object (a weak reference: the cache keeps nothing alive, and a dead array's reused id does
    not match) with the same shape and strides (its data pointer cannot change otherwise). Only
    the arrays of this call are kept.
    """
    los: list[int] = []
    his: list[int] = []
    written: list[bool] = []
    tags: list[Any] = []
    seen: BoundsCache = {}
    for a, w, tag in items:
        if not a.size:
            continue
        hit = cache.get(id(a)) if cache is not None else None
        if hit is None or hit[0]() is not a or hit[3] != a.shape or hit[4] != a.strides:
            lo, hi = byte_bounds(a)
            hit = (weakref.ref(a), lo, hi, a.shape, a.strides)
        seen[id(a)] = hit
        los.append(hit[1])
        his.append(hit[2])
        written.append(w)
        tags.append(tag)
    if cache is not None:
        cache.clear()
        cache.update(seen)
    if len(los) < 2:
        return None
    # The sweep, vectorized: sorted by start (stable: ties keep their order), an array conflicts
    # with an earlier one when the furthest end reached before it (by any array if it is written,
    # by a written array otherwise) lies past its start.
    lo_a = np.array(los, np.uint64)
    order = np.argsort(lo_a, kind="stable")
    lo_s = lo_a[order]
    hi_s = np.array(his, np.uint64)[order]
    w_s = np.array(written, bool)[order]
    zero = np.zeros(1, np.uint64)
    reach = np.concatenate((zero, np.maximum.accumulate(hi_s)[:-1]))
    reach_w = np.concatenate((zero, np.maximum.accumulate(np.where(w_s, hi_s, zero))[:-1]))
    bad = (reach_w > lo_s) | (w_s & (reach > lo_s))
    if not bad.any():
        return None
    first = int(np.argmax(bad))
    k = int(order[first])
    for j in order[:first].tolist():  # the error path only: find the partner
        if his[j] > los[k] and (written[k] or written[j]):
            return tags[j], tags[k]
    raise AssertionError("unreachable: the sweep found an overlap")  # pragma: no cover
