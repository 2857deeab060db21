"""fastclip.distributed: norms over many ranks.

- ``combine_norms`` against exact references (``Fraction``/``decimal``), over random splits;
- every case of ``tests/mpi/dist_cases.py`` on 1-4 ranks simulated by threads (a pure-Python
  :class:`~fastclip.distributed.Communicator`), then on real MPI processes (``mpiexec -n 1..4``,
  where mpi4py and mpiexec are installed) and on torch.distributed gloo (``world_size`` 2 and 3,
  DTensor and FSDP2 gradients; where torch is installed);
- every mismatch the gathered rows can reveal, from a scripted second rank;
- the adapters are chosen without importing mpi4py or torch.
"""

from __future__ import annotations

import decimal
import importlib.util
import math
import os
import pathlib
import subprocess
import sys
import threading
from collections.abc import Callable
from fractions import Fraction
from typing import Any

import fastclip as fc
import numpy as np
import pytest
from fastclip import distributed
from fastclip.distributed import FIELDS, as_communicator, combine_norms
from hypothesis import given, settings
from hypothesis import strategies as st
from refs import exact_l2, ref_norm, same_bits

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE / "mpi"))
import dist_cases  # noqa: E402

# --- a pure-Python communicator: ranks are threads ------------------------------------------------


class ThreadGroup:
    """``size`` ranks in one process: ``comm(r)`` is rank r's Communicator. Every allgather waits
    for all ranks at a barrier with a timeout, so a desynchronized test fails instead of hanging."""

    def __init__(self, size: int, timeout: float = 60.0) -> None:
        self.size = size
        self.rows: list[Any] = [None] * size
        self.barrier = threading.Barrier(size, timeout=timeout)
        self.calls = 0

    def comm(self, rank: int) -> ThreadComm:
        return ThreadComm(self, rank)


class ThreadComm:
    def __init__(self, group: ThreadGroup, rank: int) -> None:
        self.group = group
        self.rank = rank
        self.size = group.size

    def allgather_f64(self, values: np.ndarray) -> np.ndarray:
        g = self.group
        g.rows[self.rank] = np.array(values, dtype=np.float64).reshape(-1)
        g.barrier.wait()
        if self.rank == 0:
            g.calls += 1
        lengths = {len(r) for r in g.rows}
        out = np.stack(g.rows) if len(lengths) == 1 else None
        g.barrier.wait()
        if out is None:
            raise RuntimeError(f"allgather of different lengths {sorted(lengths)}")
        return out


def run_ranks(size: int, fn: Callable[[ThreadComm], Any], timeout: float = 120.0) -> list[Any]:
    """``fn(comm)`` on ``size`` threads, one per rank; the results in rank order (an exception
    stands for its rank's result)."""
    group = ThreadGroup(size)
    results: list[Any] = [None] * size

    def body(r: int) -> None:
        try:
            results[r] = fn(group.comm(r))
        except BaseException as e:
            results[r] = e
            group.barrier.abort()

    threads = [threading.Thread(target=body, args=(r,), daemon=True) for r in range(size)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout)
    assert not any(t.is_alive() for t in threads), "a rank hung"
    return results


# --- combine_norms against exact references -------------------------------------------------------


def _exact_p_norm(values: list[float], p: int) -> float:
    """(sum |v|^p)^(1/p) for an integer p: the sum exact (``Fraction``), the root to 60 digits
    (``decimal``), one rounding to float64."""
    s = sum((abs(Fraction(v)) ** p for v in values), Fraction(0))
    if s == 0:
        return 0.0
    ctx = decimal.Context(prec=60, Emin=-999999, Emax=999999)
    x = ctx.divide(decimal.Decimal(s.numerator), decimal.Decimal(s.denominator))
    return float(ctx.power(x, ctx.divide(decimal.Decimal(1), decimal.Decimal(p))))


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.floats(min_value=-1e6, max_value=1e6, allow_nan=False), min_size=1, max_size=60),
    st.lists(st.integers(0, 60), max_size=6),
    st.integers(-300, 300),
)
def test_combine_l2_of_exact_parts_is_within_an_ulp(values, cut_points, exponent):
    """p = 2: the combination of correctly rounded part norms is within 1.5 ulp of the exact norm
    of the whole, whatever the split (empty parts too) and the scale."""
    scale = 2.0**exponent
    xs = [v * scale for v in values]
    cuts = sorted(min(c, len(xs)) for c in cut_points)
    parts = [xs[a:b] for a, b in zip([0, *cuts], [*cuts, len(xs)])]
    got = combine_norms([exact_l2(p) for p in parts], 2.0)
    want = exact_l2(xs)
    assert abs(got - want) <= 1.5 * math.ulp(want) or got == want


