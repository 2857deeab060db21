"""float16 and bfloat16 (ml_dtypes) gradients: norms in float64, scaling and clamping in place.

References are independent of fastclip: float64 NumPy on the upcast data, and a brute-force
rounding of float64 values to the nearest float16/bfloat16 (ties to even) by search over every
value of the type. (ml_dtypes' float64 -> bfloat16 cast goes through float32 and rounds twice:
it is off by one ulp for some subnormal results, so it is not the reference.)
"""

from __future__ import annotations

import math

import fastclip as fc
import ml_dtypes
import numpy as np
import pytest
from fastclip import _fastclip
from refs import round_once

HALF = [np.dtype(np.float16), np.dtype(ml_dtypes.bfloat16)]


def data(dtype: np.dtype, n: int, seed: int, spread: float = 3.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(n) * spread).astype(dtype)


def ref_norm(arrays: list[np.ndarray], p: float) -> float:
    flat = np.concatenate([a.astype(np.float64).ravel() for a in arrays])
    if math.isinf(p):
        return float(np.max(np.abs(flat))) if flat.size else 0.0
    return float(np.sum(np.abs(flat) ** p) ** (1.0 / p))


@pytest.mark.parametrize("dtype", HALF, ids=lambda d: d.name)
@pytest.mark.parametrize("p", [1.0, 2.0, 3.0, math.inf])
@pytest.mark.parametrize("sizes", [[1], [7, 4096, 4097], [100_000], [256] * 300])
def test_norm_matches_float64(dtype: np.dtype, p: float, sizes: list[int]) -> None:
    arrays = [data(dtype, n, i) for i, n in enumerate(sizes)]
    got = fc.get_total_norm(arrays, p)
    want = ref_norm(arrays, p)
    assert abs(got - want) <= 1e-6 * want
    per, total = _fastclip.norms(arrays, p, True)
    assert total == got
    for a, n in zip(arrays, per):
        assert abs(n - ref_norm([a], p)) <= 1e-6 * ref_norm([a], p)


@pytest.mark.parametrize("dtype", HALF, ids=lambda d: d.name)
def test_norm_beyond_the_half_range(dtype: np.dtype) -> None:
    # the sum of squares of 4 x 60000 is 1.44e10, far past float16's 65504: no overflow
    a = np.full(4, 60000.0).astype(dtype)
    assert fc.get_total_norm([a]) == pytest.approx(2 * float(a[0]), rel=1e-12)
    # 64Ki standard normals: NumPy's float16 dot overflows to inf, fastclip does not
    b = data(dtype, 1 << 16, 5, spread=100.0)
    assert math.isfinite(fc.get_total_norm([b]))
    assert fc.get_total_norm([b]) == pytest.approx(ref_norm([b], 2.0), rel=1e-12)


@pytest.mark.parametrize("dtype", HALF, ids=lambda d: d.name)
@pytest.mark.parametrize("factor", [0.1, 0.123456789, 0.5, 0.999999, 1e-3])
def test_scale_in_place_rounds_once(dtype: np.dtype, factor: float) -> None:
    # every bit pattern of the type (NaN aside), scaled by a float32-rounded factor
    bits = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16)
    x = bits.view(dtype).copy()
    with np.errstate(invalid="ignore"):
        finite = np.isfinite(x.astype(np.float64))
    x = x[finite].copy()
    before = x.copy()
    address = x.ctypes.data
    _fastclip.scale_([x], factor)
    assert x.ctypes.data == address  # in place
    want = round_once(before.astype(np.float64) * np.float64(np.float32(factor)), dtype)
    np.testing.assert_array_equal(x.view(np.uint16), want.view(np.uint16))


@pytest.mark.parametrize("dtype", HALF, ids=lambda d: d.name)
def test_clip_grad_norm_half(dtype: np.dtype) -> None:
    arrays = [data(dtype, n, i) for i, n in enumerate([1000, 70_000, 3])]
    before = [a.copy() for a in arrays]
    total = fc.clip_grad_norm_(arrays, 1.0)
    want_total = ref_norm(before, 2.0)
    assert abs(total - want_total) <= 1e-6 * want_total
    coef = np.float64(np.float32(1.0 / (want_total + 1e-6)))
    for a, b in zip(arrays, before):
        assert a.dtype == dtype
        want = round_once(b.astype(np.float64) * coef, dtype)
        np.testing.assert_array_equal(a.view(np.uint16), want.view(np.uint16))


@pytest.mark.parametrize("dtype", HALF, ids=lambda d: d.name)
@pytest.mark.parametrize("v", [0.1, 1.0, 2.5, 70000.0])
def test_clip_value_half(dtype: np.dtype, v: float) -> None:
    a = data(dtype, 10_001, 9)
    a[:4] = np.array([np.nan, np.inf, -np.inf, -0.0]).astype(dtype)
    before = a.copy()
    fc.clip_grad_value_([a], v)
    bound = np.float64(round_once(np.array([v]), dtype)[0])  # the bound rounded to the dtype
    want = np.clip(before.astype(np.float64), -bound, bound).astype(dtype)
    assert np.isnan(a[0].astype(np.float64))
    np.testing.assert_array_equal(a[1:].view(np.uint16), want[1:].view(np.uint16))


def test_isa_is_reported() -> None:
    assert _fastclip.isa() in ("avx512", "avx2", "scalar", "neon")
