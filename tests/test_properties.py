"""Hypothesis properties over random shapes, dtypes, layouts and values (huge, tiny, subnormal, and
sometimes NaN/inf), each against an independent reference from ``refs``."""

from __future__ import annotations

import math

import fastclip as fc
import ml_dtypes
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from refs import (
    BF16,
    FLOAT_DTYPES,
    assert_rel,
    clamp_ref,
    eps_of,
    ref_norm,
    same_bits,
    scaled_ref,
    torch_coef,
)

SETTINGS = settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

#: decimal exponent range per dtype, so that most drawn values are representable
_EXP = {
    np.dtype(np.float16): (-8, 4),
    BF16: (-40, 37),
    np.dtype(np.float32): (-45, 37),
    np.dtype(np.float64): (-323, 307),
}

_LAYOUTS = ["c", "f", "reversed", "every_other", "transpose"]


def _values(dtype: np.dtype, nonfinite: bool) -> st.SearchStrategy[float]:
    lo, hi = _EXP[dtype]
    magnitude = st.builds(
        lambda m, e, s: s * m * 10.0**e,
        st.floats(1.0, 9.99),
        st.integers(lo, hi),
        st.sampled_from([-1.0, 1.0]),
    )
    parts = [st.floats(-10.0, 10.0), magnitude, st.sampled_from([0.0, -0.0, 1.0, -1.0])]
    if nonfinite:
        parts.append(st.sampled_from([math.nan, math.inf, -math.inf]))
    return st.one_of(*parts)


@st.composite
def grads_lists(draw, nonfinite: bool = True, max_arrays: int = 4, dtypes=None) -> list[np.ndarray]:
    """1..max_arrays arrays of one or mixed dtypes, any shape (0-d and size-0 included), any layout."""
    dts = dtypes or FLOAT_DTYPES
    mixed = draw(st.booleans())
    dtype0 = draw(st.sampled_from(dts))
    with_nonfinite = nonfinite and draw(st.integers(0, 4)) == 0  # NaN/inf in about 1 in 5 cases
    out = []
    for _ in range(draw(st.integers(1, max_arrays))):
        dtype = draw(st.sampled_from(dts)) if mixed else dtype0
        shape = draw(hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=7))
        f64 = draw(hnp.arrays(np.float64, shape, elements=_values(dtype, with_nonfinite)))
        with np.errstate(over="ignore", under="ignore"):
            a = f64.astype(dtype)
        layout = draw(st.sampled_from(_LAYOUTS))
        if layout == "f":
            a = np.asfortranarray(a)
        elif layout == "reversed" and a.ndim:
            a = a[::-1]
        elif layout == "every_other" and a.ndim:
            a = np.concatenate([a, a], axis=0)[::2]  # a strided copy (writeable, non-contiguous)
        elif layout == "transpose":
            a = a.T
        out.append(a)
    return out


def _finite(grads: list[np.ndarray]) -> bool:
    return all(np.isfinite(g.astype(np.float64)).all() for g in grads)


norm_types = st.one_of(
    st.sampled_from([1.0, 2.0, 3.0, 0.5, math.inf, "inf", 60.0, 1000.0]),  # p > 1074: see the xfail test
    st.floats(0.3, 12.0),
)


@SETTINGS
@given(grads=grads_lists(), norm_type=norm_types)
def test_total_norm_matches_reference(grads, norm_type):
    p = math.inf if norm_type == "inf" else norm_type
    total = fc.get_total_norm(grads, norm_type)
    assert_rel(total, ref_norm(grads, p))
    # Read-only input and other containers give the same bits.
    assert fc.get_total_norm(tuple(grads), norm_type) == total or math.isnan(total)
    assert fc.get_total_norm((g for g in grads), norm_type) == total or math.isnan(total)


@SETTINGS
@given(
    grads=grads_lists(nonfinite=False, dtypes=[np.dtype(np.float32), np.dtype(np.float64)]),
    norm_type=norm_types,
    max_norm=st.floats(1e-20, 1e20),
)
def test_clip_grad_norm_bounds_and_direction_wide(grads, norm_type, max_norm):
    _clip_property(grads, norm_type, max_norm)


