"""Turn whatever the user passed as ``grads`` into one list of same-device buffers.

Accepted, as ``torch.nn.utils`` accepts ``model.parameters()``:

- one array, or any iterable (a generator too, read exactly once) of
- NumPy arrays, objects exposing ``__dlpack__``/``__dlpack_device__`` (torch tensors, CuPy
  arrays, JAX arrays, ...), or parameter objects with a ``.grad`` attribute (``None`` grads
  skipped).

The two meanings of ``.grad``: a torch tensor that requires grad (a ``Parameter``), or that
already holds a ``.grad``, stands for its ``.grad``; a plain torch tensor (``requires_grad``
False, ``.grad`` None) is itself the buffer. Any other object with ``__dlpack__`` is the buffer;
any other object with a ``.grad`` stands for it.

CPU buffers (DLPack device kDLCPU / kDLCUDAHost / kDLROCMHost) become NumPy views with
``np.from_dlpack``: zero copy, strides kept, read-only producers stay read-only (so in-place
calls reject them with a ``ValueError`` while norms still work). torch bfloat16 tensors, which
NumPy cannot import, cross as ``uint16`` bits and are viewed as ``ml_dtypes.bfloat16``. A torch
tensor is exported through ``.detach()`` (same memory), since a tensor that requires grad
cannot be exported.

CUDA buffers (kDLCUDA, kDLCUDAManaged) go to :mod:`fastclip._cuda`, which imports CuPy; it is
imported only then. Every item is classified before any is converted, so a call that mixes CPU
and CUDA buffers fails with a ``ValueError`` before CuPy is imported and before anything is
touched.

The result keeps each buffer's position in the caller's sequence, so that errors raised later by
the extension name the position the caller knows (``grads[7]``), not a compacted index.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import Any

import ml_dtypes
import numpy as np

__all__ = ["CPU", "CUDA", "Collected", "collect", "device_kind", "exportable", "is_torch_tensor"]

CPU = "cpu"
CUDA = "cuda"

#: DLPack device types (``DLDeviceType``) whose memory the CPU can address directly.
_DLPACK_CPU = frozenset({1, 3, 11})  # kDLCPU, kDLCUDAHost, kDLROCMHost
#: DLPack device types that the CuPy path takes.
_DLPACK_CUDA = frozenset({2, 13})  # kDLCUDA, kDLCUDAManaged
_DEVICE_NAMES = {1: "CPU", 2: "CUDA", 3: "CUDA host", 4: "OpenCL", 7: "Vulkan", 8: "Metal", 9: "VPI", 10: "ROCm",
                 11: "ROCm host", 13: "CUDA managed", 14: "oneAPI"}  # fmt: skip

_BF16 = np.dtype(ml_dtypes.bfloat16)


class Collected:
    """Buffers to work on, where each one sat in the caller's input, and their device.

    ``arrays`` are NumPy arrays for ``device == "cpu"`` and :class:`fastclip._cuda.Buffer`
    objects for ``device == "cuda"``; :attr:`ops` is the module that works on them, with the
    same ``norms`` / ``scale_`` / ``clamp_`` signatures either way.
    """

    __slots__ = ("arrays", "device", "positions")

    def __init__(self, arrays: list[Any], positions: list[int] | None, device: str = CPU) -> None:
        self.arrays = arrays
        #: ``None`` when ``arrays[i]`` was the caller's item ``i`` for every ``i``.
        self.positions = positions
        self.device = device

    def __len__(self) -> int:
        return len(self.arrays)

    @property
    def ops(self) -> Any:
        """``fastclip._fastclip`` for CPU buffers, ``fastclip._cuda`` for CUDA buffers."""
        if self.device == CUDA:
            from . import _cuda

            return _cuda
        from . import _fastclip

        return _fastclip


def _torch_tensor_type() -> type | None:
    """``torch.Tensor`` if torch is already imported (fastclip never imports it)."""
    torch = sys.modules.get("torch")
    return getattr(torch, "Tensor", None) if torch is not None else None


def is_torch_tensor(obj: Any) -> bool:
    t = _torch_tensor_type()
    return t is not None and isinstance(obj, t)


def device_kind(obj: Any, name: str = "grads", pos: int = 0) -> str:
    """``"cpu"`` or ``"cuda"`` for one buffer (an ndarray or a DLPack producer).

    Raises ``ValueError`` for a DLPack device fastclip cannot work on (ROCm, Metal, ...).
    """
    if isinstance(obj, np.ndarray):
        return CPU
    dev = int(obj.__dlpack_device__()[0])
    if dev in _DLPACK_CPU:
        return CPU
    if dev in _DLPACK_CUDA:
        return CUDA
    raise ValueError(
        f"{name}[{pos}] lives on a {_DEVICE_NAMES.get(dev, f'DLPack device type {dev}')} device; "
        "fastclip works on CPU buffers and CUDA buffers (through CuPy)"
    )


def _not_a_buffer(obj: Any, name: str, pos: int) -> TypeError:
    return TypeError(
        f"{name}[{pos}] must be a numpy.ndarray, a DLPack tensor or have a .grad, not {type(obj).__name__}"
    )


def _buffer_of(obj: Any, name: str, pos: int) -> Any:
    """The buffer to clip for one item (the item itself or its ``.grad``), unconverted; ``None``
    for a parameter without a gradient."""
    if isinstance(obj, np.ndarray):
        return obj
    if is_torch_tensor(obj):
        # A Parameter (or any tensor that requires grad, or already holds one) stands for its
        # .grad; a plain tensor is itself the buffer although it has a .grad attribute (None).
        if obj.requires_grad or obj.grad is not None:
            g = obj.grad
            if g is not None and not hasattr(g, "__dlpack_device__"):
                raise _not_a_buffer(g, name, pos)
            return g
        return obj
    if hasattr(obj, "__dlpack_device__"):
        return obj
    if hasattr(obj, "grad"):
        g = obj.grad
        if g is not None and not (isinstance(g, np.ndarray) or hasattr(g, "__dlpack_device__")):
            raise _not_a_buffer(g, name, pos)
        return g
    raise _not_a_buffer(obj, name, pos)


def exportable(obj: Any) -> tuple[Any, bool]:
    """``(producer, is_bf16_bits)``: what to hand to a DLPack consumer for ``obj``. A torch tensor
    is detached (same memory; one that requires grad cannot be exported) and a torch bfloat16
    tensor, which NumPy cannot import, becomes a uint16 view of its bits. Anything else as is."""
    if not is_torch_tensor(obj):
        return obj, False
    torch = sys.modules["torch"]
    obj = obj.detach()
    if obj.dtype == torch.bfloat16:
        return obj.view(torch.uint16), True
    return obj, False


def as_numpy(obj: Any, name: str = "grads", pos: int = 0) -> np.ndarray:
    """A NumPy view (no copy) of one CPU buffer.

    torch tensors are detached first (same memory) and bfloat16 ones cross as uint16 bits,
    re-viewed as ``ml_dtypes.bfloat16``. Raises ``TypeError`` when the producer's dtype cannot
    cross DLPack into NumPy.
    """
    if isinstance(obj, np.ndarray):
        return obj
    obj, bf16 = exportable(obj)
    try:
        arr = np.from_dlpack(obj)
    except (BufferError, RuntimeError, TypeError, ValueError) as e:
        raise TypeError(f"{name}[{pos}] cannot be viewed as a NumPy array through DLPack: {e}") from e
    return arr.view(_BF16) if bf16 else arr


def _mixed_devices(name: str, positions: list[int], kinds: list[str]) -> ValueError:
    first: dict[str, int] = {}
    for k, p in zip(kinds, positions):
        first.setdefault(k, p)
    return ValueError(
        f"{name} mixes CPU and CUDA buffers ({name}[{first[CPU]}] is on the CPU, {name}[{first[CUDA]}] "
        "on a CUDA device); clip each device's buffers in a separate call"
    )


def _finish(buffers: list[Any], positions: list[int], name: str) -> Collected:
    """Classify every buffer by device, then convert them all for that device's path."""
    identity = len(positions) == 0 or positions[-1] == len(positions) - 1
    pos_or_none = None if identity else positions
    kinds = [device_kind(b, name, p) for b, p in zip(buffers, positions)]
    if CUDA not in kinds:
        return Collected([as_numpy(b, name, p) for b, p in zip(buffers, positions)], pos_or_none, CPU)
    if CPU in kinds:
        raise _mixed_devices(name, positions, kinds)
    from . import _cuda  # imports CuPy (ImportError saying what to install if it is missing)

    return Collected(_cuda.as_buffers(buffers, name, positions), pos_or_none, CUDA)


