"""Distributed cases, run on every rank of a real group (mpiexec, torch.distributed) or of the test
suite's threads: each rank builds the whole data set from one seed, takes its own shard, calls
fastclip with ``group=``, and checks its result against a single-process float64 reference of the
concatenated shards (``refs.ref_norm``, independent of fastclip) and against the
single-process fastclip norm (within 1e-15 relative), and that every rank has the bitwise same
total. In-place results are checked on every rank against ``refs.scaled_ref``.

``run_all(group, comm)`` returns the list of failures on this rank (an empty list: all passed);
``comm`` is the :class:`fastclip.distributed.Communicator` the checks use to compare ranks.
Every rank makes the same sequence of fastclip calls whatever its checks find, so a failing
check never desynchronizes the collectives.
"""

from __future__ import annotations

import math
import os
import sys
import threading
import traceback
from collections.abc import Callable
from typing import Any

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir))

import fastclip as fc
from fastclip import _fastclip
from fastclip.distributed import as_communicator
from refs import FLOAT_DTYPES, ref_norm, same_bits, scaled_ref, torch_coef

#: The distributed total must match the single-process fastclip norm of the concatenation this closely.
REL_SINGLE = 1e-15
#: ... and the independent float64 reference (a few ulps of its own).
REL_REF = 2e-15
NORM_TYPES = (2.0, 1.0, math.inf, 3.5)


#: The failed checks of the case running on this thread (each simulated rank is a thread).
_state = threading.local()


def check(cond: bool, msg: str) -> None:
    """Record a failed check and go on: every rank keeps making the same calls."""
    if not cond:
        _state.failures.append(msg)


def rel(a: float, b: float) -> float:
    if a == b or (math.isnan(a) and math.isnan(b)):
        return 0.0
    return abs(a - b) / abs(b) if b else math.inf


def tensors(seed: int, dtype: Any, count: int = 7, big: bool = False) -> list[np.ndarray]:
    """The whole data set: tensors of awkward sizes (one empty, one 0-D), scales far apart."""
    rng = np.random.default_rng(seed)
    sizes = [int(s) for s in rng.integers(1, 3000, size=count)] + [0, 1, 40_000 if big else 5]
    out = []
    for n in sizes:
        scale = 10.0 ** int(rng.integers(-2, 3))
        out.append((rng.standard_normal(n) * scale).astype(dtype))
    out.append(np.array(rng.standard_normal() * 3).astype(dtype))  # 0-D
    return out


def cuts(seed: int, total: int, size: int) -> list[int]:
    """Uneven cut points (sometimes repeated: empty ranks) of ``range(total)`` into ``size`` pieces."""
    rng = np.random.default_rng(seed + 7919 * size)
    inner = sorted(int(c) for c in rng.integers(0, total + 1, size=size - 1))
    if size > 2 and seed % 3 == 0:
        inner[0] = inner[1]  # rank 1 empty
    return [0, *inner, total]


def shard(full: list[np.ndarray], rank: int, size: int, mode: str, seed: int) -> list[np.ndarray]:
    """This rank's shard of copies of ``full``: ``whole`` tensors (tensor i on rank i % size),
    ``flat`` slices of the flattened concatenation cut at uneven points (ZeRO-style: a tail, whole
    tensors, a head), or ``rank0`` (everything on rank 0, nothing elsewhere)."""
    copies = [a.copy() for a in full]
    if mode == "whole":
        return [a for i, a in enumerate(copies) if i % size == rank]
    if mode == "rank0":
        return copies if rank == 0 else []
    sizes = [a.size for a in copies]
    offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(int)
    c = cuts(seed, int(offsets[-1]), size)
    lo, hi = c[rank], c[rank + 1]
    out = []
    for a, start in zip(copies, offsets[:-1]):
        a0, a1 = max(lo, int(start)), min(hi, int(start) + a.size)
        if a0 < a1:
            out.append(a.reshape(-1)[a0 - start : a1 - start])
    return out


