"""Every error case: the right exception, a message naming what is wrong and where, and every buffer
bit-identical afterwards (the check happens before any buffer is touched, even when the bad item
comes last, after arrays big enough to go through the threaded path)."""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from decimal import Decimal
from fractions import Fraction
from typing import Any

import fastclip as fc
import numpy as np
import pytest
from fastclip import _fastclip
from refs import FLOAT_DTYPES, Param, dtype_id, same_bits

BIG = _fastclip.PARALLEL_MIN + 1000  # first arrays large enough for rayon


def _good(dtype: Any = np.float32) -> list[np.ndarray]:
    """Arrays a clip would certainly modify (norm well above 1, values above 0.5)."""
    rng = np.random.default_rng(7)
    return [
        (rng.standard_normal(BIG) * 5).astype(dtype),
        np.array([3.0, -4.0, 100.0], np.float64),
        (rng.standard_normal((3, 5)) * 5).astype(np.float16),
    ]


ALL_CALLS: dict[str, Callable[[Any], Any]] = {
    "get_total_norm": lambda g: fc.get_total_norm(g),
    "clip_grad_norm_": lambda g: fc.clip_grad_norm_(g, 0.5),
    "clip_grads_with_norm_": lambda g: fc.clip_grads_with_norm_(g, 0.5, 10.0),
    "clip_grad_value_": lambda g: fc.clip_grad_value_(g, 0.5),
}
IN_PLACE = {k: v for k, v in ALL_CALLS.items() if k != "get_total_norm"}


def _assert_untouched(arrays: list[np.ndarray], copies: list[np.ndarray]) -> None:
    for i, (a, c) in enumerate(zip(arrays, copies)):
        assert same_bits(a, c), f"array {i} was modified"


def _check(call: Callable[[Any], Any], grads: Any, arrays: list[np.ndarray], exc: Any, match: str) -> None:
    copies = [a.copy() for a in arrays]
    with pytest.raises(exc, match=match):
        call(grads)
    _assert_untouched(arrays, copies)


# ---------------------------------------------------------------------------------------------
# Unsupported dtypes, named with their position
# ---------------------------------------------------------------------------------------------

BAD_DTYPES = [np.int32, np.int64, np.uint8, np.bool_, np.complex64, np.complex128, object, np.longdouble, "U3"]


@pytest.mark.parametrize("call", list(ALL_CALLS.values()), ids=list(ALL_CALLS))
@pytest.mark.parametrize("bad_dtype", BAD_DTYPES, ids=lambda d: np.dtype(d).name)
def test_wrong_dtype_last_names_dtype_and_position(call, bad_dtype):
    good = _good()
    name = re.escape(str(np.dtype(bad_dtype)))
    _check(call, [*good, np.zeros(4, bad_dtype)], good, TypeError, rf"grads\[3\].*{name}")


@pytest.mark.parametrize("call", list(ALL_CALLS.values()), ids=list(ALL_CALLS))
def test_wrong_dtype_position_counts_skipped_none_grads(call):
    arrays = _good()
    params = [Param(arrays[0]), Param(None), Param(arrays[1]), Param(None), Param(np.zeros(2, np.int32))]
    _check(call, params, arrays, TypeError, r"grads\[4\].*int32")
    gen = (p for p in [Param(None), Param(arrays[0]), Param(np.zeros(2, np.complex128)), Param(arrays[1])])
    _check(call, gen, arrays, TypeError, r"grads\[2\].*complex128")


@pytest.mark.parametrize("call", list(ALL_CALLS.values()), ids=list(ALL_CALLS))
def test_wrong_dtype_single_array(call):
    _check(call, np.arange(5), [], TypeError, r"grads\[0\].*int64")


@pytest.mark.parametrize("call", list(ALL_CALLS.values()), ids=list(ALL_CALLS))
@pytest.mark.parametrize("item", ["x", 3.0, [1.0, 2.0], None, np.float32(1.0)], ids=repr)
def test_non_array_item_names_position(call, item):
    arrays = _good()
    _check(call, [*arrays, item], arrays, TypeError, r"grads\[3\]")


