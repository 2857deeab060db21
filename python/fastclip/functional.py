"""PyTorch-style clipping functions (``torch.nn.utils`` semantics), in place on the caller's arrays.

Each function takes ``grads``: one array, or any iterable (a generator is read once) of arrays,
DLPack tensors (CPU, or CUDA through CuPy: :mod:`fastclip._cuda`), or parameters with a ``.grad``
(``None`` grads are skipped). Every argument and every buffer is checked before any buffer is
modified; on error nothing has changed.
"""

from __future__ import annotations

import math
import types
import warnings
from typing import Any

from . import _fastclip
from . import distributed as _distributed
from ._buffers import CPU, Collected, collect
from ._checks import norm_type as _norm_type
from ._checks import number as _number
from ._checks import threshold as _threshold

__all__ = ["TotalNorm", "clip_grad_norm_", "clip_grad_value_", "clip_grads_with_norm_", "get_total_norm"]

#: torch's guard against division by zero in the clip coefficient.
EPS = 1e-6


class TotalNorm(float):
    """The total norm returned by :func:`get_total_norm` and :func:`clip_grad_norm_`: a ``float``
    (so ``float()``, comparisons, arithmetic and formatting work as on any float) that also has
    torch's 0-d tensor ``.item()``, so that code written for ``torch.nn.utils.clip_grad_norm_``'s
    tensor result (``norm.item()``) runs unchanged.

    >>> import numpy as np, fastclip as fc
    >>> n = fc.get_total_norm([np.array([3.0, 4.0])])
    >>> n.item(), float(n), n > 4, f"{n:.2f}"
    (5.0, 5.0, True, '5.00')
    """

    __slots__ = ()

    def item(self) -> float:
        """The value as a plain Python ``float`` (torch's ``Tensor.item()``)."""
        return float(self)


def _foreach(value: Any) -> None:
    """torch's ``foreach=``: ``None``, ``True`` or ``False``. fastclip always works on the whole
    list in one call (torch's foreach kernels' behaviour), so the flag only gets checked."""
    if value is not None and not isinstance(value, bool):
        raise TypeError(f"foreach must be None or a bool, not {type(value).__name__}")


def _warn_if_empty_generator(grads: Any) -> Any:
    """torch's warning for an exhausted generator (``model.parameters()`` read twice); returns
    what to use in its place (the generator's items, read once)."""
    if isinstance(grads, types.GeneratorType):
        grads = list(grads)
        if not grads:
            warnings.warn("`parameters` is an empty generator, no gradient clipping will occur.", stacklevel=3)
    return grads


def get_total_norm(
    grads: Any,
    norm_type: float | str = 2.0,
    error_if_nonfinite: bool = False,
    foreach: bool | None = None,
    *,
    group: Any = None,
    replicated: Any = None,
) -> TotalNorm:
    """The p-norm of all gradients taken together, as one flat vector.

    ``total = (sum_i sum_j |g_ij|^p)^(1/p)``; for ``p = inf``, ``max_ij |g_ij|``. Accumulated in
    float64 for every dtype (float64 input is scaled so no finite input overflows or underflows);
    bitwise the same for any thread count. NaN anywhere gives NaN; an infinite element gives inf.
    No gradients give 0.0.

    ``group`` (an ``mpi4py.MPI.Comm``, a ``torch.distributed.ProcessGroup`` or a
    :class:`fastclip.distributed.Communicator`): each rank passes its own shard and every rank gets
    the same total of all shards, in one collective of a few float64 values; ``replicated`` (a
    sequence of bools aligned with ``grads``) marks grads every rank holds identically, counted
    once (see :mod:`fastclip.distributed`). Without a group, ``replicated`` is only checked.
    ``foreach`` is torch's flag, accepted and checked (``None``/``True``/``False``): fastclip always
    works on the whole list in one call. The result is a :class:`TotalNorm` (a ``float`` with
    ``.item()``).

    Raises ``ValueError`` for ``norm_type`` <= 0 or NaN, ``TypeError`` for a non-number or an
    unsupported array, and ``RuntimeError`` if ``error_if_nonfinite`` and the total is NaN/inf.

    >>> import numpy as np, fastclip as fc
    >>> fc.get_total_norm([np.array([3.0, 0.0]), np.array([4.0])])
    5.0
    """
    _foreach(foreach)
    if group is not None:
        return TotalNorm(
            _distributed.get_total_norm(grads, norm_type, error_if_nonfinite, group=group, replicated=replicated)
        )
    if replicated is not None:
        grads = _distributed.single_process_items(grads, replicated)
    return TotalNorm(_total_norm(collect(grads), _norm_type(norm_type), error_if_nonfinite))


def _refuse_nonfinite(total: float, p: float, error_if_nonfinite: bool) -> None:
    """torch's ``error_if_nonfinite``: ``RuntimeError`` for a NaN/inf total, before anything is scaled."""
    if error_if_nonfinite and not math.isfinite(total):
        raise RuntimeError(
            f"The total norm of order {p} for gradients is non-finite ({total}), so it cannot be clipped. "
            "To disable this error and scale the gradients by the non-finite norm anyway, "
            "set `error_if_nonfinite=False`"
        )


def _total_norm(c: Collected, p: float, error_if_nonfinite: bool) -> float:
    """The total p-norm of collected buffers (0.0 for none); ``RuntimeError`` when asked to refuse
    a non-finite one."""
    if not c.arrays:
        return 0.0
    _, total = c.ops.norms(c.arrays, p, False, "grads", c.positions)
    _refuse_nonfinite(total, p, error_if_nonfinite)
    return total


