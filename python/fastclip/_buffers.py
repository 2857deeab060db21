"""Turn whatever the user passed as ``grads`` into one list of same-device buffers.

Accepted, as ``torch.nn.utils`` accepts ``model.parameters()``: one array, or any iterable (a
generator too, read exactly once) of NumPy arrays, objects exposing
``__dlpack__``/``__dlpack_device__`` (torch and Paddle tensors, CuPy and JAX arrays, ...), and
parameter objects with a ``.grad`` attribute.

What an item contributes: the two meanings of ``.grad``
-------------------------------------------------------

One rule for every framework and every public entry point, decided in :func:`_buffer_of` only:

1. an item whose ``.grad`` is not ``None`` contributes its ``.grad`` (as torch's and Paddle's
   functions do, whatever ``requires_grad`` / ``stop_gradient`` say);
2. an item whose ``.grad`` is ``None`` contributes nothing if it is a parameter or requires grad;
3. only a plain array or tensor (no grad, not a parameter, not requiring grad) is itself the buffer.

=====================================================  ===============  =======================
item                                                   ``.grad`` set    ``.grad`` is ``None``
=====================================================  ===============  =======================
``numpy.ndarray`` (no ``.grad``)                       --               itself
``fastclip.Parameter``, any object with a ``.grad``    its ``.grad``    nothing
that is no buffer (no ``__dlpack_device__``)
torch ``Parameter`` (frozen, ``requires_grad=False``,  its ``.grad``    nothing
too), torch tensor with ``requires_grad=True``
plain torch tensor (``requires_grad=False``)           its ``.grad``    itself
Paddle parameter (``EagerParamBase``, trainable or     its ``.grad``    nothing
frozen), Paddle tensor with ``stop_gradient=False``
plain Paddle tensor (``stop_gradient=True``)           its ``.grad``    itself
other DLPack producer with ``requires_grad is True``   its ``.grad``    nothing
or ``stop_gradient is False``
other DLPack producer                                  its ``.grad``    itself
=====================================================  ===============  =======================

A ``.grad`` must itself be an array or a DLPack producer (its own ``.grad`` is not looked at).
The clip classes pass each pair's grad wrapped in an object whose ``.grad`` it is, so a pair's
grad is always the buffer (rule 1).

How buffers are read and written
--------------------------------

Every buffer is first inspected by :func:`fastclip._frameworks.inspect`, which refuses, with a
``TypeError`` naming the position, the tensors DLPack does not describe faithfully (torch DTensor
and other ``__torch_dispatch__`` subclasses, functorch-wrapped, meta, sparse, nested, quantized,
complex or conjugate tensors; Paddle distributed, sparse and uninitialized tensors), and says how
to export the others (torch and Paddle tensors ``.detach()``ed, same memory; bfloat16 as 16-bit
integer bits, re-viewed as ``ml_dtypes.bfloat16``). Then every buffer is classified by its
``__dlpack_device__`` (a junk answer or one that raises is a ``TypeError`` naming the position),
before any is converted, so a call that mixes CPU and CUDA buffers fails with a ``ValueError``
before CuPy is imported and before anything is touched.

CPU buffers (DLPack device kDLCPU / kDLCUDAHost / kDLROCMHost) become NumPy views with
``np.from_dlpack``: zero copy, strides kept, read-only producers stay read-only (so in-place
calls reject them with a ``ValueError`` while norms still work). CUDA buffers (kDLCUDA,
kDLCUDAManaged) go to :mod:`fastclip._cuda`, which imports CuPy; it is imported only then.

Two kinds of buffer are restricted per operation, by the :attr:`Collected.ops` the callers use:

- a torch inference tensor (outside inference mode) may be measured, but every in-place call
  raises ``ValueError`` (torch refuses to update it in place); its NumPy view is also read-only;
- a torch negative-bit view (``t.is_neg()``) holds ``-t``: norms, scaling and symmetric clamps
  (``lo == -hi``) are applied to the memory as they are (they commute with negation); an
  asymmetric clamp raises ``ValueError``.

The result keeps each buffer's position in the caller's sequence, so that errors raised later by
the extension name the position the caller knows (``grads[7]``), not a compacted index.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import ml_dtypes
import numpy as np

from ._frameworks import Export, exportable, inspect, is_parameter, is_torch_tensor, requires_grad

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


class _Restriction:
    """What one collected buffer allows (see the module doc): the memory holds the negated values,
    and/or why it must not be written."""

    __slots__ = ("negated", "no_write")

    def __init__(self, negated: bool, no_write: str | None) -> None:
        self.negated = negated
        self.no_write = no_write


class _Guarded:
    """The ops module of a :class:`Collected` with restricted buffers: the same ``norms`` /
    ``norm_scale_`` / ``scale_`` / ``clamp_`` signatures, and each in-place call first raises
    ``ValueError`` (naming the caller's position) for a buffer that must not be written, or for an
    asymmetric clamp of a negated buffer; then the module's own function does the work."""

    __slots__ = ("_base", "_keep", "_restricted")

    def __init__(self, base: Any, restricted: dict[int, _Restriction], keep: list[Any]) -> None:
        self._base = base
        self._restricted = restricted  # by id() of the collected buffer ...
        self._keep = keep  # ... which this list keeps alive

    def __getattr__(self, attr: str) -> Any:
        return getattr(self._base, attr)

    def _check(self, arrays: Any, name: str, positions: Sequence[int] | None,
               clamp: tuple[float, float] | None) -> None:  # fmt: skip
        for i, a in enumerate(arrays):
            r = self._restricted.get(id(a))
            if r is None:
                continue
            pos = positions[i] if positions is not None else i
            if r.no_write is not None:
                raise ValueError(f"{name}[{pos}] {r.no_write}")
            if clamp is not None and r.negated and clamp[0] != -clamp[1]:
                raise ValueError(
                    f"{name}[{pos}] is a torch negative-bit view (t.is_neg(), e.g. z.conj().imag), whose memory "
                    f"holds -t: the asymmetric clamp to [{clamp[0]!r}, {clamp[1]!r}] cannot be applied to it in "
                    "place; clamp t.resolve_neg() (a copy) or use bounds with min == -max"
                )

    def norm_scale_(self, arrays: Any, norm_type: float, coefficient: Any, name: str = "grads",
                    positions: Sequence[int] | None = None) -> float:  # fmt: skip
        self._check(arrays, name, positions, None)
        return float(self._base.norm_scale_(arrays, norm_type, coefficient, name, positions))

    def scale_(self, arrays: Any, factors: Any, name: str = "grads", positions: Sequence[int] | None = None) -> None:
        self._check(arrays, name, positions, None)
        self._base.scale_(arrays, factors, name, positions)

    def clamp_(self, arrays: Any, lo: float, hi: float, name: str = "grads",
               positions: Sequence[int] | None = None) -> None:  # fmt: skip
        self._check(arrays, name, positions, (float(lo), float(hi)))
        self._base.clamp_(arrays, lo, hi, name, positions)


class Collected:
    """Buffers to work on, where each one sat in the caller's input, and their device.

    ``arrays`` are NumPy arrays for ``device == "cpu"`` and :class:`fastclip._cuda.Buffer`
    objects for ``device == "cuda"``; :attr:`ops` is what works on them, with the same
    ``norms`` / ``scale_`` / ``clamp_`` signatures either way.
    """

    __slots__ = ("_restricted", "arrays", "device", "positions")

    def __init__(self, arrays: list[Any], positions: list[int] | None, device: str = CPU,
                 restricted: dict[int, _Restriction] | None = None) -> None:  # fmt: skip
        self.arrays = arrays
        #: ``None`` when ``arrays[i]`` was the caller's item ``i`` for every ``i``.
        self.positions = positions
        self.device = device
        #: id(buffer) -> what it allows, for the buffers with a restriction (module doc).
        self._restricted = restricted or {}

    def __len__(self) -> int:
        return len(self.arrays)

    @property
    def ops(self) -> Any:
        """``fastclip._fastclip`` for CPU buffers, ``fastclip._cuda`` for CUDA buffers; wrapped so that
        in-place calls refuse what a restricted buffer (an inference tensor, a negated view) does
        not allow, when there is one."""
        base: Any
        if self.device == CUDA:
            from . import _cuda

            base = _cuda
        else:
            from . import _fastclip

            base = _fastclip
        if self._restricted:
            return _Guarded(base, self._restricted, self.arrays)
        return base


def _bad_device(obj: Any, name: str, pos: int, got: str) -> TypeError:
    return TypeError(
        f"{name}[{pos}].__dlpack_device__() must return a (device_type, device_id) tuple of ints, {got} "
        f"({type(obj).__name__})"
    )


def _is_int(x: Any) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, (bool, np.bool_))


