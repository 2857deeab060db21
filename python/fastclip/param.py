"""Paddle-style parameters: a NumPy array plus the flags that clipping and optimizers read.

:class:`Parameter` holds the value (updated in place by :mod:`fastclip.optimizer`), its gradient
and the per-parameter flags ``need_clip`` (read by the clip classes in :mod:`fastclip.clip`, exactly
as Paddle reads it: ``getattr(param, "need_clip", True) is False``) and ``trainable``.
:class:`ParamAttr` is the description a layer turns into a :class:`Parameter`.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import numpy as np

from ._checks import finite_nonneg, flag, optional_str
from ._checks import shape as _shape

__all__ = ["ParamAttr", "Parameter"]

#: Element types a parameter or gradient may have (bfloat16 through ``ml_dtypes``).
FLOAT_DTYPES = ("float16", "bfloat16", "float32", "float64")

_names = itertools.count()

Initializer = Callable[[tuple[int, ...], np.dtype], np.ndarray]


def _is_float_dtype(dtype: np.dtype) -> bool:
    return dtype.name in FLOAT_DTYPES


class Parameter:
    """A trainable array, Paddle's ``Parameter`` for NumPy.

    ``Parameter(value, name=None, need_clip=True, trainable=True, learning_rate=1.0)``

    - ``value``: a NumPy array of float16, bfloat16 (``ml_dtypes``), float32 or float64, kept as is
      (no copy) and updated **in place** by the optimizers; anything else array-like is converted
      with ``np.array`` (a list of floats becomes float64) and must then have one of those dtypes.
    - ``grad``: ``None`` or an array of the value's shape and a float dtype (settable).
    - ``name``: a ``str``; a unique ``"param_<n>"`` is generated when ``None``.
    - ``need_clip``: ``False`` opts this parameter out of gradient clipping (and out of the global
      norm of :class:`~fastclip.ClipGradByGlobalNorm`).
    - ``trainable``: ``False`` makes optimizers skip it (Paddle's ``stop_gradient=True``).
    - ``learning_rate``: a per-parameter multiplier of the optimizer's learning rate (Paddle's
      ``ParamAttr(learning_rate=...)``); settable, checked on every set.
    - ``replicated``: ``True`` says every rank of a distributed clip (``group=``) holds this
      gradient identically (a replicated weight, a tied embedding, a tensor-parallel duplicate), so
      the global norm counts it once (see :mod:`fastclip.distributed`); no effect without a group.

    Raises ``TypeError`` for a non-float value or grad, a non-bool flag or a non-str name, and
    ``ValueError`` for a read-only value, a grad of the wrong shape or a negative/NaN/inf
    ``learning_rate``.

    >>> import numpy as np, fastclip as fc
    >>> w = fc.Parameter(np.zeros((2, 3), np.float32), name="w", need_clip=False)
    >>> w.grad = np.ones((2, 3), np.float32)
    >>> w
    Parameter(name='w', shape=(2, 3), dtype=float32, need_clip=False, trainable=True)
    """

    __slots__ = ("_grad", "_learning_rate", "_need_clip", "_replicated", "_trainable", "_value", "name")

    def __init__(
        self,
        value: Any,
        name: str | None = None,
        need_clip: bool = True,
        trainable: bool = True,
        learning_rate: float = 1.0,
        replicated: bool = False,
    ) -> None:
        arr = value if isinstance(value, np.ndarray) else np.array(value)
        if not _is_float_dtype(arr.dtype):
            raise TypeError(f"value must be an array of {', '.join(FLOAT_DTYPES)}, not {arr.dtype}")
        if not arr.flags.writeable:
            raise ValueError("value must be writeable: optimizers update it in place")
        given = optional_str(name, "name")
        need_clip = flag(need_clip, "need_clip")
        trainable = flag(trainable, "trainable")
        lr = finite_nonneg(learning_rate, "learning_rate")
        self.name: str = given if given is not None else f"param_{next(_names)}"
        self._value = arr
        self._grad: np.ndarray | None = None
        self._need_clip = need_clip
        self._trainable = trainable
        self._learning_rate = lr
        self._replicated = flag(replicated, "replicated")

    @property
    def value(self) -> np.ndarray:
        """The parameter's array (the caller's buffer; optimizers write into it)."""
        return self._value

    @property
    def grad(self) -> np.ndarray | None:
        """The gradient: ``None`` or a float array with the value's shape."""
        return self._grad

    @grad.setter
    def grad(self, g: Any) -> None:
        if g is None:
            self._grad = None
            return
        if not isinstance(g, np.ndarray):
            raise TypeError(f"grad must be a numpy.ndarray or None, not {type(g).__name__}")
        if not _is_float_dtype(g.dtype):
            raise TypeError(f"grad must be an array of {', '.join(FLOAT_DTYPES)}, not {g.dtype}")
        if g.shape != self._value.shape:
            raise ValueError(f"grad has shape {g.shape}, but parameter {self.name!r} has shape {self._value.shape}")
        self._grad = g

    @property
    def learning_rate(self) -> float:
        """The multiplier of the optimizer's learning rate (settable: a finite number >= 0)."""
        return self._learning_rate

    @learning_rate.setter
    def learning_rate(self, value: Any) -> None:
        self._learning_rate = finite_nonneg(value, "learning_rate")

    @property
    def need_clip(self) -> bool:
        """Whether gradient clipping applies to this parameter (settable, bool)."""
        return self._need_clip

    @need_clip.setter
    def need_clip(self, value: Any) -> None:
        self._need_clip = flag(value, "need_clip")

    @property
    def replicated(self) -> bool:
        """Whether every rank holds this gradient identically, counted once in a distributed norm (settable, bool)."""
        return self._replicated

    @replicated.setter
    def replicated(self, value: Any) -> None:
        self._replicated = flag(value, "replicated")

    @property
    def trainable(self) -> bool:
        """Whether optimizers update this parameter (settable, bool)."""
        return self._trainable

    @trainable.setter
    def trainable(self, value: Any) -> None:
        self._trainable = flag(value, "trainable")

    @property
    def stop_gradient(self) -> bool:
        """Paddle's name for ``not trainable``."""
        return not self._trainable

    @property
    def shape(self) -> tuple[int, ...]:
        """The value's shape."""
        return self._value.shape

    @property
    def dtype(self) -> np.dtype:
        """The value's dtype."""
        return self._value.dtype

    @property
    def size(self) -> int:
        """The number of elements."""
        return int(self._value.size)

    def numpy(self) -> np.ndarray:
        """The value array itself (Paddle's ``Tensor.numpy()``; here no copy)."""
        return self._value

    def __repr__(self) -> str:
        rep = ", replicated=True" if self._replicated else ""
        return (
            f"Parameter(name={self.name!r}, shape={self.shape}, dtype={self.dtype}, "
            f"need_clip={self._need_clip}, trainable={self._trainable}{rep})"
        )


