"""DLPack producers on the CPU: a tiny fake producer (always runs) and PyTorch (skipped without torch).

References are independent of fastclip: float64 NumPy, and torch's own ``torch.nn.utils`` functions
run on a cloned model.
"""

from __future__ import annotations

import math
from typing import Any

import fastclip as fc
import ml_dtypes
import numpy as np
import pytest
from refs import DLPackProducer as Producer


def _ref_norm(arrays: list[np.ndarray], p: float) -> float:
    flat = np.concatenate([np.asarray(a, dtype=np.float64).ravel() for a in arrays])
    if math.isinf(p):
        return float(np.max(np.abs(flat))) if flat.size else 0.0
    return float(np.sum(np.abs(flat) ** p) ** (1.0 / p))


# ---------------------------------------------------------------------------------------------
# Fake producer: runs everywhere.


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize("p", [1.0, 2.0, math.inf])
def test_fake_producer_clipped_in_place(dtype: Any, p: float) -> None:
    rng = np.random.default_rng(0)
    arrays = [rng.standard_normal(s).astype(dtype) for s in [(7, 5), (11,), (3, 4, 2)]]
    want_total = _ref_norm(arrays, p)
    coef = min(1.0, 0.5 / (want_total + 1e-6))
    want = [(a.astype(np.float64) * coef) for a in arrays]
    total = fc.clip_grad_norm_([Producer(a) for a in arrays], 0.5, norm_type=p)
    assert total == pytest.approx(want_total, rel=1e-6)
    tol = {np.float16: 2e-3, np.float32: 2e-6, np.float64: 1e-12}[dtype]
    for a, w in zip(arrays, want):
        assert a.dtype == dtype
        np.testing.assert_allclose(a.astype(np.float64), w, rtol=tol, atol=tol * 1e-3)


def test_fake_producer_non_contiguous_views() -> None:
    base = np.arange(1.0, 25.0).reshape(4, 6)
    keep = base.copy()
    t, sl = base.T, base[1:3, ::2]
    want_total = _ref_norm([sl], 2.0)
    total = fc.clip_grad_norm_([Producer(sl)], 1.0)
    assert total == pytest.approx(want_total, rel=1e-12)
    expect = keep.copy()
    expect[1:3, ::2] *= 1.0 / (want_total + 1e-6)
    np.testing.assert_allclose(base, expect, rtol=1e-12)  # only the view's elements changed
    fc.clip_grad_value_(Producer(t), 2.0)
    np.testing.assert_array_equal(base, np.minimum(expect, 2.0))


def test_read_only_producer_rejected_in_place_but_measured() -> None:
    a = np.array([3.0, 4.0])
    a.flags.writeable = False
    w = np.array([1.0, 1.0])
    items = [Producer(w), Producer(a)]
    for call in (
        lambda: fc.clip_grad_norm_(items, 1.0),
        lambda: fc.clip_grad_value_(items, 0.5),
        lambda: fc.clip_grads_with_norm_(items, 1.0, 10.0),
    ):
        with pytest.raises(ValueError, match=r"grads\[1\] is read-only"):
            call()
    np.testing.assert_array_equal(a, [3.0, 4.0])
    np.testing.assert_array_equal(w, [1.0, 1.0])
    assert fc.get_total_norm(items) == pytest.approx(math.sqrt(27.0))
    assert fc.get_total_norm(Producer(a), norm_type="inf") == 4.0


def test_producer_whose_dtype_numpy_cannot_import() -> None:
    # NumPy cannot export ml_dtypes.bfloat16 through DLPack: the producer fails, fastclip says which item.
    a = np.ones(3, dtype=ml_dtypes.bfloat16)
    with pytest.raises(TypeError, match=r"grads\[1\] cannot be viewed as a NumPy array through DLPack"):
        fc.get_total_norm([np.ones(2), Producer(a)])