@settings(max_examples=100, deadline=None)
@given(
    st.lists(st.floats(min_value=0, max_value=1e300, allow_nan=False), min_size=1, max_size=12),
    st.sampled_from([1.0, 2.0, 3.0, 4.0, 0.5, 7.25, 1000.0, math.inf]),
)
def test_combine_norms_against_exact(norms, p):
    """Any p: within a few ulp of ``(sum n_i^p)^(1/p)`` computed exactly (integer p: Fraction;
    others: the float64 reference ``ref_norm`` of the parts as if each were one element)."""
    got = combine_norms(norms, p)
    if math.isinf(p):
        assert got == max(norms)
        return
    want = ref_norm([np.array(norms)], p)  # one element per part: |x_i| = n_i
    if p in (1.0, 2.0, 3.0, 4.0):
        exact = _exact_p_norm(norms, int(p))
        assert abs(got - exact) <= 2 * math.ulp(exact), (got, exact)
    assert abs(got - want) <= 8 * math.ulp(want), (got, want)


def test_combine_norms_edges():
    assert combine_norms([], 2.0) == 0.0
    assert combine_norms([0.0, 0.0], 2.0) == 0.0
    assert combine_norms([3.0, 4.0], 2.0) == 5.0
    assert math.isnan(combine_norms([1.0, math.nan, math.inf], 2.0))
    assert combine_norms([1.0, math.inf], 2.0) == math.inf
    assert combine_norms([1.0, math.inf], 1.0) == math.inf
    assert combine_norms([1.7e308, 1.7e308], 2.0) == math.inf  # the true norm overflows
    assert combine_norms([1.7e308, 1.7e308], 1.0) == math.inf
    assert combine_norms([1e308, 1e308], math.inf) == 1e308
    assert combine_norms([1e300] * 4, 2.0) == 2e300
    assert combine_norms([1e-300] * 4, 2.0) == 2e-300  # no underflow
    assert combine_norms([5e-324, 5e-324], 1.0) == 1e-323
    # large p: the largest part dominates, never 0
    assert combine_norms([2.0, 1.0], 1e10) == 2.0
    # p < 1 with a result far above the parts (the log-domain root)
    got = combine_norms([1e-300] * 4, 0.001)
    assert got == pytest.approx(math.exp(math.log(1e-300) + 1000 * math.log(4.0)), rel=1e-10)  # 4^1000 * 1e-300
    assert combine_norms([1e300] * 4, 0.01) == math.inf
    # order does not matter
    rng = np.random.default_rng(3)
    ns = (rng.random(9) * 10.0 ** rng.integers(-5, 5, 9)).tolist()
    for p in (1.0, 2.0, 3.5, math.inf):
        assert combine_norms(ns, p) == combine_norms(ns[::-1], p)


def test_combine_matches_fastclip_single_process_over_random_splits():
    """The guarantee: the distributed total (each rank's local norm pass, then the combine) is the
    single-process norm of the concatenation within 1e-15 relative (float64 exact reference too)."""
    from fastclip import _fastclip

    rng = np.random.default_rng(11)
    worst = 0.0
    for trial in range(120):
        n = int(rng.integers(1, 6000))
        dt = [np.float16, np.float32, np.float64][trial % 3]
        x = (rng.standard_normal(n) * 10.0 ** rng.integers(-3, 4)).astype(dt)
        ranks = int(rng.integers(1, 9))
        parts = np.split(x, np.sort(rng.integers(0, n + 1, ranks - 1)))
        for p in (2.0, 1.0, math.inf):
            local = [_fastclip.norms([s], p, False)[1] if s.size else 0.0 for s in parts]
            got = combine_norms(local, p)
            single = fc.get_total_norm([x], p)
            worst = max(worst, abs(got - single) / single)
            if math.isinf(p):
                assert got == single
            else:
                want = ref_norm([x], p)  # independent float64 reference
                assert abs(got - want) <= 1e-15 * want, (p, got, want)
    assert worst <= 1e-15, worst