@pytest.mark.parametrize("call", list(ALL_CALLS.values()), ids=list(ALL_CALLS))
@pytest.mark.parametrize("grads", [5, 2.5, None, "abc", b"abc", object(), np.float64(1.0)], ids=repr)
def test_non_iterable_grads(call, grads):
    with pytest.raises(TypeError, match="grads"):
        call(grads)


# ---------------------------------------------------------------------------------------------
# Read-only, byte order, alignment
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("call", list(IN_PLACE.values()), ids=list(IN_PLACE))
def test_read_only_array_last(call):
    arrays = _good()
    ro = np.arange(6.0)
    ro.flags.writeable = False
    arrays.append(ro)
    _check(call, arrays, arrays, ValueError, r"grads\[3\].*read-only")
    bro = np.broadcast_to(np.float32(2.0), (4, 4))  # read-only view
    arrays[-1] = bro
    _check(call, arrays, arrays, ValueError, r"grads\[3\]")


def test_read_only_array_may_be_measured():
    ro = np.array([3.0, 4.0])
    ro.flags.writeable = False
    assert fc.get_total_norm([ro, ro]) == math.sqrt(50.0)
    assert fc.get_total_norm(np.broadcast_to(np.float32(2.0), (4, 4))) == 8.0


@pytest.mark.parametrize("call", list(ALL_CALLS.values()), ids=list(ALL_CALLS))
@pytest.mark.parametrize("dtype", [">f4", ">f8", ">f2"])
def test_non_native_byte_order(call, dtype):
    arrays = _good()
    swapped = np.arange(5).astype(dtype)
    arrays.append(swapped)
    _check(call, arrays, arrays, (TypeError, ValueError), r"grads\[3\].*byte order")


def _unaligned(dtype: Any, n: int) -> np.ndarray:
    itemsize = np.dtype(dtype).itemsize
    buf = np.zeros(n * itemsize + 1, np.uint8)
    a = buf[1:].view(dtype)
    assert not a.flags.aligned
    a[...] = np.arange(n)
    return a


@pytest.mark.parametrize("call", list(ALL_CALLS.values()), ids=list(ALL_CALLS))
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16], ids=dtype_id)
def test_unaligned_array(call, dtype):
    arrays = _good()
    arrays.append(_unaligned(dtype, 7))
    _check(call, arrays, arrays, ValueError, r"grads\[3\].*align")


# ---------------------------------------------------------------------------------------------
# Shared memory in in-place calls
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("call", list(IN_PLACE.values()), ids=list(IN_PLACE))
def test_same_array_twice(call):
    arrays = _good()
    a = arrays[1]
    _check(call, [*arrays, a], arrays, ValueError, r"grads\[1\].*grads\[3\].*share memory")
    params = [Param(arrays[0]), Param(None), Param(a), Param(a)]
    _check(call, params, arrays, ValueError, r"grads\[2\].*grads\[3\]")


@pytest.mark.parametrize("call", list(IN_PLACE.values()), ids=list(IN_PLACE))
@pytest.mark.parametrize(
    "views",
    [
        lambda b: [b[:60], b[50:]],
        lambda b: [b, b[10:20]],
        lambda b: [b[::3], b[::5]],
        lambda b: [b.reshape(10, 10), b.reshape(10, 10).T],
        lambda b: [b.reshape(10, 10)[:, 2], b.reshape(10, 10)[5, :]],
    ],
    ids=["overlapping_slices", "sub_slice", "strided_common", "transpose", "row_and_column"],
)
def test_overlapping_views(call, views):
    base = np.linspace(-5, 5, 100)
    first = _good()
    vs = views(base)
    assert np.shares_memory(vs[0], vs[1])
    _check(call, [*first, *vs], [*first, base], ValueError, r"grads\[3\].*grads\[4\].*share memory")


