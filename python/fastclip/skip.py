"""Skip policies (``SkipNonFinite``, ``SkipAbove``) and the two-phase protocol optimizers follow.

A skip policy decides that an optimizer step is **not taken**: no gradient, parameter or
optimizer state is written, and only the policy's own counters advance. Deciding that needs the
norms of every group before anything is written, so every clipper of :mod:`fastclip.adaptive`
and of this module works in two phases.

The protocol (the contract between clippers and optimizers)
-----------------------------------------------------------

``clipper.prepare(params_grads) -> ClipPlan`` only **reads**: it runs the norm passes, makes every
decision and every check (dtypes, read-only or overlapping buffers, shapes, a
``max_consecutive`` overrun), and changes nothing: no grad, no statistic, no counter,
no ``last_stats``. It raises the errors a call would raise; after an error everything is as before.
The plan (:class:`ClipPlan`) has:

- ``plan.skip``: ``True`` when this plan asks for the step not to be taken;
- ``plan.apply()``: performs the writes (scales the grads in place) and commits the statistics
  (EMA, history, γ, counters) and ``last_stats``, and returns the ``(param, grad)`` pairs; for a
  skipping plan it writes nothing, commits the skip counters only, and returns the pairs untouched;
- ``plan.discard()``: writes and commits nothing (``last_stats`` records the skip) and returns
  the pairs untouched: for a plan whose step is skipped by another plan;
- ``plan.total_norm`` / ``plan.norms`` / ``plan.positions``: what it measured (reused by the skip
  policies that wrap it, so wrapping adds no norm pass).

``clipper.clip(params_grads)`` is ``prepare(params_grads).apply()``. An optimizer step over
parameter groups does::

    plans = [plan_of(group.grad_clip, pairs_of(group)) for group in groups]  # reads; may raise
    if any(p.skip for p in plans):
        for p in plans:
            p.apply() if p.skip else p.discard()   # skip counters only: nothing is written
        return                                     # no moment update, no step count
    pairs = [p.apply() for p in plans]             # the writes, the statistics
    ...update the parameters from pairs...

:func:`plan_of` also wraps clippers without ``prepare`` (``ClipGradByNorm``, ...): their plan
never skips and calls ``clip()`` at ``apply`` (so their checks run then). A plan is used once;
``apply`` after the clipper's state was replaced (``load_state_dict``) raises ``RuntimeError``.
When one stateful instance serves several groups, each group's plan is decided from the
statistics as they were before the step, and the commits are applied in order.

Two different things are called "skip": these policies skip the **optimizer step**;
``ZClip(skip_update_on_spike=True)`` keeps the package's meaning, skipping the **statistics
update** (μ, σ²) on a spike while the grads are still clipped and the step is taken.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from ._checks import threshold as _threshold
from ._plan import AdaptiveStats, Batch, ClipPlan, PlannedClip, bool_arg, check_kind, int_arg, pair_list, plan_of
from .clip import ClipGradBase, ClipStats

__all__ = ["ClipPlan", "SkipAbove", "SkipNonFinite", "plan_of"]



def _inner(value: Any) -> Any:
    if value is not None and not isinstance(value, ClipGradBase):
        raise TypeError(f"inner must be a ClipGradBase (a fastclip clipper) or None, not {type(value).__name__}")
    return value


def _measure(b: Batch, inner_plan: ClipPlan) -> tuple[tuple[float, ...], float]:
    """Per-tensor norms and the total of the clipped grads: the inner plan's when it measured
    exactly these, else one norm pass."""
    measured = inner_plan.norms is not None and inner_plan.total_norm is not None
    if measured and inner_plan.positions == tuple(b.positions):
        return inner_plan.norms, inner_plan.total_norm  # type: ignore[return-value]
    norms, total = b.norms()
    return tuple(norms), total


def _skipped_stats(b: Batch, norms: tuple[float, ...], total: float, threshold: float | None = None) -> AdaptiveStats:
    n = len(b.positions)
    return AdaptiveStats(tuple(b.positions), norms, (1.0,) * n, (False,) * n, total, skipped=True, threshold=threshold)


def _plain_stats(b: Batch, norms: tuple[float, ...], total: float, threshold: float | None = None) -> AdaptiveStats:
    n = len(b.positions)
    return AdaptiveStats(tuple(b.positions), norms, (1.0,) * n, (False,) * n, total, threshold=threshold)


def _adapted(stats: Any, fallback: AdaptiveStats) -> AdaptiveStats:
    """The inner clipper's stats as an :class:`AdaptiveStats` (``skipped=False``), so ``last_stats``
    of a policy always has ``skipped``; ``fallback`` when the inner recorded none."""
    if isinstance(stats, AdaptiveStats):
        return stats
    if isinstance(stats, ClipStats):
        return AdaptiveStats(**{f.name: getattr(stats, f.name) for f in dataclasses.fields(ClipStats)})
    return fallback


def _close_inner(plan: ClipPlan) -> None:
    """The inner plan of a skipped step: commit its own skip counters if it skips, else discard it."""
    if plan.skip:
        plan.apply()
    else:
        plan.discard()


def _inner_state(inner: Any) -> Any:
    return inner.state_dict() if hasattr(inner, "state_dict") else None


class _Counters:
    """``skipped`` (the last step), ``consecutive``, ``total_skipped`` of a skip policy."""

    def _init_counters(self) -> None:
        self._skipped = False
        self._consecutive = 0
        self._total = 0

    @property
    def skipped(self) -> bool:
        """Whether this policy skipped the last step."""
        return self._skipped

    @property
    def consecutive(self) -> int:
        """How many steps in a row this policy has skipped."""
        return self._consecutive

    @property
    def total_skipped(self) -> int:
        """How many steps this policy has skipped in all."""
        return self._total

    def _count(self, skipped: bool) -> None:
        self._skipped = skipped
        self._consecutive = self._consecutive + 1 if skipped else 0
        self._total += int(skipped)

    def _counter_state(self, kind: str) -> dict[str, Any]:
        return {
            "kind": kind,
            "skipped": self._skipped,
            "consecutive": self._consecutive,
            "total_skipped": self._total,
            "inner": _inner_state(getattr(self, "_inner_clip", None)),
        }

    def _load_counters(self, state: Any, kind: str) -> None:
        s = check_kind(state, kind)
        skipped = bool_arg(s.get("skipped"), "state['skipped']")
        consecutive = int_arg(s.get("consecutive"), "state['consecutive']", 0)
        total = int_arg(s.get("total_skipped"), "state['total_skipped']", 0)
        if consecutive > total or (skipped and consecutive == 0) or (not skipped and consecutive > 0):
            raise ValueError(
                f"inconsistent counters: skipped={skipped}, consecutive={consecutive}, total_skipped={total}"
            )
        inner: Any = getattr(self, "_inner_clip", None)
        inner_state = s.get("inner")
        if hasattr(inner, "load_state_dict"):
            inner.load_state_dict(inner_state)  # validates before changing anything
        elif inner_state is not None:
            raise ValueError(f"state['inner'] must be None: {type(inner).__name__} has no state")
        self._skipped, self._consecutive, self._total = skipped, consecutive, total


class SkipNonFinite(_Counters, PlannedClip):
    """Skip the step when any gradient holds a NaN or an inf (optax's ``apply_if_finite``).

    Every grad of the call is checked, ``need_clip=False`` ones included (a NaN there would
    poison the update as well): a grad is finite exactly when its exact (float64, never
    overflowing) L2 norm is. When one is not, the plan skips: nothing is written (no grad,
    parameter or optimizer state; the inner clipper's statistics are not updated) and
    ``skipped``/``consecutive``/``total_skipped`` advance. Otherwise ``inner`` (any
    :class:`~fastclip.ClipGradBase`, or None: no clipping) clips, and ``consecutive`` resets.
    The norms of the clipped grads come from the inner plan when it measured them (no extra pass).

    ``max_consecutive``: after that many skips in a row, a further non-finite step raises
    ``RuntimeError`` (from ``prepare``, so nothing changes; the counters stay). optax's
    ``apply_if_finite(inner, max_consecutive_errors)`` instead lets that update through, NaNs
    and all: a deliberate departure. ``None``: never raise.

    Raises ``TypeError``/``ValueError`` at construction for an inner that is not a clipper, or a
    ``max_consecutive`` that is not None or an int >= 0.

    >>> import numpy as np, fastclip as fc
    >>> guard = fc.SkipNonFinite(inner=fc.ClipGradByGlobalNorm(1.0), max_consecutive=3)
    >>> g = np.array([3.0, np.nan])
    >>> out = guard([(None, g)])
    >>> guard.skipped, guard.consecutive, guard.last_stats.skipped, g
    (True, 1, True, array([ 3., nan]))
    """

    def __init__(self, inner: Any = None, max_consecutive: int | None = None) -> None:
        PlannedClip.__init__(self)
        self._inner_clip = _inner(inner)
        self._max = None if max_consecutive is None else int_arg(max_consecutive, "max_consecutive", 0)
        self._init_counters()

    @property
    def inner(self) -> Any:
        """The clipper applied on finite steps (None: none)."""
        return self._inner_clip

    @property
    def max_consecutive(self) -> int | None:
        """Skips in a row after which a non-finite step raises (None: never)."""
        return self._max

    def prepare(self, params_grads: Any, *, name: str = "params_grads") -> ClipPlan:
        """Check every grad for NaN/inf (reusing the inner plan's norms), decide; write nothing.
        Raises ``RuntimeError`` when this would be skip number ``max_consecutive + 1`` in a row."""
        pairs = pair_list(params_grads, name)
        inner_plan = plan_of(self._inner_clip, pairs, name)
        b = Batch(pairs, name)
        norms, total = _measure(b, inner_plan)
        bad = [p for p, n in zip(b.positions, norms) if not math.isfinite(n)]
        ops, extra, extra_pos = b.passthrough_arrays()
        if extra:
            extra_norms = ops.norms(extra, 2.0, True, name, extra_pos)[0]
            bad += [p for p, n in zip(extra_pos, extra_norms) if not math.isfinite(n)]
        nonfinite = bool(bad)
        if nonfinite and self._max is not None and self._consecutive + 1 > self._max:
            raise RuntimeError(
                f"{name}[{min(bad)}] is not finite (NaN or inf), and the previous {self._consecutive} "
                f"step{'' if self._consecutive == 1 else 's'} were skipped for the same reason: "
                f"max_consecutive={self._max} reached. Nothing was modified "
                "(optax's apply_if_finite would apply this update)"
            )
        skip = nonfinite or inner_plan.skip
        stats = _skipped_stats(b, norms, total)

        def commit() -> Any:
            if skip:
                _close_inner(inner_plan)
                self._count(nonfinite)
                self.last_stats = stats
                return None
            out = inner_plan.apply()
            self._count(False)
            inner_stats = getattr(self._inner_clip, "last_stats", None)
            self.last_stats = _adapted(inner_stats, _plain_stats(b, norms, total))
            return out

        def on_discard() -> None:
            inner_plan.discard()
            self.last_stats = stats

        return ClipPlan(
            inner_plan.pairs, skip=skip, commit=commit, stats=stats, owner=self, on_discard=on_discard,
            positions=tuple(b.positions), norms=norms, total_norm=total,
        )  # fmt: skip

    def state_dict(self) -> dict[str, Any]:
        """``{"kind", "skipped", "consecutive", "total_skipped", "inner"}`` (``inner``: the inner
        clipper's ``state_dict()``, or None)."""
        return self._counter_state("SkipNonFinite")

    def load_state_dict(self, state: Any) -> None:
        """Restore :meth:`state_dict`'s output (the inner clipper's too). Raises
        ``TypeError``/``ValueError`` (changing nothing) for another kind or inconsistent counters."""
        self._load_counters(state, "SkipNonFinite")
        self._bump()

    def __repr__(self) -> str:
        return f"SkipNonFinite(inner={self._inner_clip!r}, max_consecutive={self._max!r})"


class SkipAbove(_Counters, PlannedClip):
    """Skip the step when the global norm is not below ``threshold``; else apply ``inner``.

    The global norm is the L2 norm of the clipped grads (``need_clip=False`` pairs excluded, as
    in :class:`~fastclip.ClipGradByGlobalNorm`), exact in float64, from the inner plan when it
    measured it. The step is skipped unless ``norm < threshold`` (AXLearn's ``drop_norm``; Megatron's
    ``grad_norm_skip_threshold`` skips above it): a NaN or infinite norm skips too. Skipping writes
    nothing (no grad, parameter or optimizer state; the inner clipper's statistics are not
    updated) and advances ``skipped``/``consecutive``/``total_skipped``.

    Raises ``TypeError``/``ValueError`` at construction for a non-number, NaN or non-positive
    ``threshold``, or an inner that is not a clipper.

    >>> import numpy as np, fastclip as fc
    >>> guard = fc.SkipAbove(100.0, inner=fc.ClipGradByGlobalNorm(1.0))
    >>> g = np.array([300.0, 400.0])
    >>> guard.clip_([g]), guard.skipped, g
    (500.0, True, array([300., 400.]))
    """

    def __init__(self, threshold: float, inner: Any = None) -> None:
        PlannedClip.__init__(self)
        self._threshold = _threshold(threshold, "threshold", allow_zero=False)
        self._inner_clip = _inner(inner)
        self._init_counters()

    @property
    def threshold(self) -> float:
        """Steps whose global norm is not below this are skipped."""
        return self._threshold

    @property
    def inner(self) -> Any:
        """The clipper applied on steps that are not skipped (None: none)."""
        return self._inner_clip

    def prepare(self, params_grads: Any, *, name: str = "params_grads") -> ClipPlan:
        """Measure the global norm (or reuse the inner plan's) and decide; write nothing."""
        pairs = pair_list(params_grads, name)
        inner_plan = plan_of(self._inner_clip, pairs, name)
        b = Batch(pairs, name)
        norms, total = _measure(b, inner_plan)
        above = not total < self._threshold
        skip = above or inner_plan.skip
        stats = _skipped_stats(b, norms, total, self._threshold)

        def commit() -> Any:
            if skip:
                _close_inner(inner_plan)
                self._count(above)
                self.last_stats = stats
                return None
            out = inner_plan.apply()
            self._count(False)
            inner_stats = getattr(self._inner_clip, "last_stats", None)
            self.last_stats = _adapted(inner_stats, _plain_stats(b, norms, total, self._threshold))
            return out

        def on_discard() -> None:
            inner_plan.discard()
            self.last_stats = stats

        return ClipPlan(
            inner_plan.pairs, skip=skip, commit=commit, stats=stats, owner=self, on_discard=on_discard,
            positions=tuple(b.positions), norms=norms, total_norm=total,
        )  # fmt: skip

    def state_dict(self) -> dict[str, Any]:
        """``{"kind", "skipped", "consecutive", "total_skipped", "inner"}``."""
        return self._counter_state("SkipAbove")

    def load_state_dict(self, state: Any) -> None:
        """Restore :meth:`state_dict`'s output (the inner clipper's too); ``TypeError``/``ValueError``
        (changing nothing) when invalid."""
        self._load_counters(state, "SkipAbove")
        self._bump()

    def __repr__(self) -> str:
        return f"SkipAbove(threshold={self._threshold!r}, inner={self._inner_clip!r})"
