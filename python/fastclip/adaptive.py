"""Adaptive gradient clipping: ``AdaptiveGradClip`` (AGC), ``ZClip``, ``AutoClip``, ``AdaGC``.

Each class is a :class:`~fastclip.ClipGradBase` (usable as ``grad_clip=`` in every optimizer, and
called with ``(param, grad)`` pairs like the Paddle classes: ``None`` grads dropped,
``need_clip=False`` pairs passed through untouched and left out of every norm, every other grad
clipped **in place**), and also has:

- ``clip_(grads)``: the torch-style entry. ``grads`` is any form :func:`fastclip.clip_grad_norm_`
  accepts (one array, an iterable or generator of arrays, DLPack tensors, objects with a ``.grad``)
  or an object with a ``parameters()`` method (a torch ``nn.Module``: its parameters). It returns
  the total L2 norm of the clipped grads before clipping;
- ``prepare(params_grads) -> ClipPlan``: the read-only first phase (norm passes, decisions, every
  check), and ``plan.apply()`` the writes and the statistics update (the protocol is in
  :mod:`fastclip.skip`); ``clip(params_grads)`` is ``prepare(...).apply()``;
- ``last_stats``: an :class:`AdaptiveStats` (a :class:`~fastclip.ClipStats` with the thresholds,
  spike and warm-up flags) from the same passes;
- ``state_dict()`` / ``load_state_dict(state)``: plain Python data (floats are float64), validated
  on load, so that a resumed run continues bit-identically.

Costs: ZClip, AutoClip and AdaGC make one norm pass (every tensor's norm and the total, as
``ClipGradByGlobalNorm``) and one scaling pass over the grads they scale; AGC makes one norm pass
over the weights and one over the grads (per unit), then scales the clipped units. No temporary of
a tensor's size is made (the extension copies a strided unit to read it: AGC hands it strided units
in batches of at most 1 MiB, or one unit when a unit is larger).

Per-tensor state (AutoClip per tensor, AdaGC) is keyed by the parameter's ``name`` when it is a
``str`` (:class:`fastclip.Parameter`, Paddle parameters) and otherwise by the grad's position in
the call; so one instance may serve several parameter groups of named parameters, but unnamed
parameters of different groups would share keys: use one instance per group then.

Non-finite norms never enter the statistics (μ, σ², the warm-up buffer, the history, γ): the grads
of that step are treated as the reference package treats them, and the statistics are left as they
were. This departs from the reference packages, which let one NaN poison every later step (zclip,
autoclip, pytorch_optimizer) or one inf zero a threshold (pytorch_optimizer's warm-up); the tests
name it ``nonfinite_kept_out_of_statistics``. Norms are exact (float64, never overflowing), where
the references' float32 norms overflow to inf (``float32_norm_overflow``).
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from collections.abc import Iterable
from typing import Any

import numpy as np

from ._buffers import device_kind, exportable, is_torch_tensor
from ._checks import threshold as _threshold
from ._plan import (
    TORCH_EPS,
    AdaptiveStats,
    Batch,
    ClipPlan,
    PlannedClip,
    bool_arg,
    check_kind,
    finite_float,
    int_arg,
    real_arg,
    state_key,
    total_of,
)

__all__ = ["AdaGC", "AdaptiveGradClip", "AdaptiveStats", "AutoClip", "ZClip"]

_F64 = np.dtype(np.float64)
#: At most this many bytes of strided units are gathered (copied) by one norms call.
_GATHER_BYTES = 1 << 20


def _torch_coefficient(max_norm: float, total: float) -> float:
    """``torch.nn.utils.clip_grad_norm_``'s ``clamp(max_norm / (total + 1e-6), max=1)``, NaN kept
    (so an infinite max_norm with an infinite or NaN total gives NaN, as in torch)."""
    c = max_norm / (total + TORCH_EPS)  # total >= 0 or NaN: the divisor is never 0
    return c if (c < 1.0 or math.isnan(c)) else 1.0


def _div(a: float, b: float) -> float:
    """``a / b`` with IEEE semantics for ``b == 0`` (inf, or NaN for 0/0), as torch divides."""
    if b == 0.0:
        return math.nan if (a == 0.0 or math.isnan(a)) else math.copysign(math.inf, a)
    return a / b


def _clamp_min(x: float, lo: float) -> float:
    """torch's ``clamp_min``: NaN stays NaN."""
    return lo if x < lo else x


def _lerp(start: float, end: float, weight: float) -> float:
    """torch's ``lerp`` (the two-sided form torch and NumPy use for accuracy near ``weight = 1``)."""
    if weight < 0.5:
        return start + weight * (end - start)
    return end - (end - start) * (1.0 - weight)


def _scale_plan(batch: Batch, factors: list[float]) -> tuple[list[Any], list[float], list[int]]:
    """The arrays, factors and positions of one ``scale_`` call: only factors that are not 1.0."""
    idx = [k for k, f in enumerate(factors) if f != 1.0]
    return [batch.arrays[k] for k in idx], [factors[k] for k in idx], [batch.positions[k] for k in idx]


def _applied(factors: Iterable[float], arrays: list[Any]) -> tuple[float, ...]:
    """Each factor as ``scale_`` applies it: float32-rounded unless the array is float64."""
    return tuple(
        f if (f == 1.0 or getattr(a, "dtype", None) == _F64) else float(np.float32(f))
        for f, a in zip(factors, arrays)
    )


# ------------------------------------------------------------------------------------------ AGC


def _weight_of(param: Any, name: str, pos: int) -> np.ndarray:
    """The weight array of a parameter, read-only use (a NumPy view, no copy)."""
    if param is None:
        raise TypeError(
            f"AdaptiveGradClip needs each gradient's weights, but {name}[{pos}] is a bare gradient: pass "
            "(param, grad) pairs to clip(), or parameters (objects with a value and a .grad, or a module) to clip_()"
        )
    if isinstance(param, np.ndarray):
        return param
    if is_torch_tensor(param) or hasattr(param, "__dlpack_device__"):
        if device_kind(param, f"weight of {name}", pos) != "cpu":
            raise TypeError(f"AdaptiveGradClip works on CPU buffers; the weight of {name}[{pos}] is on a GPU")
        producer, bf16 = exportable(param)
        arr = np.from_dlpack(producer)
        if bf16:
            import ml_dtypes

            arr = arr.view(ml_dtypes.bfloat16)
        return arr
    value = getattr(param, "value", None)
    if isinstance(value, np.ndarray):
        return value
    raise TypeError(
        f"the param of {name}[{pos}] ({type(param).__name__}) has no weights AdaptiveGradClip can read: "
        "expected a numpy.ndarray, a DLPack tensor or an object with a .value array"
    )


