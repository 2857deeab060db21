"""Paddle conformance of ClipGradByValue / ClipGradByNorm / ClipGradByGlobalNorm (and the nn.utils
functions), against real Paddle 3.3.1 outputs in ``tests/data/paddle_golden.json`` and against
independent float64 references (``math.hypot``, float64 NumPy).

How outputs are compared with Paddle:

- bit for bit (signed zeros included; NaN positions, not NaN sign bits, which Paddle's x86 kernels
  set on the NaNs they create) for every case except those in ``ROUNDING`` and ``DEPARTURES``;
- ``ROUNDING`` cases: within ``ULP_F32``/``ULP_F64`` units in the last place. Paddle computes the
  norm in the grad's dtype (an Eigen float32/float64 tree sum, rounded once per addition), then
  ``scale = f(clip_norm) / f(norm)`` in that dtype; fastclip sums exact float64 squares and rounds
  the float64 factor once. The two factors differ by the rounding error of Paddle's norm (a few
  ulp for a float64 sum over 4100 elements), and the product ``x * scale`` adds up to one more.
  In those cases our output is also checked against the independent reference (1 ulp);
- ``DEPARTURES``: the deliberate improvements listed in ``fastclip.clip``; each test asserts the
  correct value and names the golden case it departs from.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import fastclip as fc
import ml_dtypes
import numpy as np
import pytest
from fastclip.clip import ClipStats
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from refs import DLPackProducer

GOLDEN = json.loads((Path(__file__).parent / "data" / "paddle_golden.json").read_text())
CASES = {c["id"]: c for c in GOLDEN["cases"]}
CLASS_CASES = [c["id"] for c in GOLDEN["cases"] if c["class"].startswith("ClipGrad")]
UTIL_CASES = [c["id"] for c in GOLDEN["cases"] if not c["class"].startswith("ClipGrad")]

ULP_F32 = 2
ULP_F64 = 4
#: Clipped cases where Paddle's own-dtype norm rounding moves the scale factor (module doc).
ROUNDING = {"norm_f32_clipped_2d", "norm_f32_many_shapes", "global_f64_large_4100", "global_f32_large_8320_plus"}
#: Golden case -> why fastclip's result differs from Paddle's on purpose (tested below by name).
DEPARTURES = {
    "value_min_gt_max_error": "min > max rejected at construction (Paddle: ValueError at call time)",
    "value_max_nonpositive_no_min_error": "max <= 0 without min: ValueError at construction (Paddle: bare assert)",
    "value_int32_grad": "integer grads cannot be clipped in place: TypeError (Paddle: new float32 tensor)",
    "norm_f32_huge_overflow": "float32 norm accumulated in float64: clipped correctly (Paddle: zeros)",
    "norm_f64_error_on_cpu": "float64 ClipGradByNorm supported (Paddle CPU: RuntimeError)",
    "norm_clip_norm_zero_error": "clip_norm=0 rejected at construction (Paddle: at call time)",
    "norm_clip_norm_negative_error": "clip_norm<0 rejected at construction (Paddle: at call time)",
    "norm_clip_norm_inf_gives_nan": "clip_norm=inf rejected at construction (Paddle: all-NaN output)",
    "global_f32_zero_clip_zero_grad_nan": "clip_norm=0 rejected at construction (Paddle: NaN grads)",
    "global_negative_clip_norm": "clip_norm<0 rejected at construction (Paddle: silent sign flip)",
    "global_f32_huge_overflow": "float32 norms accumulated in float64: clipped correctly (Paddle: zeros)",
    "global_mixed_f32_f64": "float32 squares summed in float64: the float64 grad gets the exact scale",
    "global_all_filtered_returns_input": "always a new list without None pairs (Paddle: the input list)",
    "global_empty_list": "always a new list (Paddle: the input list object)",
    "global_f32_0d_becomes_shape1": "0-D grads clipped in place and stay 0-D (Paddle: new shape-[1] tensor)",
}
_NONFINITE = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}


# ---------------------------------------------------------------- helpers


def zip_equal(*iterables: Any) -> Any:
    """``zip(..., strict=True)`` for Python 3.9: the iterables must have one length."""
    lists = [list(it) for it in iterables]
    assert len({len(x) for x in lists}) <= 1, f"lengths differ: {[len(x) for x in lists]}"
    return zip(*lists)


def decode(value: Any) -> Any:
    if isinstance(value, list):
        return [decode(v) for v in value]
    return _NONFINITE.get(value, value) if isinstance(value, str) else value


def golden_array(grad: Any, dtype: str, shape: list[int]) -> np.ndarray:
    return np.array(decode(grad), dtype=dtype).reshape(shape)


def build(case: dict[str, Any]) -> tuple[list[tuple[fc.Parameter, np.ndarray | None]], list[np.ndarray | None]]:
    """The case's (param, grad) pairs, with real Parameters carrying need_clip."""
    pairs: list[tuple[fc.Parameter, np.ndarray | None]] = []
    grads: list[np.ndarray | None] = []
    for inp in case["inputs"]:
        g = None if inp["grad"] is None else golden_array(inp["grad"], inp["dtype"], inp["shape"])
        shape = (1,) if g is None else g.shape
        p = fc.Parameter(np.zeros(shape, np.float32), need_clip=inp["need_clip"])
        pairs.append((p, g))
        grads.append(g)
    return pairs, grads


