"""Memory safety of the binding: the arrays of a call stay alive and unchanged for the whole call
(another thread clearing the list or resizing an array, the ``coefficient`` callback dropping
or changing them), broadcast and stride-0 views cost their distinct elements (no logical-size
copy), an impossible copy is a ``MemoryError``, a Rust panic is a ``RuntimeError``, and a thread
pool that cannot start leaves the calling thread to do the work.

Scenarios that crashed the process before the fix run in a subprocess, so that a regression
fails one test instead of killing the suite.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap

import fastclip as fc
import numpy as np
import pytest
from fastclip import _fastclip
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from refs import BF16, assert_rel, dtype_id, ref_norm, same_bits, scaled_ref, torch_coef

as_strided = np.lib.stride_tricks.as_strided


def run_script(code: str, timeout: float = 180, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter; a crash or a hang there fails only the calling test."""
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=dict(os.environ, **(env or {})),
    )


def assert_ran(proc: subprocess.CompletedProcess) -> str:
    err = proc.stderr[-3000:]
    assert proc.returncode == 0, f"exit status {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{err}"
    return proc.stdout


# ---------------------------------------------------------------------------------------------
# The arrays stay alive: another thread mutating the list or the arrays mid-call
# ---------------------------------------------------------------------------------------------

_RACE = """
    import sys, threading
    import numpy as np
    import fastclip as fc

    kind = sys.argv[1]
    N = 1 << 20  # 4 MiB each: large enough to be mmap'd, so a freed buffer is unmapped
    stop = False
    box = [None]
    refused = 0

    def mutate():
        global refused
        while not stop:
            g = box[0]
            if not g:
                continue
            try:
                if kind == "clear":
                    g.clear()
                elif kind == "del_slice":
                    del g[:2]
                elif kind == "resize":
                    g[0].resize(16)  # refcheck: the list's reference and the call's
                elif kind == "pop_resize":
                    g.pop().resize(16)  # the temporary is the caller's only reference
            except ValueError:
                refused += 1  # NumPy's refcheck: the call holds the array
            except IndexError:
                pass

    t = threading.Thread(target=mutate)
    t.start()
    try:
        for _ in range(40):
            box[0] = [np.full(N, 2.0, np.float32) for _ in range(4)]
            total = fc.clip_grad_norm_(box[0], 1.0)
            assert 0.0 <= total <= 2.0 * 2 ** 11, total
    finally:
        stop = True
        t.join()
    print("ok", refused)
"""


@pytest.mark.parametrize("kind", ["clear", "del_slice", "resize", "pop_resize"])
def test_another_thread_mutating_the_list_or_its_arrays_mid_call(kind):
    # Before: the call kept raw pointers only, so a concurrent clear() freed (munmap'd) the
    # buffers under the passes and resize() reallocated them: segfaults.
    out = assert_ran(run_script(_RACE.replace("sys.argv[1]", repr(kind)), timeout=300))
    assert out.startswith("ok")


_CALLBACK = """
    import json, warnings
    import numpy as np
    from fastclip import _fastclip

    out = {}
    # Sizes from tiny (NumPy's and malloc's caches hand a freed block straight back) to mmap'd.
    for n in (4, 100, 5000, 1 << 18):
        # grads[1]'s memory is a bytearray we keep: it shows whether the scale pass wrote it.
        backing = bytearray(8 * n)
        grads = [np.full(n, 3.0), np.frombuffer(backing, dtype=np.float64), np.full(n, 5.0)]
        grads[1][:] = 4.0
        fresh = []

        def coefficient(total, grads=grads, fresh=fresh):
            # drop every other reference to the arrays, then allocate look-alikes
            grads.clear()
            fresh.extend(np.full(n, 7.0) for _ in range(3))
            return 0.5

        total = _fastclip.norm_scale_(grads, 2.0, coefficient)
        view = np.frombuffer(backing, dtype=np.float64)
        out[str(n)] = {
            "total": total,
            "fresh_untouched": all(bool((f == 7.0).all()) for f in fresh),
            "original_scaled": bool((view == 2.0).all()),
        }

    # The callback swaps the list's contents: the arrays measured are the arrays scaled.
    backing = bytearray(8 * 1000)
    a = np.frombuffer(backing, dtype=np.float64)
    a[:] = 1.0
    grads = [a]
    del a
    new = np.full(1000, 9.0)

    def swap(total):
        grads[:] = [new]
        return 0.25

    _fastclip.norm_scale_(grads, 2.0, swap)
    out["swap"] = [bool((new == 9.0).all()), bool((np.frombuffer(backing) == 0.25).all())]
    print(json.dumps(out))
"""