def collect(grads: Any, name: str = "grads") -> Collected:
    """Normalize ``grads`` (see the module doc) into a :class:`Collected` of one device.

    Raises ``TypeError`` naming the position of an item that is none of the accepted kinds,
    ``ValueError`` when CPU and CUDA buffers are mixed (naming the first position of each) or a
    buffer is on another device, and ``ImportError`` for CUDA buffers when CuPy is missing.
    Nothing is modified.
    """
    if isinstance(grads, np.ndarray):
        return Collected([grads], None)
    if type(grads) is list and all(type(g) is np.ndarray for g in grads):
        return Collected(grads, None)  # the fast path: a plain list of arrays, no copy of the list
    if hasattr(grads, "__dlpack__") or (hasattr(grads, "grad") and not isinstance(grads, Iterable)):
        g = _buffer_of(grads, name, 0)
        return _finish([] if g is None else [g], [] if g is None else [0], name)
    if isinstance(grads, (str, bytes)) or not isinstance(grads, Iterable):
        raise TypeError(f"{name} must be an array or an iterable of arrays/parameters, not {type(grads).__name__}")
    buffers: list[Any] = []
    positions: list[int] = []
    for pos, item in enumerate(grads):
        g = _buffer_of(item, name, pos)
        if g is not None:
            buffers.append(g)
            positions.append(pos)
    return _finish(buffers, positions, name)