def _units(a: np.ndarray, kept: tuple[int, ...]) -> list[np.ndarray]:
    """Views of every unit of ``a`` (the slices over the reduced axes, one per index of the kept
    axes, in C order of the kept axes); ``[a]`` when no axis is kept."""
    if not kept:
        return [a]
    k = len(kept)
    v = a if kept == tuple(range(k)) else np.moveaxis(a, kept, tuple(range(k)))
    if k == 1:
        return [v[i, ...] for i in range(v.shape[0])]
    out = []
    for idx in np.ndindex(*v.shape[:k]):
        key = (*idx, Ellipsis)  # v[*idx, ...]: a 0-D view (not a scalar) when no axis is reduced
        out.append(v[key])
    return out


def _unit_norms(ops: Any, units: list[np.ndarray], name: str, positions: list[int]) -> list[float]:
    """L2 norm of every unit: one ``norms`` call for contiguous units; strided units in calls that
    gather at most ``_GATHER_BYTES`` each (the extension copies a strided view to read it)."""
    if not units:
        return []
    if all(u.flags.c_contiguous for u in units):
        return list(ops.norms(units, 2.0, True, name, positions)[0])
    out: list[float] = []
    start, size = 0, 0
    for j, u in enumerate(units):
        size += 0 if u.flags.c_contiguous else u.nbytes
        if size >= _GATHER_BYTES or j == len(units) - 1:
            out += ops.norms(units[start : j + 1], 2.0, True, name, positions[start : j + 1])[0]
            start, size = j + 1, 0
    return out


def _layout(axis: Any) -> Any:
    if axis is None:
        return None
    if isinstance(axis, str):
        if axis.lower() != "optax":
            raise ValueError(f"axis must be None, 'optax', an int or a tuple of ints, got {axis!r}")
        return "optax"
    items = (axis,) if not isinstance(axis, (tuple, list)) else tuple(axis)
    out = []
    for a in items:
        if isinstance(a, bool) or not isinstance(a, (int, np.integer)):
            raise TypeError(f"axis must be None, 'optax', an int or a tuple of ints, not {type(a).__name__}")
        out.append(int(a))
    if len(set(out)) != len(out):
        raise ValueError(f"axis has repeated entries: {tuple(out)}")
    return tuple(out)


