"""AdaptiveGradClip, ZClip, AutoClip, AdaGC: against the reference packages' golden trajectories
(``tests/data/adaptive_golden.json``, written by ``scripts/adaptive_golden.py`` from zclip, autoclip,
timm, pytorch_optimizer and optax), against float64 NumPy references of each formula (hypothesis),
state round-trips and error cases.

How outputs are compared with the golden data: on every step, norms, thresholds, statistics and
every clipped gradient within ``REL`` = 1e-6 relative (NaN matches NaN, inf matches inf). The
references compute in float32 (their norms, EMAs and quantiles), fastclip in float64 and rounds
the factor once, so they differ by a few float32 ulps; 1e-6 is the bound the project sets.
Where a reference is wrong, the test asserts the correct value and the departure is named:

- ``nonfinite_kept_out_of_statistics``: the golden runs are *patched* (the reference's statistics
  restored after a step whose norm is NaN/inf), which is fastclip's rule; the ``raw`` runs show
  the packages letting one NaN poison every later step, which fastclip does not do.
- ``float32_norm_overflow``: on the last step the grads are ~1e20 (finite): the references'
  float32 norms overflow to inf and zero the tensor; fastclip's exact norm clips it correctly, as
  the same package does in float64 (the ``f64`` run), which is what the test compares against.
"""

from __future__ import annotations

import copy
import json
import math
import pickle
from pathlib import Path
from typing import Any

import fastclip as fc
import numpy as np
import pytest
from fastclip.adaptive import Window
from hypothesis import given, settings
from hypothesis import strategies as st
from refs import same_bits

GOLDEN = json.loads((Path(__file__).parent / "data" / "adaptive_golden.json").read_text())
META = GOLDEN["meta"]
SHAPES = [tuple(s) for s in META["shapes"]]
NAN_WARMUP, NAN_STEP, INF_STEP, OVERFLOW = (META["steps"][k] for k in ("nan_warmup", "nan", "inf", "overflow"))
REL = 1e-6
_NONFINITE = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}


def dec(v: Any) -> Any:
    if isinstance(v, list):
        return [dec(x) for x in v]
    if isinstance(v, str):
        return _NONFINITE.get(v, v)
    return v


def arrays(flat_lists: list[list[Any]], shapes: list[tuple[int, ...]], dtype: Any = np.float32) -> list[np.ndarray]:
    return [np.array(dec(f), np.float64).astype(dtype).reshape(s) for f, s in zip(flat_lists, shapes)]


SEQ = [arrays(step, SHAPES) for step in GOLDEN["sequence"]]


def close(got: Any, want: Any, rel: float = REL, what: str = "") -> None:
    """Scalars or arrays equal within ``rel`` relative; NaN matches NaN, +-inf match exactly, None None."""
    if want is None:
        assert got is None, (what, got)
        return
    g = np.asarray(got, np.float64).ravel()
    w = np.asarray(dec(want), np.float64).ravel()
    assert g.shape == w.shape, (what, g.shape, w.shape)
    nan = np.isnan(w)
    assert np.array_equal(np.isnan(g), nan), (what, g, w)
    inf = np.isinf(w)
    assert np.array_equal(g[inf], w[inf]), (what, g, w)
    fin = ~(nan | inf)
    err = np.abs(g[fin] - w[fin])
    assert np.all(err <= rel * np.abs(w[fin])), (what, g[fin], w[fin], (err / np.maximum(np.abs(w[fin]), 1e-300)).max())


def fresh(t: int, dtype: Any = np.float32) -> list[np.ndarray]:
    return [a.astype(dtype) for a in SEQ[t]]


def expected_step(case: dict[str, Any], t: int) -> dict[str, Any]:
    """The reference's step ``t``: the patched float32 run, or for the overflow step the float64 run
    (``float32_norm_overflow``)."""
    return case["f64"][t] if t == OVERFLOW else case["steps"][t]


def kwargs(cfg: dict[str, Any]) -> dict[str, Any]:
    return {k: dec(v) for k, v in cfg.items()}


# ------------------------------------------------------------------------------------- ZClip


@pytest.mark.parametrize("ci", range(len(GOLDEN["zclip"])))
def test_zclip_matches_zclip_package_every_step(ci: int) -> None:
    case = GOLDEN["zclip"][ci]
    z = fc.ZClip(**kwargs(case["config"]))
    for t in range(len(SEQ)):
        want = expected_step(case, t)
        grads = fresh(t)
        n = z.clip_(grads)
        s = z.last_stats
        close(n, want["norm"], what=f"norm step {t}")
        assert s.warmup == want["warmup"] and s.spike == want["spike"], t
        close(s.threshold, want["bound"], what=f"bound step {t}")
        close(z.mean, want["mean"], what=f"mean step {t}")
        close(z.var, want["var"], what=f"var step {t}")
        assert len(z.buffer) == want["buffer_len"], t
        for k, g in enumerate(grads):
            close(g, want["grads"][k], what=f"grad {k} step {t}")


@pytest.mark.parametrize("ci", range(len(GOLDEN["zclip"])))
def test_zclip_float64_matches_package_in_float64(ci: int) -> None:
    """The same formulas in the same order: on float64 grads, the package's float64 statistics to 1e-12."""
    case = GOLDEN["zclip"][ci]
    z = fc.ZClip(**kwargs(case["config"]))
    for t, want in enumerate(case["f64"]):
        n = z.clip_(fresh(t, np.float64))
        close(n, want["norm"], rel=1e-12, what=f"norm {t}")
        close(z.mean, want["mean"], rel=1e-12, what=f"mean {t}")
        close(z.var, want["var"], rel=1e-12, what=f"var {t}")
        assert z.last_stats.spike == want["spike"]


