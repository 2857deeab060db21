"""The torch-style functions against independent references (float64 NumPy, ``math.fsum``, exact
``Fraction``/``decimal``): norms, clipping coefficients, clamping, input kinds and layouts."""

from __future__ import annotations

import math

import fastclip as fc
import numpy as np
import pytest
from fastclip import _fastclip
from refs import (
    BF16,
    EPS,
    FLOAT_DTYPES,
    OnceIterable,
    Param,
    assert_rel,
    bound,
    clamp_ref,
    dtype_id,
    eps_of,
    exact_l2,
    random_arrays,
    ref_norm,
    same_bits,
    scaled_ref,
    torch_coef,
)

NORM_TYPES = [1, 2, 3, 0.5, 1.5, math.inf, "inf"]


def p_of(norm_type: float | str) -> float:
    return math.inf if norm_type == "inf" else float(norm_type)


# ---------------------------------------------------------------------------------------------
# get_total_norm: accuracy against the reference
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=dtype_id)
@pytest.mark.parametrize("norm_type", NORM_TYPES, ids=str)
def test_total_norm_matches_reference_small(rng, dtype, norm_type):
    grads = random_arrays(rng, dtype, [1, 7, 33, 100, 3])
    assert_rel(fc.get_total_norm(grads, norm_type), ref_norm(grads, p_of(norm_type)))


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=dtype_id)
@pytest.mark.parametrize("norm_type", [1, 2, 3, 0.5, math.inf])
def test_total_norm_matches_reference_many_chunks(rng, dtype, norm_type):
    # Over CHUNK and PARALLEL_MIN: the chunked, threaded path with its ordered combine.
    sizes = [_fastclip.CHUNK * 3 + 17, 5, _fastclip.PARALLEL_MIN // 2, 1000, _fastclip.CHUNK - 1]
    grads = random_arrays(rng, dtype, sizes, scale=3.0)
    assert sum(g.size for g in grads) > _fastclip.PARALLEL_MIN
    assert_rel(fc.get_total_norm(grads, norm_type), ref_norm(grads, norm_type))


def test_total_norm_docstring_example():
    assert fc.get_total_norm([np.array([3.0, 0.0]), np.array([4.0])]) == 5.0
    assert fc.get_total_norm([np.array([3.0, 0.0], np.float32), np.array([4.0], np.float32)], 1) == 7.0
    assert fc.get_total_norm([np.array([3.0, -9.0]), np.array([4.0])], "inf") == 9.0


def test_total_norm_returns_python_float():
    # a float subclass (TotalNorm, with torch's .item()), never a NumPy scalar
    for g in (np.ones(3, np.float32), np.ones(3, np.float16), np.ones(3)):
        for n in (fc.get_total_norm(g), fc.clip_grad_norm_(g, 10.0)):
            assert type(n) is fc.functional.TotalNorm and isinstance(n, float) and not isinstance(n, np.generic)
            assert type(n.item()) is float


def test_total_norm_exact_tiny_cases():
    # Exact reference (Fraction sum of squares, 60-digit sqrt): correctly rounded answers.
    cases = [
        [3.0, 4.0],
        [0.1, 0.2, 0.3],
        [1.0, 1e-8, -1e-8],
        [1e200, 1e200, 1e200],
        [1e-200, -3e-200, 7e-201],
        [1e300, -1e300],
        [1.7976931348623157e308, 1.0],
        [5e-324, 5e-324, 1e-323],
        [2.2250738585072014e-308, -4e-320],
        [1e200, 1.0],
        [1e-200, 1.0],
        [1e154, 1e154, -1e-160],
    ]
    for values in cases:
        got = fc.get_total_norm(np.array(values, np.float64))
        want = exact_l2(values)
        assert_rel(got, want, 1e-15)


@pytest.mark.parametrize(
    ("values", "norm_type"),
    [
        ([1e200] * 4, 2),
        ([1e200] * 4, 1),
        ([1e200] * 4, 3),
        ([1e200] * 4, 0.5),
        ([1e-200] * 4, 2),
        ([1e-200] * 4, 3),
        ([1e-200] * 4, 0.5),
        ([1e300, -1e300, 2e300], 2),
        ([1e300, -1e300, 2e300], 1),
        ([1.7976931348623157e308] * 2, 2),  # the true norm (2.5e308) overflows: inf
        ([5e-324] * 9, 2),
        ([5e-324, 1e-320, -3e-310], 2),
        ([5e-324] * 9, 1),
        ([1e200, 1.0, -1.0], 2),
        ([1e-200, 1.0], 2),
        ([1e-200, 1e200], 2),
        ([1e-200, 1e200], 3),
    ],
)
def test_total_norm_float64_extremes(values, norm_type):
    g = np.array(values, np.float64)
    want = ref_norm([g], norm_type)
    got = fc.get_total_norm(g, norm_type)
    assert_rel(got, want)
    if norm_type == 2:
        assert_rel(got, exact_l2(values), 1e-15)


def test_total_norm_float64_overflows_only_when_the_true_norm_does():
    big = np.array([1.7976931348623157e308] * 2)
    assert fc.get_total_norm(big, 1) == math.inf  # 3.6e308: really beyond float64
    assert fc.get_total_norm(big, 2) == math.inf  # 2.54e308: really beyond float64
    assert fc.get_total_norm(big, math.inf) == 1.7976931348623157e308
    half = big / 2
    assert_rel(fc.get_total_norm(half, 2), exact_l2(half.tolist()))  # 1.27e308: finite
    with np.errstate(over="ignore"):
        assert math.isinf(np.sqrt(np.sum(half * half)))  # NumPy's own sum of squares overflows here


@pytest.mark.parametrize(
    "values",
    [
        [1e20, -1e20, 3e19],
        [3e38, 3e38, -3e38, 3.4028235e38],
        [1e-20, 1e-20],
        [1e-45, 1e-45, -1e-45],  # float32 subnormals: squares underflow in float32, not in float64
        [1.1754944e-38, 1e-40],
        [3e38, 1e-45, 1.0],
    ],
)
@pytest.mark.parametrize("norm_type", [1, 2, 3, 0.5, math.inf])
def test_total_norm_float32_extremes(values, norm_type):
    g = np.array(values, np.float32)
    got = fc.get_total_norm(g, norm_type)
    assert_rel(got, ref_norm([g], norm_type))
    assert math.isfinite(got) and got > 0


def test_total_norm_float32_where_float32_arithmetic_fails():
    g = np.array([3e38, 3e38], np.float32)
    with np.errstate(over="ignore"):
        assert np.isinf(np.linalg.norm(g))  # float32 arithmetic overflows
    assert_rel(fc.get_total_norm(g), exact_l2(g.astype(np.float64).tolist()), 1e-15)
    t = np.array([1e-30, 1e-30], np.float32)
    with np.errstate(under="ignore"):
        assert np.sum(t * t) == 0  # float32 squares underflow to zero
    assert_rel(fc.get_total_norm(t), exact_l2(t.astype(np.float64).tolist()), 1e-15)


@pytest.mark.parametrize("norm_type", [1, 2, 3, 0.5, math.inf])
def test_total_norm_float16_large_and_tiny(norm_type):
    g = np.array([65504.0, -65504.0, 60000.0, 300.0, 6e-8, -6e-5], np.float16)
    with np.errstate(over="ignore"):
        assert np.isinf(np.sqrt(np.sum(g * g)))  # NumPy's own float16 norm overflows
    got = fc.get_total_norm([g], norm_type)
    assert_rel(got, ref_norm([g], norm_type))
    if norm_type == 2:
        assert_rel(got, exact_l2(g.astype(np.float64).tolist()), 1e-15)


@pytest.mark.parametrize("norm_type", [1, 2, 3, 0.5, math.inf])
def test_total_norm_bfloat16_extremes(norm_type):
    g = np.array([3e38, -3e38, 1e-38, 9.2e-41, 1.0, 1e20], BF16)
    got = fc.get_total_norm([g], norm_type)
    assert math.isfinite(got)
    assert_rel(got, ref_norm([g], norm_type))


def test_total_norm_of_many_equal_float16_values():
    g = np.full(100_000, 65504.0, np.float16)
    assert_rel(fc.get_total_norm(g), 65504.0 * math.sqrt(100_000))
    assert_rel(fc.get_total_norm(g, 1), 65504.0 * 100_000)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=dtype_id)
