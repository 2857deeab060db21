"""Paddle-style optimizers that clip before they update: ``SGD``, ``Momentum``, ``Adam``, ``AdamW``.

``opt.step()`` does what Paddle 3.x's dygraph ``Optimizer.step()`` does, per parameter group:

1. collect ``(param, param.grad)`` for the group's parameters, in order, skipping parameters with
   ``trainable=False`` and those whose ``grad`` is ``None``;
2. clip them with the group's ``grad_clip`` (any :class:`~fastclip.ClipGradBase`; one call per
   group, so :class:`~fastclip.ClipGradByGlobalNorm` computes **one global norm per group**,
   as Paddle does);
3. apply weight decay: L2 (``g' = g + wd * p``, formed inside the update, the gradient array is
   never modified by it) for ``SGD``/``Momentum``/``Adam``; decoupled (``p <- p - lr * wd * p``)
   for ``AdamW``;
4. update every parameter of the group, and its state, in place, in one Rust call
   (:mod:`fastclip._fastclip`, rayon-parallel above a size threshold, bitwise identical results for
   any thread count).

Learning rates: each parameter's rate is ``learning_rate * m``. Outside groups ``m`` is the
parameter's own multiplier (``Parameter(learning_rate=...)``, from ``ParamAttr``); inside a group,
``m`` is the group's ``"learning_rate"`` (default 1.0), which replaces the parameter's own, as
Paddle's ``_add_param_group`` overwrites ``param.optimize_attr['learning_rate']``.

Parameter groups: ``parameters`` may be a list of dicts, each with ``"params"`` (a list of
parameters) and optional overrides: ``"learning_rate"`` (a multiplier, above), ``"weight_decay"``,
``"grad_clip"``, and for ``Momentum`` ``"momentum"``/``"use_nesterov"``, for ``Adam``/``AdamW``
``"beta1"``/``"beta2"``/``"epsilon"``. A parameter may appear in only one group.

Supported dtypes: float32 and float64 parameters, each with a gradient of the same dtype; state
arrays (velocity, moments) have the parameter's dtype, like Paddle without ``multi_precision``.

A step is all or nothing. It first plans every group: each pair (grad an ndarray of its
parameter's dtype and shape, aligned, writeable where a clip scales it in place; value writeable),
each parameter's learning rate as applied, each state array, and that no value, state or clipped
grad shares a byte with any other array of the step, across all groups. Only then is anything
clipped, and every group is clipped before any is updated. A clip that is not one of fastclip's
own classes runs first, on a saved copy of the gradients it may write, which is put back if it
raises or returns a bad pair. On any error every parameter, gradient and state is bit-identical
to before.

Errors name the parameter by its ``name`` and its position in ``parameters``
(``parameter 'w' (parameters[1]['params'][0])``).

Deliberate differences from Paddle, each tested:

- arguments are checked at construction and raise ``TypeError``/``ValueError`` naming the argument:
  a negative, NaN or infinite learning rate, weight decay or momentum; an epsilon that is not > 0;
  a beta outside [0, 1); a non-bool ``use_nesterov``; an unknown key in a group dict (Paddle
  ignores ``"lr"`` silently); a parameter given twice, or two parameters over one buffer.
  Integer learning rates are accepted (Paddle requires float);
- every hyperparameter is also checked **as the kernel applies it**, in each parameter dtype the
  group holds: ``beta1=0.99999999`` is 1.0 in float32 (``1 - beta1`` would be 0 and the weights
  NaN), ``learning_rate=1e39`` is inf in float32, Adam's largest bias-corrected rate
  (``lr * max(1, sqrt(1 - beta2) / (1 - beta1))``) and AdamW's ``lr * weight_decay`` must be
  finite, and Adam's
  ``epsilon * sqrt(1 - beta2)`` must stay > 0 (else a zero gradient element gives 0/0). The
  learning rates are checked again by ``set_lr`` and by every ``step()`` (a per-parameter
  ``learning_rate`` attribute may have changed);
- ``ClipGradByValue``/``ClipGradByNorm`` clip ``param.grad`` in place (Paddle's return new tensors
  and leave ``param.grad`` unclipped); the update itself never writes a gradient.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any, ClassVar

import numpy as np

from . import _checks, _fastclip
from ._checks import applied
from .clip import ClipGradBase, ClipGradByGlobalNorm, ClipGradByNorm, ClipGradByValue

__all__ = ["SGD", "Adam", "AdamW", "Momentum", "Optimizer"]

_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))

#: fastclip's own clip classes: every error they can raise is checked during planning.
_OWN_CLIPS = (ClipGradByValue, ClipGradByNorm, ClipGradByGlobalNorm)

Validator = Callable[[Any, str], Any]


def _is_planned(clip: Any) -> bool:
    """Whether ``clip`` follows the two-phase protocol of :mod:`fastclip.skip` (``prepare`` reads
    and decides, ``plan.apply()`` writes): the adaptive clippers and the skip policies."""
    return clip is not None and callable(getattr(clip, "prepare", None))


def _clips_in_place(clip: Any) -> bool:
    """Whether ``clip`` is one of fastclip's classes (not a subclass, which may override any of
    their methods): it clips the grads in place and cannot fail once the planning checks passed."""
    return type(clip) in _OWN_CLIPS


def _label(p: Any, where: str) -> str:
    """How errors name a parameter: its ``name`` and its position in ``parameters``."""
    name = getattr(p, "name", None)
    return f"parameter {name!r} ({where})" if isinstance(name, str) and name else where


def _param_list(value: Any, name: str) -> list[Any]:
    if value is None:
        raise TypeError(f"{name} must be given: a list of Parameters or of parameter-group dicts")
    if isinstance(value, dict):
        raise TypeError(f"{name} must not be a dict; for parameter groups pass a list of dicts")
    if isinstance(value, (set, frozenset)):
        raise TypeError(f"{name} must be an ordered collection (a list), not a set")
    if hasattr(value, "value") and hasattr(value, "grad"):
        raise TypeError(f"{name} must be an iterable of Parameters, not a single {type(value).__name__}")
    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        raise TypeError(f"{name} must be an iterable of Parameters, not {type(value).__name__}")
    return list(value)


def _value_of(p: Any, where: str) -> np.ndarray:
    """The parameter's array, checked as the update needs it (labels are formed only on error:
    this runs for every parameter at every step)."""
    v = getattr(p, "value", None)
    if not isinstance(v, np.ndarray):
        label = _label(p, where)
        raise TypeError(f"{label} must be a fastclip.Parameter (with .value and .grad), not {type(p).__name__}")
    if v.dtype not in _FLOATS:
        label = _label(p, where)
        raise TypeError(f"{label} has dtype {v.dtype}; the optimizers update float32 and float64 parameters")
    flags = v.flags
    if not flags.writeable:
        raise ValueError(f"the value of {_label(p, where)} is read-only; the optimizer updates it in place")
    if not flags.aligned and v.size:
        raise ValueError(f"the value of {_label(p, where)} is not aligned for {v.dtype}")
    return v


def _check_grad(g: Any, v: np.ndarray, p: Any, where: str, clipped_by: Any) -> None:
    if not isinstance(g, np.ndarray):
        raise TypeError(f"the grad of {_label(p, where)} must be a numpy.ndarray, not {type(g).__name__}")
    if g.dtype != v.dtype:
        raise TypeError(f"the grad of {_label(p, where)} has dtype {g.dtype}, the parameter {v.dtype}; they must match")
    if g.shape != v.shape:
        raise ValueError(f"the grad of {_label(p, where)} has shape {g.shape}, the parameter {v.shape}")
    flags = g.flags
    if clipped_by is not None and not flags.writeable:
        raise ValueError(
            f"the grad of {_label(p, where)} is read-only; {type(clipped_by).__name__} clips it in place"
        )
    if not flags.aligned and g.size:
        raise ValueError(f"the grad of {_label(p, where)} is not aligned for {g.dtype}; pass a copy")


class _Group:
    """One parameter group, with every setting resolved, and the argument names they came from."""

    __slots__ = ("grad_clip", "hyper", "lr_scale", "names", "params", "weight_decay", "wheres")

    def __init__(
        self,
        params: list[Any],
        wheres: list[str],
        lr_scale: float | None,
        weight_decay: float,
        grad_clip: ClipGradBase | None,
        hyper: dict[str, Any],
        names: dict[str, str],
    ) -> None:
        self.params = params
        #: Each parameter's position in ``parameters`` (``parameters[1]['params'][0]``).
        self.wheres = wheres
        #: None outside groups: each parameter's own multiplier applies.
        self.lr_scale = lr_scale
        self.weight_decay = weight_decay
        self.grad_clip = grad_clip
        self.hyper = hyper
        #: The argument each setting came from (``"beta1"`` or ``"parameters[1]['beta1']"``).
        self.names = names


class _Entry:
    """One parameter a step updates: everything the update needs, checked."""

    __slots__ = ("clipped", "grad", "lr", "new", "param", "state", "value", "where")

    def __init__(
        self, param: Any, value: np.ndarray, grad: np.ndarray, where: str, lr: float, state: dict[str, Any], new: bool
    ) -> None:
        self.param = param
        self.value = value
        self.grad = grad
        self.where = where
        self.lr = lr
        self.state = state
        #: The state was made for this step (it is stored only when the step applies).
        self.new = new
        #: The grad is clipped in place by one of fastclip's clips (so it is written).
        self.clipped = False

    @property
    def label(self) -> str:
        return _label(self.param, self.where)


class _Plan:
    """One group's part of a step."""

    __slots__ = ("entries", "group", "in_place")

    def __init__(self, group: _Group, entries: list[_Entry], in_place: bool) -> None:
        self.group = group
        self.entries = entries
        #: The group's clip is one of fastclip's (checked up front) rather than a user's class.
        self.in_place = in_place