def test_zclip_departure_nonfinite_kept_out_of_statistics() -> None:
    """``nonfinite_kept_out_of_statistics``: zclip puts the NaN norm of step 3 into its warm-up buffer,
    so μ and σ² are NaN for good; fastclip leaves the buffer as it was (the warm-up lasts one more
    step) and its statistics match the patched reference on every later step (above)."""
    for case in GOLDEN["zclip"]:
        raw, patched = case["raw"], case["steps"]
        first = next(t for t, s in enumerate(raw) if s["mean"] is not None)
        assert all(s["mean"] == "NaN" for s in raw[first:]), case["config"]
        z = fc.ZClip(**kwargs(case["config"]))
        for t in range(OVERFLOW):
            z.clip_(fresh(t))
            assert (z.mean is None) or math.isfinite(z.mean)
        assert z.initialized and math.isfinite(z.var)
        assert patched[NAN_WARMUP]["buffer_len"] == patched[NAN_WARMUP - 1]["buffer_len"]


def test_zclip_departure_float32_norm_overflow() -> None:
    """``float32_norm_overflow``: on the last step zclip's float32 norm is inf, so it scales every grad by
    0; fastclip's norm is finite (~1e20) and the grads are clipped to the bound, as zclip does in float64."""
    for case in GOLDEN["zclip"]:
        assert case["steps"][OVERFLOW]["norm"] == "Infinity"
        assert all(v == 0.0 for v in case["steps"][OVERFLOW]["grads"][0])
        z = fc.ZClip(**kwargs(case["config"]))
        for t in range(OVERFLOW):
            z.clip_(fresh(t))
        grads = fresh(OVERFLOW)
        n = z.clip_(grads)
        assert 1e19 < n < 1e22
        close(n, case["f64"][OVERFLOW]["norm"])
        assert fc.get_total_norm(grads) == pytest.approx(z.last_stats.threshold, rel=1e-6)


# ---------------------------------------------------------------------------------- AutoClip


@pytest.mark.parametrize("ci", range(len(GOLDEN["autoclip"])))
def test_autoclip_matches_autoclip_package_every_step(ci: int) -> None:
    case = GOLDEN["autoclip"][ci]
    ac = fc.AutoClip(**kwargs(case["config"]))
    for t in range(len(SEQ)):
        want = expected_step(case, t)
        grads = fresh(t)
        n = ac.clip_(grads)
        s = ac.last_stats
        if ac.global_threshold:
            close(n, want["norms"][0], what=f"norm {t}")
            close(s.threshold, want["thresholds"][0], what=f"threshold {t}")
            assert len(ac.history()) == want["history_len"][0]
        else:
            close(s.norms, want["norms"], what=f"norms {t}")
            close(s.thresholds, want["thresholds"], what=f"thresholds {t}")
            assert [len(ac.history(k)) for k in range(3)] == want["history_len"], t
        for k, g in enumerate(grads):
            close(g, want["grads"][k], what=f"grad {k} step {t}")


@pytest.mark.parametrize("ci", range(len(GOLDEN["autoclip"])))
def test_autoclip_float64_matches_package_in_float64(ci: int) -> None:
    case = GOLDEN["autoclip"][ci]
    ac = fc.AutoClip(**kwargs(case["config"]))
    for t, want in enumerate(case["f64"]):
        ac.clip_(fresh(t, np.float64))
        s = ac.last_stats
        got = [s.threshold] if ac.global_threshold else list(s.thresholds)
        close(got, want["thresholds"], rel=1e-12, what=f"thresholds {t}")


def test_autoclip_departure_nonfinite_kept_out_of_statistics() -> None:
    """``nonfinite_kept_out_of_statistics``: autoclip appends the NaN norm, after which
    ``torch.quantile`` is NaN and the next steps' grads all become NaN; fastclip never stores it."""
    for case in GOLDEN["autoclip"]:
        raw = case["raw"]
        assert any("NaN" in s["thresholds"] for s in raw[NAN_WARMUP + 1 :]), case["config"]
        ac = fc.AutoClip(**kwargs(case["config"]))
        for t in range(OVERFLOW):
            ac.clip_(fresh(t))
            s = ac.last_stats
            assert all(not math.isnan(x) for x in (s.thresholds or (s.threshold,)))
        for key in [None, 0, 1, 2]:
            assert all(math.isfinite(x) for x in ac.history(key))


def test_autoclip_departure_float32_norm_overflow() -> None:
    """``float32_norm_overflow``: autoclip zeroes the ~1e20 tensor (norm inf); fastclip scales it to the threshold."""
    case = GOLDEN["autoclip"][0]
    assert case["steps"][OVERFLOW]["norms"][2] == "Infinity"
    assert all(v == 0.0 for v in case["steps"][OVERFLOW]["grads"][2])
    ac = fc.AutoClip(**kwargs(case["config"]))
    for t in range(OVERFLOW):
        ac.clip_(fresh(t))
    grads = fresh(OVERFLOW)
    ac.clip_(grads)
    assert fc.get_total_norm(grads[2]) == pytest.approx(ac.last_stats.thresholds[2], rel=1e-6)


