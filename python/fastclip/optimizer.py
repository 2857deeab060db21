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

Deliberate differences from Paddle, each tested:

- arguments are checked at construction and raise ``TypeError``/``ValueError`` naming the argument:
  a negative, NaN or infinite learning rate, weight decay, momentum or epsilon; a beta outside
  [0, 1); a non-bool ``use_nesterov``; an unknown key in a group dict (Paddle ignores ``"lr"``
  silently); a parameter given twice. Integer learning rates are accepted (Paddle requires float);
- ``step()`` checks every gradient (array, same dtype as its parameter, float32/float64, not
  sharing memory with a parameter) before clipping anything, so a bad gradient leaves every
  gradient, parameter and state bit-identical;
- ``ClipGradByValue``/``ClipGradByNorm`` clip ``param.grad`` in place (Paddle's return new tensors
  and leave ``param.grad`` unclipped); the update itself never writes a gradient.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import numpy as np

from . import _fastclip
from ._checks import number as _number
from .clip import ClipGradBase

__all__ = ["SGD", "Adam", "AdamW", "Momentum", "Optimizer"]

_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))


def _nonneg(value: Any, name: str) -> float:
    v = _number(value, name)
    if not (math.isfinite(v) and v >= 0):
        raise ValueError(f"{name} must be a finite number >= 0, got {v!r}")
    return v


def _beta(value: Any, name: str) -> float:
    v = _number(value, name)
    if not 0 <= v < 1:
        raise ValueError(f"{name} must be in [0, 1), got {v!r}")
    return v


def _bool(value: Any, name: str) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be a bool, not {type(value).__name__}")
    return bool(value)


def _grad_clip(value: Any, name: str = "grad_clip") -> ClipGradBase | None:
    if value is not None and not isinstance(value, ClipGradBase):
        raise TypeError(
            f"{name} should be an instance of ClipGradBase's derived class "
            f"(ClipGradByValue, ClipGradByNorm, ClipGradByGlobalNorm), not {type(value).__name__}"
        )
    return value


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


def _check_param(p: Any, where: str) -> None:
    if not (hasattr(p, "value") and hasattr(p, "grad") and isinstance(p.value, np.ndarray)):
        raise TypeError(f"{where} must be a fastclip.Parameter (with .value and .grad), not {type(p).__name__}")
    if p.value.dtype not in _FLOATS:
        raise TypeError(f"{where} has dtype {p.value.dtype}; the optimizers update float32 and float64 parameters")


class _Group:
    """One parameter group, with every setting resolved."""

    __slots__ = ("grad_clip", "hyper", "lr_scale", "params", "weight_decay")

    def __init__(
        self,
        params: list[Any],
        lr_scale: float | None,
        weight_decay: float,
        grad_clip: ClipGradBase | None,
        hyper: dict[str, Any],
    ) -> None:
        self.params = params
        #: None outside groups: each parameter's own multiplier applies.
        self.lr_scale = lr_scale
        self.weight_decay = weight_decay
        self.grad_clip = grad_clip
        self.hyper = hyper