@pytest.mark.parametrize("norm_type", [1, 2, 3, 0.5, math.inf])
def test_nan_anywhere_gives_nan(dtype, norm_type):
    for where in range(3):
        grads = [np.ones(5, dtype), np.ones(70_000, dtype), np.ones(3, dtype)]
        grads[where][-1] = np.nan
        assert math.isnan(fc.get_total_norm(grads, norm_type))
    # NaN must win over inf, before or after it, also for max |x|.
    for vals in ([np.inf, np.nan, 1.0], [np.nan, np.inf, 1.0], [1.0, -np.inf, np.nan]):
        assert math.isnan(fc.get_total_norm(np.array(vals, dtype), norm_type))
        assert math.isnan(fc.get_total_norm([np.array(vals[:1], dtype), np.array(vals[1:], dtype)], norm_type))


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=dtype_id)
@pytest.mark.parametrize("norm_type", [1, 2, 3, 0.5, math.inf])
def test_inf_gives_inf(dtype, norm_type):
    g = np.array([1.0, -np.inf, 2.0], dtype)
    assert fc.get_total_norm([np.ones(4, dtype), g], norm_type) == math.inf


@pytest.mark.parametrize("norm_type", [1, 2, 0.5, math.inf])
def test_zeros_give_zero(norm_type):
    assert fc.get_total_norm([np.zeros(5), np.zeros(3, np.float32), np.array([-0.0])], norm_type) == 0.0