def test_shared_memory_is_fine_for_measuring():
    a = np.array([3.0, 4.0])
    assert fc.get_total_norm([a, a]) == math.sqrt(50.0)
    assert fc.get_total_norm([a, a[1:]], 1) == 11.0


# ---------------------------------------------------------------------------------------------
# Bad thresholds and norm types: nothing modified
# ---------------------------------------------------------------------------------------------

BAD_THRESHOLDS = [
    (-1.0, ValueError),
    (-1e-300, ValueError),
    (-math.inf, ValueError),
    (math.nan, ValueError),
    (np.float32("nan"), ValueError),
    ("1.0", TypeError),
    (None, TypeError),
    (1 + 0j, TypeError),
    ([1.0], TypeError),
    (np.array([1.0, 2.0]), TypeError),
    (True, TypeError),
]


@pytest.mark.parametrize(("value", "exc"), BAD_THRESHOLDS, ids=repr)
def test_bad_max_norm(value, exc):
    arrays = _good()
    _check(lambda g: fc.clip_grad_norm_(g, value), arrays, arrays, exc, "max_norm")
    _check(lambda g: fc.clip_grads_with_norm_(g, value, 10.0), arrays, arrays, exc, "max_norm")


@pytest.mark.parametrize(("value", "exc"), BAD_THRESHOLDS, ids=repr)
def test_bad_clip_value(value, exc):
    arrays = _good()
    _check(lambda g: fc.clip_grad_value_(g, value), arrays, arrays, exc, "clip_value")


@pytest.mark.parametrize(
    ("value", "exc"),
    [(-1.0, ValueError), ("1.0", TypeError), (None, TypeError), ([3.0], TypeError), (1j, TypeError)],
    ids=repr,
)
def test_bad_total_norm(value, exc):
    arrays = _good()
    _check(lambda g: fc.clip_grads_with_norm_(g, 1.0, value), arrays, arrays, exc, "total_norm")


BAD_NORM_TYPES = [
    (0, ValueError),
    (0.0, ValueError),
    (-1, ValueError),
    (-math.inf, ValueError),
    (math.nan, ValueError),
    ("fro", ValueError),
    ("nuc", ValueError),
    ("-inf", ValueError),
    ("", ValueError),
    (None, TypeError),
    (True, TypeError),
    (2j, TypeError),
]


@pytest.mark.parametrize(("value", "exc"), BAD_NORM_TYPES, ids=repr)
def test_bad_norm_type(value, exc):
    arrays = _good()
    _check(lambda g: fc.get_total_norm(g, value), arrays, arrays, exc, "norm_type")
    _check(lambda g: fc.clip_grad_norm_(g, 1.0, value), arrays, arrays, exc, "norm_type")


def test_bad_arguments_win_over_bad_grads():
    # Argument checks come first, and neither path touches anything.
    arrays = _good()
    with_bad = [*arrays, np.zeros(2, np.int32)]
    _check(lambda g: fc.clip_grad_norm_(g, -1.0), with_bad, arrays, ValueError, "max_norm")
    _check(lambda g: fc.clip_grad_value_(g, math.nan), with_bad, arrays, ValueError, "clip_value")


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=dtype_id)
@pytest.mark.parametrize("bad", [math.nan, math.inf], ids=repr)
def test_error_if_nonfinite_untouched(dtype, bad):
    arrays = _good()
    arrays.append(np.array([1.0, bad, 2.0], dtype))
    _check(lambda g: fc.clip_grad_norm_(g, 1.0, error_if_nonfinite=True), arrays, arrays, RuntimeError, "non-finite")
    _check(lambda g: fc.clip_grad_norm_(g, 1.0, 1, error_if_nonfinite=True), arrays, arrays, RuntimeError, "non-finite")
    _check(lambda g: fc.get_total_norm(g, error_if_nonfinite=True), arrays, arrays, RuntimeError, "non-finite")