def test_coefficient_callback_dropping_the_arrays():
    # Before: grads.clear() in the callback freed the arrays between the passes, and the scale
    # pass wrote into whatever was allocated there next (here: the look-alike arrays).
    out = json.loads(assert_ran(run_script(_CALLBACK)))
    for n in (4, 100, 5000, 1 << 18):
        r = out[str(n)]
        assert r["fresh_untouched"], n
        assert r["original_scaled"], n
        assert_rel(r["total"], math.sqrt(n * (9.0 + 16.0 + 25.0)))
    assert out["swap"] == [True, True]


_CALLBACK_CHANGES = """
    import json, warnings
    import numpy as np
    from fastclip import _fastclip

    def attempt(change, hold=True):
        # grads[1] is held by `a` too, unless `hold` is false: then only the list (and the
        # call) hold it, which is what lets NumPy's resize refcheck pass when the call does not
        b = np.full(10, 1.0)
        grads = [b, np.full(1000, 3.0)]
        a = grads[1] if hold else None
        seen = {}

        def coefficient(total):
            try:
                change(grads, a)
            except Exception as e:
                seen["callback"] = type(e).__name__ + ": " + str(e)
                raise
            return 0.5

        try:
            _fastclip.norm_scale_(grads, 2.0, coefficient)
            seen["call"] = "returned"
        except Exception as e:
            seen["call"] = type(e).__name__ + ": " + str(e)
        if hold:
            seen["a"] = sorted(set(a.ravel().tolist()))[:3]
        seen["b"] = sorted(set(b.tolist()))
        return seen

    def resize_unchecked(grads, a):
        a.resize(200_000, refcheck=False)  # new memory, the old freed
        a[:] = 8.0

    def new_data(grads, a):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            a.data = np.full(1000, 8.0).data

    def retype(grads, a):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            a.dtype = np.int64

    def read_only(grads, a):
        a.flags.writeable = False

    def resize(grads, a):
        grads[1].resize(5000)

    def pop_resize(grads, a):
        grads.pop().resize(5000)

    out = {f.__name__: attempt(f) for f in (resize_unchecked, new_data, retype, read_only)}
    out.update({f.__name__: attempt(f, hold=False) for f in (resize, pop_resize)})
    print(json.dumps(out))
"""


def test_coefficient_callback_changing_an_array():
    # The callback is Python code: whatever it did to an array, nothing is written unless every
    # array is still the one measured. Before: resize(refcheck=False) and .data = ... had the
    # scale pass write freed memory; a.flags.writeable = False was ignored; resize() succeeded.
    out = json.loads(assert_ran(run_script(_CALLBACK_CHANGES)))
    if "is not writable" in out["new_data"].get("callback", ""):
        del out["new_data"]  # NumPy 2.4 removed assignment to .data
    for case in ("resize_unchecked", "new_data", "retype"):
        if case not in out:
            continue
        r = out[case]
        assert r["call"].startswith("RuntimeError: grads[1] was changed during the call"), (case, r)
        assert r["b"] == [1.0], case  # nothing was scaled
    assert out["resize_unchecked"]["a"] == [8.0]
    assert out.get("new_data", {"a": [8.0]})["a"] == [8.0]
    r = out["read_only"]
    assert r["call"].startswith("ValueError: grads[1] is read-only"), r
    assert (r["a"], r["b"]) == ([3.0], [1.0])
    for case in ("resize", "pop_resize"):
        # The call holds two references to every array: NumPy's refcheck refuses either resize
        # (one would let pop().resize() through, which only the recheck would then catch).
        # Before: both resizes succeeded and the scale pass wrote the freed memory.
        r = out[case]
        assert r["callback"].startswith("ValueError: cannot resize"), (case, r)
        assert r["call"].startswith("ValueError: cannot resize"), (case, r)
        assert r["b"] == [1.0], case


def test_list_mutated_by_the_callback_in_process():
    # The same guarantee without a subprocess (safe now): the arrays checked are the ones scaled.
    a, b, c = np.full(3, 2.0), np.full(4, 2.0), np.full(5, 7.0)
    grads = [a, b]

    def coefficient(total):
        grads.append(c)
        grads.reverse()
        del grads[1]
        return 0.5

    total = _fastclip.norm_scale_(grads, 2.0, coefficient)
    assert total == math.sqrt(28.0)
    assert (a == 1.0).all() and (b == 1.0).all() and (c == 7.0).all()