class Optimizer:
    """Base class of the optimizers: parameter groups, clipping, learning rate, ``clear_grad``.

    Subclasses define the update (``_update``), their hyperparameters (``_HYPER``: name ->
    validator), their state arrays and how each setting is checked in a parameter dtype. Not
    meant to be instantiated directly.
    """

    #: The optimizer-specific hyperparameters a group dict may override, and their validators.
    _HYPER: ClassVar[dict[str, Validator]] = {}
    #: The state arrays each parameter carries (arrays of the parameter's dtype and shape).
    _STATE: ClassVar[tuple[str, ...]] = ()
    _COMMON_KEYS = ("params", "learning_rate", "weight_decay", "grad_clip")

    def __init__(
        self,
        learning_rate: float,
        parameters: Any,
        weight_decay: Any,
        grad_clip: Any,
        hyper: dict[str, Any],
    ) -> None:
        checked = {k: self._HYPER[k](v, k) for k, v in hyper.items()}
        self._learning_rate = _checks.finite_nonneg(learning_rate, "learning_rate")
        self._grad_clip = _checks.grad_clip(grad_clip)
        self._weight_decay = self._decay(weight_decay, "weight_decay")
        self._hyper = checked
        #: Per-parameter state, keyed by id(param); the param is kept so the id stays valid.
        self._state: dict[int, tuple[Any, dict[str, Any]]] = {}
        #: Steps not taken because a skip policy (``fastclip.SkipNonFinite``, ``SkipAbove``) said so.
        self.skipped_steps = 0
        #: Whether the last ``step()`` was skipped by a skip policy (nothing was written then).
        self.last_step_skipped = False
        #: (id(group), dtype) pairs whose settings were checked as applied in that dtype.
        self._applied_ok: set[tuple[int, np.dtype]] = set()
        #: The byte bounds of the last step's arrays (see :func:`fastclip._checks.first_overlap`).
        self._bounds: _checks.BoundsCache = {}
        items = _param_list(parameters, "parameters")
        self._groups: list[_Group] = []
        seen: dict[int, str] = {}
        if items and all(isinstance(x, dict) for x in items):
            for k, d in enumerate(items):
                self._groups.append(self._make_group(d, f"parameters[{k}]", seen))
        else:
            wheres = []
            for i, p in enumerate(items):
                where = f"parameters[{i}]"
                if isinstance(p, dict):
                    raise TypeError(f"{where} is a dict: either every item is a parameter-group dict or none is")
                self._claim(p, where, seen)
                wheres.append(where)
            names = {k: k for k in ("weight_decay", *checked)}
            self._groups.append(
                _Group(items, wheres, None, self._weight_decay, self._grad_clip, dict(checked), names)
            )
        self._check_own_buffers()
        for group in self._groups:
            for p, where in zip(group.params, group.wheres):
                self._check_applied(group, p.value.dtype, p, where)
        self._check_lrs(self._learning_rate, "learning_rate")

    # -- construction helpers ---------------------------------------------------------------

    def _decay(self, value: Any, name: str) -> float:
        """A coupled L2 coefficient: None (no decay) or a finite number >= 0."""
        return 0.0 if value is None else _checks.finite_nonneg(value, name)

    def _group_decay(self, value: Any, name: str) -> float:
        """A group's weight decay; ``None`` falls back to the optimizer's (Paddle's
        ``append_regularization_ops`` uses the optimizer's regularizer when the param has none)."""
        return self._weight_decay if value is None else self._decay(value, name)

    def _claim(self, p: Any, where: str, seen: dict[int, str]) -> None:
        if not (hasattr(p, "value") and hasattr(p, "grad") and isinstance(p.value, np.ndarray)):
            raise TypeError(f"{where} must be a fastclip.Parameter (with .value and .grad), not {type(p).__name__}")
        if p.value.dtype not in _FLOATS:
            raise TypeError(f"{where} has dtype {p.value.dtype}; the optimizers update float32 and float64 parameters")
        if id(p) in seen:
            raise ValueError(f"{where} was already given as {seen[id(p)]}; a parameter may appear only once")
        seen[id(p)] = where

    def _check_own_buffers(self) -> None:
        """Two parameters over one buffer (or overlapping views of one) would be updated twice."""
        clash = _checks.first_overlap(
            (p.value, True, _label(p, w)) for g in self._groups for p, w in zip(g.params, g.wheres)
        )
        if clash is not None:
            raise ValueError(
                f"{clash[0]} and {clash[1]} share memory (their values overlap); the optimizer updates "
                "each value in place, so every parameter needs its own buffer"
            )

    def _make_group(self, d: dict[str, Any], where: str, seen: dict[int, str]) -> _Group:
        allowed = self._COMMON_KEYS + tuple(self._HYPER)
        unknown = [k for k in d if k not in allowed]
        if unknown:
            listed = ", ".join(repr(k) for k in allowed)
            raise ValueError(f"{where} has unknown key(s) {', '.join(map(repr, unknown))}; allowed: {listed}")
        if "params" not in d:
            raise ValueError(f"{where} must have a 'params' entry")
        raw = d["params"]
        params = [raw] if hasattr(raw, "value") and hasattr(raw, "grad") else _param_list(raw, f"{where}['params']")
        wheres = [f"{where}['params'][{i}]" for i in range(len(params))]
        for p, w in zip(params, wheres):
            self._claim(p, w, seen)
        scale = _checks.finite_nonneg(d.get("learning_rate", 1.0), f"{where}['learning_rate']")
        names = {k: k for k in self._HYPER}
        names["learning_rate"] = f"{where}['learning_rate']"
        wd = self._weight_decay
        names["weight_decay"] = "weight_decay"
        if "weight_decay" in d:
            names["weight_decay"] = f"{where}['weight_decay']"
            wd = self._group_decay(d["weight_decay"], names["weight_decay"])
        clip = _checks.grad_clip(d["grad_clip"], f"{where}['grad_clip']") if "grad_clip" in d else self._grad_clip
        hyper = dict(self._hyper)
        for k, check in self._HYPER.items():
            if k in d:
                names[k] = f"{where}[{k!r}]"
                hyper[k] = check(d[k], names[k])
        return _Group(params, wheres, scale, wd, clip, hyper, names)

    # -- settings as the kernel applies them --------------------------------------------------

    def _check_applied(self, group: _Group, dtype: np.dtype, p: Any, where: str) -> None:
        """Check the group's settings (not the learning rate) as the update applies them in
        ``dtype``, the dtype of parameter ``p``. Once per group and dtype."""
        key = (id(group), dtype)
        if key in self._applied_ok:
            return
        self._applied_settings(group, dtype, _label(p, where))
        self._applied_ok.add(key)

    def _applied_settings(self, group: _Group, dtype: np.dtype, who: str) -> None:
        _finite_in(group.weight_decay, group.names.get("weight_decay", "weight_decay"), dtype, who)

    def _lr_problem(self, lr: float, group: _Group, dtype: np.dtype) -> str | None:
        """What goes wrong when the update applies learning rate ``lr`` in ``dtype``, or None."""
        a = applied(lr, dtype)
        if not np.isfinite(a):
            return f"is {float(a)} in {dtype}, the parameter's dtype"
        return None

    def _param_lr(self, group: _Group, p: Any, lr: float, where: str) -> tuple[float, float]:
        """``(rate, multiplier)`` for one parameter: ``lr`` times the group's or the parameter's
        multiplier (the parameter's ``learning_rate`` attribute is checked here: a user may have
        set anything)."""
        if group.lr_scale is not None:
            return lr * group.lr_scale, group.lr_scale
        raw = getattr(p, "learning_rate", 1.0)
        if type(raw) is float and 0.0 <= raw < math.inf:  # fastclip.Parameter's: checked when set
            return lr * raw, raw
        scale = _checks.finite_nonneg(raw, f"the learning_rate of {_label(p, where)}")
        return lr * scale, scale

    def _check_lr(self, lr: float, lr_name: str, group: _Group, p: Any, where: str, done: set[Any]) -> float:
        """The learning rate of parameter ``p`` for a global rate ``lr`` (named ``lr_name``),
        checked as the update applies it in the parameter's dtype."""
        lr_i, scale = self._param_lr(group, p, lr, where)
        dtype = p.value.dtype
        key = (lr_i, dtype, id(group))
        if key in done:
            return lr_i
        problem = self._lr_problem(lr_i, group, dtype)
        if problem is not None:
            source = "its own learning_rate" if group.lr_scale is None else group.names["learning_rate"]
            raise ValueError(
                f"the learning rate of {_label(p, where)} is {lr_i!r} ({lr_name} {lr!r} times {source} {scale!r}), "
                f"which {problem}"
            )
        done.add(key)
        return lr_i

    def _check_lrs(self, lr: float, lr_name: str) -> None:
        """Check the learning rate of every parameter, as applied, for a global rate ``lr``."""
        done: set[Any] = set()
        for group in self._groups:
            for p, where in zip(group.params, group.wheres):
                v = getattr(p, "value", None)
                if not (isinstance(v, np.ndarray) and v.dtype in _FLOATS):
                    continue  # a duck-typed parameter changed its value: step() will say so
                self._check_lr(lr, lr_name, group, p, where, done)

    # -- public API ---------------------------------------------------------------------------

    def get_lr(self) -> float:
        """The global learning rate (each parameter's is this times its multiplier)."""
        return self._learning_rate

    def set_lr(self, value: float) -> None:
        """Set the global learning rate. Raises ``TypeError`` for a non-number and
        ``ValueError`` for a negative, NaN or infinite value, or one that overflows a parameter's
        dtype as applied (times its multiplier; for Adam its largest bias-corrected rate)."""
        lr = _checks.finite_nonneg(value, "value")
        self._check_lrs(lr, "value")
        self._learning_rate = lr

    def step(self) -> None:
        """Clip, decay and update every parameter that has a gradient (see the module doc).

        Raises ``TypeError``/``ValueError`` naming the parameter, before anything is modified,
        when a gradient is not a NumPy array, does not have its parameter's dtype (float32 or
        float64) or shape, is read-only while a clip scales it in place, or shares memory with a
        value, a state or a clipped gradient of any group; when a value is read-only; when a
        parameter's learning rate is bad or overflows its dtype. A user clip class that raises
        leaves every gradient as it was.
        """
        done: set[Any] = set()
        plans = [self._plan(group, done) for group in self._groups]
        self._check_memory(plans)
        # Two-phase clippers (adaptive, skip policies): every group's decision is read first.
        decided = [
            (pl, pl.group.grad_clip.prepare([(e.param, e.grad) for e in pl.entries]))  # type: ignore[union-attr]
            for pl in plans
            if pl.entries and _is_planned(pl.group.grad_clip)
        ]
        if any(cp.skip for _, cp in decided):
            # The step is not taken: only the skip policies' counters advance; no grad, value,
            # state or step count changes.
            for _, cp in decided:
                if cp.skip:
                    cp.apply()
                else:
                    cp.discard()
            self.skipped_steps += 1
            self.last_step_skipped = True
            return
        if any(pl.entries and pl.group.grad_clip is not None and not pl.in_place and not _is_planned(pl.group.grad_clip)
               for pl in plans):
            self._run_user_clips(plans, done)
        # Nothing below can fail: every condition the clips and the kernels check was checked.
        for pl in plans:
            if pl.entries and pl.in_place:
                assert pl.group.grad_clip is not None
                pl.group.grad_clip([(e.param, e.grad) for e in pl.entries])
        for _, cp in decided:
            cp.apply()  # in place on the same grads; commits the clippers' statistics
        self.last_step_skipped = False
        for pl in plans:
            if not pl.entries:
                continue
            for e in pl.entries:
                if e.new:
                    self._state[id(e.param)] = (e.param, e.state)
                    e.new = False
            self._update(pl.group, pl.entries)

    def clear_grad(self, set_to_zero: bool = True) -> None:
        """Clear the gradients of every trainable parameter (Paddle's ``clear_grad``).

        ``set_to_zero=True`` (the default, as Paddle) fills each existing gradient with zeros in
        place; ``False`` sets ``param.grad = None``. Raises ``TypeError`` for a non-bool flag and
        ``ValueError`` for a read-only gradient (before any is zeroed).
        """
        zero = _checks.flag(set_to_zero, "set_to_zero")
        todo = [(p, w) for g in self._groups for p, w in zip(g.params, g.wheres) if getattr(p, "trainable", True)]
        if zero:
            for p, w in todo:
                g = p.grad
                if isinstance(g, np.ndarray) and not g.flags.writeable:
                    raise ValueError(f"the grad of {_label(p, w)} is read-only; clear_grad zeroes it in place")
        for p, _ in todo:
            if zero:
                if p.grad is not None:
                    p.grad[...] = 0
            else:
                p.grad = None

    clear_gradients = clear_grad

    # -- step: planning -----------------------------------------------------------------------

    def _plan(self, group: _Group, done: set[Any]) -> _Plan:
        clip = group.grad_clip
        in_place = clip is not None and _clips_in_place(clip)
        entries = []
        for p, where in zip(group.params, group.wheres):
            if not getattr(p, "trainable", True):
                continue
            g = p.grad
            if g is None:
                continue
            clipped_by = clip if in_place and getattr(p, "need_clip", True) is not False else None
            e = self._plan_entry(group, p, g, where, done, clipped_by)
            e.clipped = clipped_by is not None
            entries.append(e)
        return _Plan(group, entries, in_place)

    def _plan_entry(self, group: _Group, p: Any, g: Any, where: str, done: set[Any], clipped_by: Any) -> _Entry:
        v = _value_of(p, where)
        _check_grad(g, v, p, where, clipped_by)
        self._check_applied(group, v.dtype, p, where)
        lr_i = self._check_lr(self._learning_rate, "learning_rate", group, p, where, done)
        entry = self._state.get(id(p))
        if entry is not None and entry[0] is p:
            self._check_state(entry[1], v, p, where)
            return _Entry(p, v, g, where, lr_i, entry[1], False)
        return _Entry(p, v, g, where, lr_i, self._new_state(group, v), True)

    def _new_state(self, group: _Group, v: np.ndarray) -> dict[str, Any]:
        """A fresh state for a parameter of value ``v`` (zeros for every state array)."""
        return {k: np.zeros_like(v) for k in self._STATE}

    def _check_state(self, state: dict[str, Any], v: np.ndarray, p: Any, where: str) -> None:
        for k in self._STATE:
            a = state.get(k)
            if not isinstance(a, np.ndarray):
                what = f"the optimizer state {k!r} of {_label(p, where)}"
                raise TypeError(f"{what} must be a numpy.ndarray, not {type(a).__name__}")
            if a.dtype != v.dtype or a.shape != v.shape:
                what = f"the optimizer state {k!r} of {_label(p, where)}"
                raise ValueError(f"{what} has dtype {a.dtype} and shape {a.shape}; the parameter {v.dtype} {v.shape}")
            flags = a.flags
            if not flags.writeable or not (flags.aligned or not a.size):
                what = f"the optimizer state {k!r} of {_label(p, where)}"
                raise ValueError(f"{what} is read-only or not aligned; the optimizer updates it in place")

    def _check_memory(self, plans: list[_Plan]) -> None:
        """Nothing written (values, states, grads clipped in place or by a user clip) may share a
        byte with any other array of the step, in any group; grads that are only read may."""

        def items() -> Iterable[tuple[np.ndarray, bool, tuple[str, _Entry]]]:
            for pl in plans:
                user_clip = pl.group.grad_clip is not None and not pl.in_place
                for e in pl.entries:
                    yield e.value, True, ("value", e)
                    yield e.grad, e.clipped or user_clip, ("grad", e)
                    for k in self._STATE:
                        yield e.state[k], True, (f"optimizer state {k!r}", e)

        clash = _checks.first_overlap(items(), self._bounds)
        if clash is not None:
            (what_a, a), (what_b, b) = clash
            raise ValueError(
                f"the {what_b} of {b.label} shares memory with the {what_a} of {a.label}; the step writes "
                "values, states and clipped gradients in place: give each its own buffer"
            )

    # -- step: user clips -----------------------------------------------------------------------

    def _run_user_clips(self, plans: list[_Plan], done: set[Any]) -> None:
        """Run the clips that are not fastclip's own, before any other buffer is touched; check
        what they return as the step's input is checked. If one raises or returns something bad,
        every grad they were given is put back as it was (from a copy), and the error propagates."""
        users = [
            pl
            for pl in plans
            if pl.entries and pl.group.grad_clip is not None and not pl.in_place and not _is_planned(pl.group.grad_clip)
        ]
        saved = [(e.grad, e.grad.copy()) for pl in users for e in pl.entries if e.grad.flags.writeable]
        clips = {id(pl.group.grad_clip): pl.group.grad_clip for pl in plans if pl.group.grad_clip is not None}
        stats = [(c, c.last_stats) for c in clips.values() if hasattr(c, "last_stats")]
        try:
            for pl in users:
                assert pl.group.grad_clip is not None
                out = pl.group.grad_clip([(e.param, e.grad) for e in pl.entries])
                pl.entries = self._plan_clipped(pl, out, done)
            self._check_memory(plans)
        except BaseException:
            for g, copy in saved:
                np.copyto(g, copy)
            for c, s in stats:
                c.last_stats = s
            raise

    def _plan_clipped(self, pl: _Plan, out: Any, done: set[Any]) -> list[_Entry]:
        """The entries for what a user clip returned: pairs of the group's parameters and grads."""
        name = f"the grad_clip {type(pl.group.grad_clip).__name__}"
        if isinstance(out, (str, bytes)) or not isinstance(out, Iterable):
            raise TypeError(f"{name} must return a list of (param, grad) pairs, not {type(out).__name__}")
        where_of = {id(p): w for p, w in zip(pl.group.params, pl.group.wheres)}
        entries: list[_Entry] = []
        seen: set[int] = set()
        for i, pair in enumerate(out):
            try:
                p, g = pair
            except (TypeError, ValueError):
                raise TypeError(f"{name} returned item {i} that is not a (param, grad) pair") from None
            if id(p) not in where_of or id(p) in seen:
                raise ValueError(f"{name} returned item {i} whose param is not one of its group's, or is repeated")
            seen.add(id(p))
            if g is None:
                continue
            entries.append(self._plan_entry(pl.group, p, g, where_of[id(p)], done, None))
        return entries

    # -- step: the update -----------------------------------------------------------------------

    def _update(self, group: _Group, entries: list[_Entry]) -> None:
        raise NotImplementedError