def dlpack_device(obj: Any, name: str = "grads", pos: int = 0) -> tuple[int, int | None]:
    """``obj.__dlpack_device__()`` checked: ``(device_type, device_id)`` as ints (the id may be
    ``None``, as Paddle's CPU tensors answer). Raises ``TypeError`` naming ``name[pos]`` when it
    raises or returns anything else."""
    try:
        dev = obj.__dlpack_device__()
    except Exception as e:
        raise _bad_device(obj, name, pos, f"but it raised {type(e).__name__}: {e}") from e
    if not isinstance(dev, tuple) or len(dev) != 2:
        raise _bad_device(obj, name, pos, f"got {dev!r}")
    kind, ident = dev
    if not _is_int(kind) or not (ident is None or _is_int(ident)):
        raise _bad_device(obj, name, pos, f"got {dev!r}")
    return int(kind), (None if ident is None else int(ident))


def device_kind(obj: Any, name: str = "grads", pos: int = 0) -> str:
    """``"cpu"`` or ``"cuda"`` for one buffer (an ndarray or a DLPack producer).

    Raises ``ValueError`` for a DLPack device fastclip cannot work on (ROCm, Metal, ...), and
    ``TypeError`` for a ``__dlpack_device__`` that raises or answers junk (or no device id for a
    CUDA device).
    """
    if isinstance(obj, np.ndarray):
        return CPU
    dev, ident = dlpack_device(obj, name, pos)
    if dev in _DLPACK_CPU:
        return CPU
    if dev in _DLPACK_CUDA:
        if ident is None:
            raise _bad_device(obj, name, pos, f"got no device id for a CUDA device: {(dev, ident)!r}")
        return CUDA
    raise ValueError(
        f"{name}[{pos}] lives on a {_DEVICE_NAMES.get(dev, f'DLPack device type {dev}')} device; "
        "fastclip works on CPU buffers and CUDA buffers (through CuPy)"
    )


