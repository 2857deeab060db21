"""The few NumPy layers the seed's experiment needs, with Paddle's names and layouts.

:class:`Layer` (parameters and sublayers registered by attribute assignment, ``layer(x)`` runs
``forward``), :class:`Linear` (Paddle's ``[in, out]`` weight, ``y = x @ W + b``) and
:class:`MSELoss`. Everything is float32.

There is no autograd. Each layer caches what it needs in ``forward`` and has an explicit
``backward(grad_out) -> grad_in`` that adds ``d loss / d p`` into ``p.grad`` for each of its
trainable parameters (accumulating, as Paddle does until ``clear_grad()``). A composite layer's
``backward`` runs its sublayers' ``backward`` in the reverse of the order its last ``forward``
called them, which is right when ``forward`` is a chain ``f_n(... f_1(x))``; a layer with any other
math overrides ``backward``. One training step::

    pred = model(x)
    loss = loss_fn(pred, label)
    model.backward(loss_fn.backward())   # fills p.grad for every parameter
    opt.step(); opt.clear_grad()

The clip classes are re-exported here, as Paddle has them under ``paddle.nn``.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterator
from typing import Any, Callable

import numpy as np

from . import initializer
from .clip import ClipGradByGlobalNorm, ClipGradByNorm, ClipGradByValue
from .param import ParamAttr, Parameter

__all__ = [
    "ClipGradByGlobalNorm",
    "ClipGradByNorm",
    "ClipGradByValue",
    "Layer",
    "Linear",
    "MSELoss",
    "initializer",
]

DTYPE = np.dtype(np.float32)

# Sublayer call records of the forward passes in progress, innermost last (see Layer.__call__).
_recording: list[list[Layer]] = []
# Per-prefix counters for default names ("linear_0", "linear_1", ...), as Paddle's unique_name.
_name_counters: dict[str, Iterator[int]] = {}


def _unique_name(prefix: str) -> str:
    counter = _name_counters.setdefault(prefix, itertools.count())
    return f"{prefix}_{next(counter)}"


def _to_attr(attr: Any) -> ParamAttr | None:
    """Paddle's ``ParamAttr._to_attr``: None/True -> default, str -> name, callable -> initializer, False -> None."""
    if attr is None or attr is True:
        return ParamAttr()
    if attr is False:
        return None
    if isinstance(attr, ParamAttr):
        return attr
    if isinstance(attr, str):
        return ParamAttr(name=attr)
    if callable(attr):
        return ParamAttr(initializer=attr)
    raise TypeError(f"expected a ParamAttr, a name, an initializer, None or False, got {type(attr).__name__}")


def _accumulate_grad(param: Parameter, grad: np.ndarray) -> None:
    """``param.grad += grad`` (in place, so references to the grad stay valid), or set it if None."""
    if not param.trainable:
        return
    if param.grad is None:
        param.grad = grad
    else:
        param.grad += grad


