"""The written contract of a fastclip backend: what ``norms``, ``scale_`` and ``clamp_`` promise.

Two backends implement it, each as a module: the CPU extension ``fastclip._fastclip`` (Rust, on
NumPy arrays) and the CUDA path ``fastclip._cuda`` (CuPy, on :class:`fastclip._cuda.Buffer`).
``_buffers.collect(...).ops`` is one of the two, and the policy layer (``functional``, ``clip``,
``optimizer``) calls it without knowing which: everything below holds for both, and
``tests/test_backend.py`` checks that both modules conform (mypy and ``inspect``).

Arguments, for every operation:

- ``arrays``: a ``list`` or ``tuple`` of the backend's buffers. Anything else, or an item of
  another kind, is a ``TypeError`` naming ``name`` (and ``name[i]``).
- ``name``: what the caller called the list (``"grads"``), used in every message.
- ``positions``: ``positions[i]`` is where ``arrays[i]`` sat in the caller's input (``None``: at
  ``i``). Messages name buffers by it: ``grads[7]``, not a compacted index.

Checks come first: every argument and every buffer is checked before any buffer is read or
written; an error leaves every buffer bit-identical to before. Errors are ``TypeError`` for a
wrong kind (a non-list, an unsupported dtype) and ``ValueError`` for a wrong value, and their
messages name the argument and the position(s). In-place operations also reject a read-only
buffer and any two buffers whose byte ranges intersect (a strided view counts its whole extent):
``"{name}[a] and {name}[b] share memory ..."``.

Numbers:

- ``norms`` accumulates in float64 for every storage dtype; NaN anywhere gives NaN, +-inf gives
  inf; no overflow or underflow unless the true norm itself is out of range (a partial sum out of
  range is redone scaled by 1/max|x|). An empty list gives ``([], 0.0)``. Deterministic: the same
  buffers give the same bits on every call (and, on the CPU, for any thread count and ISA).
- ``scale_`` multiplies by the factor rounded to the lane (float32 for float32/float16/bfloat16,
  float64 for float64) and rounds each product once to the storage dtype (nearest even). A factor
  of exactly 1 leaves its buffer untouched.
- ``clamp_`` first rounds ``lo`` and ``hi`` to each buffer's storage dtype; NaN elements stay NaN
  (bits unchanged).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, TypeVar

__all__ = ["Backend"]

#: The kind of buffer a backend works on (``numpy.ndarray``, ``fastclip._cuda.Buffer``); invariant,
#: since the buffers come in a ``list`` (or a ``tuple``), as the extension's signatures say.
ArrayT = TypeVar("ArrayT")


class Backend(Protocol[ArrayT]):
    """A module that computes norms of, scales and clamps lists of buffers (see the module doc)."""

    def norms(
        self,
        arrays: list[ArrayT] | tuple[ArrayT, ...],
        norm_type: float = 2.0,
        per_tensor: bool = True,
        name: str = "grads",
        positions: Sequence[int] | None = None,
    ) -> tuple[list[float], float]:
        """Each array's p-norm (``[]`` unless ``per_tensor``) and the total p-norm of all arrays.

        ``||x||_p = (sum |x_i|^p)^(1/p)`` in float64, ``max |x_i|`` for p = inf; the total is the
        p-norm of the per-array norms. Raises ``ValueError`` unless ``norm_type > 0`` (inf
        included), ``TypeError`` for a buffer the backend cannot read.
        """
        ...

    def scale_(
        self,
        arrays: list[ArrayT] | tuple[ArrayT, ...],
        factors: float | Sequence[float],
        name: str = "grads",
        positions: Sequence[int] | None = None,
    ) -> None:
        """``arrays[i] *= factors[i]`` in place (one factor for all if a number).

        Raises ``ValueError`` for a wrong number of factors, a read-only buffer or two buffers
        that share memory, before anything is modified.
        """
        ...

    def clamp_(
        self,
        arrays: list[ArrayT] | tuple[ArrayT, ...],
        lo: float,
        hi: float,
        name: str = "grads",
        positions: Sequence[int] | None = None,
    ) -> None:
        """``x <- min(max(x, lo), hi)`` for every element, in place; NaN stays NaN.

        Raises ``ValueError`` for NaN bounds or ``lo > hi``, a read-only buffer or two buffers
        that share memory, before anything is modified.
        """
        ...