class Optimizer:
    """Base class of the optimizers: parameter groups, clipping, learning rate, ``clear_grad``.

    Subclasses define the update (``_update``) and their own hyperparameters. Not meant to be
    instantiated directly.
    """

    #: Hyperparameters a group dict may override (besides the common ones).
    _GROUP_KEYS: tuple[str, ...] = ()
    _COMMON_KEYS = ("params", "learning_rate", "weight_decay", "grad_clip")

    def __init__(
        self,
        learning_rate: float,
        parameters: Any,
        weight_decay: Any,
        grad_clip: Any,
        hyper: dict[str, Any],
    ) -> None:
        self._learning_rate = _nonneg(learning_rate, "learning_rate")
        self._grad_clip = _grad_clip(grad_clip)
        self._weight_decay = self._decay(weight_decay, "weight_decay")
        self._hyper = hyper
        #: Per-parameter state, keyed by id(param); the param is kept so the id stays valid.
        self._state: dict[int, tuple[Any, dict[str, Any]]] = {}
        items = _param_list(parameters, "parameters")
        self._groups: list[_Group] = []
        seen: dict[int, str] = {}
        if items and all(isinstance(x, dict) for x in items):
            for k, d in enumerate(items):
                self._groups.append(self._make_group(d, f"parameters[{k}]", seen))
        else:
            for i, p in enumerate(items):
                where = f"parameters[{i}]"
                if isinstance(p, dict):
                    raise TypeError(f"{where} is a dict: either every item is a parameter-group dict or none is")
                _check_param(p, where)
                self._claim(p, where, seen)
            self._groups.append(_Group(items, None, self._weight_decay, self._grad_clip, dict(hyper)))

    # -- construction helpers ---------------------------------------------------------------

    def _decay(self, value: Any, name: str) -> float:
        """A coupled L2 coefficient: None (no decay) or a finite number >= 0."""
        return 0.0 if value is None else _nonneg(value, name)

    def _group_decay(self, value: Any, name: str) -> float:
        """A group's weight decay; ``None`` falls back to the optimizer's (Paddle's
        ``append_regularization_ops`` uses the optimizer's regularizer when the param has none)."""
        return self._weight_decay if value is None else self._decay(value, name)

    def _check_hyper(self, key: str, value: Any, name: str) -> Any:
        """Validate one optimizer-specific hyperparameter; subclasses override."""
        raise ValueError(f"unknown hyperparameter {key!r}")

    def _claim(self, p: Any, where: str, seen: dict[int, str]) -> None:
        if id(p) in seen:
            raise ValueError(f"{where} was already given as {seen[id(p)]}; a parameter may appear only once")
        seen[id(p)] = where

    def _make_group(self, d: dict[str, Any], where: str, seen: dict[int, str]) -> _Group:
        unknown = [k for k in d if k not in self._COMMON_KEYS + self._GROUP_KEYS]
        if unknown:
            allowed = ", ".join(repr(k) for k in self._COMMON_KEYS + self._GROUP_KEYS)
            raise ValueError(f"{where} has unknown key(s) {', '.join(map(repr, unknown))}; allowed: {allowed}")
        if "params" not in d:
            raise ValueError(f"{where} must have a 'params' entry")
        raw = d["params"]
        params = [raw] if hasattr(raw, "value") and hasattr(raw, "grad") else _param_list(raw, f"{where}['params']")
        for i, p in enumerate(params):
            w = f"{where}['params'][{i}]"
            _check_param(p, w)
            self._claim(p, w, seen)
        scale = _nonneg(d.get("learning_rate", 1.0), f"{where}['learning_rate']")
        wd = self._group_decay(d["weight_decay"], f"{where}['weight_decay']") if "weight_decay" in d else None
        clip = _grad_clip(d["grad_clip"], f"{where}['grad_clip']") if "grad_clip" in d else self._grad_clip
        hyper = dict(self._hyper)
        for k in self._GROUP_KEYS:
            if k in d:
                hyper[k] = self._check_hyper(k, d[k], f"{where}[{k!r}]")
        return _Group(params, scale, self._weight_decay if wd is None else wd, clip, hyper)

    # -- public API ---------------------------------------------------------------------------

    def get_lr(self) -> float:
        """The global learning rate (each parameter's is this times its multiplier)."""
        return self._learning_rate

    def set_lr(self, value: float) -> None:
        """Set the global learning rate. Raises ``TypeError`` for a non-number and
        ``ValueError`` for a negative, NaN or infinite value."""
        self._learning_rate = _nonneg(value, "value")

    def step(self) -> None:
        """Clip, decay and update every parameter that has a gradient (see the module doc).

        Raises ``TypeError``/``ValueError`` before anything is modified when a gradient is not a
        NumPy array, does not have its parameter's dtype (float32 or float64) or shares memory
        with a parameter.
        """
        work: list[tuple[_Group, list[tuple[Any, Any]]]] = []
        for group in self._groups:
            pairs = [(p, p.grad) for p in group.params if getattr(p, "trainable", True) and p.grad is not None]
            for p, g in pairs:
                self._check_pair(p, g)
            work.append((group, pairs))
        for group, pairs in work:
            if not pairs:
                continue
            if group.grad_clip is not None:
                pairs = group.grad_clip(pairs)
            self._update(group, pairs, [self._lr_of(group, p) for p, _ in pairs])

    def clear_grad(self, set_to_zero: bool = True) -> None:
        """Clear the gradients of every trainable parameter (Paddle's ``clear_grad``).

        ``set_to_zero=True`` (the default, as Paddle) fills each existing gradient with zeros in
        place; ``False`` sets ``param.grad = None``. Raises ``TypeError`` for a non-bool flag.
        """
        zero = _bool(set_to_zero, "set_to_zero")
        for group in self._groups:
            for p in group.params:
                if not getattr(p, "trainable", True):
                    continue
                if zero:
                    if p.grad is not None:
                        p.grad[...] = 0
                else:
                    p.grad = None

    clear_gradients = clear_grad

    # -- step helpers -------------------------------------------------------------------------

    @staticmethod
    def _check_pair(p: Any, g: Any) -> None:
        name = getattr(p, "name", "?")
        v = p.value
        if not isinstance(g, np.ndarray):
            raise TypeError(f"the grad of parameter {name!r} must be a numpy.ndarray, not {type(g).__name__}")
        if v.dtype not in _FLOATS:
            raise TypeError(f"parameter {name!r} has dtype {v.dtype}; the optimizers update float32 and float64")
        if g.dtype != v.dtype:
            raise TypeError(f"the grad of parameter {name!r} has dtype {g.dtype}, the parameter {v.dtype}")
        if g.shape != v.shape:
            raise ValueError(f"the grad of parameter {name!r} has shape {g.shape}, the parameter {v.shape}")
        if np.may_share_memory(g, v):
            raise ValueError(f"the grad of parameter {name!r} shares memory with its value")

    def _lr_of(self, group: _Group, p: Any) -> float:
        scale = group.lr_scale if group.lr_scale is not None else float(getattr(p, "learning_rate", 1.0))
        return self._learning_rate * scale

    def _slot(self, p: Any, make: Any) -> dict[str, Any]:
        entry = self._state.get(id(p))
        if entry is None or entry[0] is not p:
            entry = (p, make(p))
            self._state[id(p)] = entry
        return entry[1]

    def _update(self, group: _Group, pairs: list[tuple[Any, Any]], lrs: list[float]) -> None:
        raise NotImplementedError


