"""Real Paddle tensors and parameters through fastclip, in place and zero copy, against Paddle's own
``paddle.nn.ClipGradBy*`` and ``paddle.nn.utils.clip_grad_*`` results on identical copies (the same
seed builds the same model and gradients). Skipped without paddle.

Run: ``PYTHONPATH=/opt/paddlesite .venv/bin/python -m pytest -q tests/test_paddle_interop.py``.
"""

from __future__ import annotations

import math
from typing import Any

import fastclip as fc
import ml_dtypes
import numpy as np
import pytest
from refs import ref_norm, same_bits, scaled_ref, torch_coef

paddle = pytest.importorskip("paddle")

ENTRY_POINTS = ["get_total_norm", "clip_grad_norm_", "clip_grads_with_norm_", "clip_grad_value_"]


def _np(t: Any) -> np.ndarray:
    """A copy of a Paddle tensor's values (bfloat16 through float32, exactly)."""
    if t.dtype == paddle.bfloat16:
        return t.astype("float32").numpy().astype(ml_dtypes.bfloat16)
    return t.numpy().copy()


def _model(freeze: bool) -> Any:
    """A small paddle.nn model after one backward pass; the same ``freeze`` gives the same model.
    ``freeze``: the first layer is frozen (``stop_gradient=True``: no grads), as in fine-tuning."""
    paddle.seed(0)
    m = paddle.nn.Sequential(paddle.nn.Linear(13, 32), paddle.nn.Tanh(), paddle.nn.Linear(32, 7),
                             paddle.nn.Linear(5, 5))  # fmt: skip
    if freeze:
        for p in m[0].parameters():
            p.stop_gradient = True
    x = paddle.randn([9, 13])
    (m[2](m[1](m[0](x))) ** 2).sum().multiply(paddle.to_tensor(3.0)).backward()
    return m


def test_paddle_model_as_this_version_builds_it() -> None:
    # what the rule relies on (fails loudly if a Paddle version changes it)
    m = _model(True)
    w = m[2].weight
    assert type(w).__name__ == "EagerParamBase" and w.stop_gradient is False and w.grad is not None
    assert w.grad.stop_gradient is False  # so Paddle refuses to export the grad itself:
    with pytest.raises(BufferError, match="requires gradients"):
        np.from_dlpack(w.grad)
    assert m[0].weight.grad is None and m[3].weight.grad is None


@pytest.mark.parametrize("freeze", [True, False])
@pytest.mark.parametrize("cls", ["ByValue", "ByNorm", "ByGlobalNorm"])
def test_param_grad_pairs_clip_in_place_like_paddle(cls: str, freeze: bool) -> None:
    mine, ref = _model(freeze), _model(freeze)
    pairs = [(p, p.grad) for p in mine.parameters()]
    rpairs = [(p, p.grad) for p in ref.parameters()]
    weights = [_np(p) for p, _ in pairs]
    ptrs = [(p.data_ptr(), None if g is None else g.data_ptr()) for p, g in pairs]
    make = {
        "ByValue": lambda m: m.ClipGradByValue(0.05),
        "ByNorm": lambda m: m.ClipGradByNorm(0.5),
        "ByGlobalNorm": lambda m: m.ClipGradByGlobalNorm(0.5),
    }[cls]
    out = make(fc)(pairs)
    want = make(paddle.nn)(rpairs)
    assert len(out) == len(want) == sum(g is not None for _, g in pairs)
    assert all(a is b for (_, a), (_, b) in zip(out, [(p, g) for p, g in pairs if g is not None]))
    assert [(p.data_ptr(), None if g is None else g.data_ptr()) for p, g in pairs] == ptrs  # zero copy
    for (_, g), (_, w) in zip(out, want):
        np.testing.assert_allclose(g.numpy(), w.numpy(), rtol=1e-6, atol=1e-7)
    for (p, _), w in zip(pairs, weights):
        assert same_bits(p.numpy(), w)


def _run_fc(entry: str, params: Any) -> Any:
    if entry == "get_total_norm":
        return fc.get_total_norm(params)
    if entry == "clip_grad_norm_":
        return fc.clip_grad_norm_(params, 0.5)
    if entry == "clip_grads_with_norm_":
        return fc.clip_grads_with_norm_(params, 0.5, 40.0)
    return fc.clip_grad_value_(params, 0.05)


def _run_paddle(entry: str, params: list[Any]) -> Any:
    grads = [p.grad for p in params if p.grad is not None]
    if entry == "get_total_norm":
        return ref_norm([g.numpy() for g in grads], 2.0)
    if entry == "clip_grad_norm_":
        return paddle.nn.utils.clip_grad_norm_(params, 0.5)
    if entry == "clip_grads_with_norm_":  # no Paddle equivalent: torch's formula on the grads
        coef = np.float32(torch_coef(0.5, 40.0))
        for g in grads:
            g.set_value(g.numpy() * coef)
        return None
    return paddle.nn.utils.clip_grad_value_(params, 0.05)