def test_norm_type_spellings_agree(rng):
    grads = random_arrays(rng, np.float64, [10, 20])
    want = fc.get_total_norm(grads, math.inf)
    for spelling in ("inf", "INF", " inf ", "+inf", "infinity", float("inf"), np.inf, np.float32(np.inf)):
        assert fc.get_total_norm(grads, spelling) == want
    for two in (2, 2.0, np.float32(2), np.int64(2)):
        assert fc.get_total_norm(grads, two) == fc.get_total_norm(grads)


def test_large_and_small_p(rng):
    grads = random_arrays(rng, np.float64, [50, 50])
    for p in (0.25, 7.0, 50.0, 300.0):
        assert_rel(fc.get_total_norm(grads, p), ref_norm(grads, p))
    # |x|^p overflows float64 for large p even at moderate x; the result must not.
    g = np.array([1e20, 1e20], np.float32)
    for p in (20.0, 100.0):
        assert_rel(fc.get_total_norm(g, p), float(g[0]) * 2 ** (1 / p))


# The slow path divides by max |x| so its largest term is exactly 1: no p underflows it away.
@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.float16], ids=dtype_id)
@pytest.mark.parametrize(("values", "p"), [([0.5, 0.25], 1100.0), ([0.3, 0.4], 5000.0), ([300.0, -400.0], 1e10)])
def test_huge_p_tends_to_max_abs(dtype, values, p):
    g = np.array(values, dtype)
    want = float(np.abs(g.astype(np.float64)).max())  # (sum (|x|/max)^p)^(1/p) == 1 to double precision
    assert_rel(fc.get_total_norm(g, p), want)


# ---------------------------------------------------------------------------------------------
# Input kinds
# ---------------------------------------------------------------------------------------------


def test_input_kinds_agree(rng):
    arrays = random_arrays(rng, np.float64, [4, 9, 2])
    want = ref_norm(arrays, 2)
    assert_rel(fc.get_total_norm(arrays), want)
    assert_rel(fc.get_total_norm(tuple(arrays)), want)
    assert_rel(fc.get_total_norm(a for a in arrays), want)
    assert_rel(fc.get_total_norm(iter(arrays)), want)
    assert_rel(fc.get_total_norm(OnceIterable(arrays)), want)
    assert_rel(fc.get_total_norm([Param(a) for a in arrays]), want)
    assert_rel(fc.get_total_norm([Param(None), Param(arrays[0]), Param(None), *arrays[1:]]), want)
    assert_rel(fc.get_total_norm(arrays[0]), ref_norm(arrays[:1], 2))
    assert_rel(fc.get_total_norm(Param(arrays[1])), ref_norm(arrays[1:2], 2))


@pytest.mark.parametrize(
    "empty", [[], (), iter([]), (x for x in []), [Param(None)], [Param(None), Param(None)]], ids=repr
)
def test_empty_gives_zero_and_is_a_noop(empty):
    assert fc.get_total_norm(empty) == 0.0


