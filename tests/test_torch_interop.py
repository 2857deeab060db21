"""torch objects that DLPack does not describe faithfully, and the ``.grad`` rule with real torch
parameters (frozen and not), in every public entry point, against torch's own functions run on
identical copies. Skipped without torch.

Run: ``PYTHONPATH=/opt/torchsite .venv/bin/python -m pytest -q tests/test_torch_interop.py``.
"""

from __future__ import annotations

import math
import subprocess
import sys
import warnings
from typing import Any

import fastclip as fc
import numpy as np
import pytest

torch = pytest.importorskip("torch")

ENTRY_POINTS = ["get_total_norm", "clip_grad_norm_", "clip_grads_with_norm_", "clip_grad_value_"]


def _bits(t: Any) -> bytes:
    return t.detach().resolve_neg().contiguous().view(torch.uint8).numpy().tobytes()


def _snapshot(tensors: list[Any]) -> list[bytes]:
    return [_bits(t) for t in tensors]


# ---------------------------------------------------------------------------------------------
# The .grad rule with torch parameters, against torch.nn.utils.


def _model(freeze: str) -> Any:
    """A model after one backward pass; the same arguments give the same weights and grads.

    ``freeze``: "before" freezes layer 0 and layer 2's bias before backward (no grads: the
    fine-tuning case); "after" freezes layer 4 after backward (it keeps its grads, which torch
    still clips); "none" freezes nothing. Layer 5 is never used (grads None, requires_grad True).
    """
    torch.manual_seed(0)
    m = torch.nn.Sequential(
        torch.nn.Linear(13, 32),
        torch.nn.Tanh(),
        torch.nn.Linear(32, 16),
        torch.nn.Tanh(),
        torch.nn.Linear(16, 7),
        torch.nn.Linear(5, 5),
    )
    if freeze == "before":
        m[0].requires_grad_(False)
        m[2].bias.requires_grad_(False)
    x = torch.randn(9, 13)
    (m[:5](x) ** 2).sum().mul(3.0).backward()
    if freeze == "after":
        m[4].requires_grad_(False)
    return m


def _run_fc(entry: str, params: Any) -> Any:
    if entry == "get_total_norm":
        return fc.get_total_norm(params, 2.0)
    if entry == "clip_grad_norm_":
        return fc.clip_grad_norm_(params, 0.25)
    if entry == "clip_grads_with_norm_":
        return fc.clip_grads_with_norm_(params, 0.25, 40.0)
    return fc.clip_grad_value_(params, 0.02)


def _run_torch(entry: str, params: list[Any]) -> Any:
    u = torch.nn.utils
    if entry == "get_total_norm":
        return u.get_total_norm([p.grad for p in params if p.grad is not None], 2.0)
    if entry == "clip_grad_norm_":
        return u.clip_grad_norm_(params, 0.25)
    if entry == "clip_grads_with_norm_":
        return u.clip_grads_with_norm_(params, 0.25, torch.tensor(40.0))
    return u.clip_grad_value_(params, 0.02)


@pytest.mark.parametrize("freeze", ["before", "after", "none"])
@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_parameters_frozen_or_not_match_torch(entry: str, freeze: str) -> None:
    mine, ref = _model(freeze), _model(freeze)
    params = list(mine.parameters())
    weights = _snapshot(params)
    ptrs = [p.grad.data_ptr() for p in params if p.grad is not None]
    got = _run_fc(entry, mine.parameters())  # a generator, as torch users pass it
    want = _run_torch(entry, list(ref.parameters()))
    if want is None:
        assert got is None
    else:
        assert got == pytest.approx(float(want), rel=1e-5)
    assert _snapshot(params) == weights, "a parameter's weights changed"
    assert [p.grad.data_ptr() for p in params if p.grad is not None] == ptrs
    for a, b in zip(params, ref.parameters()):
        assert (a.grad is None) == (b.grad is None)
        if a.grad is not None:
            tol = 0 if entry == "clip_grad_value_" else 1e-6
            torch.testing.assert_close(a.grad, b.grad, rtol=tol, atol=tol * 1e-2)