def test_producer_with_unsupported_dtype() -> None:
    with pytest.raises(TypeError, match=r"grads\[0\] has dtype int32"):
        fc.clip_grad_norm_([Producer(np.ones(3, np.int32))], 1.0)


def test_producer_nan_and_inf_behave_as_for_arrays() -> None:
    a = np.array([np.inf, 1.0])
    assert fc.clip_grad_norm_(Producer(a), 1.0) == math.inf
    assert math.isnan(a[0]) and a[1] == 0.0  # torch: inf * 0 = nan, 1 * 0 = 0
    b = np.array([np.nan, 1.0])
    assert math.isnan(fc.clip_grad_norm_([Producer(b)], 1.0))
    with pytest.raises(RuntimeError, match="non-finite"):
        fc.clip_grad_norm_([Producer(np.array([np.nan]))], 1.0, error_if_nonfinite=True)


# ---------------------------------------------------------------------------------------------
# PyTorch on the CPU.


def _import_torch() -> Any:
    """torch, or a skip: absent, or installed but unusable (e.g. a CUDA wheel missing its libraries)."""
    try:
        import torch
    except Exception as e:
        pytest.skip(f"torch is not usable here: {type(e).__name__}: {e}")
    return torch


@pytest.fixture(scope="module")
def torch() -> Any:
    return _import_torch()


def _model(torch: Any, dtype: Any = None) -> Any:
    """A small model after one backward pass; the same seed gives the same model and grads (a
    reference copy for torch's own functions is built the same way: deepcopy drops ``.grad``)."""
    torch.manual_seed(0)
    m = torch.nn.Sequential(
        torch.nn.Linear(13, 32),
        torch.nn.Tanh(),
        torch.nn.Linear(32, 7),
        torch.nn.Linear(5, 5),  # never used: its grads stay None
    )
    if dtype is not None:
        m = m.to(dtype)
    x = torch.randn(9, 13, dtype=dtype or torch.float32)
    (m[:3](x) ** 2).sum().mul(3.0).backward()
    return m


def _pair(torch: Any, dtype: Any = None) -> tuple[Any, Any]:
    mine, ref = _model(torch, dtype), _model(torch, dtype)
    for a, b in zip(mine.parameters(), ref.parameters()):
        assert (a.grad is None) == (b.grad is None)
        if a.grad is not None:
            assert torch.equal(a.grad, b.grad) and a.grad.data_ptr() != b.grad.data_ptr()
    return mine, ref


@pytest.mark.parametrize("p", [1.0, 2.0, math.inf])
@pytest.mark.parametrize("max_norm", [0.1, 1e6])
def test_torch_model_matches_torch_clip_grad_norm(torch: Any, p: float, max_norm: float) -> None:
    mine, ref = _pair(torch)
    ptrs = [q.grad.data_ptr() for q in mine.parameters() if q.grad is not None]
    assert mine[3].weight.grad is None
    total = fc.clip_grad_norm_(mine.parameters(), max_norm, norm_type=p)  # a generator, as in torch
    want = float(torch.nn.utils.clip_grad_norm_(ref.parameters(), max_norm, norm_type=p))
    assert total == pytest.approx(want, rel=1e-5)
    assert [q.grad.data_ptr() for q in mine.parameters() if q.grad is not None] == ptrs  # no copy
    for a, b in zip(mine.parameters(), ref.parameters()):
        if b.grad is None:
            assert a.grad is None
        else:
            torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-7)


def test_torch_get_total_norm_and_clip_grads_with_norm(torch: Any) -> None:
    mine, ref = _pair(torch)
    grads = [q.grad for q in ref.parameters() if q.grad is not None]
    for p in (1.0, 2.0, 3.0, math.inf):
        want = float(torch.nn.utils.get_total_norm(grads, norm_type=p))
        assert fc.get_total_norm(list(mine.parameters()), norm_type=p) == pytest.approx(want, rel=1e-5)
    fc.clip_grads_with_norm_(mine.parameters(), 0.3, 12.5)
    torch.nn.utils.clip_grads_with_norm_(ref.parameters(), 0.3, torch.tensor(12.5))
    for a, b in zip(mine.parameters(), ref.parameters()):
        if b.grad is not None:
            torch.testing.assert_close(a.grad, b.grad, rtol=1e-6, atol=0)