@pytest.mark.parametrize("make_empty", [list, tuple, lambda: iter([]), lambda: [Param(None)], lambda: Param(None)])
def test_empty_clip_calls(make_empty):
    assert fc.clip_grad_norm_(make_empty(), 1.0) == 0.0
    assert fc.clip_grad_norm_(make_empty(), 1.0, error_if_nonfinite=True) == 0.0
    assert fc.clip_grad_value_(make_empty(), 1.0) is None
    assert fc.clip_grads_with_norm_(make_empty(), 1.0, 5.0) is None


def test_generator_is_read_once_and_both_passes_see_it(rng):
    arrays = random_arrays(rng, np.float32, [100, 30])
    before = [a.copy() for a in arrays]
    once = OnceIterable(arrays)
    total = fc.clip_grad_norm_(once, 0.5)
    assert once.iterations == 1
    assert_rel(total, ref_norm(before, 2))
    coef = torch_coef(0.5, total)
    assert coef < 1
    for a, b in zip(arrays, before):
        assert same_bits(a, scaled_ref(b, coef))
    gen_arrays = [b.copy() for b in before]
    total2 = fc.clip_grad_norm_((a for a in gen_arrays), 0.5)  # a real generator: the scale pass must see items
    assert total2 == total
    for a, b in zip(gen_arrays, arrays):
        assert same_bits(a, b)
    for fn in (lambda g: fc.clip_grad_value_(g, 0.1), lambda g: fc.clip_grads_with_norm_(g, 0.1, 3.0)):
        once = OnceIterable(arrays)
        fn(once)
        assert once.iterations == 1


def test_params_with_none_grads_are_skipped_in_place(rng):
    a, b = random_arrays(rng, np.float64, [6, 4], scale=10)
    a0, b0 = a.copy(), b.copy()
    params = [Param(None), Param(a), Param(None), Param(b)]
    total = fc.clip_grad_norm_(params, 1.0)
    assert_rel(total, ref_norm([a0, b0], 2))
    coef = torch_coef(1.0, total)
    assert same_bits(a, scaled_ref(a0, coef)) and same_bits(b, scaled_ref(b0, coef))
    assert params[0].grad is None and params[2].grad is None
    assert params[1].grad is a  # in place: the same object


def test_zero_dim_and_size_zero_arrays():
    s = np.array(-3.0)
    e = np.zeros((0, 4), np.float32)
    t = np.array(4.0, np.float32)
    assert fc.get_total_norm([s, e, t]) == 5.0
    assert fc.get_total_norm(e) == 0.0
    assert fc.get_total_norm(s, math.inf) == 3.0
    assert fc.clip_grad_norm_([s, e, t], 1.0) == 5.0
    coef = torch_coef(1.0, 5.0)
    assert s.shape == () and t.shape == () and e.shape == (0, 4)
    assert same_bits(s, scaled_ref(np.array(-3.0), coef))
    assert same_bits(t, scaled_ref(np.array(4.0, np.float32), coef))
    v = np.array(7.0, np.float16)
    fc.clip_grad_value_([v, e], 2.0)
    assert v == 2.0
    fc.clip_grads_with_norm_([e], 1.0, 10.0)


def test_mixed_dtypes_in_one_list(rng):
    grads = [
        rng.standard_normal(50).astype(np.float32),
        rng.standard_normal(30) * 1e3,
        rng.standard_normal(20).astype(np.float16),
        rng.standard_normal(10).astype(BF16),
    ]
    before = [g.copy() for g in grads]
    for p in (1, 2, 3, math.inf):
        assert_rel(fc.get_total_norm(grads, p), ref_norm(grads, p))
    total = fc.clip_grad_norm_(grads, 2.0)
    coef = torch_coef(2.0, total)
    for g, b in zip(grads, before):
        assert same_bits(g, scaled_ref(b, coef)), g.dtype
    grads = [b.copy() for b in before]
    fc.clip_grad_value_(grads, 0.7)
    for g, b in zip(grads, before):
        assert same_bits(g, clamp_ref(b, 0.7)), g.dtype


# ---------------------------------------------------------------------------------------------
# Layouts: strided, transposed, negative strides, F order; in place only on the view's elements
# ---------------------------------------------------------------------------------------------