class Ranks:
    """What the checks need: this rank, the group, and a way to compare values across ranks."""

    def __init__(self, group: Any, comm: Any) -> None:
        self.group = group
        self.comm = comm
        self.rank = int(comm.rank)
        self.size = int(comm.size)

    def gather(self, value: float) -> np.ndarray:
        return self.comm.allgather_f64(np.array([value], dtype=np.float64))[:, 0]

    def all_same(self, value: float, what: str) -> None:
        got = self.gather(value)
        bits = got.view(np.uint64)
        check(bool((bits == bits[0]).all()), f"{what}: the ranks got different values {got.tolist()}")

    def all_ok(self, ok: bool) -> bool:
        """Whether the check passed on every rank (so the ranks agree on what comes next)."""
        return bool((self.gather(1.0 if ok else 0.0) == 1.0).all())


def _expect_raise(fn: Callable[[], Any], exc: type, text: str = "") -> None:
    try:
        fn()
    except exc as e:
        check(text in str(e), f"{exc.__name__} without {text!r}: {e}")
        return
    except Exception as e:
        check(False, f"expected {exc.__name__}, got {type(e).__name__}: {e}")
        return
    check(False, f"expected {exc.__name__}, nothing raised")


# --- the cases ------------------------------------------------------------------------------------


def case_total_norm(r: Ranks) -> None:
    """get_total_norm over every split, dtype and p: the same total on every rank, equal to the
    single-process norm of the concatenation."""
    for seed, dt in enumerate(FLOAT_DTYPES):
        full = tensors(100 + seed, dt)
        for mode in ("whole", "flat", "rank0"):
            mine = shard(full, r.rank, r.size, mode, seed)
            for p in NORM_TYPES:
                got = fc.get_total_norm(mine, p, group=r.group)
                r.all_same(got, f"{dt} {mode} p={p}")
                single = fc.get_total_norm(full, p)
                want = ref_norm(full, p)
                tol = REL_SINGLE if p != 3.5 else 4 * REL_SINGLE
                check(rel(got, single) <= tol, f"{dt} {mode} p={p}: {got!r} vs single {single!r}")
                check(rel(got, want) <= 2 * tol, f"{dt} {mode} p={p}: {got!r} vs ref {want!r}")
                if math.isinf(p):
                    check(got == want, f"{dt} {mode} p=inf must be exact: {got!r} vs {want!r}")


def case_big_and_extreme(r: Ranks) -> None:
    """Entries near the f64 range split across ranks (no rank's part overflows where the total is
    finite), a tensor larger than a chunk, and tiny entries (no underflow to 0)."""
    rng = np.random.default_rng(5)
    for scale in (1e300, 1e-300, 1.0):
        full = [rng.standard_normal(n) * scale for n in (40_000, 3, 17)]
        mine = shard(full, r.rank, r.size, "flat", 11)
        for p in (2.0, 1.0, math.inf):
            got = fc.get_total_norm(mine, p, group=r.group)
            r.all_same(got, f"scale {scale} p={p}")
            want = ref_norm(full, p)
            check(math.isfinite(got) and got > 0, f"scale {scale} p={p}: {got!r}")
            check(rel(got, want) <= 4e-15, f"scale {scale} p={p}: {got!r} vs ref {want!r}")


def case_clip_grad_norm(r: Ranks) -> None:
    """clip_grad_norm_ in place on every rank: each shard scaled exactly by torch's coefficient of
    the global total; every dtype, both splits; also a max_norm that does not clip."""
    for seed, dt in enumerate(FLOAT_DTYPES):
        full = tensors(200 + seed, dt)
        want_total = ref_norm(full, 2.0)
        for mode in ("whole", "flat"):
            for max_norm in (want_total / 3, want_total * 3, math.inf):
                mine = shard(full, r.rank, r.size, mode, seed)
                before = [a.copy() for a in mine]
                got = fc.clip_grad_norm_(mine, max_norm, group=r.group)
                r.all_same(got, f"clip {dt} {mode}")
                check(rel(got, want_total) <= REL_REF, f"clip {dt} {mode}: {got!r} vs {want_total!r}")
                coef = torch_coef(max_norm, got)
                for i, (a, b) in enumerate(zip(mine, before)):
                    check(same_bits(a, scaled_ref(b, coef)), f"clip {dt} {mode} max_norm={max_norm}: shard {i}")