def test_failed_call_leaves_a_generator_consumed_but_buffers_intact():
    arrays = _good()
    gen = (a for a in [*arrays, np.zeros(1, np.int8)])
    _check(lambda g: fc.clip_grad_norm_(g, 0.5), gen, arrays, TypeError, r"grads\[3\].*int8")
    # The same good arrays then clip normally.
    total = fc.clip_grad_norm_(arrays, 0.5)
    assert total > 0.5
    assert fc.get_total_norm(arrays) <= 0.5 * (1 + 1e-3)


# ---------------------------------------------------------------------------------------------
# clip_grad_norm_'s fused fast path (one extension call for a plain list of arrays) gives the
# same errors, in the same order, as the general path (norms, policy, then the in-place checks)
# ---------------------------------------------------------------------------------------------


def test_fast_path_defers_to_the_general_path_when_a_later_item_is_not_an_array():
    # the general path rejects the non-buffer item while collecting, before any dtype check
    good = _good()
    grads = [np.zeros(3, np.int32), *good, object()]
    match = r"grads\[4\] must be a numpy.ndarray, a DLPack"
    _check(lambda g: fc.clip_grad_norm_(g, 0.5), grads, good, TypeError, match)


def test_fast_path_nonfinite_error_comes_before_read_only():
    # a norms pass then a scale_ call: the policy's RuntimeError precedes the in-place checks
    arrays = [np.array([np.nan, 1.0], np.float32), np.ones(3, np.float32)]
    arrays[1].flags.writeable = False
    _check(lambda g: fc.clip_grad_norm_(g, 0.5, error_if_nonfinite=True), arrays, arrays, RuntimeError, "non-finite")
    _check(lambda g: fc.clip_grad_norm_(g, 0.5), arrays, arrays, ValueError, r"grads\[1\] is read-only")


def test_fast_path_overlap_found_after_a_clean_call_on_other_buffers():
    # the last list found disjoint is remembered per thread; a different list is checked afresh
    a, b = np.ones(8, np.float32) * 3, np.ones(8, np.float32) * 3
    fc.clip_grad_norm_([a, b], 0.5)
    fc.clip_grad_norm_([a, b], 0.5)  # the same buffers again
    copies = [a.copy(), b.copy()]
    for grads in ([a, b, a], [a, b, a[2:]], [b, a[1:4], b[::2]]):
        with pytest.raises(ValueError, match="share memory"):
            fc.clip_grad_norm_(grads, 0.5)
        _assert_untouched([a, b], copies)


def test_fast_path_mixed_list_falls_back_and_clips(rng):
    arrays = [rng.standard_normal(100).astype(np.float32) * 3 for _ in range(3)]
    expected = [a.copy() for a in arrays]
    fc.clip_grad_norm_(expected, 1.0)
    got = [arrays[0], Param(arrays[1]), Param(None), arrays[2]]
    assert fc.clip_grad_norm_(got, 1.0) > 1.0
    for a, e in zip(arrays, expected):
        assert same_bits(a, e)


# ---------------------------------------------------------------------------------------------
# Every public argument that takes a number: huge ints, NumPy bools, strings, Decimals and
# Fractions, objects whose __float__ raises. An OverflowError never escapes; the message names
# the argument.
# ---------------------------------------------------------------------------------------------


def _w() -> fc.Parameter:
    p = fc.Parameter(np.ones(3), name="w")
    p.grad = np.ones(3)
    return p


def _set_lr(v: Any) -> None:
    fc.optimizer.SGD(0.1, parameters=[_w()]).set_lr(v)


def _set_param_lr(v: Any) -> None:
    _w().learning_rate = v