# --- every case on simulated ranks -----------------------------------------------------------------


@pytest.mark.parametrize("size", [1, 2, 3, 4])
def test_all_cases_on_thread_ranks(size):
    results = run_ranks(size, lambda comm: dist_cases.run_all(comm))
    for r, res in enumerate(results):
        assert not isinstance(res, BaseException), f"rank {r}: {res!r}"
    failures = [f for res in results for f in res]
    assert not failures, "\n".join(failures)


def test_cases_fail_when_replicated_grads_are_counted_on_every_rank(monkeypatch):
    """The cases can fail: counting every rank's replicated copy is caught."""
    real = distributed.combine_norms

    def wrong(norms, p):
        return real([*norms, *norms[-1:]], p)  # rank 0's replicated norm twice

    monkeypatch.setattr(distributed, "combine_norms", wrong)
    results = run_ranks(2, lambda comm: dist_cases.run_all(comm, cases=[dist_cases.case_replicated]))
    assert all(res for res in results), results


# --- the gathered rows: every mismatch, from a scripted second rank --------------------------------


class Scripted:
    """Rank 0 of 2; rank 1's row is ``edit(copy of rank 0's row)``."""

    rank, size = 0, 2

    def __init__(self, edit: Callable[[np.ndarray], None] | None = None, shape: tuple[int, ...] | None = None):
        self.edit = edit
        self.shape = shape

    def allgather_f64(self, values: np.ndarray) -> np.ndarray:
        other = np.array(values, dtype=np.float64)
        if self.edit is not None:
            self.edit(other)
        out = np.stack([np.array(values, dtype=np.float64), other])
        return out if self.shape is None else np.zeros(self.shape)


def _set(i: int, v: float) -> Callable[[np.ndarray], None]:
    def edit(row: np.ndarray) -> None:
        row[i] = v

    return edit


F = distributed  # field indices
CALLS = [
    ("total", lambda g, grads: fc.get_total_norm(grads, group=g)),
    ("clip", lambda g, grads: fc.clip_grad_norm_(grads, 0.5, group=g)),
    ("global", lambda g, grads: fc.ClipGradByGlobalNorm(0.5, group=g)([(None, a) for a in grads])),
]


@pytest.mark.parametrize("name,call", CALLS, ids=[c[0] for c in CALLS])
@pytest.mark.parametrize(
    "edit,exc,text",
    [
        (_set(F._P, 1.0), ValueError, "different norm_type values: rank 0: 2.0, rank 1: 1.0"),
        (_set(F._THRESHOLD, 7.0), ValueError, "different clipping thresholds"),
        (_set(F._FLAGS, 1.0), ValueError, "different options"),
        (_set(F._OP, 9.0), ValueError, "different fastclip calls"),
        (_set(F._CALL, 1e9), RuntimeError, "out of step"),
        (_set(F._MAGIC_I, 0.5), RuntimeError, "another kind of collective on rank(s) [1]"),
        (_set(F._STATUS, 1.0), RuntimeError, "rank 1 (TypeError) failed before the collective"),
        (_set(F._N_REPLICATED, 3.0), ValueError, "numbers of replicated grads"),
        (_set(F._REPLICATED, 1.5), ValueError, "replicated grads differ"),
    ],
)
def test_mismatch_raises_and_modifies_nothing(name, call, edit, exc, text):
    g = [np.array([3.0, 4.0]), np.array([12.0])]
    before = [a.copy() for a in g]
    with pytest.raises(exc, match=None) as info:
        call(Scripted(edit), g)
    assert text in str(info.value)
    assert all(same_bits(a, b) for a, b in zip(g, before))


