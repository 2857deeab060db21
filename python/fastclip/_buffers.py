"""Turn whatever the user passed as ``grads`` into one list of NumPy arrays.

Accepted, as ``torch.nn.utils`` accepts ``model.parameters()``:

- one array, or any iterable (a generator too, read exactly once) of
- NumPy arrays, objects exposing ``__dlpack__`` on the CPU (zero-copy views via
  ``np.from_dlpack``), or parameter objects with a ``.grad`` attribute (``None`` grads skipped).

The result keeps each array's position in the caller's sequence, so that errors raised later by
the extension name the position the caller knows (``grads[7]``), not a compacted index.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

__all__ = ["Collected", "collect"]

_DLPACK_CPU = (1, 3)  # kDLCPU, kDLCUDAHost


class Collected:
    """Arrays to work on, and where each one sat in the caller's input."""

    __slots__ = ("arrays", "positions")

    def __init__(self, arrays: list[np.ndarray], positions: list[int] | None) -> None:
        self.arrays = arrays
        #: ``None`` when ``arrays[i]`` was the caller's item ``i`` for every ``i``.
        self.positions = positions

    def __len__(self) -> int:
        return len(self.arrays)


def _is_torch_tensor(obj: Any) -> bool:
    return type(obj).__module__.startswith("torch") and hasattr(obj, "requires_grad")


def _as_array(obj: Any, name: str, pos: int) -> np.ndarray:
    """A NumPy view of one gradient buffer (no copy)."""
    if isinstance(obj, np.ndarray):
        return obj
    if hasattr(obj, "__dlpack_device__"):
        device = obj.__dlpack_device__()[0]
        if int(device) not in _DLPACK_CPU:
            raise ValueError(
                f"{name}[{pos}] lives on a non-CPU device ({device}); CUDA buffers need fastclip's CuPy path"
            )
        if _is_torch_tensor(obj):
            obj = obj.detach()
        return np.from_dlpack(obj)
    raise TypeError(f"{name}[{pos}] must be a numpy.ndarray, a DLPack tensor or have a .grad, not {type(obj).__name__}")


def _grad_of(obj: Any, name: str, pos: int) -> np.ndarray | None:
    """The buffer to clip for one item: the item itself, or its ``.grad``."""
    if isinstance(obj, np.ndarray):
        return obj
    if _is_torch_tensor(obj):
        # A torch Parameter (or any leaf that requires grad) stands for its .grad; a plain
        # tensor without autograd is itself the buffer.
        if obj.requires_grad or obj.grad is not None:
            g = obj.grad
            return None if g is None else _as_array(g, name, pos)
        return _as_array(obj, name, pos)
    if hasattr(obj, "__dlpack__"):
        return _as_array(obj, name, pos)
    if hasattr(obj, "grad"):
        g = obj.grad
        return None if g is None else _as_array(g, name, pos)
    raise TypeError(f"{name}[{pos}] must be a numpy.ndarray, a DLPack tensor or have a .grad, not {type(obj).__name__}")


def collect(grads: Any, name: str = "grads") -> Collected:
    """Normalize ``grads`` (see the module doc) into a :class:`Collected`.

    Raises ``TypeError`` naming the position of an item that is none of the accepted kinds.
    """
    if isinstance(grads, np.ndarray):
        return Collected([grads], None)
    if type(grads) is list and all(type(g) is np.ndarray for g in grads):
        return Collected(grads, None)  # the fast path: a plain list of arrays, no copy of the list
    if hasattr(grads, "__dlpack__") or (hasattr(grads, "grad") and not isinstance(grads, Iterable)):
        g = _grad_of(grads, name, 0)
        return Collected([] if g is None else [g], None)
    if isinstance(grads, (str, bytes)) or not isinstance(grads, Iterable):
        raise TypeError(f"{name} must be an array or an iterable of arrays/parameters, not {type(grads).__name__}")
    arrays: list[np.ndarray] = []
    positions: list[int] = []
    for pos, item in enumerate(grads):
        g = _grad_of(item, name, pos)
        if g is not None:
            arrays.append(g)
            positions.append(pos)
    identity = len(positions) == 0 or positions[-1] == len(positions) - 1
    return Collected(arrays, None if identity else positions)