def make_clip(case: dict[str, Any]) -> fc.ClipGradBase:
    return getattr(fc, case["class"])(**{k: decode(v) for k, v in case["args"].items()})


def ordered(a: np.ndarray) -> np.ndarray:
    """Float bits mapped to integers that are consecutive for consecutive floats (+0 == -0)."""
    if a.dtype == np.float64:
        bits, mag_mask = a.view(np.int64).astype(np.int64), np.int64(0x7FFF_FFFF_FFFF_FFFF)
    else:
        bits, mag_mask = a.astype(np.float32).view(np.int32).astype(np.int64), np.int64(0x7FFF_FFFF)
    mag = bits & mag_mask
    return np.where(bits < 0, -mag, mag)


def ulps(actual: np.ndarray, expected: np.ndarray) -> int:
    """Max distance in ulps; NaN must be NaN in both, and zeros must carry the same sign."""
    assert actual.shape == expected.shape and actual.dtype == expected.dtype
    an, en = np.isnan(actual), np.isnan(expected)
    assert np.array_equal(an, en), f"NaN positions differ: {actual} vs {expected}"
    a, e = actual[~an], expected[~en]
    zeros = (a == 0) & (e == 0)
    assert np.array_equal(np.signbit(a[zeros]), np.signbit(e[zeros])), f"signed zeros differ: {actual} vs {expected}"
    if a.size == 0:
        return 0
    return int(np.max(np.abs(ordered(a) - ordered(e))))


def assert_bitwise(actual: np.ndarray, expected: np.ndarray) -> None:
    assert ulps(actual, expected) == 0, f"{actual!r} != {expected!r}"


def ref_norm(g: np.ndarray) -> float:
    """Independent L2 norm: math.hypot over the float64 values (overflow-safe, accurately rounded)."""
    x = np.asarray(g, dtype=np.float64).ravel()
    if np.isnan(x).any():
        return math.nan
    return math.hypot(*x.tolist())


def ref_scaled(g: np.ndarray, factor: float) -> np.ndarray:
    """``g * factor`` as the contract says: factor rounded to f32 (f64 for f64), product rounded to g's dtype."""
    if g.dtype == np.float64:
        return g * np.float64(factor)
    return (g.astype(np.float32) * np.float32(factor)).astype(g.dtype)


def assert_near_ref(actual: np.ndarray, expected: np.ndarray) -> None:
    """Within rounding of the independent reference: 2 ulp for float32/16/bf16 (our factor comes from a
    float64 norm that may differ from math.hypot in the last bit, and is then rounded to float32), and
    64 ulp (1.4e-14 relative) for float64, where the norm's own float64 summation error (~n eps) shows."""
    assert ulps(actual, expected) <= (64 if actual.dtype == np.float64 else 2)


