"""SkipNonFinite, SkipAbove and the two-phase protocol (``prepare`` reads, ``plan.apply()`` writes):
against optax's ``apply_if_finite`` (golden counters), the protocol's own guarantees, and the
composition of a skip policy with the adaptive clippers.

Named departure: ``max_consecutive_raises``: where optax's ``apply_if_finite`` gives up after
``max_consecutive_errors`` skips in a row and applies the non-finite update, fastclip raises
``RuntimeError`` from ``prepare`` and changes nothing.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import fastclip as fc
import fastclip._fastclip as ext
import numpy as np
import pytest
from fastclip.skip import ClipPlan, plan_of
from hypothesis import given, settings
from hypothesis import strategies as st
from refs import same_bits

GOLDEN = json.loads((Path(__file__).parent / "data" / "adaptive_golden.json").read_text())
META = GOLDEN["meta"]
SHAPES = [tuple(s) for s in META["shapes"]]
_NONFINITE = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}


def dec(v: Any) -> Any:
    if isinstance(v, list):
        return [dec(x) for x in v]
    return _NONFINITE.get(v, v) if isinstance(v, str) else v


SEQ = [[np.array(dec(f), np.float64).astype(np.float32).reshape(s) for f, s in zip(step, SHAPES)]
       for step in GOLDEN["sequence"]]  # fmt: skip


def fresh(t: int) -> list[np.ndarray]:
    return [a.copy() for a in SEQ[t]]


def named(grads: list[np.ndarray], prefix: str) -> list[tuple[fc.Parameter, np.ndarray]]:
    pairs = []
    for k, g in enumerate(grads):
        p = fc.Parameter(np.zeros(g.shape, g.dtype), name=f"{prefix}{k}")
        p.grad = g
        pairs.append((p, g))
    return pairs


def all_clippers() -> list[Any]:
    return [
        fc.AdaptiveGradClip(clipping=0.01),
        fc.ZClip(warmup_steps=3),
        fc.AutoClip(history_length=5),
        fc.AutoClip(global_threshold=True),
        fc.AdaGC(warmup_steps=4),
        fc.SkipNonFinite(inner=fc.ZClip(warmup_steps=3)),
        fc.SkipAbove(1e3, inner=fc.AdaGC(warmup_steps=2)),
        fc.SkipNonFinite(inner=fc.ClipGradByGlobalNorm(1.0)),
        fc.SkipAbove(1e3),
    ]


def optimizer_step(groups: list[tuple[Any, list[tuple[Any, Any]]]]) -> list[Any] | None:
    """The protocol as an optimizer runs it (module doc of fastclip.skip): None when skipped."""
    plans = [plan_of(clip, pairs) for clip, pairs in groups]
    if any(p.skip for p in plans):
        for p in plans:
            if p.skip:
                p.apply()
            else:
                p.discard()
        return None
    return [p.apply() for p in plans]


# ------------------------------------------------------------------------------- the protocol


@pytest.mark.parametrize("ci", range(9))
def test_prepare_reads_only(ci: int) -> None:
    """After prepare: grads bit-identical, state and last_stats unchanged; apply then commits."""
    c = all_clippers()[ci]
    for t in range(5):
        c.clip(named(fresh(t), "p"))
    for t in (5, 14, 36):  # a plain step, a spike, a NaN step
        pairs = named(fresh(t), "p")
        before = [g.copy() for _, g in pairs]
        state, stats = repr(c.state_dict()), c.last_stats
        plan = c.prepare(pairs)
        assert isinstance(plan, ClipPlan)
        assert all(same_bits(g, b) for (_, g), b in zip(pairs, before))
        assert repr(c.state_dict()) == state and c.last_stats is stats
        out = plan.apply()
        assert [p for p, _ in out] == [p for p, _ in pairs]
        assert c.last_stats is not stats
        assert c.last_stats.skipped == plan.skip


@pytest.mark.parametrize("ci", range(9))
def test_prepare_raises_every_buffer_error(ci: int) -> None:
    """A plan that exists can be applied: read-only and shared buffers are refused by prepare, so a
    later group's error can never leave an earlier group's writes half-done."""
    c = all_clippers()[ci]
    if ci == 8:
        return  # SkipAbove without an inner clipper writes nothing: read-only grads are fine
    ro = fresh(5)
    ro[1].flags.writeable = False
    with pytest.raises(ValueError, match=r"params_grads\[1\] is read-only"):
        c.prepare(named(ro, "p"))
    g = fresh(5)
    with pytest.raises(ValueError, match="share memory"):
        c.prepare(named([g[0], g[1], g[0]], "p"))


@pytest.mark.parametrize("ci", range(9))
def test_discard_commits_nothing(ci: int) -> None:
    c = all_clippers()[ci]
    for t in range(6):
        c.clip(named(fresh(t), "p"))
    pairs = named(fresh(14), "p")
    before = [g.copy() for _, g in pairs]
    state = repr(c.state_dict())
    out = c.prepare(pairs).discard()
    assert [g for _, g in out] == [g for _, g in pairs]
    assert all(same_bits(g, b) for (_, g), b in zip(pairs, before))
    assert repr(c.state_dict()) == state
    assert c.last_stats.skipped is True


def test_a_plan_is_used_once_and_goes_stale() -> None:
    z = fc.ZClip(warmup_steps=2)
    plan = z.prepare(named(fresh(0), "p"))
    plan.apply()
    with pytest.raises(RuntimeError, match="already applied"):
        plan.apply()
    with pytest.raises(RuntimeError, match="already applied"):
        plan.discard()
    plan = z.prepare(named(fresh(1), "p"))
    z.load_state_dict(z.state_dict())
    with pytest.raises(RuntimeError, match="replaced"):
        plan.apply()


def test_clip_is_prepare_then_apply() -> None:
    a, b = fc.AutoClip(history_length=4), fc.AutoClip(history_length=4)
    for t in range(12):
        ga, gb = fresh(t), fresh(t)
        a.clip([(None, g) for g in ga])
        b.prepare([(None, g) for g in gb]).apply()
        assert all(same_bits(x, y) for x, y in zip(ga, gb))
    assert a.state_dict() == b.state_dict()


def test_skip_in_one_group_leaves_every_group_untouched() -> None:
    """Group 1 (SkipNonFinite around ZClip) has a NaN; group 2 (AutoClip) is finite: nothing is
    written anywhere, AutoClip's history and ZClip's statistics stay, only the skip counters move."""
    guard = fc.SkipNonFinite(inner=fc.ZClip(warmup_steps=2))
    auto = fc.AutoClip(history_length=3)
    for t in range(4):
        if t == 3:
            continue
        assert optimizer_step([(guard, named(fresh(t), "a")), (auto, named(fresh(t), "b"))]) is not None
    g1, g2 = named(fresh(36), "a"), named(fresh(14), "b")
    before = [g.copy() for _, g in g1 + g2]
    zstate, astate = repr(guard.inner.state_dict()), repr(auto.state_dict())
    assert optimizer_step([(guard, g1), (auto, g2)]) is None
    assert all(same_bits(g, b) for (_, g), b in zip(g1 + g2, before))
    assert repr(guard.inner.state_dict()) == zstate and repr(auto.state_dict()) == astate
    assert (guard.skipped, guard.consecutive, guard.total_skipped) == (True, 1, 1)
    assert auto.last_stats.skipped and guard.last_stats.skipped
    # the next finite step goes through and resets the run
    assert optimizer_step([(guard, named(fresh(5), "a")), (auto, named(fresh(5), "b"))]) is not None
    assert (guard.skipped, guard.consecutive, guard.total_skipped) == (False, 0, 1)


def test_shared_per_tensor_instance_two_phase_equals_sequential() -> None:
    """One AdaGC serving two groups of named parameters: the groups' state is disjoint, so the
    two-phase step gives the same bits as clipping the groups one after the other."""
    shared_a, shared_b = fc.AdaGC(warmup_steps=3), fc.AdaGC(warmup_steps=3)
    for t in range(10):
        a1, a2 = named(fresh(t)[:2], "x"), named(fresh(t)[2:], "y")
        b1, b2 = named(fresh(t)[:2], "x"), named(fresh(t)[2:], "y")
        optimizer_step([(shared_a, a1), (shared_a, a2)])
        shared_b.clip(b1)
        shared_b.clip(b2)
        assert all(same_bits(x, y) for (_, x), (_, y) in zip(a1 + a2, b1 + b2)), t
    assert shared_a.state_dict() == shared_b.state_dict()


def test_plan_of_wraps_any_clipper() -> None:
    g = np.array([3.0, 4.0])
    plan = plan_of(fc.ClipGradByNorm(1.0), [(None, g)])
    assert not plan.skip and plan.total_norm is None
    assert np.all(g == [3.0, 4.0])
    plan.apply()
    assert np.allclose(g, [0.6, 0.8])
    h = np.array([3.0, 4.0])
    assert plan_of(None, [(None, h), (None, None)]).apply() == [(None, h)]
    with pytest.raises(TypeError, match="inner must be a ClipGradBase"):
        plan_of(object(), [])
    ro = np.ones(2)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        plan_of(fc.ClipGradByNorm(1.0), [(None, ro)])


# ------------------------------------------------------------------------------ SkipNonFinite


def test_skip_nonfinite_matches_optax_apply_if_finite() -> None:
    """Counters and decisions step by step against optax.apply_if_finite(max_consecutive_errors=2);
    ``max_consecutive_raises`` where optax gives up and applies the non-finite update."""
    gold = GOLDEN["apply_if_finite"]
    guard = fc.SkipNonFinite(max_consecutive=gold["max_consecutive_errors"])
    gave_up = 0
    for t, s in enumerate(gold["steps"]):
        g = np.array(dec(s["grad"]), np.float32)
        before = g.copy()
        if s["applied"] and not s["last_finite"]:
            gave_up += 1
            counters = (guard.skipped, guard.consecutive, guard.total_skipped)
            with pytest.raises(RuntimeError, match="max_consecutive=2"):
                guard.clip([(None, g)])
            assert (guard.skipped, guard.consecutive, guard.total_skipped) == counters
        else:
            guard.clip([(None, g)])
            assert guard.skipped == (not s["applied"]), t
            assert guard.consecutive == s["notfinite_count"], t
            assert guard.total_skipped == s["total_notfinite"] - gave_up, t
        assert same_bits(g, before)
    assert gave_up >= 2


@settings(max_examples=60, deadline=None)
@given(pattern=st.lists(st.booleans(), max_size=40), max_consecutive=st.none() | st.integers(0, 4))
def test_skip_nonfinite_counters_property(pattern: list[bool], max_consecutive: int | None) -> None:
    """Against the automaton: a finite step resets the run; a non-finite one skips and counts, or
    raises (changing nothing) when it would be skip max_consecutive + 1 in a row."""
    guard = fc.SkipNonFinite(inner=fc.ClipGradByNorm(1.0), max_consecutive=max_consecutive)
    run = total = 0
    for finite in pattern:
        g = np.array([3.0, 4.0 if finite else math.nan])
        if not finite and max_consecutive is not None and run + 1 > max_consecutive:
            with pytest.raises(RuntimeError):
                guard.clip_(g)
            assert guard.consecutive == run and guard.total_skipped == total
            continue
        guard.clip_(g)
        run = 0 if finite else run + 1
        total += not finite
        assert (guard.skipped, guard.consecutive, guard.total_skipped) == (not finite, run, total)
        assert np.allclose(g, [0.6, 0.8]) if finite else (g[0] == 3.0 and math.isnan(g[1]))


def test_skip_nonfinite_checks_need_clip_false_grads_too() -> None:
    w = fc.Parameter(np.zeros(2), need_clip=False)
    w.grad = np.array([1.0, np.inf])
    v = fc.Parameter(np.zeros(2))
    v.grad = np.array([30.0, 40.0])
    guard = fc.SkipNonFinite(inner=fc.ClipGradByGlobalNorm(1.0))
    guard([(v, v.grad), (w, w.grad)])
    assert guard.skipped and np.all(v.grad == [30.0, 40.0])
    w.grad = np.array([1.0, 2.0])
    guard([(v, v.grad), (w, w.grad)])
    assert not guard.skipped and np.allclose(v.grad, [0.6, 0.8]) and np.all(w.grad == [1.0, 2.0])
    assert isinstance(guard.last_stats, fc.ClipStats) and guard.last_stats.global_norm == 50.0


def test_max_consecutive_error_names_the_grad_and_changes_nothing() -> None:
    guard = fc.SkipNonFinite(inner=fc.ZClip(warmup_steps=2), max_consecutive=1)
    good = [np.ones(2), np.ones(3)]
    guard.clip_(good)
    guard.clip_([np.ones(2), np.array([1.0, np.nan, 1.0])])
    state = repr(guard.state_dict())
    with pytest.raises(RuntimeError, match=r"^grads\[1\] is not finite.*max_consecutive=1"):
        guard.clip_([np.ones(2), np.array([np.inf, 0.0, 0.0])])
    assert repr(guard.state_dict()) == state
    assert fc.SkipNonFinite(max_consecutive=0).prepare([(None, np.ones(1))]).skip is False
    with pytest.raises(RuntimeError):
        fc.SkipNonFinite(max_consecutive=0).prepare([(None, np.array([np.nan]))])


def test_skip_nonfinite_around_zclip_equals_the_patched_reference() -> None:
    """SkipNonFinite(ZClip) on the golden sequence: the non-finite steps are skipped (grads left as
    they were), and ZClip's statistics follow the patched zclip run on every other step."""
    case = GOLDEN["zclip"][0]
    cfg = {k: dec(v) for k, v in case["config"].items()}
    guard = fc.SkipNonFinite(inner=fc.ZClip(**cfg))
    bad = {META["steps"][k] for k in ("nan_warmup", "nan", "inf")}
    for t in range(META["steps"]["overflow"]):
        grads = fresh(t)
        guard.clip_(grads)
        want = case["steps"][t]
        assert guard.skipped == (t in bad)
        if t in bad:
            assert all(same_bits(g, s) for g, s in zip(grads, SEQ[t]))
        for got, w in ((guard.inner.mean, want["mean"]), (guard.inner.var, want["var"])):
            assert (got is None) == (w is None)
            if w is not None:
                assert got == pytest.approx(dec(w), rel=1e-6)