def _coefficient(max_norm: float, total_norm: float) -> float:
    """torch's ``clamp(max_norm / (total + 1e-6), max=1)``; NaN propagates, inf max_norm never clips."""
    if math.isinf(max_norm):
        return 1.0
    coef = max_norm / (total_norm + EPS)
    return coef if (coef < 1.0 or math.isnan(coef)) else 1.0


def clip_grads_with_norm_(grads: Any, max_norm: float, total_norm: float, foreach: bool | None = None) -> None:
    """Scale gradients in place given a precomputed total norm.

    ``g <- g * min(1, max_norm / (total_norm + 1e-6))`` for every gradient (the factor is rounded
    to the gradient's dtype). ``max_norm = inf`` never scales. A NaN ``total_norm`` gives NaN
    gradients and an infinite one zeros (NaN where a gradient was infinite), as torch does.

    Raises ``TypeError``/``ValueError`` for a negative, NaN or non-number ``max_norm`` or a
    negative ``total_norm``, and for unsupported, read-only or overlapping buffers: before any
    buffer is modified.
    """
    _foreach(foreach)
    m = _threshold(max_norm, "max_norm")
    t = _number(total_norm, "total_norm")
    if t < 0:
        raise ValueError(f"total_norm must be >= 0, got {t!r}")
    c = collect(grads)
    if c.arrays:
        c.ops.scale_(c.arrays, _coefficient(m, t), "grads", c.positions)


def clip_grad_norm_(
    grads: Any,
    max_norm: float,
    norm_type: float | str = 2.0,
    error_if_nonfinite: bool = False,
    foreach: bool | None = None,
    *,
    group: Any = None,
    replicated: Any = None,
) -> TotalNorm:
    """Clip gradients in place so that their total p-norm is at most ``max_norm``; return the
    total norm **before** clipping.

    ``total = get_total_norm(grads, norm_type)``; every gradient is multiplied by
    ``min(1, max_norm / (total + 1e-6))``, torch's coefficient (so a total just under
    ``max_norm`` is still scaled by a factor just under 1). ``max_norm = inf`` only measures.

    Raises ``ValueError``/``TypeError`` for a bad ``max_norm`` or ``norm_type`` or an unsupported,
    read-only or overlapping buffer, and ``RuntimeError`` when ``error_if_nonfinite`` and the total
    is NaN or inf. In every error case no gradient is modified.

    ``group``/``replicated``: as in :func:`get_total_norm`; every rank scales its own grads by the
    factor of the global total, and an error on any rank is raised on every rank before any
    gradient is modified. ``foreach`` and the result as in :func:`get_total_norm`; an exhausted
    generator warns (``UserWarning``) as torch does.

    >>> import numpy as np, fastclip as fc
    >>> g = np.array([3.0, 4.0])
    >>> fc.clip_grad_norm_([g], 1.0)
    5.0
    >>> g.round(6)
    array([0.6, 0.8])
    """
    _foreach(foreach)
    grads = _warn_if_empty_generator(grads)
    return TotalNorm(_clip_grad_norm(grads, max_norm, norm_type, error_if_nonfinite, group, replicated))


def _clip_grad_norm(
    grads: Any, max_norm: Any, norm_type: Any, error_if_nonfinite: bool, group: Any, replicated: Any
) -> float:
    if group is not None:
        return float(
            _distributed.clip_grad_norm_(
                grads, max_norm, norm_type, error_if_nonfinite, group=group, replicated=replicated
            )
        )
    if replicated is not None:
        grads = _distributed.single_process_items(grads, replicated)
    m = _threshold(max_norm, "max_norm")
    p = _norm_type(norm_type)

    def coefficient(total: float) -> float:
        # the policy, called once between the norm pass and the scaling pass
        _refuse_nonfinite(total, p, error_if_nonfinite)
        return _coefficient(m, total)

    if type(grads) is list:
        # The fast path: one extension call checks the list once, measures, asks `coefficient`,
        # scales. It raises NotArrays (before touching anything) if an item is not an ndarray.
        try:
            return float(_fastclip.norm_scale_(grads, p, coefficient))
        except _fastclip.NotArrays:
            pass
    c = collect(grads)  # read a generator once; both passes use this list
    if not c.arrays:
        return 0.0
    if c.device == CPU:
        # c.ops: the extension, or its guard when a buffer must not be written (an inference tensor)
        return float(c.ops.norm_scale_(c.arrays, p, coefficient, "grads", c.positions))
    total = _total_norm(c, p, error_if_nonfinite=False)
    c.ops.scale_(c.arrays, coefficient(total), "grads", c.positions)
    return total


def clip_grad_value_(grads: Any, clip_value: float, foreach: bool | None = None) -> None:
    """Clamp every gradient element to ``[-clip_value, clip_value]`` in place.

    ``g <- min(max(g, -v), v)`` with ``v`` rounded to each gradient's dtype; NaN stays NaN, +-inf
    become +-v. ``clip_value = inf`` leaves finite values alone.

    Raises ``ValueError`` for a negative or NaN ``clip_value``, ``TypeError`` for a non-number,
    and ``TypeError``/``ValueError`` for unsupported, read-only or overlapping buffers, before any
    buffer is modified.
    """
    _foreach(foreach)
    v = _threshold(clip_value, "clip_value")
    c = collect(_warn_if_empty_generator(grads))
    if c.arrays:
        c.ops.clamp_(c.arrays, -v, v, "grads", c.positions)