def paddle_clamp(x: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Paddle's ClipFunctor ``x < lo ? lo : (x > hi ? hi : x)`` with the bounds rounded to x's dtype."""
    lo_, hi_ = np.array(lo, x.dtype), np.array(hi, x.dtype)
    return np.where(x < lo_, lo_, np.where(x > hi_, hi_, x)).astype(x.dtype)


def bits(arrays: list[np.ndarray | None]) -> list[bytes | None]:
    return [None if a is None else a.tobytes() for a in arrays]


# ---------------------------------------------------------------- golden: matching cases


@pytest.mark.parametrize("case_id", [c for c in CLASS_CASES if c not in DEPARTURES])
def test_golden_class_case(case_id: str) -> None:
    case = CASES[case_id]
    pairs, _ = build(case)
    expected = case["expected"]
    assert expected["error"] is None
    clip = make_clip(case)
    out = clip(pairs)
    assert isinstance(out, list) and out is not pairs
    assert [i for i, _ in enumerate(case["inputs"]) if case["inputs"][i]["grad"] is not None] == [
        o["index"] for o in expected["outputs"]
    ]
    assert len(out) == len(expected["outputs"])
    for (p, g), o in zip_equal(out, expected["outputs"]):
        p_in, g_in = pairs[o["index"]]
        assert p is p_in and g is g_in  # in place, same objects (Paddle's ByValue/ByNorm make new tensors)
        want = golden_array(o["grad"], o["dtype"], o["shape"])
        if case_id in ROUNDING:
            assert ulps(g, want) <= (ULP_F64 if g.dtype == np.float64 else ULP_F32)
        else:
            assert_bitwise(g, want)


@pytest.mark.parametrize("case_id", sorted(ROUNDING))
def test_golden_rounding_cases_match_independent_reference(case_id: str) -> None:
    case = CASES[case_id]
    pairs, grads = build(case)
    originals = [g.copy() for g in grads if g is not None]
    make_clip(case)(pairs)
    c = case["args"]["clip_norm"]
    if case["class"] == "ClipGradByNorm":
        factors = [c / ref_norm(g) if ref_norm(g) > c else 1.0 for g in originals]
    else:
        total = math.hypot(*(ref_norm(g) for g in originals))
        factors = [c / max(total, c)] * len(originals)
    for g, g0, f in zip_equal([g for g in grads if g is not None], originals, factors):
        assert ulps(g, ref_scaled(g0, f)) <= 1


# ---------------------------------------------------------------- golden: deliberate departures


@pytest.mark.parametrize(
    ("case_id", "error"),
    [
        ("value_min_gt_max_error", ValueError),
        ("value_max_nonpositive_no_min_error", ValueError),
        ("norm_clip_norm_zero_error", ValueError),
        ("norm_clip_norm_negative_error", ValueError),
        ("norm_clip_norm_inf_gives_nan", ValueError),
        ("global_f32_zero_clip_zero_grad_nan", ValueError),
        ("global_negative_clip_norm", ValueError),
    ],
)
def test_departure_bad_threshold_rejected_at_construction(case_id: str, error: type[Exception]) -> None:
    """Paddle raises late (or not at all); fastclip refuses the object itself."""
    case = CASES[case_id]
    _, grads = build(case)
    before = bits(grads)
    with pytest.raises(error, match=r"max|min|clip_norm"):
        make_clip(case)
    assert bits(grads) == before


def test_departure_value_int32_grad_rejected() -> None:
    """value_int32_grad: Paddle returns a new float32 tensor; an int buffer cannot be clipped in place."""
    case = CASES["value_int32_grad"]
    pairs, grads = build_int(case)
    before = bits(grads)
    with pytest.raises(TypeError, match=r"params_grads\[0\].*int32"):
        make_clip(case)(pairs)
    assert bits(grads) == before


def build_int(case: dict[str, Any]) -> tuple[list[tuple[None, np.ndarray]], list[np.ndarray | None]]:
    grads: list[np.ndarray | None] = [golden_array(i["grad"], i["dtype"], i["shape"]) for i in case["inputs"]]
    return [(None, g) for g in grads if g is not None], grads


@pytest.mark.parametrize("case_id", ["norm_f32_huge_overflow", "global_f32_huge_overflow"])
def test_departure_float32_overflow_clipped_correctly(case_id: str) -> None:
    """Paddle's float32 sum of squares overflows and zeroes the grads; fastclip gives the true clip."""
    case = CASES[case_id]
    pairs, grads = build(case)
    originals = [g.copy() for g in grads if g is not None]
    clip = make_clip(case)
    out = clip(pairs)
    paddle = [golden_array(o["grad"], o["dtype"], o["shape"]) for o in case["expected"]["outputs"]]
    assert all(not p.any() for p in paddle)  # what we depart from: all zeros
    c = case["args"]["clip_norm"]
    if case["class"] == "ClipGradByNorm":
        factors = [c / ref_norm(g) for g in originals]
    else:
        total = math.hypot(*(ref_norm(g) for g in originals))
        factors = [c / total] * len(originals)
        assert clip.last_stats is not None and clip.last_stats.global_norm == pytest.approx(total, rel=1e-15)
    for (_, g), g0, f in zip_equal(out, originals, factors):
        assert_bitwise(g, ref_scaled(g0, f))
    assert out[0][1][0] == pytest.approx(c, rel=1e-6)  # the 1e30 entry dominates: it ends at clip_norm


def test_departure_float64_by_norm_supported() -> None:
    """norm_f64_error_on_cpu: Paddle's CPU clip_by_norm has no float64 kernel; fastclip clips it."""
    case = CASES["norm_f64_error_on_cpu"]
    assert case["expected"]["error"]["type"] == "RuntimeError"
    pairs, grads = build(case)
    g0 = grads[0].copy()  # type: ignore[union-attr]
    make_clip(case)(pairs)
    n = ref_norm(g0)
    want = ref_scaled(g0, 1.0 / n) if n > 1.0 else g0
    assert ulps(grads[0], want) <= 1  # type: ignore[arg-type]
    assert ref_norm(grads[0]) <= 1.0 + 1e-15  # type: ignore[arg-type]


def test_departure_mixed_dtypes_norm_in_float64() -> None:
    """global_mixed_f32_f64: Paddle sums the float32 squares in float32 before casting to float64, so
    its float64 output carries float32 rounding (1e-8 relative); fastclip's is exact to 1 ulp. The
    float32 outputs agree bit for bit."""
    case = CASES["global_mixed_f32_f64"]
    pairs, grads = build(case)
    originals = [g.copy() for g in grads if g is not None]
    make_clip(case)(pairs)
    total = math.hypot(*(ref_norm(g) for g in originals))
    f = case["args"]["clip_norm"] / total
    for g, g0, o in zip_equal(grads, originals, case["expected"]["outputs"]):
        assert g is not None
        paddle = golden_array(o["grad"], o["dtype"], o["shape"])
        assert ulps(g, ref_scaled(g0, f)) <= 1
        if g.dtype == np.float32:
            assert_bitwise(g, paddle)
        else:
            np.testing.assert_allclose(g, paddle, rtol=1e-7)
            assert ulps(g, paddle) > 1000  # the departure is real: Paddle is off by float32 rounding


@pytest.mark.parametrize("case_id", ["global_all_filtered_returns_input", "global_empty_list"])
def test_departure_always_new_list_without_none(case_id: str) -> None:
    case = CASES[case_id]
    assert case["expected"]["returned_input_list_object"] is True
    pairs, grads = build(case)
    before = bits(grads)
    out = make_clip(case)(pairs)
    assert out is not pairs
    assert out == [(p, g) for p, g in pairs if g is not None]
    assert bits(grads) == before


def test_departure_0d_stays_0d() -> None:
    case = CASES["global_f32_0d_becomes_shape1"]
    pairs, grads = build(case)
    ((_, g),) = make_clip(case)(pairs)
    assert g is grads[0] and g.shape == ()
    o = case["expected"]["outputs"][0]
    assert o["shape"] == [1]
    assert_bitwise(g.reshape(1), golden_array(o["grad"], o["dtype"], o["shape"]))


def test_every_golden_class_case_is_classified() -> None:
    errors = {c for c in CLASS_CASES if CASES[c]["expected"]["error"] is not None}
    assert errors - set(DEPARTURES) == set()  # every Paddle error is something we do differently
    assert set(DEPARTURES) <= set(CLASS_CASES) and ROUNDING <= set(CLASS_CASES)
    assert len(CLASS_CASES) == 52


# ---------------------------------------------------------------- golden: nn.utils functions


#: Golden utils cases fastclip's torch-style functions deliberately do not follow.
UTIL_SKIPS = {
    "u_norm0": "Paddle's p=0 counts tensors with a non-zero; fastclip (torch semantics) requires p > 0",
    "u_norm3_error": "Paddle allows only p in {inf, 0, 1, 2}; fastclip supports every p > 0",
    "v_value_negative_error": "both raise ValueError, fastclip with its own message (tested below)",
    "u_nonfinite_error": "both raise RuntimeError (tested below)",
}


@pytest.mark.parametrize("case_id", [c for c in UTIL_CASES if c not in UTIL_SKIPS])
def test_golden_util_case(case_id: str) -> None:
    """torch's and Paddle's nn.utils formulas agree (``min(1, max/(total+1e-6))``); Paddle computes the
    coefficient in float32 from a float32 total, fastclip in float64 rounded once: 1 ulp apart at most."""
    case = CASES[case_id]
    grads = [golden_array(i["grad"], i["dtype"], i["shape"]) for i in case["inputs"]]
    args = {k: decode(v) for k, v in case["args"].items()}
    exp = case["expected"]
    if case["class"] == "clip_grad_norm_":
        total = fc.clip_grad_norm_(grads, **args)
        want_total = decode(exp["return"]["value"])
        if math.isinf(want_total):
            assert total == want_total
        else:
            assert total == pytest.approx(want_total, rel=1e-6)
        tol = ULP_F32  # Paddle's p_norm sums in float32 (its order is not modelled), then rounds the coefficient
    else:
        assert fc.clip_grad_value_(grads, **args) is None
        tol = 0
    for g, want in zip_equal(grads, exp["grads_after"]):
        assert ulps(g, np.array(decode(want), dtype=g.dtype).reshape(g.shape)) <= tol


def test_util_errors_leave_grads_untouched() -> None:
    g = np.array([1.0, np.inf], np.float32)
    before = g.tobytes()
    with pytest.raises(RuntimeError, match="non-finite"):
        fc.clip_grad_norm_([g], 1.0, error_if_nonfinite=True)
    h = np.array([3.0, -4.0], np.float32)
    with pytest.raises(ValueError, match="clip_value"):
        fc.clip_grad_value_([h], -1.0)
    with pytest.raises(ValueError, match="norm_type"):
        fc.clip_grad_norm_([h], 1.0, norm_type=0)  # u_norm0: Paddle's tensor-count quirk not copied
    assert g.tobytes() == before and h.tobytes() == np.array([3.0, -4.0], np.float32).tobytes()


def test_util_p3_supported_unlike_paddle() -> None:
    """u_norm3_error: Paddle rejects p=3; torch semantics (and fastclip) compute it."""
    g = np.array([3.0, 4.0], np.float32)
    total = fc.clip_grad_norm_([g], 1.0, norm_type=3)
    want = math.fsum([27.0, 64.0]) ** (1 / 3)
    assert total == pytest.approx(want, rel=1e-12)
    assert ulps(g, ref_scaled(np.array([3.0, 4.0], np.float32), 1.0 / (want + 1e-6))) <= 1


# ---------------------------------------------------------------- Paddle's non-finite table (§4)

INF, NAN = math.inf, math.nan


@pytest.mark.parametrize(
    ("grad", "by_value", "by_norm", "global_skip"),
    [
        ([1, INF, 2], [1, 1, 1], [0, NAN, 0], [0, NAN, 0]),
        ([1, -INF, 2], [1, -1, 1], [0, NAN, 0], [0, NAN, 0]),
        ([INF, -INF, 0.5], [1, -1, 0.5], [NAN, NAN, 0], [NAN, NAN, 0]),
        ([1, NAN, 2], [1, NAN, 1], [NAN, NAN, NAN], [1, NAN, 2]),
        ([NAN, INF, 2], [NAN, 1, 1], [NAN, NAN, NAN], [NAN, INF, 2]),
    ],
)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_nonfinite_table(
    grad: list[float], by_value: list[float], by_norm: list[float], global_skip: list[float], dtype: type
) -> None:
    def run(clip: fc.ClipGradBase) -> np.ndarray:
        g = np.array(grad, dtype)
        clip([(None, g)])
        return g

    assert_bitwise(run(fc.ClipGradByValue(1.0)), np.array(by_value, dtype))
    assert_bitwise(run(fc.ClipGradByNorm(1.0)), np.array(by_norm, dtype))
    assert_bitwise(run(fc.ClipGradByGlobalNorm(1.0)), np.array(by_norm, dtype))
    assert_bitwise(run(fc.ClipGradByGlobalNorm(1.0, auto_skip_clip=True)), np.array(global_skip, dtype))


def test_nonfinite_two_tensors_and_need_clip() -> None:
    a, b = np.array([3, 4], np.float32), np.array([1, INF], np.float32)
    fc.ClipGradByNorm(1.0)([(None, a), (None, b)])
    assert_bitwise(a, np.array([0.6, 0.8], np.float32))
    assert_bitwise(b, np.array([0, NAN], np.float32))
    a, b = np.array([3, 4], np.float32), np.array([1, NAN], np.float32)
    fc.ClipGradByGlobalNorm(1.0)([(None, a), (None, b)])
    assert np.isnan(a).all() and np.isnan(b).all()
    a, b = np.array([3, 4], np.float32), np.array([1, NAN], np.float32)
    fc.ClipGradByGlobalNorm(1.0, auto_skip_clip=True)([(None, a), (None, b)])
    assert_bitwise(a, np.array([3, 4], np.float32))
    a, frozen = np.array([3, 4], np.float32), np.array([INF], np.float32)
    fc.ClipGradByGlobalNorm(1.0)([(None, a), (fc.Parameter(np.zeros(1, np.float32), need_clip=False), frozen)])
    assert_bitwise(a, np.array([0.6, 0.8], np.float32))
    assert_bitwise(frozen, np.array([INF], np.float32))


# ---------------------------------------------------------------- constructors


@pytest.mark.parametrize(
    ("make", "error", "match"),
    [
        (lambda: fc.ClipGradByValue(0), ValueError, "max must be > 0"),
        (lambda: fc.ClipGradByValue(-1), ValueError, "max must be > 0"),
        (lambda: fc.ClipGradByValue(NAN), ValueError, "max must not be NaN"),
        (lambda: fc.ClipGradByValue(1, NAN), ValueError, "min must not be NaN"),
        (lambda: fc.ClipGradByValue(1, 2), ValueError, "min must be <= max"),
        (lambda: fc.ClipGradByValue(INF, INF), ValueError, "infinity"),
        (lambda: fc.ClipGradByValue(-INF, -INF), ValueError, "infinity"),
        (lambda: fc.ClipGradByValue("1"), TypeError, "max"),
        (lambda: fc.ClipGradByValue(None), TypeError, "max"),
        (lambda: fc.ClipGradByValue([1]), TypeError, "max"),
        (lambda: fc.ClipGradByValue(1, "x"), TypeError, "min"),
        (lambda: fc.ClipGradByValue(True), TypeError, "max"),
        (lambda: fc.ClipGradByNorm(0), ValueError, "clip_norm must be > 0"),
        (lambda: fc.ClipGradByNorm(-1), ValueError, "clip_norm must be > 0"),
        (lambda: fc.ClipGradByNorm(NAN), ValueError, "NaN"),
        (lambda: fc.ClipGradByNorm(INF), ValueError, "finite"),
        (lambda: fc.ClipGradByNorm("a"), TypeError, "clip_norm"),
        (lambda: fc.ClipGradByNorm(None), TypeError, "clip_norm"),
        (lambda: fc.ClipGradByGlobalNorm(0), ValueError, "clip_norm must be > 0"),
        (lambda: fc.ClipGradByGlobalNorm(-1), ValueError, "clip_norm must be > 0"),
        (lambda: fc.ClipGradByGlobalNorm(NAN), ValueError, "NaN"),
        (lambda: fc.ClipGradByGlobalNorm(INF), ValueError, "finite"),
        (lambda: fc.ClipGradByGlobalNorm("2"), TypeError, "clip_norm"),
        (lambda: fc.ClipGradByGlobalNorm(1, auto_skip_clip=1), TypeError, "auto_skip_clip"),
        (lambda: fc.ClipGradByGlobalNorm(1, auto_skip_clip=None), TypeError, "auto_skip_clip"),
        (lambda: fc.ClipGradByGlobalNorm(1, group_name=5), TypeError, "group_name"),
    ],
)
def test_constructor_rejects(make: Any, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        make()


def test_constructor_accepts_and_defaults() -> None:
    v = fc.ClipGradByValue(1)
    assert (v.min, v.max) == (-1.0, 1.0) and isinstance(v.max, float)
    assert (fc.ClipGradByValue(-1, -3).min, fc.ClipGradByValue(-1, -3).max) == (-3.0, -1.0)
    assert (fc.ClipGradByValue(0, 0).min, fc.ClipGradByValue(0, 0).max) == (0.0, 0.0)
    assert fc.ClipGradByValue(INF).min == -INF
    assert fc.ClipGradByValue(np.float64(2)).max == 2.0
    assert fc.ClipGradByNorm(np.float32(2)).clip_norm == 2.0
    g = fc.ClipGradByGlobalNorm(1.5)
    assert (g.clip_norm, g.group_name, g.auto_skip_clip) == (1.5, "default_group", False)
    assert g.last_stats is None
    with pytest.raises(AttributeError):
        g.clip_norm = 2.0  # type: ignore[misc]


def test_str_texts_match_paddle() -> None:
    assert str(fc.ClipGradByValue(1)) == "Clip Gradient By Value, min = -1.000000, max=1.000000"
    assert str(fc.ClipGradByNorm(1)) == "Gradient Clip By Norm, clip_norm=1.000000"
    assert str(fc.ClipGradByGlobalNorm(1)) == "Gradient Clip By GlobalNorm, global_norm=1.000000"
    assert repr(fc.ClipGradByNorm(2)) == "ClipGradByNorm(clip_norm=2.0)"


def test_base_class() -> None:
    with pytest.raises(NotImplementedError):
        fc.ClipGradBase()([])

    class Halve(fc.ClipGradBase):
        def clip(self, params_grads: Any) -> list[tuple[Any, Any]]:
            return [(p, g * 0.5) for p, g in params_grads]

    ((_, g),) = Halve()([(None, np.array([2.0]))])
    assert g[0] == 1.0
    assert isinstance(fc.ClipGradByNorm(1), fc.ClipGradBase)


# ---------------------------------------------------------------- call contract and errors


def test_pairs_contract() -> None:
    """None dropped, need_clip=False passed through untouched, order kept, same objects back."""
    frozen = fc.Parameter(np.zeros(2, np.float32), need_clip=False)
    free = fc.Parameter(np.zeros(2, np.float32))

    class Plain:  # no need_clip attribute: counts as True
        pass

    class Zero:
        need_clip = 0  # not literally False: clipped, as in Paddle

    g1, g2, g3, g4 = (np.array([30.0, 40.0], np.float32) for _ in range(4))
    pairs = [(free, g1), (frozen, None), (frozen, g2), (Plain(), g3), (Zero(), g4), (free, None)]
    clip = fc.ClipGradByNorm(5.0)
    out = clip(tuple(pairs))
    assert [id(g) for _, g in out] == [id(g1), id(g2), id(g3), id(g4)]
    assert [p for p, _ in out] == [free, frozen, pairs[3][0], pairs[4][0]]
    assert_bitwise(g2, np.array([30.0, 40.0], np.float32))
    for g in (g1, g3, g4):
        assert_bitwise(g, np.array([3.0, 4.0], np.float32))
    st_ = clip.last_stats
    assert st_ == ClipStats((0, 3, 4), (50.0,) * 3, (float(np.float32(0.1)),) * 3, (True,) * 3, None)


def test_generator_and_empty_inputs() -> None:
    g = np.array([3.0, 4.0])
    out = fc.ClipGradByGlobalNorm(1.0)(pair for pair in [(None, g)])
    assert out[0][1] is g
    np.testing.assert_allclose(g, [0.6, 0.8], rtol=1e-15)
    clip = fc.ClipGradByGlobalNorm(1.0)
    assert clip([]) == []
    assert clip.last_stats == ClipStats((), (), (), (), 0.0)


def fresh_grads() -> list[np.ndarray]:
    return [np.array([3.0, 4.0], np.float32), np.array([[5.0, 12.0]]), np.array([7.0], np.float32)]


@pytest.mark.parametrize(
    "clip", [fc.ClipGradByValue(1.0), fc.ClipGradByNorm(1.0), fc.ClipGradByGlobalNorm(1.0)], ids=str
)
@pytest.mark.parametrize("fault", ["readonly", "int", "shared", "not_pair", "not_array", "not_iterable"])
def test_call_errors_touch_nothing(clip: fc.ClipGradBase, fault: str) -> None:
    grads = fresh_grads()
    before = bits(list(grads))
    pairs: Any = [(None, g) for g in grads]
    if fault == "readonly":
        bad = np.array([9.0, 9.0])
        bad.flags.writeable = False
        pairs.append((None, bad))
        error, match = ValueError, r"params_grads\[3\]"
    elif fault == "int":
        pairs.append((None, np.array([9, 9])))
        error, match = TypeError, r"params_grads\[3\].*int64"
    elif fault == "shared":
        pairs.append((None, grads[0][:1]))
        error, match = ValueError, "share memory"
    elif fault == "not_pair":
        pairs.append(np.zeros(3))
        error, match = TypeError, r"params_grads\[3\] must be a \(param, grad\) pair"
    elif fault == "not_array":
        pairs.append((None, [1.0, 2.0]))
        error, match = TypeError, r"params_grads\[3\]"
    else:
        pairs = 5
        error, match = TypeError, "params_grads must be an iterable"
    stats = clip.last_stats
    with pytest.raises(error, match=match):
        clip(pairs)
    assert bits(list(grads)) == before
    assert clip.last_stats is stats


# ---------------------------------------------------------------- dtypes and improvements

LOW = [np.float16, ml_dtypes.bfloat16]


@pytest.mark.parametrize("dtype", LOW, ids=["float16", "bfloat16"])
def test_half_precision_supported(dtype: Any) -> None:
    """Paddle's CPU kernels reject float16/bfloat16; fastclip clips them (factor in float32)."""
    base = np.array([3.0, -4.0, 0.5, 0.0], dtype)
    g = base.copy()
    fc.ClipGradByNorm(1.0)([(None, g)])
    assert ulps(g, ref_scaled(base, 1.0 / ref_norm(base))) <= 1
    g1, g2 = base.copy(), np.array([12.0], dtype)
    clip = fc.ClipGradByGlobalNorm(2.0)
    clip([(None, g1), (None, g2)])
    total = math.hypot(ref_norm(base), 12.0)
    assert clip.last_stats is not None and clip.last_stats.global_norm == pytest.approx(total, rel=1e-15)
    assert ulps(g1, ref_scaled(base, 2.0 / total)) <= 1
    g = base.copy()
    fc.ClipGradByValue(0.1, -0.3)([(None, g)])
    assert_bitwise(g, paddle_clamp(base, -0.3, 0.1))


def test_mixed_dtypes_global_norm_in_float64() -> None:
    a = np.array([1e20, 0.0], np.float32)  # Paddle: 1e40 overflows the float32 bucket
    b = np.array([1e20, 1.0])
    h = np.array([2.0], np.float16)
    clip = fc.ClipGradByGlobalNorm(1.0)
    a0, b0, h0 = a.copy(), b.copy(), h.copy()
    clip([(None, a), (None, b), (None, h)])
    total = math.hypot(ref_norm(a0), ref_norm(b0), ref_norm(h0))
    s = clip.last_stats
    assert s is not None and s.global_norm == pytest.approx(total, rel=1e-15)
    f = 1.0 / total
    assert s.scales == (float(np.float32(f)), pytest.approx(f, rel=1e-15), float(np.float32(f)))
    assert ulps(a, ref_scaled(a0, f)) <= 1 and ulps(b, ref_scaled(b0, f)) <= 1 and ulps(h, ref_scaled(h0, f)) <= 1
    assert a.dtype == np.float32 and b.dtype == np.float64 and h.dtype == np.float16


def test_float64_extremes_do_not_overflow() -> None:
    g = np.array([1e200, 1e200])  # Paddle float64: square 1e400 overflows -> zeros
    fc.ClipGradByNorm(1.0)([(None, g)])
    np.testing.assert_allclose(g, [2**-0.5, 2**-0.5], rtol=1e-15)
    tiny = np.array([1e-200, 1e-200])
    fc.ClipGradByNorm(1e-201)([(None, tiny)])
    np.testing.assert_allclose(tiny, [2**-0.5 * 1e-201] * 2, rtol=1e-14)


def test_threshold_edges() -> None:
    """``norm > clip_norm`` clips, ``norm == clip_norm`` does not (Paddle's comparison)."""
    g = np.array([3.0, 4.0], np.float32)
    fc.ClipGradByNorm(5.0)([(None, g)])
    assert_bitwise(g, np.array([3.0, 4.0], np.float32))
    g = np.array([3.0, 4.0], np.float32)
    clip = fc.ClipGradByNorm(float(np.nextafter(np.float32(5), np.float32(0))))
    clip([(None, g)])
    assert clip.last_stats is not None and clip.last_stats.clipped == (True,)
    for auto in (False, True):
        g = np.array([5.0, 12.0], np.float32)
        c = fc.ClipGradByGlobalNorm(13.0, auto_skip_clip=auto)
        c([(None, g)])
        assert_bitwise(g, np.array([5.0, 12.0], np.float32))
        assert c.last_stats == ClipStats((0,), (13.0,), (1.0,), (False,), 13.0)


# ---------------------------------------------------------------- properties

finite_arrays = st.integers(1, 4).flatmap(
    lambda n: st.lists(
        st.tuples(
            st.sampled_from([np.float32, np.float64]),
            st.integers(0, 40),
            st.floats(-30, 30),
            st.integers(0, 2**32 - 1),
        ),
        min_size=n,
        max_size=n,
    )
)


def make_arrays(spec: list[tuple[Any, int, float, int]]) -> list[np.ndarray]:
    """Random normal arrays spread over magnitudes 1e-30..1e30 (float32 squares overflow at 1e19)."""
    out = []
    for dtype, size, exp10, seed in spec:
        rng = np.random.default_rng(seed)
        out.append((rng.standard_normal(size) * 10.0**exp10).astype(dtype))
    return out


clip_norms = st.floats(1e-3, 1e3)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spec=finite_arrays, c=clip_norms, mask=st.lists(st.booleans(), min_size=4, max_size=4))
def test_property_by_norm(spec: list[Any], c: float, mask: list[bool]) -> None:
    grads = make_arrays(spec)
    originals = [g.copy() for g in grads]
    params = [fc.Parameter(np.zeros(g.shape, g.dtype), need_clip=m) for g, m in zip(grads, mask)]
    clip = fc.ClipGradByNorm(c)
    out = clip(list(zip_equal(params, grads)))
    assert [g for _, g in out] == grads
    stats = clip.last_stats
    assert stats is not None
    assert stats.indices == tuple(i for i, m in enumerate(mask[: len(grads)]) if m)
    for i, (g, g0, m) in enumerate(zip(grads, originals, mask)):
        if not m:
            assert g.tobytes() == g0.tobytes()
            continue
        n0 = ref_norm(g0)
        k = stats.indices.index(i)
        assert stats.norms is not None and stats.norms[k] == pytest.approx(n0, rel=1e-14, abs=0)
        if n0 <= c:
            assert g.tobytes() == g0.tobytes()
            assert stats.clipped is not None and not stats.clipped[k]
        else:
            assert ref_norm(g) <= c * (1 + 1e-6)
            assert_near_ref(g, ref_scaled(g0, c / n0))  # direction kept: the same factor for every element
            assert stats.scales is not None and stats.scales[k] == pytest.approx(c / n0, rel=1e-7)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spec=finite_arrays, c=clip_norms, mask=st.lists(st.booleans(), min_size=4, max_size=4), auto=st.booleans())