def test_wrapping_adds_no_norm_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    real = ext.norms

    def counting(arrays: Any, *args: Any) -> Any:
        calls.append(len(arrays))
        return real(arrays, *args)

    monkeypatch.setattr(ext, "norms", counting)
    grads = fresh(5)
    fc.SkipNonFinite(inner=fc.ZClip(warmup_steps=1)).clip_(grads)
    assert calls == [3]
    calls.clear()
    fc.SkipAbove(1e9, inner=fc.AutoClip()).clip_(grads)
    assert calls == [3]
    calls.clear()
    w = fc.Parameter(np.zeros(3), need_clip=False)
    w.grad = np.ones(3)
    fc.SkipNonFinite(inner=fc.AdaGC()).clip([(None, grads[0]), (w, w.grad)])
    assert calls == [1, 1]  # the clipped grad (AdaGC's pass), then the need_clip=False one
    calls.clear()
    fc.SkipNonFinite().clip_(grads)
    assert calls == [3]


# -------------------------------------------------------------------------------- SkipAbove


@pytest.mark.parametrize(
    "values, skipped",
    [([3.0, 4.0], False), ([6.0, 8.0], True), ([0.0, 10.0], True), ([np.nan, 1.0], True), ([np.inf, 0.0], True)],
)
def test_skip_above_threshold(values: list[float], skipped: bool) -> None:
    """Skipped unless norm < threshold (10.0): equal, above, NaN and inf skip."""
    g = np.array(values)
    before = g.copy()
    guard = fc.SkipAbove(10.0, inner=fc.ClipGradByGlobalNorm(1.0))
    n = guard.clip_(g)
    assert guard.skipped is skipped and guard.last_stats.skipped is skipped
    assert (n == math.hypot(*values)) or math.isnan(n)
    if skipped:
        assert same_bits(g, before) and guard.total_skipped == 1
    else:
        assert np.allclose(g, before / 5.0)