def _finite_in(value: float, name: str, dtype: np.dtype, who: str) -> Any:
    """``value`` rounded to ``dtype``; ``ValueError`` if it is not finite there."""
    a = applied(value, dtype)
    if not np.isfinite(a):
        raise ValueError(f"{name} = {value!r} is {float(a)} in {dtype}, the dtype of {who}")
    return a


def _below_one_in(value: float, name: str, key: str, dtype: np.dtype, who: str) -> Any:
    """A beta rounded to ``dtype``; ``ValueError`` if it rounds to 1 there (``1 - beta`` = 0)."""
    a = applied(value, dtype)
    if not a < 1:
        top = float(np.nextafter(dtype.type(1), dtype.type(0)))
        raise ValueError(
            f"{name} = {value!r} is {float(a)} in {dtype}, the dtype of {who}: 1 - {key} would be 0 and "
            f"the weights NaN; the largest {dtype} below 1 is {top!r}"
        )
    return a


class SGD(Optimizer):
    """Stochastic gradient descent with coupled L2 weight decay (Paddle's ``paddle.optimizer.SGD``).

    ``p <- p - lr * (g + weight_decay * p)`` per element, in the parameter's dtype, where ``g`` is
    the clipped gradient and ``lr`` the parameter's learning rate (global times multiplier).

    Raises ``TypeError``/``ValueError`` (naming the argument) for a bad learning rate, weight decay,
    ``parameters`` or ``grad_clip`` (which must be a :class:`~fastclip.ClipGradBase`), and for a
    learning rate or weight decay that overflows a parameter's dtype.

    >>> import numpy as np, fastclip as fc
    >>> w = fc.Parameter(np.array([10.0, 0.0], np.float32))
    >>> w.grad = np.array([3.0, 4.0], np.float32)
    >>> opt = fc.optimizer.SGD(1.0, parameters=[w], weight_decay=0.5, grad_clip=fc.ClipGradByValue(1.0))
    >>> opt.step(); w.value
    array([ 4., -1.], dtype=float32)
    """

    def __init__(
        self,
        learning_rate: float = 0.001,
        parameters: Any = None,
        weight_decay: float | None = None,
        grad_clip: ClipGradBase | None = None,
    ) -> None:
        super().__init__(learning_rate, parameters, weight_decay, grad_clip, {})

    def _update(self, group: _Group, entries: list[_Entry]) -> None:
        _fastclip.sgd_([e.value for e in entries], [e.grad for e in entries], [e.lr for e in entries],
                       group.weight_decay)  # fmt: skip