# ------------------------------------------------------------------------------------- AdaGC


@pytest.mark.parametrize("ci", range(len(GOLDEN["adagc"])))
def test_adagc_matches_pytorch_optimizer_every_step(ci: int) -> None:
    case = GOLDEN["adagc"][ci]
    ada = fc.AdaGC(**kwargs(case["config"]))
    for t in range(len(SEQ)):
        want = expected_step(case, t)
        grads = fresh(t)
        ada.clip_(grads)
        assert ada.last_stats.warmup == any(want["warmup"]), t
        close([ada.gamma(k) for k in range(3)], want["gamma"], what=f"gamma {t}")
        for k, g in enumerate(grads):
            close(g, want["grads"][k], what=f"grad {k} step {t}")


def test_adagc_departure_nonfinite_kept_out_of_statistics() -> None:
    """``nonfinite_kept_out_of_statistics``: in pytorch_optimizer a NaN in warm-up makes every γ NaN
    (so every later gradient is NaN); fastclip keeps γ and matches the patched run (above)."""
    for case in GOLDEN["adagc"]:
        assert all(g == "NaN" for g in case["raw"][NAN_WARMUP]["gamma"])
        assert all(g == "NaN" for g in case["raw"][-1]["gamma"])
        ada = fc.AdaGC(**kwargs(case["config"]))
        for t in range(len(SEQ)):
            ada.clip_(fresh(t))
            assert all(math.isfinite(ada.gamma(k)) for k in range(3))


def test_adagc_inf_in_warmup_updates_no_gamma() -> None:
    """``nonfinite_kept_out_of_statistics`` for an inf during warm-up: the package's h = λ_abs / inf = 0
    zeroes every tensor, so its γ = min(γ, 0) = 0 for all of them; fastclip keeps every γ (the
    grads are scaled by 0 as the package scales them)."""
    ada = fc.AdaGC(warmup_steps=10)
    ada.clip_([np.array([3.0, 4.0]), np.array([1.0])])
    gammas = [ada.gamma(0), ada.gamma(1)]
    a, b = np.array([3.0, 4.0]), np.array([np.inf])
    ada.clip_([a, b])
    assert [ada.gamma(0), ada.gamma(1)] == gammas and all(g > 0 for g in gammas)
    assert np.all(a == 0.0) and np.isnan(b[0])
    c, d = np.array([np.nan, 1.0]), np.array([1.0])
    ada.clip_([c, d])
    assert [ada.gamma(0), ada.gamma(1)] == gammas and np.isnan(d[0])


def test_adagc_departure_float32_norm_overflow() -> None:
    """``float32_norm_overflow``: the package's float32 norm of the ~1e20 tensor is inf (h = 0, the
    tensor zeroed, γ decays); fastclip clips it to λ_rel·γ as the package does in float64."""
    for case in GOLDEN["adagc"]:
        assert all(v == 0.0 for v in case["steps"][OVERFLOW]["grads"][2])
        ada = fc.AdaGC(**kwargs(case["config"]))
        for t in range(len(SEQ)):
            grads = fresh(t)
            ada.clip_(grads)
        close(grads[2], case["f64"][OVERFLOW]["grads"][2])
        assert fc.get_total_norm(grads[2]) == pytest.approx(ada.last_stats.thresholds[2], rel=1e-6)


# --------------------------------------------------------------------------------------- AGC


def _agc_case_inputs(block: dict[str, Any], t: int, leaves: list[int]) -> tuple[list[Any], list[Any]]:
    shapes = [tuple(s) for s in block["shapes"]]
    step = block["inputs"][t]
    ws = arrays(step["weights"], shapes)
    gs = arrays(step["grads"], shapes)
    return [ws[k] for k in leaves], [gs[k] for k in leaves]


@pytest.mark.parametrize("ci", range(len(GOLDEN["agc_timm"]["cases"])))
def test_agc_matches_timm(ci: int) -> None:
    block = GOLDEN["agc_timm"]
    case = block["cases"][ci]
    agc = fc.AdaptiveGradClip(**case["config"])
    for t, want in enumerate(case["clipped"]):
        ws, gs = _agc_case_inputs(block, t, list(range(len(block["shapes"]))))
        agc.clip(list(zip(ws, gs)))
        for k, g in enumerate(gs):
            close(g, want[k], what=f"step {t} tensor {k}")


@pytest.mark.parametrize("ci", range(len(GOLDEN["agc_optax"]["cases"])))
def test_agc_matches_optax(ci: int) -> None:
    block = GOLDEN["agc_optax"]
    case = block["cases"][ci]
    axis = case["axis"]
    agc = fc.AdaptiveGradClip(**case["config"], axis="optax" if axis is None else axis)
    for t, want in enumerate(case["clipped"]):
        ws, gs = _agc_case_inputs(block, t, case["leaves"])
        agc.clip(list(zip(ws, gs)))
        for k, g in enumerate(gs):
            close(g, want[k], what=f"step {t} leaf {case['leaves'][k]}")