VIEWS = {
    "every_other": lambda a: a[::2],
    "transpose": lambda a: a.T,
    "column_block": lambda a: a[:, 1:3],
    "negative_rows": lambda a: a[::-1],
    "negative_both": lambda a: a[::-1, ::-2],
    "column": lambda a: a[:, 2],
    "inner_step": lambda a: a[1:5, ::3],
    "whole": lambda a: a,
}


def _mask(view, shape):
    m = np.zeros(shape, bool)
    view(m)[...] = True
    return m


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=dtype_id)
@pytest.mark.parametrize("view", list(VIEWS.values()), ids=list(VIEWS))
@pytest.mark.parametrize("order", ["C", "F"])
def test_views_norm_scale_and_clamp(rng, dtype, view, order):
    base = np.asarray((rng.standard_normal((8, 9)) * 4).astype(dtype), order=order)
    inside = _mask(view, base.shape)

    a = base.copy(order="K")
    v = view(a)
    assert np.shares_memory(v, a)
    for p in (1, 2, 3, math.inf):
        assert_rel(fc.get_total_norm(v, p), ref_norm([view(base)], p))

    total = fc.clip_grad_norm_([v], 1.0)
    assert_rel(total, ref_norm([view(base)], 2))
    coef = torch_coef(1.0, total)
    assert same_bits(v, scaled_ref(view(base), coef))  # the view's elements, scaled
    assert same_bits(a[~inside], base[~inside])  # every other element untouched

    a = base.copy(order="K")
    fc.clip_grad_value_(view(a), 1.5)
    assert same_bits(view(a), clamp_ref(view(base), 1.5))
    assert same_bits(a[~inside], base[~inside])

    a = base.copy(order="K")
    fc.clip_grads_with_norm_([view(a)], 1.0, 10.0)
    assert same_bits(view(a), scaled_ref(view(base), torch_coef(1.0, 10.0)))
    assert same_bits(a[~inside], base[~inside])


def test_disjoint_views_of_one_flat_buffer(rng):
    # The "flat parameter buffer" pattern: disjoint contiguous slices of one allocation.
    flat = rng.standard_normal(100)
    before = flat.copy()
    parts = [flat[:10], flat[10:60].reshape(5, 10), flat[60:]]
    total = fc.clip_grad_norm_(parts, 1.0)
    assert_rel(total, ref_norm([before], 2))
    assert same_bits(flat, scaled_ref(before, torch_coef(1.0, total)))
    flat[:] = before
    fc.clip_grad_value_(parts, 0.5)
    assert same_bits(flat, clamp_ref(before, 0.5))


def test_large_strided_view_goes_through_chunks(rng):
    base = rng.standard_normal((700, 1000)).astype(np.float32)
    a = base.copy()
    v = a[::2, ::-3]  # ~117k elements, non-contiguous in both axes
    assert v.size > 3 * _fastclip.CHUNK
    total = fc.clip_grad_norm_([v, np.ones(3, np.float32)], 1.0)
    assert_rel(total, ref_norm([base[::2, ::-3], np.ones(3)], 2))
    assert same_bits(v, scaled_ref(base[::2, ::-3], torch_coef(1.0, total)))
    m = _mask(lambda x: x[::2, ::-3], base.shape)
    assert same_bits(a[~m], base[~m])


def test_self_overlapping_writeable_view_is_scaled_once():
    # A writeable stride-0 / sliding-window view names some elements more than once. The norm
    # counts the view's elements; scaling must give view == before * coef (not coef**k).
    base = np.arange(1.0, 7.0)
    before = base.copy()
    win = np.lib.stride_tricks.as_strided(base, (4, 3), (8, 8))
    view_before = np.lib.stride_tricks.as_strided(before, (4, 3), (8, 8)).copy()
    total = fc.clip_grad_norm_(win, 1.0)
    assert_rel(total, ref_norm([view_before], 2))
    assert np.array_equal(win, view_before * torch_coef(1.0, total))
    rep = np.lib.stride_tricks.as_strided(base, (5, 6), (0, 8))
    base[:] = [5.0, -7.0, 3.0, -0.5, 0.25, 9.0]
    fc.clip_grad_value_(rep, 1.0)
    assert base.tolist() == [1.0, -1.0, 1.0, -0.5, 0.25, 1.0]


