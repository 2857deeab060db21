"""fastclip._buffers.collect: what counts as a gradient, positions, devices (no torch, no GPU needed)."""

from __future__ import annotations

import math
import subprocess
import sys
from typing import Any

import fastclip as fc
import numpy as np
import pytest
from fastclip import _buffers, _fastclip
from fastclip._buffers import collect
from refs import DLPackProducer


class Param:
    """A parameter object in the torch sense: stands for its ``.grad``."""

    def __init__(self, grad: Any) -> None:
        self.grad = grad


class FakeDevice:
    """A DLPack producer on another device; exporting it must never be tried by the CPU path."""

    def __init__(self, device_type: int, device_id: int = 0) -> None:
        self.device = (device_type, device_id)

    def __dlpack_device__(self) -> tuple[int, int]:
        return self.device

    def __dlpack__(self, **kwargs: Any) -> Any:
        raise AssertionError("a non-CPU buffer must not be exported by the CPU path")


def test_single_array_and_plain_list_are_used_as_they_are() -> None:
    a, b = np.ones(3), np.zeros(2, np.float32)
    c = collect(a)
    assert c.arrays[0] is a and c.positions is None and c.device == "cpu" and c.ops is _fastclip
    lst = [a, b]
    c = collect(lst)
    assert c.arrays is lst and c.positions is None


def test_generator_is_read_exactly_once() -> None:
    reads = []

    def gen():
        for i in range(3):
            reads.append(i)
            yield np.full(2, float(i + 1))

    g = gen()
    c = collect(g)
    assert reads == [0, 1, 2] and len(c) == 3
    assert [float(a[0]) for a in c.arrays] == [1.0, 2.0, 3.0]
    assert list(g) == []  # exhausted: nothing was re-read


def test_generator_clip_grad_norm_uses_one_pass_for_both_norm_and_scale() -> None:
    arrays = [np.array([3.0]), np.array([4.0])]
    total = fc.clip_grad_norm_((a for a in arrays), 1.0)
    assert total == 5.0
    np.testing.assert_allclose([arrays[0][0], arrays[1][0]], [0.6, 0.8], rtol=1e-6)


def test_objects_with_grad_stand_for_their_grad_and_none_is_skipped() -> None:
    g0, g2 = np.array([3.0]), np.array([4.0, 0.0])
    c = collect([Param(g0), Param(None), Param(g2)])
    assert c.arrays[0] is g0 and c.arrays[1] is g2
    assert c.positions == [0, 2]
    # a single object with .grad
    c = collect(Param(g0))
    assert c.arrays == [g0] and c.positions is None
    assert len(collect(Param(None))) == 0
    assert len(collect([Param(None), Param(None)])) == 0


def test_leading_none_grads_keep_positions_in_errors() -> None:
    ro = np.ones(3)
    ro.flags.writeable = False
    ok = np.full(2, 5.0)
    before = ok.copy()
    items = [Param(None), Param(ok), Param(None), Param(ro)]
    with pytest.raises(ValueError, match=r"grads\[3\] is read-only"):
        fc.clip_grad_norm_(items, 1.0)
    np.testing.assert_array_equal(ok, before)  # nothing modified
    assert fc.get_total_norm(items) == pytest.approx(np.sqrt(3 + 50))


def test_bad_dtype_error_names_the_callers_position() -> None:
    with pytest.raises(TypeError, match=r"grads\[2\] has dtype int64"):
        fc.get_total_norm([Param(None), np.ones(2), np.arange(3)])


def test_items_that_are_not_buffers() -> None:
    with pytest.raises(TypeError, match=r"grads\[1\] must be a numpy.ndarray, a DLPack tensor or have a .grad"):
        collect([np.ones(1), "abc"])
    with pytest.raises(TypeError, match=r"grads\[0\] must be .* not list"):
        collect([Param([1.0, 2.0])])
    with pytest.raises(TypeError, match="must be an array or an iterable"):
        collect(3.0)
    with pytest.raises(TypeError, match="must be an array or an iterable"):
        collect("grads")


def test_dlpack_items_are_viewed_without_copy() -> None:
    a = np.arange(6.0).reshape(2, 3)
    c = collect([DLPackProducer(a), Param(DLPackProducer(a.T))])
    assert np.shares_memory(c.arrays[0], a) and np.shares_memory(c.arrays[1], a)
    assert c.arrays[1].strides == a.T.strides
    assert c.device == "cpu"