def test_agc_layouts_differ_and_default_is_torch() -> None:
    """A (5, 1) leaf: timm (the default) has 5 units of one element, optax one unit (squeezed)."""
    w = np.ones((5, 1))
    g = np.array([[4.0], [0.0], [0.0], [0.0], [0.0]])
    torch_like, optax_like = g.copy(), g.copy()
    fc.AdaptiveGradClip(clipping=0.5).clip([(w, torch_like)])
    fc.AdaptiveGradClip(clipping=0.5, axis="optax").clip([(w, optax_like)])
    assert torch_like[0, 0] == 0.5  # its own unit: ||w_u|| = 1
    assert optax_like[0, 0] == pytest.approx(0.5 * math.sqrt(5))  # one unit: ||w|| = sqrt(5)


# ------------------------------------------------------- hypothesis: float64 NumPy references


def ref_agc(w: np.ndarray, g: np.ndarray, clipping: float, eps: float, reduce: tuple[int, ...]) -> np.ndarray:
    """AGC in float64 NumPy: unit norms over ``reduce`` (keepdims), the timm/optax rule."""
    w64, g64 = w.astype(np.float64), g.astype(np.float64)
    wn = np.sqrt(np.sum(w64**2, axis=reduce, keepdims=True))
    gn = np.sqrt(np.sum(g64**2, axis=reduce, keepdims=True))
    mx = clipping * np.maximum(wn, eps)
    factor = np.where(gn < mx, 1.0, mx / np.maximum(gn, 1e-6))
    return g64 * factor


shapes = st.lists(st.integers(1, 4), min_size=0, max_size=4).map(tuple)


@settings(max_examples=60, deadline=None)
@given(
    shape=shapes,
    seed=st.integers(0, 2**32 - 1),
    clipping=st.floats(1e-3, 2.0),
    eps=st.sampled_from([0.0, 1e-3, 0.5]),
    layout=st.sampled_from(["torch", "optax", "axis0", "axis_last"]),
    dtype=st.sampled_from([np.float32, np.float64]),
    strided=st.booleans(),
)
def test_agc_property_against_numpy(shape, seed, clipping, eps, layout, dtype, strided) -> None:
    rng = np.random.default_rng(seed)
    d = len(shape)
    w = np.asarray(rng.standard_normal(shape) * math.exp(rng.standard_normal())).astype(dtype)
    base = np.asarray(rng.standard_normal(shape) * 0.05 * math.exp(2 * rng.standard_normal())).astype(dtype)
    if strided and d >= 2:
        big = np.zeros((*shape[:-1], 2 * shape[-1]), dtype)
        g = big[..., ::2]
        g[...] = base
    else:
        g = base.copy()
    if layout == "torch":
        axis, reduce = None, tuple(range(d)) if d <= 1 else tuple(range(1, d))
    elif layout == "optax":
        if d > 5:
            return
        axis = "optax"
        nontrivial = sum(1 for s in shape if s != 1)
        reduce = tuple(range(d)) if nontrivial <= 1 else ((0,) if d in (2, 3) else tuple(range(d - 1)))
    elif layout == "axis0":
        if d == 0:
            return
        axis, reduce = 0, (0,)
    else:
        if d == 0:
            return
        axis, reduce = tuple(range(d - 1)), tuple(range(d - 1))
    want = ref_agc(w, base, clipping, eps, reduce)
    agc = fc.AdaptiveGradClip(clipping=clipping, eps=eps, axis=axis)
    total = agc.clip([(w, g)])
    assert total[0][1] is g
    if dtype == np.float64:
        np.testing.assert_allclose(g, want, rtol=1e-12, atol=0)
    else:
        np.testing.assert_allclose(g.astype(np.float64), want, rtol=3e-7, atol=0)
    assert agc.last_stats.norms[0] == pytest.approx(float(np.linalg.norm(base.astype(np.float64))), rel=1e-12)


def ref_zclip(norms: list[float], cfg: dict[str, Any]) -> list[tuple[float, float | None, float | None]]:
    """ZClip from the formulas (the reference doc), float64: per step (factor, mean, var) after."""
    a, zt, mx, eps = cfg["alpha"], cfg["z_thresh"], cfg["max_grad_norm"], 1e-6
    warm, mode, opt, cf, skip = cfg["warmup_steps"], cfg["mode"], cfg["clip_option"], cfg["clip_factor"], cfg["skip"]
    buf: list[float] = []
    mu = var = None
    out = []
    for n in norms:
        if mu is None:
            f = 1.0 if mx is None else min(1.0, mx / (n + 1e-6))
            buf.append(n)
            if len(buf) >= warm:
                mu = float(np.mean(np.array(buf, np.float64)))
                var = float(np.mean((np.array(buf) - mu) ** 2))
            out.append((f, mu, var))
            continue
        sd = math.sqrt(var)
        thr = None
        if mode == "percentile":
            if n > mu + zt * sd:
                thr = mu + zt * sd
        else:
            z = (n - mu) / (sd + eps)
            if z > zt:
                thr = (mu + zt * sd / (z / zt)) * cf if opt == "adaptive_scaling" else mu
        eff = n if thr is None else thr
        if mx is not None:
            eff = min(eff, mx)
        f = eff / (n + 1e-6) if n > eff else 1.0
        if not (thr is not None and skip):
            v = n if thr is None else thr
            mu = a * mu + (1 - a) * v
            var = a * var + (1 - a) * (v - mu) ** 2
        out.append((f, mu, var))
    return out