def test_scripted_rows_combine_in_rank_order():
    """What rank 1 reports is combined in: its counted norm, and rank 0's replicated norm once."""

    def other(row):
        row[F._COUNTED] = 4.0

    assert fc.get_total_norm([np.array([3.0])], group=Scripted(other)) == 5.0
    # replicated: rank 0's norm 12 counted once, both ranks' counted norms (3 and 4)
    two = [np.array([3.0]), np.array([12.0])]
    assert fc.get_total_norm(two, group=Scripted(other), replicated=[False, True]) == 13.0
    # a NaN on the other rank's replicated copy, or an inf: seen here
    assert math.isnan(fc.get_total_norm([np.ones(2)], group=Scripted(_set(F._REPLICATED, math.nan)), replicated=[True]))
    assert fc.get_total_norm([np.ones(2)], group=Scripted(_set(F._REPLICATED, math.inf)), replicated=[True]) == math.inf


def test_nonfinite_on_another_rank_is_seen_here():
    for bad in (math.nan, math.inf):
        g = [np.array([1.0, 2.0])]
        before = g[0].copy()
        with pytest.raises(RuntimeError, match="non-finite"):
            fc.clip_grad_norm_(g, 0.1, error_if_nonfinite=True, group=Scripted(_set(F._COUNTED, bad)))
        assert same_bits(g[0], before)
        clip = fc.ClipGradByGlobalNorm(0.1, auto_skip_clip=True, group=Scripted(_set(F._COUNTED, bad)))
        clip([(None, g[0])])
        assert same_bits(g[0], before) == math.isnan(bad)  # NaN: skipped; inf: scaled to zeros
        g[0][:] = before


def test_local_error_is_raised_here_after_the_collective():
    """A bad buffer here: this rank still takes part (so the others raise too), then raises its own error."""
    seen = []

    class Watch(Scripted):
        def allgather_f64(self, values):
            seen.append(values.copy())
            return super().allgather_f64(values)

    ro = np.ones(3)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match=r"grads\[1\]"):
        fc.clip_grad_norm_([np.ones(2), ro], 1.0, group=Watch())
    assert seen and seen[-1][F._STATUS] == 2.0  # ValueError
    with pytest.raises(TypeError, match=r"grads\[0\]"):
        fc.get_total_norm(["x"], group=Watch())
    assert seen[-1][F._STATUS] == 1.0
    with pytest.raises(ValueError, match="norm_type"):
        fc.get_total_norm([np.ones(2)], norm_type=0.0, group=Watch())
    with pytest.raises(TypeError, match="max_norm"):
        fc.clip_grad_norm_([np.ones(2)], "1", group=Watch())


def test_bad_communicator_results():
    with pytest.raises(RuntimeError, match="returned shape"):
        fc.get_total_norm([np.ones(2)], group=Scripted(shape=(2, 3)))


# --- group resolution -------------------------------------------------------------------------------


class Solo:
    rank, size = 0, 1

    def allgather_f64(self, values):
        return np.array(values, dtype=np.float64).reshape(1, -1)


def test_one_rank_group_equals_single_process_within_an_ulp():
    rng = np.random.default_rng(0)
    g = [rng.standard_normal(n).astype(np.float32) for n in (5, 70000, 3)]
    for p in (2.0, 1.0, math.inf, 3.0):
        got = fc.get_total_norm(g, p, group=Solo())
        want = fc.get_total_norm(g, p)
        assert abs(got - want) <= math.ulp(want)


def test_group_type_errors():
    with pytest.raises(TypeError, match=r"mpi4py\.MPI\.Comm, a torch\.distributed\.ProcessGroup"):
        fc.get_total_norm([np.ones(2)], group=object())
    with pytest.raises(TypeError, match="group must be"):
        fc.ClipGradByGlobalNorm(1.0, group="world")

    class BadRank(Solo):
        rank = 1

    with pytest.raises(ValueError, match="0 <= rank < size"):
        fc.get_total_norm([np.ones(2)], group=BadRank())

    class FloatSize(Solo):
        size = 1.0

    with pytest.raises(TypeError, match=r"group\.size must be an int"):
        as_communicator(FloatSize())