def test_property_global_norm(spec: list[Any], c: float, mask: list[bool], auto: bool) -> None:
    grads = make_arrays(spec)
    originals = [g.copy() for g in grads]
    params = [fc.Parameter(np.zeros(g.shape, g.dtype), need_clip=m) for g, m in zip(grads, mask)]
    clip = fc.ClipGradByGlobalNorm(c, auto_skip_clip=auto)
    clip(list(zip_equal(params, grads)))
    clipped = [i for i, m in enumerate(mask[: len(grads)]) if m]
    total = math.hypot(*(ref_norm(originals[i]) for i in clipped))
    stats = clip.last_stats
    assert stats is not None and stats.global_norm == pytest.approx(total, rel=1e-14, abs=0)
    after = math.hypot(*(ref_norm(grads[i]) for i in clipped))
    assert after <= c * (1 + 1e-6)
    for i, (g, g0) in enumerate(zip_equal(grads, originals)):
        if i not in clipped or total <= c:
            assert g.tobytes() == g0.tobytes()
        else:
            assert_near_ref(g, ref_scaled(g0, c / total))


@settings(max_examples=40, deadline=None)
@given(
    arr=hnp.arrays(np.float32, hnp.array_shapes(max_dims=2, max_side=6), elements=st.floats(-1e6, 1e6, width=32)),
    hi=st.floats(0.01, 100),
    lo=st.floats(-100, 0),
)
def test_property_by_value(arr: np.ndarray, hi: float, lo: float) -> None:
    g = arr.copy()
    fc.ClipGradByValue(hi, lo)([(None, g)])
    assert_bitwise(g, paddle_clamp(arr, lo, hi))


