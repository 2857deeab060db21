"""Every error case: the right exception, a message naming what is wrong and where, and every buffer
bit-identical afterwards (the check happens before any buffer is touched, even when the bad item
comes last, after arrays big enough to go through the threaded path)."""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import Any

import fastclip as fc
import numpy as np
import pytest
from conftest import FLOAT_DTYPES, Param, dtype_id, same_bits
from fastclip import _fastclip

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