def test_skip_above_then_nonfinite_counters() -> None:
    guard = fc.SkipNonFinite(inner=fc.SkipAbove(100.0, inner=fc.ZClip(warmup_steps=2)))
    guard.clip_([np.array([1e3])])  # finite, but above: the inner policy skips
    assert guard.last_stats.skipped and not guard.skipped and guard.inner.skipped
    guard.clip_([np.array([np.nan])])  # both skip; each counts its own reason
    assert guard.skipped and guard.inner.skipped and guard.inner.total_skipped == 2
    guard.clip_([np.array([1.0])])
    assert not guard.skipped and not guard.inner.skipped and guard.inner.inner.buffer == (1.0,)


def test_zclip_skip_update_on_spike_is_not_a_skipped_step() -> None:
    """ZClip(skip_update_on_spike=True) keeps its statistics on a spike but clips and takes the
    step; SkipAbove skips the step itself."""
    z = fc.ZClip(warmup_steps=3, max_grad_norm=None, skip_update_on_spike=True)
    for n in (1.0, 1.1, 0.9):
        z.clip_([np.array([n])])
    mean, var = z.mean, z.var
    g = np.array([50.0])
    plan = z.prepare([(None, g)])
    assert plan.skip is False
    plan.apply()
    assert g[0] < 50.0 and z.last_stats.spike and not z.last_stats.skipped
    assert (z.mean, z.var) == (mean, var)
    h = np.array([50.0])
    assert fc.SkipAbove(10.0, inner=z).prepare([(None, h)]).skip is True