class Layer:
    """Base class of layers: attribute-registered parameters and sublayers, ``forward``, ``backward``.

    Assigning a :class:`~fastclip.Parameter` or a ``Layer`` to an attribute registers it, in order.
    ``layer(*inputs)`` calls ``forward(*inputs)`` and records which sublayers that forward called.
    Subclasses must call ``super().__init__()`` before assigning parameters or sublayers
    (``RuntimeError`` otherwise).
    """

    # Set in __init__ with object.__setattr__ (bypassing the registration in __setattr__).
    _parameters: dict[str, Parameter]
    _sub_layers: dict[str, Layer]
    _full_name: str
    _called: list[Layer] | None

    def __init__(self, name_scope: str | None = None) -> None:
        prefix = name_scope or re.sub(r"(?<!^)(?=[A-Z])", "_", type(self).__name__).lower()
        object.__setattr__(self, "_parameters", {})
        object.__setattr__(self, "_sub_layers", {})
        object.__setattr__(self, "_full_name", _unique_name(prefix))
        object.__setattr__(self, "_called", None)

    def __setattr__(self, name: str, value: Any) -> None:
        if isinstance(value, (Parameter, Layer)) and "_parameters" not in self.__dict__:
            raise RuntimeError(f"call super().__init__() in {type(self).__name__}.__init__ before assigning {name!r}")
        if "_parameters" in self.__dict__:
            self._parameters.pop(name, None)
            self._sub_layers.pop(name, None)
            if isinstance(value, Parameter):
                self._parameters[name] = value
            elif isinstance(value, Layer):
                self._sub_layers[name] = value
        object.__setattr__(self, name, value)

    def full_name(self) -> str:
        """This layer's unique name, e.g. ``"linear_0"``: the prefix of its parameters' default names."""
        return self._full_name

    def create_parameter(
        self,
        shape: list[int] | tuple[int, ...],
        attr: Any = None,
        dtype: Any = DTYPE,
        is_bias: bool = False,
        default_initializer: Callable[[tuple[int, ...], Any], np.ndarray] | None = None,
    ) -> Parameter | None:
        """A new Parameter of ``shape`` made as ``attr`` says, or None if ``attr`` is False.

        The value comes from ``attr.initializer``, else ``default_initializer``, else Paddle's
        defaults: ``Constant(0.0)`` for a bias, ``XavierUniform()`` for a weight. The name is
        ``attr.name`` or ``"<layer>.w_<k>"`` / ``"<layer>.b_<k>"``; ``need_clip``, ``trainable`` and
        ``learning_rate`` come from ``attr`` (see :meth:`fastclip.ParamAttr.create`). Raises
        ``TypeError`` for an ``attr`` of another type and ``ValueError`` if the initializer's array
        has the wrong shape.
        """
        pattr = _to_attr(attr)
        if pattr is None:
            return None
        if default_initializer is None:
            default_initializer = initializer.Constant(0.0) if is_bias else initializer.XavierUniform()
        param = pattr.create(tuple(int(d) for d in shape), dtype, default_initializer=default_initializer)
        if pattr.name is None:
            param.name = _unique_name(f"{self._full_name}.{'b' if is_bias else 'w'}")
        return param

    def named_parameters(self, prefix: str = "") -> list[tuple[str, Parameter]]:
        """``(dotted name, parameter)`` pairs: this layer's own first, then each sublayer's, in
        registration order; a parameter shared by two layers is listed once."""
        seen: set[int] = set()
        out: list[tuple[str, Parameter]] = []
        for name, param in self._named_parameters_with_duplicates(prefix):
            if id(param) not in seen:
                seen.add(id(param))
                out.append((name, param))
        return out

    def _named_parameters_with_duplicates(self, prefix: str) -> Iterator[tuple[str, Parameter]]:
        for name, param in self._parameters.items():
            yield prefix + name, param
        for name, layer in self._sub_layers.items():
            yield from layer._named_parameters_with_duplicates(f"{prefix}{name}.")

    def parameters(self) -> list[Parameter]:
        """Every parameter of this layer and its sublayers, in registration order (see :meth:`named_parameters`)."""
        return [param for _, param in self.named_parameters()]

    def sublayers(self) -> list[Layer]:
        """The directly registered sublayers, in registration order (one registered twice is listed once)."""
        return list({id(layer): layer for layer in self._sub_layers.values()}.values())

    def forward(self, *inputs: Any) -> Any:
        """The layer's computation; subclasses define it."""
        raise NotImplementedError(f"{type(self).__name__} does not define forward")

    def __call__(self, *inputs: Any, **kwargs: Any) -> Any:
        """``forward(*inputs, **kwargs)``, recording the sublayers it calls for :meth:`backward`."""
        if _recording:
            _recording[-1].append(self)
        calls: list[Layer] = []
        _recording.append(calls)
        object.__setattr__(self, "_called", None)
        try:
            out = self.forward(*inputs, **kwargs)
        finally:
            _recording.pop()
        object.__setattr__(self, "_called", calls)
        return out

    def backward(self, grad_out: Any) -> np.ndarray:
        """Given ``d loss / d output``, fill the parameters' ``.grad`` and return ``d loss / d input``.

        This default runs the sublayers' ``backward`` in the reverse of the order the last
        ``forward`` called them, passing each one's input gradient to the one before: correct when
        ``forward`` is a chain of sublayer calls. Raises ``RuntimeError`` before any forward, or if
        a sublayer was called twice (its cache holds only the last call), and
        ``NotImplementedError`` if forward called no sublayer (such a layer defines backward).
        """
        if self._called is None:
            raise RuntimeError(f"{type(self).__name__}.backward() needs a completed forward pass first")
        if not self._called:
            raise NotImplementedError(f"{type(self).__name__} calls no sublayer in forward; it must define backward")
        if len({id(layer) for layer in self._called}) != len(self._called):
            raise RuntimeError(f"{type(self).__name__}.forward called a sublayer twice; define backward for it")
        grad = grad_out
        for layer in reversed(self._called):
            grad = layer.backward(grad)
        return grad