@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_a_frozen_parameter_on_its_own_is_not_its_weights(entry: str) -> None:
    # the old bug: requires_grad=False and no grad made the Parameter its own buffer
    w = torch.nn.Parameter(torch.full((4,), 10.0), requires_grad=False)
    before = _bits(w)
    for items in (w, [w], (q for q in [w])):
        got = _run_fc(entry, items)
        assert got in (None, 0.0)
        assert _bits(w) == before
    assert torch.nn.utils.clip_grad_norm_([w], 1.0) == 0.0  # torch: nothing to clip either


def test_views_of_parameters_and_lazy_parameters_contribute_nothing() -> None:
    w = torch.nn.Parameter(torch.full((4,), 10.0))
    v = w[:2]  # a non-leaf view that requires grad: its .grad is None (torch warns on the access)
    lazy = torch.nn.LazyLinear(3).weight  # an UninitializedParameter: no memory at all
    before = _bits(w)
    with pytest.warns(UserWarning, match="not a leaf Tensor"):
        assert fc.clip_grad_norm_([v, lazy], 1.0) == 0.0
    assert _bits(w) == before


def test_plain_tensor_with_a_grad_contributes_the_grad() -> None:
    t = torch.tensor([30.0, 40.0], requires_grad=True)
    (t * torch.tensor([3.0, 4.0])).sum().backward()
    t.requires_grad_(False)  # no longer requires grad, still holds one: torch clips the grad
    ref = t.grad.clone()
    assert fc.clip_grad_norm_(t, 1.0) == pytest.approx(5.0)
    torch.testing.assert_close(t.detach(), torch.tensor([30.0, 40.0]), rtol=0, atol=0)
    torch.testing.assert_close(t.grad, ref * (1.0 / (5.0 + 1e-6)), rtol=1e-6, atol=0)


@pytest.mark.parametrize("cls", ["ByValue", "ByNorm", "ByGlobalNorm"])
def test_clip_classes_on_torch_pairs(cls: str) -> None:
    # (param, param.grad) pairs, frozen params included with a None grad (dropped)
    mine, ref = _model("before"), _model("before")
    pairs = [(p, p.grad) for p in mine.parameters()]
    weights = _snapshot([p for p, _ in pairs])
    grads = [g for p, g in pairs if g is not None]
    ptrs = [g.data_ptr() for g in grads]
    rgrads = [p.grad for p in ref.parameters() if p.grad is not None]
    c = 0.25
    if cls == "ByValue":
        out = fc.ClipGradByValue(0.02)(pairs)
        torch.nn.utils.clip_grad_value_(list(ref.parameters()), 0.02)
    elif cls == "ByNorm":
        out = fc.ClipGradByNorm(c)(pairs)
        with torch.no_grad():
            for g in rgrads:
                n = float(torch.linalg.vector_norm(g.double()))
                if n > c:
                    g.mul_(torch.tensor(c / n, dtype=torch.float32))
    else:
        out = fc.ClipGradByGlobalNorm(c)(pairs)
        total = float(torch.linalg.vector_norm(torch.cat([g.double().ravel() for g in rgrads])))
        with torch.no_grad():
            for g in rgrads:
                g.mul_(torch.tensor(c / max(total, c), dtype=torch.float32))
    assert [g for _, g in out] == grads and all(a is b for (_, a), b in zip(out, grads))
    assert _snapshot([p for p, _ in pairs]) == weights
    assert [g.data_ptr() for g in grads] == ptrs
    tol = 0 if cls == "ByValue" else 1e-6
    for g, r in zip(grads, rgrads):
        torch.testing.assert_close(g, r, rtol=tol, atol=0)


# ---------------------------------------------------------------------------------------------
# DTensor: refused with the position and what to do; its local shard clips in place.