def test_group_none_is_single_process_and_replicated_is_checked():
    g = [np.array([3.0]), np.array([4.0])]
    assert fc.get_total_norm(g, replicated=[True, False]) == 5.0
    assert fc.clip_grad_norm_(g, math.inf, replicated=(False, True)) == 5.0
    for bad, exc, text in (
        ([True], ValueError, "1 entries but grads has 2"),
        ([1, 0], TypeError, r"replicated\[0\] must be a bool"),
        ("ab", TypeError, "sequence of bools"),
        (iter([True, True]), TypeError, "sequence of bools"),
    ):
        with pytest.raises(exc, match=text):
            fc.get_total_norm(g, replicated=bad)
    assert fc.get_total_norm(g, replicated=np.array([True, False])) == 5.0
    gen = (a for a in g)  # read once
    assert fc.get_total_norm(gen, replicated=[False, False]) == 5.0


def test_no_mpi4py_or_torch_import():
    """A plain Communicator (and no group) never imports mpi4py or torch."""
    code = (
        "import sys, numpy as np, fastclip as fc\n"
        "class Solo:\n rank, size = 0, 1\n def allgather_f64(self, v): return v.reshape(1, -1)\n"
        "assert fc.get_total_norm([np.ones(3)], group=Solo()) == 3 ** 0.5\n"
        "fc.ClipGradByGlobalNorm(1.0, group=Solo())([(None, np.ones(3))])\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('mpi4py', 'torch')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "[]", out.stdout


def test_channel_cache_follows_the_group_object():
    a, b = Solo(), Solo()
    assert as_communicator(a) is a and as_communicator(b) is b
    ch = distributed._channel(a)
    n = ch.calls
    fc.get_total_norm([np.ones(1)], group=a)
    assert distributed._channel(a) is ch and ch.calls == n + 1


# --- Parameter / ParamAttr / ClipGradByGlobalNorm --------------------------------------------------


def test_parameter_replicated_flag():
    p = fc.Parameter(np.zeros(2), name="w", replicated=True)
    assert p.replicated is True and "replicated=True" in repr(p)
    p.replicated = False
    assert "replicated" not in repr(p)
    with pytest.raises(TypeError, match="replicated must be a bool"):
        fc.Parameter(np.zeros(2), replicated=1)
    with pytest.raises(TypeError, match="replicated must be a bool"):
        p.replicated = "yes"
    attr = fc.ParamAttr(name="e", replicated=True)
    assert "replicated=True" in repr(attr)
    assert attr.create((2, 3)).replicated is True
    assert fc.ParamAttr().create((1,)).replicated is False
    with pytest.raises(TypeError, match="replicated must be a bool"):
        fc.ParamAttr(replicated=None)


def test_clip_global_norm_group_attribute():
    solo = Solo()
    clip = fc.ClipGradByGlobalNorm(1.0, group=solo)
    assert clip.group is solo and "group=" in repr(clip)
    plain = fc.ClipGradByGlobalNorm(1.0)
    assert plain.group is None and "group=" not in repr(plain)
    a, b = np.array([3.0]), np.array([4.0])
    out = clip([(fc.Parameter(np.zeros(1)), a), (None, b), (None, None)])
    assert [g for _, g in out] == [a, b]
    assert np.allclose([a[0], b[0]], [0.6, 0.8])
    assert clip.last_stats.global_norm == 5.0 and clip.last_stats.norms == (3.0, 4.0)
    assert clip.last_stats.indices == (0, 1)


def test_fields_constant():
    assert FIELDS == 10 and len(Scripted().allgather_f64(np.zeros(FIELDS))) == 2


# --- real MPI processes ------------------------------------------------------------------------------


def _mpiexec() -> str | None:
    if importlib.util.find_spec("mpi4py") is None:
        return None
    here = pathlib.Path(sys.executable).parent / "mpiexec"
    if here.exists():
        return str(here)
    from shutil import which

    return which("mpiexec")


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT / "python"), env.get("PYTHONPATH", "")) if p)
    env.setdefault("RAYON_NUM_THREADS", "1")  # ranks share the machine's cores
    return env


@pytest.mark.parametrize("n", [1, 2, 3, 4])
def test_mpiexec(n):
    mpiexec = _mpiexec()
    if mpiexec is None:
        pytest.skip("mpi4py/mpiexec not installed (pip install mpich mpi4py)")
    cmd = [mpiexec, "-n", str(n), sys.executable, str(HERE / "mpi" / "run_cases.py")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=_env())
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-6000:]
    for r in range(n):
        assert f"rank {r}: 0 failures" in proc.stdout, out[-6000:]