class SGD(Optimizer):
    """Stochastic gradient descent with coupled L2 weight decay (Paddle's ``paddle.optimizer.SGD``).

    ``p <- p - lr * (g + weight_decay * p)`` per element, in the parameter's dtype, where ``g`` is
    the clipped gradient and ``lr`` the parameter's learning rate (global times multiplier).

    Raises ``TypeError``/``ValueError`` (naming the argument) for a bad learning rate, weight decay,
    ``parameters`` or ``grad_clip`` (which must be a :class:`~fastclip.ClipGradBase`).

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

    def _update(self, group: _Group, pairs: list[tuple[Any, Any]], lrs: list[float]) -> None:
        _fastclip.sgd_([p.value for p, _ in pairs], [g for _, g in pairs], lrs, group.weight_decay)


class Momentum(Optimizer):
    """Momentum SGD, heavy-ball or Nesterov, with L2 decay fused (Paddle's ``paddle.optimizer.Momentum``).

    Per element, with ``g`` the clipped gradient and ``v`` the velocity (zeros at first)::

        g' = p * weight_decay + g
        v  <- v * momentum + g'
        p  <- p - lr * v                         (use_nesterov=False)
        p  <- p - (g' + v * momentum) * lr       (use_nesterov=True)

    Raises ``TypeError``/``ValueError`` (naming the argument) for a bad learning rate, momentum,
    weight decay, ``use_nesterov`` (must be a bool), ``parameters`` or ``grad_clip``.

    >>> import numpy as np, fastclip as fc
    >>> w = fc.Parameter(np.array([1.0, 2.0]))
    >>> opt = fc.optimizer.Momentum(0.1, momentum=0.9, parameters=[w])
    >>> w.grad = np.array([1.0, 1.0]); opt.step(); opt.step(); w.value
    array([0.71, 1.71])
    """

    _GROUP_KEYS = ("momentum", "use_nesterov")

    def __init__(
        self,
        learning_rate: float = 0.001,
        momentum: float = 0.9,
        parameters: Any = None,
        use_nesterov: bool = False,
        weight_decay: float | None = None,
        grad_clip: ClipGradBase | None = None,
    ) -> None:
        hyper = {
            "momentum": self._check_hyper("momentum", momentum, "momentum"),
            "use_nesterov": self._check_hyper("use_nesterov", use_nesterov, "use_nesterov"),
        }
        super().__init__(learning_rate, parameters, weight_decay, grad_clip, hyper)

    def _group_decay(self, value: Any, name: str) -> float:
        # Momentum fuses L2 into its kernel; a group's explicit None means no decay (Paddle's
        # _update_regularization(None) gives regularization_method "").
        return 0.0 if value is None else self._decay(value, name)

    def _check_hyper(self, key: str, value: Any, name: str) -> Any:
        if key == "momentum":
            v = _number(value, name)
            if not math.isfinite(v):
                raise ValueError(f"{name} must be finite, got {v!r}")
            return v
        return _bool(value, name)

    def _update(self, group: _Group, pairs: list[tuple[Any, Any]], lrs: list[float]) -> None:
        vel = [self._slot(p, lambda p: {"velocity": np.zeros_like(p.value)})["velocity"] for p, _ in pairs]
        _fastclip.momentum_(
            [p.value for p, _ in pairs],
            [g for _, g in pairs],
            vel,
            lrs,
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
    ``beta1``/``beta2`` outside [0, 1), a negative or non-finite ``epsilon`` or weight decay,
    bad ``parameters`` or a ``grad_clip`` that is not a :class:`~fastclip.ClipGradBase`.

    >>> import numpy as np, fastclip as fc
    >>> w = fc.Parameter(np.array([1.0, -1.0]))
    >>> w.grad = np.array([0.5, -2.0])
    >>> fc.optimizer.Adam(0.1, parameters=[w]).step(); w.value  # first step moves by ~lr * sign(g)
    array([ 0.9, -0.9])
    """

    _GROUP_KEYS = ("beta1", "beta2", "epsilon")
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
        hyper = {
            "beta1": self._check_hyper("beta1", beta1, "beta1"),
            "beta2": self._check_hyper("beta2", beta2, "beta2"),
            "epsilon": self._check_hyper("epsilon", epsilon, "epsilon"),
        }
        super().__init__(learning_rate, parameters, weight_decay, grad_clip, hyper)

    def _check_hyper(self, key: str, value: Any, name: str) -> Any:
        return _nonneg(value, name) if key == "epsilon" else _beta(value, name)

    def _update(self, group: _Group, pairs: list[tuple[Any, Any]], lrs: list[float]) -> None:
        b1, b2 = group.hyper["beta1"], group.hyper["beta2"]

        def make(p: Any) -> dict[str, Any]:
            # Paddle's accumulators: moments of the param's dtype, beta pows filled with beta.
            t = p.value.dtype.type
            return {"moment1": np.zeros_like(p.value), "moment2": np.zeros_like(p.value), "pows": [t(b1), t(b2)]}

        states = [self._slot(p, make) for p, _ in pairs]
        _fastclip.adam_(
            [p.value for p, _ in pairs],
            [g for _, g in pairs],
            [s["moment1"] for s in states],
            [s["moment2"] for s in states],
            lrs,
            b1,
            b2,
            group.hyper["epsilon"],
            [float(s["pows"][0]) for s in states],
            [float(s["pows"][1]) for s in states],
            group.weight_decay,
            self._DECOUPLED,
        )
        # Paddle's kernel writes beta_pow_out = beta * beta_pow, in the parameter's dtype.
        for (p, _), s in zip(pairs, states):
            t = p.value.dtype.type
            s["pows"] = [t(b1) * s["pows"][0], t(b2) * s["pows"][1]]


class AdamW(Adam):
    """Adam with decoupled weight decay (Paddle's ``paddle.optimizer.AdamW``, ``lr_ratio=None``).

    Per element: ``p <- p - lr * weight_decay * p`` first (on the clipped gradient's parameter,
    independent of the gradient), then the :class:`Adam` update of that ``p`` with the clipped
    gradient ``g`` (no L2 term). ``weight_decay`` defaults to 0.01 and must be a finite number
    >= 0 (``None`` raises ``TypeError``, as Paddle). Other arguments and errors as :class:`Adam`.

    >>> import numpy as np, fastclip as fc
    >>> w = fc.Parameter(np.array([10.0, 0.0]))
    >>> w.grad = np.array([1.0, 1.0])
    >>> fc.optimizer.AdamW(1.0, parameters=[w], weight_decay=0.5, epsilon=0.0).step(); w.value
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
            raise TypeError(f"{name} must be a number (AdamW's decoupled coefficient), not None")
        return _nonneg(value, name)

    def _group_decay(self, value: Any, name: str) -> float:
        return self._decay(value, name)