@settings(max_examples=40, deadline=None)
@given(
    norms=st.lists(st.floats(0.01, 100.0) | st.floats(1e3, 1e5), min_size=1, max_size=40),
    alpha=st.floats(0.5, 0.99),
    warm=st.integers(1, 6),
    mode=st.sampled_from(["zscore", "percentile"]),
    opt=st.sampled_from(["adaptive_scaling", "mean"]),
    mx=st.sampled_from([None, 1.0, 50.0]),
    cf=st.floats(0.5, 1.0),
    skip=st.booleans(),
)
def test_zclip_property_against_formula(norms, alpha, warm, mode, opt, mx, cf, skip) -> None:
    cfg = {"alpha": alpha, "z_thresh": 2.5, "max_grad_norm": mx, "warmup_steps": warm, "mode": mode,
           "clip_option": opt, "clip_factor": cf, "skip": skip}  # fmt: skip
    z = fc.ZClip(alpha=alpha, max_grad_norm=mx, warmup_steps=warm, mode=mode, clip_option=opt, clip_factor=cf,
                 skip_update_on_spike=skip)  # fmt: skip
    for n, (f, mu, var) in zip(norms, ref_zclip(norms, cfg)):
        g = np.array([0.6 * n, 0.8 * n])
        z.clip_([g[:1], g[1:]])
        assert float(np.hypot(*g)) == pytest.approx(f * math.hypot(0.6 * n, 0.8 * n), rel=1e-9)
        for got, want in ((z.mean, mu), (z.var, var)):
            assert (got is None) == (want is None)
            if want is not None:
                assert got == pytest.approx(want, rel=1e-9, abs=1e-12)


@settings(max_examples=80, deadline=None)
@given(
    values=st.lists(st.floats(0.0, 1e6) | st.sampled_from([0.0, 1.0, 2.0]), min_size=0, max_size=120),
    capacity=st.integers(1, 12),
    q=st.floats(0.0, 1.0) | st.sampled_from([0.0, 0.5, 0.9, 1.0]),
)
def test_window_quantile_against_numpy(values, capacity, q) -> None:
    """The O(log n) window against ``np.quantile(last capacity values, q, method="linear")`` after
    every push (exact: the same two order statistics and the same lerp), memory bounded."""
    w = Window(capacity, q)
    assert w.quantile() == math.inf
    for i, x in enumerate(values):
        w.push(x)
        window = values[max(0, i + 1 - capacity) : i + 1]
        assert w.values() == window
        want = float(np.quantile(np.array(window, np.float64), q, method="linear"))
        assert w.quantile() == pytest.approx(want, rel=1e-15, abs=0.0), (window, q)
        assert len(w._low) + len(w._high) <= 2 * len(window) + 33


def test_window_quantile_bitwise_torch_formula() -> None:
    """torch.quantile's rule written out (sort, r = q(n-1), lerp): bit for bit."""
    rng = np.random.default_rng(3)
    vals = (rng.standard_normal(500) ** 2).tolist()
    w = Window(100, 0.9)
    for i, x in enumerate(vals):
        w.push(x)
        s = sorted(vals[max(0, i - 99) : i + 1])
        r = 0.9 * (len(s) - 1)
        lo = int(r)
        wt = r - lo
        hi = min(lo + 1, len(s) - 1)
        a, b = s[lo], s[hi]
        want = a + wt * (b - a) if wt < 0.5 else b - (b - a) * (1 - wt)
        assert w.quantile() == want


def ref_adagc(norms: list[list[float]], beta, la, lr, warm, eps):
    """AdaGC from the formulas, float64: per step the factor of each tensor and γ after."""
    gamma: list[float | None] = [None] * len(norms[0])
    out = []
    for t, ns in enumerate(norms, start=1):
        total = math.sqrt(sum(n * n for n in ns))
        fs = []
        for i, n in enumerate(ns):
            if gamma[i] is None or t < warm:
                h = min(la / (total + eps), 1.0)
                gamma[i] = h * n if gamma[i] is None else min(gamma[i], h * n)
            else:
                h = min(lr * max(gamma[i], eps) / max(n, eps), 1.0)
                gamma[i] = gamma[i] + (1 - beta) * (h * n - gamma[i])
            fs.append(h)
        out.append((fs, list(gamma)))
    return out


@settings(max_examples=40, deadline=None)
@given(
    steps=st.lists(st.lists(st.floats(1e-3, 1e3), min_size=3, max_size=3), min_size=1, max_size=30),
    beta=st.floats(0.5, 0.99),
    la=st.floats(0.1, 10.0),
    lr=st.floats(1.0, 2.0),
    warm=st.integers(0, 8),
)
def test_adagc_property_against_formula(steps, beta, la, lr, warm) -> None:
    ada = fc.AdaGC(beta=beta, lambda_abs=la, lambda_rel=lr, warmup_steps=warm)
    for ns, (fs, gammas) in zip(steps, ref_adagc(steps, beta, la, lr, warm, 1e-8)):
        grads = [np.array([n]) for n in ns]
        ada.clip_(grads)
        for g, n, f in zip(grads, ns, fs):
            assert float(g[0]) == pytest.approx(f * n, rel=1e-12)
        assert [ada.gamma(k) for k in range(3)] == pytest.approx(gammas, rel=1e-12)