# ---------------------------------------------------------------------------------------------
# Broadcast (stride-0) views: the distinct elements, weighted by the repeat count
# ---------------------------------------------------------------------------------------------

PS = [1.0, 2.0, 3.0, math.inf, 0.5]


def repeat_ref(distinct: np.ndarray, repeat: int, p: float) -> float:
    """The p-norm of a view naming each of ``distinct`` ``repeat`` times, in float64:
    ``(repeat * sum |d|^p)^(1/p)``, the max for p = inf."""
    n = ref_norm([distinct], p)
    return n if math.isinf(p) else n * float(repeat) ** (1.0 / p)


_HUGE = """
    import json, math
    import numpy as np
    import fastclip as fc
    from fastclip import _fastclip

    as_strided = np.lib.stride_tricks.as_strided
    base = np.array([3.0, -4.0, 12.0])
    ro = np.broadcast_to(base, (2**40, 3))             # read-only, (0, 8) strides
    flat = as_strided(base[:1], (2**40,), (0,))         # writeable, one element 2**40 times
    out = {"norms": {}, "per_tensor": {}}
    for p in (1.0, 2.0, 3.0, math.inf, 0.5):
        out["norms"][str(p)] = [fc.get_total_norm(ro, p), fc.get_total_norm(flat, p)]
        per, total = _fastclip.norms([np.ones(5), ro, np.float32([2.0])], p, True)
        out["per_tensor"][str(p)] = [per, total]

    # in place on a writeable broadcast view: each distinct element once
    w = np.array([3.0, -4.0, 12.0])
    view = as_strided(w, (2**20, 2**20, 3), (0, 0, 8))
    out["clip_total"] = fc.clip_grad_norm_([view], 1.0)
    out["clipped"] = w.tolist()
    v = np.array([3.0, -4.0, 12.0])
    fc.clip_grad_value_(as_strided(v, (2**40, 3), (0, 8)), 5.0)
    out["clamped"] = v.tolist()
    print(json.dumps(out))
"""


def test_huge_broadcast_views():
    # Before: the strided gather allocated the logical size (2**40 elements): the process aborted.
    out = json.loads(assert_ran(run_script(_HUGE)))
    base = np.array([3.0, -4.0, 12.0])
    for p in PS:
        ro, flat = out["norms"][str(p)]
        assert_rel(ro, repeat_ref(base, 2**40, p))
        assert_rel(flat, repeat_ref(base[:1], 2**40, p))
        per, total = out["per_tensor"][str(p)]
        assert_rel(per[0], ref_norm([np.ones(5)], p))
        assert_rel(per[1], repeat_ref(base, 2**40, p))
        assert_rel(per[2], 2.0)
        if math.isinf(p):
            assert total == 12.0
        else:
            want = (5.0 + 2**40 * float(np.sum(np.abs(base) ** p)) + 2.0**p) ** (1.0 / p)
            assert_rel(total, want, 1e-11)
    total = out["clip_total"]
    assert_rel(total, 13.0 * 2**20)
    assert same_bits(np.array(out["clipped"]), scaled_ref(base, torch_coef(1.0, total)))
    assert out["clamped"] == [3.0, -4.0, 5.0]


def _broadcast_cases(rng, dtype):
    """(view, its distinct elements as float64, repeat count): multi-dimensional mixes of
    stride-0 axes with contiguous, strided, negative and length-1 axes."""
    x = (rng.standard_normal((6, 8)) * 3).astype(dtype)
    it = x.itemsize
    cases = [
        (np.broadcast_to(x[0], (7, 8)), x[0], 7),
        (np.broadcast_to(x[:, :1], (6, 5)), x[:, 0], 5),
        (np.broadcast_to(x[::2, ::-3], (4, 3, 3)), x[::2, ::-3], 4),
        (np.broadcast_to(x[1:2], (3, 1, 2, 8)), x[1], 6),
        (as_strided(x, (6, 9, 8), (x.strides[0], 0, it)), x, 9),
        (as_strided(x, (4, 6, 5, 8), (0, x.strides[0], 0, it)), x, 20),
        (as_strided(x[:, ::-1], (6, 3, 8), (x.strides[0], 0, -it)), x, 3),
        (as_strided(x[2:, 1::3], (2, 4, 1, 3), (0, 8 * it, 0, 3 * it)), x[2:, 1::3], 2),
        (np.broadcast_to(x[3, 3], (70_000,)), x[3, 3:4], 70_000),
    ]
    return [(v, np.asarray(d, np.float64), r) for v, d, r in cases]