class ParamAttr:
    """How a layer should create a parameter (Paddle's ``paddle.ParamAttr``).

    ``ParamAttr(name=None, initializer=None, learning_rate=1.0, trainable=True, need_clip=True, replicated=False)``

    - ``initializer``: ``None`` (the layer's default) or a callable ``initializer(shape, dtype)``
      returning an array of that shape.
    - ``learning_rate``: multiplier of the optimizer's learning rate for this parameter, >= 0.
    - ``need_clip`` / ``trainable`` / ``replicated``: copied onto the :class:`Parameter` (see there).

    Raises ``TypeError`` for a non-str name, a non-callable initializer, non-bool flags or a
    non-number learning rate, and ``ValueError`` for a negative, NaN or infinite learning rate.

    >>> import fastclip as fc
    >>> fc.ParamAttr(name="linear1.w", need_clip=False)
    ParamAttr(name='linear1.w', initializer=None, learning_rate=1.0, trainable=True, need_clip=False)
    """

    __slots__ = ("initializer", "learning_rate", "name", "need_clip", "replicated", "trainable")

    def __init__(
        self,
        name: str | None = None,
        initializer: Initializer | None = None,
        learning_rate: float = 1.0,
        trainable: bool = True,
        need_clip: bool = True,
        replicated: bool = False,
    ) -> None:
        if initializer is not None and not callable(initializer):
            raise TypeError(f"initializer must be callable(shape, dtype) or None, not {type(initializer).__name__}")
        self.name: str | None = optional_str(name, "name")
        self.initializer: Initializer | None = initializer
        self.learning_rate: float = finite_nonneg(learning_rate, "learning_rate")
        self.trainable: bool = flag(trainable, "trainable")
        self.need_clip: bool = flag(need_clip, "need_clip")
        self.replicated: bool = flag(replicated, "replicated")

    def create(
        self, shape: tuple[int, ...], dtype: Any = np.float32, default_initializer: Initializer | None = None
    ) -> Parameter:
        """A new :class:`Parameter` of ``shape``/``dtype`` carrying this attribute's settings.

        The value is a fresh copy of what ``self.initializer`` or else ``default_initializer``
        returns (zeros when both are ``None``). Raises ``ValueError`` if the initializer returns the wrong shape, and
        ``TypeError`` for a non-float dtype.
        """
        dt = np.dtype(dtype)
        if not _is_float_dtype(dt):
            raise TypeError(f"dtype must be one of {', '.join(FLOAT_DTYPES)}, not {dt}")
        shape = _shape(shape)
        init = self.initializer if self.initializer is not None else default_initializer
        # Always a fresh buffer: an initializer may hand back the same array for several parameters.
        value = np.zeros(shape, dt) if init is None else np.array(init(shape, dt), dtype=dt, copy=True)
        if value.shape != shape:
            raise ValueError(f"initializer returned shape {value.shape}, expected {shape}")
        return Parameter(
            value,
            name=self.name,
            need_clip=self.need_clip,
            trainable=self.trainable,
            learning_rate=self.learning_rate,
            replicated=self.replicated,
        )

    def __repr__(self) -> str:
        return (
            f"ParamAttr(name={self.name!r}, initializer={self.initializer!r}, learning_rate={self.learning_rate}, "
            f"trainable={self.trainable}, need_clip={self.need_clip}{', replicated=True' if self.replicated else ''})"
        )