class Momentum(Optimizer):
    """Momentum SGD, heavy-ball or Nesterov, with L2 decay fused (Paddle's ``paddle.optimizer.Momentum``).

    Per element, with ``g`` the clipped gradient and ``v`` the velocity (zeros at first)::

        g' = p * weight_decay + g
        v  <- v * momentum + g'
        p  <- p - lr * v                         (use_nesterov=False)
        p  <- p - (g' + v * momentum) * lr       (use_nesterov=True)

    Raises ``TypeError``/``ValueError`` (naming the argument) for a bad learning rate, a
    momentum that is not a finite number >= 0, a bad weight decay, ``use_nesterov`` (must be a
    bool), ``parameters`` or ``grad_clip``, and for a value that overflows a parameter's dtype.

    >>> import numpy as np, fastclip as fc
    >>> w = fc.Parameter(np.array([1.0, 2.0]))
    >>> opt = fc.optimizer.Momentum(0.1, momentum=0.9, parameters=[w])
    >>> w.grad = np.array([1.0, 1.0]); opt.step(); opt.step(); w.value
    array([0.71, 1.71])
    """

    _HYPER: ClassVar[dict[str, Validator]] = {"momentum": _checks.finite_nonneg, "use_nesterov": _checks.flag}
    _STATE = ("velocity",)

    def __init__(
        self,
        learning_rate: float = 0.001,
        momentum: float = 0.9,
        parameters: Any = None,
        use_nesterov: bool = False,
        weight_decay: float | None = None,
        grad_clip: ClipGradBase | None = None,
    ) -> None:
        hyper = {"momentum": momentum, "use_nesterov": use_nesterov}
        super().__init__(learning_rate, parameters, weight_decay, grad_clip, hyper)

    def _group_decay(self, value: Any, name: str) -> float:
        # Momentum fuses L2 into its kernel; a group's explicit None means no decay (Paddle's
        # _update_regularization(None) gives regularization_method "").
        return 0.0 if value is None else self._decay(value, name)

    def _applied_settings(self, group: _Group, dtype: np.dtype, who: str) -> None:
        super()._applied_settings(group, dtype, who)
        _finite_in(group.hyper["momentum"], group.names["momentum"], dtype, who)

    def _update(self, group: _Group, entries: list[_Entry]) -> None:
        _fastclip.momentum_(
            [e.value for e in entries],
            [e.grad for e in entries],
            [e.state["velocity"] for e in entries],
            [e.lr for e in entries],
            group.hyper["momentum"],
            group.hyper["use_nesterov"],
            group.weight_decay,
        )