# --- torch.distributed (gloo) -----------------------------------------------------------------------


def _torch_available() -> bool:
    try:
        return importlib.util.find_spec("torch") is not None
    except (ImportError, ValueError):
        return False


@pytest.mark.parametrize("world_size", [2, 3])
def test_torch_gloo(world_size, tmp_path):
    if not _torch_available():
        pytest.skip("torch not installed")
    script = HERE / "mpi" / "run_torch.py"
    procs = []
    init = f"file://{tmp_path / 'init'}"
    for rank in range(world_size):
        cmd = [sys.executable, str(script), str(rank), str(world_size), init]
        procs.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=_env()))
    outs = []
    try:
        for p in procs:
            out, _ = p.communicate(timeout=400)
            outs.append(out)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    text = "\n".join(outs)
    assert all(p.returncode == 0 for p in procs), text[-8000:]
    for r in range(world_size):
        assert f"rank {r}: 0 failures" in text, text[-8000:]


# --- the distributed demo ---------------------------------------------------------------------------


def test_shard_bounds():
    from fastclip.demo_distributed import shard_bounds

    assert shard_bounds(10, 3) == [(0, 4), (4, 7), (7, 10)]
    assert shard_bounds(2, 4) == [(0, 1), (1, 2), (2, 2), (2, 2)]
    for total, ranks in ((1153, 1), (1153, 5), (0, 2)):
        b = shard_bounds(total, ranks)
        assert b[0][0] == 0 and b[-1][1] == total and all(x[1] == y[0] for x, y in zip(b, b[1:]))


def test_demo_distributed_without_mpiexec(monkeypatch, capsys):
    from fastclip import demo_distributed

    monkeypatch.setattr(demo_distributed, "mpiexec_path", lambda: None)
    assert demo_distributed.main(["--ranks", "2"]) == 2
    assert "pip install mpich mpi4py" in capsys.readouterr().err
    assert demo_distributed.main(["--ranks", "0"]) == 2


def test_demo_distributed_matches_single_process():
    """3 ranks (uneven batch rows 6/5/5, slices cutting tensors): the same losses as the
    single-process demo within float32 rounding, for every setting; the shards are printed."""
    if _mpiexec() is None:
        pytest.skip("mpi4py/mpiexec not installed (pip install mpich mpi4py)")
    cmd = [sys.executable, "-m", "fastclip.demo_distributed", "--ranks", "3", "--steps", "30"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=_env())
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "equal within 0.001: yes" in out
    for r, rows in enumerate((6, 5, 5)):
        assert f"rank {r}: {rows:2d} batch rows, elements" in out
    assert "first non-finite           3" in out  # the unclipped run explodes at step 3, as single-process


# --- the CUDA path's host logic (no GPU needed) -----------------------------------------------------


class _FakeCudaTensor:
    """A DLPack producer that says it lives on CUDA device 0 (kDLCUDA); its memory is a NumPy array."""

    def __init__(self, arr: np.ndarray) -> None:
        self.arr = arr

    def __dlpack__(self, **kwargs: Any) -> Any:  # pragma: no cover - never exported
        raise AssertionError("the fake CUDA tensor is not exported")

    def __dlpack_device__(self) -> tuple[int, int]:
        return (2, 0)