OPT = fc.optimizer
INIT = fc.initializer
#: argument -> (a call that passes v to it, the name the error must show, what it accepts besides
#: finite numbers: "nan", "inf", "None", "inf-str"; "str" where other strings raise ValueError)
NUMBER_ARGS: dict[str, tuple[Callable[[Any], Any], str, set[str]]] = {
    "clip_grad_norm_(max_norm)": (lambda v: fc.clip_grad_norm_([np.ones(3)], v), "max_norm", {"inf"}),
    "clip_grad_norm_(norm_type)": (lambda v: fc.clip_grad_norm_([np.ones(3)], 1.0, v), "norm_type",
                                   {"inf", "inf-str", "str"}),
    "get_total_norm(norm_type)": (lambda v: fc.get_total_norm([np.ones(3)], v), "norm_type",
                                   {"inf", "inf-str", "str"}),
    "clip_grads_with_norm_(max_norm)": (lambda v: fc.clip_grads_with_norm_([np.ones(3)], v, 1.0), "max_norm", {"inf"}),
    "clip_grads_with_norm_(total_norm)": (lambda v: fc.clip_grads_with_norm_([np.ones(3)], 1.0, v), "total_norm",
                                          {"inf", "nan"}),
    "clip_grad_value_(clip_value)": (lambda v: fc.clip_grad_value_([np.ones(3)], v), "clip_value", {"inf"}),
    "ClipGradByValue(max)": (lambda v: fc.ClipGradByValue(v), "max", {"inf"}),
    "ClipGradByValue(min)": (lambda v: fc.ClipGradByValue(1.0, v), "min", {"None"}),
    "ClipGradByNorm(clip_norm)": (lambda v: fc.ClipGradByNorm(v), "clip_norm", set()),
    "ClipGradByGlobalNorm(clip_norm)": (lambda v: fc.ClipGradByGlobalNorm(v), "clip_norm", set()),
    "SGD(learning_rate)": (lambda v: OPT.SGD(v, parameters=[_w()]), "learning_rate", set()),
    "SGD(weight_decay)": (lambda v: OPT.SGD(parameters=[_w()], weight_decay=v), "weight_decay", {"None"}),
    "Momentum(momentum)": (lambda v: OPT.Momentum(parameters=[_w()], momentum=v), "momentum", set()),
    "Adam(beta1)": (lambda v: OPT.Adam(parameters=[_w()], beta1=v), "beta1", set()),
    "Adam(beta2)": (lambda v: OPT.Adam(parameters=[_w()], beta2=v), "beta2", set()),
    "Adam(epsilon)": (lambda v: OPT.Adam(parameters=[_w()], epsilon=v), "epsilon", set()),
    "AdamW(weight_decay)": (lambda v: OPT.AdamW(parameters=[_w()], weight_decay=v), "weight_decay", set()),
    "group learning_rate": (lambda v: OPT.SGD(parameters=[{"params": [_w()], "learning_rate": v}]),
                            r"parameters\[0\]\['learning_rate'\]", set()),
    "group beta1": (lambda v: OPT.Adam(parameters=[{"params": [_w()], "beta1": v}]), r"parameters\[0\]\['beta1'\]",
                    set()),
    "group momentum": (lambda v: OPT.Momentum(parameters=[{"params": [_w()], "momentum": v}]),
                       r"parameters\[0\]\['momentum'\]", set()),
    "set_lr(value)": (_set_lr, "value", set()),
    "Parameter(learning_rate)": (lambda v: fc.Parameter(np.ones(2), learning_rate=v), "learning_rate", set()),
    "Parameter.learning_rate = v": (_set_param_lr, "learning_rate", set()),
    "ParamAttr(learning_rate)": (lambda v: fc.ParamAttr(learning_rate=v), "learning_rate", set()),
    "Constant(value)": (lambda v: INIT.Constant(v), "value", set()),
    "Normal(mean)": (lambda v: INIT.Normal(v), "mean", set()),
    "Normal(std)": (lambda v: INIT.Normal(0.0, v), "std", set()),
    "Uniform(low)": (lambda v: INIT.Uniform(v, 1.0), "low", set()),
    "Uniform(high)": (lambda v: INIT.Uniform(-1.0, v), "high", set()),
    "XavierUniform(fan_in)": (lambda v: INIT.XavierUniform(fan_in=v), "fan_in", {"None"}),
    "XavierUniform(gain)": (lambda v: INIT.XavierUniform(gain=v), "gain", set()),
}  # fmt: skip


