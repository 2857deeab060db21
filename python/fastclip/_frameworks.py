"""What torch and Paddle objects are, and how their memory may be read and written, without
importing either framework (fastclip never imports torch or paddle: it only looks at
``sys.modules``, so an object can only be a torch tensor if torch is already imported).

A leaf module: it imports nothing from fastclip. :mod:`fastclip._buffers` decides from these
predicates what an item contributes (its ``.grad``, itself or nothing) and asks :func:`inspect`
how to export the buffer it picked.

:func:`inspect` refuses (``TypeError`` naming the position) every tensor whose DLPack export would
not describe its values, and says what to do instead:

- torch ``DTensor`` (``torch.distributed.tensor``, FSDP2): DLPack exports an empty wrapper (data
  pointer 0 or stale memory: garbage norms, then a crash on the write);
- any other torch ``__torch_dispatch__`` subclass (FakeTensor, functional or wrapper subclasses)
  and functorch-wrapped tensors (inside ``torch.func.grad``/``vmap``): no storage of their own;
- torch meta, sparse / non-strided, nested and quantized tensors; complex tensors and lazy
  ``.conj()`` views (fastclip clips real gradients only);
- Paddle distributed tensors (``t.is_dist()``), sparse or SelectedRows tensors (``not
  t.is_dense()``) and tensors that hold no data yet.

And resolves the rest:

- a torch negative-bit view (``t.is_neg()``, e.g. ``z.conj().imag``) holds ``-t`` in memory; it is
  exported through ``t._neg_view()`` (the same memory, without the bit) and marked ``negated``:
  norms, scaling by any factor and symmetric clamps commute with negation and are applied to
  the memory as is; an asymmetric clamp does not and is refused by the caller;
- a torch inference tensor (made under ``torch.inference_mode()``) may be read, but torch
  refuses in-place updates of it outside inference mode: marked ``no_write`` (in-place calls
  raise ``ValueError``), unless inference mode is enabled now;
- a torch tensor is exported through ``.detach()`` (same memory; one that requires grad cannot be
  exported) with ``__torch_function__`` overrides disabled, and a torch bfloat16 tensor, which
  NumPy cannot import, as its ``uint16`` bits;
- a Paddle tensor is exported through ``.detach()`` (same memory; Paddle refuses to export a
  tensor with ``stop_gradient=False``, which every real parameter and gradient has), and a
  Paddle bfloat16 tensor as its ``int16`` bits (``t.view("int16")``).
"""

from __future__ import annotations

import contextlib
import sys
from typing import Any

__all__ = [
    "DTENSOR_HINT",
    "Export",
    "exportable",
    "inspect",
    "is_dtensor",
    "is_paddle_tensor",
    "is_parameter",
    "is_torch_tensor",
    "requires_grad",
    "torch_tensor_type",
]

#: What to do with a torch DTensor, in the error that refuses it.
DTENSOR_HINT = (
    "pass its local shard instead, t.to_local() (for a parameter: p.grad.to_local()), to clip this "
    "rank's shard on its own, or clip with torch.nn.utils.clip_grad_norm_ for the norm over all ranks"
)

#: Class names of Paddle's parameter types (dygraph ``EagerParamBase``, legacy ``ParamBase``,
#: static-graph ``Parameter``) in modules under ``paddle``.
_PADDLE_PARAMS = frozenset({"EagerParamBase", "ParamBase", "Parameter"})


class Export:
    """How one buffer may be handed to a DLPack consumer, read and written.

    - ``producer``: the object to export (the buffer itself, or a detached view of the same memory);
    - ``bits``: ``None``, or ``True`` when the producer is a 16-bit integer view of bfloat16 data
      (torch: ``uint16``; Paddle: ``int16``), to be re-viewed as ``ml_dtypes.bfloat16``;
    - ``negated``: the memory holds the negated values (a torch negative-bit view);
    - ``no_write``: ``None``, or why the buffer must not be modified (the end of an error message).
    """

    __slots__ = ("bits", "negated", "no_write", "producer")

    def __init__(self, producer: Any, bits: bool = False, negated: bool = False, no_write: str | None = None) -> None:
        self.producer = producer
        self.bits = bits
        self.negated = negated
        self.no_write = no_write


def torch_tensor_type() -> type | None:
    """``torch.Tensor`` if torch is already imported (fastclip never imports it), else ``None``."""
    torch = sys.modules.get("torch")
    return getattr(torch, "Tensor", None) if torch is not None else None


def is_torch_tensor(obj: Any) -> bool:
    t = torch_tensor_type()
    return t is not None and isinstance(obj, t)


def _paddle_tensor_type() -> type | None:
    paddle = sys.modules.get("paddle")
    return getattr(paddle, "Tensor", None) if paddle is not None else None


def is_paddle_tensor(obj: Any) -> bool:
    """A Paddle dygraph tensor (a parameter too), if paddle is already imported."""
    t = _paddle_tensor_type()
    return t is not None and isinstance(obj, t)


def _in_mro(obj: Any, names: frozenset[str], module_prefix: str) -> bool:
    return any(c.__name__ in names and c.__module__.startswith(module_prefix) for c in type(obj).__mro__)


def is_dtensor(obj: Any) -> bool:
    """A torch ``DTensor`` (any torch version), found by class name so that ``torch.distributed``
    is never imported here."""
    return is_torch_tensor(obj) and _in_mro(obj, frozenset({"DTensor"}), "torch.distributed")