def test_mixed_cpu_and_cuda_is_a_value_error_before_cupy_is_imported(monkeypatch: pytest.MonkeyPatch) -> None:
    # Decision: every item is classified before any is converted, so mixing devices fails with a
    # ValueError even where CuPy is not installed (an ImportError would send users to pip for nothing).
    monkeypatch.setitem(sys.modules, "cupy", None)  # any `import cupy` would now raise ImportError
    a = np.ones(3)
    before = a.copy()
    items = [Param(None), FakeDevice(2), a, FakeDevice(2)]
    with pytest.raises(ValueError, match=r"grads\[2\] is on the CPU, grads\[1\] on a CUDA device"):
        collect(items)
    with pytest.raises(ValueError, match="mixes CPU and CUDA"):
        fc.clip_grad_norm_(items, 1.0)
    with pytest.raises(ValueError, match="mixes CPU and CUDA"):
        fc.clip_grad_value_([FakeDevice(13), Param(a)], 0.1)  # CUDA managed memory counts as CUDA
    np.testing.assert_array_equal(a, before)


def test_cuda_buffers_without_cupy_say_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "cupy", None)
    with pytest.raises(ImportError, match=r"pip install 'fastclip-rs\[cuda\]'.*cupy-cuda12x"):
        fc.clip_grad_norm_([FakeDevice(2), Param(FakeDevice(2))], 1.0)
    with pytest.raises(ImportError, match="CuPy"):
        fc.get_total_norm(FakeDevice(2))


def test_other_devices_are_rejected_with_their_name() -> None:
    with pytest.raises(ValueError, match=r"grads\[1\] lives on a ROCm device"):
        collect([np.ones(1), FakeDevice(10)])
    with pytest.raises(ValueError, match="DLPack device type 99"):
        collect([FakeDevice(99)])


def test_device_kind() -> None:
    assert _buffers.device_kind(np.ones(1)) == "cpu"
    assert _buffers.device_kind(FakeDevice(1)) == "cpu"
    assert _buffers.device_kind(FakeDevice(3)) == "cpu"  # pinned host memory
    assert _buffers.device_kind(FakeDevice(2)) == "cuda"
    assert _buffers.device_kind(FakeDevice(13)) == "cuda"