@pytest.mark.parametrize(
    "make, bad",
    [
        (fc.SkipNonFinite, {"inner": "clip"}),
        (fc.SkipNonFinite, {"max_consecutive": -1}),
        (fc.SkipNonFinite, {"max_consecutive": 1.5}),
        (fc.SkipAbove, {"threshold": 0.0}),
        (fc.SkipAbove, {"threshold": math.nan}),
        (fc.SkipAbove, {"threshold": "1"}),
    ],
)
def test_skip_constructor_errors(make: Any, bad: dict[str, Any]) -> None:
    args = {"threshold": 1.0} if make is fc.SkipAbove else {}
    args.update(bad)
    with pytest.raises((TypeError, ValueError), match=next(iter(bad))):
        make(**args)


def test_inner_state_travels_with_the_policy() -> None:
    a = fc.SkipNonFinite(inner=fc.AutoClip(history_length=3), max_consecutive=4)
    for t in range(8):
        a.clip_(fresh(t))
    s = a.state_dict()
    assert s["inner"]["kind"] == "AutoClip" and s["total_skipped"] == 1
    b = fc.SkipNonFinite(inner=fc.AutoClip(history_length=3), max_consecutive=4)
    b.load_state_dict(s)
    assert b.state_dict() == s and b.inner.state_dict() == a.inner.state_dict()
    bad = dict(s, inner={"kind": "AutoClip", "global": [math.nan]})
    with pytest.raises(ValueError):
        b.load_state_dict(dict(bad, total_skipped=7))
    assert b.state_dict() == s
    with pytest.raises(ValueError, match="must be None"):
        fc.SkipAbove(1.0).load_state_dict(dict(fc.SkipAbove(1.0).state_dict(), inner={"kind": "x"}))