def test_torch_clip_grad_value_matches_torch(torch: Any) -> None:
    mine, ref = _pair(torch)
    fc.clip_grad_value_(mine.parameters(), 0.05)
    torch.nn.utils.clip_grad_value_(ref.parameters(), 0.05)
    for a, b in zip(mine.parameters(), ref.parameters()):
        if b.grad is not None:
            torch.testing.assert_close(a.grad, b.grad, rtol=0, atol=0)


def test_plain_tensors_are_their_own_buffers(torch: Any) -> None:
    # A plain tensor has a .grad attribute (None) but is itself the buffer.
    a = torch.tensor([3.0, 0.0])
    b = torch.tensor([[4.0]], dtype=torch.float64)
    assert a.grad is None and not a.requires_grad
    ptr = a.data_ptr()
    total = fc.clip_grad_norm_([a, b], 1.0)
    assert total == pytest.approx(5.0)
    assert a.data_ptr() == ptr
    np.testing.assert_allclose(a.numpy(), [3.0 / (5 + 1e-6), 0.0], rtol=1e-6)
    np.testing.assert_allclose(b.numpy(), [[4.0 / (5 + 1e-6)]], rtol=1e-12)
    # one tensor on its own (not iterated element by element)
    c = torch.tensor([6.0, 8.0])
    assert fc.clip_grad_norm_(c, 5.0) == pytest.approx(10.0)
    np.testing.assert_allclose(c.numpy(), [3.0, 4.0], rtol=1e-6)


def test_tensors_that_require_grad_stand_for_their_grad(torch: Any) -> None:
    w = torch.nn.Parameter(torch.tensor([100.0, 100.0]))
    leaf = torch.tensor([1.0, 1.0], requires_grad=True)  # a leaf that requires grad but has no grad yet
    assert fc.get_total_norm([w, leaf]) == 0.0  # no grads: nothing to measure
    (w * torch.tensor([3.0, 4.0])).sum().backward()
    assert fc.clip_grad_norm_([w, leaf], 1.0) == pytest.approx(5.0)
    np.testing.assert_allclose(w.grad.numpy(), [0.6, 0.8], rtol=1e-6)
    np.testing.assert_array_equal(w.detach().numpy(), [100.0, 100.0])  # the parameter itself untouched
    # a parameter frozen after backward still stands for the grad it holds
    w.requires_grad_(False)
    assert fc.get_total_norm(w) == pytest.approx(1.0, rel=1e-6)


@pytest.mark.filterwarnings("ignore:Using backward\\(\\) with create_graph=True")
def test_grad_that_itself_requires_grad_is_exported_detached(torch: Any) -> None:
    t = torch.tensor([1.5, 2.0], requires_grad=True)
    (t**2).sum().backward(create_graph=True)
    assert t.grad.requires_grad  # np.from_dlpack would refuse it without .detach()
    ptr = t.grad.data_ptr()
    assert fc.clip_grad_norm_([t], 1.0) == pytest.approx(5.0)
    assert t.grad.data_ptr() == ptr
    np.testing.assert_allclose(t.grad.detach().numpy(), [0.6, 0.8], rtol=1e-6)