@pytest.fixture(scope="module")
def mesh() -> Any:
    dist = pytest.importorskip("torch.distributed")
    if not dist.is_available():
        pytest.skip("torch.distributed is not available")
    from torch.distributed.device_mesh import init_device_mesh

    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    yield init_device_mesh("cpu", (1,))
    dist.destroy_process_group()


def _dtensor_param(mesh: Any) -> Any:
    from torch.distributed.tensor import Shard, distribute_tensor

    p = torch.nn.Parameter(distribute_tensor(torch.arange(1.0, 13.0).reshape(4, 3), mesh, [Shard(0)]))
    (p * p).sum().backward()  # p.grad = 2p, a DTensor
    return p


@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_dtensor_items_and_grads_are_refused(mesh: Any, entry: str) -> None:
    p = _dtensor_param(mesh)
    plain = torch.tensor([5.0, 5.0])
    local = p.grad.to_local()
    before = _snapshot([plain, local, p.to_local()])
    for items, pos in (([plain, p], 1), ([plain, p.grad], 1), (p.grad, 0), ([plain, p.detach()], 1)):
        with pytest.raises(TypeError, match=rf"grads\[{pos}\] is a torch DTensor.*to_local\(\)"):
            _run_fc(entry, items)
    assert _snapshot([plain, local, p.to_local()]) == before
    # a DTensor parameter without a grad contributes nothing (rule 2), so nothing to refuse
    q = torch.nn.Parameter(p.detach().clone())
    assert _run_fc(entry, [q]) in (None, 0.0)


def test_dtensor_pairs_are_refused_and_the_local_shard_clips_in_place(mesh: Any) -> None:
    p = _dtensor_param(mesh)
    with pytest.raises(TypeError, match=r"params_grads\[0\] is a torch DTensor"):
        fc.ClipGradByGlobalNorm(1.0)([(p, p.grad)])
    local = p.grad.to_local()
    ref = local.clone()
    total = fc.clip_grad_norm_([local], 1.0)
    want = float(torch.nn.utils.clip_grad_norm_([torch.nn.Parameter(torch.zeros_like(ref))], 1.0))
    assert want == 0.0  # (torch's reference below uses a plain tensor as the grad)
    holder = torch.nn.Parameter(torch.zeros_like(ref))
    holder.grad = ref
    want = float(torch.nn.utils.clip_grad_norm_([holder], 1.0))
    assert total == pytest.approx(want, rel=1e-6)
    torch.testing.assert_close(p.grad.to_local(), ref, rtol=1e-6, atol=0)  # written through the shard