class _FloatRaises:
    def __float__(self) -> float:
        raise RuntimeError("no float for you")


class _Floaty:
    def __float__(self) -> float:
        return 0.25


#: (value, the exception, what the message says, the NUMBER_ARGS tag that makes it acceptable)
BAD_NUMBERS: list[tuple[Any, type, str, str | None]] = [
    (10**400, ValueError, "too large for a float", None),
    (-(10**400), ValueError, "too large for a float", None),
    (Fraction(10**400, 3), ValueError, "too large for a float", None),
    (Decimal("1e400"), ValueError, "too large for a float", None),
    (Decimal("-1e999"), ValueError, "too large for a float", None),
    (np.longdouble(1e300) ** 2 if np.finfo(np.longdouble).max > 1e600 else 10**401, ValueError, "too large", None),
    (float("nan"), ValueError, "", "nan"),
    (np.float32("nan"), ValueError, "", "nan"),
    ("inf", TypeError, "real number", "inf-str"),
    ("0.5", TypeError, "real number", None),
    (b"1", TypeError, "real number", None),
    (True, TypeError, "real number", None),
    (np.True_, TypeError, "real number", None),
    (np.bool_(False), TypeError, "real number", None),
    (np.array(True), TypeError, "bool", None),
    (None, TypeError, "real number", "None"),
    (1 + 0j, TypeError, "real number", None),
    (np.complex128(0.5), TypeError, "real number", None),
    (np.array([0.5, 0.5]), TypeError, r"shape \(2,\)", None),
    ([0.5], TypeError, "real number", None),
    (_FloatRaises(), TypeError, "no float for you", None),
    (object(), TypeError, "real number", None),
]


@pytest.mark.parametrize("arg", list(NUMBER_ARGS))
@pytest.mark.parametrize(("value", "exc", "says", "unless"), BAD_NUMBERS, ids=lambda v: repr(v)[:30])
def test_every_number_argument_refuses_bad_numbers(arg: str, value: Any, exc: type, says: str, unless: Any) -> None:
    call, name, accepts = NUMBER_ARGS[arg]
    if unless in accepts:
        call(value)  # a value this argument takes: no error
        return
    if isinstance(value, str) and "str" in accepts:
        exc, says = ValueError, "'inf'"  # norm_type takes the string 'inf', so other strings are bad values
    with pytest.raises(exc, match=name) as e:
        call(value)
    assert re.search(says, str(e.value)), str(e.value)
    assert not isinstance(e.value, OverflowError)


@pytest.mark.parametrize("arg", list(NUMBER_ARGS))
@pytest.mark.parametrize(
    "value",
    [Fraction(1, 4), Decimal("0.25"), np.float16(0.25), np.float32(0.25), np.longdouble(0.25), np.array(0.25),
     _Floaty()],
    ids=repr,
)  # fmt: skip
def test_every_number_argument_takes_any_real_number_type(arg: str, value: Any) -> None:
    call, _, _ = NUMBER_ARGS[arg]
    call(value)


def test_real_number_types_give_the_same_float() -> None:
    for v in [Fraction(1, 4), Decimal("0.25"), np.float16(0.25), np.array(0.25), _Floaty(), np.int64(1) / 4]:
        assert fc.ClipGradByNorm(v).clip_norm == 0.25
        assert type(fc.ClipGradByNorm(v).clip_norm) is float
    assert fc.ClipGradByNorm(np.int8(3)).clip_norm == 3.0
    assert fc.ClipGradByNorm(2**80).clip_norm == float(2**80)  # big but representable
