"""Parameter and ParamAttr: construction, validation, and how the clip classes read ``need_clip``."""

from __future__ import annotations

import math
from typing import Any

import fastclip as fc
import ml_dtypes
import numpy as np
import pytest


@pytest.mark.parametrize("dtype", [np.float16, ml_dtypes.bfloat16, np.float32, np.float64])
def test_parameter_keeps_the_callers_array(dtype: Any) -> None:
    v = np.arange(6, dtype=np.float64).reshape(2, 3).astype(dtype)
    p = fc.Parameter(v, name="w")
    assert p.value is v and p.numpy() is v
    assert (p.shape, p.dtype, p.size, p.name) == ((2, 3), np.dtype(dtype), 6, "w")
    assert (p.need_clip, p.trainable, p.stop_gradient, p.learning_rate, p.grad) == (True, True, False, 1.0, None)


def test_parameter_defaults_and_repr() -> None:
    a, b = fc.Parameter(np.zeros(2, np.float32)), fc.Parameter(np.zeros(2, np.float32))
    assert a.name.startswith("param_") and a.name != b.name
    p = fc.Parameter(np.zeros((2, 3), np.float32), name="w", need_clip=False, trainable=False)
    assert repr(p) == "Parameter(name='w', shape=(2, 3), dtype=float32, need_clip=False, trainable=False)"
    assert p.stop_gradient is True
    q = fc.Parameter([1.5, 2.5])  # array-like: converted, float64
    assert q.dtype == np.float64 and q.value.tolist() == [1.5, 2.5]


def test_grad_setter() -> None:
    p = fc.Parameter(np.zeros((2, 2), np.float32))
    g = np.ones((2, 2), np.float32)
    p.grad = g
    assert p.grad is g
    p.grad = np.ones((2, 2), np.float64)  # another float dtype is allowed (e.g. float32 master grads)
    p.grad = None
    assert p.grad is None
    with pytest.raises(ValueError, match=r"shape \(3,\)"):
        p.grad = np.ones(3, np.float32)
    with pytest.raises(TypeError, match="grad must be an array of"):
        p.grad = np.ones((2, 2), np.int32)
    with pytest.raises(TypeError, match=r"grad must be a numpy\.ndarray"):
        p.grad = [[1.0, 1.0], [1.0, 1.0]]
    assert p.grad is None  # failed sets change nothing


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"value": np.zeros(2, np.int32)}, TypeError, "value must be an array of"),
        ({"value": [1, 2]}, TypeError, "value must be an array of"),
        ({"value": np.zeros(2), "name": 3}, TypeError, "name must be a str"),
        ({"value": np.zeros(2), "need_clip": 0}, TypeError, "need_clip must be a bool"),
        ({"value": np.zeros(2), "trainable": "yes"}, TypeError, "trainable must be a bool"),
        ({"value": np.zeros(2), "learning_rate": -1.0}, ValueError, "learning_rate"),
        ({"value": np.zeros(2), "learning_rate": math.nan}, ValueError, "learning_rate"),
        ({"value": np.zeros(2), "learning_rate": "1"}, TypeError, "learning_rate"),
    ],
)
def test_parameter_rejects(kwargs: dict[str, Any], error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        fc.Parameter(**kwargs)


def test_parameter_rejects_readonly_value() -> None:
    v = np.zeros(2)
    v.flags.writeable = False
    with pytest.raises(ValueError, match="writeable"):
        fc.Parameter(v)


def test_flags_are_settable_and_validated() -> None:
    p = fc.Parameter(np.zeros(2, np.float32))
    p.need_clip = False
    p.trainable = np.False_
    assert p.need_clip is False and p.trainable is False
    with pytest.raises(TypeError):
        p.need_clip = 0  # type: ignore[assignment]
    assert p.need_clip is False


def test_need_clip_set_after_creation_is_honoured() -> None:
    """Paddle reads ``need_clip`` at clip time; so do we."""
    p = fc.Parameter(np.zeros(2, np.float32))
    g = np.array([30.0, 40.0], np.float32)
    p.grad = g
    p.need_clip = False
    fc.ClipGradByGlobalNorm(1.0)([(p, p.grad)])
    assert g.tolist() == [30.0, 40.0]
    p.need_clip = True
    fc.ClipGradByGlobalNorm(5.0)([(p, p.grad)])
    assert g.tolist() == [np.float32(3.0), np.float32(4.0)]


def test_param_attr_fields_and_repr() -> None:
    a = fc.ParamAttr()
    assert (a.name, a.initializer, a.learning_rate, a.trainable, a.need_clip) == (None, None, 1.0, True, True)
    a = fc.ParamAttr(name="linear1.w", learning_rate=0.5, need_clip=False)
    assert repr(a) == (
        "ParamAttr(name='linear1.w', initializer=None, learning_rate=0.5, trainable=True, need_clip=False)"
    )


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"name": 1}, TypeError),
        ({"initializer": 3.0}, TypeError),
        ({"learning_rate": -0.1}, ValueError),
        ({"learning_rate": math.inf}, ValueError),
        ({"learning_rate": None}, TypeError),
        ({"trainable": 1}, TypeError),
        ({"need_clip": None}, TypeError),
    ],
)
def test_param_attr_rejects(kwargs: dict[str, Any], error: type[Exception]) -> None:
    with pytest.raises(error):
        fc.ParamAttr(**kwargs)


def test_param_attr_create() -> None:
    def ones(shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        return np.full(shape, 0.25, dtype)

    attr = fc.ParamAttr(name="b", initializer=ones, learning_rate=2.0, trainable=False, need_clip=False)
    p = attr.create((3,), np.float32)
    assert (p.name, p.shape, p.dtype, p.need_clip, p.trainable, p.learning_rate) == (
        "b",
        (3,),
        np.float32,
        False,
        False,
        2.0,
    )
    assert p.value.tolist() == [0.25] * 3
    q = fc.ParamAttr().create((2, 2), "float64", default_initializer=ones)
    assert q.value.dtype == np.float64 and q.value.sum() == 1.0
    assert not fc.ParamAttr().create((2,)).value.any()  # no initializer at all: zeros
    shared = np.ones(4, np.float32)
    r = fc.ParamAttr(initializer=lambda s, d: shared).create((4,))
    assert not np.shares_memory(r.value, shared)  # an initializer's array is copied, never aliased
    with pytest.raises(ValueError, match="shape"):
        fc.ParamAttr(initializer=lambda s, d: np.zeros(5, d)).create((2,))
    with pytest.raises(TypeError, match="dtype"):
        fc.ParamAttr().create((2,), np.int64)


def test_docstring_examples() -> None:
    """The examples in the docstrings of fastclip.param and fastclip.clip run and print what they say."""
    import doctest

    import fastclip.clip
    import fastclip.param

    for module in (fastclip.param, fastclip.clip):
        result = doctest.testmod(module)
        assert result.failed == 0 and result.attempted > 0