def case_replicated(r: Ranks) -> None:
    """Grads held identically by every rank count once: replicated= flags, Parameter(replicated=True),
    ParamAttr(replicated=True), mixed with sharded grads; scaled identically on every rank."""
    full = tensors(300, np.float32)
    reps = tensors(301, np.float32, count=3)
    want = ref_norm(full + reps, 2.0)
    mine = shard(full, r.rank, r.size, "flat", 3)
    rep_copies = [a.copy() for a in reps]
    items = rep_copies[:1] + mine + rep_copies[1:]
    flags = [True] + [False] * len(mine) + [True] * (len(rep_copies) - 1)
    got = fc.get_total_norm(items, group=r.group, replicated=flags)
    r.all_same(got, "replicated flags")
    check(rel(got, want) <= REL_REF, f"replicated flags: {got!r} vs {want!r}")
    # the same through Parameters: a replicated=True parameter, and one from a ParamAttr
    params = []
    for k, a in enumerate(rep_copies):
        if k == 0:
            p = fc.Parameter(np.zeros_like(a), replicated=True)
        else:
            p = fc.ParamAttr(replicated=True).create(a.shape, a.dtype)
        p.grad = a
        params.append(p)
    plain = [fc.Parameter(np.zeros_like(a)) for a in mine]
    for p, a in zip(plain, mine):
        p.grad = a
    before = [a.copy() for a in mine + rep_copies]
    total = fc.clip_grad_norm_(params + plain, want / 2, group=r.group)
    r.all_same(total, "replicated params")
    check(rel(total, want) <= REL_REF, f"replicated params: {total!r} vs {want!r}")
    coef = torch_coef(want / 2, total)
    for a, b in zip(rep_copies + mine, before[len(mine) :] + before[: len(mine)]):
        check(same_bits(a, scaled_ref(b, coef)), "replicated params: a grad not scaled exactly")
    for k, a in enumerate(rep_copies):
        r.all_same(float(np.float64(np.abs(a.astype(np.float64)).sum())), f"replicated grad {k} after clipping")
    # Without a group, replicated= is checked and changes nothing
    check(fc.get_total_norm(full, replicated=[False] * len(full)) == fc.get_total_norm(full), "group=None flags")


def case_nonfinite(r: Ranks) -> None:
    """A NaN or inf on one rank only: every rank sees it; error_if_nonfinite raises on every rank and
    nothing is modified; a NaN in one rank's copy of a replicated grad is seen by all."""
    last = r.size - 1
    for bad, want_nan in ((math.nan, True), (math.inf, False)):
        for dt in FLOAT_DTYPES:
            mine = [np.ones(5, dt) * (r.rank + 1), np.ones(3, dt)]
            if r.rank == last:
                mine[1][1] = bad
            got = fc.get_total_norm(mine, group=r.group)
            check(math.isnan(got) if want_nan else got == math.inf, f"{dt} {bad} on rank {last}: {got!r}")
            got_inf = fc.get_total_norm(mine, math.inf, group=r.group)
            check(math.isnan(got_inf) if want_nan else got_inf == math.inf, f"{dt} {bad} p=inf: {got_inf!r}")
            before = [a.copy() for a in mine]
            _expect_raise(
                lambda g=mine: fc.clip_grad_norm_(g, 1.0, error_if_nonfinite=True, group=r.group), RuntimeError
            )
            check(all(same_bits(a, b) for a, b in zip(mine, before)), f"{dt}: modified after the error")
            _expect_raise(lambda g=mine: fc.get_total_norm(g, error_if_nonfinite=True, group=r.group), RuntimeError)
    # replicated copy with a NaN on one rank only
    rep = np.ones(4, np.float64)
    if r.rank == last:
        rep[0] = math.nan
    got = fc.get_total_norm([np.ones(2), rep], group=r.group, replicated=[False, True])
    check(math.isnan(got), f"NaN in one rank's replicated copy: {got!r}")