def test_cpu_users_never_import_cupy_or_the_cuda_module() -> None:
    code = (
        "import sys, numpy as np, fastclip as fc\n"
        "class P:\n"
        "    def __init__(s, a): s.a = a\n"
        "    def __dlpack__(s, **k): return s.a.__dlpack__(**k)\n"
        "    def __dlpack_device__(s): return s.a.__dlpack_device__()\n"
        "g = [np.ones(4), P(np.ones(3, np.float32))]\n"
        "fc.clip_grad_norm_(g, 1.0); fc.clip_grad_value_(g, 0.1); fc.get_total_norm(g)\n"
        "bad = [m for m in ('cupy', 'fastclip._cuda', 'torch') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


class JunkDevice:
    """A DLPack producer over a real array whose ``__dlpack_device__`` answers ``answer`` (or raises it)."""

    def __init__(self, answer: Any, arr: np.ndarray | None = None) -> None:
        self.answer = answer
        self.arr = np.ones(2) if arr is None else arr

    def __dlpack__(self, **kwargs: Any) -> Any:
        return self.arr.__dlpack__(**kwargs)

    def __dlpack_device__(self) -> Any:
        if isinstance(self.answer, BaseException):
            raise self.answer
        return self.answer


JUNK = {
    "list": [1, 0],
    "short": (1,),
    "long": (1, 0, 0),
    "str-type": ("cpu", 0),
    "float-type": (1.0, 0),
    "bool-type": (True, 0),
    "str-id": (1, "0"),
    "none": None,
    "raises": RuntimeError("no device"),
    "raises-attr": AttributeError("gone"),
    "cuda-without-id": (2, None),
}


@pytest.mark.parametrize("kind", list(JUNK))
def test_junk_dlpack_device_is_a_type_error_with_the_position(kind: str) -> None:
    ok = np.array([30.0, 40.0])
    items = [ok, Param(None), JunkDevice(JUNK[kind])]
    calls = [
        lambda: fc.get_total_norm(items),
        lambda: fc.clip_grad_norm_(items, 1.0),
        lambda: fc.clip_grads_with_norm_(items, 1.0, 50.0),
        lambda: fc.clip_grad_value_(items, 1.0),
    ]
    want = r"grads\[2\]\.__dlpack_device__\(\) must return a \(device_type, device_id\) tuple"
    for call in calls:
        with pytest.raises(TypeError, match=want):
            call()
    with pytest.raises(TypeError, match=r"params_grads\[1\]\.__dlpack_device__\(\)"):
        fc.ClipGradByNorm(1.0)([(None, ok), (None, JunkDevice(JUNK[kind]))])
    np.testing.assert_array_equal(ok, [30.0, 40.0])


def test_raising_dlpack_device_keeps_the_cause() -> None:
    err = RuntimeError("no device")
    with pytest.raises(TypeError, match="but it raised RuntimeError: no device") as e:
        collect([JunkDevice(err)])
    assert e.value.__cause__ is err


def test_good_dlpack_device_answers() -> None:
    import enum

    class DL(enum.IntEnum):
        CPU = 1

    a = np.array([3.0, 4.0])
    for answer in ((1, None), (np.int64(1), np.int32(0)), (DL.CPU, 0), (3, 0)):
        assert fc.get_total_norm(JunkDevice(answer, a)) == 5.0  # Paddle answers (kDLCPU, None)
    assert _buffers.dlpack_device(JunkDevice((DL.CPU, None), a)) == (1, None)


def test_a_producer_whose_export_raises_anything_is_a_type_error() -> None:
    class Broken(DLPackProducer):
        def __dlpack__(self, **kwargs: Any) -> Any:
            raise AttributeError("'NoneType' object has no attribute '_to_dlpack_versioned'")  # Paddle's

    with pytest.raises(TypeError, match=r"grads\[1\] cannot be viewed as a NumPy array through DLPack"):
        fc.get_total_norm([np.ones(1), Broken(np.ones(2))])


def test_restricted_buffers_refuse_what_they_do_not_allow() -> None:
    # what collect builds for a torch inference tensor or negative-bit view (those need torch: see
    # test_torch_interop.py), checked here on plain arrays through the same Collected.ops
    free, frozen, neg = np.array([3.0]), np.array([4.0]), np.array([-2.0])
    r = {
        id(frozen): _buffers._Restriction(False, "is frozen for this test"),
        id(neg): _buffers._Restriction(True, None),
    }
    c = _buffers.Collected([free, frozen, neg], [0, 2, 5], restricted=r)
    ops = c.ops
    assert ops is not _fastclip and ops.isa is _fastclip.isa  # everything else is the module's
    assert ops.norms(c.arrays, 2.0, True, "grads", c.positions)[1] == pytest.approx(math.sqrt(29.0))
    with pytest.raises(ValueError, match=r"grads\[2\] is frozen for this test"):
        ops.scale_(c.arrays, 0.5, "grads", c.positions)
    with pytest.raises(ValueError, match=r"grads\[2\] is frozen for this test"):
        ops.norm_scale_(c.arrays, 2.0, lambda t: 0.5, "grads", c.positions)
    with pytest.raises(ValueError, match=r"grads\[2\] is frozen"):
        ops.clamp_(c.arrays, -1.0, 1.0, "grads", c.positions)
    np.testing.assert_array_equal(np.concatenate(c.arrays), [3.0, 4.0, -2.0])
    c = _buffers.Collected([free, neg], [0, 5], restricted=r)
    with pytest.raises(ValueError, match=r"params_grads\[5\] is a torch negative-bit view.*asymmetric clamp"):
        c.ops.clamp_(c.arrays, -1.0, 0.5, "params_grads", c.positions)
    np.testing.assert_array_equal(np.concatenate(c.arrays), [3.0, -2.0])
    c.ops.clamp_(c.arrays, -1.0, 1.0, "grads", c.positions)  # symmetric: allowed
    c.ops.scale_(c.arrays, 0.5)
    np.testing.assert_array_equal(np.concatenate(c.arrays), [0.5, -0.5])
    assert _buffers.Collected([free], None).ops is _fastclip  # no restriction: the module itself