class Adam(Optimizer):
    """Adam with coupled L2 weight decay (Paddle's ``paddle.optimizer.Adam``).

    Per element, ``t`` counting this parameter's updates, ``g' = g + weight_decay * p``::

        m1 <- beta1 * m1 + (1 - beta1) * g'
        m2 <- beta2 * m2 + (1 - beta2) * g' * g'
        lr_t  = lr * sqrt(1 - beta2^t) / (1 - beta1^t)
        eps_t = epsilon * sqrt(1 - beta2^t)
        p  <- p - lr_t * m1 / (sqrt(m2) + eps_t)

    ``beta^t`` is kept per parameter in its dtype (Paddle's ``beta1_pow_acc``), starting at
    ``beta``. Raises ``TypeError``/``ValueError`` (naming the argument) for a bad learning rate,
    ``beta1``/``beta2`` outside [0, 1), an ``epsilon`` that is not a finite number > 0, a
    negative or non-finite weight decay, bad ``parameters`` or a ``grad_clip`` that is not a
    :class:`~fastclip.ClipGradBase`; and, for each parameter dtype, when a beta rounds to 1,
    the largest ``lr_t`` overflows or ``epsilon * sqrt(1 - beta2)`` rounds to 0 in that dtype.
    What depends on the gradients is not refused: with ``beta2 = 0`` a gradient element that
    turns to 0 moves its weight by ``lr_t * m1 / eps_t``, which overflows for a subnormal epsilon.

    >>> import numpy as np, fastclip as fc
    >>> w = fc.Parameter(np.array([1.0, -1.0]))
    >>> w.grad = np.array([0.5, -2.0])
    >>> fc.optimizer.Adam(0.1, parameters=[w]).step(); w.value  # first step moves by ~lr * sign(g)
    array([ 0.9, -0.9])
    """

    _HYPER: ClassVar[dict[str, Validator]] = {
        "beta1": _checks.beta,
        "beta2": _checks.beta,
        "epsilon": _checks.positive,
    }
    _STATE = ("moment1", "moment2")
    _DECOUPLED = False

    def __init__(
        self,
        learning_rate: float = 0.001,
        beta1: float = 0.9,
        beta2: float = 0.999,
        epsilon: float = 1e-8,
        parameters: Any = None,
        weight_decay: float | None = None,
        grad_clip: ClipGradBase | None = None,
    ) -> None:
        hyper = {"beta1": beta1, "beta2": beta2, "epsilon": epsilon}
        super().__init__(learning_rate, parameters, weight_decay, grad_clip, hyper)

    def _applied_settings(self, group: _Group, dtype: np.dtype, who: str) -> None:
        super()._applied_settings(group, dtype, who)
        h, n = group.hyper, group.names
        _below_one_in(h["beta1"], n["beta1"], "beta1", dtype, who)
        b2 = _below_one_in(h["beta2"], n["beta2"], "beta2", dtype, who)
        eps = _finite_in(h["epsilon"], n["epsilon"], dtype, who)
        # The kernel's eps_t = epsilon * sqrt(1 - beta2^t), smallest on the first step (t = 1).
        with np.errstate(under="ignore"):
            eps_t = eps * np.sqrt(dtype.type(1) - b2)
        if not eps_t > 0:
            raise ValueError(
                f"{n['epsilon']} = {h['epsilon']!r} with {n['beta2']} = {h['beta2']!r} gives "
                f"epsilon * sqrt(1 - beta2) = 0.0 in {dtype}, the dtype of {who}: a zero gradient element "
                "would then update by 0/0 = NaN; use a larger epsilon"
            )

    def _lr_problem(self, lr: float, group: _Group, dtype: np.dtype) -> str | None:
        problem = super()._lr_problem(lr, group, dtype)
        if problem is not None:
            return problem
        # The kernel's rate lr_t = lr * (sqrt(1 - beta2^t) / (1 - beta1^t)). Its factor is largest
        # on the first step or in the limit (1) -- checked numerically for betas over [0, 1 - 1e-15]
        # and t up to 2e5 -- so the first step's factor, formed in the dtype as the kernel forms
        # it, bounds every step. The margin covers the rounding of later steps' powers.
        one = dtype.type(1)
        with np.errstate(over="ignore", divide="ignore"):
            first = np.sqrt(one - applied(group.hyper["beta2"], dtype)) / (one - applied(group.hyper["beta1"], dtype))
        rate = float(applied(lr, dtype)) * max(float(first), 1.0)
        if not rate * (1 + 1e-6) <= float(np.finfo(dtype).max):
            n = group.names
            return (
                f"times Adam's bias correction sqrt(1 - {n['beta2']}) / (1 - {n['beta1']}) = {float(first)!r} "
                f"overflows {dtype}"
            )
        return None

    def _new_state(self, group: _Group, v: np.ndarray) -> dict[str, Any]:
        # Paddle's accumulators: moments of the param's dtype, beta pows filled with beta.
        t = v.dtype.type
        state = super()._new_state(group, v)
        state["pows"] = [t(group.hyper["beta1"]), t(group.hyper["beta2"])]
        return state

    def _check_state(self, state: dict[str, Any], v: np.ndarray, p: Any, where: str) -> None:
        super()._check_state(state, v, p, where)
        pows = state.get("pows")
        t = v.dtype.type
        if not (
            type(pows) is list
            and len(pows) == 2
            and type(pows[0]) is t
            and type(pows[1]) is t
            and 0.0 <= float(pows[0]) < 1.0
            and 0.0 <= float(pows[1]) < 1.0
        ):
            label = _label(p, where)
            raise ValueError(f"the optimizer state 'pows' of {label} must be two {v.dtype} numbers in [0, 1)")

    def _update(self, group: _Group, entries: list[_Entry]) -> None:
        b1, b2 = group.hyper["beta1"], group.hyper["beta2"]
        _fastclip.adam_(
            [e.value for e in entries],
            [e.grad for e in entries],
            [e.state["moment1"] for e in entries],
            [e.state["moment2"] for e in entries],
            [e.lr for e in entries],
            b1,
            b2,
            group.hyper["epsilon"],
            [float(e.state["pows"][0]) for e in entries],
            [float(e.state["pows"][1]) for e in entries],
            group.weight_decay,
            self._DECOUPLED,
        )
        # Paddle's kernel writes beta_pow_out = beta * beta_pow, in the parameter's dtype.
        for e in entries:
            t = e.value.dtype.type
            pows = e.state["pows"]
            with np.errstate(under="ignore"):
                e.state["pows"] = [t(b1) * pows[0], t(b2) * pows[1]]