def test_cuda_buffers_take_the_same_group_path(monkeypatch):
    """CUDA grads with a group go through fastclip._cuda's norms/scale_ (here NumPy stand-ins that
    follow their contract): the local norm and the in-place pre-check run before the collective, the
    scaling after it, with the caller's positions, on every rank."""
    from fastclip import _cuda, _fastclip

    log: list[tuple[int, str, Any]] = []
    lock = threading.Lock()

    def as_buffers(objs, name="grads", positions=None):
        return [o.arr for o in objs]

    def norms(arrays, p=2.0, per_tensor=True, name="grads", positions=None):
        with lock:
            log.append((threading.get_ident(), "norms", list(positions) if positions is not None else None))
        return _fastclip.norms(arrays, p, per_tensor, name, positions)

    def scale_(arrays, factors, name="grads", positions=None):
        with lock:
            log.append((threading.get_ident(), "scale_", factors))
        _fastclip.scale_(arrays, factors, name, positions)

    monkeypatch.setattr(_cuda, "as_buffers", as_buffers)
    monkeypatch.setattr(_cuda, "norms", norms)
    monkeypatch.setattr(_cuda, "scale_", scale_)
    rng = np.random.default_rng(9)
    full = [rng.standard_normal(n).astype(np.float32) for n in (300, 7, 50)]
    want = ref_norm(full, 2.0)

    class Logged(ThreadComm):
        def allgather_f64(self, values):
            with lock:
                log.append((threading.get_ident(), "allgather", None))
            return super().allgather_f64(values)

    def rank_fn(comm):
        comm = Logged(comm.group, comm.rank)
        mine = [full[0].copy(), full[1].copy()] if comm.rank == 0 else [full[2].copy()]
        items = [_FakeCudaTensor(a) for a in mine]
        items.insert(1, fc.Parameter(np.zeros(1)))  # a None grad: positions shift
        total = fc.clip_grad_norm_(items, want / 2, group=comm)
        return total, mine

    results = run_ranks(2, rank_fn)
    for res in results:
        assert not isinstance(res, BaseException), res
    (t0, m0), (t1, m1) = results
    assert t0 == t1 and abs(t0 - want) <= 2e-15 * want
    coef = (want / 2) / (t0 + 1e-6)
    for got, a in zip(m0 + m1, full):
        assert np.array_equal(got, a * np.float32(coef))
    by_thread: dict[int, list[str]] = {}
    for tid, what, arg in log:
        step = what if what != "scale_" else ("scale_(check)" if arg == 1.0 else "scale_(coef)")
        by_thread.setdefault(tid, []).append(step)
    assert sorted(by_thread.values()) == [["norms", "scale_(check)", "allgather", "scale_(coef)"]] * 2
    assert [arg for _, what, arg in log if what == "norms"] in ([[0, 2], [0]], [[0], [0, 2]])


def test_docstring_examples_run():
    import doctest

    from fastclip import demo_distributed

    for module in (distributed, demo_distributed):
        result = doctest.testmod(module)
        assert result.failed == 0, module.__name__
    assert doctest.testmod(distributed).attempted >= 4


def test_bench_distributed_smoke():
    """The benchmark runs on 2 ranks and prints a row per rank (no timings are checked)."""
    if _mpiexec() is None:
        pytest.skip("mpi4py/mpiexec not installed (pip install mpich mpi4py)")
    cmd = [sys.executable, str(ROOT / "benches" / "distributed_collective.py"), "--ranks", "2", "--repeat", "2"]
    proc = subprocess.run([*cmd, "--scale", "0.001"], capture_output=True, text=True, timeout=300, env=_env())
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = [line.split() for line in proc.stdout.splitlines() if line.strip()[:1].isdigit()]
    assert [r[0] for r in rows] == ["0", "1"], proc.stdout
    from fastclip import bench_distributed

    assert bench_distributed.launch(0) == 2


def _cuda_ranks_available() -> bool:
    if importlib.util.find_spec("cupy") is None or not _torch_available():
        return False
    code = "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"
    return subprocess.run([sys.executable, "-c", code], timeout=300, env=_env()).returncode == 0


@pytest.mark.cuda
@pytest.mark.parametrize("backend,world_size", [("nccl", 1), ("gloo", 2)])
def test_torch_cuda_group(backend, world_size, tmp_path):
    """CUDA grads with a group on GPU 0: NCCL (the collective on the GPU, one rank: NCCL refuses two
    ranks on one device) and gloo (two ranks sharing the GPU)."""
    if not _cuda_ranks_available():
        pytest.skip("needs torch with CUDA, CuPy and a GPU")
    script = HERE / "mpi" / "run_torch_cuda.py"
    init = f"file://{tmp_path / 'init'}"
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), str(r), str(world_size), init, backend],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=_env(),
        )
        for r in range(world_size)
    ]
    outs = []
    try:
        outs = [p.communicate(timeout=400)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    text = "\n".join(outs)
    assert all(p.returncode == 0 for p in procs), text[-8000:]
    for r in range(world_size):
        assert f"rank {r}: 0 failures" in text, text[-8000:]