def is_parameter(obj: Any) -> bool:
    """A torch ``Parameter`` (``isinstance`` also sees DTensor and uninitialized parameters) or a
    Paddle parameter. fastclip's own :class:`~fastclip.Parameter` and any other object that has a
    ``.grad`` but is no buffer are parameters by construction (see :mod:`fastclip._buffers`)."""
    if is_torch_tensor(obj):
        param = getattr(getattr(sys.modules["torch"], "nn", None), "Parameter", None)
        return param is not None and isinstance(obj, param)
    return is_paddle_tensor(obj) and _in_mro(obj, _PADDLE_PARAMS, "paddle")


def requires_grad(obj: Any) -> bool:
    """torch's ``requires_grad`` is ``True`` or Paddle's ``stop_gradient`` is ``False`` (literal bools:
    a generic object's attribute of another type means nothing)."""
    return getattr(obj, "requires_grad", None) is True or getattr(obj, "stop_gradient", None) is False


def inspect(obj: Any, name: str = "grads", pos: int = 0) -> Export:
    """How to export ``obj`` (see the module doc). Raises ``TypeError`` naming ``name[pos]`` for a
    tensor whose DLPack export would not describe its values; touches nothing."""
    if is_torch_tensor(obj):
        return _torch_export(obj, f"{name}[{pos}]")
    if is_paddle_tensor(obj):
        return _paddle_export(obj, f"{name}[{pos}]")
    return Export(obj)


def exportable(obj: Any) -> tuple[Any, bool]:
    """``(producer, is_bf16_bits)``: what to hand to a DLPack consumer for ``obj`` (see
    :func:`inspect`; ``obj`` has been inspected with its position before)."""
    e = inspect(obj)
    return e.producer, e.bits


def _torch_dispatch_subclass(torch: Any, t: Any) -> str | None:
    """The name of the class that overrides ``__torch_dispatch__`` for ``t``, if any."""
    for c in type(t).__mro__:
        if c is torch.Tensor:
            return None
        if "__torch_dispatch__" in vars(c):
            return f"{c.__module__}.{c.__qualname__}"
    return None


def _torch_export(t: Any, where: str) -> Export:
    torch = sys.modules["torch"]
    if is_dtensor(t):
        raise TypeError(
            f"{where} is a torch DTensor ({type(t).__name__}, torch.distributed.tensor): DLPack does not "
            f"export its data, which lives in its local shard; {DTENSOR_HINT}"
        )
    sub = _torch_dispatch_subclass(torch, t)
    if sub is not None:
        raise TypeError(
            f"{where} is a torch.Tensor subclass with __torch_dispatch__ ({sub}), whose memory DLPack does "
            "not describe; pass the plain tensor that holds its data"
        )
    off = getattr(torch._C, "DisableTorchFunctionSubclass", None) or contextlib.nullcontext
    with off():  # a __torch_function__ subclass cannot answer for the plain tensor's attributes
        functorch = getattr(torch._C, "_functorch", None)
        wrapped = getattr(functorch, "is_functorch_wrapped_tensor", None)
        if wrapped is not None and wrapped(t):
            raise TypeError(
                f"{where} is a functorch-wrapped tensor (inside torch.func.grad, vmap, ...), which has no "
                "storage of its own; clip outside the transform"
            )
        if t.is_meta:
            raise TypeError(f"{where} is on torch's meta device, which holds no data")
        if t.layout is not torch.strided:
            raise TypeError(
                f"{where} has layout {t.layout}; fastclip works on dense (torch.strided) tensors: pass "
                "t.to_dense() or the tensor of its values"
            )
        if t.is_nested:
            raise TypeError(f"{where} is a nested tensor; pass its components (t.unbind()) instead")
        if t.is_quantized:
            raise TypeError(f"{where} is a quantized tensor ({t.dtype}); fastclip clips floating-point gradients")
        if t.is_complex() or t.is_conj():
            raise TypeError(
                f"{where} has dtype {t.dtype}; fastclip works on float16, bfloat16, float32 and float64 gradients"
            )
        negated = bool(t.is_neg())
        no_write = None
        if t.is_inference() and not torch.is_inference_mode_enabled():
            no_write = (
                "is a torch inference tensor (made under torch.inference_mode()), which torch does not allow "
                "to be updated in place outside inference mode: clip it under torch.inference_mode(), or "
                "clip a t.clone()"
            )
        d = t.detach()
        if negated:
            d = d._neg_view()  # the same memory without the bit: what DLPack would export anyway
        bits = d.dtype == torch.bfloat16
        if bits:
            d = d.view(torch.uint16)
    return Export(d, bits, negated, no_write)


def _paddle_export(t: Any, where: str) -> Export:
    paddle = sys.modules["paddle"]
    if _call(t, "is_dist", False):
        raise TypeError(
            f"{where} is a Paddle distributed tensor (t.is_dist()), whose memory DLPack does not describe; "
            "pass its local shard, t._local_value(), to clip this rank's shard on its own"
        )
    if not _call(t, "is_dense", True):
        raise TypeError(
            f"{where} is a sparse or SelectedRows Paddle tensor; fastclip works on dense tensors (sparse "
            "embedding gradients: use sparse=False, or clip the dense values)"
        )
    if not _call(t, "_is_initialized", True):
        raise TypeError(f"{where} is a Paddle tensor that holds no data yet")
    d = t.detach()
    bits = d.dtype == getattr(paddle, "bfloat16", None)
    if bits:
        d = d.view("int16")
    return Export(d, bits)


def _call(obj: Any, method: str, default: bool) -> bool:
    f = getattr(obj, method, None)
    return default if f is None else bool(f())
