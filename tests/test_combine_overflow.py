"""Combining partial norms (chunks, tensors) is as overflow-safe as summing inside one chunk.

The reference is exact: ``decimal.Decimal`` at 80 digits (``|x|^p`` of a double is computed
correctly rounded there, and so is the final root), so nothing here shares arithmetic with the
code under test. Only a true norm above the float64 range may come out as ``inf``.
"""

from __future__ import annotations

import decimal
import math

import fastclip as fc
import numpy as np
import pytest
from fastclip import _fastclip
from hypothesis import given, settings
from hypothesis import strategies as st

CHUNK = _fastclip.CHUNK
MAX = decimal.Decimal(np.finfo(np.float64).max)
CTX = decimal.Context(prec=80, Emax=10**6, Emin=-(10**6))


def exact_norm(parts: list[tuple[float, int]], p: float) -> float:
    """The p-norm of ``count`` copies of each value ``v`` in ``parts``, correctly rounded."""
    dp = CTX.create_decimal(repr(p))
    total = decimal.Decimal(0)
    for v, count in parts:
        if v != 0:
            total = CTX.add(total, CTX.multiply(CTX.power(CTX.create_decimal(abs(v)), dp), count))
    if total == 0:
        return 0.0
    norm = CTX.power(total, CTX.divide(1, dp))
    return math.inf if norm > MAX else float(norm)


@pytest.mark.parametrize(
    ("grads", "p"),
    [
        ([[1e154], [1e154]], 2.0),
        ([np.full(65536, 7e151)], 2.0),  # one tensor, two chunks
        ([[1e153]] * 1000, 2.0),
        ([[5e102], [5e102]], 3.0),
        ([np.array([3.4e38], np.float32), np.array([3.4e38], np.float32)], 8.0),
        ([[1e300], [1e300]], 1.0),
        ([[1e300] * 3, [2e300]], 1.0),
    ],
)
def test_issue_cases_are_finite_and_exact(grads, p):
    arrays = [np.asarray(g, dtype=getattr(g, "dtype", np.float64)) for g in grads]
    parts = [(float(v), 1) for a in arrays for v in a.astype(np.float64)]
    want = exact_norm(parts, p)
    assert math.isfinite(want)
    got = fc.get_total_norm(arrays, p)
    # 1e-13: the float64 summation error of 32768 equal terms inside one chunk, not the combine
    assert got == pytest.approx(want, rel=1e-13)


def test_clip_does_not_zero_gradients_whose_norm_fits():
    g = [np.array([1e154]), np.array([1e154])]
    total = fc.clip_grad_norm_(g, 1.0)
    assert total == pytest.approx(math.sqrt(2) * 1e154, rel=1e-15)
    for a in g:
        assert a[0] == pytest.approx(1 / math.sqrt(2), rel=1e-12)


def test_a_norm_above_the_range_is_inf():
    assert fc.get_total_norm([np.array([1.5e308]), np.array([1.5e308])]) == math.inf
    assert fc.get_total_norm([np.full(3 * CHUNK, 1.5e308)], 1.0) == math.inf


magnitudes = st.builds(
    lambda m, e, s: s * m * 10.0**e,
    st.floats(1.0, 9.99),
    st.integers(-300, 307),
    st.sampled_from([1.0, -1.0]),
).filter(math.isfinite)
tensor = st.tuples(magnitudes, st.sampled_from([1, 2, 3, 100, CHUNK - 1, CHUNK + 1, 2 * CHUNK + 5]))


@settings(max_examples=60, deadline=None)
@given(tensors=st.lists(tensor, min_size=1, max_size=40), p=st.sampled_from([0.5, 1.0, 2.0, 3.0, 8.0, 100.0]))
def test_combine_matches_exact_reference(tensors, p):
    arrays = [np.full(n, v) for v, n in tensors]
    want = exact_norm(tensors, p)
    got = fc.get_total_norm(arrays, p)
    # the same values as one flat tensor: the chunk-level combine must give the same answer
    flat = fc.get_total_norm([np.concatenate(arrays)], p)
    for got_ in (got, flat):
        if math.isinf(want):
            assert got_ == math.inf
        else:
            # summation error inside a chunk of up to 32768 terms, not the combine, sets the bound
            assert got_ == pytest.approx(want, rel=1e-12, abs=0.0), (got_, want)
