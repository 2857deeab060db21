"""Machinery shared by the adaptive clippers and the skip policies: plans, batches, state keys.

A *plan* (:class:`ClipPlan`) is what a clipper has decided for one call, before anything is
written: ``prepare(params_grads)`` reads (norm passes, decisions, every check) and returns one;
``plan.apply()`` writes (scales the grads) and commits the clipper's statistics; ``plan.discard()``
writes and commits nothing. The protocol optimizers follow is in :mod:`fastclip.skip`.

:class:`Batch` is one call's input split the Paddle way (``None`` grads dropped, ``need_clip=False``
pairs passed through) with the params kept beside the grads, and :func:`as_pairs` turns whatever
``clip_grad_norm_`` accepts (plus an ``nn.Module``) into ``(param, grad)`` pairs.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import _fastclip
from ._buffers import collect, is_torch_tensor
from ._checks import number as _number
from .clip import ClipGradBase, ClipStats

__all__ = ["AdaptiveStats", "Batch", "ClipPlan", "PlannedClip", "as_pairs", "plan_of"]

Pairs = list[tuple[Any, Any]]

#: torch's guard against division by zero in ``clip_grad_norm_``'s coefficient (also zclip's).
TORCH_EPS = 1e-6


@dataclass(frozen=True)
class AdaptiveStats(ClipStats):
    """:class:`~fastclip.ClipStats` plus what an adaptive clipper or a skip policy decided.

    - ``skipped``: the step is not taken (nothing was written; see :mod:`fastclip.skip`).
    - ``threshold``: the bound the global norm was held to this call (ZClip's effective bound,
      AutoClip's global quantile, SkipAbove's threshold), ``None`` where there is none.
    - ``thresholds``: per-tensor bounds aligned with ``indices`` (AutoClip per tensor, AdaGC).
    - ``units_clipped``: for AGC, how many units of each tensor were scaled.
    - ``spike``: ZClip's z-score (or percentile) test fired.
    - ``warmup``: the call used the warm-up rule (ZClip, AdaGC).
    """

    skipped: bool = False
    threshold: float | None = None
    thresholds: tuple[float, ...] | None = None
    units_clipped: tuple[int, ...] | None = None
    spike: bool = False
    warmup: bool = False


def total_of(norms: Iterable[float]) -> float:
    """``sqrt(sum(n**2))`` of per-tensor L2 norms, without overflow (NaN if any is NaN, inf if any is inf)."""
    ns = list(norms)
    if not ns:
        return 0.0
    if any(math.isnan(n) for n in ns):
        return math.nan
    return math.hypot(*ns)


class ClipPlan:
    """What one clipper will do with one call's gradients: decided, checked, not yet written.

    - ``skip``: ``True`` when this plan asks for the step not to be taken.
    - ``pairs``: the ``(param, grad)`` pairs the call returns (``None`` grads dropped).
    - ``positions`` / ``norms`` / ``total_norm``: the grads this plan measured (their positions in
      ``params_grads``, each one's L2 norm before clipping, and the L2 norm of them all), or ``None``
      where the plan measured nothing (a wrapped clipper without ``prepare``).
    - ``stats``: the :class:`AdaptiveStats` that ``apply``/``discard`` record as ``last_stats``.

    ``apply()`` performs the writes and commits the statistics (for a skipping plan: the skip
    counters only) and returns ``pairs``; ``discard()`` commits nothing and returns ``pairs``
    untouched. A plan is used once: a second ``apply``/``discard`` raises ``RuntimeError``, as does
    ``apply`` after the clipper's state was replaced (``load_state_dict``) since ``prepare``.
    """

    __slots__ = ("_commit", "_epoch", "_on_discard", "_owner", "_used", "norms", "pairs", "positions", "skip",
                 "stats", "total_norm")  # fmt: skip

    def __init__(
        self,
        pairs: Pairs,
        *,
        skip: bool,
        commit: Callable[[], Pairs | None],
        stats: AdaptiveStats | None = None,
        owner: Any = None,
        on_discard: Callable[[], None] | None = None,
        positions: tuple[int, ...] | None = None,
        norms: tuple[float, ...] | None = None,
        total_norm: float | None = None,
    ) -> None:
        self.pairs = pairs
        self.skip = bool(skip)
        self.stats = stats
        self.positions = positions
        self.norms = norms
        self.total_norm = total_norm
        self._commit = commit
        self._on_discard = on_discard
        self._owner = owner
        self._epoch = getattr(owner, "_epoch", 0)
        self._used = False

    def _use(self) -> None:
        if self._used:
            raise RuntimeError("this ClipPlan was already applied or discarded; call prepare() again")
        if self._owner is not None and getattr(self._owner, "_epoch", 0) != self._epoch:
            raise RuntimeError(
                f"the state of {type(self._owner).__name__} was replaced (load_state_dict/reset) after this plan "
                "was prepared; call prepare() again"
            )
        self._used = True

    def apply(self) -> Pairs:
        """Write (unless ``skip``) and commit; return ``pairs``."""
        self._use()
        out = self._commit()
        return self.pairs if out is None else out

    def discard(self) -> Pairs:
        """Write nothing and commit nothing (the step is skipped by another plan); return ``pairs``."""
        self._use()
        if self._on_discard is not None:
            self._on_discard()
        return self.pairs

    def __repr__(self) -> str:
        return f"ClipPlan(skip={self.skip}, grads={len(self.pairs)}, total_norm={self.total_norm!r})"


def plan_of(clip: Any, params_grads: Any, name: str = "params_grads") -> ClipPlan:
    """``clip.prepare(params_grads)`` for a clipper that has it; for any other
    :class:`~fastclip.ClipGradBase` (``ClipGradByNorm``, ...) a plan that never skips and whose
    ``apply`` calls ``clip.clip(pairs)``: read-only and shared buffers are refused here, its other
    checks (dtypes) run at ``apply``.
    ``clip=None`` gives a plan that passes the pairs through. Raises ``TypeError`` for anything else.
    ``name`` is what error messages call ``params_grads``."""
    if isinstance(clip, PlannedClip):
        return clip.prepare(params_grads, name=name)
    if clip is not None and hasattr(clip, "prepare"):
        return clip.prepare(params_grads)
    if clip is not None and not isinstance(clip, ClipGradBase):
        raise TypeError(f"inner must be a ClipGradBase (a fastclip clipper) or None, not {type(clip).__name__}")
    pairs = pair_list(params_grads, name)
    out = [(p, g) for p, g in pairs if g is not None]
    if clip is not None:
        Batch(pairs, name).check_writable()  # buffer errors now, not half-way through a step

    def commit() -> Pairs | None:
        return None if clip is None else clip.clip(pairs)

    return ClipPlan(out, skip=False, commit=commit)


def pair_list(params_grads: Any, name: str) -> list[tuple[Any, Any]]:
    """``params_grads`` read once into a list of 2-tuples; ``TypeError`` naming the bad item."""
    if isinstance(params_grads, (str, bytes)) or not isinstance(params_grads, Iterable):
        raise TypeError(f"{name} must be an iterable of (param, grad) pairs, not {type(params_grads).__name__}")
    out = []
    for i, pair in enumerate(params_grads):
        try:
            p, g = pair
        except (TypeError, ValueError):
            raise TypeError(f"{name}[{i}] must be a (param, grad) pair, not {type(pair).__name__}") from None
        out.append((p, g))
    return out


class _Slot:
    """Stands for one item when handed to :func:`fastclip._buffers.collect` (``.grad`` the buffer or
    ``None``), so that collect keeps the caller's positions."""

    __slots__ = ("grad",)

    def __init__(self, grad: Any) -> None:
        self.grad = grad


_NONE = _Slot(None)


class Batch:
    """One call's ``(param, grad)`` pairs, split for clipping.

    ``pairs``: what the call returns (``None`` grads dropped, input order). ``arrays`` / ``params`` /
    ``positions``: the grads to clip (as buffers: NumPy arrays, or CUDA buffers when ``ops`` is the
    CuPy path), their params, and their positions in the input. ``passthrough``: ``(position, grad)``
    of the ``need_clip=False`` pairs, unconverted (see :meth:`passthrough_arrays`).
    """

    __slots__ = ("arrays", "name", "ops", "pairs", "params", "passthrough", "positions")

    def __init__(self, params_grads: Any, name: str = "params_grads") -> None:
        self.name = name
        items = pair_list(params_grads, name)
        self.pairs: Pairs = []
        self.params: list[Any] = []
        self.positions: list[int] = []
        self.passthrough: list[tuple[int, Any]] = []
        grads: list[Any] = []
        all_numpy = True
        for i, (p, g) in enumerate(items):
            if g is None:
                grads.append(None)
                continue
            self.pairs.append((p, g))
            if getattr(p, "need_clip", True) is False:
                self.passthrough.append((i, g))
                grads.append(None)
                continue
            grads.append(g)
            self.params.append(p)
            self.positions.append(i)
            all_numpy = all_numpy and isinstance(g, np.ndarray)
        self.ops: Any = _fastclip
        if all_numpy:
            self.arrays: list[Any] = [grads[i] for i in self.positions]
        else:
            c = collect([_NONE if g is None else _Slot(g) for g in grads], name)
            self.arrays = c.arrays
            self.ops = c.ops

    @property
    def cpu(self) -> bool:
        """Whether the clipped grads are CPU (NumPy) buffers."""
        return self.ops is _fastclip

    def norms(self) -> tuple[list[float], float]:
        """Each clipped grad's L2 norm and the total (float64, one pass; ``([], 0.0)`` for none)."""
        if not self.arrays:
            return [], 0.0
        norms, total = self.ops.norms(self.arrays, 2.0, True, self.name, self.positions)
        return list(norms), float(total)

    def passthrough_arrays(self) -> tuple[Any, list[Any], list[int]]:
        """``(ops, arrays, positions)`` of the ``need_clip=False`` grads, converted to buffers."""
        if not self.passthrough:
            return _fastclip, [], []
        pos = [i for i, _ in self.passthrough]
        if all(isinstance(g, np.ndarray) for _, g in self.passthrough):
            return _fastclip, [g for _, g in self.passthrough], pos
        slots: list[Any] = [_NONE] * (pos[-1] + 1)
        for i, g in self.passthrough:
            slots[i] = _Slot(g)
        c = collect(slots, self.name)
        return c.ops, c.arrays, pos

    def check_writable(self, arrays: list[Any] | None = None, positions: list[int] | None = None) -> None:
        """Raise (before anything is written) what an in-place pass over ``arrays`` (default: the
        clipped grads) would raise: a read-only buffer, two buffers sharing memory. Contiguous CPU
        buffers are checked by the extension itself (``scale_`` by 1.0 checks and touches nothing);
        strided ones in Python (``writeable`` flag, ``np.may_share_memory`` against every other).
        CUDA buffers are checked by their own ``scale_`` at ``apply``."""
        arrays = self.arrays if arrays is None else arrays
        positions = self.positions if positions is None else positions
        if not arrays or not self.cpu:
            return
        contiguous = [k for k, a in enumerate(arrays) if a.flags.c_contiguous]
        if contiguous:
            self.ops.scale_([arrays[k] for k in contiguous], 1.0, self.name, [positions[k] for k in contiguous])
        for k, a in enumerate(arrays):
            if a.flags.c_contiguous:
                continue
            if not a.flags.writeable:
                raise ValueError(
                    f"{self.name}[{positions[k]}] is read-only; clipping works in place and needs a writeable array"
                )
            for j, b in enumerate(arrays):
                if j != k and np.may_share_memory(a, b):
                    first, second = sorted((positions[k], positions[j]))
                    raise ValueError(
                        f"{self.name}[{first}] and {self.name}[{second}] share memory (their byte ranges overlap; "
                        "interleaved strided views count too); an in-place call would modify it twice. "
                        "Pass each buffer once"
                    )

    def key(self, k: int) -> Any:
        """The state key of clipped grad ``k``: its param's ``name`` when that is a ``str``
        (``fastclip.Parameter``, Paddle parameters), else its position in the input."""
        name = getattr(self.params[k], "name", None)
        return name if isinstance(name, str) else self.positions[k]

    def keys(self) -> list[Any]:
        """:meth:`key` of every clipped grad; ``ValueError`` when two grads have the same key."""
        keys = [self.key(k) for k in range(len(self.arrays))]
        if len(set(keys)) != len(keys):
            seen: dict[Any, int] = {}
            for k, key in enumerate(keys):
                if key in seen:
                    raise ValueError(
                        f"{self.name}[{seen[key]}] and {self.name}[{self.positions[k]}] have the same parameter name "
                        f"{key!r}; per-tensor state is kept by name, so names must be unique"
                    )
                seen[key] = self.positions[k]
        return keys


def _grad_of(obj: Any, name: str, pos: int) -> Any:
    """The buffer ``obj`` stands for, as ``clip_grad_norm_`` reads it (``None``: no gradient)."""
    if isinstance(obj, np.ndarray):
        return obj
    if is_torch_tensor(obj):
        # A Parameter (a tensor that requires grad or holds one) stands for its .grad; a plain
        # tensor is itself the buffer.
        return obj.grad if (obj.requires_grad or obj.grad is not None) else obj
    if hasattr(obj, "__dlpack_device__"):
        return obj
    if hasattr(obj, "grad"):
        return obj.grad
    raise TypeError(f"{name}[{pos}] must be a numpy.ndarray, a DLPack tensor or have a .grad, not {type(obj).__name__}")


def _is_module(obj: Any) -> bool:
    """A torch ``nn.Module`` (or anything else with a ``parameters()`` method that is not a buffer)."""
    return (
        not isinstance(obj, np.ndarray)
        and not hasattr(obj, "__dlpack__")
        and callable(getattr(obj, "parameters", None))
    )


def as_pairs(grads: Any, name: str = "grads") -> Pairs:
    """``grads`` in any form :func:`fastclip.clip_grad_norm_` accepts (one array, an iterable or a
    generator of arrays, DLPack tensors or objects with a ``.grad``), or an object with a
    ``parameters()`` method (a torch ``nn.Module``: its parameters), as ``(param, grad)`` pairs.

    A parameter item gives ``(item, item.grad)``; a bare buffer gives ``(None, buffer)``. Raises
    ``TypeError`` naming the position of an item that is none of these."""
    obj = grads.parameters() if _is_module(grads) else grads
    if isinstance(obj, np.ndarray) or hasattr(obj, "__dlpack__") or (
        hasattr(obj, "grad") and not isinstance(obj, Iterable)
    ):
        items = [obj]
    elif isinstance(obj, (str, bytes)) or not isinstance(obj, Iterable):
        raise TypeError(
            f"{name} must be an array, an iterable of arrays/parameters or a module, not {type(obj).__name__}"
        )
    else:
        items = list(obj)
    pairs: Pairs = []
    for i, item in enumerate(items):
        g = _grad_of(item, name, i)
        pairs.append((None if g is item else item, g))
    return pairs


def int_arg(value: Any, name: str, minimum: int) -> int:
    """An ``int`` (not a bool) ``>= minimum``; ``TypeError``/``ValueError`` naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    v = int(value)
    if v < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {v}")
    return v


def bool_arg(value: Any, name: str) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be a bool, not {type(value).__name__}")
    return bool(value)


def real_arg(value: Any, name: str, *, lo: float, hi: float = math.inf, lo_open: bool = False,
             hi_open: bool = False) -> float:  # fmt: skip
    """A real number in ``[lo, hi]`` (ends open as asked), never NaN; ``TypeError``/``ValueError``."""
    v = _number(value, name)
    ok = not math.isnan(v) and (v > lo if lo_open else v >= lo) and (v < hi if hi_open else v <= hi)
    if not ok:
        left, right = "(" if lo_open else "[", ")" if hi_open else "]"
        raise ValueError(f"{name} must be in {left}{lo!r}, {hi!r}{right}, got {v!r}")
    return v


class PlannedClip(ClipGradBase):
    """Base of the clippers that work in two phases (:meth:`prepare`, then ``plan.apply()``).

    ``clip(params_grads)`` = ``prepare(params_grads).apply()``; ``clip_(grads)`` is the torch-style
    entry (any form :func:`fastclip.clip_grad_norm_` accepts, or an ``nn.Module``) and returns the
    total L2 norm of the clipped grads before clipping. ``state_dict()``/``load_state_dict()``
    save and restore everything a resumed run needs to continue bit-identically.
    """

    _epoch: int

    def __init__(self) -> None:
        super().__init__()
        self._epoch = 0

    def prepare(self, params_grads: Any, *, name: str = "params_grads") -> ClipPlan:
        """Read, decide and check; write nothing and change no state. See :class:`ClipPlan`.
        ``name``: what error messages call ``params_grads`` (``clip_`` passes ``"grads"``)."""
        raise NotImplementedError

    def clip(self, params_grads: Any) -> Pairs:
        """Clip in place (or skip) and return the ``(param, grad)`` pairs: ``prepare(...).apply()``."""
        return self.prepare(params_grads).apply()

    def clip_(self, grads: Any) -> float:
        """Clip ``grads`` in place (torch style) and return their total L2 norm before clipping.

        ``grads``: one array, an iterable (a generator too) of arrays, DLPack tensors or objects with
        a ``.grad``, or an ``nn.Module`` (its ``parameters()``). What was done is in ``last_stats``.
        """
        plan = self.prepare(as_pairs(grads, "grads"), name="grads")
        plan.apply()
        return 0.0 if plan.total_norm is None else plan.total_norm

    def _bump(self) -> None:
        """Invalidate plans prepared against the state being replaced."""
        self._epoch += 1

    def state_dict(self) -> dict[str, Any]:
        """The clipper's state as plain Python data (floats, ints, lists, dicts)."""
        raise NotImplementedError

    def load_state_dict(self, state: Any) -> None:
        """Restore a :meth:`state_dict`; raises ``TypeError``/``ValueError`` (changing nothing) if invalid."""
        raise NotImplementedError


def check_kind(state: Any, kind: str) -> dict[str, Any]:
    """``state`` is a dict made by ``kind.state_dict()``; ``TypeError``/``ValueError`` otherwise."""
    if not isinstance(state, dict):
        raise TypeError(f"state must be a dict (from {kind}.state_dict()), not {type(state).__name__}")
    if state.get("kind") != kind:
        raise ValueError(f"state is not a {kind} state (kind={state.get('kind')!r})")
    return state


def finite_float(value: Any, where: str, *, nonneg: bool = True, allow_none: bool = False) -> float | None:
    """A state value: a finite float (``>= 0`` if ``nonneg``), or ``None`` when allowed."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (float, int, np.floating, np.integer)):
        raise TypeError(f"{where} must be a float, not {type(value).__name__}")
    v = float(value)
    if not math.isfinite(v) or (nonneg and v < 0):
        raise ValueError(f"{where} must be a finite float{' >= 0' if nonneg else ''}, got {v!r}")
    return v


def state_key(key: Any, where: str) -> Any:
    if isinstance(key, bool) or not isinstance(key, (str, int)):
        raise TypeError(f"{where}: keys must be parameter names (str) or positions (int), not {type(key).__name__}")
    return key
