"""The fuzz harness's checker in a plain pytest run (no atheris needed): the committed corpus, a few
hundred seeded cases, proof that the checker catches wrong results, and the known issues it
tolerates, each as a strict xfail that turns red once fixed (then drop it from KNOWN_ISSUES)."""

from __future__ import annotations

import glob
import math
import os

import fastclip as fc
import fuzz_api as F
import numpy as np
import pytest

CORPUS = sorted(glob.glob(os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus", "*")))
SEEDS_PER_BLOCK = 50


@pytest.fixture(autouse=True)
def _quiet_numpy():
    with np.errstate(all="ignore"):
        yield


def _run_all(inputs, one) -> None:
    failures = []
    for x in inputs:
        try:
            one(x)
        except F.Finding as f:
            failures.append(f"{x!r}: {f}")
    assert not failures, f"{len(failures)} findings:\n\n" + "\n\n".join(failures[:5])


def _read(path: str) -> bytes:
    with open(path, "rb") as fh:
        return fh.read()


def test_the_corpus_is_committed_and_small() -> None:
    assert 5 <= len(CORPUS) <= 200
    assert sum(os.path.getsize(p) for p in CORPUS) < 64 * 1024


@pytest.mark.parametrize("block", range(4))
def test_corpus_inputs_pass_the_checker(block: int) -> None:
    _run_all([p for i, p in enumerate(CORPUS) if i % 4 == block], lambda p: F.one_input(_read(p)))


@pytest.mark.parametrize("block", range(8))
def test_seeded_cases_pass_the_checker(block: int) -> None:
    _run_all(range(block * SEEDS_PER_BLOCK, (block + 1) * SEEDS_PER_BLOCK), F.one_seed)


def test_the_seeded_cases_reach_both_outcomes_and_every_operation() -> None:
    outcomes, ops = set(), set()
    for seed in range(300):
        F._BUF_OF.clear()
        case = F.build(F.Draw(F.RandomProvider(seed)))
        ops.add(case.op)
        outcomes.add(F.check(case))
    assert {"ok", "error"} <= outcomes
    assert ops == set(F.OPS)


# -- the checker must be able to fail ------------------------------------------------------------


def _findings(seeds: range) -> set[str]:
    keys = set()
    for s in seeds:
        try:
            F.one_seed(s)
        except F.Finding as f:
            keys.add(f.key)
    return keys


def test_a_factor_off_by_1e_7_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    import fastclip.functional as fn

    orig = fn._coefficient
    monkeypatch.setattr(fn, "_coefficient", lambda m, t: orig(m, t) * (1 + 1e-7))
    keys = _findings(range(300))
    assert any(k.startswith(("values:", "modified-outside")) for k in keys), keys


def test_a_norm_off_by_1e_9_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    orig = fc._fastclip.norms

    def norms(arrays, p, per_tensor, *rest):
        each, total = orig(arrays, p, per_tensor, *rest)
        return [x * (1 + 1e-9) for x in each], total * (1 + 1e-9)

    monkeypatch.setattr(fc._fastclip, "norms", norms)
    assert any(k.startswith("norm:") for k in _findings(range(300)))


def test_a_write_before_an_error_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    orig = fc._fastclip.clamp_

    def clamp_(arrays, lo, hi, *rest):
        for a in arrays:  # half-apply, then let the real call raise (or not)
            if isinstance(a, np.ndarray) and a.flags.writeable and a.dtype == np.float64 and a.size:
                a.flat[0] = 12345.0
        return orig(arrays, lo, hi, *rest)

    monkeypatch.setattr(fc._fastclip, "clamp_", clamp_)
    keys = _findings(range(600))
    assert "error-modified" in keys or any(k.startswith("values:") for k in keys), keys


def test_accepting_a_negative_threshold_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    import fastclip.functional as fn

    monkeypatch.setattr(fn, "_threshold", lambda v, name, **kw: float(v))
    assert any(k.startswith(("accepted-invalid", "exception-type")) for k in _findings(range(300)))


# -- the references ------------------------------------------------------------------------------


def test_reference_rounding_is_once_and_to_nearest_even() -> None:
    f16 = np.dtype(np.float16)
    assert F.round_to(np.array([1 + 2**-11]), f16)[0] == 1.0  # a tie goes to even
    assert F.round_to(np.array([1 + 2**-11 + 2**-30]), f16)[0] == 1 + 2**-10
    assert F.round_to(np.array([65520.0]), f16)[0] == math.inf
    assert F.round_to(np.array([2.0**-25 * 1.5]), f16)[0] == 2.0**-24  # subnormal
    assert F.round_to(np.array([-(2.0**-26)]), f16)[0] == 0.0 and np.signbit(
        F.round_to(np.array([-(2.0**-26)]), f16)[0]
    )
    bf = F.BF16
    assert F.round_to(np.array([1 + 2**-8 + 2**-30]), bf)[0] == 1 + 2**-7
    x = np.random.default_rng(0).standard_normal(1000) * 1e3
    assert np.array_equal(F.round_to(x, f16), x.astype(np.float16).astype(np.float64))  # numpy rounds once


def test_reference_norm_against_exact_sums() -> None:
    assert F.ref_norm([np.array([3.0, -4.0])], 2.0) == 5.0
    assert F.ref_norm([np.array([1e300, 1e300])], 2.0) == pytest.approx(math.sqrt(2) * 1e300, rel=1e-15)
    assert F.ref_norm([np.array([1e-300, 1e-300])], 2.0) == pytest.approx(math.sqrt(2) * 1e-300, rel=1e-15)
    # a ratio of 2**-1000 still counts for a small p: (1 + (2**-1000)**0.01)**100
    got = F.ref_norm([np.array([1.0, 2.0**-1000])], 0.01)
    assert got == pytest.approx((1 + 2.0**-10) ** 100, rel=1e-12)
    assert math.isnan(F.ref_norm([np.array([1.0, math.nan])], math.inf))


# -- known issues: minimal reproducers of what the fuzzer found ---------------------------------


# fixed (the fuzzer's finding; _checks.number turns OverflowError into ValueError): a regression test now
def test_known_issue_an_int_beyond_float_range_is_a_clear_error() -> None:
    g = np.ones(3, np.float32)
    with pytest.raises((TypeError, ValueError)):
        fc.clip_grad_norm_([g], 10**400)


# fixed (the fuzzer's finding; _checks.number refuses NumPy bools as numbers): a regression test now
def test_known_issue_numpy_bool_is_not_a_number() -> None:
    g = np.ones(3, np.float32)
    with pytest.raises(TypeError):
        fc.clip_grad_value_([g], np.True_)


@pytest.mark.xfail(strict=True, reason=F.KNOWN_ISSUES["paddle-noop-skips-inplace-checks"])
def test_known_issue_clip_by_norm_rejects_a_grad_passed_twice_even_when_nothing_is_clipped() -> None:
    g = np.ones(3, np.float32)
    with pytest.raises(ValueError, match="share memory"):
        fc.ClipGradByGlobalNorm(10.0)([(None, g), (None, g)])