@SETTINGS
@given(
    grads=grads_lists(nonfinite=False),
    norm_type=st.sampled_from([1.0, 2.0, 3.0, math.inf]),
    max_norm=st.floats(1e-2, 1e3),
)
def test_clip_grad_norm_bounds_and_direction_all_dtypes(grads, norm_type, max_norm):
    _clip_property(grads, norm_type, max_norm)


def _lane(dtype: np.dtype) -> type:
    return np.float64 if dtype == np.float64 else np.float32  # f16/bf16 scale in float32


def _lane_coef(dtype: np.dtype, coef: float) -> float:
    return float(_lane(dtype)(coef))


def _lane_tiny(dtype: np.dtype) -> float:
    return float(np.finfo(_lane(dtype)).tiny)


def _clip_property(grads: list[np.ndarray], norm_type: float | str, max_norm: float) -> None:
    p = math.inf if norm_type == "inf" else norm_type
    before = [g.copy() for g in grads]
    # Same arrays, same layout: the same bits (a copy in another memory order may differ by an ulp,
    # the summation order following memory).
    want_total = fc.get_total_norm(grads, p)
    total = fc.clip_grad_norm_(grads, max_norm, norm_type)
    assert total == want_total
    if not math.isfinite(total):  # finite float64 grads whose p-norm overflows
        return
    assert_rel(total, ref_norm(before, p))
    coef = torch_coef(max_norm, total)
    # Exactly torch's formula, the factor rounded to the dtype: so the direction is preserved.
    for g, b in zip(grads, before):
        assert same_bits(g, scaled_ref(b, coef))
        g64, b64 = g.astype(np.float64), b.astype(np.float64)
        assert (np.sign(g64) * np.sign(b64) >= 0).all()
        lane_coef = _lane_coef(g.dtype, coef)
        if lane_coef >= _lane_tiny(g.dtype):
            # Where the result is a normal number, g / before is the coefficient up to rounding.
            normal = np.abs(g64) >= float(ml_dtypes.finfo(g.dtype).tiny)
            ratio = g64[normal] / b64[normal]
            assert np.all(np.abs(ratio - lane_coef) <= eps_of(g.dtype) * lane_coef)
    # The new total is at most max_norm, up to the rounding of each element; unless the factor
    # itself is subnormal in the lane type (max_norm/total < 1.2e-38 for float32 lanes, 2.2e-308
    # for float64), where it has lost relative precision: torch behaves the same way there.
    worst_eps = max((eps_of(g.dtype) for g in grads if g.dtype.itemsize < 4), default=0.0)
    tol = max(1e-6, 2 * worst_eps)
    if all(_lane_coef(g.dtype, coef) >= _lane_tiny(g.dtype) or coef == 1.0 for g in grads):
        assert ref_norm(grads, p) <= max_norm * (1 + tol)
    if coef == 1.0:
        for g, b in zip(grads, before):
            assert same_bits(g, b)


@SETTINGS
@given(grads=grads_lists(), max_norm=st.floats(0.0, 1e6), total=st.floats(0.0, math.inf) | st.just(math.nan))
def test_clip_grads_with_norm_is_torch_formula(grads, max_norm, total):
    before = [g.copy() for g in grads]
    fc.clip_grads_with_norm_(grads, max_norm, total)
    coef = torch_coef(max_norm, total)
    for g, b in zip(grads, before):
        assert same_bits(g, scaled_ref(b, coef))


clip_values = st.one_of(
    st.floats(0.0, 100.0),
    st.sampled_from([0.0, math.inf, 1e-45, 1e-8, 65504.0, 65520.0, 1e5, 3.4e38, 1e39, 1e300]),
)


@SETTINGS
@given(grads=grads_lists(), clip_value=clip_values)
def test_clip_grad_value_matches_clamp_reference(grads, clip_value):
    before = [g.copy() for g in grads]
    fc.clip_grad_value_(grads, clip_value)
    for g, b in zip(grads, before):
        want = clamp_ref(b, clip_value)
        assert same_bits(g, want)
        if b.dtype != BF16:
            # np.clip agrees bitwise except for the sign of a zero bound (np.clip's choice there
            # is unspecified), and both keep NaN.
            with np.errstate(over="ignore", invalid="ignore"):
                hi = np.array(clip_value).astype(b.dtype)
                ref = np.clip(b, -hi, hi)
            nonzero = want != 0
            assert same_bits(g[nonzero], ref[nonzero])
            assert np.array_equal(g, ref, equal_nan=True)