def test_ndarray_subclass_is_clipped_in_place():
    class Sub(np.ndarray):
        pass

    s = np.array([3.0, 4.0]).view(Sub)
    assert fc.clip_grad_norm_([s, np.zeros(2)], 1.0) == 5.0
    assert same_bits(np.asarray(s), scaled_ref(np.array([3.0, 4.0]), torch_coef(1.0, 5.0)))


# ---------------------------------------------------------------------------------------------
# clip_grad_norm_ semantics
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=dtype_id)
@pytest.mark.parametrize("norm_type", [2, 1, 3, math.inf])
def test_clip_grad_norm_matches_torch_formula(rng, dtype, norm_type):
    grads = random_arrays(rng, dtype, [40, 1, 70_000], scale=2.0)
    before = [g.copy() for g in grads]
    total = fc.clip_grad_norm_(grads, 1.25, norm_type)
    assert_rel(total, ref_norm(before, norm_type))  # the norm BEFORE clipping
    coef = torch_coef(1.25, total)
    assert 0 < coef < 1
    for g, b in zip(grads, before):
        assert same_bits(g, scaled_ref(b, coef))
    after = ref_norm(grads, norm_type)
    tol = 1e-6 if np.dtype(dtype).itemsize >= 4 else 2 * eps_of(dtype)
    assert after <= 1.25 * (1 + tol)


def test_clip_grad_norm_docstring_example():
    g = np.array([3.0, 4.0])
    assert fc.clip_grad_norm_([g], 1.0) == 5.0
    assert np.array_equal(g, np.array([3.0, 4.0]) * (1.0 / (5.0 + EPS)))


def test_clip_grad_norm_float32_coefficient_is_rounded_to_float32():
    g = np.array([3.0, 4.0, 0.1, -7.3], np.float32)
    g0 = g.copy()
    total = fc.clip_grad_norm_(g, 0.3)
    coef = 0.3 / (total + EPS)
    assert np.float64(np.float32(coef)) != coef  # rounding matters here
    assert same_bits(g, g0 * np.float32(coef))


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=dtype_id)
def test_below_threshold_is_untouched(rng, dtype):
    grads = random_arrays(rng, dtype, [10, 20], scale=0.01)
    before = [g.copy() for g in grads]
    total = fc.clip_grad_norm_(grads, 100.0)
    assert_rel(total, ref_norm(before, 2))
    for g, b in zip(grads, before):
        assert same_bits(g, b)


def test_just_below_threshold_still_scales_like_torch():
    # torch's min(1, max/(total + 1e-6)): a total under max_norm by less than 1e-6 is still scaled.
    g = np.array([3e-7, 4e-7])  # total 5e-7
    total = fc.clip_grad_norm_(g, 1e-6)
    assert_rel(total, 5e-7)
    coef = 1e-6 / (total + 1e-6)
    assert 0.66 < coef < 0.67
    assert same_bits(g, np.array([3e-7, 4e-7]) * coef)
    h = np.array([0.6, 0.8], np.float32)  # total == max_norm: scaled by a factor just under 1
    h0 = h.copy()
    total = fc.clip_grad_norm_(h, 1.0)
    coef = 1.0 / (total + 1e-6)
    assert coef < 1
    assert same_bits(h, h0 * np.float32(coef))
    assert not same_bits(h, h0)


def test_max_norm_inf_measures_only(rng):
    grads = random_arrays(rng, np.float32, [100, 5], scale=1e30)
    grads.append(np.array([np.inf, 1.0], np.float32))
    before = [g.copy() for g in grads]
    assert fc.clip_grad_norm_(grads, math.inf) == math.inf
    assert fc.clip_grad_norm_(grads[:2], float("inf")) == fc.get_total_norm(before[:2])
    for g, b in zip(grads, before):
        assert same_bits(g, b)