def case_clip_global(r: Ranks) -> None:
    """ClipGradByGlobalNorm(group=...) on (param, grad) pairs: the same factor on every rank, Paddle's
    clip_norm / max(global, clip_norm); need_clip=False pairs untouched; auto_skip_clip below the bound
    and on a NaN on one rank skips on every rank; last_stats has the global norm; SGD uses it."""
    for dt in FLOAT_DTYPES:
        full = tensors(400, dt)
        want = ref_norm(full, 2.0)
        mine = shard(full, r.rank, r.size, "flat", 4)
        params = [fc.Parameter(np.zeros(a.shape, dt)) for a in mine]
        frozen = fc.Parameter(np.zeros(3, dt), need_clip=False)
        frozen_grad = np.full(3, 100.0, dt)
        pairs = [(p, a) for p, a in zip(params, mine)] + [(frozen, frozen_grad), (fc.Parameter(np.zeros(2)), None)]
        before = [a.copy() for a in mine]
        clip = fc.ClipGradByGlobalNorm(want / 4, group=r.group)
        out = clip(pairs)
        check(len(out) == len(mine) + 1 and out[-1][1] is frozen_grad, f"{dt}: pairs returned")
        check(same_bits(frozen_grad, np.full(3, 100.0, dt)), f"{dt}: need_clip=False grad touched")
        g = clip.last_stats.global_norm
        r.all_same(g, f"{dt} global norm")
        check(rel(g, want) <= REL_REF, f"{dt} global norm {g!r} vs {want!r}")
        factor = (want / 4) / g
        for a, b in zip(mine, before):
            check(same_bits(a, scaled_ref(b, factor)), f"{dt}: global clip not exact")
        for skip_case in ("below", "nan"):
            mine2 = shard(full, r.rank, r.size, "flat", 4)
            poisoned = skip_case == "nan" and r.rank == r.size - 1 and bool(mine2)
            if poisoned:
                mine2[-1].reshape(-1)[0] = math.nan
            before2 = [a.copy() for a in mine2]
            bound = want * 2 if skip_case == "below" else want / 4
            skip = fc.ClipGradByGlobalNorm(bound, auto_skip_clip=True, group=r.group)
            skip([(None, a) for a in mine2])
            check(all(same_bits(a, b) for a, b in zip(mine2, before2)), f"{dt} auto_skip ({skip_case}) modified")
            gn = skip.last_stats.global_norm
            if skip_case == "below":
                check(rel(gn, want) <= REL_REF, f"{dt} auto_skip below: {gn!r} vs {want!r}")
            elif not r.all_ok(not poisoned):  # some rank holds the NaN
                check(math.isnan(gn), f"{dt}: NaN on one rank not seen: {gn!r}")
    # an optimizer holding a distributed clip
    full = tensors(500, np.float64)
    mine = shard(full, r.rank, r.size, "flat", 5)
    params = [fc.Parameter(np.zeros(a.shape)) for a in mine]
    for p, a in zip(params, mine):
        p.grad = a.copy()
    opt = fc.optimizer.SGD(1.0, parameters=params, grad_clip=fc.ClipGradByGlobalNorm(1.0, group=r.group))
    opt.step()
    want = ref_norm(full, 2.0)
    for p, a in zip(params, mine):
        check(np.allclose(p.value, -a / want, rtol=1e-14, atol=0), "SGD with a distributed global clip")