@settings(max_examples=40, deadline=None)
@given(
    steps=st.lists(st.lists(st.floats(1e-3, 1e3), min_size=2, max_size=2), min_size=1, max_size=30),
    q=st.floats(0.0, 1.0),
    length=st.integers(1, 6),
    glob=st.booleans(),
)
def test_autoclip_property_against_numpy(steps, q, length, glob) -> None:
    ac = fc.AutoClip(quantile=q, history_length=length, global_threshold=glob)
    hist: dict[Any, list[float]] = {}
    for ns in steps:
        grads = [np.array([n]) for n in ns]
        keys: list[Any] = [None] if glob else [0, 1]
        measured = [math.hypot(*ns)] if glob else ns
        thr = [
            float(np.quantile(hist[k][-length:], q, method="linear")) if hist.get(k) else math.inf for k in keys
        ]
        ac.clip_(grads)
        for i, g in enumerate(grads):
            t = thr[0] if glob else thr[i]
            coef = min(1.0, t / (measured[0 if glob else i] + 1e-6))
            assert float(g[0]) == pytest.approx(ns[i] * coef, rel=1e-12)
        for k, n in zip(keys, measured):
            hist.setdefault(k, []).append(n)
        for k in keys:
            assert ac.history(k) == pytest.approx(hist[k][-length:], rel=1e-15)


# ------------------------------------------------------------------- state, errors, inputs


def _clippers() -> list[fc.ClipGradBase]:
    return [
        fc.ZClip(warmup_steps=5),
        fc.ZClip(warmup_steps=3, mode="percentile", max_grad_norm=None),
        fc.AutoClip(history_length=7),
        fc.AutoClip(quantile=0.3, history_length=4, global_threshold=True),
        fc.AdaGC(warmup_steps=6),
        fc.SkipNonFinite(inner=fc.ZClip(warmup_steps=4), max_consecutive=5),
        fc.SkipAbove(1e4, inner=fc.AutoClip(history_length=5)),
    ]


@pytest.mark.parametrize("ci", range(7))
@pytest.mark.parametrize("via", ["deepcopy", "pickle"])
def test_state_round_trip_resumes_bit_identically(ci: int, via: str) -> None:
    """Run N steps, save, run M more; a fresh object restored from the save and run M gives the same
    bits (grads, norms, state)."""
    a = _clippers()[ci]
    n, m = 17, 20
    for t in range(n):
        a.clip_(fresh(t))
    saved = a.state_dict()
    saved = copy.deepcopy(saved) if via == "deepcopy" else pickle.loads(pickle.dumps(saved))
    b = _clippers()[ci]
    b.load_state_dict(saved)
    assert b.state_dict() == a.state_dict()
    for t in range(n, n + m):
        ga, gb = fresh(t), fresh(t)
        na, nb = a.clip_(ga), b.clip_(gb)
        assert (na == nb) or (math.isnan(na) and math.isnan(nb))
        assert all(same_bits(x, y) for x, y in zip(ga, gb)), t
    assert repr(b.state_dict()) == repr(a.state_dict())


@pytest.mark.parametrize("ci", range(7))
def test_load_state_dict_rejects_bad_state_and_changes_nothing(ci: int) -> None:
    """Every malformed state (wrong kind, a value of the wrong type, NaN, negative, ...) raises
    TypeError/ValueError and leaves the state as it was."""
    c = _clippers()[ci]
    for t in range(9):
        c.clip_(fresh(t))
    before = repr(c.state_dict())
    good = c.state_dict()
    bad_states: list[Any] = [None, [], {"kind": "Other"}, {**good, "kind": "ZClip" if ci > 1 else "AdaGC"}]
    for key, value in good.items():
        if key == "kind":
            continue
        for bad in ("x", -1, math.nan, [math.nan], {"k": -1.0}, True):
            if bad is True and isinstance(value, bool):
                continue
            bad_states.append({**copy.deepcopy(good), key: bad})
    for s in bad_states:
        with pytest.raises((TypeError, ValueError)):
            c.load_state_dict(s)
        assert repr(c.state_dict()) == before, s


def _snapshot(pairs: list[tuple[Any, np.ndarray]]) -> list[bytes]:
    return [np.ascontiguousarray(g).tobytes() for _, g in pairs]


@pytest.mark.parametrize("ci", range(7))
def test_errors_leave_everything_bit_identical(ci: int) -> None:
    """A bad buffer anywhere (read-only, integer, the same buffer twice, a bad item) raises before
    anything is written: grads, state and last_stats unchanged."""
    c = _clippers()[ci]
    for t in range(8):
        c.clip_(fresh(t))
    state, stats = repr(c.state_dict()), c.last_stats
    readonly = fresh(9)
    readonly[2].flags.writeable = False
    shared = fresh(9)
    cases = [
        (readonly, ValueError),
        ([fresh(9)[0], fresh(9)[1], np.arange(16).reshape(2, 2, 2, 2)], TypeError),
        ([shared[0], shared[1], shared[0]], ValueError),
        ([fresh(9)[0], "not a grad", fresh(9)[2]], TypeError),
    ]
    for grads, err in cases:
        pairs = [(None, g) for g in grads]
        before = [g if isinstance(g, str) else np.array(g, copy=True) for g in grads]
        with pytest.raises(err):
            c.clip(pairs)
        for g, b in zip(grads, before):
            if not isinstance(g, str):
                assert same_bits(g, b)
        assert repr(c.state_dict()) == state and c.last_stats is stats