def test_max_norm_zero_zeroes_everything(rng):
    grads = random_arrays(rng, np.float64, [10, 3])
    before = [g.copy() for g in grads]
    total = fc.clip_grad_norm_(grads, 0.0)
    assert_rel(total, ref_norm(before, 2))
    for g, b in zip(grads, before):
        assert same_bits(g, b * 0.0)  # signed zeros, as torch's multiply by 0
    z = [np.zeros(3)]
    assert fc.clip_grad_norm_(z, 0.0) == 0.0
    assert same_bits(z[0], np.zeros(3))


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=dtype_id)
def test_nan_total_makes_every_grad_nan(dtype):
    grads = [np.array([1.0, -2.0, 0.0], dtype), np.array([np.nan, 3.0], dtype)]
    before = [g.copy() for g in grads]
    assert math.isnan(fc.clip_grad_norm_(grads, 1.0))
    for g, b in zip(grads, before):
        assert np.isnan(g.astype(np.float64)).all()
        assert same_bits(g, scaled_ref(b, math.nan))


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=dtype_id)
def test_inf_total_gives_zeros_and_nan_like_torch(dtype):
    grads = [np.array([1.0, -2.0, 0.0], dtype), np.array([np.inf, 3.0, -np.inf], dtype)]
    before = [g.copy() for g in grads]
    assert fc.clip_grad_norm_(grads, 1.0) == math.inf
    for g, b in zip(grads, before):
        assert same_bits(g, scaled_ref(b, 0.0))  # x * 0: +-0 for finite x, NaN for +-inf
    assert np.signbit(grads[0].astype(np.float64)).tolist() == [False, True, False]
    assert np.isnan(grads[1].astype(np.float64)).tolist() == [True, False, True]


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_error_if_nonfinite_raises_and_leaves_grads(bad):
    grads = [np.ones(70_000, np.float32), np.array([1.0, bad]), np.ones(3, np.float16)]
    before = [g.copy() for g in grads]
    with pytest.raises(RuntimeError, match="non-finite"):
        fc.clip_grad_norm_(grads, 1.0, error_if_nonfinite=True)
    with pytest.raises(RuntimeError, match="non-finite"):
        fc.get_total_norm(grads, error_if_nonfinite=True)
    with pytest.raises(RuntimeError, match="non-finite"):
        fc.clip_grad_norm_(grads, 1.0, "inf", error_if_nonfinite=True)
    for g, b in zip(grads, before):
        assert same_bits(g, b)


def test_error_if_nonfinite_finite_total_still_clips():
    g = np.array([3.0, 4.0])
    assert fc.clip_grad_norm_(g, 1.0, error_if_nonfinite=True) == 5.0
    assert same_bits(g, np.array([3.0, 4.0]) * torch_coef(1.0, 5.0))
    assert fc.get_total_norm(g, error_if_nonfinite=True) < 1.0


def test_total_overflowing_float64_from_finite_grads():
    # Finite grads whose true 1-norm exceeds float64: the total is inf, grads go to zero as torch.
    g = np.array([1.7e308, 1.7e308, -1.0])
    assert fc.clip_grad_norm_(g, 1.0, 1) == math.inf
    assert same_bits(g, np.array([0.0, 0.0, -0.0]))
    g = np.array([1.7e308, 1.7e308, -1.0])
    with pytest.raises(RuntimeError):
        fc.clip_grad_norm_(g, 1.0, 1, error_if_nonfinite=True)
    assert same_bits(g, np.array([1.7e308, 1.7e308, -1.0]))


# ---------------------------------------------------------------------------------------------
# clip_grads_with_norm_
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=dtype_id)
def test_clip_grads_with_norm_equals_clip_grad_norm(rng, dtype):
    grads = random_arrays(rng, dtype, [30, 70_000], scale=3.0)
    twin = [g.copy() for g in grads]
    total = fc.get_total_norm(grads, 3)
    fc.clip_grads_with_norm_(grads, 2.0, total)
    assert fc.clip_grad_norm_(twin, 2.0, 3) == total
    for g, t in zip(grads, twin):
        assert same_bits(g, t)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=dtype_id)
@pytest.mark.parametrize("total", [10.0, 0.5, 1e-7, 0.0, 2.0 - 1e-7, math.inf, math.nan])
def test_clip_grads_with_norm_uses_the_given_total(rng, dtype, total):
    grads = random_arrays(rng, dtype, [8, 5])
    before = [g.copy() for g in grads]
    fc.clip_grads_with_norm_(grads, 2.0, total)
    coef = torch_coef(2.0, total)
    for g, b in zip(grads, before):
        assert same_bits(g, scaled_ref(b, coef))