@pytest.mark.parametrize("freeze", [True, False])
@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_model_parameters_match_paddle_utils(entry: str, freeze: bool) -> None:
    mine, ref = _model(freeze), _model(freeze)
    params = list(mine.parameters())
    weights = [_np(p) for p in params]
    ptrs = [p.grad.data_ptr() for p in params if p.grad is not None]
    got = _run_fc(entry, mine.parameters())
    want = _run_paddle(entry, list(ref.parameters()))
    if want is None:
        assert got is None
    else:
        assert got == pytest.approx(float(want), rel=1e-6)
    assert [p.grad.data_ptr() for p in params if p.grad is not None] == ptrs
    for p, w in zip(params, weights):
        assert same_bits(p.numpy(), w), "a parameter's weights changed"
    for a, b in zip(params, ref.parameters()):
        assert (a.grad is None) == (b.grad is None)
        if a.grad is not None:
            np.testing.assert_allclose(a.grad.numpy(), b.grad.numpy(), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_tensor_with_a_grad_contributes_the_grad(entry: str) -> None:
    # Paddle's own tests pass tensors whose .grad is set; the old fastclip clipped the values
    mine = [paddle.to_tensor([30.0, 40.0]), paddle.to_tensor([30.0, 40.0], stop_gradient=False)]
    ref = [paddle.to_tensor([30.0, 40.0]), paddle.to_tensor([30.0, 40.0], stop_gradient=False)]
    for ts in (mine, ref):
        ts[0].grad = paddle.to_tensor([3.0, 4.0])  # set by hand, stop_gradient stays True
        (ts[1] * paddle.to_tensor([6.0, 8.0])).sum().backward()
    got = _run_fc(entry, mine)
    want = _run_paddle(entry, ref)
    if want is not None:
        assert got == pytest.approx(float(want), rel=1e-6)
    for t, r in zip(mine, ref):
        np.testing.assert_array_equal(t.numpy(), [30.0, 40.0])
        np.testing.assert_allclose(t.grad.numpy(), r.grad.numpy(), rtol=1e-6, atol=0)


@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_parameters_and_trainable_tensors_without_grad_contribute_nothing(entry: str) -> None:
    frozen = paddle.create_parameter([3], "float32", default_initializer=paddle.nn.initializer.Constant(9.0))
    frozen.stop_gradient = True
    live = paddle.create_parameter([3], "float32", default_initializer=paddle.nn.initializer.Constant(9.0))
    trainable = paddle.to_tensor([9.0, 9.0], stop_gradient=False)
    for t in (frozen, live, trainable):
        assert t.grad is None
    assert _run_fc(entry, [frozen, live, trainable]) in (None, 0.0)
    assert paddle.nn.utils.clip_grad_norm_([frozen, live, trainable], 1.0) == 0.0  # Paddle: nothing either
    for t in (frozen, live, trainable):
        np.testing.assert_array_equal(t.numpy(), 9.0)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32", "float64"])
def test_plain_tensors_are_clipped_in_place_zero_copy(dtype: str) -> None:
    rng = np.random.default_rng(1)
    vals = [rng.standard_normal(s) * 3 for s in [(7, 5), (11,)]]
    ts = [paddle.to_tensor(v.astype(np.float32)).astype(dtype) for v in vals]
    base = paddle.to_tensor(rng.standard_normal((4, 6)).astype(np.float32)).astype(dtype)
    ts.append(base.transpose([1, 0]))  # a strided view of base
    ptrs = [t.data_ptr() for t in ts]
    before = [_np(t) for t in ts]
    total = fc.clip_grad_norm_(ts, 0.5)
    want_total = ref_norm(before, 2.0)
    assert total == pytest.approx(want_total, rel=1e-12)
    coef = torch_coef(0.5, want_total)
    for t, b, ptr in zip(ts, before, ptrs):
        assert t.data_ptr() == ptr and t.dtype == getattr(paddle, dtype)
        tol = {"float16": 1e-3, "bfloat16": 8e-3, "float32": 1e-6, "float64": 1e-12}[dtype]
        np.testing.assert_allclose(_np(t).astype(np.float64), scaled_ref(b, coef).astype(np.float64), rtol=tol)
    np.testing.assert_array_equal(_np(base).T, _np(ts[2]))  # written through the view
    fc.clip_grad_value_(ts, 0.01)
    for t in ts:
        assert float(np.abs(_np(t).astype(np.float64)).max()) <= 0.0101


def test_half_precision_grads_of_a_model() -> None:
    for dtype in ("float16", "bfloat16"):
        x = paddle.to_tensor([1.0, -2.0, 3.0], dtype=dtype, stop_gradient=False)
        (x.astype("float32") ** 2).sum().backward()  # grad 2x, in the tensor's dtype
        g = x.grad
        assert g.dtype == getattr(paddle, dtype) and g.stop_gradient is False
        ptr = g.data_ptr()
        assert fc.clip_grad_norm_([x], 1.0) == pytest.approx(math.sqrt(56.0), rel=1e-12)
        assert x.grad.data_ptr() == ptr
        np.testing.assert_allclose(_np(x.grad).astype(np.float64), np.array([2.0, -4.0, 6.0]) / math.sqrt(56.0),
                                   rtol=8e-3)  # fmt: skip
        np.testing.assert_array_equal(_np(x).astype(np.float64), [1.0, -2.0, 3.0])


def test_sparse_selected_rows_and_distributed_tensors_are_refused() -> None:
    dense = paddle.to_tensor([5.0, 5.0])
    emb = paddle.nn.Embedding(10, 3, sparse=True)
    emb(paddle.to_tensor([1, 2])).sum().backward()
    assert emb.weight.grad.is_selected_rows()
    bad = {
        "sparse": (paddle.ones([2, 3]).to_sparse_coo(2), "sparse or SelectedRows"),
        "selected-rows": (emb.weight, "sparse or SelectedRows"),
    }
    dist = pytest.importorskip("paddle.distributed")
    mesh = dist.ProcessMesh([0], dim_names=["x"])
    shard = dist.shard_tensor(paddle.ones([2, 3]), mesh, [dist.Shard(0)])
    bad["dist"] = (shard, r"Paddle distributed tensor.*_local_value")
    for kind, (item, pattern) in bad.items():
        for entry in ENTRY_POINTS:
            with pytest.raises(TypeError, match=rf"grads\[1\] is a {pattern}"):
                _run_fc(entry, [dense, item])
        np.testing.assert_array_equal(dense.numpy(), [5.0, 5.0], err_msg=kind)