def test_strided_grads_write_nothing_on_error() -> None:
    """A strided read-only grad is refused in Python before the extension writes the others."""
    base = np.zeros((4, 6), np.float32) + 5.0
    base.flags.writeable = False
    view = base[:, ::2]
    other = np.full(3, 1e3, np.float32)
    z = fc.ZClip(warmup_steps=1)
    with pytest.raises(ValueError, match=r"params_grads\[1\] is read-only"):
        z.clip([(None, other), (None, view)])
    assert np.all(other == 1e3)
    ok = np.full((4, 6), 5.0, np.float32)
    g1, g2 = ok[:, ::2], ok[:, 1::2]  # interleaved views of one buffer
    with pytest.raises(ValueError, match="share memory"):
        fc.AutoClip().clip([(None, g1), (None, g2)])


@pytest.mark.parametrize(
    "make, bad",
    [
        (fc.ZClip, {"alpha": 1.5}),
        (fc.ZClip, {"alpha": math.nan}),
        (fc.ZClip, {"z_thresh": 0}),
        (fc.ZClip, {"max_grad_norm": -1.0}),
        (fc.ZClip, {"eps": 0.0}),
        (fc.ZClip, {"warmup_steps": 2.5}),
        (fc.ZClip, {"warmup_steps": True}),
        (fc.ZClip, {"mode": "median"}),
        (fc.ZClip, {"clip_option": "max"}),
        (fc.ZClip, {"clip_factor": math.inf}),
        (fc.ZClip, {"skip_update_on_spike": 1}),
        (fc.AutoClip, {"quantile": 1.1}),
        (fc.AutoClip, {"quantile": "0.9"}),
        (fc.AutoClip, {"history_length": 0}),
        (fc.AutoClip, {"global_threshold": "yes"}),
        (fc.AdaGC, {"beta": 1.0}),
        (fc.AdaGC, {"lambda_abs": 0.0}),
        (fc.AdaGC, {"lambda_rel": math.nan}),
        (fc.AdaGC, {"warmup_steps": -1}),
        (fc.AdaGC, {"eps": -1e-8}),
        (fc.AdaptiveGradClip, {"clipping": 0.0}),
        (fc.AdaptiveGradClip, {"clipping": math.inf}),
        (fc.AdaptiveGradClip, {"eps": -1.0}),
        (fc.AdaptiveGradClip, {"axis": "hwio"}),
        (fc.AdaptiveGradClip, {"axis": (0, 0)}),
        (fc.AdaptiveGradClip, {"axis": 1.0}),
    ],
)
def test_constructor_rejects_bad_arguments(make: Any, bad: dict[str, Any]) -> None:
    with pytest.raises((TypeError, ValueError), match=next(iter(bad))):
        make(**bad)


def test_agc_call_errors_name_the_position_and_write_nothing() -> None:
    w, g = np.ones((3, 2)), np.full((3, 2), 5.0)
    agc = fc.AdaptiveGradClip()
    with pytest.raises(TypeError, match=r"needs each gradient's weights, but grads\[0\] is a bare gradient"):
        agc.clip_([g])
    with pytest.raises(ValueError, match=r"params_grads\[1\]: the weight has shape \(2, 3\)"):
        agc.clip([(w, g), (np.ones((2, 3)), np.ones((3, 2)))])
    with pytest.raises(ValueError, match=r"axis 2 is out of range for params_grads\[1\]"):
        fc.AdaptiveGradClip(axis=2).clip([(np.ones((2, 2, 2)), np.ones((2, 2, 2))), (w, g)])
    with pytest.raises(ValueError, match="rank 1 to 5"):
        fc.AdaptiveGradClip(axis="optax").clip([(np.ones((2,) * 6), np.ones((2,) * 6))])
    with pytest.raises(TypeError, match=r"weight of params_grads\[0\]"):
        agc.clip([(np.ones((3, 2), np.int64), g)])
    assert np.all(g == 5.0)


def test_agc_parameters_need_clip_and_none() -> None:
    w = fc.Parameter(np.ones((2, 3)))
    w.grad = np.full((2, 3), 4.0)
    b = fc.Parameter(np.ones(3), need_clip=False)
    b.grad = np.full(3, 4.0)
    n = fc.Parameter(np.ones(2))
    out = fc.AdaptiveGradClip(clipping=0.1).clip([(w, w.grad), (b, b.grad), (n, None)])
    assert [p for p, _ in out] == [w, b]
    assert np.allclose(w.grad, 0.1 * math.sqrt(3) / math.sqrt(3))  # each row: 0.1 * ||w_u|| / ||g_u|| * g
    assert np.all(b.grad == 4.0)
    stats = fc.AdaptiveGradClip(clipping=0.1).clip_([w, n])
    assert stats == pytest.approx(math.hypot(*(np.linalg.norm(w.grad, axis=1))))


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32", "float64"])
def test_agc_strided_and_contiguous_paths_agree(dtype: str) -> None:
    import ml_dtypes

    dt = np.dtype(ml_dtypes.bfloat16) if dtype == "bfloat16" else np.dtype(dtype)
    rng = np.random.default_rng(1)
    w = rng.standard_normal((6, 5)).astype(dt)
    g = (rng.standard_normal((6, 5)) * 3).astype(dt)
    rows = g.copy()
    cols_t = np.ascontiguousarray(g.T).T  # F-ordered: the same values, strided rows
    fc.AdaptiveGradClip(clipping=0.1).clip([(w, rows)])
    fc.AdaptiveGradClip(clipping=0.1).clip([(w, cols_t)])
    assert same_bits(rows, np.ascontiguousarray(cols_t))