class AdaptiveGradClip(PlannedClip):
    """Adaptive gradient clipping, AGC (Brock et al. 2021, NFNets), unit-wise and in place.

    For every unit ``u`` of every clipped gradient ``g`` with weight ``w`` (same shape)::

        max_u = clipping * max(||w_u||, eps)
        g_u <- g_u                                  if ||g_u|| < max_u
        g_u <- g_u * (max_u / max(||g_u||, 1e-6))   otherwise (so ||g_u|| becomes max_u)

    (the order of ``timm.utils.agc.adaptive_clip_grad`` and ``optax.adaptive_grad_clip``; norms in
    float64, the factor rounded to the grad's dtype as in ``scale_``). A NaN in a unit's grad or
    weight makes that unit NaN, as in both references; there is no state.

    Units (layouts differ between frameworks, so say which one a call uses):

    - ``axis=None`` (default, torch and timm): a weight is ``(out, in, ...)``: a unit is one slice
      ``g[i]`` along the first dimension (``nn.Linear`` rows, conv output channels); a 0-D or 1-D
      tensor (a bias) is one unit. Matches ``timm.utils.agc.adaptive_clip_grad``.
    - ``axis=int`` or a tuple of ints: the axes each unit's norm is taken over (optax's ``axis=``);
      a unit is one index of the other axes. ``axis=(0, 1, 2)`` on HWIO conv kernels, ``axis=0`` on
      ``(in, out)`` dense kernels.
    - ``axis="optax"``: optax's default inference by rank: a tensor with at most one dimension
      larger than 1 is one unit; 2-D and 3-D tensors reduce axis 0; 4-D axes (0, 1, 2); 5-D axes
      (0, 1, 2, 3); other ranks raise ``ValueError``. Matches ``optax.adaptive_grad_clip(clipping,
      eps)`` on JAX (HWIO) layouts.

    The weight of a pair ``(param, grad)`` is ``param`` itself when it is an array or a DLPack
    tensor (a torch ``Parameter``), else ``param.value`` (:class:`fastclip.Parameter`). A bare
    gradient has no weights: ``clip_(arrays)`` raises ``TypeError`` (pass parameters or a module).

    Raises ``TypeError``/``ValueError`` at construction for a non-number, NaN, infinite or
    non-positive ``clipping``, a negative ``eps`` or a bad ``axis``; at call time, before anything
    is written, for a missing weight, a weight whose shape differs from its grad's, an axis out of
    range, CUDA buffers (AGC runs on CPU buffers), or any buffer error of the extension.

    Cost: one norm pass over the weights and one over the grads, one unit at a time (units are
    views: contiguous ones are read in place, strided ones copied in batches of at most 1 MiB or
    one unit), then
    one scaling pass over the clipped units (strided layouts: one in-place multiply of the tensor
    by its per-unit factors). The per-unit work in Python is O(number of units).

    >>> import numpy as np, fastclip as fc
    >>> w = fc.Parameter(np.array([[3.0, 4.0], [0.0, 0.0]]))
    >>> w.grad = np.array([[0.6, 0.8], [1.0, 0.0]])
    >>> agc = fc.AdaptiveGradClip(clipping=0.1, eps=1e-3)
    >>> agc.clip_([w])    # row 0: ||g|| = 1 > 0.1 * 5; row 1: ||g|| = 1 > 0.1 * 1e-3
    1.4142135623730951
    >>> w.grad
    array([[3.e-01, 4.e-01],
           [1.e-04, 0.e+00]])
    >>> agc.last_stats.units_clipped
    (2,)
    """

    def __init__(self, clipping: float = 0.01, eps: float = 1e-3, axis: Any = None) -> None:
        super().__init__()
        self._clipping = _threshold(clipping, "clipping", allow_zero=False, allow_inf=False)
        self._eps = _threshold(eps, "eps", allow_inf=False)
        self._axis = _layout(axis)

    @property
    def clipping(self) -> float:
        """λ: the largest allowed ratio ``||g_u|| / max(||w_u||, eps)``."""
        return self._clipping

    @property
    def eps(self) -> float:
        """The floor of a unit's weight norm (so zero-initialized weights can move)."""
        return self._eps

    @property
    def axis(self) -> Any:
        """``None`` (torch layout), ``"optax"`` or the tuple of reduced axes."""
        return self._axis

    def reduced_axes(self, shape: tuple[int, ...], where: str = "tensor") -> tuple[int, ...]:
        """The axes a unit's norm is taken over for a tensor of ``shape`` (see the class doc)."""
        d = len(shape)
        if self._axis is None:
            return tuple(range(d)) if d <= 1 else tuple(range(1, d))
        if self._axis == "optax":
            if sum(1 for s in shape if s != 1) <= 1:
                return tuple(range(d))
            if d in (2, 3):
                return (0,)
            if d in (4, 5):
                return tuple(range(d - 1))
            raise ValueError(
                f"{where} has shape {shape}: axis='optax' infers units for tensors of rank 1 to 5 only "
                "(optax's rule); pass the reduced axes as axis="
            )
        red = []
        for a in self._axis:
            if not -d <= a < d:
                raise ValueError(f"axis {a} is out of range for {where} of shape {shape}")
            red.append(a % d)
        if len(set(red)) != len(red):
            raise ValueError(f"axis {self._axis} names the same axis twice for {where} of shape {shape}")
        return tuple(sorted(red))

    def prepare(self, params_grads: Any, *, name: str = "params_grads") -> ClipPlan:
        """Measure every unit of every weight and grad, decide each unit's factor and check every
        buffer; nothing is written. See :class:`fastclip.skip.ClipPlan`."""
        b = Batch(params_grads, name)
        if b.arrays and not b.cpu:
            raise TypeError("AdaptiveGradClip works on CPU buffers (NumPy, torch CPU tensors); got CUDA buffers")
        weights: list[np.ndarray] = []
        kept: list[tuple[int, ...]] = []
        for k, (p, g) in enumerate(zip(b.params, b.arrays)):
            pos = b.positions[k]
            w = _weight_of(p, name, pos)
            if w.shape != g.shape:
                raise ValueError(f"{name}[{pos}]: the weight has shape {w.shape} but the grad has shape {g.shape}")
            red = self.reduced_axes(g.shape, f"{name}[{pos}]")
            kept.append(tuple(a for a in range(g.ndim) if a not in red))
            weights.append(w)
        w_units = [_units(w, kp) for w, kp in zip(weights, kept)]
        g_units = [_units(g, kp) for g, kp in zip(b.arrays, kept)]
        rep = [[b.positions[k]] * len(u) for k, u in enumerate(g_units)]
        flat_pos = [p for r in rep for p in r]
        wn = _unit_norms(b.ops, [u for us in w_units for u in us], f"weight of {name}", flat_pos)
        gn = _unit_norms(b.ops, [u for us in g_units for u in us], name, flat_pos)
        b.check_writable()
        wn_a = np.asarray(wn, np.float64)
        gn_a = np.asarray(gn, np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            max_norm = self._clipping * np.maximum(wn_a, self._eps)  # np.maximum keeps NaN, as clamp_min
            factors = np.where(gn_a < max_norm, 1.0, max_norm / np.maximum(gn_a, TORCH_EPS))
        # Per tensor: its slice of the flat unit lists, its scaling, its stats.
        contiguous_units: list[np.ndarray] = []
        contiguous_factors: list[float] = []
        contiguous_pos: list[int] = []
        strided: list[tuple[np.ndarray, np.ndarray]] = []
        norms: list[float] = []
        counts: list[int] = []
        start = 0
        for k, units in enumerate(g_units):
            n = len(units)
            f = factors[start : start + n]
            norms.append(total_of(gn[start : start + n]))
            clipped = np.flatnonzero(f != 1.0)
            counts.append(int(clipped.size))
            if clipped.size:
                g = b.arrays[k]
                if all(units[j].flags.c_contiguous for j in clipped):
                    contiguous_units += [units[j] for j in clipped]
                    contiguous_factors += [float(f[j]) for j in clipped]
                    contiguous_pos += [b.positions[k]] * int(clipped.size)
                else:
                    shape = [g.shape[a] if a in kept[k] else 1 for a in range(g.ndim)]
                    lane = np.float64 if g.dtype == _F64 else np.float32
                    strided.append((g, f.astype(lane).reshape(shape)))
            start += n
        total = total_of(norms)
        stats = AdaptiveStats(
            tuple(b.positions), tuple(norms), None, tuple(c > 0 for c in counts), total,
            units_clipped=tuple(counts),
        )  # fmt: skip

        def commit() -> None:
            if contiguous_units:
                b.ops.scale_(contiguous_units, contiguous_factors, name, contiguous_pos)
            for g, f in strided:
                np.multiply(g, f, out=g, casting="same_kind")
            self.last_stats = stats

        return ClipPlan(
            b.pairs, skip=False, commit=commit, stats=stats, owner=self, on_discard=_discard_to(self, stats),
            positions=tuple(b.positions), norms=tuple(norms), total_norm=total,
        )  # fmt: skip

    def state_dict(self) -> dict[str, Any]:
        """AGC has no state: ``{"kind": "AdaptiveGradClip"}``."""
        return {"kind": "AdaptiveGradClip"}

    def load_state_dict(self, state: Any) -> None:
        """Accept :meth:`state_dict`'s output (validated; there is nothing to restore)."""
        check_kind(state, "AdaptiveGradClip")
        self._bump()

    def __repr__(self) -> str:
        return f"AdaptiveGradClip(clipping={self._clipping!r}, eps={self._eps!r}, axis={self._axis!r})"


def _as_skipped(stats: AdaptiveStats) -> AdaptiveStats:
    """The stats of a plan discarded because the step is skipped: nothing was scaled."""
    n = len(stats.indices)
    return AdaptiveStats(
        stats.indices, stats.norms, (1.0,) * n if stats.scales is not None else None, (False,) * n,
        stats.global_norm, skipped=True, threshold=stats.threshold, thresholds=stats.thresholds,
        units_clipped=(0,) * n if stats.units_clipped is not None else None, spike=stats.spike,
        warmup=stats.warmup,
    )  # fmt: skip


# ---------------------------------------------------------------------------------------- ZClip


class ZClip(PlannedClip):
    """ZClip (Kumar et al. 2025): clip the global norm where it is an outlier of its running statistics.

    The constructor and semantics of the ``zclip`` package (``zclip.ZClip``), in its order of
    operations, on the global L2 norm ``n`` of the clipped grads:

    - **warm-up** (until ``warmup_steps`` norms are collected): ``n`` is recorded; the grads are
      clipped as ``torch.nn.utils.clip_grad_norm_(grads, max_grad_norm)`` (coefficient
      ``min(1, max_grad_norm / (n + 1e-6))``; none if ``max_grad_norm`` is None). When the buffer is
      full: ``μ = mean``, ``σ² = population variance`` of it.
    - then, with ``σ = sqrt(σ²)`` and ``z = (n - μ) / (σ + eps)``:
      ``mode="zscore"``: if ``z > z_thresh`` (a spike), the threshold is
      ``(μ + z_thresh·σ / (z / z_thresh)) · clip_factor`` (``clip_option="adaptive_scaling"``) or
      ``μ`` (``"mean"``); ``mode="percentile"``: the threshold ``μ + z_thresh·σ`` applies when
      ``n`` exceeds it. The bound is ``min(threshold, max_grad_norm)`` (without a threshold,
      ``min(n, max_grad_norm)``); when ``n > bound``, every grad is scaled by ``bound / (n + 1e-6)``.
      Then ``μ ← αμ + (1-α)v``, ``σ² ← ασ² + (1-α)(v - μ)²`` (the new μ) with ``v`` the threshold
      on a spike and ``n`` otherwise.
    - ``skip_update_on_spike=True`` (the package's meaning): on a spike the grads are still clipped
      but μ and σ² are not updated. This is about the **statistics**; to skip the optimizer step
      itself use :class:`fastclip.SkipAbove` or :class:`fastclip.SkipNonFinite`.

    Departures from ``zclip`` (named in the tests): a non-finite ``n`` (NaN or inf) leaves μ, σ²
    and the warm-up buffer unchanged (zclip lets it poison them for every later step; the grads of
    that step are treated as zclip treats them: untouched for NaN, zeroed for inf after warm-up);
    ``n`` is exact (zclip's float32 norm overflows to inf for grads above ~1e19, which zeroes them);
    the mean and variance of the warm-up buffer are ``math.fsum`` sums (zclip's ``sum`` rounds
    differently from Python 3.12 on); a call with no grads observes nothing (zclip records 0.0).

    ``step(model_or_grads)`` is ``clip_``, as the package's ``step(model)``: it returns ``n``.

    Raises ``TypeError``/``ValueError`` at construction for ``alpha`` outside [0, 1], a
    non-positive or non-finite ``z_thresh``/``clip_factor``/``eps``, ``max_grad_norm`` that is not
    None or > 0, ``warmup_steps`` not an int >= 0, an unknown ``mode``/``clip_option`` or a non-bool
    ``skip_update_on_spike``; at call time for any buffer error, before anything is written.

    >>> import numpy as np, fastclip as fc
    >>> z = fc.ZClip(warmup_steps=3, max_grad_norm=None)
    >>> for n in (1.0, 1.2, 0.8):
    ...     _ = z.clip_([np.array([n])])      # warm-up: recorded, not clipped
    >>> g = np.array([10.0])
    >>> z.clip_([g])                          # a spike: z = (10 - 1) / (0.163...) = 55
    10.0
    >>> round(float(g[0]), 6), z.last_stats.spike
    (1.018519, True)
    """

    def __init__(
        self,
        alpha: float = 0.97,
        z_thresh: float = 2.5,
        max_grad_norm: float | None = 1.0,
        eps: float = 1e-6,
        warmup_steps: int = 25,
        mode: str = "zscore",
        clip_option: str = "adaptive_scaling",
        clip_factor: float = 1.0,
        skip_update_on_spike: bool = False,
    ) -> None:
        super().__init__()
        self._alpha = real_arg(alpha, "alpha", lo=0.0, hi=1.0)
        self._z_thresh = _threshold(z_thresh, "z_thresh", allow_zero=False, allow_inf=False)
        self._max = None if max_grad_norm is None else _threshold(max_grad_norm, "max_grad_norm", allow_zero=False)
        self._eps = _threshold(eps, "eps", allow_zero=False, allow_inf=False)
        self._warmup = int_arg(warmup_steps, "warmup_steps", 0)
        if not isinstance(mode, str) or mode.lower() not in ("zscore", "percentile"):
            raise ValueError(f"mode must be 'zscore' or 'percentile', got {mode!r}")
        self._mode = mode.lower()
        if not isinstance(clip_option, str) or clip_option.lower() not in ("adaptive_scaling", "mean"):
            raise ValueError(f"clip_option must be 'adaptive_scaling' or 'mean', got {clip_option!r}")
        # zclip ignores clip_option in percentile mode (and stores None).
        self._clip_option = clip_option.lower() if self._mode == "zscore" else None
        self._clip_factor = _threshold(clip_factor, "clip_factor", allow_zero=False, allow_inf=False)
        self._skip_update = bool_arg(skip_update_on_spike, "skip_update_on_spike")
        self._buffer: list[float] = []
        self._initialized = False
        self._mean: float | None = None
        self._var: float | None = None

    # -- read-only views of the configuration and the statistics

    alpha = property(lambda self: self._alpha, doc="EMA smoothing factor α.")
    z_thresh = property(lambda self: self._z_thresh, doc="The z-score threshold.")
    max_grad_norm = property(lambda self: self._max, doc="The absolute bound (None: none).")
    eps = property(lambda self: self._eps, doc="Added to σ in the z-score.")
    warmup_steps = property(lambda self: self._warmup, doc="Norms collected before the EMA starts.")
    mode = property(lambda self: self._mode, doc="'zscore' or 'percentile'.")
    clip_option = property(lambda self: self._clip_option, doc="'adaptive_scaling', 'mean' or None (percentile).")
    clip_factor = property(lambda self: self._clip_factor, doc="Multiplier of the adaptive threshold.")
    skip_update_on_spike = property(lambda self: self._skip_update, doc="Keep μ, σ² on a spike.")
    initialized = property(lambda self: self._initialized, doc="Whether the warm-up is over.")
    mean = property(lambda self: self._mean, doc="μ (None during warm-up).")
    var = property(lambda self: self._var, doc="σ² (None during warm-up).")

    @property
    def buffer(self) -> tuple[float, ...]:
        """The warm-up norms collected so far."""
        return tuple(self._buffer)

    def _threshold_for(self, n: float) -> float | None:
        """zclip's ``_compute_clip_val``: the threshold on a spike, else None."""
        assert self._mean is not None and self._var is not None
        std = math.sqrt(self._var)
        if self._mode == "percentile":
            threshold = self._mean + self._z_thresh * std
            return threshold if n > threshold else None
        z = (n - self._mean) / (std + self._eps)
        if not z > self._z_thresh:
            return None
        if self._clip_option == "adaptive_scaling":
            eta = z / self._z_thresh
            return (self._mean + (self._z_thresh * std) / eta) * self._clip_factor
        return self._mean

    def _observe(self, v: float) -> None:
        """Record one finite observation: into the warm-up buffer, or the EMA update."""
        if not self._initialized:
            self._buffer.append(v)
            if len(self._buffer) >= self._warmup:
                m = math.fsum(self._buffer) / len(self._buffer)
                self._var = math.fsum((x - m) ** 2 for x in self._buffer) / len(self._buffer)
                self._mean = m
                self._initialized = True
                self._buffer = []
            return
        assert self._mean is not None and self._var is not None
        a = self._alpha
        self._mean = a * self._mean + (1 - a) * v
        self._var = a * self._var + (1 - a) * (v - self._mean) ** 2

    def prepare(self, params_grads: Any, *, name: str = "params_grads") -> ClipPlan:
        """Measure the global norm, decide the bound and check every buffer; nothing is written
        and no statistic changes (they change at ``apply``)."""
        b = Batch(params_grads, name)
        norms, n = b.norms()
        b.check_writable()
        spike = False
        warmup = not self._initialized
        observe: float | None = None
        if warmup:
            bound = self._max
            factor = 1.0 if self._max is None else _torch_coefficient(self._max, n)
            observe = n
        else:
            clip_val = self._threshold_for(n)
            spike = clip_val is not None
            adaptive = n if clip_val is None else clip_val
            # zclip's min(adaptive, max_grad_norm): the first unless the second is smaller (NaN kept).
            bound = adaptive if self._max is None or not self._max < adaptive else self._max
            factor = bound / (n + TORCH_EPS) if n > bound else 1.0
            observe = None if (spike and self._skip_update) else adaptive
        if not b.arrays or not math.isfinite(n):
            observe = None
        stats = AdaptiveStats(
            tuple(b.positions), tuple(norms), _applied([factor] * len(b.arrays), b.arrays),
            (factor != 1.0,) * len(b.arrays), n, threshold=bound, spike=spike, warmup=warmup,
        )  # fmt: skip

        def commit() -> None:
            if factor != 1.0 and b.arrays:
                b.ops.scale_(b.arrays, factor, name, b.positions)
            if observe is not None:
                self._observe(observe)
            self.last_stats = stats

        return ClipPlan(
            b.pairs, skip=False, commit=commit, stats=stats, owner=self, on_discard=_discard_to(self, stats),
            positions=tuple(b.positions), norms=tuple(norms), total_norm=n,
        )  # fmt: skip

    def step(self, model_or_grads: Any) -> float:
        """The package's ``step(model)``: clip in place, return the global norm before clipping."""
        return self.clip_(model_or_grads)

    def state_dict(self) -> dict[str, Any]:
        """``{"kind", "initialized", "buffer", "mean", "var"}`` (floats; mean/var None in warm-up)."""
        return {
            "kind": "ZClip",
            "initialized": self._initialized,
            "buffer": list(self._buffer),
            "mean": self._mean,
            "var": self._var,
        }

    def load_state_dict(self, state: Any) -> None:
        """Restore :meth:`state_dict`'s output. Raises ``TypeError``/``ValueError`` (changing
        nothing) for another kind, a non-bool flag, non-finite or negative values, a buffer as long
        as ``warmup_steps`` (it would have been turned into μ, σ²) or μ/σ² missing once initialized."""
        s = check_kind(state, "ZClip")
        initialized = bool_arg(s.get("initialized"), "state['initialized']")
        buf = s.get("buffer")
        if not isinstance(buf, (list, tuple)):
            raise TypeError(f"state['buffer'] must be a list of floats, not {type(buf).__name__}")
        buffer = [finite_float(x, f"state['buffer'][{i}]") for i, x in enumerate(buf)]
        mean = finite_float(s.get("mean"), "state['mean']", allow_none=not initialized)
        var = finite_float(s.get("var"), "state['var']", allow_none=not initialized)
        if initialized and buffer:
            raise ValueError("state['buffer'] must be empty once initialized")
        if not initialized and (mean is not None or var is not None):
            raise ValueError("state['mean'] and state['var'] must be None before the warm-up ends")
        if not initialized and len(buffer) >= max(self._warmup, 1):
            raise ValueError(f"state['buffer'] has {len(buffer)} norms; warm-up ends at {self._warmup}")
        self._initialized = initialized
        self._buffer = buffer  # type: ignore[assignment]
        self._mean = mean
        self._var = var
        self._bump()

    def __repr__(self) -> str:
        return (
            f"ZClip(alpha={self._alpha!r}, z_thresh={self._z_thresh!r}, max_grad_norm={self._max!r}, "
            f"eps={self._eps!r}, warmup_steps={self._warmup!r}, mode={self._mode!r}, "
            f"clip_option={self._clip_option!r}, clip_factor={self._clip_factor!r}, "
            f"skip_update_on_spike={self._skip_update!r})"
        )


def _discard_to(owner: Any, stats: AdaptiveStats) -> Any:
    def on_discard() -> None:
        owner.last_stats = _as_skipped(stats)

    return on_discard


# ------------------------------------------------------------------------------------- AutoClip


class Window:
    """The last ``capacity`` values pushed and their ``q``-quantile, O(log capacity) per push.

    The quantile is ``torch.quantile``'s (and NumPy's ``method="linear"``): with the values sorted,
    ``r = q·(n-1)``, ``lo = floor(r)``, the result is ``lerp(sorted[lo], sorted[lo+1], r - lo)``.
    Kept as a ring of the values in arrival order plus two heaps that split the sorted values at
    ``lo``: a max-heap of the ``lo + 1`` smallest, a min-heap of the rest, so ``sorted[lo]`` and
    ``sorted[lo+1]`` are the two tops. An evicted value is deleted lazily (counted, dropped when it
    reaches a top); the heaps are rebuilt from the ring once they hold more than ``2n + 32`` entries.
    A push is a few heap operations (O(log n)) plus, amortized, O(1) rebuild work per deletion
    (a rebuild, O(n log n), happens at most once every n deletions): O(log n) amortized time and at
    most ``3n + 32`` stored entries. Values must be finite (the clippers never push NaN or inf).
    """

    __slots__ = ("_capacity", "_dead_high", "_dead_low", "_high", "_low", "_n_high", "_n_low", "_q", "_ring")

    def __init__(self, capacity: int, q: float, values: Iterable[float] = ()) -> None:
        self._capacity = capacity
        self._q = q
        self._ring: deque[float] = deque(maxlen=capacity)
        self._low: list[float] = []  # negated: a max-heap of the lo + 1 smallest live values
        self._high: list[float] = []  # a min-heap of the others
        self._dead_low: dict[float, int] = {}
        self._dead_high: dict[float, int] = {}
        self._n_low = 0
        self._n_high = 0
        self._ring.extend(values)
        self._rebuild()

    def __len__(self) -> int:
        return len(self._ring)

    def values(self) -> list[float]:
        """The values in arrival order, oldest first."""
        return list(self._ring)

    def _target(self) -> int:
        n = len(self._ring)
        return int(self._q * (n - 1)) + 1 if n else 0

    def _rebuild(self) -> None:
        s = sorted(self._ring)
        t = self._target()
        self._low = [-x for x in reversed(s[:t])]  # descending negated = ascending: a valid heap
        self._high = s[t:]
        self._dead_low.clear()
        self._dead_high.clear()
        self._n_low, self._n_high = t, len(s) - t

    @staticmethod
    def _prune(heap: list[float], dead: dict[float, int], sign: float) -> None:
        while heap:
            v = sign * heap[0]
            c = dead.get(v)
            if not c:
                return
            heapq.heappop(heap)
            if c == 1:
                del dead[v]
            else:
                dead[v] = c - 1

    def push(self, x: float) -> None:
        """Append ``x`` (finite), evicting the oldest value when full."""
        if len(self._ring) == self._capacity:
            old = self._ring.popleft()
            if self._n_low and old <= -self._low[0]:
                self._dead_low[old] = self._dead_low.get(old, 0) + 1
                self._n_low -= 1
                self._prune(self._low, self._dead_low, -1.0)
            else:
                self._dead_high[old] = self._dead_high.get(old, 0) + 1
                self._n_high -= 1
                self._prune(self._high, self._dead_high, 1.0)
        self._ring.append(x)
        if self._n_low and x <= -self._low[0]:
            heapq.heappush(self._low, -x)
            self._n_low += 1
        else:
            heapq.heappush(self._high, x)
            self._n_high += 1
        t = self._target()
        while self._n_low > t:
            v = -heapq.heappop(self._low)
            self._n_low -= 1
            self._prune(self._low, self._dead_low, -1.0)
            heapq.heappush(self._high, v)
            self._n_high += 1
        while self._n_low < t:
            v = heapq.heappop(self._high)
            self._n_high -= 1
            self._prune(self._high, self._dead_high, 1.0)
            heapq.heappush(self._low, -v)
            self._n_low += 1
        if len(self._low) + len(self._high) > 2 * len(self._ring) + 32:
            self._rebuild()

    def quantile(self) -> float:
        """The ``q``-quantile of the values (linear interpolation); ``inf`` when empty."""
        n = len(self._ring)
        if n == 0:
            return math.inf
        r = self._q * (n - 1)
        lo = int(r)
        w = r - lo
        below = -self._low[0]
        if w == 0.0 or lo + 1 >= n:
            return below
        return _lerp(below, self._high[0], w)


class AutoClip(PlannedClip):
    """AutoClip (Seetharaman et al. 2020): clip to a quantile of the history of gradient norms.

    The ``autoclip`` package's ``autoclip.torch.QuantileClip`` (same arguments and order):
    per tensor (default), or on the global norm with ``global_threshold=True``, each call

    1. ``threshold = quantile(history, quantile)`` (``torch.quantile``'s linear interpolation), or
       ``inf`` while the history is empty (the first call clips nothing);
    2. clips as ``torch.nn.utils.clip_grad_norm_(g, max_norm=threshold)``: every grad times
       ``min(1, threshold / (norm + 1e-6))``;
    3. appends the norm **before** clipping to the history, which keeps the last
       ``history_length`` norms.

    Memory is bounded by ``history_length`` per history (:class:`Window`); an update costs
    O(log history_length) amortized. Departures from ``autoclip`` (named in the tests): a
    non-finite norm is not appended (the package appends it, after which ``torch.quantile`` returns
    NaN and every later step's grads turn NaN until it leaves the history; that step's own grads
    are scaled as the package scales them); norms are exact (the package's float32 norm overflows
    to inf for grads above ~1e19 and zeroes them); the history keeps float64 norms (the package
    float32).

    Raises ``TypeError``/``ValueError`` at construction for ``quantile`` outside [0, 1], a
    ``history_length`` that is not an int >= 1 or a non-bool ``global_threshold``; at call time
    for any buffer error (or two grads with the same parameter name, per tensor), before anything
    is written.

    >>> import numpy as np, fastclip as fc
    >>> ac = fc.AutoClip(quantile=0.5, history_length=3, global_threshold=True)
    >>> [ac.clip_([np.array([n])]) for n in (1.0, 3.0, 2.0)]
    [1.0, 3.0, 2.0]
    >>> ac.last_stats.threshold             # the median of [1, 3]
    2.0
    >>> ac.state_dict()["global"]
    [1.0, 3.0, 2.0]
    """

    def __init__(self, quantile: float = 0.9, history_length: int = 1000, global_threshold: bool = False) -> None:
        super().__init__()
        self._q = real_arg(quantile, "quantile", lo=0.0, hi=1.0)
        self._length = int_arg(history_length, "history_length", 1)
        self._global = bool_arg(global_threshold, "global_threshold")
        self._global_window = Window(self._length, self._q)
        self._windows: dict[Any, Window] = {}

    quantile = property(lambda self: self._q, doc="The quantile of the history used as the threshold.")
    history_length = property(lambda self: self._length, doc="How many norms each history keeps.")
    global_threshold = property(lambda self: self._global, doc="One global history (True) or one per tensor.")

    def history(self, key: Any = None) -> list[float]:
        """The history (oldest first): the global one, or the tensor ``key``'s (a name or position)."""
        if key is None:
            return self._global_window.values()
        w = self._windows.get(key)
        return [] if w is None else w.values()

    def prepare(self, params_grads: Any, *, name: str = "params_grads") -> ClipPlan:
        """Measure the norms, read the thresholds and check every buffer; nothing is written
        and no history changes (they change at ``apply``)."""
        b = Batch(params_grads, name)
        norms, total = b.norms()
        b.check_writable()
        if self._global:
            threshold = self._global_window.quantile()
            thresholds = None
            factors = [_torch_coefficient(threshold, total)] * len(b.arrays)
            observed: list[tuple[Any, float]] = [(None, total)] if b.arrays and math.isfinite(total) else []
        else:
            keys = b.keys()
            threshold = None
            thresholds = tuple(self._windows[k].quantile() if k in self._windows else math.inf for k in keys)
            factors = [_torch_coefficient(t, n) for t, n in zip(thresholds, norms)]
            observed = [(k, n) for k, n in zip(keys, norms) if math.isfinite(n)]
        arrays, fs, pos = _scale_plan(b, factors)
        stats = AdaptiveStats(
            tuple(b.positions), tuple(norms), _applied(factors, b.arrays), tuple(f != 1.0 for f in factors),
            total, threshold=threshold, thresholds=thresholds,
        )  # fmt: skip

        def commit() -> None:
            if arrays:
                b.ops.scale_(arrays, fs, name, pos)
            for k, n in observed:
                if k is None:
                    self._global_window.push(n)
                else:
                    w = self._windows.get(k)
                    if w is None:
                        w = self._windows[k] = Window(self._length, self._q)
                    w.push(n)
            self.last_stats = stats

        return ClipPlan(
            b.pairs, skip=False, commit=commit, stats=stats, owner=self, on_discard=_discard_to(self, stats),
            positions=tuple(b.positions), norms=tuple(norms), total_norm=total,
        )  # fmt: skip

    def state_dict(self) -> dict[str, Any]:
        """``{"kind", "global": [norms], "per_tensor": {key: [norms]}}``, oldest first."""
        return {
            "kind": "AutoClip",
            "global": self._global_window.values(),
            "per_tensor": {k: w.values() for k, w in self._windows.items()},
        }

    def load_state_dict(self, state: Any) -> None:
        """Restore :meth:`state_dict`'s output. Raises ``TypeError``/``ValueError`` (changing
        nothing) for another kind, bad keys, non-finite or negative norms or a history longer than
        ``history_length``."""
        s = check_kind(state, "AutoClip")

        def hist(v: Any, where: str) -> list[float]:
            if not isinstance(v, (list, tuple)):
                raise TypeError(f"{where} must be a list of floats, not {type(v).__name__}")
            if len(v) > self._length:
                raise ValueError(f"{where} has {len(v)} norms; history_length is {self._length}")
            return [finite_float(x, f"{where}[{i}]") for i, x in enumerate(v)]  # type: ignore[misc]

        g = hist(s.get("global", []), "state['global']")
        per = s.get("per_tensor", {})
        if not isinstance(per, dict):
            raise TypeError(f"state['per_tensor'] must be a dict, not {type(per).__name__}")
        windows = {}
        for k, v in per.items():
            windows[state_key(k, "state['per_tensor']")] = hist(v, f"state['per_tensor'][{k!r}]")
        self._global_window = Window(self._length, self._q, g)
        self._windows = {k: Window(self._length, self._q, v) for k, v in windows.items()}
        self._bump()

    def __repr__(self) -> str:
        return (
            f"AutoClip(quantile={self._q!r}, history_length={self._length!r}, "
            f"global_threshold={self._global!r})"
        )


# ---------------------------------------------------------------------------------------- AdaGC


class AdaGC(PlannedClip):
    """AdaGC (Wang et al., arXiv 2502.11034): per-tensor thresholds from an EMA of each tensor's
    clipped norm, after a global-norm warm-up.

    Per clipped tensor ``i`` with norm ``n_i``, state ``γ_i`` and its own step count ``t_i``
    (1 on its first call), on the global norm ``N`` of the call's clipped grads:

    - warm-up (``γ_i`` unset or ``t_i < warmup_steps``): ``h = min(λ_abs / (N + eps), 1)``,
      ``ĝ_i = h·g_i``, ``γ_i = ||ĝ_i||`` on the first call, ``min(γ_i, ||ĝ_i||)`` after;
    - then: ``h_i = min(λ_rel · max(γ_i, eps) / max(n_i, eps), 1)``, ``ĝ_i = h_i·g_i``,
      ``γ_i ← γ_i + (1-β)(||ĝ_i|| - γ_i)`` (torch's ``lerp``).

    This is the clipping of ``pytorch_optimizer.AdaGC`` (fused with Adam there; here it is a clip,
    so any optimizer takes ``ĝ``), with its off-by-one: ``warmup_steps=100`` means the first 99
    calls warm up. ``||ĝ_i||`` is computed as ``h·n_i`` (no second pass). The package keeps one
    step count per parameter group; here each tensor counts the calls that clipped it (the same
    when every tensor has a gradient every step), and ``N`` is over this call's clipped grads (the
    package: over all groups).

    Departures (named in the tests): ``γ_i`` never takes a non-finite value: a tensor whose
    ``||ĝ_i||`` is NaN or inf keeps its ``γ_i``, and in warm-up a non-finite ``N`` updates no ``γ``
    (the package's ``γ`` becomes NaN for good, or 0 for every tensor when one holds an inf); that
    step's grads are scaled as the package scales them. Norms are exact (the package's float32
    norms overflow for grads above ~1e19).

    Raises ``TypeError``/``ValueError`` at construction for ``beta`` outside [0, 1), non-positive
    or non-finite ``lambda_abs``/``lambda_rel``, ``warmup_steps`` not an int >= 0, or a negative
    ``eps``; at call time for any buffer error or two grads with the same parameter name.

    >>> import numpy as np, fastclip as fc
    >>> ada = fc.AdaGC(warmup_steps=2, lambda_abs=1.0, lambda_rel=1.05)
    >>> g = np.array([3.0, 4.0])
    >>> ada.clip_([g]); g                     # warm-up: global norm 5 clipped to 1
    5.0
    array([0.6, 0.8])
    >>> g = np.array([30.0, 40.0])
    >>> ada.clip_([g]); g                     # then ||ĝ|| <= 1.05 γ = 1.05
    50.0
    array([0.63, 0.84])
    """

    def __init__(
        self,
        beta: float = 0.98,
        lambda_abs: float = 1.0,
        lambda_rel: float = 1.05,
        warmup_steps: int = 100,
        eps: float = 1e-8,
    ) -> None:
        super().__init__()
        self._beta = real_arg(beta, "beta", lo=0.0, hi=1.0, hi_open=True)
        self._lambda_abs = _threshold(lambda_abs, "lambda_abs", allow_zero=False, allow_inf=False)
        self._lambda_rel = _threshold(lambda_rel, "lambda_rel", allow_zero=False, allow_inf=False)
        self._warmup = int_arg(warmup_steps, "warmup_steps", 0)
        self._eps = _threshold(eps, "eps", allow_inf=False)
        self._gamma: dict[Any, float] = {}
        self._steps: dict[Any, int] = {}

    beta = property(lambda self: self._beta, doc="EMA factor β of γ.")
    lambda_abs = property(lambda self: self._lambda_abs, doc="The warm-up bound on the global norm.")
    lambda_rel = property(lambda self: self._lambda_rel, doc="The relative bound λ_rel·γ_i.")
    warmup_steps = property(lambda self: self._warmup, doc="Calls below this count warm up.")
    eps = property(lambda self: self._eps, doc="Floor of γ and of the norms (and added to N in warm-up).")

    def gamma(self, key: Any) -> float | None:
        """γ of the tensor ``key`` (its parameter name or position), None before its first step."""
        return self._gamma.get(key)

    def prepare(self, params_grads: Any, *, name: str = "params_grads") -> ClipPlan:
        """Measure the norms, decide each tensor's factor and check every buffer; nothing is
        written and no γ or step count changes (they change at ``apply``)."""
        b = Batch(params_grads, name)
        norms, total = b.norms()
        b.check_writable()
        keys = b.keys()
        eps = self._eps
        h_warm: float | None = None
        factors: list[float] = []
        thresholds: list[float] = []
        updates: list[tuple[Any, bool, float | None]] = []  # (key, warm-up rule, ||ĝ|| or None) to commit
        any_warm = False
        for key, n in zip(keys, norms):
            gamma = self._gamma.get(key)
            t = self._steps.get(key, 0) + 1
            if gamma is None or t < self._warmup:
                any_warm = True
                if h_warm is None:
                    h_warm = _div(self._lambda_abs, total + eps)
                    h_warm = 1.0 if 1.0 < h_warm else h_warm  # the package's min(x, 1.0); NaN kept
                h = h_warm
                thresholds.append(self._lambda_abs)
                ok = math.isfinite(total)
            else:
                h = _div(self._lambda_rel * _clamp_min(gamma, eps), _clamp_min(n, eps))
                h = 1.0 if h > 1.0 else h  # clamp_max(1.0); NaN kept
                thresholds.append(self._lambda_rel * _clamp_min(gamma, eps))
                ok = True
            factors.append(h)
            clipped = h * n
            updates.append((key, gamma is None or t < self._warmup, clipped if ok and math.isfinite(clipped) else None))
        arrays, fs, pos = _scale_plan(b, factors)
        stats = AdaptiveStats(
            tuple(b.positions), tuple(norms), _applied(factors, b.arrays), tuple(f != 1.0 for f in factors),
            total, thresholds=tuple(thresholds), warmup=any_warm,
        )  # fmt: skip

        def commit() -> None:
            if arrays:
                b.ops.scale_(arrays, fs, name, pos)
            for key, warm, clipped in updates:
                self._steps[key] = self._steps.get(key, 0) + 1
                if clipped is None:
                    continue
                gamma = self._gamma.get(key)
                if gamma is None:
                    self._gamma[key] = clipped
                elif warm:
                    self._gamma[key] = min(gamma, clipped)
                else:
                    self._gamma[key] = _lerp(gamma, clipped, 1.0 - self._beta)
            self.last_stats = stats

        return ClipPlan(
            b.pairs, skip=False, commit=commit, stats=stats, owner=self, on_discard=_discard_to(self, stats),
            positions=tuple(b.positions), norms=tuple(norms), total_norm=total,
        )  # fmt: skip

    def state_dict(self) -> dict[str, Any]:
        """``{"kind", "gamma": {key: float}, "steps": {key: int}}``."""
        return {"kind": "AdaGC", "gamma": dict(self._gamma), "steps": dict(self._steps)}

    def load_state_dict(self, state: Any) -> None:
        """Restore :meth:`state_dict`'s output. Raises ``TypeError``/``ValueError`` (changing
        nothing) for another kind, bad keys, non-finite or negative γ, or step counts that are not
        ints >= 1 (every γ needs a step count)."""
        s = check_kind(state, "AdaGC")
        gam, stp = s.get("gamma"), s.get("steps")
        if not isinstance(gam, dict) or not isinstance(stp, dict):
            raise TypeError("state['gamma'] and state['steps'] must be dicts")
        gamma = {state_key(k, "state['gamma']"): finite_float(v, f"state['gamma'][{k!r}]") for k, v in gam.items()}
        steps = {state_key(k, "state['steps']"): int_arg(v, f"state['steps'][{k!r}]", 1) for k, v in stp.items()}
        missing = [k for k in gamma if k not in steps]
        if missing:
            raise ValueError(f"state['gamma'] has keys without a step count: {missing!r}")
        self._gamma = gamma  # type: ignore[assignment]
        self._steps = steps
        self._bump()

    def __repr__(self) -> str:
        return (
            f"AdaGC(beta={self._beta!r}, lambda_abs={self._lambda_abs!r}, lambda_rel={self._lambda_rel!r}, "
            f"warmup_steps={self._warmup!r}, eps={self._eps!r})"
        )