def test_non_contiguous_torch_tensors(torch: Any) -> None:
    base = torch.arange(1.0, 25.0).reshape(4, 6)
    keep = base.clone()
    tt = base.t()
    sl = base[1:3, ::2]
    assert not tt.is_contiguous() and not sl.is_contiguous()
    want = math.sqrt(float((sl.double() ** 2).sum()))
    assert fc.get_total_norm(tt) == pytest.approx(math.sqrt(float((keep.double() ** 2).sum())), rel=1e-12)
    assert fc.clip_grad_norm_([sl], 1.0) == pytest.approx(want, rel=1e-7)
    expect = keep.clone()
    expect[1:3, ::2] *= torch.tensor(1.0 / (want + 1e-6), dtype=torch.float32)
    torch.testing.assert_close(base, expect, rtol=0, atol=0)
    fc.clip_grad_value_(tt, 3.0)
    torch.testing.assert_close(base, expect.clamp(-3.0, 3.0), rtol=0, atol=0)


@pytest.mark.parametrize("name", ["bfloat16", "float16"])
def test_torch_half_precision_in_place(torch: Any, name: str) -> None:
    dtype = getattr(torch, name)
    torch.manual_seed(1)
    grads = [torch.randn(33, 17).to(dtype), torch.randn(5).to(dtype), torch.randn(8, 3).to(dtype).t()]
    ptrs = [g.data_ptr() for g in grads]
    before = [g.clone() for g in grads]
    want_total = math.sqrt(sum(float((g.double() ** 2).sum()) for g in before))
    total = fc.clip_grad_norm_(grads, 0.5)
    assert total == pytest.approx(want_total, rel=1e-12)  # f64 accumulation of the exact values
    coef = torch.tensor(0.5 / (want_total + 1e-6), dtype=torch.float32)
    for g, b, ptr in zip(grads, before, ptrs):
        assert g.dtype == dtype and g.data_ptr() == ptr
        # each element rounded once from its float32 product (nearest-even), as torch rounds
        torch.testing.assert_close(g, (b.float() * coef).to(dtype), rtol=0, atol=0)
    fc.clip_grad_value_(grads, 0.01)
    for g in grads:
        assert float(g.float().abs().max()) <= float(torch.tensor(0.01, dtype=dtype).float())


def test_torch_bfloat16_parameters_match_torch(torch: Any) -> None:
    mine, ref = _pair(torch, torch.bfloat16)
    total = fc.clip_grad_norm_(mine.parameters(), 0.25)
    want = float(torch.nn.utils.clip_grad_norm_(ref.parameters(), 0.25))
    assert total == pytest.approx(want, rel=1e-2)  # torch returns its norm in bfloat16
    for a, b in zip(mine.parameters(), ref.parameters()):
        if b.grad is not None:
            torch.testing.assert_close(a.grad.float(), b.grad.float(), rtol=1e-2, atol=1e-4)


def test_torch_errors_leave_every_buffer_unchanged(torch: Any) -> None:
    good = torch.tensor([10.0, 10.0])
    with pytest.raises(TypeError, match=r"grads\[1\] has dtype int64"):
        fc.clip_grad_norm_([good, torch.tensor([1, 2])], 1.0)
    # the same memory twice (a tensor and a view of it) would be scaled twice
    with pytest.raises(ValueError, match=r"grads\[0\] and grads\[1\] share memory"):
        fc.clip_grad_norm_([good, good[1:]], 1.0)
    with pytest.raises(ValueError, match="max_norm"):
        fc.clip_grad_norm_([good], -1.0)
    np.testing.assert_array_equal(good.numpy(), [10.0, 10.0])


def test_torch_and_numpy_and_fake_producers_together(torch: Any) -> None:
    t = torch.tensor([1.0, 2.0])
    a = np.array([2.0], dtype=np.float64)
    f = Producer(np.array([4.0], dtype=np.float16))
    assert fc.clip_grad_norm_([t, a, f], 1.0) == pytest.approx(5.0)
    np.testing.assert_allclose(t.numpy(), [0.2, 0.4], rtol=1e-6)
    np.testing.assert_allclose(a, [0.4], rtol=1e-6)
    np.testing.assert_allclose(f.arr, [0.8], rtol=1e-3)