def test_clip_accepts_every_grads_form() -> None:
    """clip_: arrays, a generator, objects with .grad, DLPack producers, a module with parameters()."""
    from refs import DLPackProducer

    class Module:
        def __init__(self, params: list[Any]) -> None:
            self._params = params

        def parameters(self) -> Any:
            return iter(self._params)

    want = fc.ZClip(warmup_steps=2)
    forms = [
        lambda gs: gs,
        lambda gs: (g for g in gs),
        lambda gs: [fc.Parameter(np.zeros_like(g)) for g in gs],
        lambda gs: [DLPackProducer(g) for g in gs],
        lambda gs: Module([fc.Parameter(np.zeros_like(g)) for g in gs]),
    ]
    for t in range(4):
        ref = fresh(t)
        n_ref = want.clip_(ref)
        for k, form in enumerate(forms):
            z = fc.ZClip(warmup_steps=2)
            for s in range(t):
                z.clip_(fresh(s))
            gs = fresh(t)
            obj = form(gs)
            if k in (2, 4):
                ps = obj._params if k == 4 else obj
                for p, g in zip(ps, gs):
                    p.grad = g
            n = z.clip_(obj)
            assert n == n_ref or (math.isnan(n) and math.isnan(n_ref))
            assert all(same_bits(a, b) for a, b in zip(gs, ref)), k


def test_clip_errors_name_the_callers_argument() -> None:
    ro = np.ones(3)
    ro.flags.writeable = False
    for c in _clippers():
        with pytest.raises(ValueError, match=r"^grads\[1\] is read-only"):
            c.clip_([np.ones(2), ro])
        with pytest.raises(ValueError, match=r"^params_grads\[1\] is read-only"):
            c.clip([(None, np.ones(2)), (None, ro)])


def test_empty_calls_change_nothing() -> None:
    for c in _clippers()[:5]:
        state = repr(c.state_dict())
        assert c.clip([]) == []
        assert c.clip_([]) == 0.0
        assert repr(c.state_dict()) == state


def test_torch_module_and_parameters() -> None:
    """clip_(nn.Module) and AGC on torch parameters (weights read through DLPack, zero copy)."""
    torch = pytest.importorskip("torch")
    lin = torch.nn.Linear(3, 4)
    with torch.no_grad():
        lin.weight.copy_(torch.arange(12.0).reshape(4, 3) / 10)
        lin.bias.copy_(torch.ones(4))
    lin.weight.grad = torch.full((4, 3), 2.0)
    lin.bias.grad = torch.full((4,), 3.0)
    w_np = lin.weight.detach().numpy().copy()
    want_w = ref_agc(w_np, np.full((4, 3), 2.0, np.float32), 0.05, 1e-3, (1,))
    want_b = ref_agc(np.ones(4, np.float32), np.full(4, 3.0, np.float32), 0.05, 1e-3, (0,))
    addr = lin.weight.grad.data_ptr()
    n = fc.AdaptiveGradClip(clipping=0.05).clip_(lin)
    assert n == pytest.approx(math.sqrt(12 * 4 + 4 * 9))
    assert lin.weight.grad.data_ptr() == addr
    np.testing.assert_allclose(lin.weight.grad.numpy(), want_w, rtol=3e-7)
    np.testing.assert_allclose(lin.bias.grad.numpy(), want_b, rtol=3e-7)
    z = fc.ZClip(warmup_steps=1, max_grad_norm=1.0)
    assert z.step(lin) == pytest.approx(float(torch.cat([p.grad.ravel() for p in lin.parameters()]).norm()))


@pytest.mark.parametrize("ci", range(5))
def test_each_clipper_reads_the_grads_once(ci: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Cost: one norm pass over the grads (AGC: plus one over the weights), one scaling pass over at
    most the grads' bytes; the writability check (``scale_`` by exactly 1.0) touches no data."""
    import fastclip._fastclip as ext

    read: list[int] = []
    written: list[int] = []
    real_norms, real_scale = ext.norms, ext.scale_

    def norms(arrays: Any, *args: Any) -> Any:
        read.append(sum(a.nbytes for a in arrays))
        return real_norms(arrays, *args)

    def scale_(arrays: Any, factors: Any, *args: Any) -> Any:
        fs = [factors] * len(arrays) if isinstance(factors, float) else list(factors)
        written.append(sum(a.nbytes for a, f in zip(arrays, fs) if f != 1.0))
        return real_scale(arrays, factors, *args)

    monkeypatch.setattr(ext, "norms", norms)
    monkeypatch.setattr(ext, "scale_", scale_)
    c = [fc.AdaptiveGradClip(0.01), fc.ZClip(warmup_steps=2), fc.AutoClip(), fc.AutoClip(global_threshold=True),
         fc.AdaGC(warmup_steps=2)][ci]  # fmt: skip
    for t in (0, 1, 14, 15):
        grads = fresh(t)
        nbytes = sum(g.nbytes for g in grads)
        read.clear()
        written.clear()
        c.clip([(np.ones(g.shape, np.float32), g) for g in grads])
        assert read == ([nbytes, nbytes] if ci == 0 else [nbytes]), t
        assert sum(written) <= nbytes and len([w for w in written if w]) <= 1, (t, written)


def test_docstring_examples() -> None:
    import doctest

    import fastclip.adaptive
    import fastclip.skip

    for module in (fastclip.adaptive, fastclip.skip):
        result = doctest.testmod(module)
        assert result.failed == 0 and result.attempted > 0