@pytest.mark.parametrize("dtype", [np.float16, BF16, np.float32, np.float64], ids=dtype_id)
@pytest.mark.parametrize("p", PS)
def test_broadcast_mixes_match_a_float64_reference(rng, dtype, p):
    cases = _broadcast_cases(rng, dtype)
    views = [v for v, _, _ in cases]
    per, total = _fastclip.norms(views, p, True)
    for (v, d, r), got in zip(cases, per):
        assert_rel(got, repeat_ref(d, r, p), 1e-11)
        assert_rel(got, ref_norm([np.ascontiguousarray(v)], p), 1e-11)  # the materialized view
    assert_rel(total, ref_norm([np.ascontiguousarray(v) for v in views], p), 1e-11)
    # with ordinary arrays around them, in any order: the same per-tensor norms
    plain = [(rng.standard_normal(n) * 2).astype(dtype) for n in (3, 40_000)]
    mixed = [plain[0], *views[:4], plain[1], *views[4:]]
    per2, total2 = _fastclip.norms(mixed, p, True)
    assert per2[1:5] == per[:4] and per2[6:] == per[4:]
    assert_rel(total2, ref_norm([np.ascontiguousarray(v) for v in mixed], p), 1e-11)
    assert_rel(fc.get_total_norm(mixed, p), total2, 1e-15)


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64], ids=dtype_id)
def test_writeable_broadcast_views_are_scaled_and_clamped_once(rng, dtype):
    x = (rng.standard_normal((5, 8)) * 3).astype(dtype)
    before = x.copy()
    it = x.itemsize
    def views_of(a):
        return [as_strided(a[0], (3, 8), (0, it)), as_strided(a[1:3, ::2], (3, 2, 4), (0, 8 * it, 2 * it))]

    total = fc.clip_grad_norm_(views_of(x), 1.0)
    assert_rel(total, ref_norm([np.ascontiguousarray(v) for v in views_of(before)], 2))
    coef = torch_coef(1.0, total)
    assert same_bits(x[0], scaled_ref(before[0], coef))
    assert same_bits(x[1:3, ::2], scaled_ref(before[1:3, ::2], coef))
    assert same_bits(x[1:3, 1::2], before[1:3, 1::2])
    assert same_bits(x[3:], before[3:])
    x = before.copy()
    fc.clip_grad_value_(views_of(x), 0.5)
    assert same_bits(x[0], np.clip(before[0], dtype(-0.5), dtype(0.5)))
    assert same_bits(x[1:3, ::2], np.clip(before[1:3, ::2], dtype(-0.5), dtype(0.5)))
    assert same_bits(x[1:3, 1::2], before[1:3, 1::2])


@st.composite
def _stride0_views(draw):
    """A random C-ordered array, a function making from any array of its shape and layout a view
    that mixes stride-0 axes (anywhere, any length) with its own axes sliced with random (also
    negative) steps, and that view's distinct elements and repeat count, computed independently."""
    dtype = draw(st.sampled_from([np.float16, np.float32, np.float64]))
    shape = draw(st.lists(st.integers(1, 5), min_size=1, max_size=3))
    seed = draw(st.integers(0, 2**32 - 1))
    x = (np.random.default_rng(seed).standard_normal(shape) * 4).astype(dtype)
    slices = tuple(slice(None, None, draw(st.sampled_from([1, 2, -1, -2]))) for _ in shape)
    v = x[slices]
    new_shape, new_strides, repeat = [], [], 1
    for axis in range(v.ndim + 1):
        for _ in range(draw(st.integers(0, 2 if axis < v.ndim else 1))):
            n = draw(st.integers(1, 4))
            new_shape.append(n)
            new_strides.append(0)
            repeat *= n
        if axis < v.ndim:
            new_shape.append(v.shape[axis])
            new_strides.append(v.strides[axis])

    def make(a):
        return as_strided(a[slices], tuple(new_shape), tuple(new_strides))

    return x, make, v.copy(), repeat


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_stride0_views(), st.sampled_from(PS))
def test_stride0_views_property(case, p):
    x, make, distinct, repeat = case
    view = make(x)
    materialized = np.ascontiguousarray(view)
    per, total = _fastclip.norms([view, materialized], p, True)
    assert_rel(per[0], repeat_ref(np.asarray(distinct, np.float64), repeat, p), 1e-11)
    assert_rel(per[0], per[1], 1e-11)
    assert_rel(total, ref_norm([materialized, materialized], p), 1e-11)
    # in place: every distinct element once, nothing else of the array touched
    y = x.copy()
    fc.clip_grads_with_norm_([make(y)], 1.0, 4.0)
    want = scaled_ref(x, torch_coef(1.0, 4.0))
    mark = np.zeros_like(x)  # the same layout (and itemsize) as x: the view's strides fit it
    make(mark)[...] = 1
    inside = mark != 0
    assert same_bits(y[inside], want[inside])
    assert same_bits(y[~inside], x[~inside])


