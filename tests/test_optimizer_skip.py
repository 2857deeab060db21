"""Optimizers honour skip policies: a skipped step writes nothing (grads, values, states, counts),
and the decision is taken for every group before any group is clipped or updated."""

from __future__ import annotations

import fastclip as fc
import numpy as np
import pytest

OPTIMIZERS = [
    lambda ps, clip: fc.optimizer.SGD(0.1, parameters=ps, grad_clip=clip),
    lambda ps, clip: fc.optimizer.Momentum(0.1, parameters=ps, grad_clip=clip),
    lambda ps, clip: fc.optimizer.Adam(0.1, parameters=ps, grad_clip=clip),
    lambda ps, clip: fc.optimizer.AdamW(0.1, parameters=ps, grad_clip=clip),
]


def _params(rng, dtype=np.float32):
    shapes = [(4, 3), (5,), (2, 2)]
    ps = [fc.Parameter(rng.standard_normal(s).astype(dtype), name=f"p{i}") for i, s in enumerate(shapes)]
    for p in ps:
        p.grad = rng.standard_normal(p.shape).astype(dtype)
    return ps


def _snapshot(opt, ps):
    state = {k: {n: (a.tobytes() if isinstance(a, np.ndarray) else repr(a)) for n, a in st.items()}
             for k, (_, st) in opt._state.items()}  # fmt: skip
    return [p.value.tobytes() for p in ps], [p.grad.tobytes() for p in ps], state


@pytest.mark.parametrize("make", OPTIMIZERS)
@pytest.mark.parametrize("policy", ["nonfinite", "above"])
def test_a_skipped_step_writes_nothing(make, policy):
    rng = np.random.default_rng(1)
    ps = _params(rng)
    clip = fc.SkipNonFinite(fc.ClipGradByGlobalNorm(1.0)) if policy == "nonfinite" else fc.SkipAbove(20.0)
    opt = make(ps, clip)
    opt.step()  # a taken step first, so that state exists
    assert not opt.last_step_skipped
    for p in ps:
        p.grad = rng.standard_normal(p.shape).astype(np.float32)
    if policy == "nonfinite":
        ps[1].grad[2] = np.nan
    else:
        ps[0].grad *= 100.0
    before = _snapshot(opt, ps)
    opt.step()
    assert opt.last_step_skipped and opt.skipped_steps == 1
    assert _snapshot(opt, ps) == before
    assert clip.last_stats.skipped
    if policy == "nonfinite":
        assert (clip.skipped, clip.consecutive, clip.total_skipped) == (True, 1, 1)


def test_one_group_skipping_skips_every_group():
    rng = np.random.default_rng(2)
    a, b = _params(rng), _params(rng)
    b[0].grad[0, 0] = np.inf
    guard = fc.SkipNonFinite()
    opt = fc.optimizer.AdamW(
        0.01, parameters=[{"params": a, "grad_clip": fc.ClipGradByGlobalNorm(0.1)}, {"params": b, "grad_clip": guard}]
    )
    before = _snapshot(opt, a + b)
    opt.step()
    assert opt.last_step_skipped
    assert _snapshot(opt, a + b) == before  # group 0's grads were not clipped, nothing updated
    b[0].grad[0, 0] = 1.0
    opt.step()
    assert not opt.last_step_skipped and guard.consecutive == 0
    assert all(not np.array_equal(np.frombuffer(v, np.float32), p.value.ravel()) for v, p in zip(before[0], a + b))


def test_a_taken_step_equals_the_inner_clip_then_the_update():
    rng = np.random.default_rng(3)
    ps = _params(rng, np.float64)
    ref = [fc.Parameter(p.value.copy(), name=p.name) for p in ps]
    for r, p in zip(ref, ps):
        r.grad = p.grad.copy()
    fc.optimizer.Adam(0.05, parameters=ps, grad_clip=fc.SkipAbove(1e9, inner=fc.ClipGradByGlobalNorm(0.5))).step()
    fc.optimizer.Adam(0.05, parameters=ref, grad_clip=fc.ClipGradByGlobalNorm(0.5)).step()
    for p, r in zip(ps, ref):
        assert p.value.tobytes() == r.value.tobytes()
        assert p.grad.tobytes() == r.grad.tobytes()


def test_adaptive_clippers_as_grad_clip_clip_and_update():
    rng = np.random.default_rng(4)
    for clip in (fc.ZClip(warmup_steps=2), fc.AutoClip(), fc.AdaGC(warmup_steps=2), fc.AdaptiveGradClip()):
        ps = _params(rng, np.float64)
        opt = fc.optimizer.SGD(0.1, parameters=ps, grad_clip=clip)
        for _ in range(4):
            for p in ps:
                p.grad = rng.standard_normal(p.shape) * 10.0
            v0 = [p.value.copy() for p in ps]
            g = [p.grad.copy() for p in ps]
            opt.step()
            assert not opt.last_step_skipped
            # SGD: p <- p - lr * clipped g, and the clipped grad is left in p.grad
            for p, v, g0 in zip(ps, v0, g):
                np.testing.assert_allclose(p.value, v - 0.1 * p.grad, rtol=1e-12, atol=1e-15)
                assert np.all(np.abs(p.grad) <= np.abs(g0) + 1e-12)