@settings(max_examples=30, deadline=None)
@given(
    spec=finite_arrays,
    bad=st.sampled_from([0.0, -1.0, math.nan, math.inf, "1", None]),
    which=st.sampled_from(["value", "norm", "global"]),
)
def test_property_constructor_errors_modify_nothing(spec: list[Any], bad: Any, which: str) -> None:
    assume(not (which == "value" and bad == math.inf))  # ClipGradByValue(inf) is valid: no clipping
    grads = make_arrays(spec)
    before = bits(list(grads))
    cls = {"value": fc.ClipGradByValue, "norm": fc.ClipGradByNorm, "global": fc.ClipGradByGlobalNorm}[which]
    with pytest.raises((TypeError, ValueError)):
        cls(bad)([(None, g) for g in grads])
    assert bits(list(grads)) == before


@pytest.mark.parametrize("clip", [fc.ClipGradByNorm(1.0), fc.ClipGradByGlobalNorm(1.0)], ids=str)
def test_dlpack_grads_clipped_in_place(clip: fc.ClipGradBase) -> None:
    a = np.array([3.0, 4.0], np.float32)
    wrapped = DLPackProducer(a)
    b = np.array([0.0, 0.0])
    frozen = fc.Parameter(np.zeros(2), need_clip=False)
    out = clip([(frozen, np.array([9.0, 9.0])), (None, None), (None, wrapped), (None, b)])
    assert out[1][1] is wrapped  # the caller's object comes back; its memory was written
    assert_bitwise(a, np.array([0.6, 0.8], np.float32))
    assert clip.last_stats is not None and clip.last_stats.indices == (2, 3)
    with pytest.raises(TypeError, match=r"params_grads\[3\]"):
        clip([(None, wrapped), (frozen, [1.0]), (None, None), (None, "x")])
    assert_bitwise(a, np.array([0.6, 0.8], np.float32))