def test_clip_grads_with_norm_max_norm_inf_and_numpy_scalars(rng):
    grads = random_arrays(rng, np.float32, [8])
    before = [g.copy() for g in grads]
    fc.clip_grads_with_norm_(grads, math.inf, 1e9)
    assert same_bits(grads[0], before[0])
    fc.clip_grads_with_norm_(grads, np.float32(1.0), np.float64(4.0))
    assert same_bits(grads[0], scaled_ref(before[0], torch_coef(1.0, 4.0)))
    fc.clip_grads_with_norm_(grads[0], 1, np.array(8.0))  # 0-d array and int are real numbers


# ---------------------------------------------------------------------------------------------
# clip_grad_value_
# ---------------------------------------------------------------------------------------------

SPECIALS = [np.nan, -np.nan, np.inf, -np.inf, 0.0, -0.0, 1.0, -1.0, 0.1, -0.1, 1e-45, -1e-45, 3e38, -3e38]


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=dtype_id)
@pytest.mark.parametrize("clip_value", [0.5, 0.1, 1.0, 0.0, 1e-40, 60000.0, 1e5, 1e39, math.inf])
def test_clip_grad_value_bitwise(rng, dtype, clip_value):
    with np.errstate(over="ignore"):
        specials = np.array(SPECIALS, np.float64).astype(dtype)
    g = np.concatenate([specials, (rng.standard_normal(200) * 2).astype(dtype)])
    g0 = g.copy()
    assert fc.clip_grad_value_(g, clip_value) is None
    assert same_bits(g, clamp_ref(g0, clip_value))
    nan = np.isnan(g0.astype(np.float64))
    assert np.isnan(g.astype(np.float64))[nan].all()  # NaN kept


def test_clip_grad_value_special_values_float32():
    g = np.array([np.nan, np.inf, -np.inf, -0.0, 0.0, 2.0, -2.0, 0.5], np.float32)
    fc.clip_grad_value_(g, 1.0)
    assert np.isnan(g[0])
    assert g[1:].tolist() == [1.0, -1.0, 0.0, 0.0, 1.0, -1.0, 0.5]
    assert np.signbit(g[1:]).tolist() == [False, True, True, False, False, True, False]


def test_clip_grad_value_zero_keeps_sign_of_zero():
    g = np.array([-1.0, -0.0, 0.0, 1.0, np.nan, -np.inf, np.inf])
    fc.clip_grad_value_(g, 0.0)
    assert np.isnan(g[4])
    assert (g[[0, 1, 2, 3, 5, 6]] == 0).all()
    assert np.signbit(g).tolist() == [True, True, False, False, np.signbit(np.float64(np.nan)), True, False]


def test_clip_grad_value_bound_is_rounded_to_dtype():
    g = np.array([0.2, -0.2, 0.1, np.float32(0.1)], np.float32)
    fc.clip_grad_value_(g, 0.1)
    assert g.tolist() == [np.float32(0.1), -np.float32(0.1), np.float32(0.1), np.float32(0.1)]
    h = np.array([1.0, -1.0], np.float16)
    fc.clip_grad_value_(h, 0.1)
    assert same_bits(h, np.array([bound(0.1, h.dtype), bound(-0.1, h.dtype)], np.float16))


def test_clip_grad_value_inf_leaves_everything(rng):
    g = np.concatenate([rng.standard_normal(100) * 1e300, [np.inf, -np.inf, np.nan]])
    g0 = g.copy()
    fc.clip_grad_value_(g, math.inf)
    assert same_bits(g, g0)


def test_clip_grad_value_many_tensors_large(rng):
    grads = random_arrays(rng, np.float32, [_fastclip.PARALLEL_MIN, 3, _fastclip.CHUNK + 1], scale=2.0)
    before = [g.copy() for g in grads]
    fc.clip_grad_value_(OnceIterable(Param(g) for g in grads), 1.0)
    for g, b in zip(grads, before):
        assert same_bits(g, clamp_ref(b, 1.0))


def test_public_names():
    assert set(fc.__all__) >= {"get_total_norm", "clip_grads_with_norm_", "clip_grad_norm_", "clip_grad_value_"}
    assert fc.isa() in {"avx512", "avx2", "scalar", "neon"}
