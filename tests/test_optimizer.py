"""Optimizers (fastclip.optimizer) against real Paddle trajectories and float64 NumPy references.

- ``tests/data/paddle_optimizer_golden.json`` (``scripts/paddle_golden.py``, Paddle 3.3.1): six
  steps of every optimizer, with and without weight decay, under every clip, with ParamAttr
  learning rates, parameter groups and None gradients; float32 trajectories must match within
  1e-5 relative.
- Independent float64 NumPy implementations of each update rule (textbook forms, not the kernel's
  operation order) checked with hypothesis over random shapes and hyperparameters.
- Errors leave every parameter, gradient and state bit-identical; results do not depend on the
  thread count.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
from typing import Any

import fastclip as fc
import numpy as np
import pytest
from fastclip import _fastclip
from fastclip import optimizer as optim
from hypothesis import given, settings
from hypothesis import strategies as st

GOLDEN = json.loads((pathlib.Path(__file__).parent / "data" / "paddle_optimizer_golden.json").read_text())


def _clip(spec: Any) -> Any:
    if spec is None:
        return None
    kind, v = spec
    return {"value": fc.ClipGradByValue, "norm": fc.ClipGradByNorm, "global": fc.ClipGradByGlobalNorm}[kind](v)


def _run_golden(case: dict[str, Any]) -> list[list[np.ndarray]]:
    """Replay one golden case with fastclip; the parameter values after each step."""
    g = GOLDEN
    lrs = case.get("param_lr", [1.0] * len(g["shapes"]))
    params = [
        fc.Parameter(np.array(v, np.float32).reshape(s), need_clip=nc, learning_rate=lr)
        for v, s, nc, lr in zip(g["init"], g["shapes"], g["need_clip"], lrs)
    ]
    parameters: Any = params
    if "groups" in case:
        parameters = []
        for grp in case["groups"]:
            d = {k: v for k, v in grp.items() if k not in ("params", "grad_clip")}
            d["params"] = [params[i] for i in grp["params"]]
            if "grad_clip" in grp:
                d["grad_clip"] = _clip(grp["grad_clip"])
            parameters.append(d)
    opt = getattr(optim, case["optimizer"])(parameters=parameters, grad_clip=_clip(case["grad_clip"]), **case["kwargs"])
    absent = {int(k): v for k, v in case.get("absent", {}).items()}
    out = []
    for t in range(g["steps"]):
        for i, p in enumerate(params):
            p.grad = None if i in absent.get(t, []) else np.array(g["grads"][t][i], np.float32).reshape(p.shape)
        opt.step()
        out.append([p.value.copy() for p in params])
    return out


def _rel_err(got: np.ndarray, ref: np.ndarray) -> float:
    ref = np.asarray(ref, np.float64)
    return float(np.max(np.abs(got.ravel().astype(np.float64) - ref) / np.maximum(np.abs(ref), 1e-30)))


@pytest.mark.parametrize("case", GOLDEN["cases"], ids=[c["name"] for c in GOLDEN["cases"]])
def test_trajectory_matches_paddle(case: dict[str, Any]) -> None:
    got = _run_golden(case)
    for t, (step_got, step_ref) in enumerate(zip(got, case["trajectory"])):
        for i, (a, ref) in enumerate(zip(step_got, step_ref)):
            assert a.dtype == np.float32
            assert _rel_err(a, ref) <= 1e-5, (case["name"], t, i)


def test_golden_covers_what_it_claims() -> None:
    names = {c["name"] for c in GOLDEN["cases"]}
    for opt in ("sgd", "sgd_wd", "momentum", "momentum_wd", "nesterov", "nesterov_wd", "adam", "adam_wd", "adamw"):
        for clip in ("noclip", "value", "norm", "global"):
            assert f"{opt}/{clip}" in names
    assert any(n.startswith("groups/") for n in names)
    assert GOLDEN["steps"] == 6 and GOLDEN["paddle_version"].startswith("3.")
    # Clipping matters in the data: the same optimizer under different clips ends elsewhere.
    by = {c["name"]: c["trajectory"][-1][0] for c in GOLDEN["cases"]}
    assert by["adam/noclip"] != by["adam/global"] and by["sgd/value"] != by["sgd/norm"]


# -- float64 NumPy references (independent of the kernels' operation order) ----------------------


def _ref_clip(grads: list[np.ndarray], need_clip: list[bool], clip: Any) -> list[np.ndarray]:
    if clip is None:
        return grads
    kind, c = clip
    out = []
    if kind == "global":
        norm = np.sqrt(sum(float(np.sum(g * g)) for g, nc in zip(grads, need_clip) if nc))
        scale = c / max(norm, c)
        return [g * scale if nc else g for g, nc in zip(grads, need_clip)]
    for g, nc in zip(grads, need_clip):
        if not nc:
            out.append(g)
        elif kind == "value":
            out.append(np.clip(g, -c, c))
        else:
            n = np.sqrt(np.sum(g * g))
            out.append(g * (c / n) if n > c else g)
    return out


class RefOptimizer:
    """Textbook float64 forms of Paddle's rules (bias-corrected Adam with eps added to sqrt(v_hat))."""

    def __init__(self, kind: str, lr: float, wd: float, hyper: dict[str, Any]) -> None:
        self.kind, self.lr, self.wd, self.h = kind, lr, wd, hyper
        self.state: dict[int, dict[str, Any]] = {}

    def step(self, i: int, p: np.ndarray, g: np.ndarray) -> np.ndarray:
        s = self.state.setdefault(i, {"v": np.zeros_like(p), "m": np.zeros_like(p), "u": np.zeros_like(p), "t": 0})
        lr, wd, h = self.lr, self.wd, self.h
        if self.kind == "SGD":
            return p - lr * (g + wd * p)
        if self.kind == "Momentum":
            gd = g + wd * p
            s["v"] = h["momentum"] * s["v"] + gd
            return p - lr * (gd + h["momentum"] * s["v"] if h["use_nesterov"] else s["v"])
        s["t"] += 1
        if self.kind == "AdamW":
            p, gd = p * (1 - lr * wd), g
        else:
            gd = g + wd * p
        b1, b2 = h["beta1"], h["beta2"]
        s["m"] = b1 * s["m"] + (1 - b1) * gd
        s["u"] = b2 * s["u"] + (1 - b2) * gd**2
        m_hat = s["m"] / (1 - b1 ** s["t"])
        v_hat = s["u"] / (1 - b2 ** s["t"])
        return p - lr * m_hat / (np.sqrt(v_hat) + h["epsilon"])