class AdamW(Adam):
    """Adam with decoupled weight decay (Paddle's ``paddle.optimizer.AdamW``, ``lr_ratio=None``).

    Per element: ``p <- p - lr * weight_decay * p`` first (on the clipped gradient's parameter,
    independent of the gradient), then the :class:`Adam` update of that ``p`` with the clipped
    gradient ``g`` (no L2 term). ``weight_decay`` defaults to 0.01 and must be a finite number
    >= 0 (``None`` raises ``TypeError``, as Paddle), and ``lr * weight_decay`` must be finite in
    each parameter's dtype. Other arguments and errors as :class:`Adam`.

    >>> import numpy as np, fastclip as fc
    >>> w = fc.Parameter(np.array([10.0, 0.0]))
    >>> w.grad = np.array([1.0, 1.0])
    >>> fc.optimizer.AdamW(1.0, parameters=[w], weight_decay=0.5, epsilon=1e-30).step(); w.value
    array([ 4., -1.])
    """

    _DECOUPLED = True

    def __init__(
        self,
        learning_rate: float = 0.001,
        beta1: float = 0.9,
        beta2: float = 0.999,
        epsilon: float = 1e-8,
        parameters: Any = None,
        weight_decay: float = 0.01,
        grad_clip: ClipGradBase | None = None,
    ) -> None:
        super().__init__(learning_rate, beta1, beta2, epsilon, parameters, weight_decay, grad_clip)

    def _decay(self, value: Any, name: str) -> float:
        if value is None:
            raise TypeError(f"{name} must be a real number (AdamW's decoupled coefficient), not None")
        return _checks.finite_nonneg(value, name)

    def _group_decay(self, value: Any, name: str) -> float:
        return self._decay(value, name)

    def _lr_problem(self, lr: float, group: _Group, dtype: np.dtype) -> str | None:
        problem = super()._lr_problem(lr, group, dtype)
        if problem is not None:
            return problem
        with np.errstate(over="ignore"):
            decay = applied(lr, dtype) * applied(group.weight_decay, dtype)  # the kernel's lr * coeff
        if not np.isfinite(decay):
            wd_name = group.names["weight_decay"]
            return f"times {wd_name} ({group.weight_decay!r}) overflows {dtype} (AdamW's decay lr * weight_decay)"
        return None