def case_errors(r: Ranks) -> None:
    """Mismatched calls raise on every rank, before anything is modified: norm_type on one rank, a
    bad buffer on one rank, replicated grads that differ, a different operation."""
    last = r.size - 1
    g = [np.ones(4) * (r.rank + 1)]
    before = g[0].copy()
    if r.size > 1:
        p = math.inf if r.rank == 0 else 2.0
        _expect_raise(lambda: fc.clip_grad_norm_(g, 1.0, p, group=r.group), ValueError, "norm_type")
        check(same_bits(g[0], before), "modified after a norm_type mismatch")
        m = 1.0 if r.rank == 0 else 2.0
        _expect_raise(lambda: fc.clip_grad_norm_(g, m, group=r.group), ValueError, "threshold")
        rep = np.ones(3) * (2.0 if r.rank == last else 1.0)
        _expect_raise(
            lambda: fc.get_total_norm([rep], group=r.group, replicated=[True]), ValueError, "replicated grads differ"
        )
        if r.rank == 0:
            _expect_raise(lambda: fc.get_total_norm(g, group=r.group), ValueError, "different fastclip calls")
        else:
            _expect_raise(lambda: fc.clip_grad_norm_(g, 1.0, group=r.group), ValueError, "different fastclip calls")
        check(same_bits(g[0], before), "modified after an operation mismatch")
        n_rep = [np.ones(2)] * (1 if r.rank == 0 else 2)
        _expect_raise(
            lambda: fc.get_total_norm(n_rep, group=r.group, replicated=[True] * len(n_rep)), ValueError, "numbers"
        )
    # a read-only buffer on the last rank: ValueError there, RuntimeError naming it elsewhere
    mine = [np.ones(5) * 10, np.ones(3) * 10]
    if r.rank == last:
        mine[1].flags.writeable = False
    saved = [a.copy() for a in mine]
    if r.rank == last:
        _expect_raise(lambda: fc.clip_grad_norm_(mine, 1.0, group=r.group), ValueError, "grads[1]")
    else:
        _expect_raise(lambda: fc.clip_grad_norm_(mine, 1.0, group=r.group), RuntimeError, f"rank {last}")
    check(all(same_bits(a, b) for a, b in zip(mine, saved)), "modified after a read-only buffer on one rank")
    # a bad item on rank 0 (TypeError there), a bad norm_type on rank 0 (ValueError there)
    bad: list[Any] = ["nope"] if r.rank == 0 else [np.ones(2)]
    if r.rank == 0:
        _expect_raise(lambda: fc.get_total_norm(bad, group=r.group), TypeError, "grads[0]")
        _expect_raise(lambda: fc.get_total_norm(g, -1.0, group=r.group), ValueError, "norm_type")
    else:
        _expect_raise(lambda: fc.get_total_norm(bad, group=r.group), RuntimeError, "rank 0 (TypeError)")
        _expect_raise(lambda: fc.get_total_norm(g, group=r.group), RuntimeError, "rank 0 (ValueError)")
    # wrong replicated= on the last rank
    if r.rank == last:
        _expect_raise(lambda: fc.get_total_norm(g, group=r.group, replicated=[True, False]), ValueError, "entries")
    else:
        _expect_raise(lambda: fc.get_total_norm(g, group=r.group, replicated=[False]), RuntimeError, "failed")
    # and the group works normally afterwards
    got = fc.get_total_norm([np.array([3.0]) if r.rank == 0 else np.zeros(0)], group=r.group)
    check(got == 3.0, f"after the errors: {got!r}")


def case_empty(r: Ranks) -> None:
    """No grads anywhere: 0.0 on every rank; ranks with None grads or no items take part."""
    check(fc.get_total_norm([], group=r.group) == 0.0, "empty")
    check(fc.clip_grad_norm_([], 1.0, group=r.group) == 0.0, "empty clip")
    items = [fc.Parameter(np.zeros(2))] if r.rank % 2 else []
    check(fc.get_total_norm(items, group=r.group) == 0.0, "None grads")
    got = fc.get_total_norm(np.array([1.0, 1.0]), group=r.group)  # one array, not a list
    check(rel(got, math.sqrt(2.0 * r.size)) <= 3e-16, f"one array per rank: {got!r}")
    gen = (a for a in [np.array([2.0])])
    check(fc.get_total_norm(gen, 1.0, group=r.group) == 2.0 * r.size, "a generator")


def case_local_norm_pass(r: Ranks) -> None:
    """Each rank's contribution is the extension's own norm pass: a rank's shard norm equals
    _fastclip.norms on that shard (so the local phase adds no rounding)."""
    full = tensors(600, np.float32)
    mine = shard(full, r.rank, r.size, "flat", 6)
    local = _fastclip.norms(mine, 2.0, False)[1] if mine else 0.0
    parts = r.gather(local)
    got = fc.get_total_norm(mine, group=r.group)
    s = math.fsum(float(v) ** 2 for v in parts)
    check(rel(got, math.sqrt(s)) <= 4e-16, f"combine of the gathered local norms: {got!r} vs {math.sqrt(s)!r}")


CASES = [
    case_total_norm,
    case_big_and_extreme,
    case_clip_grad_norm,
    case_replicated,
    case_nonfinite,
    case_clip_global,
    case_errors,
    case_empty,
    case_local_norm_pass,
]


def run_all(group: Any, comm: Any = None, cases: list[Callable[[Ranks], None]] | None = None) -> list[str]:
    """Run every case on this rank; the failures (``"case: message"``), empty when all pass."""
    r = Ranks(group, comm if comm is not None else as_communicator(group))
    failures = []
    for case in cases or CASES:
        _state.failures = []
        try:
            case(r)
        except Exception as e:
            _state.failures.append(f"{type(e).__name__}: {e}\n{traceback.format_exc(limit=4)}")
        failures.extend(f"rank {r.rank} {case.__name__}: {m}" for m in _state.failures)
    return failures