_SHAPES = st.lists(st.one_of(st.tuples(st.integers(0, 9)), st.tuples(st.integers(1, 4), st.integers(1, 5))), max_size=4)


@st.composite
def _setups(draw: Any) -> dict[str, Any]:
    kind = draw(st.sampled_from(["SGD", "Momentum", "Adam", "AdamW"]))
    hyper: dict[str, Any] = {}
    if kind == "Momentum":
        hyper = {"momentum": draw(st.floats(0.0, 0.99)), "use_nesterov": draw(st.booleans())}
    elif kind in ("Adam", "AdamW"):
        hyper = {
            "beta1": draw(st.floats(0.0, 0.99)),
            "beta2": draw(st.floats(0.0, 0.9999)),
            "epsilon": draw(st.floats(1e-8, 1e-2)),
        }
    return {
        "kind": kind,
        "hyper": hyper,
        "lr": draw(st.floats(0.0, 1.0)),
        "wd": draw(st.sampled_from([0.0, 0.0, 0.01, 0.3])),
        "clip": draw(st.sampled_from([None, ["value", 0.5], ["norm", 1.0], ["global", 2.0]])),
        "shapes": draw(_SHAPES),
        "seed": draw(st.integers(0, 2**32 - 1)),
        "steps": draw(st.integers(1, 3)),
        "lr_mult": draw(st.sampled_from([1.0, 0.5, 3.0])),
    }