def test_impossible_copy_is_a_memory_error():
    # A sliding-window view (nonzero strides that overlap) of 2**48 elements: its copy cannot
    # be allocated on any machine. Before: the allocation failure aborted the process.
    proc = run_script(
        """
        import numpy as np
        import fastclip as fc
        base = np.ones(3 * 2**16)
        before = base.copy()
        win = np.lib.stride_tricks.as_strided(base, (2**16, 2**16, 2**16), (8, 8, 8))
        for call in (lambda: fc.get_total_norm([np.ones(3), win]),
                     lambda: fc.clip_grad_norm_([np.ones(3), win], 1.0),
                     lambda: fc.clip_grad_value_([np.ones(3), win], 0.5)):
            try:
                call()
                print("no error")
            except MemoryError as e:
                print("MemoryError:", e)
        print("unchanged", bool((base == before).all()))
        """
    )
    out = assert_ran(proc).splitlines()
    assert len(out) == 4, out
    for line in out[:3]:
        assert line.startswith("MemoryError: grads[1] is a strided view whose contiguous copy"), line
        assert "281474976710656 float64 elements" in line
    assert out[3] == "unchanged True"


def test_optimizer_refuses_a_written_array_that_names_an_element_twice():
    p = np.zeros(3)
    shared = as_strided(p, (4, 3), (0, 8))  # each element of p four times
    g = np.arange(12.0).reshape(4, 3)
    with pytest.raises(ValueError, match=r"params\[0\] names some of its elements more than once"):
        _fastclip.sgd_([shared], [g], 0.1)
    assert (p == 0).all()
    window = as_strided(np.zeros(6), (4, 3), (8, 8))
    with pytest.raises(ValueError, match=r"velocities\[0\] names some of its elements"):
        _fastclip.momentum_([np.zeros((4, 3))], [g], [window], 0.1, 0.9)
    # a broadcast gradient is only read: fine
    p = np.ones((4, 3))
    row = np.array([1.0, 2.0, 3.0])
    _fastclip.sgd_([p], [np.broadcast_to(row, (4, 3))], 0.5)
    assert np.array_equal(p, np.ones((4, 3)) - 0.5 * np.broadcast_to(row, (4, 3)))


# ---------------------------------------------------------------------------------------------
# Optimizer updates pair the i-th elements of arrays of different layouts
# ---------------------------------------------------------------------------------------------

_LAYOUTS = {
    "C": lambda a: np.ascontiguousarray(a),
    "F": lambda a: np.asfortranarray(a),
    "strided": lambda a: np.repeat(a, 2, axis=1)[:, ::2],
    "negative": lambda a: np.ascontiguousarray(a[::-1])[::-1],
}


