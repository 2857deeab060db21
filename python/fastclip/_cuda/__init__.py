"""The CUDA backend: ``norms`` / ``scale_`` / ``clamp_`` on CuPy, under the same contract as the
CPU extension ``fastclip._fastclip`` (:class:`fastclip._backend.Backend`).

Imported by :mod:`fastclip._buffers` only when a CUDA buffer shows up; importing it does not
import CuPy (:func:`cupy` does, on first use), so its host-side logic is testable on any machine.

How one call runs (multi_tensor_apply style, one kernel launch for any number of tensors):

- :func:`as_buffers` (``buffers.py``) views every producer as a CuPy array through DLPack, on the
  producer's stream (``streams.py``).
- A block table cuts each tensor into blocks of ``kernels.CUDA_BLOCK_ELEMS`` elements
  (``partials.block_table``); it and the tensor tables are uploaded once and cached
  (``device.py``).
- ``fastclip_norm_partials`` (``kernels.cu``) writes, for every block, ``sum |x|^p`` and
  ``max |x|`` in float64, deterministically; the host combines them (``partials.py``): blocks in
  block order, tensors with overflow-safe scaling, and a tensor whose plain sum is out of range
  redone scaled by 1/max|x|, as the CPU kernels do.
- ``fastclip_apply`` scales or clamps every tensor in place, rounding as the CPU path does
  (``rounding.py``: factor to float32 unless float64, bounds to the storage dtype, each product
  rounded once).

The modules: ``kernels.cu`` (the kernels) and ``kernels.py`` (its enums, launch geometry and
compilation), ``partials.py`` (host arithmetic), ``rounding.py``, ``streams.py`` (CuPy and
streams), ``buffers.py`` (buffers and the checks made before touching them), ``device.py``
(tables and launches), ``ops.py`` (the three operations).
"""

from __future__ import annotations

from .buffers import Buffer, as_buffers
from .ops import clamp_, norms, scale_
from .streams import cupy

__all__ = ["Buffer", "as_buffers", "clamp_", "cupy", "norms", "scale_"]