@settings(max_examples=60, deadline=None)
@given(_setups())
def test_rules_match_float64_reference(setup: dict[str, Any]) -> None:
    rng = np.random.default_rng(setup["seed"])
    shapes = setup["shapes"]
    need_clip = [bool(rng.integers(0, 4)) for _ in shapes]
    lr_mult = [setup["lr_mult"] if i == 0 else 1.0 for i in range(len(shapes))]
    values = [rng.normal(0, 2, s) for s in shapes]
    params = [fc.Parameter(v.copy(), need_clip=nc, learning_rate=m) for v, nc, m in zip(values, need_clip, lr_mult)]
    kind, wd = setup["kind"], setup["wd"]
    kwargs: dict[str, Any] = dict(setup["hyper"])
    if kind == "AdamW" or wd:
        kwargs["weight_decay"] = wd
    opt = getattr(optim, kind)(setup["lr"], parameters=params, grad_clip=_clip(setup["clip"]), **kwargs)
    refs = [RefOptimizer(kind, setup["lr"] * m, wd, setup["hyper"]) for m in lr_mult]
    for _ in range(setup["steps"]):
        grads = [rng.normal(0, 3, s) for s in shapes]
        for p, g in zip(params, grads):
            p.grad = g.copy()
        opt.step()
        clipped = _ref_clip(grads, need_clip, setup["clip"])
        values = [r.step(i, v, g) for i, (r, v, g) in enumerate(zip(refs, values, clipped))]
        for p, v in zip(params, values):
            np.testing.assert_allclose(p.value, v, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("kind", ["SGD", "Momentum", "Adam", "AdamW"])
def test_float32_follows_the_float64_reference(kind: str) -> None:
    rng = np.random.default_rng(7)
    v0 = rng.normal(0, 1, (50, 20))
    p = fc.Parameter(v0.astype(np.float32))
    hyper = {"Momentum": {"momentum": 0.9, "use_nesterov": True}, "SGD": {}}.get(
        kind, {"beta1": 0.9, "beta2": 0.999, "epsilon": 1e-8}
    )
    opt = getattr(optim, kind)(0.01, parameters=[p], weight_decay=0.05, **hyper)
    ref, v = RefOptimizer(kind, 0.01, 0.05, hyper), p.value.astype(np.float64)
    for _ in range(4):
        g = rng.normal(0, 1, v0.shape).astype(np.float32)
        p.grad = g
        opt.step()
        v = ref.step(0, v, g.astype(np.float64))
    np.testing.assert_allclose(p.value, v, rtol=1e-5, atol=1e-6)


# -- Paddle's documented examples (paddle-semantics.md section 6) --------------------------------


def _one(value: list[float], grad: list[float], **kw: Any) -> fc.Parameter:
    p = fc.Parameter(np.array(value, np.float32), **kw)
    p.grad = np.array(grad, np.float32)
    return p


@pytest.mark.parametrize(
    ("cls", "kwargs", "expected"),
    [
        (optim.SGD, {}, [4.4, -0.8]),
        (optim.Momentum, {}, [4.4, -0.8]),
        (optim.Adam, {}, [9.0, -1.0]),
    ],
)
def test_clip_happens_before_weight_decay(cls: Any, kwargs: dict[str, Any], expected: list[float]) -> None:
    p = _one([10.0, 0.0], [3.0, 4.0])
    cls(1.0, parameters=[p], weight_decay=0.5, grad_clip=fc.ClipGradByGlobalNorm(1.0), **kwargs).step()
    np.testing.assert_allclose(p.value, expected, rtol=1e-6)


def test_need_clip_false_is_applied_unclipped() -> None:
    a = _one([0.0, 0.0], [3.0, 4.0])
    b = _one([0.0], [100.0], need_clip=False)
    optim.SGD(1.0, parameters=[a, b], grad_clip=fc.ClipGradByGlobalNorm(1.0)).step()
    np.testing.assert_allclose(a.value, [-0.6, -0.8], rtol=1e-6)
    assert b.value[0] == -100.0


def test_one_global_norm_per_group() -> None:
    a = _one([0.0, 0.0], [3.0, 4.0])
    b = _one([0.0, 0.0], [6.0, 8.0])
    opt = optim.SGD(1.0, parameters=[{"params": [a]}, {"params": [b]}], grad_clip=fc.ClipGradByGlobalNorm(1.0))
    opt.step()
    np.testing.assert_allclose(a.value, [-0.6, -0.8], rtol=1e-6)
    np.testing.assert_allclose(b.value, [-0.6, -0.8], rtol=1e-6)
    # One group: one shared norm (|(3,4,6,8)| = sqrt(125)).
    c, d = _one([0.0, 0.0], [3.0, 4.0]), _one([0.0, 0.0], [6.0, 8.0])
    optim.SGD(1.0, parameters=[c, d], grad_clip=fc.ClipGradByGlobalNorm(1.0)).step()
    np.testing.assert_allclose(np.concatenate([c.value, d.value]), -np.array([3, 4, 6, 8]) / np.sqrt(125), rtol=1e-6)


def test_group_settings() -> None:
    a = _one([1.0, 1.0], [1.0, 1.0], learning_rate=4.0)
    b = _one([1.0, 1.0], [10.0, -10.0])
    opt = optim.SGD(
        0.1,
        parameters=[
            {"params": a, "learning_rate": 0.5, "weight_decay": 1.0},
            {"params": [b], "grad_clip": fc.ClipGradByValue(2.0)},
        ],
        weight_decay=0.0,
    )
    opt.step()
    # Group lr replaces the parameter's own multiplier (as Paddle): lr = 0.1 * 0.5.
    np.testing.assert_allclose(a.value, 1.0 - 0.05 * (1.0 + 1.0), rtol=1e-6)
    np.testing.assert_allclose(b.value, [1.0 - 0.1 * 2.0, 1.0 + 0.1 * 2.0], rtol=1e-6)
    # Momentum hyperparameters per group.
    c, d = _one([0.0], [1.0]), _one([0.0], [1.0])
    opt2 = optim.Momentum(1.0, momentum=0.9, parameters=[{"params": [c]}, {"params": [d], "momentum": 0.0}])
    opt2.step()
    opt2.step()
    assert c.value[0] == pytest.approx(-(1.0 + 1.9)) and d.value[0] == pytest.approx(-2.0)


def test_skips_untrainable_and_none_grads_and_never_writes_grads() -> None:
    a = _one([1.0, 2.0], [0.5, 0.5])
    frozen = _one([5.0], [1.0], trainable=False)
    none = fc.Parameter(np.array([7.0], np.float32))
    g_before = a.grad.copy()
    opt = optim.Adam(0.1, parameters=[a, frozen, none], weight_decay=0.3)
    opt.step()
    assert frozen.value[0] == 5.0 and none.value[0] == 7.0
    assert np.array_equal(a.grad, g_before), "the L2 term must not be added into the caller's grad"
    assert not np.array_equal(a.value, [1.0, 2.0])


def test_clear_grad() -> None:
    a, b = _one([1.0], [3.0]), _one([1.0], [4.0], trainable=False)
    g = a.grad
    opt = optim.SGD(0.1, parameters=[a, b])
    opt.clear_grad()
    assert a.grad is g and g[0] == 0.0  # zeroed in place, Paddle's default
    assert b.grad is not None and b.grad[0] == 4.0  # frozen parameters are left alone
    opt.clear_grad(set_to_zero=False)
    assert a.grad is None
    with pytest.raises(TypeError, match="set_to_zero"):
        opt.clear_grad(set_to_zero=1)  # type: ignore[arg-type]


def test_lr_accessors() -> None:
    p = _one([1.0], [1.0])
    opt = optim.SGD(0.5, parameters=[p])
    assert opt.get_lr() == 0.5
    opt.set_lr(2)
    assert opt.get_lr() == 2.0
    for bad, exc in [(-1.0, ValueError), (float("nan"), ValueError), (float("inf"), ValueError), ("1", TypeError)]:
        with pytest.raises(exc, match="value"):
            opt.set_lr(bad)
    assert opt.get_lr() == 2.0
    opt.step()
    assert p.value[0] == -1.0


# -- errors: raised before anything is touched ------------------------------------------------------


@pytest.mark.parametrize(
    ("cls", "kwargs", "exc", "match"),
    [
        (optim.SGD, {"learning_rate": -0.1}, ValueError, "learning_rate"),
        (optim.SGD, {"learning_rate": float("nan")}, ValueError, "learning_rate"),
        (optim.SGD, {"learning_rate": "0.1"}, TypeError, "learning_rate"),
        (optim.SGD, {"learning_rate": None}, TypeError, "learning_rate"),
        (optim.SGD, {"grad_clip": 1.0}, TypeError, "grad_clip"),
        (optim.SGD, {"grad_clip": fc.clip_grad_norm_}, TypeError, "grad_clip"),
        (optim.SGD, {"weight_decay": -0.1}, ValueError, "weight_decay"),
        (optim.SGD, {"weight_decay": "0.1"}, TypeError, "weight_decay"),
        (optim.Momentum, {"momentum": float("inf")}, ValueError, "momentum"),
        (optim.Momentum, {"momentum": None}, TypeError, "momentum"),
        (optim.Momentum, {"use_nesterov": 1}, TypeError, "use_nesterov"),
        (optim.Adam, {"beta1": 1.0}, ValueError, "beta1"),
        (optim.Adam, {"beta2": -0.1}, ValueError, "beta2"),
        (optim.Adam, {"epsilon": -1e-8}, ValueError, "epsilon"),
        (optim.AdamW, {"weight_decay": None}, TypeError, "weight_decay"),
    ],
)
def test_bad_arguments(cls: Any, kwargs: dict[str, Any], exc: type, match: str) -> None:
    p = _one([1.0], [1.0])
    with pytest.raises(exc, match=match):
        cls(parameters=[p], **kwargs)
    assert p.value[0] == 1.0 and p.grad[0] == 1.0


@pytest.mark.parametrize(
    ("parameters", "exc", "match"),
    [
        (None, TypeError, "parameters"),
        ({"params": []}, TypeError, "dict"),
        ("abc", TypeError, "parameters"),
        ([1.0], TypeError, r"parameters\[0\]"),
        ([{"params": []}, "x"], TypeError, "dict"),
        ([{"params": [], "lr": 0.1}], ValueError, "'lr'"),
        ([{"learning_rate": 0.1}], ValueError, "'params'"),
        ([{"params": [], "learning_rate": -1.0}], ValueError, "learning_rate"),
        ([{"params": [], "grad_clip": "x"}], TypeError, "grad_clip"),
    ],
)
def test_bad_parameters(parameters: Any, exc: type, match: str) -> None:
    with pytest.raises(exc, match=match):
        optim.Adam(parameters=parameters)


def test_bad_parameter_lists() -> None:
    p = _one([1.0], [1.0])
    with pytest.raises(TypeError, match="single"):
        optim.SGD(parameters=p)
    with pytest.raises(TypeError, match="set"):
        optim.SGD(parameters={p})
    with pytest.raises(ValueError, match="only once"):
        optim.SGD(parameters=[p, p])
    with pytest.raises(ValueError, match="only once"):
        optim.SGD(parameters=[{"params": [p]}, {"params": [p]}])
    with pytest.raises(TypeError, match="float16"):
        optim.SGD(parameters=[fc.Parameter(np.zeros(2, np.float16))])
    with pytest.raises(ValueError, match="'momentum'"):
        optim.SGD(parameters=[{"params": [p], "momentum": 0.9}])


def _snapshot(objs: list[np.ndarray]) -> list[bytes]:
    return [a.tobytes() for a in objs]


@pytest.mark.parametrize("cls", [optim.SGD, optim.Momentum, optim.Adam, optim.AdamW])
def test_bad_grad_leaves_everything_bit_identical(cls: Any) -> None:
    rng = np.random.default_rng(3)
    ps = [fc.Parameter(rng.normal(size=s).astype(np.float32)) for s in [(300,), (4, 5), (7,)]]
    for p in ps:
        p.grad = rng.normal(size=p.shape).astype(np.float32) * 10
    opt = cls(0.1, parameters=[{"params": ps[:2]}, {"params": ps[2:]}], grad_clip=fc.ClipGradByGlobalNorm(1.0))
    opt.step()  # states exist now
    for p in ps:
        p.grad = rng.normal(size=p.shape).astype(np.float32) * 10

    def everything() -> list[bytes]:
        states = [a for _, s in opt._state.values() for a in s.values() if isinstance(a, np.ndarray)]
        pows = [np.asarray(x) for _, s in opt._state.values() for x in s.get("pows", [])]
        return _snapshot([p.value for p in ps] + [p.grad for p in ps] + states + pows)

    before = everything()
    bad = ps[2].grad
    ps[2].grad = bad.astype(np.float64)  # a grad whose dtype differs from its parameter's
    with pytest.raises(TypeError, match="dtype"):
        opt.step()
    ps[2].grad = bad
    assert everything() == before
    ps[2].grad = ps[2].value  # a grad that is the parameter itself
    with pytest.raises(ValueError, match="shares memory"):
        opt.step()
    ps[2].grad = bad
    assert everything() == before
    opt.step()
    assert everything() != before


def test_binding_checks_leave_buffers_bit_identical() -> None:
    rng = np.random.default_rng(5)

    def fresh() -> tuple[list[np.ndarray], ...]:
        p = [rng.normal(size=n) for n in (5, 300_000, 3)]
        return p, [rng.normal(size=a.shape) for a in p], [np.zeros_like(a) for a in p], [np.ones_like(a) for a in p]

    cases: list[tuple[Any, type, str]] = []
    p, g, m1, m2 = fresh()
    g[2] = g[2][:2].copy()
    cases.append(((p, g, m1, m2), ValueError, r"grads\[2\] has shape"))
    p, g, m1, m2 = fresh()
    m2[2] = m2[2].astype(np.float32)
    cases.append(((p, g, m1, m2), TypeError, r"moment2\[2\] has dtype float32"))
    p, g, m1, m2 = fresh()
    p[2].flags.writeable = False
    cases.append(((p, g, m1, m2), ValueError, r"params\[2\] is read-only"))
    p, g, m1, m2 = fresh()
    m1[2] = m2[0][:3]
    cases.append(
        ((p, g, m1, m2), ValueError, r"moment1\[2\] and moment2\[0\] share memory|moment2\[0\] and moment1\[2\]")
    )
    p, g, m1, m2 = fresh()
    cases.append(((p, g, m1, m2[:2]), ValueError, "moment2"))
    p, g, m1, m2 = fresh()
    p[2] = p[2].astype(np.float16)
    cases.append(((p, g, m1, m2), TypeError, "float16"))
    for (p, g, m1, m2), exc, match in cases:
        before = _snapshot(p + g + m1 + m2)
        with pytest.raises(exc, match=match):
            _fastclip.adam_(p, g, m1, m2, 0.1, 0.9, 0.999, 1e-8, 0.9, 0.999, 0.01, False)
        assert _snapshot(p + g + m1 + m2) == before
    p, g, _, _ = fresh()
    before = _snapshot(p + g)
    with pytest.raises(ValueError, match="lr has 2 values for 3"):
        _fastclip.sgd_(p, g, [0.1, 0.2])
    with pytest.raises(ValueError, match=r"velocities\[0\] and params\[0\] share memory|params\[0\] and velocities"):
        _fastclip.momentum_(p, g, [p[0], np.zeros_like(p[1]), np.zeros_like(p[2])], 0.1, 0.9)
    assert _snapshot(p + g) == before


def test_strided_parameters_are_updated_in_place() -> None:
    base = np.arange(12, dtype=np.float64).reshape(3, 4)
    view = base.T  # not contiguous
    p = fc.Parameter(view)
    p.grad = np.ones((4, 3))
    optim.SGD(0.5, parameters=[p]).step()
    np.testing.assert_array_equal(base, np.arange(12).reshape(3, 4) - 0.5)


_THREAD_SCRIPT = """
import hashlib, numpy as np, fastclip as fc
rng = np.random.default_rng(11)
ps = [fc.Parameter(rng.normal(size=n).astype(np.float32)) for n in (300_000, 70_001, 5, 40_000)]
opts = [fc.optimizer.AdamW(0.01, parameters=ps[:2], grad_clip=fc.ClipGradByGlobalNorm(1.0)),
        fc.optimizer.Momentum(0.01, parameters=ps[2:], use_nesterov=True, weight_decay=0.1)]
for _ in range(3):
    for p in ps:
        p.grad = rng.normal(size=p.shape).astype(np.float32)
    for o in opts:
        o.step()
print(hashlib.sha256(b"".join(p.value.tobytes() for p in ps)).hexdigest())
"""


def test_results_do_not_depend_on_the_thread_count() -> None:
    assert 370_000 > _fastclip.PARALLEL_MIN  # the first optimizer takes the parallel path
    digests = []
    for n in ("1", "2"):
        env = dict(os.environ, RAYON_NUM_THREADS=n)
        r = subprocess.run([sys.executable, "-c", _THREAD_SCRIPT], env=env, capture_output=True, text=True, check=True)
        digests.append(r.stdout.strip())
    assert len(digests[0]) == 64 and digests[0] == digests[1]
