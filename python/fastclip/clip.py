"""Paddle-style gradient clipping: ``ClipGradByValue``, ``ClipGradByNorm``, ``ClipGradByGlobalNorm``.

Each class is called with ``params_grads``, an iterable of ``(param, grad)`` pairs, and returns a
new list of ``(param, grad)`` pairs in input order (Paddle's ``paddle.nn.ClipGrad*`` contract):

- a pair whose grad is ``None`` is dropped;
- a pair whose param has ``need_clip`` literally ``False`` (``getattr(p, "need_clip", True) is
  False``) is passed through untouched and left out of the global norm;
- every other grad is clipped **in place** (all three classes; Paddle's ByValue/ByNorm return new
  tensors) and the same grad object comes back.

One call makes one ``_fastclip.norms`` pass over all clipped grads (f64 accumulation, overflow-safe)
and one ``scale_``/``clamp_`` pass; every buffer is checked before any is touched. What happened is
kept in ``clip.last_stats`` (:class:`ClipStats`), from that same pass.

Deliberate differences from Paddle 3.3.1 (CPU), each tested:

- norms never overflow: Paddle's float32 sum of squares turns ``[1e30, 1]`` into a norm of inf and
  the gradient into zeros; fastclip accumulates in float64 (scaled for float64 input) and clips it
  correctly. Where Paddle is right, results agree to the last bit or within 1 ulp of the scale
  factor (Paddle rounds its float32 norm before dividing; fastclip divides in float64 and rounds the
  factor once). Likewise ``norm > clip_norm`` is decided in float64 with ``clip_norm`` as given
  (Paddle: float32 norm against ``float32(clip_norm)``); the two can disagree only for a norm
  within float32 rounding of ``clip_norm``, where the factor rounds to about 1 anyway;
- float64 ``ClipGradByNorm`` and float16/bfloat16 grads in all three classes work (Paddle's CPU
  kernels raise);
- invalid thresholds (clip_norm <= 0, NaN or inf; NaN bounds; min > max; max <= 0 without min;
  non-numbers; a non-bool ``auto_skip_clip``) raise ``ValueError``/``TypeError`` at construction,
  not at call time or never (Paddle's ``ClipGradByGlobalNorm(-1)`` silently flips signs);
- the result is always a new list without the ``None`` pairs (Paddle's GlobalNorm returns the
  input list itself, ``None`` pairs included, when nothing is left to clip), and 0-D grads stay
  0-D (Paddle's GlobalNorm returns a new shape-[1] tensor);
- integer grads raise ``TypeError`` (they cannot be clipped in place; Paddle's ByValue returns a
  new float32 tensor), and a buffer passed twice raises ``ValueError`` (Paddle's GlobalNorm
  counts and scales it twice).

Mixed dtypes under ``ClipGradByGlobalNorm``: the global norm is computed in float64 from all clipped
grads whatever their dtypes; the factor is rounded to each grad's dtype (float32 for
float32/float16/bfloat16) before the multiply, as Paddle rounds its scale to each grad's dtype.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import _fastclip
from ._buffers import collect
from ._checks import flag as _flag
from ._checks import number as _number
from ._checks import text as _text
from ._checks import threshold as _threshold

__all__ = ["ClipGradBase", "ClipGradByGlobalNorm", "ClipGradByNorm", "ClipGradByValue", "ClipStats"]

_NAME = "params_grads"

Pairs = list[tuple[Any, Any]]


@dataclass(frozen=True)
class ClipStats:
    """What one clip call did, for logging without a second pass over the gradients.

    Every tuple is aligned with ``indices``: the positions, in the input ``params_grads``, of the
    grads that were subject to clipping (``None`` grads and ``need_clip=False`` pairs excluded).

    - ``norms``: each grad's L2 norm before clipping (float64; ``None`` for ``ClipGradByValue``,
      which computes no norm).
    - ``scales``: the factor each grad was multiplied by, as applied (rounded to float32 for
      float32/float16/bfloat16 grads); 1.0 when untouched. ``None`` for ``ClipGradByValue``.
    - ``clipped``: whether each grad was scaled (a NaN factor counts). ``None`` for ``ClipGradByValue``.
    - ``global_norm``: ``sqrt(sum(norms**2))`` for ``ClipGradByGlobalNorm`` (0.0 with no grads),
      else ``None``.
    """

    indices: tuple[int, ...]
    norms: tuple[float, ...] | None
    scales: tuple[float, ...] | None
    clipped: tuple[bool, ...] | None
    global_norm: float | None = None


class _Slot:
    """Stands for one item of ``params_grads`` when handed to :func:`fastclip._buffers.collect`:
    ``.grad`` is the buffer to clip, or ``None`` for a pair that is not clipped (so that collect keeps
    the caller's positions in its error messages and in ``Collected.positions``)."""

    __slots__ = ("grad",)

    def __init__(self, grad: Any) -> None:
        self.grad = grad


_SKIP = _Slot(None)


class _Split:
    """The pairs to return, and the buffers among them to clip."""

    __slots__ = ("arrays", "ops", "out", "positions")

    def __init__(self) -> None:
        self.out: Pairs = []
        self.arrays: list[Any] = []
        self.positions: list[int] = []
        #: The module whose norms/scale_/clamp_ work on ``arrays`` (``_fastclip`` for NumPy arrays).
        self.ops: Any = _fastclip


def _split(params_grads: Any) -> _Split:
    """Drop ``None`` grads, pass ``need_clip=False`` pairs through, collect the rest as buffers.

    Plain NumPy grads are used as they are; any other grad (a DLPack tensor: torch, CuPy, ...) goes
    through :func:`fastclip._buffers.collect`, which makes zero-copy views and picks the device path.
    Raises ``TypeError`` for a non-iterable, an item that is not a pair, or a grad that is not a
    buffer, and ``ValueError`` for buffers on different devices; nothing is modified.
    """
    if isinstance(params_grads, (str, bytes)) or not isinstance(params_grads, Iterable):
        raise TypeError(f"params_grads must be an iterable of (param, grad) pairs, not {type(params_grads).__name__}")
    s = _Split()
    grads: list[Any] = []
    all_numpy = True
    for i, pair in enumerate(params_grads):
        try:
            p, g = pair
        except (TypeError, ValueError):
            raise TypeError(f"params_grads[{i}] must be a (param, grad) pair, not {type(pair).__name__}") from None
        if g is None:
            grads.append(None)
            continue
        s.out.append((p, g))
        if getattr(p, "need_clip", True) is False:
            grads.append(None)
            continue
        grads.append(g)
        s.positions.append(i)
        all_numpy = all_numpy and isinstance(g, np.ndarray)
    if all_numpy:
        s.arrays = [grads[i] for i in s.positions]
    else:
        c = collect([_SKIP if g is None else _Slot(g) for g in grads], _NAME)
        s.arrays = c.arrays
        s.ops = getattr(c, "ops", _fastclip)  # Collected.ops picks the CPU or CUDA module
    return s


_F64 = np.dtype(np.float64)


def _applied(factors: list[float], arrays: list[Any]) -> tuple[float, ...]:
    """Each factor as ``scale_`` applies it: rounded to float32 unless the array is float64 (1.0 stays 1.0)."""
    rounded: dict[float, float] = {}
    out = []
    for f, a in zip(factors, arrays):  # one factor per array, by construction
        if f == 1.0 or getattr(a, "dtype", None) == _F64:
            out.append(f)
        else:
            r = rounded.get(f)
            if r is None:
                r = rounded[f] = float(np.float32(f))
            out.append(r)
    return tuple(out)


class ClipGradBase:
    """Base class of the gradient clipping strategies (Paddle's ``ClipGradBase``).

    ``clip(params_grads)`` (and calling the object) takes an iterable of ``(param, grad)`` pairs and
    returns a list of ``(param, grad)`` pairs. Subclasses implement :meth:`clip`; optimizers accept
    any instance of this class as ``grad_clip``. ``last_stats`` holds the :class:`ClipStats` of the
    last successful call (``None`` before the first).
    """

    last_stats: ClipStats | None

    def __init__(self) -> None:
        self.last_stats = None

    def __call__(self, params_grads: Any) -> Pairs:
        """Same as :meth:`clip`."""
        return self.clip(params_grads)

    def clip(self, params_grads: Any) -> Pairs:
        """Clip ``params_grads``; raises ``NotImplementedError`` in the base class."""
        raise NotImplementedError(f"{type(self).__name__} must implement clip(params_grads)")


class ClipGradByValue(ClipGradBase):
    """Clamp every element of every clipped gradient to ``[min, max]``, in place.

    ``g <- min(max(g, min), max)`` with the bounds rounded to the grad's dtype (as Paddle's kernel
    does: ``max=0.1`` clips float32 grads to ``float32(0.1)``). NaN stays NaN; ``+-inf`` go to the
    bounds. ``min`` defaults to ``-max``. Infinite bounds are allowed (``max=inf`` clips nothing).

    Raises, at construction: ``TypeError`` for a non-number bound; ``ValueError`` for a NaN bound,
    ``max <= 0`` when ``min`` is ``None``, ``min > max``, ``min = +inf`` or ``max = -inf``.
    Calling raises ``TypeError``/``ValueError`` for an unsupported, read-only or shared buffer
    before any is modified.

    >>> import numpy as np, fastclip as fc
    >>> g = np.array([0.8, 89.0, -3.0], np.float32)
    >>> out = fc.ClipGradByValue(1.0)([(fc.Parameter(np.zeros(3, np.float32)), g)])
    >>> g
    array([ 0.8,  1. , -1. ], dtype=float32)
    """

    def __init__(self, max: float, min: float | None = None) -> None:
        super().__init__()
        hi = _number(max, "max")
        if math.isnan(hi):
            raise ValueError("max must not be NaN")
        if min is None:
            if not hi > 0:
                raise ValueError(f"max must be > 0 when min is None (min defaults to -max), got {hi!r}")
            lo = -hi
        else:
            lo = _number(min, "min")
            if math.isnan(lo):
                raise ValueError("min must not be NaN")
            if lo > hi:
                raise ValueError(f"min must be <= max, got min={lo!r} > max={hi!r}")
        if lo == math.inf or hi == -math.inf:
            raise ValueError(f"the bounds [{lo!r}, {hi!r}] would map every element to an infinity")
        self._min = lo
        self._max = hi

    @property
    def max(self) -> float:
        """Upper bound (read-only)."""
        return self._max

    @property
    def min(self) -> float:
        """Lower bound (read-only)."""
        return self._min

    def clip(self, params_grads: Any) -> Pairs:
        """Clamp the grads in place; return the ``(param, grad)`` pairs (see the module doc)."""
        s = _split(params_grads)
        if s.arrays:
            s.ops.clamp_(s.arrays, self._min, self._max, _NAME, s.positions)
        self.last_stats = ClipStats(tuple(s.positions), None, None, None, None)
        return s.out

    def __str__(self) -> str:
        return f"Clip Gradient By Value, min = {self._min:f}, max={self._max:f}"

    def __repr__(self) -> str:
        return f"ClipGradByValue(max={self._max!r}, min={self._min!r})"


class ClipGradByNorm(ClipGradBase):
    """Scale each clipped gradient whose L2 norm exceeds ``clip_norm`` down to ``clip_norm``, in place.

    ``norm = sqrt(sum(g**2))`` per grad (accumulated in float64, never overflowing);
    ``g <- g * (clip_norm / norm)`` only when ``norm > clip_norm`` (at or below: untouched), with
    the factor rounded to the grad's dtype first, Paddle's ``x * (clip_norm / norm)`` order. A grad
    with an infinite element has norm inf: its finite elements become +-0 and the infinite ones NaN;
    a NaN anywhere makes the whole grad NaN (Paddle's outcomes).

    Raises, at construction, ``TypeError`` for a non-number and ``ValueError`` for
    ``clip_norm <= 0``, NaN or inf. Calling raises ``TypeError``/``ValueError`` for an
    unsupported, read-only or shared buffer before any is modified.

    >>> import numpy as np, fastclip as fc
    >>> g = np.array([3.0, 4.0])
    >>> _ = fc.ClipGradByNorm(1.0)([(None, g)])
    >>> g
    array([0.6, 0.8])
    """

    def __init__(self, clip_norm: float) -> None:
        super().__init__()
        self._clip_norm = _threshold(clip_norm, "clip_norm", allow_zero=False, allow_inf=False)

    @property
    def clip_norm(self) -> float:
        """The per-gradient norm bound (read-only)."""
        return self._clip_norm

    def clip(self, params_grads: Any) -> Pairs:
        """Clip each grad by its own norm in place; return the ``(param, grad)`` pairs."""
        s = _split(params_grads)
        c = self._clip_norm
        norms: list[float] = []
        factors: list[float] = []
        if s.arrays:
            norms, _ = s.ops.norms(s.arrays, 2.0, True, _NAME, s.positions)
            # not (n <= c) also catches NaN: c / NaN = NaN poisons the grad, as in Paddle.
            factors = [1.0 if n <= c else c / n for n in norms]
            if any(f != 1.0 for f in factors):
                s.ops.scale_(s.arrays, factors, _NAME, s.positions)
        self.last_stats = ClipStats(
            tuple(s.positions),
            tuple(norms),
            _applied(factors, s.arrays),
            tuple(f != 1.0 for f in factors),
            None,
        )
        return s.out

    def __str__(self) -> str:
        return f"Gradient Clip By Norm, clip_norm={self._clip_norm:f}"

    def __repr__(self) -> str:
        return f"ClipGradByNorm(clip_norm={self._clip_norm!r})"


class ClipGradByGlobalNorm(ClipGradBase):
    """Scale all clipped gradients together so that their global L2 norm is at most ``clip_norm``.

    ``global_norm = sqrt(sum_i sum_j g_ij**2)`` over the clipped grads (float64, never overflowing,
    whatever the mix of dtypes); every clipped grad ``g <- g * (clip_norm / max(global_norm,
    clip_norm))``, in place, the factor rounded to each grad's dtype. A NaN global norm makes every
    clipped grad NaN; an infinite one zeroes the finite elements and turns the infinite ones to NaN.

    ``auto_skip_clip=True`` (Paddle's): scale only when ``global_norm > clip_norm``; at or below the
    bound, or when the global norm is NaN, nothing is touched. ``group`` (an ``mpi4py.MPI.Comm``, a
    ``torch.distributed.ProcessGroup`` or a :class:`fastclip.distributed.Communicator`): each rank
    passes its own shard of the grads and the global norm spans all ranks (params with
    ``replicated=True`` counted once); every rank makes the same decision. ``group_name`` is stored only
    (Paddle's dygraph mode ignores it too; optimizers take one global norm per parameter group).

    Raises, at construction, ``TypeError`` for a non-number ``clip_norm``, a non-str
    ``group_name`` or a non-bool ``auto_skip_clip``, and ``ValueError`` for ``clip_norm <= 0``,
    NaN or inf. Calling raises ``TypeError``/``ValueError`` for an unsupported, read-only or shared
    buffer before any is modified.

    >>> import numpy as np, fastclip as fc
    >>> a, b = np.array([3.0]), np.array([4.0])
    >>> _ = fc.ClipGradByGlobalNorm(1.0)([(None, a), (None, b)])
    >>> a, b
    (array([0.6]), array([0.8]))
    """

    def __init__(
        self, clip_norm: float, group_name: str = "default_group", auto_skip_clip: bool = False, *, group: Any = None
    ) -> None:
        super().__init__()
        self._clip_norm = _threshold(clip_norm, "clip_norm", allow_zero=False, allow_inf=False)
        self._group_name = _text(group_name, "group_name")
        self._auto_skip_clip = _flag(auto_skip_clip, "auto_skip_clip")
        if group is not None:
            from .distributed import as_communicator

            as_communicator(group)  # TypeError/ValueError now rather than at the first step
        self._group = group

    @property
    def group(self) -> Any:
        """The process group the global norm spans (``None``: this process only; see :mod:`fastclip.distributed`)."""
        return self._group

    @property
    def clip_norm(self) -> float:
        """The global norm bound (read-only)."""
        return self._clip_norm

    @property
    def group_name(self) -> str:
        """The group name (read-only; unused in dygraph, as in Paddle)."""
        return self._group_name

    @property
    def auto_skip_clip(self) -> bool:
        """Whether to leave the grads untouched unless the global norm exceeds ``clip_norm``."""
        return self._auto_skip_clip

    def scale_for(self, global_norm: float) -> float:
        """The factor for a given global norm: ``clip_norm / max(global_norm, clip_norm)``, NaN for a
        NaN norm; under ``auto_skip_clip``, 1.0 unless ``global_norm > clip_norm``."""
        if math.isnan(global_norm):
            return 1.0 if self._auto_skip_clip else math.nan  # Paddle's maximum() propagates NaN
        c = self._clip_norm
        return c / global_norm if global_norm > c else 1.0

    def clip(self, params_grads: Any) -> Pairs:
        """Scale the clipped grads by one global factor in place; return the ``(param, grad)`` pairs."""
        if self._group is not None:
            from .distributed import clip_by_global_norm

            return clip_by_global_norm(self, params_grads)
        s = _split(params_grads)
        norms: list[float] = []
        total = 0.0
        factor = 1.0
        if s.arrays:
            norms, total = s.ops.norms(s.arrays, 2.0, True, _NAME, s.positions)
            factor = self.scale_for(total)
            if factor != 1.0:
                s.ops.scale_(s.arrays, factor, _NAME, s.positions)
        self.last_stats = ClipStats(
            tuple(s.positions),
            tuple(norms),
            _applied([factor] * len(s.arrays), s.arrays),
            (factor != 1.0,) * len(s.arrays),
            total,
        )
        return s.out

    def __str__(self) -> str:
        return f"Gradient Clip By GlobalNorm, global_norm={self._clip_norm:f}"

    def __repr__(self) -> str:
        return (
            f"ClipGradByGlobalNorm(clip_norm={self._clip_norm!r}, group_name={self._group_name!r}, "
            f"auto_skip_clip={self._auto_skip_clip!r}{'' if self._group is None else f', group={self._group!r}'})"
        )