def _not_a_buffer(obj: Any, name: str, pos: int) -> TypeError:
    return TypeError(
        f"{name}[{pos}] must be a numpy.ndarray, a DLPack tensor or have a .grad, not {type(obj).__name__}"
    )


def _is_buffer(obj: Any) -> bool:
    return isinstance(obj, np.ndarray) or hasattr(obj, "__dlpack_device__")


def _buffer_of(obj: Any, name: str, pos: int) -> Any:
    """The buffer one item contributes, unconverted (the item itself or its ``.grad``), or ``None``
    for nothing: the three rules of the module doc, for every kind of item."""
    if type(obj) is np.ndarray:
        return obj  # rule 3, the common case first
    g = getattr(obj, "grad", None)
    if g is not None:  # rule 1
        if not _is_buffer(g):
            raise _not_a_buffer(g, name, pos)
        return g
    if not _is_buffer(obj):
        if hasattr(obj, "grad"):
            return None  # rule 2: a parameter object (fastclip.Parameter, ...) without a gradient
        raise _not_a_buffer(obj, name, pos)
    if is_parameter(obj) or requires_grad(obj):
        return None  # rule 2
    return obj  # rule 3


def _numpy_view(e: Export, name: str, pos: int) -> np.ndarray:
    try:
        arr = np.from_dlpack(e.producer)
    except Exception as ex:  # BufferError, RuntimeError, ..., and AttributeError from some producers
        raise TypeError(f"{name}[{pos}] cannot be viewed as a NumPy array through DLPack: {ex}") from ex
    if e.bits and arr.dtype.itemsize == 2 and arr.dtype.kind in "iu":
        arr = arr.view(_BF16)
    if e.no_write is not None and arr.flags.writeable:
        arr.flags.writeable = False  # also for the fused extension path, which takes the arrays directly
    return arr


def as_numpy(obj: Any, name: str = "grads", pos: int = 0) -> np.ndarray:
    """A NumPy view (no copy) of one CPU buffer (see the module doc).

    Raises ``TypeError`` naming ``name[pos]`` for a tensor that DLPack does not describe
    faithfully, or whose dtype cannot cross DLPack into NumPy.
    """
    if isinstance(obj, np.ndarray):
        return obj
    return _numpy_view(inspect(obj, name, pos), name, pos)


def _mixed_devices(name: str, positions: list[int], kinds: list[str]) -> ValueError:
    first: dict[str, int] = {}
    for k, p in zip(kinds, positions):
        first.setdefault(k, p)
    return ValueError(
        f"{name} mixes CPU and CUDA buffers ({name}[{first[CPU]}] is on the CPU, {name}[{first[CUDA]}] "
        "on a CUDA device); clip each device's buffers in a separate call"
    )


def _restrictions(arrays: list[Any], exports: list[Export | None]) -> dict[int, _Restriction]:
    return {
        id(a): _Restriction(e.negated, e.no_write)
        for a, e in zip(arrays, exports)
        if e is not None and (e.negated or e.no_write is not None)
    }


def _finish(buffers: list[Any], positions: list[int], name: str) -> Collected:
    """Inspect every buffer, classify each by device, then convert them all for that device's path."""
    identity = len(positions) == 0 or positions[-1] == len(positions) - 1
    pos_or_none = None if identity else positions
    exports = [None if isinstance(b, np.ndarray) else inspect(b, name, p) for b, p in zip(buffers, positions)]
    kinds = [device_kind(b, name, p) for b, p in zip(buffers, positions)]
    if CUDA not in kinds:
        views = [b if e is None else _numpy_view(e, name, p) for b, e, p in zip(buffers, exports, positions)]
        return Collected(views, pos_or_none, CPU, _restrictions(views, exports))
    if CPU in kinds:
        raise _mixed_devices(name, positions, kinds)
    from . import _cuda  # imports CuPy (ImportError saying what to install if it is missing)

    bufs: list[Any] = list(_cuda.as_buffers(buffers, name, positions))
    return Collected(bufs, pos_or_none, CUDA, _restrictions(bufs, exports))


def collect(grads: Any, name: str = "grads") -> Collected:
    """Normalize ``grads`` (see the module doc) into a :class:`Collected` of one device.

    Raises ``TypeError`` naming the position of an item that is none of the accepted kinds, or a
    tensor DLPack does not describe faithfully, or a junk ``__dlpack_device__``; ``ValueError`` when
    CPU and CUDA buffers are mixed (naming the first position of each) or a buffer is on another
    device; and ``ImportError`` for CUDA buffers when CuPy is missing. Nothing is modified.
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