class Linear(Layer):
    """``y = x @ W + b`` with Paddle's layout: ``weight`` is ``[in_features, out_features]``.

    ``weight_attr`` / ``bias_attr`` are :class:`~fastclip.ParamAttr` (or a name, or an initializer);
    they set the initializer, name, ``need_clip`` and ``trainable``. Defaults as Paddle:
    Xavier-uniform weight, zero bias. ``bias_attr=False`` means no bias (``self.bias is None``).
    ``x`` may have any leading dimensions, ``[..., in_features]``; it is converted to float32.

    Raises ``ValueError`` for non-positive sizes, ``weight_attr=False``, or an input whose last
    dimension is not ``in_features``.

    >>> import numpy as np
    >>> from fastclip.initializer import Assign
    >>> from fastclip.param import ParamAttr
    >>> lin = Linear(2, 1, weight_attr=ParamAttr(initializer=Assign([[1.0], [2.0]])))
    >>> lin(np.array([[3.0, 4.0]]))
    array([[11.]], dtype=float32)
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        weight_attr: Any = None,
        bias_attr: Any = None,
        name: str | None = None,
    ) -> None:
        super().__init__(name)
        for what, n in (("in_features", in_features), ("out_features", out_features)):
            if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n <= 0:
                raise ValueError(f"{what} must be a positive int, got {n!r}")
        if weight_attr is False:
            raise ValueError("Linear needs a weight: weight_attr=False is not supported")
        self.in_features = int(in_features)
        self.out_features = int(out_features)
        weight = self.create_parameter([self.in_features, self.out_features], weight_attr, is_bias=False)
        assert weight is not None  # None only for weight_attr=False, rejected above
        self.weight: Parameter = weight
        self.bias = self.create_parameter([self.out_features], bias_attr, is_bias=True)
        self._input: np.ndarray | None = None

    def forward(self, x: Any) -> np.ndarray:
        """``x @ W + b`` in float32; caches ``x`` for :meth:`backward`."""
        x = np.asarray(x, dtype=DTYPE)
        if x.ndim == 0 or x.shape[-1] != self.in_features:
            raise ValueError(f"Linear expects input [..., {self.in_features}], got {list(x.shape)}")
        self._input = x
        y = x @ self.weight.value
        if self.bias is not None:
            y += self.bias.value
        return y

    def backward(self, grad_out: Any) -> np.ndarray:
        """``W.grad += x^T g``, ``b.grad += sum over rows of g``; returns ``g @ W^T``.

        ``g`` is ``d loss / d y`` with ``y``'s shape (``ValueError`` otherwise). Call it before the
        parameters change: the input gradient uses the current ``W``. ``RuntimeError`` before forward.
        """
        if self._input is None:
            raise RuntimeError("Linear.backward() needs a forward pass first")
        x = self._input
        g = np.asarray(grad_out, dtype=DTYPE)
        if g.shape != (*x.shape[:-1], self.out_features):
            raise ValueError(f"grad_out has shape {list(g.shape)}, the output {[*x.shape[:-1], self.out_features]}")
        x2 = x.reshape(-1, self.in_features)
        g2 = g.reshape(-1, self.out_features)
        _accumulate_grad(self.weight, x2.T @ g2)
        if self.bias is not None:
            _accumulate_grad(self.bias, g2.sum(axis=0))
        return g @ self.weight.value.T

    def __repr__(self) -> str:
        return f"Linear(in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None})"


class MSELoss(Layer):
    """Mean squared error ``(input - label)^2``, reduced by ``"mean"`` (default), ``"sum"`` or ``"none"``.

    ``loss_fn(input, label)`` needs two arrays of the same shape (``ValueError`` otherwise; no
    broadcasting, which silently turns ``[16, 1]`` against ``[16]`` into ``[16, 16]``), computes in
    float32 and returns a 0-D float32 array (an array of ``input``'s shape for ``"none"``).
    :meth:`backward` returns ``d loss / d input``. A ``reduction`` other than the three raises
    ``ValueError``.

    >>> import numpy as np
    >>> loss_fn = MSELoss()
    >>> loss_fn(np.array([1.0, 3.0]), np.array([0.0, 0.0]))
    array(5., dtype=float32)
    >>> loss_fn.backward()
    array([1., 3.], dtype=float32)
    """

    def __init__(self, reduction: str = "mean", name: str | None = None) -> None:
        super().__init__(name)
        if reduction not in ("mean", "sum", "none"):
            raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
        self.reduction = reduction
        self._diff: np.ndarray | None = None

    def forward(self, input: Any, label: Any) -> np.ndarray:
        """``mean``/``sum`` of ``(input - label)^2``, or the elementwise squares for ``"none"``."""
        x = np.asarray(input, dtype=DTYPE)
        t = np.asarray(label, dtype=DTYPE)
        if x.shape != t.shape:
            raise ValueError(f"input and label must have the same shape, got {list(x.shape)} and {list(t.shape)}")
        diff = x - t
        self._diff = diff
        sq = diff * diff
        if self.reduction == "mean":
            return np.asarray(sq.mean(dtype=DTYPE))
        if self.reduction == "sum":
            return np.asarray(sq.sum(dtype=DTYPE))
        return sq

    def backward(self, grad_out: Any = 1.0) -> np.ndarray:
        """``d loss / d input``: ``2 (input - label) g / n`` for mean (``n`` elements), ``2 (input - label) g``
        otherwise. ``g`` (default 1) is ``d total / d loss``; for ``"none"`` it must broadcast to the
        input's shape, and the default gives the gradient of ``loss.sum()``. ``RuntimeError`` before forward.
        """
        if self._diff is None:
            raise RuntimeError("MSELoss.backward() needs a forward pass first")
        g = np.asarray(grad_out, dtype=DTYPE)
        if self.reduction != "none" and g.ndim != 0:
            raise ValueError(f"grad_out of a reduced loss must be a scalar, got shape {list(g.shape)}")
        if np.broadcast_shapes(g.shape, self._diff.shape) != self._diff.shape:
            raise ValueError(f"grad_out of shape {list(g.shape)} does not fit the loss {list(self._diff.shape)}")
        factor = DTYPE.type(2.0 / self._diff.size if self.reduction == "mean" and self._diff.size else 2.0)
        return np.asarray(factor * self._diff * g, dtype=DTYPE)

    def __repr__(self) -> str:
        return f"MSELoss(reduction={self.reduction!r})"