def test_fastclip_never_imports_torch_distributed() -> None:
    code = (
        "import sys, torch, fastclip as fc\n"
        "already = 'torch.distributed.tensor' in sys.modules\n"
        "w = torch.nn.Parameter(torch.ones(3)); (w * 2).sum().backward()\n"
        "fc.clip_grad_norm_([w, torch.ones(2)], 0.1); fc.clip_grad_value_([w], 0.1)\n"
        "assert already or 'torch.distributed.tensor' not in sys.modules\n"
        "assert 'paddle' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=300)


# ---------------------------------------------------------------------------------------------
# Negative-bit views: memory holds -t. Norms, scaling and symmetric clamps resolve; an asymmetric
# clamp is refused. Each checked against torch's own in-place result on an identical view.


def _neg_views(dtype: Any = torch.float32, seed: int = 5) -> tuple[Any, Any]:
    """(complex base, its z.conj().imag): a real view with the negative bit set."""
    g = torch.Generator().manual_seed(seed)
    z = torch.complex(torch.randn(6, 5, generator=g), torch.randn(6, 5, generator=g) * 3.0)
    t = z.conj().imag
    if dtype != torch.float32:  # no complex bfloat16/float16 on the CPU: a neg view made directly
        base = (torch.randn(6, 5, generator=g) * 3.0).to(dtype)
        return base, base._neg_view()
    return z, t


@pytest.mark.parametrize("dtype", ["float32", "float64", "bfloat16", "float16"])
def test_neg_views_norms_scaling_and_symmetric_clamps_match_torch(dtype: str) -> None:
    dt = getattr(torch, dtype)
    for entry in [*ENTRY_POINTS, "ByValue", "ByNorm", "ByGlobalNorm"]:
        _, t = _neg_views(dt)
        _, r = _neg_views(dt)
        assert t.is_neg() and r.is_neg()
        plain = torch.tensor([2.0, -1.0], dtype=dt)
        rplain = plain.clone()
        if entry in ENTRY_POINTS:
            got = _run_fc(entry, [plain, t])
            holders = []
            for x in (rplain, r):
                h = torch.nn.Parameter(torch.zeros(x.shape, dtype=dt))
                h.grad = x
                holders.append(h)
            if entry == "get_total_norm":
                want = torch.nn.utils.get_total_norm([rplain, r], 2.0, foreach=False)
            elif entry == "clip_grad_norm_":
                want = torch.nn.utils.clip_grad_norm_(holders, 0.25, foreach=False)
            elif entry == "clip_grads_with_norm_":
                want = torch.nn.utils.clip_grads_with_norm_(holders, 0.25, torch.tensor(40.0), foreach=False)
            else:
                want = torch.nn.utils.clip_grad_value_(holders, 0.02, foreach=False)
            if want is not None:
                assert got == pytest.approx(float(want), rel=1e-2 if dtype in ("bfloat16", "float16") else 1e-6)
        else:
            c = 0.25
            cls = {"ByValue": fc.ClipGradByValue(0.02), "ByNorm": fc.ClipGradByNorm(c),
                   "ByGlobalNorm": fc.ClipGradByGlobalNorm(c)}[entry]  # fmt: skip
            cls([(None, plain), (None, t)])
            with torch.no_grad():
                if entry == "ByValue":
                    for x in (rplain, r):
                        x.clamp_(-0.02, 0.02)
                elif entry == "ByNorm":
                    for x in (rplain, r):
                        n = float(torch.linalg.vector_norm(x.double()))
                        if n > c:
                            x.mul_(torch.tensor(c / n, dtype=torch.float32))
                else:
                    total = math.hypot(*(float(torch.linalg.vector_norm(x.double())) for x in (rplain, r)))
                    for x in (rplain, r):
                        x.mul_(torch.tensor(c / max(total, c), dtype=torch.float32))
        assert t.is_neg()
        tol = 1e-2 if dtype in ("bfloat16", "float16") else 1e-6
        exact = entry in ("clip_grad_value_", "ByValue")
        torch.testing.assert_close(t.resolve_neg(), r.resolve_neg(), rtol=0 if exact else tol, atol=0)
        torch.testing.assert_close(plain, rplain, rtol=0 if exact else tol, atol=0)


def test_neg_view_memory_is_written_in_place() -> None:
    z, t = _neg_views()
    want_imag = (z.imag * (0.25 / (float(torch.linalg.vector_norm(z.imag.double())) + 1e-6))).clone()
    fc.clip_grad_norm_([t], 0.25)
    torch.testing.assert_close(z.imag, want_imag, rtol=1e-6, atol=0)  # the complex base itself changed


def test_neg_view_asymmetric_clamp_is_refused_and_nothing_changes() -> None:
    z, t = _neg_views()
    plain = torch.tensor([5.0, -5.0])
    before = _snapshot([z, plain])
    with pytest.raises(ValueError, match=r"params_grads\[1\] is a torch negative-bit view"):
        fc.ClipGradByValue(0.5, -0.1)([(None, plain), (None, t)])
    assert _snapshot([z, plain]) == before
    # the symmetric clamp of the same view matches torch's own clamp_
    _, r = _neg_views()
    fc.ClipGradByValue(0.5)([(None, t)])
    r.clamp_(-0.5, 0.5)
    torch.testing.assert_close(t.resolve_neg(), r.resolve_neg(), rtol=0, atol=0)


def test_conjugate_and_complex_tensors_are_refused() -> None:
    z = torch.complex(torch.randn(3), torch.randn(3))
    for bad in (z, z.conj()):
        with pytest.raises(TypeError, match=r"grads\[1\] has dtype torch.complex64"):
            fc.get_total_norm([torch.ones(2), bad])
    # conj() of a real tensor is the tensor itself: no bit, clipped as usual
    r = torch.tensor([3.0, 4.0]).conj()
    assert not r.is_conj() and fc.clip_grad_norm_(r, 1.0) == pytest.approx(5.0)


# ---------------------------------------------------------------------------------------------
# Inference tensors: readable, never written outside inference mode.


@pytest.mark.parametrize("entry", [*ENTRY_POINTS[1:], "ByValue", "ByNorm", "ByGlobalNorm"])
def test_inference_tensors_are_measured_but_not_written(entry: str) -> None:
    with torch.inference_mode():
        it = torch.tensor([30.0, 40.0])
    plain = torch.tensor([0.0, 50.0])
    assert it.is_inference()
    assert fc.get_total_norm([plain, it]) == pytest.approx(float(torch.linalg.vector_norm(torch.cat([plain, it]))))
    with torch.inference_mode():
        other = torch.tensor([30.0, 40.0])
    with pytest.raises(RuntimeError, match="Inplace update to inference tensor"):
        other.mul_(0.5)  # torch's own rule (torch 2.15 on the CPU writes, then raises)
    before = _snapshot([plain, it])
    name = "params_grads" if entry.startswith("By") else "grads"
    with pytest.raises(ValueError, match=rf"{name}\[1\] (is a torch inference tensor|is read-only)"):
        if entry.startswith("By"):
            cls = {"ByValue": fc.ClipGradByValue(0.1), "ByNorm": fc.ClipGradByNorm(1.0),
                   "ByGlobalNorm": fc.ClipGradByGlobalNorm(1.0)}[entry]  # fmt: skip
            cls([(None, plain), (None, it)])
        else:
            _run_fc(entry, [plain, it])
    assert _snapshot([plain, it]) == before
    # as the .grad of a parameter too
    holder = torch.nn.Parameter(torch.zeros(2))
    holder.grad = it
    with pytest.raises(ValueError, match=r"grads\[0\]"):
        fc.clip_grad_value_([holder], 0.1)
    assert _snapshot([it]) == before[1:]


def test_inference_tensors_are_clipped_inside_inference_mode_as_torch_does() -> None:
    with torch.inference_mode():
        it = torch.tensor([30.0, 40.0])
        ref = torch.tensor([30.0, 40.0])
        total = fc.clip_grad_norm_([it], 1.0)
        holder = torch.nn.Parameter(torch.zeros(2))
    holder.grad = ref
    with torch.inference_mode():
        want = torch.nn.utils.clip_grad_norm_([holder], 1.0)
    assert total == pytest.approx(float(want))
    torch.testing.assert_close(it, ref, rtol=1e-6, atol=0)


# ---------------------------------------------------------------------------------------------
# Tensors DLPack cannot describe: refused with the position, nothing touched.


class Wrapper(torch.Tensor):
    """A __torch_dispatch__ wrapper subclass (DTensor's kind): no storage of its own."""

    @staticmethod
    def __new__(cls, elem: Any) -> Any:
        return torch.Tensor._make_wrapper_subclass(cls, elem.shape, dtype=elem.dtype)

    def __init__(self, elem: Any) -> None:
        self.elem = elem

    @classmethod
    def __torch_dispatch__(cls, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        import torch.utils._pytree as pytree

        unwrap = lambda t: t.elem if isinstance(t, Wrapper) else t  # noqa: E731
        return func(*pytree.tree_map(unwrap, args), **pytree.tree_map(unwrap, kwargs or {}))


class Logged(torch.Tensor):
    """A __torch_function__-only subclass: a plain tensor's storage, clipped as usual."""

    calls = 0

    @classmethod
    def __torch_function__(cls, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        Logged.calls += 1
        return super().__torch_function__(func, types, args, kwargs or {})


def _refused() -> dict[str, tuple[Any, str]]:
    with warnings.catch_warnings():  # quantized creation is deprecated, nested tensors a prototype
        warnings.simplefilter("ignore", UserWarning)
        quantized = torch.quantize_per_tensor(torch.ones(3), 0.1, 0, torch.qint8)
        nested = torch.nested.nested_tensor([torch.ones(2), torch.ones(3)])
        csr = torch.ones(2, 2).to_sparse_csr()
    jagged = torch.nested.nested_tensor([torch.ones(2), torch.ones(3)], layout=torch.jagged)
    return {
        "wrapper": (Wrapper(torch.ones(3)), r"torch.Tensor subclass with __torch_dispatch__"),
        "meta": (torch.ones(3, device="meta"), r"meta device"),
        "sparse": (torch.ones(3).to_sparse(), r"layout torch.sparse_coo"),
        "sparse_csr": (csr, r"layout torch.sparse_csr"),
        "nested": (nested, r"nested tensor"),
        "jagged": (jagged, r"__torch_dispatch__|nested"),
        "quantized": (quantized, r"quantized"),
    }


@pytest.mark.parametrize("kind", ["wrapper", "meta", "sparse", "sparse_csr", "nested", "jagged", "quantized"])
@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_tensors_dlpack_cannot_describe_are_refused(kind: str, entry: str) -> None:
    bad, pattern = _refused()[kind]
    plain = torch.tensor([5.0, 5.0])
    before = _bits(plain)
    with pytest.raises(TypeError, match=rf"grads\[2\] (is|has) .*({pattern})"):
        _run_fc(entry, [plain, torch.nn.Parameter(torch.ones(1)), bad])
    assert _bits(plain) == before


def test_sparse_embedding_gradients_are_refused_with_their_position() -> None:
    emb = torch.nn.Embedding(10, 3, sparse=True)
    lin = torch.nn.Linear(3, 1)
    lin(emb(torch.tensor([1, 2]))).sum().backward()
    params = list(lin.parameters()) + list(emb.parameters())
    before = _snapshot([p.grad for p in lin.parameters()])
    with pytest.raises(TypeError, match=r"grads\[2\] has layout torch.sparse_coo"):
        fc.clip_grad_norm_(params, 1e-3)
    assert _snapshot([p.grad for p in lin.parameters()]) == before


def test_functorch_wrapped_tensors_are_refused() -> None:
    seen = []

    def f(x: Any) -> Any:
        y = x.detach()  # under torch.func.grad x requires grad (so contributes nothing): its detached twin
        for call in (lambda: fc.get_total_norm([y]), lambda: fc.clip_grad_value_([torch.ones(1), y], 1.0)):
            with pytest.raises(TypeError, match=r"grads\[\d\] is a functorch-wrapped tensor") as e:
                call()
            seen.append(str(e.value))
        return (x**2).sum()

    torch.func.grad(f)(torch.tensor([1.0, 2.0]))
    torch.func.vmap(lambda x: f(x))(torch.ones(2, 3))
    assert len(seen) == 4


def test_torch_function_subclass_is_clipped_in_place() -> None:
    t = torch.tensor([3.0, 4.0]).as_subclass(Logged)
    ptr = torch.Tensor.data_ptr(t)
    assert fc.clip_grad_norm_([t], 1.0) == pytest.approx(5.0)
    assert torch.Tensor.data_ptr(t) == ptr
    np.testing.assert_allclose(torch.Tensor.numpy(t.as_subclass(torch.Tensor)), [3 / (5 + 1e-6), 4 / (5 + 1e-6)],
                               rtol=1e-6)  # fmt: skip