@pytest.mark.parametrize("grad_layout", list(_LAYOUTS))
@pytest.mark.parametrize("param_layout", list(_LAYOUTS))
def test_optimizer_pairs_elements_across_layouts(rng, param_layout, grad_layout):
    # Before: an F-ordered parameter with a C-ordered gradient (both "contiguous") was updated
    # in memory order, pairing p[i, j] with g[j, i]-ish elements.
    shape = (5, 7)
    p0 = rng.standard_normal(shape)
    g0 = rng.standard_normal(shape)
    m0, v0 = rng.standard_normal(shape), rng.random(shape)

    def lay(a, how):
        out = _LAYOUTS[how](a.copy())
        assert np.array_equal(out, a)
        return out

    want = [p0.copy(), m0.copy(), v0.copy()]  # every array C-contiguous: the reference layout
    _fastclip.adam_([want[0]], [g0.copy()], [want[1]], [want[2]], 1e-2, 0.9, 0.999, 1e-8, 0.9, 0.999, 0.01)
    p, m, v = lay(p0, param_layout), lay(m0, grad_layout), lay(v0, "F")
    _fastclip.adam_([p], [lay(g0, grad_layout)], [m], [v], 1e-2, 0.9, 0.999, 1e-8, 0.9, 0.999, 0.01)
    for got, w in zip((p, m, v), want):
        assert same_bits(np.ascontiguousarray(got), w)
    p, want = lay(p0, param_layout), p0.copy()
    _fastclip.sgd_([p], [lay(g0, grad_layout)], 0.5, 0.1)
    _fastclip.sgd_([want], [g0.copy()], 0.5, 0.1)
    assert same_bits(np.ascontiguousarray(p), want)
    assert np.allclose(p, p0 - 0.5 * (g0 + 0.1 * p0), rtol=1e-14, atol=0)


# ---------------------------------------------------------------------------------------------
# Messages, panics, a pool that cannot start
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", ["float16", "float32", "float64"])
def test_messages_name_dtypes_as_numpy_does(dtype):
    itemsize = np.dtype(dtype).itemsize
    buf = bytearray(itemsize * 6 + 1)
    bad = np.frombuffer(buf, dtype=dtype, offset=1, count=6)
    assert not bad.flags.aligned
    calls = [
        lambda: _fastclip.norms([bad]),
        lambda: _fastclip.scale_([bad], 0.5),
        lambda: _fastclip.clamp_([bad], -1.0, 1.0),
        lambda: _fastclip.norm_scale_([bad], 2.0, lambda t: 1.0),
    ]
    if dtype != "float16":
        calls.append(lambda: _fastclip.sgd_([bad], [np.zeros(6, dtype)], 0.1))
        calls.append(lambda: _fastclip.sgd_([np.zeros(6, dtype)], [bad], 0.1))
    for call in calls:
        with pytest.raises(ValueError, match=rf"\[0\] is not aligned for {dtype};") as e:
            call()
        assert not any(w in str(e.value) for w in ("F16", "F32", "F64", "BF16"))
    with pytest.raises(TypeError, match=r"params\[0\] has dtype float16; the optimizers"):
        _fastclip.sgd_([np.zeros(3, np.float16)], [np.zeros(3, np.float16)], 0.1)
    with pytest.raises(TypeError, match=r"grads\[0\] has dtype float32 but params\[0\] has dtype float64"):
        _fastclip.sgd_([np.zeros(3)], [np.zeros(3, np.float32)], 0.1)


@pytest.mark.parametrize("place", ["attached", "detached", "worker"])
def test_a_rust_panic_is_a_runtime_error(place):
    with pytest.raises(RuntimeError, match="fastclip internal error: test panic") as e:
        _fastclip._test_panic(place)
    assert isinstance(e.value, Exception)  # PanicException is a BaseException
    # and everything still works afterwards, on the same pool
    g = [np.ones(1 << 19, np.float32)]
    assert fc.get_total_norm(g) == 2.0**9.5
    assert fc.clip_grad_norm_(g, 1.0) == 2.0**9.5
    with pytest.raises(ValueError, match="place must be"):
        _fastclip._test_panic("nowhere")


def test_a_pool_that_cannot_start_runs_on_the_calling_thread():
    # Under an address-space limit no thread stack can be mapped. Before: rayon's global pool
    # failed to build and panicked (PanicException).
    proc = run_script(
        """
        import math, resource
        import numpy as np
        import fastclip as fc

        g = [np.arange(1 << 20, dtype=np.float64) % 7 - 3 for _ in range(2)]
        want = math.sqrt(math.fsum(float(v) ** 2 for a in g for v in a))
        with open("/proc/self/status") as f:
            vm = next(int(line.split()[1]) for line in f if line.startswith("VmSize:")) * 1024
        resource.setrlimit(resource.RLIMIT_AS, (vm + (1 << 20), resource.RLIM_INFINITY))
        total = fc.clip_grad_norm_(g, 1.0)
        again = fc.get_total_norm(g)
        print(abs(total - want) <= 1e-12 * want, abs(again - 1.0) < 1e-5)
        """,
        env={"RAYON_NUM_THREADS": "4"},
    )
    assert assert_ran(proc).split() == ["True", "True"]
