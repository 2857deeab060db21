"""Parameter initializers, as in ``paddle.nn.initializer``: callables ``init(shape, dtype) -> ndarray``.

A :class:`fastclip.ParamAttr` carries one (``ParamAttr(initializer=Assign(w))``) and a layer calls it
once to make the parameter's value. The random ones draw from a NumPy ``Generator``: the one given
as ``rng`` (a ``Generator`` or an int seed), else this module's default generator, which
:func:`seed` resets (Paddle's ``paddle.seed``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Union

import numpy as np

from ._checks import finite as _finite
from ._checks import shape as _shape

__all__ = ["Assign", "Constant", "Initializer", "Normal", "Uniform", "XavierUniform", "compute_fans", "seed"]

RngLike = Union[np.random.Generator, int, None]

_default_rng = np.random.default_rng()


def seed(value: int) -> None:
    """Reset the default generator that random initializers without their own ``rng`` draw from.

    >>> from fastclip import initializer
    >>> initializer.seed(0)
    >>> a = initializer.Normal()((2,), "float32")
    >>> initializer.seed(0)
    >>> bool((initializer.Normal()((2,), "float32") == a).all())
    True
    """
    global _default_rng
    _default_rng = np.random.default_rng(value)


def _generator(rng: RngLike) -> np.random.Generator | None:
    """A ``Generator`` for ``rng`` (kept as is, or seeded from an int); ``None`` means the default one."""
    if rng is None or isinstance(rng, np.random.Generator):
        return rng
    if isinstance(rng, (int, np.integer)) and not isinstance(rng, bool):
        return np.random.default_rng(int(rng))
    raise TypeError(f"rng must be a numpy Generator, an int seed or None, got {type(rng).__name__}")


def compute_fans(shape: Sequence[int]) -> tuple[int, int]:
    """``(fan_in, fan_out)`` of a weight, as Paddle computes them for its ``[in, out]`` layout.

    0-D: ``(1, 1)``; 1-D ``[n]``: ``(n, n)``; 2-D ``[in, out]``: ``(in, out)``; a conv kernel
    ``[out_c, in_c, *k]``: ``(in_c * prod(k), out_c * prod(k))``.

    >>> compute_fans([3, 5])
    (3, 5)
    """
    dims = _shape(shape)
    if len(dims) == 0:
        return 1, 1
    if len(dims) == 1:
        return dims[0], dims[0]
    if len(dims) == 2:
        return dims[0], dims[1]
    receptive = math.prod(dims[2:])
    return dims[1] * receptive, dims[0] * receptive


class Initializer:
    """Base class: ``init(shape, dtype="float32") -> np.ndarray``, a new array of that shape and dtype."""

    def __call__(self, shape: Sequence[int] | int, dtype: Any = np.float32) -> np.ndarray:
        """Make a fresh array of ``shape`` and ``dtype``; raises ``ValueError`` for a bad shape."""
        return self._make(_shape(shape), np.dtype(dtype))

    def _make(self, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        raise NotImplementedError


class Assign(Initializer):
    """The given array, copied and cast to the parameter's dtype (``paddle.nn.initializer.Assign``).

    ``value`` is anything ``np.asarray`` takes (``TypeError`` if it is not numeric). Calling it
    raises ``ValueError`` if the requested shape differs from ``value``'s.
    Each call returns a new copy: the parameter never aliases the caller's array.

    >>> import numpy as np
    >>> Assign([[1.0, 2.0]])((1, 2), np.float32)
    array([[1., 2.]], dtype=float32)
    """

    def __init__(self, value: Any) -> None:
        self.value = np.array(value, copy=True)
        if self.value.dtype.kind not in "biuf":
            raise TypeError("Assign needs a numeric array")

    def _make(self, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        if self.value.shape != shape:
            raise ValueError(f"Assign: value has shape {list(self.value.shape)}, the parameter {list(shape)}")
        return self.value.astype(dtype, copy=True)

    def __repr__(self) -> str:
        return f"Assign(shape={list(self.value.shape)}, dtype={self.value.dtype})"


class Constant(Initializer):
    """Every element ``value`` (``paddle.nn.initializer.Constant``); Paddle's default for biases.

    Raises ``TypeError`` if ``value`` is not a number and ``ValueError`` if it is not finite
    (NaN, an infinity, or an int too large for a float).

    >>> Constant(0.5)((2,), "float32")
    array([0.5, 0.5], dtype=float32)
    """

    def __init__(self, value: float = 0.0) -> None:
        self.value = _finite(value, "value")

    def _make(self, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        return np.full(shape, self.value, dtype=dtype)

    def __repr__(self) -> str:
        return f"Constant({self.value!r})"


class _Random(Initializer):
    def __init__(self, rng: RngLike) -> None:
        self._rng = _generator(rng)

    @property
    def rng(self) -> np.random.Generator:
        """The generator this initializer draws from (the module default unless one was given)."""
        return self._rng if self._rng is not None else _default_rng


class Normal(_Random):
    """Samples of ``N(mean, std**2)`` (``paddle.nn.initializer.Normal``), drawn in float64, then cast.

    Raises ``ValueError`` for a negative or non-finite ``std`` or a non-finite ``mean``.

    >>> Normal(0.0, 1.0, rng=0)((2, 3)).shape
    (2, 3)
    """

    def __init__(self, mean: float = 0.0, std: float = 1.0, *, rng: RngLike = None) -> None:
        super().__init__(rng)
        self.mean = _finite(mean, "mean")
        self.std = _finite(std, "std")
        if self.std < 0:
            raise ValueError(f"std must be >= 0, got {self.std!r}")

    def _make(self, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        return self.rng.normal(self.mean, self.std, shape).astype(dtype)

    def __repr__(self) -> str:
        return f"Normal(mean={self.mean!r}, std={self.std!r})"


class Uniform(_Random):
    """Samples of ``U[low, high)`` (``paddle.nn.initializer.Uniform``); ``ValueError`` if ``low > high``.

    >>> bool((abs(Uniform(-0.5, 0.5, rng=0)((100,))) <= 0.5).all())
    True
    """

    def __init__(self, low: float = -1.0, high: float = 1.0, *, rng: RngLike = None) -> None:
        super().__init__(rng)
        self.low = _finite(low, "low")
        self.high = _finite(high, "high")
        if self.low > self.high:
            raise ValueError(f"low must be <= high, got low={self.low!r}, high={self.high!r}")

    def _make(self, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        return self.rng.uniform(self.low, self.high, shape).astype(dtype)

    def __repr__(self) -> str:
        return f"Uniform(low={self.low!r}, high={self.high!r})"


class XavierUniform(_Random):
    """Glorot/Xavier uniform: ``U[-a, a]`` with ``a = gain * sqrt(6 / (fan_in + fan_out))``.

    The fans default to :func:`compute_fans` of the shape (``[in, out]`` for a Linear weight); this
    is Paddle's default for weights. Raises ``ValueError`` for non-positive fans.

    >>> w = XavierUniform(rng=0)((1, 32))
    >>> bool((abs(w) <= (6 / 33) ** 0.5).all())
    True
    """

    def __init__(
        self, fan_in: float | None = None, fan_out: float | None = None, gain: float = 1.0, *, rng: RngLike = None
    ) -> None:
        super().__init__(rng)
        self.fan_in = None if fan_in is None else _finite(fan_in, "fan_in")
        self.fan_out = None if fan_out is None else _finite(fan_out, "fan_out")
        self.gain = _finite(gain, "gain")

    def _make(self, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        shape_in, shape_out = compute_fans(shape)
        fan_in = shape_in if self.fan_in is None else self.fan_in
        fan_out = shape_out if self.fan_out is None else self.fan_out
        if fan_in + fan_out <= 0:
            raise ValueError(f"XavierUniform needs fan_in + fan_out > 0, got {fan_in} + {fan_out}")
        limit = self.gain * math.sqrt(6.0 / (fan_in + fan_out))
        return self.rng.uniform(-limit, limit, shape).astype(dtype)

    def __repr__(self) -> str:
        return f"XavierUniform(fan_in={self.fan_in!r}, fan_out={self.fan_out!r}, gain={self.gain!r})"
